//! `anymal bench`: speed and memory on this machine. Figures go in the README; tests never
//! assert timings.

use std::time::Instant;

use anyhow::Context;
use anymal_llm::{generate, load_model, Sampler, SamplingConfig};
use anymal_quant::{QLinear, QuantType};
use candle_core::{Device, Tensor, Var};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// What to measure: qlinear, train, align, generate, batch (default: all).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    #[arg(long, default_value = "smollm2")]
    pub llm: String,
    #[arg(long)]
    pub requant: Option<String>,
    /// Arithmetic of the frozen layers' products over many rows (align's step, prompts):
    /// f32, or int8 for the Q4_1, Q5_0, Q4_K and Q8_0 layers. Default: what the commands use
    /// (recipes' `llm.compute` default, f32, for train and align; `generate`'s, int8, for
    /// generate and batch).
    #[arg(long)]
    pub compute: Option<anymal_quant::Compute>,
    /// Repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// align: also train a LoRA (r=8, alpha 16) on every q_proj and v_proj, as the peers'
    /// "with LoRA" variant does.
    #[arg(long)]
    pub lora_qv: bool,
    /// align with --lora-qv: the adapters' dropout (PEFT's `lora_dropout`).
    #[arg(long, default_value_t = 0.0, requires = "lora_qv")]
    pub lora_dropout: f64,
    /// align: recompute each block in backward instead of keeping its activations.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Also print each align / generate result as one JSON line (for benches/peers/run.py).
    #[arg(long)]
    pub json: bool,
}

fn wants(a: &BenchArgs, what: &str) -> bool {
    a.only.is_empty() || a.only.iter().any(|o| o == what)
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    if !(0.0..1.0).contains(&a.lora_dropout) {
        anyhow::bail!(
            "--lora-dropout must be within [0, 1), got {}",
            a.lora_dropout
        );
    }
    println!("machine: {}", crate::system::machine());
    if wants(&a, "qlinear") {
        bench_qlinear(a.reps)?;
    }
    let llm_benches = ["train", "generate", "align", "batch"];
    if llm_benches.iter().any(|w| wants(&a, w)) {
        let opts = anymal_llm::LoadOptions::requantized(a.requant.as_deref())?;
        let mut model =
            load_model(&a.llm, &opts).with_context(|| format!("loading '{}'", a.llm))?;
        let training = a.compute.unwrap_or_default();
        let inference = a.compute.unwrap_or(anymal_quant::Compute::Int8);
        model.llm.set_compute(training);
        if wants(&a, "train") {
            bench_train(&model, a.reps)?;
        }
        if wants(&a, "align") {
            model.llm.gradient_checkpointing = a.gradient_checkpointing;
            let lora_dropout = a.lora_qv.then_some(a.lora_dropout);
            let r = bench_align(&mut model, a.reps, lora_dropout)?;
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"tool": "anymal", "what": "align", "model": a.llm,
                        "compute": training.to_string(), "lora_qv": a.lora_qv, "lora_dropout": a.lora_dropout,
                        "gradient_checkpointing": a.gradient_checkpointing,
                        "samples_per_s": r.0, "step_s": r.1,
                        "peak_rss_mib": crate::system::peak_rss_mib(), "machine": crate::system::machine()})
                );
            }
        }
        model.llm.set_compute(inference);
        if wants(&a, "generate") {
            let (tg, pp) = bench_generate(&model)?;
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"tool": "anymal", "what": "generate", "model": a.llm,
                        "compute": inference.to_string(), "tg128": tg, "pp512": pp, "peak_rss_mib": crate::system::peak_rss_mib(),
                        "machine": crate::system::machine()})
                );
            }
        }
        if wants(&a, "batch") {
            bench_batch(&model)?;
        }
    }
    println!("peak RSS: {:.0} MiB", crate::system::peak_rss_mib());
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time<F: FnMut() -> anyhow::Result<()>>(reps: usize, mut f: F) -> anyhow::Result<f64> {
    f()?; // warm-up
    let mut ts = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        ts.push(t.elapsed().as_secs_f64());
    }
    Ok(median(ts))
}

fn bench_qlinear(reps: usize) -> anyhow::Result<()> {
    let (m, k, n) = (64, 2048, 2048);
    println!("\nQLinear forward+backward, x ({m}, {k}) by W ({n}, {k}), median of {reps}:");
    println!("| type | fwd ms | fwd+bwd ms | vs f32 dense fwd+bwd |");
    println!("|---|---|---|---|");
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 0.02, (n, k), &dev)?;
    let x0 = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
    let dense = {
        let x = Var::from_tensor(&x0)?;
        time(reps, || {
            let y = x.as_tensor().matmul(&w.t()?)?;
            let _ = y.sum_all()?.backward()?;
            Ok(())
        })?
    };
    println!(
        "| f32 dense (candle matmul) | - | {:.1} | 1.00 |",
        dense * 1e3
    );
    for ty in [
        "f16", "q4_0", "q4_1", "q5_0", "q8_0", "q4k", "q5k", "q6k", "nf4",
    ] {
        let layer = QLinear::quantize(&w, None, QuantType::parse(ty)?)?;
        let fwd = time(reps, || {
            layer.forward(&x0)?;
            Ok(())
        })?;
        let x = Var::from_tensor(&x0)?;
        let fb = time(reps, || {
            let y = layer.forward(x.as_tensor())?;
            let _ = y.sum_all()?.backward()?;
            Ok(())
        })?;
        println!(
            "| {ty} | {:.1} | {:.1} | {:.2} |",
            fwd * 1e3,
            fb * 1e3,
            fb / dense
        );
    }
    bench_qlinear_compute(reps)
}

/// The many-row products of a training step's layers (512 rows: align's batch of 8 x 64) with
/// each `Compute`: the forward, and the forward plus the input gradient.
fn bench_qlinear_compute(reps: usize) -> anyhow::Result<()> {
    use anymal_quant::Compute;
    let m = 512;
    println!("\nQLinear at {m} rows, f32 vs int8 products, median of {reps}:");
    println!(
        "| type | W (out, in) | f32 fwd ms | int8 fwd ms | f32 fwd+bwd ms | int8 fwd+bwd ms |"
    );
    println!("|---|---|---|---|---|---|");
    let dev = Device::Cpu;
    for (ty, (n, k)) in [
        ("q4_1", (1536, 576)),
        ("q4_1", (576, 1536)),
        ("q5_0", (2048, 640)),
        ("q4k", (640, 2048)),
        ("q8_0", (2048, 640)),
    ] {
        let w = Tensor::randn(0f32, 0.02, (n, k), &dev)?;
        let x0 = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let mut layer = QLinear::quantize(&w, None, QuantType::parse(ty)?)?;
        let mut cells = Vec::new();
        for compute in [Compute::F32, Compute::Int8] {
            layer.set_compute(compute);
            cells.push(time(reps, || {
                layer.forward(&x0)?;
                Ok(())
            })?);
        }
        for compute in [Compute::F32, Compute::Int8] {
            layer.set_compute(compute);
            let x = Var::from_tensor(&x0)?;
            cells.push(time(reps, || {
                let y = layer.forward(x.as_tensor())?;
                let _ = y.sum_all()?.backward()?;
                Ok(())
            })?);
        }
        let ms: Vec<String> = cells.iter().map(|c| format!("{:.2}", c * 1e3)).collect();
        println!("| {ty} | ({n}, {k}) | {} |", ms.join(" | "));
    }
    Ok(())
}

fn bench_train(model: &anymal_llm::LoadedModel, reps: usize) -> anyhow::Result<()> {
    let llm = &model.llm;
    let (b, t) = (1, 512);
    println!("\nDecoder forward+backward to the input embeddings, batch {b} x {t} tokens, loss on all logits:");
    let ids: Vec<u32> = (0..(b * t) as u32)
        .map(|i| 100 + (i * 7919) % 10_000)
        .collect();
    let ids = Tensor::from_vec(ids, (b, t), &llm.device)?;
    let emb = llm.embed_tokens(&ids)?;
    for ckpt in [false, true] {
        let mut l = llm.clone();
        l.gradient_checkpointing = ckpt;
        let x = Var::from_tensor(&emb)?;
        let s = time(reps.min(3), || {
            let h = l.forward_embeds(x.as_tensor(), 0, None, None)?;
            let logits = l.logits(&h)?;
            let loss = candle_nn::loss::cross_entropy(&logits.flatten_to(1)?, &ids.flatten_all()?)?;
            let g = loss.backward()?;
            anyhow::ensure!(
                g.get(x.as_tensor()).is_some(),
                "no gradient reached the input"
            );
            Ok(())
        })?;
        println!(
            "  gradient checkpointing {}: {:.2} s/step, {:.0} tokens/s, peak RSS so far {:.0} MiB",
            if ckpt { "on " } else { "off" },
            s,
            (b * t) as f64 / s,
            crate::system::peak_rss_mib()
        );
    }
    Ok(())
}

/// One alignment step as issue 6 defines it: batch 8, each 32 projected tokens + 32 text
/// tokens, loss on the text tokens, projector Linear(384 -> d) trained, AdamW step; with
/// `lora_dropout` also a LoRA r=8 on q_proj and v_proj with that dropout. Returns (samples/s,
/// s/step).
fn bench_align(
    model: &mut anymal_llm::LoadedModel,
    reps: usize,
    lora_dropout: Option<f64>,
) -> anyhow::Result<(f64, f64)> {
    use crate::splice::{answer_loss_sum, build_batch, Example, IGNORE_INDEX};
    use anymal_adapters::{Projector, ProjectorConfig, ProjectorKind, Reduce};
    let lora = if let Some(dropout) = lora_dropout {
        let spec = anymal_llm::LoraSpec {
            cfg: anymal_quant::LoraConfig {
                r: 8,
                alpha: 16.0,
                dropout,
                use_rslora: false,
            },
            targets: anymal_llm::TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]),
        };
        let set = model.llm.attach_lora(&spec, 7)?;
        set.set_training(true);
        Some(set)
    } else {
        None
    };
    let llm = &model.llm;
    let (b, k, text) = (8usize, 32usize, 32usize);
    let cfg = ProjectorConfig {
        kind: ProjectorKind::Linear,
        d_enc: 384,
        d_llm: llm.cfg.hidden_size,
        num_tokens: k,
        reduce: Reduce::Pool,
        hidden: None,
        perceiver: None,
        front: None,
        ctc_compress: None,
        modality: "audio".into(),
        encoder: String::new(),
        encoder_id: String::new(),
        encoder_options: serde_json::Value::Null,
        llm: String::new(),
        prompt: String::new(),
        chat_template: false,
    };
    let (proj, store) = Projector::init(&cfg, 1, &Device::Cpu)?;
    let mut params = store.vars();
    let proj_params = params.len();
    if let Some(set) = &lora {
        params.extend(set.vars());
    }
    let mut opt = crate::train::optim::AdamW::new(
        params.clone(),
        crate::train::optim::AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
    )?;
    // Each item: its k projected tokens, then `text` answer tokens (the last an end id).
    let examples: Vec<Example> = (0..b)
        .map(|i| {
            let answer: Vec<u32> = (0..text as u32 - 1)
                .map(|j| 100 + (j * 7919 + i as u32 * 31) % 10_000)
                .chain([2])
                .collect();
            let input_ids: Vec<u32> = std::iter::repeat_n(0, k)
                .chain(answer.iter().copied())
                .collect();
            let labels = std::iter::repeat_n(IGNORE_INDEX, k)
                .chain(answer.iter().map(|&t| t as i64))
                .collect();
            Example {
                input_ids,
                slots: vec![0],
                slot_lens: vec![k],
                labels,
            }
        })
        .collect();
    let feats: Vec<Tensor> = (0..b)
        .map(|i| Tensor::randn(0f32, 1.0, (100 + 10 * i, 384), &Device::Cpu))
        .collect::<candle_core::Result<_>>()?;
    println!(
        "\nAlignment step: batch {b} x ({k} projected + {text} text tokens), loss on text tokens, AdamW{}:",
        match lora_dropout {
            Some(p) if p > 0.0 => format!(", LoRA r=8 on q,v, dropout {p}"),
            Some(_) => ", LoRA r=8 on q,v".into(),
            None => String::new(),
        }
    );
    let (mut t_fwd, mut t_bwd, mut t_opt) = (vec![], vec![], vec![]);
    for _ in 0..reps.max(2) + 1 {
        let t0 = Instant::now();
        let toks = proj.forward_items(&feats)?;
        let groups: Vec<Vec<Tensor>> = toks.into_iter().map(|t| vec![t]).collect();
        let batch = build_batch(llm, &examples, &groups)?;
        let (nll, m) = answer_loss_sum(llm, &batch)?;
        let loss = (nll / m as f64)?;
        loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let store = loss.backward()?;
        let mut grads = crate::train::optim::collect_grads(&params[..proj_params], &store)?;
        if let Some(set) = &lora {
            grads.extend(set.grads(&store)?);
        }
        let t2 = Instant::now();
        opt.step(&grads, 1e-4)?;
        t_fwd.push((t1 - t0).as_secs_f64());
        t_bwd.push((t2 - t1).as_secs_f64());
        t_opt.push(t2.elapsed().as_secs_f64());
    }
    // Drop the warm-up round.
    let (f, bw, o) = (
        median(t_fwd[1..].to_vec()),
        median(t_bwd[1..].to_vec()),
        median(t_opt[1..].to_vec()),
    );
    println!(
        "  forward {:.2} s, backward {:.2} s, optimizer {:.3} s: {:.2} s/step, {:.2} samples/s, peak RSS so far {:.0} MiB",
        f, bw, o, f + bw + o, b as f64 / (f + bw + o), crate::system::peak_rss_mib()
    );
    Ok((b as f64 / (f + bw + o), f + bw + o))
}

/// Returns (tg128, pp512) in tokens/s.
fn bench_generate(model: &anymal_llm::LoadedModel) -> anyhow::Result<(f64, f64)> {
    let ids = model
        .tokenizer
        .encode("The history of the printing press", true, false)?;
    let mut sampler = Sampler::new(SamplingConfig::default());
    // Fixed length: no stop token, so every run generates the same count.
    let (_, st) = generate(&model.llm, &ids, None, 128, &mut sampler, &[], |_| Ok(()))?;
    let long: Vec<u32> = (0..512u32).map(|i| 100 + (i * 7919) % 10_000).collect();
    let (_, pp) = generate(&model.llm, &long, None, 1, &mut sampler, &[], |_| Ok(()))?;
    let (tg, pp) = (
        st.generated_tokens as f64 / st.generate_seconds,
        pp.prompt_tokens as f64 / pp.prompt_seconds,
    );
    println!("\nGeneration: tg128 {tg:.1} tokens/s; prompt processing pp512 {pp:.1} tokens/s");
    Ok((tg, pp))
}

/// Decoding throughput of batched generation: `b` sequences (different prompts) generate 64
/// tokens each together; tokens/s over all of them, prefills excluded.
fn bench_batch(model: &anymal_llm::LoadedModel) -> anyhow::Result<()> {
    const TOKENS: usize = 64;
    let topics = [
        "the printing press",
        "the steam engine",
        "the telescope",
        "paper money",
        "the compass",
        "the bicycle",
        "glass lenses",
        "the telegraph",
    ];
    println!("\nBatched generation, {TOKENS} tokens per sequence, prefills excluded:");
    println!("| sequences | tokens/s (all) | tokens/s per sequence | vs 1 |");
    println!("|---|---|---|---|");
    let mut single = 0.0;
    for b in [1usize, 2, 4, 8, 16] {
        let mut g = anymal_llm::BatchGenerator::new(&model.llm, &[]);
        for i in 0..b {
            let prompt = format!("A short history of {}", topics[i % topics.len()]);
            let ids = model.tokenizer.encode(&prompt, true, false)?;
            let sampler = Sampler::new(SamplingConfig::default());
            g.add(
                i,
                &ids,
                None,
                TOKENS,
                sampler,
                &mut anymal_llm::Prefill::whole(),
            )?;
        }
        let t = Instant::now();
        let mut tokens = 0;
        while !g.is_empty() {
            tokens += g
                .step()?
                .iter()
                .filter(|e| matches!(e, anymal_llm::BatchEvent::Token { .. }))
                .count();
        }
        let rate = tokens as f64 / t.elapsed().as_secs_f64();
        if b == 1 {
            single = rate;
        }
        println!(
            "| {b} | {rate:.1} | {:.1} | {:.2}x |",
            rate / b as f64,
            rate / single
        );
    }
    Ok(())
}
