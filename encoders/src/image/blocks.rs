//! Building blocks shared by the ImageNet CNNs (MobileNetV2, EfficientNet-Lite): a convolution
//! with its eval-mode BatchNorm folded into weight and bias, optional ReLU6, a depthwise
//! convolution that does not go through candle's grouped conv, and the inverted residual block.
//!
//! Why a separate depthwise path: candle 0.11's `conv2d` with `groups = c` splits the input
//! into `c` chunks and runs `c` separate convolutions; for MobileNetV2's 960-channel layers that
//! is hundreds of tiny im2col+matmul calls. A direct loop (CPU) or shift-and-add over the taps
//! (other devices) is much faster and gives the same result.

use candle_core::{DType, Device, IndexOp, Tensor};

use super::torch_legacy::StateDict;
use crate::error::Result;

/// How a convolution pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Padding {
    /// `p` zeros on every side (PyTorch's `padding=p`).
    Symmetric(usize),
    /// TensorFlow's "SAME": the output is `ceil(in / stride)`; the total padding that needs is
    /// split with the extra pixel at the bottom/right (what TF-ported EfficientNets expect).
    TfSame,
}

impl Padding {
    /// `(before, after)` zeros along one spatial dimension of extent `len`.
    fn amounts(self, len: usize, k: usize, stride: usize) -> (usize, usize) {
        match self {
            Self::Symmetric(p) => (p, p),
            Self::TfSame => {
                let out = len.div_ceil(stride);
                let total = ((out.saturating_sub(1)) * stride + k).saturating_sub(len);
                (total / 2, total - total / 2)
            }
        }
    }
}

/// Conv2d (no bias in the checkpoint) + BatchNorm2d in eval mode, folded:
/// `w' = w * g / sqrt(var + eps)`, `b' = beta - mean * g / sqrt(var + eps)`; then ReLU6 if asked.
#[derive(Debug, Clone)]
pub(crate) struct ConvBn {
    /// `(c_out, c_in / groups, k, k)`.
    weight: Tensor,
    /// `(c_out,)`.
    bias: Tensor,
    stride: usize,
    /// `groups = c_in` (then `c_out == c_in`) rather than a dense conv.
    depthwise: bool,
    padding: Padding,
    relu6: bool,
    k: usize,
}

/// Options of one [`ConvBn`] besides its weights.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvSpec {
    pub stride: usize,
    pub padding: Padding,
    pub relu6: bool,
    pub bn_eps: f64,
    /// One filter per input channel (`groups = c_in`), kernel `(c, 1, k, k)`.
    pub depthwise: bool,
}

impl ConvBn {
    /// Reads `{conv}.weight` and `{bn}.{weight,bias,running_mean,running_var}` from `sd`.
    pub fn load(sd: &StateDict, conv: &str, bn: &str, spec: ConvSpec) -> Result<Self> {
        let w = sd.get(&format!("{conv}.weight"), None)?;
        let (c_out, c_in_g, kh, kw) = w.dims4().map_err(|_| crate::Error::Model {
            path: sd.path().to_path_buf(),
            what: format!("{conv}.weight has shape {:?}, expected 4 dims", w.dims()),
        })?;
        if kh != kw || (spec.depthwise && c_in_g != 1) {
            return Err(crate::Error::Model {
                path: sd.path().to_path_buf(),
                what: format!(
                    "{conv}.weight has shape {:?}; expected a square{} kernel",
                    w.dims(),
                    if spec.depthwise {
                        " depthwise (c, 1, k, k)"
                    } else {
                        ""
                    }
                ),
            });
        }
        let c = Some(&[c_out][..]);
        let gamma = sd.get(&format!("{bn}.weight"), c)?;
        let beta = sd.get(&format!("{bn}.bias"), c)?;
        let mean = sd.get(&format!("{bn}.running_mean"), c)?;
        let var = sd.get(&format!("{bn}.running_var"), c)?;
        let scale = (gamma / (var + spec.bn_eps)?.sqrt()?)?;
        let weight = w.broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
        let bias = (beta - (mean * &scale)?)?;
        Ok(Self {
            weight,
            bias,
            stride: spec.stride,
            depthwise: spec.depthwise,
            padding: spec.padding,
            relu6: spec.relu6,
            k: kh,
        })
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.bias.dims1().unwrap_or(0)
    }

    /// `(b, c_in, h, w)` -> `(b, c_out, h', w')`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        let (top, bottom) = self.padding.amounts(h, self.k, self.stride);
        let (left, right) = self.padding.amounts(w, self.k, self.stride);
        if self.depthwise {
            let clamp = self.relu6.then_some(6.0);
            let pad = (top, bottom, left, right);
            return depthwise_conv(xs, &self.weight, &self.bias, self.stride, pad, clamp);
        }
        let ys = if self.k == 1 && self.stride == 1 {
            // A 1x1 conv is a matmul over the pixels; this skips candle's im2col copy.
            let (b, c_in, h, w) = xs.dims4()?;
            let c_out = self.out_channels();
            let wm = self.weight.reshape((c_out, c_in))?;
            wm.broadcast_matmul(&xs.reshape((b, c_in, h * w))?)?
                .reshape((b, c_out, h, w))?
        } else if top == bottom && left == right && top == left {
            xs.conv2d(&self.weight, top, self.stride, 1, 1)?
        } else {
            xs.pad_with_zeros(2, top, bottom)?
                .pad_with_zeros(3, left, right)?
                .conv2d(&self.weight, 0, self.stride, 1, 1)?
        };
        bias_act(&ys, &self.bias, self.relu6)
    }
}

/// `ys (b, c, h, w) + bias (c,)`, then ReLU6 if asked. On the CPU one pass over the data: candle's
/// `clamp` broadcasts its scalar bounds and runs two strided binary ops, which measured ~15 ms
/// on a 96x112x112 map, more than the matmul that produced it.
fn bias_act(ys: &Tensor, bias: &Tensor, relu6: bool) -> Result<Tensor> {
    let (b, c, h, w) = ys.dims4()?;
    if matches!(ys.device(), Device::Cpu) && ys.dtype() == DType::F32 {
        let mut v = ys.flatten_all()?.to_vec1::<f32>()?;
        let bv = bias.to_vec1::<f32>()?;
        for (i, plane) in v.chunks_mut(h * w).enumerate() {
            let bc = bv[i % c];
            if relu6 {
                plane
                    .iter_mut()
                    .for_each(|x| *x = (*x + bc).clamp(0.0, 6.0));
            } else {
                plane.iter_mut().for_each(|x| *x += bc);
            }
        }
        return Ok(Tensor::from_vec(v, (b, c, h, w), ys.device())?);
    }
    let ys = ys.broadcast_add(&bias.reshape((1, c, 1, 1))?)?;
    if relu6 {
        Ok(ys.clamp(0f32, 6f32)?)
    } else {
        Ok(ys)
    }
}

/// Depthwise convolution plus bias: `xs (b, c, h, w)`, `weight (c, 1, k, k)`, `bias (c,)`,
/// padding `(top, bottom, left, right)` -> `(b, c, ho, wo)` with
/// `ho = (h + top + bottom - k) / stride + 1`; `clamp = Some(6.0)` applies ReLU6 in the same pass.
pub(crate) fn depthwise_conv(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: (usize, usize, usize, usize),
    clamp: Option<f32>,
) -> Result<Tensor> {
    let (b, c, h, w) = xs.dims4()?;
    let (wc, one, k, k2) = weight.dims4()?;
    if wc != c || one != 1 || k != k2 || stride == 0 {
        return Err(crate::Error::ShapeMismatch {
            what: "depthwise conv".into(),
            expected: format!("a ({c}, 1, k, k) kernel and a stride >= 1"),
            got: format!(
                "input {:?}, kernel {:?}, stride {stride}",
                xs.dims(),
                weight.dims()
            ),
        });
    }
    let (top, bottom, left, right) = pad;
    let (hp, wp) = (h + top + bottom, w + left + right);
    if hp < k || wp < k {
        return Err(crate::Error::ShapeMismatch {
            what: "depthwise conv input".into(),
            expected: format!("at least the {k}x{k} kernel once padded"),
            got: format!("{h}x{w}"),
        });
    }
    let (ho, wo) = ((hp - k) / stride + 1, (wp - k) / stride + 1);
    if matches!(xs.device(), Device::Cpu) && xs.dtype() == DType::F32 {
        let x = xs.flatten_all()?.to_vec1::<f32>()?;
        let wv = weight.flatten_all()?.to_vec1::<f32>()?;
        let bv = bias.to_vec1::<f32>()?;
        let mut out = vec![0f32; b * c * ho * wo];
        let geo = Geometry {
            h,
            w,
            ho,
            wo,
            k,
            stride,
            top,
            left,
        };
        // Planes are independent: split them over the available cores.
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(b * c)
            .max(1);
        let per = (b * c).div_ceil(threads);
        std::thread::scope(|s| {
            for (t, chunk) in out.chunks_mut(per * ho * wo).enumerate() {
                let (x, wv, bv, geo) = (&x, &wv, &bv, &geo);
                s.spawn(move || {
                    for (i, o) in chunk.chunks_mut(ho * wo).enumerate() {
                        let plane = t * per + i;
                        let ch = plane % c;
                        dw_plane(
                            &x[plane * h * w..(plane + 1) * h * w],
                            &wv[ch * k * k..(ch + 1) * k * k],
                            bv[ch],
                            o,
                            geo,
                        );
                        if let Some(hi) = clamp {
                            o.iter_mut().for_each(|v| *v = v.clamp(0.0, hi));
                        }
                    }
                });
            }
        });
        return Ok(Tensor::from_vec(out, (b, c, ho, wo), xs.device())?);
    }
    let ys = depthwise_conv_tensor_ops(xs, weight, bias, stride, pad, (ho, wo))?;
    match clamp {
        Some(hi) => Ok(ys.clamp(0f32, hi)?),
        None => Ok(ys),
    }
}

/// Sizes of one depthwise plane computation.
struct Geometry {
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    k: usize,
    stride: usize,
    top: usize,
    left: usize,
}

/// One channel plane: `out (ho*wo) = bias + sum_taps w[ky,kx] * x[oy*s+ky-top, ox*s+kx-left]`,
/// looping tap-major so the inner loop over `ox` is a straight (vectorisable for stride 1) run.
fn dw_plane(x: &[f32], wk: &[f32], bias: f32, out: &mut [f32], g: &Geometry) {
    out.fill(bias);
    let s = g.stride;
    for ky in 0..g.k {
        for kx in 0..g.k {
            let wt = wk[ky * g.k + kx];
            // Valid ox: 0 <= ox*s + kx - left < w.
            let ox_lo = g.left.saturating_sub(kx).div_ceil(s);
            let ox_hi = if g.w + g.left > kx {
                ((g.w + g.left - kx - 1) / s + 1).min(g.wo)
            } else {
                0
            };
            if ox_lo >= ox_hi {
                continue;
            }
            for oy in 0..g.ho {
                let iy = oy * s + ky;
                if iy < g.top || iy - g.top >= g.h {
                    continue;
                }
                let row = &x[(iy - g.top) * g.w..(iy - g.top + 1) * g.w];
                let orow = &mut out[oy * g.wo..(oy + 1) * g.wo];
                let x0 = ox_lo * s + kx - g.left;
                if s == 1 {
                    let n = ox_hi - ox_lo;
                    for (o, &v) in orow[ox_lo..ox_hi].iter_mut().zip(&row[x0..x0 + n]) {
                        *o += wt * v;
                    }
                } else {
                    for (j, o) in orow[ox_lo..ox_hi].iter_mut().enumerate() {
                        *o += wt * row[x0 + j * s];
                    }
                }
            }
        }
    }
}

/// The same computation with tensor ops, for non-CPU devices: the padded input is split into
/// `stride x stride` phases so every tap is a plain (unstrided) window of one phase.
fn depthwise_conv_tensor_ops(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    s: usize,
    (top, bottom, left, right): (usize, usize, usize, usize),
    (ho, wo): (usize, usize),
) -> Result<Tensor> {
    let (b, c, h, w) = xs.dims4()?;
    let k = weight.dim(2)?;
    // Extend the bottom/right so both sides are multiples of the stride and every tap's window
    // fits inside its phase; the extra zeros are never read by a kept output.
    let need_h = s * (ho + (k - 1) / s).max((h + top + bottom).div_ceil(s));
    let need_w = s * (wo + (k - 1) / s).max((w + left + right).div_ceil(s));
    let xp = xs
        .pad_with_zeros(2, top, need_h - h - top)?
        .pad_with_zeros(3, left, need_w - w - left)?
        .reshape((b, c, need_h / s, s, need_w / s, s))?;
    let mut phases = Vec::with_capacity(s * s);
    for py in 0..s {
        for px in 0..s {
            phases.push(xp.i((.., .., .., py, .., px))?.contiguous()?);
        }
    }
    let weight = weight.reshape((c, k * k))?;
    let mut acc = bias
        .reshape((1, c, 1, 1))?
        .broadcast_as((b, c, ho, wo))?
        .contiguous()?;
    for ky in 0..k {
        for kx in 0..k {
            let tap = phases[(ky % s) * s + kx % s]
                .narrow(2, ky / s, ho)?
                .narrow(3, kx / s, wo)?;
            let wt = weight.narrow(1, ky * k + kx, 1)?.reshape((1, c, 1, 1))?;
            acc = (acc + tap.broadcast_mul(&wt)?)?;
        }
    }
    Ok(acc)
}

/// MobileNetV2's inverted residual (= EfficientNet-Lite's MBConv, which has no squeeze-excite):
/// optional 1x1 expansion + ReLU6, kxk depthwise + ReLU6, 1x1 linear projection, plus the input
/// when stride is 1 and the channel count is unchanged.
#[derive(Debug, Clone)]
pub(crate) struct InvertedResidual {
    pub expand: Option<ConvBn>,
    pub depthwise: ConvBn,
    pub project: ConvBn,
    pub residual: bool,
}

impl InvertedResidual {
    /// `(b, c_in, h, w)` -> `(b, c_out, h / stride, w / stride)`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = match &self.expand {
            Some(e) => e.forward(xs)?,
            None => xs.clone(),
        };
        let ys = self.project.forward(&self.depthwise.forward(&ys)?)?;
        if self.residual {
            Ok((ys + xs)?)
        } else {
            Ok(ys)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anymal_util::testing::max_abs_diff;

    /// Both depthwise paths against candle's grouped conv2d, for the shapes the CNNs use.
    #[test]
    fn depthwise_matches_grouped_conv() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for &(h, w, k, s, pad) in &[
            (
                9usize,
                7usize,
                3usize,
                1usize,
                (1usize, 1usize, 1usize, 1usize),
            ),
            (9, 7, 3, 2, (1, 1, 1, 1)),
            (8, 8, 3, 2, (0, 1, 0, 1)),
            (10, 11, 5, 2, (1, 2, 1, 2)),
            (6, 6, 5, 1, (2, 2, 2, 2)),
        ] {
            let c = 4;
            let xs = Tensor::randn(0f32, 1., (2, c, h, w), &dev)?;
            let wt = Tensor::randn(0f32, 1., (c, 1, k, k), &dev)?;
            let bias = Tensor::randn(0f32, 1., c, &dev)?;
            let (t, bm, l, r) = pad;
            let want = xs
                .pad_with_zeros(2, t, bm)?
                .pad_with_zeros(3, l, r)?
                .conv2d(&wt, 0, s, 1, c)?
                .broadcast_add(&bias.reshape((1, c, 1, 1))?)?;
            let (ho, wo) = (want.dim(2)?, want.dim(3)?);
            let got = depthwise_conv(&xs, &wt, &bias, s, pad, None).unwrap();
            assert_eq!(got.dims(), want.dims());
            assert!(
                max_abs_diff(&got, &want) < 1e-4,
                "cpu path {h}x{w} k{k} s{s}"
            );
            let got = depthwise_conv_tensor_ops(&xs, &wt, &bias, s, pad, (ho, wo)).unwrap();
            assert!(
                max_abs_diff(&got, &want) < 1e-4,
                "tensor path {h}x{w} k{k} s{s}"
            );
        }
        Ok(())
    }

    #[test]
    fn tf_same_padding() {
        // 224 -> 112 with k3 s2 needs one pixel, at the bottom.
        assert_eq!(Padding::TfSame.amounts(224, 3, 2), (0, 1));
        assert_eq!(Padding::TfSame.amounts(56, 5, 2), (1, 2));
        assert_eq!(Padding::TfSame.amounts(14, 5, 1), (2, 2));
    }
}
