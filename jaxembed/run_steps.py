"""A training workdir's steps as export sources: choosing a step, reading the run's config,
and restoring params and LoRA adapters leaf by leaf (our stacked layout) as numpy, with the
checksums checked (`OrbaxSource`, which `jaxembed export` and `jaxembed merge` read)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from jaxembed import hf
from jaxembed.checkpoint_integrity import CorruptCheckpoint, check_array, saved_checksums
from jaxembed.config import RUN_CONFIG_NAME
from jaxembed.errors import UserInputError
from jaxembed.hf_directory import HFTensor, RunMetadata, canonical, our_shape, to_hf_layout
from jaxembed.models.lora import ADAPTER_A, ADAPTER_B, AdapterPair, low_rank_update


def checkpoint_steps(workdir: Path) -> list[int]:
    """Complete steps of a training workdir (Orbax renames a step directory into place only
    once it is whole, so digit-named directories are complete)."""
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(
        int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / "state").is_dir()
    )


def resolve_step(workdir: str | Path, step: str | int = "latest") -> tuple[Path, int]:
    """`WORKDIR/checkpoints/N` for `step` (a number or "latest"), or a clear error."""
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise UserInputError(f"{workdir}: workdir does not exist")
    steps = checkpoint_steps(workdir)
    if not steps:
        raise UserInputError(f"{workdir}: no complete checkpoints under {workdir / 'checkpoints'}")
    if str(step) == "latest":
        chosen = steps[-1]
    else:
        try:
            chosen = int(step)
        except ValueError:
            raise UserInputError(f"--step {step!r}: expected a number or 'latest'") from None
        if chosen not in steps:
            raise UserInputError(
                f"{workdir}: no checkpoint for step {chosen} (available: "
                f"{', '.join(map(str, steps))})"
            )
    return workdir / "checkpoints" / str(chosen), chosen


def open_run_step(
    workdir: Path,
    output: Path,
    step: str | int,
    overwrite: bool,
    config_spec: str | None,
    overrides: Sequence[str],
) -> tuple[Path, int, ml_collections.ConfigDict]:
    """What every export of a training step starts with: the output not in the way, the
    step's directory and number, and the run's config."""
    if output.exists() and not overwrite:
        raise UserInputError(f"{output}: already exists (pass --overwrite to replace it)")
    step_dir, chosen = resolve_step(workdir, step)
    return step_dir, chosen, load_run_config(workdir, config_spec, overrides)


def load_run_config(
    workdir: str | Path, config_spec: str | None = None, overrides: Sequence[str] = ()
) -> ml_collections.ConfigDict:
    """The training config of a workdir: `--config`/`--config.KEY=VALUE` as given to
    `jaxembed train`, else `WORKDIR/config.json`."""
    from jaxembed.config import apply_overrides, check_schema, default_config, load_config

    workdir = Path(workdir)
    if not workdir.is_dir():
        raise UserInputError(f"{workdir}: workdir does not exist")
    saved = workdir / RUN_CONFIG_NAME
    if config_spec or overrides:
        config = load_config(config_spec) if config_spec else default_config()
    elif saved.is_file():
        try:
            loaded = ml_collections.ConfigDict(json.loads(saved.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
            raise UserInputError(f"{saved}: not a JSON training config ({e})") from e
        check_schema(loaded, default_config(), str(saved))
        config = default_config()
        _update(config, loaded)
    else:
        raise UserInputError(
            f"{workdir}: no {RUN_CONFIG_NAME}; pass the training run's --config and "
            "--config.KEY=VALUE flags"
        )
    apply_overrides(config, overrides)
    return config


def _update(config: ml_collections.ConfigDict, values: ml_collections.ConfigDict) -> None:
    with config.ignore_type():
        for key, value in values.items():
            if isinstance(value, ml_collections.ConfigDict):
                _update(config[key], value)
            else:
                config[key] = tuple(value) if isinstance(value, list) else value


class _NoStepMetadataWarning(logging.Filter):
    """Orbax warns that the item directory (`step/state`) lacks the step's metadata file,
    which lives one level up by design: not worth a warning on every export."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Metadata file does not exist" not in record.getMessage()


class OrbaxSource:
    """Params of one training step, restored leaf by leaf (our stacked layout) as numpy.

    `backbone` is where the backbone sits in the params tree: () for an embedder,
    ("backbone",) for a reranker, whose LoRA adapters mirror the backbone alone."""

    def __init__(
        self,
        step_dir: Path,
        metadata: RunMetadata,
        label: str | None = None,
        backbone: tuple[str, ...] = (),
    ) -> None:
        import orbax.checkpoint as ocp

        self.backbone = backbone
        self.step_dir = Path(step_dir)
        self.label = label or str(step_dir)
        self.meta = metadata
        self.model_type = metadata.model_type
        self.config = metadata.config
        self._path = (self.step_dir / "state").absolute()
        absl_log = logging.getLogger("absl")
        if not any(isinstance(f, _NoStepMetadataWarning) for f in absl_log.filters):
            absl_log.addFilter(_NoStepMetadataWarning())
        self._checkpointer = ocp.PyTreeCheckpointer()
        tree = checkpoint_tree(self._checkpointer, self._path)
        self._param_sources = param_sources(self.step_dir, tree)
        self._adapters = adapter_settings(tree, metadata.run_config, self._path)
        self._cached: tuple[tuple[str, ...], np.ndarray] | None = None
        self._checksums = saved_checksums(self.step_dir)

    def _find(self, path: tuple[str, ...], root: str = "params") -> tuple[Path, Any]:
        """(Orbax directory holding the leaf, its metadata), the metadata None if absent."""
        sources = self._param_sources if root == "params" else [(self._path, self._adapters[0])]
        for directory, tree in sources:
            node = _walk(tree, path)
            if node is not None:
                return directory, node
        return self._path, None

    def _leaf_metadata(self, path: tuple[str, ...], root: str = "params") -> Any:
        return self._find(path, root)[1]

    def check(self) -> None:
        for wmap in hf.weight_maps(canonical(self.config)):
            leaf = self._leaf_metadata(self.backbone + wmap.path)
            want = our_shape(wmap, self.config.num_layers)
            name = ".".join(wmap.path)
            if leaf is None:
                raise UserInputError(f"{self._path}: param {name} is missing from the checkpoint")
            if tuple(leaf.shape) != want:
                raise UserInputError(
                    f"{self._path}: param {name} has shape {tuple(leaf.shape)}, but the training "
                    f"config gives {want} (is this the run's config?)"
                )

    def dtype(self) -> np.dtype:
        first = hf.weight_maps(canonical(self.config))[0]
        return np.dtype(self._leaf_metadata(self.backbone + first.path).dtype)

    def _restore(self, path: tuple[str, ...], root: str = "params") -> np.ndarray:
        import orbax.checkpoint as ocp

        directory, leaf = self._find(path, root)
        item: dict[str, Any] = {}
        node = item
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = leaf
        args = ocp.args.PyTreeRestore(
            item={root: item},
            restore_args={root: _map_leaves(item, ocp.RestoreArgs(restore_type=np.ndarray))},
            partial_restore=True,
        )
        value = lookup(self._checkpointer.restore(directory, args=args)[root], path)
        if directory == self._path:  # the step's own arrays carry checksums; the base does not
            try:
                check_array(value, self._checksums, ".".join((root, *path)))
            except CorruptCheckpoint as e:
                raise UserInputError(
                    f"{self.label}: corrupt checkpoint, {e}; export another step (--step)"
                ) from None
        return value

    def param(self, path: tuple[str, ...]) -> np.ndarray:
        """A param outside the backbone (e.g. a reranker's head), as stored."""
        return self._restore(path)

    def _leaf(self, path: tuple[str, ...]) -> np.ndarray:
        """One backbone leaf, with its LoRA update merged in when the run trained adapters."""
        if self._cached is None or self._cached[0] != path:
            self._cached = None  # drop the previous leaf before reading the next
            leaf = self._restore(self.backbone + path)
            if self._adapters is not None and path[-1] == "kernel":
                leaf = self._merge_adapter(path, leaf)
            self._cached = (path, leaf)
        return self._cached[1]

    def _merge_adapter(self, path: tuple[str, ...], kernel: np.ndarray) -> np.ndarray:
        scale = self._adapters[1]
        owner = path[:-2]
        names = (path[-2] + ADAPTER_A, path[-2] + ADAPTER_B)
        if self._leaf_metadata((*owner, names[0]), "adapters") is None:
            return kernel
        a, b = (self._restore((*owner, name), "adapters") for name in names)
        update = low_rank_update(AdapterPair(path, a, b), scale)
        return (kernel.astype(np.float32) + update).astype(kernel.dtype)

    def read(self, tensor: HFTensor) -> np.ndarray:
        leaf = self._leaf(tensor.wmap.path)
        ours = leaf if tensor.layer is None else leaf[tensor.layer]
        return to_hf_layout(tensor.wmap, ours, leaf.dtype)

    def write_metadata(self, directory: Path, dtype: str, card_note: str = "") -> None:
        self.meta.write(directory, dtype, card_note)

    def close(self) -> None:
        self._cached = None
        self._checkpointer.close()


def checkpoint_tree(checkpointer: Any, path: Path) -> dict[str, Any]:
    """The metadata tree of the Orbax train state at `path`."""
    try:
        tree = checkpointer.metadata(path).item_metadata.tree
    except (FileNotFoundError, ValueError, OSError) as e:
        raise UserInputError(f"{path}: not a readable Orbax checkpoint ({e})") from e
    if "params" not in tree and "adapters" not in tree:
        raise UserInputError(f"{path}: Orbax checkpoint has no 'params'")
    return tree


def param_sources(step_dir: Path, tree: dict[str, Any]) -> list[tuple[Path, Any]]:
    """Where the params of training step `step_dir` live, in lookup order, as (Orbax
    directory, metadata tree): the step itself, then for a LoRA run the frozen base saved once
    in `WORKDIR/frozen_params` (see `jaxembed.checkpoint`)."""
    import orbax.checkpoint as ocp

    from jaxembed.checkpoint import FROZEN_DIR

    state = (step_dir / "state").absolute()
    sources = []
    if isinstance(tree.get("params"), dict) and tree["params"]:
        sources.append((state, tree["params"]))
    frozen = (step_dir.parent.parent / FROZEN_DIR).absolute()
    if tree.get("adapters") and frozen.is_dir():
        with ocp.PyTreeCheckpointer() as checkpointer:
            sources.append((frozen, checkpoint_tree(checkpointer, frozen)["params"]))
    if not sources:
        raise UserInputError(
            f"{state}: the checkpoint holds no base model params"
            + (f" and {frozen} is missing" if tree.get("adapters") else "")
        )
    return sources


def adapter_settings(
    tree: dict[str, Any], run_config: ml_collections.ConfigDict, label: Path
) -> tuple[Any, float] | None:
    """The checkpoint's LoRA adapter tree (metadata) and the run's scale alpha/rank, or None
    for a full fine-tuning run."""
    adapters = tree.get("adapters")
    if not adapters:
        return None
    lora = run_config.lora
    if lora.rank < 1:
        raise UserInputError(
            f"{label}: the checkpoint has LoRA adapters but the run config has lora.rank="
            f"{lora.rank} (is this the run's config?)"
        )
    return adapters, lora.alpha / lora.rank


def restore_numpy(
    step_dir: Path, run_config: ml_collections.ConfigDict, *, with_params: bool
) -> tuple[dict[str, Any], float]:
    """Whole trees of an Orbax training step as numpy: "params" (if `with_params`) and
    "adapters" (if the run trained LoRA adapters), with the adapters' scale (0 if none)."""
    import orbax.checkpoint as ocp

    path = (step_dir / "state").absolute()
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        tree = checkpoint_tree(checkpointer, path)
        adapters = adapter_settings(tree, run_config, path)
        restored: dict[str, Any] = {}
        if with_params:
            # Later sources fill in what earlier ones lack (a LoRA step's frozen base).
            params: dict[str, Any] = {}
            for directory, meta in reversed(param_sources(step_dir, tree)):
                params.update(_restore_roots(checkpointer, directory, {"params": meta})["params"])
            restored["params"] = params
        if adapters is not None:
            restored.update(_restore_roots(checkpointer, path, {"adapters": adapters[0]}))
        return restored, (adapters[1] if adapters else 0.0)
    finally:
        checkpointer.close()


def _restore_roots(checkpointer: Any, path: Path, roots: dict[str, Any]) -> dict[str, Any]:
    """The subtrees `roots` (metadata trees) of the Orbax pytree at `path`, as numpy."""
    import orbax.checkpoint as ocp

    args = ocp.args.PyTreeRestore(
        item=roots,
        restore_args={
            k: _map_leaves(v, ocp.RestoreArgs(restore_type=np.ndarray)) for k, v in roots.items()
        },
        partial_restore=True,
    )
    return checkpointer.restore(path, args=args)


def _walk(tree: Any, path: tuple[str, ...]) -> Any:
    """The node at `path` of a nested dict, or None where the path leaves it."""
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def lookup(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _map_leaves(tree: dict[str, Any], value: Any) -> dict[str, Any]:
    return {k: _map_leaves(v, value) if isinstance(v, dict) else value for k, v in tree.items()}
