"""The bi-encoder task: queries and passages through one shared backbone, pooled and
L2-normalized, in the configured contrastive loss over the whole global batch (with
GradCache, the same gradients from chunked embedding passes in bounded memory)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxembed import hf
from jaxembed.gradcache import gradcache_value_and_grad
from jaxembed.losses import contrastive_loss
from jaxembed.models.architectures import for_config
from jaxembed.models.encoder import make_embed_fn
from jaxembed.tasks.base import Batch, GradientFn, dropout_rng
from jaxembed.tasks.inputs import is_packed, packed_shapes, side_inputs, unpack_slots
from jaxembed.train.state import ParamLayout, TrainState, trained, with_trainable


class EmbeddingTask:
    name = "embedding"
    layout = ParamLayout()  # the params are the backbone; no head

    def validate(self, config: ml_collections.ConfigDict) -> None:
        return None  # the shared checks (train/validate.py) cover the bi-encoder

    def param_shapes(self, model: Any) -> Any:
        return for_config(model).param_shapes(model)

    def init_params(self, model: Any, rng: jax.Array) -> Any:
        return for_config(model).init_params(model, rng)

    def load_params(self, directory: str | Path, model: Any, rng: jax.Array, shardings: Any) -> Any:
        return hf.load_params(directory, model, shardings=shardings)

    def gradients(self, model: Any, settings: Any) -> GradientFn:
        embed = make_embed_fn(model, settings.pooling, max_segments=settings.pack_max_segments)

        def gradients(state: TrainState, batch: Batch) -> Any:
            queries = side_inputs(batch, "query", settings.exclude_instruction)
            passages = side_inputs(batch, "passage", settings.exclude_instruction)
            packed = is_packed(batch)
            batch_size = (batch["query_slots"] if packed else batch["query_input_ids"]).shape[0]
            doc_ids = batch.get("doc_ids") if settings.mask_duplicates else None
            rng = dropout_rng(model, state)
            if rng is not None:
                # Global row numbers key the dropout masks: GradCache chunks see the same ones.
                num_passages = passages["input_ids"].shape[0]
                num_queries = queries["input_ids"].shape[0]
                queries["row_ids"] = jnp.arange(num_queries, dtype=jnp.int32)
                passages["row_ids"] = num_queries + jnp.arange(num_passages, dtype=jnp.int32)

            def loss_fn(q: jax.Array, p: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
                if packed:
                    q = unpack_slots(q, batch["query_slots"])
                    p = unpack_slots(p, batch["passage_slots"])
                return contrastive_loss(
                    q,
                    p.reshape(batch_size, -1, p.shape[-1]),
                    variant=settings.loss_variant,
                    temperature=settings.temperature,
                    doc_ids=doc_ids,
                    false_negative_margin=settings.false_negative_margin,
                )

            def embed_trainable(values: Any, inputs: Batch) -> jax.Array:
                current = with_trainable(state, values)
                return embed(current.params, inputs, current.adapters, rng)

            values = trained(state)
            if settings.gradcache_chunk:
                (loss, metrics), grads = gradcache_value_and_grad(
                    embed_trainable,
                    loss_fn,
                    values,
                    queries,
                    passages,
                    chunk_size=settings.gradcache_chunk,
                    passage_chunk_size=settings.gradcache_passage_chunk or None,
                )
            else:

                def direct(values: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
                    q = embed_trainable(values, queries)
                    return loss_fn(q, embed_trainable(values, passages))

                (loss, metrics), grads = jax.value_and_grad(direct, has_aux=True)(values)
            tokens = jnp.sum(queries["attention_mask"]) + jnp.sum(passages["attention_mask"])
            return (loss, dict(metrics, tokens=tokens)), grads

        return gradients

    def batch_shapes(self, config: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
        d = config.data
        b, g, lq, lp = (
            d.global_batch_size,
            1 + d.num_negatives,
            d.query_max_length,
            d.passage_max_length,
        )
        if d.packing == "rows":  # the worst case: every text a row of its own
            return (
                packed_shapes("query", b, lq, (b,))
                | packed_shapes("passage", b * g, lp, (b, g))
                | {"doc_ids": (b, g)}
            )
        return {
            "query_input_ids": (b, lq),
            "query_attention_mask": (b, lq),
            "query_pool_mask": (b, lq),
            "passage_input_ids": (b, g, lp),
            "passage_attention_mask": (b, g, lp),
            "passage_pool_mask": (b, g, lp),
            "doc_ids": (b, g),
        }

    def flops_per_step(self, config: ml_collections.ConfigDict, model: Any) -> float:
        d = config.data
        per_token = for_config(model).flops_per_token
        b, g = d.global_batch_size, 1 + d.num_negatives
        passages = b * g * d.passage_max_length * per_token(model, d.passage_max_length)
        return b * d.query_max_length * per_token(model, d.query_max_length) + passages

    def pipeline_options(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
        return {}

    def export(self, workdir: str | Path, output: str | Path, **options: Any) -> Path:
        from jaxembed.hf_export import export

        return export(workdir, output, **options)


EMBEDDING = EmbeddingTask()
