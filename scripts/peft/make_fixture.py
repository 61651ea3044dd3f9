#!/usr/bin/env python3
"""Reference fixtures made with the real Python `peft` package, so anymal's Rust tests can prove
PEFT interoperability (reading adapters PEFT wrote, and computing the same logits).

Writes tests/fixtures/peft/ (about 0.5 MB):
  base/                 a tiny random LlamaForCausalLM in HF layout: config.json,
                        generation_config.json, model.safetensors (float32, untied lm_head),
                        tokenizer.json (WordLevel, 96 tokens: <unk> <s> </s> w3..w95),
                        tokenizer_config.json (bos <s>, eos </s>)
  adapter_all/          LoRA r=4, alpha=8 on q,k,v,o,gate,up,down (scale 2), B non-zero
  adapter_rslora_qv/    LoRA r=8, alpha=16, use_rslora on q,v (scale 16/sqrt(8))
  generated_with.json   the script and package versions that made the files
  expected.safetensors  input_ids (int64 (3, 10), ids in [3, 96)) and float32 (3, 10, 96)
                        logits_base, logits_adapter_all, logits_adapter_rslora_qv,
                        logits_merged_all (adapter_all after merge_and_unload())
Logits are computed in float32, model.eval(), eager attention, no attention mask (causal, every
token real), on one CPU thread. Everything is seeded, so re-running reproduces the files.

    python3 -m venv /work/venv-peft
    /work/venv-peft/bin/pip install torch transformers peft safetensors numpy
    /work/venv-peft/bin/python scripts/peft/make_fixture.py [--out tests/fixtures/peft]

At the end it runs `check_anymal_adapter.py --self-test` on what it wrote (skip: --no-self-test).
CI does not run this script; the generated fixture is checked in.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

# PEFT turns target_modules into a set and saves it as a list in set order, which depends on
# Python's string hashing: fix the hash seed so adapter_config.json is the same on every run.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import peft  # noqa: E402
import warnings  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5 deprecations in peft
transformers.utils.logging.disable_progress_bar()

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEED = 20240607
VOCAB = 96
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTERS = {
    # name: (LoraConfig kwargs, seed for peft's init of A and B)
    "adapter_all": (dict(r=4, lora_alpha=8, target_modules=LINEARS), SEED + 1),
    "adapter_rslora_qv": (
        dict(r=8, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "v_proj"]),
        SEED + 2,
    ),
}


def versions():
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }


def llama_config():
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
    )


def randomize(model, seed):
    """Larger-than-default weights so a LoRA's change is plainly visible in the logits:
    linear weights N(0, 0.1), embeddings N(0, 1), RMSNorm weights U(0.8, 1.2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name:
                v = 0.8 + 0.4 * torch.rand(p.shape, generator=g, dtype=torch.float32)
            elif "embed_tokens" in name:
                v = torch.randn(p.shape, generator=g, dtype=torch.float32)
            else:
                v = 0.1 * torch.randn(p.shape, generator=g, dtype=torch.float32)
            p.copy_(v)


def tokenizer_json():
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(3, VOCAB):
        vocab[f"w{i}"] = i
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for t, i in [("<unk>", 0), ("<s>", 1), ("</s>", 2)]
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }


TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "add_bos_token": False,
    "add_eos_token": False,
    "clean_up_tokenization_spaces": False,
    "model_max_length": 128,
}


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def load_base(base_dir):
    m = LlamaForCausalLM.from_pretrained(
        base_dir, dtype=torch.float32, attn_implementation="eager"
    )
    m.eval()
    # What PEFT records as base_model_name_or_path: the folder's name beside the adapters.
    m.name_or_path = "base"
    return m


@torch.no_grad()
def logits_of(model, ids):
    model.eval()
    return model(input_ids=ids).logits.detach().to(torch.float32).contiguous().clone()


def save_adapter(peft_model, out_dir):
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    # save_embedding_layers=False: no embedding is targeted; "auto" would look for the base's
    # config.json at base_model_name_or_path ("base", relative) and warn when it is not there.
    peft_model.save_pretrained(out_dir, safe_serialization=True, save_embedding_layers=False)
    # PEFT also writes a model-card README.md (boilerplate + its version): not part of the format.
    readme = os.path.join(out_dir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    cfg_path = os.path.join(out_dir, "adapter_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    assert cfg.get("base_model_name_or_path") == "base", cfg.get("base_model_name_or_path")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "peft"))
    ap.add_argument("--no-self-test", action="store_true")
    args = ap.parse_args()
    out = args.out
    os.makedirs(out, exist_ok=True)
    torch.use_deterministic_algorithms(True)

    # --- base model -------------------------------------------------------------------------
    base_dir = os.path.join(out, "base")
    if os.path.isdir(base_dir):
        shutil.rmtree(base_dir)
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(llama_config())
    randomize(model, SEED)
    model.save_pretrained(base_dir, safe_serialization=True)
    # transformers 5 writes "dtype" and nests rope_theta in "rope_parameters"; older readers
    # (and anymal's config.rs) look for top-level "torch_dtype" and "rope_theta": write both.
    cpath = os.path.join(base_dir, "config.json")
    with open(cpath) as f:
        cfg = json.load(f)
    cfg["torch_dtype"] = "float32"
    cfg["dtype"] = "float32"
    cfg["rope_theta"] = 10000.0
    write_json(cpath, cfg)
    write_json(os.path.join(base_dir, "tokenizer.json"), tokenizer_json())
    write_json(os.path.join(base_dir, "tokenizer_config.json"), TOKENIZER_CONFIG)
    del model

    # The tokenizer must load in HF's own libraries too.
    tok = transformers.AutoTokenizer.from_pretrained(base_dir)
    enc = tok("w3 w17 w95", add_special_tokens=False)["input_ids"]
    assert enc == [3, 17, 95], enc
    assert tok.bos_token_id == 1 and tok.eos_token_id == 2 and len(tok) == VOCAB

    # --- inputs and base logits (from the saved files, not the in-memory model) --------------
    g = torch.Generator().manual_seed(SEED + 100)
    input_ids = torch.randint(3, VOCAB, (3, 10), generator=g, dtype=torch.int64)
    base = load_base(base_dir)
    expected = {"input_ids": input_ids, "logits_base": logits_of(base, input_ids)}
    del base

    # --- adapters ---------------------------------------------------------------------------
    diffs = {}
    for name, (kw, seed) in ADAPTERS.items():
        base = load_base(base_dir)
        cfg = LoraConfig(
            lora_dropout=0.0,
            init_lora_weights=False,  # A and B keep nn.Linear's kaiming-uniform init: B != 0
            task_type="CAUSAL_LM",
            **kw,
        )
        torch.manual_seed(seed)
        pm = get_peft_model(base, cfg)
        pm.eval()
        in_memory = logits_of(pm, input_ids)
        adir = os.path.join(out, name)
        save_adapter(pm, adir)
        del pm, base

        # Reload from disk, as a consumer would.
        pm = PeftModel.from_pretrained(load_base(base_dir), adir)
        pm.eval()
        lg = logits_of(pm, input_ids)
        assert torch.equal(lg, in_memory), "reloaded adapter gives different logits"
        expected[f"logits_{name}"] = lg
        diffs[name] = (lg - expected["logits_base"]).abs().max().item()
        if name == "adapter_all":
            merged = pm.merge_and_unload()
            merged.eval()
            expected["logits_merged_all"] = logits_of(merged, input_ids)
            diffs["merged_all_vs_adapter_all"] = (
                (expected["logits_merged_all"] - lg).abs().max().item()
            )
            del merged
        del pm

    # Only {"format": "pt"}: safetensors writes a metadata map in hash order, so several entries
    # would make the file differ from run to run. The versions go in generated_with.json.
    # Independent of peft's code: W' = W + s * B @ A with s = alpha / r (or alpha / sqrt(r) with
    # rslora) on a plain model must give the same logits.
    for name, (kw, _) in ADAPTERS.items():
        r, alpha = kw["r"], kw["lora_alpha"]
        s = alpha / (r ** 0.5 if kw.get("use_rslora") else r)
        sd = load_file(os.path.join(out, name, "adapter_model.safetensors"))
        m = load_base(base_dir)
        params = dict(m.named_parameters())
        with torch.no_grad():
            for k, a in sd.items():
                if ".lora_A." not in k:
                    continue
                path = k[len("base_model.model."):-len(".lora_A.weight")]
                b = sd[k.replace(".lora_A.", ".lora_B.")]
                params[path + ".weight"].add_(s * (b @ a))
        d = (logits_of(m, input_ids) - expected[f"logits_{name}"]).abs().max().item()
        diffs[f"hand_merged_{name}"] = d
        assert d < 1e-4, (name, d)
        del m

    save_file(
        {k: v.contiguous() for k, v in expected.items()},
        os.path.join(out, "expected.safetensors"),
        metadata={"format": "pt"},
    )
    write_json(os.path.join(out, "generated_with.json"),
               {"generator": "scripts/peft/make_fixture.py", **versions()})

    # --- report -----------------------------------------------------------------------------
    print("versions:", json.dumps(versions()))
    for name in ADAPTERS:
        d = diffs[name]
        print(f"max |logits_{name} - logits_base| = {d:.6f}")
        assert d > 0.05, f"{name} barely changes the logits ({d})"
    d = diffs["merged_all_vs_adapter_all"]
    print(f"max |logits_merged_all - logits_adapter_all| = {d:.3e}")
    assert d < 1e-4, d
    for name in ADAPTERS:
        print(f"max |W + s*B@A by hand - logits_{name}| = {diffs['hand_merged_' + name]:.3e}")
    total = 0
    for root, _, files in os.walk(out):
        for f in sorted(files):
            p = os.path.join(root, f)
            total += os.path.getsize(p)
            print(f"  {os.path.relpath(p, out):45s} {os.path.getsize(p):8d} bytes")
    print(f"total {total} bytes")
    assert total < 1_000_000

    if not args.no_self_test:
        check = os.path.join(os.path.dirname(os.path.abspath(__file__)), "check_anymal_adapter.py")
        r = subprocess.run([sys.executable, check, "--base", base_dir, "--self-test"])
        if r.returncode != 0:
            sys.exit("self-test of check_anymal_adapter.py failed")


if __name__ == "__main__":
    main()
