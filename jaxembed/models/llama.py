"""The Llama family (Llama 2/3, Mistral, Qwen2) as one Flax Linen backbone.

The same weights serve two attention modes chosen at call time: bidirectional (padding mask
only, what the embedding and reranking recipes use) and causal (the pretrained LM, used to
prove the weights load correctly). Layers are stacked with `nn.scan` so compile time does not
grow with depth, and every parameter carries logical axis names that `jaxembed.sharding`
maps onto the ('data', 'fsdp', 'tensor') mesh.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxembed.models.attention import HeadsMerge, HeadsProjection, attend, partitioned_init
from jaxembed.models.layer_stack import REMAT_POLICIES, loop_layers, scanned_layers
from jaxembed.models.lora import LoraConfig, lora_delta
from jaxembed.models.matmul import dense_dot_general
from jaxembed.models.rope import rope_inverse_frequencies


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Architecture of a Llama-family model (HF names in the comments)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int  # num_hidden_layers
    num_heads: int  # num_attention_heads
    num_kv_heads: int  # num_key_value_heads
    head_dim: int | None = None  # explicit head size; default hidden_size // num_heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # HF rope_scaling dict as items
    max_position_embeddings: int = 2048
    attention_bias: bool = False  # q/k/v bias (Qwen2)
    sliding_window: int | None = None  # Mistral; None = full attention
    tie_word_embeddings: bool = False
    with_lm_head: bool = False  # keep an untied output projection (encoders drop it)
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    remat_policy: str = "none"
    # True: layers under `nn.scan` (compile time independent of depth, what pods want);
    # False: the same stacked weights run by a Python loop, which XLA:CPU trains faster
    # (no stacked per-layer activations to write and read back; benchmarks/RESULTS.md).
    scan_layers: bool = True
    attention_impl: str | None = None  # None: softmax_attention; else a dot_product_attention one
    lora: LoraConfig | None = None  # adapters on the projections it targets (models/lora.py)

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"remat_policy={self.remat_policy!r} is not one of {sorted(REMAT_POLICIES)}"
            )

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def has_dropout(self) -> bool:
        """Whether a training step draws dropout masks (LoRA's only: the family trains
        without dropout of its own)."""
        return self.lora is not None and bool(self.lora.dropout)

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

    def layer_params(self) -> int:
        h, d = self.hidden_size, self.resolved_head_dim
        q_out, kv_out = self.num_heads * d, self.num_kv_heads * d
        attn = h * q_out + 2 * h * kv_out + q_out * h
        if self.attention_bias:
            attn += q_out + 2 * kv_out
        return attn + 3 * h * self.intermediate_size + 2 * h

    def outer_params(self) -> int:
        """The final norm, plus the untied LM head when kept."""
        untied = self.with_lm_head and not self.tie_word_embeddings
        return self.hidden_size + (self.vocab_size * self.hidden_size if untied else 0)

    def num_params(self) -> int:
        """Parameter count of the backbone (plus the untied head when kept)."""
        embed = self.vocab_size * self.hidden_size
        return embed + self.num_layers * self.layer_params() + self.outer_params()


class RMSNorm(nn.Module):
    eps: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
            (x.shape[-1],),
            self.param_dtype,
        )
        # Variance in f32 and the weight applied after casting back, as HF does.
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return jnp.asarray(scale, self.dtype) * normed.astype(self.dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate the two halves of each head ([B, heads, T, head_dim]; cos and sin [B, T,
    head_dim]) like HF's rotate_half."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos = cos[:, None]
    sin = sin[:, None]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x * cos + rotated * sin).astype(x.dtype)


class Attention(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        row_ids: jax.Array | None = None,
    ) -> jax.Array:
        cfg = self.config
        d = cfg.resolved_head_dim
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)

        def project(name: str, heads: int, head_axis: str) -> jax.Array:
            y = HeadsProjection(
                heads, d, cfg.attention_bias, dtype, pdtype, head_axis=head_axis, name=name
            )(x)
            out_axes = (head_axis, "head_dim")
            delta = lora_delta(self, name, x, ("embed",), (heads, d), out_axes, cfg.lora, row_ids)
            # The adapter term comes out [B, T, heads, d]; the projection is heads-major.
            return y if delta is None else y + jnp.swapaxes(delta, 1, 2)

        q = apply_rope(project("q_proj", cfg.num_heads, "heads"), cos, sin)
        k = apply_rope(project("k_proj", cfg.num_kv_heads, "kv_heads"), cos, sin)
        v = project("v_proj", cfg.num_kv_heads, "kv_heads")
        out = attend(q, k, v, mask, cfg.attention_impl)
        y = HeadsMerge(cfg.hidden_size, False, dtype, pdtype, name="o_proj")(out)
        heads_last = jnp.swapaxes(out, 1, 2)  # the adapter contracts [.., heads, d]
        delta = lora_delta(
            self,
            "o_proj",
            heads_last,
            ("heads", "head_dim"),
            (cfg.hidden_size,),
            ("embed",),
            cfg.lora,
            row_ids,
        )
        return y if delta is None else y + delta


class MLP(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x: jax.Array, row_ids: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)

        def dense(name: str, features: int, axes: tuple[str, str], h: jax.Array) -> jax.Array:
            y = nn.Dense(
                features,
                use_bias=False,
                dtype=dtype,
                param_dtype=pdtype,
                kernel_init=partitioned_init(axes),
                dot_general=dense_dot_general,
                name=name,
            )(h)
            return _adapted(self, name, y, h, axes[:1], axes[1:], row_ids)

        gate = dense("gate_proj", cfg.intermediate_size, ("embed", "mlp"), x)
        up = dense("up_proj", cfg.intermediate_size, ("embed", "mlp"), x)
        return dense("down_proj", cfg.hidden_size, ("mlp", "embed"), nn.silu(gate) * up)


def _adapted(
    module: nn.Module,
    name: str,
    y: jax.Array,
    x: jax.Array,
    in_axes: tuple[str, ...],
    out_axes: tuple[str, ...],
    row_ids: jax.Array | None,
) -> jax.Array:
    """Projection `name`'s output `y` of input `x`, plus its LoRA term when it is a target."""
    out_shape = y.shape[y.ndim - len(out_axes) :]
    delta = lora_delta(module, name, x, in_axes, out_shape, out_axes, module.config.lora, row_ids)
    return y if delta is None else y + delta


class DecoderLayer(nn.Module):
    """Pre-norm attention + SwiGLU block; the (carry, None) signature is what nn.scan wants."""

    config: LlamaConfig

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        row_ids: jax.Array | None = None,
    ) -> tuple[jax.Array, None]:
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        h = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="input_layernorm")(x)
        x = x + Attention(cfg, name="self_attn")(h, mask, cos, sin, row_ids)
        h = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="post_attention_layernorm")(x)
        x = x + MLP(cfg, name="mlp")(h, row_ids)
        return x, None


def attention_mask(
    padding_mask: jax.Array,
    *,
    causal: bool,
    sliding_window: int | None,
    segment_ids: jax.Array | None = None,
) -> jax.Array:
    """Boolean [B, 1, T or 1, T] mask: key must be a real token, and (causal) not in the
    future, and (sliding window) within the last `sliding_window` positions, as HF Mistral
    counts them. With packed rows' `segment_ids` [B, T] (0 = padding), a token sees only
    its own segment's tokens (segments are contiguous, so causal order and the window hold
    within each); padding sees padding, so no attention row is empty.
    """
    if segment_ids is None:
        keep = padding_mask.astype(bool)[:, None, None, :]
    else:
        keep = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
    t = padding_mask.shape[1]
    qi = jnp.arange(t)[:, None]
    ki = jnp.arange(t)[None, :]
    if causal:
        keep = keep & (ki <= qi)[None, None]
    if sliding_window is not None:
        window = jnp.abs(qi - ki) < sliding_window if not causal else (qi - ki) < sliding_window
        keep = keep & window[None, None]
    return keep


def attention_inputs(
    padding_mask: jax.Array,
    *,
    causal: bool,
    sliding_window: int | None,
    segment_ids: jax.Array | None,
    implementation: str | None,
) -> jax.Array:
    """What `attend` takes as its mask: the boolean mask of `attention_mask`, or for the
    splash kernel the segment ids [B, T] (a padded row is segment 1, its padding 0)."""
    if implementation != "splash":
        return attention_mask(
            padding_mask, causal=causal, sliding_window=sliding_window, segment_ids=segment_ids
        )
    if causal or sliding_window is not None:
        raise ValueError("attention_impl='splash' is bidirectional full attention only")
    return padding_mask.astype(jnp.int32) if segment_ids is None else segment_ids


def positions_from_mask(padding_mask: jax.Array) -> jax.Array:
    """Position ids that count only real tokens, so left and right padding embed alike."""
    mask = padding_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)


class LlamaModel(nn.Module):
    """Token ids → final-norm hidden states [B, T, hidden]; `logits` adds the LM head."""

    config: LlamaConfig

    def setup(self) -> None:
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.embed_tokens = nn.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            dtype=dtype,
            param_dtype=pdtype,
            embedding_init=partitioned_init(("vocab", "embed")),
        )
        self.layers = scanned_layers(DecoderLayer, cfg, num_broadcast=4)
        self.norm = RMSNorm(cfg.rms_norm_eps, dtype, pdtype)
        if cfg.with_lm_head and not cfg.tie_word_embeddings:
            self.lm_head = nn.Dense(
                cfg.vocab_size,
                use_bias=False,
                dtype=dtype,
                param_dtype=pdtype,
                kernel_init=partitioned_init(("embed", "vocab")),
            )

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
        """`row_ids` [B] (global row numbers) key the per-row LoRA dropout masks.
        `segment_ids` [B, T] mark packed rows' texts (1, 2, ...; 0 = padding): each is
        attended on its own, with the `position_ids` the caller restarts per segment."""
        cfg = self.config
        if padding_mask is None:
            padding_mask = jnp.ones(input_ids.shape, jnp.int32)
        if position_ids is None:
            position_ids = positions_from_mask(padding_mask)
        inv_freq = jnp.asarray(
            rope_inverse_frequencies(
                cfg.resolved_head_dim,
                cfg.rope_theta,
                cfg.rope_scaling_dict,
                cfg.max_position_embeddings,
            )
        )
        # Angles in f32 regardless of compute dtype: bf16 positions lose precision past 256.
        angles = position_ids.astype(jnp.float32)[..., None] * inv_freq
        angles = jnp.concatenate([angles, angles], axis=-1)
        dtype = jnp.dtype(cfg.dtype)
        cos, sin = jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)
        mask = attention_inputs(
            padding_mask,
            causal=causal,
            sliding_window=cfg.sliding_window,
            segment_ids=segment_ids,
            implementation=cfg.attention_impl,
        )
        x = self.embed_tokens(input_ids)
        if cfg.scan_layers or self.is_initializing():
            x, _ = self.layers(x, mask, cos, sin, row_ids)
        else:
            x = loop_layers(self, DecoderLayer, x, mask, cos, sin, row_ids)
        return self.norm(x)

    def init_all(self, ids: jax.Array) -> jax.Array:
        """Init entry point touching every submodule, the LM head included."""
        hidden = self(ids)
        if self.config.tie_word_embeddings or self.config.with_lm_head:
            return self.logits(hidden)
        return hidden

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Vocabulary logits in f32 from hidden states (tied embedding or untied head)."""
        if self.config.tie_word_embeddings:
            return self.embed_tokens.attend(hidden).astype(jnp.float32)
        if not self.config.with_lm_head:
            raise ValueError("this LlamaModel was built without an LM head (with_lm_head=False)")
        return self.lm_head(hidden).astype(jnp.float32)
