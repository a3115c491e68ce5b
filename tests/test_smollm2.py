"""A real pretrained LLM, SmolLM2-135M-Instruct (30 layers, GQA 9/3, tied embeddings, RoPE
theta 1e5), against transformers and PEFT (PyTorch): hidden states in both attention modes
and paddings, one train step's loss and gradients (full fine-tune and LoRA r16), greedy
generation, and a trained LoRA run's export read back by transformers and
sentence-transformers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxembed import hf
from jaxembed.cli import main
from jaxembed.models import architectures
from jaxembed.models.architectures import init_adapters
from jaxembed.models.generate import greedy_generate
from jaxembed.models.llama import LlamaModel
from jaxembed.models.lora import ALL_PROJECTIONS, LoraConfig
from jaxembed.peft_export import peft_tensors
from jaxembed.train.step import StepSettings

from hf_reference import (
    assert_step_matches,
    backbone_gradients,
    bidirectional_mask,
    gradient_step,
    hf_hidden,
    jaxembed_encode,
    set_causal,
    torch_embed,
)

QUERIES = [
    "What does aspirin do to the heart?",
    "How do vaccines train the immune system?",
    "Why is the sky blue?",
    "Which metal is liquid at room temperature?",
]
PASSAGES = [  # per query: its positive, then a hard negative
    "Low-dose aspirin lowers the risk of a second heart attack in adults.",
    "Aspirin was first sold by Bayer in 1899 as a powder.",
    "A vaccine shows the immune system a harmless piece of a pathogen, so it remembers it.",
    "The immune system includes the spleen, the thymus and the lymph nodes.",
    "Sunlight scatters off air molecules, and blue light scatters the most.",
    "At sunset the sky turns red and orange.",
    "Mercury is the only metal that is liquid at room temperature.",
    "Gallium melts in the hand.",
]
INSTRUCTION = "Given a question, retrieve the passage that answers it"
# Pass condition for f32 forward passes through 30 layers: each token's hidden state within
# 1e-4 of its norm. Seen: up to 1.8e-5, all of it in the model's massive-activation channel
# 199, where transformers' own f32 result is off from its float64 one by the same order; an
# off-by-one position or a wrong mask gives > 1e-2.
RELATIVE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    from transformers import AutoTokenizer

    config = architectures.LLAMA.config_from_hf(hf.read_hf_config(smollm2_dir))
    params = hf.load_params(smollm2_dir, config)
    return smollm2_dir, config, params, AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def torch_backbone(smollm2_dir):
    from transformers import AutoModel

    return AutoModel.from_pretrained(smollm2_dir, dtype=torch.float32).eval()


def _padded(tokenizer, texts, side: str) -> tuple[np.ndarray, np.ndarray]:
    tokenizer.padding_side = side
    batch = tokenizer(texts, padding=True, return_tensors="np")
    return batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)


def _relative_errors(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per token (last axis = features): |ours - ref| / |ref|."""
    return np.linalg.norm(ours - ref, axis=-1) / np.linalg.norm(ref, axis=-1)


def _with_max_length(model: Path, out: Path, max_length: int) -> Path:
    """`model`'s files linked into `out`, with an ST config giving the truncation length
    that `jaxembed_encode` passes to `jaxembed encode`."""
    out.mkdir()
    for f in model.iterdir():
        (out / f.name).symlink_to(f)
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length}))
    return out


def test_the_checkpoint_is_the_real_smollm2(smollm2):
    _, config, params, tokenizer = smollm2
    assert (config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads) == (
        30,
        576,
        9,
        3,
    )
    assert config.tie_word_embeddings and config.rope_theta == 1e5
    assert config.num_params() == sum(x.size for x in jax.tree.leaves(params)) == 134_515_008
    assert tokenizer.vocab_size == config.vocab_size == 49152


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("mode", ["bidirectional", "causal"])
def test_hidden_states_match_transformers(smollm2, torch_backbone, mode, padding):
    _, config, params, tokenizer = smollm2
    ids, mask = _padded(tokenizer, QUERIES + PASSAGES[:2], padding)
    assert (mask == 0).any(), "the batch must contain padding"
    ours = np.asarray(
        LlamaModel(config).apply({"params": params}, ids, mask, causal=mode == "causal")
    )
    ref = hf_hidden(torch_backbone, ids, mask, bidirectional=mode == "bidirectional")
    real = mask.astype(bool)
    assert _relative_errors(ours[real], ref[real]).max() < RELATIVE_TOLERANCE
    if mode == "bidirectional":  # the comparison can tell the modes apart
        causal = hf_hidden(torch_backbone, ids, mask, bidirectional=False)
        assert _relative_errors(causal[real], ref[real]).max() > 100 * RELATIVE_TOLERANCE


def test_jaxembed_encode_matches_mean_pooled_transformers(smollm2, torch_backbone, tmp_path):
    """The user's path: `jaxembed encode` of the HF directory (bidirectional, mean pooling)."""
    directory, _, _, tokenizer = smollm2
    ours = jaxembed_encode(_with_max_length(directory, tmp_path / "model", 64), PASSAGES, tmp_path)
    set_causal(torch_backbone, False)
    try:
        original = torch_backbone.forward

        def bidirectional(input_ids, attention_mask, **kw):
            return original(input_ids=input_ids, attention_mask=bidirectional_mask(attention_mask))

        torch_backbone.forward = bidirectional
        for side in ("right", "left"):
            np.testing.assert_allclose(
                torch_embed(torch_backbone, tokenizer, PASSAGES, side), ours, rtol=0, atol=1e-5
            )
    finally:
        del torch_backbone.forward
        set_causal(torch_backbone, True)
    assert np.abs(ours[0] - ours[1]).max() > 1e-2


# --- one train step: loss and gradients against PyTorch -----------------------------------


def _train_batch(tokenizer) -> dict[str, np.ndarray]:
    q_ids, q_mask = _padded(tokenizer, QUERIES, "right")
    p_ids, p_mask = _padded(tokenizer, PASSAGES, "right")
    return {
        "query_input_ids": q_ids,
        "query_attention_mask": q_mask,
        "passage_input_ids": p_ids.reshape(len(QUERIES), 2, -1),
        "passage_attention_mask": p_mask.reshape(len(QUERIES), 2, -1),
    }


def _jax_step(config, params, batch, adapters=None):
    """(loss, grad_norm, gradients of what is trained) of one in-batch InfoNCE step."""
    settings = StepSettings(loss_variant="in_batch", temperature=0.02, mask_duplicates=False)
    return gradient_step(config, params, batch, settings, adapters)


def _torch_step(model, batch) -> float:
    """The same loss in PyTorch (bidirectional backbone, mean pooling, L2 norm, in-batch
    InfoNCE at tau 0.02); leaves the gradients on the model."""

    def embed(ids, mask):
        ids, mask = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()
        hidden = model(input_ids=ids, attention_mask=bidirectional_mask(mask)).last_hidden_state
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return torch.nn.functional.normalize(pooled, dim=-1)

    set_causal(model, False)
    try:
        model.zero_grad(set_to_none=True)
        q = embed(batch["query_input_ids"], batch["query_attention_mask"])
        p_ids, p_mask = batch["passage_input_ids"], batch["passage_attention_mask"]
        p = embed(p_ids.reshape(-1, p_ids.shape[-1]), p_mask.reshape(-1, p_mask.shape[-1]))
        target = torch.arange(len(q)) * p_ids.shape[1]
        loss = torch.nn.functional.cross_entropy(q @ p.T / 0.02, target)
        loss.backward()
    finally:
        set_causal(model, True)
    return loss.item()


def test_full_fine_tune_step_matches_pytorch(smollm2, smollm2_dir):
    from transformers import AutoModel

    _, config, params, tokenizer = smollm2
    batch = _train_batch(tokenizer)
    loss, grad_norm, grads = _jax_step(config, params, batch)
    model = AutoModel.from_pretrained(smollm2_dir, dtype=torch.float32).train()
    ref_loss = _torch_step(model, batch)
    named = dict(model.named_parameters())
    ours, ref = backbone_gradients(config, grads, named)
    assert_step_matches(loss, grad_norm, ours, ref_loss, ref)


def test_lora_step_matches_peft(smollm2, smollm2_dir):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, set_peft_model_state_dict
    from transformers import AutoModel

    _, base_config, params, tokenizer = smollm2
    config = dataclasses.replace(base_config, lora=LoraConfig(rank=16, alpha=32.0))
    adapters = init_adapters(config, jax.random.PRNGKey(1))
    # B starts at zero, which would make every A gradient zero: give it values to test.
    rng = np.random.default_rng(0)
    adapters = jax.tree_util.tree_map_with_path(
        lambda path, x: (
            jnp.asarray(rng.normal(0, 0.02, x.shape), x.dtype) if "_lora_b" in str(path[-1]) else x
        ),
        adapters,
    )
    batch = _train_batch(tokenizer)
    loss, grad_norm, grads = _jax_step(config, params, batch, adapters)

    model = AutoModel.from_pretrained(smollm2_dir, dtype=torch.float32)
    modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert all(LoraConfig(16, 32.0, targets=ALL_PROJECTIONS).targets_path(m) for m in modules)
    peft_model = get_peft_model(
        model, PeftLoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=modules)
    )
    tensors, _ = peft_tensors(adapters, config)
    result = set_peft_model_state_dict(
        peft_model, {k: torch.from_numpy(v) for k, v in tensors.items()}
    )
    assert not result.unexpected_keys
    ref_loss = _torch_step(peft_model.base_model.model.train(), batch)

    ours, _ = peft_tensors(grads["adapters"], config)
    ref = {}
    for name, parameter in peft_model.named_parameters():
        if parameter.requires_grad:
            ref[name.replace(".default", "")] = parameter.grad.numpy()
    assert_step_matches(loss, grad_norm, ours, ref_loss, ref)


def test_greedy_generation_matches_transformers(smollm2, smollm2_dir):
    from transformers import AutoModelForCausalLM

    _, config, params, tokenizer = smollm2
    messages = [{"role": "user", "content": "Write a short story about a dragon who learns."}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    total = len(prompt) + 32
    ours = greedy_generate(config, params, prompt, total, stop_token=tokenizer.eos_token_id)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model.generate(
            torch.tensor([prompt]), max_new_tokens=32, do_sample=False, attention_mask=None
        )
    assert ours == ref[0].tolist()
    assert len(ours) == total, "the story should not end within 32 tokens"
    print(tokenizer.decode(ours[len(prompt) :]))


# --- a LoRA run through the CLI, exported and read back -----------------------------------


def test_lora_run_exports_what_transformers_and_sentence_transformers_embed_alike(
    smollm2_dir, tmp_path
):
    """`jaxembed train` (LoRA r16 from the real weights) -> `jaxembed export` (merged) ->
    transformers and sentence-transformers embed like `jaxembed encode`, and not like the
    base model: training changed the weights that were exported."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    train = tmp_path / "train.jsonl"
    # Each query twice, with its own hard negative and with another query's (the 8 test
    # devices need a global batch of 8).
    records = [
        {"query": q, "positives": [PASSAGES[2 * i]], "negatives": [PASSAGES[2 * ((i + k) % 4) + 1]]}
        for k in (0, 1)
        for i, q in enumerate(QUERIES)
    ]
    train.write_text("".join(json.dumps(r) + "\n" for r in records))
    flags = [
        "--config", str(Path(__file__).parents[1] / "configs" / "tiny.py"),
        "--config.model.init=hf", f"--config.model.hf_path={smollm2_dir}",
        "--config.model.scan_layers=True",
        "--config.lora.rank=16", "--config.lora.alpha=32",
        f"--config.data.train_files={train}", f"--config.data.instruction={INSTRUCTION}",
        "--config.data.global_batch_size=8", "--config.data.num_negatives=1",
        "--config.data.query_max_length=24", "--config.data.passage_max_length=32",
        "--config.data.prefetch=0", "--config.train.steps=2", "--config.train.log_every=1",
        "--config.optimizer.warmup_steps=0", "--config.optimizer.learning_rate=1e-3",
    ]  # fmt: skip
    workdir, out = tmp_path / "run", tmp_path / "exported"
    assert main(["train", "--workdir", str(workdir), *flags]) == 0
    assert main(["export", "--workdir", str(workdir), "--output", str(out), *flags]) == 0

    ours_q = jaxembed_encode(out, QUERIES, tmp_path, INSTRUCTION)
    ours_d = jaxembed_encode(out, PASSAGES, tmp_path)
    model = AutoModel.from_pretrained(str(out), trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    for side in ("right", "left"):
        np.testing.assert_allclose(
            torch_embed(model, tokenizer, PASSAGES, side), ours_d, rtol=0, atol=1e-5
        )
    st = SentenceTransformer(str(out), trust_remote_code=True, device="cpu")
    np.testing.assert_allclose(
        st.encode(QUERIES, prompt_name="query", batch_size=3), ours_q, rtol=0, atol=1e-5
    )
    np.testing.assert_allclose(st.encode(PASSAGES, batch_size=3), ours_d, rtol=0, atol=1e-5)

    base = _with_max_length(smollm2_dir, tmp_path / "base", 32)
    assert np.abs(jaxembed_encode(base, PASSAGES, tmp_path / "base") - ours_d).max() > 1e-3
