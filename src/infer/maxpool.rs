//! Channel-first max pooling for tract. tract 0.23's `OptMaxPool` walks every output point's
//! window through its generic patch scanner: FaceMesh's first 2x2 pool (16 × 96 × 96 in) took
//! 0.50 ms of its 3.9 ms, 7-14x onnxruntime's time for the same node
//! (`benches/peer/node_compare.py face_mesh`). This op takes the max down each window's columns
//! (the input rows its windows cover, contiguous), then along the output row; the 2x2 stride-2
//! windows of FaceMesh and BlazeFace pair neighbours directly. FaceMesh's five pools: 0.96 →
//! 0.05 ms.
//!
//! It replaces tract's `MaxPool` where the pool is f32, 2-D, channel-first, without index outputs
//! and on a concrete input shape. Positions outside the input (padding) take no part, as in
//! ONNX. In a model about to run channel-last it pools channel-last between two transposes, which
//! decluttering cancels against the convolutions' (FaceMesh: a transpose pair per pool, 0.1 ms of
//! its 1.8, otherwise): the same walk with each position a run of channels.

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::MaxPool;

use super::kernels::{fill_rows, splice, tap_range, Isa};

/// Replace every eligible `MaxPool` of a decluttered model; returns how many were replaced.
/// `channels_last`: the model is about to run channel-last (`conv_nhwc`).
pub(super) fn replace(model: &mut TypedModel, channels_last: bool) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(pool) = node.op_as::<MaxPool>() else {
            continue;
        };
        let Some(op) = RowMaxPool::from_pool(model, node, pool, channels_last)? else {
            continue;
        };
        let rank = model.outlet_fact(node.inputs[0])?.rank();
        let moves = channels_last.then_some((rank - 3, rank - 1));
        let (name, input) = (node.name.clone(), node.inputs[0]);
        splice(model, &name, op, &[input], id, moves)?;
        replaced += 1;
    }
    if replaced > 0 {
        model.compact()?;
    }
    Ok(replaced)
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct RowMaxPool {
    /// Planes, each `input_hw` in and `output_hw` out: batch × channels (channel-first) or batch
    /// (channel-last).
    planes: usize,
    /// Values per position: 1 (channel-first) or the channels (channel-last).
    inner: usize,
    input_hw: [usize; 2],
    output_hw: [usize; 2],
    kernel_hw: [usize; 2],
    strides: [usize; 2],
    dilations: [usize; 2],
    pad_before: [usize; 2],
    output_shape: TVec<usize>,
    isa: Isa,
}

impl RowMaxPool {
    fn from_pool(
        model: &TypedModel,
        node: &TypedNode,
        pool: &MaxPool,
        channels_last: bool,
    ) -> TractResult<Option<Self>> {
        let spec = &pool.pool_spec;
        let x = model.outlet_fact(node.inputs[0])?;
        let Some(shape) = x.shape.as_concrete() else {
            return Ok(None);
        };
        if pool.with_index_outputs.is_some()
            || node.outputs.len() != 1
            || x.datum_type != f32::datum_type()
            || spec.kernel_shape.len() != 2
            || spec.data_format.c_is_last()
        {
            return Ok(None);
        }
        let data = spec.data_format.shape(shape.to_vec())?;
        let hw = data.hw_dims();
        let padding = spec.computed_padding(hw);
        let output_hw = [padding[0].convoluted, padding[1].convoluted];
        let c = *data.c();
        let mut output_shape: TVec<usize> = tvec![c, output_hw[0], output_hw[1]];
        if let Some(&n) = data.n() {
            output_shape.insert(0, n);
        }
        if model
            .outlet_fact(OutletId::new(node.id, 0))?
            .shape
            .as_concrete()
            != Some(&*output_shape)
        {
            return Ok(None);
        }
        let batch = data.n().copied().unwrap_or(1);
        let (planes, inner) = match channels_last {
            true => {
                let rank = output_shape.len();
                output_shape[rank - 3..].rotate_left(1);
                (batch, c)
            }
            false => (batch * c, 1),
        };
        Ok(Some(RowMaxPool {
            planes,
            inner,
            input_hw: [hw[0], hw[1]],
            output_hw,
            kernel_hw: [spec.kernel_shape[0], spec.kernel_shape[1]],
            strides: [spec.stride(0), spec.stride(1)],
            dilations: [spec.dilation(0), spec.dilation(1)],
            pad_before: [padding[0].pad_before, padding[1].pad_before],
            output_shape,
            isa: Isa::detect(),
        }))
    }

    /// Output rows `first_row..` (over planes × output rows) into `rows`. `column` holds one
    /// input row: the max down each column of a window row, before the max along it.
    #[inline(always)]
    fn rows(&self, x: &[f32], first_row: usize, rows: &mut [f32], column: &mut [f32]) {
        let [ih, iw] = self.input_hw;
        let [oh, ow] = self.output_hw;
        let [kh, kw] = self.kernel_hw;
        let [stride, dilation, pad] = [self.strides[1], self.dilations[1], self.pad_before[1]];
        let inner = self.inner;
        let iw_values = iw * inner;
        for (r, row) in rows.chunks_exact_mut(ow * inner).enumerate() {
            let (plane, oy) = ((first_row + r) / oh, (first_row + r) % oh);
            let image = &x[plane * ih * iw_values..][..ih * iw_values];
            let (ky0, ky1, iy0) = tap_range(
                oy,
                self.strides[0],
                self.dilations[0],
                self.pad_before[0],
                ih,
                kh,
            );
            let line = |ky: usize| {
                let iy = (iy0 + (ky * self.dilations[0]) as isize) as usize;
                &image[iy * iw_values..][..iw_values]
            };
            column.copy_from_slice(line(ky0));
            for ky in ky0 + 1..ky1 {
                for (c, v) in column.iter_mut().zip(line(ky)) {
                    *c = c.max(*v);
                }
            }
            if kw == 2 && stride == 2 && dilation == 1 && pad == 0 && 2 * ow <= iw {
                if inner == 1 {
                    for (o, pair) in row.iter_mut().zip(column.chunks_exact(2)) {
                        *o = pair[0].max(pair[1]);
                    }
                } else {
                    let pairs = column.chunks_exact(2 * inner);
                    for (o, pair) in row.chunks_exact_mut(inner).zip(pairs) {
                        let (left, right) = pair.split_at(inner);
                        for ((o, l), r) in o.iter_mut().zip(left).zip(right) {
                            *o = l.max(*r);
                        }
                    }
                }
                continue;
            }
            row.fill(f32::NEG_INFINITY);
            for kx in 0..kw {
                // Input column of output 0 for this tap; outputs whose column falls outside the
                // row are padding and skip it.
                let offset = (kx * dilation) as isize - pad as isize;
                let first = if offset < 0 {
                    offset.unsigned_abs().div_ceil(stride)
                } else {
                    0
                };
                let start = first as isize * stride as isize + offset;
                if first >= ow || start >= iw as isize {
                    continue;
                }
                let start = start as usize;
                let end = ow.min(first + (iw - 1 - start) / stride + 1);
                let outputs = &mut row[first * inner..end * inner];
                match stride {
                    _ if inner > 1 => {
                        for (i, o) in outputs.chunks_exact_mut(inner).enumerate() {
                            let at = &column[(start + i * stride) * inner..][..inner];
                            for (o, v) in o.iter_mut().zip(at) {
                                *o = o.max(*v);
                            }
                        }
                    }
                    1 => max_into::<1>(outputs, &column[start..]),
                    2 => max_into::<2>(outputs, &column[start..]),
                    _ => {
                        for (i, o) in outputs.iter_mut().enumerate() {
                            *o = o.max(column[start + i * stride]);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rows_avx2(pool: &RowMaxPool, x: &[f32], first: usize, rows: &mut [f32], col: &mut [f32]) {
    pool.rows(x, first, rows, col)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rows_avx512(
    pool: &RowMaxPool,
    x: &[f32],
    first: usize,
    rows: &mut [f32],
    col: &mut [f32],
) {
    pool.rows(x, first, rows, col)
}

/// `outputs[i] = max(outputs[i], input[i · S])`, the stride a constant so the loop vectorises.
#[inline(always)]
fn max_into<const S: usize>(outputs: &mut [f32], input: &[f32]) {
    let input = &input[..(outputs.len() - 1) * S + 1];
    for (i, o) in outputs.iter_mut().enumerate() {
        *o = o.max(input[i * S]);
    }
}

impl Op for RowMaxPool {
    fn name(&self) -> StaticName {
        "VerifaceMaxPool".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{}x{} stride {:?}, {} planes of {} values per position",
            self.kernel_hw[0], self.kernel_hw[1], self.strides, self.planes, self.inner
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for RowMaxPool {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let x = input.try_as_plain_ram()?.as_slice::<f32>()?;
        let [ih, iw] = self.input_hw;
        let ow = self.output_hw[1];
        ensure!(
            x.len() == self.planes * ih * iw * self.inner,
            "max pool input has {} values, expected {} planes of {ih}x{iw}x{}",
            x.len(),
            self.planes,
            self.inner
        );
        let fill = |first_row: usize, rows: &mut [f32]| {
            let mut column = vec![0f32; iw * self.inner];
            match self.isa {
                // SAFETY: `Isa::detect` chose these only where the CPU reports the features
                // (AVX-512 F implies AVX2 on every CPU that has it).
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { rows_avx512(self, x, first_row, rows, &mut column) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2Fma => unsafe { rows_avx2(self, x, first_row, rows, &mut column) },
                Isa::Baseline => self.rows(x, first_row, rows, &mut column),
            }
        };
        // SAFETY: `rows` writes every value of the rows it is handed (the pair path the whole
        // row, the general path a fill, then maxes into it).
        let output = unsafe { fill_rows(&self.output_shape, ow * self.inner, x.len(), fill)? };
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for RowMaxPool {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type());
        Ok(tvec!(f32::fact(&self.output_shape)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};
    use tract_onnx::tract_core::ops::nn::DataFormat;

    fn pool_model(
        shape: &[usize],
        kernel: usize,
        stride: usize,
        padding: PaddingSpec,
    ) -> TractResult<TypedModel> {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(shape))?;
        let format = if shape.len() == 4 {
            DataFormat::NCHW
        } else {
            DataFormat::CHW
        };
        let pool = MaxPool {
            pool_spec: PoolSpec {
                data_format: format,
                kernel_shape: tvec![kernel, kernel],
                padding,
                dilations: None,
                strides: Some(tvec![stride, stride]),
                input_channels: shape[shape.len() - 3],
                output_channels: shape[shape.len() - 3],
            },
            with_index_outputs: None,
        };
        let y = model.wire_node("pool", pool, &[x])?[0];
        model.select_output_outlets(&[y])?;
        Ok(model)
    }

    /// veriface's op against tract's own pooling on the same input.
    fn check(
        shape: &[usize],
        kernel: usize,
        stride: usize,
        padding: PaddingSpec,
    ) -> TractResult<()> {
        let n: usize = shape.iter().product();
        // Distinct values in a scrambled order, so every window has one right answer.
        let input: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % n) as f32 - (n / 2) as f32)
            .collect();
        let input = Tensor::from_shape(shape, &input)?;
        let reference = pool_model(shape, kernel, stride, padding.clone())?.into_optimized()?;
        let expected = run(reference, &input)?;
        for channels_last in [false, true] {
            let mut ours =
                pool_model(shape, kernel, stride, padding.clone())?.into_decluttered()?;
            assert_eq!(
                replace(&mut ours, channels_last)?,
                1,
                "the pool was not replaced"
            );
            check_copies(
                &ours,
                &input,
                &expected,
                &format!("{shape:?} k{kernel} s{stride}"),
            )?;
        }
        Ok(())
    }

    fn run(m: TypedModel, input: &Tensor) -> TractResult<Tensor> {
        Ok(
            m.into_runnable()?.run(tvec!(input.clone().into_tvalue()))?[0]
                .clone()
                .into_tensor(),
        )
    }

    fn check_copies(
        ours: &TypedModel,
        input: &Tensor,
        expected: &Tensor,
        what: &str,
    ) -> TractResult<()> {
        // Each compiled copy of the kernel this CPU runs (baseline, AVX2, AVX-512).
        for isa in Isa::available() {
            let mut copy = ours.clone();
            for node in copy.nodes_mut() {
                if let Some(op) = node.op_as_mut::<RowMaxPool>() {
                    op.isa = isa;
                }
            }
            let got = run(copy.into_optimized()?, input)?;
            assert_eq!(expected.shape(), got.shape());
            let (e, g) = (expected.try_as_plain_ram()?, got.try_as_plain_ram()?);
            assert_eq!(e.as_slice::<f32>()?, g.as_slice::<f32>()?, "{what} {isa:?}");
        }
        Ok(())
    }

    #[test]
    fn matches_tract_for_pairs_and_padded_windows() -> TractResult<()> {
        // FaceMesh's and BlazeFace's 2x2 stride 2, on an odd width too (last column unused).
        check(&[1, 3, 8, 10], 2, 2, PaddingSpec::Valid)?;
        check(&[2, 3, 7, 11], 2, 2, PaddingSpec::Valid)?;
        // mini-Xception's 3x3 stride 2 with padding, channel-first without a batch axis.
        check(
            &[4, 9, 12],
            3,
            2,
            PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]),
        )?;
        check(&[1, 2, 6, 5], 3, 1, PaddingSpec::SameUpper)?;
        // mini-Xception's pools as exported: 3x3 stride 2, the padding after; and wide rows.
        check(&[1, 3, 11, 14], 3, 2, PaddingSpec::SameUpper)?;
        check(&[1, 2, 6, 70], 3, 2, PaddingSpec::SameUpper)?;
        check(&[1, 2, 4, 70], 2, 2, PaddingSpec::Valid)
    }
}
