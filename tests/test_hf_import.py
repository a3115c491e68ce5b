"""HF directory variants: sharded safetensors index, bf16 weights, pooling from the directory."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxembed import hf
from jaxembed.models import architectures
from jaxembed.models.encoder import Encoder, read_pooling_settings
from jaxembed.sharding import make_mesh

from tiny_models import make_hf_model


@pytest.fixture(scope="module")
def single_and_sharded(tmp_path_factory):
    single = tmp_path_factory.mktemp("single")
    model = make_hf_model("qwen2", single)
    sharded = tmp_path_factory.mktemp("sharded")
    model.save_pretrained(str(sharded), max_shard_size="20KB")
    return single, sharded


def test_sharded_index_loads_the_same_params(single_and_sharded):
    single, sharded = single_and_sharded
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("model-*.safetensors"))) > 2
    config = architectures.LLAMA.config_from_hf(hf.read_hf_config(single))
    a = hf.load_params(single, config)
    b = hf.load_params(sharded, config, mesh=make_mesh((1, 4, 2)))
    for x, y in zip(
        np.asarray(a["layers"]["self_attn"]["q_proj"]["bias"]),
        np.asarray(b["layers"]["self_attn"]["q_proj"]["bias"]),
        strict=True,
    ):
        np.testing.assert_array_equal(x, y)
    leaves_a, leaves_b = [np.asarray(x) for x in _leaves(a)], [np.asarray(x) for x in _leaves(b)]
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(x, y)


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def test_bfloat16_checkpoint(tmp_path):
    import torch

    model = make_hf_model("llama", tmp_path / "f32")
    model.to(torch.bfloat16).save_pretrained(str(tmp_path / "bf16"))
    config = architectures.LLAMA.config_from_hf(hf.read_hf_config(tmp_path / "bf16"))
    params = hf.load_params(tmp_path / "bf16", config)
    ref = model.state_dict()["layers.0.mlp.up_proj.weight"].float().numpy().T
    np.testing.assert_array_equal(np.asarray(params["layers"]["mlp"]["up_proj"]["kernel"][0]), ref)


def test_pooling_read_from_sentence_transformers_modules(single_and_sharded, tmp_path):
    import shutil

    directory = tmp_path / "st"
    shutil.copytree(single_and_sharded[0], directory)
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_lasttoken": True, "pooling_mode_mean_tokens": False})
    )
    (directory / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {
                    "idx": 1,
                    "name": "1",
                    "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling",
                },
                {
                    "idx": 2,
                    "name": "2",
                    "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                },
            ]
        )
    )
    settings = read_pooling_settings(directory)
    assert settings.mode == "last" and settings.normalize
    texts = ["w1 w2 w3", "w4"]
    last = Encoder.from_pretrained(directory).encode(texts, show_progress=False)
    mean = Encoder.from_pretrained(single_and_sharded[0]).encode(texts, show_progress=False)
    assert np.abs(last - mean).max() > 1e-3
    np.testing.assert_allclose(last[1], mean[1], atol=1e-5)  # one token: last == mean
