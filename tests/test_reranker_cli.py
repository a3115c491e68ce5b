"""`jaxembed rerank` (metrics vs pytrec_eval, bad runs) and a reranker trained through the
real loop, exported by `jaxembed export`, scoring as it did in training."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxembed.cli import main
from jaxembed.data.pairs import DEFAULT_PAIR_TEMPLATE


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A small synthetic task (BEIR eval split + training JSONL) and its BPE tokenizer."""
    from jaxembed.demo import train_tokenizer
    from jaxembed.synthetic import make_task, write_task

    root = tmp_path_factory.mktemp("task")
    synthetic = make_task(0, train_docs=64, eval_docs=40, eval_queries=12)
    data_dir = write_task(synthetic, root / "data")
    texts = list(synthetic.corpus.values()) + [r["query"] for r in synthetic.train_records]
    texts += [DEFAULT_PAIR_TEMPLATE.format(query="a", passage="b")] * 10
    tokenizer = train_tokenizer(texts, vocab_size=400)
    tokenizer.save_pretrained(str(root / "tok"))
    return root, data_dir, tokenizer


@pytest.fixture(scope="module")
def trained(task):
    """A tiny reranker trained for a few steps and exported through the CLI."""
    from jaxembed.train.loop import train
    from jaxembed.train.settings import run_settings

    root, _, _ = task
    result = train(run_settings(_reranker_config(task), jax.device_count()), root / "run")
    out = root / "exported"
    assert main(["export", "--workdir", str(root / "run"), "--output", str(out)]) == 0
    return result, out


def _reranker_config(task):
    from jaxembed.config import default_config

    root, data_dir, tokenizer = task
    config = default_config()
    config.model.task = "reranker"
    config.model.vocab_size = len(tokenizer)
    config.model.hidden_size, config.model.intermediate_size = 32, 64
    config.data.train_files = (str(data_dir / "train.jsonl"),)
    config.data.tokenizer = str(root / "tok")
    config.data.global_batch_size = 8
    config.data.num_negatives = 3
    config.data.query_max_length = 16
    config.data.passage_max_length = 48
    config.train.steps = 3
    config.train.log_every = 1
    config.train.checkpoint_every = 3
    return config


def test_trained_reranker_exports_and_scores_as_in_training(task, trained):
    result, out = trained
    assert len(result.history) == 3 and all(np.isfinite(r["loss"]) for r in result.history)
    config_json = json.loads((out / "config.json").read_text())
    assert config_json["auto_map"]["AutoModelForSequenceClassification"].endswith(
        "ForSequenceClassification"
    )
    assert config_json["jaxembed"]["reranker"]["template"] == DEFAULT_PAIR_TEMPLATE
    _assert_scores_as_in_training(task, result.params, out)


@pytest.mark.slow
def test_lora_reranker_resumes_exactly_and_exports(task, tmp_path):
    """LoRA on a reranker trains adapters and the score head: its steps hold those (the
    frozen base is saved once), a resumed run logs the losses of an uninterrupted one, and
    the export scores as the trained model does. (Slow; tests/test_lora_checkpoint.py covers
    the reranker's checkpoint split and adapter merge in the default run.)"""
    import shutil

    import orbax.checkpoint as ocp

    from jaxembed.train.loop import train
    from jaxembed.train.settings import run_settings

    config = _reranker_config(task)
    config.lora.rank, config.lora.alpha = 4, 8.0
    config.train.checkpoint_every = 1
    settings = run_settings(config, jax.device_count())
    whole = train(settings, tmp_path / "whole")
    # As if killed after saving step 2: resume the same run from there.
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "3")
    resumed = train(settings, tmp_path / "resumed")
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history[2:]]
    step = tmp_path / "resumed" / "checkpoints" / "3" / "state"
    stored = ocp.StandardCheckpointer().restore(step.absolute())
    assert set(stored["params"]) == {"score"} and stored["adapters"]
    out = tmp_path / "exported"
    assert main(["export", "--workdir", str(tmp_path / "resumed"), "--output", str(out)]) == 0
    _assert_scores_as_in_training(task, resumed.params, out)


def _assert_scores_as_in_training(task, params, out: Path) -> None:
    import jax

    from jaxembed.data.formats import load_beir
    from jaxembed.models.reranker import Reranker, make_score_fn

    root, data_dir, tokenizer = task
    data = load_beir(data_dir / "eval", "test")
    qid = next(iter(data.qrels))
    docs = list(data.corpus)[:6]
    reranker = Reranker.from_pretrained(out)
    assert reranker.max_length == 48
    ours = reranker.score(
        [data.queries[qid]] * 6, [data.corpus[d].full_text() for d in docs], show_progress=False
    )
    # The training params, scoring the same token ids directly (no export in between).
    joined = [
        DEFAULT_PAIR_TEMPLATE.format(query=data.queries[qid], passage=data.corpus[d].full_text())
        for d in docs
    ]
    ids = tokenizer(joined, truncation=True, max_length=512)["input_ids"]
    length = max(map(len, ids))
    x = np.zeros((6, length), np.int32)
    mask = np.zeros_like(x)
    for i, row in enumerate(ids):
        x[i, : len(row)], mask[i, : len(row)] = row, 1
    params = jax.device_get(params)
    score = make_score_fn(reranker.config)
    direct = np.asarray(score(params, {"input_ids": x, "attention_mask": mask}))
    np.testing.assert_allclose(ours, direct, atol=1e-5, rtol=0)


def _write_run(path: Path, run: dict[str, dict[str, float]]) -> None:
    lines = []
    for qid, docs in run.items():
        for rank, (doc, score) in enumerate(sorted(docs.items(), key=lambda x: -x[1]), 1):
            lines.append(f"{qid} Q0 {doc} {rank} {score} test\n")
    path.write_text("".join(lines))


def _retrieval_run(data, rng, depth):
    run = {}
    for qid in data.qrels:
        docs = list(rng.choice(list(data.corpus), size=depth, replace=False))
        docs += [d for d in data.qrels[qid] if d not in docs]  # relevant docs somewhere
        run[qid] = {d: float(s) for d, s in zip(docs, rng.normal(size=len(docs)), strict=True)}
    return run


def test_rerank_cli_reorders_top_k_and_reports_pytrec_eval_metrics(task, trained, tmp_path, capsys):
    import pytrec_eval

    from jaxembed.data.formats import load_beir
    from jaxembed.data.trec_run import read_trec_run
    from jaxembed.models.reranker import Reranker

    _, data_dir, _ = task
    _, model = trained
    data = load_beir(data_dir / "eval", "test")
    run = _retrieval_run(data, np.random.default_rng(0), 8)
    _write_run(tmp_path / "run.trec", run)
    top_k = 5
    args = ["rerank", "--model", str(model), "--data", str(data_dir / "eval"), "--quiet",
            "--run", str(tmp_path / "run.trec"), "--top-k", str(top_k),
            "--output", str(tmp_path / "out.trec")]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "ndcg@10" in printed and "retriever" in printed
    reranked = read_trec_run(tmp_path / "out.trec")
    report = json.loads((tmp_path / "out.trec.metrics.json").read_text())
    reranker = Reranker.from_pretrained(model)
    for qid, docs in run.items():
        top = sorted(docs, key=lambda d: (docs[d], d), reverse=True)[:top_k]
        assert set(reranked[qid]) == set(top)  # exactly the retriever's top k
        texts = [data.corpus[d].full_text() for d in top]
        want = reranker.score([data.queries[qid]] * top_k, texts, show_progress=False)
        np.testing.assert_allclose([reranked[qid][d] for d in top], want, atol=1e-5)
    qrels = {q: dict(r) for q, r in data.qrels.items()}
    for name, judged_run in (("after", reranked), ("before", None)):
        if judged_run is None:  # the retriever's own top k
            judged_run = {}
            for q, docs in run.items():
                best = sorted(docs, key=lambda d: (docs[d], d), reverse=True)[:top_k]
                judged_run[q] = {d: docs[d] for d in best}
        evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10"})
        per_query = evaluator.evaluate(judged_run)
        ndcg = np.mean([v["ndcg_cut_10"] for v in per_query.values()])
        assert report[name]["ndcg_at_10"] == pytest.approx(ndcg, abs=1e-9)
    assert report["pairs"] == top_k * len(run) and report["short_queries"] == 0


def test_rerank_top_k_beyond_the_run_reranks_everything(task, trained, tmp_path, capsys):
    _, data_dir, _ = task
    _, model = trained
    from jaxembed.data.formats import load_beir

    data = load_beir(data_dir / "eval", "test")
    run = _retrieval_run(data, np.random.default_rng(1), 3)
    _write_run(tmp_path / "run.trec", run)
    args = ["rerank", "--model", str(model), "--data", str(data_dir / "eval"), "--quiet",
            "--run", str(tmp_path / "run.trec"), "--top-k", "1000",
            "--output", str(tmp_path / "out.trec")]  # fmt: skip
    assert main(args) == 0
    assert "fewer than 1000 documents" in capsys.readouterr().out
    report = json.loads((tmp_path / "out.trec.metrics.json").read_text())
    assert report["short_queries"] == len(run)
    assert report["pairs"] == sum(len(d) for d in run.values())


@pytest.mark.parametrize(
    "line, top_k, message",
    [
        ("{q} Q0 no-such-doc 1 1.0 x\n", "5", "names unknown document 'no-such-doc'"),
        ("no-such-query Q0 {d} 1 1.0 x\n", "5", "unknown query id 'no-such-query'"),
        ("{q} Q0 {d} 1 1.0 x\n", "0", "--top-k 0: must be >= 1"),
        ("{q} Q0 {d} 1 x\n", "5", "want 6 columns"),
    ],
)
def test_rerank_bad_input_is_one_clear_error(task, trained, tmp_path, capsys, line, top_k, message):
    from jaxembed.data.formats import load_beir

    _, data_dir, _ = task
    _, model = trained
    data = load_beir(data_dir / "eval", "test")
    q, d = next(iter(data.qrels)), next(iter(data.corpus))
    (tmp_path / "run.trec").write_text(line.format(q=q, d=d))
    args = ["rerank", "--model", str(model), "--data", str(data_dir / "eval"), "--quiet",
            "--run", str(tmp_path / "run.trec"), "--top-k", top_k,
            "--output", str(tmp_path / "out.trec")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out.trec").exists()
