//! The decoder on tiny random models built in the test: gradients, checkpointing, KV cache,
//! masks, frozen weights, and HF-layout loading.

use std::collections::HashMap;
use std::path::Path;

use anymal_llm::config::{Arch, LlmConfig};
use anymal_llm::weights::{RawWeight, WeightStore};
use anymal_llm::Llm;
use anymal_quant::QuantType;
use anymal_util::testing::max_abs_diff;
use candle_core::{DType, Device, Tensor, Var};

fn cfg(arch: Arch) -> LlmConfig {
    let gemma = arch == Arch::Gemma3;
    LlmConfig {
        arch,
        vocab_size: 300,
        hidden_size: 256,
        intermediate_size: 512,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 64,
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        rope_local_theta: 10_000.0,
        rope_scale: 1.0,
        rope_interleaved: arch == Arch::Llama,
        max_position_embeddings: 512,
        sliding_window: if gemma { Some(4) } else { None },
        sliding_window_pattern: if gemma { 6 } else { 0 },
        attn_scale: 1.0 / 8.0,
    }
}

/// Random weights by GGUF name, dense f32.
fn random_weights(c: &LlmConfig, seed: u64) -> HashMap<String, Tensor> {
    let dev = Device::Cpu;
    let rng_t =
        |shape: (usize, usize), std: f64, k: u64| -> Tensor { randn(shape, std, seed * 1000 + k) };
    let (d, f, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let mut w = HashMap::new();
    let mut k = 0;
    let put = |w: &mut HashMap<String, Tensor>, n: String, t: Tensor| {
        w.insert(n, t);
    };
    put(
        &mut w,
        "token_embd.weight".into(),
        rng_t((c.vocab_size, d), 1.0, {
            k += 1;
            k
        }),
    );
    put(
        &mut w,
        "output_norm.weight".into(),
        (Tensor::ones(d, DType::F32, &dev).unwrap()
            + rng_t((1, d), 0.1, {
                k += 1;
                k
            })
            .squeeze(0)
            .unwrap())
        .unwrap(),
    );
    for i in 0..c.num_layers {
        let p = |n: &str| format!("blk.{i}.{n}");
        let s = 1.0 / (d as f64).sqrt();
        put(
            &mut w,
            p("attn_q.weight"),
            rng_t((c.num_heads * hd, d), s, {
                k += 1;
                k
            }),
        );
        put(
            &mut w,
            p("attn_k.weight"),
            rng_t((c.num_kv_heads * hd, d), s, {
                k += 1;
                k
            }),
        );
        put(
            &mut w,
            p("attn_v.weight"),
            rng_t((c.num_kv_heads * hd, d), s, {
                k += 1;
                k
            }),
        );
        put(
            &mut w,
            p("attn_output.weight"),
            rng_t((d, c.num_heads * hd), s, {
                k += 1;
                k
            }),
        );
        if c.arch == Arch::Qwen2 {
            for (n, rows) in [
                ("attn_q.bias", c.num_heads * hd),
                ("attn_k.bias", c.num_kv_heads * hd),
                ("attn_v.bias", c.num_kv_heads * hd),
            ] {
                k += 1;
                put(&mut w, p(n), rng_t((1, rows), 0.5, k).squeeze(0).unwrap());
            }
        }
        put(
            &mut w,
            p("ffn_gate.weight"),
            rng_t((f, d), s, {
                k += 1;
                k
            }),
        );
        put(
            &mut w,
            p("ffn_up.weight"),
            rng_t((f, d), s, {
                k += 1;
                k
            }),
        );
        put(
            &mut w,
            p("ffn_down.weight"),
            rng_t((d, f), 1.0 / (f as f64).sqrt(), {
                k += 1;
                k
            }),
        );
        let mut norm = |w: &mut HashMap<String, Tensor>, n: String, dim: usize| {
            k += 1;
            let t = (Tensor::ones(dim, DType::F32, &dev).unwrap()
                + rng_t((1, dim), 0.1, k).squeeze(0).unwrap())
            .unwrap();
            w.insert(n, t);
        };
        norm(&mut w, p("attn_norm.weight"), d);
        norm(&mut w, p("ffn_norm.weight"), d);
        if c.arch == Arch::Gemma3 {
            norm(&mut w, p("post_attention_norm.weight"), d);
            norm(&mut w, p("post_ffw_norm.weight"), d);
            norm(&mut w, p("attn_q_norm.weight"), hd);
            norm(&mut w, p("attn_k_norm.weight"), hd);
        }
    }
    w
}

/// Seeded N(0, std^2) by Box-Muller (candle's CPU randn cannot be seeded).
fn randn(shape: (usize, usize), std: f64, seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n = shape.0 * shape.1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn build(c: &LlmConfig, w: &HashMap<String, Tensor>, quant: &str, dtype: DType) -> Llm {
    let raw = w
        .iter()
        .map(|(k, v)| (k.clone(), RawWeight::Dense(v.clone())))
        .collect();
    let store = WeightStore::new(
        Path::new("<tiny>"),
        raw,
        Some(QuantType::parse(quant).unwrap()),
        &Device::Cpu,
    );
    let mut llm = store.build_llm(c.clone(), 0.0).unwrap();
    llm.dtype = dtype;
    llm
}

fn ids(b: usize, t: usize, seed: u32) -> Tensor {
    let v: Vec<u32> = (0..(b * t) as u32)
        .map(|i| (i * 37 + seed * 11 + 5) % 300)
        .collect();
    Tensor::from_vec(v, (b, t), &Device::Cpu).unwrap()
}

/// Largest absolute difference of two tensors of one shape (f64, as [`max_abs`]).
fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    f64::from(max_abs_diff(a, b))
}

fn max_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// `(f(eps) - f(-eps)) / (2 eps)`: the derivative of `f` at 0 by central differences.
fn central_difference(f: impl Fn(f64) -> f64, eps: f64) -> f64 {
    (f(eps) - f(-eps)) / (2.0 * eps)
}

/// `sum(g * v)` in f64: the derivative along `v` that the gradient `g` gives.
fn directional(g: &Tensor, v: &Tensor) -> f64 {
    (g.to_dtype(DType::F64).unwrap() * v.to_dtype(DType::F64).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// `|x - reference| / max(|reference|, floor)`.
fn rel_diff(x: f64, reference: f64, floor: f64) -> f64 {
    (x - reference).abs() / reference.abs().max(floor)
}

/// d/d(embeds) of sum(hidden * r): autograd against central finite differences, in f64 on a
/// dense model (so only the graph's math is tested, with no quantization noise).
#[test]
fn input_gradient_matches_finite_differences() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Gemma3] {
        let c = cfg(arch);
        let llm = build(&c, &random_weights(&c, 1), "f32", DType::F64);
        let e0 = llm.embed_tokens(&ids(1, 6, 0)).unwrap();
        let r = Tensor::randn(0f64, 1.0, (1, 6, c.hidden_size), &Device::Cpu).unwrap();
        let loss = |e: &Tensor| -> Tensor {
            let h = llm.forward_embeds(e, 0, None, None).unwrap();
            (h * &r).unwrap().sum_all().unwrap()
        };
        let x = Var::from_tensor(&e0).unwrap();
        let g = loss(x.as_tensor()).backward().unwrap();
        let gx = g.get(x.as_tensor()).unwrap().clone();
        // Directional derivatives along a few random directions.
        for k in 0..3 {
            let v = Tensor::randn(0f64, 1.0, e0.shape(), &Device::Cpu).unwrap();
            let fd = central_difference(
                |s| {
                    loss(&(&e0 + (&v * s).unwrap()).unwrap())
                        .to_scalar::<f64>()
                        .unwrap()
                },
                1e-5,
            );
            let ad = directional(&gx, &v);
            // Relative to the derivative's typical size along a random direction, |gx| (that of
            // <gx, v> for v ~ N(0, I)): a direction where it nearly cancels would otherwise
            // judge the difference against almost nothing (the directions are not seeded).
            let typical = directional(&gx, &gx).sqrt();
            let rel = rel_diff(fd, ad, typical);
            assert!(
                rel < 1e-5,
                "{arch:?} direction {k}: autograd {ad} vs finite differences {fd}"
            );
        }
    }
}

/// The 4-bit model's input gradient against the dense model built from its dequantized
/// weights: equal up to the 8-bit activation quantization inside the quantized forward.
#[test]
fn quantized_gradient_matches_dense_reference() {
    for arch in [Arch::Llama, Arch::Gemma3] {
        let c = cfg(arch);
        let q = build(&c, &random_weights(&c, 2), "q4k", DType::F32);
        // Dense reference: the same (already quantized) weights, dequantized.
        let mut dense = q.clone();
        for l in dense.layers.iter_mut() {
            let mut b = (**l).clone();
            let f32t = QuantType::parse("f32").unwrap();
            for lin in [
                &mut b.attn.q_proj,
                &mut b.attn.k_proj,
                &mut b.attn.v_proj,
                &mut b.attn.o_proj,
                &mut b.mlp.gate_proj,
                &mut b.mlp.up_proj,
                &mut b.mlp.down_proj,
            ] {
                *lin = lin.requantize(f32t).unwrap();
            }
            *l = std::sync::Arc::new(b);
        }
        let e0 = q.embed_tokens(&ids(2, 5, 1)).unwrap();
        let grad = |m: &Llm| -> (Tensor, Tensor) {
            let x = Var::from_tensor(&e0).unwrap();
            let logits = m
                .logits(&m.forward_embeds(x.as_tensor(), 0, None, None).unwrap())
                .unwrap();
            let loss = candle_nn::loss::cross_entropy(
                &logits.flatten_to(1).unwrap(),
                &ids(2, 5, 2).flatten_all().unwrap(),
            )
            .unwrap();
            let g = loss.backward().unwrap();
            (loss, g.get(x.as_tensor()).unwrap().clone())
        };
        let (lq, gq) = grad(&q);
        let (ld, gd) = grad(&dense);
        let rel = max_diff(&gq, &gd) / max_abs(&gd);
        eprintln!(
            "{arch:?}: loss {} vs {}, gradient relative difference {rel}",
            lq.to_scalar::<f32>().unwrap(),
            ld.to_scalar::<f32>().unwrap()
        );
        assert!(
            rel < 0.05,
            "{arch:?}: quantized vs dense input gradient differ by {rel}"
        );
    }
}

#[test]
fn checkpointing_gives_the_same_gradient() {
    for arch in [Arch::Llama, Arch::Gemma3] {
        let c = cfg(arch);
        let mut llm = build(&c, &random_weights(&c, 3), "q4k", DType::F32);
        let e0 = llm.embed_tokens(&ids(2, 7, 3)).unwrap();
        let run = |m: &Llm| {
            let x = Var::from_tensor(&e0).unwrap();
            let h = m.forward_embeds(x.as_tensor(), 0, None, None).unwrap();
            let g = h.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            (h, g.get(x.as_tensor()).unwrap().clone())
        };
        let (h1, g1) = run(&llm);
        llm.gradient_checkpointing = true;
        let (h2, g2) = run(&llm);
        assert!(
            max_diff(&h1, &h2) < 1e-5,
            "{arch:?}: checkpointed forward differs"
        );
        let rel = max_diff(&g1, &g2) / max_abs(&g1);
        assert!(
            rel < 1e-5,
            "{arch:?}: checkpointed gradient differs by {rel}"
        );
    }
}

#[test]
fn qwen2_biases_are_loaded_and_used() {
    let c = cfg(Arch::Qwen2);
    let w = random_weights(&c, 9);
    let llm = build(&c, &w, "f32", DType::F32);
    assert!(
        llm.layers[0].attn.q_proj.bias().is_some() && llm.layers[1].attn.v_proj.bias().is_some()
    );
    let mut no_bias = w.clone();
    no_bias.retain(|k, _| !k.ends_with(".bias"));
    let plain = build(&c, &no_bias, "f32", DType::F32);
    let e = llm.embed_tokens(&ids(1, 4, 9)).unwrap();
    let d = max_diff(
        &llm.forward_embeds(&e, 0, None, None).unwrap(),
        &plain.forward_embeds(&e, 0, None, None).unwrap(),
    );
    assert!(d > 1e-3, "biases had no effect");
}

#[test]
fn weights_receive_no_gradient() {
    let c = cfg(Arch::Gemma3);
    let llm = build(&c, &random_weights(&c, 4), "f32", DType::F32);
    let x = Var::from_tensor(&llm.embed_tokens(&ids(1, 4, 0)).unwrap()).unwrap();
    let g = llm
        .logits(&llm.forward_embeds(x.as_tensor(), 0, None, None).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(g.get(x.as_tensor()).is_some());
    for l in &llm.layers {
        for lin in [&l.attn.q_proj, &l.mlp.down_proj] {
            if let anymal_quant::QWeight::Dense(w) = lin.weight() {
                assert!(g.get(w).is_none(), "a frozen weight received a gradient");
            }
        }
    }
}

/// Inference (fused kernels, no graph) and training (differentiable ops) compute the same.
#[test]
fn fused_inference_path_matches_training_path() {
    for arch in [Arch::Llama, Arch::Gemma3] {
        let c = cfg(arch);
        let llm = build(&c, &random_weights(&c, 5), "q4k", DType::F32);
        let e = llm.embed_tokens(&ids(2, 9, 5)).unwrap();
        let inf = llm.forward_embeds(&e, 0, None, None).unwrap();
        let x = Var::from_tensor(&e).unwrap();
        let train = llm.forward_embeds(x.as_tensor(), 0, None, None).unwrap();
        let d = max_diff(&inf, &train);
        assert!(
            d < 1e-4,
            "{arch:?}: fused and differentiable paths differ by {d}"
        );
    }
}

#[test]
fn kv_cache_matches_full_forward() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Gemma3] {
        let c = cfg(arch);
        let llm = build(&c, &random_weights(&c, 6), "q4k", DType::F32);
        let e = llm.embed_tokens(&ids(1, 10, 6)).unwrap();
        let full = llm.forward_embeds(&e, 0, None, None).unwrap();
        let mut cache = llm.new_cache();
        let mut parts = vec![llm
            .forward_embeds(&e.narrow(1, 0, 4).unwrap(), 0, None, Some(&mut cache))
            .unwrap()];
        for i in 4..10 {
            parts.push(
                llm.forward_embeds(&e.narrow(1, i, 1).unwrap(), i, None, Some(&mut cache))
                    .unwrap(),
            );
        }
        let inc = Tensor::cat(&parts, 1).unwrap();
        let d = max_diff(&full, &inc);
        assert!(
            d < 1e-4,
            "{arch:?}: incremental decoding differs from the full forward by {d}"
        );
        // A wrong offset is an error, not silently wrong output.
        assert!(llm
            .forward_embeds(&e.narrow(1, 0, 1).unwrap(), 3, None, Some(&mut cache))
            .is_err());
    }
}

/// Right padding: a padded row computes the same as the unpadded sequence on its real tokens.
#[test]
fn padding_mask_isolates_padding() {
    let c = cfg(Arch::Llama);
    let llm = build(&c, &random_weights(&c, 7), "q4k", DType::F32);
    let short = ids(1, 5, 7);
    let padded = Tensor::cat(
        &[
            &short,
            &Tensor::zeros((1, 3), DType::U32, &Device::Cpu).unwrap(),
        ],
        1,
    )
    .unwrap();
    let batch = Tensor::cat(&[&padded, &ids(1, 8, 8)], 0).unwrap();
    let mask = Tensor::new(
        &[[1u32, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]],
        &Device::Cpu,
    )
    .unwrap();
    let hb = llm
        .forward_embeds(&llm.embed_tokens(&batch).unwrap(), 0, Some(&mask), None)
        .unwrap();
    let hs = llm
        .forward_embeds(&llm.embed_tokens(&short).unwrap(), 0, None, None)
        .unwrap();
    let d = max_diff(&hb.narrow(0, 0, 1).unwrap().narrow(1, 0, 5).unwrap(), &hs);
    assert!(d < 1e-4, "padding leaked into real positions: {d}");
    assert!(!hb
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .any(|v| v.is_nan()));
}

/// Gemma 3's sliding layers: with window 4 and two sliding layers, position 9 sees 3..=9 only.
#[test]
fn sliding_window_limits_what_a_position_sees() {
    let c = cfg(Arch::Gemma3);
    assert!(c.is_sliding(0) && c.is_sliding(1) && !c.is_sliding(5));
    let llm = build(&c, &random_weights(&c, 8), "f32", DType::F32);
    let a = ids(1, 10, 1);
    let mut v = a.to_vec2::<u32>().unwrap();
    v[0][0] = (v[0][0] + 1) % 300;
    v[0][2] = (v[0][2] + 1) % 300;
    let b = Tensor::new(v.clone(), &Device::Cpu).unwrap();
    let ha = llm
        .forward_embeds(&llm.embed_tokens(&a).unwrap(), 0, None, None)
        .unwrap();
    let hb = llm
        .forward_embeds(&llm.embed_tokens(&b).unwrap(), 0, None, None)
        .unwrap();
    assert!(max_diff(&ha.narrow(1, 9, 1).unwrap(), &hb.narrow(1, 9, 1).unwrap()) < 1e-6);
    // ...but a change at position 3 does reach it.
    v[0][3] = (v[0][3] + 1) % 300;
    let c2 = Tensor::new(v, &Device::Cpu).unwrap();
    let hc = llm
        .forward_embeds(&llm.embed_tokens(&c2).unwrap(), 0, None, None)
        .unwrap();
    assert!(max_diff(&ha.narrow(1, 9, 1).unwrap(), &hc.narrow(1, 9, 1).unwrap()) > 1e-4);
}

// ---- LoRA ----

use anymal_llm::lora::{interleaved_to_hf_rows, LoraSet, LoraSpec, TargetModules};
use anymal_quant::LoraConfig;

fn lora_spec(r: usize, targets: TargetModules) -> LoraSpec {
    LoraSpec {
        cfg: LoraConfig {
            r,
            alpha: 2.0 * r as f64,
            dropout: 0.0,
            use_rslora: false,
        },
        targets,
    }
}

/// A fresh adapter has B = 0 (and so no gradient for A); give B values so every path counts.
/// (Adapters keep f32 parameters whatever the activation dtype.)
fn randomize_b(set: &LoraSet, seed: u64) {
    for (k, m) in set.modules.iter().enumerate() {
        let (o, r) = m.lora.b.dims2().unwrap();
        m.lora
            .b
            .set(&randn((o, r), 0.2, seed * 100 + k as u64))
            .unwrap();
    }
}

/// Gradients of `loss` for every adapter tensor, by PEFT key.
fn lora_grads(
    m: &Llm,
    set: &LoraSet,
    e0: &Tensor,
    track_input: bool,
) -> (f64, HashMap<String, Tensor>) {
    let x = Var::from_tensor(e0).unwrap();
    let input = if track_input {
        x.as_tensor().clone()
    } else {
        e0.clone()
    };
    let h = m.forward_embeds(&input, 0, None, None).unwrap();
    let loss = h.sqr().unwrap().mean_all().unwrap();
    let g = loss.backward().unwrap();
    (
        loss.to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap(),
        set.grads(&g).unwrap(),
    )
}

/// Adapter gradients against central finite differences on a dense f64 model.
#[test]
fn lora_gradient_matches_finite_differences() {
    for arch in [Arch::Llama, Arch::Gemma3] {
        let c = cfg(arch);
        let mut llm = build(&c, &random_weights(&c, 4), "f32", DType::F64);
        let set = llm
            .attach_lora(&lora_spec(2, TargetModules::AllLinear), 7)
            .unwrap();
        assert_eq!(set.modules.len(), 7 * c.num_layers);
        randomize_b(&set, 1);
        let e0 = llm.embed_tokens(&ids(1, 5, 4)).unwrap();
        let (_, grads) = lora_grads(&llm, &set, &e0, true);
        assert_eq!(
            grads.len(),
            2 * set.modules.len(),
            "every adapter gets a gradient"
        );
        for (k, m) in set.modules.iter().enumerate().step_by(5) {
            for (which, var) in [('A', &m.lora.a), ('B', &m.lora.b)] {
                let key = anymal_llm::lora::peft_key(&m.path, which);
                let g = &grads[&key];
                let w0 = var.as_tensor().copy().unwrap();
                let v = randn(w0.dims2().unwrap(), 1.0, 50 + k as u64);
                // The parameters are f32 (the forward runs in f64): a step well above f32's
                // resolution, where the central difference's O(eps^2) error is still tiny.
                let eps = 1e-4;
                let at = |s: f64| {
                    var.set(&(&w0 + (&v * s).unwrap()).unwrap()).unwrap();
                    let h = llm.forward_embeds(&e0, 0, None, None).unwrap();
                    h.sqr()
                        .unwrap()
                        .mean_all()
                        .unwrap()
                        .to_dtype(DType::F64)
                        .unwrap()
                        .to_scalar::<f64>()
                        .unwrap()
                };
                let fd = central_difference(at, eps);
                var.set(&w0).unwrap();
                let ad = directional(g, &v);
                let rel = rel_diff(fd, ad, 1e-12);
                assert!(
                    rel < 1e-3,
                    "{arch:?} {key}: autograd {ad} vs finite differences {fd}"
                );
            }
        }
    }
}

/// The 4-bit model's adapter gradients against the dense model with its dequantized weights;
/// and the same gradients with gradient checkpointing, whose block backward runs inside a
/// custom op (the adapters' side store must carry them out), with and without a tracked input.
#[test]
fn quantized_lora_gradient_matches_dense_and_checkpointing() {
    for arch in [Arch::Llama, Arch::Gemma3] {
        let c = cfg(arch);
        let mut q = build(&c, &random_weights(&c, 5), "q4k", DType::F32);
        let mut dense = q.clone();
        let f32t = QuantType::parse("f32").unwrap();
        for l in dense.layers.iter_mut() {
            let b = std::sync::Arc::make_mut(l);
            for lin in [
                &mut b.attn.q_proj,
                &mut b.attn.k_proj,
                &mut b.attn.v_proj,
                &mut b.attn.o_proj,
                &mut b.mlp.gate_proj,
                &mut b.mlp.up_proj,
                &mut b.mlp.down_proj,
            ] {
                *lin = lin.requantize(f32t).unwrap();
            }
        }
        let spec = lora_spec(
            4,
            TargetModules::Names(vec!["q_proj".into(), "v_proj".into(), "down_proj".into()]),
        );
        let qs = q.attach_lora(&spec, 9).unwrap();
        randomize_b(&qs, 2);
        let ds = dense
            .attach_peft(&anymal_llm::PeftAdapter {
                config: serde_json::from_value(qs.peft_config("tiny")).unwrap(),
                tensors: qs.peft_tensors().unwrap(),
            })
            .unwrap();
        let e0 = q.embed_tokens(&ids(2, 6, 5)).unwrap();
        let (lq, gq) = lora_grads(&q, &qs, &e0, true);
        let (ld, gd) = lora_grads(&dense, &ds, &e0, true);
        assert!(
            (lq - ld).abs() / ld.abs() < 0.02,
            "{arch:?}: loss {lq} vs dense {ld}"
        );
        assert_eq!(gq.len(), 6 * c.num_layers);
        for (k, g) in &gd {
            let rel = max_diff(&gq[k], g) / max_abs(g);
            assert!(
                rel < 0.05,
                "{arch:?} {k}: 4-bit vs dense gradient differ by {rel}"
            );
        }
        q.gradient_checkpointing = true;
        for track in [true, false] {
            let (lc, gc) = lora_grads(&q, &qs, &e0, track);
            assert!((lc - lq).abs() < 1e-5 * lq.abs().max(1.0));
            assert_eq!(
                gc.len(),
                gq.len(),
                "{arch:?} (input tracked: {track}): gradients lost under checkpointing"
            );
            for (k, g) in &gq {
                let rel = max_diff(&gc[k], g) / max_abs(g);
                assert!(
                    rel < 1e-4,
                    "{arch:?} {k} (input tracked: {track}): checkpointed gradient differs by {rel}"
                );
            }
        }
    }
}

/// LoRA dropout under gradient checkpointing: the block's re-run in backward draws the masks
/// its forward drew, so the loss and every adapter gradient equal the plain backward's with
/// the same masks (the composed update on Gemma-style blocks, the fused op on q4k layers).
/// Without the rewind the re-run would draw new masks and the gradients would not match.
#[test]
fn lora_dropout_is_replayed_under_checkpointing() {
    for (arch, ty) in [(Arch::Llama, "q4k"), (Arch::Gemma3, "f32")] {
        let c = cfg(arch);
        let mut q = build(&c, &random_weights(&c, 8), ty, DType::F32);
        let mut spec = lora_spec(4, TargetModules::AllLinear);
        spec.cfg.dropout = 0.25;
        let set = q.attach_lora(&spec, 3).unwrap();
        randomize_b(&set, 4);
        let e0 = q.embed_tokens(&ids(2, 6, 7)).unwrap();
        let positions: Vec<u64> = set
            .modules
            .iter()
            .map(|m| m.lora.dropout_position())
            .collect();
        let rewind = || {
            for (m, &p) in set.modules.iter().zip(&positions) {
                m.lora.rewind_dropout(p);
            }
        };
        let (lp, gp) = lora_grads(&q, &set, &e0, true);
        let (l_next, _) = lora_grads(&q, &set, &e0, true);
        assert!(
            (l_next - lp).abs() > 1e-6 * lp.abs(),
            "{arch:?}: the next dropout masks gave the same loss"
        );
        q.gradient_checkpointing = true;
        for track in [true, false] {
            rewind();
            let (lc, gc) = lora_grads(&q, &set, &e0, track);
            assert!(
                (lc - lp).abs() < 1e-5 * lp.abs().max(1.0),
                "{arch:?}: checkpointed loss {lc} vs {lp}"
            );
            assert_eq!(gc.len(), gp.len());
            for (k, g) in &gp {
                let rel = max_diff(&gc[k], g) / max_abs(g);
                assert!(
                    rel < 1e-4,
                    "{arch:?} {k} (input tracked: {track}): checkpointed gradient with dropout differs by {rel}"
                );
            }
        }
    }
}

/// A fresh adapter changes nothing; inference mode builds no graph; merging into f32 weights
/// reproduces the adapter's outputs; PEFT files round-trip; and a GGUF-layout Llama (q/k rows
/// permuted for interleaved RoPE) and its HF-layout twin give the same outputs with the same
/// PEFT adapter, so the files hold HF's layout whatever the model was loaded from.
#[test]
fn lora_identity_merge_peft_round_trip_and_layouts() {
    let c = cfg(Arch::Llama);
    let w = random_weights(&c, 6);
    let mut gguf = build(&c, &w, "f32", DType::F32);
    let input = ids(2, 6, 6);
    let logits = |m: &Llm| {
        let h = m
            .forward_embeds(&m.embed_tokens(&input).unwrap(), 0, None, None)
            .unwrap();
        m.logits(&h).unwrap()
    };
    let base = logits(&gguf);
    let set = gguf
        .attach_lora(&lora_spec(3, TargetModules::AllLinear), 3)
        .unwrap();
    // In inference mode, so both sides take the same (fused) kernels: training mode tracks a
    // graph and runs the unfused ones, which round differently.
    set.set_training(false);
    assert!(
        max_diff(&logits(&gguf), &base) < 1e-6,
        "a fresh adapter must be a no-op"
    );
    randomize_b(&set, 3);
    set.set_training(false);
    let adapted = logits(&gguf);
    assert!(
        !adapted.track_op(),
        "inference mode must not build a graph to the adapters"
    );
    assert!(max_diff(&adapted, &base) > 1e-2);

    // Merge into dense weights.
    let mut merged = gguf.clone();
    for l in merged.layers.iter_mut() {
        let b = std::sync::Arc::make_mut(l);
        for lin in [
            &mut b.attn.q_proj,
            &mut b.attn.k_proj,
            &mut b.attn.v_proj,
            &mut b.attn.o_proj,
            &mut b.mlp.gate_proj,
            &mut b.mlp.up_proj,
            &mut b.mlp.down_proj,
        ] {
            *lin = lin.merge_lora(QuantType::parse("f32").unwrap()).unwrap();
            assert!(lin.lora().is_none());
        }
    }
    let rel = max_diff(&logits(&merged), &adapted) / max_abs(&adapted);
    assert!(
        rel < 1e-5,
        "merged f32 model differs from the adapter by {rel}"
    );

    // PEFT files round trip.
    let dir = std::env::temp_dir().join(format!("anymal-lora-{}", std::process::id()));
    set.save_peft(&dir, "tiny").unwrap();
    let mut again = build(&c, &w, "f32", DType::F32);
    let loaded = again.load_lora(&dir).unwrap();
    loaded.set_training(false);
    assert!(max_diff(&logits(&again), &adapted) / max_abs(&adapted) < 1e-5);

    // HF-layout twin: q/k rows un-permuted, RoPE on halves.
    let mut hc = c.clone();
    hc.rope_interleaved = false;
    let mut hw = w.clone();
    for i in 0..c.num_layers {
        for (n, h) in [("attn_q", c.num_heads), ("attn_k", c.num_kv_heads)] {
            let k = format!("blk.{i}.{n}.weight");
            hw.insert(k.clone(), interleaved_to_hf_rows(&w[&k], h).unwrap());
        }
    }
    let mut hf = build(&hc, &hw, "f32", DType::F32);
    let rel = max_diff(&logits(&hf), &base) / max_abs(&base);
    assert!(
        rel < 1e-3,
        "the HF-layout twin is not the same model ({rel})"
    );
    let on_hf = hf.load_lora(&dir).unwrap();
    on_hf.set_training(false);
    let rel = max_diff(&logits(&hf), &adapted) / max_abs(&adapted);
    assert!(
        rel < 1e-3,
        "the same PEFT adapter gives different outputs on the two layouts ({rel})"
    );
    std::fs::remove_dir_all(&dir).ok();
}
