"""`jaxembed plan`: TPU slice names against Cloud TPU's tables, the real XLA:TPU compile of the
tiny config (memory against hand-counted parameter bytes, loop-aware compiler FLOPs against a
hand count of the matmuls), an over-full chip with the knob to turn, and bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from jaxembed.cli import main
from jaxembed.errors import UserInputError
from jaxembed.plan import parse_topology
from jaxembed.plan.topology import GiB

TINY = str(Path(__file__).parents[1] / "configs" / "tiny.py")
# configs/tiny.py's model, 4 layers so the layer scan really loops.
VOCAB, HIDDEN, MLP, LAYERS, HEADS, KV_HEADS = 512, 64, 128, 4, 4, 2
BATCH, NEGATIVES, LENGTH = 16, 1, 64
TINY_SHAPE = (
    f"--config.data.num_negatives={NEGATIVES}",
    f"--config.data.query_max_length={LENGTH}",
    f"--config.data.passage_max_length={LENGTH}",
)


@pytest.mark.parametrize(
    "name, grid, chips, accelerator_type",
    [
        # Cloud TPU's shape tables: v4/v5p types count TensorCores (2 per chip).
        ("v5p-128", "v5p:4x4x4", 64, "v5p-128"),
        ("v5p-8", "v5p:2x2x1", 4, "v5p-8"),
        ("v4-32", "v4:2x2x4", 16, "v4-32"),
        ("v5litepod-16", "v5e:4x4", 16, "v5litepod-16"),
        ("v5e-8", "v5e:2x4", 8, "v5litepod-8"),
        ("v6e-256", "v6e:16x16", 256, "v6e-256"),
        ("v5p:2x2x2", "v5p:2x2x2", 8, "v5p-16"),
    ],
)
def test_topology_names(name, grid, chips, accelerator_type):
    topology = parse_topology(name)
    assert (topology.grid_name, topology.num_chips) == (grid, chips)
    assert topology.accelerator_type == accelerator_type


def test_chip_table():
    v5p, v5e = parse_topology("v5p-8").chip, parse_topology("v5e-4").chip
    assert (v5p.hbm_bytes, v5p.peak_bf16_flops) == (95 * GiB, 459e12)
    assert (v5e.hbm_bytes, v5e.peak_bf16_flops) == (16 * GiB, 197e12)


@pytest.mark.parametrize("name", ["v7-8", "v5p-100", "v5p:2x2", "v6e:4x4x4", "tpu", "v5e-3"])
def test_unknown_topologies(name):
    with pytest.raises(UserInputError, match="TPU topology"):
        parse_topology(name)


def test_without_libtpu_the_error_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "libtpu", None)  # makes `import libtpu` fail
    assert main(["plan", "--config", TINY, "--topology", "v5p-8"]) == 2
    assert "pip install -e '.[tpu]'" in capsys.readouterr().err


def _plan(directory: Path, *overrides: str) -> dict:
    """`jaxembed plan --json` of the tiny config with LAYERS layers on a v5p-8."""
    pytest.importorskip("libtpu", reason="the [tpu] extra (libtpu) is not installed")
    out = directory / "plan.json"
    args = ["plan", "--config", TINY, "--topology", "v5p:2x2x1", "--json", str(out)]
    args += [f"--config.model.num_layers={LAYERS}", f"--config.data.global_batch_size={BATCH}"]
    assert main([*args, *TINY_SHAPE, *overrides]) == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def tiny_plan(tmp_path_factory):
    return _plan(tmp_path_factory.mktemp("plan"))


def _hand_param_count() -> int:
    head_dim = HIDDEN // HEADS
    attention = HIDDEN * HEADS * head_dim * 2 + HIDDEN * KV_HEADS * head_dim * 2
    per_layer = attention + 3 * HIDDEN * MLP + 2 * HIDDEN  # + two RMSNorm scales
    return VOCAB * HIDDEN + LAYERS * per_layer + HIDDEN  # + final norm


def test_tiny_plan_memory(tiny_plan):
    r = tiny_plan
    assert (r["topology"], r["chips"], r["mesh"]) == (
        "v5p-8",
        4,
        {"data": 4, "fsdp": 1, "tensor": 1},
    )
    # mesh data=4: every chip holds all f32 params and both AdamW moments (+ step counters).
    params = 4 * _hand_param_count()
    assert r["model_params"] == _hand_param_count()
    assert r["params_bytes"] == params
    assert 2 * params <= r["optimizer_bytes"] <= 2 * params + 64
    # Packed (the default), at its worst case of one text a row: ids, attention and pool
    # masks, segment ids and positions per token, a slot per text, and the doc ids.
    group = 1 + NEGATIVES
    per_row = 5 * LENGTH + 1 + group * (5 * LENGTH + 1) + group
    assert r["batch_bytes"] == 4 * (BATCH // 4) * per_row
    assert r["temp_bytes"] > 0 and r["total_bytes"] >= params * 3 + r["temp_bytes"]
    assert r["fits"] and r["total_bytes"] < r["hbm_per_chip"] == 95 * GiB
    assert r["advice"] == []


def test_tiny_plan_counts_every_layer(tiny_plan):
    # Hand count of one step's matmul FLOPs (forward 2mnk, backward twice that; no remat, no
    # GradCache in configs/tiny.py), queries and passages through the same 4 layers.
    head_dim = HIDDEN // HEADS
    tokens = BATCH * (2 + NEGATIVES) * LENGTH
    dense = HIDDEN * (HEADS + 2 * KV_HEADS) * head_dim + HEADS * head_dim * HIDDEN
    dense += 3 * HIDDEN * MLP
    attention = 2 * 2 * LENGTH * HEADS * head_dim  # scores and weighted sum, per token
    expected = 3 * LAYERS * tokens * (2 * dense + attention)
    r = tiny_plan
    # PaLM's 6N count (the MFU numerator) also counts the RMSNorm scales as parameters.
    norms = 6 * (2 * HIDDEN * LAYERS + HIDDEN) * tokens
    assert r["model_flops_per_step"] == pytest.approx(expected + norms, rel=1e-12)
    # XLA's cost analysis counts a loop body once; the plan must count all 4 layers. What the
    # compiler adds on top (norms, softmax, loss, optimizer) is a few percent here.
    ratio = r["compiler_flops_per_chip"] * r["chips"] / expected
    assert 1.0 < ratio < 1.25, ratio
    assert r["cost_model_seconds"] > 0
    peak = 4 * 459e12 * r["cost_model_seconds"]
    assert r["mfu"] == pytest.approx(r["model_flops_per_step"] / peak, rel=1e-12)


def test_lora_plan_holds_optimizer_state_for_the_adapters_only(tiny_plan, tmp_path):
    rank = 8
    r = _plan(tmp_path, f"--config.lora.rank={rank}")
    head_dim = HIDDEN // HEADS
    per_layer = (HIDDEN + HEADS * head_dim) * 2 + (HIDDEN + KV_HEADS * head_dim) * 2
    per_layer += 3 * (HIDDEN + MLP)
    adapters = LAYERS * rank * per_layer
    # Replicated (mesh data=4): every chip holds the f32 base, the adapters and their moments.
    assert r["params_bytes"] == tiny_plan["params_bytes"] + 4 * adapters
    assert 2 * 4 * adapters <= r["optimizer_bytes"] <= 2 * 4 * adapters + 64
    # Frozen weights get no weight gradient: 4N per token instead of 6N.
    base_6n = tiny_plan["model_flops_per_step"]
    tokens = BATCH * (2 + NEGATIVES) * LENGTH
    non_embedding = _hand_param_count() - VOCAB * HIDDEN
    assert r["model_flops_per_step"] == pytest.approx(base_6n - 2 * non_embedding * tokens)


def test_reranker_plan(tiny_plan, tmp_path):
    r = _plan(tmp_path, "--config.model.task=reranker")
    # The backbone plus the score head ([hidden, 1] kernel and a bias), f32 on every chip.
    assert r["params_bytes"] == tiny_plan["params_bytes"] + 4 * (HIDDEN + 1)
    # One joined pair per passage: no query tower.
    per_token = tiny_plan["model_flops_per_step"] / (BATCH * (2 + NEGATIVES) * LENGTH)
    assert r["model_flops_per_step"] == pytest.approx(per_token * BATCH * (1 + NEGATIVES) * LENGTH)
    assert r["fits"]


def test_over_full_chip_names_the_knob(tmp_path, capsys):
    pytest.importorskip("libtpu", reason="the [tpu] extra (libtpu) is not installed")
    out = tmp_path / "plan.json"
    # ~1B params replicated on each of 4 v5e chips (16 GiB): params + AdamW alone need 11.5 GiB.
    args = ["plan", "--config", TINY, "--topology", "v5e:2x2", "--json", str(out)]
    args += ["--config.model.vocab_size=1000000", "--config.model.hidden_size=1024"]
    args += ["--config.model.intermediate_size=1024", "--config.model.num_layers=1"]
    args += ["--config.model.num_heads=8", "--config.model.num_kv_heads=8"]
    assert main(args) == 0
    text = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert not r["fits"] and "DOES NOT FIT" in text
    params = 4 * (1_000_000 * 1024 + (4 * 1024 * 1024 + 3 * 1024 * 1024 + 2 * 1024) + 1024)
    assert r["params_bytes"] == params
    assert r["advice"][0].startswith("params + optimizer state take")
    assert "--config.mesh.data=1 --config.mesh.fsdp=-1" in r["advice"][0]


@pytest.mark.parametrize(
    "topology, overrides, message",
    [
        ("v9-8", [], "unknown TPU topology 'v9-8'"),
        ("v5p-8", ["--config.mesh.data=8"], "does not fit 4 devices"),
        ("v5p-8", ["--config.mesh.data=3"], "does not fit 4 devices"),
        ("v5p-8", ["--config.data.global_batch_size=6"], "not divisible by the data-parallel"),
        (
            "v5p-8",
            ["--config.gradcache.enabled=true", "--config.gradcache.chunk_size=6"],
            "gradcache.chunk_size=6: must divide 16 rows",
        ),
        ("v5p-8", ["--config.model.init=hf", "--config.model.hf_path=/nope"], "model.hf_path"),
    ],
)
def test_bad_input(topology, overrides, message, capsys):
    if not topology.startswith("v9"):
        pytest.importorskip("libtpu", reason="the [tpu] extra (libtpu) is not installed")
    assert main(["plan", "--config", TINY, "--topology", topology, *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxembed plan: error: ") and message in err, err


def test_an_implausible_cost_model_time_gives_no_mfu():
    from jaxembed.plan import PlanReport, format_report

    fields = dict(
        config="c", topology="v5litepod-4", grid="v5e:2x2", chips=4, mesh={"data": 4},
        model_params=1, hbm_per_chip=16 * GiB, params_bytes=1, optimizer_bytes=1, batch_bytes=1,
        temp_bytes=1, code_bytes=1, total_bytes=5, fits=True, model_flops_per_step=4e15,
        peak_flops_per_chip=197e12, compiler_flops_per_chip=2e15,
    )  # fmt: skip
    sane = PlanReport(**fields, cost_model_seconds=20.0)  # 1e14 FLOP/s per chip
    assert sane.mfu == pytest.approx(4e15 / (4 * 197e12 * 20.0))
    assert "MFU" in format_report(sane)
    # libtpu's v5e estimate: 2e15 FLOPs in 1.4 ms would be 7000x the chip's peak.
    absurd = PlanReport(**fields, cost_model_seconds=0.0014)
    assert absurd.mfu is None and absurd.to_dict()["mfu"] is None
    assert "not an estimate (no MFU)" in format_report(absurd)
