"""TPU slices by name: per-chip HBM and bf16 peak, and their compile-only devices.

A slice is named as Cloud TPU's accelerator types name it (`v5p-128`, `v4-8`, `v5litepod-16`,
`v6e-8`) or by chip grid (`v5p:4x4x4`, `v5e:4x4`). v4 and v5p types count TensorCores (2 per
chip), v5e and v6e types count chips. JAX drives v4 and v5p chips as one device each
("megacore"), so a device is a chip throughout.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any

from jaxembed.errors import UserInputError
from jaxembed.platforms import quiet_compile_only_tpu

GiB = 1024**3


@dataclass(frozen=True)
class Chip:
    name: str
    hbm_bytes: int  # per chip
    peak_bf16_flops: float  # per chip, dense
    cores_per_chip: int  # TensorCores counted by the accelerator-type suffix
    grid_dims: int  # 3 for the 3D torus generations, 2 for the 2D ones


# Cloud TPU's published per-chip figures (v5p's "95 GB" taken as 95 GiB: real chips report
# slightly more, so the fit test errs on the safe side).
CHIPS = {
    "v4": Chip("v4", 32 * GiB, 275e12, 2, 3),
    "v5e": Chip("v5e", 16 * GiB, 197e12, 1, 2),
    "v5p": Chip("v5p", 95 * GiB, 459e12, 2, 3),
    "v6e": Chip("v6e", 32 * GiB, 918e12, 1, 2),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "v5": "v5p"}

# Chip grids of the standard slices, by chip count (Cloud TPU's shape tables).
GRIDS_3D = {
    4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
    256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16),
}  # fmt: skip
GRIDS_2D = {
    1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
    256: (16, 16),
}  # fmt: skip


@dataclass(frozen=True)
class Topology:
    chip: Chip
    grid: tuple[int, ...]

    @property
    def num_chips(self) -> int:
        return math.prod(self.grid)

    @property
    def accelerator_type(self) -> str:
        prefix = "v5litepod" if self.chip.name == "v5e" else self.chip.name
        return f"{prefix}-{self.num_chips * self.chip.cores_per_chip}"

    @property
    def grid_name(self) -> str:
        """The name libtpu's topology factory takes, e.g. `v5p:4x4x4`."""
        return f"{self.chip.name}:{'x'.join(str(d) for d in self.grid)}"


def _known() -> str:
    sizes = sorted(GRIDS_3D)
    return (
        "v4-N / v5p-N (N TensorCores: "
        + ", ".join(str(2 * s) for s in sizes)
        + "), v5litepod-N / v6e-N (N chips: "
        + ", ".join(str(s) for s in sorted(GRIDS_2D))
        + "), or a chip grid such as v5p:4x4x4 or v5e:4x4"
    )


def parse_topology(name: str) -> Topology:
    """`v5p-128` or `v5p:4x4x4` → Topology; anything else is a UserInputError."""
    text = name.strip().lower()
    grid_match = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)+)", text)
    type_match = re.fullmatch(r"([a-z0-9]+)-(\d+)", text)
    generation = (grid_match or type_match).group(1) if (grid_match or type_match) else ""
    chip = CHIPS.get(ALIASES.get(generation, generation))
    if chip is None:
        raise UserInputError(f"unknown TPU topology {name!r}; expected {_known()}")
    if grid_match:
        grid = tuple(int(d) for d in grid_match.group(2).split("x"))
        if len(grid) != chip.grid_dims or min(grid) < 1:
            raise UserInputError(
                f"TPU topology {name!r}: {chip.name} slices are {chip.grid_dims}-D chip grids"
            )
        return Topology(chip, grid)
    cores = int(type_match.group(2))
    grids = GRIDS_3D if chip.grid_dims == 3 else GRIDS_2D
    chips, rest = divmod(cores, chip.cores_per_chip)
    if rest or chips not in grids:
        raise UserInputError(f"unknown TPU topology {name!r}; expected {_known()}")
    return Topology(chip, grids[chips])


def compile_only_devices(topology: Topology) -> list[Any]:
    """The slice's devices from libtpu's topology factory: enough to compile for, no hardware.

    Needs libtpu (`pip install -e '.[tpu]'`); works on a CPU-only machine.
    """
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        raise UserInputError(
            "jaxembed plan needs libtpu to compile for TPUs: pip install -e '.[tpu]'"
        ) from e
    # A second process (another jaxembed run that touched libtpu) would otherwise hold the
    # libtpu lock file and make this one fail; compiling needs no exclusive chip access.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    quiet_compile_only_tpu(topology.accelerator_type)
    from jax.experimental import topologies

    # v4 and v5p: one device per chip (megacore), as JAX runs them on real slices.
    kwargs = {"chip_config_name": "megacore"} if topology.chip.cores_per_chip == 2 else {}
    description = topologies.get_topology_desc(topology.grid_name, "tpu", **kwargs)
    devices = list(description.devices)
    if len(devices) != topology.num_chips:
        raise RuntimeError(
            f"libtpu gave {len(devices)} devices for {topology.grid_name}, "
            f"expected one per chip ({topology.num_chips})"
        )
    return devices
