//! Conversations rendered through a real model's chat template (SmolLM2's ChatML; the Gemma 3
//! 270M GGUF that ships is the base model, without a template): labels cover exactly the assistant answers with their end-of-turn marker, media
//! slots sit where the placeholders were, and what inference feeds the model for a turn is
//! token for token what training fed it before that turn's answer.

use anymal::conversation::ConversationFormat;
use anymal::conversation::{Role, Turn};
use anymal::splice::IGNORE_INDEX;

fn turn(role: Role, text: &str) -> Turn {
    Turn {
        role,
        text: text.into(),
    }
}

fn load(name: &str) -> anymal_llm::LoadedModel {
    anymal_llm::load_model(name, &Default::default())
        .unwrap_or_else(|e| panic!("{name}: {e} (run scripts/fetch-assets.sh)"))
}

/// The labeled spans of an example, decoded.
fn answers(model: &anymal_llm::LoadedModel, ids: &[u32], labels: &[i64]) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Vec<u32> = Vec::new();
    for (&t, &l) in ids.iter().zip(labels) {
        if l != IGNORE_INDEX {
            assert_eq!(l, t as i64, "a label must be the token at its position");
            cur.push(t);
        } else if !cur.is_empty() {
            out.push(model.tokenizer.decode(&cur).unwrap());
            cur.clear();
        }
    }
    if !cur.is_empty() {
        out.push(model.tokenizer.decode(&cur).unwrap());
    }
    out
}

#[test]
fn chat_templates_label_answers_and_match_inference_prompts() {
    for (name, end) in [("smollm2", "<|im_end|>")] {
        let model = load(name);
        let fmt = ConversationFormat::new(
            &model,
            true,
            vec![("<audio>".into(), 4), ("<image>".into(), 2)],
        );
        assert!(fmt.uses_chat_template(), "{name} has a chat template");
        let conv = vec![
            turn(Role::User, "<audio>\nRepeat what was said."),
            turn(Role::Assistant, "Please enter your password."),
            turn(Role::User, "And this one? <image> <audio>"),
            turn(Role::Assistant, "Yes"),
        ];
        let r = fmt.render(&conv).unwrap();
        let ex = &r.example;
        assert_eq!(r.slot_placeholders, ["<audio>", "<image>", "<audio>"]);
        assert_eq!(ex.slot_lens, [4, 2, 4]);
        for (&s, &k) in ex.slots.iter().zip(&ex.slot_lens) {
            assert!(ex.labels[s..s + k].iter().all(|&l| l == IGNORE_INDEX));
        }
        let a = answers(&model, &ex.input_ids, &ex.labels);
        assert_eq!(a.len(), 2, "{name}: {a:?}");
        assert!(
            a[0].starts_with("Please enter your password."),
            "{name}: {a:?}"
        );
        assert!(a[1].starts_with("Yes"), "{name}: {a:?}");
        // Each answer carries the end-of-turn token (decoding hides special tokens).
        let end_id = model.tokenizer.encode(end, false, true).unwrap();
        assert_eq!(end_id.len(), 1, "{name}: {end} is one special token");
        let labeled_ends = ex.labels.iter().filter(|&&l| l == end_id[0] as i64).count();
        assert_eq!(labeled_ends, 2, "{name}: both answers end with {end}");

        // Inference before the second answer: the prompt is the training sequence up to it.
        let r2 = fmt.render(&conv[..3]).unwrap();
        let first_label_2 = ex
            .labels
            .iter()
            .enumerate()
            .filter(|(_, &l)| l != IGNORE_INDEX)
            .map(|(i, _)| i)
            .find(|&i| i > r2.example.input_ids.len() - 3)
            .unwrap();
        assert_eq!(
            r2.example.input_ids,
            ex.input_ids[..first_label_2],
            "{name}: the inference prompt differs from the training prefix"
        );
        assert_eq!(r2.example.slots, ex.slots);
        assert_eq!(
            r2.example.labels,
            ex.labels[..first_label_2],
            "{name}: earlier answers keep their labels"
        );

        // A placeholder in an answer is refused.
        let bad = vec![turn(Role::User, "hi"), turn(Role::Assistant, "<audio>")];
        assert!(fmt.render(&bad).is_err());
    }
}

#[test]
fn without_a_template_answers_end_with_eos() {
    let model = load("gemma3");
    let fmt = ConversationFormat::new(&model, false, vec![("<audio>".into(), 3)]);
    assert!(!fmt.uses_chat_template());
    let conv = vec![
        turn(Role::User, "<audio>\nTranscript:"),
        turn(Role::Assistant, "hello there"),
    ];
    let r = fmt.render(&conv).unwrap();
    let a = answers(&model, &r.example.input_ids, &r.example.labels);
    assert_eq!(a.len(), 1);
    assert_eq!(
        *r.example.input_ids.last().unwrap(),
        model.tokenizer.eos_id.unwrap()
    );
    assert!(a[0].trim_start().starts_with("hello there"), "{a:?}");
}
