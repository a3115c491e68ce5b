"""Contrastive (bi-encoder) and ranking (reranker) losses: pure functions of embeddings/scores.

Conventions shared by every contrastive variant:

* ``q`` is ``[B, D]`` and ``p`` is ``[B, 1+N, D]``; ``p[i, 0]`` is query ``i``'s positive and
  ``p[i, 1:]`` its N mined hard negatives. Both are L2-normalized, so a dot product is the
  cosine similarity. ``B`` is the *global* batch.
* Similarities, logits, log-softmax and the loss are float32 whatever the input dtype.
* ``logit = sim / temperature``; loss_i = ``log Z_i - s(q_i, p_i0) / temperature`` where ``Z_i``
  is the variant's denominator (always including the positive); the loss is the batch mean.

Cross-device negatives: we rely on GSPMD rather than an explicit ``shard_map`` + ``all_gather``.
The loss is written over the global arrays, so under ``jit`` with the batch sharded over
``('data', 'fsdp')`` every query sees every candidate of the global batch by construction, and
XLA inserts the collectives and their transposes, so gradients reach the gathered embeddings on
their home devices. (For ``in_batch`` on a 2x4 mesh XLA all-gathers the queries, ``[B, D]``,
keeps the ``[B, candidates]`` logits sharded by candidate, 1/8 of them per device, and
all-reduces the per-query log-sum-exp partials.) Why not ``shard_map``: the loss then needs no
mesh, axis names or per-device index offsets, works unchanged on one device, on any mesh shape
and across hosts, composes with GradCache (which hands it global embedding arrays), and has no
hand-written backward collective to get wrong; embeddings are tiny next to the encoder, so the
gathers are cheap. The tests check loss and gradients on several 8-device meshes against the
single-device values.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Metrics = dict[str, Array]

CONTRASTIVE_VARIANTS = ("hn_only", "gemini", "in_batch", "gecko", "qwen3")
RANKING_LOSSES = ("listwise", "bce")
# Qwen3-Embedding masks any candidate scoring more than 0.1 above the positive.
QWEN3_DEFAULT_MARGIN = 0.1


def contrastive_loss(
    q: Array,
    p: Array,
    *,
    variant: str = "hn_only",
    temperature: float | Array = 0.02,
    doc_ids: Array | None = None,
    false_negative_margin: float | None = None,
) -> tuple[Array, Metrics]:
    """InfoNCE with the negatives chosen by ``variant``; returns ``(loss, metrics)``.

    Notation: ``s(a, b) = a . b``, ``e(a, b) = exp(s(a, b) / temperature)``; ``p_kj = p[k, j]``;
    ``k != i`` runs over the other queries of the global batch. Denominators ``Z_i``:

    * ``hn_only`` (llama-embed-nemotron): ``sum_{j=0..N} e(q_i, p_ij)``.
    * ``gemini``: ``sum_{j=0..N} e(q_i, p_ij) + sum_{k!=i} e(q_i, p_k0)``.
    * ``in_batch`` (MultipleNegativesRankingLoss, NV-Retriever stage 1):
      ``sum_{k} sum_{j=0..N} e(q_i, p_kj)``.
    * ``gecko``: gemini's ``Z_i + sum_{k!=i} e(q_i, q_k)``.
    * ``qwen3``: in_batch's ``Z_i + sum_{k!=i} e(q_i, q_k) + sum_{k!=i} sum_{j=0..N} e(p_i0, p_kj)``
      (query-query and positive-document-document terms; a query's own documents are never its
      doc-doc candidates), each negative term multiplied by the false-negative mask below.

    Masks (a masked candidate is dropped from ``Z_i``; the positive ``p_i0`` is never masked):

    * ``doc_ids`` ``[B, 1+N]``: a document candidate ``p_kj`` (any term, any variant) with
      ``doc_ids[k, j] == doc_ids[i, 0]`` is the same document as the positive, so it is dropped.
    * ``false_negative_margin`` ``m``: a negative with ``s > s(q_i, p_i0) + m`` is dropped (for the
      doc-doc term ``s = s(p_i0, p_kj)``, as in Qwen3-Embedding). ``qwen3`` uses ``m = 0.1`` when
      None; the other variants mask nothing when None, and honour ``m`` when given.

    Metrics (float32 scalars, no gradient): ``accuracy`` (positive strictly above every kept
    negative), ``pos_sim`` (mean ``s(q_i, p_i0)``), ``neg_sim`` (mean similarity of the kept
    negatives) and ``num_negatives`` (kept negatives per query).
    """
    _check_contrastive_args(q, p, variant, temperature, doc_ids, false_negative_margin)
    if variant == "qwen3" and false_negative_margin is None:
        false_negative_margin = QWEN3_DEFAULT_MARGIN
    q = q.astype(jnp.float32)
    p = p.astype(jnp.float32)

    sims, keep, is_pos = _candidates(q, p, variant, doc_ids)
    pos_sim = jnp.einsum("bd,bd->b", q, p[:, 0])
    negative = keep & ~is_pos
    if false_negative_margin is not None:
        negative &= ~(sims > pos_sim[:, None] + false_negative_margin)
    keep = negative | is_pos

    logits = jnp.where(keep, sims / temperature, -jnp.inf)
    loss = jnp.mean(jax.nn.logsumexp(logits, axis=-1) - pos_sim / temperature)
    return loss, _contrastive_metrics(sims, negative, pos_sim)


def _candidates(
    q: Array, p: Array, variant: str, doc_ids: Array | None
) -> tuple[Array, Array, Array]:
    """Similarities ``[B, C]`` of each query's candidates, a keep mask and a positive mask.

    Before ``reshape`` every block is ``[B(query i), B(owner k), 1+N(slot j)]`` so that the
    ownership and slot masks are plain broadcasts.
    """
    b, group = p.shape[0], p.shape[1]
    slot = jnp.arange(group)
    if variant == "hn_only":
        sims = jnp.einsum("bd,bjd->bj", q, p)
        is_pos = jnp.broadcast_to(slot == 0, sims.shape)
        keep = jnp.ones_like(is_pos)
        if doc_ids is not None:
            keep &= (doc_ids != doc_ids[:, :1]) | is_pos
        return sims, keep, is_pos

    own = jnp.eye(b, dtype=bool)[:, :, None]
    first = (slot == 0)[None, None, :]
    same_doc = None
    if doc_ids is not None:
        same_doc = doc_ids[None, :, :] == doc_ids[:, 0][:, None, None]

    def block(sims: Array, keep: Array, is_pos: Array, docs: bool) -> tuple[Array, Array, Array]:
        shape = sims.shape
        keep, is_pos = jnp.broadcast_to(keep, shape), jnp.broadcast_to(is_pos, shape)
        if same_doc is not None and docs:
            keep &= ~same_doc | is_pos
        return tuple(x.reshape(b, -1) for x in (sims, keep, is_pos))

    # query-document: the positive lives here, at column i*(1+N).
    qd_keep = (own | first) if variant in ("gemini", "gecko") else jnp.ones((1, 1, 1), bool)
    blocks = [block(jnp.einsum("id,kjd->ikj", q, p), qd_keep, own & first, docs=True)]
    if variant in ("gecko", "qwen3"):
        blocks.append(block(jnp.einsum("id,kd->ik", q, q)[:, :, None], ~own, False, docs=False))
    if variant == "qwen3":
        blocks.append(block(jnp.einsum("id,kjd->ikj", p[:, 0], p), ~own, False, docs=True))
    sims, keep, is_pos = (jnp.concatenate(parts, axis=1) for parts in zip(*blocks, strict=True))
    return sims, keep, is_pos


def _contrastive_metrics(sims: Array, negative: Array, pos_sim: Array) -> Metrics:
    sims, pos_sim = jax.lax.stop_gradient(sims), jax.lax.stop_gradient(pos_sim)
    hardest = jnp.max(jnp.where(negative, sims, -jnp.inf), axis=-1)
    count = jnp.sum(negative)
    return {
        "accuracy": jnp.mean((pos_sim > hardest).astype(jnp.float32)),
        "pos_sim": jnp.mean(pos_sim),
        "neg_sim": jnp.sum(jnp.where(negative, sims, 0.0)) / jnp.maximum(count, 1),
        "num_negatives": count.astype(jnp.float32) / sims.shape[0],
    }


def _check_contrastive_args(
    q: Array,
    p: Array,
    variant: str,
    temperature: Any,
    doc_ids: Array | None,
    false_negative_margin: float | None,
) -> None:
    if variant not in CONTRASTIVE_VARIANTS:
        raise ValueError(f"variant={variant!r} is unknown; expected one of {CONTRASTIVE_VARIANTS}")
    _check_temperature(temperature)
    if q.ndim != 2:
        raise ValueError(f"q must have shape [B, D], got q.shape={tuple(q.shape)}")
    if p.ndim != 3 or p.shape[0] != q.shape[0] or p.shape[2] != q.shape[1]:
        raise ValueError(
            f"p must have shape [B, 1+N, D] = [{q.shape[0]}, 1+N, {q.shape[1]}] to match "
            f"q.shape={tuple(q.shape)}, got p.shape={tuple(p.shape)}"
        )
    if doc_ids is not None and tuple(doc_ids.shape) != tuple(p.shape[:2]):
        raise ValueError(
            f"doc_ids must have shape [B, 1+N] = {tuple(p.shape[:2])}, "
            f"got doc_ids.shape={tuple(doc_ids.shape)}"
        )
    if false_negative_margin is not None and not _is_finite_number(false_negative_margin):
        raise ValueError(
            f"false_negative_margin must be a finite number or None, got {false_negative_margin!r}"
        )


def _is_finite_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _check_temperature(temperature: Any) -> None:
    try:
        value = float(temperature)
    except jax.errors.ConcretizationTypeError:
        return  # a traced (learnable) temperature: its owner keeps it positive
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"temperature must be a finite number > 0, got temperature={temperature!r}"
        )


def _check_scores(scores: Array) -> None:
    if scores.ndim != 2 or scores.shape[1] < 1:
        raise ValueError(f"scores must have shape [B, 1+N], got scores.shape={tuple(scores.shape)}")


def listwise_ranking_loss(
    scores: Array, *, temperature: float | Array = 1.0
) -> tuple[Array, Metrics]:
    """Listwise InfoNCE for a reranker (NV-RerankQA): softmax cross-entropy over each row.

    ``scores`` ``[B, 1+N]`` are the reranker's outputs for ``[positive, N negatives]``;
    loss_i = ``logsumexp_j(scores_ij / temperature) - scores_i0 / temperature``, batch mean.
    """
    _check_scores(scores)
    _check_temperature(temperature)
    scores = scores.astype(jnp.float32)
    logits = scores / temperature
    loss = jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[:, 0])
    return loss, _ranking_metrics(scores)


def pointwise_bce_loss(scores: Array, labels: Array | None = None) -> tuple[Array, Metrics]:
    """Pointwise binary cross-entropy on reranker logits ``scores`` ``[B, 1+N]``.

    ``labels`` defaults to 1 for column 0 (the positive) and 0 for the negatives; the loss is
    ``mean_ij [softplus(s_ij) - y_ij * s_ij]`` (= ``-y log sigmoid(s) - (1-y) log sigmoid(-s)``).
    """
    _check_scores(scores)
    scores = scores.astype(jnp.float32)
    if labels is None:
        labels = jnp.zeros_like(scores).at[:, 0].set(1.0)
    elif tuple(labels.shape) != tuple(scores.shape):
        raise ValueError(
            f"labels must have the shape of scores {tuple(scores.shape)}, "
            f"got labels.shape={tuple(labels.shape)}"
        )
    loss = jnp.mean(jax.nn.softplus(scores) - labels.astype(jnp.float32) * scores)
    return loss, _ranking_metrics(scores)


def ranking_loss(
    scores: Array, *, kind: str = "listwise", temperature: float | Array = 1.0
) -> tuple[Array, Metrics]:
    """Config entry point for the reranker: ``kind`` is ``"listwise"`` or ``"bce"``."""
    if kind == "listwise":
        return listwise_ranking_loss(scores, temperature=temperature)
    if kind == "bce":
        return pointwise_bce_loss(scores)
    raise ValueError(f"kind={kind!r} is unknown; expected one of {RANKING_LOSSES}")


def _ranking_metrics(scores: Array) -> Metrics:
    scores = jax.lax.stop_gradient(scores)
    negatives = scores[:, 1:]
    hardest = jnp.max(negatives, axis=-1, initial=-jnp.inf)
    return {
        "accuracy": jnp.mean((scores[:, 0] > hardest).astype(jnp.float32)),
        "pos_score": jnp.mean(scores[:, 0]),
        "neg_score": jnp.mean(negatives) if negatives.size else jnp.float32(0.0),
    }
