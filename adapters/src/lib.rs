//! anymal-adapters: trainable projectors that map frozen encoder features `(b, n, d_enc)` to
//! LLM input embeddings `(b, k, d_llm)`: linear, two-layer MLP (`mlp2x_gelu`) and the Perceiver
//! resampler. Wired into the workspace; the projectors arrive with the audio alignment issue.
