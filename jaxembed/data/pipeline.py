"""The training input pipeline: deterministic, resumable, multi-host batches of
(query, 1 positive + N negatives), tokenized and padded to bucket lengths.

Per global step: every process computes the same global plan (`GlobalSampler`), loads and
tokenizes only the rows its devices hold, agrees with the others on the padded lengths, and
the pieces become global `jax.Array`s sharded over ('data', 'fsdp').

A batch is a dict of int32 arrays (B = global batch, G = 1 + num_negatives):
  query_input_ids, query_attention_mask, query_pool_mask        [B, Lq]
  passage_input_ids, passage_attention_mask, passage_pool_mask  [B, G, Lp]  (passage 0: positive)
  doc_ids        [B, G]  stable 31-bit hash of each passage id (equal ids = same document)
  dataset_index  [B]     index into the `datasets` list
Lq and Lp are bucket lengths; pool masks are the attention masks minus instruction tokens
(a dataset's documents carry an instruction too when its `document_instruction` says so).

Pair mode (a cross-encoder reranker; `pair_template` set): each query is joined with each of
its passages by the template (`jaxembed.data.pairs`), the query cut to `query_max_length`
tokens and the pair to `passage_max_length`, and the query/passage arrays are replaced by
  pair_input_ids, pair_attention_mask  [B, G, Lp]  (pair 0: query + positive)
The query instruction is not used (the reranker has none).

Packed mode (`packing="rows"`, see `jaxembed.data.packing`): each side's texts are packed
into rows of the bucket length that holds its longest text, Rq and Rp of them, with
  {side}_input_ids, _attention_mask, _pool_mask, _segment_ids, _positions  [Rq or Rp, L]
  query_slots [B], passage_slots [B, G] (pair_slots [B, G])  each text's packed slot
doc_ids and dataset_index are as above; the loss sees the same [B, ...] embeddings.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from jax.sharding import Sharding
from transformers import PreTrainedTokenizerFast

from jaxembed.data.batching import check_buckets, pad, pick_bucket, tokenize
from jaxembed.data.examples import FewerRule, MoreRule, make_example
from jaxembed.data.multihost import LengthAgreement, assemble, batch_shards, process_rows
from jaxembed.data.packing import PACKING_MODES, first_fit_rows, pack, row_bucket
from jaxembed.data.pairs import check_pair_template, tokenize_pairs
from jaxembed.data.prefetch import Prefetcher
from jaxembed.data.records import Passage, TrainingRecord, doc_hash, text_id
from jaxembed.data.sampler import BatchPlan, GlobalSampler, IteratorState
from jaxembed.prompts import DEFAULT_QUERY_TEMPLATE

_SCAN_CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Pipeline options; field names match the `data` section of the training configs."""

    global_batch_size: int
    num_negatives: int = 1
    query_max_length: int = 192
    passage_max_length: int = 512
    # Padded lengths; empty means a quarter, a half and the full max length.
    query_buckets: tuple[int, ...] = ()
    passage_buckets: tuple[int, ...] = ()
    query_template: str = DEFAULT_QUERY_TEMPLATE
    # Records with more negatives than needed: keep the "first" N or "sample" N.
    more_negatives: MoreRule = "first"
    # Records with fewer: "fill" from random corpus documents, or "drop" the record.
    fewer_negatives: FewerRule = "fill"
    # Which positive when a record has several.
    positive: MoreRule = "first"
    # Each global batch from a single dataset (for in-batch loss variants).
    homogeneous: bool = False
    # No two records sharing a text (query or passage) in a batch: sentence-transformers'
    # NO_DUPLICATES batches (see GlobalSampler); costs one scan of the data at start-up.
    no_duplicates: bool = False
    seed: int = 0
    # Batches prepared ahead in a background thread; 0 = produce on demand.
    prefetch: int = 2
    # Non-empty: yield joined (query, passage) pairs for a cross-encoder (see module doc).
    pair_template: str = ""
    # "rows": pack each side's texts into shared rows (module doc); "none": pad each text.
    packing: str = "none"
    # Texts per packed row at most (the model pools this many slots per row).
    pack_max_segments: int = 32
    # Packed row counts are multiples of these (GradCache chunks split rows evenly).
    query_row_multiple: int = 1
    passage_row_multiple: int = 1

    def __post_init__(self) -> None:
        choices = {
            "more_negatives": ("first", "sample"),
            "positive": ("first", "sample"),
            "fewer_negatives": ("fill", "drop"),
            "packing": PACKING_MODES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {getattr(self, name)!r}")
        if self.global_batch_size < 1 or self.num_negatives < 0 or self.prefetch < 0:
            raise ValueError("need global_batch_size >= 1, num_negatives >= 0, prefetch >= 0")
        if min(self.pack_max_segments, self.query_row_multiple, self.passage_row_multiple) < 1:
            raise ValueError("pack_max_segments and the row multiples must be >= 1")
        if self.pair_template:
            check_pair_template(self.pair_template)

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> PipelineConfig:
        """From a plain dict or `ConfigDict.to_dict()`; lists become tuples."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(options) - fields
        if unknown:
            raise ValueError(f"unknown data pipeline options: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One dataset to blend: random-access records, its weight, and an optional corpus that
    short records are filled from (else: positives of other records of the same dataset).
    `document_instruction`: the passages' instruction ("" none; None: each record's query
    instruction, as symmetric tasks have it; see `jaxembed.data.manifest`)."""

    name: str
    records: Sequence[TrainingRecord]
    weight: float = 1.0
    corpus: Sequence[Passage] | None = None
    document_instruction: str | None = ""


def _read(records: Sequence[TrainingRecord], indices: Sequence[int]) -> list[TrainingRecord]:
    get_many = getattr(records, "get_many", None)
    if get_many is not None:
        return get_many(indices)
    return [records[int(i)] for i in indices]


def _scan(records: Sequence[TrainingRecord]) -> Iterator[TrainingRecord]:
    """Every record in order, read a chunk at a time (the start-up scans that every process
    makes alike, so all agree on the plan)."""
    n = len(records)
    for start in range(0, n, _SCAN_CHUNK):
        yield from _read(records, range(start, min(start + _SCAN_CHUNK, n)))


def text_keys(spec: DatasetSpec) -> list[np.ndarray]:
    """Per record, the hashes of every text it may bring into a batch (its query, all its
    positives and negatives: a superset of the picked ones), the same on every process."""
    return [
        np.asarray(
            [doc_hash(text_id(r.query))]
            + [doc_hash(p.id, spec.name) for p in (*r.positives, *r.negatives)],
            dtype=np.int64,
        )
        for r in _scan(spec.records)
    ]


def _eligible(spec: DatasetSpec, config: PipelineConfig) -> np.ndarray:
    if config.fewer_negatives == "fill" or config.num_negatives == 0:
        return np.arange(len(spec.records))
    # Dropping needs every record's negative count up front, on every process, so that all
    # agree on the plan: one scan of the dataset at start-up.
    counts = np.fromiter((len(r.negatives) for r in _scan(spec.records)), dtype=np.int64)
    return np.flatnonzero(counts >= config.num_negatives)


class BatchIterator:
    """Iterator of global batches (dicts of int32 arrays, keys in the module docstring).

    `state` is the position after the last batch returned; a new iterator built with that
    state yields exactly the batches this one would have yielded next. With a `sharding`,
    batches are global `jax.Array`s; without, numpy arrays of this process's rows.
    """

    def __init__(
        self,
        datasets: Sequence[DatasetSpec],
        tokenizer: PreTrainedTokenizerFast,
        config: PipelineConfig,
        *,
        sharding: Sharding | None = None,
        state: IteratorState | None = None,
        name: str | None = None,
    ) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError("the pipeline needs a fast (Rust) HF tokenizer for offsets and speed")
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token")
        self.datasets = list(datasets)
        self.config = config
        self._tokenizer = tokenizer
        self._sharding = sharding
        self._q_buckets = check_buckets(config.query_buckets, config.query_max_length, "query")
        self._p_buckets = check_buckets(
            config.passage_buckets, config.passage_max_length, "passage"
        )
        eligible = [_eligible(d, config) for d in self.datasets]
        # Reported, not silent: how many records the "drop" rule leaves out of each dataset.
        self.dropped = {
            d.name: len(d.records) - len(e) for d, e in zip(self.datasets, eligible, strict=True)
        }
        self._sampler = GlobalSampler(
            eligible,
            [d.weight for d in self.datasets],
            config.global_batch_size,
            seed=config.seed,
            homogeneous=config.homogeneous,
            keys=[text_keys(d) for d in self.datasets] if config.no_duplicates else None,
        )
        self._rows = process_rows(sharding, config.global_batch_size)
        self._shards = batch_shards(sharding, config.global_batch_size)
        self._agree = LengthAgreement(name)
        self._agree_rows = LengthAgreement(f"{name}-rows" if name else None)
        self._produced = state or IteratorState.start(len(self.datasets))
        self._state = self._produced
        self._prefetcher = Prefetcher(self._produce, config.prefetch) if config.prefetch else None

    @property
    def state(self) -> IteratorState:
        return self._state

    @property
    def process_rows(self) -> tuple[int, int]:
        """[start, stop) of the global batch rows this process loads."""
        return self._rows

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, Any]:
        batch, state = next(self._prefetcher) if self._prefetcher else self._produce()
        self._state = state
        return batch

    def close(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()

    def __enter__(self) -> BatchIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _produce(self) -> tuple[dict[str, Any], IteratorState]:
        plan, after = self._sampler.plan(self._produced)
        local = self._local_batch(plan, self._produced.step)
        self._produced = after
        if self._sharding is not None:
            return assemble(local, self._sharding, self.config.global_batch_size), after
        return local, after

    def _random_passage(self, d: int) -> Callable[[np.random.Generator], Passage]:
        spec = self.datasets[d]
        if spec.corpus is not None and len(spec.corpus):
            corpus = spec.corpus
            return lambda rng: corpus[int(rng.integers(len(corpus)))]
        records = spec.records
        return lambda rng: records[int(rng.integers(len(records)))].positives[0]

    def _local_batch(self, plan: BatchPlan, step: int) -> dict[str, np.ndarray]:
        cfg = self.config
        start, stop = self._rows
        rows = np.arange(start, stop)
        records: list[TrainingRecord | None] = [None] * len(rows)
        for d in np.unique(plan.dataset[rows]):
            mine = np.flatnonzero(plan.dataset[rows] == d)
            loaded = _read(self.datasets[d].records, plan.record[rows[mine]])
            for i, record in zip(mine, loaded, strict=True):
                records[i] = record
        examples = []
        for i, slot in enumerate(rows):
            d = int(plan.dataset[slot])
            examples.append(
                make_example(
                    records[i],
                    num_negatives=cfg.num_negatives,
                    template=cfg.query_template,
                    more_rule=cfg.more_negatives,
                    positive_rule=cfg.positive,
                    random_passage=self._random_passage(d),
                    rng_key=(cfg.seed, d, int(plan.epoch[slot]), int(plan.record[slot])),
                    dataset=self.datasets[d].name,
                    document_instruction=self.datasets[d].document_instruction,
                )
            )
        if cfg.pair_template:
            return self._pair_batch(examples, plan.dataset[rows], step)
        q_ids, q_starts = tokenize(
            self._tokenizer,
            [e.query for e in examples],
            cfg.query_max_length,
            [e.prefix_chars for e in examples],
        )
        p_ids, p_starts = tokenize(
            self._tokenizer,
            [text for e in examples for text in e.passage_texts],
            cfg.passage_max_length,
            [chars for e in examples for chars in e.passage_prefix_chars],
        )
        b, group = len(examples), 1 + cfg.num_negatives
        shared = _labels(examples, plan.dataset[rows])
        if cfg.packing == "rows":
            query, passage = self._pack_sides(
                step,
                [
                    (q_ids, q_starts, self._q_buckets, cfg.query_row_multiple),
                    (p_ids, p_starts, self._p_buckets, cfg.passage_row_multiple),
                ],
            )
            passage = dict(passage, slots=passage["slots"].reshape(b, group))
            return _prefixed("query", query) | _prefixed("passage", passage) | shared
        q_len, p_len = self._agree(step, [max(map(len, q_ids)), max(map(len, p_ids))])
        pad_id = self._tokenizer.pad_token_id
        q, q_mask, q_pool = pad(q_ids, q_starts, pick_bucket(q_len, self._q_buckets), pad_id)
        p, p_mask, p_pool = pad(p_ids, p_starts, pick_bucket(p_len, self._p_buckets), pad_id)
        return {
            "query_input_ids": q,
            "query_attention_mask": q_mask,
            "query_pool_mask": q_pool,
            "passage_input_ids": p.reshape(b, group, -1),
            "passage_attention_mask": p_mask.reshape(b, group, -1),
            "passage_pool_mask": p_pool.reshape(b, group, -1),
        } | shared

    def _pack_sides(
        self,
        step: int,
        sides: Sequence[tuple[list[list[int]], list[int], tuple[int, ...], int]],
    ) -> list[dict[str, np.ndarray]]:
        """Each side's (ids, pool starts, length buckets, row multiple) packed into this
        process's block of rows of the bucket that holds the batch's longest text (short
        texts pack into short rows: dense attention is quadratic in the row length); every
        process agrees on the lengths and the row counts."""
        cfg = self.config
        start, stop = self._rows
        blocks = cfg.global_batch_size // (stop - start)  # processes' equal row blocks
        longest = self._agree(step, [max(map(len, ids)) for ids, *_ in sides])
        lengths = [
            pick_bucket(n, buckets) for n, (_, _, buckets, _) in zip(longest, sides, strict=True)
        ]
        layouts = [
            first_fit_rows(list(map(len, ids)), length, cfg.pack_max_segments)
            for (ids, *_), length in zip(sides, lengths, strict=True)
        ]
        needed = self._agree_rows(step, [len(layout) for layout in layouts])
        out = []
        for (ids, starts, _, multiple), length, layout, rows in zip(
            sides, lengths, layouts, needed, strict=True
        ):
            # Rows split evenly over every batch shard and GradCache chunk, per process.
            align = math.lcm(self._shards, multiple) // blocks
            num_rows = row_bucket(rows, len(ids), align)
            packed = pack(
                ids,
                starts,
                layout,
                num_rows=num_rows,
                length=length,
                max_segments=cfg.pack_max_segments,
                pad_id=self._tokenizer.pad_token_id,
                row_offset=(start // (stop - start)) * num_rows,
            )
            out.append(packed.arrays())
        return out

    def _pair_batch(
        self, examples: Sequence[Any], dataset: np.ndarray, step: int
    ) -> dict[str, np.ndarray]:
        cfg = self.config
        # The raw query: the pair template replaces the bi-encoder's instruction prefix.
        queries = [e.query[e.prefix_chars :] for e in examples for _ in e.passages]
        passages = [p.full_text() for e in examples for p in e.passages]
        ids = tokenize_pairs(
            self._tokenizer,
            queries,
            passages,
            template=cfg.pair_template,
            max_length=cfg.passage_max_length,
            query_max_length=cfg.query_max_length,
        )
        b, group = len(examples), 1 + cfg.num_negatives
        shared = _labels(examples, dataset)
        if cfg.packing == "rows":
            (pairs,) = self._pack_sides(
                step, [(ids, [0] * len(ids), self._p_buckets, cfg.passage_row_multiple)]
            )
            pairs = dict(pairs, slots=pairs["slots"].reshape(b, group))
            return _prefixed("pair", pairs) | shared
        (length,) = self._agree(step, [max(map(len, ids))])
        pad_id = self._tokenizer.pad_token_id
        x, mask, _ = pad(ids, [0] * len(ids), pick_bucket(length, self._p_buckets), pad_id)
        return {
            "pair_input_ids": x.reshape(b, group, -1),
            "pair_attention_mask": mask.reshape(b, group, -1),
        } | shared


def _labels(examples: Sequence[Any], dataset: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays a batch has in either layout: passage ids and each row's dataset."""
    return {
        "doc_ids": np.asarray([e.doc_ids for e in examples], dtype=np.int32),
        "dataset_index": dataset.astype(np.int32),
    }


def _prefixed(prefix: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {f"{prefix}_{name}": value for name, value in arrays.items()}
