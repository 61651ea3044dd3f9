//! A trainable IMU encoder: a strided 1-D convolution stack over time, sinusoidal positions,
//! then a small pre-norm transformer. Unlike the audio and image encoders it is not frozen:
//! there is no pretrained IMU model to reuse, so it trains with the projector, from the same
//! [`crate::ParamStore`], and is saved and loaded with it.
//!
//! ```text
//! xs (b, t, c) --mask--> conv(k, s) + GELU --mask--> ... (b, t', d) + positions
//!   --> [x + attn(LN(x)), x + ff(LN(x))] x layers --> LN --mask--> (b, t', d)
//! ```
//!
//! Padding never leaks into real positions: padded input rows are zeroed before the first
//! convolution and after each (so a convolution sees exactly the zeros its own padding would
//! give a lone item), padded keys get no attention, and padded output rows are zero.
//! Every op has a backward pass: the convolutions are a gather and a matmul (candle 0.11's
//! `conv1d` gets the kernel gradient wrong for batches of more than one item, see
//! [`TimeConv`]), attention uses `ops::softmax`, normalisation the crate's own LayerNorm.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::layer_norm::LayerNorm;
use crate::{Error, Result};

/// One convolution of the stem. Padding is `kernel / 2` on both sides, so an odd kernel with
/// stride `s` maps `t` rows to `ceil(t / s)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvLayer {
    pub kernel: usize,
    pub stride: usize,
}

impl ConvLayer {
    /// Rows out for `len` rows in.
    pub fn out_len(&self, len: usize) -> usize {
        (len + 2 * (self.kernel / 2)).saturating_sub(self.kernel) / self.stride + 1
    }
}

/// The convolutions actually built: an empty stem is one kernel-1 projection to `d_model`.
fn stem(cfg: &ImuEncoderConfig) -> Vec<ConvLayer> {
    if cfg.conv_layers.is_empty() {
        vec![ConvLayer {
            kernel: 1,
            stride: 1,
        }]
    } else {
        cfg.conv_layers.clone()
    }
}

/// Shape of the encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImuEncoderConfig {
    /// Input channels (6 for accelerometer + gyroscope).
    #[serde(default = "default_channels")]
    pub channels: usize,
    #[serde(default = "default_d_model")]
    pub d_model: usize,
    /// The stem; each layer maps to `d_model` channels. Empty: a kernel-1 projection.
    #[serde(default = "default_conv_layers")]
    pub conv_layers: Vec<ConvLayer>,
    #[serde(default = "default_heads")]
    pub heads: usize,
    /// Transformer layers.
    #[serde(default = "default_layers")]
    pub layers: usize,
    #[serde(default = "default_ff_mult")]
    pub ff_mult: usize,
    /// Dropout after attention and feed-forward, in [`ImuEncoder::forward_t`] with `train`.
    #[serde(default)]
    pub dropout: f32,
}

fn default_channels() -> usize {
    6
}
fn default_d_model() -> usize {
    128
}
fn default_conv_layers() -> Vec<ConvLayer> {
    vec![
        ConvLayer {
            kernel: 5,
            stride: 2,
        };
        2
    ]
}
fn default_heads() -> usize {
    4
}
fn default_layers() -> usize {
    2
}
fn default_ff_mult() -> usize {
    4
}

impl Default for ImuEncoderConfig {
    fn default() -> Self {
        Self {
            channels: default_channels(),
            d_model: default_d_model(),
            conv_layers: default_conv_layers(),
            heads: default_heads(),
            layers: default_layers(),
            ff_mult: default_ff_mult(),
            dropout: 0.0,
        }
    }
}

impl ImuEncoderConfig {
    fn check(&self) -> Result<()> {
        let bad = |field: &str, m: String| {
            Err(Error::config(
                format!("imu_encoder.{field}"),
                format!("imu encoder: {m}"),
            ))
        };
        if self.channels == 0 || self.d_model == 0 || self.heads == 0 || self.ff_mult == 0 {
            return bad(
                "channels",
                "channels, d_model, heads and ff_mult must be at least 1".into(),
            );
        }
        if !self.d_model.is_multiple_of(self.heads) {
            return bad(
                "heads",
                format!(
                    "d_model {} is not divisible by heads {}",
                    self.d_model, self.heads
                ),
            );
        }
        if self
            .conv_layers
            .iter()
            .any(|c| c.kernel == 0 || c.stride == 0)
        {
            return bad(
                "conv_layers",
                "conv kernel and stride must be at least 1".into(),
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(
                "dropout",
                format!("dropout {} is not in [0, 1)", self.dropout),
            );
        }
        Ok(())
    }

    /// Rows out of the stem for `len` rows in.
    pub fn out_len(&self, len: usize) -> usize {
        stem(self).iter().fold(len, |l, c| c.out_len(l))
    }
}

/// A 1-D convolution over time on `(b, t, c)` rows, computed as a gather of the `k` taps of
/// every output row (`index_select`) and one matmul, so its backward is plain candle autograd.
///
/// Why not `candle_nn::Conv1d`: candle 0.11's CPU `conv1d` computes wrong values when the
/// kernel tensor is a non-contiguous view, and its backward passes the output gradient
/// transposed (a non-contiguous view) as the kernel of the convolution that yields the kernel
/// gradient. With one item in the batch that view happens to be contiguous and the gradient is
/// right (1e-11 against central differences); with two it is off by O(100). The weight keeps
/// Conv1d's `(out, in, k)` layout and names.
#[derive(Debug, Clone)]
pub struct TimeConv {
    weight: Tensor,
    bias: Tensor,
    spec: ConvLayer,
}

impl TimeConv {
    /// Weight Kaiming-normal, bias uniform in `±1/sqrt(in * k)` (PyTorch's default).
    pub fn new(in_c: usize, out_c: usize, spec: ConvLayer, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(
            (out_c, in_c, spec.kernel),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let bound = 1.0 / ((in_c * spec.kernel) as f64).sqrt();
        let bias = vb.get_with_hints(
            out_c,
            "bias",
            candle_nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        Ok(Self { weight, bias, spec })
    }

    /// `(b, t, in) -> (b, spec.out_len(t), out)`, zero padding of `kernel / 2` on both sides.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, t, c) = xs.dims3()?;
        let (k, s, p) = (self.spec.kernel, self.spec.stride, self.spec.kernel / 2);
        let t_out = self.spec.out_len(t);
        let xs = if p > 0 {
            xs.pad_with_zeros(1, p, p)?
        } else {
            xs.clone()
        };
        let idx: Vec<u32> = (0..t_out)
            .flat_map(|j| (0..k).map(move |r| (j * s + r) as u32))
            .collect();
        let idx = Tensor::from_vec(idx, t_out * k, xs.device())?;
        // (b, t_out * k, c) -> (b, t_out, k * c), taps major, channels minor.
        let cols = xs.index_select(&idx, 1)?.reshape((b, t_out, k * c))?;
        let out_c = self.weight.dim(0)?;
        let w = self
            .weight
            .permute((0, 2, 1))?
            .contiguous()?
            .reshape((out_c, k * c))?;
        Ok(cols.broadcast_matmul(&w.t()?)?.broadcast_add(&self.bias)?)
    }
}

#[derive(Debug, Clone)]
struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(d: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            to_q: candle_nn::linear(d, d, vb.pp("to_q"))?,
            to_k: candle_nn::linear(d, d, vb.pp("to_k"))?,
            to_v: candle_nn::linear(d, d, vb.pp("to_v"))?,
            to_out: candle_nn::linear(d, d, vb.pp("to_out"))?,
            heads,
            head_dim: d / heads,
        })
    }

    /// `xs (b, t, d)`, `key_bias (b, 1, 1, t)` additive (0 or a large negative).
    fn forward(&self, xs: &Tensor, key_bias: &Tensor) -> Result<Tensor> {
        let (b, t, d) = xs.dims3()?;
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.to_q.forward(xs)?)?;
        let k = split(self.to_k.forward(xs)?)?;
        let v = split(self.to_v.forward(xs)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let att = (q.matmul(&k.t()?)? * scale)?.broadcast_add(key_bias)?;
        // `softmax_last_dim` has no backward in candle 0.11; this one does.
        let att = candle_nn::ops::softmax(&att, D::Minus1)?;
        let out = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        Ok(self.to_out.forward(&out)?)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Layer {
    fn new(cfg: &ImuEncoderConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        Ok(Self {
            norm1: LayerNorm::new(d, 1e-5, vb.pp("norm1"))?,
            attn: Attention::new(d, cfg.heads, vb.pp("attn"))?,
            norm2: LayerNorm::new(d, 1e-5, vb.pp("norm2"))?,
            fc1: candle_nn::linear(d, d * cfg.ff_mult, vb.pp("ff.fc1"))?,
            fc2: candle_nn::linear(d * cfg.ff_mult, d, vb.pp("ff.fc2"))?,
        })
    }

    fn forward(&self, xs: &Tensor, key_bias: &Tensor, drop: f32) -> Result<Tensor> {
        let dropout = |y: Tensor| -> Result<Tensor> {
            Ok(if drop > 0.0 {
                candle_nn::ops::dropout(&y, drop)?
            } else {
                y
            })
        };
        let h = dropout(self.attn.forward(&self.norm1.forward(xs)?, key_bias)?)?;
        let xs = (xs + h)?;
        let h = self.fc1.forward(&self.norm2.forward(&xs)?)?.gelu_erf()?;
        let h = dropout(self.fc2.forward(&h)?)?;
        Ok((xs + h)?)
    }
}

/// `(b, t, channels)` sensor rows -> `(b, t', d_model)` features, `t' = cfg.out_len(t)`.
#[derive(Debug, Clone)]
pub struct ImuEncoder {
    cfg: ImuEncoderConfig,
    convs: Vec<TimeConv>,
    layers: Vec<Layer>,
    norm_out: LayerNorm,
}

impl ImuEncoder {
    /// Parameters under `conv.{i}`, `layers.{i}.{norm1,attn.to_{q,k,v,out},norm2,ff.fc{1,2}}`
    /// and `norm_out`, in the dtype of `vb`.
    pub fn new(cfg: &ImuEncoderConfig, vb: VarBuilder) -> Result<Self> {
        cfg.check()?;
        let specs = stem(cfg);
        let mut convs = Vec::with_capacity(specs.len());
        let mut in_c = cfg.channels;
        for (i, &c) in specs.iter().enumerate() {
            convs.push(TimeConv::new(
                in_c,
                cfg.d_model,
                c,
                vb.pp(format!("conv.{i}")),
            )?);
            in_c = cfg.d_model;
        }
        let layers = (0..cfg.layers)
            .map(|i| Layer::new(cfg, vb.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            convs,
            layers,
            norm_out: LayerNorm::new(cfg.d_model, 1e-5, vb.pp("norm_out"))?,
        })
    }

    pub fn config(&self) -> &ImuEncoderConfig {
        &self.cfg
    }

    /// Output lengths for input lengths.
    pub fn out_lengths(&self, lengths: &[usize]) -> Vec<usize> {
        lengths.iter().map(|&l| self.cfg.out_len(l)).collect()
    }

    /// Inference (no dropout). `xs (b, t, channels)`; rows at or beyond `lengths[i]` are
    /// padding. Returns `(b, t', d_model)`, zero beyond each item's new length, and the new
    /// lengths.
    pub fn forward(&self, xs: &Tensor, lengths: &[usize]) -> Result<(Tensor, Vec<usize>)> {
        self.forward_t(xs, lengths, false)
    }

    /// [`ImuEncoder::forward`], with dropout when `train` (and `dropout > 0`).
    pub fn forward_t(
        &self,
        xs: &Tensor,
        lengths: &[usize],
        train: bool,
    ) -> Result<(Tensor, Vec<usize>)> {
        let (b, t, c) = xs.dims3()?;
        if c != self.cfg.channels {
            return Err(Error::Shape(format!(
                "imu encoder: input has {c} channels, the encoder was built for {}",
                self.cfg.channels
            )));
        }
        if lengths.len() != b {
            return Err(Error::Shape(format!(
                "imu encoder: {} lengths for a batch of {b}",
                lengths.len()
            )));
        }
        // An empty item would leave a query with no key to attend to; give it one row.
        let mut lens: Vec<usize> = lengths.iter().map(|&l| l.clamp(1, t.max(1))).collect();
        let (dtype, dev) = (xs.dtype(), xs.device());
        let mut h = xs.broadcast_mul(&row_mask(&lens, t, dtype, dev)?.unsqueeze(2)?)?;
        for conv in &self.convs {
            h = conv.forward(&h)?.gelu_erf()?;
            let t_out = h.dim(1)?;
            lens = lens
                .iter()
                .map(|&l| conv.spec.out_len(l).min(t_out))
                .collect();
            h = h.broadcast_mul(&row_mask(&lens, t_out, dtype, dev)?.unsqueeze(2)?)?;
        }
        let t_out = h.dim(1)?;
        h = h.broadcast_add(&sinusoids(t_out, self.cfg.d_model, dtype, dev)?)?;
        let mask = row_mask(&lens, t_out, dtype, dev)?;
        // 0 for real keys, -1e9 for padding: exp underflows to exactly 0 in f32 and f64.
        let key_bias = ((mask.clone() - 1.0)? * 1e9)?.reshape((b, 1, 1, t_out))?;
        let drop = if train { self.cfg.dropout } else { 0.0 };
        for layer in &self.layers {
            h = layer.forward(&h, &key_bias, drop)?;
        }
        let h = self
            .norm_out
            .forward(&h)?
            .broadcast_mul(&mask.unsqueeze(2)?)?;
        Ok((h, lens))
    }
}

/// `(b, t)`: 1 for rows below each length, 0 after.
fn row_mask(lengths: &[usize], t: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let m: Vec<f32> = lengths
        .iter()
        .flat_map(|&l| (0..t).map(move |i| if i < l { 1.0 } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(m, (lengths.len(), t), dev)?.to_dtype(dtype)?)
}

/// `(t, d)` sinusoidal positions (Vaswani et al.): sin on even, cos on odd features. No
/// parameters, and no maximum length.
fn sinusoids(t: usize, d: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let mut pe = vec![0f32; t * d];
    for pos in 0..t {
        for i in 0..d {
            let freq = (10_000f64).powf(-((i / 2 * 2) as f64) / d as f64);
            let a = pos as f64 * freq;
            pe[pos * d + i] = if i % 2 == 0 { a.sin() } else { a.cos() } as f32;
        }
    }
    Ok(Tensor::from_vec(pe, (t, d), dev)?.to_dtype(dtype)?)
}
