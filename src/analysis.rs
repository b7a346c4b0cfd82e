//! Analysis stage: per face, the frame-level deepfake probability (and the features behind it),
//! the temporal model stepped once per frame with its hidden state held per track, and emotion.
//!
//! Scores come only from models the manifest names: with no deepfake model there is no score.

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::face::{square_region, Detection};
use crate::frame::{crop_resize_into, Colour, Frame, Normalise};
use crate::infer::{Backend, Model, Tensor};
use crate::manifest::{Manifest, ModelSpec};

/// Manifest keys of the analysis models. The frame deepfake model names its temporal model.
pub const DEEPFAKE_KEY: &str = "deepfake";
pub const EMOTION_KEY: &str = "emotion";

/// How to cut and normalise one model's face crop.
#[derive(Clone, Debug)]
pub struct CropSpec {
    pub width: usize,
    pub height: usize,
    pub scale: f64,
    pub colour: Colour,
    pub norm: Normalise,
}

impl CropSpec {
    pub fn from_model(spec: &ModelSpec) -> Result<Self> {
        let (height, width) = spec.image_size()?;
        Ok(CropSpec {
            width,
            height,
            scale: spec.crop_scale.unwrap_or(1.0) as f64,
            colour: spec.colour()?,
            norm: spec.normalise(),
        })
    }

    /// The model input for one face.
    pub fn tensor(&self, frame: &Frame, detection: &Detection) -> Tensor {
        let region = square_region(&detection.bbox, self.scale);
        let channels = self.colour.channels();
        let mut data = vec![0f32; channels * self.width * self.height];
        crop_resize_into(
            frame,
            region,
            self.width,
            self.height,
            self.colour,
            self.norm,
            &mut data,
        );
        Tensor::new(vec![1, channels, self.height, self.width], data)
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The frame deepfake model: face crop in, (features, fake logit) out.
pub struct DeepfakeModel {
    model: Box<dyn Model>,
    pub crop: CropSpec,
}

impl DeepfakeModel {
    /// The fake logit of one prepared crop tensor.
    pub fn logit(&self, input: &Tensor) -> Result<f32> {
        let out = self.model.run(std::slice::from_ref(input))?;
        out.get(1)
            .and_then(|t| t.data.first().copied())
            .context("deepfake model returned no fake_logit")
    }

    /// Occlusion sensitivity of one face: a grey `patch` x `patch` square slid over the crop in
    /// steps of `stride`; each cell holds how much the fake logit fell with that part hidden.
    /// Needs no gradients, so it works on int8 models under any backend. Logits, not
    /// probabilities: a confident model's sigmoid is flat and would hide every change.
    pub fn occlusion(
        &self,
        frame: &Frame,
        det: &Detection,
        patch: usize,
        stride: usize,
    ) -> Result<Occlusion> {
        let crop = self.crop.tensor(frame, det);
        let base = self.logit(&crop)?;
        let (h, w) = (self.crop.height, self.crop.width);
        let channels = self.crop.colour.channels();
        let grey = (128.0 - self.crop.norm.mean) / self.crop.norm.std;
        let cells = |n: usize| (n.saturating_sub(patch)) / stride + 1;
        let (rows, cols) = (cells(h), cells(w));
        let mut drops = Vec::with_capacity(rows * cols);
        let mut occluded = crop.clone();
        for r in 0..rows {
            for c in 0..cols {
                occluded.data.copy_from_slice(&crop.data);
                for ch in 0..channels {
                    for y in r * stride..(r * stride + patch).min(h) {
                        let row = ch * h * w + y * w;
                        occluded.data[row + c * stride..row + (c * stride + patch).min(w)]
                            .fill(grey);
                    }
                }
                drops.push(base - self.logit(&occluded)?);
            }
        }
        Ok(Occlusion {
            base_logit: base,
            rows,
            cols,
            patch,
            stride,
            drops,
            crop,
        })
    }
}

/// An occlusion map over one face crop (see [`DeepfakeModel::occlusion`]).
#[derive(Clone, Debug)]
pub struct Occlusion {
    pub base_logit: f32,
    pub rows: usize,
    pub cols: usize,
    pub patch: usize,
    pub stride: usize,
    /// Row-major: fake logit without occlusion minus with this cell hidden.
    pub drops: Vec<f32>,
    /// The model input (normalised CHW) the map was made on.
    pub crop: Tensor,
}

/// The first value of an output that must hold one (a logit): an empty tensor is an error.
fn first_value(output: &Tensor, what: &str) -> Result<f32> {
    output
        .data
        .first()
        .copied()
        .with_context(|| format!("{what} is empty (shape {:?})", output.shape))
}

/// The temporal model, one step per frame: (features, hidden) in, (fake logit, hidden) out.
pub struct TemporalModel {
    model: Box<dyn Model>,
    feature_shape: Vec<usize>,
    hidden_shape: Vec<usize>,
}

/// One track's memory for the temporal model. As tract keeps an immutable plan apart from each
/// run's state, the model is shared by every stream and each track owns one of these.
#[derive(Clone, Debug)]
pub struct TemporalState {
    hidden: Vec<f32>,
}

impl TemporalModel {
    /// The state of a track that has seen no frame yet.
    pub fn start(&self) -> TemporalState {
        TemporalState {
            hidden: vec![0.0; self.hidden_shape.iter().product()],
        }
    }

    /// One step: returns the probability after this frame and moves the track's state on.
    pub fn step(&self, state: &mut TemporalState, features: &[f32]) -> Result<f32> {
        let x = Tensor::new(self.feature_shape.clone(), features.to_vec());
        let h = Tensor::new(self.hidden_shape.clone(), std::mem::take(&mut state.hidden));
        let mut out = self.model.run(&[x, h])?;
        if out.len() < 2 {
            bail!("temporal model must output (fake_logit, Y_h)");
        }
        let logit = first_value(&out[0], "temporal model's fake_logit")?;
        state.hidden = std::mem::take(&mut out[1].data);
        Ok(sigmoid(logit))
    }
}

pub struct EmotionModel {
    model: Box<dyn Model>,
    pub crop: CropSpec,
    pub classes: Vec<String>,
}

/// What the analysis stage says about one face in one frame.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FaceAnalysis {
    /// Frame-level fake probability; None when no deepfake model is installed.
    pub deepfake: Option<f32>,
    /// The temporal model's probability after this frame.
    pub temporal: Option<f32>,
    pub emotion: Option<EmotionScore>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EmotionScore {
    pub label: String,
    pub index: usize,
    pub confidence: f32,
    pub probabilities: Vec<f32>,
}

/// The analysis models, loaded once.
pub struct Analyzer {
    pub deepfake: Option<DeepfakeModel>,
    pub temporal: Option<TemporalModel>,
    pub emotion: Option<EmotionModel>,
}

impl Analyzer {
    pub fn load(backend: &dyn Backend, manifest: &Manifest, deepfake_key: &str) -> Result<Self> {
        let deepfake = match manifest.models.get(deepfake_key) {
            Some(spec) => {
                if spec.outputs.len() < 2 {
                    bail!(
                        "{}: a deepfake model must output (features, fake_logit)",
                        spec.file
                    );
                }
                Some(DeepfakeModel {
                    model: backend.load(manifest, deepfake_key)?,
                    crop: CropSpec::from_model(spec)?,
                })
            }
            // The default key may be absent (no score); a model asked for by name must exist.
            None if deepfake_key != DEEPFAKE_KEY => {
                manifest.model(deepfake_key)?;
                None
            }
            None => None,
        };
        let temporal_key = manifest
            .models
            .get(deepfake_key)
            .and_then(|s| s.temporal.clone());
        let temporal = match temporal_key {
            Some(key) => {
                let spec = manifest.model(&key)?;
                if spec.outputs.len() < 2 {
                    bail!(
                        "{}: a temporal model must output (fake_logit, Y_h)",
                        spec.file
                    );
                }
                let hidden = spec.extra_inputs.first().with_context(|| {
                    format!("{}: temporal model needs a hidden-state input", spec.file)
                })?;
                Some(TemporalModel {
                    model: backend.load(manifest, &key)?,
                    feature_shape: spec.input.shape.clone(),
                    hidden_shape: hidden.shape.clone(),
                })
            }
            None => None,
        };
        let emotion = match manifest.models.get(EMOTION_KEY) {
            Some(spec) => Some(EmotionModel {
                model: backend.load(manifest, EMOTION_KEY)?,
                crop: CropSpec::from_model(spec)?,
                classes: spec.classes.clone(),
            }),
            None => None,
        };
        Ok(Analyzer {
            deepfake,
            temporal,
            emotion,
        })
    }

    /// Frame deepfake model: (probability, features).
    pub fn deepfake_frame(
        &self,
        frame: &Frame,
        det: &Detection,
    ) -> Result<Option<(f32, Vec<f32>)>> {
        let Some(df) = &self.deepfake else {
            return Ok(None);
        };
        let mut out = df.model.run(&[df.crop.tensor(frame, det)])?;
        let logit = first_value(&out[1], "deepfake model's fake_logit")?;
        let features = std::mem::take(&mut out[0].data);
        Ok(Some((sigmoid(logit), features)))
    }

    pub fn emotion(&self, frame: &Frame, det: &Detection) -> Result<Option<EmotionScore>> {
        let Some(em) = &self.emotion else {
            return Ok(None);
        };
        let mut out = em.model.run(&[em.crop.tensor(frame, det)])?;
        let probabilities = std::mem::take(&mut out[0].data);
        let (index, confidence) = probabilities
            .iter()
            .copied()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .context("emotion model returned no classes")?;
        let label = em
            .classes
            .get(index)
            .cloned()
            .unwrap_or_else(|| format!("class{index}"));
        Ok(Some(EmotionScore {
            label,
            index,
            confidence,
            probabilities,
        }))
    }
}
