//! Identity for the kiosk's 1:1 verification: five points from FaceMesh, a similarity transform
//! onto the ArcFace 112x112 template, the bilinear warp, the embedding model, and the cosine
//! match of a live face against a reference. Same layer as `analysis`: it reads faces and
//! models; the verification session above combines its answer with the others.
//!
//! The twin of `models/tools/identity.py`; `tests/golden.rs` checks points, matrix, aligned
//! pixels and embedding against scikit-image and onnxruntime.

use anyhow::{bail, Context, Result};

use crate::face::{warp_rgb, Detection, FaceLandmarks, PresenceCheck, Similarity};
use crate::frame::{planar_rgb, Frame, Normalise};
use crate::infer::{Backend, Model, Tensor};
use crate::manifest::Manifest;

/// The manifest task of the embedding model.
pub const EMBEDDING_TASK: &str = "face_embedding";
const LANDMARKS_TASK: &str = "face_landmarks";

/// The standard ArcFace template for a 112x112 crop (insightface's, also the embedding package's
/// `REFERENCE_FACIAL_POINTS`): image-left eye, image-right eye, nose tip, image-left mouth
/// corner, image-right mouth corner.
pub const ARCFACE_TEMPLATE: [[f64; 2]; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];
const TEMPLATE_SIZE: usize = 112;

// FaceMesh indices of the five points; an eye centre is the mean of the eye's two corners (the
// lids move with blinks, the corners do not).
const EYE_IMAGE_LEFT: [usize; 2] = [33, 133];
const EYE_IMAGE_RIGHT: [usize; 2] = [362, 263];
const NOSE_TIP: usize = 1;
const MOUTH_IMAGE_LEFT: usize = 61;
const MOUTH_IMAGE_RIGHT: usize = 291;

/// Five face points in frame pixels, in the template's order.
pub type FivePoints = [[f64; 2]; 5];

/// The five alignment points from FaceMesh's landmarks (frame pixels).
pub fn five_points(landmarks: &FaceLandmarks) -> Result<FivePoints> {
    let p = &landmarks.points;
    if p.len() <= EYE_IMAGE_RIGHT[0] {
        bail!("{} landmarks: FaceMesh gives 468", p.len());
    }
    let at = |i: usize| [p[i][0] as f64, p[i][1] as f64];
    let mean = |[a, b]: [usize; 2]| [(at(a)[0] + at(b)[0]) / 2.0, (at(a)[1] + at(b)[1]) / 2.0];
    Ok([
        mean(EYE_IMAGE_LEFT),
        mean(EYE_IMAGE_RIGHT),
        at(NOSE_TIP),
        at(MOUTH_IMAGE_LEFT),
        at(MOUTH_IMAGE_RIGHT),
    ])
}

/// The frame -> template transform for five face points.
pub fn alignment(points: &FivePoints) -> Result<Similarity> {
    Similarity::estimate(points, &ARCFACE_TEMPLATE)
}

/// An L2-normalised face embedding.
#[derive(Clone, Debug, PartialEq)]
pub struct Embedding(Vec<f32>);

impl Embedding {
    /// Normalise a model's raw output; a zero or non-finite vector is an error (a broken model
    /// or input, never a face).
    pub fn from_raw(raw: &[f32]) -> Result<Embedding> {
        let norm = raw.iter().map(|v| v * v).sum::<f32>().sqrt();
        if !norm.is_finite() || norm < 1e-6 {
            bail!("embedding model gave a vector of norm {norm}");
        }
        Ok(Embedding(raw.iter().map(|v| v / norm).collect()))
    }

    pub fn values(&self) -> &[f32] {
        &self.0
    }

    /// Cosine similarity: 1 for the same direction, about 0 for unrelated faces.
    pub fn similarity(&self, other: &Embedding) -> f32 {
        self.0.iter().zip(&other.0).map(|(a, b)| a * b).sum()
    }
}

/// A face's alignment and embedding: what identity needs from one detection.
#[derive(Clone, Debug)]
pub struct FaceIdentity {
    pub points: FivePoints,
    /// FaceMesh's answer on the face (presence and every landmark), for the liveness cues.
    pub landmarks: FaceLandmarks,
    pub embedding: Embedding,
}

/// The embedding model and the landmark model that aligns its input, loaded once.
pub struct Embedder {
    model: Box<dyn Model>,
    landmarks: PresenceCheck,
    norm: Normalise,
    /// Manifest key of the embedding model.
    pub key: String,
}

impl Embedder {
    /// Load the manifest's embedding and landmark models.
    pub fn load(backend: &dyn Backend, manifest: &Manifest) -> Result<Embedder> {
        let key = manifest.key_for_task(EMBEDDING_TASK).with_context(|| {
            format!(
                "{}: no face embedding model (task {EMBEDDING_TASK:?}); models/tools/identity.py fetches one",
                manifest.path.display()
            )
        })?;
        let mesh = manifest.key_for_task(LANDMARKS_TASK).with_context(|| {
            format!(
                "{}: no landmark model (task {LANDMARKS_TASK:?}) to align faces with",
                manifest.path.display()
            )
        })?;
        let spec = manifest.model(&key)?;
        let (h, w) = spec.image_size()?;
        if h != TEMPLATE_SIZE || w != TEMPLATE_SIZE {
            bail!(
                "{}: embedding input {w}x{h}, the alignment template is {TEMPLATE_SIZE}x{TEMPLATE_SIZE}",
                spec.file
            );
        }
        let norm = spec.normalise();
        let model = backend.load(manifest, &key)?;
        let landmarks = PresenceCheck::new(backend.load(manifest, &mesh)?, manifest.model(&mesh)?)?;
        Ok(Embedder {
            model,
            landmarks,
            norm,
            key,
        })
    }

    /// FaceMesh, the five points, the warp and the embedding of one detected face.
    pub fn identify(&self, frame: &Frame, det: &Detection) -> Result<FaceIdentity> {
        let landmarks = self.landmarks.landmarks(frame, det)?;
        let points = five_points(&landmarks)?;
        Ok(FaceIdentity {
            points,
            embedding: self.embed_aligned(&self.align(frame, &points)?)?,
            landmarks,
        })
    }

    /// The aligned 112x112 RGB face (row-major, 0-255) for five points.
    pub fn align(&self, frame: &Frame, points: &FivePoints) -> Result<Vec<f32>> {
        Ok(warp_rgb(
            frame,
            &alignment(points)?.inverse().matrix(),
            TEMPLATE_SIZE,
        ))
    }

    /// The model input for an aligned face: planar RGB, normalised as the manifest says.
    pub fn input(&self, aligned: &[f32]) -> Tensor {
        Tensor::new(
            vec![1, 3, TEMPLATE_SIZE, TEMPLATE_SIZE],
            planar_rgb(aligned, self.norm),
        )
    }

    pub fn embed_aligned(&self, aligned: &[f32]) -> Result<Embedding> {
        let out = self.model.run(&[self.input(aligned)])?;
        Embedding::from_raw(&out[0].data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_recovers_a_known_transform_and_inverts() {
        let truth = Similarity {
            a: 0.8,
            b: 0.3,
            tx: -12.0,
            ty: 40.0,
        };
        let src: Vec<[f64; 2]> = ARCFACE_TEMPLATE.to_vec();
        let dst: Vec<[f64; 2]> = src.iter().map(|&p| truth.apply(p)).collect();
        let got = Similarity::estimate(&src, &dst).unwrap();
        for (x, y) in [
            (got.a, truth.a),
            (got.b, truth.b),
            (got.tx, truth.tx),
            (got.ty, truth.ty),
        ] {
            assert!((x - y).abs() < 1e-9, "{got:?} vs {truth:?}");
        }
        let back = got.inverse().apply(got.apply([3.0, -7.0]));
        assert!((back[0] - 3.0).abs() < 1e-9 && (back[1] + 7.0).abs() < 1e-9);
    }

    #[test]
    fn coincident_points_are_an_error_not_a_nan_warp() {
        let p = [[5.0, 5.0]; 5];
        assert!(Similarity::estimate(&p, &ARCFACE_TEMPLATE).is_err());
    }

    #[test]
    fn embeddings_are_unit_length_and_zero_is_refused() {
        let e = Embedding::from_raw(&[3.0, 4.0]).unwrap();
        assert!((e.similarity(&e) - 1.0).abs() < 1e-6);
        assert!(Embedding::from_raw(&[0.0, 0.0]).is_err());
        assert!(Embedding::from_raw(&[f32::NAN, 1.0]).is_err());
    }
}
