//! What veriface's own tract ops (`depthwise`, `pointwise`, `maxpool`) share: the choice of
//! compiled kernel copy, the taps of a window that land inside the input, an output tensor
//! filled row by row across tract's thread pool, and the graph patterns they fuse (scalar
//! clamp bounds, PReLU).

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::array::{Pad, PadMode};
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::Conv;
use tract_onnx::tract_core::ops::math;
use tract_onnx::tract_core::ops::nn::DataShape;

/// Which compiled copy of the kernel runs: the widest this CPU has, chosen at load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    Baseline,
}

impl Isa {
    pub(super) fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2Fma;
            }
        }
        Isa::Baseline
    }

    /// Every copy this CPU can run: the tests run each.
    #[cfg(test)]
    pub(super) fn available() -> Vec<Isa> {
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut copies = vec![Isa::Baseline];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                copies.push(Isa::Avx2Fma);
            }
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                copies.push(Isa::Avx512);
            }
        }
        copies
    }
}

/// A new f32 tensor of `shape` whose rows of `row` values `fill(first row, rows)` writes, the
/// rows split across tract's pool when the engine has threads (they are independent). `work`:
/// the values read, for the pool's threshold. The tensor starts uninitialised: zeroing it cost
/// the frame model 0.2 ms.
///
/// # Safety
/// `fill` must write every value of the rows it is handed.
pub(super) unsafe fn fill_rows(
    shape: &[usize],
    row: usize,
    work: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> TractResult<Tensor> {
    // SAFETY: f32 has no invalid bit patterns, and the caller writes every value before the
    // tensor is returned to be read.
    let mut output = unsafe { Tensor::uninitialized::<f32>(shape)? };
    {
        let mut view = output.try_as_plain_ram_mut()?;
        let out = view.as_slice_mut::<f32>()?;
        tract_linalg::multithread::par_chunks_mut(out, row, work, |first_row, rows| {
            fill(first_row, rows);
            Ok(())
        })?;
    }
    Ok(output)
}

/// The taps of one axis that land inside the input for output position `o`: (first, end, and
/// the input position of tap 0, possibly negative).
#[inline(always)]
pub(super) fn tap_range(
    o: usize,
    stride: usize,
    dilation: usize,
    pad: usize,
    size: usize,
    taps: usize,
) -> (usize, usize, isize) {
    let origin = (o * stride) as isize - pad as isize;
    let d = dilation as isize;
    let mut first = 0;
    while first < taps && origin + first as isize * d < 0 {
        first += 1;
    }
    let mut end = taps;
    while end > first && origin + (end as isize - 1) * d >= size as isize {
        end -= 1;
    }
    (first, end, origin)
}

/// Put `op`, fed by `inputs`, in place of the nodes up to `last` (whose output it replaces).
/// `moves`: (channel axis, last axis) of channel-first inputs the op takes channel-last; each
/// input moves its channels last and the output moves them back, transposes that decluttering
/// cancels against their neighbours'.
pub(super) fn splice(
    model: &mut TypedModel,
    name: &str,
    op: impl Into<Box<dyn TypedOp>>,
    inputs: &[OutletId],
    last: usize,
    moves: Option<(usize, usize)>,
) -> TractResult<()> {
    let mut patch = TypedModelPatch::new(format!("veriface {name}"));
    let mut wires = tvec![];
    for (i, input) in inputs.iter().enumerate() {
        let mut wire = patch.tap_model(model, *input)?;
        if let Some((c_axis, last_axis)) = moves {
            let (to_last, name) = (
                AxisOp::Move(c_axis, last_axis),
                format!("{name}.nhwc_in{i}"),
            );
            wire = patch.wire_node(name, to_last, &[wire])?[0];
        }
        wires.push(wire);
    }
    let mut wire = patch.wire_node(name, op, &wires)?[0];
    if let Some((c_axis, last_axis)) = moves {
        let name = format!("{name}.nhwc_out");
        wire = patch.wire_node(name, AxisOp::Move(last_axis, c_axis), &[wire])?[0];
    }
    patch.shunt_outside(model, OutletId::new(last, 0), wire)?;
    patch.apply(model)
}

/// What the own convolution ops read from a tract `Conv`: its constant kernel, its bias per
/// output channel and its input's concrete shape.
pub(super) struct ConvParts {
    pub kernel: Arc<Tensor>,
    pub bias: Vec<f32>,
    pub data: DataShape,
}

/// The parts of a float 2-D convolution with constant kernel and bias on an input of concrete
/// shape, or `None` for any other (quantised, dynamic, 1-D or 3-D) convolution.
pub(super) fn conv_parts(
    model: &TypedModel,
    node: &TypedNode,
    conv: &Conv,
) -> TractResult<Option<ConvParts>> {
    let spec = &conv.pool_spec;
    if conv.q_params.is_some() || node.inputs.len() != 3 || spec.kernel_shape.len() != 2 {
        return Ok(None);
    }
    let x = model.outlet_fact(node.inputs[0])?;
    let (Some(kernel), Some(bias)) = (
        model.outlet_fact(node.inputs[1])?.konst.clone(),
        model.outlet_fact(node.inputs[2])?.konst.clone(),
    ) else {
        return Ok(None);
    };
    let Some(shape) = x.shape.as_concrete() else {
        return Ok(None);
    };
    if x.datum_type != f32::datum_type() || kernel.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    let outputs = spec.output_channels;
    let bias = bias.cast_to::<f32>()?;
    let bias = match bias.try_as_plain_ram()?.as_slice::<f32>()? {
        [b] => vec![*b; outputs],
        b if b.len() == outputs => b.to_vec(),
        _ => return Ok(None),
    };
    let data = spec
        .data_format
        .shape(shape.iter().copied().collect::<TVec<usize>>())?;
    Ok(Some(ConvParts { kernel, bias, data }))
}

/// What an op fuses after its convolution: a residual (the tensor and its channels), PReLU
/// slopes per output channel, then a clamp `min(max(y, lo), hi)`, in that order.
#[derive(Clone, Debug)]
pub(super) struct Epilogue {
    pub residual: Option<(OutletId, usize)>,
    pub slopes: Option<Vec<f32>>,
    pub clamp: (f32, f32),
}

/// Follow convolution `conv`'s output (`channels` channels on axis `c_axis`) through the nodes
/// an op can fuse: where `residual`, one `Add` of a tensor of the output's shape (or of a zero
/// channel padding's input, see `residual_source`); where `with_prelu`, a PReLU as `prelu.rs`
/// expands it; then `max(x, a)` / `min(x, b)` against scalar constants. Returns what was found
/// and the last node covered.
pub(super) fn absorb_epilogue(
    model: &TypedModel,
    conv: usize,
    c_axis: usize,
    channels: usize,
    residual: bool,
    with_prelu: bool,
) -> TractResult<(Epilogue, usize)> {
    let mut found = Epilogue {
        residual: None,
        slopes: None,
        clamp: (f32::NEG_INFINITY, f32::INFINITY),
    };
    let mut last = conv;
    loop {
        let outlet = OutletId::new(last, 0);
        if model.outputs.contains(&outlet) {
            break;
        }
        let unclamped = found.clamp == (f32::NEG_INFINITY, f32::INFINITY);
        if with_prelu && found.slopes.is_none() && unclamped {
            if let Some((slopes, end)) = prelu(model, outlet, c_axis, channels)? {
                found.slopes = Some(slopes);
                last = end;
                continue;
            }
        }
        let succ = &model.node(last).outputs[0].successors;
        if succ.len() != 1 {
            break;
        }
        let next = model.node(succ[0].node);
        let Some(bin) = next.op_as::<TypedBinOp>() else {
            break;
        };
        let Some(&other) = next.inputs.iter().find(|i| **i != outlet) else {
            break;
        };
        let shape = &model.outlet_fact(outlet)?.shape;
        if next.inputs.len() != 2 || model.outlet_fact(OutletId::new(next.id, 0))?.shape != *shape {
            break;
        }
        if let Some(bound) = scalar_const(model, other) {
            if bin.0.is::<math::Max>() {
                found.clamp.0 = found.clamp.0.max(bound);
            } else if bin.0.is::<math::Min>() {
                found.clamp.1 = found.clamp.1.min(bound);
            } else {
                break;
            }
        } else if residual
            && bin.0.is::<math::Add>()
            && found.residual.is_none()
            && found.slopes.is_none()
            && unclamped
        {
            let Some(source) = residual_source(model, other, next.id, c_axis, shape)? else {
                break;
            };
            found.residual = Some(source);
        } else {
            break;
        }
        last = next.id;
    }
    Ok((found, last))
}

/// The tensor a residual `Add` (node `add`) adds, and its channels: `other` itself when it has
/// the output's shape, or the input of a zero `Pad` of the channel axis's end (BlazeFace and
/// FaceMesh widen their residuals so), which the op adds only to the first channels. A `Pad`
/// left in place would block the channel-last layout: it runs channel-first between transposes.
fn residual_source(
    model: &TypedModel,
    other: OutletId,
    add: usize,
    c_axis: usize,
    shape: &ShapeFact,
) -> TractResult<Option<(OutletId, usize)>> {
    let fact = model.outlet_fact(other)?;
    let Some(dims) = shape.as_concrete() else {
        return Ok(None);
    };
    if fact.datum_type != f32::datum_type() || fact.shape != *shape {
        return Ok(None);
    }
    let producer = model.node(other.node);
    if let Some(pad) = producer.op_as::<Pad>() {
        let only_into_add = model.outlet_successors(other).iter().all(|s| s.node == add);
        let zero = match &pad.mode {
            PadMode::Constant(v) => v.cast_to_scalar::<f32>().ok() == Some(0.0),
            _ => false,
        };
        let channel_end_only = pad.pads.len() == dims.len()
            && pad
                .pads
                .iter()
                .enumerate()
                .all(|(axis, p)| p.0 == 0 && (p.1 == 0 || axis == c_axis));
        let source = producer.inputs[0];
        let source_fact = model.outlet_fact(source)?;
        let channels = source_fact.shape.as_concrete().map(|d| d[c_axis]);
        if let (true, true, true, Some(channels)) = (
            only_into_add,
            zero,
            channel_end_only && source_fact.datum_type == f32::datum_type(),
            channels,
        ) {
            return Ok(Some((source, channels)));
        }
    }
    Ok(Some((other, dims[c_axis])))
}

/// The value of a constant that holds one f32 (of any rank), if `outlet` is one.
pub(super) fn scalar_const(model: &TypedModel, outlet: OutletId) -> Option<f32> {
    let fact = model.outlet_fact(outlet).ok()?;
    let konst = fact.konst.as_ref()?;
    if konst.len() != 1 || konst.datum_type() != f32::datum_type() {
        return None;
    }
    konst
        .try_as_plain_ram()
        .ok()?
        .as_slice::<f32>()
        .ok()
        .map(|s| s[0])
}

/// The nodes `prelu.rs` wires for a PReLU of `x`, if `x` feeds exactly those and the slopes are
/// constant now: `max(x, x·s)` (every s ≤ 1), `min(x, x·s)` (every s ≥ 1), `x + min(x, 0)·(s -
/// 1)` (a mix) or `max(x, 0) + min(x, 0)·s` (slopes unknown when it was wired). Each computes
/// `max(x, 0) + s·min(x, 0)`. Returns one slope per channel and the last node.
pub(super) fn prelu(
    model: &TypedModel,
    x: OutletId,
    c_axis: usize,
    channels: usize,
) -> TractResult<Option<(Vec<f32>, usize)>> {
    let succ = &model.outlet_successors(x);
    let rank = model.outlet_fact(x)?.rank();
    if succ.len() != 2 {
        return Ok(None);
    }
    let bin = |id: usize| model.node(id).op_as::<TypedBinOp>().map(|b| &b.0);
    let other = |id: usize, than: OutletId| {
        let inputs = &model.node(id).inputs;
        (inputs.len() == 2 && inputs.contains(&than))
            .then(|| inputs.iter().find(|i| **i != than).copied())
            .flatten()
    };
    let only_into = |id: usize, into: usize| {
        let s = model.outlet_successors(OutletId::new(id, 0));
        s.len() == 1 && s[0].node == into
    };
    for (a, b) in [(succ[0].node, succ[1].node), (succ[1].node, succ[0].node)] {
        let (Some(first), Some(second)) = (bin(a), bin(b)) else {
            continue;
        };
        // x·s, then max/min(x, x·s).
        if first.is::<math::Mul>()
            && (second.is::<math::Max>() || second.is::<math::Min>())
            && only_into(a, b)
            && other(b, x) == Some(OutletId::new(a, 0))
        {
            if let Some(slopes) =
                other(a, x).and_then(|s| per_channel(model, s, rank, c_axis, channels))
            {
                return Ok(Some((slopes, b)));
            }
        }
        // min(x, 0), times (s - 1), added to x; or, where the slopes were not known when PReLU
        // was wired, times s, added to max(x, 0).
        let zero_bound = |id: usize| other(id, x).and_then(|z| scalar_const(model, z)) == Some(0.0);
        if !(first.is::<math::Min>() && zero_bound(a)) {
            continue;
        }
        let scaled = model.outlet_successors(OutletId::new(a, 0));
        if scaled.len() != 1 || bin(scaled[0].node).is_none_or(|op| !op.is::<math::Mul>()) {
            continue;
        }
        let mul = scaled[0].node;
        let Some(slopes) = other(mul, OutletId::new(a, 0))
            .and_then(|s| per_channel(model, s, rank, c_axis, channels))
        else {
            continue;
        };
        let Some(sum) = model
            .outlet_successors(OutletId::new(mul, 0))
            .first()
            .map(|s| s.node)
        else {
            continue;
        };
        if !only_into(mul, sum) || bin(sum).is_none_or(|op| !op.is::<math::Add>()) {
            continue;
        }
        if second.is::<math::Add>() && sum == b && other(b, x) == Some(OutletId::new(mul, 0)) {
            return Ok(Some((slopes.iter().map(|s| s + 1.0).collect(), b)));
        }
        if second.is::<math::Max>()
            && zero_bound(b)
            && only_into(b, sum)
            && other(sum, OutletId::new(b, 0)) == Some(OutletId::new(mul, 0))
        {
            return Ok(Some((slopes, sum)));
        }
    }
    Ok(None)
}

/// The values of a constant with one value per channel along `c_axis` (or one for all).
fn per_channel(
    model: &TypedModel,
    outlet: OutletId,
    rank: usize,
    c_axis: usize,
    channels: usize,
) -> Option<Vec<f32>> {
    let konst = model.outlet_fact(outlet).ok()?.konst.clone()?;
    if konst.datum_type() != f32::datum_type() {
        return None;
    }
    let values = konst
        .try_as_plain_ram()
        .ok()?
        .as_slice::<f32>()
        .ok()?
        .to_vec();
    let shape = konst.shape();
    if values.len() == 1 {
        return Some(vec![values[0]; channels]);
    }
    let only_channels = shape
        .iter()
        .enumerate()
        .all(|(axis, d)| *d == 1 || (axis == c_axis && *d == channels));
    (values.len() == channels && shape.len() == rank && only_channels).then_some(values)
}

/// Deterministic values in [-1, 1) for the ops' tests: they need variety, not statistics.
#[cfg(test)]
pub(super) fn test_values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `min(max(y, lo), hi)` against rank-4 constants, as tract-onnx wires a Clip, for the tests.
#[cfg(test)]
pub(super) fn wire_test_clamp(
    model: &mut TypedModel,
    y: OutletId,
    (lo, hi): (f32, f32),
) -> TractResult<OutletId> {
    let lo = model.add_const("lo", tensor4(&[[[[lo]]]]))?;
    let hi = model.add_const("hi", tensor4(&[[[[hi]]]]))?;
    let y = model.wire_node("max", math::max(), &[y, lo])?[0];
    Ok(model.wire_node("min", math::min(), &[y, hi])?[0])
}

/// The largest absolute difference between an op's outputs and tract's, for the tests.
#[cfg(test)]
pub(super) fn worst_difference(expected: &[f32], got: &[f32]) -> f32 {
    assert_eq!(expected.len(), got.len());
    expected
        .iter()
        .zip(got)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}
