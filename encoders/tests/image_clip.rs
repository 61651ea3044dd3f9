//! CLIP and SigLIP vision towers from Hugging Face folders. No pretrained CLIP ships with the
//! project, so each test writes a small random model in the exact HF layout (tensor names,
//! `config.json` as `transformers` writes it) to a temp folder and loads it like a real one.
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anymal_encoders::image::{
    load_image, load_image_encoder, preprocess, ClipVisionEncoder, ImageEncoder, ResizeMode,
    VisionTowerKind,
};
use anymal_encoders::Error;
use anymal_util::testing::max_abs_diff;
use candle_core::{DType, Device, Tensor};
use common::asset;

const D: usize = 32;
const INTER: usize = 64;
const LAYERS: usize = 3;
const IMAGE: usize = 32;
const PATCH: usize = 8;
const N_PATCHES: usize = (IMAGE / PATCH) * (IMAGE / PATCH);

fn tmp(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("anymal-clip-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn randn(shape: &[usize], std: f64) -> Tensor {
    Tensor::randn(0f32, std as f32, shape, &Device::Cpu).unwrap()
}

/// Encoder layers as both CLIP and SigLIP name them.
fn encoder_layers(t: &mut HashMap<String, Tensor>) {
    for i in 0..LAYERS {
        let p = format!("vision_model.encoder.layers.{i}");
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            t.insert(format!("{p}.self_attn.{proj}.weight"), randn(&[D, D], 0.2));
            t.insert(format!("{p}.self_attn.{proj}.bias"), randn(&[D], 0.02));
        }
        for ln in ["layer_norm1", "layer_norm2"] {
            t.insert(
                format!("{p}.{ln}.weight"),
                (randn(&[D], 0.1) + 1.0).unwrap(),
            );
            t.insert(format!("{p}.{ln}.bias"), randn(&[D], 0.1));
        }
        t.insert(format!("{p}.mlp.fc1.weight"), randn(&[INTER, D], 0.2));
        t.insert(format!("{p}.mlp.fc1.bias"), randn(&[INTER], 0.02));
        t.insert(format!("{p}.mlp.fc2.weight"), randn(&[D, INTER], 0.2));
        t.insert(format!("{p}.mlp.fc2.bias"), randn(&[D], 0.02));
    }
    t.insert(
        "vision_model.post_layernorm.weight".into(),
        Tensor::ones(D, DType::F32, &Device::Cpu).unwrap(),
    );
    t.insert(
        "vision_model.post_layernorm.bias".into(),
        Tensor::zeros(D, DType::F32, &Device::Cpu).unwrap(),
    );
}

/// A full `CLIPModel` checkpoint (vision + a stub of the text side, which must be ignored),
/// with the nested `vision_config` HF writes.
fn write_clip(dir: &Path, with_class_embedding: bool) {
    let mut t = HashMap::new();
    if with_class_embedding {
        t.insert(
            "vision_model.embeddings.class_embedding".to_string(),
            randn(&[D], 1.0),
        );
    }
    t.insert(
        "vision_model.embeddings.patch_embedding.weight".into(),
        randn(&[D, 3, PATCH, PATCH], 0.1),
    );
    t.insert(
        "vision_model.embeddings.position_embedding.weight".into(),
        randn(&[N_PATCHES + 1, D], 0.5),
    );
    // HF spells it "pre_layrnorm".
    t.insert(
        "vision_model.pre_layrnorm.weight".into(),
        Tensor::ones(D, DType::F32, &Device::Cpu).unwrap(),
    );
    t.insert(
        "vision_model.pre_layrnorm.bias".into(),
        Tensor::zeros(D, DType::F32, &Device::Cpu).unwrap(),
    );
    encoder_layers(&mut t);
    t.insert(
        "text_model.embeddings.token_embedding.weight".into(),
        randn(&[10, D], 1.0),
    );
    t.insert("visual_projection.weight".into(), randn(&[16, D], 0.1));
    t.insert(
        "logit_scale".into(),
        Tensor::new(2.6592f32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "initializer_factor": 1.0,
        "logit_scale_init_value": 2.6592,
        "projection_dim": 16,
        "torch_dtype": "float32",
        "transformers_version": "4.44.0",
        "text_config": {
            "model_type": "clip_text_model", "hidden_size": D, "intermediate_size": INTER,
            "num_attention_heads": 4, "num_hidden_layers": 1, "vocab_size": 10
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": D,
            "intermediate_size": INTER,
            "num_attention_heads": 4,
            "num_hidden_layers": LAYERS,
            "image_size": IMAGE,
            "patch_size": PATCH,
            "projection_dim": 16,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-05,
            "dropout": 0.0,
            "attention_dropout": 0.0
        }
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
}

/// A `SiglipVisionModel` checkpoint: vision-only config at the top level, the attention-pool
/// head's tensors present (they must be ignored).
fn write_siglip(dir: &Path) {
    let mut t = HashMap::new();
    t.insert(
        "vision_model.embeddings.patch_embedding.weight".to_string(),
        randn(&[D, 3, PATCH, PATCH], 0.1),
    );
    t.insert(
        "vision_model.embeddings.patch_embedding.bias".into(),
        randn(&[D], 0.02),
    );
    t.insert(
        "vision_model.embeddings.position_embedding.weight".into(),
        randn(&[N_PATCHES, D], 0.5),
    );
    encoder_layers(&mut t);
    t.insert("vision_model.head.probe".into(), randn(&[1, 1, D], 1.0));
    t.insert(
        "vision_model.head.mlp.fc1.weight".into(),
        randn(&[INTER, D], 0.1),
    );
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "architectures": ["SiglipVisionModel"],
        "model_type": "siglip_vision_model",
        "hidden_size": D,
        "intermediate_size": INTER,
        "num_attention_heads": 4,
        "num_hidden_layers": LAYERS,
        "image_size": IMAGE,
        "patch_size": PATCH,
        "num_channels": 3,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-06,
        "attention_dropout": 0.0,
        "torch_dtype": "float32",
        "transformers_version": "4.44.0"
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
}

/// Shapes, determinism, and that the tokens depend on the pixels (per image of the batch).
fn check_tokens(enc: &dyn ImageEncoder, n_tokens: usize) {
    let x = Tensor::randn(0f32, 1., (2, 3, IMAGE, IMAGE), &Device::Cpu).unwrap();
    let y = enc.encode(&x).unwrap();
    assert_eq!(y.dims(), &[2, n_tokens, D], "{}", enc.id());
    assert!(y
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_finite()));
    assert_eq!(
        max_abs_diff(&y, &enc.encode(&x).unwrap()),
        0.0,
        "deterministic"
    );
    // Change image 1 only: its tokens move, image 0's do not.
    let x2 = Tensor::cat(
        &[
            x.narrow(0, 0, 1).unwrap(),
            (x.narrow(0, 1, 1).unwrap() * -1.0).unwrap(),
        ],
        0,
    )
    .unwrap();
    let y2 = enc.encode(&x2).unwrap();
    assert!(max_abs_diff(&y.get(0).unwrap(), &y2.get(0).unwrap()) < 1e-5);
    assert!(max_abs_diff(&y.get(1).unwrap(), &y2.get(1).unwrap()) > 1e-2);
    // Different patches of one image give different tokens.
    let t = y.get(0).unwrap();
    assert!(max_abs_diff(&t.get(n_tokens - 2).unwrap(), &t.get(n_tokens - 1).unwrap()) > 1e-3);
    // A wrong input size is an error, not a panic inside candle.
    let wrong = Tensor::zeros((1, 3, IMAGE + PATCH, IMAGE), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(enc.encode(&wrong), Err(Error::InvalidArgument(_))));
}

#[test]
fn clip_tower_from_hf_folder() {
    let dir = tmp("clip");
    write_clip(&dir, true);
    let enc = ClipVisionEncoder::load(&dir, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(enc.kind(), VisionTowerKind::Clip);
    assert_eq!(enc.hidden_size(), D);
    assert_eq!(enc.num_tokens(), N_PATCHES + 1);
    assert!(enc.id().starts_with("clip-vit-32-3-p8-32-"), "{}", enc.id());
    let cfg = enc.preprocess_config();
    assert_eq!(
        (cfg.size, cfg.resize),
        (IMAGE, ResizeMode::ShortestSideCenterCrop)
    );
    assert!((cfg.mean[0] - 0.481_454_66).abs() < 1e-6);
    check_tokens(&enc, N_PATCHES + 1);

    // LLaVA's selection: penultimate layer, patches only; a different id, different features.
    let x = Tensor::randn(0f32, 1., (1, 3, IMAGE, IMAGE), &Device::Cpu).unwrap();
    let last = enc.encode(&x).unwrap();
    let base_id = enc.id().to_string();
    let llava = enc.with_feature_select(-2, false).unwrap();
    assert_eq!(llava.id(), format!("{base_id}-l-2-nocls"));
    assert_eq!(llava.num_tokens(), N_PATCHES);
    let pen = llava.encode(&x).unwrap();
    assert_eq!(pen.dims(), &[1, N_PATCHES, D]);
    assert!(max_abs_diff(&pen, &last.narrow(1, 1, N_PATCHES).unwrap()) > 1e-3);
    assert!(llava
        .with_feature_select(LAYERS as isize + 1, true)
        .is_err());

    // Through the generic loader, on a real photo with the tower's own preprocessing.
    let enc = load_image_encoder(&dir, &Device::Cpu).unwrap();
    assert_eq!(enc.id(), base_id);
    let img = load_image(&asset("data/photos/astronaut.png", "photos")).unwrap();
    let px = preprocess(&[img], enc.preprocess_config()).unwrap();
    assert_eq!(enc.encode(&px).unwrap().dims(), &[1, N_PATCHES + 1, D]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn siglip_tower_from_hf_folder() {
    let dir = tmp("siglip");
    write_siglip(&dir);
    // A processor config overrides the family's statistics.
    std::fs::write(
        dir.join("preprocessor_config.json"),
        r#"{"image_processor_type": "SiglipImageProcessor", "image_mean": [0.4, 0.5, 0.6], "image_std": [0.5, 0.5, 0.5], "size": {"height": 32, "width": 32}}"#,
    )
    .unwrap();
    let enc = ClipVisionEncoder::load(&dir, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(enc.kind(), VisionTowerKind::Siglip);
    assert!(
        enc.id().starts_with("siglip-vit-32-3-p8-32-"),
        "{}",
        enc.id()
    );
    let cfg = enc.preprocess_config();
    assert_eq!((cfg.size, cfg.resize), (IMAGE, ResizeMode::Stretch));
    assert_eq!(cfg.mean, [0.4, 0.5, 0.6]);
    check_tokens(&enc, N_PATCHES);
    // SigLIP has no CLS and exposes only its last layer.
    assert!(enc.with_feature_select(-2, false).is_err());
    let enc = load_image_encoder(&dir, &Device::Cpu).unwrap();
    assert_eq!(enc.hidden_size(), D);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn broken_folders_are_errors_naming_the_file() {
    // No class embedding: candle would silently substitute random numbers; we refuse.
    let dir = tmp("noclass");
    write_clip(&dir, false);
    let e = ClipVisionEncoder::load(&dir, &Device::Cpu)
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("class_embedding"),
        "{e}"
    );

    // A tensor of the wrong shape.
    let mut t =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    t.insert(
        "vision_model.embeddings.class_embedding".into(),
        randn(&[D + 1], 1.0),
    );
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    let e = ClipVisionEncoder::load(&dir, &Device::Cpu)
        .err()
        .expect("must fail")
        .to_string();
    assert!(e.contains("model.safetensors"), "{e}");

    // An unknown model_type, and a config that is not JSON.
    std::fs::write(dir.join("config.json"), r#"{"model_type": "vit"}"#).unwrap();
    let e = load_image_encoder(&dir, &Device::Cpu)
        .err()
        .expect("must fail")
        .to_string();
    assert!(e.contains("config.json") && e.contains("vit"), "{e}");
    std::fs::write(dir.join("config.json"), "{not json").unwrap();
    let e = load_image_encoder(&dir, &Device::Cpu)
        .err()
        .expect("must fail")
        .to_string();
    assert!(e.contains("config.json"), "{e}");

    // No weights at all.
    let empty = tmp("empty");
    write_siglip(&empty);
    std::fs::remove_file(empty.join("model.safetensors")).unwrap();
    let e = load_image_encoder(&empty, &Device::Cpu)
        .err()
        .expect("must fail")
        .to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    // Unsupported activation for candle's CLIP.
    write_clip(&empty, true);
    let cfg = std::fs::read_to_string(empty.join("config.json"))
        .unwrap()
        .replace("quick_gelu", "gelu");
    std::fs::write(empty.join("config.json"), cfg).unwrap();
    let e = load_image_encoder(&empty, &Device::Cpu)
        .err()
        .expect("must fail")
        .to_string();
    assert!(e.contains("config.json") && e.contains("gelu"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(&empty).ok();
}
