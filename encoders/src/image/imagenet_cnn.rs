//! What the ImageNet CNNs (MobileNetV2, EfficientNet-Lite) have in common once their layers are
//! read: the forward pass (stem, inverted residual blocks, head), the final feature map as a
//! grid of tokens, the ImageNet classifier, the id and the [`ImageEncoder`] surface.
//!
//! They differ only in how a state dict names and arranges those layers (and in the
//! preprocessing their weights expect), which is all an architecture's own file says, as a
//! [`CnnArchitecture`]: [`MobileNetV2`](super::MobileNetV2) is `ImagenetCnn<MobileNetV2Arch>`,
//! [`EfficientNetLite`](super::EfficientNetLite) is `ImagenetCnn<EfficientNetLiteArch>`.

use std::marker::PhantomData;
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::{Linear, Module};

use super::blocks::{ConvBn, InvertedResidual};
use super::preprocess::ImagePreprocessConfig;
use super::torch_legacy::StateDict;
use super::{file_sha256, ImageEncoder};
use crate::error::{Error, Result};

/// How one CNN architecture's state dict maps onto [`CnnLayers`].
pub trait CnnArchitecture {
    /// Reads the layers from a state dict in this architecture's naming. The error names the
    /// file and the tensor that is missing or of the wrong shape.
    fn read_layers(sd: &StateDict) -> Result<CnnLayers>;
}

/// The layers of an ImageNet CNN as an architecture reads them, with the name and
/// preprocessing that go with its weights.
pub struct CnnLayers {
    pub(crate) stem: ConvBn,
    pub(crate) blocks: Vec<InvertedResidual>,
    /// Its output channels are the width of the tokens.
    pub(crate) head: ConvBn,
    /// On the global average of the head's feature map.
    pub(crate) classifier: Linear,
    /// The first part of the id, e.g. `mobilenet_v2`.
    pub(crate) arch: String,
    pub(crate) preprocess: ImagePreprocessConfig,
}

/// A frozen ImageNet CNN of architecture `A`; see the module docs.
pub struct ImagenetCnn<A> {
    layers: CnnLayers,
    hidden_size: usize,
    id: String,
    arch: PhantomData<fn() -> A>,
}

impl<A: CnnArchitecture> ImagenetCnn<A> {
    /// Loads the state dict at `path` onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let sd = StateDict::load(path, device)?;
        Self::from_state_dict(&sd, &file_sha256(path)?)
    }

    /// Builds the network from an already read state dict; `sha256` is the weight file's hash
    /// (hex), of which the first 16 digits go into [`Self::id`].
    pub fn from_state_dict(sd: &StateDict, sha256: &str) -> Result<Self> {
        let layers = A::read_layers(sd)?;
        Ok(Self {
            hidden_size: layers.head.out_channels(),
            id: format!("{}-{}", layers.arch, &sha256[..16.min(sha256.len())]),
            layers,
            arch: PhantomData,
        })
    }
}

impl<A> ImagenetCnn<A> {
    /// Stable id: architecture and the first 16 hex digits of the weight file's sha256.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Channels of the final feature map (1280 for both architectures at width 1.0).
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// The eval transform the weights were trained with (see each architecture's docs).
    pub fn preprocess_config(&self) -> &ImagePreprocessConfig {
        &self.layers.preprocess
    }

    /// `(b, 3, h, w)` normalized pixels -> the final feature map `(b, hidden_size, h', w')`,
    /// `h' = ceil(h / 32)` (7x7 for 224).
    pub fn features(&self, pixels: &Tensor) -> Result<Tensor> {
        check_pixels(pixels)?;
        let mut xs = self.layers.stem.forward(pixels)?;
        for block in &self.layers.blocks {
            xs = block.forward(&xs)?;
        }
        self.layers.head.forward(&xs)
    }

    /// `(b, 3, h, w)` -> `(b, h' * w', hidden_size)`: the final feature map as a row-major
    /// grid of tokens (49 for a 224 input).
    pub fn encode(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self
            .features(pixels)?
            .flatten_from(2)?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// `(b, 3, h, w)` -> `(b, classes)` ImageNet logits (global average pool + classifier).
    pub fn classify(&self, pixels: &Tensor) -> Result<Tensor> {
        let pooled = self.features(pixels)?.mean((2, 3))?;
        Ok(self.layers.classifier.forward(&pooled)?)
    }
}

impl<A> ImageEncoder for ImagenetCnn<A> {
    fn id(&self) -> &str {
        ImagenetCnn::id(self)
    }
    fn hidden_size(&self) -> usize {
        ImagenetCnn::hidden_size(self)
    }
    fn preprocess_config(&self) -> &ImagePreprocessConfig {
        ImagenetCnn::preprocess_config(self)
    }
    fn encode(&self, pixels: &Tensor) -> Result<Tensor> {
        ImagenetCnn::encode(self, pixels)
    }
}

/// The classifier `{name}.weight` `(classes, hidden_size)` and `{name}.bias` `(classes,)`.
pub(crate) fn read_classifier(sd: &StateDict, name: &str, hidden_size: usize) -> Result<Linear> {
    let w = sd.get(&format!("{name}.weight"), None)?;
    if w.dims().len() != 2 || w.dims()[1] != hidden_size {
        return Err(Error::Model {
            path: sd.path().to_path_buf(),
            what: format!(
                "{name}.weight has shape {:?}, expected (classes, {hidden_size})",
                w.dims()
            ),
        });
    }
    let b = sd.get(&format!("{name}.bias"), Some(&[w.dims()[0]]))?;
    Ok(Linear::new(w, Some(b)))
}

/// Checks a CNN's input is `(b, 3, h, w)` with something in it.
fn check_pixels(pixels: &Tensor) -> Result<()> {
    match pixels.dims() {
        &[b, 3, h, w] if b > 0 && h > 0 && w > 0 => Ok(()),
        d => Err(Error::InvalidArgument(format!(
            "pixels of shape {d:?}, expected (b, 3, h, w)"
        ))),
    }
}
