"""Contrastive and ranking losses against numpy, sentence-transformers and torch references."""

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxembed.losses import (
    CONTRASTIVE_VARIANTS,
    contrastive_loss,
    listwise_ranking_loss,
    pointwise_bce_loss,
    ranking_loss,
)

# LLVM -O0: these programs are tiny, and compiling them dominates the run time on 2 cores.
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def random_batch(seed: int, b: int = 5, group: int = 3, d: int = 6):
    rng = np.random.default_rng(seed)
    return unit(rng.normal(size=(b, d))), unit(rng.normal(size=(b, group, d)))


def duplicate_doc_ids(b: int, group: int) -> np.ndarray:
    """Distinct ids except for planted duplicates of query 0's positive (id 0)."""
    ids = np.arange(b * group).reshape(b, group)
    ids[1, 0] = 0  # another query shares query 0's positive
    ids[2, 1] = 0  # and another query mined it as a hard negative
    ids[0, 2] = 0  # and query 0's own mined negative is its positive
    ids[3, 2] = ids[4, 0]  # a duplicate that touches no positive of queries 0..3
    return ids


# ---------------------------------------------------------------- numpy reference


def reference_loss(q, p, variant, temperature, doc_ids=None, margin=None) -> float:
    """Plain numpy, one explicit denominator per query, written from the variant definitions."""
    b, group, _ = p.shape
    if variant == "qwen3" and margin is None:
        margin = 0.1
    losses = []
    for i in range(b):
        pos = q[i] @ p[i, 0]
        cands = []  # (similarity, document id or None for a query candidate)
        doc_id = (lambda k, j: None) if doc_ids is None else (lambda k, j: doc_ids[k, j])
        for j in range(1, group):
            cands.append((q[i] @ p[i, j], doc_id(i, j)))
        for k in range(b):
            if k == i:
                continue
            if variant in ("gemini", "gecko"):
                cands.append((q[i] @ p[k, 0], doc_id(k, 0)))
            if variant in ("in_batch", "qwen3"):
                cands += [(q[i] @ p[k, j], doc_id(k, j)) for j in range(group)]
            if variant in ("gecko", "qwen3"):
                cands.append((q[i] @ q[k], None))
            if variant == "qwen3":
                cands += [(p[i, 0] @ p[k, j], doc_id(k, j)) for j in range(group)]
        kept = []
        for sim, cand_id in cands:
            if cand_id is not None and cand_id == doc_ids[i, 0]:
                continue
            if margin is not None and sim > pos + margin:
                continue
            kept.append(sim)
        logits = np.array([pos, *kept]) / temperature
        top = logits.max()
        losses.append(top + np.log(np.exp(logits - top).sum()) - pos / temperature)
    return float(np.mean(losses))


def finite_difference_grads(f, q, p, eps=1e-6):
    grads = []
    for x in (q, p):
        g = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            orig = x[idx]
            x[idx] = orig + eps
            up = f(q, p)
            x[idx] = orig - eps
            down = f(q, p)
            x[idx] = orig
            g[idx] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


def l2_normalize(x: jax.Array) -> jax.Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def jax_value_and_grads(q, p, normalize=False, **kwargs):
    def loss(a, b):
        if normalize:  # as the encoder does, so that gradients match cos_sim's
            a, b = l2_normalize(a), l2_normalize(b)
        return contrastive_loss(a, b, **kwargs)

    fn = fast_jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (loss, metrics), grads = fn(jnp.asarray(q, jnp.float32), jnp.asarray(p, jnp.float32))
    return float(loss), metrics, [np.asarray(g) for g in grads]


CASES = [
    pytest.param(None, None, id="plain"),
    pytest.param("dup", None, id="doc_ids"),
    pytest.param("dup", 0.02, id="doc_ids+margin"),
]


@pytest.mark.parametrize("variant", CONTRASTIVE_VARIANTS)
@pytest.mark.parametrize("ids, margin", CASES)
def test_matches_numpy_reference(variant, ids, margin):
    q, p = random_batch(seed=zlib.crc32(f"{variant}{ids}{margin}".encode()))
    temperature = 0.05
    doc_ids = duplicate_doc_ids(*p.shape[:2]) if ids else None
    if margin is not None or variant == "qwen3":
        # Finite differences need every similarity away from the masking threshold.
        m = 0.1 if margin is None else margin
        pos = np.einsum("bd,bd->b", q, p[:, 0])
        qd = np.einsum("id,kjd->ikj", q, p)
        qd[np.arange(len(q)), np.arange(len(q)), 0] = np.inf  # the positive is never masked
        sims = [qd.ravel(), (q @ q.T).ravel(), np.einsum("id,kjd->ikj", p[:, 0], p).ravel()]
        gaps = np.concatenate([s.reshape(len(q), -1) - (pos + m)[:, None] for s in sims], 1)
        assert np.min(np.abs(gaps)) > 1e-4

    kwargs = dict(variant=variant, temperature=temperature, false_negative_margin=margin)
    ref = reference_loss(q, p, variant, temperature, doc_ids, margin)
    ref_grads = finite_difference_grads(
        lambda a, b: reference_loss(a, b, variant, temperature, doc_ids, margin), q.copy(), p.copy()
    )
    ids_arg = None if doc_ids is None else jnp.asarray(doc_ids)
    loss, metrics, grads = jax_value_and_grads(q, p, doc_ids=ids_arg, **kwargs)

    np.testing.assert_allclose(loss, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, atol=2e-4 * np.abs(r).max(), rtol=0)
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0
    pos_sim = np.einsum("bd,bd->b", q, p[:, 0]).mean()
    np.testing.assert_allclose(metrics["pos_sim"], pos_sim, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["gemini", "in_batch", "gecko", "qwen3"])
def test_masks_change_the_loss(variant):
    """Guards the reference test against masks that never fire."""
    q, p = random_batch(seed=3)
    doc_ids = jnp.asarray(duplicate_doc_ids(*p.shape[:2]))
    margin = None if variant == "qwen3" else 0.05
    q, p = jnp.asarray(q), jnp.asarray(p)
    plain = contrastive_loss(q, p, variant=variant)
    masked = contrastive_loss(q, p, variant=variant, doc_ids=doc_ids, false_negative_margin=margin)
    unmasked = contrastive_loss(q, p, variant=variant, false_negative_margin=10.0)
    assert float(masked[1]["num_negatives"]) < float(unmasked[1]["num_negatives"])
    assert abs(float(masked[0]) - float(unmasked[0])) > 1e-3
    if variant == "qwen3":  # the default 0.1 margin is on
        assert float(plain[1]["num_negatives"]) < float(unmasked[1]["num_negatives"])


def test_negative_counts_per_variant():
    b, group = 5, 3
    q, p = random_batch(seed=0, b=b, group=group)
    expected = {
        "hn_only": group - 1,
        "gemini": group - 1 + (b - 1),
        "in_batch": b * group - 1,
        "gecko": group - 1 + 2 * (b - 1),
        "qwen3": b * group - 1 + (b - 1) + (b - 1) * group,
    }
    for variant, count in expected.items():
        _, metrics = contrastive_loss(
            jnp.asarray(q), jnp.asarray(p), variant=variant, false_negative_margin=10.0
        )
        assert float(metrics["num_negatives"]) == count, variant


def test_accuracy_metric():
    q = unit(np.eye(3, 4))
    p = np.stack([q, unit(q + np.roll(q, 1, axis=0))], axis=1)  # positive is q itself
    p[2, 1] = q[2]  # the last query's negative ties its positive: not ranked first
    _, metrics = contrastive_loss(jnp.asarray(q), jnp.asarray(p), variant="in_batch")
    np.testing.assert_allclose(metrics["accuracy"], 2 / 3)
    np.testing.assert_allclose(metrics["pos_sim"], 1.0, rtol=1e-6)


def test_float32_whatever_the_input_dtype():
    q, p = random_batch(seed=1)
    qb, pb = jnp.asarray(q, jnp.bfloat16), jnp.asarray(p, jnp.bfloat16)
    for variant in CONTRASTIVE_VARIANTS:
        loss, metrics = contrastive_loss(qb, pb, variant=variant)
        assert loss.dtype == jnp.float32 and metrics["neg_sim"].dtype == jnp.float32
        ref = reference_loss(np.asarray(qb, np.float64), np.asarray(pb, np.float64), variant, 0.02)
        np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    grads = jax.grad(lambda a, b: contrastive_loss(a, b)[0], argnums=(0, 1))(qb, pb)
    assert all(g.dtype == jnp.bfloat16 for g in grads)


# ----------------------------------------------------- sentence-transformers reference


def mnrl_loss_and_grads(q, p, temperature, directions=("query_to_doc",)):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    # Only compute_loss_from_embeddings is used, so no model is needed.
    mnrl = MultipleNegativesRankingLoss(model=None, scale=1.0 / temperature, directions=directions)
    qt = torch.tensor(q, requires_grad=True)
    pt = torch.tensor(p, requires_grad=True)
    columns = [pt[:, j] for j in range(p.shape[1])]  # anchor, positive, negative_1, ...
    loss = mnrl.compute_loss_from_embeddings([qt, *columns], labels=None)
    loss.backward()
    return loss.item(), qt.grad.numpy(), pt.grad.numpy()


def raw_embeddings(seed, b, group, d):
    """Unnormalized vectors: MNRL's cos_sim normalizes them, our side does it before the loss."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, d)) * 3, rng.normal(size=(b, group, d)) * 3


@pytest.mark.parametrize("group", [1, 3])
def test_in_batch_equals_sentence_transformers_mnrl(group):
    q, p = raw_embeddings(seed=group, b=6, group=group, d=8)
    temperature = 0.05
    ref_loss, ref_gq, ref_gp = mnrl_loss_and_grads(q, p, temperature)
    loss, _, (gq, gp) = jax_value_and_grads(
        q, p, normalize=True, variant="in_batch", temperature=temperature
    )
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(gq, ref_gq, atol=1e-5 * np.abs(ref_gq).max())
    np.testing.assert_allclose(gp, ref_gp, atol=1e-5 * np.abs(ref_gp).max())


def test_qwen3_without_margin_equals_mnrl_same_tower_directions():
    q, p = raw_embeddings(seed=7, b=6, group=3, d=8)
    temperature = 0.05
    ref_loss, ref_gq, ref_gp = mnrl_loss_and_grads(
        q, p, temperature, directions=("query_to_doc", "query_to_query", "doc_to_doc")
    )
    loss, _, (gq, gp) = jax_value_and_grads(
        q, p, normalize=True, variant="qwen3", temperature=temperature, false_negative_margin=10.0
    )
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(gq, ref_gq, atol=1e-5 * np.abs(ref_gq).max())
    np.testing.assert_allclose(gp, ref_gp, atol=1e-5 * np.abs(ref_gp).max())


# ----------------------------------------------------------- cross-device negatives


def make_mesh(shape):
    return Mesh(np.array(jax.devices()).reshape(shape), ("data", "fsdp", "tensor"))


def all_variants_loss_and_grads(q, p, doc_ids):
    """Every variant in one program, so each mesh costs one compilation."""
    out = {}
    for variant in CONTRASTIVE_VARIANTS:
        fn = lambda a, b, v=variant: contrastive_loss(
            a, b, variant=v, temperature=0.02, doc_ids=doc_ids, false_negative_margin=0.2
        )
        out[variant] = jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(q, p)
    return out


def sharding_case():
    q, p = random_batch(seed=11, b=16, group=3, d=16)
    doc_ids = np.arange(16 * 3).reshape(16, 3)
    doc_ids[9, 0] = doc_ids[0, 0]  # a duplicate positive on another device
    doc_ids[14, 2] = doc_ids[1, 0]
    return jnp.asarray(q), jnp.asarray(p), jnp.asarray(doc_ids)


@functools.cache
def single_device_reference():
    return jax.device_get(fast_jit(all_variants_loss_and_grads)(*sharding_case()))


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_sharded_global_batch_matches_single_device(shape):
    mesh = make_mesh(shape)
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    args = [jax.device_put(x, batch) for x in sharding_case()]
    assert len(args[1].sharding.device_set) == 8
    sharded = fast_jit(all_variants_loss_and_grads, in_shardings=(batch, batch, batch))
    results = sharded(*args)
    for variant, ((ref_loss, ref_metrics), ref_grads) in single_device_reference().items():
        (loss, metrics), grads = results[variant]
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, err_msg=variant)
        for key in ref_metrics:
            np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-5, atol=1e-6)
        for g, r in zip(grads, ref_grads, strict=True):
            np.testing.assert_allclose(g, r, atol=1e-5 * np.abs(r).max(), rtol=0, err_msg=variant)


# ------------------------------------------------------------------- ranking losses


def test_listwise_ranking_loss_matches_numpy_and_torch():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(6, 5)) * 3
    temperature = 0.5
    ref = np.mean(
        [np.log(np.exp(row / temperature).sum()) - row[0] / temperature for row in scores]
    )
    torch_ref = torch.nn.functional.cross_entropy(
        torch.tensor(scores / temperature), torch.zeros(6, dtype=torch.long)
    ).item()
    s = jnp.asarray(scores, jnp.float32)
    (loss, metrics), grad = jax.value_and_grad(
        lambda x: listwise_ranking_loss(x, temperature=temperature), has_aux=True
    )(s)
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    np.testing.assert_allclose(loss, torch_ref, rtol=1e-6)
    softmax = np.exp(scores / temperature)
    softmax /= softmax.sum(-1, keepdims=True)
    analytic = (softmax - np.eye(5)[0]) / temperature / 6
    np.testing.assert_allclose(grad, analytic, atol=1e-6)
    assert float(metrics["accuracy"]) == np.mean(scores[:, 0] > scores[:, 1:].max(-1))
    np.testing.assert_allclose(ranking_loss(s, kind="listwise", temperature=temperature)[0], loss)


def test_pointwise_bce_matches_numpy_and_torch():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(4, 3)) * 4
    labels = np.eye(3)[np.zeros(4, int)]
    sig = 1 / (1 + np.exp(-scores))
    ref = -np.mean(labels * np.log(sig) + (1 - labels) * np.log(1 - sig))
    torch_ref = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(scores), torch.tensor(labels)
    ).item()
    s = jnp.asarray(scores, jnp.float32)
    (loss, _), grad = jax.value_and_grad(pointwise_bce_loss, has_aux=True)(s)
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    np.testing.assert_allclose(loss, torch_ref, rtol=1e-6)
    np.testing.assert_allclose(grad, (sig - labels) / scores.size, atol=1e-7)
    soft = jnp.asarray(rng.uniform(size=(4, 3)), jnp.float32)
    np.testing.assert_allclose(
        pointwise_bce_loss(s, soft)[0],
        torch.nn.functional.binary_cross_entropy_with_logits(
            torch.tensor(scores), torch.tensor(np.asarray(soft, np.float64))
        ).item(),
        rtol=1e-6,
    )
    np.testing.assert_allclose(ranking_loss(s, kind="bce")[0], loss)
    assert pointwise_bce_loss(s.astype(jnp.bfloat16))[0].dtype == jnp.float32


# ------------------------------------------------------------------------ bad config


@pytest.mark.parametrize(
    "kwargs, shapes, match",
    [
        (dict(variant="mnrl"), None, "variant='mnrl'"),
        (dict(temperature=0.0), None, "temperature=0.0"),
        (dict(temperature=-0.5), None, "temperature=-0.5"),
        (dict(temperature=float("nan")), None, "temperature=nan"),
        (dict(false_negative_margin="big"), None, "false_negative_margin"),
        ({}, ((4, 8), (5, 2, 8)), r"p.shape=\(5, 2, 8\)"),
        ({}, ((4, 8), (4, 2, 7)), r"p.shape=\(4, 2, 7\)"),
        ({}, ((4, 8), (4, 8)), r"p.shape=\(4, 8\)"),
        ({}, ((4, 1, 8), (4, 2, 8)), r"q.shape=\(4, 1, 8\)"),
        (dict(doc_ids=np.zeros((4, 3), int)), None, r"doc_ids.shape=\(4, 3\)"),
    ],
)
def test_bad_contrastive_config_raises(kwargs, shapes, match):
    q_shape, p_shape = shapes or ((4, 8), (4, 2, 8))
    with pytest.raises(ValueError, match=match):
        contrastive_loss(jnp.ones(q_shape), jnp.ones(p_shape), **kwargs)


def test_bad_ranking_config_raises():
    with pytest.raises(ValueError, match="kind='pairwise'"):
        ranking_loss(jnp.ones((2, 3)), kind="pairwise")
    with pytest.raises(ValueError, match="temperature=0"):
        listwise_ranking_loss(jnp.ones((2, 3)), temperature=0)
    with pytest.raises(ValueError, match=r"scores.shape=\(6,\)"):
        listwise_ranking_loss(jnp.ones(6))
    with pytest.raises(ValueError, match=r"labels.shape=\(2, 2\)"):
        pointwise_bce_loss(jnp.ones((2, 3)), jnp.ones((2, 2)))


def test_traced_temperature_is_accepted():
    q, p = random_batch(seed=2)
    grad = jax.grad(lambda t: contrastive_loss(jnp.asarray(q), jnp.asarray(p), temperature=t)[0])
    assert np.isfinite(float(grad(jnp.float32(0.05))))
