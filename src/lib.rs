//! veriface: face by face, live person or deepfake, and which emotion — on edge boards.
//!
//! Stages, each a module, in layers from the bottom up (ARCHITECTURE.md; `tests/architecture.rs`
//! checks that no module imports from a layer above it): [`frame`] and [`clock`], [`manifest`], [`source`]
//! (frames in) and [`infer`] (backends that run the ONNX models); [`face`] (detect, track,
//! crop); [`analysis`] (deepfake, emotion), [`identity`] and [`liveness`]; [`verdict`] (temporal
//! decision, results); [`sinks`] (report, plots, display, LEDs, records); [`pipeline`] wires
//! them; [`daemon`], [`api`], [`eval`] and [`bench`] drive them.

pub mod analysis;
pub mod api;
pub mod bench;
pub mod clock;
pub mod daemon;
pub mod eval;
pub mod face;
pub mod frame;
pub mod identity;
pub mod infer;
pub mod liveness;
pub mod manifest;
pub mod pipeline;
pub mod sinks;
pub mod source;
pub mod verdict;
