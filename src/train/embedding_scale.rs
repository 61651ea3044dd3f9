//! The projector's data-dependent output scale: its tokens start at the RMS of the LLM's own
//! embeddings of the answers they should lead to. Used by a fresh alignment run and again after
//! a CTC warm start (whose head reads directions only and leaves the norms anywhere).

use anyhow::Result;
use candle_core::Tensor;

use super::step::TrainItem;
use crate::multimodal::MultimodalModel;

/// Scale the fresh projector so its tokens have the RMS of the LLM's embeddings of the
/// answers they should lead to (measured on up to 16 training items).
pub fn match_embedding_scale(model: &MultimodalModel, train: &[TrainItem]) -> Result<()> {
    let adapter = &model.adapters[0];
    let items = &train[..train.len().min(16)];
    let inputs: Vec<_> = items.iter().map(|i| i.media[0].input()).collect();
    let feats = adapter
        .source
        .get(&inputs)
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let rms =
        |t: Tensor| -> Result<f64> { Ok(t.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>()? as f64) };
    let out = adapter.projector.forward_items(&feats)?;
    let out_rms = rms(Tensor::cat(&out, 0)?.detach())?;
    let ids: Vec<u32> = items
        .iter()
        .flat_map(|i| i.rendered.example.label_ids())
        .collect();
    let llm = &model.model.llm;
    let ids = Tensor::new(ids.as_slice(), &llm.device)?.unsqueeze(0)?;
    let emb_rms = rms(llm.embed_tokens(&ids)?)?;
    if out_rms > 0.0 && emb_rms > 0.0 {
        adapter
            .projector
            .scale_output(&adapter.store, emb_rms / out_rms)?;
        eprintln!("projector init: output RMS {out_rms:.3} scaled to the embeddings' {emb_rms:.3}");
    }
    Ok(())
}
