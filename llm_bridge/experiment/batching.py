"""Rows of token ids for a text model: a shared prompt prefix computed once, the rest padded.

Chat prompts share a long prefix (the template's default system prompt); :func:`split_rows` cuts it
off, :func:`prefixed_logits` runs it once and tiles its KV cache over the batch, and the
training rows are the prefix plus right-padded remainders (:func:`training_batches`, :func:`rows_loss`).
A loss reads the logits of its target tokens only (a reply is ~7 of a row's ~140 tokens): each batch
carries the positions whose next token is a target (``at``), and the model computes its LM head over
the 49,152-token vocabulary there alone (``forward(..., at=)``), not at every position.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

NO_POSITIONS = np.zeros((1, 0), np.int32)  # ``at`` for a forward pass whose logits nobody reads (a cached prefix)


def label_nll(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``-log softmax(logits)[label]`` at each position (float32, or float64 for a float64 model)."""
    dtype = jnp.float64 if logits.dtype == jnp.float64 else jnp.float32
    return optax.losses.softmax_cross_entropy_with_integer_labels(logits.astype(dtype), labels)


def tile(cache, n: int):
    """A batch-1 KV cache repeated for ``n`` rows (same slots, same positions)."""
    rep = lambda a: jnp.broadcast_to(a, (n,) + a.shape[1:])
    return cache._replace(k=tuple(map(rep, cache.k)), v=tuple(map(rep, cache.v)), valid=rep(cache.valid),
                          next_pos=rep(cache.next_pos))


def prefixed_logits(model, prefix, rest, rest_mask, extra_slots: int = 0, at=None):
    """Logits of ``rest [B, R]`` (left- or right-padded, ``rest_mask`` True on real tokens) after the
    shared ``prefix [1, P]``, with the prefix computed once (its KV cache, no logits): ``([B, R, V], cache)``,
    or ``[B, K, V]`` at the rest's positions ``at [B, K]``. The same numbers as one forward pass over
    ``prefix + rest`` row by row (up to float rounding)."""
    b, r = rest.shape
    _, cache = model.forward(prefix, None, model.init_cache(1, prefix.shape[1] + r + extra_slots), at=NO_POSITIONS)
    return model.forward(rest, rest_mask, tile(cache, b), at=at)


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
    """Mean next-token CE on the target tokens of right-padded rows ``prefix + rest``: the logits at the
    positions ``batch["at"]`` against their next tokens ``batch["label"]``, weighted by ``batch["weight"]``
    (0 on the padding of rows with fewer targets)."""
    logits, _ = prefixed_logits(model, batch["prefix"][:1], batch["rest"], batch["real"], at=batch["at"])
    nll, w = label_nll(logits, batch["label"]), batch["weight"].astype(jnp.float32)
    return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0)


def soft_rows_loss(model, batch) -> jax.Array:
    """Mean soft-label loss on the target positions of ``prefix + rest`` rows: ``KL(p_teacher || p_student)``
    of the distributions renormalised over the number tokens ``batch["ids"]``, the teacher's given as its
    log-probabilities ``batch["soft"] [B, K, len(ids)]`` at the positions ``batch["at"]``
    (:func:`teacher_log_probs`)."""
    logits, _ = prefixed_logits(model, batch["prefix"][:1], batch["rest"], batch["real"], at=batch["at"])
    log_q = jax.nn.log_softmax(logits[..., batch["ids"]].astype(jnp.float32))
    log_p = batch["soft"]
    kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
    w = batch["weight"].astype(jnp.float32)
    return jnp.sum(kl * w) / jnp.maximum(jnp.sum(w), 1.0)


@partial(jax.jit, static_argnames=("graphdef",))
def _number_log_probs(graphdef, state, prefix, rest, real, at, ids):
    model = nnx.merge(graphdef, state)
    logits, _ = prefixed_logits(model, prefix[:1], rest, real, at=at)
    return jax.nn.log_softmax(logits[..., ids].astype(jnp.float32))


def teacher_log_probs(graphdef, state, batches: dict, ids) -> dict:
    """``batches`` with the teacher's log-probabilities over the number tokens ``ids`` at the loss's positions
    (``"soft" [steps, B, K, len(ids)]``) and ``ids`` itself, for :func:`soft_rows_loss`: the teacher's
    forward pass runs once per batch, before training."""
    soft = [np.asarray(_number_log_probs(graphdef, state, *(jnp.asarray(batches[k][i]) for k in ("prefix", "rest",
                                                                                             "real", "at")), ids))
            for i in range(batches["rest"].shape[0])]
    steps = batches["rest"].shape[0]
    return batches | {"soft": np.stack(soft), "ids": np.broadcast_to(np.asarray(ids), (steps, len(ids))).copy()}


def training_batches(rows, starts, pad: int, rng, steps: int, batch: int) -> dict:
    """``steps`` batches of ``batch`` rows drawn without replacement (reshuffled each pass), split into
    the shared prefix and right-padded rests. The targets are each row's tokens from its start on: ``at``
    holds the rest positions whose next token is one, ``label`` that token and ``weight`` 1 (0 where a
    row has fewer targets than the width, which is the most of any row rounded up to a multiple of
    ``WIDTH_BUCKET``, one width for all the batches). A target at the rest's first position, predicted
    from the prefix, is not counted (the prefix keeps no logits)."""
    prefix, rest, real = split_rows(rows, pad, left=False)
    first = [max(s - prefix.shape[1], 1) - 1 for s in starts]  # the position predicting each row's first target
    count = [len(r) - prefix.shape[1] - 1 - f for r, f in zip(rows, first)]
    at = np.zeros((len(rows), round_up(max(max(count), 1), WIDTH_BUCKET)), np.int32)
    weight = np.zeros(at.shape, bool)
    for i, (f, n) in enumerate(zip(first, count)):
        at[i, :max(n, 0)], weight[i, :max(n, 0)] = np.arange(f, f + n), True
    label = np.where(weight, np.take_along_axis(rest, np.minimum(at + 1, rest.shape[1] - 1), axis=1), pad)
    order = np.concatenate([rng.permutation(len(rows)) for _ in range(-(-steps * batch // len(rows)))])
    pick = order[:steps * batch].reshape(steps, batch)
    return {"prefix": np.broadcast_to(prefix, (steps,) + prefix.shape).copy(), "rest": rest[pick],
            "real": real[pick], "at": at[pick], "label": label[pick].astype(np.int32), "weight": weight[pick]}


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
