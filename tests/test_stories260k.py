"""Real pretrained weights: llama2.c's stories260K through the HF import path, causal mode."""

from __future__ import annotations

import numpy as np
import pytest

from jaxembed import hf, llama2c
from jaxembed.models import architectures
from jaxembed.models.generate import greedy_generate


@pytest.fixture(scope="module")
def stories(shared_data, tmp_path_factory):
    source = shared_data / "stories260K"
    out = tmp_path_factory.mktemp("stories") / "hf"
    llama2c.convert(source / "stories260K.bin", source / "tok512.bin", out)
    config = architectures.LLAMA.config_from_hf(hf.read_hf_config(out))
    params = hf.load_params(out, config)
    pieces, _ = llama2c.read_tokenizer(source / "tok512.bin", config.vocab_size)
    return source, out, config, params, pieces


def test_greedy_from_bos_reproduces_llama2c_byte_for_byte(stories):
    source, _, config, params, pieces = stories
    tokens = greedy_generate(config, params, [llama2c.BOS_ID], 201, stop_token=llama2c.BOS_ID)
    text = llama2c.decode_like_run_c(tokens[1:], pieces)
    assert text == (source / "expected_greedy_bos_200.txt").read_bytes()


def test_tokenizer_encodes_like_run_c_prompt(stories):
    """run.c -i "Once upon a time" -n 64 -t 0 (reference output from SOURCE.md)."""
    _, out, config, params, pieces = stories
    tokenizer = hf.load_tokenizer(out)
    prompt = tokenizer("Once upon a time")["input_ids"]
    # run.c's own encoding of this prompt (the greedy story from BOS starts with it too)
    assert prompt == [llama2c.BOS_ID, 403, 407, 261, 378]
    # run.c -n 64 emits 64 tokens after BOS (prompt tokens included).
    tokens = greedy_generate(config, params, prompt, 65, stop_token=llama2c.BOS_ID)
    expected = (
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the"
        " park. One day, she saw a big, red ball. She wanted to play with it, but it was too"
        " high.\nLily"
    )
    assert llama2c.decode_like_run_c(tokens[1:], pieces).decode() == expected


def test_transformers_loads_the_converted_directory_identically(stories):
    torch = pytest.importorskip("torch")
    from transformers import LlamaForCausalLM

    from jaxembed.models.llama import LlamaModel

    _, out, config, params, _ = stories
    ids = np.array([[1, 410, 403, 407, 261, 378]], np.int32)
    ref = LlamaForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        ref_logits = ref(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    model = LlamaModel(config)
    hidden = model.apply({"params": params}, ids, causal=True)
    ours = np.asarray(model.apply({"params": params}, hidden, method=LlamaModel.logits))
    assert np.abs(ours - ref_logits).max() < 1e-4
