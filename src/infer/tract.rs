//! The tract backend: pure Rust, runs on every target.

use anyhow::{anyhow, bail, Context, Result};
use std::time::{Duration, Instant};

use serde::Serialize;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::{eval, SimpleState};

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
        let (plan, file) = optimized_plan(manifest, key)?;
        Ok(Box::new(TractModel {
            plan,
            file,
            executor: self.executor.clone(),
        }))
    }
}

/// Read, verify and optimise one manifest model; returns the plan and the file it came from.
fn optimized_plan(
    manifest: &Manifest,
    key: &str,
) -> Result<(std::sync::Arc<TypedRunnableModel>, String)> {
    let spec = manifest.model(key)?;
    let (path, bytes) = manifest.read_verified(key)?;
    let file = path.display().to_string();
    let fail = |e: anyhow::Error| anyhow!("{file}: cannot load ONNX model: {}", root_cause(&e));
    // Shapes come from the manifest; value_info pinning symbolic dims trips tract's analysis.
    let mut onnx = tract_onnx::onnx().with_ignore_value_info(true);
    onnx.op_register.insert("PRelu", super::prelu::builder);
    let mut model = onnx.model_for_read(&mut bytes.as_slice()).map_err(fail)?;
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
    let mut model = model.into_typed().map_err(fail)?;
    // Before decluttering, which turns pointwise convolutions into tract's matrix products.
    if spec.tract_own_ops && spec.tract_channels_last {
        own_pointwise_ops(&mut model).map_err(fail)?;
    }
    let mut model = model.into_decluttered().map_err(fail)?;
    if spec.tract_own_ops {
        own_ops(&mut model, spec.tract_channels_last).map_err(fail)?;
    }
    if spec.tract_channels_last {
        channels_last(&mut model).map_err(fail)?;
    }
    let plan = model
        .into_optimized()
        .map_err(fail)?
        .into_runnable()
        .map_err(fail)?;
    crate::infer::check_output_count(&file, plan.model().outputs.len(), spec)?;
    Ok((plan, file))
}

/// Where tract 0.23 has no fast kernel for a node, run veriface's op instead (measured in
/// `bench --model KEY --profile --tract-ops tract|veriface`, and under qemu by
/// benches/arm/count.sh): max pooling; in the channel-first models the depthwise convolutions
/// of stride 2 (tract vectorises stride 1 itself); in the channel-last models the depthwise and
/// few-input (stem) convolutions. On aarch64 tract has a channel-inner depthwise kernel, but
/// veriface's vector tiles execute fewer instructions (frame model 170 → 166 M on cortex-a72
/// and a76), and the stems need the op.
fn own_ops(model: &mut TypedModel, channels_last: bool) -> Result<()> {
    super::maxpool::replace(model, channels_last)?;
    super::depthwise::replace(model, channels_last)?;
    Ok(())
}

/// The channel-last pointwise convolutions on x86, where veriface's product reads the
/// activations in place instead of packing them (frame model: tract's products and packing 5.8
/// ms, veriface's 3.9); its NEON copy on aarch64.
fn own_pointwise_ops(model: &mut TypedModel) -> Result<()> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    super::pointwise::replace(model)?;
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = model;
    Ok(())
}

/// Rewrite every float convolution to run channel-last, with one transpose at the input: the
/// depthwise kernels (veriface's on x86, tract's on aarch64) vectorise across channels in that
/// layout. Decluttering afterwards cancels the transposes between consecutive convolutions.
fn channels_last(model: &mut TypedModel) -> Result<()> {
    let rewrite = tract_onnx::tract_core::transform::get_transform("conv_nhwc")?
        .ok_or_else(|| anyhow!("this tract build has no conv_nhwc transform"))?;
    rewrite.transform(model)?;
    Ok(())
}

/// One node of an optimised tract plan and its mean time per inference.
#[derive(Debug, Serialize)]
pub struct NodeTime {
    /// The node's id in the optimised plan (what `--mark-nodes` markers carry).
    pub id: usize,
    /// tract's operator after optimisation (e.g. OptMatMul, DepthWiseConv).
    pub op: String,
    /// The node's name, derived from the ONNX node it came from.
    pub name: String,
    pub output_shape: Vec<usize>,
    /// The first output's element type (e.g. F32, I8, I32): tells the integer nodes apart.
    pub output_type: String,
    pub mean_ms: f64,
}

impl TractBackend {
    /// Time every node of one manifest model over `runs` inferences on zero inputs (after one
    /// warm-up run), slowest first: where the time goes before deciding what to change.
    /// `mark_nodes` brackets each timed node's evaluation with `node_marker` calls.
    pub fn profile(
        &self,
        manifest: &Manifest,
        key: &str,
        runs: u32,
        mark_nodes: bool,
    ) -> Result<Vec<NodeTime>> {
        let (plan, file) = optimized_plan(manifest, key)?;
        let inputs = crate::infer::zero_inputs(manifest, key)?;
        let mut state = SimpleState::new(&plan)?;
        let mut spent = vec![Duration::ZERO; plan.model().nodes().len()];
        let runs = runs.max(1);
        multithread_tract_scope(self.executor.clone(), || -> Result<()> {
            for run in 0..=runs {
                let values = to_values(&inputs, &file)?;
                state
                    .run_plan_with_eval(values, |ctx, op_state, node, input| {
                        let marked = mark_nodes && run > 0;
                        let started = Instant::now();
                        if marked {
                            node_marker(NodeMark::Start, node.id);
                        }
                        let output = eval(ctx, op_state, node, input);
                        if marked {
                            node_marker(NodeMark::End, node.id);
                        }
                        if run > 0 {
                            spent[node.id] += started.elapsed();
                        }
                        output
                    })
                    .with_context(|| format!("{file}: inference failed"))?;
            }
            Ok(())
        })?;
        let mut nodes: Vec<NodeTime> = plan
            .model()
            .nodes()
            .iter()
            .map(|node| NodeTime {
                id: node.id,
                op: node.op().name().to_string(),
                name: node.name.clone(),
                output_shape: node
                    .outputs
                    .first()
                    .and_then(|o| o.fact.shape.as_concrete().map(<[usize]>::to_vec))
                    .unwrap_or_default(),
                output_type: node
                    .outputs
                    .first()
                    .map(|o| format!("{:?}", o.fact.datum_type.unquantized()))
                    .unwrap_or_default(),
                mean_ms: spent[node.id].as_secs_f64() * 1e3 / runs as f64,
            })
            .collect();
        nodes.sort_by(|a, b| b.mean_ms.total_cmp(&a.mean_ms));
        Ok(nodes)
    }
}

/// The system call number of the per-node marker. No kernel has it (Linux answers ENOSYS and
/// does nothing else); `benches/arm/insn_count.c` watches for it under qemu to attribute
/// guest instructions to tract's nodes.
const NODE_MARKER_SYSCALL: i64 = 0x7e57;

#[derive(Clone, Copy)]
enum NodeMark {
    Start = 0,
    End = 1,
}

/// Marks the start or end of one node's evaluation for an instruction counter outside the
/// process (a qemu plugin sees every system call with its arguments). A no-op elsewhere.
fn node_marker(mark: NodeMark, node: usize) {
    // SAFETY: an unknown system call number takes no pointers and changes nothing; it only
    // returns ENOSYS, which is ignored.
    unsafe {
        libc::syscall(
            NODE_MARKER_SYSCALL as libc::c_long,
            mark as libc::c_long,
            node,
        );
    }
}

fn to_values(inputs: &[Tensor], file: &str) -> Result<TVec<TValue>> {
    inputs
        .iter()
        .map(|t| {
            tract_onnx::prelude::Tensor::from_shape(&t.shape, &t.data).map(|t| t.into_tvalue())
        })
        .collect::<TractResult<_>>()
        .with_context(|| format!("{file}: bad input shape"))
}

fn root_cause(e: &anyhow::Error) -> String {
    e.chain().last().map(|c| c.to_string()).unwrap_or_default()
}

impl Model for TractModel {
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let values = to_values(inputs, &self.file)?;
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
