//! Projectors with a rate reduction give each item its own number of tokens: in a batch, slots
//! are resized and rows padded. Padding must never change an item's loss, and gradients
//! through such a batch must match finite differences (on a dense f32 copy of the real
//! SmolLM2, so that the reference is smooth: the 4-bit kernels quantize activations).

use anymal::conversation::{ConversationFormat, Role, Turn};
use anymal::splice::{answer_loss_sum, build_batch, Example, IGNORE_INDEX};
use anymal_adapters::{Projector, ProjectorConfig, ProjectorKind, Reduce};
use anymal_llm::{LoadOptions, LoadedModel};
use candle_core::{Device, Tensor};

fn features(frames: usize, salt: u64) -> Tensor {
    let mut r = anymal_util::rng::SplitMix64::new(salt);
    let v: Vec<f32> = (0..frames * 4).map(|_| r.normal(0.0, 1.0) as f32).collect();
    Tensor::from_vec(v, (frames, 4), &Device::Cpu).unwrap()
}

fn setup() -> (
    LoadedModel,
    Projector,
    anymal_adapters::ParamStore,
    Vec<Example>,
) {
    let opts = LoadOptions::requantized(Some("f32")).unwrap();
    let model = anymal_llm::load_model("smollm2", &opts).unwrap_or_else(|e| panic!("{e}"));
    let cfg = ProjectorConfig {
        kind: ProjectorKind::Linear,
        d_enc: 4,
        d_llm: model.llm.cfg.hidden_size,
        num_tokens: 1,
        reduce: Reduce::Stack { n: 2 },
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
    let (proj, store) = Projector::init(&cfg, 3, &Device::Cpu).unwrap();
    // Tokens at about the scale of the LLM's own embeddings.
    proj.scale_output(&store, 0.1).unwrap();
    // Rendered with one slot token each; the batch resizes them to the projector's output.
    let format = ConversationFormat::new(&model, false, vec![("<audio>".into(), 1)]);
    let example = |answer: &str| {
        format
            .render(&[
                Turn::new(Role::User, "<audio>\nTranscript:"),
                Turn::new(Role::Assistant, answer),
            ])
            .unwrap()
            .example
    };
    let examples = vec![
        example("press one"),
        example("please hold while we connect your call"),
    ];
    (model, proj, store, examples)
}

fn nll(model: &LoadedModel, examples: &[Example], groups: &[Vec<Tensor>]) -> (Tensor, usize) {
    let batch = build_batch(&model.llm, examples, groups).unwrap();
    answer_loss_sum(&model.llm, &batch).unwrap()
}

#[test]
fn padding_never_changes_an_items_loss() {
    let (model, proj, _, examples) = setup();
    let (fa, fb) = (features(3, 1), features(9, 2));
    let toks = proj.forward_items(&[fa.clone(), fb]).unwrap();
    assert_eq!((toks[0].dim(0).unwrap(), toks[1].dim(0).unwrap()), (2, 5));
    // Item a alone, then a beside b (b's labels ignored, so the batch loss is a's alone):
    // a is the shorter row, right-padded, with 2 slot tokens against b's 5.
    let alone_toks = proj.forward_items(&[fa]).unwrap();
    let (alone, m_alone) = nll(&model, &examples[..1], &[vec![alone_toks[0].clone()]]);
    let mut b = examples[1].clone();
    b.labels = vec![IGNORE_INDEX; b.labels.len()];
    let (batched, m_batched) = nll(
        &model,
        &[examples[0].clone(), b],
        &[vec![toks[0].clone()], vec![toks[1].clone()]],
    );
    assert_eq!(m_alone, m_batched);
    let (x, y) = (
        alone.to_scalar::<f32>().unwrap(),
        batched.to_scalar::<f32>().unwrap(),
    );
    assert!(
        (x - y).abs() <= 1e-4 * x.abs().max(1.0),
        "alone {x} vs padded {y}"
    );
    // The resized slot sits where the rendered one was and the text after it moved along.
    let fitted = examples[0].with_slot_lens(&[2]).unwrap();
    assert_eq!(fitted.input_ids.len(), examples[0].input_ids.len() + 1);
    assert_eq!(fitted.slots, examples[0].slots);
    assert_eq!(fitted.num_labels(), examples[0].num_labels());
}

#[test]
fn gradients_through_a_variable_length_batch_match_finite_differences() {
    let (model, proj, store, examples) = setup();
    let feats = [features(3, 1), features(9, 2)];
    let loss_of = || -> Tensor {
        let toks = proj.forward_items(&feats).unwrap();
        let groups: Vec<Vec<Tensor>> = toks.into_iter().map(|t| vec![t]).collect();
        let (sum, m) = nll(&model, &examples, &groups);
        (sum / m as f64).unwrap()
    };
    let grads = loss_of().backward().unwrap();
    let (_, w) = store
        .vars()
        .into_iter()
        .find(|(n, _)| n == "linear.weight")
        .unwrap();
    let g = grads
        .get(w.as_tensor())
        .expect("the projector's weight gets a gradient")
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let base = w
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    // The coordinates with the largest gradients: finite differences resolve them best.
    let mut order: Vec<usize> = (0..g.len()).collect();
    order.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
    // Small steps: at 1e-2 the loss is visibly curved along the largest-gradient weights.
    let eps = 1e-3f32;
    for &i in &order[..4] {
        let at = |delta: f32| -> f32 {
            let mut v = base.clone();
            v[i] += delta;
            w.set(&Tensor::from_vec(v, w.shape(), &Device::Cpu).unwrap())
                .unwrap();
            loss_of().to_scalar::<f32>().unwrap()
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps);
        w.set(&Tensor::from_vec(base.clone(), w.shape(), &Device::Cpu).unwrap())
            .unwrap();
        assert!(
            (fd - g[i]).abs() <= 0.05 * g[i].abs() + 1e-4,
            "weight[{i}]: analytic {} vs finite differences {fd}",
            g[i]
        );
    }
}
