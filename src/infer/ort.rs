//! The ONNX Runtime backend (`--features tensorrt`): TensorRT, CUDA or ORT's CPU provider, tried
//! in the configured order. libonnxruntime.so is opened at run time (never linked, never
//! downloaded), so one binary runs on boards with and without it.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use ort::environment::Environment;
use ort::ep::{ExecutionProvider, CPU, CUDA};
use ort::session::builder::SessionBuilder;
use ort::session::Session;
use ort::value::TensorRef;

use super::accel::{self, Attempt, OrtOptions, Outcome, Provider};
use super::tract::TractBackend;
use super::{Backend, Model, Tensor};
use crate::manifest::Manifest;

/// ONNX Runtime allows one environment per process; the library it came from is kept so a second
/// request for a different file is refused instead of silently using the first.
static ENVIRONMENT: OnceLock<(PathBuf, Environment)> = OnceLock::new();

fn environment(library: PathBuf) -> Result<&'static Environment> {
    if let Some((loaded, env)) = ENVIRONMENT.get() {
        if *loaded != library {
            bail!(
                "{}: ONNX Runtime is already loaded from {} in this process",
                library.display(),
                loaded.display()
            );
        }
        return Ok(env);
    }
    let env = ort::init_from(&library)
        .map_err(|e| anyhow!("{}: cannot load ONNX Runtime: {e}", library.display()))?
        .with_name("veriface")
        .build()
        .map_err(|e| anyhow!("{}: cannot start ONNX Runtime: {e}", library.display()))?;
    let (_, env) = ENVIRONMENT.get_or_init(|| (library, env));
    Ok(env)
}

pub struct OrtBackend {
    opts: OrtOptions,
    threads: usize,
    env: &'static Environment,
    library: PathBuf,
    /// Providers this libonnxruntime.so was compiled with.
    available: Vec<Provider>,
}

impl OrtBackend {
    pub fn open(opts: &OrtOptions, threads: usize) -> Result<OrtBackend> {
        let env_path = std::env::var("ORT_DYLIB_PATH").ok();
        let library = accel::find_library(&opts.library, env_path.as_deref())?;
        let env = environment(library.clone())?;
        let available = [Provider::Tensorrt, Provider::Cuda, Provider::Cpu]
            .into_iter()
            .filter(|p| compiled_in(*p))
            .collect::<Vec<_>>();
        log::info!(
            "ONNX Runtime {} from {} (providers compiled in: {})",
            ort_version(),
            library.display(),
            available
                .iter()
                .map(|p| p.ort_name())
                .collect::<Vec<_>>()
                .join(", ")
        );
        if opts.providers.contains(&Provider::Tensorrt) {
            accel::prepare_cache_dir(std::path::Path::new(&opts.cache_dir))?;
        }
        Ok(OrtBackend {
            opts: opts.clone(),
            threads: threads.max(1),
            env,
            library,
            available,
        })
    }

    /// Providers the loaded libonnxruntime.so was compiled with.
    pub fn compiled_in(&self) -> &[Provider] {
        &self.available
    }

    fn session_with(&self, provider: Provider, key: &str, bytes: &[u8]) -> Result<Session> {
        if !self.available.contains(&provider) {
            bail!("not compiled into {}", self.library.display());
        }
        let builder = Session::builder(self.env)
            .map_err(|e| anyhow!("{e}"))?
            .with_intra_threads(self.threads)
            .map_err(|e| anyhow!("{e}"))?;
        let mut builder = self.register(builder, provider, key)?;
        builder
            .commit_from_memory(bytes)
            .map_err(|e| anyhow!("{e}"))
    }

    fn register(
        &self,
        mut builder: SessionBuilder,
        provider: Provider,
        key: &str,
    ) -> Result<SessionBuilder> {
        let o = &self.opts;
        let result = match provider {
            Provider::Tensorrt => {
                let mut trt = ort::ep::TensorRT::default()
                    .with_device_id(o.device_id as i32)
                    .with_fp16(o.fp16)
                    .with_int8(o.int8)
                    .with_engine_cache(true)
                    .with_engine_cache_path(&o.cache_dir)
                    .with_engine_cache_prefix(accel::engine_cache_prefix(key))
                    .with_timing_cache(true)
                    .with_timing_cache_path(&o.cache_dir);
                if o.dla_core >= 0 {
                    trt = trt.with_dla(true).with_dla_core(o.dla_core as u32);
                }
                trt.register(&mut builder)
            }
            Provider::Cuda => CUDA::default()
                .with_device_id(o.device_id as i32)
                .register(&mut builder),
            Provider::Cpu => CPU::default().register(&mut builder),
        };
        result.map_err(|e| anyhow!("{e}"))?;
        Ok(builder)
    }
}

fn compiled_in(p: Provider) -> bool {
    let available = match p {
        Provider::Tensorrt => ort::ep::TensorRT::is_available(),
        Provider::Cuda => CUDA::is_available(),
        Provider::Cpu => CPU::is_available(),
    };
    available.unwrap_or(false)
}

fn ort_version() -> String {
    ort::info()
        .split(',')
        .find_map(|s| s.trim().strip_prefix("git-branch="))
        .unwrap_or("(version unknown)")
        .to_string()
}

struct OrtModel {
    session: Mutex<Session>,
    provider: &'static str,
    file: String,
}

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    fn load(&self, manifest: &Manifest, key: &str) -> Result<Box<dyn Model>> {
        let spec = manifest.model(key)?;
        let (path, bytes) = manifest.read_verified(key)?;
        let file = path.display().to_string();
        let mut attempts: Vec<Attempt> = Vec::new();
        let mut session = None;
        for &provider in &self.opts.providers {
            let started = Instant::now();
            match self.session_with(provider, key, &bytes) {
                Ok(s) => {
                    log::info!(
                        "{key}: {} ({:.0} ms to build)",
                        provider.ort_name(),
                        started.elapsed().as_secs_f64() * 1e3
                    );
                    attempts.push((provider, Ok(())));
                    session = Some(s);
                    break;
                }
                Err(e) => attempts.push((provider, Err(format!("{e:#}")))),
            }
        }
        match accel::decide(&attempts, self.opts.fallback) {
            Outcome::Run { provider, skipped } => {
                for (p, why) in &skipped {
                    // Never a silent downgrade: each provider that did not come up is an error line.
                    log::error!(
                        "{key}: {} ASKED FOR, NOT USED ({why}); running on {}",
                        p.ort_name(),
                        provider.ort_name()
                    );
                }
                let session = session.expect("decide() ran on a successful attempt");
                check_inputs(&session, spec, &file)?;
                Ok(Box::new(OrtModel {
                    session: Mutex::new(session),
                    provider: provider.ort_name(),
                    file,
                }))
            }
            Outcome::Tract { reason } => {
                log::error!(
                    "{key}: NO ONNX RUNTIME PROVIDER CAME UP, running under tract ({reason})"
                );
                TractBackend::new(self.threads).load(manifest, key)
            }
            Outcome::Fail { reason } => {
                bail!("{file}: no ONNX Runtime execution provider came up: {reason}")
            }
        }
    }
}

fn check_inputs(session: &Session, spec: &crate::manifest::ModelSpec, file: &str) -> Result<()> {
    let expected = 1 + spec.extra_inputs.len();
    if session.inputs().len() != expected {
        bail!(
            "{file}: the model has {} inputs, the manifest describes {expected}",
            session.inputs().len()
        );
    }
    crate::infer::check_output_count(file, session.outputs().len(), spec)
}

impl Model for OrtModel {
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let values = inputs
            .iter()
            .map(|t| {
                TensorRef::from_array_view((t.shape.as_slice(), t.data.as_slice()))
                    .map(ort::session::SessionInputValue::from)
            })
            .collect::<ort::Result<Vec<_>>>()
            .with_context(|| format!("{}: bad input shape", self.file))?;
        let mut session = self.session.lock().expect("ONNX Runtime session poisoned");
        let outputs = session
            .run(values.as_slice())
            .map_err(|e| anyhow!("{}: inference failed: {e}", self.file))?;
        outputs
            .values()
            .map(|v| {
                let (shape, data) = v
                    .try_extract_tensor::<f32>()
                    .map_err(|e| anyhow!("{}: output is not f32: {e}", self.file))?;
                Ok(Tensor::new(
                    shape.iter().map(|&d| d as usize).collect(),
                    data.to_vec(),
                ))
            })
            .collect()
    }

    fn provider(&self) -> &str {
        self.provider
    }
}
