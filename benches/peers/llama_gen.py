#!/usr/bin/env python3
"""llama.cpp (llama-cpp-python) peer of `anymal bench --only generate`.

  pp512: after a reset, evaluate 512 deterministic token ids (100 + (i*7919) % 10000) in
         batches of n_batch=512; tokens/s of that prompt evaluation.
  tg128: after a reset, evaluate the prompt "The history of the printing press", then 128
         times take the argmax of the last position's logits (greedy) and evaluate that one
         token; tokens/s over those 128 single-token evaluations (sampling time included,
         prompt excluded).

Settings: n_threads=2, n_threads_batch=2, n_ctx=1024, n_batch=512, verbose=False. The
median over --reps is reported. Prints ONE JSON line on stdout; everything else to stderr.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

PROMPT = "The history of the printing press"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="path to the GGUF file")
    p.add_argument("--reps", type=int, default=3, help="repetitions (the median is reported)")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def main():
    args = parse_args()
    import numpy as np
    import llama_cpp

    t = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=args.model,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_ctx=1024,
        n_batch=512,
        verbose=False,
    )
    n_vocab = llm.n_vocab()
    log(f"loaded {os.path.basename(args.model)} in {time.perf_counter() - t:.1f} s")

    def last_logits():
        # With logits_all off, Llama.eval does not copy logits into llm.scores; read the last
        # position's row straight from the context (a view, no copy).
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,))

    def pp512():
        ids = [100 + (i * 7919) % 10000 for i in range(512)]
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        return len(ids) / (time.perf_counter() - t)

    prompt_ids = llm.tokenize(PROMPT.encode(), add_bos=True)

    def tg128():
        llm.reset()
        llm.eval(prompt_ids)
        out = []
        t = time.perf_counter()
        for _ in range(128):
            tok = int(np.argmax(last_logits()))
            llm.eval([tok])
            out.append(tok)
        s = time.perf_counter() - t
        return 128 / s, out

    # One untimed warm-up of each (page faults, thread pool start).
    t = time.perf_counter()
    pp512()
    _, toks = tg128()
    log(f"warm-up {time.perf_counter() - t:.1f} s")
    log("greedy continuation:", repr(llm.detokenize(toks[:24]).decode(errors="replace")))

    pp, tg = [], []
    for i in range(args.reps):
        pp.append(pp512())
        tg.append(tg128()[0])
        log(f"rep {i}: pp512 {pp[-1]:.1f} tok/s, tg128 {tg[-1]:.1f} tok/s")

    print(json.dumps({
        "tool": "llama.cpp",
        "what": "generate",
        "model": os.path.basename(args.model),
        "pp512": statistics.median(pp),
        "tg128": statistics.median(tg),
        "reps": args.reps,
        "threads": args.threads,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "llama_cpp_python": llama_cpp.__version__,
    }), flush=True)


if __name__ == "__main__":
    main()
