"""The mining loop on embeddings against a plain numpy miner: streamed chunks, IVF/HNSW,
.npy sources, teacher ensembles and random fill."""

from __future__ import annotations

import numpy as np
import pytest

from jaxembed.errors import UserInputError
from jaxembed.mining.methods import MiningConfig
from jaxembed.mining.miner import mine_embeddings
from jaxembed.mining.report import MiningReport
from jaxembed.mining.search import CorpusSearch, IndexConfig
from jaxembed.mining.sources import ArraySource, NpySource, teacher_pair

RNG = np.random.default_rng(0)
N_DOCS, N_QUERIES, DIM = 3000, 120, 24
# Not normalized on purpose: the miner must normalize.
CORPUS = (RNG.standard_normal((N_DOCS, DIM)) * RNG.uniform(0.5, 2, (N_DOCS, 1))).astype(np.float32)
POSITIVES = [
    sorted(RNG.choice(N_DOCS, size=int(RNG.integers(1, 4)), replace=False).tolist())
    for _ in range(N_QUERIES)
]
QUERIES = np.stack([CORPUS[p].mean(0) for p in POSITIVES]) + 0.4 * RNG.standard_normal(
    (N_QUERIES, DIM)
).astype(np.float32)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference(scores_table: np.ndarray, positives, config: MiningConfig, max_pos: int):
    """Per query, straight from the definitions: rank the corpus, keep the top window +
    max_pos, drop positives, apply the rule, keep `window` survivors, skip `shift`, take N."""
    out = []
    for scores, pos_rows in zip(scores_table, positives, strict=True):
        pos = min(scores[r] for r in pos_rows)
        order = np.argsort(-scores, kind="stable")[: config.window + max_pos]
        survivors = []
        for r in order:
            if r in pos_rows:
                continue
            s = scores[r]
            if config.method == "abs" and not s < config.margin:
                continue
            if config.method == "margin" and not s < pos - config.margin:
                continue
            if config.method == "perc" and not s < pos - abs(pos) * (1 - config.margin):
                continue
            survivors.append(int(r))
        survivors = survivors[: config.window][config.shift :]
        out.append(survivors[: config.num_negatives])
    return out


def mined(queries, corpus, config, index=None, positives=POSITIVES, **kw):
    blocks = list(
        mine_embeddings(queries, corpus, np.arange(len(positives)), positives, config, index, **kw)
    )
    rows = [r for b in blocks for r in b.negatives.tolist()]
    scores = np.concatenate([b.scores for b in blocks])
    return [[x for x in r if x >= 0] for r in rows], scores, blocks


CONFIGS = [
    MiningConfig("naive", None, num_negatives=5, range_max=12),
    MiningConfig("shift", None, num_negatives=3, shift=4, range_max=10),
    MiningConfig("abs", 0.58, num_negatives=4, range_max=8),
    MiningConfig("margin", 0.05, num_negatives=4, range_max=8),
    MiningConfig("perc", 0.95, num_negatives=4, range_max=8),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.method)
def test_streamed_flat_search_matches_numpy_reference(config):
    table = unit(QUERIES) @ unit(CORPUS).T
    expected = reference(table, POSITIVES, config, max_pos=3)
    # 3000 rows in chunks of 256 (the last one partial) and queries in blocks of 50.
    got, scores, _ = mined(
        ArraySource(QUERIES),
        ArraySource(CORPUS),
        config,
        IndexConfig(corpus_chunk=256),
        query_block=50,
    )
    assert got == expected
    for q, rows in enumerate(got):
        np.testing.assert_allclose(scores[q, : len(rows)], table[q, rows], atol=1e-5)
    # The case is not vacuous: negatives were found, and a score rule changed some sets.
    assert sum(map(len, got)) > len(got)
    if config.margin is not None:
        naive = MiningConfig("naive", None, num_negatives=4, range_max=8)
        assert got != reference(table, POSITIVES, naive, max_pos=3)


def test_npy_source_reads_rows_like_the_array(tmp_path):
    path = tmp_path / "c.npy"
    np.save(path, CORPUS.astype(np.float16))  # any float type; read without a memory map
    src = NpySource(path)
    expected = unit(CORPUS.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(src.block(100, 357), expected[100:357], rtol=1e-6)
    rows = [2999, 0, 17, 17]
    np.testing.assert_allclose(src.rows(rows), expected[rows], rtol=1e-6)
    starts = [s for s, _ in src.chunks(1000)]
    assert starts == [0, 1000, 2000]


def test_ivf_with_every_list_probed_is_exact_and_hnsw_recalls():
    config = CONFIGS[4]
    exact, _, _ = mined(ArraySource(QUERIES), ArraySource(CORPUS), config)
    ivf = IndexConfig(kind="ivf", nlist=16, nprobe=16, corpus_chunk=700)
    assert mined(ArraySource(QUERIES), ArraySource(CORPUS), config, ivf)[0] == exact
    # HNSW is approximate: its top 30 must recall nearly all of the exact top 30.
    q = unit(QUERIES)
    true_top = np.argsort(-(q @ unit(CORPUS).T), axis=1)[:, :30]
    hnsw = CorpusSearch(ArraySource(CORPUS), config=IndexConfig(kind="hnsw", hnsw_m=16))
    _, ids = hnsw.search(q, 30)
    recall = np.mean([len(set(a) & set(b)) / 30 for a, b in zip(ids, true_top, strict=True)])
    assert recall > 0.95


def test_keep_mask_hides_rows_from_the_search():
    keep = np.ones(N_DOCS, bool)
    keep[::2] = False
    positives = [[r | 1] for r in range(N_QUERIES)]  # odd rows: searchable positives
    config = MiningConfig("naive", None, num_negatives=4, range_max=10)
    got, _, _ = mined(
        ArraySource(QUERIES), ArraySource(CORPUS), config, positives=positives, keep=keep
    )
    table = unit(QUERIES) @ unit(CORPUS).T
    table[:, ~keep] = -np.inf
    assert got == reference(table, positives, config, max_pos=1)


def test_teacher_ensemble_scores_are_the_mean_of_the_teachers():
    other_corpus = RNG.standard_normal((N_DOCS, 10)).astype(np.float32)
    other_queries = RNG.standard_normal((N_QUERIES, 10)).astype(np.float32)
    mean = 0.5 * (unit(QUERIES) @ unit(CORPUS).T + unit(other_queries) @ unit(other_corpus).T)
    queries, corpus = teacher_pair(
        [ArraySource(QUERIES, "q1"), ArraySource(other_queries, "q2")],
        [ArraySource(CORPUS, "c1"), ArraySource(other_corpus, "c2")],
    )
    config = MiningConfig("perc", 0.95, num_negatives=4, range_max=8)
    got, scores, blocks = mined(queries, corpus, config)
    assert got == reference(mean, POSITIVES, config, max_pos=3)
    for q, rows in enumerate(got):
        np.testing.assert_allclose(scores[q, : len(rows)], mean[q, rows], atol=1e-5)
    own = np.concatenate([s for b in blocks for s in b.positive_scores])
    np.testing.assert_allclose(
        own, [mean[q, r] for q, p in enumerate(POSITIVES) for r in p], atol=1e-5
    )


def test_fill_tops_up_with_random_documents_that_pass_the_rule():
    # abs 0.05 with range_max 6: few of the top candidates pass, most queries run short.
    table = unit(QUERIES) @ unit(CORPUS).T
    keep_cfg = MiningConfig("abs", 0.05, num_negatives=4, range_max=6)
    short, _, _ = mined(ArraySource(QUERIES), ArraySource(CORPUS), keep_cfg)
    assert sum(len(r) < 4 for r in short) > N_QUERIES // 2
    fill_cfg = MiningConfig("abs", 0.05, num_negatives=4, range_max=6, fewer="fill")
    report = MiningReport({})
    got, scores, blocks = mined(ArraySource(QUERIES), ArraySource(CORPUS), fill_cfg, report=report)
    filled = np.concatenate([b.filled for b in blocks])
    top = np.argsort(-table, axis=1)[:, : 6 + 3]
    for q, rows in enumerate(got):
        assert len(rows) == 4 and len(set(rows)) == 4
        assert rows[: len(short[q])] == short[q]  # mined ones first, unchanged
        assert filled[q].sum() == 4 - len(short[q])
        for r, s in zip(rows, scores[q], strict=True):
            assert r not in POSITIVES[q] and table[q, r] < 0.05
            assert abs(s - table[q, r]) < 1e-5
        assert not set(rows[len(short[q]) :]) & set(top[q].tolist())
    assert report.filled == filled.sum() and report.short_queries == 0


def test_dimension_mismatch_is_named():
    with pytest.raises(UserInputError, match="q has 24, c has 10"):
        next(
            mine_embeddings(
                ArraySource(QUERIES, "q"),
                ArraySource(CORPUS[:, :10], "c"),
                np.arange(3),
                [[0]] * 3,
                CONFIGS[0],
            )
        )


def test_zero_vector_row_is_named():
    corpus = CORPUS.copy()
    corpus[1234] = 0
    with pytest.raises(UserInputError, match="c: row 1234 is a zero vector"):
        next(
            mine_embeddings(
                ArraySource(QUERIES, "q"),
                ArraySource(corpus, "c"),
                np.arange(3),
                [[0]] * 3,
                CONFIGS[0],
            )
        )
