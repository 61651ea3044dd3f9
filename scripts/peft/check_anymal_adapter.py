#!/usr/bin/env python3
"""Check that an adapter anymal wrote in PEFT format loads cleanly in the real `peft` package and
gives the logits anymal computed with it.

    python scripts/peft/check_anymal_adapter.py --base tests/fixtures/peft/base DIR [--tol 1e-4]

DIR holds adapter_config.json + adapter_model.safetensors (PEFT's format) and
anymal_logits.safetensors with `input_ids` (int64 (b, t)) and `logits` (float32 (b, t, vocab)),
which anymal computed with that adapter on that base (no attention mask: every token real).

The script:
  1. loads the base (float32, eager attention) and the adapter with PeftModel.from_pretrained,
     failing if peft warns about missing or unexpected keys;
  2. compares the adapter's tensor names with the ones PEFT itself would save for that
     adapter_config.json (get_peft_model_state_dict): any missing or unexpected key fails. This
     matters because PeftModel.from_pretrained only warns about missing keys, and silently drops
     unexpected ones;
  3. checks every loaded LoRA tensor equals the file's (so nothing was skipped or reshaped);
  4. computes the logits and prints max |peft - anymal|.
Exit status: 0 ok; 1 logits differ by more than --tol; 2 the adapter does not load cleanly.

`--self-test` (needs only --base; reads expected.safetensors beside it): builds fake "anymal"
folders from the fixture's PEFT adapters (tensors re-saved without safetensors metadata, as
candle writes them; one with only the adapter_config.json fields anymal writes) and peft's own
logits, and checks that they pass, and that wrong logits, a missing key, an unexpected key,
unprefixed keys, adapter-named keys, a config naming modules the file lacks and a dropped use_rslora all fail.
"""

import argparse
import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
import peft  # noqa: E402
from peft import PeftModel, get_peft_model_state_dict  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

torch.set_num_threads(1)
transformers.utils.logging.disable_progress_bar()

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ANYMAL_LOGITS = "anymal_logits.safetensors"


class AdapterLoadError(Exception):
    pass


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(f"{record.name}: {record.getMessage()}")


def load_base(base_dir):
    m = AutoModelForCausalLM.from_pretrained(
        base_dir, dtype=torch.float32, attn_implementation="eager"
    )
    m.eval()
    return m


def load_adapter_strict(base_dir, adapter_dir, verbose=True):
    """PeftModel.from_pretrained, then proof that every tensor in the file landed in the model and
    that the model expects no tensor the file lacks. Raises AdapterLoadError otherwise."""
    for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not os.path.exists(os.path.join(adapter_dir, f)):
            raise AdapterLoadError(f"{adapter_dir}: no {f}")
    with open(os.path.join(adapter_dir, ADAPTER_CONFIG)) as f:
        cfg = json.load(f)
    if verbose:
        print(f"adapter_config.json: {json.dumps(cfg, sort_keys=True)}")
    else:
        print(f"adapter_config.json: r={cfg.get('r')} lora_alpha={cfg.get('lora_alpha')} "
              f"use_rslora={cfg.get('use_rslora')} target_modules={cfg.get('target_modules')}")
    file_sd = load_file(os.path.join(adapter_dir, ADAPTER_WEIGHTS))

    base = load_base(base_dir)
    cap = _Capture()
    loggers = [logging.getLogger(n) for n in ("peft", "transformers")]
    for lg in loggers:
        lg.addHandler(cap)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=False)
    finally:
        for lg in loggers:
            lg.removeHandler(cap)
    model.eval()
    msgs = [f"{w.category.__name__}: {w.message}" for w in caught] + cap.messages
    problems = []
    for m in msgs:
        low = m.lower()
        if "key" in low and ("missing" in low or "unexpected" in low or "mismatch" in low):
            problems.append(f"peft reported: {m}")
        elif verbose and not m.startswith(("FutureWarning", "DeprecationWarning")):
            print(f"note: warning while loading: {m}")

    # PEFT loads keys that carry the adapter name (`.lora_A.default.weight`) too, but never saves
    # them so: flag them, then compare under the saved name.
    named = [k for k in file_sd if re.search(r"\.lora_[AB]\.[^.]+\.weight$", k)]
    if named:
        problems.append(f"{len(named)} key(s) carry an adapter name, e.g. '{named[0]}': peft "
                        f"loads that form but saves '...lora_A.weight'; write the saved form")
        file_sd = {re.sub(r"(\.lora_[AB])\.[^.]+(\.weight)$", r"\1\2", k): v
                   for k, v in file_sd.items()}

    # What PEFT itself would save for this config on this base.
    model_sd = get_peft_model_state_dict(model, save_embedding_layers=False)
    missing = sorted(set(model_sd) - set(file_sd))
    unexpected = sorted(set(file_sd) - set(model_sd))
    if missing:
        problems.append(f"{len(missing)} key(s) the adapter config implies but the file lacks "
                        f"(peft leaves these at their init): {missing[:8]}")
    if unexpected:
        problems.append(f"{len(unexpected)} key(s) in the file that peft ignores: "
                        f"{unexpected[:8]}")
    for k in sorted(set(model_sd) & set(file_sd)):
        a, b = model_sd[k], file_sd[k]
        if tuple(a.shape) != tuple(b.shape):
            problems.append(f"{k}: shape {tuple(b.shape)} in file, {tuple(a.shape)} in model")
        elif not torch.equal(a.detach().cpu(), b.to(a.dtype)):
            problems.append(f"{k}: loaded value differs from the file's")
    n_lora = sum(1 for k in model_sd if ".lora_A." in k)
    if n_lora == 0:
        problems.append("no LoRA module was created: target_modules matched nothing")
    if problems:
        raise AdapterLoadError("adapter does not load cleanly:\n  " + "\n  ".join(problems))
    dtypes = sorted({str(t.dtype) for t in file_sd.values()})
    print(f"loaded {len(file_sd)} tensors ({n_lora} LoRA modules, {dtypes}); "
          f"keys match what peft {peft.__version__} saves; values loaded exactly")
    return model


@torch.no_grad()
def check(base_dir, adapter_dir, tol, verbose=True):
    """Returns max |peft logits - anymal logits|; raises AdapterLoadError on a bad adapter.
    verbose: print the whole adapter_config.json and peft's other warnings while loading."""
    lpath = os.path.join(adapter_dir, ANYMAL_LOGITS)
    if not os.path.exists(lpath):
        raise AdapterLoadError(f"{adapter_dir}: no {ANYMAL_LOGITS}")
    ref = load_file(lpath)
    for k in ("input_ids", "logits"):
        if k not in ref:
            raise AdapterLoadError(f"{lpath}: no tensor '{k}' (has {sorted(ref)})")
    ids, want = ref["input_ids"], ref["logits"]
    if ids.dtype != torch.int64:
        print(f"note: input_ids are {ids.dtype}, expected int64; converting")
        ids = ids.to(torch.int64)
    if want.dtype != torch.float32:
        print(f"note: logits are {want.dtype}, expected float32")
    model = load_adapter_strict(base_dir, adapter_dir, verbose=verbose)
    got = model(input_ids=ids).logits.to(torch.float32)
    if tuple(got.shape) != tuple(want.shape):
        raise AdapterLoadError(f"logits shape: peft {tuple(got.shape)}, anymal "
                               f"{tuple(want.shape)}")
    diff = (got - want.to(torch.float32)).abs()
    d = diff.max().item()
    print(f"input_ids {tuple(ids.shape)}; max |logits| {got.abs().max().item():.4f}")
    print(f"max |peft - anymal| = {d:.3e} (mean {diff.mean().item():.3e}, tol {tol:g})")
    same = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    print(f"argmax agreement {same * 100:.1f}%")
    return d


def run_one(base_dir, adapter_dir, tol):
    try:
        d = check(base_dir, adapter_dir, tol)
    except AdapterLoadError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 2
    if not (d <= tol):
        print(f"FAIL: logits differ by {d:.3e} > tol {tol:g}", file=sys.stderr)
        return 1
    print("OK")
    return 0


def anymal_style_config(cfg):
    """Keep only the fields anymal's LoraSet::peft_config writes (llm/src/lora.rs)."""
    keep = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM",
        "base_model_name_or_path": cfg["base_model_name_or_path"], "r": cfg["r"],
        "lora_alpha": cfg["lora_alpha"], "lora_dropout": cfg["lora_dropout"],
        "use_rslora": cfg["use_rslora"], "target_modules": sorted(cfg["target_modules"]),
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
        "init_lora_weights": True, "modules_to_save": None, "use_dora": False,
        "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None,
        "layers_pattern": None, "revision": None,
    }
    cfg.clear()
    cfg.update(keep)


def self_test(base_dir, tol):
    fixture = os.path.dirname(os.path.abspath(base_dir))
    expected = load_file(os.path.join(fixture, "expected.safetensors"))
    ids = expected["input_ids"]
    failures = []

    def fake(tmp, src, logits, mutate_sd=None, mutate_cfg=None):
        d = os.path.join(tmp, f"case{len(os.listdir(tmp))}")
        os.makedirs(d)
        with open(os.path.join(fixture, src, ADAPTER_CONFIG)) as f:
            cfg = json.load(f)
        if mutate_cfg:
            mutate_cfg(cfg)
        with open(os.path.join(d, ADAPTER_CONFIG), "w") as f:
            json.dump(cfg, f, indent=2)
        sd = load_file(os.path.join(fixture, src, ADAPTER_WEIGHTS))
        if mutate_sd:
            mutate_sd(sd)
        save_file(sd, os.path.join(d, ADAPTER_WEIGHTS))  # no metadata, as candle writes
        save_file({"input_ids": ids.clone(), "logits": logits.clone()},
                  os.path.join(d, ANYMAL_LOGITS))
        return d

    def expect(label, d, want):
        print(f"\n=== self-test: {label} (expect {want}) ===")
        try:
            diff = check(base_dir, d, tol, verbose=False)
            got = "pass" if diff <= tol else "logit-fail"
        except AdapterLoadError as e:
            print(f"AdapterLoadError: {e}")
            got = "load-fail"
        print(f"-> {got}")
        if got != want:
            failures.append(f"{label}: expected {want}, got {got}")

    q1 = "base_model.model.model.layers.1.self_attn.q_proj"
    with tempfile.TemporaryDirectory(prefix="anymal-peft-selftest-") as tmp:
        expect("adapter_all, peft's own logits",
               fake(tmp, "adapter_all", expected["logits_adapter_all"]), "pass")
        expect("adapter_rslora_qv, peft's own logits",
               fake(tmp, "adapter_rslora_qv", expected["logits_adapter_rslora_qv"]), "pass")
        expect("adapter_all, merged model's logits",
               fake(tmp, "adapter_all", expected["logits_merged_all"]), "pass")
        expect("adapter_rslora_qv, minimal config (the fields anymal's lora.rs writes)",
               fake(tmp, "adapter_rslora_qv", expected["logits_adapter_rslora_qv"],
                    mutate_cfg=anymal_style_config), "pass")
        expect("adapter_all, logits + 1e-3",
               fake(tmp, "adapter_all", expected["logits_adapter_all"] + 1e-3), "logit-fail")
        expect("adapter_all, base logits",
               fake(tmp, "adapter_all", expected["logits_base"]), "logit-fail")
        expect("adapter_all, a lora_B missing",
               fake(tmp, "adapter_all", expected["logits_adapter_all"],
                    mutate_sd=lambda sd: sd.pop(f"{q1}.lora_B.weight")), "load-fail")
        expect("adapter_all, an extra key",
               fake(tmp, "adapter_all", expected["logits_adapter_all"],
                    mutate_sd=lambda sd: sd.__setitem__(
                        "base_model.model.lm_head.lora_A.weight", torch.zeros(4, 64))),
               "load-fail")
        expect("adapter_all, keys without the base_model.model. prefix",
               fake(tmp, "adapter_all", expected["logits_adapter_all"],
                    mutate_sd=lambda sd: [sd.__setitem__(k[len("base_model.model."):], sd.pop(k))
                                          for k in list(sd)]),
               "load-fail")
        expect("adapter_all, keys with the adapter name (.lora_A.default.weight)",
               fake(tmp, "adapter_all", expected["logits_adapter_all"],
                    mutate_sd=lambda sd: [sd.__setitem__(k.replace(".weight", ".default.weight"),
                                                         sd.pop(k)) for k in list(sd)]),
               "load-fail")
        expect("adapter_rslora_qv, config also targets o_proj",
               fake(tmp, "adapter_rslora_qv", expected["logits_adapter_rslora_qv"],
                    mutate_cfg=lambda c: c.__setitem__("target_modules",
                                                       ["q_proj", "v_proj", "o_proj"])),
               "load-fail")
        expect("adapter_rslora_qv, use_rslora dropped from the config",
               fake(tmp, "adapter_rslora_qv", expected["logits_adapter_rslora_qv"],
                    mutate_cfg=lambda c: c.__setitem__("use_rslora", False)), "logit-fail")
    print()
    if failures:
        print("SELF-TEST FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print("self-test OK (12 cases)")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="HF folder of the base model")
    ap.add_argument("dir", nargs="?", help="adapter folder written by anymal")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    transformers.logging.set_verbosity_warning()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"peft {peft.__version__}")
    if args.self_test:
        sys.exit(self_test(args.base, args.tol))
    if not args.dir:
        ap.error("DIR is required (or --self-test)")
    sys.exit(run_one(args.base, args.dir, args.tol))


if __name__ == "__main__":
    main()
