//! What veriface's own tract ops (`depthwise`, `maxpool`) share: the choice of compiled kernel
//! copy, the taps of a window that land inside the input, and an output tensor filled row by
//! row across tract's thread pool.

use tract_onnx::tract_core::internal::*;

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
