"""Cross-encoder reranker: pair inputs, layer pruning, scores vs transformers/CrossEncoder,
the reranker train step's losses vs numpy, and the pipeline's pair mode."""

from __future__ import annotations

import numpy as np
import pytest

from jaxembed.data.pairs import (
    DEFAULT_PAIR_TEMPLATE,
    check_pair_template,
    tokenize_pairs,
    truncate_queries,
)
from jaxembed.errors import UserInputError

WORDS = "cat dog sat ran mat park fast slow red blue the on in a what where who".split()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from jaxembed.demo import train_tokenizer

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 8)) for _ in range(200)]
    texts += [DEFAULT_PAIR_TEMPLATE.format(query="a", passage="b")] * 20
    tokenizer = train_tokenizer(texts, vocab_size=300)
    directory = tmp_path_factory.mktemp("tok")
    tokenizer.save_pretrained(str(directory))
    tokenizer.directory = directory
    return tokenizer


def _sentences(rng, n, length):
    return [" ".join(rng.choice(WORDS, int(rng.integers(1, length + 1)))) for _ in range(n)]


# --- pair inputs -----------------------------------------------------------------------


def test_template_checks():
    assert check_pair_template(DEFAULT_PAIR_TEMPLATE) == DEFAULT_PAIR_TEMPLATE
    with pytest.raises(UserInputError, match="passage first"):
        check_pair_template("{passage} {query}")
    with pytest.raises(UserInputError, match="exactly one"):
        check_pair_template("{query} {query} {passage}")
    with pytest.raises(UserInputError, match="exactly one"):
        check_pair_template("{query} only")


def test_default_template_matches_config_default():
    from jaxembed.config import default_config

    assert default_config().data.pair_template == DEFAULT_PAIR_TEMPLATE


def test_pairs_are_the_joined_string_tokenized_and_truncation_keeps_the_query(tok):
    queries = ["what cat sat", "who ran"]
    passages = ["the red cat sat on the mat " * 10, "dog"]
    ids = tokenize_pairs(tok, queries, passages, max_length=24)
    joined = [
        DEFAULT_PAIR_TEMPLATE.format(query=q, passage=p)
        for q, p in zip(queries, passages, strict=True)
    ]
    full = tok(joined, add_special_tokens=True)["input_ids"]
    assert ids[0] == full[0][:24] and len(full[0]) > 24  # cut from the passage's end
    assert ids[1] == full[1] and len(full[1]) <= 24
    query_part = tok(["question:what cat sat"])["input_ids"][0]
    assert ids[0][: len(query_part)] == query_part


def test_long_queries_are_cut_at_their_own_token_boundary(tok):
    query = "what cat sat on the red mat in the park"
    (cut,) = truncate_queries(tok, [query], 3)
    want = tok.decode(tok(query, add_special_tokens=False)["input_ids"][:3])
    assert cut == want and query.startswith(cut)
    ids = tokenize_pairs(tok, [query], ["dog"], query_max_length=3, max_length=64)
    assert tok.decode(ids[0]) == DEFAULT_PAIR_TEMPLATE.format(query=cut, passage="dog")


def test_pairs_reject_mismatched_lengths(tok):
    with pytest.raises(ValueError, match="2 queries for 1 passages"):
        tokenize_pairs(tok, ["a", "b"], ["c"])


# --- pruning ---------------------------------------------------------------------------


def test_pruning_keeps_exactly_the_first_n_layers(tmp_path):
    from jaxembed import hf
    from jaxembed.models.reranker import Reranker

    from tiny_models import make_hf_model

    torch_model = make_hf_model("mistral", tmp_path, num_hidden_layers=4, sliding_window=None)
    state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    reranker = Reranker.from_pretrained(tmp_path, num_layers=2)
    assert reranker.config.num_layers == 2
    backbone = reranker.params["backbone"]
    checked = 0
    for wmap in hf.weight_maps(reranker.config):
        leaf = backbone
        for key in wmap.path:
            leaf = leaf[key]
        leaf = np.asarray(leaf)
        name = wmap.hf_name.removeprefix("model.")
        if wmap.per_layer:
            assert leaf.shape[0] == 2  # layers 2 and 3 never arrive
            for i in range(2):
                np.testing.assert_array_equal(leaf[i], wmap.to_ours(state[name.format(i=i)]))
                checked += 1
            # ...and they are really different from the dropped ones
            assert not np.array_equal(leaf[1], wmap.to_ours(state[name.format(i=2)]))
        else:
            np.testing.assert_array_equal(leaf, wmap.to_ours(state[name]))
    assert checked == 2 * 9
    assert reranker.params["score"]["kernel"].shape == (32, 1)
    with pytest.raises(UserInputError, match="cannot keep 5 layers of a 4-layer"):
        Reranker.from_pretrained(tmp_path, num_layers=5)


def test_training_config_prunes_at_import(tmp_path):
    from jaxembed.config import default_config
    from jaxembed.models.build import model_config

    from tiny_models import make_hf_model

    make_hf_model("llama", tmp_path, num_hidden_layers=3)
    config = default_config()
    config.model.init, config.model.hf_path, config.model.prune_layers = "hf", str(tmp_path), 1
    assert model_config(config).num_layers == 1
    config.model.prune_layers = 0
    assert model_config(config).num_layers == 3


# --- export parity -----------------------------------------------------------------------


def _random_reranker(tok, kind_window=None, seed=0):
    import jax

    from jaxembed.models.llama import LlamaConfig
    from jaxembed.models.reranker import init_reranker_params

    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=48,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        max_position_embeddings=128,
        sliding_window=kind_window,
    )
    params = jax.device_get(init_reranker_params(config, jax.random.PRNGKey(seed)))
    rng = np.random.default_rng(seed)
    # A head of unit scale, so scores differ enough for rankings to mean something.
    params["score"]["kernel"] = rng.normal(size=(32, 1)).astype(np.float32)
    params["score"]["bias"] = np.array([0.25], np.float32)
    return config, params


@pytest.mark.parametrize("window", [None, 6])
def test_exported_scores_match_transformers_and_cross_encoder(tok, tmp_path, window):
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification

    from jaxembed.models.reranker import Reranker
    from jaxembed.reranker_export import write_reranker_directory

    config, params = _random_reranker(tok, window)
    out = write_reranker_directory(
        tmp_path / "hf", config, params, tok.directory, template=DEFAULT_PAIR_TEMPLATE,
        max_length=64,
    )  # fmt: skip
    rng = np.random.default_rng(1)
    query = "what cat sat on the mat"
    passages = _sentences(rng, 12, 10)
    reranker = Reranker.from_pretrained(out)
    ours = reranker.score([query] * 12, passages, batch_size=4, max_length=64, show_progress=False)

    model = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    assert type(model).__name__.endswith("ForSequenceClassification")
    texts = [DEFAULT_PAIR_TEMPLATE.format(query=query, passage=p) for p in passages]
    enc = tok(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        reference = model(**enc).logits[:, 0].numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0)
    assert np.ptp(reference) > 0.1  # scores that actually differ

    # CrossEncoder tokenizes the two halves of the template as a pair; with no pair
    # post-processor that is the same token sequence, and the same ranking.
    cross = CrossEncoder(str(out), trust_remote_code=True)
    pairs = [(f"question:{query}", f" \n \n passage:{p}") for p in passages]
    ce_scores = cross.predict(pairs, batch_size=5)
    ranks = cross.rank(f"question:{query}", [f" \n \n passage:{p}" for p in passages])
    assert [r["corpus_id"] for r in ranks] == list(np.argsort(-ours, kind="stable"))
    np.testing.assert_allclose(ce_scores, ours, atol=1e-4, rtol=0)


# --- train step: the ranking losses -------------------------------------------------------


def _numpy_listwise(scores, t):
    logits = scores / t
    m = logits.max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(1))
    return float(np.mean(lse - logits[:, 0]))


def _numpy_bce(scores):
    labels = np.zeros_like(scores)
    labels[:, 0] = 1
    p = 1 / (1 + np.exp(-scores))
    return float(np.mean(-(labels * np.log(p) + (1 - labels) * np.log(1 - p))))


@pytest.mark.parametrize("kind", ["listwise", "bce"])
def test_reranker_train_step_uses_the_ranking_loss(tok, kind):
    import jax
    import optax

    from jaxembed.models.reranker import make_score_fn
    from jaxembed.train.state import create_state, make_optimizer
    from jaxembed.train.step import StepSettings, make_train_step

    config, params = _random_reranker(tok)
    rng = np.random.default_rng(3)
    b, g, length = 4, 3, 10
    ids = rng.integers(4, len(tok), size=(b, g, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[:, 1:, 7:] = 0
    ids = np.where(mask == 1, ids, 0).astype(np.int32)
    flat = {"input_ids": ids.reshape(-1, length), "attention_mask": mask.reshape(-1, length)}
    scores = np.asarray(make_score_fn(config)(params, flat)).reshape(b, g)
    t = 0.5
    want = _numpy_listwise(scores.astype(np.float64), t) if kind == "listwise" else None
    if kind == "bce":
        want = _numpy_bce(scores.astype(np.float64))

    schedule = optax.constant_schedule(1e-3)
    optimizer = make_optimizer(schedule)
    state = create_state(params, optimizer, jax.random.PRNGKey(0))
    settings = StepSettings(task="reranker", ranking=kind, ranking_temperature=t)
    step = jax.jit(make_train_step(config, optimizer, schedule, settings))
    batch = {"pair_input_ids": ids, "pair_attention_mask": mask}
    new_state, metrics = step(state, batch)
    assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)
    assert float(metrics["accuracy"]) == np.mean(scores[:, 0] > scores[:, 1:].max(1))
    assert int(metrics["tokens"]) == mask.sum()
    assert int(new_state.step) == 1
    # The head and the backbone both train.
    moved = jax.tree.map(lambda a, c: bool(np.any(np.asarray(a) != np.asarray(c))),
                         params, jax.device_get(new_state.params))  # fmt: skip
    assert moved["score"]["kernel"] and moved["backbone"]["layers"]["mlp"]["up_proj"]["kernel"]


# --- pipeline pair mode --------------------------------------------------------------------


def test_pipeline_pair_mode_yields_joined_pairs_positive_first(tok):
    from jaxembed.data import BatchIterator, DatasetSpec, PipelineConfig
    from jaxembed.data.records import Passage, TrainingRecord

    rng = np.random.default_rng(0)
    records = []
    for i in range(8):
        q = " ".join(rng.choice(WORDS, 12))
        pos = Passage(f"p{i}", " ".join(rng.choice(WORDS, 6)), title="red")
        negs = tuple(Passage(f"n{i}_{j}", " ".join(rng.choice(WORDS, 30))) for j in range(3))
        records.append(TrainingRecord(q, (pos,), negs, instruction="Find it"))
    cfg = PipelineConfig(
        global_batch_size=4, num_negatives=2, query_max_length=5, passage_max_length=24,
        prefetch=0, pair_template=DEFAULT_PAIR_TEMPLATE,
    )  # fmt: skip
    by_query = {r.query: r for r in records}
    with BatchIterator([DatasetSpec("s", records)], tok, cfg) as it:
        batch = next(it)
    assert set(batch) == {"pair_input_ids", "pair_attention_mask", "doc_ids", "dataset_index"}
    assert batch["pair_input_ids"].shape[:2] == (4, 3)
    assert batch["pair_input_ids"].shape[2] in (8, 16, 24)
    for row in range(4):
        first = batch["pair_input_ids"][row, 0][batch["pair_attention_mask"][row, 0] == 1]
        text = tok.decode(first)
        query_text = text.removeprefix("question:").split(" \n \n passage:")[0]
        record = next(r for q, r in by_query.items() if q.startswith(query_text))
        q_cut = tok.decode(tok(record.query, add_special_tokens=False)["input_ids"][:5])
        for g, passage in enumerate((record.positives[0],) + record.negatives[:2]):
            joined = DEFAULT_PAIR_TEMPLATE.format(query=q_cut, passage=passage.full_text())
            want = tok(joined, truncation=True, max_length=24)["input_ids"]
            got = batch["pair_input_ids"][row, g][batch["pair_attention_mask"][row, g] == 1]
            assert got.tolist() == want  # no instruction, query cut, positive first


def test_reranker_config_validates():
    from jaxembed.config import load_config
    from jaxembed.train.validate import validate

    config = load_config("configs/nv_rerankqa_mistral_4b.py")
    assert config.model.task == "reranker" and config.model.prune_layers == 16
    assert config.loss.ranking == "listwise"
    assert load_config("configs/nv_rerankqa_mistral_4b.py:bce").loss.ranking == "bce"
    config.model.init, config.data.tokenizer = "random", "x"  # no Mistral-7B here
    config.model.prune_layers = 0
    config.data.train_files = ("configs/tiny.py",)  # any existing file
    validate(config, 8)
    config.data.pair_template = "{passage} {query}"
    with pytest.raises(UserInputError, match="data.pair_template"):
        validate(config, 8)
    config.data.pair_template = DEFAULT_PAIR_TEMPLATE
    config.loss.ranking = "pairwise"
    with pytest.raises(UserInputError, match="loss.ranking"):
        validate(config, 8)
