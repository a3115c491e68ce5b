"""Sequence packing: packed batches give the padded batches' embeddings, loss and gradients.

The padded path is the reference (it is itself checked against transformers and
sentence-transformers elsewhere): the same records through the pipeline with
`packing="rows"` and `"none"` must give one step's loss and every gradient alike on the
8-device mesh, for each loss variant, GradCache, LoRA, BERT and Llama, and the reranker.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxembed.data import BatchIterator, DatasetSpec, PipelineConfig
from jaxembed.data.packing import first_fit_rows, pack, row_bucket
from jaxembed.models.architectures import init_adapters, init_params
from jaxembed.models.bert import BertConfig
from jaxembed.models.encoder import make_embed_fn
from jaxembed.models.llama import LlamaConfig
from jaxembed.models.lora import LoraConfig
from jaxembed.models.reranker import init_reranker_params
from jaxembed.sharding import batch_sharding, make_mesh, param_shardings
from jaxembed.tasks import get as get_task
from jaxembed.train.state import create_state, learning_rate_schedule, make_optimizer
from jaxembed.train.step import StepSettings

from data_helpers.synthetic import make_records, tiny_tokenizer

TOK = tiny_tokenizer()
VOCAB = len(TOK)
LLAMA = LlamaConfig(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
)
BERT = BertConfig(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
    max_position_embeddings=64,
)  # fmt: skip


def test_first_fit_rows_places_every_text_once_within_capacity():
    rng = np.random.default_rng(0)
    for _ in range(50):
        length, segments = int(rng.integers(8, 64)), int(rng.integers(1, 6))
        lengths = rng.integers(1, length + 1, size=int(rng.integers(1, 80))).tolist()
        rows = first_fit_rows(lengths, length, segments)
        placed = sorted(i for row in rows for i in row)
        assert placed == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in row) <= length for row in rows)
        assert all(len(row) <= segments for row in rows)
        # First fit: no text could have gone into an earlier row (longest first).
        assert rows == first_fit_rows(lengths, length, segments)
        assert len(rows) >= -(-sum(lengths) // length)
    with pytest.raises(ValueError, match="lengths must be in"):
        first_fit_rows([5, 9], 8, 4)


def test_row_bucket_rounds_to_sixteenths_and_alignment():
    assert row_bucket(3, 64) == 4
    assert row_bucket(9, 64) == 12
    assert row_bucket(64, 64) == 64
    assert row_bucket(3, 64, align=16) == 16
    assert row_bucket(1, 4, align=8) == 8


def test_pack_restarts_positions_and_maps_slots():
    ids = [[5, 6, 7], [8], [9, 10]]
    rows = first_fit_rows([3, 1, 2], 4, 4)  # [[0, 1], [2]]
    packed = pack(ids, [1, 0, 0], rows, num_rows=4, length=4, max_segments=4, pad_id=0,
                  row_offset=2)  # fmt: skip
    np.testing.assert_array_equal(packed.input_ids[:2], [[5, 6, 7, 8], [9, 10, 0, 0]])
    np.testing.assert_array_equal(packed.segment_ids[:2], [[1, 1, 1, 2], [1, 1, 0, 0]])
    np.testing.assert_array_equal(packed.positions[:2], [[0, 1, 2, 0], [0, 1, 0, 0]])
    np.testing.assert_array_equal(packed.pool_mask[0], [0, 1, 1, 1])
    assert not packed.segment_ids[2:].any()
    # Slot = (offset + row) * max_segments + segment - 1.
    np.testing.assert_array_equal(packed.slots, [2 * 4 + 0, 2 * 4 + 1, 3 * 4 + 0])


def _texts(seed: int, n: int, low: int = 1, high: int = 14) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(4, VOCAB, size=int(rng.integers(low, high))).tolist() for _ in range(n)]


def _padded(ids, starts, length):
    from jaxembed.data.batching import pad

    x, mask, pool = pad(ids, starts, length, 0)
    return {"input_ids": x, "attention_mask": mask, "pool_mask": pool}


def _packed(ids, starts, length, segments=6):
    rows = first_fit_rows(list(map(len, ids)), length, segments)
    packed = pack(ids, starts, rows, num_rows=len(rows), length=length, max_segments=segments,
                  pad_id=0)  # fmt: skip
    inputs = {k: v for k, v in packed.arrays().items() if k != "slots"}
    return inputs, packed.slots


def _unpack(pooled, slots):
    return np.asarray(pooled).reshape(-1, pooled.shape[-1])[slots]


@pytest.mark.parametrize("config", [LLAMA, BERT], ids=["llama", "bert"])
@pytest.mark.parametrize("mode", ["mean", "last", "first"])
def test_packed_embeddings_equal_padded(config, mode):
    ids = _texts(1, 24)
    starts = [min(2, len(t) - 1) if i % 3 == 0 else 0 for i, t in enumerate(ids)]
    params = init_params(config, jax.random.PRNGKey(0))
    padded_fn = jax.jit(make_embed_fn(config, mode))
    packed_fn = jax.jit(make_embed_fn(config, mode, max_segments=6))
    reference = np.asarray(padded_fn(params, _padded(ids, starts, 16)))
    inputs, slots = _packed(ids, starts, 32)
    assert inputs["input_ids"].shape[0] < len(ids) / 2  # really packed
    np.testing.assert_allclose(_unpack(packed_fn(params, inputs), slots), reference, atol=2e-6)


@pytest.mark.parametrize("config", [LLAMA, BERT], ids=["llama", "bert"])
def test_a_segment_does_not_reach_its_neighbours(config):
    ids = _texts(2, 12, low=3)
    params = init_params(config, jax.random.PRNGKey(1))
    fn = jax.jit(make_embed_fn(config, "mean", max_segments=6))
    inputs, slots = _packed(ids, [0] * len(ids), 32)
    before = _unpack(fn(params, inputs), slots)
    victim = int(np.argmax(inputs["segment_ids"][0] == 2))  # row 0's second segment
    changed = dict(inputs, input_ids=inputs["input_ids"].copy())
    region = inputs["segment_ids"][0] == 2
    changed["input_ids"][0, region] = (changed["input_ids"][0, region] + 7) % (VOCAB - 4) + 4
    after = _unpack(fn(params, changed), slots)
    hit = slots == 0 * 6 + 1  # text in row 0, segment 2
    assert victim > 0 and hit.sum() == 1
    assert not np.allclose(after[hit], before[hit])
    np.testing.assert_array_equal(after[~hit], before[~hit])


# --- one train step, packed vs padded, through the real pipeline on the 8-device mesh -------

MESH = (2, 2, 2)


def _batches(packing: str, *, pairs: bool = False, multiples: tuple[int, int] = (1, 1)):
    records = make_records(16, seed=3, negatives=(2, 4), query_words=(1, 10),
                           passage_words=(2, 24))  # fmt: skip
    config = PipelineConfig(
        global_batch_size=8,
        num_negatives=2,
        query_max_length=16,
        passage_max_length=32,
        prefetch=0,
        packing=packing,
        pack_max_segments=8,
        query_row_multiple=multiples[0],
        passage_row_multiple=multiples[1],
        pair_template="{query} | {passage}" if pairs else "",
    )
    mesh = make_mesh(MESH, jax.devices()[:8])
    with BatchIterator([DatasetSpec("s", records)], TOK, config,
                       sharding=batch_sharding(mesh)) as it:  # fmt: skip
        return next(it), mesh


def _step_result(model, settings: StepSettings, packing: str, multiples=(1, 1)):
    task = get_task(settings.task)
    batch, mesh = _batches(packing, pairs=settings.task == "reranker", multiples=multiples)
    if settings.task == "reranker":
        params = init_reranker_params(model, jax.random.PRNGKey(0))
    else:
        params = init_params(model, jax.random.PRNGKey(0))
    params = jax.device_put(params, param_shardings(task.param_shapes(model), mesh))
    adapters = None
    if model.lora is not None:
        adapters = init_adapters(model, jax.random.PRNGKey(2))
        # B starts at zero; random B makes every adapter gradient non-trivial.
        leaves, tree = jax.tree.flatten(adapters)
        keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
        adapters = tree.unflatten(
            [0.1 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
        )
    optimizer = make_optimizer(learning_rate_schedule(1e-3, 10, 1))
    state = create_state(params, optimizer, jax.random.PRNGKey(1), adapters, task.layout)
    (loss, metrics), grads = jax.jit(task.gradients(model, settings))(state, batch)
    return float(loss), jax.device_get(grads), int(metrics["tokens"]), batch


def _assert_same_step(model, settings, multiples=(1, 1), packed_model=None):
    loss, grads, tokens, padded = _step_result(model, settings, "none")
    p_loss, p_grads, p_tokens, packed = _step_result(
        packed_model or model, settings, "rows", multiples
    )
    side = "pair" if settings.task == "reranker" else "passage"
    assert packed[f"{side}_input_ids"].size < padded[f"{side}_input_ids"].size
    assert p_tokens == tokens  # the same real tokens, fewer positions
    np.testing.assert_allclose(p_loss, loss, rtol=1e-5)
    flat, p_flat = jax.tree.leaves_with_path(grads), jax.tree.leaves(p_grads)
    for (path, g), p in zip(flat, p_flat, strict=True):
        scale = float(np.abs(g).max())
        # Floored at f32 rounding: the listwise head's bias has a true gradient of 0 (the
        # loss is shift-invariant), the sum of 24 score gradients of ~0.05 that cancel.
        atol = max(2e-5 * scale, 1e-7)
        np.testing.assert_allclose(p, g, atol=atol, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("variant", ["in_batch", "hn_only", "gemini", "gecko", "qwen3"])
def test_packed_step_equals_padded_step_for_every_loss(variant):
    margin = 0.1 if variant == "qwen3" else None
    settings = StepSettings(loss_variant=variant, false_negative_margin=margin,
                            exclude_instruction=True, pack_max_segments=8)  # fmt: skip
    _assert_same_step(LLAMA, settings)


def test_packed_step_equals_padded_step_with_gradcache():
    settings = StepSettings(gradcache_chunk=8, gradcache_passage_chunk=8, pack_max_segments=8)
    _assert_same_step(LLAMA, settings, multiples=(8, 8))


def test_packed_step_equals_padded_step_with_lora_on_bert():
    model = dataclasses.replace(BERT, lora=LoraConfig(rank=4, alpha=8.0))
    _assert_same_step(model, StepSettings(pooling="first", pack_max_segments=8))


def test_packed_reranker_step_equals_padded_step():
    settings = StepSettings(task="reranker", pooling="last", pack_max_segments=8)
    _assert_same_step(LLAMA, settings)


def test_splash_attention_on_packed_rows_equals_the_dense_padded_step():
    # The TPU kernel, run by Pallas' interpreter on this CPU, shard-mapped over the mesh.
    splash = dataclasses.replace(LLAMA, attention_impl="splash")
    _assert_same_step(LLAMA, StepSettings(pack_max_segments=8), packed_model=splash)


def test_packed_batches_resume_exactly():
    records = make_records(24, seed=4, negatives=(1, 3))
    config = PipelineConfig(global_batch_size=8, num_negatives=1, query_max_length=16,
                            passage_max_length=32, prefetch=0, packing="rows")  # fmt: skip
    spec = [DatasetSpec("s", records)]
    with BatchIterator(spec, TOK, config) as it:
        full = [next(it) for _ in range(5)]
    with BatchIterator(spec, TOK, config) as it:
        next(it), next(it)
        state = it.state
    with BatchIterator(spec, TOK, config, state=state) as it:
        rest = [next(it) for _ in range(3)]
    for a, b in zip(full[2:], rest, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_packed_pool_mask_leaves_out_the_instruction():
    records = make_records(8, seed=5, negatives=(1, 2), instruction="find the documents")
    config = PipelineConfig(global_batch_size=8, num_negatives=1, query_max_length=16,
                            passage_max_length=32, prefetch=0, packing="rows")  # fmt: skip
    with BatchIterator([DatasetSpec("s", records)], TOK, config) as it:
        batch = next(it)
    seg, pool = batch["query_segment_ids"], batch["query_pool_mask"]
    assert (pool <= (seg > 0)).all()
    # Each query's instruction tokens are attended (in its segment) but not pooled.
    flat = batch["query_slots"]
    assert len(np.unique(flat)) == 8
    assert int(pool.sum()) < int((seg > 0).sum())
    assert jnp.asarray(batch["query_positions"]).max() < 16


# --- `jaxembed train` with packing: same losses as padded, exact resume, 2 processes -------

STEPS = 6
LR = "--config.optimizer.learning_rate=1e-4"  # see test_train_loop's two-process test
# A schedule that does not depend on train.steps, so a 4-step run is the 6-step run's start.
CONSTANT = "--config.optimizer.decay=constant"
PACKED = "--config.data.packing=rows"


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    from data_helpers.train_cli import write_task_dir

    return write_task_dir(tmp_path_factory.mktemp("task"))


def _train(task_dir, workdir, *extra, steps=STEPS):
    from jaxembed.cli import main

    from data_helpers.train_cli import train_args

    assert main(train_args(task_dir, workdir, steps, LR, CONSTANT, *extra)) == 0
    return workdir


@pytest.fixture(scope="module")
def packed_run(task_dir, tmp_path_factory):
    return _train(task_dir, tmp_path_factory.mktemp("packed"), PACKED)


def test_packed_training_logs_the_padded_losses_and_resumes_exactly(task_dir, packed_run, tmp_path):
    from data_helpers.train_cli import logged_losses

    padded = logged_losses(_train(task_dir, tmp_path / "padded", "--config.data.packing=none"))
    packed = logged_losses(packed_run)
    assert sorted(packed) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([packed[s] for s in padded], list(padded.values()), atol=1e-5)
    # Stopped after checkpoint 4 and restarted: the rest of the run is the same.
    resumed = tmp_path / "resumed"
    _train(task_dir, resumed, PACKED, steps=4)
    _train(task_dir, resumed, PACKED)
    again = logged_losses(resumed)
    assert [again[s] for s in range(5, STEPS + 1)] == [packed[s] for s in range(5, STEPS + 1)]


def test_two_processes_pack_like_one(task_dir, packed_run, tmp_path):
    from data_helpers.train_cli import logged_losses, run_processes, train_args

    workdir = tmp_path / "multi"
    run_processes(train_args(task_dir, workdir, STEPS, LR, CONSTANT, PACKED))
    single, multi = logged_losses(packed_run), logged_losses(workdir)
    assert sorted(multi) == sorted(single)
    np.testing.assert_allclose([multi[s] for s in single], list(single.values()), atol=1e-5)


@pytest.mark.parametrize("config", [LLAMA, BERT], ids=["llama", "bert"])
def test_splash_attention_embeds_padded_and_packed_rows_like_the_dense_path(config):
    ids = _texts(3, 16)
    starts = [0] * len(ids)
    params = init_params(config, jax.random.PRNGKey(0))
    splash = dataclasses.replace(config, attention_impl="splash")
    reference = np.asarray(jax.jit(make_embed_fn(config, "mean"))(params, _padded(ids, starts, 16)))
    padded = jax.jit(make_embed_fn(splash, "mean"))(params, _padded(ids, starts, 16))
    np.testing.assert_allclose(np.asarray(padded), reference, atol=2e-6)
    inputs, slots = _packed(ids, starts, 32)
    packed = jax.jit(make_embed_fn(splash, "mean", max_segments=6))(params, inputs)
    np.testing.assert_allclose(_unpack(packed, slots), reference, atol=2e-6)
