"""Bad input to `jaxembed encode`: one clear error, exit status 2, no output file."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.numpy import load_file, save_file

from jaxembed.cli import main

from tiny_models import make_hf_model


@pytest.fixture(scope="module")
def good_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("good")
    make_hf_model("llama", directory)
    return directory


@pytest.fixture
def model_copy(good_model, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(good_model, target)
    return target


@pytest.fixture
def good_input(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "w1 w2"}\n{"text": "w3"}\n')
    return path


def _run(model, inp, tmp_path, capsys):
    out = tmp_path / "out.npy"
    code = main(
        ["encode", "--model", str(model), "--input", str(inp), "--output", str(out), "--quiet"]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.npy")], "temp file left"
    return err


def test_directory_without_config(model_copy, good_input, tmp_path, capsys):
    (model_copy / "config.json").unlink()
    assert f"{model_copy / 'config.json'}: missing" in _run(
        model_copy, good_input, tmp_path, capsys
    )


def test_missing_directory(good_input, tmp_path, capsys):
    err = _run(tmp_path / "nope", good_input, tmp_path, capsys)
    assert "does not exist" in err


def _edit_config(directory, **changes):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_unknown_model_type(model_copy, good_input, tmp_path, capsys):
    _edit_config(model_copy, model_type="gpt2")
    err = _run(model_copy, good_input, tmp_path, capsys)
    assert "model_type 'gpt2' is not supported" in err and "config.json" in err


def test_weight_with_wrong_shape(model_copy, good_input, tmp_path, capsys):
    _edit_config(model_copy, intermediate_size=40)
    err = _run(model_copy, good_input, tmp_path, capsys)
    assert "model.safetensors" in err
    assert "'layers.0.mlp.gate_proj.weight' has shape (48, 32), expected (40, 32)" in err


def test_missing_weight(model_copy, good_input, tmp_path, capsys):
    path = model_copy / "model.safetensors"
    tensors = load_file(str(path))
    del tensors["layers.1.self_attn.k_proj.weight"]
    save_file(tensors, str(path))
    err = _run(model_copy, good_input, tmp_path, capsys)
    assert "weight 'layers.1.self_attn.k_proj.weight' is missing" in err


def test_pickled_weights_are_refused(model_copy, good_input, tmp_path, capsys):
    (model_copy / "model.safetensors").rename(model_copy / "pytorch_model.bin")
    err = _run(model_copy, good_input, tmp_path, capsys)
    assert "pickled weights are never loaded" in err


def test_missing_tokenizer(model_copy, good_input, tmp_path, capsys):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model_copy / name).unlink(missing_ok=True)
    assert "no tokenizer files" in _run(model_copy, good_input, tmp_path, capsys)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"text": "w1"}\n{"text": "w2"\n', "in.jsonl:2: invalid JSON"),
        ('{"text": "w1"}\n{"txt": "w2"}\n', "in.jsonl:2: 'text' is missing"),
        ('{"text": 5}\n', "in.jsonl:1: 'text' is not a string (int)"),
        ('{"text": "w1"}\n\n{"text": "w2"}\n', "in.jsonl:2: empty line"),
        ("", "in.jsonl: no input lines"),
        ('{"text": "w1"}\n{"text": ""}\n', "text 1 (of 1) tokenizes to no tokens"),
    ],
)
def test_malformed_input(good_model, tmp_path, capsys, content, message):
    inp = tmp_path / "in.jsonl"
    inp.write_text(content)
    assert message in _run(good_model, inp, tmp_path, capsys)


def test_invalid_utf8_input(good_model, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(b'{"text": "w1"}\n{"text": "\xff"}\n')
    assert "in.jsonl:2: invalid UTF-8" in _run(good_model, inp, tmp_path, capsys)


def test_demo_refuses_a_used_workdir(tmp_path, capsys):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("user data")
    assert main(["demo", "--workdir", str(tmp_path / "old")]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "old" / "keep.txt").read_text() == "user data"


@pytest.mark.parametrize("command", ["encode", "eval"])
def test_missing_output_directory_is_named_before_any_work(good_input, tmp_path, capsys, command):
    """The output's directory is checked first: the model (missing here too) is never read,
    so a long encode cannot end in this error."""
    out = tmp_path / "no_such_dir" / "out.json"
    args = [command, "--model", str(tmp_path / "nope"), "--output", str(out), "--quiet"]
    args += ["--input", str(good_input)] if command == "encode" else ["--data", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"output directory {out.parent} does not exist" in err
    assert "model directory" not in err
