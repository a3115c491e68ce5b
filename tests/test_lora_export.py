"""A LoRA run end to end: `jaxembed train` with adapters on a tiny HF Llama, then `jaxembed
export` (merged weights) equals the base plus the low-rank update, `jaxembed export
--adapter` is a PEFT adapter that PEFT merges into the same weights, and bad LoRA settings
are one clear error."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from safetensors.numpy import load_file, save_file

from jaxembed.cli import main

from tiny_models import WORDS, make_hf_model

RANK, ALPHA = 4, 8.0
STEPS = 2


def _write_train_file(path, records: int = 24, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)

    def text(n):
        return " ".join(rng.choice(WORDS, size=n))

    lines = [
        json.dumps({"query": text(4), "positives": [text(8)], "negatives": [text(8)]})
        for _ in range(records)
    ]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    base = root / "base"
    make_hf_model("llama", base)
    _write_train_file(root / "train.jsonl")
    flags = [
        "--config", "configs/tiny.py",
        "--config.model.init=hf",
        f"--config.model.hf_path={base}",
        f"--config.data.train_files={root / 'train.jsonl'}",
        "--config.data.global_batch_size=8",
        "--config.data.query_max_length=16",
        "--config.data.passage_max_length=16",
        "--config.data.prefetch=0",
        f"--config.lora.rank={RANK}",
        f"--config.lora.alpha={ALPHA}",
        "--config.lora.dropout=0.1",
        f"--config.train.steps={STEPS}",
        "--config.train.checkpoint_every=1",
        "--config.optimizer.warmup_steps=0",
        "--config.optimizer.learning_rate=0.01",
    ]  # fmt: skip
    workdir = root / "workdir"
    assert main(["train", "--workdir", str(workdir), *flags]) == 0
    merged, adapter = root / "merged", root / "adapter"
    assert main(["export", "--workdir", str(workdir), "--output", str(merged)]) == 0
    assert main(["export", "--workdir", str(workdir), "--output", str(adapter), "--adapter"]) == 0
    return dict(root=root, base=base, workdir=workdir, flags=flags, merged=merged, adapter=adapter)


def _checkpoint(workdir, step=STEPS):
    return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")


def _frozen(workdir):
    return ocp.StandardCheckpointer().restore((workdir / "frozen_params").absolute())["params"]


def test_the_base_is_saved_once_and_steps_hold_the_adapters(run):
    workdir = run["workdir"]
    base = load_file(str(run["base"] / "model.safetensors"))
    # The frozen base, once per run: layer 0's q_proj is the base model's.
    q = base["layers.0.self_attn.q_proj.weight"]
    ours = np.asarray(_frozen(workdir)["layers"]["self_attn"]["q_proj"]["kernel"][0])
    np.testing.assert_array_equal(ours.reshape(q.shape[1], -1).T, q)
    # Each step holds what was trained (and its optimizer state), not the base again.
    for step in range(1, STEPS + 1):
        state = _checkpoint(workdir, step)
        assert state.get("params") is None
        b = np.asarray(state["adapters"]["layers"]["mlp"]["down_proj_lora_b"])
        assert np.abs(b).max() > 0  # B starts at zero: training moved it


def test_resume_takes_the_base_from_the_run_in_either_step_format(run, tmp_path):
    """Resuming a step written before the base moved out of step checkpoints (it holds the
    whole state) and resuming a current step (base in WORKDIR/frozen_params) after the HF
    directory the run started from has changed give the same loss: the base is the run's own
    copy. The old-format step also exports as before, and its resumed run saves its base."""
    old, changed = tmp_path / "old", tmp_path / "changed"
    for workdir in (old, changed):
        shutil.copytree(run["workdir"], workdir)
    whole = _checkpoint(old)
    whole["params"] = _frozen(old)
    state_dir = (old / "checkpoints" / str(STEPS) / "state").absolute()
    shutil.rmtree(state_dir)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(state_dir, whole)
        checkpointer.wait_until_finished()
    shutil.rmtree(old / "frozen_params")
    out = tmp_path / "merged"
    assert main(["export", "--workdir", str(old), "--output", str(out)]) == 0
    exported = load_file(str(out / "model.safetensors"))
    for name, tensor in load_file(str(run["merged"] / "model.safetensors")).items():
        np.testing.assert_array_equal(exported[name], tensor, err_msg=name)

    moved = tmp_path / "base"
    shutil.copytree(run["base"], moved)
    weights = load_file(str(moved / "model.safetensors"))
    save_file({k: v + 1.0 for k, v in weights.items()}, str(moved / "model.safetensors"))
    flags = [*run["flags"], f"--config.train.steps={STEPS + 1}"]
    losses = []
    for workdir, hf_path in ((old, run["base"]), (changed, moved)):
        args = [*flags, f"--config.model.hf_path={hf_path}"]
        assert main(["train", "--workdir", str(workdir), *args]) == 0
        last = (workdir / "metrics.jsonl").read_text().splitlines()[-1]
        losses.append(json.loads(last)["loss"])
    assert losses[0] == losses[1], losses
    assert [
        r["step"] for r in map(json.loads, (changed / "metrics.jsonl").read_text().splitlines())
    ][-1] == STEPS + 1
    before, after = _checkpoint(changed, STEPS), _checkpoint(changed, STEPS + 1)
    b_before = before["adapters"]["layers"]["mlp"]["up_proj_lora_b"]
    assert np.abs(after["adapters"]["layers"]["mlp"]["up_proj_lora_b"] - b_before).max() > 0
    assert (old / "frozen_params").is_dir()
    assert _checkpoint(old, STEPS + 1).get("params") is None
    for x, y in zip(*(jax.tree.leaves(_frozen(w)) for w in (old, changed)), strict=True):
        np.testing.assert_array_equal(x, y)


def test_export_without_the_frozen_base_is_a_clear_error(run, tmp_path, capsys):
    workdir = tmp_path / "workdir"
    shutil.copytree(run["workdir"], workdir)
    shutil.rmtree(workdir / "frozen_params")
    out = tmp_path / "out"
    _fails(["export", "--workdir", str(workdir), "--output", str(out)], capsys, "frozen_params")
    assert not out.exists()


def test_merged_export_is_the_base_plus_the_low_rank_update(run):
    base = load_file(str(run["base"] / "model.safetensors"))
    merged = load_file(str(run["merged"] / "model.safetensors"))
    adapters = _checkpoint(run["workdir"])["adapters"]["layers"]
    scale = ALPHA / RANK
    adapted = 0
    for name, weight in base.items():
        parts = name.split(".")  # layers.{i}.{self_attn|mlp}.{proj}.weight
        if len(parts) == 5 and parts[3].endswith("_proj"):
            layer, block, proj = int(parts[1]), parts[2], parts[3]
            a = np.asarray(adapters[block][f"{proj}_lora_a"][layer], np.float64)
            b = np.asarray(adapters[block][f"{proj}_lora_b"][layer], np.float64)
            delta = a.reshape(-1, RANK) @ b.reshape(RANK, -1)  # [in, out]
            expected = weight + scale * delta.T
            np.testing.assert_allclose(merged[name], expected, atol=1e-6, rtol=0)
            assert np.abs(merged[name] - weight).max() > 1e-6
            adapted += 1
        else:  # embeddings and norms are frozen and not adapted
            np.testing.assert_array_equal(merged[name], weight)
    assert adapted == 7 * 2  # every projection of both layers


def test_peft_adapter_merges_into_the_same_weights(run):
    peft = pytest.importorskip("peft")
    import torch

    from jaxembed.hf_modeling.modeling_bidirectional import BidirectionalLlamaModel

    config = json.loads((run["adapter"] / "adapter_config.json").read_text())
    assert config["r"] == RANK and config["lora_alpha"] == ALPHA
    assert sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    base = BidirectionalLlamaModel.from_pretrained(str(run["base"]), dtype=torch.float32)
    with_adapter = peft.PeftModel.from_pretrained(base, str(run["adapter"])).eval()
    merged_model = BidirectionalLlamaModel.from_pretrained(str(run["merged"])).eval()
    # PEFT's unmerged LoRA forward equals our merged export's forward ...
    ids = torch.tensor(np.random.default_rng(0).integers(4, len(WORDS) + 4, size=(3, 10)))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        peft_out = with_adapter(input_ids=ids, attention_mask=mask).last_hidden_state
        merged_out = merged_model(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = mask.bool().numpy()
    np.testing.assert_allclose(peft_out.numpy()[keep], merged_out.numpy()[keep], atol=1e-5)
    # ... and PEFT's own merge gives our merged weights.
    state = with_adapter.merge_and_unload().state_dict()
    merged = load_file(str(run["merged"] / "model.safetensors"))
    assert set(state) == set(merged)
    for name, tensor in state.items():
        np.testing.assert_allclose(tensor.numpy(), merged[name], atol=1e-6, rtol=0, err_msg=name)


def _fails(args, capsys, *needles):
    assert main(args) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    return err


def test_export_errors(run, tmp_path, capsys):
    out = tmp_path / "out"
    workdir = ["--workdir", str(run["workdir"]), "--output", str(out)]
    full_run = [*run["flags"], "--config.lora.rank=0"]
    # The saved checkpoint has adapters; a config without LoRA does not describe it.
    _fails(["export", *workdir, *full_run], capsys, "lora.rank=0")
    _fails(["export", *workdir, "--adapter", *full_run], capsys, "not a LoRA run")
    assert not out.exists()


@pytest.mark.parametrize(
    "setting,message",
    [
        ("--config.lora.rank=-1", "lora.rank=-1"),
        ("--config.lora.targets=attention", "matches no projection"),
        ("--config.lora.targets=(q", "not a regular expression"),
        ("--config.lora.dropout=1.0", "dropout"),
    ],
)
def test_bad_lora_settings(run, tmp_path, capsys, setting, message):
    workdir = tmp_path / "w"
    _fails(["train", "--workdir", str(workdir), *run["flags"], setting], capsys, message)
    assert not (workdir / "checkpoints").exists()
