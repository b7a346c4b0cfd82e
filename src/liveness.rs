//! Liveness: passive presentation-attack detection (PAD) models on the face crop. Same layer as
//! `analysis`; the verification session above combines its answer with the others.
//!
//! PAD weights are never shipped: a configured model file is accepted when its sha256 matches
//! an entry of the PAD manifest (`models/pad.toml`, beside the model manifest), which says how
//! to crop and read it. Several configured models are fused by the mean of their live
//! probabilities.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::face::{square_region, Detection};
use crate::frame::{crop_resize_reflect_into, Frame, Normalise};
use crate::infer::{Backend, Model, Tensor};
use crate::manifest::{sha256_hex, Manifest, ModelSpec};

pub mod camera;
pub mod challenge;
pub mod planarity;

pub const PAD_TASK: &str = "pad";
/// The class a PAD model's entry names for a live face.
const LIVE_CLASS: &str = "live";
/// The PAD manifest's file name, beside the model manifest.
pub const PAD_MANIFEST: &str = "pad.toml";
/// Live when the fused live probability is at least this, unless configured: for a two-class
/// model it is the publisher's rule (live logit >= spoof logit).
pub const DEFAULT_THRESHOLD: f32 = 0.5;

/// One PAD model, loaded from a file the operator installed.
pub struct PadModel {
    model: Box<dyn Model>,
    size: usize,
    crop_scale: f64,
    norm: Normalise,
    live_index: usize,
    /// The PAD manifest's key for it, and its sha256.
    pub key: String,
    pub sha256: String,
}

impl PadModel {
    /// Load `path` if its sha256 is one of the PAD manifest's entries.
    pub fn load(backend: &dyn Backend, pad_manifest: &Manifest, path: &Path) -> Result<PadModel> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("{}: cannot read PAD model", path.display()))?;
        let sha256 = sha256_hex(&bytes);
        let (key, spec) = pad_manifest
            .models
            .iter()
            .find(|(_, s)| s.task == PAD_TASK && s.sha256.eq_ignore_ascii_case(&sha256))
            .with_context(|| {
                format!(
                    "{}: sha256 {} is not a PAD model known to {} (add an entry describing it: README, installing a PAD model)",
                    path.display(),
                    &sha256[..16],
                    pad_manifest.path.display()
                )
            })?;
        let live_index = spec
            .classes
            .iter()
            .position(|c| c == LIVE_CLASS)
            .with_context(|| {
                format!(
                    "{}: models.{key} names no \"live\" class",
                    pad_manifest.path.display()
                )
            })?;
        let (h, w) = spec.image_size()?;
        if h != w {
            bail!("{}: PAD input {w}x{h} is not square", path.display());
        }
        // The model file keeps the name the operator gave it; the entry says what it is.
        let mut spec: ModelSpec = spec.clone();
        spec.file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let single = Manifest {
            schema: 1,
            detector: BTreeMap::new(),
            models: BTreeMap::from([(key.clone(), spec.clone())]),
            path: path.parent().unwrap_or(Path::new(".")).join(PAD_MANIFEST),
        };
        Ok(PadModel {
            model: backend.load(&single, key)?,
            size: h,
            crop_scale: spec.crop_scale.unwrap_or(1.5) as f64,
            norm: spec.normalise(),
            live_index,
            key: key.clone(),
            sha256,
        })
    }

    /// The model input for one face: the square crop with the frame mirrored past its edges.
    pub fn input(&self, frame: &Frame, det: &Detection) -> Tensor {
        let size = self.size;
        let mut data = vec![0f32; 3 * size * size];
        let region = square_region(&det.bbox, self.crop_scale);
        crop_resize_reflect_into(
            frame,
            region,
            size,
            size,
            crate::frame::Colour::Rgb,
            self.norm,
            &mut data,
        );
        Tensor::new(vec![1, 3, size, size], data)
    }

    /// The model's raw outputs (logits) for an input.
    pub fn logits(&self, input: &Tensor) -> Result<Vec<f32>> {
        let out = self.model.run(std::slice::from_ref(input))?;
        let logits = out[0].data.clone();
        if logits.len() <= self.live_index {
            bail!(
                "PAD model {}: {} outputs, no live class",
                self.key,
                logits.len()
            );
        }
        Ok(logits)
    }

    /// P(live) for one face: the softmax of the logits at the live class.
    pub fn live_probability(&self, frame: &Frame, det: &Detection) -> Result<f32> {
        Ok(softmax_at(
            &self.logits(&self.input(frame, det))?,
            self.live_index,
        ))
    }
}

fn softmax_at(logits: &[f32], index: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|v| (v - max).exp()).sum();
    (logits[index] - max).exp() / sum
}

/// The passive check: one or more PAD models, fused.
pub struct PassiveCheck {
    pub models: Vec<PadModel>,
    pub threshold: f32,
}

/// `[liveness]` in the daemon's config: which checks join a verification session.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LivenessConfig {
    /// PAD model files (each must match an entry of models/pad.toml); several are fused by the
    /// mean of their live probabilities. Empty: no passive check.
    pub pad_models: Vec<String>,
    /// Live at or above this fused probability.
    pub pad_threshold: f32,
    /// Active challenge: this many random prompts per session (0: none, at most 3).
    pub challenge_prompts: u32,
    /// The prompts drawn from.
    pub challenge_pool: Vec<challenge::Prompt>,
    /// Seconds to follow each prompt.
    pub prompt_timeout_s: f64,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            pad_models: Vec::new(),
            pad_threshold: DEFAULT_THRESHOLD,
            challenge_prompts: 0,
            challenge_pool: challenge::Prompt::DEFAULT_POOL.to_vec(),
            prompt_timeout_s: 5.0,
        }
    }
}

impl LivenessConfig {
    /// A new challenge for a session, or None when none is configured.
    pub fn challenge(&self, seed: u64) -> Option<challenge::Challenge> {
        (self.challenge_prompts > 0).then(|| {
            challenge::Challenge::from_pool(
                seed,
                self.challenge_prompts as usize,
                &self.challenge_pool,
                self.prompt_timeout_s,
            )
        })
    }

    pub fn passive(&self) -> PassiveSettings {
        PassiveSettings {
            models: self.pad_models.iter().map(PathBuf::from).collect(),
            threshold: Some(self.pad_threshold),
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.pad_threshold) {
            bail!(
                "liveness.pad_threshold = {}: within 0..1",
                self.pad_threshold
            );
        }
        if self.pad_models.iter().any(|p| p.is_empty()) {
            bail!("liveness.pad_models: an empty path");
        }
        if self.challenge_prompts > 3 {
            bail!(
                "liveness.challenge_prompts = {}: 0 to 3",
                self.challenge_prompts
            );
        }
        if self.challenge_prompts > 0 && self.challenge_pool.is_empty() {
            bail!("liveness.challenge_pool: empty, but challenge_prompts asks for prompts");
        }
        if !(self.prompt_timeout_s > 0.0 && self.prompt_timeout_s <= 60.0) {
            bail!(
                "liveness.prompt_timeout_s = {}: above 0, at most 60",
                self.prompt_timeout_s
            );
        }
        Ok(())
    }
}

/// What to load for the passive check.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassiveSettings {
    pub models: Vec<PathBuf>,
    /// Live at or above this fused probability; None: `DEFAULT_THRESHOLD`.
    pub threshold: Option<f32>,
}

impl PassiveCheck {
    /// The configured models, checked against the PAD manifest beside `manifest`; None when
    /// none are configured.
    pub fn load(
        backend: &dyn Backend,
        manifest: &Manifest,
        settings: &PassiveSettings,
    ) -> Result<Option<PassiveCheck>> {
        if settings.models.is_empty() {
            return Ok(None);
        }
        let pad_path = manifest.dir().join(PAD_MANIFEST);
        let pad_manifest = Manifest::load(&pad_path)?;
        let models = settings
            .models
            .iter()
            .map(|p| PadModel::load(backend, &pad_manifest, p))
            .collect::<Result<Vec<_>>>()?;
        let threshold = settings.threshold.unwrap_or(DEFAULT_THRESHOLD);
        if !(0.0..=1.0).contains(&threshold) {
            bail!("PAD threshold {threshold}: must be within 0..1");
        }
        Ok(Some(PassiveCheck { models, threshold }))
    }

    /// The fused live probability: the mean over the models.
    pub fn live_probability(&self, frame: &Frame, det: &Detection) -> Result<f32> {
        let mut sum = 0.0;
        for m in &self.models {
            sum += m.live_probability(frame, det)?;
        }
        Ok(sum / self.models.len() as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_picks_the_live_class() {
        assert!((softmax_at(&[0.0, 0.0], 0) - 0.5).abs() < 1e-6);
        assert!(softmax_at(&[4.0, -4.0], 0) > 0.999);
        assert!(softmax_at(&[4.0, -4.0], 1) < 0.001);
        // Large logits do not overflow.
        assert!((softmax_at(&[1000.0, 1000.0], 1) - 0.5).abs() < 1e-6);
    }
}
