"""The plan's numbers, the fit verdict, the knobs to turn, and the printed report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from jaxembed.plan.topology import GiB


@dataclass
class PlanReport:
    config: str
    topology: str  # accelerator type, e.g. v5p-128
    grid: str  # e.g. v5p:4x4x4
    chips: int
    mesh: dict[str, int]
    model_params: int
    hbm_per_chip: int
    params_bytes: int  # per chip
    optimizer_bytes: int
    batch_bytes: int
    temp_bytes: int  # activations and other temporaries
    code_bytes: int
    total_bytes: int
    fits: bool
    model_flops_per_step: float
    peak_flops_per_chip: float
    compiler_flops_per_chip: float | None = None
    cost_model_seconds: float | None = None
    compile_seconds: float = 0.0
    compiler_error: str = ""  # set when the compiler itself refused (out of memory)
    advice: list[str] = field(default_factory=list)

    @property
    def cost_model_plausible(self) -> bool:
        """False when the cost-model time would run the compiler's own FLOPs faster than the
        chip's peak (libtpu 0.0.42's estimate for v5e is such a time), i.e. is no estimate."""
        if not self.cost_model_seconds or not self.compiler_flops_per_chip:
            return False
        rate = self.compiler_flops_per_chip / self.cost_model_seconds
        return rate <= self.peak_flops_per_chip

    @property
    def mfu(self) -> float | None:
        if not self.cost_model_plausible:
            return None
        peak = self.chips * self.peak_flops_per_chip * self.cost_model_seconds
        return self.model_flops_per_step / peak

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mfu"] = self.mfu
        return out


def advice(report: PlanReport, config: Any) -> list[str]:
    """What to change when the step does not fit, the bigger consumer's knobs first."""
    m, gc, d = config.mesh, config.gradcache, config.data
    state = report.params_bytes + report.optimizer_bytes
    state_tips, temp_tips = [], []
    if m.fsdp != -1 or m.data != 1:
        state_tips.append(
            f"params + optimizer state take {_gib(state)} per chip: shard them over every "
            f"chip with --config.mesh.data=1 --config.mesh.fsdp=-1 (now data={m.data}, "
            f"fsdp={m.fsdp})"
        )
    if config.model.param_dtype == "float32":
        state_tips.append(
            "--config.model.param_dtype=bfloat16 halves params and AdamW moments "
            "(at some cost in update precision)"
        )
    state_tips.append("a bigger slice: more chips share the model state")
    if not gc.enabled:
        temp_tips.append(
            f"activations/temporaries take {_gib(report.temp_bytes)} per chip: "
            "--config.gradcache.enabled=true bounds activations by the chunk size"
        )
    else:
        passage = gc.passage_chunk_size or gc.chunk_size
        temp_tips.append(
            f"activations/temporaries take {_gib(report.temp_bytes)} per chip: lower "
            f"--config.gradcache.chunk_size (now {gc.chunk_size}) and "
            f"--config.gradcache.passage_chunk_size (now {passage})"
        )
    if config.model.remat_policy != "full":
        temp_tips.append(
            f"--config.model.remat_policy=full (now {config.model.remat_policy}) keeps only "
            "each layer's input for the backward pass"
        )
    temp_tips.append(
        f"shorter sequences (data.query_max_length={d.query_max_length}, "
        f"data.passage_max_length={d.passage_max_length})"
    )
    # Gradients and the optimizer update's temporaries grow with the state, so a state that
    # takes half the chip is the problem even when the temporaries look bigger.
    if state >= report.temp_bytes or state > 0.5 * report.hbm_per_chip:
        return state_tips + temp_tips
    return temp_tips + state_tips


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def format_report(r: PlanReport) -> str:
    mesh = ", ".join(f"{k}={v}" for k, v in r.mesh.items())
    lines = [
        f"plan: {r.config} on {r.topology} ({r.grid}, {r.chips} chips, "
        f"{_gib(r.hbm_per_chip)} HBM each)",
        f"  model: {_count(r.model_params)} params; mesh {mesh}",
        "  HBM per chip:",
        f"    params             {_gib(r.params_bytes):>12}",
        f"    optimizer state    {_gib(r.optimizer_bytes):>12}",
        f"    batch              {_gib(r.batch_bytes):>12}",
        f"    activations/temps  {_gib(r.temp_bytes):>12}",
        f"    program code       {_gib(r.code_bytes):>12}",
        f"    total              {_gib(r.total_bytes):>12}  of {_gib(r.hbm_per_chip)} "
        f"({100 * r.total_bytes / r.hbm_per_chip:.1f}%)  " + ("FITS" if r.fits else "DOES NOT FIT"),
    ]
    if r.compiler_error:
        lines.append(f"  compiler: {r.compiler_error}")
    lines.append(f"  model FLOPs per step: {r.model_flops_per_step:.4g}")
    if r.compiler_flops_per_chip:
        lines.append(
            f"  compiler FLOPs per chip per step (recomputation included): "
            f"{r.compiler_flops_per_chip:.4g}"
        )
    peak = f"peak {r.peak_flops_per_chip / 1e12:.0f} TFLOP/s bf16 per chip"
    if r.cost_model_plausible:
        lines.append(
            f"  cost-model step time: {r.cost_model_seconds:.4g} s -> MFU {100 * r.mfu:.1f}% "
            f"({peak})"
        )
    elif r.cost_model_seconds:
        lines.append(
            f"  cost-model step time: {r.cost_model_seconds:.4g} s is faster than the {peak} "
            "allows for the compiler's FLOPs: not an estimate (no MFU)"
        )
    lines.append(f"  compile time: {r.compile_seconds:.0f} s")
    if r.advice:
        lines.append("  to make it fit:")
        lines += [f"    - {tip}" for tip in r.advice]
    return "\n".join(lines)
