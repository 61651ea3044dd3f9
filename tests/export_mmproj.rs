//! `anymal export --format mmproj` against llama.cpp itself, run by its `llama-mtmd-cli`
//! (built from the llama-cpp-python 0.3.36 sdist by scripts/fixtures/make_mmproj_fixtures.sh):
//! - audio: a trained Ultravox projector (tests/fixtures/mmproj/projector: Whisper tiny.en,
//!   full-window context, stack 10) on three real 16 kHz clips;
//! - images: `mlp2x_gelu` projectors trained over small random-weight SigLIP and CLIP towers
//!   in the Hugging Face layout (tests/fixtures/mmproj-image, by
//!   scripts/fixtures/make_mmproj_image_fixtures.sh) on three real photos at the towers' size.
//!
//! The scripts recorded llama.cpp's media embeddings (`MTMD_DEBUG_EMBEDDINGS`) and greedy
//! answers; here the same exports are written again and anymal's own embeddings and answers
//! are checked against them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anymal::conversation::{Role, Turn};
use anymal::multimodal::{ModelSpec, MultimodalModel};
use anymal::splice::build_batch;
use anymal_encoders::ModalityRegistry;
use anymal_llm::{Sampler, SamplingConfig};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::{Device, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mmproj")
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("llama_cpp.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `[i32 n_tokens][i32 n_embd][f32 ...]`, as llama.cpp's `MTMD_DEBUG_EMBEDDINGS` writes them.
fn read_embeddings(path: &Path) -> (usize, usize, Vec<f32>) {
    let b = std::fs::read(path).unwrap();
    let n = i32::from_le_bytes(b[0..4].try_into().unwrap()) as usize;
    let d = i32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
    let v: Vec<f32> = b[8..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(v.len(), n * d, "{}", path.display());
    (n, d, v)
}

fn anymal(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_anymal"))
        .args(args)
        .output()
        .unwrap()
}

/// `anymal export --type f32` of `projector` to `out`: its report and the file's contents.
fn export_f32(projector: &Path, out: &Path) -> (String, gguf_file::Content) {
    let o = anymal(&[
        "export",
        "--run",
        projector.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--type",
        "f32",
    ]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    let content = gguf_file::Content::read(&mut std::fs::File::open(out).unwrap()).unwrap();
    (err, content)
}

/// Each key is a u32 (the type llama.cpp's loader asserts) of the value given.
fn assert_u32s(md: &std::collections::HashMap<String, Value>, want: &[(&str, u32)]) {
    for (key, want) in want {
        assert!(
            matches!(md.get(*key), Some(Value::U32(v)) if v == want),
            "{key}: {:?}",
            md.get(*key)
        );
    }
}

/// A copy of the projector folder `src` under `dir/name` with its `projector.json` edited.
fn variant(src: &Path, dir: &Path, name: &str, edit: &dyn Fn(&mut serde_json::Value)) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(&p).unwrap();
    std::fs::copy(
        src.join("projector.safetensors"),
        p.join("projector.safetensors"),
    )
    .unwrap();
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("projector.json")).unwrap())
            .unwrap();
    edit(&mut c);
    std::fs::write(p.join("projector.json"), c.to_string()).unwrap();
    p
}

/// `export --run run` fails naming `want`, and writes nothing to `out`.
fn assert_refused(run: &Path, out: &Path, want: &str) {
    let o = anymal(&[
        "export",
        "--run",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains(want),
        "{}: {err}",
        run.display()
    );
    assert!(!out.exists());
}

#[test]
fn exported_mmproj_matches_llama_cpp() {
    let doc = reference();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("adapter.mmproj.gguf");
    let projector = fixtures().join("projector");
    let (_, content) = export_f32(&projector, &out);

    // The metadata llama.cpp's loader asserts, with the types it asserts.
    let md = &content.metadata;
    assert!(matches!(
        md.get("clip.has_audio_encoder"),
        Some(Value::Bool(true))
    ));
    assert!(matches!(md.get("clip.projector_type"), Some(Value::String(s)) if s == "ultravox"));
    assert_u32s(
        md,
        &[
            ("clip.audio.embedding_length", 384),
            ("clip.audio.feed_forward_length", 1536),
            ("clip.audio.block_count", 4),
            ("clip.audio.attention.head_count", 6),
            ("clip.audio.num_mel_bins", 80),
            ("clip.audio.projection_dim", 576),
            ("clip.audio.projector.stack_factor", 10),
        ],
    );
    assert!(matches!(
        md.get("clip.audio.attention.layer_norm_epsilon"),
        Some(Value::F32(_))
    ));
    // No key bias (llama.cpp's Whisper graph asserts there is none), every other one there.
    let names = &content.tensor_infos;
    assert!(!names.contains_key("a.blk.0.attn_k.bias"));
    for n in [
        "a.blk.3.attn_q.bias",
        "a.blk.3.attn_v.bias",
        "a.post_ln.weight",
        "mm.a.mlp.2.weight",
    ] {
        assert!(names.contains_key(n), "{n} missing");
    }
    assert_eq!(names.len(), doc["tensors"].as_u64().unwrap() as usize);

    // anymal's media embeddings against llama.cpp's, clip by clip; then the LLM side: given
    // llama.cpp's embeddings, anymal's splice and LLM answer as llama.cpp did.
    let spec = ModelSpec {
        projectors: vec![projector.clone()],
        chat_template: Some(false),
        feature_cache: Some(false),
        ..Default::default()
    };
    let model = MultimodalModel::load(&ModalityRegistry::with_builtins(), &spec).unwrap();
    let adapter = &model.adapters[0];
    let tol = doc["tolerance"].as_f64().unwrap() as f32;
    for clip in doc["clips"].as_array().unwrap() {
        let wav = fixtures().join(clip["audio"].as_str().unwrap());
        let emb = fixtures().join(clip["embeddings"].as_str().unwrap());
        let feats = adapter
            .source
            .get_files(&[wav.as_path()])
            .pop()
            .unwrap()
            .unwrap();
        let mine = adapter
            .projector
            .forward_items(&[feats])
            .unwrap()
            .pop()
            .unwrap();
        // The answers: from llama.cpp's own embeddings (the splice and the LLM alone), and
        // from anymal's (the whole path, as `anymal generate` answers).
        let theirs = check_embeddings(&emb, "anymal", &mine, tol);
        check_answers(
            &model,
            &[
                ("llama.cpp's embeddings", &theirs),
                ("anymal's embeddings", &mine),
            ],
            clip["llama_cpp_answer"].as_str().unwrap(),
            clip["n_predict"].as_u64().unwrap() as usize,
            &wav.display().to_string(),
        );
    }
}

/// `said` (token `ids`) is llama.cpp's answer, or parts from it at a near-tie in anymal's own
/// logits (both run 4-bit kernels of their own, with activations quantized differently).
fn check_answer(
    model: &MultimodalModel,
    question: &[Turn],
    media: &Tensor,
    ids: &[u32],
    said: &str,
    llama_cpp: &str,
    at: &str,
) {
    if said == llama_cpp {
        eprintln!("  {at}: the same {} tokens", ids.len());
        return;
    }
    let tok = &model.model.tokenizer;
    let theirs = tok.encode(llama_cpp, false, false).unwrap();
    let k = ids.iter().zip(&theirs).take_while(|(a, b)| a == b).count();
    assert!(
        k < ids.len().min(theirs.len()),
        "{at}: the same tokens but different text ({said:?} vs {llama_cpp:?})"
    );
    let (gap, p_gap) = logit_gap(model, question, media, &ids[..k], ids[k], theirs[k]);
    eprintln!(
        "  {at}: part after {k} of {} tokens: anymal {:?} vs llama.cpp {:?}, anymal's logit gap {gap:.3} (probabilities {p_gap:.3} apart)",
        ids.len(),
        tok.decode(&ids[k..=k]).unwrap(),
        tok.decode(&theirs[k..=k]).unwrap()
    );
    assert!(
        p_gap <= NEAR_TIE,
        "{at}: answers part after {k} tokens with probabilities {p_gap} apart, a logit gap of {gap} ({said:?} vs {llama_cpp:?})"
    );
}

/// The largest gap between the probabilities of anymal's and llama.cpp's token where they
/// part, in anymal's softmax, that counts as a near-tie: the tolerance on probabilities
/// llm/tests/llama_cpp_reference.rs holds anymal's LLM to against llama.cpp's on text prompts
/// (measured there: at most 0.16). Measured where the fixtures' answers part: logit gaps of
/// -0.07 to 0.31 nats, probabilities at most 0.035 apart (flat spots: the top four tokens
/// within a nat); a wrong splice, scale or position parts them at the first token by several
/// nats (a probability gap near 1).
const NEAR_TIE: f32 = 0.25;

/// anymal's logit of `mine` minus that of `theirs` after the question with `media` and the
/// answer tokens `prefix`, and the same for their probabilities.
fn logit_gap(
    model: &MultimodalModel,
    question: &[Turn],
    media: &Tensor,
    prefix: &[u32],
    mine: u32,
    theirs: u32,
) -> (f32, f32) {
    let llm = &model.model.llm;
    let r = model.format().render(question).unwrap();
    let prompt = build_batch(llm, &[r.example], &[vec![media.clone()]])
        .unwrap()
        .inputs_embeds;
    let ids = Tensor::new(prefix, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let answer = llm
        .embed_tokens(&ids)
        .unwrap()
        .to_dtype(prompt.dtype())
        .unwrap();
    let xs = Tensor::cat(&[&prompt, &answer], 1).unwrap();
    let t = xs.dim(1).unwrap();
    let h = llm.forward_embeds(&xs, 0, None, None).unwrap();
    let logits: Vec<f32> = llm
        .logits(&h.narrow(1, t - 1, 1).unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]));
    let top: Vec<String> = order[..4]
        .iter()
        .map(|&i| {
            format!(
                "{:?} {:.3}",
                model.model.tokenizer.decode(&[i as u32]).unwrap(),
                logits[i]
            )
        })
        .collect();
    eprintln!("  anymal's top 4 there: {}", top.join(", "));
    let max = logits[order[0]];
    let z: f32 = logits.iter().map(|l| (l - max).exp()).sum();
    let p = |i: u32| (logits[i as usize] - max).exp() / z;
    (
        logits[mine as usize] - logits[theirs as usize],
        p(mine) - p(theirs),
    )
}

/// What llama.cpp cannot run is refused in one line naming the reason; nothing is overwritten.
#[test]
fn export_refuses_what_llama_cpp_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("projector");
    let d = dir.path();
    let out = d.join("out.gguf");
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            variant(&src, d, "linear", &|c| c["kind"] = "linear".into()),
            "projector kind 'linear' has no llama.cpp equivalent",
        ),
        (
            variant(&src, d, "stack8", &|c| c["reduce"]["n"] = 8.into()),
            "stack factor 8 does not divide a window's 1500 frames",
        ),
        (
            variant(&src, d, "video", &|c| c["modality"] = "video".into()),
            "llama.cpp runs audio (Whisper + ultravox) and image (CLIP or SigLIP + mlp2x_gelu) projectors only",
        ),
        (d.join("absent"), "no such folder"),
        (d.to_path_buf(), "no projector.json"),
    ];
    for (run, want) in cases {
        assert_refused(&run, &out, want);
    }
    // Image projectors llama.cpp has no graph for.
    let siglip = image_fixtures().join("projector-siglip");
    for (run, want) in [
        (
            variant(&siglip, d, "perceiver", &|c| c["kind"] = "perceiver".into()),
            "projector kind 'perceiver' has no llama.cpp equivalent; the image kind that exports is `mlp2x_gelu`",
        ),
        (
            variant(&siglip, d, "pooled", &|c| c["num_tokens"] = 4.into()),
            "reduces the tower's 16 tokens to 4",
        ),
        (
            variant(&siglip, d, "grid", &|c| {
                c["encoder_options"] = serde_json::json!({"grid": 2})
            }),
            "grid-pooled tokens",
        ),
        (
            variant(&siglip, d, "cnn", &|c| c["encoder"] = "mobilenet_v2".into()),
            "an ImageNet CNN has no llama.cpp graph",
        ),
    ] {
        assert_refused(&run, &out, want);
    }

    // An existing file is kept unless --overwrite.
    std::fs::write(&out, b"mine").unwrap();
    let o = anymal(&[
        "export",
        "--run",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("pass --overwrite"));
    assert_eq!(std::fs::read(&out).unwrap(), b"mine");
}

fn image_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mmproj-image")
}

/// `anymal export --type f32` of the image fixture's `projector-<kind>`: the file's contents.
fn export_image(kind: &str, out: &Path) -> gguf_file::Content {
    let (err, content) = export_f32(&image_fixtures().join(format!("projector-{kind}")), out);
    assert!(err.contains("16 tokens per image"), "{err}");
    let md = &content.metadata;
    assert!(matches!(
        md.get("clip.has_vision_encoder"),
        Some(Value::Bool(true))
    ));
    assert!(matches!(md.get("clip.projector_type"), Some(Value::String(s)) if s == "mlp"));
    assert_u32s(
        md,
        &[
            ("clip.vision.image_size", 32),
            ("clip.vision.patch_size", 8),
            ("clip.vision.embedding_length", 32),
            ("clip.vision.block_count", 2),
            ("clip.vision.attention.head_count", 4),
            ("clip.vision.projection_dim", 576),
        ],
    );
    // Every block runs (llama.cpp's default stops one early).
    assert!(matches!(
        md.get("clip.vision.feature_layer"),
        Some(Value::Array(a)) if matches!(a.as_slice(), [Value::I32(2)])
    ));
    content
}

/// `mine` against the embeddings llama.cpp wrote to `emb`, within `tol` of their largest
/// value; returns llama.cpp's.
fn check_embeddings(emb: &Path, what: &str, mine: &Tensor, tol: f32) -> Tensor {
    let (n, d, want) = read_embeddings(emb);
    assert_eq!(mine.dims(), &[n, d], "{}", emb.display());
    let gap = relative_gap(mine, &want);
    eprintln!(
        "{}: {n} tokens, max |{what} - llama.cpp| / max |x| = {gap:.2e}",
        emb.display()
    );
    assert!(
        gap <= tol,
        "{}: embeddings differ by {gap} of their scale",
        emb.display()
    );
    Tensor::from_vec(want, (n, d), &Device::Cpu).unwrap()
}

/// Embeddings of the same tokens, `mine` against llama.cpp's `want`: the largest difference as
/// a fraction of the largest |value|.
fn relative_gap(mine: &Tensor, want: &[f32]) -> f32 {
    let mine: Vec<f32> = mine.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(mine.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    mine.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

fn image_model(kind: &str) -> MultimodalModel {
    let spec = ModelSpec {
        projectors: vec![image_fixtures().join(format!("projector-{kind}"))],
        chat_template: Some(false),
        feature_cache: Some(false),
        ..Default::default()
    };
    MultimodalModel::load(&ModalityRegistry::with_builtins(), &spec).unwrap()
}

/// Greedy answers from `media`: llama.cpp's, or parting from it at a near-tie.
/// Greedy answers to the projector's training prompt from each of `media`, `max_tokens` long.
fn check_answers(
    model: &MultimodalModel,
    media: &[(&str, &Tensor)],
    llama_cpp: &str,
    max_tokens: usize,
    at: &str,
) {
    let question = [Turn {
        role: Role::User,
        text: model.adapters[0].projector.cfg.prompt.clone(),
    }];
    for (what, m) in media {
        let mut sampler = Sampler::new(SamplingConfig::default());
        let (ids, _) = model
            .generate_with_media_tokens(
                &question,
                std::slice::from_ref(*m),
                max_tokens,
                &mut sampler,
                |_| Ok(()),
            )
            .unwrap();
        let said = model.model.tokenizer.decode(&ids).unwrap();
        check_answer(
            model,
            &question,
            m,
            &ids,
            &said,
            llama_cpp,
            &format!("{at} from {what}"),
        );
    }
}

fn image_reference() -> serde_json::Value {
    let text = std::fs::read_to_string(image_fixtures().join("llama_cpp.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A SigLIP tower (no class token) runs in llama.cpp as in anymal: the same 16 tokens per
/// image within the tolerance, the same answers.
#[test]
fn exported_siglip_mmproj_matches_llama_cpp() {
    let doc = image_reference();
    let dir = tempfile::tempdir().unwrap();
    let content = export_image("siglip", &dir.path().join("siglip.gguf"));
    let names = &content.tensor_infos;
    for n in [
        "v.patch_embd.bias",
        "v.post_ln.weight",
        "v.blk.1.ffn_up.weight",
        "mm.2.bias",
    ] {
        assert!(names.contains_key(n), "{n} missing");
    }
    assert!(!names.contains_key("v.class_embd") && !names.contains_key("v.pre_ln.weight"));
    assert!(matches!(
        content.metadata.get("clip.use_gelu"),
        Some(Value::Bool(true))
    ));

    let model = image_model("siglip");
    let adapter = &model.adapters[0];
    let tol = doc["tolerance"].as_f64().unwrap() as f32;
    for item in doc["towers"]["siglip"].as_array().unwrap() {
        let png = image_fixtures().join(item["image"].as_str().unwrap());
        let emb = image_fixtures().join(item["embeddings"].as_str().unwrap());
        let feats = adapter
            .source
            .get_files(&[png.as_path()])
            .pop()
            .unwrap()
            .unwrap();
        let mine = adapter
            .projector
            .forward_items(&[feats])
            .unwrap()
            .pop()
            .unwrap();
        let theirs = check_embeddings(&emb, "anymal", &mine, tol);
        check_answers(
            &model,
            &[
                ("llama.cpp's embeddings", &theirs),
                ("anymal's embeddings", &mine),
            ],
            item["llama_cpp_answer"].as_str().unwrap(),
            doc["n_predict"].as_u64().unwrap() as usize,
            &png.display().to_string(),
        );
    }
}

/// A CLIP tower: every tensor lands where llama.cpp reads it, shown by reproducing what this
/// llama.cpp computes (its class token after the patches with positions as if it came first,
/// the first patch's output dropped: llama.cpp issue #25814) with anymal's own tower and
/// projector. The tower's feed-forward width equals its width, the case llama.cpp's loader
/// swaps: the export writes it the old way round.
#[test]
fn exported_clip_mmproj_matches_llama_cpp_class_token_order() {
    let doc = image_reference();
    let dir = tempfile::tempdir().unwrap();
    let content = export_image("clip", &dir.path().join("clip.gguf"));
    let names = &content.tensor_infos;
    for n in ["v.class_embd", "v.pre_ln.weight", "v.blk.0.ffn_down.weight"] {
        assert!(names.contains_key(n), "{n} missing");
    }
    assert!(!names.contains_key("v.post_ln.weight") && !names.contains_key("v.patch_embd.bias"));
    // fc1 as `ffn_down` (llama.cpp swaps equal-width blocks back).
    assert_eq!(names["v.blk.0.ffn_down.weight"].shape.dims(), &[32, 32]);

    // The tower with llama.cpp's positions: the class token gets row P, patch i row i.
    let tower = image_fixtures().join("towers/clip");
    let permuted = dir.path().join("tower");
    std::fs::create_dir_all(&permuted).unwrap();
    std::fs::copy(tower.join("config.json"), permuted.join("config.json")).unwrap();
    let mut w =
        candle_core::safetensors::load(tower.join("model.safetensors"), &Device::Cpu).unwrap();
    let key = "vision_model.embeddings.position_embedding.weight";
    let e = w[key].clone();
    let p = e.dim(0).unwrap() - 1;
    let moved = Tensor::cat(&[e.narrow(0, p, 1).unwrap(), e.narrow(0, 0, p).unwrap()], 0).unwrap();
    w.insert(key.to_string(), moved);
    candle_core::safetensors::save(&w, permuted.join("model.safetensors")).unwrap();
    let encoder = anymal_encoders::image::load_image_encoder(&permuted, &Device::Cpu).unwrap();

    let model = image_model("clip");
    let params: std::collections::HashMap<String, Tensor> =
        model.adapters[0].store.tensors().into_iter().collect();
    let linear = |x: &Tensor, name: &str| {
        x.matmul(&params[&format!("{name}.weight")].t().unwrap())
            .unwrap()
            .broadcast_add(&params[&format!("{name}.bias")])
            .unwrap()
    };
    let tol = doc["tolerance"].as_f64().unwrap() as f32;
    for item in doc["towers"]["clip"].as_array().unwrap() {
        let png = image_fixtures().join(item["image"].as_str().unwrap());
        let emb = image_fixtures().join(item["embeddings"].as_str().unwrap());
        let img = anymal_encoders::image::load_image(&png).unwrap();
        let pixels =
            anymal_encoders::image::preprocess(&[img], encoder.preprocess_config()).unwrap();
        // [class, patch 0, ..., patch P-1] -> [patch 1, ..., patch P-1, class].
        let h = encoder.encode(&pixels).unwrap().squeeze(0).unwrap();
        let tokens = Tensor::cat(
            &[h.narrow(0, 2, p - 1).unwrap(), h.narrow(0, 0, 1).unwrap()],
            0,
        )
        .unwrap();
        let mine = linear(&linear(&tokens, "fc1").gelu_erf().unwrap(), "fc2");
        let theirs = check_embeddings(&emb, "anymal (llama.cpp's order)", &mine, tol);
        check_answers(
            &model,
            &[("llama.cpp's embeddings", &theirs)],
            item["llama_cpp_answer"].as_str().unwrap(),
            doc["n_predict"].as_u64().unwrap() as usize,
            &png.display().to_string(),
        );
    }
}
