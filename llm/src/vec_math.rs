//! Elementwise math for the CPU kernels that loop over f32 buffers: `exp` and what is built
//! on it, written without branches or calls so that a loop over them vectorizes, and
//! [`wide`], which compiles such a loop for AVX2 + FMA where the CPU has them.
//!
//! Written by hand because `f32::exp` is a libm call per element (one lane), several times
//! slower than these in 8 lanes, and no well-kept crate offers a vectorizable `exp` for plain
//! loops.

/// Runs `f`, whose body is inlined into it, compiled for AVX2 + FMA (8 f32 lanes) where the
/// CPU has them; compiled for the build's baseline (SSE2 on x86-64: 4 lanes) elsewhere.
#[inline(always)]
pub fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features `avx2` is compiled for.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `1 - 2 / (e^2v + 1)`: exact to ~1e-7 absolute (what GELU, `x/2 (1 + tanh)`, needs), and
/// saturates to +-1 through `exp`'s clamp.
#[inline(always)]
pub fn tanh(v: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * v) + 1.0)
}

/// `e^x` to ~2 ulp.
///
/// `e^x = 2^n e^r` with `n = round(x / ln 2)` and `|r| <= ln 2 / 2`; `e^r` by a degree-7
/// polynomial (the minimax coefficients of the Cephes library's `expf`); `2^n` written
/// straight into a float's exponent bits. `x` is clamped to `[-87, 88]` first, so that `2^n`
/// stays a normal float: results saturate at ~1.6e-38 and ~1.7e38 instead of 0 and infinity
/// (callers that need `e^-inf = 0`, a softmax over masked logits, must say so themselves).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Adding and removing 1.5 * 2^23 rounds to the nearest integer with the FPU's default
    // rounding (no libm call, unlike `round`, on baseline x86-64).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    // ln 2 in two parts (Cody-Waite): `n * LN2_HI` is exact, so `r` loses no bits.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_2e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    e_r * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_2_ulp_of_libm() {
        let mut rng = anymal_util::rng::SplitMix64::new(3);
        let xs = (0..100_000).map(|_| rng.uniform(-87.0, 88.0) as f32);
        let edges = [0.0, -0.0, 1e-8, -1e-8, 0.3466, -0.3466, 87.99, -86.99];
        let mut worst = 0f64;
        for x in xs.chain(edges) {
            let (got, want) = (wide(|| exp(x)) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 2.5e-7, "relative error up to {worst}");
        assert_eq!(exp(-1e30), exp(-87.0));
        assert_eq!(exp(1e30), exp(88.0));
        assert!(exp(88.0).is_finite() && exp(-87.0) > 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn sigmoid_and_tanh_match_libm() {
        for i in -4000..=4000 {
            let x = i as f32 / 100.0;
            let s = 1.0 / (1.0 + (-(x as f64)).exp());
            assert!((sigmoid(x) as f64 - s).abs() < 2e-7, "sigmoid({x})");
            assert!(
                (tanh(x) as f64 - (x as f64).tanh()).abs() < 2e-7,
                "tanh({x})"
            );
        }
    }
}
