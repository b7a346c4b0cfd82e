//! The tract backend: pure Rust, runs on every target.

use anyhow::{anyhow, bail, Context, Result};
use tract_onnx::prelude::*;

use super::{Backend, Model, Tensor};
use crate::manifest::Manifest;

use tract_linalg::multithread::{multithread_tract_scope, Executor};

/// tract with `threads` matrix-multiply threads (one rayon pool shared by its models).
pub struct TractBackend {
    executor: Executor,
}

impl TractBackend {
    pub fn new(threads: usize) -> TractBackend {
        let executor = match threads {
            0 | 1 => Executor::SingleThread,
            n => Executor::multithread_with_name(n, "veriface-mm"),
        };
        TractBackend { executor }
    }
}

struct TractModel {
    plan: std::sync::Arc<TypedRunnableModel>,
    file: String,
    executor: Executor,
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn load(&self, manifest: &Manifest, key: &str) -> Result<Box<dyn Model>> {
        let spec = manifest.model(key)?;
        let (path, bytes) = manifest.read_verified(key)?;
        let file = path.display().to_string();
        let fail = |e: anyhow::Error| anyhow!("{file}: cannot load ONNX model: {}", root_cause(&e));
        // Shapes come from the manifest; value_info pinning symbolic dims trips tract's analysis.
        let mut model = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .model_for_read(&mut bytes.as_slice())
            .map_err(fail)?;
        let inputs = std::iter::once(&spec.input).chain(spec.extra_inputs.iter());
        for (i, input) in inputs.enumerate() {
            if input.dtype != "f32" {
                bail!(
                    "{file}: input {} has dtype {}, only f32 is supported",
                    input.name,
                    input.dtype
                );
            }
            model = model
                .with_input_fact(i, f32::fact(&input.shape).into())
                .map_err(fail)?;
        }
        let plan = model
            .into_optimized()
            .map_err(fail)?
            .into_runnable()
            .map_err(fail)?;
        Ok(Box::new(TractModel {
            plan,
            file,
            executor: self.executor.clone(),
        }))
    }
}

fn root_cause(e: &anyhow::Error) -> String {
    e.chain().last().map(|c| c.to_string()).unwrap_or_default()
}

impl Model for TractModel {
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let values: TVec<TValue> = inputs
            .iter()
            .map(|t| {
                tract_onnx::prelude::Tensor::from_shape(&t.shape, &t.data).map(|t| t.into_tvalue())
            })
            .collect::<TractResult<_>>()
            .with_context(|| format!("{}: bad input shape", self.file))?;
        let outputs = multithread_tract_scope(self.executor.clone(), || self.plan.run(values))
            .with_context(|| format!("{}: inference failed", self.file))?;
        outputs
            .iter()
            .map(|o| {
                let view = o.to_plain_array_view::<f32>()?;
                Ok(Tensor::new(
                    view.shape().to_vec(),
                    view.iter().copied().collect(),
                ))
            })
            .collect()
    }
}
