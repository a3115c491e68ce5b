"""Multi-process plumbing: which global rows this process loads, agreeing on padded lengths
across processes, and assembling the per-process pieces into global `jax.Array`s."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Sharding

_KV_TIMEOUT_MS = 10 * 60 * 1000
_instances = itertools.count()


def process_rows(sharding: Sharding | None, global_batch_size: int) -> tuple[int, int]:
    """[start, stop) of the global batch rows whose data this process must provide.

    With a sharding, these are the rows its addressable devices hold (so the local piece
    lines up with `make_array_from_process_local_data`); without one, an even split.
    """
    if sharding is None:
        count, index = jax.process_count(), jax.process_index()
        if global_batch_size % count:
            raise ValueError(f"global batch {global_batch_size} not divisible by {count} processes")
        size = global_batch_size // count
        return index * size, (index + 1) * size
    index_map = sharding.addressable_devices_indices_map((global_batch_size,))
    rows = sorted({(s[0].start or 0, s[0].stop or global_batch_size) for s in index_map.values()})
    shard_sizes = {stop - start for start, stop in rows}
    if len(shard_sizes) != 1 or global_batch_size % shard_sizes.pop():
        raise ValueError(f"global batch {global_batch_size} does not split evenly over shards")
    start, stop = rows[0][0], rows[-1][1]
    covered = sum(b - a for a, b in rows)
    if covered != stop - start:
        raise ValueError(
            f"this process's batch rows {rows} are not contiguous; use a mesh whose "
            "('data', 'fsdp') order keeps each process's devices together"
        )
    return start, stop


def batch_shards(sharding: Sharding | None, global_batch_size: int) -> int:
    """How many equal pieces the batch axis is split into (1 without a sharding)."""
    if sharding is None:
        return 1
    index_map = sharding.devices_indices_map((global_batch_size,))
    return len({(s[0].start or 0, s[0].stop) for s in index_map.values()})


class LengthAgreement:
    """Element-wise max of small int vectors over all processes, once per global step.

    Each process tokenizes only its share, but the global batch needs one padded length, so
    the bucket is chosen from the max over processes. This goes through the jax.distributed
    key-value store, not a device collective, so it can run in the prefetch thread without
    interleaving with the train step's collectives.
    """

    def __init__(self, name: str | None = None) -> None:
        # Every process creates its pipelines in the same order, so the counter agrees.
        self._prefix = f"jaxembed_data/{name or next(_instances)}"
        self._count = jax.process_count()
        self._index = jax.process_index()
        self._published: set[int] = set()

    def _client(self):
        from jax._src import distributed  # no public API exposes the coordination KV store

        client = distributed.global_state.client
        if client is None:
            raise RuntimeError("several processes but jax.distributed is not initialized")
        return client

    def __call__(self, step: int, local: Sequence[int]) -> list[int]:
        if self._count == 1:
            return list(local)
        client = self._client()
        client.key_value_set(
            f"{self._prefix}/{step}/{self._index}", ",".join(map(str, local)), allow_overwrite=True
        )
        self._published.add(step)
        values = [list(local)]
        for p in range(self._count):
            if p != self._index:
                text = client.blocking_key_value_get(f"{self._prefix}/{step}/{p}", _KV_TIMEOUT_MS)
                values.append([int(v) for v in text.split(",")])
        # Every process has published step-1, so all are done reading step-2: drop our key.
        if step - 2 in self._published:
            self._published.discard(step - 2)
            client.key_value_delete(f"{self._prefix}/{step - 2}/{self._index}")
        return [int(v) for v in np.max(np.asarray(values), axis=0)]


def assemble(
    local: dict[str, np.ndarray], sharding: Sharding, global_batch_size: int
) -> dict[str, jax.Array]:
    """Per-process rows to global arrays laid out by `sharding` (the batch axis is dim 0).
    Every process holds an equal block of every array's rows (packed rows too: the global
    row count is the local one times the processes' blocks)."""
    start, stop = process_rows(sharding, global_batch_size)
    blocks = global_batch_size // (stop - start)
    return {
        k: jax.make_array_from_process_local_data(sharding, v, (v.shape[0] * blocks, *v.shape[1:]))
        for k, v in local.items()
    }
