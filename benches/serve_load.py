#!/usr/bin/env python3
"""Aggregate throughput of `anymal serve` under concurrent clients (standard library only).

For each `--batch` value, starts `anymal serve --batch B` on a free port, then for each client
count C sends the same set of requests (different prompts, greedy, a fixed max_tokens) from C
client threads at once and reports completion tokens per second over the wall time of the
whole set, and the median request latency. Alternates server settings between rounds.

    cargo build --release && python3 benches/serve_load.py --llm smollm2 --rounds 2
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

TOPICS = [
    "the printing press", "the steam engine", "the telescope", "paper money",
    "the compass", "the bicycle", "glass lenses", "the telegraph", "the windmill",
    "the clock", "the microscope", "the camera", "the radio", "the elevator",
    "the typewriter", "the piano",
]


def start_server(binary, llm, batch):
    p = subprocess.Popen(
        [binary, "serve", "--llm", llm, "--port", "0", "--batch", str(batch)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in p.stderr:
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            # Keep draining the log so the server never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, m.group(1)
    raise SystemExit(f"the server did not start (exit {p.wait()})")


def ask(url, model, topic, max_tokens):
    body = json.dumps({
        "model": model, "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": f"Tell me about {topic}."}],
    }).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", body,
                                 {"Content-Type": "application/json"})
    t = time.time()
    with urllib.request.urlopen(req, timeout=600) as r:
        v = json.load(r)
    return v["usage"]["completion_tokens"], time.time() - t


def load(url, model, clients, requests, max_tokens):
    t = time.time()
    with ThreadPoolExecutor(clients) as ex:
        res = list(ex.map(lambda i: ask(url, model, TOPICS[i % len(TOPICS)], max_tokens),
                          range(requests)))
    wall = time.time() - t
    tokens = sum(n for n, _ in res)
    return tokens / wall, statistics.median(s for _, s in res)


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--binary", default="target/release/anymal")
    a.add_argument("--llm", default="smollm2")
    a.add_argument("--batches", default="1,8")
    a.add_argument("--clients", default="1,8")
    a.add_argument("--requests", type=int, default=16)
    a.add_argument("--max-tokens", type=int, default=64)
    a.add_argument("--rounds", type=int, default=2)
    args = a.parse_args()
    results = {}
    for _ in range(args.rounds):
        for b in [int(x) for x in args.batches.split(",")]:
            p, url = start_server(args.binary, args.llm, b)
            try:
                model = json.load(urllib.request.urlopen(url + "/v1/models"))["data"][0]["id"]
                ask(url, model, "warm-up", 4)
                for c in [int(x) for x in args.clients.split(",")]:
                    rate, lat = load(url, model, c, args.requests, args.max_tokens)
                    results.setdefault((b, c), []).append((rate, lat))
                    print(f"batch {b}, {c} clients: {rate:.1f} tokens/s, median latency {lat:.1f} s",
                          file=sys.stderr)
            finally:
                p.terminate()
                p.wait()
    print(f"| --batch | clients | tokens/s (all requests) | median request s |")
    print("|---|---|---|---|")
    for (b, c), v in sorted(results.items()):
        print(f"| {b} | {c} | {statistics.median(r for r, _ in v):.1f} | "
              f"{statistics.median(l for _, l in v):.1f} |")


if __name__ == "__main__":
    main()
