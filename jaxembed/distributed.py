"""Multi-process start-up: `jax.distributed.initialize` from explicit settings.

On CPU (tests, local multi-process runs) the cross-process collectives go through gloo.
"""

from __future__ import annotations

import jax

from jaxembed.errors import UserInputError


def initialize(
    coordinator: str | None, num_processes: int | None, process_id: int | None, timeout_s: int = 120
) -> None:
    """Join a multi-process run; a no-op when no coordinator is given."""
    if coordinator is None:
        if num_processes not in (None, 1) or process_id not in (None, 0):
            raise UserInputError("--num-processes/--process-id need --coordinator HOST:PORT")
        return
    if num_processes is None or process_id is None:
        raise UserInputError("--coordinator needs --num-processes and --process-id")
    if not 0 <= process_id < num_processes:
        raise UserInputError(f"--process-id {process_id} is not in [0, {num_processes})")
    # Only affects CPU devices (harmless on GPU/TPU); must precede backend start-up.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=timeout_s,
        )
    except Exception as e:  # the coordinator or a peer did not show up in time
        raise UserInputError(
            f"could not join {num_processes} processes at {coordinator} as process {process_id} "
            f"within {timeout_s}s: {e}"
        ) from e
