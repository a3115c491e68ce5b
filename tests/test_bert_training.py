"""Training BERT-family models on the real all-MiniLM-L6-v2: one train step's loss and every
gradient against sentence-transformers' MultipleNegativesRankingLoss (full fine-tune) and
PEFT (LoRA), a cross-encoder's listwise step against PyTorch, and a CLI run whose export
`SentenceTransformer` loads, embeds as `jaxembed encode` does, and imports back bit for
bit."""

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
from jaxembed.models.lora import LoraConfig
from jaxembed.models.reranker import init_head
from jaxembed.peft_export import peft_tensors
from jaxembed.run_steps import lookup
from jaxembed.train.step import StepSettings

from hf_reference import (
    assert_step_matches,
    backbone_gradients,
    gradient_step,
    jaxembed_encode,
    paired_tensors,
)

QUERIES = [
    "what protein regulates the cell cycle checkpoint?",
    "does vitamin D lower the risk of fractures",
    "How do T cells recognise antigens?",
    "effect of statins on cholesterol",
]
POSITIVES = [
    "p53 halts the cell cycle at the G1/S checkpoint in response to DNA damage.",
    "Vitamin D supplementation reduced hip fractures in elderly women in a large trial.",
    "T cell receptors bind peptide fragments presented by MHC molecules.",
    "Statins inhibit HMG-CoA reductase and lower LDL cholesterol levels.",
]
NEGATIVES = [  # a hard negative per query: on topic, not the answer
    "Cyclins were first discovered in sea urchin embryos.",
    "Vitamin D is synthesized in the skin under ultraviolet light.",
    "B cells produce antibodies after differentiating into plasma cells.",
    "Dietary cholesterol is absorbed in the small intestine.",
]
REPO = Path(__file__).resolve().parents[1]
SCALE = 20.0  # sentence-transformers' default; temperature 0.05


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    config = architectures.config_from_hf(hf.read_hf_config(minilm_dir))
    return config, hf.load_params(minilm_dir, config), hf.load_tokenizer(minilm_dir)


def _features(st_model, texts):
    return st_model.preprocess(texts)


def _bi_encoder_batch(st_model, rows=(0, 1, 2, 3)):
    """sentence-transformers' own tokenization of the three columns (of the fixture `rows`);
    passages padded to one length so they stack as [B, 1 + N, L] for jaxembed."""
    queries = _features(st_model, [QUERIES[i] for i in rows])
    passages = _features(st_model, [t for i in rows for t in (POSITIVES[i], NEGATIVES[i])])
    b = len(rows)
    batch = {
        "query_input_ids": queries["input_ids"].numpy().astype(np.int32),
        "query_attention_mask": queries["attention_mask"].numpy().astype(np.int32),
        "passage_input_ids": passages["input_ids"].numpy().astype(np.int32).reshape(b, 2, -1),
        "passage_attention_mask": passages["attention_mask"]
        .numpy()
        .astype(np.int32)
        .reshape(b, 2, -1),
    }
    columns = [queries] + [
        {k: v[j::2] if isinstance(v, torch.Tensor) else v for k, v in passages.items()}
        for j in (0, 1)
    ]
    return batch, columns


def _mnrl_step(st_model, columns) -> float:
    """MultipleNegativesRankingLoss (anchor, positive, negative) forward and backward."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    st_model.zero_grad(set_to_none=True)
    loss = MultipleNegativesRankingLoss(st_model, scale=SCALE)(columns, None)
    loss.backward()
    return loss.item()


def _settings() -> StepSettings:
    return StepSettings(
        pooling="mean", loss_variant="in_batch", temperature=1 / SCALE, mask_duplicates=False
    )


def _st_model(minilm_dir):
    from sentence_transformers import SentenceTransformer

    # eval(): jaxembed's BERT has no hidden/attention dropout; gradients flow all the same.
    return SentenceTransformer(str(minilm_dir), device="cpu").eval()


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scan", "layer-loop"])
def test_minilm_step_matches_sentence_transformers_mnrl(minilm, minilm_dir, scan_layers):
    config, params, _ = minilm
    config = dataclasses.replace(config, scan_layers=scan_layers)
    st_model = _st_model(minilm_dir)
    batch, columns = _bi_encoder_batch(st_model)
    loss, grad_norm, grads = gradient_step(config, params, batch, _settings())
    ref_loss = _mnrl_step(st_model, columns)
    named = dict(st_model[0].auto_model.named_parameters())
    ours, ref = backbone_gradients(config, grads, named)
    assert_step_matches(loss, grad_norm, ours, ref_loss, ref)


def _recorded_keep_masks(monkeypatch, config, params, batch) -> tuple[list, list]:
    """The dropout masks jaxembed's step draws, in the order they are drawn: the step's
    forward run eagerly with its dropout key and row numbers (tasks/embedding.py), with
    `row_keep_mask` recorded."""
    from jaxembed.models import dropout
    from jaxembed.models.encoder import make_embed_fn

    drawn = []
    original = dropout.row_keep_mask

    def recording(*args):
        keep = original(*args)
        drawn.append(np.asarray(keep))
        return keep

    monkeypatch.setattr(dropout, "row_keep_mask", recording)
    embed = make_embed_fn(config, "mean")
    key = jax.random.fold_in(jax.random.key(0), 0)  # gradient_step's state: rng key(0), step 0
    b = batch["query_input_ids"].shape[0]
    queries = {
        "input_ids": batch["query_input_ids"],
        "attention_mask": batch["query_attention_mask"],
        "row_ids": np.arange(b, dtype=np.int32),
    }
    embed(params, queries, None, key)
    query_masks, drawn = drawn, []
    passages = {
        "input_ids": batch["passage_input_ids"].reshape(2 * b, -1),
        "attention_mask": batch["passage_attention_mask"].reshape(2 * b, -1),
        "row_ids": b + np.arange(2 * b, dtype=np.int32),
    }
    embed(params, passages, None, key)
    monkeypatch.undo()
    return query_masks, drawn


def test_minilm_step_with_dropout_matches_sentence_transformers(minilm, minilm_dir, monkeypatch):
    """Dropout where HF BERT trains with it (embeddings, attention probabilities, both
    sublayer outputs, the checkpoint's 0.1): one step with dropout on equals
    sentence-transformers' MNRL in train mode fed the very masks jaxembed drew."""
    from sentence_transformers import SentenceTransformer

    config, params, _ = minilm
    rates = architectures.BERT.checkpoint_dropout(hf.read_hf_config(minilm_dir))
    assert rates == {"hidden_dropout": 0.1, "attention_dropout": 0.1}
    config = dataclasses.replace(config, scan_layers=False, **rates)
    st_model = SentenceTransformer(
        str(minilm_dir), device="cpu", model_kwargs={"attn_implementation": "eager"}
    ).train()
    batch, columns = _bi_encoder_batch(st_model)
    loss, grad_norm, grads = gradient_step(config, params, batch, _settings())
    query_masks, passage_masks = _recorded_keep_masks(monkeypatch, config, params, batch)
    sites = 1 + 3 * config.num_layers  # embeddings; per layer probabilities, two outputs
    assert len(query_masks) == len(passage_masks) == sites
    # MNRL embeds the anchors, then positives and negatives in one forward (all positives
    # first); jaxembed's passage rows interleave each query's positive and negative.
    queue = list(query_masks)
    queue += [np.concatenate([m[0::2], m[1::2]]) for m in passage_masks]

    def replayed(x, p=0.5, training=True, inplace=False):
        assert training and p == 0.1
        keep = torch.from_numpy(queue.pop(0).reshape(x.shape).copy())
        return torch.where(keep, x / (1 - p), torch.zeros_like(x))

    monkeypatch.setattr(torch.nn.functional, "dropout", replayed)
    ref_loss = _mnrl_step(st_model, columns)
    monkeypatch.undo()
    assert not queue, f"{len(queue)} masks left: the reference dropped at fewer sites"
    named = dict(st_model[0].auto_model.named_parameters())
    ours, ref = backbone_gradients(config, grads, named)
    assert_step_matches(loss, grad_norm, ours, ref_loss, ref)
    # And the masks matter: without them the step is another one.
    plain_loss, _, _ = gradient_step(
        dataclasses.replace(config, hidden_dropout=0.0, attention_dropout=0.0),
        params,
        batch,
        _settings(),
    )
    assert abs(plain_loss - loss) > 1e-3


def test_minilm_training_steps_match_the_hf_trainers_optimizer(minilm, minilm_dir):
    """Five steps of `jaxembed train`'s optimizer (configs/sentence_transformers.py: AdamW
    without weight decay, linear warm-up and decay, clipping at 1.0) against what HF's
    Trainer builds for sentence-transformers — torch AdamW, `get_linear_schedule_with_warmup`,
    `clip_grad_norm_` — on the same batches: every weight's total change equal. One step
    cannot show this (warm-up starts at lr 0 in both); a schedule off by a step, another
    epsilon or decay, or clipping applied after Adam would each differ by far more."""
    from transformers import get_linear_schedule_with_warmup

    from jaxembed.config import load_config
    from jaxembed.train.settings import optimizer_settings
    from jaxembed.train.state import create_state
    from jaxembed.train.step import make_train_step

    config, params, _ = minilm
    config = dataclasses.replace(config, scan_layers=False)
    steps, warmup, lr = 5, 2, 1e-4  # lr above the recipe's so five steps move every weight
    recipe = load_config(str(REPO / "configs/sentence_transformers.py"))
    recipe.optimizer.learning_rate, recipe.optimizer.warmup_steps = lr, warmup
    optimizer, schedule = optimizer_settings(recipe).build(steps)
    train_step = jax.jit(make_train_step(config, optimizer, schedule, _settings()))
    state = create_state(params, optimizer, jax.random.key(0))

    st_model = _st_model(minilm_dir)
    backbone = st_model[0].auto_model
    before = {n: p.detach().numpy().copy() for n, p in backbone.named_parameters()}
    torch_optimizer = torch.optim.AdamW(backbone.parameters(), lr=lr, weight_decay=0.0)
    torch_schedule = get_linear_schedule_with_warmup(torch_optimizer, warmup, steps)
    for step in range(steps):
        rows = [(step + i) % len(QUERIES) for i in range(3)]
        batch, columns = _bi_encoder_batch(st_model, rows)
        state, _ = train_step(state, batch)
        _mnrl_step(st_model, columns)
        torch.nn.utils.clip_grad_norm_(backbone.parameters(), 1.0)
        torch_optimizer.step()
        torch_schedule.step()

    after = {n: p.detach().numpy() for n, p in backbone.named_parameters()}
    ours, ref = paired_tensors(config, state.params, after)
    start, _ = paired_tensors(config, params, before)
    # The key bias's true gradient is zero (softmax cancels a per-query constant), so Adam
    # turns f32 noise into +-lr steps of random sign on both sides: no reference to compare.
    compared = [name for name in ref if not name.endswith("attention.self.key.bias")]
    moved = {name: ref[name] - start[name] for name in compared}
    assert all(np.abs(moved[name]).max() > 0.5 * lr for name in compared)
    error = {
        name: np.linalg.norm((ours[name] - start[name]) - moved[name]) / np.linalg.norm(moved[name])
        for name in compared
    }
    # Adam scales each element to a step of about lr whatever its gradient's size, so an
    # element whose gradient is near f32 noise moves by lr on both sides with a different
    # fraction; embedding rows, touched by a token or a position once or twice, hold many
    # (seen: 1.6e-3 for the word table, 4.7e-4 for positions, below 1.5e-4 everywhere else).
    tables = {name for name in compared if "embeddings" in name and "LayerNorm" not in name}
    assert max(error[name] for name in tables) < 5e-3, error
    assert max(error[name] for name in compared if name not in tables) < 5e-4, error


def test_minilm_lora_step_matches_peft(minilm, minilm_dir):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, set_peft_model_state_dict

    base_config, params, _ = minilm
    targets = architectures.BERT.lora_default_targets
    config = dataclasses.replace(base_config, lora=LoraConfig(8, 16.0, 0.0, targets))
    adapters = init_adapters(config, jax.random.PRNGKey(1))
    rng = np.random.default_rng(0)  # B = 0 would make every A gradient zero
    adapters = jax.tree_util.tree_map_with_path(
        lambda path, x: (
            jnp.asarray(rng.normal(0, 0.05, x.shape), x.dtype) if "_lora_b" in str(path[-1]) else x
        ),
        adapters,
    )
    assert len(jax.tree.leaves(adapters)) == 2 * len(architectures.BERT.lora_projections)
    st_model = _st_model(minilm_dir)
    batch, columns = _bi_encoder_batch(st_model)
    loss, grad_norm, grads = gradient_step(config, params, batch, _settings(), adapters)

    tensors, modules = peft_tensors(adapters, config)
    assert modules == ["dense", "key", "query", "value"]  # PEFT's names for all six
    backbone = st_model[0].auto_model
    peft_model = get_peft_model(
        backbone, PeftLoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=modules)
    )
    result = set_peft_model_state_dict(
        peft_model, {k: torch.from_numpy(v) for k, v in tensors.items()}
    )
    assert not result.unexpected_keys
    st_model[0].auto_model = peft_model.base_model.model
    ref_loss = _mnrl_step(st_model, columns)
    ours, _ = peft_tensors(grads["adapters"], config)
    ref = {
        name.replace(".default", ""): parameter.grad.numpy()
        for name, parameter in peft_model.named_parameters()
        # PEFT's "dense" also adapts the pooler, which no embedding reads (grad None).
        if parameter.requires_grad and ".pooler." not in name
    }
    assert_step_matches(loss, grad_norm, ours, ref_loss, ref)


def test_minilm_cross_encoder_listwise_step_matches_pytorch(minilm, minilm_dir):
    """A BERT cross-encoder (jaxembed's reranker: joined pair, mean pooling, linear head)
    against the same computation in PyTorch: listwise InfoNCE over [positive, negative]."""
    from transformers import AutoModel

    config, backbone, tokenizer = minilm
    head = jax.tree.map(np.asarray, init_head(config, jax.random.PRNGKey(3)))
    params = {"backbone": backbone, "score": head}
    pairs = [
        (q, p)
        for q, pos, neg in zip(QUERIES, POSITIVES, NEGATIVES, strict=True)
        for p in (pos, neg)
    ]
    enc = tokenizer([q for q, _ in pairs], [p for _, p in pairs], padding=True, return_tensors="np")
    b = len(QUERIES)
    batch = {
        "pair_input_ids": enc["input_ids"].astype(np.int32).reshape(b, 2, -1),
        "pair_attention_mask": enc["attention_mask"].astype(np.int32).reshape(b, 2, -1),
    }
    settings = StepSettings(pooling="mean", task="reranker", ranking="listwise")
    loss, grad_norm, grads = gradient_step(config, params, batch, settings)

    model = AutoModel.from_pretrained(minilm_dir, dtype=torch.float32).eval()
    linear = torch.nn.Linear(config.hidden_size, 1)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(head["kernel"].T.copy()))
        linear.bias.copy_(torch.from_numpy(head["bias"].copy()))
    ids = torch.from_numpy(enc["input_ids"]).long()
    mask = torch.from_numpy(enc["attention_mask"]).long()
    # jaxembed's BERT runs one segment (token type 0 throughout).
    hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
    hidden = hidden.last_hidden_state
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    scores = linear(pooled)[:, 0].reshape(b, 2)
    ref_loss = torch.nn.functional.cross_entropy(scores, torch.zeros(b, dtype=torch.long))
    ref_loss.backward()

    named = dict(model.named_parameters())
    ours, ref = backbone_gradients(config, grads["backbone"], named)
    ours["score.kernel"] = np.asarray(grads["score"]["kernel"])
    ref["score.kernel"] = linear.weight.grad.numpy().T
    ours["score.bias"] = np.asarray(grads["score"]["bias"])
    ref["score.bias"] = linear.bias.grad.numpy()
    assert_step_matches(loss, grad_norm, ours, ref_loss.item(), ref)


def test_minilm_reranker_exports_for_transformers_and_reads_back_exactly(
    minilm, minilm_dir, tmp_path
):
    """A BERT cross-encoder export: AutoModelForSequenceClassification (the shipped
    mean-pooling class) scores joined pairs as `jaxembed rerank` does, and reading the
    directory back gives the params bit for bit."""
    from transformers import AutoModelForSequenceClassification

    from jaxembed.models.reranker import Reranker
    from jaxembed.reranker_export import write_reranker_directory

    config, backbone, tokenizer = minilm
    rng = np.random.default_rng(5)
    # A head of unit scale, so the scores differ enough for a ranking to mean something.
    head = {"kernel": rng.normal(size=(config.hidden_size, 1)).astype(np.float32),
            "bias": np.array([0.5], np.float32)}  # fmt: skip
    params = {"backbone": jax.tree.map(np.asarray, backbone), "score": head}
    template = "question:{query} \n \n passage:{passage}"
    out = write_reranker_directory(
        tmp_path / "reranker", config, params, minilm_dir, template=template, max_length=128,
        base_hf_config=hf.read_hf_config(minilm_dir),
    )  # fmt: skip
    reranker = Reranker.from_pretrained(out)
    restored = jax.tree.map(np.asarray, reranker.params)
    assert jax.tree.structure(restored) == jax.tree.structure(params)
    pairs = zip(jax.tree.leaves(restored), jax.tree.leaves(params), strict=True)
    assert all(np.array_equal(a, b) for a, b in pairs)
    queries = [q for q in QUERIES for _ in range(2)]
    passages = [p for pos, neg in zip(POSITIVES, NEGATIVES, strict=True) for p in (pos, neg)]
    ours = reranker.score(queries, passages, batch_size=3, max_length=128, show_progress=False)

    model = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True)
    assert type(model).__name__ == "MeanPoolBertForSequenceClassification"
    texts = [template.format(query=q, passage=p) for q, p in zip(queries, passages, strict=True)]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = model.eval()(**enc).logits[:, 0].numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0)
    assert np.ptp(reference) > 0.1


def _write_training_data(path, rows: int = 32) -> None:
    with path.open("w") as f:
        for i in range(rows):
            k = i % len(QUERIES)
            record = {
                "query": f"{QUERIES[k]} ({i})",
                "positives": [POSITIVES[k]],
                "negatives": [NEGATIVES[k]],
            }
            f.write(json.dumps(record) + "\n")


def test_minilm_cli_run_exports_a_sentence_transformer_and_imports_back_exactly(
    minilm_dir, tmp_path
):
    from sentence_transformers import SentenceTransformer

    from jaxembed.run_steps import load_run_config, resolve_step, restore_numpy

    data = tmp_path / "train.jsonl"
    _write_training_data(data)
    workdir, out = tmp_path / "run", tmp_path / "export"
    common = ["--config", "configs/sentence_transformers.py", "--workdir", str(workdir)]
    overrides = [
        f"model.hf_path={minilm_dir}",
        f"data.train_files={data}",
        "data.global_batch_size=8",  # one row per test device
        "data.query_max_length=32",
        "data.passage_max_length=48",
        "optimizer.learning_rate=1e-4",
        "optimizer.warmup_steps=0",
        "train.steps=3",
        "train.log_every=1",
        "train.checkpoint_every=3",
    ]
    assert main(["train", *common, *[f"--config.{o}" for o in overrides]]) == 0
    run_config = json.loads((workdir / "config.json").read_text())
    assert run_config["model"]["pooling"] == "mean"  # "auto" read the checkpoint's Pooling
    assert main(["export", "--workdir", str(workdir), "--output", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    assert not (out / "modeling_bidirectional.py").exists()  # stock BertModel

    texts = QUERIES + POSITIVES
    st = SentenceTransformer(str(out), device="cpu").encode(texts, convert_to_numpy=True)
    ours = jaxembed_encode(out, texts, tmp_path)
    np.testing.assert_allclose(ours, st, atol=2e-6)
    before = SentenceTransformer(str(minilm_dir), device="cpu").encode(texts)
    assert np.abs(st - before).max() > 1e-3  # the run trained something

    config = architectures.config_from_hf(hf.read_hf_config(out))
    imported = hf.load_params(out, config)
    step_dir, _ = resolve_step(workdir)
    restored, _ = restore_numpy(step_dir, load_run_config(workdir), with_params=True)
    trained = restored["params"]
    flat_imported = jax.tree_util.tree_leaves_with_path(imported)
    assert len(flat_imported) == len(jax.tree.leaves(trained))
    for path, value in flat_imported:
        np.testing.assert_array_equal(np.asarray(value), lookup(trained, [p.key for p in path]))

    # The run's workdir mines as a teacher exactly as its export does.
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    docs = POSITIVES + NEGATIVES
    (beir / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(docs))
    )
    (beir / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(QUERIES))
    )
    (beir / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(4))
    )
    mined = {}
    for name, teacher in (("workdir", workdir), ("export", out)):
        target = tmp_path / f"mined_{name}.jsonl"
        args = ["mine", "--corpus", str(beir / "corpus.jsonl"), "--quiet"]
        args += ["--queries", str(beir / "queries.jsonl"), "--qrels", str(beir / "qrels/train.tsv")]
        args += ["--teacher", str(teacher), "--method", "naive", "--num-negatives", "3"]
        args += ["--max-length", "48", "--output", str(target)]
        assert main(args) == 0
        mined[name] = [json.loads(line) for line in target.read_text().splitlines()]
    assert mined["workdir"] == mined["export"]
    assert all(len(r["negatives"]) == 3 for r in mined["export"])

    # A uniform merge of the base and the export is their mean, tensor by tensor.
    from safetensors.numpy import load_file

    merged = tmp_path / "merged"
    assert main(["merge", "--inputs", str(minilm_dir), str(out), "--output", str(merged)]) == 0
    base, tuned = load_file(minilm_dir / "model.safetensors"), load_file(out / "model.safetensors")
    averaged = load_file(merged / "model.safetensors")
    assert averaged.keys() == tuned.keys()
    for name, value in averaged.items():
        np.testing.assert_allclose(value, (base[name] + tuned[name]) / 2, rtol=0, atol=1e-7)
    assert SentenceTransformer(str(merged), device="cpu").encode(texts).shape == st.shape
