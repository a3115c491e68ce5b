"""The cross-encoder task (NV-RerankQA): each joined (query, passage) pair of
`pair_input_ids` [B, 1+N, L] gets one score from the backbone and a linear head, and the
ranking loss (listwise InfoNCE over [positive, N negatives] or pointwise BCE) is taken per
query. The head is trained even under LoRA (it starts untrained)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxembed.data.pairs import check_pair_template
from jaxembed.errors import UserInputError
from jaxembed.losses import RANKING_LOSSES, ranking_loss
from jaxembed.models.architectures import for_config
from jaxembed.models.reranker import (
    init_reranker_params,
    load_reranker_params,
    make_score_fn,
    reranker_param_shapes,
)
from jaxembed.tasks.base import Batch, GradientFn, dropout_rng
from jaxembed.tasks.inputs import is_packed, packed_shapes, side_inputs, unpack_slots
from jaxembed.train.state import ParamLayout, TrainState, trained, with_trainable


class RerankerTask:
    name = "reranker"
    layout = ParamLayout(backbone="backbone", head=("score",))

    def validate(self, config: ml_collections.ConfigDict) -> None:
        from jaxembed.models.build import pooling_mode

        m, loss = config.model, config.loss
        if loss.ranking not in RANKING_LOSSES:
            raise UserInputError(f"loss.ranking={loss.ranking!r}: expected one of {RANKING_LOSSES}")
        if not loss.ranking_temperature > 0:
            raise UserInputError(
                f"loss.ranking_temperature={loss.ranking_temperature}: must be > 0"
            )
        try:
            check_pair_template(config.data.pair_template)
        except UserInputError as e:
            raise UserInputError(f"data.pair_template: {e}") from e
        if config.data.num_negatives < 1:
            raise UserInputError("a reranker needs data.num_negatives >= 1 to rank against")
        if pooling_mode(config) != "mean" or m.exclude_instruction:
            raise UserInputError("a reranker mean-pools every token: model.pooling must be 'mean'")
        if config.gradcache.enabled:
            raise UserInputError("gradcache is for bi-encoders; a reranker's pairs are independent")
        if config.train.eval_every:
            raise UserInputError(
                "train.eval_every evaluates retrieval; for a reranker set it to 0 and use "
                "`jaxembed rerank` on the exported model"
            )

    def param_shapes(self, model: Any) -> Any:
        return reranker_param_shapes(model)

    def init_params(self, model: Any, rng: jax.Array) -> Any:
        return init_reranker_params(model, rng)

    def load_params(self, directory: str | Path, model: Any, rng: jax.Array, shardings: Any) -> Any:
        return load_reranker_params(directory, model, rng=rng, shardings=shardings)

    def gradients(self, model: Any, settings: Any) -> GradientFn:
        score = make_score_fn(model, settings.pooling, settings.pack_max_segments)

        def gradients(state: TrainState, batch: Batch) -> Any:
            packed = is_packed(batch)
            batch_size, group = (batch["pair_slots"] if packed else batch["pair_input_ids"]).shape[
                :2
            ]
            pairs = side_inputs(batch, "pair", use_pool_mask=False)
            rng = dropout_rng(model, state)
            if rng is not None:
                pairs["row_ids"] = jnp.arange(pairs["input_ids"].shape[0], dtype=jnp.int32)

            def loss_fn(values: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
                current = with_trainable(state, values)
                scores = score(current.params, pairs, current.adapters, rng)
                if packed:
                    scores = unpack_slots(scores, batch["pair_slots"])
                return ranking_loss(
                    scores.reshape(batch_size, group),
                    kind=settings.ranking,
                    temperature=settings.ranking_temperature,
                )

            values = trained(state)
            (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(values)
            return (loss, dict(metrics, tokens=jnp.sum(pairs["attention_mask"]))), grads

        return gradients

    def batch_shapes(self, config: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
        d = config.data
        b, g, length = d.global_batch_size, 1 + d.num_negatives, d.passage_max_length
        if d.packing == "rows":  # the worst case: every pair a row of its own
            return packed_shapes("pair", b * g, length, (b, g))
        shape = (b, g, length)
        return {"pair_input_ids": shape, "pair_attention_mask": shape}

    def flops_per_step(self, config: ml_collections.ConfigDict, model: Any) -> float:
        """One joined pair per passage, no query tower."""
        d = config.data
        pairs = d.global_batch_size * (1 + d.num_negatives)
        per_token = for_config(model).flops_per_token(model, d.passage_max_length)
        return pairs * d.passage_max_length * per_token

    def pipeline_options(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
        return {"pair_template": config.data.pair_template}

    def export(self, workdir: str | Path, output: str | Path, **options: Any) -> Path:
        from jaxembed.reranker_export import export_reranker_run

        options.pop("max_shard_size", None)
        return export_reranker_run(workdir, output, **options)


RERANKER = RerankerTask()
