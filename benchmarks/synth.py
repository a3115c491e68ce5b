"""`jaxembed synth` throughput: bounded concurrency vs one request at a time, same server.

An LLM server's latency, not the client, bounds synthetic-data generation; what the client
decides is how many requests it keeps in flight. Both runs ask the same scripted
OpenAI-compatible server on 127.0.0.1 (the tests' FakeLLM: real HTTP, real `openai` client)
that answers every request after a fixed latency, for the same seed_corpus items; the
baseline is `--concurrency 1` (what a loop over `client.chat.completions.create` does), the
other `--concurrency N`, after one untimed warm-up run. Reported: items/s of each, their
ratio, and the ideal ratio (N) the client could reach if it added no time of its own.
Rounds alternate; medians are reported.

    python benchmarks/synth.py [--count 96] [--latency 0.05] [--concurrency 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from jaxembed.cli import main  # noqa: E402

from data_helpers.fake_llm import FakeLLM  # noqa: E402 - the tests' scripted server


def answer_after(latency: float):
    def respond(prompt: str, n: int):
        # random words, so that the near-duplicate filter keeps every query
        words = [hashlib.sha1(f"{n}-{k}".encode()).hexdigest()[:8] for k in range(6)]
        return ("sleep", latency, json.dumps({"query": " ".join(words)}))

    return respond


def write_corpus(path: Path, docs: int) -> None:
    with path.open("w") as f:
        for i in range(docs):
            text = f"study {i} measured outcome {i % 7} in a cohort of {100 + i} patients"
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": text}) + "\n")


def timed_run(url: str, corpus: Path, out: Path, count: int, concurrency: int) -> float:
    start = time.perf_counter()
    code = main(["synth", "--quiet", "--endpoint", url, "--corpus", str(corpus),
                 "--count", str(count), "--output", str(out), "--min-query-words", "1",
                 "--concurrency", str(concurrency), "--batch", "16"])  # fmt: skip
    seconds = time.perf_counter() - start
    written = sum(1 for line in out.read_text().splitlines() if line.strip())
    if code != 0 or written != count:
        raise SystemExit(f"run at concurrency {concurrency} failed: exit {code}, {written} records")
    return seconds


def main_() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=96)
    p.add_argument("--latency", type=float, default=0.05, help="server seconds per answer")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    times: dict[int, list[float]] = {1: [], args.concurrency: []}
    with tempfile.TemporaryDirectory() as tmp, FakeLLM(answer_after(args.latency)) as llm:
        root = Path(tmp)
        corpus = root / "corpus.jsonl"
        write_corpus(corpus, args.count)
        timed_run(llm.url, corpus, root / "warmup.jsonl", 8, 8)  # imports, first connection
        for r in range(args.rounds):
            for c in (1, args.concurrency):
                out = root / f"round{r}-c{c}.jsonl"
                times[c].append(timed_run(llm.url, corpus, out, args.count, c))

    rate = {c: args.count / statistics.median(ts) for c, ts in times.items()}
    print(f"{args.count} items, server latency {args.latency * 1000:.0f} ms, "
          f"{args.rounds} rounds (medians)")  # fmt: skip
    print(f"  concurrency 1 (baseline): {rate[1]:7.1f} items/s")
    print(f"  concurrency {args.concurrency}:           {rate[args.concurrency]:7.1f} items/s")
    print(f"  ratio: {rate[args.concurrency] / rate[1]:.2f}x (ideal {args.concurrency}x); "
          f"latency-bound ceiling {1 / args.latency:.1f} items/s at concurrency 1")  # fmt: skip


if __name__ == "__main__":
    main_()
