"""Bi-encoder inference: tokenizer + bidirectional backbone + pooling + L2 norm.

`Encoder.encode` sorts texts by length and pads each batch to one of at most MAX_BUCKETS
lengths fitted to the batches' own lengths (and always to the same batch size), so a corpus
of any size compiles at most MAX_BUCKETS times with little padding. On a mesh, params keep
their FSDP/tensor shardings and the batch is split over ('data', 'fsdp').
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxembed import hf
from jaxembed.data.batching import pad, tokenize
from jaxembed.errors import UserInputError
from jaxembed.models import architectures
from jaxembed.models.architectures import ModelConfig
from jaxembed.models.lora import COLLECTION as LORA_COLLECTION
from jaxembed.models.pooling import POOLING_MODES, l2_normalize, pool, pool_segments
from jaxembed.models.splash import on_mesh
from jaxembed.progress import progress_bar
from jaxembed.prompts import format_query
from jaxembed.sharding import batch_sharding, data_parallel_size, param_shardings, replicated

DEFAULT_MAX_LENGTH = 512
# Compiled shapes per encode call at most; the lengths are fitted to the data (fit_buckets).
MAX_BUCKETS = 16
MAX_CANDIDATES = 1024


def fit_buckets(batch_maxima: Sequence[int], max_buckets: int, align: int = 1) -> list[int]:
    """At most `max_buckets` lengths minimizing the padded length summed over batches whose
    longest rows are `batch_maxima` (each batch padded to the smallest length that holds
    it): the exact batch lengths (rounded up to multiples of `align`) when there are few,
    else an optimal choice among them (1-D quantization by dynamic programming)."""
    if max_buckets < 1:
        raise ValueError(f"max_buckets must be >= 1, got {max_buckets}")
    longest = max(batch_maxima)
    align = max(align, -(-longest // MAX_CANDIDATES))  # bounds the DP's n x n tables
    rounded = np.minimum(-(-np.asarray(batch_maxima) // align) * align, longest)
    values, counts = np.unique(rounded, return_counts=True)
    n = len(values)
    if n <= max_buckets:
        return [int(v) for v in values]
    below = np.concatenate([[0], np.cumsum(counts)])  # below[j]: batches under values[j]
    cols = np.arange(n)
    # cost[j]: least padded length for values[:j + 1] with values[j] the top bucket.
    cost = values * below[1:]
    earlier = cols[:, None] < cols[None, :]
    backs = []
    for _ in range(max_buckets - 1):
        # Top bucket j over a previous top bucket i: values (i, j] pad to values[j].
        step = cost[:, None] + values[None, :] * (below[None, 1:] - below[1:, None])
        step = np.where(earlier, step, np.inf)
        previous = np.argmin(step, axis=0)
        extended = step[previous, cols]
        better = extended < cost
        backs.append(np.where(better, previous, -1))
        cost = np.where(better, extended, cost)
    chosen, j = [n - 1], n - 1
    for back in reversed(backs):
        if back[j] >= 0:
            j = int(back[j])
            chosen.append(j)
    return sorted(int(values[i]) for i in chosen)


def run_batched(
    fn: Callable[[np.ndarray, np.ndarray, np.ndarray], Any],
    ids: Sequence[Sequence[int]],
    pool_starts: Sequence[int],
    *,
    batch_size: int,
    max_length: int,
    pad_id: int,
    out_shape: tuple[int, ...] = (),
    desc: str = "batch",
    show_progress: bool = True,
) -> np.ndarray:
    """`fn(ids, attention_mask, pool_mask)` over length-sorted, bucket-padded batches of
    `ids`; rows of the result [len(ids), *out_shape] (float32) in input order. Shared by
    the encoder and the reranker."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out = np.zeros((len(ids), *out_shape), np.float32)
    if not ids:
        return out
    # Accelerators tile sequences in multiples of 8; a CPU gains from every padded token cut.
    align = 1 if jax.default_backend() == "cpu" else 8
    maxima = [len(ids[order[start]]) for start in range(0, len(order), batch_size)]
    buckets = fit_buckets(maxima, MAX_BUCKETS, align)
    for start in progress_bar(
        range(0, len(order), batch_size), desc=desc, unit="batch", disable=not show_progress
    ):
        rows = order[start : start + batch_size]
        # Filler rows (one pad token each, so no attention row is empty) keep every batch
        # the same shape: one compile per bucket (at most MAX_BUCKETS).
        fill = batch_size - len(rows)
        length = next(b for b in buckets if b >= len(ids[rows[0]]))
        batch = pad(
            [ids[i] for i in rows] + [[pad_id]] * fill,
            [pool_starts[i] for i in rows] + [0] * fill,
            length,
            pad_id,
        )
        out[rows] = np.asarray(fn(*batch))[: len(rows)]
    return out


@dataclass(frozen=True)
class PoolingSettings:
    mode: str = "mean"
    normalize: bool = True
    exclude_instruction: bool = False  # NV-Retriever: attend to the instruction, don't pool it

    def __post_init__(self) -> None:
        if self.mode not in POOLING_MODES:
            raise UserInputError(f"pooling mode {self.mode!r} is not one of {POOLING_MODES}")


def read_max_length(directory: str | Path) -> int:
    """sentence-transformers' `max_seq_length` when the directory has one (what ST and MTEB
    truncate to), else DEFAULT_MAX_LENGTH."""
    path = Path(directory) / "sentence_bert_config.json"
    if not path.is_file():
        return DEFAULT_MAX_LENGTH
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("max_seq_length")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise UserInputError(f"{path}: invalid JSON object ({e})") from e
    if value is None:
        return DEFAULT_MAX_LENGTH
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserInputError(f"{path}: max_seq_length {value!r} is not a positive integer")
    return value


def read_pooling_settings(directory: str | Path) -> PoolingSettings:
    """From config.json's "jaxembed" section, else sentence-transformers' modules, else mean."""
    directory = Path(directory)
    own = hf.read_hf_config(directory).get("jaxembed", {}).get("pooling")
    if own:
        return PoolingSettings(**own)
    modules_path = directory / "modules.json"
    if not modules_path.is_file():
        return PoolingSettings()
    modules = json.loads(modules_path.read_text())
    settings: dict[str, Any] = {"normalize": False}
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith("Normalize"):
            settings["normalize"] = True
        elif kind.endswith("Pooling"):
            cfg = json.loads((directory / module["path"] / "config.json").read_text())
            if cfg.get("pooling_mode_lasttoken"):
                settings["mode"] = "last"
            elif cfg.get("pooling_mode_cls_token"):
                settings["mode"] = "first"
            elif cfg.get("pooling_mode_mean_tokens", True):
                settings["mode"] = "mean"
            else:
                raise UserInputError(f"{directory / module['path']}: unsupported pooling {cfg}")
    return PoolingSettings(**settings)


def make_embed_fn(
    config: ModelConfig, pooling: str, normalize: bool = True, max_segments: int = 0
) -> Callable[..., jax.Array]:
    """`(params, {"input_ids", "attention_mask"[, "pool_mask", "row_ids"]}, adapters=None,
    dropout_rng=None) -> [rows, hidden]` f32: the bidirectional backbone (Llama family or
    BERT, by config type), pooled (and L2-normalized); shared by inference and training.
    `adapters` are LoRA adapters for `config.lora`; `dropout_rng` turns dropout on (the
    model's own and LoRA's), with masks keyed by the inputs' `row_ids`.

    Packed rows (inputs with "segment_ids" and "positions", see `jaxembed.data.packing`)
    give [rows, max_segments, hidden]: one vector per segment slot."""
    model = architectures.for_config(config).module(config)

    def embed(
        params: Any,
        inputs: dict[str, jax.Array],
        adapters: Any = None,
        dropout_rng: jax.Array | None = None,
    ) -> jax.Array:
        mask = inputs["attention_mask"]
        variables = {"params": params}
        extra: dict[str, Any] = {}
        if adapters is not None:
            variables[LORA_COLLECTION] = adapters
        if dropout_rng is not None:
            extra = {"rngs": {"dropout": dropout_rng}, "row_ids": inputs.get("row_ids")}
        segments = inputs.get("segment_ids")
        if segments is None:
            hidden = model.apply(variables, inputs["input_ids"], mask, causal=False, **extra)
            pooled = pool(hidden, mask, pooling, inputs.get("pool_mask"))
        else:
            if max_segments < 1:
                raise ValueError("packed inputs need max_segments >= 1")
            hidden = model.apply(
                variables,
                inputs["input_ids"],
                mask,
                inputs["positions"],
                causal=False,
                segment_ids=segments,
                **extra,
            )
            pooled = pool_segments(hidden, segments, pooling, max_segments, inputs.get("pool_mask"))
        return l2_normalize(pooled) if normalize else pooled

    return embed


class Encoder:
    """Embeds texts with a Llama-family or BERT backbone in bidirectional mode."""

    def __init__(
        self,
        config: ModelConfig,
        params: Any,
        tokenizer: Any,
        pooling: PoolingSettings = PoolingSettings(),
        mesh: Mesh | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.mesh = mesh
        self.max_length = max_length  # encode's default truncation length
        self._param_shardings = None
        if mesh is not None:
            shapes = architectures.for_config(config).param_shapes(config)
            self._param_shardings = param_shardings(shapes, mesh)
            params = jax.device_put(params, self._param_shardings)
        self.params = params
        self._embed = self._compile_embed()

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        mesh: Mesh | None = None,
        dtype: str | None = None,
        pooling: PoolingSettings | None = None,
    ) -> Encoder:
        """Load a local HF directory (llama/mistral/qwen2/bert), placing weights shard by
        shard."""
        directory = Path(directory)
        overrides = {"dtype": dtype, "param_dtype": dtype} if dtype else {}
        config = architectures.config_from_hf(
            hf.read_hf_config(directory), str(directory / "config.json"), **overrides
        )
        tokenizer = hf.load_tokenizer(directory)
        params = hf.load_params(directory, config, mesh=mesh)
        pooling = pooling or read_pooling_settings(directory)
        return cls(config, params, tokenizer, pooling, mesh, read_max_length(directory))

    def _compile_embed(self):
        embed_inputs = make_embed_fn(self.config, self.pooling.mode, self.pooling.normalize)

        def embed(params: Any, ids: jax.Array, mask: jax.Array, pool_mask: jax.Array) -> jax.Array:
            with on_mesh(self.mesh):
                return embed_inputs(
                    params, {"input_ids": ids, "attention_mask": mask, "pool_mask": pool_mask}
                )

        if self.mesh is None:
            return jax.jit(embed)
        rows = batch_sharding(self.mesh)
        return jax.jit(
            embed,
            in_shardings=(self._param_shardings, rows, rows, rows),
            out_shardings=replicated(self.mesh),
        )

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return 0 if pad is None else int(pad)

    def tokenize(
        self, texts: Sequence[str], instruction: str | None, max_length: int
    ) -> tuple[list[list[int]], list[int]]:
        """Token ids per text, and per text the first token to pool (after the instruction
        prefix when the pooling excludes it; the same rule as the training pipeline)."""
        formatted = [format_query(t, instruction) for t in texts]
        exclude = self.pooling.exclude_instruction and bool(instruction)
        prefix_chars = [chars for _, chars in formatted] if exclude else None
        return tokenize(self.tokenizer, [text for text, _ in formatted], max_length, prefix_chars)

    def encode(
        self,
        texts: Sequence[str],
        instruction: str | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
        show_progress: bool = True,
    ) -> np.ndarray:
        """Embeddings [len(texts), hidden] (float32) in input order; texts are truncated to
        `max_length` tokens (default: the model's, see `read_max_length`)."""
        max_length = self.max_length if max_length is None else max_length
        if max_length < 1 or batch_size < 1:
            raise UserInputError(
                f"batch_size={batch_size} and max_length={max_length} must be >= 1"
            )
        limit = architectures.for_config(self.config).max_length(self.config)
        if limit is not None and max_length > limit:
            # A learned position table (BERT): past it there is no position to embed.
            raise UserInputError(
                f"max_length={max_length} exceeds the model's max_position_embeddings ({limit})"
            )
        if self.mesh is not None:
            # Every device must get whole rows: round the batch up to the data-parallel size.
            dp = data_parallel_size(self.mesh)
            batch_size = -(-batch_size // dp) * dp
        ids, pool_starts = self.tokenize(texts, instruction, max_length)
        empty = [i for i, x in enumerate(ids) if not x]
        if empty:
            # A zero vector would be silently wrong; say which input it is (0-based).
            raise UserInputError(f"text {empty[0]} (of {len(empty)}) tokenizes to no tokens")
        return run_batched(
            lambda *batch: self._embed(self.params, *batch),
            ids,
            pool_starts,
            batch_size=batch_size,
            max_length=max_length,
            pad_id=self._pad_id(),
            out_shape=(self.config.hidden_size,),
            desc="encode",
            show_progress=show_progress,
        )

    def encode_per_instruction(
        self, texts: Sequence[str], instructions: Sequence[str | None], **kwargs: Any
    ) -> np.ndarray:
        """`encode` of each text with its own instruction (one call per distinct one: a
        call formats all its texts alike), rows in input order."""
        out = None
        for instruction in dict.fromkeys(instructions):
            rows = [i for i, x in enumerate(instructions) if x == instruction]
            emb = self.encode([texts[i] for i in rows], instruction=instruction or None, **kwargs)
            if out is None:
                out = np.zeros((len(texts), emb.shape[1]), np.float32)
            out[rows] = emb
        return out
