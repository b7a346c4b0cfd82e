//! What veriface's own tract ops (`depthwise`, `pointwise`, `maxpool`) share: the choice of
//! compiled kernel copy, the taps of a window that land inside the input, an output tensor
//! filled row by row across tract's thread pool, and the graph patterns they fuse (scalar
//! clamp bounds, PReLU).

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::math;

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
