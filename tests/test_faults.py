"""Fault injection through the CLI: a run never keeps a bad state and every failure is one
line. Non-finite steps (halt and skip), kill -9 inside an asynchronous checkpoint save,
corrupt bytes in the newest checkpoint, a checkpoint of another model, a full disk, a
read-only workdir, an interrupted export, a lost peer process, and libtpu's start-up noise."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxembed.checkpoint_integrity import named_leaves, verify
from jaxembed.cli import main

from data_helpers.train_cli import (
    assert_same_losses,
    free_port,
    kill_when,
    start_cli,
    train_args,
    write_task_dir,
)

STEPS = 12  # checkpoints at 4, 8 and 12


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return write_task_dir(tmp_path_factory.mktemp("task"))


@pytest.fixture(scope="module")
def reference(task_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    assert main(train_args(task_dir, workdir, STEPS)) == 0
    return workdir


def _saved_steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _restore_state(workdir: Path, step: int) -> dict:
    return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")


def _meta(workdir: Path, step: int) -> dict:
    path = workdir / "checkpoints" / str(step) / "meta" / "metadata"
    return json.loads(path.read_text())


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("jaxembed ")]


# A learning rate that is 0 at step 1 and astronomically large from step 2 on: the run is
# finite for a step or two, then diverges between two log steps.
DIVERGING = (
    "--config.optimizer.learning_rate=1e30",
    "--config.optimizer.warmup_steps=1000000",
    "--config.train.checkpoint_every=1",
    "--config.train.log_every=5",
)


def test_nonfinite_halt_keeps_only_finite_checkpoints(task_dir, tmp_path, capsys):
    workdir = tmp_path / "halt"
    assert main(train_args(task_dir, workdir, 10, *DIVERGING)) == 1
    (line,) = _error_lines(capsys.readouterr().err)
    assert "became non-finite" in line and "train.nonfinite=halt" in line, line
    first_bad = int(line.split("error: step ")[1].split(":")[0])
    kept = _saved_steps(workdir)
    assert kept and max(kept) < first_bad, (kept, line)
    assert f"the last good checkpoint is step {max(kept)} " in line
    for step in kept:
        state = _restore_state(workdir, step)
        for name, array in named_leaves(state).items():
            assert np.all(np.isfinite(np.asarray(array, np.float64))), (step, name)


def test_nonfinite_skip_finishes_and_counts_what_it_skipped(task_dir, tmp_path, capsys):
    workdir = tmp_path / "skip"
    extra = ("--config.train.nonfinite=skip", "--config.train.max_consecutive_nonfinite=100")
    assert main(train_args(task_dir, workdir, 10, *DIVERGING, *extra)) == 0
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10]
    last = records[-1]
    # From step 2 on every update overflows; none is applied, so the loss stays finite.
    assert last["skipped_steps"] >= 5 and last["nonfinite"] == 1
    assert _meta(workdir, 10)["skipped_steps"] == last["skipped_steps"]
    for name, array in named_leaves(_restore_state(workdir, 10)).items():
        assert np.all(np.isfinite(np.asarray(array, np.float64))), name
    # Too many in a row still halts, naming the streak.
    halted = tmp_path / "skip-halt"
    extra = ("--config.train.nonfinite=skip", "--config.train.max_consecutive_nonfinite=3")
    assert main(train_args(task_dir, halted, 10, *DIVERGING, *extra)) == 1
    (line,) = _error_lines(capsys.readouterr().err)
    assert "non-finite steps in a row (train.max_consecutive_nonfinite=3)" in line, line


# Runs `jaxembed train` with the asynchronous save of one step stalled at one point: it
# writes a marker file there, then sleeps until the test kills the process.
STALL_SAVE = """
import os, time
import jaxembed.checkpoint as checkpoint
from orbax.checkpoint._src.path import atomicity
from orbax.checkpoint._src.serialization import serialization

target, point = int(os.environ["STALL_STEP"]), os.environ["STALL_AT"]
marker = os.environ["STALL_MARKER"]
saving = {"step": None}
original_save = checkpoint.Checkpointer.save

def save(self, step, *args, **kwargs):
    saving["step"] = step
    return original_save(self, step, *args, **kwargs)

checkpoint.Checkpointer.save = save

def stalling(original, here):
    async def wrapper(*args, **kwargs):
        if point == here and saving["step"] == target:
            open(marker, "w").close()
            time.sleep(3600)
        return await original(*args, **kwargs)
    return wrapper

serialization.async_serialize_from_host = stalling(
    serialization.async_serialize_from_host, "arrays")
atomicity.AtomicRenameTemporaryPath.finalize = stalling(
    atomicity.AtomicRenameTemporaryPath.finalize, "rename")
"""


@pytest.mark.parametrize("point", ["arrays", "rename"])
def test_kill_during_an_async_save_resumes_from_the_last_complete_step(
    task_dir, reference, tmp_path, point
):
    workdir, marker = tmp_path / "killed", tmp_path / "stalled"
    env = {"STALL_STEP": "8", "STALL_AT": point, "STALL_MARKER": str(marker)}
    proc = start_cli(train_args(task_dir, workdir, STEPS), env, python_prelude=STALL_SAVE)
    kill_when(proc, marker.exists, "the stall point of the save")
    assert _saved_steps(workdir) == [4]  # step 8 was never completed
    assert main(train_args(task_dir, workdir, STEPS)) == 0
    assert_same_losses(reference, workdir, STEPS)


def _flip_bytes(step_dir: Path) -> None:
    """Flip 16 bytes every 4 kB of each array data file, so that every array stored there
    (params and moments alike, in whatever order Orbax packed them) is damaged."""
    for data in (step_dir / "state" / "ocdbt.process_0" / "d").iterdir():
        if data.stat().st_size > 10_000:
            raw = bytearray(data.read_bytes())
            for start in range(1024, len(raw) - 16, 4096):
                raw[start : start + 16] = bytes(b ^ 0xFF for b in raw[start : start + 16])
            data.write_bytes(bytes(raw))


def test_unreadable_checkpoints_fall_back_to_the_newest_readable_one(
    task_dir, reference, tmp_path, caplog
):
    corrupt, clean = tmp_path / "corrupt", tmp_path / "clean"
    shutil.copytree(reference, corrupt)
    shutil.copytree(reference, clean)
    _flip_bytes(corrupt / "checkpoints" / "12")
    (corrupt / "checkpoints" / "8" / "state" / "_METADATA").unlink()  # a file gone missing
    for step in ("12", "8"):  # what resuming from step 4 looks like
        shutil.rmtree(clean / "checkpoints" / step)
    # Export refuses the corrupt step rather than writing wrong weights.
    out = tmp_path / "export"
    assert main(["export", "--workdir", str(corrupt), "--output", str(out)]) != 0
    assert not out.exists()
    with caplog.at_level("WARNING"):
        assert main(train_args(task_dir, corrupt, STEPS)) == 0
    # Damaged data reads back wrong (checksum) or not at all (a compressed chunk): either way
    # the step is unreadable. The silent case alone: tests/test_checkpoint_integrity.py.
    assert "checkpoint step 12 is unreadable" in caplog.text
    assert "checkpoint step 8 is unreadable" in caplog.text
    assert "resumed from step 4" in caplog.text
    aside = sorted(p.name.split("-")[0] for p in (corrupt / "unreadable_checkpoints").iterdir())
    assert aside == ["12", "8"]  # kept for inspection, not deleted
    assert main(train_args(task_dir, clean, STEPS)) == 0
    a, b = _restore_state(corrupt, 12), _restore_state(clean, 12)
    for name, array in named_leaves(a).items():
        np.testing.assert_array_equal(np.asarray(array), np.asarray(named_leaves(b)[name]))


def test_a_checkpoint_of_another_model_is_a_config_error(task_dir, reference, tmp_path, capsys):
    workdir = tmp_path / "other-model"
    shutil.copytree(reference, workdir)
    assert main(train_args(task_dir, workdir, STEPS + 4, "--config.model.hidden_size=32")) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "checkpoint step 12:" in line and "has shape" in line, line
    assert "model.hidden_size=64 (now 32)" in line, line
    assert _saved_steps(workdir) == [4, 8, 12] and not (workdir / "unreadable_checkpoints").exists()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1.8 MB tmpfs: room for one tiny-model checkpoint, not two (needs mount rights)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()

    def mount(*options: str) -> Path:
        opts = ",".join(("size=1800k", *options))
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mount_point)])
        if done.returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root); the full-disk case is untested")
        return mount_point

    yield mount
    subprocess.run(["umount", str(mount_point)], stderr=subprocess.DEVNULL)


def test_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(
    task_dir, small_tmpfs, capsys
):
    workdir = small_tmpfs() / "run"
    extra = ("--config.train.checkpoint_every=2",)
    assert main(train_args(task_dir, workdir, 8, *extra)) == 1
    (line,) = _error_lines(capsys.readouterr().err)
    assert "saving checkpoint step 4" in line and "No space left on device" in line, line
    assert "the last complete checkpoint is step 2" in line, line
    assert _saved_steps(workdir) == [2]
    verify(_restore_state(workdir, 2), _meta(workdir, 2)["checksums"], 2)  # intact


def test_read_only_workdir_is_named_before_anything_runs(task_dir, small_tmpfs, capsys):
    workdir = small_tmpfs("ro") / "run"
    assert main(train_args(task_dir, workdir, 8)) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert f"{workdir}: the workdir is not writable (Read-only file system)" in line, line


def test_interrupted_export_leaves_no_output(reference, tmp_path, monkeypatch, capsys):
    from jaxembed import hf_directory

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hf_directory, "write_safetensors", interrupted)
    out = tmp_path / "export"
    assert main(["export", "--workdir", str(reference), "--output", str(out)]) == 130
    (line,) = _error_lines(capsys.readouterr().err)
    assert "interrupted" in line
    assert not out.exists() and not list(tmp_path.glob(".export*"))


def test_lost_peer_stops_the_survivor_in_one_line_and_both_resume(task_dir, tmp_path):
    lr = "--config.optimizer.learning_rate=1e-4"  # see test_train_loop's 2-process test
    single = tmp_path / "single"
    assert main(train_args(task_dir, single, STEPS, lr)) == 0
    workdir = tmp_path / "multi"
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}

    def start(process_id: int, port: int) -> subprocess.Popen:
        args = train_args(task_dir, workdir, STEPS, lr) + [
            "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
            "--process-id", str(process_id), "--peer-timeout", "10",
        ]  # fmt: skip
        return start_cli(args, env)

    port = free_port()
    procs = [start(i, port) for i in range(2)]
    try:
        deadline = time.time() + 300
        while 4 not in (_saved_steps(workdir) if (workdir / "checkpoints").is_dir() else []):
            assert all(p.poll() is None for p in procs) and time.time() < deadline
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.time()
        out, _ = procs[0].communicate(timeout=60)
        waited = time.time() - killed_at
    finally:
        for proc in procs:
            proc.kill()
    assert procs[0].returncode == 1 and waited < 40, (waited, out)
    lines = [line for line in out.splitlines() if line.startswith("jaxembed train: error:")]
    assert len(lines) == 1 and "process 1 of 2 stopped responding" in lines[0], out
    assert "the last complete checkpoint is step" in lines[0] and "Check failure" not in out
    port = free_port()
    procs = [start(i, port) for i in range(2)]
    try:
        outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert_same_losses(single, workdir, STEPS, atol=1e-5)


TPU_NOISE = ("TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE", "InitGoogle", "libtpu")


def test_no_libtpu_noise_on_a_cpu_host_and_plan_still_compiles(tmp_path):
    pytest.importorskip("libtpu", reason="the [tpu] extra (libtpu) is not installed")
    from tiny_models import make_hf_model

    model = tmp_path / "model"
    make_hf_model("llama", model)
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": f"text {i}"}) + "\n" for i in range(3)))
    # As a user's shell has it: no JAX_PLATFORMS, no forced device count.
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    runs = {
        "help": ["--help"],
        "encode": [
            "encode", "--model", str(model), "--input", str(texts),
            "--output", str(tmp_path / "emb.npy"), "--quiet",
        ],
        "plan": [
            "plan", "--config", str(Path(__file__).parents[1] / "configs" / "tiny.py"),
            "--topology", "v5p-8", "--config.data.global_batch_size=8",
        ],
    }  # fmt: skip
    for name, args in runs.items():
        done = subprocess.run(
            [sys.executable, "-m", "jaxembed", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, (name, done.stderr)
        noise = [line for line in done.stderr.splitlines() if any(n in line for n in TPU_NOISE)]
        assert not noise, (name, noise)
    assert "plan:" in done.stdout and "v5p-8" in done.stdout, done.stdout
