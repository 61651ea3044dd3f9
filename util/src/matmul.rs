//! A small safe front to the gemm crate's f32 product on the calling thread, for kernels
//! that split their work into tasks on the barrier pool themselves ([`crate::par`]), where
//! candle's matmul would hand every product to rayon's threads.

/// A matrix operand: its values and the strides of its rows and columns, so that a transpose
/// is a swap of strides.
#[derive(Debug, Clone, Copy)]
pub struct Operand<'a> {
    pub values: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> Operand<'a> {
    /// A row-major matrix with `cols` columns.
    pub fn rows(values: &'a [f32], cols: usize) -> Self {
        Self {
            values,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(values: &'a [f32], cols: usize) -> Self {
        Self {
            values,
            row_stride: 1,
            col_stride: cols,
        }
    }

    /// Whether an `(rows, cols)` matrix fits in the values.
    fn holds(&self, rows: usize, cols: usize) -> bool {
        rows == 0
            || cols == 0
            || (rows - 1) * self.row_stride + (cols - 1) * self.col_stride < self.values.len()
    }
}

/// `dst (m, n) = scale * lhs (m, k) rhs (k, n)`, or `dst += ...` with `accumulate`; `dst`
/// row-major.
///
/// Panics if an operand or `dst` is smaller than its shape says (a caller's bug).
pub fn matmul(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    lhs: Operand<'_>,
    rhs: Operand<'_>,
    scale: f32,
    accumulate: bool,
) {
    assert!(
        dst.len() >= m * n,
        "matmul: destination smaller than ({m}, {n})"
    );
    assert!(
        lhs.holds(m, k),
        "matmul: left operand smaller than ({m}, {k})"
    );
    assert!(
        rhs.holds(k, n),
        "matmul: right operand smaller than ({k}, {n})"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    // SAFETY: every index the product reads or writes was checked against its slice above;
    // `dst` is borrowed mutably and the operands shared, so they do not overlap.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.values.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.values.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the triple loop, with transposed operands, a scale and accumulation.
    #[test]
    fn matches_the_definition() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect(); // (n, k)
        let mut dst = vec![1f32; m * n];
        matmul(
            &mut dst,
            (m, n, k),
            Operand::rows(&a, k),
            Operand::transposed(&bt, k),
            0.5,
            true,
        );
        for i in 0..m {
            for j in 0..n {
                let want = 1.0 + 0.5 * (0..k).map(|l| a[i * k + l] * bt[j * k + l]).sum::<f32>();
                assert!((dst[i * n + j] - want).abs() < 1e-5, "({i}, {j})");
            }
        }
        matmul(
            &mut dst,
            (m, n, 0),
            Operand::rows(&a, k),
            Operand::rows(&bt, n),
            1.0,
            false,
        );
        assert!(dst.iter().all(|&x| x == 0.0));
    }

    #[test]
    #[should_panic(expected = "right operand")]
    fn short_operand_is_refused() {
        let mut dst = vec![0f32; 4];
        matmul(
            &mut dst,
            (2, 2, 2),
            Operand::rows(&[0.0; 4], 2),
            Operand::rows(&[0.0; 3], 2),
            1.0,
            false,
        );
    }
}
