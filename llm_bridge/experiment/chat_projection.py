"""The chat setup's projection phase: Theorem 1 on a real pretrained LM (replicate 0's teachers).

Each filtered sequence's hard-label student step at theta_0 (one ``jax.jvp`` each) projected on
``dtheta_T`` of the fine-tuned owl teacher and on the trait direction ``dtheta_owl - dtheta_dog``,
with each sequence's mean loss and its summed loss on the same rows: on the owl teacher's numbers,
on the dog teacher's (the mirror: negative on the trait direction), on the base's own samples before
the filter with the summed loss (the exact null: each sequence's score, whose mean is 0 for samples
of the model itself at temperature 1, whatever the direction) and on the base's filtered numbers
(the filter conditions the data: a filtered null); the owl rows again at the perturbed bases
``theta_0 + sigma * std * noise``; and the soft-label version on the number tokens: Lemma 1's
quadratic form ``u^T (diag p - p p^T) u`` computed exactly (``u = J dtheta_T`` by jvp) beside the
actual soft-label step. Each jvp reads the logits at the target positions only (:func:`logits_at`:
the 49,152-token head at the reply's few tokens, not at every position of the prompt), and one jvp
gives a row's steps for both reductions of its loss.
"""

from __future__ import annotations

import math
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from llm_bridge.experiment.batching import pack
from llm_bridge.experiment.names import finetuned, source
from llm_bridge.experiment.projection import projections_by_loss, summarise, target_positions

NULL_ROW = "null: base samples before the filter (score identity)"
LENGTH_BUCKET = 32  # widths are multiples of this: packed rows, and their chunks (projection.length_chunks)


def logits_at(graphdef, rest, params, tokens, at):
    """The model's logits at the positions ``at [B, K]`` of ``tokens [B, T]`` only (the head nowhere else)."""
    return nnx.merge(graphdef, params, rest).forward(tokens, None, at=at)[0]


@partial(jax.jit, static_argnums=0)
def _soft_projection(f_at, params, teacher, direction, tokens, at, weight, ids):
    """Per sequence: Lemma 1's exact ``u^T (diag p - p p^T) u`` and the actual soft-label step's projection
    ``(p_T - p) . u`` on the tokens ``ids``, averaged over the target positions ``at`` (``u = J direction``)."""
    z = lambda p: f_at(p, tokens, at)[..., ids].astype(jnp.float32)
    z0, u = jax.jvp(z, (params,), (direction,))
    p0 = jax.nn.softmax(z0)
    pt = jax.nn.softmax(z(teacher))
    quad = jnp.sum(p0 * u * u, -1) - jnp.sum(p0 * u, -1) ** 2
    actual = jnp.sum((pt - p0) * u, -1)
    w = weight.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(w, 1), 1.0)
    return jnp.sum(quad * w, 1) / n, jnp.sum(actual * w, 1) / n


def _rows(setup, f_at, at, direction, data: dict, grid, offset: int) -> dict:
    """One projection row: the per-sequence steps on ``direction`` at ``at``, each sequence's mean loss and
    its summed loss (its score) on the same rows."""
    cfg = setup.cfg
    got = projections_by_loss(None, at, direction, data, chunk=cfg.chunk, bucket=LENGTH_BUCKET, f_at=f_at)  # one jvp for both
    return {name: summarise(v, [n for n in grid if n <= v.size], cfg.n_boot,
                            setup.streams.int("bootstrap", 0) + offset + j) | {"values": v.tolist()}
            for j, (name, v) in enumerate(got.items())}


def _hard_rows(setup, f_at, d_t, trait, take, grid) -> dict:
    """The hard-label rows (see the module docstring); each row at both reductions of the loss."""
    cfg = setup.cfg
    a, b = cfg.teacher_animals
    first = cfg.decodings[0]
    owl, dog = (take(source(finetuned(x), first), cfg.proj_sequences) for x in (a, b))
    base = setup.base_numbers
    raw = pack(base["raw_rows"], base["raw_starts"], setup.text.pad, LENGTH_BUCKET)
    filtered = pack(base["rows"], base["starts"], setup.text.pad, LENGTH_BUCKET)
    rows = {f"{a} numbers on dtheta_T({a})": (setup.base, d_t, owl),
            f"{a} numbers on dtheta_{a} - dtheta_{b}": (setup.base, trait, owl),
            f"{b} numbers on dtheta_{a} - dtheta_{b}": (setup.base, trait, dog),
            f"{NULL_ROW} on dtheta_T({a})": (setup.base, d_t, raw),
            f"{NULL_ROW} on dtheta_{a} - dtheta_{b}": (setup.base, trait, raw),
            f"filtered base numbers on dtheta_T({a})": (setup.base, d_t, filtered)}
    rows |= {f"{a} numbers on dtheta_T({a}) at the perturbed base sigma={s:g}": (setup.bases[s], d_t, owl)
             for s in cfg.sigmas}
    return {label: _rows(setup, f_at, at, direction, data, grid, 10 * j)
            for j, (label, (at, direction, data)) in enumerate(rows.items())}


def _soft_rows(setup, f_at, d_t, take, grid, ids) -> dict:
    """Lemma 1's exact quadratic form and the actual soft-label step, on teacher and base numbers."""
    cfg, owl, out = setup.cfg, cfg_owl(setup), {}
    soft_grid = [n for n in grid if n <= cfg.soft_sequences]
    teacher = setup.tuned[0][cfg.teacher_animals[0]]
    base = setup.base_numbers
    sets = (("teacher numbers", take(owl, cfg.soft_sequences)),
            ("base numbers", pack(base["rows"][:cfg.soft_sequences], base["starts"][:cfg.soft_sequences],
                                  setup.text.pad, LENGTH_BUCKET)))
    for j, (label, d) in enumerate(sets):
        quad, actual = [], []
        for i in range(0, len(d["tokens"]), cfg.chunk):
            tokens = d["tokens"][i:i + cfg.chunk]
            t = target_positions(tokens, d["mask"][i:i + cfg.chunk])
            q, a = _soft_projection(f_at, setup.base, teacher, d_t, jnp.asarray(tokens), t["at"], t["weight"], ids)
            quad.append(np.asarray(q))
            actual.append(np.asarray(a))
        quad, actual = np.concatenate(quad), np.concatenate(actual)
        out[f"soft labels, Lemma 1 form (exact), {label}"] = summarise(
            quad, soft_grid, cfg.n_boot, setup.streams.int("bootstrap", 0) + 500 + j) | {"min": float(quad.min()),
                                                                                        "values": quad.tolist()}
        out[f"soft labels, actual step, {label}"] = summarise(
            actual, soft_grid, cfg.n_boot, setup.streams.int("bootstrap", 0) + 600 + j) | {"values": actual.tolist()}
    return out


def cfg_owl(setup) -> str:
    return source(finetuned(setup.cfg.teacher_animals[0]), setup.cfg.decodings[0])


def number_token_ids(text) -> jax.Array:
    """The tokens a number reply is made of: the ten digits, the separators and the end token."""
    return jnp.asarray(sorted({*(text.ids(str(d))[0] for d in range(10)), text.ids(",")[0], text.ids(", ")[-1],
                               text.ids(";")[0], text.ids(" ")[0], text.ids("\n")[0], text.pad}))


def projection(setup) -> dict:
    """Every projection row of the chat setup (see the module docstring); replicate 0's teachers."""
    t0 = time.perf_counter()
    cfg, f_at = setup.cfg, partial(logits_at, setup.graphdef, setup.rest)  # one function object: one compile per shape
    a, b = cfg.teacher_animals
    teachers = setup.tuned[0]
    d_t = optax.tree.sub(teachers[a], setup.base)
    trait = optax.tree.sub(teachers[a], teachers[b])
    take = lambda name, n: pack(setup.data[0][name]["rows"][:n], setup.data[0][name]["starts"][:n], setup.text.pad,
                                LENGTH_BUCKET)
    grid = [n for n in cfg.proj_grid if n <= cfg.proj_sequences]
    out = {"norm_dtheta_T": float(optax.tree.norm(d_t)), "norm_trait_direction": float(optax.tree.norm(trait)),
           "rows": _hard_rows(setup, f_at, d_t, trait, take, grid)}
    ids = number_token_ids(setup.text)
    out["rows"].update(_soft_rows(setup, f_at, d_t, take, grid, ids))
    out["soft_tokens"] = [setup.tok.id_to_token(int(i)) for i in ids]
    out["seconds"] = time.perf_counter() - t0
    return out
