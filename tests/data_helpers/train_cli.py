"""`jaxembed train` through its CLI on a small synthetic task: the task, the arguments, the
logged losses and subprocess runs, shared by the training-loop and fault-injection tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxembed.demo import train_tokenizer
from jaxembed.synthetic import make_task, write_task

TINY_CONFIG = Path(__file__).parents[2] / "configs" / "tiny.py"


def write_task_dir(directory: Path) -> Path:
    """A small paraphrase-retrieval task (train.jsonl, eval/) with its BPE tokenizer."""
    task = make_task(0, train_docs=200, eval_docs=50, eval_queries=20)
    write_task(task, directory)
    texts = [r["query"] for r in task.train_records] + [task.instruction] * 5
    texts += [p["text"] for r in task.train_records for p in r["positives"]]
    tokenizer = train_tokenizer(texts, vocab_size=400)
    tokenizer.save_pretrained(str(directory / "tokenizer"))
    return directory


def train_args(task_dir: Path, workdir: Path, steps: int, *extra: str) -> list[str]:
    return [
        "train",
        "--config",
        str(TINY_CONFIG),
        "--workdir",
        str(workdir),
        f"--config.data.train_files={task_dir / 'train.jsonl'}",
        f"--config.data.tokenizer={task_dir / 'tokenizer'}",
        "--config.data.global_batch_size=16",
        "--config.data.num_negatives=2",
        "--config.data.query_max_length=32",
        "--config.data.passage_max_length=32",
        "--config.data.prefetch=0",
        f"--config.train.steps={steps}",
        "--config.train.log_every=1",
        "--config.train.checkpoint_every=4",
        "--config.optimizer.warmup_steps=2",
        *extra,
    ]


def logged_losses(workdir: Path) -> dict[int, float]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return {json.loads(x)["step"]: json.loads(x)["loss"] for x in lines}


def start_cli(
    args: list[str], env_extra: dict[str, str] | None = None, python_prelude: str = ""
) -> subprocess.Popen:
    """`python -m jaxembed ARGS` (after running `python_prelude`, e.g. a fault injector)."""
    env = dict(os.environ, **(env_extra or {}))
    command = [sys.executable, "-m", "jaxembed", *args]
    if python_prelude:
        code = f"{python_prelude}\nimport sys\nfrom jaxembed.cli import main\nsys.exit(main())"
        command = [sys.executable, "-c", code, *args]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], what: str) -> None:
    """SIGKILL `proc` as soon as `ready()` holds (failing if it exits or 300 s pass first)."""
    try:
        deadline = time.time() + 300
        while not ready():
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, f"{what}: not reached in time"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def assert_same_losses(reference: Path, workdir: Path, steps: int, atol: float = 1e-6) -> None:
    """The run in `workdir` logged every step once, with the reference run's losses."""
    ref, resumed = logged_losses(reference), logged_losses(workdir)
    assert sorted(resumed) == list(range(1, steps + 1))  # nothing repeated or skipped
    np.testing.assert_allclose([resumed[s] for s in ref], list(ref.values()), rtol=0, atol=atol)


def run_processes(args: list[str], count: int = 2, devices_each: int = 4) -> None:
    """`jaxembed ARGS` as `count` local processes of `devices_each` CPU devices joined by
    jax.distributed; every one must exit 0."""
    port = free_port()
    env = {
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_each}",
        "JAX_PLATFORMS": "cpu",
    }
    flags = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(count)]
    procs = [start_cli(args + flags + ["--process-id", str(i)], env) for i in range(count)]
    try:
        outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out
