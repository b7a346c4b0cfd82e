//! Inference backends. The pipeline talks to [`Model`]; each backend turns a manifest entry into one.

pub mod tract;

use anyhow::Result;

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
}

/// Something that can load manifest models (tract everywhere; ONNX Runtime + TensorRT later).
pub trait Backend {
    fn name(&self) -> &'static str;
    fn load(&self, manifest: &Manifest, key: &str) -> Result<Box<dyn Model>>;
}
