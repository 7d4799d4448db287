"""Theorem 1 on an LM: per-sequence student steps projected on a direction, and their statistics.

Used by both setups. The student's hard-label step on sequence i is ``-grad L_i(theta)``
(next-token cross-entropy on the sequence's target tokens,
:func:`llm_bridge.experiment.training.per_sequence_loss`); its projection on ``dtheta_T`` is one
``jax.jvp`` of the per-sequence losses along ``dtheta_T`` (no backward pass, no materialised
Jacobian: the key identity ``<grad L, v> = d/dt L(theta + t v)``).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

import theory
from llm_bridge.experiment.batching import WIDTH_BUCKET, label_nll, round_up
from llm_bridge.experiment.training import per_sequence_loss, token_nll


def chunks(data: dict, chunk: int):
    """Fixed-size ``(tokens, mask, n_real)`` chunks of ``data`` (the last padded with target-free rows): one compile."""
    t, m = data["tokens"], data["mask"]
    for i in range(0, len(t), chunk):
        tt, mm = t[i:i + chunk], m[i:i + chunk]
        k = len(tt)
        if k < chunk:
            tt = np.concatenate([tt, np.repeat(tt[:1], chunk - k, axis=0)])
            mm = np.concatenate([mm, np.zeros((chunk - k,) + mm.shape[1:], bool)])
        yield jnp.asarray(tt), jnp.asarray(mm), k


def _both_reductions(t, targets):
    """``(-t / count, -t)``: the steps of each row's mean and summed loss from the summed loss's tangent ``t [B]``
    (``targets [B, K]`` marks the row's targets; a row without any counts 1)."""
    count = jnp.maximum(jnp.sum(targets.astype(t.dtype), axis=1), 1.0)
    return -t / count, -t


@partial(jax.jit, static_argnums=0)
def _seq_projection(f, params, direction, tokens, mask):
    """``-<grad L_i(params), direction>`` for every sequence i, for its mean loss and for its summed loss
    (``([B], [B])``): one jvp of the summed losses, the mean's the summed one over the row's target count
    (the count does not depend on the parameters: the jvp of the mean loss, to the same rounding)."""
    def summed(p):
        nll, w = token_nll(f(p, tokens), tokens, mask)
        return jnp.sum(nll * w, axis=1)

    return _both_reductions(jax.jvp(summed, (params,), (direction,))[1], mask[:, 1:])


@partial(jax.jit, static_argnums=0)
def _seq_projection_at(f_at, params, direction, tokens, at, label, weight):
    """:func:`_seq_projection` with the logits only where they are read: ``f_at(params, tokens, at)`` gives
    them at the positions ``at [B, K]`` that predict the targets ``label [B, K]`` (``weight`` 0 on padding)."""
    def summed(p):
        nll = label_nll(f_at(p, tokens, at), label)
        return jnp.sum(nll * weight.astype(nll.dtype), axis=1)

    return _both_reductions(jax.jvp(summed, (params,), (direction,))[1], weight)


def target_positions(tokens, mask) -> dict:
    """The targets of ``mask [B, T]`` (as in :func:`~llm_bridge.experiment.training.token_nll`: token t counts
    where ``mask[:, t]``, predicted at position t - 1, the first token never) as positions: ``at [B, K]`` the
    position predicting each target, ``label`` the target token, ``weight`` True on real targets; K is the most
    targets of any row rounded up to a multiple of ``WIDTH_BUCKET`` (a few widths, so a few compiles)."""
    tokens, mask = np.asarray(tokens), np.asarray(mask)[:, 1:]
    count = mask.sum(axis=1)
    at = np.zeros((len(mask), round_up(max(int(count.max()), 1), WIDTH_BUCKET)), np.int32)
    weight = np.zeros(at.shape, bool)
    for i, row in enumerate(mask):
        where = np.flatnonzero(row)
        at[i, :where.size], weight[i, :where.size] = where, True
    label = np.where(weight, np.take_along_axis(tokens, at + 1, axis=1), 0).astype(np.int32)
    return {"at": jnp.asarray(at), "label": jnp.asarray(label), "weight": jnp.asarray(weight)}


def length_chunks(data: dict, chunk: int, bucket: int):
    """``(tokens, mask, n_real, rows)`` chunks of ``data`` grouped by length: the rows sorted by their last
    target position, each chunk cut to the width of its longest row rounded up to a multiple of ``bucket``
    (a few widths, so a few compiles; a short row no longer pays for the longest one). A row's values do
    not depend on the padding after it (causal attention, no targets there)."""
    t, m = data["tokens"], data["mask"]
    last = np.where(m.any(axis=1), m.shape[1] - np.argmax(m[:, ::-1], axis=1), 1)
    order = np.argsort(last, kind="stable")
    for i in range(0, len(t), chunk):
        rows = order[i:i + chunk]
        width = min(t.shape[1], round_up(int(last[rows].max()), bucket))
        part = {"tokens": t[rows, :width], "mask": m[rows, :width]}
        (tt, mm, k), = chunks(part, chunk)
        yield tt, mm, k, rows


def projections_by_loss(f, params, direction, data: dict, chunk: int = 512, bucket: int | None = None,
                        f_at=None) -> dict:
    """Per-sequence hard-label student steps projected on ``direction`` (no backward pass), for each
    sequence's mean loss and for its summed loss (its score ``grad log p(sequence)``), from the same jvp:
    ``{"mean loss": [n], "summed loss": [n]}``.

    ``data``: ``{"tokens" [n, T], "mask" [n, T]}``; ``bucket``: group the rows by length
    (:func:`length_chunks`) instead of padding every chunk to the longest row; ``f_at(params, tokens, at)``:
    the model's logits at positions ``at [B, K]`` only, used instead of ``f`` where given (the LM head only
    at the targets: the same values up to float rounding, a quarter less time for SmolLM2's 49,152 tokens).
    """
    parts = ((t, m, k, np.arange(i * chunk, i * chunk + k)) for i, (t, m, k) in enumerate(chunks(data, chunk))) \
        if bucket is None else length_chunks(data, chunk, bucket)
    step = (lambda t, m: _seq_projection(f, params, direction, t, m)) if f_at is None else \
        (lambda t, m: _seq_projection_at(f_at, params, direction, t, **target_positions(t, m)))
    got = [(rows, [np.asarray(v)[:k] for v in step(t, m)]) for t, m, k, rows in parts]
    out = {}
    for j, name in enumerate(("mean loss", "summed loss")):
        out[name] = np.empty(len(data["tokens"]), got[0][1][j].dtype)  # the model's float type
        for rows, values in got:
            out[name][rows] = values[j]
    return out


def sequence_projections(f, params, direction, data: dict, chunk: int = 512, total: bool = False,
                         bucket: int | None = None) -> np.ndarray:
    """:func:`projections_by_loss` of one reduction: ``[n]``, for each sequence's summed loss with
    ``total``, else for its mean loss."""
    return projections_by_loss(f, params, direction, data, chunk, bucket)["summed loss" if total else "mean loss"]


@partial(jax.jit, static_argnums=0)
def _mean_grad(f, params, tokens, mask):
    return jax.grad(lambda p: jnp.sum(per_sequence_loss(f, p, tokens, mask)))(params)


def student_step(f, params, data: dict, chunk: int = 512):
    """``dtheta_S = -grad mean_i L_i`` over all sequences of ``data`` (the hard-label student's first step)."""
    total = None
    for t, m, _ in chunks(data, chunk):
        g = _mean_grad(f, params, t, m)
        total = g if total is None else optax.tree.add(total, g)
    return optax.tree.scale(-1.0 / len(data["tokens"]), total)


def summarise(values: np.ndarray, grid, n_boot: int, seed: int, bootstrap_n: bool = False) -> dict:
    """Per-sequence projections ``values [n]`` summarised: mean, SE, ``z = mean / SE``, the bootstrap
    sign-probability curve over ``grid`` (:func:`theory.sign_curve`), and the sample size for
    P(positive) >= 0.95 (:func:`theory.samples_for_positive`: CLT; also the bootstrap one if asked)."""
    v = np.asarray(values, np.float64)
    mean, se = float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))
    clt = theory.samples_for_positive(v, 0.95, "clt").n
    out = {"mean": mean, "se": se, "z": mean / se, "n": int(v.size), "grid": list(grid),
           "p_positive": theory.sign_curve(v, grid, n_boot, seed), "n_for_95_clt": None if clt == math.inf else clt}
    if bootstrap_n:
        out["n_for_95_bootstrap"] = theory.samples_for_positive(v, 0.95, "bootstrap", key=jax.random.key(seed),
                                                                n_boot=n_boot, grid=list(grid)).n
    return out
