//! Inference backends. The pipeline talks to [`Model`]; each backend turns a manifest entry into one.

pub mod accel;
mod depthwise;
mod kernels;
mod maxpool;
#[cfg(feature = "tensorrt")]
pub mod ort;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod pointwise;
mod prelu;
pub mod tract;

use anyhow::{bail, Result};

use crate::manifest::Manifest;

/// A dense f32 tensor in row-major order.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape, data }
    }

    pub fn zeros(shape: &[usize]) -> Self {
        Tensor {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }
}

/// One loaded network, planned once at start-up and run many times.
pub trait Model: Send + Sync {
    /// Run with inputs in the model's order; outputs in the manifest's order.
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>>;

    /// What really runs it: `tract`, or the ONNX Runtime execution provider that came up.
    fn provider(&self) -> &str {
        "tract"
    }
}

/// Something that can load manifest models: tract everywhere, ONNX Runtime (TensorRT, CUDA)
/// in builds with the `tensorrt` feature.
pub trait Backend {
    fn name(&self) -> &'static str;
    fn load(&self, manifest: &Manifest, key: &str) -> Result<Box<dyn Model>>;
}

/// A model must give at least the outputs its manifest entry names: the stages index them, and a
/// wrong file under the right name (and hash) is a load error naming it, not a panic mid-stream.
pub(crate) fn check_output_count(
    file: &str,
    found: usize,
    spec: &crate::manifest::ModelSpec,
) -> Result<()> {
    if found < spec.outputs.len() {
        anyhow::bail!(
            "{file}: the model gives {found} output{}, the manifest names {} ({})",
            if found == 1 { "" } else { "s" },
            spec.outputs.len(),
            spec.outputs.join(", ")
        );
    }
    Ok(())
}

/// Zeros of every input shape the manifest gives for `key`, in the model's input order.
pub fn zero_inputs(manifest: &Manifest, key: &str) -> Result<Vec<Tensor>> {
    let spec = manifest.model(key)?;
    Ok(std::iter::once(&spec.input)
        .chain(spec.extra_inputs.iter())
        .map(|i| Tensor::zeros(&i.shape))
        .collect())
}

/// One run on zeros of the manifest's input shapes: TensorRT builds (or loads) its engine
/// lazily, so this moves that cost to start-up. Returns how long it took.
pub fn warm_up(model: &dyn Model, manifest: &Manifest, key: &str) -> Result<std::time::Duration> {
    let zeros = zero_inputs(manifest, key)?;
    let started = std::time::Instant::now();
    model
        .run(&zeros)
        .map_err(|e| anyhow::anyhow!("{key}: warm-up run failed: {e:#}"))?;
    Ok(started.elapsed())
}

/// The inference backend by name; the CLI (`--backend`) and the config (`engine.backend`) both
/// use this.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Pure Rust, every board
    Tract,
    /// ONNX Runtime (libonnxruntime.so from $ORT_DYLIB_PATH or the usual places) with the
    /// configured providers (TensorRT -> CUDA -> CPU by default); needs a build with --features
    /// tensorrt. `tensorrt` is the same backend under the name board profiles use.
    #[serde(alias = "tensorrt")]
    #[value(alias = "tensorrt")]
    Onnxruntime,
    /// ONNX Runtime where the build has it, a GPU answers and the library is found; else tract
    Auto,
}

impl BackendKind {
    /// The backend to build, with these ONNX Runtime options where it is ONNX Runtime.
    pub fn choice(self, ort: accel::OrtOptions) -> BackendChoice {
        match self {
            BackendKind::Tract => BackendChoice::Tract,
            BackendKind::Onnxruntime => BackendChoice::Onnxruntime(ort),
            BackendKind::Auto => BackendChoice::Auto(ort),
        }
    }
}

/// Which backend to build, from the config (`engine.backend` and `[onnxruntime]`).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum BackendChoice {
    #[default]
    Tract,
    Onnxruntime(accel::OrtOptions),
    /// ONNX Runtime where this build has it, a GPU answers and the library is installed.
    Auto(accel::OrtOptions),
}

/// `threads`: tract's matrix-multiply pool, or ONNX Runtime's intra-op pool per model.
pub fn open_backend(choice: &BackendChoice, threads: usize) -> Result<Box<dyn Backend>> {
    let built_with_ort = cfg!(feature = "tensorrt");
    let opts = match choice {
        BackendChoice::Tract => return Ok(Box::new(tract::TractBackend::new(threads))),
        BackendChoice::Onnxruntime(opts) => opts,
        BackendChoice::Auto(opts) => {
            let env = std::env::var("ORT_DYLIB_PATH").ok();
            let library = accel::find_library(&opts.library, env.as_deref());
            let gpu = accel::gpu_present(std::path::Path::new("/"));
            match accel::choose_auto(built_with_ort, library, gpu) {
                accel::AutoChoice::Tract(why) => {
                    log::info!("backend auto: tract ({why})");
                    return Ok(Box::new(tract::TractBackend::new(threads)));
                }
                accel::AutoChoice::Onnxruntime(lib) => {
                    log::info!("backend auto: ONNX Runtime from {}", lib.display());
                    opts
                }
            }
        }
    };
    opts.validate()?;
    open_onnxruntime(opts, threads)
}

#[cfg(feature = "tensorrt")]
fn open_onnxruntime(opts: &accel::OrtOptions, threads: usize) -> Result<Box<dyn Backend>> {
    match ort::OrtBackend::open(opts, threads) {
        Ok(backend) => Ok(Box::new(backend)),
        Err(e) => ort_unavailable(opts, threads, format!("{e:#}")),
    }
}

#[cfg(not(feature = "tensorrt"))]
fn open_onnxruntime(opts: &accel::OrtOptions, threads: usize) -> Result<Box<dyn Backend>> {
    ort_unavailable(
        opts,
        threads,
        "this build has no ONNX Runtime backend (rebuild with `--features tensorrt`)".into(),
    )
}

/// ONNX Runtime was asked for and cannot run at all: loud, then as `fallback` says.
fn ort_unavailable(
    opts: &accel::OrtOptions,
    threads: usize,
    why: String,
) -> Result<Box<dyn Backend>> {
    match opts.fallback {
        accel::Fallback::Fail => bail!("{why}"),
        accel::Fallback::Tract => {
            log::error!("ONNX RUNTIME NOT USED, every model runs on the CPU under tract: {why}");
            Ok(Box::new(tract::TractBackend::new(threads)))
        }
    }
}
