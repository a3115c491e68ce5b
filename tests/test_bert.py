"""BERT backbone: parity with transformers' BertModel, the real all-MiniLM-L6-v2 against
sentence-transformers on SciFact, sharded encoding, and bad configs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from jaxembed import hf
from jaxembed.data.formats import read_beir_corpus
from jaxembed.errors import UserInputError
from jaxembed.models import architectures
from jaxembed.models.bert import BertModel
from jaxembed.models.encoder import Encoder, PoolingSettings, read_pooling_settings
from jaxembed.sharding import make_mesh

TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    type_vocab_size=2,
    # Large enough that activations reach where GELU's erf and tanh forms differ (std 0.02
    # leaves them near 0, where both agree to 1e-5).
    initializer_range=0.2,
)


def _save_tiny_bert(directory, model_cls_name="BertModel", seed=0, **overrides):
    """A random transformers BERT saved as safetensors; LayerNorms and biases randomized so
    that a mis-mapped one shows (default init leaves them at 1 and 0)."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(**{**TINY, **overrides})
    model = getattr(transformers, model_cls_name)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith(".bias"):
                base = 1.0 if name.endswith("LayerNorm.weight") else 0.0
                p.copy_(torch.randn_like(p) * 0.1 + base)
    model.save_pretrained(str(directory), safe_serialization=True)
    assert (directory / "model.safetensors").is_file()
    return model


def _right_padded_batch(rng, lengths, length, vocab):
    ids = rng.integers(1, vocab, size=(len(lengths), length)).astype(np.int32)
    mask = (np.arange(length)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    return np.where(mask == 1, ids, 0).astype(np.int32), mask


@pytest.mark.parametrize(
    "model_cls_name, overrides, attention_impl",
    [
        ("BertModel", {"hidden_act": "gelu"}, None),
        ("BertModel", {"hidden_act": "gelu_new"}, None),
        ("BertModel", {"hidden_act": "relu"}, None),
        # Big enough to matter at 1e-4, so the eps really comes from config.json.
        ("BertModel", {"layer_norm_eps": 0.5}, None),
        # Task-head checkpoints name tensors "bert.embeddings...": the prefix is resolved.
        ("BertForSequenceClassification", {}, None),
        # The jax.nn.dot_product_attention path (named kernels) instead of softmax_attention.
        ("BertModel", {}, "xla"),
    ],
)
def test_matches_transformers_bert(tmp_path, model_cls_name, overrides, attention_impl):
    torch_model = _save_tiny_bert(tmp_path, model_cls_name, **overrides)
    backbone = torch_model if model_cls_name == "BertModel" else torch_model.bert
    config = architectures.config_from_hf(
        hf.read_hf_config(tmp_path), attention_impl=attention_impl
    )
    params = hf.load_params(tmp_path, config)
    lengths = [40, 7, 23, 1, 40, 16]
    ids, mask = _right_padded_batch(np.random.default_rng(1), lengths, 40, TINY["vocab_size"])
    ours = np.asarray(BertModel(config).apply({"params": params}, ids, mask))
    with torch.no_grad():
        ref = backbone(
            input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask)
        ).last_hidden_state.numpy()
    real = mask.astype(bool)
    assert ours.shape == ref.shape
    assert np.abs(ours[real] - ref[real]).max() < 1e-4


def _scifact_texts(shared_data, n_first=16, n_longest=8):
    corpus = read_beir_corpus(shared_data / "scifact" / "corpus.jsonl")
    texts = [p.full_text() for p in corpus.values()]
    longest = sorted(range(len(texts)), key=lambda i: -len(texts[i]))[:n_longest]
    return texts[:n_first] + [texts[i] for i in longest]


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return Encoder.from_pretrained(minilm_dir)


def test_minilm_matches_sentence_transformers_on_scifact(minilm, minilm_dir, shared_data):
    from sentence_transformers import SentenceTransformer

    texts = _scifact_texts(shared_data)
    st = SentenceTransformer(str(minilm_dir), device="cpu")
    assert st.max_seq_length == 256
    # Pooling comes from the directory's sentence-transformers files.
    assert read_pooling_settings(minilm_dir) == PoolingSettings(mode="mean", normalize=True)
    # Some documents really are truncated ([CLS] ... [SEP] kept at 256 tokens).
    full = minilm.tokenizer(texts)["input_ids"]
    assert sum(len(x) > 256 for x in full) >= 8
    ids, _ = minilm.tokenize(texts, None, 256)
    assert max(len(x) for x in ids) == 256
    assert all(x[0] == 101 and x[-1] == 102 for x in ids)  # [CLS] ... [SEP]

    ours = minilm.encode(texts, max_length=256, batch_size=8, show_progress=False)
    ref = st.encode(texts, normalize_embeddings=True, batch_size=8)
    assert ours.shape == ref.shape == (len(texts), 384)
    assert np.abs(ours - ref).max() < 1e-4


def test_minilm_on_a_mesh_equals_single_device(minilm, minilm_dir, shared_data):
    texts = [t[:300] for t in _scifact_texts(shared_data, n_first=12, n_longest=4)]
    single = minilm.encode(texts, max_length=64, batch_size=8, show_progress=False)
    sharded = Encoder.from_pretrained(minilm_dir, mesh=make_mesh((2, 2, 2)))
    # Params really are split over fsdp and tensor, not replicated.
    kernel = sharded.params["layers"]["intermediate"]["kernel"]
    assert len(kernel.sharding.device_set) == 8
    assert kernel.addressable_shards[0].data.size == kernel.size // 4
    out = sharded.encode(texts, max_length=64, batch_size=8, show_progress=False)
    assert np.abs(out - single).max() < 1e-5


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_bert")
    _save_tiny_bert(directory)
    return directory


@pytest.mark.parametrize(
    "change, key",
    [
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ({"hidden_act": "silu"}, "hidden_act"),
        ({"is_decoder": True}, "is_decoder"),
        ({"num_attention_heads": 5}, "num_attention_heads"),
        ({"hidden_size": None}, "hidden_size"),
    ],
)
def test_bad_bert_config_names_the_key(tiny_dir, tmp_path, change, key):
    directory = tmp_path / "model"
    shutil.copytree(tiny_dir, directory)
    config = json.loads((directory / "config.json").read_text())
    for k, v in change.items():
        if v is None:
            del config[k]
        else:
            config[k] = v
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserInputError, match=key) as info:
        Encoder.from_pretrained(directory)
    assert "config.json" in str(info.value)


def test_max_length_beyond_position_table_is_refused(minilm):
    with pytest.raises(UserInputError, match="max_position_embeddings"):
        minilm.encode(["a short text"], max_length=513, show_progress=False)
