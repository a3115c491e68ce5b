"""Multi-process start-up: `jax.distributed.initialize` from explicit flags, SLURM, or a TPU VM.

Where the settings come from (`launcher`):
  explicit  --coordinator HOST:PORT --num-processes N --process-id I (any cluster, local tests)
  slurm     one process per `srun` task: SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID and the
            first host of SLURM_STEP_NODELIST (port: $JAX_COORDINATOR_PORT, else derived from
            SLURM_JOB_ID as JAX does). Several tasks per node = one process per GPU.
  tpu       Cloud TPU VM slices: JAX reads the worker list from the VM's metadata.
  none      a single process.
  auto      explicit flags if given, else SLURM inside a multi-task job step, else a TPU VM,
            else a single process.

Peers that do not arrive within `timeout_s` stop every waiting process with one clear error
(JAX itself would abort the process with a C++ stack trace). On CPU, cross-process
collectives go through gloo.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import jax

from jaxembed.errors import UserInputError

LAUNCHERS = ("auto", "explicit", "slurm", "tpu", "none")
SLURM_REQUIRED = ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_STEP_NODELIST")


@dataclass(frozen=True)
class ProcessSettings:
    launcher: str  # where the settings came from: explicit, slurm, tpu or none
    coordinator: str | None = None
    num_processes: int = 1
    process_id: int = 0
    local_device_ids: tuple[int, ...] | None = None  # GPUs this process drives (None = all)


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM hostlist: `gpu[003-004,010],cpu1` → `gpu003`."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]*)\])?", nodelist.strip())
    if not match or not match.group(1):
        raise UserInputError(f"SLURM_STEP_NODELIST={nodelist!r} is not a SLURM host list")
    prefix, ranges = match.group(1), match.group(2)
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def _slurm_int(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise UserInputError(f"{name}={environ[name]!r} is not an integer") from None


def slurm_settings(environ: Mapping[str, str]) -> ProcessSettings:
    """Settings for one `srun` task; a clear error names any SLURM variable that is missing."""
    missing = [name for name in SLURM_REQUIRED if not environ.get(name)]
    if missing:
        raise UserInputError(
            f"SLURM launch needs {', '.join(missing)}, which are not set: start one process "
            "per task with `srun jaxembed train ...` inside the allocation (see "
            "launch/slurm_gpu.sbatch), or give --coordinator/--num-processes/--process-id"
        )
    num_processes = _slurm_int(environ, "SLURM_NTASKS")
    process_id = _slurm_int(environ, "SLURM_PROCID")
    if not 0 <= process_id < num_processes:
        raise UserInputError(f"SLURM_PROCID={process_id} is not in [0, {num_processes})")
    job_id = _slurm_int(environ, "SLURM_JOB_ID")
    # JAX's own SLURM rule, so mixed launchers agree: a port in the top 4096 of the range.
    port = environ.get("JAX_COORDINATOR_PORT") or str(job_id % 2**12 + 65535 - 2**12 + 1)
    host = first_slurm_host(environ["SLURM_STEP_NODELIST"])
    nodes = _slurm_int(environ, "SLURM_STEP_NUM_NODES") if "SLURM_STEP_NUM_NODES" in environ else 1
    local_ids = None
    visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    # Several tasks per node means one process per GPU, unless SLURM already narrowed each
    # task to its own GPU (--gpus-per-task / --gpu-bind), which leaves one visible.
    if num_processes > nodes and len(visible) != 1:
        if "SLURM_LOCALID" not in environ:
            raise UserInputError(
                "SLURM launch with several tasks per node needs SLURM_LOCALID, which is not set"
            )
        local_ids = (_slurm_int(environ, "SLURM_LOCALID"),)
    return ProcessSettings("slurm", f"{host}:{port}", num_processes, process_id, local_ids)


def _on_cloud_tpu_vm() -> bool:
    try:
        from jax._src import cloud_tpu_init  # set when jax found TPU chips at import
    except ImportError:
        return False
    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def resolve(
    launcher: str = "auto",
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] | None = None,
    on_tpu_vm: bool | None = None,
) -> ProcessSettings:
    """Decide how this process joins the run (no side effects)."""
    environ = os.environ if environ is None else environ
    if launcher not in LAUNCHERS:
        raise UserInputError(f"--launcher {launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    flags = (coordinator, num_processes, process_id)
    if launcher in ("slurm", "tpu", "none") and any(f is not None for f in flags):
        raise UserInputError(
            f"--coordinator/--num-processes/--process-id go with --launcher explicit "
            f"(or auto), not {launcher}"
        )
    if launcher == "explicit" or (launcher == "auto" and any(f is not None for f in flags)):
        return _explicit(coordinator, num_processes, process_id)
    if launcher == "slurm":
        return slurm_settings(environ)
    if launcher == "auto" and environ.get("SLURM_JOB_ID") and environ.get("SLURM_NTASKS"):
        ntasks = _slurm_int(environ, "SLURM_NTASKS")
        if ntasks > 1:
            return slurm_settings(environ)
    on_tpu_vm = _on_cloud_tpu_vm() if on_tpu_vm is None else on_tpu_vm
    if launcher == "tpu" or (launcher == "auto" and on_tpu_vm):
        return ProcessSettings("tpu")
    return ProcessSettings("none")


def _explicit(
    coordinator: str | None, num_processes: int | None, process_id: int | None
) -> ProcessSettings:
    if coordinator is None:
        raise UserInputError("--num-processes/--process-id need --coordinator HOST:PORT")
    if num_processes is None or process_id is None:
        raise UserInputError("--coordinator needs --num-processes and --process-id")
    if not re.fullmatch(r"\S+:\d+", coordinator):
        raise UserInputError(f"--coordinator {coordinator!r}: expected HOST:PORT")
    if num_processes < 1:
        raise UserInputError(f"--num-processes {num_processes}: must be >= 1")
    if not 0 <= process_id < num_processes:
        raise UserInputError(f"--process-id {process_id} is not in [0, {num_processes})")
    return ProcessSettings("explicit", coordinator, num_processes, process_id)


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int = 300,
    launcher: str = "auto",
    environ: Mapping[str, str] | None = None,
) -> ProcessSettings:
    """Join the multi-process run this process belongs to (a no-op for a single process).

    Must run before anything touches a JAX backend. Returns the settings it used.
    """
    settings = resolve(launcher, coordinator, num_processes, process_id, environ)
    if settings.launcher == "none" or (settings.launcher != "tpu" and settings.num_processes == 1):
        return settings
    # Only affects CPU devices (harmless on GPU/TPU); must precede backend start-up.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if settings.launcher == "tpu":
        where = "the TPU VM's workers (from its metadata)"
        kwargs = {}
    else:
        where = (
            f"{settings.num_processes} processes at {settings.coordinator} "
            f"as process {settings.process_id}"
        )
        kwargs = dict(
            coordinator_address=settings.coordinator,
            num_processes=settings.num_processes,
            process_id=settings.process_id,
            local_device_ids=list(settings.local_device_ids) if settings.local_device_ids else None,
        )
    message = (
        f"could not join {where} within {timeout_s}s: a peer did not start, or cannot reach "
        "the coordinator (every process must run the same command with the same process "
        "count; check the coordinator host and port)"
    )
    # JAX aborts the whole process (SIGABRT, C++ trace) when its own deadline passes; ours
    # fires first with a message, and exit status 2 like every other user error.
    watchdog = threading.Timer(timeout_s, _give_up, args=(message,))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(initialization_timeout=timeout_s + 60, **kwargs)
    except Exception as e:  # e.g. an unreachable or malformed coordinator address
        raise UserInputError(f"{message}: {e}") from e
    finally:
        watchdog.cancel()
    if jax.process_index() != 0:
        # Process 0 speaks for the run; the others keep only errors (N copies of every
        # warning on a pod say nothing more than one).
        logging.getLogger("jaxembed").setLevel(logging.ERROR)
    return settings


def _give_up(message: str) -> None:
    sys.stderr.write(f"jaxembed: error: {message}\n")
    sys.stderr.flush()
    os._exit(2)


def is_main_process() -> bool:
    """True on process 0, the one that writes logs, metrics and exports (all processes join
    checkpoints, each writing its own shards)."""
    return jax.process_index() == 0
