"""Multi-process start-up: SLURM/explicit/TPU settings, clear errors, a timeout when peers do
not arrive, and 2 real processes started from SLURM variables training exactly like 1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from jax._src.clusters.slurm_cluster import SlurmCluster

from jaxembed import distributed
from jaxembed.cli import main
from jaxembed.demo import train_tokenizer
from jaxembed.errors import UserInputError
from jaxembed.synthetic import make_task, write_task

TINY = str(Path(__file__).parents[1] / "configs" / "tiny.py")
STEPS = 6


def _slurm_env(**extra: str) -> dict[str, str]:
    env = {
        "SLURM_JOB_ID": "4321",
        "SLURM_NTASKS": "8",
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_NODELIST": "gpu[007-008,010],login1",
        "SLURM_STEP_NUM_NODES": "2",
    }
    env.update(extra)
    return env


@pytest.mark.parametrize(
    "nodelist", ["node001", "node001,host2", "gpu[007-008,010],login1", "a[3,5-9]", "x-1[12-13]"]
)
def test_slurm_coordinator_is_jax_s_own(nodelist, monkeypatch):
    # JAX's SLURM cluster detection is the reference: both launchers must meet at one address.
    env = _slurm_env(SLURM_STEP_NODELIST=nodelist)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("JAX_COORDINATOR_PORT", raising=False)
    expected = SlurmCluster.get_coordinator_address(
        timeout_secs=None, override_coordinator_port=None
    )
    assert distributed.slurm_settings(env).coordinator == expected


def test_slurm_one_process_per_gpu_and_per_node():
    per_gpu = distributed.resolve(environ=_slurm_env(), on_tpu_vm=False)
    assert per_gpu == distributed.ProcessSettings("slurm", "gpu007:61665", 8, 5, (1,))
    # One task per node drives all of its GPUs; so does a task SLURM bound to its own GPU.
    per_node = distributed.resolve(environ=_slurm_env(SLURM_NTASKS="2", SLURM_PROCID="1"))
    assert (per_node.num_processes, per_node.process_id, per_node.local_device_ids) == (2, 1, None)
    bound = distributed.resolve(environ=_slurm_env(CUDA_VISIBLE_DEVICES="3"))
    assert bound.local_device_ids is None
    port = distributed.resolve(environ=_slurm_env(JAX_COORDINATOR_PORT="1234"))
    assert port.coordinator == "gpu007:1234"


def test_sbatch_environment_without_srun_is_a_clear_error():
    # What a batch script sees when it runs the command itself instead of through srun.
    sbatch_only = {"SLURM_JOB_ID": "99", "SLURM_NTASKS": "4", "SLURM_JOB_NODELIST": "n[1-2]"}
    with pytest.raises(UserInputError, match="SLURM_PROCID, SLURM_STEP_NODELIST, which are"):
        distributed.resolve(environ=sbatch_only, on_tpu_vm=False)
    with pytest.raises(UserInputError, match="SLURM launch needs SLURM_JOB_ID, SLURM_NTASKS"):
        distributed.resolve("slurm", environ={})
    with pytest.raises(UserInputError, match="SLURM_PROCID=9 is not in"):
        distributed.resolve(environ=_slurm_env(SLURM_PROCID="9"))


def test_auto_launcher_choices():
    assert distributed.resolve(environ={}, on_tpu_vm=False).launcher == "none"
    assert distributed.resolve(environ={}, on_tpu_vm=True).launcher == "tpu"
    # A one-task SLURM job is a single process; explicit flags beat the environment.
    single = {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"}
    assert distributed.resolve(environ=single, on_tpu_vm=False).launcher == "none"
    explicit = distributed.resolve(
        coordinator="10.0.0.2:1234", num_processes=4, process_id=3, environ=_slurm_env()
    )
    assert explicit == distributed.ProcessSettings("explicit", "10.0.0.2:1234", 4, 3, None)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_processes=2, process_id=0), "need --coordinator HOST:PORT"),
        (dict(coordinator="h:1", num_processes=2), "needs --num-processes and --process-id"),
        (dict(coordinator="h:1", num_processes=2, process_id=2), "is not in \\[0, 2\\)"),
        (dict(coordinator="nohost", num_processes=2, process_id=0), "expected HOST:PORT"),
        (dict(launcher="slurm", coordinator="h:1"), "go with --launcher explicit"),
        (dict(launcher="mpi"), "expected one of auto, explicit"),
    ],
)
def test_bad_launch_settings(kwargs, message):
    with pytest.raises(UserInputError, match=message):
        distributed.resolve(environ={}, on_tpu_vm=False, **kwargs)


def test_cli_reports_missing_slurm_variables(tmp_path, monkeypatch, capsys):
    for key in list(os.environ):
        if key.startswith("SLURM_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    args = ["train", "--config", TINY, "--workdir", str(tmp_path / "w"), "--launcher", "slurm"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "jaxembed train: error: SLURM launch needs SLURM_NTASKS, SLURM_PROCID" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env.update(extra)
    return env


def test_missing_peer_times_out_with_a_clear_error(tmp_path):
    args = [sys.executable, "-m", "jaxembed", "train", "--config", TINY, "--workdir"]
    args += [str(tmp_path / "w"), "--coordinator", f"127.0.0.1:{_free_port()}"]
    args += ["--num-processes", "2", "--process-id", "0", "--init-timeout", "3"]
    started = time.time()
    proc = subprocess.run(args, env=_worker_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "could not join 2 processes at 127.0.0.1:" in proc.stderr
    assert "within 3s: a peer did not start" in proc.stderr
    assert time.time() - started < 60


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("task")
    task = make_task(1, train_docs=120, eval_docs=10, eval_queries=5)
    write_task(task, directory)
    texts = [r["query"] for r in task.train_records] + [task.instruction] * 5
    texts += [p["text"] for r in task.train_records for p in r["positives"]]
    train_tokenizer(texts, vocab_size=300).save_pretrained(str(directory / "tokenizer"))
    return directory


def _train_args(task_dir: Path, workdir: Path) -> list[str]:
    return [
        "train", "--config", TINY, "--workdir", str(workdir),
        f"--config.data.train_files={task_dir / 'train.jsonl'}",
        f"--config.data.tokenizer={task_dir / 'tokenizer'}",
        "--config.data.global_batch_size=16", "--config.data.num_negatives=1",
        "--config.data.query_max_length=16", "--config.data.passage_max_length=16",
        "--config.data.prefetch=0", f"--config.train.steps={STEPS}",
        "--config.train.log_every=1", f"--config.train.checkpoint_every={STEPS}",
        # Adam moves every coordinate by ~lr whatever its gradient's size, so a near-zero
        # gradient whose sign rests on summation order (1 vs 2 processes add partial sums
        # in different orders) moves by +-lr: 1e-4 keeps that below the 1e-5 compared here.
        "--config.optimizer.warmup_steps=1", "--config.optimizer.learning_rate=1e-4",
    ]  # fmt: skip


def _losses(workdir: Path) -> dict[int, float]:
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records}


def _final_params(workdir: Path) -> dict[str, np.ndarray]:
    import jax
    import orbax.checkpoint as ocp

    # As host arrays: the two runs saved from different device layouts.
    path = workdir / "checkpoints" / str(STEPS) / "state"
    checkpointer = ocp.PyTreeCheckpointer()
    metadata = checkpointer.metadata(path)
    tree = getattr(getattr(metadata, "item_metadata", metadata), "tree", metadata)
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
    flat = jax.tree_util.tree_flatten_with_path(restored["params"])[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def test_two_slurm_processes_train_like_one(task_dir, tmp_path):
    one = tmp_path / "one"
    assert main(_train_args(task_dir, one)) == 0  # 8 devices in this process

    two = tmp_path / "two"
    # A half-written checkpoint makes every process's Checkpointer warn: only process 0 may say so.
    (two / "checkpoints" / f"{STEPS + 10}.orbax-checkpoint-tmp-1").mkdir(parents=True)
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = _worker_env(
            SLURM_JOB_ID="77",
            SLURM_NTASKS="2",
            SLURM_PROCID=str(rank),
            SLURM_LOCALID=str(rank),
            SLURM_STEP_NODELIST="127.0.0.1",
            SLURM_STEP_NUM_NODES="1",
            JAX_COORDINATOR_PORT=port,
        )
        cmd = [sys.executable, "-m", "jaxembed", *_train_args(task_dir, two), "--launcher=slurm"]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=300)[0].decode(errors="replace"))
    finally:
        for proc in procs:
            proc.kill()
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-4000:]
    # Only process 0 reports and logs.
    for message in ("training finished at step", "ignoring incomplete checkpoint"):
        assert message in outputs[0] and message not in outputs[1], message

    losses_one, losses_two = _losses(one), _losses(two)
    assert sorted(losses_two) == list(range(1, STEPS + 1)) == sorted(losses_one)
    np.testing.assert_allclose(
        [losses_two[s] for s in losses_one], list(losses_one.values()), rtol=0, atol=1e-5
    )
    params_one, params_two = _final_params(one), _final_params(two)
    assert params_one.keys() == params_two.keys()
    for key, value in params_one.items():
        np.testing.assert_allclose(params_two[key], value, rtol=0, atol=1e-5, err_msg=key)
