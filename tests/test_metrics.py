"""Retrieval metrics against trec_eval's own code (pytrec_eval) and MTEB's scorer."""

import random

import pytest

from jaxembed.metrics import evaluate_run, missing_queries, query_metrics, ranked

pytrec_eval = pytest.importorskip("pytrec_eval", reason="pytrec-eval-terrier (test extra)")

KS = (1, 3, 5, 10, 20, 100)


def random_case(seed: int, num_queries: int = 40, num_docs: int = 150):
    """Graded qrels (0-3, some judged non-relevant) and runs with many tied scores."""
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(num_docs)]
    qrels, run = {}, {}
    for q in range(num_queries):
        qid = f"q{q}"
        judged = rng.sample(docs, rng.randint(1, 12))
        qrels[qid] = {d: rng.choice([0, 1, 1, 2, 3]) for d in judged}
        qrels[qid][judged[0]] = rng.randint(1, 3)  # at least one relevant document
        retrieved = rng.sample(docs, rng.randint(1, 120))
        # Scores from a handful of values: ties decide ranks, as in quantized real runs.
        run[qid] = {d: rng.choice([0.1, 0.25, 0.5, 0.75, 0.9]) for d in retrieved}
    return qrels, run


def pytrec_means(qrels, run, ks):
    measures = {
        "ndcg_cut." + ",".join(map(str, ks)),
        "map_cut." + ",".join(map(str, ks)),
        "recall." + ",".join(map(str, ks)),
        "P." + ",".join(map(str, ks)),
    }
    per_query = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    means = {}
    for ours, theirs in (("ndcg", "ndcg_cut"), ("map", "map_cut"), ("recall", "recall")):
        for k in ks:
            means[f"{ours}_at_{k}"] = sum(v[f"{theirs}_{k}"] for v in per_query.values())
    for k in ks:
        means[f"precision_at_{k}"] = sum(v[f"P_{k}"] for v in per_query.values())
        # trec_eval's recip_rank on the run cut to its top k (trec_eval's order) is MRR@k.
        cut = {q: {d: s[d] for d in ranked(s)[:k]} for q, s in run.items()}
        rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
        means[f"mrr_at_{k}"] = sum(v["recip_rank"] for v in rr.values())
    return {name: value / len(per_query) for name, value in means.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_means_equal_pytrec_eval_with_ties_and_graded_qrels(seed):
    qrels, run = random_case(seed)
    ours = evaluate_run(qrels, run, KS)
    theirs = pytrec_means(qrels, run, KS)
    assert set(ours) == set(theirs)
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(value, abs=1e-9), name


def test_per_query_values_equal_pytrec_eval():
    qrels, run = random_case(7, num_queries=15)
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "map_cut.100"}).evaluate(run)
    for qid, theirs in per_query.items():
        ours = query_metrics(qrels[qid], ranked(run[qid]), (10, 100))
        assert ours["ndcg_at_10"] == pytest.approx(theirs["ndcg_cut_10"], abs=1e-12)
        assert ours["map_at_100"] == pytest.approx(theirs["map_cut_100"], abs=1e-12)


def test_equal_to_mteb_scorer():
    retrieval_metrics = pytest.importorskip("mteb._evaluators.retrieval_metrics")
    qrels, run = random_case(3)
    result = retrieval_metrics.calculate_retrieval_scores(run, qrels, list(KS))
    theirs = {
        **{f"ndcg_at_{k.split('@')[1]}": v for k, v in result.ndcg.items()},
        **{f"map_at_{k.split('@')[1]}": v for k, v in result.map.items()},
        **{f"recall_at_{k.split('@')[1]}": v for k, v in result.recall.items()},
        **{f"precision_at_{k.split('@')[1]}": v for k, v in result.precision.items()},
        **{f"mrr_at_{k.split('@')[1]}": v for k, v in result.mrr.items()},
    }
    ours = evaluate_run(qrels, run, KS)
    for name, value in theirs.items():
        # MTEB rounds its pytrec_eval means to 5 decimals; its MRR is unrounded.
        assert ours[name] == pytest.approx(value, abs=1e-5 if "mrr" not in name else 1e-9), name


def test_queries_without_positives_or_answers_are_not_averaged():
    qrels = {"a": {"d1": 1}, "b": {"d2": 0}, "c": {"d3": 2}}
    run = {"a": {"d1": 0.9, "d9": 0.1}, "b": {"d2": 0.5}}
    # "b" has no relevant document (MTEB drops it); "c" was not answered (trec_eval skips it).
    assert evaluate_run(qrels, run, (1,))["ndcg_at_1"] == 1.0
    assert missing_queries(qrels, run) == ["c"]


def test_hand_computed_values():
    relevance = {"x": 2, "y": 1, "z": 0}
    ranking = ["z", "y", "w", "x"]
    m = query_metrics(relevance, ranking, (2, 4))
    assert m["mrr_at_2"] == 0.5
    assert m["precision_at_2"] == 0.5
    assert m["recall_at_2"] == 0.5
    assert m["map_at_4"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    dcg = 1 / 1.5849625007211563 + 2 / 2.321928094887362
    assert m["ndcg_at_4"] == pytest.approx(dcg / (2 + 1 / 1.5849625007211563))
