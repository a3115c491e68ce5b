"""`jaxembed synth` end to end against a real server: `transformers serve` (the test extra's
`transformers[serving]`) serving the real SmolLM2-135M-Instruct on 127.0.0.1, started and
stopped by the fixture. Generations are kept short; a 135M model's answers are often not
the JSON asked for, which the rejects path has to take."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from jaxembed.cli import main
from jaxembed.data.formats import read_training_jsonl

pytest.importorskip("fastapi", reason="transformers[serving] (test extra) is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(smollm2_dir, tmp_path_factory):
    exe = Path(sys.executable).parent / "transformers"
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    command = [str(exe), "serve", str(smollm2_dir), "--host", "127.0.0.1", "--port",
               str(port), "--device", "cpu", "--dtype", "float32"]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"transformers serve did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def scifact_docs(shared_data, tmp_path) -> Path:
    lines = (shared_data / "scifact" / "corpus.jsonl").read_text().splitlines()[:4]
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _check_run(out: Path, count: int) -> list:
    """Every item ended as a record or a reject; records are what `jaxembed train` reads."""
    records = list(read_training_jsonl(out))
    report = json.loads(Path(str(out) + ".report.json").read_text())
    totals = report["totals"]
    assert totals.get("kept", 0) == len(records)
    assert totals.get("kept", 0) + totals.get("rejected", 0) + totals.get("filtered", 0) == count
    rejects_path = Path(str(out) + ".rejects.jsonl")
    rejects = [json.loads(x) for x in rejects_path.read_text().splitlines() if x.strip()]
    assert all(r["reason"] for r in rejects) and len(rejects) == totals.get("rejected", 0)
    return records


COMMON = ["synth", "--quiet", "--max-tokens", "160", "--temperature", "0.3",
          "--concurrency", "2", "--parse-retries", "2", "--near-duplicate", "0"]  # fmt: skip


def test_seed_corpus_on_scifact_then_train(server, scifact_docs, minilm_dir, tmp_path):
    out = tmp_path / "synth.jsonl"
    args = ["--endpoint", server, "--corpus", str(scifact_docs), "--count", "4",
            "--max-document-words", "80", "--output", str(out)]  # fmt: skip
    assert main([*COMMON, *args]) == 0
    records = _check_run(out, 4)
    assert records, "SmolLM2 wrote no usable query for any of 4 documents (see the rejects)"
    corpus_ids = {json.loads(line)["_id"] for line in scifact_docs.read_text().splitlines()}
    assert all(r.positives[0].id in corpus_ids for r in records)
    _train_two_steps(out, minilm_dir, tmp_path / "run")


def _train_two_steps(records: Path, minilm_dir: Path, workdir: Path) -> None:
    """The synthetic records are what `jaxembed train` reads: two steps on them."""
    train = ["train", "--config", "configs/sentence_transformers.py", "--workdir", str(workdir),
             f"--config.model.hf_path={minilm_dir}", f"--config.data.train_files={records}",
             "--config.data.global_batch_size=8", "--config.train.steps=2",
             "--config.optimizer.warmup_steps=1", "--config.train.checkpoint_every=2",
             "--config.data.passage_max_length=64"]  # fmt: skip
    assert main(train) == 0
    metrics = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 2


@pytest.mark.parametrize("strategy", ["from_scratch", "classification"])
def test_two_step_strategies_against_the_real_server(server, tmp_path, strategy):
    out = tmp_path / f"{strategy}.jsonl"
    args = ["--strategy", strategy, "--endpoint", server, "--count", "3", "--num-tasks", "3",
            "--tasks-per-request", "3", "--output", str(out)]  # fmt: skip
    code = main([*COMMON, *args])
    rejects_path = Path(str(out) + ".rejects.jsonl")
    if code == 1:  # step 1 gave no task at all: a clean stop, its answers in the rejects
        rejects = [json.loads(x) for x in rejects_path.read_text().splitlines()]
        assert rejects and all(r["step"].endswith("_tasks") and r["reason"] for r in rejects)
        assert not out.exists() or not out.read_text()
        return
    assert code == 0
    tasks = json.loads(Path(str(out) + ".tasks.json").read_text())["tasks"]
    assert tasks and all(isinstance(t, str) and t for t in tasks)
    # A 135M model rarely writes step 2's several fields right: what it does write must
    # be a valid instructed record, and every other item a reject with its raw answer.
    records = _check_run(out, 3)
    assert all(r.instruction in tasks for r in records)


# Tasks a person would write: a 135M model cannot brainstorm them (it parrots the prompt's
# example), but it can write step 2's examples for them.
GIVEN_TASKS = {
    "from_scratch": ["Given a medical question, retrieve research abstracts that answer it",
                     "Given a product name, retrieve customer reviews of it",
                     "Given a programming error message, retrieve forum posts that solve it"],
    "classification": ["Classify a product review by sentiment: positive, negative or neutral",
                       "Classify a news headline by topic: sports, politics, business or science",
                       "Classify an email as spam or not spam"],
}  # fmt: skip


@pytest.mark.parametrize("strategy", ["from_scratch", "classification"])
def test_step_two_from_a_task_file_makes_valid_records(server, minilm_dir, tmp_path, strategy):
    """With the tasks given (`--tasks`), SmolLM2's step-2 answers become schema-valid
    instructed records, which train. Greedy: `transformers serve` does not sample SmolLM2
    anyway, and its sampled JSON is worse."""
    tasks_file = tmp_path / "tasks.txt"
    tasks_file.write_text("\n".join(GIVEN_TASKS[strategy]) + "\n")
    out = tmp_path / f"{strategy}.jsonl"
    args = ["synth", "--quiet", "--strategy", strategy, "--endpoint", server, "--tasks",
            str(tasks_file), "--count", "6", "--max-tokens", "256", "--temperature", "0",
            "--parse-retries", "0", "--concurrency", "2", "--near-duplicate", "0",
            "--output", str(out)]  # fmt: skip
    assert main(args) == 0
    records = _check_run(out, 6)
    assert records, f"SmolLM2 wrote no valid {strategy} record for 6 items (see the rejects)"
    assert all(r.instruction in GIVEN_TASKS[strategy] for r in records)
    assert all(r.positives[0].text and r.negatives and r.negatives[0].text for r in records)
    _train_two_steps(out, minilm_dir, tmp_path / "run")
