"""The Flax Llama family against transformers (PyTorch, CPU) on imported random checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from jaxembed import hf
from jaxembed.models import architectures
from jaxembed.models.llama import LlamaModel

from hf_reference import hf_hidden
from tiny_models import make_hf_model, random_batch

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}

VARIANTS = {
    # GQA 4:2 with Llama 3.1 rope scaling (original context shorter than the test sequences)
    "llama3": ("llama", {"rope_parameters": {"rope_theta": 500000.0, **LLAMA3_ROPE}}),
    "llama_linear_headdim": (
        "llama",
        {
            "head_dim": 16,
            "rope_parameters": {"rope_theta": 10000.0, "rope_type": "linear", "factor": 2.0},
        },
    ),
    # a window shorter than the sequence, so it really cuts attention in causal mode
    "mistral_window": ("mistral", {"sliding_window": 5}),
    "qwen2_bias": ("qwen2", {"num_key_value_heads": 1}),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def imported(request, tmp_path_factory):
    kind, overrides = VARIANTS[request.param]
    directory = tmp_path_factory.mktemp(request.param)
    torch_model = make_hf_model(kind, directory, **overrides)
    config = architectures.LLAMA.config_from_hf(hf.read_hf_config(directory))
    params = hf.load_params(directory, config)
    return request.param, torch_model, config, params


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("mode", ["causal", "bidirectional"])
def test_hidden_states_match_transformers(imported, mode, padding):
    name, torch_model, config, params = imported
    if mode == "bidirectional" and config.sliding_window is not None:
        # HF has no bidirectional sliding window to compare against; the window is tested causally.
        config = config.__class__(**{**config.__dict__, "sliding_window": None})
    ids, mask = random_batch(np.random.default_rng(1), 3, 12, config.vocab_size, padding)
    ours = np.asarray(
        LlamaModel(config).apply({"params": params}, ids, mask, causal=mode == "causal")
    )
    ref = hf_hidden(torch_model, ids, mask, bidirectional=mode == "bidirectional")
    real = mask.astype(bool)
    assert np.abs(ours[real] - ref[real]).max() < 1e-4, name


def test_bidirectional_differs_from_causal(imported):
    """Guards the parity test itself: the two modes must really give different states."""
    _, _, config, params = imported
    ids, mask = random_batch(np.random.default_rng(2), 2, 8, config.vocab_size, "right")
    model = LlamaModel(config)
    causal = np.asarray(model.apply({"params": params}, ids, mask, causal=True))
    bidir = np.asarray(model.apply({"params": params}, ids, mask, causal=False))
    assert np.abs(causal[:, 0] - bidir[:, 0]).max() > 1e-3


def test_left_and_right_padding_give_the_same_states(imported):
    _, _, config, params = imported
    ids_r, mask_r = random_batch(np.random.default_rng(3), 3, 10, config.vocab_size, "right")
    lengths = mask_r.sum(1)
    ids_l = np.zeros_like(ids_r)
    for b, n in enumerate(lengths):
        ids_l[b, 10 - n :] = ids_r[b, :n]
    mask_l = (np.arange(10)[None] >= 10 - lengths[:, None]).astype(np.int32)
    model = LlamaModel(config)
    right = np.asarray(model.apply({"params": params}, ids_r, mask_r))
    left = np.asarray(model.apply({"params": params}, ids_l, mask_l))
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(right[b, :n], left[b, 10 - n :], atol=1e-5)
