"""Peak memory of `jaxembed merge` and `jaxembed export` against naive baselines, same run.

Merge: six random Llama checkpoints (safetensors, f32) averaged uniformly. jaxembed streams
tensor by tensor; the baseline loads every checkpoint (safetensors' `load_file`) and then
averages, as a script holding all models would. Export: one Orbax checkpoint of the same
model written as a HF directory. jaxembed restores one param leaf at a time; the baseline
restores all params and writes them with safetensors' `save_file`. Each run is a fresh
subprocess; the figure is its peak RSS (VmHWM) minus its RSS just before the work (with every
library either side uses already imported), reported against the size of one model in f32.

    python benchmarks/merge_memory.py                  # ~276 MB models, ~2 GB of disk
    python benchmarks/merge_memory.py --hidden 256 --layers 4 --vocab 4000   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MEASURE = """
import json, sys, time
# Every library either side touches, imported before the measurement starts.
import numpy, orbax.checkpoint, safetensors.numpy, transformers, jaxembed.hf_export, jaxembed.merge
from transformers import AutoConfig, PreTrainedTokenizerFast

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

def measure(work):
    before = status("VmRSS:")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to the current RSS
    except OSError:
        pass
    start = time.perf_counter()
    work()
    print(json.dumps({"growth": status("VmHWM:") - before, "seconds": time.perf_counter() - start}))
"""

JAXEMBED_MERGE = """
from jaxembed.merge import merge
measure(lambda: merge(sys.argv[2:], sys.argv[1]))
"""

NAIVE_MERGE = """
import numpy as np
from safetensors.numpy import load_file, save_file

def work():
    models = [load_file(d + "/model.safetensors") for d in sys.argv[2:]]
    merged = {k: np.mean([m[k] for m in models], axis=0) for k in models[0]}
    save_file(merged, sys.argv[1])
measure(work)
"""

JAXEMBED_EXPORT = """
from jaxembed.hf_export import export
measure(lambda: export(sys.argv[2], sys.argv[1]))
"""

NAIVE_EXPORT = """
from pathlib import Path
import numpy as np, orbax.checkpoint as ocp
from safetensors.numpy import save_file
from jaxembed.hf_directory import RunMetadata, hf_tensors, to_hf_layout
from jaxembed.run_steps import load_run_config

def work():
    meta = RunMetadata.from_run_config(load_run_config(sys.argv[2]))
    path = sorted((Path(sys.argv[2]) / "checkpoints").iterdir())[-1]
    params = ocp.StandardCheckpointer().restore(path / "state")["params"]
    tensors = {}
    for t in hf_tensors(meta.config):
        leaf = params
        for key in t.wmap.path:
            leaf = leaf[key]
        leaf = np.asarray(leaf)
        tensors[t.name] = to_hf_layout(t.wmap, leaf if t.layer is None else leaf[t.layer],
                                       np.float32)
    save_file(tensors, sys.argv[1])
measure(work)
"""


def run(script: str, *args: str) -> dict[str, float]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", MEASURE + script, *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def make_models(root: Path, args: argparse.Namespace) -> tuple[list[str], int, Path]:
    from safetensors.numpy import save_file
    from transformers import AutoConfig

    from jaxembed import hf
    from jaxembed.checkpoint import Checkpointer
    from jaxembed.config import default_config
    from jaxembed.hf_directory import hf_tensors
    from jaxembed.models import architectures

    kwargs = dict(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
    )
    hf_config = AutoConfig.for_model("llama", **kwargs)
    rng = np.random.default_rng(0)
    dirs = []
    for i in range(args.models):
        directory = root / f"m{i}"
        directory.mkdir()
        hf_config.to_json_file(str(directory / "config.json"))
        config = architectures.LLAMA.config_from_hf(hf.read_hf_config(directory))
        tensors = {
            t.name: rng.standard_normal(t.wmap.hf_shape, np.float32) for t in hf_tensors(config)
        }
        save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
        del tensors
        dirs.append(str(directory))
    # One Orbax workdir holding model 0 (params only), for the export comparison.
    from jaxembed.demo import train_tokenizer

    train_tokenizer(["a tokenizer for the export"], vocab_size=300).save_pretrained(dirs[0])
    workdir = root / "workdir"
    params = hf.load_params(dirs[0], config)
    checkpointer = Checkpointer(workdir / "checkpoints", async_save=False)
    checkpointer.save(1, {"params": params}, None)
    checkpointer.close()
    del params
    run_config = default_config()
    run_config.model.init = "hf"
    run_config.model.hf_path = dirs[0]
    (workdir / "config.json").write_text(run_config.to_json())
    return dirs, 4 * config.num_params(), workdir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=16000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        dirs, model_bytes, workdir = make_models(root, args)
        print(
            f"{args.models} models of {model_bytes / 1e6:.0f} MB (f32) written in "
            f"{time.perf_counter() - start:.0f} s"
        )
        rows = []
        for label, ours, naive, ours_args, naive_args in (
            (
                f"merge {args.models} (uniform)",
                JAXEMBED_MERGE,
                NAIVE_MERGE,
                [str(root / "merged"), *dirs],
                [str(root / "naive.safetensors"), *dirs],
            ),
            (
                "export 1",
                JAXEMBED_EXPORT,
                NAIVE_EXPORT,
                [str(root / "exported"), str(workdir)],
                [str(root / "naive_export.safetensors"), str(workdir)],
            ),
        ):
            a = run(ours, *ours_args)
            b = run(naive, *naive_args)
            rows.append((label, a, b))
        print(
            "| task | jaxembed peak growth | x model | naive peak growth | x model | "
            "jaxembed / naive memory | jaxembed s | naive s |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for label, a, b in rows:
            print(
                f"| {label} | {a['growth'] / 1e6:.0f} MB | {a['growth'] / model_bytes:.2f} | "
                f"{b['growth'] / 1e6:.0f} MB | {b['growth'] / model_bytes:.2f} | "
                f"{a['growth'] / b['growth']:.3f} | {a['seconds']:.1f} | {b['seconds']:.1f} |"
            )


if __name__ == "__main__":
    main()
