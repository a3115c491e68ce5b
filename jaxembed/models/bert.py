"""BERT (HF `BertModel`) as a Flax Linen backbone behind the same call as `LlamaModel`.

Word + absolute position + token-type embeddings and LayerNorm, then post-LN layers
(attention with biases, residual, LayerNorm; GELU MLP, residual, LayerNorm). Inputs carry a
single segment, so token type 0 is added everywhere, and positions are 0..L-1 as HF counts
them: sequences must be right-padded (the encoder's batches are). The pooler head is not
part of the backbone. Layers are stacked (models/layer_stack.py: scanned, or looped on a
CPU) and every parameter carries logical axis names, as in `llama.py`, so
`jaxembed.sharding` places both families alike. LoRA adapters attach to the six
projections (query, key, value, attention output, intermediate, output) as in `llama.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxembed.models.attention import (
    HeadsMerge,
    HeadsProjection,
    ProbabilityDropout,
    attend,
    partitioned_init,
)
from jaxembed.models.dropout import RowDropout
from jaxembed.models.layer_stack import REMAT_POLICIES, loop_layers, scanned_layers
from jaxembed.models.llama import attention_inputs
from jaxembed.models.lora import LoraConfig, lora_delta
from jaxembed.models.matmul import dense_dot_general

_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


@jax.custom_vjp
def _gelu_exact(x: jax.Array) -> jax.Array:
    """x * Phi(x) (HF's "gelu", the erf form). The backward is written out,
    `g * (Phi(x) + x * phi(x))` in one pass: autodiff through erf takes several over the
    [tokens, intermediate] activations, ~1.1 s of all-MiniLM-L6-v2's 5 s forward+backward
    on 80 x 128 tokens here."""
    return jax.nn.gelu(x, approximate=False)  # bit for bit what it was before the custom vjp


def _gelu_forward(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return _gelu_exact(x), x


def _gelu_backward(x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    cdf = 0.5 + 0.5 * jax.lax.erf(x * _SQRT_HALF)
    pdf = jnp.exp(-0.5 * x * x) * _INV_SQRT_2PI
    return ((g * (cdf + x * pdf)).astype(x.dtype),)


_gelu_exact.defvjp(_gelu_forward, _gelu_backward)


def _gelu_tanh(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=True)


# HF ACT2FN names -> functions: "gelu" is the erf form, the tanh forms are HF's NewGELU.
ACTIVATIONS = {
    "gelu": _gelu_exact,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Architecture of a BERT encoder (HF names in the comments)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int  # num_hidden_layers
    num_heads: int  # num_attention_heads
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    remat_policy: str = "none"
    # True: layers under `nn.scan`; False: the same stacked params applied in a Python loop,
    # faster on a CPU (models/layer_stack.py).
    scan_layers: bool = True
    attention_impl: str | None = None  # None: softmax_attention; else a dot_product_attention one
    lora: LoraConfig | None = None  # adapters on the projections it targets (models/lora.py)
    # Training-time dropout as HF BERT applies it (hidden_dropout_prob after the embeddings
    # and each sublayer's output projection, attention_probs_dropout_prob on the attention
    # probabilities); active only when the call is given a "dropout" rng.
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be a multiple of num_heads={self.num_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not one of {sorted(ACTIVATIONS)}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"remat_policy={self.remat_policy!r} is not one of {sorted(REMAT_POLICIES)}"
            )
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1)")
        if self.attention_dropout and self.attention_impl is not None:
            raise ValueError(
                f"attention_dropout={self.attention_dropout} needs jaxembed's attention, not "
                f"{self.attention_impl!r} (set model.attention_dropout=0)"
            )

    @property
    def has_dropout(self) -> bool:
        """Whether a training step draws dropout masks (the model's own or LoRA's)."""
        lora_dropout = self.lora is not None and bool(self.lora.dropout)
        return bool(self.hidden_dropout or self.attention_dropout or lora_dropout)

    @property
    def resolved_head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def layer_params(self) -> int:
        h, m = self.hidden_size, self.intermediate_size
        return 4 * (h * h + h) + 2 * h * m + m + h + 4 * h

    def outer_params(self) -> int:
        """The embeddings' LayerNorm."""
        return 2 * self.hidden_size

    def num_params(self) -> int:
        """Parameter count of the backbone (the pooler head excluded)."""
        tables = self.vocab_size + self.max_position_embeddings + self.type_vocab_size
        return (
            tables * self.hidden_size + self.outer_params() + self.num_layers * self.layer_params()
        )


class LayerNorm(nn.Module):
    """Two-pass mean/variance in f32 (like torch), weight and bias applied after casting back."""

    eps: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.shape[-1]
        scale = self.param(
            "scale", partitioned_init(("norm",), nn.initializers.ones), (h,), self.param_dtype
        )
        bias = self.param(
            "bias", partitioned_init(("norm",), nn.initializers.zeros), (h,), self.param_dtype
        )
        x32 = x.astype(jnp.float32)
        centered = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(centered * centered, axis=-1, keepdims=True)
        normed = (centered * jax.lax.rsqrt(var + self.eps)).astype(self.dtype)
        return normed * jnp.asarray(scale, self.dtype) + jnp.asarray(bias, self.dtype)


class SelfAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, mask: jax.Array, row_ids: jax.Array | None = None
    ) -> jax.Array:
        cfg = self.config
        n, d = cfg.num_heads, cfg.resolved_head_dim
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)

        def project(name: str) -> jax.Array:
            y = HeadsProjection(n, d, True, dtype, pdtype, name=name)(x)
            out_axes = ("heads", "head_dim")
            delta = lora_delta(self, name, x, ("embed",), (n, d), out_axes, cfg.lora, row_ids)
            # The adapter term comes out [B, T, heads, d]; the projection is heads-major.
            return y if delta is None else y + jnp.swapaxes(delta, 1, 2)

        drop_module = RowDropout(cfg.attention_dropout, name="probabilities_dropout")
        dropout = None
        if cfg.attention_dropout and self.has_rng("dropout"):
            dropout = ProbabilityDropout(
                cfg.attention_dropout, lambda shape: drop_module.keep_mask(shape, row_ids)
            )
        out = attend(
            project("query"), project("key"), project("value"), mask, cfg.attention_impl, dropout
        )
        y = HeadsMerge(cfg.hidden_size, True, dtype, pdtype, name="output")(out)
        heads_last = jnp.swapaxes(out, 1, 2)  # the adapter contracts [.., heads, d]
        out_shape = (cfg.hidden_size,)
        delta = lora_delta(
            self,
            "output",
            heads_last,
            ("heads", "head_dim"),
            out_shape,
            ("embed",),
            cfg.lora,
            row_ids,
        )
        return y if delta is None else y + delta


class EncoderLayer(nn.Module):
    """Post-LN block; the (carry, None) signature is what nn.scan wants."""

    config: BertConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, mask: jax.Array, row_ids: jax.Array | None = None
    ) -> tuple[jax.Array, None]:
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)

        def dense(name: str, features: int, axes: tuple[str, str], h: jax.Array) -> jax.Array:
            y = nn.Dense(
                features,
                dtype=dtype,
                param_dtype=pdtype,
                kernel_init=partitioned_init(axes),
                bias_init=partitioned_init(axes[1:], nn.initializers.zeros),
                dot_general=dense_dot_general,
                name=name,
            )(h)
            delta = lora_delta(self, name, h, axes[:1], (features,), axes[1:], cfg.lora, row_ids)
            return y if delta is None else y + delta

        def norm(name: str) -> LayerNorm:
            return LayerNorm(cfg.layer_norm_eps, dtype, pdtype, name=name)

        def dropout(name: str, y: jax.Array) -> jax.Array:
            return RowDropout(cfg.hidden_dropout, name=name)(y, row_ids)

        attended = SelfAttention(cfg, name="attention")(x, mask, row_ids)
        x = norm("attention_norm")(x + dropout("attention_dropout", attended))
        h = ACTIVATIONS[cfg.hidden_act](
            dense("intermediate", cfg.intermediate_size, ("embed", "mlp"), x)
        )
        y = dense("output", cfg.hidden_size, ("mlp", "embed"), h)
        x = norm("output_norm")(x + dropout("output_dropout", y))
        return x, None


class BertModel(nn.Module):
    """Token ids → last hidden states [B, T, hidden] (HF `last_hidden_state`)."""

    config: BertConfig

    def setup(self) -> None:
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)

        def embed(rows: int, axes: tuple[str | None, str]) -> nn.Embed:
            return nn.Embed(
                rows,
                cfg.hidden_size,
                dtype=dtype,
                param_dtype=pdtype,
                embedding_init=partitioned_init(axes),
            )

        self.word_embeddings = embed(cfg.vocab_size, ("vocab", "embed"))
        self.position_embeddings = embed(cfg.max_position_embeddings, (None, "embed"))
        self.token_type_embeddings = embed(cfg.type_vocab_size, (None, "embed"))
        self.embeddings_norm = LayerNorm(cfg.layer_norm_eps, dtype, pdtype)
        self.embeddings_dropout = RowDropout(cfg.hidden_dropout)
        self.layers = scanned_layers(EncoderLayer, cfg, num_broadcast=2)

    def __call__(
        self,
        input_ids: jax.Array,
        padding_mask: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        *,
        causal: bool = False,
        row_ids: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
    ) -> jax.Array:
        """`row_ids` [B] (global row numbers) key the per-row dropout masks; packed rows'
        `segment_ids` as in `LlamaModel` (learned positions restart with `position_ids`)."""
        cfg = self.config
        length = input_ids.shape[1]
        if length > cfg.max_position_embeddings:
            # A gather past the table would silently clamp to its last row.
            raise ValueError(
                f"sequence length {length} exceeds max_position_embeddings "
                f"{cfg.max_position_embeddings}"
            )
        if padding_mask is None:
            padding_mask = jnp.ones(input_ids.shape, jnp.int32)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(length), input_ids.shape)
        token_types = jnp.zeros((1, 1), jnp.int32)
        x = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(token_types)
            + self.position_embeddings(position_ids)
        )
        x = self.embeddings_dropout(self.embeddings_norm(x), row_ids)
        mask = attention_inputs(
            padding_mask,
            causal=causal,
            sliding_window=None,
            segment_ids=segment_ids,
            implementation=cfg.attention_impl,
        )
        if cfg.scan_layers or self.is_initializing():
            x, _ = self.layers(x, mask, row_ids)
        else:
            x = loop_layers(self, EncoderLayer, x, mask, row_ids)
        return x

    def init_all(self, ids: jax.Array) -> jax.Array:
        """Init entry point (every submodule is on the forward path)."""
        return self(ids)
