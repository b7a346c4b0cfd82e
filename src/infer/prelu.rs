//! PReLU for tract in two or three vectorised element-wise passes. tract-onnx expands it into a
//! comparison that writes a boolean tensor, a select and a multiply; the comparison alone was a
//! third of the eye model's time (`bench --model face_eyes --profile`). With the slopes known at
//! load (they are weights), PReLU(x) = max(x, s·x) where every s ≤ 1, min(x, s·x) where every
//! s ≥ 1, and x + (s - 1)·min(x, 0) for a mix. Measured on x86 (one thread, p50): eye model
//! 4.9 → 2.5 ms, FaceMesh 5.1 → 3.8 ms; on cortex-a72/a76 (qemu) 57 → 34 M and 59 → 45 M
//! instructions. The golden tests hold the outputs to onnxruntime's.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::math;
use tract_onnx::tract_hir::internal::*;

/// The op builder that replaces tract-onnx's "PRelu".
pub(super) fn builder(
    _: &ParsingContext,
    _: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(Prelu), vec![]))
}

#[derive(Clone, Debug)]
struct Prelu;

impl Expansion for Prelu {
    fn name(&self) -> StaticName {
        "Prelu".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 2)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        name: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let x = inputs[0];
        let x_fact = model.outlet_fact(x)?.clone();
        let rank = x_fact.rank();
        let mut slope = inputs[1];
        while model.outlet_fact(slope)?.rank() < rank {
            let r = model.outlet_fact(slope)?.rank();
            slope = model.wire_node(format!("{name}.add-axis-{r}"), AxisOp::Add(0), &[slope])?[0];
        }
        let zero = tensor0(0f32)
            .cast_to_dt(x_fact.datum_type)?
            .into_owned()
            .broadcast_into_rank(rank)?;
        let known: Option<Tensor> = model
            .outlet_fact(slope)?
            .konst
            .as_ref()
            .filter(|k| {
                k.datum_type() == f32::datum_type() && x_fact.datum_type == f32::datum_type()
            })
            .map(|k| k.clone().into_tensor());
        let bin = |model: &mut TypedModel, what: &str, op: TypedBinOp, a: OutletId, b: OutletId| {
            model.wire_node(format!("{name}.{what}"), op, &[a, b])
        };
        let Some(known) = known else {
            // Slopes computed at run time: max(x, 0) + s·min(x, 0).
            let zero = model.add_const(format!("{name}.zero"), zero)?;
            let pos = bin(model, "pos", math::max(), x, zero)?[0];
            let neg = bin(model, "neg", math::min(), x, zero)?[0];
            let scaled = bin(model, "scaled", math::mul(), neg, slope)?[0];
            return bin(model, "sum", math::add(), pos, scaled);
        };
        let values = known.to_plain_array_view::<f32>()?;
        let all = |f: fn(f32) -> bool| values.iter().all(|&v| f(v));
        let pick = match (all(|v| v <= 1.0), all(|v| v >= 1.0)) {
            (true, _) => Some(math::max()),
            (_, true) => Some(math::min()),
            _ => None,
        };
        if let Some(pick) = pick {
            let sx = bin(model, "mul", math::mul(), x, slope)?[0];
            return bin(model, "pick", pick, x, sx);
        }
        // Slopes on both sides of 1: x + (s - 1)·min(x, 0).
        let mut less_one = known.clone();
        less_one
            .to_plain_array_view_mut::<f32>()?
            .iter_mut()
            .for_each(|v| *v -= 1.0);
        let less_one = model.add_const(format!("{name}.slope-1"), less_one)?;
        let zero = model.add_const(format!("{name}.zero"), zero)?;
        let neg = bin(model, "neg", math::min(), x, zero)?[0];
        let scaled = bin(model, "scaled", math::mul(), neg, less_one)?[0];
        bin(model, "sum", math::add(), x, scaled)
    }
}

/// PReLU of `y` (4-D, channels per `format`) as the ONNX loader wires it, for the fused ops'
/// tests. `known`: the slopes are constants when PReLU is wired; else they reach it through an
/// `Add` of zero, which only constant folding evaluates (as through an ONNX `Unsqueeze`).
#[cfg(test)]
pub(super) fn wire_for_test(
    model: &mut TypedModel,
    y: OutletId,
    format: tract_onnx::tract_core::ops::nn::DataFormat,
    slopes: &[f32],
    known: bool,
) -> TractResult<OutletId> {
    let c = slopes.len();
    // Of the input's rank: a lower rank reaches the expansion through an added axis, which
    // hides the values as the unknown case does.
    let shape: &[usize] = match format.c_is_last() {
        false => &[1, c, 1, 1],
        true => &[1, 1, 1, c],
    };
    let mut s = model.add_const("slopes", tensor1(slopes).into_shape(shape)?)?;
    if !known {
        let zero = model.add_const("zero", tensor0(0f32).broadcast_into_rank(4)?)?;
        s = model.wire_node("slopes.late", math::add(), &[s, zero])?[0];
        ensure!(model.outlet_fact(s)?.konst.is_none());
    }
    Ok(Prelu.wire("prelu", model, &[y, s])?[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PReLU on [-2, 3] per channel with these slopes, as the expansion wires it.
    fn prelu(slopes: &[f32], slopes_known: bool) -> TractResult<Vec<f32>> {
        let c = slopes.len();
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, c, 2]))?;
        let s_tensor = tensor1(slopes).into_shape(&[c, 1])?;
        let s = match slopes_known {
            true => model.add_const("s", s_tensor.clone())?,
            false => model.add_source("s", f32::fact([c, 1]))?,
        };
        let out = Prelu.wire("p", &mut model, &[x, s])?;
        model.select_output_outlets(&out)?;
        let plan = model.into_optimized()?.into_runnable()?;
        let input: Vec<f32> = (0..c).flat_map(|_| [-2.0, 3.0]).collect();
        let mut inputs = tvec![tensor1(&input).into_shape(&[1, c, 2])?.into_tvalue()];
        if !slopes_known {
            inputs.push(s_tensor.into_tvalue());
        }
        let out = plan.run(inputs)?;
        Ok(out[0]
            .to_plain_array_view::<f32>()?
            .iter()
            .copied()
            .collect())
    }

    #[test]
    fn every_wiring_computes_prelu() {
        for (slopes, known) in [
            (&[0.25f32, 0.5, 1.0][..], true),
            (&[1.0, 1.5, 3.0][..], true),
            (&[0.25, 2.0, -0.5][..], true),
            (&[0.25, 2.0, -0.5][..], false),
        ] {
            let want: Vec<f32> = slopes.iter().flat_map(|&s| [-2.0 * s, 3.0]).collect();
            assert_eq!(
                prelu(slopes, known).unwrap(),
                want,
                "{slopes:?} known {known}"
            );
        }
    }
}
