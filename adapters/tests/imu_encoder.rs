//! The trainable IMU encoder: gradients against central finite differences (in f64), padding
//! invariance, shapes and errors, save/load through the ParamStore.
//!
//! The learning check on the real BasicMotions recordings lives in the root crate's
//! `tests/basic_motions.rs`: it needs the IMU reader of anymal-encoders, which this crate does
//! not depend on.

use anymal_adapters::imu_encoder::{ConvLayer, ImuEncoder, ImuEncoderConfig};
use anymal_adapters::ParamStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;

fn small() -> ImuEncoderConfig {
    ImuEncoderConfig {
        channels: 3,
        d_model: 8,
        conv_layers: vec![
            ConvLayer {
                kernel: 3,
                stride: 2,
            },
            ConvLayer {
                kernel: 5,
                stride: 1,
            },
        ],
        heads: 2,
        layers: 2,
        ff_mult: 2,
        dropout: 0.0,
    }
}

/// Deterministic pseudo-random data (candle's CPU randn cannot be seeded).
fn data(shape: &[usize], salt: u64, dtype: DType) -> Tensor {
    let mut r = anymal_util::rng::SplitMix64::new(salt);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| r.normal(0.0, 1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_dtype(DType::F32))
        .and_then(|d| d.to_scalar::<f32>())
        .unwrap()
}

/// The store's f32 parameters read as f64, so the forward runs in f64 and central differences
/// are accurate to ~1e-9 (the gradient still reaches the f32 Vars through `to_dtype`).
/// The f64 weights are copies: an encoder must be built again after a Var changes.
fn vb_f64(store: &ParamStore) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(store.clone()), DType::F64, Device::Cpu)
}

#[test]
fn gradients_match_finite_differences() -> anyhow::Result<()> {
    let cfg = small();
    let store = ParamStore::new(3, &Device::Cpu);
    let xs = Var::from_tensor(&data(&[2, 9, 3], 1, DType::F64))?;
    let lengths = [9, 6];
    let target = data(&[2, cfg.out_len(9), 8], 2, DType::F64);
    // Rebuilt on every call: the f64 copies of the weights are taken at construction.
    let loss_of = |xs: &Tensor| -> anyhow::Result<Tensor> {
        let enc = ImuEncoder::new(&cfg, vb_f64(&store))?;
        let (y, _) = enc.forward(xs, &lengths)?;
        Ok((y - &target)?.sqr()?.sum_all()?)
    };
    let loss_val = |xs: &Tensor| -> anyhow::Result<f64> { Ok(loss_of(xs)?.to_scalar::<f64>()?) };
    let grads = loss_of(xs.as_tensor())?.backward()?;

    let check = |what: &str, analytic: f64, numeric: f64| {
        let tol = 1e-6 + 1e-4 * numeric.abs().max(analytic.abs());
        assert!(
            (analytic - numeric).abs() < tol,
            "{what}: analytic {analytic} vs numeric {numeric}"
        );
    };
    // Every parameter gets a gradient; three coordinates of each are checked. The weights are
    // f32: the step actually taken is measured from the stored values.
    let vars = store.vars();
    assert!(vars.len() > 20, "{}", vars.len());
    for (name, var) in &vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"))
            .flatten_all()?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        let base = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        for &i in &[0usize, base.len() / 2, base.len() - 1] {
            let eps = 1e-3f32;
            let mut plus = base.clone();
            plus[i] += eps;
            let mut minus = base.clone();
            minus[i] -= eps;
            let step = (plus[i] as f64 - minus[i] as f64) / 2.0;
            var.set(&Tensor::from_vec(plus, var.shape(), &Device::Cpu)?)?;
            let lp = loss_val(xs.as_tensor())?;
            var.set(&Tensor::from_vec(minus, var.shape(), &Device::Cpu)?)?;
            let lm = loss_val(xs.as_tensor())?;
            var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu)?)?;
            check(&format!("{name}[{i}]"), g[i], (lp - lm) / (2.0 * step));
        }
    }
    // The input: real rows of both items, and a padded row whose gradient must be zero.
    let gx = grads
        .get(xs.as_tensor())
        .expect("no gradient for the input")
        .flatten_all()?
        .to_vec1::<f64>()?;
    let base = xs.as_tensor().flatten_all()?.to_vec1::<f64>()?;
    let padded = 9 * 3 + 7 * 3 + 1; // item 1, row 7, channel 1
    for &i in &[0usize, 13, 26, 9 * 3 + 2, 9 * 3 + 5 * 3 + 2, padded] {
        let eps = 1e-5;
        let mut plus = base.clone();
        plus[i] += eps;
        let lp = loss_val(&Tensor::from_vec(plus, (2, 9, 3), &Device::Cpu)?)?;
        let mut minus = base.clone();
        minus[i] -= eps;
        let lm = loss_val(&Tensor::from_vec(minus, (2, 9, 3), &Device::Cpu)?)?;
        check(&format!("xs[{i}]"), gx[i], (lp - lm) / (2.0 * eps));
    }
    assert_eq!(gx[padded], 0.0);
    Ok(())
}

#[test]
fn padding_never_reaches_real_rows() -> anyhow::Result<()> {
    let cfg = ImuEncoderConfig {
        d_model: 16,
        ..small()
    };
    let store = ParamStore::new(5, &Device::Cpu);
    let enc = ImuEncoder::new(&cfg, store.var_builder())?;
    let long = data(&[1, 11, 3], 10, DType::F32);
    let short = data(&[1, 7, 3], 11, DType::F32);
    let (alone_long, _) = enc.forward(&long, &[11])?;
    let (alone_short, l) = enc.forward(&short, &[7])?;
    assert_eq!(l, vec![cfg.out_len(7)]);
    let t_short = cfg.out_len(7);
    for fill in [100.0f64, -3.0] {
        let pad = (Tensor::ones((1, 4, 3), DType::F32, &Device::Cpu)? * fill)?;
        let batch = Tensor::cat(&[long.clone(), Tensor::cat(&[&short, &pad], 1)?], 0)?;
        let (y, lens) = enc.forward(&batch, &[11, 7])?;
        assert_eq!(y.dims(), &[2, cfg.out_len(11), 16]);
        assert_eq!(lens, vec![cfg.out_len(11), t_short]);
        let d_long = max_diff(&y.get(0)?, &alone_long.get(0)?);
        let d_short = max_diff(&y.get(1)?.narrow(0, 0, t_short)?, &alone_short.get(0)?);
        assert!(
            d_long < 1e-5 && d_short < 1e-5,
            "fill {fill}: {d_long} {d_short}"
        );
        // Rows past an item's length are zero.
        let tail = y.get(1)?.narrow(0, t_short, cfg.out_len(11) - t_short)?;
        assert_eq!(tail.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
    }
    Ok(())
}

#[test]
fn shapes_config_and_errors() -> anyhow::Result<()> {
    let cfg = ImuEncoderConfig::default();
    assert_eq!(
        (cfg.channels, cfg.d_model, cfg.heads, cfg.layers),
        (6, 128, 4, 2)
    );
    assert_eq!(cfg.out_len(100), 25);
    let parsed: ImuEncoderConfig = serde_json::from_str("{}")?;
    assert_eq!(parsed, cfg);
    assert!(serde_json::from_str::<ImuEncoderConfig>(r#"{"d_modle": 4}"#).is_err());

    let store = ParamStore::new(1, &Device::Cpu);
    let enc = ImuEncoder::new(&cfg, store.var_builder())?;
    let (y, lens) = enc.forward(&data(&[3, 100, 6], 1, DType::F32), &[100, 50, 0])?;
    assert_eq!(y.dims(), &[3, 25, 128]);
    assert_eq!(lens, vec![25, 13, 1]);
    assert!(enc
        .forward(&data(&[1, 10, 5], 1, DType::F32), &[10])
        .is_err());
    assert!(enc
        .forward(&data(&[2, 10, 6], 1, DType::F32), &[10])
        .is_err());

    let bad = ImuEncoderConfig {
        heads: 3,
        ..ImuEncoderConfig::default()
    };
    let e = ImuEncoder::new(&bad, ParamStore::new(1, &Device::Cpu).var_builder())
        .unwrap_err()
        .to_string();
    assert!(e.contains("divisible"), "{e}");
    // An empty stem is a kernel-1 projection: lengths unchanged.
    let flat = ImuEncoderConfig {
        conv_layers: vec![],
        ..small()
    };
    let enc = ImuEncoder::new(&flat, ParamStore::new(1, &Device::Cpu).var_builder())?;
    assert_eq!(
        enc.forward(&data(&[1, 9, 3], 1, DType::F32), &[9])?
            .0
            .dims(),
        &[1, 9, 8]
    );
    Ok(())
}

#[test]
fn saves_and_loads_with_the_param_store() -> anyhow::Result<()> {
    let cfg = small();
    let store = ParamStore::new(7, &Device::Cpu);
    let enc = ImuEncoder::new(&cfg, store.var_builder().pp("imu_encoder"))?;
    let names: Vec<String> = store.vars().into_iter().map(|(n, _)| n).collect();
    for want in [
        "imu_encoder.conv.0.weight",
        "imu_encoder.conv.1.bias",
        "imu_encoder.layers.1.attn.to_q.weight",
        "imu_encoder.layers.0.ff.fc2.bias",
        "imu_encoder.norm_out.weight",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    let dir = std::env::temp_dir().join(format!("anymal-imu-enc-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("projector.safetensors");
    candle_core::safetensors::save(
        &store
            .tensors()
            .into_iter()
            .collect::<std::collections::HashMap<_, _>>(),
        &path,
    )?;
    let loaded = ParamStore::new(99, &Device::Cpu);
    loaded.load_safetensors(&path)?;
    let enc2 = ImuEncoder::new(&cfg, loaded.var_builder().pp("imu_encoder"))?;
    let x = data(&[2, 9, 3], 4, DType::F32);
    let d = max_diff(&enc.forward(&x, &[9, 4])?.0, &enc2.forward(&x, &[9, 4])?.0);
    assert_eq!(d, 0.0);
    // A config that needs other shapes than the file holds is an error, not a panic.
    let wider = ImuEncoderConfig {
        d_model: 16,
        ..small()
    };
    assert!(ImuEncoder::new(&wider, loaded.var_builder().pp("imu_encoder")).is_err());
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The gather-and-matmul convolution computes what candle's conv1d does (forward, contiguous
/// kernel: the case candle gets right), for odd and even kernels and strides 1 to 3.
#[test]
fn time_conv_matches_candle_conv1d() -> anyhow::Result<()> {
    use anymal_adapters::imu_encoder::TimeConv;
    for (k, s) in [(1, 1), (3, 1), (3, 2), (4, 2), (5, 3)] {
        let store = ParamStore::new(k as u64, &Device::Cpu);
        let spec = ConvLayer {
            kernel: k,
            stride: s,
        };
        let conv = TimeConv::new(3, 4, spec, store.var_builder())?;
        let xs = data(&[2, 10, 3], 5, DType::F32);
        let ours = conv.forward(&xs)?;
        let w = store.var_builder().get((4, 3, k), "weight")?;
        let b = store.var_builder().get(4, "bias")?;
        let theirs = xs
            .transpose(1, 2)?
            .contiguous()?
            .conv1d(&w, k / 2, s, 1, 1)?
            .broadcast_add(&b.reshape((1, 4, 1))?)?
            .transpose(1, 2)?;
        assert_eq!(ours.dims(), theirs.dims(), "k {k} s {s}");
        assert_eq!(ours.dim(1)?, spec.out_len(10));
        assert!(max_diff(&ours, &theirs) < 1e-5, "k {k} s {s}");
    }
    Ok(())
}
