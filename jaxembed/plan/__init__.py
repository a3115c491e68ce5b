"""`jaxembed plan`: compile the real train step for a TPU slice from a CPU and report per-chip
HBM (params, optimizer state, activations), whether it fits, model FLOPs, the compiler's
cost-model step time and the MFU it implies, and which knob to turn when it does not fit.

    from jaxembed.plan import plan
    report = plan(load_config("configs/llama_embed_nemotron_8b.py:stage1"), "v5p-128")
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any

import ml_collections

from jaxembed.plan.aot import (
    abstract_batch,
    abstract_state,
    compile_train_step,
    per_device_bytes,
    planning_model_config,
)
from jaxembed.plan.cost import layer_repeats, model_flops_per_step, step_cost
from jaxembed.plan.report import PlanReport, advice, format_report
from jaxembed.plan.topology import CHIPS, Topology, compile_only_devices, parse_topology
from jaxembed.sharding import MESH_AXES, make_mesh
from jaxembed.train.settings import optimizer_settings
from jaxembed.train.step import state_shardings
from jaxembed.train.validate import check_layout, validate_model

__all__ = ["CHIPS", "PlanReport", "Topology", "format_report", "parse_topology", "plan"]

_OOM = re.compile(r"RESOURCE_EXHAUSTED|[Rr]an out of memory|exceeds? .*memory", re.S)


def plan(
    config: ml_collections.ConfigDict, topology_name: str, label: str = "config"
) -> PlanReport:
    """Compile `config`'s train step for the named TPU slice and measure it."""
    topology = parse_topology(topology_name)
    validate_model(config, weights_needed=False)
    model = planning_model_config(config)
    devices = compile_only_devices(topology)
    mesh_shape = check_layout(config, len(devices))
    started = time.perf_counter()
    try:
        step = compile_train_step(config, devices, model)
    except Exception as e:  # XLA reports an over-full HBM as a compile error
        if not _OOM.search(str(e)):
            raise
        return _refused(config, label, topology, devices, model, mesh_shape, e, started)
    compile_seconds = time.perf_counter() - started
    memory = step.compiled.memory_analysis()
    no_layers = compile_train_step(config, devices, dataclasses.replace(model, num_layers=0))
    cost = step_cost(
        step.compiled.cost_analysis(),
        no_layers.compiled.cost_analysis(),
        layer_repeats(config, model),
    )
    total = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
        + memory.generated_code_size_in_bytes
    )
    report = PlanReport(
        **_describe(config, label, topology, model, mesh_shape),
        params_bytes=per_device_bytes((step.state.params, step.state.adapters)),
        optimizer_bytes=per_device_bytes(step.state.opt_state),
        batch_bytes=per_device_bytes(step.batch),
        temp_bytes=memory.temp_size_in_bytes,
        code_bytes=memory.generated_code_size_in_bytes,
        total_bytes=total,
        fits=total <= topology.chip.hbm_bytes,
        compiler_flops_per_chip=cost.flops,
        cost_model_seconds=cost.seconds,
        compile_seconds=compile_seconds,
    )
    if not report.fits:
        report.advice = advice(report, config)
    return report


def _describe(config, label, topology, model, mesh_shape) -> dict[str, Any]:
    """The report fields that do not depend on whether XLA compiled the step."""
    return dict(
        config=label,
        topology=topology.accelerator_type,
        grid=topology.grid_name,
        chips=topology.num_chips,
        mesh=dict(zip(MESH_AXES, mesh_shape, strict=True)),
        model_params=model.num_params(),
        hbm_per_chip=topology.chip.hbm_bytes,
        model_flops_per_step=model_flops_per_step(config, model),
        peak_flops_per_chip=topology.chip.peak_bf16_flops,
    )


def _refused(config, label, topology, devices, model, mesh_shape, error, started) -> PlanReport:
    """The report when XLA refuses to compile for lack of HBM: state sizes from the shardings,
    the rest from the compiler's message."""
    mesh = make_mesh(mesh_shape, devices)
    optimizer, _ = optimizer_settings(config).build(config.train.steps)
    task = config.model.task
    state = abstract_state(model, optimizer, state_shardings(model, optimizer, mesh, task), task)
    batch = per_device_bytes(abstract_batch(config, mesh))
    params = per_device_bytes((state.params, state.adapters))
    opt = per_device_bytes(state.opt_state)
    temps = _temporaries(str(error))
    message = " ".join(str(error).split())
    report = PlanReport(
        **_describe(config, label, topology, model, mesh_shape),
        params_bytes=params,
        optimizer_bytes=opt,
        batch_bytes=batch,
        temp_bytes=temps,
        code_bytes=0,
        total_bytes=params + opt + batch + temps,
        fits=False,
        compile_seconds=time.perf_counter() - started,
        compiler_error=message[:300],
    )
    report.advice = advice(report, config)
    return report


def _temporaries(message: str) -> int:
    """XLA:TPU's 'memory required for HLO temporaries (19.18G) exceeds available HBM' → bytes
    (XLA prints 1024-based units); 0 when the message has no such figure."""
    match = re.search(r"temporaries \(([\d.]+)([KMGT])i?B?\)", message)
    if not match:
        return 0
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    return int(float(match.group(1)) * scale[match.group(2)])
