//! `analyze --explain DIR`: an occlusion map blended over its face crop, as PNG. Red: hiding
//! this part lowers the fake score (it looks fake to the model); blue: hiding it raises it.

use std::path::Path;

use anyhow::{bail, Result};

use crate::analysis::Occlusion;
use crate::frame::Normalise;

/// Per-pixel sensitivity: the mean drop of every occlusion cell that covers the pixel.
pub fn pixel_map(o: &Occlusion, width: usize, height: usize) -> Vec<f32> {
    let mut sum = vec![0f32; width * height];
    let mut count = vec![0u32; width * height];
    for r in 0..o.rows {
        for c in 0..o.cols {
            let d = o.drops[r * o.cols + c];
            for y in r * o.stride..(r * o.stride + o.patch).min(height) {
                for x in c * o.stride..(c * o.stride + o.patch).min(width) {
                    sum[y * width + x] += d;
                    count[y * width + x] += 1;
                }
            }
        }
    }
    sum.iter()
        .zip(&count)
        .map(|(s, &n)| if n == 0 { 0.0 } else { s / n as f32 })
        .collect()
}

pub fn save_heatmap(o: &Occlusion, norm: Normalise, path: &Path) -> Result<()> {
    let shape = &o.crop.shape;
    let [_, channels, height, width] = shape[..] else {
        bail!("occlusion crop has shape {shape:?}, expected NCHW");
    };
    let map = pixel_map(o, width, height);
    let peak = map.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    let mut rgb = Vec::with_capacity(width * height * 3);
    for (i, &m) in map.iter().enumerate() {
        let a = 0.6 * (m.abs() / peak);
        let heat = if m >= 0.0 {
            [255.0, 0.0, 0.0]
        } else {
            [0.0, 80.0, 255.0]
        };
        for (ch, h) in heat.iter().enumerate() {
            let src = o.crop.data[(ch.min(channels - 1)) * height * width + i];
            let v = (src * norm.std + norm.mean).clamp(0.0, 255.0);
            rgb.push((v * (1.0 - a) + h * a).round() as u8);
        }
    }
    image::save_buffer(
        path,
        &rgb,
        width as u32,
        height as u32,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| anyhow::anyhow!("{}: cannot write heat map: {e}", path.display()))
}
