//! IMU as a [`Modality`]: a recording (CSV or single-recording `.ts`) is resampled, windowed
//! and normalized per [`ImuPreprocessConfig`] (the recipe's `[encoder.options]`). The frozen
//! "encoder" is the identity (`raw`): no pretrained IMU encoder ships here, so the learned
//! one sits in the projector (`[projector.imu_encoder]`) and trains with it.

use std::path::Path;

use candle_core::Tensor;

use super::{load_imu_with_length, ImuPreprocessConfig};
use crate::modality::{Batch, Encoder, EncoderContext, Modality};
use crate::{Error, Result};

/// The built-in IMU modality (`<imu>`, manifest key `imu`).
#[derive(Debug, Clone, Default)]
pub struct ImuModality {
    cfg: ImuPreprocessConfig,
}

/// A preprocessed window `(window, channels)` row-major and how many of its rows are real.
#[derive(Debug, Clone)]
pub struct ImuWindow {
    pub data: Vec<f32>,
    pub valid: usize,
}

impl Modality for ImuModality {
    type Item = ImuWindow;

    fn name(&self) -> &str {
        "imu"
    }

    fn default_extension(&self) -> Option<&str> {
        Some("csv")
    }

    fn configure(&self, ctx: &EncoderContext) -> Result<Self> {
        Ok(Self {
            cfg: ctx.parse_options("imu")?,
        })
    }

    fn load(&self, path: &Path) -> Result<ImuWindow> {
        let (data, valid) = load_imu_with_length(path, &self.cfg)?;
        Ok(ImuWindow { data, valid })
    }

    fn build_encoder(
        &self,
        reference: &str,
        _ctx: &EncoderContext,
    ) -> Result<Box<dyn Encoder<ImuWindow>>> {
        if reference != "raw" {
            return Err(Error::UnknownEncoder {
                modality: self.name().to_string(),
                reference: reference.to_string(),
                what: "the only frozen IMU encoder is 'raw' (the preprocessed signal); put a \
                       trainable one in the projector with [projector.imu_encoder]"
                    .into(),
            });
        }
        // The features depend on every preprocessing setting, so all of them go into the id.
        let json = serde_json::to_string(&self.cfg)
            .map_err(|e| Error::Internal(format!("IMU options: {e}")))?;
        let hex = &anymal_util::sha256::hex(json.as_bytes())[..16];
        Ok(Box::new(RawImu {
            id: format!("imu-raw-{}x{}-{hex}", self.cfg.window, self.cfg.channels),
            cfg: self.cfg.clone(),
        }))
    }
}

/// The identity over preprocessed windows.
struct RawImu {
    id: String,
    cfg: ImuPreprocessConfig,
}

impl Encoder<ImuWindow> for RawImu {
    fn id(&self) -> &str {
        &self.id
    }

    fn hidden_size(&self) -> usize {
        self.cfg.channels
    }

    /// `(b, window, channels)`; lengths are the real rows.
    fn preprocess(&self, items: &[ImuWindow]) -> Result<Batch> {
        let (w, c) = (self.cfg.window, self.cfg.channels);
        let mut data = Vec::with_capacity(items.len() * w * c);
        for it in items {
            if it.data.len() != w * c {
                return Err(Error::ShapeMismatch {
                    what: "values of an IMU window".into(),
                    expected: format!("{w} x {c}"),
                    got: it.data.len().to_string(),
                });
            }
            data.extend_from_slice(&it.data);
        }
        Ok(Batch {
            input: Tensor::from_vec(data, (items.len(), w, c), &candle_core::Device::Cpu)?,
            lengths: items.iter().map(|it| it.valid.clamp(1, w)).collect(),
        })
    }

    fn encode(&self, batch: &Batch) -> Result<Vec<Tensor>> {
        batch.unpadded_items()
    }
}
