"""Rows of token ids for a text model: a shared prompt prefix computed once, the rest padded.

Chat prompts share a long prefix (the template's default system prompt); :func:`split_rows` cuts it
off, :func:`prefixed_logits` runs it once and tiles its KV cache over the batch, and the
training rows are the prefix plus right-padded remainders (:func:`training_batches`, :func:`rows_loss`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm_bridge.experiment.training import token_nll


def tile(cache, n: int):
    """A batch-1 KV cache repeated for ``n`` rows (same slots, same positions)."""
    rep = lambda a: jnp.broadcast_to(a, (n,) + a.shape[1:])
    return cache._replace(k=tuple(map(rep, cache.k)), v=tuple(map(rep, cache.v)), valid=rep(cache.valid),
                          next_pos=rep(cache.next_pos))


def prefixed_logits(model, prefix, rest, rest_mask, extra_slots: int = 0):
    """Logits of ``rest [B, R]`` (left- or right-padded, ``rest_mask`` True on real tokens) after the
    shared ``prefix [1, P]``, with the prefix computed once: ``([B, R, V], cache)``. The same numbers as
    one forward pass over ``prefix + rest`` row by row (up to float rounding)."""
    b, r = rest.shape
    _, cache = model.forward(prefix, None, model.init_cache(1, prefix.shape[1] + r + extra_slots))
    return model.forward(rest, rest_mask, tile(cache, b))


def common_prefix(rows: list[list[int]]) -> int:
    """Length of the longest token prefix shared by all ``rows``, leaving each row at least one token."""
    n = min(len(r) for r in rows) - 1
    for i in range(n):
        if any(r[i] != rows[0][i] for r in rows):
            return i
    return max(n, 0)


WIDTH_BUCKET = 16  # padded widths are multiples of this: batches of other lengths reuse one compiled program


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= ``n``: a padded width from a few, so a few compiles."""
    return -(-n // multiple) * multiple


def split_rows(rows, pad: int, left: bool, bucket: int = WIDTH_BUCKET):
    """``(prefix [1, P], rest [B, R], real [B, R])``: the shared prefix and the padded remainders, P the
    common prefix rounded down and R the longest remainder rounded up to a multiple of ``bucket`` (a
    common prefix shorter than ``bucket`` is kept whole). Without it every batch of prompts, and every
    student's draw of rows, had its own shapes (random prompts share a few more tokens now and then), so
    its own compile of the sampler or the training loop. Padding is masked and a shared token moved into
    the rest is the same token: the values are the same up to float rounding."""
    p = common_prefix(rows)
    p = p - p % bucket if p >= bucket else p
    rest = [r[p:] for r in rows]
    width = round_up(max(len(r) for r in rest), bucket)
    toks = np.full((len(rows), width), pad, np.int32)
    real = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rest):
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        toks[i, sl], real[i, sl] = r, True
    return np.asarray([rows[0][:p]], np.int32), toks, real


def rows_loss(model, batch) -> jax.Array:
    """Mean next-token CE on the target tokens of right-padded rows ``prefix + rest``."""
    logits, _ = prefixed_logits(model, batch["prefix"][:1], batch["rest"], batch["real"])
    nll, w = token_nll(logits, batch["rest"], batch["target"])
    return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0)


def soft_rows_loss(model, batch) -> jax.Array:
    """Mean soft-label loss on the target positions of ``prefix + rest`` rows: ``KL(p_teacher || p_student)``
    of the distributions renormalised over the number tokens ``batch["ids"]``, the teacher's given as its
    log-probabilities ``batch["soft"] [B, R, len(ids)]`` (:func:`teacher_log_probs`)."""
    logits, _ = prefixed_logits(model, batch["prefix"][:1], batch["rest"], batch["real"])
    log_q = jax.nn.log_softmax(logits[:, :-1][..., batch["ids"]].astype(jnp.float32))
    log_p = batch["soft"][:, :-1]
    kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
    w = batch["target"][:, 1:].astype(jnp.float32)
    return jnp.sum(kl * w) / jnp.maximum(jnp.sum(w), 1.0)


@partial(jax.jit, static_argnames=("graphdef",))
def _number_log_probs(graphdef, state, prefix, rest, real, ids):
    model = nnx.merge(graphdef, state)
    logits, _ = prefixed_logits(model, prefix[:1], rest, real)
    return jax.nn.log_softmax(logits[..., ids].astype(jnp.float32))


def teacher_log_probs(graphdef, state, batches: dict, ids) -> dict:
    """``batches`` with the teacher's log-probabilities over the number tokens ``ids`` at every position
    (``"soft" [steps, B, R, len(ids)]``) and ``ids`` itself, for :func:`soft_rows_loss`: the teacher's
    forward pass runs once per batch, before training."""
    soft = [np.asarray(_number_log_probs(graphdef, state, *(jnp.asarray(batches[k][i]) for k in ("prefix", "rest",
                                                                                             "real")), ids))
            for i in range(batches["rest"].shape[0])]
    steps = batches["rest"].shape[0]
    return batches | {"soft": np.stack(soft), "ids": np.broadcast_to(np.asarray(ids), (steps, len(ids))).copy()}


def training_batches(rows, starts, pad: int, rng, steps: int, batch: int) -> dict:
    """``steps`` batches of ``batch`` rows drawn without replacement (reshuffled each pass), split into
    the shared prefix and right-padded rests; ``target`` marks the tokens from each row's start."""
    prefix, rest, real = split_rows(rows, pad, left=False)
    target = np.zeros_like(real)
    for i, s in enumerate(starts):
        target[i, s - prefix.shape[1]:len(rows[i]) - prefix.shape[1]] = True
    order = np.concatenate([rng.permutation(len(rows)) for _ in range(-(-steps * batch // len(rows)))])
    pick = order[:steps * batch].reshape(steps, batch)
    return {"prefix": np.broadcast_to(prefix, (steps,) + prefix.shape).copy(), "rest": rest[pick],
            "real": real[pick], "target": target[pick]}


def pack(rows, starts, pad, bucket: int = WIDTH_BUCKET):
    """Right-padded full rows and their target masks (for the projection), the width rounded up to a
    multiple of ``bucket`` (each set of rows had its own width, so its own compile)."""
    width = round_up(max(len(r) for r in rows), bucket)
    toks = np.full((len(rows), width), pad, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, (r, s) in enumerate(zip(rows, starts)):
        toks[i, :len(r)] = r
        mask[i, s:len(r)] = True
    return {"tokens": toks, "mask": mask}
