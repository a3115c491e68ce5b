"""The deterministic global plan: which record fills each slot of each global batch.

Everything here is a pure function of (seed, state), computed identically on every process
and without reading data, so processes agree on the plan and a restored state replays it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

# Distinct stream tags keep the blend draws independent of the per-dataset shuffles.
_SHUFFLE_TAG = 0x5EED
_BLEND_TAG = 0xB1E4D
# No-duplicate batches: how many batches' worth of records may wait for a batch they fit.
_WAITING_BATCHES = 4


@dataclasses.dataclass(frozen=True)
class StreamState:
    """Where one dataset's shuffled stream stands: its epoch and the next position in it,
    and (with no-duplicate batches) the records passed over for sharing a text with their
    batch, as (epoch, record) pairs, offered first to the next batches."""

    epoch: int = 0
    position: int = 0
    deferred: tuple[tuple[int, int], ...] = ()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StreamState:
        deferred = tuple((int(e), int(r)) for e, r in d.get("deferred", ()))
        return cls(int(d["epoch"]), int(d["position"]), deferred)


@dataclasses.dataclass(frozen=True)
class IteratorState:
    """Everything needed to resume: the global step (it keys the blend draws) and each stream.

    Small and JSON-serializable, so it is saved next to the model checkpoint.
    """

    step: int
    streams: tuple[StreamState, ...]

    @classmethod
    def start(cls, num_datasets: int, epoch: int = 0) -> IteratorState:
        return cls(0, tuple(StreamState(epoch, 0) for _ in range(num_datasets)))

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "streams": [dataclasses.asdict(s) for s in self.streams]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IteratorState:
        return cls(int(d["step"]), tuple(StreamState.from_dict(s) for s in d["streams"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> IteratorState:
        return cls.from_dict(json.loads(text))


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """For each of the B global slots: the dataset, the stream epoch and the record index."""

    dataset: np.ndarray
    epoch: np.ndarray
    record: np.ndarray


class GlobalSampler:
    """Blends datasets by weight and walks each one in a (seed, dataset, epoch) permutation.

    `eligible[d]` lists the record indices of dataset d that may be used (all of them unless
    the pipeline drops records); a stream's epoch is one pass over its eligible records.
    With `homogeneous`, each global batch is drawn from a single dataset.

    With `keys` (per dataset, per record: the hashes of its texts), batches hold no two
    records sharing a text, as sentence-transformers' NO_DUPLICATES sampler makes them: a
    record that collides waits for a later batch (it keeps its place in its epoch's count).
    At most four batches' worth of records wait at a time; past that, or where no record fits
    (a classification task with fewer labels than rows), records are taken anyway and the
    loss's duplicate mask handles them.
    """

    def __init__(
        self,
        eligible: Sequence[np.ndarray],
        weights: Sequence[float],
        global_batch_size: int,
        *,
        seed: int,
        homogeneous: bool = False,
        keys: Sequence[Sequence[np.ndarray]] | None = None,
    ) -> None:
        if len(eligible) != len(weights) or not eligible:
            raise ValueError("need one weight per dataset and at least one dataset")
        w = np.asarray(weights, dtype=np.float64)
        if np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
        for d, idx in enumerate(eligible):
            if w[d] > 0 and len(idx) == 0:
                raise ValueError(f"dataset {d} has weight {w[d]} but no usable records")
        self.eligible = [np.asarray(e, dtype=np.int64) for e in eligible]
        self.weights = w / w.sum()
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.homogeneous = homogeneous
        self.keys = keys
        self._max_waiting = _WAITING_BATCHES * global_batch_size
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    def _permutation(self, dataset: int, epoch: int) -> np.ndarray:
        key = (dataset, epoch)
        if key not in self._perm_cache:
            # A batch spans at most two epochs of a stream, so two per dataset suffice.
            for old in [k for k in self._perm_cache if k[0] == dataset and k[1] < epoch - 1]:
                del self._perm_cache[old]
            rng = np.random.default_rng([self.seed, _SHUFFLE_TAG, dataset, epoch])
            order = rng.permutation(len(self.eligible[dataset]))
            self._perm_cache[key] = self.eligible[dataset][order]
        return self._perm_cache[key]

    def _slot_datasets(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, _BLEND_TAG, step])
        k, b = len(self.weights), self.global_batch_size
        if self.homogeneous:
            return np.full(b, rng.choice(k, p=self.weights), dtype=np.int64)
        return rng.choice(k, size=b, p=self.weights).astype(np.int64)

    def plan(self, state: IteratorState) -> tuple[BatchPlan, IteratorState]:
        """The next global batch's slots, and the state after it."""
        if len(state.streams) != len(self.eligible):
            raise ValueError(
                f"state has {len(state.streams)} streams for {len(self.eligible)} datasets"
            )
        datasets = self._slot_datasets(state.step)
        epochs = np.zeros_like(datasets)
        records = np.zeros_like(datasets)
        streams = list(state.streams)
        seen: set[int] = set()  # the batch's text hashes (no-duplicate batches)
        for d in range(len(self.eligible)):
            slots = np.flatnonzero(datasets == d)
            picked, streams[d] = self._take(d, len(slots), streams[d], seen)
            for slot, (epoch, record) in zip(slots, picked, strict=True):
                epochs[slot], records[slot] = epoch, record
        return BatchPlan(datasets, epochs, records), IteratorState(state.step + 1, tuple(streams))

    def _take(
        self, d: int, count: int, stream: StreamState, seen: set[int]
    ) -> tuple[list[tuple[int, int]], StreamState]:
        """`count` (epoch, record) picks from dataset d's stream, and the stream after."""
        picked: list[tuple[int, int]] = []
        waiting: list[tuple[int, int]] = []

        def offer(item: tuple[int, int]) -> None:
            if self.keys is None:
                picked.append(item)
                return
            keys = self.keys[d][item[1]]
            if len(waiting) < self._max_waiting and any(int(k) in seen for k in keys):
                waiting.append(item)
                return
            picked.append(item)
            seen.update(int(k) for k in keys)

        for item in stream.deferred:
            if len(picked) < count:
                offer(item)
            else:
                waiting.append(item)
        epoch, position = stream.epoch, stream.position
        n = len(self.eligible[d])
        while len(picked) < count:
            if position >= n:
                epoch, position = epoch + 1, 0
            offer((epoch, int(self._permutation(d, epoch)[position])))
            position += 1
        return picked, StreamState(epoch, position, tuple(waiting))
