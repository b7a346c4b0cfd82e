//! `eval --plots DIR`: the ROC curves and the real-vs-fake score histograms, as PNG.

use std::path::Path;

use anyhow::Result;
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{PrimitiveStyle, Rectangle};

use super::metrics::{roc, Scored};
use crate::sinks::canvas::RgbCanvas;
use crate::sinks::plot::{line, text};

const REAL: Rgb888 = Rgb888::new(44, 160, 44);
const FAKE: Rgb888 = Rgb888::new(214, 39, 40);
const CURVES: [Rgb888; 3] = [
    Rgb888::new(31, 119, 180),
    Rgb888::new(255, 127, 14),
    Rgb888::new(148, 103, 189),
];

fn axes(c: &mut RgbCanvas, left: i32, top: i32, w: i32, h: i32) {
    line(
        c,
        Point::new(left, top),
        Point::new(left, top + h),
        Rgb888::BLACK,
        1,
    );
    line(
        c,
        Point::new(left, top + h),
        Point::new(left + w, top + h),
        Rgb888::BLACK,
        1,
    );
}

/// ROC curves (false-fake rate = BPCER on x, true-fake rate = 1 - APCER on y), one per level.
pub fn roc_plot(curves: &[(&str, &[Scored], f64)], path: &Path) -> Result<()> {
    const S: i32 = 400;
    const L: i32 = 60;
    const T: i32 = 40;
    let mut c = RgbCanvas::new((L + S + 30) as u32, (T + S + 50) as u32, Rgb888::WHITE);
    text(&mut c, "ROC (fake = positive)", L, 15);
    axes(&mut c, L, T, S, S);
    let px = |x: f64, y: f64| {
        Point::new(
            L + (x * S as f64).round() as i32,
            T + S - (y * S as f64).round() as i32,
        )
    };
    // Chance diagonal, dotted.
    for i in (0..S).step_by(8) {
        let f = i as f64 / S as f64;
        line(
            &mut c,
            px(f, f),
            px(f + 3.0 / S as f64, f + 3.0 / S as f64),
            Rgb888::CSS_GRAY,
            1,
        );
    }
    for v in [0.0, 0.5, 1.0] {
        text(&mut c, &format!("{v:.1}"), L - 24, px(0.0, v).y + 3);
        text(&mut c, &format!("{v:.1}"), px(v, 0.0).x - 8, T + S + 14);
    }
    text(
        &mut c,
        "false-fake rate (BPCER)",
        L + S / 2 - 70,
        T + S + 32,
    );
    text(&mut c, "TFR", 4, T + S / 2);
    for (i, (name, items, auc)) in curves.iter().enumerate() {
        let colour = CURVES[i % CURVES.len()];
        let pts = roc(items);
        for w in pts.windows(2) {
            line(&mut c, px(w[0].0, w[0].1), px(w[1].0, w[1].1), colour, 2);
        }
        let y = T + S - 20 - 14 * i as i32;
        line(
            &mut c,
            Point::new(L + S - 190, y - 3),
            Point::new(L + S - 175, y - 3),
            colour,
            2,
        );
        text(&mut c, &format!("{name} AUC {auc:.3}"), L + S - 170, y);
    }
    c.save_png(path)
}

/// Score histograms of real and fake items, one panel per level, with the threshold.
pub fn histogram_plot(panels: &[(&str, &[Scored])], threshold: f32, path: &Path) -> Result<()> {
    const W: i32 = 600;
    const H: i32 = 220;
    const L: i32 = 50;
    const BINS: usize = 20;
    let mut c = RgbCanvas::new(
        (W + 20) as u32,
        (H * panels.len() as i32 + 10) as u32,
        Rgb888::WHITE,
    );
    for (p, (name, items)) in panels.iter().enumerate() {
        let top = p as i32 * H + 30;
        let h = H - 70;
        let w = W - L;
        text(
            &mut c,
            &format!("{name}: fake probability, real (green) vs fake (red)"),
            L,
            top - 12,
        );
        axes(&mut c, L, top, w, h);
        let mut counts = [[0usize; BINS]; 2];
        for s in items.iter() {
            let b = ((s.score.clamp(0.0, 1.0) * BINS as f32) as usize).min(BINS - 1);
            counts[s.fake as usize][b] += 1;
        }
        // Each class normalised to its own total, so unequal class sizes compare by shape.
        let totals = [
            counts[0].iter().sum::<usize>().max(1),
            counts[1].iter().sum::<usize>().max(1),
        ];
        let peak = (0..2)
            .flat_map(|k| counts[k].iter().map(move |&n| n as f64 / totals[k] as f64))
            .fold(1e-9, f64::max);
        let bw = w / BINS as i32;
        for (k, colour) in [(0, REAL), (1, FAKE)] {
            for (b, &n) in counts[k].iter().enumerate() {
                let frac = n as f64 / totals[k] as f64 / peak;
                let bh = (frac * h as f64).round() as i32;
                if bh > 0 {
                    let x = L + b as i32 * bw + k as i32 * bw / 2;
                    let _ = Rectangle::new(
                        Point::new(x + 1, top + h - bh),
                        Size::new((bw / 2 - 1) as u32, bh as u32),
                    )
                    .into_styled(PrimitiveStyle::with_fill(colour))
                    .draw(&mut c);
                }
            }
        }
        for v in [0.0f32, 0.5, 1.0] {
            text(
                &mut c,
                &format!("{v:.1}"),
                L + (v * w as f32) as i32 - 8,
                top + h + 14,
            );
        }
        let tx = L + (threshold.clamp(0.0, 1.0) * w as f32) as i32;
        let mut y = top;
        while y < top + h {
            line(
                &mut c,
                Point::new(tx, y),
                Point::new(tx, (y + 5).min(top + h)),
                Rgb888::BLACK,
                1,
            );
            y += 10;
        }
        let n_fake = items.iter().filter(|s| s.fake).count();
        text(
            &mut c,
            &format!("n real {}, n fake {n_fake}", items.len() - n_fake),
            L + w - 170,
            top + h + 28,
        );
    }
    c.save_png(path)
}
