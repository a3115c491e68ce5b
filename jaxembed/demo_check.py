"""`python -m jaxembed.demo_check WORKDIR`: exit non-zero unless the demo's held-out results
show what the demo claims (training improves retrieval; the reranker improves on the
retriever's own ranking). CI runs it after README command 1."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from jaxembed.demo import RESULTS_NAME


def check_results(results: dict[str, Any]) -> None:
    before = results["retriever_before"]["ndcg_at_10"]
    after = results["retriever_after"]["ndcg_at_10"]
    if not after > before:
        sys.exit(f"demo: training did not improve held-out nDCG@10 ({before:.4f} -> {after:.4f})")
    if "reranked" in results:
        base = results["retriever_top_k"]["ndcg_at_10"]
        reranked = results["reranked"]["ndcg_at_10"]
        if not reranked > base:
            sys.exit(
                f"demo: the reranker did not improve held-out nDCG@10 ({base:.4f} -> "
                f"{reranked:.4f})"
            )


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m jaxembed.demo_check WORKDIR")
    path = Path(sys.argv[1]) / RESULTS_NAME
    check_results(json.loads(path.read_text(encoding="utf-8")))
    print(f"demo results check passed: {path}")


if __name__ == "__main__":
    main()
