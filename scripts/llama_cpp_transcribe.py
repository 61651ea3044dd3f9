#!/usr/bin/env python3
"""Transcribe a manifest with llama.cpp and an exported mmproj, beside `anymal eval`.

The README's "Deploy" figures for the shipped exportable recipe come from this:

    anymal export --run runs/audio-mmproj_whisper-tiny-en_smollm2-135m --out adapter.mmproj.gguf
    anymal eval --run runs/audio-mmproj_whisper-tiny-en_smollm2-135m --manifest TEST.jsonl
    python3 scripts/llama_cpp_transcribe.py --cli LLAMA_MTMD_CLI --mmproj adapter.mmproj.gguf \
        --manifest TEST.jsonl --out llama_cpp-test.jsonl \
        --anymal runs/audio-mmproj_whisper-tiny-en_smollm2-135m/predictions-test.jsonl

`llama-mtmd-cli` is the one scripts/fixtures/make_mmproj_fixtures.sh builds. Each clip is
resampled to 16 kHz by FFmpeg first (llama.cpp would resample with its own linear resampler),
answered greedily (flash attention off, 96 tokens, the training prompt passed through without
a chat template), and written as {"id", "text", "prediction"}. With --anymal, it prints how many
answers are identical and the WER of both sides by one simple normalization (lowercase, words
of letters, digits and apostrophes).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

PASS_THROUGH = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def answer(stdout):
    # llama-mtmd-cli prints "\n" once the prompt is evaluated and "\n\n" on exit.
    a = stdout[1:] if stdout.startswith("\n") else stdout
    return a[:-2] if a.endswith("\n\n") else a


def words(s):
    return re.sub(r"[^a-z0-9' ]", " ", s.lower()).split()


def edits(a, b):
    d = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        prev, d[0] = d[:], i
        for j in range(1, len(b) + 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
    return d[-1]


def wer(rows):
    e = sum(edits(words(r["text"]), words(r["prediction"])) for r in rows)
    n = sum(len(words(r["text"])) for r in rows)
    return 100.0 * e / max(n, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cli", required=True, help="llama-mtmd-cli")
    ap.add_argument("--mmproj", required=True)
    ap.add_argument("--manifest", required=True, help="JSONL with audio and text")
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--llm",
        default=os.path.expanduser("~/.cache/anymal/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    )
    ap.add_argument("--prompt", default="<__media__>\nTranscript:")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--anymal", help="predictions-*.jsonl of `anymal eval` on the same manifest")
    a = ap.parse_args()

    base = os.path.dirname(os.path.abspath(a.manifest))
    rows = []
    with tempfile.TemporaryDirectory() as tmp, open(a.manifest) as man:
        for i, line in enumerate(man):
            d = json.loads(line)
            src = d["audio"] if os.path.isabs(d["audio"]) else os.path.join(base, d["audio"])
            wav = os.path.join(tmp, f"{i}.wav")
            subprocess.run(
                ["ffmpeg", "-loglevel", "error", "-y", "-i", src, "-ar", "16000", "-ac", "1",
                 "-c:a", "pcm_s16le", wav],
                check=True,
            )
            r = subprocess.run(
                [a.cli, "-m", a.llm, "--mmproj", a.mmproj, "--audio", wav, "-p", a.prompt,
                 "--jinja", "--chat-template", PASS_THROUGH, "--temp", "0",
                 "-n", str(a.max_tokens), "-fa", "off"],
                capture_output=True, text=True, check=True,
            )
            rows.append({"id": d.get("id", i), "text": d["text"], "prediction": answer(r.stdout)})
    with open(a.out, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{len(rows)} answers -> {a.out}; WER {wer(rows):.1f}%", file=sys.stderr)
    if a.anymal:
        theirs = [json.loads(l) for l in open(a.anymal)]
        same = sum(x["prediction"].strip() == y["prediction"].strip() for x, y in zip(theirs, rows))
        print(
            f"identical answers: {same} of {len(rows)}; WER anymal {wer(theirs):.1f}%, "
            f"llama.cpp {wer(rows):.1f}%",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
