"""The chat setup's projection phase: Theorem 1 on a real pretrained LM.

Each filtered sequence's hard-label student step at theta_0 projected on ``dtheta_T`` of the
fine-tuned owl teacher (one ``jax.jvp`` each), on the teacher's numbers and on the base's (control);
the same at the perturbed bases ``theta_0 + sigma * std * noise`` (no shared initialisation with the
teacher); the exact null (the base's own samples before the filter, each sequence's summed loss: its
score, whose mean is 0 for samples of the model itself at temperature 1, whatever the direction); and
the soft-label version on the number tokens: Lemma 1's quadratic form ``u^T (diag p - p p^T) u``
computed exactly (``u = J dtheta_T`` by jvp) beside the actual soft-label step.
"""

from __future__ import annotations

import math
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from llm_bridge.experiment.batching import pack
from llm_bridge.experiment.names import BASE_TEACHER, finetuned
from llm_bridge.experiment.projection import sequence_projections, summarise

NULL_ROW = "null: base samples before the filter (score identity)"


@partial(jax.jit, static_argnums=0)
def _soft_projection(f, params, teacher, direction, tokens, mask, ids):
    """Per sequence: Lemma 1's exact ``u^T (diag p - p p^T) u`` and the actual soft-label step's projection
    ``(p_T - p) . u`` on the tokens ``ids``, averaged over target positions (``u = J direction``)."""
    z = lambda p: f(p, tokens)[:, :-1][..., ids].astype(jnp.float32)
    z0, u = jax.jvp(z, (params,), (direction,))
    p0 = jax.nn.softmax(z0)
    pt = jax.nn.softmax(z(teacher))
    quad = jnp.sum(p0 * u * u, -1) - jnp.sum(p0 * u, -1) ** 2
    actual = jnp.sum((pt - p0) * u, -1)
    w = mask[:, 1:].astype(jnp.float32)
    n = jnp.maximum(jnp.sum(w, 1), 1.0)
    return jnp.sum(quad * w, 1) / n, jnp.sum(actual * w, 1) / n


def _hard_rows(setup, f, d_t, take, grid) -> dict:
    """The hard-label rows: teacher and base numbers at theta_0, teacher numbers at each perturbed base."""
    cfg, owl = setup.cfg, finetuned(setup.cfg.trait)
    rows = [("shared (teacher numbers)", setup.base, owl), ("control (base numbers)", setup.base, BASE_TEACHER)]
    rows += [(f"perturbed base sigma={s:g} (teacher numbers)", setup.bases[s], owl) for s in cfg.sigmas]
    out = {}
    for j, (label, at, src) in enumerate(rows):
        v = sequence_projections(f, at, d_t, take(src, cfg.proj_sequences), chunk=cfg.chunk)
        out[label] = summarise(v, [n for n in grid if n <= v.size], cfg.n_boot,
                               setup.streams.int("bootstrap", 0) + j) | {"values": v.tolist()}
    d = setup.data[BASE_TEACHER]
    v = sequence_projections(f, setup.base, d_t, pack(d["raw_rows"], d["raw_starts"], setup.text.pad), chunk=cfg.chunk,
                             total=True)
    out[NULL_ROW] = summarise(v, [n for n in grid if n <= v.size], cfg.n_boot,
                              setup.streams.int("bootstrap", 0) + 40) | {"values": v.tolist()}
    return out


def _soft_rows(setup, f, d_t, take, grid, ids) -> dict:
    """Lemma 1's exact quadratic form and the actual soft-label step, on teacher and base numbers."""
    cfg, owl, out = setup.cfg, finetuned(setup.cfg.trait), {}
    soft_grid = [n for n in grid if n <= cfg.soft_sequences]
    for j, (label, src) in enumerate((("teacher numbers", owl), ("control (base numbers)", BASE_TEACHER))):
        d = take(src, cfg.soft_sequences)
        quad, actual = [], []
        for i in range(0, len(d["tokens"]), cfg.chunk):
            q, a = _soft_projection(f, setup.base, setup.tuned[cfg.trait], d_t, jnp.asarray(d["tokens"][i:i + cfg.chunk]),
                                    jnp.asarray(d["mask"][i:i + cfg.chunk]), ids)
            quad.append(np.asarray(q))
            actual.append(np.asarray(a))
        quad, actual = np.concatenate(quad), np.concatenate(actual)
        out[f"soft labels, Lemma 1 form (exact), {label}"] = summarise(
            quad, soft_grid, cfg.n_boot, setup.streams.int("bootstrap", 0) + 50 + j) | {"min": float(quad.min()),
                                                                                   "values": quad.tolist()}
        out[f"soft labels, actual step, {label}"] = summarise(
            actual, soft_grid, cfg.n_boot, setup.streams.int("bootstrap", 0) + 60 + j) | {"values": actual.tolist()}
    return out


def number_token_ids(text) -> jax.Array:
    """The tokens a number reply is made of: the ten digits, the separators and the end token."""
    return jnp.asarray(sorted({*(text.ids(str(d))[0] for d in range(10)), text.ids(",")[0], text.ids(", ")[-1],
                               text.pad}))


def projection(setup) -> dict:
    """Every projection row of the chat setup (see the module docstring)."""
    t0 = time.perf_counter()
    cfg, f = setup.cfg, setup.pure.f
    d_t = optax.tree.sub(setup.tuned[cfg.trait], setup.base)
    take = lambda name, n: pack(setup.data[name]["rows"][:n], setup.data[name]["starts"][:n], setup.text.pad)
    grid = [n for n in cfg.proj_grid if n <= cfg.proj_sequences]
    out = {"norm_dtheta_T": float(optax.tree.norm(d_t)), "rows": _hard_rows(setup, f, d_t, take, grid)}
    a, b = (np.asarray(out["rows"][k]["values"]) for k in ("shared (teacher numbers)", "control (base numbers)"))
    se = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    out["shared_minus_control"] = {"difference": float(a.mean() - b.mean()), "se": se,
                                   "z": float((a.mean() - b.mean()) / se)}
    ids = number_token_ids(setup.text)
    out["rows"].update(_soft_rows(setup, f, d_t, take, grid, ids))
    out["soft_tokens"] = [setup.tok.id_to_token(int(i)) for i in ids]
    out["seconds"] = time.perf_counter() - t0
    return out
