//! Projectors: shapes, padding invariance, gradients against finite differences, save/load.

use anymal_adapters::{PerceiverConfig, Projector, ProjectorConfig, ProjectorKind, Reduce};
use candle_core::{Device, Tensor, D};

fn cfg(kind: ProjectorKind, reduce: Reduce) -> ProjectorConfig {
    ProjectorConfig {
        kind,
        d_enc: 6,
        d_llm: 5,
        num_tokens: 3,
        reduce,
        hidden: (kind == ProjectorKind::Ultravox).then_some(8),
        perceiver: (kind == ProjectorKind::Perceiver).then_some(PerceiverConfig {
            depth: 2,
            heads: 2,
            head_dim: 4,
            ff_mult: 2,
            dim: Some(8),
            positions: Some(8),
        }),
        front: None,
        ctc_compress: None,
        modality: "audio".into(),
        encoder: "test".into(),
        encoder_id: "test".into(),
        encoder_options: serde_json::Value::Null,
        llm: String::new(),
        prompt: "<audio>".into(),
        chat_template: false,
    }
}

fn all_kinds() -> Vec<ProjectorConfig> {
    vec![
        cfg(ProjectorKind::Linear, Reduce::Pool),
        cfg(ProjectorKind::Linear, Reduce::Concat { stride: 2 }),
        cfg(ProjectorKind::Mlp2xGelu, Reduce::Pool),
        cfg(ProjectorKind::Perceiver, Reduce::Pool),
        cfg(ProjectorKind::Linear, Reduce::Stack { n: 3 }),
        cfg(ProjectorKind::Mlp2xGelu, Reduce::AvgPool { n: 2 }),
        cfg(ProjectorKind::Qwen2Audio, Reduce::AvgPool { n: 2 }),
        cfg(ProjectorKind::Ultravox, Reduce::Stack { n: 2 }),
    ]
}

/// Tokens each kind gives for an item of `frames` frames (k = 3 for the fixed-count ones).
fn tokens(c: &ProjectorConfig, frames: usize) -> usize {
    match c.reduce {
        Reduce::Stack { n } | Reduce::AvgPool { n } if c.kind != ProjectorKind::Perceiver => {
            frames.div_ceil(n)
        }
        _ => 3,
    }
}

/// Deterministic pseudo-random data (candle's CPU randn cannot be seeded).
fn data(shape: &[usize], salt: u64) -> Tensor {
    let mut r = anymal_util::rng::SplitMix64::new(salt);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| r.normal(0.0, 1.0) as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[test]
fn shapes_and_padding_invariance() -> anyhow::Result<()> {
    for c in all_kinds() {
        let (p, _) = Projector::init(&c, 3, &Device::Cpu)?;
        let a = data(&[7, 6], 1);
        let b = data(&[4, 6], 2);
        let both = p.forward_items(&[a.clone(), b.clone()])?;
        assert_eq!(both[0].dims(), &[tokens(&c, 7), 5], "{:?}", c.kind);
        assert_eq!(both[1].dims(), &[tokens(&c, 4), 5], "{:?}", c.kind);
        // Item b alone (no padding) must equal its row in the padded batch.
        let alone = p.forward_items(&[b])?;
        let diff = (&both[1] - &alone[0])?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(
            diff < 1e-5,
            "{:?} {:?}: padding changed the output by {diff}",
            c.kind,
            c.reduce
        );
    }
    Ok(())
}

#[test]
fn gradients_match_finite_differences() -> anyhow::Result<()> {
    for c in all_kinds() {
        let (p, store) = Projector::init(&c, 5, &Device::Cpu)?;
        let xs = [data(&[7, 6], 11), data(&[3, 6], 12)];
        let targets = [data(&[tokens(&c, 7), 5], 13), data(&[tokens(&c, 3), 5], 14)];
        let loss_of = |p: &Projector| -> anyhow::Result<Tensor> {
            let ys = p.forward_items(&xs)?;
            let mut loss = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu)?;
            for (y, t) in ys.iter().zip(&targets) {
                loss = (loss + (y - t)?.sqr()?.sum(D::Minus1)?.mean_all()?)?;
            }
            Ok(loss)
        };
        let grads = loss_of(&p)?.backward()?;
        for (name, var) in store.vars() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{:?}: no gradient for {name}", c.kind));
            let g = g.flatten_all()?.to_vec1::<f32>()?;
            let base = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            // Check a few coordinates by central differences.
            let eps = 2e-3f32;
            for &i in &[0usize, base.len() / 2, base.len() - 1] {
                let mut plus = base.clone();
                plus[i] += eps;
                var.set(&Tensor::from_vec(plus, var.shape(), &Device::Cpu)?)?;
                let lp = loss_of(&p)?.to_scalar::<f32>()?;
                let mut minus = base.clone();
                minus[i] -= eps;
                var.set(&Tensor::from_vec(minus, var.shape(), &Device::Cpu)?)?;
                let lm = loss_of(&p)?.to_scalar::<f32>()?;
                var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu)?)?;
                let fd = (lp - lm) / (2.0 * eps);
                let tol = 1e-2 + 2e-2 * fd.abs();
                assert!(
                    (fd - g[i]).abs() < tol,
                    "{:?} {name}[{i}]: analytic {} vs numeric {fd}",
                    c.kind,
                    g[i]
                );
            }
        }
    }
    Ok(())
}

#[test]
fn save_and_load_round_trip() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("anymal-proj-{}", std::process::id()));
    for c in all_kinds() {
        let (p, store) = Projector::init(&c, 9, &Device::Cpu)?;
        p.save(&dir, &store)?;
        let (q, _) = Projector::load(&dir, &Device::Cpu)?;
        assert_eq!(q.cfg, c);
        let x = [data(&[5, 6], 4)];
        let d = (&p.forward_items(&x)?[0] - &q.forward_items(&x)?[0])?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(d, 0.0);
    }
    // A config naming a bigger projector than the weights hold is an error, not a panic.
    let (p, store) = Projector::init(&cfg(ProjectorKind::Linear, Reduce::Pool), 9, &Device::Cpu)?;
    p.save(&dir, &store)?;
    let mut bad = cfg(ProjectorKind::Mlp2xGelu, Reduce::Pool);
    bad.d_llm = 5;
    std::fs::write(dir.join("projector.json"), serde_json::to_string(&bad)?)?;
    let err = Projector::load(&dir, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("lacks parameters"), "{err}");
    std::fs::write(dir.join("projector.json"), "{not json")?;
    let err = Projector::load(&dir, &Device::Cpu).unwrap_err().to_string();
    assert!(
        err.contains("projector.json") && err.contains("invalid"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn audio_kinds_have_their_models_parameter_layouts() -> anyhow::Result<()> {
    let names = |c: &ProjectorConfig| -> anyhow::Result<Vec<(String, Vec<usize>)>> {
        let (_, store) = Projector::init(c, 1, &Device::Cpu)?;
        let mut v: Vec<_> = store
            .vars()
            .into_iter()
            .map(|(n, t)| (n, t.dims().to_vec()))
            .collect();
        v.sort();
        Ok(v)
    };
    // Ultravox: stacked width 2 * 6 = 12, hidden 8 (SwiGLU -> 4), out 5, no biases.
    assert_eq!(
        names(&cfg(ProjectorKind::Ultravox, Reduce::Stack { n: 2 }))?,
        vec![
            ("linear_1.weight".to_string(), vec![8, 12]),
            ("linear_2.weight".to_string(), vec![5, 4]),
            ("ln_mid.weight".to_string(), vec![4]),
            ("ln_pre.weight".to_string(), vec![12]),
        ]
    );
    // Qwen2-Audio: pooled frames keep the encoder width, one linear layer with a bias.
    assert_eq!(
        names(&cfg(ProjectorKind::Qwen2Audio, Reduce::AvgPool { n: 2 }))?,
        vec![
            ("linear.bias".to_string(), vec![5]),
            ("linear.weight".to_string(), vec![5, 6]),
        ]
    );
    assert_eq!(
        ProjectorKind::parse("ultravox")?.default_reduce(),
        Some(Reduce::Stack { n: 8 })
    );
    // A kind with the wrong reduction, or an odd SwiGLU width, is a config error naming it.
    let err = Projector::init(&cfg(ProjectorKind::Ultravox, Reduce::Pool), 1, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("reduce"), "{err}");
    let mut odd = cfg(ProjectorKind::Ultravox, Reduce::Stack { n: 2 });
    odd.hidden = Some(7);
    let err = Projector::init(&odd, 1, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("hidden") && err.contains("even"), "{err}");
    let err = Projector::init(
        &cfg(ProjectorKind::Linear, Reduce::Stack { n: 0 }),
        1,
        &Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains(">= 1"), "{err}");
    Ok(())
}

#[test]
fn a_ctc_compressing_projector_saves_loads_and_keeps_its_table_frozen() -> anyhow::Result<()> {
    use anymal_adapters::ctc_compress::{CompressOutput, TABLE};
    let c = cfg(ProjectorKind::Linear, Reduce::Stack { n: 2 });
    let (p, store) = Projector::init(&c, 3, &Device::Cpu)?;
    // 4 classes (3 word pieces + the blank) of width d_llm = 5.
    let table = data(&[4, 5], 11);
    let p = p.with_ctc_compress(&store, &table, CompressOutput::Mean)?;
    assert_eq!(p.cfg.ctc_compress.map(|c| c.classes), Some(4));
    assert_eq!(
        p.cfg.ctc_compress.map(|c| c.output),
        Some(CompressOutput::Mean)
    );
    // Attaching the table the store already holds (a resumed run) works too.
    let held = store.tensors()[TABLE].clone();
    let p = p.with_ctc_compress(&store, &held, CompressOutput::Nearest)?;
    let trainable: Vec<String> = p
        .trainable_vars(&store)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(!trainable.iter().any(|n| n == TABLE), "{trainable:?}");
    assert_eq!(trainable.len() + 1, store.vars().len());

    let items = [data(&[14, 6], 1), data(&[9, 6], 2)];
    let frames = p.frame_items(&items)?;
    let kept = p.forward_items(&items)?;
    for (f, k) in frames.iter().zip(&kept) {
        // Never more tokens than frames-based ones, never none.
        assert!(k.dim(0)? >= 1 && k.dim(0)? <= f.dim(0)?);
    }

    let dir = std::env::temp_dir().join(format!("anymal-ctc-proj-{}", std::process::id()));
    p.save(&dir, &store)?;
    let (q, _) = Projector::load(&dir, &Device::Cpu)?;
    assert_eq!(q.cfg, p.cfg);
    for (a, b) in kept.iter().zip(q.forward_items(&items)?) {
        assert_eq!(a.dims(), b.dims());
        let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(d, 0.0);
    }
    // A file without the table its config names is an error naming what is missing.
    let mut plain = store.tensors();
    plain.remove(TABLE);
    let plain: std::collections::HashMap<String, Tensor> = plain.into_iter().collect();
    candle_core::safetensors::save(&plain, dir.join("projector.safetensors"))?;
    let err = Projector::load(&dir, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains(TABLE), "{err}");
    std::fs::remove_dir_all(&dir)?;

    // Compression has no time axis to work on with a fixed token count.
    let (p, store) = Projector::init(&cfg(ProjectorKind::Linear, Reduce::Pool), 3, &Device::Cpu)?;
    let err = p
        .with_ctc_compress(&store, &table, CompressOutput::Mean)
        .unwrap_err()
        .to_string();
    assert!(err.contains("rate-based"), "{err}");
    Ok(())
}
