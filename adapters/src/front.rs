//! A trainable stage in front of a projector's reduction and projection, trained with it from
//! the same parameter store and saved with it. It is for modalities without a pretrained
//! encoder that ships (IMU signals: IMU2CLIP does not), whose "encoder" is then an identity and
//! whose features need learning before they can be projected.
//!
//! ```text
//! features (b, n, d_enc) --front stage--> (b, n', d_front) --reduce + projection--> (b, k, d_llm)
//! ```
//!
//! Kinds are named in configs as `front = { <kind> = { ... } }`; a kind's parameters live
//! under its name in the store (`imu_encoder.conv.0.weight`).

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Deserializer, Serialize};

use crate::imu_encoder::{ImuEncoder, ImuEncoderConfig};
use crate::Result;

/// Which front stage, with its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FrontStageConfig {
    /// Strided 1-D convolutions over time, then a small transformer ([`ImuEncoder`]).
    ImuEncoder(ImuEncoderConfig),
}

impl FrontStageConfig {
    /// The kind's name: its key in configs and its parameters' prefix.
    pub fn name(&self) -> &'static str {
        match self {
            Self::ImuEncoder(_) => "imu_encoder",
        }
    }

    /// Width of the features it reads.
    pub fn input_width(&self) -> usize {
        match self {
            Self::ImuEncoder(c) => c.channels,
        }
    }

    /// The same stage reading features of width `d` (a recipe leaves that to the encoder).
    pub fn with_input_width(mut self, d: usize) -> Self {
        match &mut self {
            Self::ImuEncoder(c) => c.channels = d,
        }
        self
    }

    /// Width of what it hands the projection.
    pub fn output_width(&self) -> usize {
        match self {
            Self::ImuEncoder(c) => c.d_model,
        }
    }
}

/// A built front stage.
#[derive(Debug, Clone)]
pub enum FrontStage {
    ImuEncoder(ImuEncoder),
}

impl FrontStage {
    /// Build from `cfg`, its parameters under the kind's name in `vb`.
    pub fn new(cfg: &FrontStageConfig, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp(cfg.name());
        Ok(match cfg {
            FrontStageConfig::ImuEncoder(c) => Self::ImuEncoder(ImuEncoder::new(c, vb)?),
        })
    }

    /// `xs (b, n, d_in)` with `lengths[i]` real rows -> `(b, n', d_out)` and the rows of each
    /// item that are real after it.
    pub fn forward(&self, xs: &Tensor, lengths: &[usize]) -> Result<(Tensor, Vec<usize>)> {
        match self {
            Self::ImuEncoder(e) => e.forward(xs, lengths),
        }
    }
}

/// A front stage as configs write it: `{"imu_encoder": {...}}`, or, as projector folders and
/// recipes written before front stages were general, the bare IMU encoder settings under the
/// key `imu_encoder` (which the field's alias maps here). Read through `serde_json::Value` so
/// that either form gets serde's own message naming the field at fault.
pub fn deserialize_front<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<FrontStageConfig>, D::Error> {
    use serde::de::Error;
    let Some(v) = Option::<serde_json::Value>::deserialize(d)? else {
        return Ok(None);
    };
    let tagged = v
        .as_object()
        .is_some_and(|o| o.len() == 1 && o.contains_key("imu_encoder"));
    let parsed = if tagged {
        serde_json::from_value::<FrontStageConfig>(v)
    } else {
        serde_json::from_value::<ImuEncoderConfig>(v).map(FrontStageConfig::ImuEncoder)
    };
    parsed.map(Some).map_err(D::Error::custom)
}
