#!/usr/bin/env python3
"""PyTorch peer of `anymal bench --only align`: one alignment training step.

The step, matching anymal's definition:
  * the LLM is loaded from the GGUF through transformers, dequantized to fp32 and frozen
    (requires_grad False everywhere, eval mode, so no dropout);
  * the projector is a trainable nn.Linear(384, hidden);
  * batch 8; each sample is 32 projected tokens (the projector applied to fixed random
    (32, 384) features) followed by 32 text tokens with deterministic ids
    100 + (j*7919 + i*31) % 10000 (sample i, text position j);
  * loss: mean next-token cross-entropy on the text tokens. The sequence has 64 positions;
    positions 31..62 predict tokens 32..63, i.e. 32 label positions per sample (the last
    projected position predicts the first text token, as in anymal);
  * one AdamW step (lr 1e-4) on the trainable parameters.

Variants:
  --logits labels (default): run the decoder body (model.model) for hidden states and apply
      lm_head only at the 32 label positions per sample: no full (8, 64, vocab) logits.
  --logits all: model(inputs_embeds=...).logits at every position, then slice.
  --lora-qv: also train a peft LoRA (r=8, alpha=16, no dropout) on q_proj and v_proj, in the
      same AdamW as the projector.

Prints ONE JSON line on stdout; everything else goes to stderr.
"""

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import time

B, K, TEXT, D_ENC = 8, 32, 32, 384  # batch, projected tokens, text tokens, encoder width


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="path to the GGUF file")
    p.add_argument("--reps", type=int, default=5, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--logits", choices=["labels", "all"], default="labels")
    p.add_argument("--lora-qv", action="store_true", help="add LoRA r=8 on q_proj,v_proj")
    return p.parse_args()


def load_frozen_llm(path):
    """The GGUF through transformers' GGUF loader (dequantizes every tensor to fp32)."""
    import torch
    from transformers import AutoModelForCausalLM
    d, name = os.path.split(os.path.abspath(path))
    t = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    except TypeError:  # transformers < 4.56 only knows `torch_dtype`
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, torch_dtype=torch.float32)
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    log(f"loaded {name} in {time.perf_counter() - t:.1f} s "
        f"({sum(p.numel() for p in model.parameters()) / 1e6:.0f} M params, "
        f"hidden {model.config.hidden_size}, vocab {model.config.vocab_size})")
    return model


def rss_mib(field):
    """A field of /proc/self/status (VmRSS, VmHWM) in MiB; 0 where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def reset_peak_rss():
    """Reset the kernel's resident-memory high-water mark (Linux: clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main():
    args = parse_args()
    # Keep stderr short (run.py shows its tail when a run fails): no tqdm progress bars.
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch
    import torch.nn.functional as F

    # What importing torch alone costs (the PyPI wheel maps its CUDA libraries even on CPU),
    # reported so the peak can be read against it.
    import_rss = rss_mib("VmRSS")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    lm = load_frozen_llm(args.model)
    # transformers' GGUF loader holds the file, numpy copies and torch tensors at once, so the
    # process peak is set while loading. Keep that figure, then free the loader's garbage and
    # reset the high-water mark to also measure the training steps' own peak.
    load_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    gc.collect()
    hwm_reset = reset_peak_rss()
    log(f"peak RSS while loading {load_peak:.0f} MiB, RSS after load {rss_mib('VmRSS'):.0f} MiB")
    hidden = lm.config.hidden_size
    cfg = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    softcap = getattr(cfg, "final_logit_softcapping", None)  # Gemma 2 style; None otherwise

    net = lm
    if args.lora_qv:
        from peft import LoraConfig, get_peft_model

        # peft injects the adapters into `lm` in place, so lm.model(...) below uses them.
        net = get_peft_model(lm, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                            target_modules=["q_proj", "v_proj"], bias="none"))
        net.eval()

    projector = torch.nn.Linear(D_ENC, hidden)
    params = list(projector.parameters()) + [p for p in net.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    log(f"trainable parameters: {n_train:,} ({'projector + LoRA q,v' if args.lora_qv else 'projector'})")
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    # Fixed inputs: random features and deterministic text ids.
    feats = torch.randn(B, K, D_ENC)
    ids = torch.tensor([[100 + (j * 7919 + i * 31) % 10000 for j in range(TEXT)] for i in range(B)])
    embed = lm.get_input_embeddings()  # Gemma's applies its sqrt(hidden) scale itself
    # Positions K-1 .. K+TEXT-2 predict the text tokens: 32 label positions per sample.
    pred = slice(K - 1, K + TEXT - 1)
    targets = ids.reshape(-1)

    def step():
        opt.zero_grad(set_to_none=True)
        # Text embeddings are looked up every step, as anymal's batch building does.
        embeds = torch.cat([projector(feats), embed(ids)], dim=1)  # (B, K+TEXT, hidden)
        if args.logits == "all":
            logits = lm(inputs_embeds=embeds, use_cache=False).logits[:, pred]
        else:
            h = lm.model(inputs_embeds=embeds, use_cache=False).last_hidden_state[:, pred]
            logits = lm.lm_head(h)
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets)
        loss.backward()
        opt.step()
        return loss.item()

    for i in range(args.warmup):
        t = time.perf_counter()
        loss = step()
        log(f"warm-up step {i}: {time.perf_counter() - t:.2f} s, loss {loss:.3f}")
    times = []
    for i in range(args.reps):
        t = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t)
        log(f"step {i}: {times[-1]:.2f} s, loss {loss:.3f}")

    step_s = statistics.median(times)
    variant = args.logits + ("+lora_qv" if args.lora_qv else "")
    print(json.dumps({
        "tool": "pytorch",
        "what": "align",
        "model": os.path.basename(args.model),
        "variant": variant,
        "lora_qv": args.lora_qv,
        "samples_per_s": B / step_s,
        "step_s": step_s,
        "reps": args.reps,
        "threads": args.threads,
        # Whole process, loading included (ru_maxrss is in KiB on Linux).
        "peak_rss_mib": max(load_peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "load_peak_rss_mib": load_peak,
        "import_rss_mib": import_rss,
        # Peak during the steps alone (after the loader's garbage is freed); null if the
        # high-water mark could not be reset.
        "steps_peak_rss_mib": rss_mib("VmHWM") if hwm_reset else None,
        "torch": torch.__version__,
    }), flush=True)


if __name__ == "__main__":
    main()
