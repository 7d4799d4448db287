"""The tiny setup's projection phase: Theorem 1's first-step projections on each base, and the alignment
of the student's step with the trait gradient; and their table over bases."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax

import theory
from llm_bridge.experiment import corpus, names
from llm_bridge.experiment.tiny_calls import margins, sample_numbers
from llm_bridge.experiment.names import BASE_TEACHER, finetuned
from llm_bridge.experiment.projection import sequence_projections, student_step, summarise
from theory.stats import mean_ci


def only_passed(d: dict) -> dict:
    return {"tokens": d["tokens"][d["passed"]], "mask": d["mask"][d["passed"]]}


@partial(jax.jit, static_argnums=(0, 2))
def margin_gradient(f, params, vocab: corpus.Vocab, weights: jax.Array):
    """``grad_params (weights . margins(params))``: a trait direction (``weights [10]`` over the animals)."""
    return jax.grad(lambda p: jnp.dot(weights, margins(f, p, vocab)))(params)


def projections(setup, i: int, key) -> dict:
    """Theorem 1's projection for base ``i`` (its cross-model partner ``i + 1``), and the trait alignment.

    The theorem is about the teacher's own distribution, so the main sets are unfiltered draws
    (``proj_sequences`` per teacher from ``key``); the filter conditions the data and biases even the
    base's own numbers, which the "filtered" rows show.
    """
    cfg, vocab, f = setup.cfg, setup.vocab, setup.pure.f
    a, b, teachers = setup.base[i], setup.base[(i + 1) % setup.n_bases], setup.table[i]
    raw = {name: sample_numbers(cfg, setup.pure.model(p), vocab, key, cfg.proj_sequences, pre)
           for name, (p, pre) in teachers.items()}
    seed = setup.streams.int("bootstrap", cfg.base_seeds[i])
    held = {name: only_passed(d) for name, d in raw.items()}
    grid = [n for n in cfg.proj_grid if n <= cfg.proj_sequences]
    soft = theory.softmax_ce(tuple(int(i) for i in vocab.number_ids))
    chunks = lambda d: [jnp.asarray(d["tokens"][i:i + 512]) for i in range(0, len(d["tokens"]), 512)]
    proj = {}
    for animal in cfg.animals:
        name = finetuned(animal)
        d_t = optax.tree.sub(teachers[name][0], a)
        rows = {names.P_SHARED: (a, raw[name]), names.P_CROSS: (b, raw[name]),
                names.P_CONTROL: (a, raw[BASE_TEACHER]),
                names.P_SHARED_FILTERED: (a, held[name]), names.P_CONTROL_FILTERED: (a, held[BASE_TEACHER])}
        res = {}
        for j, (label, (p0, d)) in enumerate(rows.items()):
            if len(d["tokens"]) < 2:  # a filter that passed (almost) nothing: no statistics to take
                res[label] = {"n": len(d["tokens"]), "z": None}
                continue
            v = sequence_projections(f, p0, d_t, d)
            res[label] = summarise(v, grid, cfg.n_boot, seed + j, bootstrap_n=j < 3)
            res[label]["cosine"] = float(theory.cosine(student_step(f, p0, d), d_t))
        res[names.P_SOFT] = {
            "inner": float(theory.inner_product_jvp(f, a, teachers[name][0], d_t, chunks(raw[name]), soft)),
            "A": float(theory.lemma1_coefficient(f, a, d_t, chunks(raw[name]), soft))}
        res[names.P_SOFT_CONTROL] = {
            "inner": float(theory.inner_product_jvp(f, a, a, d_t, chunks(raw[BASE_TEACHER]), soft))}
        res["norm_dtheta_T"] = float(optax.tree.norm(d_t))
        proj[name] = res

    # the trait direction: the gradient of the owl margin, and of the owl-vs-dog contrast
    target, other = (corpus.ANIMALS.index(x) for x in cfg.animals)
    owl = jnp.zeros(len(corpus.ANIMALS)).at[target].set(1.0)
    directions = {f"margin_{cfg.animals[0]}": margin_gradient(f, a, vocab, owl),
                  f"margin_{cfg.animals[0]} - margin_{cfg.animals[1]}":
                      margin_gradient(f, a, vocab, owl.at[other].set(-1.0))}
    align = {}
    for d_name, g in directions.items():
        rows = {}
        for j, name in enumerate(teachers):
            rows[name] = summarise(sequence_projections(f, a, g, raw[name]), grid, cfg.n_boot, seed + 100 + j)
            rows[name]["cosine"] = float(theory.cosine(student_step(f, a, raw[name]), g))
        if len(held[BASE_TEACHER]["tokens"]) >= 2:
            rows[f"{BASE_TEACHER}, filtered"] = summarise(sequence_projections(f, a, g, held[BASE_TEACHER]), grid,
                                                          cfg.n_boot, seed + 99)
        align[d_name] = rows
    return {"projection": proj, "trait_alignment": align}


def projection_table(out: list) -> dict:
    """Per fine-tuned teacher and projection row, the z-scores over bases: their mean with a 95%
    t-interval over bases, the per-base values, and how many bases reach P(positive) >= 0.95."""
    table = {}
    for name in out[0]["projection"]:
        rows = {}
        for label in (names.P_SHARED, names.P_CROSS, names.P_CONTROL, names.P_SHARED_FILTERED, names.P_CONTROL_FILTERED):
            per = [b["projection"][name][label] for b in out]
            if any(r["z"] is None for r in per):
                continue
            rows[label] = {"z": mean_ci([r["z"] for r in per], keep_values=True),
                           "bases_with_p_positive_95": sum(r["p_positive"][-1] >= 0.95 for r in per)}
        rows[names.P_SOFT] = {"inner": mean_ci([b["projection"][name][names.P_SOFT]["inner"] for b in out],
                                              keep_values=True)}
        table[name] = rows
    return table
