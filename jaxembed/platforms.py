"""Keep libtpu quiet on machines without a TPU, whatever extras are installed.

With libtpu installed (the `[tpu]` extra, needed by `jaxembed plan`), JAX's default backend
discovery initializes the TPU plugin on every machine, and on one without TPU chips libtpu
prints several lines of errors (TPU_WORKER_HOSTNAMES, accelerator type) before JAX falls
back to the CPU. A user reads those as a failure. So, before JAX starts a backend:

- on a machine with neither TPU chips nor GPU devices, and no JAX_PLATFORMS set by the user,
  JAX is restricted to the CPU (the TPU plugin is never initialized);
- `jaxembed plan` still loads libtpu for its compile-only topology; on a machine without TPU
  chips it gives libtpu the two settings it would otherwise complain about (a local worker
  and the planned accelerator type), which only describe this host, not the compile target.

TPU VMs (chips present) and GPU hosts keep JAX's own discovery unchanged.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import MutableMapping


def tpu_chips_present() -> bool:
    """JAX's own test (TPU PCI devices); without it, assume a TPU may be there."""
    try:
        from jax._src import hardware_utils
    except ImportError:
        return True
    try:
        return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
    except Exception:  # an unexpected sysfs layout: leave JAX's discovery alone
        return True


def gpu_devices_present() -> bool:
    return bool(glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd"))


def prefer_cpu_without_accelerators(environ: MutableMapping[str, str] | None = None) -> bool:
    """Restrict JAX to the CPU when this machine has no accelerator; True if it did so."""
    environ = os.environ if environ is None else environ
    if environ.get("JAX_PLATFORMS") or tpu_chips_present() or gpu_devices_present():
        return False
    environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:  # imported already (library use): the env var is read at import
        import jax

        jax.config.update("jax_platforms", "cpu")
    return True


def quiet_compile_only_tpu(accelerator_type: str, environ: MutableMapping[str, str] | None = None):
    """Settings that stop libtpu's start-up complaints when it only compiles (no chips)."""
    environ = os.environ if environ is None else environ
    if tpu_chips_present():
        return
    environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type)
