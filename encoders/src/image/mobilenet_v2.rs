//! torchvision's MobileNetV2 (ImageNet) as a frozen image encoder, built from its `.pth` state
//! dict (the legacy pickle `mobilenet_v2-b0353104.pth` or a newer zip-format one).
//!
//! Layout of the state dict (torchvision `models/mobilenetv2.py`):
//! - `features.0`: 3x3 stride-2 conv (`.0`) + BN (`.1`) + ReLU6, 3 -> 32 channels;
//! - `features.1..=17`: inverted residuals; with expansion (t = 6) `conv.0` is the 1x1 expand
//!   conv+BN, `conv.1` the 3x3 depthwise conv+BN, `conv.2` the 1x1 projection and `conv.3` its
//!   BN; without (t = 1, `features.1`) `conv.0` is the depthwise, `conv.1`/`conv.2` the projection;
//! - `features.18`: 1x1 conv + BN + ReLU6 to 1280 channels;
//! - `classifier.1`: Linear(1280, 1000) after global average pooling (`classifier.0` is dropout).
//!
//! BatchNorm runs in eval mode with its running statistics (eps 1e-5) and is folded into the
//! convolutions at load time. Channel counts are read from the weights, so width multipliers
//! other than 1.0 load too. Input: torchvision's eval transform (shorter side 256, center crop
//! 224, ImageNet mean/std).
//!
//! The forward pass, tokens and classifier are [`ImagenetCnn`]'s; this file is the layout.

use super::blocks::{ConvBn, ConvSpec, InvertedResidual, Padding};
use super::imagenet_cnn::{read_classifier, CnnArchitecture, CnnLayers, ImagenetCnn};
use super::preprocess::ImagePreprocessConfig;
use super::torch_legacy::StateDict;
use crate::error::{Error, Result};

/// BatchNorm epsilon of torchvision's MobileNetV2.
const BN_EPS: f64 = 1e-5;
/// Stride of `features.1..=17` (torchvision's settings t,c,n,s: the first block of the 24, 32,
/// 64 and 160-channel stages halves the resolution).
const BLOCK_STRIDES: [usize; 17] = [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1];

/// A frozen MobileNetV2; see the module docs. Its id is `mobilenet_v2-<16 hex of sha256>`.
pub type MobileNetV2 = ImagenetCnn<MobileNetV2Arch>;

/// torchvision's MobileNetV2 state-dict layout (see the module docs).
pub enum MobileNetV2Arch {}

impl CnnArchitecture for MobileNetV2Arch {
    fn read_layers(sd: &StateDict) -> Result<CnnLayers> {
        let spec = |stride, relu6, depthwise| ConvSpec {
            stride,
            padding: Padding::Symmetric(0),
            relu6,
            bn_eps: BN_EPS,
            depthwise,
        };
        // 3x3 convs pad 1 ((k - 1) / 2), 1x1 convs pad 0.
        let k3 = |s: ConvSpec| ConvSpec {
            padding: Padding::Symmetric(1),
            ..s
        };
        let stem = ConvBn::load(sd, "features.0.0", "features.0.1", k3(spec(2, true, false)))?;
        let mut blocks = Vec::with_capacity(BLOCK_STRIDES.len());
        let mut c_in = stem.out_channels();
        for (i, &stride) in BLOCK_STRIDES.iter().enumerate() {
            let p = format!("features.{}.conv", i + 1);
            let block = if sd.contains(&format!("{p}.3.weight")) {
                InvertedResidual {
                    expand: Some(ConvBn::load(
                        sd,
                        &format!("{p}.0.0"),
                        &format!("{p}.0.1"),
                        spec(1, true, false),
                    )?),
                    depthwise: ConvBn::load(
                        sd,
                        &format!("{p}.1.0"),
                        &format!("{p}.1.1"),
                        k3(spec(stride, true, true)),
                    )?,
                    project: ConvBn::load(
                        sd,
                        &format!("{p}.2"),
                        &format!("{p}.3"),
                        spec(1, false, false),
                    )?,
                    residual: false,
                }
            } else {
                InvertedResidual {
                    expand: None,
                    depthwise: ConvBn::load(
                        sd,
                        &format!("{p}.0.0"),
                        &format!("{p}.0.1"),
                        k3(spec(stride, true, true)),
                    )?,
                    project: ConvBn::load(
                        sd,
                        &format!("{p}.1"),
                        &format!("{p}.2"),
                        spec(1, false, false),
                    )?,
                    residual: false,
                }
            };
            let c_out = block.project.out_channels();
            blocks.push(InvertedResidual {
                residual: stride == 1 && c_in == c_out,
                ..block
            });
            c_in = c_out;
        }
        let n = BLOCK_STRIDES.len() + 1;
        if sd.contains(&format!("features.{}.0.weight", n + 1)) {
            return Err(Error::Model {
                path: sd.path().to_path_buf(),
                what: format!(
                    "more than {} feature blocks; not torchvision's MobileNetV2",
                    n + 1
                ),
            });
        }
        let head = ConvBn::load(
            sd,
            &format!("features.{n}.0"),
            &format!("features.{n}.1"),
            spec(1, true, false),
        )?;
        let classifier = read_classifier(sd, "classifier.1", head.out_channels())?;
        Ok(CnnLayers {
            stem,
            blocks,
            head,
            classifier,
            arch: "mobilenet_v2".into(),
            preprocess: ImagePreprocessConfig::imagenet(),
        })
    }
}
