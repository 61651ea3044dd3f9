//! PEFT interoperability against the real `peft` package: `tests/fixtures/peft/` was written by
//! `scripts/peft/make_fixture.py` (torch + transformers + peft) with the logits peft computed.
//! anymal loads those adapters onto the same base and must reproduce peft's logits; merging
//! must reproduce peft's `merge_and_unload()`. The other direction: this test writes an
//! adapter with anymal plus anymal's logits into `target/peft-export/`, which
//! `scripts/peft/check_anymal_adapter.py` loads with peft (not in CI: it needs torch).
//! Merging into a real GGUF (SmolLM2) at f32 must give exactly the adapter's outputs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anymal_llm::{LoadOptions, LoadedModel};
use anymal_quant::QuantType;
use anymal_util::testing::max_abs_diff;
use candle_core::{DType, Device, Tensor};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft")
}

/// The base with its f32 weights as stored (quantize-on-load would move the logits).
fn base() -> LoadedModel {
    let opts = LoadOptions {
        quant: Some(QuantType::parse("f32").unwrap()),
        ..Default::default()
    };
    anymal_llm::load_model(&fixture().join("base").to_string_lossy(), &opts).unwrap()
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture().join("expected.safetensors"), &Device::Cpu).unwrap()
}

fn logits(m: &LoadedModel, ids: &Tensor) -> Tensor {
    let ids = ids.to_dtype(DType::U32).unwrap();
    let h = m
        .llm
        .forward_embeds(&m.llm.embed_tokens(&ids).unwrap(), 0, None, None)
        .unwrap();
    m.llm.logits(&h).unwrap()
}

#[test]
fn peft_adapters_reproduce_peft_logits() {
    let exp = expected();
    let ids = &exp["input_ids"];
    let mut m = base();
    let d = max_abs_diff(&logits(&m, ids), &exp["logits_base"]);
    assert!(d < 1e-4, "base model differs from transformers by {d}");
    for name in ["adapter_all", "adapter_rslora_qv"] {
        let set = m.llm.load_lora(&fixture().join(name)).unwrap();
        set.set_training(false);
        let want = &exp[&format!("logits_{name}")];
        let d = max_abs_diff(&logits(&m, ids), want);
        let moved = max_abs_diff(want, &exp["logits_base"]);
        eprintln!("{name}: max |anymal - peft| = {d:.2e} (the adapter moves logits by {moved:.2})");
        assert!(moved > 0.1, "the fixture adapter must change the outputs");
        assert!(
            d < 1e-4,
            "{name}: anymal's logits differ from peft's by {d}"
        );
    }
}

#[test]
fn merged_safetensors_match_peft_merge_and_unload() {
    let exp = expected();
    let mut m = base();
    m.llm
        .load_lora(&fixture().join("adapter_all"))
        .unwrap()
        .set_training(false);
    let dir = std::env::temp_dir().join(format!("anymal-peft-merge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(fixture().join("base").join(f), dir.join(f)).unwrap();
    }
    let n = anymal::merge::write_merged_safetensors(&m, &dir.join("model.safetensors")).unwrap();
    assert_eq!(n, 14, "7 modules x 2 layers merged");
    let opts = LoadOptions {
        quant: Some(QuantType::parse("f32").unwrap()),
        ..Default::default()
    };
    let merged = anymal_llm::load_model(&dir.to_string_lossy(), &opts).unwrap();
    // f16 storage: compare at f16's resolution.
    let d = max_abs_diff(
        &logits(&merged, &exp["input_ids"]),
        &exp["logits_merged_all"],
    );
    assert!(
        d < 2e-2,
        "merged f16 safetensors differ from peft's merge_and_unload by {d}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// An adapter written by anymal, in the layout and names peft expects, with anymal's logits
/// beside it for `scripts/peft/check_anymal_adapter.py`.
#[test]
fn anymal_writes_adapters_peft_can_read() {
    let mut m = base();
    let spec = anymal_llm::LoraSpec {
        cfg: anymal_quant::LoraConfig {
            r: 6,
            alpha: 12.0,
            dropout: 0.0,
            use_rslora: true,
        },
        targets: anymal_llm::TargetModules::Names(vec![
            "q_proj".into(),
            "k_proj".into(),
            "down_proj".into(),
        ]),
    };
    let set = m.llm.attach_lora(&spec, 11).unwrap();
    // A fresh adapter is a no-op (B = 0); give B values as training would.
    for (k, module) in set.modules.iter().enumerate() {
        let b = Tensor::randn(0f32, 0.3, module.lora.b.shape(), &Device::Cpu).unwrap();
        let b = (b + k as f64 * 0.01).unwrap();
        module.lora.b.set(&b).unwrap();
    }
    set.set_training(false);
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/peft-export");
    let _ = std::fs::remove_dir_all(&out);
    set.save_peft(&out, "tests/fixtures/peft/base").unwrap();
    let ids = expected()["input_ids"].clone();
    let lg = logits(&m, &ids);
    let mut t = HashMap::new();
    t.insert("input_ids".to_string(), ids.clone());
    t.insert("logits".to_string(), lg.clone());
    candle_core::safetensors::save(&t, out.join("anymal_logits.safetensors")).unwrap();

    // The files hold exactly peft's key set, and read back to the same model.
    let stored =
        candle_core::safetensors::load(out.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(stored.len(), 2 * 3 * 2);
    for k in stored.keys() {
        assert!(
            k.starts_with("base_model.model.model.layers.")
                && (k.ends_with(".lora_A.weight") || k.ends_with(".lora_B.weight")),
            "{k}"
        );
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 6);
    assert_eq!(cfg["use_rslora"], true);
    let mut again = base();
    again.llm.load_lora(&out).unwrap().set_training(false);
    assert!(max_abs_diff(&logits(&again, &ids), &lg) < 1e-6);
    eprintln!(
        "wrote {}; check with: python scripts/peft/check_anymal_adapter.py --base tests/fixtures/peft/base {}",
        out.display(),
        out.display()
    );
}

#[test]
fn bad_adapters_are_named() {
    let dir = std::env::temp_dir().join(format!("anymal-peft-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture().join("adapter_all");
    let mut m = base();
    // Missing folder / files.
    let e = m.llm.load_lora(&dir.join("nope")).unwrap_err().to_string();
    assert!(e.contains("adapter_config.json"), "{e}");
    // DoRA is refused rather than applied as plain LoRA.
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(src.join("adapter_config.json")).unwrap();
    std::fs::write(
        dir.join("adapter_config.json"),
        cfg.replace("\"use_dora\": false", "\"use_dora\": true"),
    )
    .unwrap();
    let e = m.llm.load_lora(&dir).unwrap_err().to_string();
    assert!(e.contains("use_dora"), "{e}");
    // A rank that does not match the tensors.
    std::fs::write(
        dir.join("adapter_config.json"),
        cfg.replace("\"r\": 4", "\"r\": 5"),
    )
    .unwrap();
    let e = m.llm.load_lora(&dir).unwrap_err().to_string();
    assert!(e.contains("r is 5"), "{e}");
    // Corrupt JSON.
    std::fs::write(dir.join("adapter_config.json"), "{ not json").unwrap();
    let e = m.llm.load_lora(&dir).unwrap_err().to_string();
    assert!(e.contains("adapter_config.json"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Merging into the real SmolLM2 GGUF at f32 reproduces the adapter model's logits exactly
/// (the other tensors and the metadata are copied, so the file loads as the original does).
#[test]
fn gguf_merge_at_f32_is_exact() {
    let f32_opts = LoadOptions {
        quant: Some(QuantType::parse("f32").unwrap()),
        ..Default::default()
    };
    let mut m = anymal_llm::load_model("smollm2", &Default::default())
        .unwrap_or_else(|e| panic!("{e} (run scripts/fetch-assets.sh)"));
    let spec = anymal_llm::LoraSpec {
        cfg: anymal_quant::LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            use_rslora: false,
        },
        targets: anymal_llm::TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]),
    };
    let set = m.llm.attach_lora(&spec, 5).unwrap();
    // Seeded: with an unseeded B the f32 rounding of W + BA against W x + (x A) B now and then
    // drifted past the bound below.
    let mut rng = anymal_util::rng::SplitMix64::new(11);
    for module in &set.modules {
        let shape = module.lora.b.shape().clone();
        let v: Vec<f32> = (0..shape.elem_count())
            .map(|_| rng.normal(0.0, 0.05) as f32)
            .collect();
        module
            .lora
            .b
            .set(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap())
            .unwrap();
    }
    set.set_training(false);
    let dir = std::env::temp_dir().join(format!("anymal-gguf-merge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    set.save_peft(&dir.join("lora"), "smollm2").unwrap();
    let out = dir.join("merged.gguf");
    let n =
        anymal::merge::write_merged_gguf(&m, Some(QuantType::parse("f32").unwrap()), &out).unwrap();
    assert_eq!(n, 60);
    let mut exact = anymal_llm::load_model("smollm2", &f32_opts).unwrap();
    exact
        .llm
        .load_lora(&dir.join("lora"))
        .unwrap()
        .set_training(false);
    let merged = anymal_llm::load_model(&out.to_string_lossy(), &f32_opts).unwrap();
    assert_eq!(
        merged.tokenizer.eos_id, exact.tokenizer.eos_id,
        "metadata copied"
    );
    let drift =
        anymal::merge::logit_drift(&exact, &merged, &["Please enter your password."]).unwrap();
    assert!(
        drift[0].max_abs < 1e-3,
        "f32 merge drifted by {}",
        drift[0].max_abs
    );
    assert!(drift[0].same_top1);
    std::fs::remove_dir_all(&dir).ok();
}
