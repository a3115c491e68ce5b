"""One million 384-d corpus vectors mined in bounded memory.

The corpus (1.5 GB of float32) is written to a .npy file in chunks; a fresh Python process
mines 300 queries against it and reports its peak resident memory (VmHWM, reset after start-up
via /proc/self/clear_refs, so imports don't count). Loading the corpus, or handing it to one
faiss index, would take at least its 1.5 GB; the streamed search must stay under a quarter
of that. The negatives of a few queries are checked against a numpy scan of the same file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

N_DOCS, DIM, N_QUERIES, CHUNK = 1_000_000, 384, 300, 50_000
CORPUS_BYTES = N_DOCS * DIM * 4
BOUND = CORPUS_BYTES // 4

CHILD = r"""
import json, sys, time
import numpy as np
from jaxembed.mining.methods import MiningConfig
from jaxembed.mining.miner import mine_embeddings
from jaxembed.mining.report import MiningReport
from jaxembed.mining.sources import NpySource

def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}

corpus_path, query_path, positives_path = sys.argv[1:4]
positives = [[int(p)] for p in np.load(positives_path)]
queries, corpus = NpySource(query_path), NpySource(corpus_path)
config = MiningConfig("perc", 0.95, num_negatives=4, range_max=20)
report = MiningReport({})
baseline = status()["VmRSS"]
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # peak := current, so start-up doesn't count
start = time.perf_counter()
blocks = list(mine_embeddings(queries, corpus, np.arange(queries.n), positives, config,
                              report=report))
seconds = time.perf_counter() - start
print(json.dumps({"baseline": baseline, "peak": status()["VmHWM"], "seconds": seconds,
                  "negatives": np.concatenate([b.negatives for b in blocks]).tolist(),
                  "negatives_found": report.negatives}))
"""


def _write_corpus(path: Path, positives: np.ndarray) -> np.ndarray:
    """Random unit vectors, written chunk by chunk; returns the positives' rows."""
    rng = np.random.default_rng(0)
    kept = np.empty((len(positives), DIM), np.float32)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (N_DOCS, DIM)}
        )
        for start in range(0, N_DOCS, CHUNK):
            x = rng.standard_normal((CHUNK, DIM), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            inside = (positives >= start) & (positives < start + CHUNK)
            kept[inside] = x[positives[inside] - start]
            f.write(x.tobytes())
    return kept


def _numpy_scan(path: Path, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top k by reading the file chunk by chunk (the reference for a few queries)."""
    scores = []
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        for _ in range(0, N_DOCS, CHUNK):
            scores.append(queries @ np.fromfile(f, np.float32, CHUNK * DIM).reshape(CHUNK, DIM).T)
    table = np.concatenate(scores, axis=1)
    top = np.argsort(-table, axis=1)[:, :k]
    return top, np.take_along_axis(table, top, 1)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_million_vectors_mined_in_bounded_memory(tmp_path):
    rng = np.random.default_rng(1)
    positives = np.sort(rng.choice(N_DOCS, size=N_QUERIES, replace=False))
    corpus_path = tmp_path / "corpus.npy"
    try:
        pos_vectors = _write_corpus(corpus_path, positives)
        queries = pos_vectors + 0.06 * rng.standard_normal((N_QUERIES, DIM), dtype=np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        np.save(tmp_path / "q.npy", queries)
        np.save(tmp_path / "pos.npy", positives)
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                CHILD,
                str(corpus_path),
                str(tmp_path / "q.npy"),
                str(tmp_path / "pos.npy"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        growth = result["peak"] - result["baseline"]
        print(
            f"\n1M x 384 corpus ({CORPUS_BYTES / 2**20:.0f} MiB): peak RSS growth "
            f"{growth / 2**20:.0f} MiB over {result['baseline'] / 2**20:.0f} MiB at start, "
            f"{N_QUERIES} queries mined in {result['seconds']:.1f} s"
        )
        assert growth < BOUND, f"peak RSS grew by {growth / 2**20:.0f} MiB"
        assert result["negatives_found"] == 4 * N_QUERIES
        # The first three queries against an exact numpy scan, with the perc 0.95 rule.
        top, scores = _numpy_scan(corpus_path, queries[:3], 21)
        for q in range(3):
            pos = float(queries[q] @ pos_vectors[q])
            keep = [
                int(r)
                for r, s in zip(top[q], scores[q], strict=True)
                if r != positives[q] and s < 0.95 * pos
            ]
            assert result["negatives"][q] == keep[:4]
    finally:
        corpus_path.unlink(missing_ok=True)
