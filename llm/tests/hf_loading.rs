//! Loading an HF folder (config.json + safetensors + tokenizer.json) with quantize-on-load, and
//! resolving hub ids in the local HF cache. The reference is the same weights laid out as GGUF
//! files lay them out (llama.cpp's converter permutes Llama's q/k rows for interleaved RoPE and
//! stores Gemma's norms as 1 + w).

use std::collections::HashMap;
use std::path::Path;

use anymal_llm::config::Arch;
use anymal_llm::weights::{RawWeight, WeightStore};
use anymal_llm::{load_model, LoadOptions};
use anymal_quant::QuantType;
use anymal_util::testing::max_abs_diff;
use candle_core::{Device, Tensor};

const TOKENIZER_JSON: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","vocab":{"<unk>":0,"hello":1,"world":2},"unk_token":"<unk>"}}"#;

fn randn(shape: (usize, usize), seed: u64) -> Tensor {
    let v: Vec<f32> = (0..shape.0 * shape.1)
        .map(|i| {
            let x = ((i as u64 + 1) * 2654435761 + seed * 97) % 10007;
            (x as f32 / 10007.0 - 0.5) * 0.2
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// llama.cpp's `permute` for q/k rows: (heads, 2, hd/2, d) -> (heads, hd/2, 2, d).
fn permute(w: &Tensor, heads: usize) -> Tensor {
    let (out, d) = w.dims2().unwrap();
    w.reshape((heads, 2, out / heads / 2, d))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((out, d))
        .unwrap()
}

fn run(arch: Arch) {
    let (d, f, h, kv, hd, vocab, layers) =
        (256usize, 512usize, 4usize, 2usize, 64usize, 3usize, 2usize);
    let gemma = arch == Arch::Gemma3;
    let dir = std::env::temp_dir().join(format!("anymal-hf-{}-{:?}", std::process::id(), arch));
    std::fs::create_dir_all(&dir).unwrap();
    let mut hf: HashMap<String, Tensor> = HashMap::new();
    let mut k = 0u64;
    let mut next = |shape| {
        k += 1;
        randn(shape, k)
    };
    hf.insert("model.embed_tokens.weight".into(), next((vocab, d)));
    hf.insert("model.norm.weight".into(), next((1, d)).squeeze(0).unwrap());
    for i in 0..layers {
        let p = |n: &str| format!("model.layers.{i}.{n}");
        hf.insert(p("self_attn.q_proj.weight"), next((h * hd, d)));
        hf.insert(p("self_attn.k_proj.weight"), next((kv * hd, d)));
        hf.insert(p("self_attn.v_proj.weight"), next((kv * hd, d)));
        hf.insert(p("self_attn.o_proj.weight"), next((d, h * hd)));
        hf.insert(p("mlp.gate_proj.weight"), next((f, d)));
        hf.insert(p("mlp.up_proj.weight"), next((f, d)));
        hf.insert(p("mlp.down_proj.weight"), next((d, f)));
        hf.insert(
            p("input_layernorm.weight"),
            next((1, d)).squeeze(0).unwrap(),
        );
        hf.insert(
            p("post_attention_layernorm.weight"),
            next((1, d)).squeeze(0).unwrap(),
        );
        if gemma {
            hf.insert(
                p("pre_feedforward_layernorm.weight"),
                next((1, d)).squeeze(0).unwrap(),
            );
            hf.insert(
                p("post_feedforward_layernorm.weight"),
                next((1, d)).squeeze(0).unwrap(),
            );
            hf.insert(
                p("self_attn.q_norm.weight"),
                next((1, hd)).squeeze(0).unwrap(),
            );
            hf.insert(
                p("self_attn.k_norm.weight"),
                next((1, hd)).squeeze(0).unwrap(),
            );
        }
    }
    candle_core::safetensors::save(&hf, dir.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "model_type": if gemma { "gemma3_text" } else { "llama" },
        "vocab_size": vocab, "hidden_size": d, "intermediate_size": f, "num_hidden_layers": layers,
        "num_attention_heads": h, "num_key_value_heads": kv, "head_dim": hd, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "sliding_window": 512, "query_pre_attn_scalar": hd,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), TOKENIZER_JSON).unwrap();

    // Through the HF hub cache layout, by id.
    let hub = dir.join("hfhome").join("hub").join("models--tiny--model");
    let snap = hub.join("snapshots").join("0123abc");
    std::fs::create_dir_all(&snap).unwrap();
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        std::fs::copy(dir.join(f), snap.join(f)).unwrap();
    }
    std::fs::create_dir_all(hub.join("refs")).unwrap();
    std::fs::write(hub.join("refs").join("main"), "0123abc").unwrap();

    let opts = LoadOptions {
        quant: Some(QuantType::parse("f32").unwrap()),
        ..Default::default()
    };
    let from_dir = load_model(dir.to_str().unwrap(), &opts).unwrap();
    assert_eq!(
        from_dir
            .tokenizer
            .encode("hello world", false, false)
            .unwrap(),
        vec![1, 2]
    );

    // The GGUF convention, built directly.
    let mut g: HashMap<String, RawWeight> = HashMap::new();
    for (name, t) in &hf {
        let gname = anymal_llm::weights::hf_to_gguf_name(name, arch).unwrap();
        let t = if !gemma && name.ends_with("q_proj.weight") {
            permute(t, h)
        } else if !gemma && name.ends_with("k_proj.weight") {
            permute(t, kv)
        } else if gemma && name.ends_with("norm.weight") {
            (t + 1.0).unwrap()
        } else {
            t.clone()
        };
        g.insert(gname, RawWeight::Dense(t));
    }
    let mut cfg = from_dir.llm.cfg.clone();
    cfg.rope_interleaved = !gemma;
    let reference = WeightStore::new(Path::new("<ref>"), g, opts.quant, &Device::Cpu)
        .build_llm(cfg, 0.0)
        .unwrap();

    let ids = Tensor::new(&[[1u32, 2, 1, 1, 2, 0, 1]], &Device::Cpu).unwrap();
    let a = from_dir
        .llm
        .logits(
            &from_dir
                .llm
                .forward_embeds(&from_dir.llm.embed_tokens(&ids).unwrap(), 0, None, None)
                .unwrap(),
        )
        .unwrap();
    let b = reference
        .logits(
            &reference
                .forward_embeds(&reference.embed_tokens(&ids).unwrap(), 0, None, None)
                .unwrap(),
        )
        .unwrap();
    let diff = max_abs_diff(&a, &b);
    // The embedding table goes to Q8_0 on load in both; everything else is f32.
    assert!(
        diff < 1e-3,
        "{arch:?}: HF folder and GGUF layout differ by {diff}"
    );

    // Quantize-on-load defaults to Q4K.
    let q = load_model(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(
        q.llm.layers[0].mlp.up_proj.quant_type(),
        QuantType::parse("q4k").unwrap()
    );
    assert_eq!(
        q.llm.embed_tokens.dtype(),
        candle_core::quantized::GgmlDType::Q8_0
    );

    // By hub id, from the local cache (one test only: the variable is process-wide).
    if gemma {
        return;
    }
    std::env::set_var("HF_HOME", dir.join("hfhome"));
    let by_id = anymal_llm::loader::resolve_model_ref("tiny/model").unwrap();
    assert_eq!(by_id, snap);
    let err = anymal_llm::loader::resolve_model_ref("tiny/absent")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not in the local HF cache"), "{err}");
}

#[test]
fn hf_llama_folder_matches_gguf_layout() {
    run(Arch::Llama);
}

#[test]
fn hf_gemma3_folder_matches_gguf_layout() {
    run(Arch::Gemma3);
}
