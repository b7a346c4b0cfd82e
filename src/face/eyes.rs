//! Eye openness for the blink prompt: MediaPipe Iris (71 eye-contour and brow points, 5 iris
//! points) on a 64x64 crop of each eye placed by FaceMesh's eye corners. This FaceMesh (without
//! the attention mesh) barely moves its lid points when the eyes close; the iris model is what
//! MediaPipe itself runs to refine them.
//!
//! The twin of `models/tools/eyes.py`; `tests/golden.rs` checks crop, outputs and openness
//! against scipy and onnxruntime.

use anyhow::{bail, Result};

use super::{square_input, warp_rgb, FaceLandmarks, MESH_POINTS};
use crate::frame::{planar_rgb, Frame, Normalise};
use crate::infer::{Model, Tensor};
use crate::manifest::ModelSpec;

/// The manifest task of the eye model.
pub const EYES_TASK: &str = "eye_landmarks";

/// FaceMesh corners per eye, in the order that sets the crop's x axis: the person's right eye
/// (image left), then the left eye, which is mirrored (the model was trained on one side).
const CORNERS: [[usize; 2]; 2] = [[33, 133], [362, 263]];
/// The eye contour: points 0-8 run along the lower lid corner to corner, 9-15 along the upper
/// lid between the corners; upper 10-14 stand over lower 2-6.
const UPPER_LID: [usize; 5] = [10, 11, 12, 13, 14];
const LOWER_LID: [usize; 5] = [2, 3, 4, 5, 6];
const CONTOUR_POINTS: usize = 71;

/// The eye model and its crop.
pub struct EyeModel {
    model: Box<dyn Model>,
    size: usize,
    /// Crop side over the corners' longer extent (MediaPipe's iris ROI: 2.3).
    roi_scale: f64,
    norm: Normalise,
}

impl EyeModel {
    pub fn new(model: Box<dyn Model>, model_spec: &ModelSpec) -> Result<Self> {
        Ok(EyeModel {
            model,
            size: square_input(model_spec, "eye")?,
            roi_scale: model_spec.crop_scale.unwrap_or(2.3) as f64,
            norm: model_spec.normalise(),
        })
    }

    /// Crop point (u, v) -> frame point for `eye` (0: the person's right, 1: left, mirrored), in
    /// continuous coordinates (pixel centres at i + 0.5): a square of side `roi_scale` x the
    /// longer side of the corners' bounding box, centred between them, its x axis along them.
    pub fn transform(&self, points: &[[f32; 3]], eye: usize) -> Result<[[f64; 3]; 2]> {
        if points.len() < MESH_POINTS {
            bail!("{} landmarks: FaceMesh gives {MESH_POINTS}", points.len());
        }
        let [ia, ib] = CORNERS[eye];
        let (a, b) = (points[ia], points[ib]);
        let (dx, dy) = ((b[0] - a[0]) as f64, (b[1] - a[1]) as f64);
        let len = dx.hypot(dy);
        // Also refuses NaN corners.
        if len.is_nan() || len <= 1e-6 {
            bail!("eye corners {ia} and {ib} coincide");
        }
        let step = self.roi_scale * dx.abs().max(dy.abs()) / self.size as f64;
        let (ux, uy) = (dx / len, dy / len);
        let mirror = if eye == 1 { -1.0 } else { 1.0 };
        let ex = [mirror * ux * step, mirror * uy * step];
        let ey = [-uy * step, ux * step];
        let centre = [
            (a[0] as f64 + b[0] as f64) / 2.0,
            (a[1] as f64 + b[1] as f64) / 2.0,
        ];
        let half = self.size as f64 / 2.0;
        Ok([
            [ex[0], ey[0], centre[0] - half * (ex[0] + ey[0])],
            [ex[1], ey[1], centre[1] - half * (ex[1] + ey[1])],
        ])
    }

    /// The model input for one eye (planar RGB, normalised): each crop pixel samples the frame
    /// bilinearly at its centre, zeros outside.
    pub fn input(&self, frame: &Frame, to_frame: &[[f64; 3]; 2]) -> Vec<f32> {
        // Centres to indices on both sides: x_index = A (u_index + 0.5) + t - 0.5.
        let at_index = |r: [f64; 3]| [r[0], r[1], r[2] + 0.5 * (r[0] + r[1]) - 0.5];
        let rgb = warp_rgb(
            frame,
            &[at_index(to_frame[0]), at_index(to_frame[1])],
            self.size,
        );
        planar_rgb(&rgb, self.norm)
    }

    /// The eye contour (71 x, y, z in crop pixels) for one eye's input.
    pub fn contour(&self, input: Vec<f32>) -> Result<Vec<f32>> {
        let out = self
            .model
            .run(&[Tensor::new(vec![1, 3, self.size, self.size], input)])?;
        let contour = out.into_iter().next().map(|t| t.data).unwrap_or_default();
        if contour.len() != CONTOUR_POINTS * 3 {
            bail!(
                "eye model gives {} contour values, not {CONTOUR_POINTS} x 3",
                contour.len()
            );
        }
        Ok(contour)
    }

    /// The openness of both eyes, [the person's right, left]: see [`openness_of`].
    pub fn openness(&self, frame: &Frame, landmarks: &FaceLandmarks) -> Result<[f32; 2]> {
        let mut both = [0f32; 2];
        for (eye, slot) in both.iter_mut().enumerate() {
            let to_frame = self.transform(&landmarks.points, eye)?;
            *slot = openness_of(&self.contour(self.input(frame, &to_frame))?)?;
        }
        Ok(both)
    }
}

/// Lid gap over eye width: the mean distance between five upper-lid points and the lower-lid
/// points under them, over the corner-to-corner distance: 0.18-0.42 open depending on the
/// person, a quarter to a half of that shut (labelled clips, `tests/challenge.rs`). Distances in the crop's coordinates: a
/// similarity of the frame's, so the ratio is the same.
pub fn openness_of(contour: &[f32]) -> Result<f32> {
    if contour.len() < CONTOUR_POINTS * 3 {
        bail!(
            "{} contour values, the eye model gives {CONTOUR_POINTS} x 3",
            contour.len()
        );
    }
    let at = |i: usize| (contour[3 * i], contour[3 * i + 1]);
    let dist = |a: usize, b: usize| {
        let ((ax, ay), (bx, by)) = (at(a), at(b));
        (ax - bx).hypot(ay - by)
    };
    let width = dist(0, 8);
    if width.is_nan() || width <= f32::EPSILON {
        return Ok(0.0);
    }
    let gap: f32 = UPPER_LID
        .iter()
        .zip(LOWER_LID)
        .map(|(&u, l)| dist(u, l))
        .sum::<f32>()
        / UPPER_LID.len() as f32;
    Ok(gap / width)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contour_with_gap(gap: f32) -> Vec<f32> {
        let mut c = vec![0f32; CONTOUR_POINTS * 3];
        // Corners 10 apart; lower lid on y = 0, upper lid `gap` above it.
        for i in 0..=8 {
            c[3 * i] = i as f32 * 10.0 / 8.0;
        }
        for (&u, l) in UPPER_LID.iter().zip(LOWER_LID) {
            c[3 * u] = c[3 * l];
            c[3 * u + 1] = -gap;
        }
        c
    }

    #[test]
    fn openness_is_lid_gap_over_eye_width() {
        assert!((openness_of(&contour_with_gap(3.0)).unwrap() - 0.3).abs() < 1e-6);
        assert_eq!(openness_of(&contour_with_gap(0.0)).unwrap(), 0.0);
        assert!(openness_of(&[0.0; 10]).is_err());
    }
}
