"""Cross-encoder reranker (NV-RerankQA-Mistral-4B-v3): a query and a passage joined by a
template into one sequence, the bidirectional Llama-family backbone, mean pooling, and a
linear head to one relevance score.

Params are `{"backbone": <backbone params>, "score": {"kernel": [hidden, 1], "bias": [1]}}`.
Layer pruning happens at import: a config with `num_layers=N` reads only layers 0..N-1 of a
deeper checkpoint (`hf.load_params` reads `range(config.num_layers)`), so Mistral-7B's 32
layers pruned to the bottom 16 give the 4B model without ever loading the top half.

An exported reranker (`jaxembed export` of a reranker run) stores the backbone under
"model." and the head as "score.weight" [1, hidden] / "score.bias" [1], the layout of the
shipped `Bidirectional*ForSequenceClassification` class; a plain backbone checkpoint has no
head and gets a freshly initialized one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxembed import hf
from jaxembed.data.pairs import DEFAULT_PAIR_TEMPLATE, check_pair_template, tokenize_pairs
from jaxembed.errors import UserInputError
from jaxembed.models import architectures
from jaxembed.models.architectures import ModelConfig
from jaxembed.models.build import pruned_config
from jaxembed.models.encoder import make_embed_fn, run_batched
from jaxembed.models.splash import on_mesh
from jaxembed.safetensors_io import SafetensorsCheckpoint
from jaxembed.sharding import batch_sharding, data_parallel_size, param_shardings, replicated

HEAD_WEIGHT = "score.weight"
HEAD_BIAS = "score.bias"
HEAD_INIT_STD = 0.02  # transformers' initializer_range for a new Linear


def reranker_param_shapes(config: ModelConfig) -> dict[str, Any]:
    """Boxed backbone shapes (for FSDP/tensor shardings) plus the replicated head."""
    dtype = jnp.dtype(config.param_dtype)
    return {
        "backbone": architectures.for_config(config).param_shapes(config),
        "score": {
            "kernel": jax.ShapeDtypeStruct((config.hidden_size, 1), dtype),
            "bias": jax.ShapeDtypeStruct((1,), dtype),
        },
    }


def init_head(config: ModelConfig, rng: jax.Array) -> dict[str, jax.Array]:
    dtype = jnp.dtype(config.param_dtype)
    kernel = HEAD_INIT_STD * jax.random.normal(rng, (config.hidden_size, 1), jnp.float32)
    return {"kernel": kernel.astype(dtype), "bias": jnp.zeros((1,), dtype)}


def init_reranker_params(config: ModelConfig, rng: jax.Array) -> dict[str, Any]:
    """A random backbone (Llama family) and head."""
    from jaxembed.models.architectures import init_params

    backbone_rng, head_rng = jax.random.split(rng)
    return {"backbone": init_params(config, backbone_rng), "score": init_head(config, head_rng)}


def read_head(directory: str | Path, config: ModelConfig) -> dict[str, np.ndarray] | None:
    """The exported score head of an HF directory as our params, or None if it has none."""
    checkpoint = SafetensorsCheckpoint(Path(directory))
    if HEAD_WEIGHT not in checkpoint:
        return None
    want = {HEAD_WEIGHT: (1, config.hidden_size), HEAD_BIAS: (1,)}
    for name, shape in want.items():
        if name not in checkpoint or checkpoint.shape(name) != shape:
            got = checkpoint.shape(name) if name in checkpoint else "missing"
            raise UserInputError(f"{directory}: {name} is {got}, expected shape {shape}")
    dtype = np.dtype(jnp.dtype(config.param_dtype))
    return {
        "kernel": np.asarray(checkpoint.get(HEAD_WEIGHT)).T.astype(dtype),
        "bias": np.asarray(checkpoint.get(HEAD_BIAS)).astype(dtype),
    }


def load_reranker_params(
    directory: str | Path,
    config: ModelConfig,
    *,
    rng: jax.Array | None = None,
    mesh: Mesh | None = None,
    shardings: Any = None,
) -> dict[str, Any]:
    """Backbone layers 0..config.num_layers-1 of an HF checkpoint, and its head (or a new
    one drawn from `rng` when the checkpoint is a plain backbone)."""
    backbone_shardings = shardings["backbone"] if shardings is not None else None
    backbone = hf.load_params(directory, config, mesh=mesh, shardings=backbone_shardings)
    head: Any = read_head(directory, config)
    if head is None:
        head = init_head(config, rng if rng is not None else jax.random.PRNGKey(0))
    if shardings is not None:
        head = jax.device_put(head, shardings["score"])
    return {"backbone": backbone, "score": head}


def make_score_fn(
    config: ModelConfig, pooling: str = "mean", max_segments: int = 0
) -> Callable[..., jax.Array]:
    """`(params, {"input_ids", "attention_mask"}, adapters=None, dropout_rng=None) -> [rows]`
    f32 scores: the bidirectional backbone (with the backbone's LoRA adapters, if any),
    pooled without normalization, then the linear head (in f32, as the logits of every loss
    are). Packed rows (see `make_embed_fn`) give [rows, max_segments]."""
    embed = make_embed_fn(config, pooling, normalize=False, max_segments=max_segments)

    def score(
        params: Any,
        inputs: dict[str, jax.Array],
        adapters: Any = None,
        dropout_rng: jax.Array | None = None,
    ) -> jax.Array:
        pooled = embed(params["backbone"], inputs, adapters, dropout_rng).astype(jnp.float32)
        head = params["score"]
        kernel = head["kernel"].astype(jnp.float32)
        return (pooled @ kernel)[..., 0] + head["bias"].astype(jnp.float32)[0]

    return score


class Reranker:
    """Scores (query, passage) pairs with a cross-encoder."""

    def __init__(
        self,
        config: ModelConfig,
        params: Any,
        tokenizer: Any,
        *,
        template: str = DEFAULT_PAIR_TEMPLATE,
        pooling: str = "mean",
        mesh: Mesh | None = None,
        max_length: int | None = None,
    ) -> None:
        self.config = config
        self.max_length = max_length  # the pair length it was trained with, if known
        self.tokenizer = tokenizer
        self.template = check_pair_template(template)
        self.mesh = mesh
        score = make_score_fn(config, pooling)

        def apply(params: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
            with on_mesh(mesh):
                return score(params, {"input_ids": ids, "attention_mask": mask})

        if mesh is None:
            self.params = params
            self._score = jax.jit(apply)
        else:
            shardings = param_shardings(reranker_param_shapes(config), mesh)
            self.params = jax.device_put(params, shardings)
            rows = batch_sharding(mesh)
            self._score = jax.jit(
                apply, in_shardings=(shardings, rows, rows), out_shardings=replicated(mesh)
            )

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        num_layers: int | None = None,
        mesh: Mesh | None = None,
        dtype: str | None = None,
        template: str | None = None,
    ) -> Reranker:
        """An exported reranker, or any Llama-family backbone (pruned to its bottom
        `num_layers`, with a new head) to start training from."""
        directory = Path(directory)
        raw = hf.read_hf_config(directory)
        overrides = {"dtype": dtype, "param_dtype": dtype} if dtype else {}
        config = architectures.config_from_hf(raw, str(directory / "config.json"), **overrides)
        config = pruned_config(config, num_layers)
        own = raw.get("jaxembed", {}).get("reranker", {})
        params = load_reranker_params(directory, config)
        return cls(
            config,
            params,
            hf.load_tokenizer(directory),
            template=template or own.get("template", DEFAULT_PAIR_TEMPLATE),
            pooling=own.get("pooling", "mean"),
            mesh=mesh,
            max_length=own.get("max_length"),
        )

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return 0 if pad is None else int(pad)

    def score(
        self,
        queries: Sequence[str],
        passages: Sequence[str],
        *,
        batch_size: int = 32,
        max_length: int = 512,
        query_max_length: int | None = None,
        show_progress: bool = True,
    ) -> np.ndarray:
        """One score per (queries[i], passages[i]) pair, float32, in input order."""
        if max_length < 1 or batch_size < 1:
            raise UserInputError(
                f"batch_size={batch_size} and max_length={max_length} must be >= 1"
            )
        if self.mesh is not None:
            dp = data_parallel_size(self.mesh)
            batch_size = -(-batch_size // dp) * dp
        ids = tokenize_pairs(
            self.tokenizer,
            queries,
            passages,
            template=self.template,
            max_length=max_length,
            query_max_length=query_max_length,
        )
        return run_batched(
            lambda ids, mask, _pool: self._score(self.params, ids, mask),
            ids,
            [0] * len(ids),
            batch_size=batch_size,
            max_length=max_length,
            pad_id=self._pad_id(),
            desc="rerank",
            show_progress=show_progress,
        )
