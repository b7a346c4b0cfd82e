//! veriface: face by face, live person or deepfake, and which emotion — on edge boards.
//!
//! Stages, each a module: [`source`] (frames in), [`face`] (detect, track, crop), [`infer`]
//! (backends that run the ONNX models), [`analysis`] (deepfake, emotion), [`verdict`]
//! (temporal smoothing, decision) and [`sinks`] (report, plots); [`pipeline`] wires them.

pub mod analysis;
pub mod bench;
pub mod daemon;
pub mod eval;
pub mod face;
pub mod frame;
pub mod infer;
pub mod manifest;
pub mod pipeline;
pub mod sinks;
pub mod source;
pub mod verdict;
