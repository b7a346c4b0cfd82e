//! The affine warp behind every rotated crop: the identity model's aligned face and the eye
//! model's eye crops.

use crate::frame::Frame;

/// Warp `frame` into a `size` x `size` RGB image (row-major, 3 floats per pixel, 0-255): each
/// output pixel (x, y) samples the frame at `to_frame` · (x, y, 1) bilinearly (pixel indices on
/// both sides), neighbours outside the frame count as 0 (cv2.warpAffine INTER_LINEAR with a
/// constant border).
pub fn warp_rgb(frame: &Frame, to_frame: &[[f64; 3]; 2], size: usize) -> Vec<f32> {
    let mut out = vec![0f32; size * size * 3];
    let pixel = |x: i64, y: i64| -> [f32; 3] {
        if x < 0 || y < 0 || x >= frame.width as i64 || y >= frame.height as i64 {
            return [0.0; 3];
        }
        let i = (y as usize * frame.width + x as usize) * 3;
        let p = &frame.rgb[i..i + 3];
        [p[0] as f32, p[1] as f32, p[2] as f32]
    };
    for oy in 0..size {
        for ox in 0..size {
            let (ox_f, oy_f) = (ox as f64, oy as f64);
            let sx = to_frame[0][0] * ox_f + to_frame[0][1] * oy_f + to_frame[0][2];
            let sy = to_frame[1][0] * ox_f + to_frame[1][1] * oy_f + to_frame[1][2];
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = ((sx - x0) as f32, (sy - y0) as f32);
            let (x0, y0) = (x0 as i64, y0 as i64);
            let (p00, p10) = (pixel(x0, y0), pixel(x0 + 1, y0));
            let (p01, p11) = (pixel(x0, y0 + 1), pixel(x0 + 1, y0 + 1));
            let o = (oy * size + ox) * 3;
            for c in 0..3 {
                let top = p00[c] * (1.0 - fx) + p10[c] * fx;
                let bottom = p01[c] * (1.0 - fx) + p11[c] * fx;
                out[o + c] = top * (1.0 - fy) + bottom * fy;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warp_samples_bilinearly_and_pads_with_black() {
        // A 2x1 frame: black then white. Half a pixel right of the first pixel is mid grey;
        // outside the frame is black.
        let frame = Frame::new(2, 1, vec![0, 0, 0, 200, 200, 200]);
        let shift = [[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]];
        let out = warp_rgb(&frame, &shift, 2);
        assert_eq!(&out[0..3], &[100.0; 3]);
        // (1.5, 0): half the white pixel, half outside.
        assert_eq!(&out[3..6], &[100.0; 3]);
        // Row 1 lies below the frame.
        assert!(out[6..].iter().all(|&v| v == 0.0));
    }
}
