"""Greedy decoding with the causal mode: how pretrained weights are proven to load right."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.models.llama import LlamaConfig, LlamaModel


def greedy_generate(
    config: LlamaConfig,
    params: Any,
    prompt: list[int],
    total_length: int,
    stop_token: int | None = None,
) -> list[int]:
    """Extend `prompt` by argmax until `total_length` tokens or `stop_token` is produced.

    Recomputes the full (right-padded) sequence each step with one compiled shape: slow for
    long texts, but it exercises exactly the forward pass that encoders use.
    """
    model = LlamaModel(config)

    @jax.jit
    def next_token(params: Any, ids: jax.Array, length: jax.Array) -> jax.Array:
        mask = (jnp.arange(ids.shape[1]) < length)[None].astype(jnp.int32)
        hidden = model.apply({"params": params}, ids, mask, causal=True)
        logits = model.apply({"params": params}, hidden[:, length - 1], method=LlamaModel.logits)
        return jnp.argmax(logits, axis=-1)[0]

    ids = np.zeros((1, total_length), np.int32)
    ids[0, : len(prompt)] = prompt
    tokens = list(prompt)
    while len(tokens) < total_length:
        token = int(next_token(params, jnp.asarray(ids), jnp.int32(len(tokens))))
        if token == stop_token:
            break
        ids[0, len(tokens)] = token
        tokens.append(token)
    return tokens
