"""Checkpoint merging: uniform / weighted averages, SLERP and TIES, tensor by tensor.

`jaxembed merge --inputs A B C ... --method uniform|weighted|slerp|ties --output OUT` reads
each input (a Hugging Face directory, a training workdir's latest step, or a step directory
`WORKDIR/checkpoints/N`) one tensor at a time, merges that tensor, writes it to the output's
safetensors and drops it, so memory holds a few tensors, never N models. (An Orbax input is
read one param leaf at a time, and a leaf is stacked over layers: an HF input streams finer.)

The methods follow mergekit's published definitions, per tensor:
- uniform: the mean; weighted: `sum(w_i x_i) / sum(w_i)` (mergekit `linear`, normalized);
- slerp: spherical interpolation from the first input (t=0) to the second (t=1) along the
  angle between the flattened tensors, plain lerp when they are nearly colinear
  (|cos| > 0.9995);
- ties: task vectors `x_i - base`, each trimmed to its `density` fraction of largest
  magnitudes, weighted; per element the sign of their sum is elected and the agreeing
  vectors are averaged (`sum / sum of their weights`); `base + lambda * that`.
Arithmetic is float64; the output is cast to `--dtype` (default: the first input's).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from jaxembed import hf
from jaxembed.errors import UserInputError
from jaxembed.hf_directory import (
    EXPORT_DTYPES,
    HFTensor,
    RunMetadata,
    TensorSource,
    architecture_difference,
    hf_tensors,
    read_metrics,
    write_hf_directory,
)
from jaxembed.models import architectures
from jaxembed.run_steps import OrbaxSource, checkpoint_steps, load_run_config, resolve_step
from jaxembed.safetensors_io import INDEX_NAME, SafetensorsCheckpoint

log = logging.getLogger(__name__)

METHODS = ("uniform", "weighted", "slerp", "ties")
SLERP_DOT_THRESHOLD = 0.9995  # mergekit's: above it the tensors are colinear, lerp instead


# --- the methods, on one tensor ----------------------------------------------------------
# Each takes `read(i)`, the tensor of input i, and streams over the inputs where the method
# allows it, so memory holds a few copies of one tensor whatever the number of inputs.

Reader = Callable[[int], np.ndarray]


_BLOCK = 1 << 20  # elements per step of the running sum: its temporaries stay small


def weighted_mean(read: Reader, weights: Sequence[float]) -> np.ndarray:
    """`sum(w_i x_i) / sum(w_i)` as a float64 running sum, one input at a time, in blocks:
    memory is the sum plus the input being read, whatever the number of inputs."""
    total: np.ndarray | None = None
    for i, weight in enumerate(weights):
        tensor = read(i)
        if total is None:
            total = np.zeros(tensor.shape, np.float64)
        flat, out = tensor.reshape(-1), total.reshape(-1)
        for start in range(0, flat.size, _BLOCK):
            out[start : start + _BLOCK] += flat[start : start + _BLOCK].astype(np.float64) * weight
        del tensor, flat
    total /= float(sum(weights))
    return total


def slerp(t: float, v0: np.ndarray, v1: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """mergekit's `slerp(t, v0, v1)`: the angle is measured between the flattened tensors,
    each normalized unless its norm is below `eps`."""
    a, b = v0.astype(np.float64), v1.astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    dot = float(np.sum((a / na if na > eps else a) * (b / nb if nb > eps else b)))
    if abs(dot) > SLERP_DOT_THRESHOLD:
        return (1 - t) * a + t * b
    theta = np.arccos(dot)
    sin_theta = np.sin(theta)
    return (np.sin(theta - theta * t) / sin_theta) * a + (np.sin(theta * t) / sin_theta) * b


def magnitude_trim(delta: np.ndarray, density: float) -> np.ndarray:
    """Keep the `int(density * size)` largest-magnitude entries (mergekit `magnitude`)."""
    if density >= 1:
        return delta
    k = int(density * delta.size)
    flat = delta.reshape(-1)
    kept = np.zeros_like(flat)
    if k > 0:
        top = np.argpartition(-np.abs(flat), k - 1)[:k]
        kept[top] = flat[top]
    return kept.reshape(delta.shape)


def ties(
    base: np.ndarray, read: Reader, weights: Sequence[float], density: float, lam: float = 1.0
) -> np.ndarray:
    """mergekit `ties` (sign consensus by sum, normalized): trim, elect, disjoint mean. Two
    passes over the inputs (elect, then average) instead of holding every task vector."""
    base = base.astype(np.float64)

    def task_vector(i: int) -> np.ndarray:
        return float(weights[i]) * magnitude_trim(read(i).astype(np.float64) - base, density)

    votes = np.zeros_like(base)
    for i in range(len(weights)):
        votes += task_vector(i)
    majority = np.where(votes >= 0, 1.0, -1.0)
    del votes
    mixed = np.zeros_like(base)
    divisor = np.zeros_like(base)
    for i, weight in enumerate(weights):
        delta = task_vector(i)
        agree = np.sign(delta) == majority  # trimmed (zero) entries never agree
        mixed += np.where(agree, delta, 0.0)
        divisor += np.where(agree, float(weight), 0.0)
    divisor[np.abs(divisor) < 1e-8] = 1.0
    return base + lam * (mixed / divisor)


@dataclass(frozen=True)
class MergeSettings:
    method: str
    weights: tuple[float, ...]
    t: float = 0.5
    density: float = 1.0
    lam: float = 1.0

    def apply(self, read: Reader, base: np.ndarray | None) -> np.ndarray:
        if self.method in ("uniform", "weighted"):
            return weighted_mean(read, self.weights)
        if self.method == "slerp":
            return slerp(self.t, read(0), read(1))
        return ties(base, read, self.weights, self.density, self.lam)

    def describe(self) -> str:
        if self.method == "slerp":
            return f"slerp, t={self.t}"
        if self.method == "ties":
            return f"ties, density={self.density}, lambda={self.lam}, weights={list(self.weights)}"
        if self.method == "weighted":
            return f"weighted average, weights={list(self.weights)}"
        return "uniform average"


def check_settings(
    method: str,
    num_inputs: int,
    weights: Sequence[float] | None,
    t: float,
    density: float,
    has_base: bool,
    lam: float = 1.0,
) -> MergeSettings:
    if method not in METHODS:
        raise UserInputError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    if weights is not None and method in ("uniform", "slerp"):
        raise UserInputError(f"--weights is not used by --method {method}")
    if weights is not None and len(weights) != num_inputs:
        raise UserInputError(f"--weights has {len(weights)} values for {num_inputs} inputs")
    if method == "weighted" and weights is None:
        raise UserInputError("--method weighted needs --weights, one per input")
    if weights is not None and (any(w < 0 for w in weights) or sum(weights) <= 0):
        raise UserInputError(f"--weights {list(weights)}: must be >= 0 with a positive sum")
    if method in ("uniform", "weighted") and num_inputs < 2:
        raise UserInputError(f"--method {method} needs at least 2 inputs")
    if method == "slerp" and num_inputs != 2:
        raise UserInputError(f"--method slerp merges exactly 2 inputs (got {num_inputs})")
    if method == "slerp" and not 0.0 <= t <= 1.0:
        raise UserInputError(f"--t {t}: must be in [0, 1]")
    if method == "ties":
        if not has_base:
            raise UserInputError(
                "--method ties needs --base (the model the task vectors start from)"
            )
        if not 0.0 < density <= 1.0:
            raise UserInputError(f"--density {density}: must be in (0, 1]")
    elif has_base:
        raise UserInputError(f"--base is only used by --method ties, not {method}")
    return MergeSettings(method, tuple(weights or [1.0] * num_inputs), t, density, lam)


# --- inputs ------------------------------------------------------------------------------


class HFSource:
    """A Hugging Face directory read one tensor at a time. Each read maps the file afresh and
    returns a view of it, so no mapping (nor its resident pages) outlives the tensor's use."""

    def __init__(self, directory: Path, label: str | None = None) -> None:
        self.directory = Path(directory)
        self.label = label or str(directory)
        self.hf_config = hf.read_hf_config(self.directory)
        self.model_type = str(self.hf_config.get("model_type"))
        self.config = architectures.config_from_hf(
            self.hf_config, str(self.directory / "config.json")
        )
        checkpoint = SafetensorsCheckpoint(self.directory)
        # Bare-model checkpoints have no prefix; task-head ones ("model.", "bert.") do.
        arch = architectures.for_config(self.config)
        self._base_prefix = arch.base_prefix
        self._prefix = arch.base_prefix if arch.base_prefix + arch.probe in checkpoint else ""
        self._shapes = {name: checkpoint.shape(name) for name in checkpoint.keys()}
        known = {self._name(t) for t in hf_tensors(self.config)}
        self.ignored = sorted(set(self._shapes) - known)  # e.g. an LM head, BERT's pooler
        self._dtype = checkpoint.get(self._name(hf_tensors(self.config)[0])).dtype

    def _name(self, tensor: HFTensor) -> str:
        if tensor.wmap.hf_name.startswith(self._base_prefix):
            return self._prefix + tensor.name
        return tensor.name

    def check(self) -> None:
        for tensor in hf_tensors(self.config):
            name = self._name(tensor)
            if name not in self._shapes:
                raise UserInputError(f"{self.directory}: weight {name!r} is missing")
            if self._shapes[name] != tensor.wmap.hf_shape:
                raise UserInputError(
                    f"{self.directory}: weight {name!r} has shape {self._shapes[name]}, expected "
                    f"{tensor.wmap.hf_shape} from its config.json"
                )

    def dtype(self) -> np.dtype:
        return self._dtype

    def read(self, tensor: HFTensor) -> np.ndarray:
        # A read-only view of a fresh mapping, unmapped when the caller drops the view.
        return SafetensorsCheckpoint(self.directory).get(self._name(tensor))

    def write_metadata(self, directory: Path, dtype: str, card_note: str = "") -> None:
        """Everything but the weights, as the input has it (config dtype updated). Files and
        folders holding weights (other formats, e.g. onnx/) would describe the input, not the
        merge, so they are left out."""
        modules_path = self.directory / "modules.json"
        modules = json.loads(modules_path.read_text()) if modules_path.is_file() else []
        module_dirs = {m.get("path") for m in modules if m.get("path")}
        for path in sorted(self.directory.iterdir()):
            if path.name in (INDEX_NAME, "README.md") or path.name.startswith("."):
                continue
            if _holds_weights(path):
                if path.name not in module_dirs:
                    continue
                # A sentence-transformers module (e.g. a Dense head) the pipeline needs.
                log.warning("%s: copied from the first input, not merged", path)
            if path.is_dir():
                shutil.copytree(path, directory / path.name)
            else:
                shutil.copyfile(path, directory / path.name)
        config = dict(self.hf_config)
        config.pop("torch_dtype", None)
        config["dtype"] = dtype
        (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        card = f"# Merged model\n\n{card_note}\n"
        original = self.directory / "README.md"
        if original.is_file():
            card += "\n## Card of the first input\n\n" + original.read_text()
        (directory / "README.md").write_text(card)

    def close(self) -> None:
        pass


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".h5", ".msgpack", ".gguf")


def _holds_weights(path: Path) -> bool:
    if path.is_dir():
        return any(p.suffix in WEIGHT_SUFFIXES for p in path.rglob("*") if p.is_file())
    return path.suffix in WEIGHT_SUFFIXES


def open_input(
    path: str | Path, config_spec: str | None = None, overrides: Sequence[str] = ()
) -> TensorSource:
    """An HF directory (config.json + safetensors), a training workdir (its latest step) or
    a step directory WORKDIR/checkpoints/N."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path}: input does not exist")
    if (path / "checkpoints").is_dir():
        step_dir, step = resolve_step(path, "latest")
        workdir = path
    elif path.parent.name == "checkpoints" and path.name.isdigit():
        workdir, step = path.parent.parent, int(path.name)
        if step not in checkpoint_steps(workdir):
            raise UserInputError(f"{path}: not a complete checkpoint step")
        step_dir = path
    elif (path / "config.json").is_file():
        return HFSource(path)
    else:
        raise UserInputError(
            f"{path}: neither a Hugging Face directory (config.json + safetensors), a training "
            "workdir (checkpoints/) nor a step directory (WORKDIR/checkpoints/N)"
        )
    meta = RunMetadata.from_run_config(load_run_config(workdir, config_spec, overrides))
    meta.metrics = read_metrics(workdir, step)
    meta.origin = f"step {step} of {workdir.name}"
    return OrbaxSource(step_dir, meta, label=str(path))


def check_compatible(sources: Sequence[TensorSource]) -> None:
    first = sources[0]
    for other in sources[1:]:
        if other.model_type != first.model_type:
            raise UserInputError(
                f"inputs have different architectures: {first.label} is {first.model_type}, "
                f"{other.label} is {other.model_type}"
            )
        difference = architecture_difference(first.config, other.config)
        if difference:
            raise UserInputError(
                f"inputs have different shapes: {first.label} and {other.label} differ in "
                f"{difference}"
            )


# --- the whole merge ---------------------------------------------------------------------


def _dtype_name(dtype: np.dtype) -> str:
    return "bfloat16" if dtype == np.dtype(ml_dtypes.bfloat16) else "float32"


def merge(
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    method: str = "uniform",
    weights: Sequence[float] | None = None,
    t: float = 0.5,
    density: float = 1.0,
    lam: float = 1.0,
    base: str | Path | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
    orbax_output: str | Path | None = None,
    config_spec: str | None = None,
    overrides: Sequence[str] = (),
    max_shard_size: str | int = "5GB",
) -> Path:
    """Merge `inputs` into a Hugging Face directory at `output` (and, with `orbax_output`, an
    Orbax checkpoint of the merged params). Every check runs before anything is written."""
    settings = check_settings(method, len(inputs), weights, t, density, base is not None, lam)
    output = Path(output)
    if output.exists() and not overwrite:
        raise UserInputError(f"{output}: already exists (pass --overwrite to replace it)")
    if orbax_output is not None and Path(orbax_output).exists() and not overwrite:
        raise UserInputError(f"{orbax_output}: already exists (pass --overwrite to replace it)")
    if dtype is not None and dtype not in EXPORT_DTYPES:
        raise UserInputError(f"--dtype {dtype!r}: expected one of {', '.join(EXPORT_DTYPES)}")
    sources: list[Any] = []
    try:
        for path in ([base] if base is not None else []) + list(inputs):
            sources.append(open_input(path, config_spec, overrides))
        check_compatible(sources)
        for source in sources:
            source.check()
            if getattr(source, "ignored", None):
                log.warning(
                    "%s: not merged, not part of the %s backbone: %s",
                    source.label, source.model_type, ", ".join(source.ignored),
                )  # fmt: skip
        base_source = sources[0] if base is not None else None
        models = sources[1:] if base is not None else sources
        config = models[0].config
        tensors = hf_tensors(config)
        collected: dict[str, Any] | None = {} if orbax_output is not None else None
        out_dtype = dtype or _dtype_name(models[0].dtype())

        def produce(tensor: HFTensor) -> np.ndarray:
            merged = settings.apply(
                lambda i: models[i].read(tensor),
                base_source.read(tensor) if base_source is not None else None,
            )
            merged = merged.astype(EXPORT_DTYPES[out_dtype])
            if collected is not None:
                _collect(collected, tensor, merged, config.num_layers)
            return merged

        note = (
            f"Merged by `jaxembed merge` ({settings.describe()}) from: "
            + ", ".join(f"`{m.label}`" for m in models)
            + (f"; base `{base_source.label}`" if base_source is not None else "")
            + "."
        )

        def save_orbax() -> None:
            if collected is not None:
                _save_orbax(Path(orbax_output), collected, overwrite)

        write_hf_directory(
            output,
            models[0],
            tensors,
            produce,
            out_dtype,
            overwrite=overwrite,
            max_shard_size=max_shard_size,
            card_note=note,
            desc="merge",
            before_commit=save_orbax,
        )
    finally:
        for source in sources:
            source.close()
    return output


def _collect(tree: dict[str, Any], tensor: HFTensor, merged: np.ndarray, layers: int) -> None:
    """Keep the merged tensor in our layout (stacked over layers) for the Orbax output."""
    node = tree
    for key in tensor.wmap.path[:-1]:
        node = node.setdefault(key, {})
    ours = np.asarray(tensor.wmap.to_ours(merged))
    leaf = tensor.wmap.path[-1]
    if tensor.layer is None:
        node[leaf] = np.ascontiguousarray(ours)
        return
    if leaf not in node:
        node[leaf] = np.empty((layers,) + ours.shape, ours.dtype)
    node[leaf][tensor.layer] = ours


def _save_orbax(path: Path, params: dict[str, Any], overwrite: bool) -> None:
    import orbax.checkpoint as ocp

    path = path.absolute()
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, {"params": params}, force=overwrite)
        checkpointer.wait_until_finished()


def parse_weights(values: Sequence[str] | None) -> list[float] | None:
    if values is None:
        return None
    try:
        return [float(v) for text in values for v in str(text).split(",") if v]
    except ValueError:
        raise UserInputError(f"--weights {' '.join(values)}: expected numbers") from None
