//! `models/manifest.toml`: which ONNX files exist, what they expect and where they came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::frame::{Colour, Normalise};

#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    #[serde(default)]
    pub detector: BTreeMap<String, DetectorSpec>,
    pub models: BTreeMap<String, ModelSpec>,
    /// The file the manifest was read from; model files are relative to its folder.
    #[serde(skip)]
    pub path: PathBuf,
}

/// BlazeFace anchor and decoding parameters.
#[derive(Clone, Debug, Deserialize)]
pub struct DetectorSpec {
    pub size: usize,
    pub strides: Vec<usize>,
    pub anchors_per_layer: usize,
    pub score_threshold: f32,
    pub nms_iou: f32,
}

#[derive(Clone, Debug, Deserialize)]
pub struct InputSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub layout: String,
    pub dtype: String,
    pub colour: String,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub struct NormaliseSpec {
    pub mean: f32,
    pub std: f32,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ModelSpec {
    pub file: String,
    pub sha256: String,
    pub task: String,
    #[serde(default)]
    pub description: String,
    pub input: InputSpec,
    /// Further inputs (e.g. a GRU's hidden state), in the model's input order after `input`.
    #[serde(default)]
    pub extra_inputs: Vec<InputSpec>,
    #[serde(default)]
    pub normalise: Option<NormaliseSpec>,
    pub outputs: Vec<String>,
    #[serde(default)]
    pub classes: Vec<String>,
    #[serde(default)]
    pub crop_scale: Option<f32>,
    #[serde(default)]
    pub variant_of: Option<String>,
    /// For a frame deepfake model: the manifest key of its temporal (GRU step) model.
    #[serde(default)]
    pub temporal: Option<String>,
    /// tract runs the float convolutions channel-last (NHWC): chosen per model by measurement
    /// (see models/tools/manifest.py). Other backends pick their own layout and ignore it.
    #[serde(default)]
    pub tract_channels_last: bool,
    /// tract runs veriface's depthwise/stem convolution, pointwise convolution and max-pool ops
    /// (src/infer/depthwise.rs, pointwise.rs, maxpool.rs) where they apply instead of its own;
    /// `false` keeps tract's, for comparison.
    #[serde(default = "own_ops_by_default")]
    pub tract_own_ops: bool,
    /// For a frame deepfake model: the operating threshold on its fake probability, chosen on
    /// validation data for a stated BPCER (see models/README.md).
    #[serde(default)]
    pub threshold: Option<f32>,
    /// For a face embedding model: the similarity under which a session's face no longer counts
    /// as the person it started with (looser than `threshold`: expressions and head turns lower
    /// the similarity of one person).
    #[serde(default)]
    pub continuity_threshold: Option<f32>,
    pub licence: String,
    pub source: String,
    pub training_data: String,
}

impl ModelSpec {
    pub fn colour(&self) -> Result<Colour> {
        match self.input.colour.as_str() {
            "RGB" => Ok(Colour::Rgb),
            "GREY" => Ok(Colour::Grey),
            other => bail!("model {}: unsupported colour order {other:?}", self.file),
        }
    }

    pub fn normalise(&self) -> Normalise {
        let n = self.normalise.unwrap_or(NormaliseSpec {
            mean: 0.0,
            std: 1.0,
        });
        Normalise {
            mean: n.mean,
            std: n.std,
        }
    }

    /// (height, width) of an NCHW image input.
    pub fn image_size(&self) -> Result<(usize, usize)> {
        match self.input.shape.as_slice() {
            [1, _, h, w] if self.input.layout == "NCHW" => Ok((*h, *w)),
            _ => bail!(
                "model {}: expected an NCHW image input, manifest says {:?}",
                self.file,
                self.input.shape
            ),
        }
    }
}

impl Manifest {
    /// Read and check a manifest. Errors name the file and the cause.
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read model manifest", path.display()))?;
        let mut m: Manifest = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!("{}: invalid manifest: {}", path.display(), e.message())
        })?;
        if m.schema != 1 {
            bail!(
                "{}: manifest schema {} is not supported (this build reads 1)",
                path.display(),
                m.schema
            );
        }
        m.path = path.to_path_buf();
        Ok(m)
    }

    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new(""))
    }

    pub fn model(&self, key: &str) -> Result<&ModelSpec> {
        self.models.get(key).ok_or_else(|| self.no_model(key))
    }

    pub fn model_mut(&mut self, key: &str) -> Result<&mut ModelSpec> {
        if !self.models.contains_key(key) {
            return Err(self.no_model(key));
        }
        Ok(self.models.get_mut(key).expect("checked above"))
    }

    /// The operating threshold of a deepfake model: its own, else that of the model it is a
    /// variant of, else 0.5 (also when the model is absent: there is no score to threshold).
    pub fn operating_threshold(&self, key: &str) -> Result<f32> {
        let spec = self.models.get(key);
        let base = spec
            .and_then(|s| s.variant_of.as_deref())
            .and_then(|b| self.models.get(b));
        let t = spec
            .and_then(|s| s.threshold)
            .or(base.and_then(|s| s.threshold))
            .unwrap_or(0.5);
        if !(t > 0.0 && t < 1.0) {
            bail!(
                "{}: models.{key}.threshold = {t}: must be within 0..1",
                self.path.display()
            );
        }
        Ok(t)
    }

    /// The first model (in key order) that does this task, if any.
    pub fn key_for_task(&self, task: &str) -> Option<String> {
        self.models
            .iter()
            .find(|(_, spec)| spec.task == task)
            .map(|(key, _)| key.clone())
    }

    fn no_model(&self, key: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "{}: no model {key:?} (has: {})",
            self.path.display(),
            self.keys().join(", ")
        )
    }

    pub fn keys(&self) -> Vec<&str> {
        self.models.keys().map(String::as_str).collect()
    }

    pub fn path_of(&self, spec: &ModelSpec) -> PathBuf {
        self.dir().join(&spec.file)
    }

    /// Read a model file and check its sha256 against the manifest.
    pub fn read_verified(&self, key: &str) -> Result<(PathBuf, Vec<u8>)> {
        let spec = self.model(key)?;
        let path = self.path_of(spec);
        let bytes = std::fs::read(&path)
            .with_context(|| format!("{}: cannot read model file", path.display()))?;
        let digest = hex(&Sha256::digest(&bytes));
        if !digest.eq_ignore_ascii_case(&spec.sha256) {
            bail!(
                "{}: sha256 {} does not match the manifest ({}): wrong or corrupt model file",
                path.display(),
                &digest[..16],
                &spec.sha256[..spec.sha256.len().min(16)]
            );
        }
        Ok((path, bytes))
    }
}

/// The sha256 of some bytes, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The manifest next to the binary's models: `$VERIFACE_MODELS`, `./models`, the installed path.
pub fn default_manifest_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("VERIFACE_MODELS") {
        return PathBuf::from(dir).join("manifest.toml");
    }
    let candidates = [
        PathBuf::from("models/manifest.toml"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/manifest.toml"),
        PathBuf::from("/usr/share/veriface/models/manifest.toml"),
    ];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| candidates[0].clone())
}

fn own_ops_by_default() -> bool {
    true
}
