#!/usr/bin/env python3
"""Side-by-side benchmark: anymal against its peers, on this machine.

    python benches/peers/run.py [--rounds 3] [--models smollm2,gemma3] [--anymal PATH]
                                [--anymal-compute f32|int8] [--skip-setup]

For each round and each model, every measurement runs as a separate process, alternating
tools (anymal, then its peer; the pair's order flips on odd rounds so slow drift of the
machine does not favour one side):

  align       anymal bench --only align --llm M --reps 3 --json   vs torch_align.py
  align_lora  anymal bench --only align --lora-qv ... --json      vs torch_align.py --lora-qv
  generate    anymal bench --only generate --llm M --json         vs llama_gen.py

The medians over rounds go in a markdown table with ratios and targets. Raw JSON lines go
to benches/peers/results/<date>.jsonl, the table to results/<date>.md. A run that fails
(non-zero exit, no JSON line, timeout) is recorded and reported as failed with the tail of
its stderr; it does not stop the benchmark.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent  # repository root

# Short name (anymal --llm) -> GGUF file in <cache>/models, as anymal's loader knows them.
MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3": "gemma-3-270m-q4_k_m.gguf",
}

# (measurement, anymal's peer, metric, higher is better, target ratio anymal/peer, label)
ROWS = [
    ("align", "pytorch", "samples_per_s", True, 2.0, "align samples/s"),
    ("align", "pytorch", "peak_rss_mib", False, 0.5, "align peak RSS MiB"),
    ("align_lora", "pytorch", "samples_per_s", True, 2.0, "align+LoRA q,v samples/s"),
    ("align_lora", "pytorch", "peak_rss_mib", False, 0.5, "align+LoRA q,v peak RSS MiB"),
    ("generate", "llama.cpp", "tg128", True, 0.8, "generate tg128 tokens/s"),
    ("generate", "llama.cpp", "pp512", True, 0.8, "generate pp512 tokens/s"),
]
# Figures kept in the medians printout (the table uses ROWS).
METRICS = {
    "align": ["samples_per_s", "step_s", "peak_rss_mib", "steps_peak_rss_mib"],
    "align_lora": ["samples_per_s", "step_s", "peak_rss_mib", "steps_peak_rss_mib"],
    "generate": ["tg128", "pp512", "peak_rss_mib"],
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--models", default="smollm2,gemma3",
                   help=f"comma-separated, from: {', '.join(MODELS)}")
    p.add_argument("--anymal", default=str(ROOT / "target" / "release" / "anymal"),
                   help="the anymal binary (default: target/release/anymal)")
    p.add_argument("--anymal-compute", choices=["f32", "int8"],
                   help="anymal bench --compute: the arithmetic of its many-row products "
                   "(default: anymal's own, f32 for align and int8 for prompts)")
    p.add_argument("--skip-setup", action="store_true", help="do not run setup.sh")
    p.add_argument("--venv", default=os.environ.get("PEERS_VENV", str(HERE / ".venv")),
                   help="the peers' venv (default: $PEERS_VENV or benches/peers/.venv)")
    p.add_argument("--python", help="interpreter for the peers (default: the venv's, else this one)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="peers' threads (default: all cores, as anymal uses)")
    p.add_argument("--reps", type=int, default=3, help="timed steps per align run, both tools")
    p.add_argument("--gen-reps", type=int, default=3, help="repetitions per llama_gen.py run")
    p.add_argument("--only", default="align,align_lora,generate",
                   help="measurements to run (comma-separated)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    p.add_argument("--out", default=str(HERE / "results"), help="results folder")
    p.add_argument("--from-jsonl", help="run nothing: summarize the raw results of an earlier "
                   "(possibly interrupted) run into its table")
    return p.parse_args()


def cache_dir():
    """anymal's cache folder: $ANYMAL_CACHE, else ~/.cache/anymal."""
    d = os.environ.get("ANYMAL_CACHE")
    return Path(d) if d else Path.home() / ".cache" / "anymal"


def machine():
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or cpu
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = f", {int(line.split()[1]) / 1024**2:.0f} GiB RAM"
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} threads{mem}"


def git_commit():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def last_json_line(stdout):
    """The last stdout line that starts with '{', parsed; None if there is none."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def tail(text, n=15):
    lines = [l for l in (text or "").splitlines() if l.strip()]
    return "\n".join(lines[-n:])


def run_one(cmd, timeout, env):
    """Run one benchmark process; (parsed JSON or None, failure reason or None, info)."""
    log("$ " + " ".join(shlex.quote(c) for c in cmd))
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                           cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        return None, f"timed out after {timeout:.0f} s", {"stderr_tail": tail(err)}
    except OSError as e:
        return None, f"could not start: {e}", {"stderr_tail": ""}
    info = {"rc": p.returncode, "wall_s": round(time.perf_counter() - t, 2),
            "stderr_tail": tail(p.stderr)}
    if p.returncode != 0:
        return None, f"exit status {p.returncode}", info
    rec = last_json_line(p.stdout)
    if rec is None:
        info["stdout_tail"] = tail(p.stdout)
        return None, "no JSON line on stdout", info
    return rec, None, info


def commands(args, py, key, gguf):
    """measurement -> [(tool, argv)], anymal first."""
    anymal = [args.anymal, "bench", "--llm", key, "--json"]
    if args.anymal_compute:
        anymal += ["--compute", args.anymal_compute]
    peer_align = [py, str(HERE / "torch_align.py"), "--model", str(gguf),
                  "--reps", str(args.reps), "--threads", str(args.threads)]
    return {
        "align": [
            ("anymal", anymal + ["--only", "align", "--reps", str(args.reps)]),
            ("pytorch", peer_align),
        ],
        "align_lora": [
            ("anymal", anymal + ["--only", "align", "--lora-qv", "--reps", str(args.reps)]),
            ("pytorch", peer_align + ["--lora-qv"]),
        ],
        "generate": [
            ("anymal", anymal + ["--only", "generate"]),
            ("llama.cpp", [py, str(HERE / "llama_gen.py"), "--model", str(gguf),
                           "--reps", str(args.gen_reps), "--threads", str(args.threads)]),
        ],
    }


def fmt(x):
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def summarize(records):
    """(model, measurement, tool) -> {"ok": n, "runs": n, metric: median, "failures": [...]}."""
    out = {}
    for r in records:
        k = (r["model_key"], r["measurement"], r["tool"])
        s = out.setdefault(k, {"ok": 0, "runs": 0, "values": {}, "failures": []})
        s["runs"] += 1
        if r.get("failed"):
            s["failures"].append(r)
            continue
        s["ok"] += 1
        for m in METRICS[r["measurement"]]:
            if isinstance(r.get(m), (int, float)):
                s["values"].setdefault(m, []).append(float(r[m]))
    for s in out.values():
        s["median"] = {m: statistics.median(v) for m, v in s["values"].items()}
    return out


def table(summary, models, header):
    lines = header + [
        "",
        "| model | measurement | anymal | peer | peer value | ratio anymal/peer | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    failures = []
    for key in models:
        for meas, peer, metric, higher, target, label in ROWS:
            a = summary.get((key, meas, "anymal"))
            b = summary.get((key, meas, peer))
            if a is None and b is None:
                continue  # measurement not run

            def cell(s):
                if s is None:
                    return None, "not run"
                v = s["median"].get(metric)
                if v is None:
                    return None, f"failed ({s['ok']}/{s['runs']} ok)"
                note = "" if s["ok"] == s["runs"] else f" ({s['ok']}/{s['runs']} ok)"
                return v, fmt(v) + note

            av, acell = cell(a)
            bv, bcell = cell(b)
            if av is not None and bv:
                ratio = av / bv
                met = "yes" if (ratio >= target if higher else ratio <= target) else "no"
                rcell = f"{ratio:.2f}x"
            else:
                rcell, met = "-", "-"
            tcell = f"{'>=' if higher else '<='} {target}x"
            lines.append(f"| {key} | {label} | {acell} | {peer} | {bcell} | {rcell} | {tcell} | {met} |")
            for s in (a, b):
                if s is not None and metric in ("samples_per_s", "tg128"):
                    failures.extend(s["failures"])  # list each failed run once per measurement
    # The PyTorch peak includes transformers' GGUF loading; show the steps' own peak too.
    extra = []
    for key in models:
        for meas in ("align", "align_lora"):
            s = summary.get((key, meas, "pytorch"))
            if s and "steps_peak_rss_mib" in s["median"]:
                extra.append(f"{key} {meas}: {fmt(s['median']['steps_peak_rss_mib'])} MiB")
    if extra:
        lines += ["", "PyTorch peak RSS during the training steps alone (after the GGUF loader's "
                  "garbage is freed; the table's figure is the whole process, loading "
                  "included, like anymal's): " + "; ".join(extra) + "."]
    if failures:
        lines += ["", "## Failed runs", ""]
        for f in failures:
            lines += [f"### {f['model_key']} {f['measurement']} {f['tool']}, round {f['round']}: "
                      f"{f['reason']}", "", "```", f"$ {f['cmd']}", f.get("stderr_tail", ""), "```", ""]
    return "\n".join(lines) + "\n"


def main():
    args = parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        sys.exit(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}")
    wanted = [m.strip() for m in args.only.split(",") if m.strip()]
    bad = [m for m in wanted if m not in METRICS]
    if bad:
        sys.exit(f"unknown measurement(s) {bad}; known: {', '.join(METRICS)}")

    if args.from_jsonl:
        src = Path(args.from_jsonl)
        records = [json.loads(l) for l in src.read_text().splitlines() if l.strip()]
        rounds = max((r.get("round", 1) for r in records), default=0)
        report(records, models, args, rounds, datetime.datetime.now().astimezone(), None,
               src.with_suffix(".md"), src)
        return

    if not args.skip_setup:
        env = dict(os.environ, PEERS_VENV=args.venv)
        if subprocess.run(["bash", str(HERE / "setup.sh")], env=env).returncode != 0:
            sys.exit("setup.sh failed (use --skip-setup with --python to use another interpreter)")
    venv_py = Path(args.venv) / "bin" / "python"
    py = args.python or (str(venv_py) if venv_py.exists() else sys.executable)

    ggufs = {m: cache_dir() / "models" / MODELS[m] for m in models}
    for m, g in ggufs.items():
        if not g.exists():
            log(f"warning: {g} not found (scripts/fetch-assets.sh fetches it); its runs will fail")
    if not Path(args.anymal).exists():
        log(f"warning: {args.anymal} not found (cargo build --release); anymal runs will fail")

    now = datetime.datetime.now().astimezone()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = now.strftime("%Y-%m-%d")
    if (out_dir / f"{stem}.jsonl").exists() or (out_dir / f"{stem}.md").exists():
        stem = now.strftime("%Y-%m-%d_%H%M%S")  # never overwrite an earlier run of the day
    jsonl_path, md_path = out_dir / f"{stem}.jsonl", out_dir / f"{stem}.md"

    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load0 is not None and load0 > 0.5:
        log(f"warning: load average {load0:.2f}: other work on this machine skews the figures")

    # Peers' env: no progress bars; torch/llama threads come from their flags.
    env = dict(os.environ, TQDM_DISABLE="1")
    records = []
    with open(jsonl_path, "w") as jf:
        for rnd in range(args.rounds):
            for key in models:
                cmds = commands(args, py, key, ggufs[key])
                for meas in wanted:
                    pair = cmds[meas] if rnd % 2 == 0 else cmds[meas][::-1]
                    for tool, cmd in pair:
                        log(f"\n[round {rnd + 1}/{args.rounds}] {key} {meas} {tool}")
                        rec, reason, info = run_one(cmd, args.timeout, env)
                        if rec is None:
                            log(f"FAILED: {reason}\n{info.get('stderr_tail', '')}")
                            rec = {"tool": tool, "failed": True, "reason": reason, **info}
                        else:
                            rec["wall_s"] = info["wall_s"]
                            log(json.dumps(rec))
                        # Our own keys, so records group even if a tool names the model
                        # differently (file name vs short name).
                        rec.update(tool=tool, model_key=key, measurement=meas, round=rnd + 1,
                                   cmd=" ".join(shlex.quote(c) for c in cmd))
                        records.append(rec)
                        jf.write(json.dumps(rec) + "\n")
                        jf.flush()

    report(records, models, args, args.rounds, now, load0, md_path, jsonl_path)


def report(records, models, args, rounds, now, load0, md_path, jsonl_path):
    """Prints the medians and writes the markdown table."""
    summary = summarize(records)
    print("Medians over rounds (successful runs / runs):")
    for (key, meas, tool), s in sorted(summary.items()):
        vals = ", ".join(f"{m} {fmt(v)}" for m, v in s["median"].items()) or "no successful run"
        print(f"  {key:8} {meas:10} {tool:9} ({s['ok']}/{s['runs']}): {vals}")

    versions = {}
    for r in records:
        for k in ("torch", "llama_cpp_python"):
            if k in r:
                versions[k] = r[k]
    header = [
        f"# anymal vs peers, {now.strftime('%Y-%m-%d %H:%M %Z')}",
        "",
        f"- machine: {machine()}; load average at start "
        + (f"{load0:.2f}" if load0 is not None else "unknown"),
        f"- threads: peers {args.threads} (torch.set_num_threads, llama.cpp n_threads); "
        "anymal uses all cores",
        f"- anymal {git_commit()}, compute "
        + (args.anymal_compute or "default (align f32, prompts int8)") + "; "
        + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in sorted(versions.items())),
        f"- {rounds} round(s), median over rounds; align: batch 8 x (32 projected + 32 "
        f"text tokens), {args.reps} timed steps per run; peers: PyTorch fp32 (GGUF dequantized "
        "by transformers, lm_head at label positions only), llama-cpp-python",
    ]
    md = table(summary, models, header)
    print()
    print(md)
    md_path.write_text(md)
    log(f"raw results: {jsonl_path}\ntable: {md_path}")

if __name__ == "__main__":
    main()
