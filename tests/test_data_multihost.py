"""Two real processes (jax.distributed on 127.0.0.1, gloo, 4 CPU devices each) load disjoint
shares that assemble into exactly the single-process global batches."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from jaxembed.data import BatchIterator, batch_sharding
from jaxembed.data.batching import pick_bucket

from data_helpers.scenario import STEPS, make_config, make_specs
from data_helpers.synthetic import tiny_tokenizer

WORKER = Path(__file__).parent / "data_helpers" / "multihost_worker.py"
TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(out_dir: Path) -> None:
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(i), "2", port, str(out_dir)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT_S)[0].decode(errors="replace"))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"multi-host workers hung for more than {TIMEOUT_S}s")
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"worker {i} failed:\n{logs[i][-4000:]}"


def _reference() -> list[dict[str, np.ndarray]]:
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    specs, _ = make_specs()
    with BatchIterator(specs, tiny_tokenizer(), make_config(), sharding=batch_sharding(mesh)) as it:
        return [{k: np.asarray(v) for k, v in next(it).items()} for _ in range(STEPS)]


def test_two_processes_assemble_the_single_process_batches(tmp_path):
    _run_workers(tmp_path)
    results = [dict(np.load(tmp_path / f"proc{i}.npz")) for i in range(2)]
    reference = _reference()
    half = make_config().global_batch_size // 2
    assert results[0]["rows"].tolist() == [0, half]
    assert results[1]["rows"].tolist() == [half, 2 * half]

    bucket_disagreements = 0
    for step, ref in enumerate(reference):
        for key, expected in ref.items():
            for r in results:
                np.testing.assert_array_equal(r[f"global/{step}/{key}"], expected, err_msg=key)
                if step >= 2:
                    np.testing.assert_array_equal(r[f"resumed/{step}/{key}"], expected)
            for i, r in enumerate(results):
                np.testing.assert_array_equal(
                    r[f"local/{step}/{key}"], expected[i * half : (i + 1) * half]
                )
        # Each process's own rows alone would often pick a different bucket: the agreement
        # is what keeps the global shapes consistent.
        buckets = make_config().passage_buckets
        local = [
            pick_bucket(int(r[f"local/{step}/passage_attention_mask"].sum(-1).max()), buckets)
            for r in results
        ]
        bucket_disagreements += local[0] != local[1]
    assert bucket_disagreements > 0

    # Disjoint shares: no record was read by both processes (4 steps stay within epoch 0).
    for d in range(2):
        reads = [set(r[f"reads/{d}"].tolist()) for r in results]
        assert reads[0] and reads[1] and not reads[0] & reads[1]
