"""Batch pipeline: shapes, templating, determinism, epochs, exact resume, blending, buckets."""

import time

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from jaxembed.data import (
    BatchIterator,
    DatasetSpec,
    IteratorState,
    Passage,
    PipelineConfig,
    TrainingRecord,
    batch_sharding,
)
from jaxembed.data.records import doc_hash

from data_helpers.synthetic import make_records, tiny_tokenizer

KEYS = {
    "query_input_ids",
    "query_attention_mask",
    "query_pool_mask",
    "passage_input_ids",
    "passage_attention_mask",
    "passage_pool_mask",
    "doc_ids",
    "dataset_index",
}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _config(**kw) -> PipelineConfig:
    base = dict(
        global_batch_size=8,
        num_negatives=2,
        query_max_length=32,
        passage_max_length=48,
        prefetch=2,
        seed=1,
    )
    return PipelineConfig(**{**base, **kw})


def _take(it: BatchIterator, n: int) -> list[dict[str, np.ndarray]]:
    return [{k: np.asarray(v) for k, v in next(it).items()} for _ in range(n)]


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
        for x, y in zip(a, b, strict=True)
    )


def _two_datasets():
    return [
        DatasetSpec("a", make_records(40, name="a", seed=1), weight=0.7),
        DatasetSpec("b", make_records(25, name="b", seed=2, instruction=""), weight=0.3),
    ]


def test_batch_keys_shapes_and_contents(tok):
    records = make_records(16, seed=5, negatives=(2, 5))
    cfg = _config(num_negatives=2, prefetch=0, query_buckets=(16, 32))
    with BatchIterator([DatasetSpec("s", records)], tok, cfg) as it:
        batch = next(it)
        plan, _ = it._sampler.plan(IteratorState.start(1))
    assert set(batch) == KEYS
    assert all(v.dtype == np.int32 for v in batch.values())
    b, lq = batch["query_input_ids"].shape
    assert b == 8 and lq in (16, 32)
    assert batch["passage_input_ids"].shape[:2] == (8, 3)
    assert batch["passage_input_ids"].shape[2] in (16, 24, 48)
    assert batch["doc_ids"].shape == (8, 3) and batch["dataset_index"].shape == (8,)
    for row in range(8):
        record = records[plan.record[row]]
        ids = batch["query_input_ids"][row][batch["query_attention_mask"][row] == 1]
        tokens = tok.convert_ids_to_tokens(ids.tolist())
        prefix = ["[BOS]", "Instruct", ":", "find", "the", "documents", "Query", ":"]
        assert tokens[: len(prefix)] == prefix and tokens[-1] == "[EOS]"
        # Pooling skips the instruction prefix (and BOS) but keeps the query and EOS.
        pool = batch["query_pool_mask"][row]
        assert pool[: len(prefix)].sum() == 0 and pool[len(prefix) : len(ids)].all()
        assert pool[len(ids) :].sum() == 0
        expected = [record.positives[0], *record.negatives[:2]]
        assert batch["doc_ids"][row].tolist() == [doc_hash(p.id, "s") for p in expected]
        for j, p in enumerate(expected):
            mask = batch["passage_attention_mask"][row, j] == 1
            text = tok.decode(batch["passage_input_ids"][row, j][mask], skip_special_tokens=True)
            assert text == p.text
        np.testing.assert_array_equal(
            batch["passage_pool_mask"][row], batch["passage_attention_mask"][row]
        )
    assert np.all(batch["query_input_ids"][batch["query_attention_mask"] == 0] == tok.pad_token_id)


def test_query_without_instruction_pools_every_token(tok):
    records = make_records(8, instruction="", negatives=(1, 2))
    with BatchIterator([DatasetSpec("s", records)], tok, _config(num_negatives=1)) as it:
        batch = next(it)
    np.testing.assert_array_equal(batch["query_pool_mask"], batch["query_attention_mask"])
    first = tok.convert_ids_to_tokens(batch["query_input_ids"][:, 1].tolist())
    assert "Instruct" not in first


def test_same_seed_same_batches_other_seed_differs(tok):
    def run(seed):
        with BatchIterator(_two_datasets(), tok, _config(seed=seed)) as it:
            return _take(it, 6)

    assert _same(run(3), run(3))
    assert not _same(run(3), run(4))


def test_each_epoch_covers_the_data_once_in_a_new_order(tok):
    records = make_records(32, seed=7, negatives=(2, 3))
    spec = [DatasetSpec("s", records)]
    with BatchIterator(spec, tok, _config()) as it:
        batches = _take(it, 8)  # 32 records / 8 = 4 batches per epoch
        assert it.state.streams[0].epoch == 1 and it.state.streams[0].position == 32
    order = [b["doc_ids"][:, 0].tolist() for b in batches]
    epoch0, epoch1 = sum(order[:4], []), sum(order[4:], [])
    every = sorted(doc_hash(r.positives[0].id, "s") for r in records)
    assert sorted(epoch0) == every and sorted(epoch1) == every
    assert epoch0 != epoch1
    # Starting directly at epoch 1 gives that epoch's order.
    with BatchIterator(spec, tok, _config(), state=IteratorState.start(1, epoch=1)) as it:
        assert _same(_take(it, 4), batches[4:])


@pytest.mark.parametrize("homogeneous", [False, True])
def test_restore_mid_epoch_yields_identical_remaining_stream(tok, homogeneous):
    cfg = _config(more_negatives="sample", homogeneous=homogeneous, prefetch=3)
    with BatchIterator(_two_datasets(), tok, cfg) as it:
        full = _take(it, 12)
    with BatchIterator(_two_datasets(), tok, cfg) as it:
        head = _take(it, 4)
        # Let the prefetch thread run ahead, so the state must come from what was consumed.
        deadline = time.monotonic() + 30
        while it._produced.step < 4 + cfg.prefetch and time.monotonic() < deadline:
            time.sleep(0.01)
        head += _take(it, 1)
        assert it._produced.step > 5
        saved = it.state.to_json()
    assert IteratorState.from_json(saved).step == 5
    with BatchIterator(_two_datasets(), tok, cfg, state=IteratorState.from_json(saved)) as it:
        tail = _take(it, 7)
    assert _same(head + tail, full)


def test_blending_proportions_within_tolerance(tok):
    specs = [
        DatasetSpec("a", make_records(30, name="a", seed=1, passage_words=(2, 4)), weight=3.0),
        DatasetSpec("b", make_records(30, name="b", seed=2, passage_words=(2, 4)), weight=1.0),
    ]
    cfg = _config(global_batch_size=32, num_negatives=1, prefetch=4)
    with BatchIterator(specs, tok, cfg) as it:
        counts = np.bincount(np.concatenate([next(it)["dataset_index"] for _ in range(60)]))
    n, p = counts.sum(), 0.75
    # 4 standard deviations of a binomial: fails by chance about once in 16,000 runs.
    assert abs(counts[0] / n - p) < 4 * np.sqrt(p * (1 - p) / n), counts


def test_homogeneous_batches_are_homogeneous(tok):
    specs = [
        DatasetSpec("a", make_records(30, name="a", seed=1, passage_words=(2, 4)), weight=3.0),
        DatasetSpec("b", make_records(30, name="b", seed=2, passage_words=(2, 4)), weight=1.0),
    ]
    cfg = _config(num_negatives=1, homogeneous=True, prefetch=4)
    with BatchIterator(specs, tok, cfg) as it:
        batches = [next(it) for _ in range(200)]
    owners = []
    ids = [{doc_hash(r.positives[0].id, s.name) for r in s.records} for s in specs]
    for b in batches:
        assert len(set(b["dataset_index"].tolist())) == 1
        owners.append(int(b["dataset_index"][0]))
        # The positives confirm every row really comes from that dataset's records.
        assert set(b["doc_ids"][:, 0].tolist()) <= ids[owners[-1]]
    share = np.mean(np.asarray(owners) == 0)
    assert abs(share - 0.75) < 4 * np.sqrt(0.75 * 0.25 / 200), share
    with BatchIterator(specs, tok, _config(num_negatives=1, homogeneous=False)) as it:
        mixed = [len(set(next(it)["dataset_index"].tolist())) for _ in range(20)]
    assert max(mixed) == 2


def test_padding_uses_only_bucket_lengths(tok):
    short = make_records(24, name="s", seed=1, query_words=(1, 2), passage_words=(1, 3))
    long = make_records(24, name="l", seed=2, query_words=(20, 30), passage_words=(30, 60))
    cfg = _config(
        num_negatives=1,
        query_buckets=(8, 16, 40),
        query_max_length=40,
        passage_buckets=(8, 64),
        passage_max_length=64,
    )
    lengths = set()
    for spec in (DatasetSpec("s", short), DatasetSpec("l", long)):
        with BatchIterator([spec], tok, cfg) as it:
            for _ in range(3):
                b = next(it)
                lq, lp = b["query_input_ids"].shape[1], b["passage_input_ids"].shape[2]
                lengths.add((lq, lp))
                # The bucket is the smallest that fits the longest sequence.
                assert b["query_attention_mask"].sum(1).max() > [0, 8, 16][[8, 16, 40].index(lq)]
                assert b["passage_attention_mask"].sum(2).max() <= lp
    assert lengths == {(16, 8), (40, 64)}


def test_more_and_fewer_negative_rules(tok):
    rich = [
        TrainingRecord(
            f"q{i}",
            (Passage(f"p{i}", f"w{i}"),),
            tuple(Passage(f"n{i}-{j}", f"w{j}") for j in range(6)),
        )
        for i in range(8)
    ]
    first_ids = [[doc_hash(f"n{i}-{j}", "r") for j in range(2)] for i in range(8)]

    def negatives(cfg, records=rich, corpus=None):
        with BatchIterator([DatasetSpec("r", records, corpus=corpus)], tok, cfg) as it:
            batch = next(it)
        return batch["doc_ids"][:, 1:], batch["doc_ids"][:, 0]

    got, pos = negatives(_config(more_negatives="first"))
    by_pos = {int(p): n.tolist() for p, n in zip(pos, got, strict=True)}
    assert sorted(by_pos.values()) == sorted(first_ids)
    sampled, _ = negatives(_config(more_negatives="sample"))
    assert not np.array_equal(np.sort(sampled, axis=None), np.sort(got, axis=None))

    # Fewer: fill from the corpus, never with the record's own positive.
    poor = [TrainingRecord(f"q{i}", (Passage(f"c{i}", f"w{i}"),)) for i in range(8)]
    corpus = [Passage(f"c{i}", f"w{i}") for i in range(12)]
    filled, pos = negatives(_config(), records=poor, corpus=corpus)
    corpus_ids = {doc_hash(p.id, "r") for p in corpus}
    assert set(filled.ravel().tolist()) <= corpus_ids
    assert all(p not in row for p, row in zip(pos.tolist(), filled.tolist(), strict=True))

    # Fewer: drop; the count of dropped records is reported.
    mixed = rich[:4] + poor[4:]
    cfg = _config(fewer_negatives="drop", global_batch_size=4)
    with BatchIterator([DatasetSpec("r", mixed)], tok, cfg) as it:
        assert it.dropped == {"r": 4}
        seen = {int(x) for _ in range(4) for x in next(it)["doc_ids"][:, 0]}
    assert seen == {doc_hash(f"p{i}", "r") for i in range(4)}


def test_sharded_global_arrays_match_unsharded(tok):
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    sharding = batch_sharding(mesh)
    with BatchIterator(_two_datasets(), tok, _config()) as it:
        plain = _take(it, 3)
    with BatchIterator(_two_datasets(), tok, _config(), sharding=sharding) as it:
        assert it.process_rows == (0, 8)
        sharded = [next(it) for _ in range(3)]
    for batch in sharded:
        for k, v in batch.items():
            assert isinstance(v, jax.Array) and v.sharding.is_equivalent_to(sharding, v.ndim), k
            assert len(v.addressable_shards) == 8 and v.addressable_shards[0].data.shape[0] == 2
    assert _same([{k: np.asarray(v) for k, v in b.items()} for b in sharded], plain)


def test_errors_reach_the_consumer(tok):
    class Broken(list):
        def __getitem__(self, i):
            raise OSError("disk gone")

    spec = DatasetSpec("x", Broken(make_records(8)))
    with BatchIterator([spec], tok, _config()) as it, pytest.raises(OSError, match="disk gone"):
        next(it)


def test_config_from_mapping():
    cfg = PipelineConfig.from_mapping({"global_batch_size": 4, "query_buckets": [8, 16]})
    assert cfg.query_buckets == (8, 16)
    with pytest.raises(ValueError, match="unknown data pipeline options"):
        PipelineConfig.from_mapping({"global_batch_size": 4, "batch": 1})
    with pytest.raises(ValueError, match="fewer_negatives must be one of"):
        PipelineConfig(global_batch_size=4, fewer_negatives="pad")
