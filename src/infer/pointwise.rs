//! Pointwise (1x1, stride 1, one group) convolutions of the channel-last models, as a matrix
//! product that reads the activations where they lie. tract lowers them to its packed
//! matrix product, which copies the activations into panels before every product: in the frame
//! model that packing was 1.0 of the 6.3 ms its 33 products took (`bench --model deepfake
//! --profile`). Channel-last, a pixel's input channels are already one contiguous row, so a tile
//! of pixels broadcasts its values straight from the input against the weights (packed once, at
//! load, in panels of two vectors of output channels). Bias, a residual `Add` (also one padded
//! with zero channels), PReLU and clamps are fused into the tile's store. Copies for AVX-512,
//! AVX2+FMA and NEON; x86 without AVX2 keeps tract's products.
//!
//! It replaces tract's `Conv` on the typed model before decluttering (which would turn it into
//! tract's einsum), between transposes that decluttering cancels against their neighbours'. The
//! same kernels run the interior of the stems (`DenseTaps`) and of the channel-last depthwise
//! convolutions (`DepthwiseRow`) for the depthwise op.

use std::sync::Arc;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::Conv;
use tract_onnx::tract_core::optim::Optimizer;

use super::kernels::{absorb_epilogue, conv_parts, fill_rows, splice, ConvParts, Isa};

/// Replace every eligible pointwise `Conv` of a typed model that is about to run channel-last
/// (with the residual `Add` and the clamps that follow it); returns how many. It runs before
/// decluttering, which turns these convolutions into tract's matrix products: constants are
/// folded first, so that weights, bias and clamp bounds are known.
pub(super) fn replace(model: &mut TypedModel) -> TractResult<usize> {
    replace_with(model, Isa::detect())
}

fn replace_with(model: &mut TypedModel, isa: Isa) -> TractResult<usize> {
    // x86 without AVX2: no copy of the kernel; aarch64's baseline is NEON.
    if isa == Isa::Baseline && cfg!(target_arch = "x86_64") {
        return Ok(0);
    }
    Optimizer::prop_consts().optimize(model)?;
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(conv) = node.op_as::<Conv>() else {
            continue;
        };
        let Some(mut op) = Pointwise::from_conv(model, node, conv, isa)? else {
            continue;
        };
        let x_shape = model.outlet_fact(node.inputs[0])?.shape.to_tvec();
        let x_shape = conv.pool_spec.data_format.shape(x_shape)?;
        let channels_first = !conv.pool_spec.data_format.c_is_last();
        let (c_axis, last_axis) = (x_shape.c_axis(), x_shape.hw_axes().end - 1);
        let (epilogue, last) = absorb_epilogue(model, id, c_axis, op.outputs, true, true)?;
        op.residual_channels = epilogue.residual.map(|r| r.1);
        op.slopes = epilogue.slopes.map(|s| Arc::new(pad_panels(isa, &s)));
        op.clamp = epilogue.clamp;
        let mut inputs = vec![node.inputs[0]];
        inputs.extend(epilogue.residual.map(|r| r.0));
        let moves = channels_first.then_some((c_axis, last_axis));
        let name = node.name.clone();
        splice(model, &name, op, &inputs, last, moves)?;
        replaced += 1;
    }
    if replaced > 0 {
        model.compact()?;
    }
    Ok(replaced)
}

/// `y[p, o] = clamp(sum_i x[p, i] * w[i, o] + bias[o] (+ residual[p, o]))` over the pixels `p`
/// of a channel-last tensor.
#[derive(Clone, Debug)]
pub(super) struct Pointwise {
    /// Input channels.
    inputs: usize,
    /// Output channels.
    outputs: usize,
    /// Pixels of the whole batch.
    pixels: usize,
    /// Panels of `panel_width(isa)` output channels, each `[inputs, width]`, zero-padded.
    weights: Arc<Vec<f32>>,
    /// Padded to whole panels.
    bias: Arc<Vec<f32>>,
    /// A second input is added before the PReLU and clamp: the output's pixels, with this many
    /// channels (the first ones; the others get nothing).
    residual_channels: Option<usize>,
    /// PReLU's slope per output channel, padded like the bias: `max(y, 0) + s·min(y, 0)`.
    slopes: Option<Arc<Vec<f32>>>,
    /// Applied to every output: `min(max(y, lo), hi)`; (-inf, inf) when nothing was fused.
    clamp: (f32, f32),
    output_shape: TVec<usize>,
    isa: Isa,
}

impl PartialEq for Pointwise {
    fn eq(&self, other: &Self) -> bool {
        // By bit pattern, so that the equality is reflexive (NaN weights included).
        let same = |a: &[f32], b: &[f32]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
        };
        self.inputs == other.inputs
            && self.outputs == other.outputs
            && self.pixels == other.pixels
            && same(&self.weights, &other.weights)
            && same(&self.bias, &other.bias)
            && self.residual_channels == other.residual_channels
            && match (&self.slopes, &other.slopes) {
                (Some(a), Some(b)) => same(a, b),
                (a, b) => a.is_none() && b.is_none(),
            }
            && self.clamp.0.to_bits() == other.clamp.0.to_bits()
            && self.clamp.1.to_bits() == other.clamp.1.to_bits()
            && self.output_shape == other.output_shape
            && self.isa == other.isa
    }
}

// Weights compare by bit pattern above, so equality is reflexive.
impl Eq for Pointwise {}

/// Output channels per weight panel: two vectors.
fn panel_width(isa: Isa) -> usize {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => avx512::PANEL,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => avx2::PANEL,
        #[cfg(target_arch = "aarch64")]
        Isa::Baseline => neon::PANEL,
        #[cfg(not(target_arch = "aarch64"))]
        Isa::Baseline => 1,
    }
}

impl Pointwise {
    /// This op for `conv`, or `None` where the convolution is not a plain pointwise one.
    fn from_conv(
        model: &TypedModel,
        node: &TypedNode,
        conv: &Conv,
        isa: Isa,
    ) -> TractResult<Option<Self>> {
        let spec = &conv.pool_spec;
        let pointwise = spec.kernel_shape.len() == 2
            && spec.kernel_shape.iter().all(|k| *k == 1)
            && (0..2).all(|axis| spec.stride(axis) == 1);
        if !pointwise || conv.group != 1 {
            return Ok(None);
        }
        let Some(ConvParts { kernel, bias, data }) = conv_parts(model, node, conv)? else {
            return Ok(None);
        };
        let hw = data.hw_dims();
        let padding = spec.computed_padding(hw);
        if padding
            .iter()
            .any(|p| p.pad_before != 0 || p.pad_after != 0)
        {
            return Ok(None);
        }
        let (inputs, outputs) = (*data.c(), spec.output_channels);
        // [1, O, I, 1] whatever the kernel format.
        let grouped = conv.kernel_fmt.kernel_as_group_o_i_hw(&kernel, 1)?;
        let grouped = grouped.try_as_plain_ram()?.as_slice::<f32>()?;
        if grouped.len() != inputs * outputs {
            return Ok(None);
        }
        let weights = pack_panels(isa, inputs, outputs, |i, o| grouped[o * inputs + i]);
        let pixels = data.n().copied().unwrap_or(1) * hw[0] * hw[1];
        let mut output_shape: TVec<usize> = tvec![hw[0], hw[1], outputs];
        if let Some(&n) = data.n() {
            output_shape.insert(0, n);
        }
        Ok(Some(Pointwise {
            inputs,
            outputs,
            pixels,
            weights: Arc::new(weights),
            bias: Arc::new(pad_panels(isa, &bias)),
            residual_channels: None,
            slopes: None,
            clamp: (f32::NEG_INFINITY, f32::INFINITY),
            output_shape,
            isa,
        }))
    }
}

/// Weights `weight(row, output)` in the kernels' layout: panels of `panel_width(isa)` output
/// channels, each `[rows, width]`, zero-padded past the last output.
fn pack_panels(
    isa: Isa,
    rows: usize,
    outputs: usize,
    weight: impl Fn(usize, usize) -> f32,
) -> Vec<f32> {
    let width = panel_width(isa);
    let mut packed = vec![0f32; outputs.div_ceil(width) * rows * width];
    for o in 0..outputs {
        for r in 0..rows {
            packed[((o / width) * rows + r) * width + o % width] = weight(r, o);
        }
    }
    packed
}

/// Per-output-channel values (bias, slopes) laid out like `pack_panels`' outputs: whole panels,
/// zero-padded.
fn pad_panels(isa: Isa, values: &[f32]) -> Vec<f32> {
    let width = panel_width(isa);
    let mut padded = vec![0f32; values.len().div_ceil(width) * width];
    padded[..values.len()].copy_from_slice(values);
    padded
}

impl Op for Pointwise {
    fn name(&self) -> StaticName {
        "VerifacePointwiseNhwc".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} -> {} channels over {} pixels, residual channels {:?}, PReLU {}, clamp {:?}, {:?}",
            self.inputs,
            self.outputs,
            self.pixels,
            self.residual_channels,
            self.slopes.is_some(),
            self.clamp,
            self.isa
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Pointwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = inputs[0].try_as_plain_ram()?;
        let x = x.as_slice::<f32>()?;
        ensure!(
            x.len() == self.pixels * self.inputs,
            "pointwise convolution input has {} values, expected {} pixels of {} channels",
            x.len(),
            self.pixels,
            self.inputs
        );
        let residual = match self.residual_channels {
            Some(_) => Some(inputs[1].try_as_plain_ram()?),
            None => None,
        };
        let residual = residual.as_ref().map(|r| r.as_slice::<f32>()).transpose()?;
        if let (Some(r), Some(channels)) = (residual, self.residual_channels) {
            ensure!(
                r.len() == self.pixels * channels,
                "residual has {} values, expected {} pixels of {channels} channels",
                r.len(),
                self.pixels
            );
        }
        let fill = |first_pixel: usize, rows: &mut [f32]| {
            let args = Args {
                x,
                residual,
                residual_channels: self.residual_channels.unwrap_or(0),
                w: &self.weights,
                b: &self.bias,
                slopes: self.slopes.as_ref().map(|s| s.as_slice()),
                inputs: self.inputs,
                outputs: self.outputs,
                clamp: self.clamp,
                first_pixel,
                taps: None,
            };
            run(self.isa, &args, rows)
        };
        let work = self.pixels * self.inputs * self.outputs / 16;
        // SAFETY: `run` writes every output channel of every pixel it is handed.
        let output = unsafe { fill_rows(&self.output_shape, self.outputs, work, fill)? };
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for Pointwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.iter().all(|i| i.datum_type == f32::datum_type()));
        Ok(tvec!(f32::fact(&self.output_shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let macs = self.pixels * self.inputs * self.outputs;
        Ok(tvec!((Cost::FMA(f32::datum_type()), macs.into())))
    }

    as_op!();
}

struct Args<'a> {
    x: &'a [f32],
    residual: Option<&'a [f32]>,
    /// The residual's channels per pixel (the first output channels).
    residual_channels: usize,
    w: &'a [f32],
    b: &'a [f32],
    slopes: Option<&'a [f32]>,
    inputs: usize,
    outputs: usize,
    clamp: (f32, f32),
    /// The pixel the output slice handed over starts at.
    first_pixel: usize,
    /// A dense convolution's taps instead of one pixel's channels (`DenseTaps`): the offset of
    /// each weight row's input value from a pixel's first, and the step between pixels.
    taps: Option<(&'a [usize], usize)>,
}

fn run(isa: Isa, args: &Args, out: &mut [f32]) {
    match isa {
        // SAFETY: `Isa::detect` chose these only where the CPU reports the features, and the
        // slices hold the pixels `out` covers (checked in `eval`).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::run(args, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { avx2::run(args, out) },
        // SAFETY: every aarch64 CPU has NEON.
        #[cfg(target_arch = "aarch64")]
        Isa::Baseline => unsafe { neon::run(args, out) },
        #[cfg(not(target_arch = "aarch64"))]
        Isa::Baseline => unreachable!("x86 pointwise ops are only created for AVX2 and AVX-512"),
    }
}

/// Channel-last depthwise output pixels of one row whose taps all lie inside the input, on the
/// same vector types: tiles of four pixels by two vectors of channels share each weight load.
/// Only the channels up to the last whole vector; the caller runs the rest.
pub(super) struct DepthwiseRow<'a> {
    pub isa: Isa,
    pub channels: usize,
    pub kernel_hw: [usize; 2],
    /// Input values between taps: vertically (a dilated input row), horizontally.
    pub tap_step: [usize; 2],
    /// Input values between neighbouring output pixels.
    pub pixel_step: usize,
    /// `[taps, channels]`.
    pub weights: &'a [f32],
    pub bias: &'a [f32],
    pub slopes: Option<&'a [f32]>,
    pub clamp: (f32, f32),
}

impl DepthwiseRow<'_> {
    /// Channels the vector kernel covers: whole vectors (none where this CPU has no copy).
    pub(super) fn vector_channels(&self) -> usize {
        if self.isa == Isa::Baseline && cfg!(target_arch = "x86_64") {
            return 0;
        }
        let lanes = panel_width(self.isa) / 2;
        self.channels / lanes * lanes
    }

    /// `count` output pixels into `out` (`count` × channels, the tail channels left alone),
    /// the first pixel's tap (0, 0) at `x[0]`.
    pub(super) fn run(&self, x: &[f32], count: usize, out: &mut [f32]) {
        let [kh, kw] = self.kernel_hw;
        let reach = (kh - 1) * self.tap_step[0] + (kw - 1) * self.tap_step[1];
        assert!(count == 0 || x.len() >= (count - 1) * self.pixel_step + reach + self.channels);
        assert!(out.len() >= count * self.channels);
        match self.isa {
            // SAFETY: `Isa::detect` chose these only where the CPU reports the features; the
            // asserts above keep every load and store inside the slices.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe {
                avx512::depthwise_row(self, x.as_ptr(), count, out.as_mut_ptr())
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe {
                avx2::depthwise_row(self, x.as_ptr(), count, out.as_mut_ptr())
            },
            // SAFETY: as above; every aarch64 CPU has NEON.
            #[cfg(target_arch = "aarch64")]
            Isa::Baseline => unsafe {
                neon::depthwise_row(self, x.as_ptr(), count, out.as_mut_ptr())
            },
            #[cfg(not(target_arch = "aarch64"))]
            Isa::Baseline => {}
        }
    }
}

/// A dense convolution of few input channels (an RGB stem) on the pointwise kernels: the
/// weight rows are its taps × input channels, and a tile of output pixels of one row reads each
/// tap's value at a fixed offset from the pixel's first. The caller hands over the pixels whose
/// taps all lie inside the input; the edges stay its own.
#[derive(Clone, Debug)]
pub(super) struct DenseTaps {
    isa: Isa,
    outputs: usize,
    /// Input offset of each weight row (tap, input channel) from a pixel's first value.
    offsets: Vec<usize>,
    /// Input values between neighbouring output pixels of a row.
    step: usize,
    weights: Vec<f32>,
    bias: Vec<f32>,
    slopes: Option<Vec<f32>>,
    clamp: (f32, f32),
}

impl DenseTaps {
    /// `weight(row, o)` for each of `offsets.len()` weight rows; `None` where this CPU has no
    /// copy of the kernels (x86 without AVX2).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        isa: Isa,
        offsets: Vec<usize>,
        step: usize,
        outputs: usize,
        weight: impl Fn(usize, usize) -> f32,
        bias: &[f32],
        slopes: Option<&[f32]>,
        clamp: (f32, f32),
    ) -> Option<Self> {
        if isa == Isa::Baseline && cfg!(target_arch = "x86_64") {
            return None;
        }
        Some(DenseTaps {
            isa,
            outputs,
            weights: pack_panels(isa, offsets.len(), outputs, weight),
            offsets,
            step,
            bias: pad_panels(isa, bias),
            slopes: slopes.map(|s| pad_panels(isa, s)),
            clamp,
        })
    }

    /// Output pixels of one row, every channel, into `out`; the first pixel's values start at
    /// `x[0]`, the others `step` apart.
    pub(super) fn row(&self, x: &[f32], out: &mut [f32]) {
        let pixels = out.len() / self.outputs;
        let last = self.offsets.iter().max().copied().unwrap_or(0);
        assert!(pixels == 0 || x.len() > (pixels - 1) * self.step + last);
        let args = Args {
            x,
            residual: None,
            residual_channels: 0,
            w: &self.weights,
            b: &self.bias,
            slopes: self.slopes.as_deref(),
            inputs: self.offsets.len(),
            outputs: self.outputs,
            clamp: self.clamp,
            first_pixel: 0,
            taps: Some((&self.offsets, self.step)),
        };
        run(self.isa, &args, out)
    }
}

/// Pixels whose input rows are read against every panel before moving on: about 128 KiB of
/// input, so that they stay in the core's L2 while the panels pass (the largest weight matrix,
/// 1152 x 320, is 1.4 MiB; the input of a late layer, 49 x 1152, 220 KiB).
fn chunk_pixels(inputs: usize, tile: usize) -> usize {
    ((128 * 1024 / 4) / inputs.max(1)).max(tile) / tile * tile
}

/// One copy of the kernel per instruction set: `$v` vectors of `$lanes` floats, tiles of
/// `$tile` pixels by two vectors (the accumulators fill the register file). The bodies are
/// plain functions with the module's target features: a closure or a generic helper without
/// them would not get the vector instructions inlined.
macro_rules! kernels {
    ($isa:ident, $arch:ident, $feature:literal, $v:ty, $lanes:literal, $tile:literal,
     $zero:path, $loadu:path, $storeu:path, $set1:path, $fmadd:path, $add:path,
     $max:path, $min:path, $accumulate:item) => {
        mod $isa {
            #[allow(unused_imports)]
            use std::arch::$arch::*;

            #[allow(unused_imports)]
            use super::*;

            /// Output channels per weight panel.
            pub(super) const PANEL: usize = 2 * $lanes;
            const TILE: usize = $tile;

            /// Every output channel of the pixels `out` holds.
            ///
            /// # Safety
            /// The CPU has `$feature`; `a.x` (and `a.residual`) hold the pixels `out` covers.
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn run(a: &Args, out: &mut [f32]) {
                let pixels = out.len() / a.outputs;
                let chunk = chunk_pixels(a.inputs, TILE);
                let panels = a.outputs.div_ceil(PANEL);
                let out = out.as_mut_ptr();
                let mut start = 0;
                while start < pixels {
                    let end = pixels.min(start + chunk);
                    for panel in 0..panels {
                        let width = PANEL.min(a.outputs - panel * PANEL);
                        let mut p = start;
                        while p < end {
                            let o = out.add(p * a.outputs + panel * PANEL);
                            let q = a.first_pixel + p;
                            // The rest of the chunk in the largest tiles that fit.
                            p += match end - p {
                                n if n >= TILE => tile::<TILE>(a, q, panel, width, o),
                                n if n >= 8 => tile::<8>(a, q, panel, width, o),
                                n if n >= 4 => tile::<4>(a, q, panel, width, o),
                                n if n >= 2 => tile::<2>(a, q, panel, width, o),
                                _ => tile::<1>(a, q, panel, width, o),
                            };
                        }
                    }
                    start = end;
                }
            }

            /// `M` pixels from pixel `p` by one panel (`width` real channels); returns `M`.
            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn tile<const M: usize>(
                a: &Args,
                p: usize,
                panel: usize,
                width: usize,
                out: *mut f32,
            ) -> usize {
                if width > $lanes {
                    product::<M, 2>(a, p, panel, width, out)
                } else {
                    product::<M, 1>(a, p, panel, width, out)
                }
                M
            }

            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn product<const M: usize, const V: usize>(
                a: &Args,
                p: usize,
                panel: usize,
                width: usize,
                out: *mut f32,
            ) {
                let acc = match a.taps {
                    Some((offsets, step)) => accumulate_taps::<M, V>(a, offsets, step, p, panel),
                    None => accumulate::<M, V>(a, p, panel),
                };
                let lo = $set1(a.clamp.0);
                let hi = $set1(a.clamp.1);
                let n = a.outputs;
                let rn = a.residual_channels;
                // The residual's channels in this panel: all, some or none of `width`.
                let rw = rn.saturating_sub(panel * PANEL).min(width);
                let residual = a
                    .residual
                    .map(|r| r.as_ptr().wrapping_add(p * rn + panel * PANEL));
                let slopes = a.slopes.map(|s| s.as_ptr().add(panel * PANEL));
                let zero = $zero();
                if width == V * $lanes && (residual.is_none() || rw == width) {
                    for (m, row) in acc.iter().enumerate() {
                        for (v, lane) in row.iter().enumerate() {
                            let mut y = *lane;
                            if let Some(r) = residual {
                                y = $add(y, $loadu(r.add(m * rn + v * $lanes)));
                            }
                            if let Some(s) = slopes {
                                let s = $loadu(s.add(v * $lanes));
                                y = $fmadd(s, $min(y, zero), $max(y, zero));
                            }
                            $storeu(out.add(m * n + v * $lanes), $min($max(y, lo), hi));
                        }
                    }
                } else {
                    // The panel's last channels are padding, or the residual ends inside it:
                    // go through a row on the stack.
                    let mut line = [0f32; PANEL];
                    for (m, row) in acc.iter().enumerate() {
                        if let Some(r) = residual {
                            std::ptr::copy_nonoverlapping(r.wrapping_add(m * rn), line.as_mut_ptr(), rw);
                            line[rw..].fill(0.0);
                        }
                        for (v, lane) in row.iter().enumerate() {
                            let mut y = *lane;
                            if residual.is_some() {
                                y = $add(y, $loadu(line.as_ptr().add(v * $lanes)));
                            }
                            if let Some(s) = slopes {
                                let s = $loadu(s.add(v * $lanes));
                                y = $fmadd(s, $min(y, zero), $max(y, zero));
                            }
                            $storeu(line.as_mut_ptr().add(v * $lanes), $min($max(y, lo), hi));
                        }
                        std::ptr::copy_nonoverlapping(line.as_ptr(), out.add(m * n), width);
                    }
                }
            }

            $accumulate

            /// Depthwise output pixels (see `DepthwiseRow`): tiles of up to four pixels by one
            /// or two vectors of channels.
            #[target_feature(enable = $feature)]
            #[allow(dead_code)]
            pub(super) unsafe fn depthwise_row(
                d: &DepthwiseRow,
                x: *const f32,
                count: usize,
                out: *mut f32,
            ) {
                let channels = d.vector_channels();
                let mut c0 = 0;
                while c0 < channels {
                    let two = c0 + 2 * $lanes <= channels;
                    let mut p = 0;
                    while p < count {
                        let (x, o) = (x.add(p * d.pixel_step + c0), out.add(p * d.channels + c0));
                        p += match (two, count - p >= 4) {
                            (true, true) => depthwise_tile::<4, 2>(d, x, c0, o),
                            (true, false) => depthwise_tile::<1, 2>(d, x, c0, o),
                            (false, true) => depthwise_tile::<4, 1>(d, x, c0, o),
                            (false, false) => depthwise_tile::<1, 1>(d, x, c0, o),
                        };
                    }
                    c0 += if two { 2 * $lanes } else { $lanes };
                }
            }

            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn depthwise_tile<const M: usize, const V: usize>(
                d: &DepthwiseRow,
                x: *const f32,
                c0: usize,
                out: *mut f32,
            ) -> usize {
                let acc = depthwise_sums::<M, V>(d, x, c0);
                let lo = $set1(d.clamp.0);
                let hi = $set1(d.clamp.1);
                let zero = $zero();
                for (m, row) in acc.iter().enumerate() {
                    for (v, lane) in row.iter().enumerate() {
                        let mut y = *lane;
                        if let Some(s) = d.slopes {
                            let s = $loadu(s.as_ptr().add(c0 + v * $lanes));
                            y = $fmadd(s, $min(y, zero), $max(y, zero));
                        }
                        $storeu(out.add(m * d.channels + v * $lanes), $min($max(y, lo), hi));
                    }
                }
                M
            }

            /// Not inlined, for the reason `accumulate` is not.
            #[target_feature(enable = $feature)]
            #[inline(never)]
            unsafe fn depthwise_sums<const M: usize, const V: usize>(
                d: &DepthwiseRow,
                x: *const f32,
                c0: usize,
            ) -> [[$v; V]; M] {
                let b = d.bias.as_ptr().add(c0);
                let mut acc: [[$v; V]; M] = [[$zero(); V]; M];
                for row in acc.iter_mut() {
                    for (v, lane) in row.iter_mut().enumerate() {
                        *lane = $loadu(b.add(v * $lanes));
                    }
                }
                let [kh, kw] = d.kernel_hw;
                for ky in 0..kh {
                    let line = x.add(ky * d.tap_step[0]);
                    for kx in 0..kw {
                        let w = d.weights.as_ptr().add((ky * kw + kx) * d.channels + c0);
                        let mut wv: [$v; V] = [$zero(); V];
                        for (v, lane) in wv.iter_mut().enumerate() {
                            *lane = $loadu(w.add(v * $lanes));
                        }
                        let tap = line.add(kx * d.tap_step[1]);
                        for (m, row) in acc.iter_mut().enumerate() {
                            for v in 0..V {
                                let xv = $loadu(tap.add(m * d.pixel_step + v * $lanes));
                                row[v] = $fmadd(xv, wv[v], row[v]);
                            }
                        }
                    }
                }
                acc
            }

            /// The sums of one tile of a dense convolution (`DenseTaps`), bias included:
            /// pixel `m`'s input value for weight row `i` at `x[(p + m)·step + offsets[i]]`.
            #[target_feature(enable = $feature)]
            #[inline(never)]
            unsafe fn accumulate_taps<const M: usize, const V: usize>(
                a: &Args,
                offsets: &[usize],
                step: usize,
                p: usize,
                panel: usize,
            ) -> [[$v; V]; M] {
                let x = a.x.as_ptr().add(p * step);
                let w = a.w.as_ptr().add(panel * a.inputs * PANEL);
                let b = a.b.as_ptr().add(panel * PANEL);
                let mut acc: [[$v; V]; M] = [[$zero(); V]; M];
                for row in acc.iter_mut() {
                    for (v, lane) in row.iter_mut().enumerate() {
                        *lane = $loadu(b.add(v * $lanes));
                    }
                }
                for (i, offset) in offsets.iter().enumerate() {
                    let mut wv: [$v; V] = [$zero(); V];
                    for (v, lane) in wv.iter_mut().enumerate() {
                        *lane = $loadu(w.add(i * PANEL + v * $lanes));
                    }
                    let x = x.add(*offset);
                    for (m, row) in acc.iter_mut().enumerate() {
                        let xb = $set1(*x.add(m * step));
                        for v in 0..V {
                            row[v] = $fmadd(xb, wv[v], row[v]);
                        }
                    }
                }
                acc
            }
        }
    };
}

/// The x86 tile: each input channel's weights (two vectors) against each pixel's value,
/// broadcast.
#[cfg(target_arch = "x86_64")]
macro_rules! broadcast_accumulate {
    ($feature:literal, $v:ty, $lanes:literal, $zero:path, $loadu:path, $set1:path,
     $fmadd:path) => {
        /// The sums of one tile, bias included. Not inlined: in one function with the
        /// epilogue's loops, rustc kept the accumulators in memory and stored all of them
        /// on every input channel (seen in the assembly; 3x slower).
        #[target_feature(enable = $feature)]
        #[inline(never)]
        unsafe fn accumulate<const M: usize, const V: usize>(
            a: &Args,
            p: usize,
            panel: usize,
        ) -> [[$v; V]; M] {
            let k = a.inputs;
            let x = a.x.as_ptr().add(p * k);
            let w = a.w.as_ptr().add(panel * k * PANEL);
            let b = a.b.as_ptr().add(panel * PANEL);
            let mut acc: [[$v; V]; M] = [[$zero(); V]; M];
            for row in acc.iter_mut() {
                for (v, lane) in row.iter_mut().enumerate() {
                    *lane = $loadu(b.add(v * $lanes));
                }
            }
            for i in 0..k {
                let mut wv: [$v; V] = [$zero(); V];
                for (v, lane) in wv.iter_mut().enumerate() {
                    *lane = $loadu(w.add(i * PANEL + v * $lanes));
                }
                for (m, row) in acc.iter_mut().enumerate() {
                    let xb = $set1(*x.add(m * k + i));
                    for v in 0..V {
                        row[v] = $fmadd(xb, wv[v], row[v]);
                    }
                }
            }
            acc
        }
    };
}

#[cfg(target_arch = "x86_64")]
kernels!(
    avx512,
    x86_64,
    "avx512f,fma",
    __m512,
    16,
    12,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_add_ps,
    _mm512_max_ps,
    _mm512_min_ps,
    broadcast_accumulate!(
        "avx512f,fma",
        __m512,
        16,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps
    );
);

#[cfg(target_arch = "x86_64")]
kernels!(
    avx2,
    x86_64,
    "avx2,fma",
    __m256,
    8,
    6,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_add_ps,
    _mm256_max_ps,
    _mm256_min_ps,
    broadcast_accumulate!(
        "avx2,fma",
        __m256,
        8,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps
    );
);

/// NEON has no zero or `a·b + c` in the shape the kernels call.
#[cfg(target_arch = "aarch64")]
mod neon_ops {
    use std::arch::aarch64::*;

    #[inline(always)]
    pub(super) unsafe fn zero() -> float32x4_t {
        vdupq_n_f32(0.0)
    }

    #[inline(always)]
    pub(super) unsafe fn fmadd(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
        vfmaq_f32(c, a, b)
    }
}

#[cfg(target_arch = "aarch64")]
kernels!(
    neon,
    aarch64,
    "neon",
    float32x4_t,
    4,
    8,
    super::neon_ops::zero,
    vld1q_f32,
    vst1q_f32,
    vdupq_n_f32,
    super::neon_ops::fmadd,
    vaddq_f32,
    vmaxq_f32,
    vminq_f32,
    /// The sums of one tile, bias included: four input channels of each pixel in one vector,
    /// each lane multiplied into the weights by element (`fmla v.4s, v.4s, v.s[lane]`), so
    /// that a load serves four products where a broadcast serves one. Not inlined, as on x86.
    #[inline(never)]
    unsafe fn accumulate<const M: usize, const V: usize>(
        a: &Args,
        p: usize,
        panel: usize,
    ) -> [[float32x4_t; V]; M] {
        let k = a.inputs;
        let x = a.x.as_ptr().add(p * k);
        let w = a.w.as_ptr().add(panel * k * PANEL);
        let b = a.b.as_ptr().add(panel * PANEL);
        let mut acc = [[vdupq_n_f32(0.0); V]; M];
        for row in acc.iter_mut() {
            for (v, lane) in row.iter_mut().enumerate() {
                *lane = vld1q_f32(b.add(v * 4));
            }
        }
        let mut i = 0;
        while i + 4 <= k {
            let mut xs = [vdupq_n_f32(0.0); M];
            for (m, xv) in xs.iter_mut().enumerate() {
                *xv = vld1q_f32(x.add(m * k + i));
            }
            macro_rules! by_lane {
                ($lane:literal) => {{
                    let mut wv = [vdupq_n_f32(0.0); V];
                    for (v, lane) in wv.iter_mut().enumerate() {
                        *lane = vld1q_f32(w.add((i + $lane) * PANEL + v * 4));
                    }
                    for (row, xv) in acc.iter_mut().zip(&xs) {
                        for v in 0..V {
                            row[v] = vfmaq_laneq_f32::<$lane>(row[v], wv[v], *xv);
                        }
                    }
                }};
            }
            by_lane!(0);
            by_lane!(1);
            by_lane!(2);
            by_lane!(3);
            i += 4;
        }
        // The last input channels one by one.
        while i < k {
            let mut wv = [vdupq_n_f32(0.0); V];
            for (v, lane) in wv.iter_mut().enumerate() {
                *lane = vld1q_f32(w.add(i * PANEL + v * 4));
            }
            for (m, row) in acc.iter_mut().enumerate() {
                let xb = vdupq_n_f32(*x.add(m * k + i));
                for v in 0..V {
                    row[v] = vfmaq_f32(row[v], wv[v], xb);
                }
            }
            i += 1;
        }
        acc
    }
);

#[cfg(test)]
mod tests {
    use super::super::kernels::{test_values as values, wire_test_clamp, worst_difference};
    use super::*;
    use tract_onnx::tract_core::ops::array::{Pad, PadMode};
    use tract_onnx::tract_core::ops::cnn::{KernelFormat, PaddingSpec, PoolSpec};
    use tract_onnx::tract_core::ops::math;
    use tract_onnx::tract_core::ops::nn::DataFormat;

    use crate::infer::prelu::wire_for_test;

    struct Case {
        format: DataFormat,
        batch: usize,
        inputs: usize,
        outputs: usize,
        hw: [usize; 2],
        /// A residual `Add` of this many channels (zero-padded to the output's when fewer).
        residual: Option<usize>,
        /// PReLU slopes drawn from this range; whether they are known when PReLU is wired.
        prelu: Option<((f32, f32), bool)>,
        clamp: Option<(f32, f32)>,
    }

    fn shape(case: &Case, channels: usize) -> TVec<usize> {
        let [h, w] = case.hw;
        match case.format {
            DataFormat::NCHW => tvec![case.batch, channels, h, w],
            DataFormat::NHWC => tvec![case.batch, h, w, channels],
            _ => unreachable!(),
        }
    }

    /// A pointwise convolution, then a residual `Add`, a PReLU and a clamp, as tract-onnx types
    /// them.
    fn model(case: &Case) -> TractResult<TypedModel> {
        let (ci, co) = (case.inputs, case.outputs);
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(shape(case, ci)))?;
        let kernel = tract_ndarray::Array4::from_shape_vec((co, ci, 1, 1), values(co * ci, 2))?;
        let k = model.add_const("k", Tensor::from(kernel))?;
        let b = model.add_const("b", tensor1(&values(co, 3)))?;
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: case.format,
                kernel_shape: tvec![1, 1],
                padding: PaddingSpec::Valid,
                dilations: None,
                strides: None,
                input_channels: ci,
                output_channels: co,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: 1,
            q_params: None,
        };
        let mut y = model.wire_node("conv", conv, &[x, k, b])?[0];
        if let Some(channels) = case.residual {
            let mut r = model.add_source("r", f32::fact(shape(case, channels)))?;
            if channels < co {
                let c_axis = if case.format.c_is_last() { 3 } else { 1 };
                let mut pads = vec![(0, 0); 4];
                pads[c_axis].1 = co - channels;
                let pad = Pad::new(pads, PadMode::Constant(Arc::new(tensor0(0f32))));
                r = model.wire_node("channel_padding", pad, &[r])?[0];
            }
            y = model.wire_node("add", math::add(), &[y, r])?[0];
        }
        if let Some(((lo, hi), known)) = case.prelu {
            let slopes: Vec<f32> = values(co, 7)
                .iter()
                .map(|u| lo + (hi - lo) * (u + 1.0) / 2.0)
                .collect();
            y = wire_for_test(&mut model, y, case.format, &slopes, known)?;
        }
        if let Some(clamp) = case.clamp {
            y = wire_test_clamp(&mut model, y, clamp)?;
        }
        model.select_output_outlets(&[y])?;
        Ok(model)
    }

    fn run(model: TypedModel, inputs: &[Tensor]) -> TractResult<Vec<f32>> {
        let inputs = inputs.iter().map(|t| t.clone().into_tvalue()).collect();
        let out = model.into_optimized()?.into_runnable()?.run(inputs)?;
        Ok(out[0].try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
    }

    /// veriface's op, in every compiled copy this CPU has, against tract's own lowering.
    fn check(case: Case) -> TractResult<()> {
        let reference = model(&case)?;
        let mut inputs = vec![];
        for (i, fact) in reference.input_outlets()?.iter().enumerate() {
            let shape = reference
                .outlet_fact(*fact)?
                .shape
                .as_concrete()
                .unwrap()
                .to_vec();
            let n = shape.iter().product();
            inputs.push(Tensor::from_shape(&shape, &values(n, 10 + i as u64))?);
        }
        let expected = run(reference, &inputs)?;
        // x86: AVX2 and AVX-512 (there is no baseline copy); aarch64: NEON, its baseline.
        let copies: Vec<Isa> = Isa::available()
            .into_iter()
            .filter(|isa| *isa != Isa::Baseline || cfg!(target_arch = "aarch64"))
            .collect();
        for isa in copies {
            let mut ours = model(&case)?;
            assert_eq!(replace_with(&mut ours, isa)?, 1, "not replaced ({isa:?})");
            let ours = ours.into_decluttered()?;
            let names: Vec<String> = ours
                .nodes()
                .iter()
                .map(|n| n.op.name().to_string())
                .collect();
            assert!(
                names.iter().any(|n| n == "VerifacePointwiseNhwc")
                    && !names
                        .iter()
                        .any(|n| ["Add", "Max", "Min", "Mul", "Pad"].contains(&n.as_str())),
                "the epilogue was not fused: {names:?}"
            );
            let got = run(ours, &inputs)?;
            let worst = worst_difference(&expected, &got);
            // Sums of `inputs` products of values in [-1, 1), added in another order: the
            // rounding differs by a few ulps of the running sum per term at most.
            let bound = 1e-6 * case.inputs as f32 + 1e-5;
            assert!(worst < bound, "worst difference {worst} ({isa:?})");
            if let Some((lo, _)) = case.clamp {
                assert!(got.contains(&lo), "nothing reached the clamp");
            }
        }
        Ok(())
    }

    #[test]
    fn matches_tract_channel_first_with_residual_prelu_and_clamp() -> TractResult<()> {
        // 70 outputs: whole panels and a partial one in both copies (32 or 16 wide); 2 x 63
        // pixels: whole tiles, then tiles of 8, 4, 2 and 1. Each of the PReLU wirings: slopes
        // below 1, above 1, on both sides, and known only after constant folding.
        for prelu in [
            None,
            Some(((-0.5, 1.0), true)),
            Some(((1.0, 3.0), true)),
            Some(((-0.5, 2.0), true)),
            Some(((-0.5, 2.0), false)),
        ] {
            check(Case {
                format: DataFormat::NCHW,
                batch: 2,
                inputs: 37,
                outputs: 70,
                hw: [7, 9],
                residual: Some(70),
                prelu,
                clamp: Some((-0.75, 0.5)),
            })?;
        }
        Ok(())
    }

    #[test]
    fn matches_tract_with_a_channel_padded_residual() -> TractResult<()> {
        // BlazeFace's widening blocks: the residual has fewer channels, zero-padded at the end.
        // 70 outputs from residuals of 40 (ending inside a panel), 32 (on a panel's edge) and
        // 5 channels; channel-first and channel-last.
        for (format, channels) in [
            (DataFormat::NCHW, 40),
            (DataFormat::NHWC, 32),
            (DataFormat::NCHW, 5),
        ] {
            check(Case {
                format,
                batch: 1,
                inputs: 24,
                outputs: 70,
                hw: [5, 6],
                residual: Some(channels),
                prelu: None,
                clamp: Some((0.0, 6.0)),
            })?;
        }
        Ok(())
    }

    #[test]
    fn matches_tract_channel_last_over_several_chunks_of_pixels() -> TractResult<()> {
        // 1200 inputs: the pixels are read in chunks of a few tiles; 24 outputs: one panel
        // whose last vector is padding (AVX-512), or a whole one and a half-used one (AVX2).
        check(Case {
            format: DataFormat::NHWC,
            batch: 1,
            inputs: 1200,
            outputs: 24,
            hw: [5, 13],
            residual: None,
            prelu: Some(((0.0, 0.5), true)),
            clamp: None,
        })?;
        check(Case {
            format: DataFormat::NCHW,
            batch: 1,
            inputs: 3,
            outputs: 8,
            hw: [1, 1],
            residual: None,
            prelu: None,
            clamp: Some((-0.25, 6.0)),
        })
    }
}
