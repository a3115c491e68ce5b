"""`jaxembed train` end to end: loss falls, exact resume after SIGKILL, partial checkpoints,
SIGTERM, 2 processes = 1 process, and config errors before any compile."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from jaxembed.cli import main
from jaxembed.models import architectures

from data_helpers.train_cli import (
    assert_same_losses,
    kill_when,
    logged_losses,
    run_processes,
    start_cli,
    train_args,
    write_task_dir,
)

STEPS = 40


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return write_task_dir(tmp_path_factory.mktemp("task"))


def _args(task_dir: Path, workdir: Path, *extra: str) -> list[str]:
    return train_args(task_dir, workdir, STEPS, *extra)


@pytest.fixture(scope="module")
def reference_run(task_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    assert main(_args(task_dir, workdir)) == 0
    return workdir


def test_train_end_to_end(reference_run):
    losses = logged_losses(reference_run)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert np.mean([losses[s] for s in range(STEPS - 2, STEPS + 1)]) < losses[1]
    steps = sorted(
        int(p.name) for p in (reference_run / "checkpoints").iterdir() if p.name.isdigit()
    )
    assert steps[-1] == STEPS
    assert list((reference_run / "tensorboard").glob("events.out.tfevents.*"))
    record = json.loads((reference_run / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("loss", "accuracy", "grad_norm", "learning_rate", "tokens", "tokens_per_second"):
        assert key in record


# Covered in the default run by tests/test_faults.py, which kills inside a save at two points
# and checks the same exact resume on a shorter run.
@pytest.mark.slow
def test_exact_resume_after_sigkill(task_dir, reference_run, tmp_path):
    workdir = tmp_path / "killed"
    proc = start_cli(_args(task_dir, workdir))
    kill_when(proc, (workdir / "checkpoints" / "8").is_dir, "checkpoint 8")
    interrupted = logged_losses(workdir)
    assert max(interrupted) < STEPS, "the run finished before it could be killed"
    assert main(_args(task_dir, workdir)) == 0
    assert_same_losses(reference_run, workdir, STEPS)


def test_partial_checkpoint_is_ignored_with_a_warning(task_dir, reference_run, tmp_path, caplog):
    import shutil

    workdir = tmp_path / "partial"
    shutil.copytree(reference_run, workdir)
    # A save killed midway leaves Orbax's temporary directory behind.
    partial = workdir / "checkpoints" / f"{STEPS + 4}.orbax-checkpoint-tmp-1234"
    partial.mkdir()
    (partial / "junk").write_text("half-written")
    with caplog.at_level("WARNING"):
        assert main(_args(task_dir, workdir, f"--config.train.steps={STEPS + 2}")) == 0
    assert "ignoring incomplete checkpoint" in caplog.text
    losses = logged_losses(workdir)
    assert sorted(losses) == list(range(1, STEPS + 3))  # resumed from step STEPS


def test_sigterm_saves_and_exits_cleanly(task_dir, tmp_path):
    workdir = tmp_path / "preempted"
    proc = start_cli(_args(task_dir, workdir, "--config.train.steps=100000"))
    deadline = time.time() + 300
    while not (workdir / "metrics.jsonl").exists() or len(logged_losses(workdir)) < 3:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "stopped by SIGTERM at step" in out
    saved = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert saved and max(saved) >= 3


def test_config_errors_before_any_compile(task_dir, tmp_path, capsys):
    cases = [
        ("--config.model.nonexistent=1", "unknown config key 'model.nonexistent'"),
        ("--config.data.global_batch_size=12", "not divisible by the data-parallel size 8"),
        ("--config.mesh.data=16", "does not fit 8 devices"),
        ("--config.model.init=hf", "model.hf_path is empty"),
        ("--config.model.hf_path=/nonexistent/llama", "model.hf_path: /nonexistent/llama: model"),
        ("--config.loss.variant=softmax", "loss.variant='softmax'"),
    ]
    for override, message in cases:
        workdir = tmp_path / "w"
        extra = [override] + (["--config.model.init=hf"] if "hf_path=" in override else [])
        code = main(_args(task_dir, workdir, *extra))
        err = capsys.readouterr().err
        assert code == 2 and message in err, (override, err)
        assert not (workdir / "checkpoints").exists()


# Covered in the default run by tests/test_distributed.py (2 SLURM processes train like one)
# and tests/test_faults.py (a 2-process run, killed and resumed, logs the 1-process losses).
@pytest.mark.slow
def test_two_processes_log_the_single_process_losses(task_dir, tmp_path):
    # Adam moves every coordinate by ~lr whatever its gradient's size, so a near-zero
    # gradient whose sign rests on summation order (1 vs 2 processes add partial sums in
    # different orders) moves by +-lr: 1e-4 keeps that below the 1e-5 compared here.
    lr = "--config.optimizer.learning_rate=1e-4"
    reference = tmp_path / "single"
    assert main(_args(task_dir, reference, lr)) == 0
    workdir = tmp_path / "multi"
    run_processes(_args(task_dir, workdir, lr))
    ref, multi = logged_losses(reference), logged_losses(workdir)
    assert sorted(multi) == sorted(ref)
    np.testing.assert_allclose([multi[s] for s in ref], list(ref.values()), rtol=0, atol=1e-5)


def test_periodic_heldout_evaluation(task_dir, tmp_path):
    workdir = tmp_path / "eval"
    args = _args(
        task_dir,
        workdir,
        "--config.train.steps=4",
        "--config.train.log_every=3",
        "--config.train.eval_every=2",
        f"--config.data.eval_dir={task_dir / 'eval'}",
    )
    assert main(args) == 0
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r["step"] for r in records if "eval_ndcg_at_10" in r]
    assert evaluated == [2, 4] and [r["step"] for r in records] == [2, 3, 4]
    assert all(0.0 <= r["eval_recall_at_10"] <= 1.0 for r in records if "eval_recall_at_10" in r)


def test_init_from_a_huggingface_checkpoint(tmp_path):
    from jaxembed import hf

    from tiny_models import WORDS, make_hf_model

    model_dir = tmp_path / "hf"
    make_hf_model("llama", model_dir)
    rng = np.random.default_rng(0)
    with open(tmp_path / "train.jsonl", "w") as f:
        for _ in range(32):
            words = list(rng.choice(WORDS, size=6))
            f.write(
                json.dumps(
                    {
                        "query": " ".join(words[:3]),
                        "positives": [" ".join(words)],
                        "negatives": [" ".join(rng.choice(WORDS, size=6))],
                    }
                )
                + "\n"
            )
    workdir = tmp_path / "run"
    args = [
        "train", "--workdir", str(workdir),
        "--config.model.init=hf", f"--config.model.hf_path={model_dir}",
        f"--config.data.train_files={tmp_path / 'train.jsonl'}",
        "--config.data.global_batch_size=8", "--config.train.steps=1",
        "--config.optimizer.learning_rate=0.0", "--config.optimizer.weight_decay=0.0",
    ]  # fmt: skip
    assert main(args) == 0
    # With a zero learning rate the checkpoint holds exactly the imported weights.
    import orbax.checkpoint as ocp

    config = architectures.LLAMA.config_from_hf(hf.read_hf_config(model_dir))
    imported = hf.load_params(model_dir, config)
    restored = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / "1" / "state")
    np.testing.assert_array_equal(
        np.asarray(restored["params"]["layers"]["mlp"]["up_proj"]["kernel"]),
        np.asarray(imported["layers"]["mlp"]["up_proj"]["kernel"]),
    )


def test_bad_training_record_is_a_clean_error(task_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "positives": ["p"]}\n{"query": "q2", "positives": [\n')
    code = main(_args(task_dir, tmp_path / "w", f"--config.data.train_files={bad}"))
    assert code == 2
    assert f"{bad}:2: invalid JSON" in capsys.readouterr().err
