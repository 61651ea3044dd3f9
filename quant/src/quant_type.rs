use candle_core::quantized::GgmlDType;

/// A storage type a frozen weight can be held in: one of candle's GGUF types or NF4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantType {
    Ggml(GgmlDType),
    /// QLoRA NormalFloat-4, block size 64; `double_quant` also quantizes the block scales.
    Nf4 {
        double_quant: bool,
    },
}

impl QuantType {
    /// Names accepted by [`QuantType::parse`] (and `--requant` on the command line).
    pub const KNOWN: &'static [&'static str] = &[
        "f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2k", "q3k", "q4k", "q5k",
        "q6k", "nf4", "nf4-dq",
    ];

    pub fn parse(s: &str) -> crate::Result<Self> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        let t = match norm.as_str() {
            "f32" => GgmlDType::F32,
            "f16" => GgmlDType::F16,
            "bf16" => GgmlDType::BF16,
            "q4_0" => GgmlDType::Q4_0,
            "q4_1" => GgmlDType::Q4_1,
            "q5_0" => GgmlDType::Q5_0,
            "q5_1" => GgmlDType::Q5_1,
            "q8_0" => GgmlDType::Q8_0,
            "q2k" | "q2_k" => GgmlDType::Q2K,
            "q3k" | "q3_k" => GgmlDType::Q3K,
            "q4k" | "q4_k" => GgmlDType::Q4K,
            "q5k" | "q5_k" => GgmlDType::Q5K,
            "q6k" | "q6_k" => GgmlDType::Q6K,
            "nf4" => {
                return Ok(Self::Nf4 {
                    double_quant: false,
                })
            }
            "nf4_dq" => return Ok(Self::Nf4 { double_quant: true }),
            _ => return Err(crate::Error::UnknownQuantType(s.to_string())),
        };
        Ok(Self::Ggml(t))
    }

    /// Number of weights that share one scale: a row length must be a multiple of it.
    pub fn block_size(&self) -> usize {
        match self {
            Self::Ggml(t) => t.block_size(),
            Self::Nf4 { .. } => crate::nf4::NF4_BLOCK,
        }
    }

    /// The same family with a smaller block, for rows the requested type cannot tile
    /// (SmolLM2's 576-wide rows are not a multiple of the 256 of the K-quants).
    pub fn fallback_for_row(&self, cols: usize) -> Self {
        if cols.is_multiple_of(self.block_size()) {
            return *self;
        }
        let next = match self {
            Self::Ggml(GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q4K) => {
                Self::Ggml(GgmlDType::Q4_0)
            }
            Self::Ggml(GgmlDType::Q5K) => Self::Ggml(GgmlDType::Q5_0),
            Self::Ggml(GgmlDType::Q6K | GgmlDType::Q8K) => Self::Ggml(GgmlDType::Q8_0),
            _ => Self::Ggml(GgmlDType::F16),
        };
        next.fallback_for_row(cols)
    }

    pub fn name(&self) -> String {
        match self {
            Self::Ggml(t) => format!("{t:?}"),
            Self::Nf4 {
                double_quant: false,
            } => "NF4".into(),
            Self::Nf4 { double_quant: true } => "NF4-DQ".into(),
        }
    }

    /// Bits per weight, scales included.
    pub fn bits_per_weight(&self) -> f64 {
        match self {
            Self::Ggml(t) => t.type_size() as f64 * 8.0 / t.block_size() as f64,
            // 4-bit codes + one f32 absmax per 64, or one u8 per 64 + an f32 per 256 blocks.
            Self::Nf4 {
                double_quant: false,
            } => 4.0 + 32.0 / 64.0,
            Self::Nf4 { double_quant: true } => 4.0 + 8.0 / 64.0 + 32.0 / (64.0 * 256.0),
        }
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_known_and_unknown() {
        assert_eq!(
            QuantType::parse("Q4K").unwrap(),
            QuantType::Ggml(GgmlDType::Q4K)
        );
        assert_eq!(
            QuantType::parse("q4_k").unwrap(),
            QuantType::Ggml(GgmlDType::Q4K)
        );
        assert_eq!(
            QuantType::parse("nf4-dq").unwrap(),
            QuantType::Nf4 { double_quant: true }
        );
        let err = QuantType::parse("q9").unwrap_err().to_string();
        assert!(err.contains("'q9'") && err.contains("q4k"), "{err}");
    }

    #[test]
    fn fallback_keeps_bits_when_rows_do_not_tile() {
        let q4k = QuantType::Ggml(GgmlDType::Q4K);
        assert_eq!(q4k.fallback_for_row(2048), q4k);
        assert_eq!(q4k.fallback_for_row(576), QuantType::Ggml(GgmlDType::Q4_0));
        assert_eq!(q4k.fallback_for_row(17), QuantType::Ggml(GgmlDType::F16));
    }
}
