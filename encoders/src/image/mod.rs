//! Images: decoding (`decode`), resizing and normalization (`preprocess`), and frozen image
//! encoders behind one trait, [`ImageEncoder`]:
//! - [`MobileNetV2`] (torchvision, `.pth`) and [`EfficientNetLite`] (`efficientnet_pytorch`
//!   naming, `.pth`): the final convolutional feature map as a grid of tokens. Both are an
//!   [`ImagenetCnn`], which holds what they share; their own files hold only their layout;
//! - [`ClipVisionEncoder`]: CLIP or SigLIP ViT towers from a Hugging Face folder.
//!
//! `.pth` files are read by [`torch_legacy`], which also handles the pre-1.6 pickle format.
//! [`load_image_encoder`] picks the right one for a path.

mod blocks;
pub mod clip;
pub mod decode;
pub mod efficientnet_lite;
pub mod imagenet_cnn;
pub mod mobilenet_v2;
pub mod modality;
pub mod preprocess;
mod tiff_float;
pub mod torch_legacy;

use std::path::Path;

use candle_core::{Device, Tensor};

pub use clip::{ClipVisionEncoder, VisionTowerConfig, VisionTowerKind};
pub use decode::{decode_bytes, load_image, to_rgb_f32};
pub use efficientnet_lite::EfficientNetLite;
pub use imagenet_cnn::ImagenetCnn;
pub use mobilenet_v2::MobileNetV2;
pub use modality::{FrozenImageEncoder, ImageModality, ImageOptions};
pub use preprocess::{
    preprocess, preprocess_one, ImagePreprocessConfig, ResizeFilter, ResizeMode, IMAGENET_MEAN,
    IMAGENET_STD,
};
pub use torch_legacy::StateDict;

use crate::error::{Error, Result};

/// A frozen image encoder: normalized pixels in, a sequence of feature tokens out.
pub trait ImageEncoder: Send + Sync {
    /// Stable across runs and machines: architecture + a hash of the weight file. Feature
    /// caches key on it.
    fn id(&self) -> &str;
    /// `d` of the tokens.
    fn hidden_size(&self) -> usize;
    /// How images must be prepared for [`Self::encode`].
    fn preprocess_config(&self) -> &ImagePreprocessConfig;
    /// `(b, 3, h, w)` normalized pixels -> `(b, n, d)` tokens.
    fn encode(&self, pixels: &Tensor) -> Result<Tensor>;
}

/// Loads an image encoder from `path`: a `.pth` state dict (MobileNetV2 or EfficientNet-Lite,
/// told apart by their tensor names) or a Hugging Face folder (CLIP or SigLIP, by
/// `config.json`'s `model_type`).
pub fn load_image_encoder(path: &Path, device: &Device) -> Result<Box<dyn ImageEncoder>> {
    if path.is_dir() {
        return Ok(Box::new(ClipVisionEncoder::load(path, device)?));
    }
    let sd = StateDict::load(path, device)?;
    let sha = file_sha256(path)?;
    if sd.contains("features.0.0.weight") && sd.contains("classifier.1.weight") {
        Ok(Box::new(MobileNetV2::from_state_dict(&sd, &sha)?))
    } else if sd.contains("_conv_stem.weight") && sd.contains("_blocks.0._depthwise_conv.weight") {
        Ok(Box::new(EfficientNetLite::from_state_dict(&sd, &sha)?))
    } else {
        let names = sd.names();
        let shown: Vec<&str> = names.iter().take(5).copied().collect();
        Err(Error::Model {
            path: path.to_path_buf(),
            what: format!(
                "not a known image encoder (MobileNetV2: features.0.0.weight, EfficientNet-Lite: \
                 _conv_stem.weight); its {} tensors begin {shown:?}",
                names.len()
            ),
        })
    }
}

/// Hex sha256 of a file, as the encoders' ids use it.
pub(crate) fn file_sha256(path: &Path) -> Result<String> {
    anymal_util::sha256::file_hex(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}
