"""The full `jaxembed demo` (README command 1): training helps, and reranking helps more.

About 4 minutes on 2 cores, so it is marked slow; CI runs the same demo through README
command 1 and checks its results.json with `python -m jaxembed.demo_check` (see .ci/run).
"""

from __future__ import annotations

import json

import pytest

from jaxembed.demo import RESULTS_NAME, run_demo
from jaxembed.demo_check import check_results


@pytest.mark.slow
def test_demo_training_and_reranking_improve_held_out_ndcg(tmp_path):
    run_demo(tmp_path / "demo")
    results = json.loads((tmp_path / "demo" / RESULTS_NAME).read_text())
    check_results(results)
    assert results["reranked"]["ndcg_at_10"] > results["retriever_top_k"]["ndcg_at_10"]


def test_check_results_refuses_a_reranker_that_does_not_help():
    good = {
        "retriever_before": {"ndcg_at_10": 0.01},
        "retriever_after": {"ndcg_at_10": 0.3},
        "retriever_top_k": {"ndcg_at_10": 0.3},
        "reranked": {"ndcg_at_10": 0.4},
    }
    check_results(good)
    with pytest.raises(SystemExit, match="reranker"):
        check_results({**good, "reranked": {"ndcg_at_10": 0.2}})
    with pytest.raises(SystemExit, match="training"):
        check_results({**good, "retriever_after": {"ndcg_at_10": 0.005}})
