"""One process of the 2-process pipeline test; run as a script by test_data_multihost.py.

argv: process_id num_processes port out_dir. Writes out_dir/proc{process_id}.npz with the
global batches (all-gathered), the rows this process loaded and the record indices it read.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from jaxembed.data import BatchIterator, IteratorState, batch_sharding  # noqa: E402

from data_helpers.scenario import STEPS, make_config, make_specs  # noqa: E402
from data_helpers.synthetic import tiny_tokenizer  # noqa: E402


def main() -> None:
    process_id, num_processes, port, out_dir = (
        int(sys.argv[1]),
        int(sys.argv[2]),
        int(sys.argv[3]),
        Path(sys.argv[4]),
    )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=60,
    )
    assert jax.process_count() == num_processes and jax.local_device_count() == 4
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    sharding = batch_sharding(mesh)
    specs, reads = make_specs(record_reads=True)
    out: dict[str, np.ndarray] = {}
    with BatchIterator(specs, tiny_tokenizer(), make_config(), sharding=sharding) as it:
        out["rows"] = np.asarray(it.process_rows)
        for step in range(STEPS):
            batch = next(it)
            if step == 1:
                saved = it.state.to_json()
            for key, value in batch.items():
                local = np.concatenate([np.asarray(s.data) for s in _row_shards(value)])
                out[f"local/{step}/{key}"] = local
                out[f"global/{step}/{key}"] = multihost_utils.process_allgather(value, tiled=True)
    for d, indices in enumerate(reads):
        out[f"reads/{d}"] = np.asarray(sorted(indices), dtype=np.int64)
    # Resume on both processes from the state after step 2: the rest must match.
    state = IteratorState.from_json(saved)
    with BatchIterator(
        specs, tiny_tokenizer(), make_config(), sharding=sharding, state=state
    ) as it:
        for step in range(2, STEPS):
            batch = next(it)
            for key, value in batch.items():
                gathered = multihost_utils.process_allgather(value, tiled=True)
                out[f"resumed/{step}/{key}"] = gathered
    np.savez(out_dir / f"proc{process_id}.npz", **out)
    jax.distributed.shutdown()


def _row_shards(value: jax.Array) -> list:
    """One addressable shard per distinct row range (the 'tensor' axis replicates rows)."""
    by_rows = {}
    for shard in value.addressable_shards:
        by_rows.setdefault(shard.index[0].start or 0, shard)
    return [by_rows[k] for k in sorted(by_rows)]


if __name__ == "__main__":
    main()
