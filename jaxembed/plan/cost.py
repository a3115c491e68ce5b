"""Per-step cost from the compiler's cost model, with its loops counted as many times as they run.

XLA's cost analysis of a compiled program counts the body of every `while` loop once. The
train step has two kinds: the scan over the decoder layers, and (with GradCache) the scans
over the query and passage chunks, with the layer scan inside. So the count of the real
program is "everything outside the layers, plus one layer of one chunk per side", and a
second compile of the same step with zero layers gives "everything outside the layers".
Their difference is one layer of one chunk, which runs `num_layers x chunks` times per step.

Query and passage chunks may differ in count and length; their share of a layer's cost is
taken from the model FLOPs of one chunk of each side (an estimate, the only one here; the
compiler gives both sides' layer cost as one number). Work outside the layers done per chunk
(embedding lookup, pooling) is counted once: it is tiny next to a layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ml_collections

from jaxembed.models.architectures import ModelConfig, for_config

KEYS = ("flops", "bytes accessed", "optimal_seconds")


@dataclass(frozen=True)
class StepCost:
    flops: float  # per device, as executed (recomputation included)
    bytes_accessed: float  # per device
    seconds: float  # the compiler's cost-model time for one step


def layer_repeats(config: ml_collections.ConfigDict, model: ModelConfig) -> float:
    """How many times the one-layer-of-one-chunk cost runs per step (layers x chunks)."""
    d, gc = config.data, config.gradcache
    queries, passages = d.global_batch_size, d.global_batch_size * (1 + d.num_negatives)
    if not gc.enabled:
        return float(model.num_layers)
    q_chunk, p_chunk = gc.chunk_size, gc.passage_chunk_size or gc.chunk_size
    lora, arch = model.lora is not None, for_config(model)
    w_q = q_chunk * d.query_max_length * arch.layer_flops_per_token(model, d.query_max_length, lora)
    w_p = (
        p_chunk
        * d.passage_max_length
        * arch.layer_flops_per_token(model, d.passage_max_length, lora)
    )
    chunks = (queries // q_chunk * w_q + passages // p_chunk * w_p) / (w_q + w_p)
    return model.num_layers * chunks


def _numbers(analysis: Any) -> dict[str, float]:
    # Older jax returns a one-element list of dicts.
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return {k: float(analysis.get(k, 0.0)) for k in KEYS}


def step_cost(real: Any, no_layers: Any, repeats: float) -> StepCost:
    """Combine `cost_analysis()` of the real step and of the zero-layer step."""
    full, base = _numbers(real), _numbers(no_layers)
    total = {k: base[k] + repeats * max(full[k] - base[k], 0.0) for k in KEYS}
    return StepCost(total["flops"], total["bytes accessed"], total["optimal_seconds"])


def model_flops_per_step(config: ml_collections.ConfigDict, model: ModelConfig) -> float:
    """Model FLOPs of one step (6N per token plus attention, PaLM's count; no recomputation;
    with LoRA 4N, as frozen weights get no weight gradient)."""
    from jaxembed import tasks

    return tasks.get(config.model.task).flops_per_step(config, model)
