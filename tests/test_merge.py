"""`jaxembed merge`: uniform / weighted / slerp / ties against numpy references written here
from mergekit's published definitions, read back with the safetensors library; Orbax inputs
and output; peak memory of a 6-way merge; bad input is one clear error, nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxembed import hf
from jaxembed.cli import main
from jaxembed.models import architectures

from tiny_models import make_hf_model


def _tensors(directory: Path) -> dict[str, np.ndarray]:
    """All tensors of a directory by the reference reader, "model." prefix dropped."""
    index = directory / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.is_file()
        else ["model.safetensors"]
    )
    out = {}
    for name in files:
        out.update({k.removeprefix("model."): v for k, v in load_file(directory / name).items()})
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Three tiny Llamas saved by transformers, and a base model for TIES."""
    root = tmp_path_factory.mktemp("models")
    dirs = []
    for seed in range(3):
        make_hf_model("llama", root / f"m{seed}", seed=seed)
        dirs.append(root / f"m{seed}")
    make_hf_model("llama", root / "base", seed=9)
    return dirs, root / "base"


@pytest.fixture(scope="module")
def uniform(models, tmp_path_factory):
    dirs, _ = models
    out = tmp_path_factory.mktemp("uniform") / "merged"
    assert main(["merge", "--inputs", *map(str, dirs), "--output", str(out)]) == 0
    return out


def test_uniform_merge_is_the_numpy_mean(models, uniform):
    from transformers import AutoModel

    dirs, _ = models
    inputs = [_tensors(d) for d in dirs]
    merged = _tensors(uniform)
    assert merged.keys() == inputs[0].keys()
    for name, value in merged.items():
        expected = np.mean(np.stack([x[name] for x in inputs]).astype(np.float64), axis=0)
        assert value.dtype == np.float32
        np.testing.assert_allclose(value, expected, rtol=1e-6, atol=0, err_msg=name)
    # transformers loads the merged directory (config and tokenizer came from the first).
    model = AutoModel.from_pretrained(str(uniform))
    np.testing.assert_array_equal(
        model.state_dict()["layers.1.mlp.down_proj.weight"].numpy(),
        merged["layers.1.mlp.down_proj.weight"],
    )


def test_weighted_merge(models, tmp_path):
    dirs, _ = models
    out = tmp_path / "weighted"
    args = ["merge", "--inputs", *map(str, dirs), "--method", "weighted", "--output", str(out)]
    assert main(args + ["--weights", "1", "2", "5"]) == 0
    inputs = [_tensors(d) for d in dirs]
    for name, value in _tensors(out).items():
        expected = (
            sum(w * x[name].astype(np.float64) for w, x in zip((1, 2, 5), inputs, strict=True)) / 8
        )
        np.testing.assert_allclose(value, expected, rtol=1e-6, atol=0, err_msg=name)


def _reference_slerp(t, v0, v1, threshold=0.9995, eps=1e-8):
    """mergekit's slerp(): normalized flat tensors, lerp when nearly colinear."""
    v0, v1 = v0.astype(np.float64), v1.astype(np.float64)
    n0, n1 = np.linalg.norm(v0), np.linalg.norm(v1)
    u0 = v0 / n0 if n0 > eps else v0
    u1 = v1 / n1 if n1 > eps else v1
    dot = np.sum(u0 * u1)
    if np.abs(dot) > threshold:
        return (1 - t) * v0 + t * v1, "lerp"
    theta_0 = np.arccos(dot)
    sin_theta_0 = np.sin(theta_0)
    theta_t = theta_0 * t
    s0 = np.sin(theta_0 - theta_t) / sin_theta_0
    s1 = np.sin(theta_t) / sin_theta_0
    return s0 * v0 + s1 * v1, "slerp"


def test_slerp_matches_mergekit_definition(models, tmp_path):
    dirs, _ = models
    a = _tensors(dirs[0])
    # A second model with two tensors (anti)colinear to the first's: the lerp fallback.
    other = tmp_path / "other"
    shutil.copytree(dirs[1], other)
    b = _tensors(dirs[1])
    b["norm.weight"] = 3.0 * a["norm.weight"]
    b["layers.0.input_layernorm.weight"] = -2.0 * a["layers.0.input_layernorm.weight"]
    save_file(b, other / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "slerp"
    args = ["merge", "--inputs", str(dirs[0]), str(other), "--method", "slerp", "--t", "0.3"]
    assert main(args + ["--output", str(out)]) == 0
    branches = set()
    for name, value in _tensors(out).items():
        expected, branch = _reference_slerp(0.3, a[name], b[name])
        branches.add(branch)
        np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-7, err_msg=name)
    assert branches == {"lerp", "slerp"}


def _reference_ties(base, xs, weights, density, lam):
    """mergekit TIES: magnitude top-k of each task vector (argsort), weighted, sign elected
    by the sum (>= 0 is positive), disjoint mean normalized by the agreeing weights."""
    deltas = []
    for x, w in zip(xs, weights, strict=True):
        delta = x.astype(np.float64) - base.astype(np.float64)
        k = int(density * delta.size)
        mask = np.zeros(delta.size)
        mask[np.argsort(-np.abs(delta).reshape(-1))[:k]] = 1
        deltas.append(w * delta * mask.reshape(delta.shape))
    deltas = np.stack(deltas)
    weights = np.array(weights, np.float64).reshape((-1,) + (1,) * base.ndim)
    majority = (deltas.sum(axis=0) >= 0) * 2.0 - 1.0
    mask = np.sign(deltas) == majority
    mixed = (deltas * mask).sum(axis=0)
    divisor = (weights * mask).sum(axis=0)
    divisor[divisor == 0] = 1
    return base.astype(np.float64) + lam * mixed / divisor


def test_ties_matches_mergekit_definition(models, tmp_path):
    dirs, base_dir = models
    out = tmp_path / "ties"
    args = ["merge", "--inputs", *map(str, dirs), "--method", "ties", "--base", str(base_dir)]
    args += ["--density", "0.4", "--weights", "1", "0.5", "2", "--lambda", "0.8"]
    assert main(args + ["--output", str(out)]) == 0
    base, inputs = _tensors(base_dir), [_tensors(d) for d in dirs]
    merged = _tensors(out)
    for name, value in merged.items():
        expected = _reference_ties(base[name], [x[name] for x in inputs], (1, 0.5, 2), 0.4, 0.8)
        np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-7, err_msg=name)
    # Trimming and election did something: not the plain weighted average of task vectors.
    name = "layers.0.mlp.up_proj.weight"
    plain = (
        base[name]
        + 0.8
        * sum(w * (x[name] - base[name]) for w, x in zip((1, 0.5, 2), inputs, strict=True))
        / 3.5
    )
    assert np.abs(merged[name] - plain).max() > 1e-3


def _orbax_workdir(hf_dir: Path, workdir: Path, step: int) -> Path:
    """A workdir holding `hf_dir`'s params as an Orbax step, with its config.json."""
    from jaxembed.checkpoint import Checkpointer
    from jaxembed.config import default_config

    config = architectures.LLAMA.config_from_hf(hf.read_hf_config(hf_dir))
    checkpointer = Checkpointer(workdir / "checkpoints", async_save=False)
    checkpointer.save(step, {"params": hf.load_params(hf_dir, config)}, None)
    checkpointer.close()
    run_config = default_config()
    run_config.model.init = "hf"
    run_config.model.hf_path = str(hf_dir)
    (workdir / "config.json").write_text(run_config.to_json())
    return workdir


def test_orbax_inputs_and_output(models, uniform, tmp_path):
    import jax
    import orbax.checkpoint as ocp

    dirs, _ = models
    w0 = _orbax_workdir(dirs[0], tmp_path / "w0", 4)
    w1 = _orbax_workdir(dirs[1], tmp_path / "w1", 5)
    out, orbax_out = tmp_path / "merged", tmp_path / "merged_orbax"
    # A workdir (latest step), a step directory and an HF directory, mixed.
    inputs = [str(w0), str(w1 / "checkpoints" / "5"), str(dirs[2])]
    args = ["merge", "--inputs", *inputs, "--output", str(out), "--orbax-output", str(orbax_out)]
    assert main(args) == 0
    merged, reference = _tensors(out), _tensors(uniform)
    assert merged.keys() == reference.keys()
    for name, value in reference.items():
        np.testing.assert_array_equal(merged[name], value, err_msg=name)
    # The first input was an Orbax run: its directory is a full bidirectional export.
    assert json.loads((out / "config.json").read_text())["auto_map"]
    params = ocp.StandardCheckpointer().restore(orbax_out.absolute())["params"]
    imported = hf.load_params(out, architectures.LLAMA.config_from_hf(hf.read_hf_config(out)))
    flat = dict(jax.tree_util.tree_flatten_with_path(imported)[0])
    restored = jax.tree_util.tree_flatten_with_path(params)[0]
    assert len(restored) == len(flat)
    for path, value in restored:
        np.testing.assert_array_equal(np.asarray(value), np.asarray(flat[path]), str(path))


def _no_leftovers(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if p.name.startswith(".")], "temp dir left"


def test_bad_input_is_one_clear_error_and_nothing_is_written(models, tmp_path, capsys):
    dirs, base_dir = models
    make_hf_model("qwen2", tmp_path / "qwen2")
    make_hf_model("llama", tmp_path / "wider", intermediate_size=64)
    broken = tmp_path / "broken"
    shutil.copytree(dirs[1], broken)
    tensors = load_file(broken / "model.safetensors")
    del tensors["layers.1.mlp.up_proj.weight"]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    a, b = str(dirs[0]), str(dirs[1])
    out = tmp_path / "out"
    capsys.readouterr()  # the set-up's own output
    cases = [
        ([a, str(tmp_path / "qwen2")], [], f"different architectures: {a} is llama, "),
        ([a, str(tmp_path / "wider")], [], "differ in intermediate_size: 48 vs 64"),
        ([a, str(broken)], [], "weight 'layers.1.mlp.up_proj.weight' is missing"),
        ([a, str(tmp_path / "w" / "checkpoints" / "3")], [], "input does not exist"),
        ([a, str(tmp_path)], [], "neither a Hugging Face directory"),
        ([a, b, a], ["--method", "slerp"], "slerp merges exactly 2 inputs (got 3)"),
        ([a, b], ["--method", "ties"], "--method ties needs --base"),
        ([a, b], ["--method", "weighted", "--weights", "1"], "--weights has 1 values for 2"),
        ([a, b], ["--base", str(base_dir)], "--base is only used by --method ties"),
    ]
    for inputs, extra, message in cases:
        assert main(["merge", "--inputs", *inputs, "--output", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (message, err)
        assert not out.exists()
        _no_leftovers(tmp_path)

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["merge", "--inputs", a, b, "--output", str(out)]) == 2
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_failure_midway_leaves_nothing(models, tmp_path, monkeypatch):
    from jaxembed import merge

    dirs, _ = models
    read = merge.HFSource.read
    calls = []

    def failing_read(self, tensor):
        calls.append(tensor.name)
        if len(calls) == 20:
            raise OSError("input vanished")
        return read(self, tensor)

    monkeypatch.setattr(merge.HFSource, "read", failing_read)
    with pytest.raises(OSError, match="input vanished"):
        merge.merge(dirs, tmp_path / "out", orbax_output=tmp_path / "orbax")
    assert not (tmp_path / "out").exists() and not (tmp_path / "orbax").exists()
    _no_leftovers(tmp_path)


PEAK_SCRIPT = """
import json, sys
from jaxembed.merge import merge

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

before = status("VmRSS:")
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
except OSError:
    pass
merge(sys.argv[2:], sys.argv[1])
print(json.dumps({"before": before, "peak": status("VmHWM:")}))
"""


def test_six_way_merge_peak_memory_stays_below_one_model(tmp_path):
    """Six 28 MB models: the merge's peak RSS growth stays below one model's size (loading
    them all would take six; averaging one model at a time, at least one)."""
    from transformers import AutoConfig

    from jaxembed.hf_directory import hf_tensors
    from jaxembed.models.llama import LlamaConfig

    config = LlamaConfig(
        vocab_size=1024, hidden_size=256, intermediate_size=768, num_layers=8, num_heads=4,
        num_kv_heads=4,
    )  # fmt: skip
    hf_config = AutoConfig.for_model(
        "llama", vocab_size=1024, hidden_size=256, intermediate_size=768, num_hidden_layers=8,
        num_attention_heads=4, num_key_value_heads=4,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    inputs = []
    for i in range(6):
        directory = tmp_path / f"m{i}"
        directory.mkdir()
        hf_config.to_json_file(str(directory / "config.json"))
        tensors = {
            t.name: rng.standard_normal(t.wmap.hf_shape, np.float32) for t in hf_tensors(config)
        }
        save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
        inputs.append(str(directory))
    model_bytes = 4 * config.num_params()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(tmp_path / "out"), *inputs],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    memory = json.loads(result.stdout.splitlines()[-1])
    growth = memory["peak"] - memory["before"]
    print(f"6-way merge of {model_bytes / 1e6:.1f} MB models: peak RSS growth "
          f"{growth / 1e6:.1f} MB = {growth / model_bytes:.2f} x one model")  # fmt: skip
    assert growth < model_bytes / 2
    merged = _tensors(tmp_path / "out")
    name = "layers.7.mlp.down_proj.weight"
    stacked = np.stack([load_file(Path(d) / "model.safetensors")[name] for d in inputs])
    expected = np.mean(stacked.astype(np.float64), axis=0)
    np.testing.assert_allclose(merged[name], expected, rtol=1e-6, atol=0)


def test_bert_merge(minilm_dir, tmp_path):
    """A BERT sentence-transformer merged with a perturbed copy: the mean of the backbone's
    tensors; tensors outside the backbone (pooler, position ids) are left out."""
    from sentence_transformers import SentenceTransformer

    other = tmp_path / "other"
    shutil.copytree(minilm_dir, other)
    original = load_file(minilm_dir / "model.safetensors")
    rng = np.random.default_rng(0)
    perturbed = {
        k: v + np.float32(0.01) * rng.standard_normal(v.shape, np.float32)
        if v.dtype == np.float32 else v
        for k, v in original.items()
    }  # fmt: skip
    save_file(perturbed, other / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "merged"
    assert main(["merge", "--inputs", str(minilm_dir), str(other), "--output", str(out)]) == 0
    merged = load_file(out / "model.safetensors")
    outside = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
    assert merged.keys() == original.keys() - outside
    for name, value in merged.items():
        expected = (original[name].astype(np.float64) + perturbed[name]) / 2
        np.testing.assert_allclose(value, expected, rtol=1e-6, atol=0, err_msg=name)
    embedding = SentenceTransformer(str(out), device="cpu").encode(["merged models"])
    assert embedding.shape == (1, 384) and abs(np.linalg.norm(embedding) - 1) < 1e-5
