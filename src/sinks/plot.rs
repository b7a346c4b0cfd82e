//! PNG plots of one analysed file: deepfake probability over time and the emotion timeline.

use std::path::Path;

use anyhow::Result;
use embedded_graphics::mono_font::{ascii::FONT_6X10, MonoTextStyle};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{Line, PrimitiveStyle, Rectangle};
use embedded_graphics::text::Text;

use super::canvas::RgbCanvas;
use crate::verdict::FrameResult;

const W: i32 = 720;
const LEFT: i32 = 70;
const RIGHT: i32 = 20;
const TRACK_COLOURS: [Rgb888; 6] = [
    Rgb888::new(31, 119, 180),
    Rgb888::new(255, 127, 14),
    Rgb888::new(44, 160, 44),
    Rgb888::new(148, 103, 189),
    Rgb888::new(140, 86, 75),
    Rgb888::new(227, 119, 194),
];
const EMOTION_COLOURS: [Rgb888; 7] = [
    Rgb888::new(214, 39, 40),
    Rgb888::new(140, 86, 75),
    Rgb888::new(148, 103, 189),
    Rgb888::new(255, 187, 40),
    Rgb888::new(31, 119, 180),
    Rgb888::new(23, 190, 207),
    Rgb888::new(127, 127, 127),
];

pub(crate) fn text(canvas: &mut RgbCanvas, s: &str, x: i32, y: i32) {
    let style = MonoTextStyle::new(&FONT_6X10, Rgb888::BLACK);
    let _ = Text::new(s, Point::new(x, y), style).draw(canvas);
}

pub(crate) fn line(canvas: &mut RgbCanvas, a: Point, b: Point, colour: Rgb888, width: u32) {
    let _ = Line::new(a, b)
        .into_styled(PrimitiveStyle::with_stroke(colour, width))
        .draw(canvas);
}

fn x_of(t: f64, t_max: f64) -> i32 {
    LEFT + ((t / t_max.max(1e-9)) * (W - LEFT - RIGHT) as f64).round() as i32
}

/// Deepfake probability per track over time, with the operating threshold.
pub fn deepfake_plot(
    frames: &[FrameResult],
    threshold: f32,
    title: &str,
    path: &Path,
) -> Result<()> {
    const H: i32 = 300;
    const TOP: i32 = 30;
    const BOTTOM: i32 = 40;
    let mut c = RgbCanvas::new(W as u32, H as u32, Rgb888::WHITE);
    let t_max = frames.last().map(|f| f.seconds).unwrap_or(0.0).max(1e-3);
    let y_of =
        |p: f32| TOP + ((1.0 - p.clamp(0.0, 1.0)) * (H - TOP - BOTTOM) as f32).round() as i32;
    text(&mut c, &format!("deepfake probability: {title}"), LEFT, 15);
    line(
        &mut c,
        Point::new(LEFT, TOP),
        Point::new(LEFT, H - BOTTOM),
        Rgb888::BLACK,
        1,
    );
    line(
        &mut c,
        Point::new(LEFT, H - BOTTOM),
        Point::new(W - RIGHT, H - BOTTOM),
        Rgb888::BLACK,
        1,
    );
    for p in [0.0f32, 0.25, 0.5, 0.75, 1.0] {
        text(&mut c, &format!("{p:.2}"), LEFT - 34, y_of(p) + 3);
        line(
            &mut c,
            Point::new(LEFT - 4, y_of(p)),
            Point::new(LEFT, y_of(p)),
            Rgb888::BLACK,
            1,
        );
    }
    text(&mut c, "0 s", LEFT, H - BOTTOM + 14);
    text(
        &mut c,
        &format!("{t_max:.1} s"),
        W - RIGHT - 40,
        H - BOTTOM + 14,
    );
    text(&mut c, "time", W / 2, H - 8);
    // Dashed operating threshold.
    let ty = y_of(threshold);
    let mut x = LEFT;
    while x < W - RIGHT {
        line(
            &mut c,
            Point::new(x, ty),
            Point::new((x + 6).min(W - RIGHT), ty),
            Rgb888::new(200, 0, 0),
            1,
        );
        x += 12;
    }
    let mut last: std::collections::BTreeMap<u32, Point> = Default::default();
    for f in frames {
        for face in &f.faces {
            let Some(p) = face.analysis.deepfake else {
                continue;
            };
            let pt = Point::new(x_of(f.seconds, t_max), y_of(p));
            let colour = TRACK_COLOURS[(face.track as usize - 1) % TRACK_COLOURS.len()];
            if let Some(prev) = last.get(&face.track) {
                line(&mut c, *prev, pt, colour, 2);
            } else {
                let _ = Rectangle::with_center(pt, Size::new(4, 4))
                    .into_styled(PrimitiveStyle::with_fill(colour))
                    .draw(&mut c);
            }
            last.insert(face.track, pt);
        }
    }
    c.save_png(path)
}

/// One row per emotion class; a cell per frame coloured where that class won, per main track.
pub fn emotion_plot(
    frames: &[FrameResult],
    classes: &[String],
    track: Option<u32>,
    title: &str,
    path: &Path,
) -> Result<()> {
    const ROW: i32 = 22;
    const TOP: i32 = 30;
    let h = TOP + ROW * classes.len() as i32 + 30;
    let mut c = RgbCanvas::new(W as u32, h as u32, Rgb888::WHITE);
    text(&mut c, &format!("emotion timeline: {title}"), LEFT, 15);
    let t_max = frames.last().map(|f| f.seconds).unwrap_or(0.0).max(1e-3);
    for (i, name) in classes.iter().enumerate() {
        text(&mut c, name, 4, TOP + ROW * i as i32 + 14);
        line(
            &mut c,
            Point::new(LEFT, TOP + ROW * (i as i32 + 1)),
            Point::new(W - RIGHT, TOP + ROW * (i as i32 + 1)),
            Rgb888::new(220, 220, 220),
            1,
        );
    }
    let step = ((W - LEFT - RIGHT) as f64 / frames.len().max(1) as f64)
        .ceil()
        .max(1.0) as u32;
    for f in frames {
        let face = f.faces.iter().find(|x| Some(x.track) == track);
        let Some(e) = face.and_then(|x| x.analysis.emotion.as_ref()) else {
            continue;
        };
        let row = e.index as i32;
        let shade = |v: u8| (255.0 - (255.0 - v as f32) * e.confidence.clamp(0.2, 1.0)) as u8;
        let base = EMOTION_COLOURS[e.index % EMOTION_COLOURS.len()];
        let colour = Rgb888::new(shade(base.r()), shade(base.g()), shade(base.b()));
        let x = x_of(f.seconds, t_max).min(W - RIGHT - step as i32);
        let _ = Rectangle::new(
            Point::new(x, TOP + ROW * row + 2),
            Size::new(step, (ROW - 4) as u32),
        )
        .into_styled(PrimitiveStyle::with_fill(colour))
        .draw(&mut c);
    }
    text(&mut c, "0 s", LEFT, h - 10);
    text(&mut c, &format!("{t_max:.1} s"), W - RIGHT - 40, h - 10);
    c.save_png(path)
}
