//! Depthwise convolutions for tract, with their bias and a following PReLU and clamp (ReLU6)
//! fused. tract 0.23 has a vectorised channel-inner depthwise kernel on aarch64 only: on x86 its
//! NHWC depthwise ran a generic loop, half of the frame model's time (`bench --model deepfake
//! --profile`: 11.0 of 21.8 ms). Channel-last, the outputs whose taps all lie inside the input
//! run on the pointwise kernels' vector tiles (`pointwise::DepthwiseRow`: four pixels by two
//! vectors share each weight load); the edges and the channels past the last whole vector keep
//! a block of channels in registers over every tap of an output point (two neighbouring points
//! share each weight load). Channel-first, where tract's stride-2 path is scalar, it builds a
//! channel's output row in blocks kept in registers over the taps. The block paths are compiled
//! three times on x86 (AVX-512, AVX2+FMA, baseline) and the widest is picked at load.
//! The same op runs a dense convolution of a narrow input (an RGB stem; its interior on the
//! pointwise kernels, `pointwise::DenseTaps`), which tract ran as a matrix product, a transpose
//! to channel-last and a separate clamp (1.2 → 0.4 ms).
//!
//! It replaces tract's `Conv` where the convolution is depthwise (one group per channel) or has
//! at most four input channels, f32, 2-D, with constant weights and a concrete input shape, on
//! the decluttered model before `conv_nhwc`. Anything else stays tract's.

use std::sync::Arc;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::Conv;

use super::kernels::{absorb_epilogue, conv_parts, fill_rows, splice, tap_range, ConvParts, Isa};

/// Replace every eligible depthwise or few-input `Conv` of a decluttered model (and the clamp
/// that follows it, when it is the conv's only consumer); returns how many were replaced.
/// `channels_last`: the model is about to run channel-last (`conv_nhwc`), so a channel-first
/// convolution runs channel-last between two transposes, which `conv_nhwc` and decluttering
/// cancel against their neighbours'. Otherwise only the channel-first depthwise convolutions of
/// stride 2 or more are replaced (tract's are scalar there), in their own layout.
pub(super) fn replace(model: &mut TypedModel, channels_last: bool) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(conv) = node.op_as::<Conv>() else {
            continue;
        };
        let channels_first = !conv.pool_spec.data_format.c_is_last();
        let transpose = channels_first && channels_last;
        let Some(op) = DirectConv::from_conv(model, node, conv, transpose)? else {
            continue;
        };
        if !channels_last && (op.kind != Kind::Depthwise || op.geometry.strides[1] < 2) {
            continue;
        }
        let x_shape = model.outlet_fact(node.inputs[0])?.shape.to_tvec();
        let x_shape = conv.pool_spec.data_format.shape(x_shape)?;
        let (c_axis, last_axis) = (x_shape.c_axis(), x_shape.hw_axes().end);
        let channels = op.geometry.channels;
        let (epilogue, last) =
            absorb_epilogue(model, id, c_axis, channels, false, op.channels_last)?;
        let mut op = op;
        op.slopes = epilogue.slopes.map(Arc::new);
        op.clamp = epilogue.clamp;
        op.dense = op.dense_taps().map(Arc::new);
        let moves = transpose.then_some((c_axis, last_axis - 1));
        let (name, input) = (node.name.clone(), node.inputs[0]);
        splice(model, &name, op, &[input], last, moves)?;
        replaced += 1;
    }
    if replaced > 0 {
        model.compact()?;
    }
    Ok(replaced)
}

/// The geometry of one convolution over an f32 input of `batch` images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Geometry {
    batch: usize,
    input_channels: usize,
    /// Output channels.
    channels: usize,
    input_hw: [usize; 2],
    output_hw: [usize; 2],
    kernel_hw: [usize; 2],
    strides: [usize; 2],
    dilations: [usize; 2],
    pad_before: [usize; 2],
}

/// What the op computes per output point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    /// One filter per channel (groups = channels): weights `[KH * KW, C]`.
    Depthwise,
    /// Every output channel from every input channel of a narrow input (an RGB stem, whose
    /// matrix-multiply form under tract needed a transpose and a separate clamp after it):
    /// weights `[KH * KW, C_in, C_out]`.
    FewInputs,
}

/// The most input channels `Kind::FewInputs` takes: each is a broadcast per tap and block.
const FEW_INPUTS: usize = 4;

#[derive(Clone, Debug)]
pub(super) struct DirectConv {
    kind: Kind,
    /// `[N,] H, W, C` in and out; else `[N,] C, H, W` (depthwise only).
    channels_last: bool,
    geometry: Geometry,
    /// In the layout `kind` says.
    weights: Arc<Vec<f32>>,
    bias: Arc<Vec<f32>>,
    /// A fused PReLU's slope per output channel (channel-last only): `max(y, 0) + s·min(y, 0)`,
    /// before the clamp.
    slopes: Option<Arc<Vec<f32>>>,
    /// Applied to every output: `min(max(y, lo), hi)`; (-inf, inf) when nothing was fused.
    clamp: (f32, f32),
    output_shape: TVec<usize>,
    isa: Isa,
    /// The few-input kind's interior pixels on the pointwise op's kernels (built from the
    /// fields above once they are final, so equality ignores it).
    dense: Option<Arc<Dense>>,
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
type Dense = super::pointwise::DenseTaps;
/// No copy of the pointwise kernels for this architecture.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
#[derive(Debug)]
enum Dense {}

impl PartialEq for DirectConv {
    fn eq(&self, other: &Self) -> bool {
        // By bit pattern, so that the equality is reflexive (NaN weights included).
        let same = |a: &[f32], b: &[f32]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
        };
        self.kind == other.kind
            && self.channels_last == other.channels_last
            && self.geometry == other.geometry
            && same(&self.weights, &other.weights)
            && same(&self.bias, &other.bias)
            && match (&self.slopes, &other.slopes) {
                (Some(a), Some(b)) => same(a, b),
                (a, b) => a.is_none() && b.is_none(),
            }
            && self.clamp.0.to_bits() == other.clamp.0.to_bits()
            && self.clamp.1.to_bits() == other.clamp.1.to_bits()
            && self.isa == other.isa
    }
}

// Weights compare by bit pattern above, so equality is reflexive.
impl Eq for DirectConv {}

impl DirectConv {
    /// This op for `conv`, or `None` where the convolution is not one it runs. `transpose`: it
    /// runs channel-last on the transposed input of a channel-first convolution.
    fn from_conv(
        model: &TypedModel,
        node: &TypedNode,
        conv: &Conv,
        transpose: bool,
    ) -> TractResult<Option<Self>> {
        let spec = &conv.pool_spec;
        let group = conv.group;
        let kind = if group > 1 && group == spec.input_channels && group == spec.output_channels {
            Kind::Depthwise
        } else if group == 1 && spec.input_channels <= FEW_INPUTS && spec.output_channels >= 8 {
            Kind::FewInputs
        } else {
            return Ok(None);
        };
        let Some(ConvParts { kernel, bias, data }) = conv_parts(model, node, conv)? else {
            return Ok(None);
        };
        let hw = data.hw_dims();
        let padding = spec.computed_padding(hw);
        let input_channels = *data.c();
        let channels = spec.output_channels;
        let geometry = Geometry {
            batch: data.n().copied().unwrap_or(1),
            input_channels,
            channels,
            input_hw: [hw[0], hw[1]],
            output_hw: [padding[0].convoluted, padding[1].convoluted],
            kernel_hw: [spec.kernel_shape[0], spec.kernel_shape[1]],
            strides: [spec.stride(0), spec.stride(1)],
            dilations: [spec.dilation(0), spec.dilation(1)],
            pad_before: [padding[0].pad_before, padding[1].pad_before],
        };
        // [G, O/G, I/G, KH*KW] whatever the kernel format, then tap-major: depthwise
        // [G = C, 1, 1, taps] -> [taps, C]; few inputs [1, O, I, taps] -> [taps, I, O].
        let grouped = conv.kernel_fmt.kernel_as_group_o_i_hw(&kernel, group)?;
        let grouped = grouped.try_as_plain_ram()?.as_slice::<f32>()?;
        let taps = geometry.kernel_hw[0] * geometry.kernel_hw[1];
        let per_tap = match kind {
            Kind::Depthwise => channels,
            Kind::FewInputs => input_channels * channels,
        };
        if grouped.len() != taps * per_tap {
            return Ok(None);
        }
        let channels_last = transpose || spec.data_format.c_is_last();
        if !channels_last && kind != Kind::Depthwise {
            return Ok(None);
        }
        // Channel-first reads one channel's taps together: [C, taps], as `grouped` is.
        let mut weights = grouped.to_vec();
        if channels_last {
            for o in 0..channels {
                for i in 0..per_tap / channels {
                    for t in 0..taps {
                        weights[t * per_tap + i * channels + o] =
                            grouped[(o * (per_tap / channels) + i) * taps + t];
                    }
                }
            }
        }
        let [oh, ow] = geometry.output_hw;
        let mut output_shape: TVec<usize> = match channels_last {
            true => tvec![oh, ow, channels],
            false => tvec![channels, oh, ow],
        };
        if let Some(&n) = data.n() {
            output_shape.insert(0, n);
        }
        Ok(Some(DirectConv {
            kind,
            channels_last,
            geometry,
            weights: Arc::new(weights),
            bias: Arc::new(bias),
            slopes: None,
            clamp: (f32::NEG_INFINITY, f32::INFINITY),
            output_shape,
            isa: Isa::detect(),
            dense: None,
        }))
    }
}

impl DirectConv {
    /// The channel-last few-input kind's interior on the pointwise kernels, where this CPU has
    /// them: explicit vector tiles of output pixels × channels (the blocks below keep one pixel
    /// per accumulator, whose chained multiply-adds wait on each other).
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn dense_taps(&self) -> Option<Dense> {
        if self.kind != Kind::FewInputs || !self.channels_last {
            return None;
        }
        let g = &self.geometry;
        let (ci, co) = (g.input_channels, g.channels);
        let [kh, kw] = g.kernel_hw;
        let [dy, dx] = g.dilations;
        let mut offsets = Vec::with_capacity(kh * kw * ci);
        for ky in 0..kh {
            for kx in 0..kw {
                for c in 0..ci {
                    offsets.push((ky * dy * g.input_hw[1] + kx * dx) * ci + c);
                }
            }
        }
        // `weights` is [taps, ci, co]: row (tap, c) is offsets' order.
        let weights = &self.weights;
        Dense::new(
            self.isa,
            offsets,
            g.strides[1] * ci,
            co,
            |row, o| weights[row * co + o],
            &self.bias,
            self.slopes.as_deref().map(|s| s.as_slice()),
            self.clamp,
        )
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    fn dense_taps(&self) -> Option<Dense> {
        None
    }
}

impl Op for DirectConv {
    fn name(&self) -> StaticName {
        match (self.kind, self.channels_last) {
            (Kind::Depthwise, true) => "VerifaceDepthwiseNhwc".into(),
            (Kind::Depthwise, false) => "VerifaceDepthwiseNchw".into(),
            (Kind::FewInputs, _) => "VerifaceFewInputConvNhwc".into(),
        }
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.geometry;
        Ok(vec![format!(
            "{}x{} stride {:?}, {} -> {} channels {}, PReLU {}, clamp {:?}, {:?}",
            g.kernel_hw[0],
            g.kernel_hw[1],
            g.strides,
            g.input_channels,
            g.channels,
            if self.channels_last { "last" } else { "first" },
            self.slopes.is_some(),
            self.clamp,
            self.isa
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for DirectConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let x = input.try_as_plain_ram()?.as_slice::<f32>()?;
        let g = &self.geometry;
        ensure!(
            x.len() == g.batch * g.input_hw[0] * g.input_hw[1] * g.input_channels,
            "convolution input has {} values, expected {:?}",
            x.len(),
            g
        );
        // A row: one output row of every channel (channel-last) or of one channel.
        let row = match self.channels_last {
            true => g.output_hw[1] * g.channels,
            false => g.output_hw[1],
        };
        let fill = |first_row: usize, rows: &mut [f32]| {
            let args = Args {
                g,
                x,
                w: &self.weights,
                b: &self.bias,
                slopes: self.slopes.as_ref().map(|s| s.as_slice()),
                clamp: self.clamp,
                first_row,
                kind: self.kind,
                channels_last: self.channels_last,
                dense: self.dense.as_deref(),
                isa: self.isa,
            };
            run(self.isa, &args, rows)
        };
        // SAFETY: `run` writes every value of the rows it is handed (`rows` and `planes` cover
        // each row point by point, or edges and interior).
        let output = unsafe { fill_rows(&self.output_shape, row, x.len(), fill)? };
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for DirectConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type());
        Ok(tvec!(f32::fact(&self.output_shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let g = &self.geometry;
        let macs = g.batch
            * g.output_hw[0]
            * g.output_hw[1]
            * g.channels
            * g.kernel_hw[0]
            * g.kernel_hw[1]
            * match self.kind {
                Kind::Depthwise => 1,
                Kind::FewInputs => g.input_channels,
            };
        Ok(tvec!((Cost::FMA(f32::datum_type()), macs.into())))
    }

    as_op!();
}

struct Args<'a> {
    g: &'a Geometry,
    x: &'a [f32],
    w: &'a [f32],
    b: &'a [f32],
    /// Channel-last only.
    slopes: Option<&'a [f32]>,
    clamp: (f32, f32),
    /// Index (over batch × output rows, channel-first over batch × channels × output rows) of
    /// the first row of the output slice handed over.
    first_row: usize,
    kind: Kind,
    channels_last: bool,
    dense: Option<&'a Dense>,
    /// For the vector depthwise tiles.
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64")),
        allow(dead_code)
    )]
    isa: Isa,
}

fn run(isa: Isa, args: &Args, out: &mut [f32]) {
    match isa {
        // SAFETY: `Isa::detect` chose these only where the CPU reports the features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { run_avx512(args, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { run_avx2(args, out) },
        // aarch64 always has fused multiply-add (NEON fmla).
        Isa::Baseline => layout::<{ cfg!(target_arch = "aarch64") }>(args, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn run_avx512(args: &Args, out: &mut [f32]) {
    layout::<true>(args, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2(args: &Args, out: &mut [f32]) {
    layout::<true>(args, out)
}

#[inline(always)]
fn layout<const FMA: bool>(a: &Args, out: &mut [f32]) {
    match a.channels_last {
        true => rows::<FMA>(a, out),
        false => planes::<FMA>(a, out),
    }
}

/// Channel-first depthwise: one output row of one channel at a time. Where every horizontal tap
/// lands inside the input (the interior), blocks of outputs keep their sums in registers over
/// all taps; the few outputs at the edges take the taps that exist, one by one.
#[inline(always)]
fn planes<const FMA: bool>(a: &Args, out: &mut [f32]) {
    let g = a.g;
    let [ih, iw] = g.input_hw;
    let [oh, ow] = g.output_hw;
    let [kh, kw] = g.kernel_hw;
    let [stride, dilation, pad] = [g.strides[1], g.dilations[1], g.pad_before[1]];
    // Interior outputs: ox·stride ≥ pad and ox·stride - pad + (kw - 1)·dilation < iw.
    let interior_start = pad.div_ceil(stride).min(ow);
    let reach = (kw - 1) * dilation;
    let interior_end = match iw + pad > reach {
        true => ((iw + pad - reach - 1) / stride + 1).min(ow),
        false => 0,
    }
    .max(interior_start);
    for (r, row) in out.chunks_exact_mut(ow).enumerate() {
        let index = a.first_row + r;
        let (plane, oy) = (index / oh, index % oh);
        let channel = plane % g.channels;
        let (ky0, ky1, iy0) = tap_range(oy, g.strides[0], g.dilations[0], g.pad_before[0], ih, kh);
        let rows = Rows {
            image: &a.x[plane * ih * iw..][..ih * iw],
            iw,
            iy0,
            dy: g.dilations[0],
            ky: (ky0, ky1),
            taps: &a.w[channel * kh * kw..][..kh * kw],
            kw,
            dilation,
            pad,
            bias: a.b[channel],
        };
        for ox in (0..interior_start).chain(interior_end..ow) {
            let (kx0, kx1, ix0) = tap_range(ox, stride, dilation, pad, iw, kw);
            let mut sum = rows.bias;
            for ky in ky0..ky1 {
                let input = rows.line(ky);
                for kx in kx0..kx1 {
                    let ix = (ix0 + (kx * dilation) as isize) as usize;
                    sum = madd::<FMA>(input[ix], rows.taps[ky * kw + kx], sum);
                }
            }
            row[ox] = sum;
        }
        let (from, to) = (interior_start, interior_end);
        match (stride, to - from) {
            (_, 0) => {}
            (2, n) if n >= 16 => interior::<16, 2, FMA>(&rows, row, from, to),
            (2, n) if n >= 4 => interior::<4, 2, FMA>(&rows, row, from, to),
            (2, _) => interior::<1, 2, FMA>(&rows, row, from, to),
            _ => interior_any::<FMA>(&rows, row, from, to, stride),
        }
        let (lo, hi) = a.clamp;
        for v in row.iter_mut() {
            *v = v.max(lo).min(hi);
        }
    }
}

/// What the interior of one channel-first output row reads.
struct Rows<'a> {
    image: &'a [f32],
    iw: usize,
    iy0: isize,
    dy: usize,
    ky: (usize, usize),
    /// This channel's weights, `[KH * KW]`.
    taps: &'a [f32],
    kw: usize,
    dilation: usize,
    pad: usize,
    bias: f32,
}

impl Rows<'_> {
    #[inline(always)]
    fn line(&self, ky: usize) -> &[f32] {
        let iy = (self.iy0 + (ky * self.dy) as isize) as usize;
        &self.image[iy * self.iw..][..self.iw]
    }
}

/// Interior outputs `from..to` (at least `B` of them) in blocks of `B` at stride `S`: the last
/// block ends at `to`, overlapping the one before it (it writes the same values there).
#[inline(always)]
fn interior<const B: usize, const S: usize, const FMA: bool>(
    rows: &Rows,
    out: &mut [f32],
    from: usize,
    to: usize,
) {
    let mut ox = from;
    while ox < to {
        ox = ox.min(to - B);
        let mut acc = [rows.bias; B];
        for ky in rows.ky.0..rows.ky.1 {
            let input = rows.line(ky);
            for kx in 0..rows.kw {
                let w = rows.taps[ky * rows.kw + kx];
                let start = ox * S + kx * rows.dilation - rows.pad;
                let xs = &input[start..][..(B - 1) * S + 1];
                for i in 0..B {
                    acc[i] = madd::<FMA>(xs[i * S], w, acc[i]);
                }
            }
        }
        out[ox..ox + B].copy_from_slice(&acc);
        ox += B;
    }
}

/// Interior outputs at any other stride, one at a time.
#[inline(always)]
fn interior_any<const FMA: bool>(
    rows: &Rows,
    out: &mut [f32],
    from: usize,
    to: usize,
    stride: usize,
) {
    for (ox, o) in out.iter_mut().enumerate().take(to).skip(from) {
        let mut sum = rows.bias;
        for ky in rows.ky.0..rows.ky.1 {
            let input = rows.line(ky);
            for kx in 0..rows.kw {
                let x = input[ox * stride + kx * rows.dilation - rows.pad];
                sum = madd::<FMA>(x, rows.taps[ky * rows.kw + kx], sum);
            }
        }
        *o = sum;
    }
}

#[inline(always)]
fn rows<const FMA: bool>(a: &Args, out: &mut [f32]) {
    let g = a.g;
    let [ih, iw] = g.input_hw;
    let [oh, ow] = g.output_hw;
    let [kh, kw] = g.kernel_hw;
    let c = g.channels;
    let ci = g.input_channels;
    let row_len = ow * c;
    for (r, row) in out.chunks_exact_mut(row_len).enumerate() {
        let (n, oy) = ((a.first_row + r) / oh, (a.first_row + r) % oh);
        let image = &a.x[n * ih * iw * ci..][..ih * iw * ci];
        let (ky0, ky1, iy0) = tap_range(oy, g.strides[0], g.dilations[0], g.pad_before[0], ih, kh);
        // Outputs lo..hi have every tap inside the input: the dense kernel's, if it runs.
        let (s, pad, reach) = (g.strides[1], g.pad_before[1], (kw - 1) * g.dilations[1] + 1);
        let lo = pad.div_ceil(s);
        let hi = match iw + pad >= reach {
            true => ow.min((iw + pad - reach) / s + 1),
            false => 0,
        };
        let full_height = (ky0, ky1) == (0, kh) && lo < hi;
        let dense = a.dense.filter(|_| full_height);
        // Depthwise interior: the vector tiles take the channels up to the last whole vector.
        // Input offset of pixel lo's tap (0, 0); only read where every tap is inside, so
        // iy0 >= 0 and lo * s >= pad.
        let first = || (iy0 as usize * iw + lo * s - pad) * ci;
        let vector = match a.kind == Kind::Depthwise && full_height {
            true => vector_depthwise(a, &image[first()..], hi - lo, &mut row[lo * c..hi * c]),
            false => 0,
        };
        let interior = |ox: usize| vector > 0 && (lo..hi).contains(&ox);
        let mut ox = 0;
        while ox < ow {
            if interior(ox) && vector == c {
                ox = hi;
                continue;
            }
            if let (Some(dense), true) = (dense, ox == lo) {
                dense_row(dense, &image[first()..], &mut row[lo * c..hi * c]);
                ox = hi;
                continue;
            }
            let (kx0, kx1, ix0) =
                tap_range(ox, g.strides[1], g.dilations[1], g.pad_before[1], iw, kw);
            let point = Point {
                image,
                iw,
                c,
                ci,
                stride: g.strides[1],
                kw,
                ky: (ky0, ky1, iy0, g.dilations[0]),
                kx: (kx0, kx1, ix0, g.dilations[1]),
            };
            // Blocks of 64, 16, 4 and 1 channels. A macro, not a closure: dispatched through a
            // closure the kernels ran 30x slower (a closure does not get the target features of
            // the function it is written in).
            macro_rules! blocks {
                ($block:ident, $($out:ident),+) => {{
                    let mut c0 = if interior(ox) { vector } else { 0 };
                    for width in [64, 16, 4, 1] {
                        while c0 + width <= c {
                            match width {
                                64 => $block::<64, FMA>(a, &point, c0, $(&mut $out[c0..c0 + 64]),+),
                                16 => $block::<16, FMA>(a, &point, c0, $(&mut $out[c0..c0 + 16]),+),
                                4 => $block::<4, FMA>(a, &point, c0, $(&mut $out[c0..c0 + 4]),+),
                                _ => $block::<1, FMA>(a, &point, c0, $(&mut $out[c0..c0 + 1]),+),
                            }
                            c0 += width;
                        }
                    }
                }};
            }
            // Two neighbours with the same taps share each weight load (pairing the few-input
            // kind measured no faster).
            let paired = a.kind == Kind::Depthwise && ox + 1 < ow && {
                let next = tap_range(
                    ox + 1,
                    g.strides[1],
                    g.dilations[1],
                    g.pad_before[1],
                    iw,
                    kw,
                );
                (next.0, next.1) == (kx0, kx1) && interior(ox) == interior(ox + 1)
            };
            if paired {
                let (first, second) = row[ox * c..][..2 * c].split_at_mut(c);
                blocks!(pair_block, first, second);
                ox += 2;
            } else {
                let o = &mut row[ox * c..][..c];
                match a.kind {
                    Kind::Depthwise => blocks!(block, o),
                    Kind::FewInputs => blocks!(few_inputs_block, o),
                }
                ox += 1;
            }
        }
    }
}

/// The vector tiles' share of a channel-last depthwise row (`count` interior pixels from
/// `x`, their tap (0, 0)); returns the channels done, 0 where there is no vector copy (x86
/// without AVX2).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn vector_depthwise(a: &Args, x: &[f32], count: usize, out: &mut [f32]) -> usize {
    let g = a.g;
    let rows = super::pointwise::DepthwiseRow {
        isa: a.isa,
        channels: g.channels,
        kernel_hw: g.kernel_hw,
        tap_step: [
            g.dilations[0] * g.input_hw[1] * g.channels,
            g.dilations[1] * g.channels,
        ],
        pixel_step: g.strides[1] * g.channels,
        weights: a.w,
        bias: a.b,
        slopes: a.slopes,
        clamp: a.clamp,
    };
    let channels = rows.vector_channels();
    if channels > 0 {
        rows.run(x, count, out);
    }
    channels
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn vector_depthwise(_: &Args, _: &[f32], _: usize, _: &mut [f32]) -> usize {
    0
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn dense_row(dense: &Dense, x: &[f32], out: &mut [f32]) {
    dense.row(x, out)
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn dense_row(dense: &Dense, _: &[f32], _: &mut [f32]) {
    match *dense {}
}

/// One output point's taps: the image, and per axis (first tap, end tap, origin, dilation).
struct Point<'a> {
    image: &'a [f32],
    iw: usize,
    /// Output channels (and input channels, depthwise).
    c: usize,
    /// Input channels: the image's values per pixel.
    ci: usize,
    /// Horizontal stride.
    stride: usize,
    kw: usize,
    ky: (usize, usize, isize, usize),
    kx: (usize, usize, isize, usize),
}

/// `B` channels from `c0` of one output point: accumulators stay in registers over every tap.
#[inline(always)]
fn block<const B: usize, const FMA: bool>(a: &Args, p: &Point, c0: usize, out: &mut [f32]) {
    let mut acc = [0f32; B];
    acc.copy_from_slice(&a.b[c0..c0 + B]);
    let (ky0, ky1, iy0, dy) = p.ky;
    let (kx0, kx1, ix0, dx) = p.kx;
    for ky in ky0..ky1 {
        let iy = (iy0 + (ky * dy) as isize) as usize;
        for kx in kx0..kx1 {
            let ix = (ix0 + (kx * dx) as isize) as usize;
            let xs: &[f32; B] = p.image[(iy * p.iw + ix) * p.c + c0..][..B]
                .try_into()
                .unwrap();
            let ws: &[f32; B] = a.w[(ky * p.kw + kx) * p.c + c0..][..B].try_into().unwrap();
            for i in 0..B {
                acc[i] = madd::<FMA>(xs[i], ws[i], acc[i]);
            }
        }
    }
    finish(a, c0, &acc, out);
}

/// `B` channels from `c0` of two horizontally adjacent output points with the same taps: each
/// weight load serves both.
#[inline(always)]
fn pair_block<const B: usize, const FMA: bool>(
    a: &Args,
    p: &Point,
    c0: usize,
    first: &mut [f32],
    second: &mut [f32],
) {
    let mut acc0 = [0f32; B];
    acc0.copy_from_slice(&a.b[c0..c0 + B]);
    let mut acc1 = acc0;
    let (ky0, ky1, iy0, dy) = p.ky;
    let (kx0, kx1, ix0, dx) = p.kx;
    // The second point's pixels are one output step (`stride` input pixels) to the right.
    let step = p.stride * p.c;
    for ky in ky0..ky1 {
        let iy = (iy0 + (ky * dy) as isize) as usize;
        for kx in kx0..kx1 {
            let ix = (ix0 + (kx * dx) as isize) as usize;
            let at = (iy * p.iw + ix) * p.c + c0;
            let x0: &[f32; B] = p.image[at..][..B].try_into().unwrap();
            let x1: &[f32; B] = p.image[at + step..][..B].try_into().unwrap();
            let ws: &[f32; B] = a.w[(ky * p.kw + kx) * p.c + c0..][..B].try_into().unwrap();
            for i in 0..B {
                acc0[i] = madd::<FMA>(x0[i], ws[i], acc0[i]);
                acc1[i] = madd::<FMA>(x1[i], ws[i], acc1[i]);
            }
        }
    }
    finish(a, c0, &acc0, first);
    finish(a, c0, &acc1, second);
}

/// `B` output channels from `c0` of one output point of a few-input convolution: every input
/// value of every tap is broadcast against a row of `B` weights.
#[inline(always)]
fn few_inputs_block<const B: usize, const FMA: bool>(
    a: &Args,
    p: &Point,
    c0: usize,
    out: &mut [f32],
) {
    let mut acc = [0f32; B];
    acc.copy_from_slice(&a.b[c0..c0 + B]);
    let (ky0, ky1, iy0, dy) = p.ky;
    let (kx0, kx1, ix0, dx) = p.kx;
    for ky in ky0..ky1 {
        let iy = (iy0 + (ky * dy) as isize) as usize;
        for kx in kx0..kx1 {
            let ix = (ix0 + (kx * dx) as isize) as usize;
            let pixel = &p.image[(iy * p.iw + ix) * p.ci..][..p.ci];
            let tap = &a.w[(ky * p.kw + kx) * p.ci * p.c..][..p.ci * p.c];
            for (x, weights) in pixel.iter().zip(tap.chunks_exact(p.c)) {
                let ws: &[f32; B] = weights[c0..c0 + B].try_into().unwrap();
                for i in 0..B {
                    acc[i] = madd::<FMA>(*x, ws[i], acc[i]);
                }
            }
        }
    }
    finish(a, c0, &acc, out);
}

/// A channel-last block's outputs: PReLU (if fused), then the clamp.
#[inline(always)]
fn finish<const B: usize>(a: &Args, c0: usize, acc: &[f32; B], out: &mut [f32]) {
    let (lo, hi) = a.clamp;
    match a.slopes {
        Some(slopes) => {
            let s: &[f32; B] = slopes[c0..c0 + B].try_into().unwrap();
            for i in 0..B {
                // A select, not max + min: it vectorises to a compare and a blend.
                let y = if acc[i] > 0.0 { acc[i] } else { s[i] * acc[i] };
                out[i] = y.max(lo).min(hi);
            }
        }
        None => {
            for i in 0..B {
                out[i] = acc[i].max(lo).min(hi);
            }
        }
    }
}

#[inline(always)]
fn madd<const FMA: bool>(x: f32, w: f32, acc: f32) -> f32 {
    if FMA {
        x.mul_add(w, acc)
    } else {
        acc + x * w
    }
}

#[cfg(test)]
mod tests {
    use super::super::kernels::{test_values as values, wire_test_clamp, worst_difference};
    use super::*;
    use tract_onnx::tract_core::ops::cnn::{KernelFormat, PaddingSpec, PoolSpec};
    use tract_onnx::tract_core::ops::nn::DataFormat;

    struct Case {
        format: DataFormat,
        batch: usize,
        /// Input channels of a dense (group 1) convolution; `None`: depthwise.
        dense_inputs: Option<usize>,
        channels: usize,
        hw: [usize; 2],
        kernel: [usize; 2],
        strides: [usize; 2],
        dilations: [usize; 2],
        padding: PaddingSpec,
        /// PReLU slopes per channel (channel-last runs fuse it).
        prelu: Option<Vec<f32>>,
        clamp: Option<(f32, f32)>,
    }

    /// A depthwise (or dense) convolution and clamp as tract-onnx would type it.
    fn model(case: &Case) -> TractResult<TypedModel> {
        let c = case.channels;
        let ci = case.dense_inputs.unwrap_or(c);
        let [h, w] = case.hw;
        let shape: TVec<usize> = match case.format {
            DataFormat::NCHW => tvec![case.batch, ci, h, w],
            DataFormat::NHWC => tvec![case.batch, h, w, ci],
            _ => unreachable!(),
        };
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(&shape))?;
        let taps = case.kernel[0] * case.kernel[1];
        let per_output = case.dense_inputs.unwrap_or(1);
        let kernel = tract_ndarray::Array4::from_shape_vec(
            (c, per_output, case.kernel[0], case.kernel[1]),
            values(c * per_output * taps, 2),
        )?;
        let k = model.add_const("k", Tensor::from(kernel))?;
        let b = model.add_const("b", tensor1(&values(c, 3)))?;
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: case.format,
                kernel_shape: case.kernel.iter().copied().collect(),
                padding: case.padding.clone(),
                dilations: Some(case.dilations.iter().copied().collect()),
                strides: Some(case.strides.iter().copied().collect()),
                input_channels: ci,
                output_channels: c,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: if case.dense_inputs.is_some() { 1 } else { c },
            q_params: None,
        };
        let mut y = model.wire_node("conv", conv, &[x, k, b])?[0];
        if let Some(slopes) = &case.prelu {
            y = crate::infer::prelu::wire_for_test(&mut model, y, case.format, slopes, true)?;
        }
        if let Some(clamp) = case.clamp {
            y = wire_test_clamp(&mut model, y, clamp)?;
        }
        model.select_output_outlets(&[y])?;
        Ok(model)
    }

    fn run(model: TypedModel, input: &Tensor) -> TractResult<Vec<f32>> {
        let out = model
            .into_runnable()?
            .run(tvec!(input.clone().into_tvalue()))?;
        Ok(out[0].try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
    }

    /// veriface's op against tract's own lowering of the same convolution: run channel-last (as
    /// in a `conv_nhwc` model), and in the model's layout where the op takes it.
    fn check(case: Case) -> TractResult<()> {
        check_mode(&case, true)?;
        let keeps_layout = case.prelu.is_none()
            && case.dense_inputs.is_none()
            && matches!(case.format, DataFormat::NCHW)
            && case.strides[1] >= 2;
        if keeps_layout {
            check_mode(&case, false)?;
        }
        Ok(())
    }

    fn check_mode(case: &Case, channels_last: bool) -> TractResult<()> {
        let reference = model(case)?;
        let input_shape = reference
            .input_fact(0)?
            .shape
            .as_concrete()
            .unwrap()
            .to_vec();
        let input = Tensor::from_shape(&input_shape, &values(input_shape.iter().product(), 1))?;
        let mut ours = model(case)?.into_decluttered()?;
        let replaced = replace(&mut ours, channels_last)?;
        assert_eq!(replaced, 1, "not replaced (channels last: {channels_last})");
        let expected = run(reference.into_optimized()?, &input)?;
        // Each compiled copy of the kernels this CPU runs (baseline, AVX2+FMA, AVX-512).
        for isa in Isa::available() {
            let mut copy = ours.clone();
            for node in copy.nodes_mut() {
                if let Some(op) = node.op_as_mut::<DirectConv>() {
                    op.isa = isa;
                    op.dense = op.dense_taps().map(Arc::new);
                }
            }
            let copy = copy.into_optimized()?;
            let names: Vec<String> = copy
                .nodes()
                .iter()
                .map(|n| n.op.name().to_string())
                .collect();
            assert!(
                !names
                    .iter()
                    .any(|n| n.contains("Max") || n.contains("Min") || n.contains("Mul")),
                "the clamp or PReLU was not fused: {names:?}"
            );
            let got = run(copy, &input)?;
            let worst = worst_difference(&expected, &got);
            // Sums of at most 27 products of values in [-1, 1): only the order of rounding
            // differs.
            assert!(
                worst < 1e-5,
                "worst difference {worst} (channels last: {channels_last}, {isa:?})"
            );
            if case.clamp.is_some() {
                assert!(got.contains(&0.0), "nothing reached the clamp");
            }
        }
        Ok(())
    }

    #[test]
    fn matches_tract_channel_first_with_stride_padding_and_clamp() -> TractResult<()> {
        // 37 channels: one 16-block twice, a 4-block and a single channel.
        check(Case {
            format: DataFormat::NCHW,
            batch: 2,
            dense_inputs: None,
            channels: 37,
            hw: [13, 11],
            kernel: [5, 5],
            strides: [2, 2],
            dilations: [1, 1],
            padding: PaddingSpec::Explicit(tvec![1, 2], tvec![2, 1]),
            prelu: None,
            clamp: Some((0.0, 0.5)),
        })
    }

    #[test]
    fn matches_tract_channel_last_with_same_padding_dilation_and_prelu() -> TractResult<()> {
        // 70 channels: a 64-block, then a 4-block and two single channels; PReLU slopes on both
        // sides of 1, fused.
        check(Case {
            format: DataFormat::NHWC,
            batch: 1,
            dense_inputs: None,
            channels: 70,
            hw: [9, 10],
            kernel: [3, 3],
            strides: [1, 1],
            dilations: [2, 1],
            padding: PaddingSpec::SameUpper,
            prelu: Some(values(70, 5).iter().map(|v| v * 1.5).collect()),
            clamp: None,
        })
    }

    #[test]
    fn matches_tract_channel_last_on_vector_tiles() -> TractResult<()> {
        // 48 channels: vector tiles of two vectors and of one (AVX-512), or three of two
        // (AVX2); 23 columns: interior tiles of four pixels and single ones, edges around them;
        // then 50 channels, whose last two take the per-pixel path beside the tiles.
        for channels in [48, 50] {
            check(Case {
                format: DataFormat::NHWC,
                batch: 1,
                dense_inputs: None,
                channels,
                hw: [5, 23],
                kernel: [3, 3],
                strides: [1, 1],
                dilations: [1, 1],
                padding: PaddingSpec::SameUpper,
                prelu: None,
                clamp: Some((0.0, 0.5)),
            })?;
        }
        Ok(())
    }

    #[test]
    fn matches_tract_for_a_stem_of_few_input_channels() -> TractResult<()> {
        // EfficientNet's stem: 3 channels in, 3x3 stride 2, 32 out, ReLU6, its edges padded;
        // then 37 outputs (blocks of 16, 4 and 1; panels of 32 or 16 and a partial one) from 2
        // inputs, unpadded, with a PReLU as FaceMesh's stem has.
        check(Case {
            format: DataFormat::NCHW,
            batch: 1,
            dense_inputs: Some(3),
            channels: 32,
            hw: [15, 16],
            kernel: [3, 3],
            strides: [2, 2],
            dilations: [1, 1],
            padding: PaddingSpec::Explicit(tvec![0, 0], tvec![1, 1]),
            prelu: None,
            clamp: Some((0.0, 0.5)),
        })?;
        check(Case {
            format: DataFormat::NHWC,
            batch: 2,
            dense_inputs: Some(2),
            channels: 37,
            hw: [6, 7],
            kernel: [2, 3],
            strides: [1, 1],
            dilations: [1, 1],
            padding: PaddingSpec::Valid,
            prelu: Some(values(37, 6)),
            clamp: None,
        })
    }

    #[test]
    fn matches_tract_channel_first_on_wide_rows_at_strides_two_and_three() -> TractResult<()> {
        // 75 columns: whole 16-output blocks and an overlapping last block at stride 2, the
        // one-by-one path at stride 3; 5x5 taps with padding, as in BlazeFace and FaceMesh.
        for stride in [2, 3] {
            check(Case {
                format: DataFormat::NCHW,
                batch: 1,
                dense_inputs: None,
                channels: 5,
                hw: [9, 75],
                kernel: [5, 5],
                strides: [stride, stride],
                dilations: [1, 1],
                padding: PaddingSpec::Explicit(tvec![1, 2], tvec![2, 1]),
                prelu: None,
                clamp: Some((0.0, 6.0)),
            })?;
        }
        Ok(())
    }
}
