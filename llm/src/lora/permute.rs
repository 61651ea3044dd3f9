//! The q/k row order of GGUF files of the Llama family.
//!
//! llama.cpp's converter permutes the rows of `q_proj` and `k_proj` for interleaved RoPE. An
//! adapter's `B` lives in the output space, so on such a model it is permuted the same way
//! when attached and back when saved: PEFT files always hold HF's layout, whatever the model
//! was loaded from.

use candle_core::Tensor;

use crate::{Error, Result};

/// HF row order -> llama.cpp's interleaved order: `(heads, 2, hd/2, c) -> (heads, hd/2, 2, c)`.
pub fn hf_to_interleaved_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, c) = w.dims2()?;
    check_heads(out, heads)?;
    Ok(w.reshape((heads, 2, out / heads / 2, c))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, c))?)
}

/// The inverse of [`hf_to_interleaved_rows`].
pub fn interleaved_to_hf_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, c) = w.dims2()?;
    check_heads(out, heads)?;
    Ok(w.reshape((heads, out / heads / 2, 2, c))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, c))?)
}

fn check_heads(out: usize, heads: usize) -> Result<()> {
    if heads == 0 || !out.is_multiple_of(2 * heads) {
        return Err(Error::ShapeMismatch {
            what: format!("a weight split into {heads} heads"),
            got: format!("{out} rows"),
            expected: format!("a multiple of 2 x {heads} (heads of even size)"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn row_permutation_inverts() {
        let w = Tensor::arange(0f32, 48.0, &Device::Cpu)
            .unwrap()
            .reshape((16, 3))
            .unwrap();
        let p = hf_to_interleaved_rows(&w, 2).unwrap();
        // Head 0 (rows 0..8) interleaves its halves: rows 0, 4, 1, 5, ...
        let first: Vec<f32> = p
            .narrow(1, 0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(&first[..4], &[0.0, 12.0, 3.0, 15.0]);
        let back = interleaved_to_hf_rows(&p, 2).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        assert!(hf_to_interleaved_rows(&w, 3).is_err());
    }
}
