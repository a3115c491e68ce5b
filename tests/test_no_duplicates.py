"""No-duplicate batches (`data.no_duplicates`, sentence-transformers' NO_DUPLICATES): no two
records sharing a text in a batch, every record still once an epoch, exact resume, and no
hang where duplicates cannot be avoided."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np

from jaxembed.data import BatchIterator, DatasetSpec, IteratorState, Passage, PipelineConfig
from jaxembed.data.records import TrainingRecord
from jaxembed.data.sampler import GlobalSampler

from data_helpers.synthetic import tiny_tokenizer

B = 8


def _shared_keys(n: int, documents: int, seed: int = 0) -> list[np.ndarray]:
    """Record i's texts: its own query and two of `documents` shared documents (SciFact's
    shape: several claims cite one abstract, mined negatives recur)."""
    rng = np.random.default_rng(seed)
    return [
        np.asarray([10_000 + i, *rng.choice(documents, size=2, replace=False)]) for i in range(n)
    ]


def _plans(sampler: GlobalSampler, steps: int, state: IteratorState | None = None):
    state = state or IteratorState.start(1)
    plans = []
    for _ in range(steps):
        plan, state = sampler.plan(state)
        plans.append(plan)
    return plans, state


def test_batches_share_no_text_and_every_record_still_comes_once_an_epoch():
    n, keys = 96, _shared_keys(96, documents=60)
    sampler = GlobalSampler([np.arange(n)], [1.0], B, seed=0, keys=[keys])
    plans, state = _plans(sampler, 5 * n // B)
    for plan in plans:
        texts = [int(k) for r in plan.record for k in keys[r]]
        assert len(texts) == len(set(texts)), "a batch holds a text twice"
    # A record waits at most a few batches: each epoch's records come out within the next
    # batch's worth of picks, every one exactly once.
    picks = [(int(e), int(r)) for p in plans for e, r in zip(p.epoch, p.record, strict=True)]
    for epoch in range(4):
        assert Counter(r for e, r in picks if e == epoch) == Counter(range(n))
    assert len(state.streams[0].deferred) <= 4 * B
    # Plain shuffled batches of the same data do hold duplicates: the option changes them.
    plain, _ = _plans(GlobalSampler([np.arange(n)], [1.0], B, seed=0), 5 * n // B)
    assert any(len({int(k) for r in p.record for k in keys[r]}) < 3 * B for p in plain)


def test_resume_with_records_waiting_gives_the_same_batches():
    n, keys = 64, _shared_keys(64, documents=30, seed=1)
    sampler = GlobalSampler([np.arange(n)], [1.0], B, seed=4, keys=[keys])
    _, state = _plans(sampler, 11)
    assert state.streams[0].deferred, "nothing was waiting: the test would not test resume"
    restored = IteratorState.from_json(json.loads(json.dumps(state.to_json())))
    expected, _ = _plans(sampler, 9, state)
    fresh = GlobalSampler([np.arange(n)], [1.0], B, seed=4, keys=[keys])
    got, _ = _plans(fresh, 9, restored)
    for a, b in zip(expected, got, strict=True):
        assert np.array_equal(a.record, b.record) and np.array_equal(a.epoch, b.epoch)


def test_unavoidable_duplicates_fill_the_batch_anyway():
    """Four labels for 8 rows (a classification task): batches still fill, the waiting list
    stays bounded, and records still come once an epoch."""
    n = 40
    keys = [np.asarray([1000 + i, i % 4]) for i in range(n)]
    sampler = GlobalSampler([np.arange(n)], [1.0], B, seed=0, keys=[keys])
    plans, state = _plans(sampler, 50)
    assert all(len(p.record) == B for p in plans)
    assert len(state.streams[0].deferred) <= 4 * B
    picks = [(int(e), int(r)) for p in plans for e, r in zip(p.epoch, p.record, strict=True)]
    assert Counter(r for e, r in picks if e == 0) == Counter(range(n))


def test_pipeline_batches_hold_each_document_once():
    """The option end to end: records citing shared documents (by id) never put one twice in
    a batch's doc_ids, which the plain pipeline does."""
    rng = np.random.default_rng(2)
    docs = [Passage(f"d{i}", f"document {i}") for i in range(40)]
    records = [
        TrainingRecord(f"question {i}", (docs[a],), (docs[b],))
        for i, (a, b) in enumerate(rng.choice(40, size=(80, 2)))
        if a != b
    ]
    words = " ".join(f"question document {i}" for i in range(80))
    tok = tiny_tokenizer((words,))
    for no_duplicates in (True, False):
        config = PipelineConfig(
            global_batch_size=B, num_negatives=1, query_max_length=16, passage_max_length=16,
            prefetch=0, no_duplicates=no_duplicates,
        )  # fmt: skip
        with BatchIterator([DatasetSpec("s", records)], tok, config) as it:
            repeats = 0
            for _ in range(30):
                ids = np.asarray(next(it)["doc_ids"]).ravel()
                repeats += len(ids) - len(set(ids.tolist()))
        assert (repeats == 0) == no_duplicates, (no_duplicates, repeats)
