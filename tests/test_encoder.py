"""The bi-encoder end to end: against transformers + numpy pooling, on meshes, and the CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from jaxembed.cli import main
from jaxembed.models import encoder as encoder_module
from jaxembed.models.encoder import Encoder, PoolingSettings, fit_buckets
from jaxembed.prompts import format_query
from jaxembed.sharding import make_mesh

from tiny_models import WORDS, make_hf_model

RNG = np.random.default_rng(0)
TEXTS = [" ".join(RNG.choice(WORDS, size=int(n))) for n in RNG.integers(1, 40, size=23)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama")
    torch_model = make_hf_model("llama", directory)
    return directory, torch_model


def _hf_mean_embeddings(torch_model, tokenizer, texts):
    """Reference: HF forward with a padding-only mask, numpy mean pooling and normalization."""
    for module in torch_model.modules():
        if hasattr(module, "is_causal"):
            module.is_causal = False
    out = []
    for text in texts:  # one at a time: no padding at all in the reference
        ids = tokenizer(text)["input_ids"]
        mask = torch.ones((1, 1, len(ids), len(ids)), dtype=torch.bool)
        with torch.no_grad():
            hidden = torch_model(
                input_ids=torch.tensor([ids]), attention_mask=mask
            ).last_hidden_state.numpy()[0]
        pooled = hidden.mean(0)
        out.append(pooled / np.linalg.norm(pooled))
    return np.stack(out)


def test_encode_matches_transformers_in_input_order(model_dir):
    directory, torch_model = model_dir
    encoder = Encoder.from_pretrained(directory)
    ours = encoder.encode(TEXTS, batch_size=4, show_progress=False)
    ref = _hf_mean_embeddings(torch_model, encoder.tokenizer, TEXTS)
    assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), 32)
    assert np.abs(ours - ref).max() < 1e-4


def test_bucketing_bounds_compiles(model_dir, monkeypatch):
    encoder = Encoder.from_pretrained(model_dir[0])
    monkeypatch.setattr(encoder_module, "MAX_BUCKETS", 4)
    encoder.encode(TEXTS, batch_size=3, max_length=64, show_progress=False)
    # 23 texts in 8 length-sorted batches, 4 buckets fitted to their lengths: 4 compiles.
    lengths = sorted((len(x) for x in encoder.tokenize(TEXTS, None, 64)[0]), reverse=True)
    maxima = lengths[::3]
    assert len(set(maxima)) > 4
    assert encoder._embed._cache_size() == len(fit_buckets(maxima, 4)) == 4


def _padded(maxima, buckets):
    return sum(min(b for b in buckets if b >= m) for m in maxima)


def test_fitted_buckets_are_optimal():
    """Against brute force over every subset of the batch lengths."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        maxima = [int(m) for m in rng.integers(1, 60, size=rng.integers(1, 25))]
        k = int(rng.integers(1, 6))
        got = fit_buckets(maxima, k)
        values = sorted(set(maxima))
        subsets = (
            [*c, values[-1]]
            for r in range(min(k, len(values)))
            for c in itertools.combinations(values[:-1], r)
        )
        assert len(got) <= k and max(got) == max(maxima)
        assert _padded(maxima, got) == min(_padded(maxima, s) for s in subsets)
    # Few distinct lengths: exactly those (no padding beyond each batch's longest row).
    assert fit_buckets([126, 110, 95, 80], 16) == [80, 95, 110, 126]
    assert fit_buckets([126, 110, 95, 80], 16, align=8) == [80, 96, 112, 126]


@pytest.mark.parametrize("shape", [(2, 2, 2), (8, 1, 1), (1, 4, 2)])
def test_mesh_gives_single_device_embeddings(model_dir, shape):
    directory, _ = model_dir
    single = Encoder.from_pretrained(directory).encode(TEXTS, batch_size=8, show_progress=False)
    sharded = Encoder.from_pretrained(directory, mesh=make_mesh(shape))
    # Params really are split across devices (fsdp/tensor), not replicated.
    kernel = sharded.params["layers"]["mlp"]["up_proj"]["kernel"]
    assert len(kernel.sharding.device_set) == 8
    if shape[1] * shape[2] > 1:
        assert kernel.addressable_shards[0].data.size < kernel.size
    out = sharded.encode(TEXTS, batch_size=8, show_progress=False)
    assert np.abs(out - single).max() < 1e-5


def test_instruction_prefix_and_pool_exclusion(model_dir):
    directory, _ = model_dir
    assert format_query("w1 w2", "find") == ("Instruct: find\nQuery: w1 w2", 22)
    assert format_query("w1 w2", None) == ("w1 w2", 0)
    plain = Encoder.from_pretrained(directory)
    excluding = Encoder.from_pretrained(
        directory, pooling=PoolingSettings(mode="mean", exclude_instruction=True)
    )
    texts = ["w1 w2 w3", "w4 w5"]
    a = plain.encode(texts, instruction="w7 w8", show_progress=False)
    b = excluding.encode(texts, instruction="w7 w8", show_progress=False)
    c = plain.encode(texts, show_progress=False)
    assert np.abs(a - b).max() > 1e-3 and np.abs(a - c).max() > 1e-3
    # Word-level tokens "Instruct:" "w7" "w8" "Query:" are the prefix: pooling starts at 4.
    _, starts = excluding.tokenize(texts, "w7 w8", 512)
    assert starts == [4, 4]
    assert plain.tokenize(texts, "w7 w8", 512)[1] == [0, 0]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_cli_encode_writes_embeddings(model_dir, tmp_path, capsys):
    directory, _ = model_dir
    inp, out = tmp_path / "in.jsonl", tmp_path / "emb.npy"
    _write_jsonl(inp, [{"text": t} for t in TEXTS[:7]])
    code = main(
        [
            "encode",
            "--model",
            str(directory),
            "--input",
            str(inp),
            "--output",
            str(out),
            "--batch-size",
            "3",
            "--quiet",
        ]
    )
    assert code == 0
    expected = Encoder.from_pretrained(directory).encode(TEXTS[:7], show_progress=False)
    got = np.load(out)
    assert got.dtype == np.float32 and np.abs(got - expected).max() < 1e-5
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_default_max_length_is_the_models_sentence_transformers_setting(model_dir, tmp_path):
    import shutil

    from jaxembed.errors import UserInputError

    directory = tmp_path / "with_st"
    shutil.copytree(model_dir[0], directory)
    long_text = " ".join(WORDS[:30])
    assert Encoder.from_pretrained(directory).max_length == 512
    (directory / "sentence_bert_config.json").write_text('{"max_seq_length": 7}')
    encoder = Encoder.from_pretrained(directory)
    assert encoder.max_length == 7
    default = encoder.encode([long_text], show_progress=False)
    np.testing.assert_array_equal(default, encoder.encode([long_text], max_length=7))
    assert not np.allclose(default, encoder.encode([long_text], max_length=30))
    (directory / "sentence_bert_config.json").write_text('{"max_seq_length": "long"}')
    with pytest.raises(UserInputError, match="sentence_bert_config.json: max_seq_length"):
        Encoder.from_pretrained(directory)
