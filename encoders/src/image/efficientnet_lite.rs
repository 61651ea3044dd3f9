//! EfficientNet-Lite (ImageNet) as a frozen image encoder, from a state dict in the naming of
//! the `efficientnet_pytorch` package (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ...),
//! e.g. `efficientnet-lite0-57934424.pth` (legacy pickle).
//!
//! The Lite variants are the mobile-friendly EfficientNets: ReLU6 instead of swish, no
//! squeeze-excite, stem (32) and head (1280) not scaled. The weights are ported from
//! TensorFlow, so every convolution pads "SAME" (asymmetric on stride 2), BatchNorm uses
//! eps 1e-3, and the input is `(x - 127) / 128` on 0..255 pixels, i.e. mean 127/255 and
//! std 128/255 on `[0, 1]`.
//!
//! - `_conv_stem` + `_bn0`: 3x3 stride-2 conv, ReLU6;
//! - `_blocks.N`: MBConv = `InvertedResidual`: `_expand_conv`/`_bn0` (absent when the
//!   expansion is 1), `_depthwise_conv`/`_bn1` (3x3 or 5x5), `_project_conv`/`_bn2`;
//! - `_conv_head` + `_bn1`: 1x1 conv to 1280, ReLU6; `_fc`: Linear(1280, 1000).
//!
//! Strides are not stored: a new stage starts where the output channel count changes, and the
//! seven stages of every EfficientNet have strides 1, 2, 2, 2, 1, 2, 1 on their first block.
//! Input: shorter side 256, center crop 224, `(x - 127) / 128`.
//!
//! The forward pass, tokens and classifier are [`ImagenetCnn`]'s; this file is the layout.

use super::blocks::{ConvBn, ConvSpec, InvertedResidual, Padding};
use super::imagenet_cnn::{read_classifier, CnnArchitecture, CnnLayers, ImagenetCnn};
use super::preprocess::{ImagePreprocessConfig, ResizeFilter, ResizeMode};
use super::torch_legacy::StateDict;
use crate::error::{Error, Result};

/// BatchNorm epsilon of the TF EfficientNets.
const BN_EPS: f64 = 1e-3;
/// First-block stride of each of the seven stages.
const STAGE_STRIDES: [usize; 7] = [1, 2, 2, 2, 1, 2, 1];

/// A frozen EfficientNet-Lite; see the module docs. Its id is `efficientnet_lite0-<16 hex of
/// sha256>` (the deeper Lite1-4 are named by their block count, `efficientnet_lite_<n>b`).
pub type EfficientNetLite = ImagenetCnn<EfficientNetLiteArch>;

/// The `efficientnet_pytorch` state-dict layout of EfficientNet-Lite (see the module docs).
pub enum EfficientNetLiteArch {}

impl CnnArchitecture for EfficientNetLiteArch {
    fn read_layers(sd: &StateDict) -> Result<CnnLayers> {
        let spec = |stride, relu6, depthwise| ConvSpec {
            stride,
            padding: Padding::TfSame,
            relu6,
            bn_eps: BN_EPS,
            depthwise,
        };
        let bad = |what: String| Error::Model {
            path: sd.path().to_path_buf(),
            what,
        };
        let stem = ConvBn::load(sd, "_conv_stem", "_bn0", spec(2, true, false))?;
        let mut blocks = Vec::new();
        let mut c_in = stem.out_channels();
        let mut stage = 0usize;
        let mut stage_channels: Option<usize> = None;
        while sd.contains(&format!("_blocks.{}._depthwise_conv.weight", blocks.len())) {
            let p = format!("_blocks.{}", blocks.len());
            let project = ConvBn::load(
                sd,
                &format!("{p}._project_conv"),
                &format!("{p}._bn2"),
                spec(1, false, false),
            )?;
            let c_out = project.out_channels();
            // A change of output channels starts the next stage; its first block strides.
            let stride = match stage_channels {
                Some(c) if c == c_out => 1,
                prev => {
                    if prev.is_some() {
                        stage += 1;
                    }
                    stage_channels = Some(c_out);
                    *STAGE_STRIDES.get(stage).ok_or_else(|| {
                        bad(format!("{p}: more than {} stages", STAGE_STRIDES.len()))
                    })?
                }
            };
            let expand = if sd.contains(&format!("{p}._expand_conv.weight")) {
                Some(ConvBn::load(
                    sd,
                    &format!("{p}._expand_conv"),
                    &format!("{p}._bn0"),
                    spec(1, true, false),
                )?)
            } else {
                None
            };
            let depthwise = ConvBn::load(
                sd,
                &format!("{p}._depthwise_conv"),
                &format!("{p}._bn1"),
                spec(stride, true, true),
            )?;
            blocks.push(InvertedResidual {
                expand,
                depthwise,
                project,
                residual: stride == 1 && c_in == c_out,
            });
            c_in = c_out;
        }
        if blocks.is_empty() {
            return Err(bad("no _blocks.N._depthwise_conv.weight tensors".into()));
        }
        if sd.names().iter().any(|n| n.contains("_se_")) {
            return Err(bad(
                "has squeeze-excite weights (_se_reduce/_se_expand): a full EfficientNet, not \
                 the Lite variant"
                    .into(),
            ));
        }
        let head = ConvBn::load(sd, "_conv_head", "_bn1", spec(1, true, false))?;
        let classifier = read_classifier(sd, "_fc", head.out_channels())?;
        // Lite0 has 16 blocks; the deeper Lite1-4 are named by their block count.
        let arch = match blocks.len() {
            16 => "efficientnet_lite0".to_string(),
            n => format!("efficientnet_lite_{n}b"),
        };
        Ok(CnnLayers {
            stem,
            blocks,
            head,
            classifier,
            arch,
            preprocess: ImagePreprocessConfig {
                size: 224,
                resize: ResizeMode::ShortestSideCenterCrop,
                resize_to: Some(256),
                filter: ResizeFilter::Bilinear,
                mean: [127.0 / 255.0; 3],
                std: [128.0 / 255.0; 3],
            },
        })
    }
}
