"""`jaxembed export`: a tiny model trained a few steps becomes a Hugging Face directory that
transformers (PyTorch, trust_remote_code) and sentence-transformers embed exactly like
`jaxembed encode`; the import of it gives back the checkpoint's params bit for bit; bad input
is one clear error with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxembed import hf
from jaxembed.cli import main
from jaxembed.demo import train_tokenizer
from jaxembed.models import architectures
from jaxembed.synthetic import make_task, write_task

from hf_reference import jaxembed_encode, torch_embed
from tiny_models import WORDS, make_hf_model

STEPS = 2
INSTRUCTION = "Given a query, retrieve the passage it paraphrases"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny Llama trained STEPS steps (checkpoints at every step), and its train flags."""
    root = tmp_path_factory.mktemp("run")
    task = make_task(0, train_docs=40, eval_docs=10, eval_queries=5)
    write_task(task, root / "task")
    # The prompt repeated, so BPE learns it as a few tokens and queries stay short.
    texts = [r["query"] for r in task.train_records] + [f"Instruct: {INSTRUCTION}\nQuery: "] * 50
    texts += [p["text"] for r in task.train_records for p in r["positives"]]
    train_tokenizer(texts, vocab_size=500).save_pretrained(str(root / "tokenizer"))
    flags = [
        "--config", str(Path(__file__).parents[1] / "configs" / "tiny.py"),
        f"--config.data.train_files={root / 'task' / 'train.jsonl'}",
        f"--config.data.tokenizer={root / 'tokenizer'}",
        f"--config.data.instruction={INSTRUCTION}",
        "--config.data.global_batch_size=8",
        "--config.data.query_max_length=32",
        "--config.data.passage_max_length=32",
        "--config.data.prefetch=0",
        f"--config.train.steps={STEPS}",
        "--config.train.checkpoint_every=1",
        "--config.train.log_every=1",
        "--config.optimizer.warmup_steps=0",
        "--config.optimizer.learning_rate=0.01",
    ]  # fmt: skip
    workdir = root / "workdir"
    assert main(["train", "--workdir", str(workdir), *flags]) == 0
    return workdir, flags, task


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    workdir, flags, _ = run
    out = tmp_path_factory.mktemp("exported") / "model"
    assert main(["export", "--workdir", str(workdir), "--output", str(out), *flags]) == 0
    return out


def _restored_params(workdir: Path, step: int):
    restored = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
    return restored["params"]


def _texts(task):
    queries = [r["query"] for r in task.train_records[:6]]
    docs = [p["text"] for r in task.train_records[:6] for p in r["positives"]][:6]
    docs += ["x", docs[0] + " " + docs[1]]  # very short and longer rows: real padding
    return queries, docs


def test_transformers_and_sentence_transformers_match_jaxembed_encode(exported, run, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    _, _, task = run
    queries, docs = _texts(task)
    ours_q = jaxembed_encode(exported, queries, tmp_path, INSTRUCTION)
    ours_d = jaxembed_encode(exported, docs, tmp_path)

    model = AutoModel.from_pretrained(str(exported), trust_remote_code=True).eval()
    assert type(model).__name__ == "BidirectionalLlamaModel"
    tokenizer = AutoTokenizer.from_pretrained(str(exported))
    prompt = f"Instruct: {INSTRUCTION}\nQuery: "
    for side in ("right", "left"):
        np.testing.assert_allclose(
            torch_embed(model, tokenizer, docs, side), ours_d, rtol=0, atol=1e-4
        )
        np.testing.assert_allclose(
            torch_embed(model, tokenizer, [prompt + q for q in queries], side),
            ours_q,
            rtol=0,
            atol=1e-4,
        )

    st = SentenceTransformer(str(exported), trust_remote_code=True, device="cpu")
    np.testing.assert_allclose(
        st.encode(queries, prompt_name="query", batch_size=4), ours_q, rtol=0, atol=1e-4
    )
    np.testing.assert_allclose(st.encode(docs, batch_size=4), ours_d, rtol=0, atol=1e-4)
    # Rows differ by far more than the tolerance: the comparisons have something to catch.
    assert np.abs(ours_d[0] - ours_d[1]).max() > 1e-2
    assert np.abs(ours_q[0] - ours_q[1]).max() > 1e-3


def test_import_round_trip_is_bit_exact(exported, run):
    workdir, _, _ = run
    config = architectures.LLAMA.config_from_hf(hf.read_hf_config(exported))
    imported = hf.load_params(exported, config)
    restored = _restored_params(workdir, STEPS)
    paths_a = jax.tree_util.tree_flatten_with_path(restored)[0]
    paths_b = dict(jax.tree_util.tree_flatten_with_path(imported)[0])
    assert len(paths_a) == len(paths_b)
    for path, value in paths_a:
        np.testing.assert_array_equal(np.asarray(paths_b[path]), np.asarray(value), str(path))
    # A step really changed the weights, so the comparison is not against the init.
    first = _restored_params(workdir, 1)
    assert not np.array_equal(
        np.asarray(first["layers"]["mlp"]["up_proj"]["kernel"]),
        np.asarray(restored["layers"]["mlp"]["up_proj"]["kernel"]),
    )


def test_files_read_by_the_safetensors_library(exported, run, tmp_path):
    """Our streaming writer's files, sharded or not, as the reference reader sees them; the
    bf16 export rounds exactly as torch does."""
    import torch
    from safetensors import safe_open
    from safetensors.numpy import load_file

    workdir, flags, _ = run
    single = load_file(exported / "model.safetensors")
    assert "embed_tokens.weight" in single and "layers.1.mlp.down_proj.weight" in single

    sharded = tmp_path / "sharded"
    args = ["export", "--workdir", str(workdir), "--output", str(sharded), *flags]
    assert main(args + ["--max-shard-size", "60KB"]) == 0
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 3 and not (sharded / "model.safetensors").exists()
    seen = {}
    for name in files:
        part = load_file(sharded / name)
        # At most the limit (plus the header), unless one tensor alone is bigger.
        assert len(part) == 1 or (sharded / name).stat().st_size <= 60_000 + 4_000
        assert all(index["weight_map"][k] == name for k in part)
        seen.update(part)
    assert seen.keys() == single.keys()
    for key, value in single.items():
        np.testing.assert_array_equal(seen[key], value)

    bf16 = tmp_path / "bf16"
    bf16_args = ["export", "--workdir", str(workdir), "--output", str(bf16), *flags]
    assert main(bf16_args + ["--dtype", "bfloat16"]) == 0
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(bf16 / "model.safetensors"), framework="pt") as f:
        for key, value in single.items():
            expected = torch.from_numpy(value).to(torch.bfloat16)
            got = f.get_tensor(key)
            assert got.dtype == torch.bfloat16
            assert torch.equal(got, expected), key


def test_step_selection_and_saved_run_config(run, tmp_path):
    """`--step 1` exports step 1; a workdir holding its config.json needs no flags."""
    from safetensors.numpy import load_file

    from jaxembed.config import apply_overrides, load_config

    workdir, flags, _ = run
    copy = tmp_path / "workdir"
    shutil.copytree(workdir, copy)
    config = load_config(flags[1])
    apply_overrides(config, [f[len("--config.") :] for f in flags if f.startswith("--config.")])
    (copy / "config.json").write_text(config.to_json())
    out = tmp_path / "step1"
    assert main(["export", "--workdir", str(copy), "--step", "1", "--output", str(out)]) == 0
    tensors = load_file(out / "model.safetensors")
    up = np.asarray(_restored_params(workdir, 1)["layers"]["mlp"]["up_proj"]["kernel"])
    np.testing.assert_array_equal(tensors["layers.1.mlp.up_proj.weight"], up[1].T)
    card = (out / "README.md").read_text()
    assert "step 1" in card and '"learning_rate": 0.01' in card and "| loss |" in card


def _no_leftovers(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if p.name.startswith(".")], "temp dir left"


def test_bad_input_is_one_clear_error_and_nothing_is_written(run, tmp_path, capsys):
    workdir, flags, _ = run
    out = tmp_path / "out"
    base = ["export", "--workdir", str(workdir), "--output", str(out)]
    # A workdir from before training saved its config (or with it deleted).
    bare = tmp_path / "bare_workdir"
    shutil.copytree(workdir / "checkpoints", bare / "checkpoints")
    cases = [
        (base + ["--step", "7", *flags], "no checkpoint for step 7 (available: 1, 2)"),
        (
            ["export", "--workdir", str(bare), "--output", str(out)],
            f"{bare}: no config.json; pass the training run's --config",
        ),
        (
            base + [*flags, "--config.model.hidden_size=32"],
            "param embed_tokens.embedding has shape (512, 64), but the training config gives "
            "(512, 32)",
        ),
        (["export", "--workdir", str(tmp_path / "nope"), "--output", str(out)], "does not exist"),
        (base + ["--max-shard-size", "lots", *flags], "max shard size 'lots'"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (args, err)
        assert not out.exists()
        _no_leftovers(tmp_path)

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(base + flags) == 2
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert main(base + flags + ["--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_failure_midway_leaves_nothing(run, tmp_path, monkeypatch):
    from jaxembed import hf_export, run_steps

    workdir, flags, _ = run
    overrides = [f[len("--config.") :] for f in flags if f.startswith("--config.")]
    read = run_steps.OrbaxSource.read
    calls = []

    def failing_read(self, tensor):
        calls.append(tensor.name)
        if len(calls) == 5:
            raise OSError("disk full")
        return read(self, tensor)

    monkeypatch.setattr(run_steps.OrbaxSource, "read", failing_read)
    with pytest.raises(OSError, match="disk full"):
        hf_export.export(workdir, tmp_path / "out", config_spec=flags[1], overrides=overrides)
    assert len(calls) == 5 and not (tmp_path / "out").exists()
    _no_leftovers(tmp_path)


@pytest.mark.parametrize("kind", ["mistral", "qwen2"])
def test_mistral_and_qwen2_exports_match(kind, tmp_path):
    """Architecture dispatch: Mistral keeps its (symmetric) sliding window, Qwen2 its q/k/v
    biases; transformers with the shipped modeling file embeds as jaxembed does."""
    from transformers import AutoModel, PreTrainedTokenizerFast

    from jaxembed.checkpoint import Checkpointer
    from jaxembed.config import default_config

    source = tmp_path / "source"
    extra = {"sliding_window": 3} if kind == "mistral" else {}
    make_hf_model(kind, source, seed=3, **extra)
    config = architectures.LLAMA.config_from_hf(hf.read_hf_config(source))
    params = hf.load_params(source, config)
    # Perturb so the checkpoint is not the source model itself.
    params = jax.tree.map(lambda x: x * 1.5, params)
    workdir = tmp_path / "workdir"
    checkpointer = Checkpointer(workdir / "checkpoints", async_save=False)
    checkpointer.save(3, {"params": params}, None)
    checkpointer.close()
    run_config = default_config()
    run_config.model.init = "hf"
    run_config.model.hf_path = str(source)
    (workdir / "config.json").write_text(run_config.to_json())
    out = tmp_path / "out"
    assert main(["export", "--workdir", str(workdir), "--output", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == kind

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=n)) for n in (9, 2, 6, 12, 1)]
    ours = jaxembed_encode(out, texts, tmp_path)
    model = AutoModel.from_pretrained(str(out), trust_remote_code=True).eval()
    # tokenizer.json as jaxembed reads it: for model_type qwen2, transformers v5's
    # AutoTokenizer rebuilds a Qwen2Tokenizer from the vocab, which this word-level test
    # tokenizer is not.
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(out))
    for side in ("right", "left"):
        np.testing.assert_allclose(
            torch_embed(model, tokenizer, texts, side), ours, rtol=0, atol=1e-4
        )
    if kind == "mistral":
        # Without the window the model is measurably different: the window is in force.
        model.config.sliding_window = None
        assert np.abs(torch_embed(model, tokenizer, texts, "right") - ours).max() > 1e-3


def test_bert_export_matches_the_original_sentence_transformer(minilm_dir, tmp_path):
    """BERT needs no modeling file (transformers' BertModel is bidirectional): an Orbax
    checkpoint of all-MiniLM-L6-v2 exports to a directory that sentence-transformers and
    `jaxembed encode` embed as sentence-transformers embeds the original."""
    from sentence_transformers import SentenceTransformer

    from jaxembed.checkpoint import Checkpointer
    from jaxembed.config import default_config

    params = hf.load_params(minilm_dir, architectures.config_from_hf(hf.read_hf_config(minilm_dir)))
    workdir = tmp_path / "workdir"
    checkpointer = Checkpointer(workdir / "checkpoints", async_save=False)
    checkpointer.save(1, {"params": params}, None)
    checkpointer.close()
    run_config = default_config()
    run_config.model.init = "hf"
    run_config.model.hf_path = str(minilm_dir)
    run_config.data.query_max_length = run_config.data.passage_max_length = 128
    (workdir / "config.json").write_text(run_config.to_json())
    out = tmp_path / "out"
    assert main(["export", "--workdir", str(workdir), "--output", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertModel"] and "auto_map" not in config

    texts = ["A man is eating food.", "Scientists found water on Mars", "ok", "x y z " * 9]
    original = SentenceTransformer(str(minilm_dir), device="cpu").encode(texts)
    np.testing.assert_allclose(
        SentenceTransformer(str(out), device="cpu").encode(texts), original, rtol=0, atol=1e-4
    )
    np.testing.assert_allclose(jaxembed_encode(out, texts, tmp_path), original, atol=1e-4)
