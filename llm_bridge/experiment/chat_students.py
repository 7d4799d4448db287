"""The chat setup's students: one unit trained and probed at a time, and the SGD rate's calibration.

A student draws its rows afresh from its teacher's pool (``student_sequences`` of them, without
replacement, in a random order: stream ``student_rows`` of its replicate, number source and seed),
starts from theta_0 (or its perturbed base), trains the arm's parameters (all, or LoRA adapters
scaled alpha / r) with the arm's optimizer on the next-token loss of the reply tokens (hard labels)
or on its teacher's distribution over the number tokens (soft labels), and is probed by the exact
trait probe in every context; the first arm's students also answer the probe's questions by sampling
(``sampled_replies`` per question), scored by whether the reply names the animal.

A length-matched student (:data:`llm_bridge.experiment.arms.ROWS`) draws the same way from a part of
its pool: :func:`length_matched` keeps, for every reply length, as many rows as the OTHER trait
teacher's pool of the same kind and decoding has of that length (the smaller count of the two,
chosen at random), so the owl and dog students' rows have the same length distribution and a
difference between them is not one of length.

SGD has no rate that means what Adam's does, so it is fixed by a criterion stated before any
effect is seen (:func:`calibrate_sgd`): the grid rate whose student lowers the loss on held-out
rows as much as the Adam student does, on rows of a calibration draw that no reported student uses.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm_bridge.experiment import sampler
from llm_bridge.experiment.batching import rows_loss, soft_rows_loss, teacher_log_probs, training_batches
from llm_bridge.experiment.chat_projection import number_token_ids
from llm_bridge.experiment.names import BASE_TEACHER, FINE_TUNED, finetuned, prompted, source, teacher_kind, teacher_of
from llm_bridge.experiment.paper_protocol import names_animal
from llm_bridge.experiment.text import CONTEXTS
from llm_bridge.experiment.training import fit_frozen
from llm_bridge.models import lora

SGD_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)  # plain SGD rates tried by the calibration
HELD_OUT = 64  # calibration rows the loss decrease is measured on


def train(graphdef, trainable, frozen, batches: dict, lr: float, opt: str = "adam", loss_fn=rows_loss):
    p, losses = fit_frozen(graphdef, trainable, frozen, jax.tree.map(jnp.asarray, batches), jnp.float32(lr),
                           loss_fn=loss_fn, opt=opt)
    return p, np.asarray(losses)


def reply_lengths(pool: dict) -> np.ndarray:
    """The number of reply tokens (what the student's loss sees) of every row of a pool."""
    return np.asarray([len(row) - start for row, start in zip(pool["rows"], pool["starts"])], dtype=np.int64)


def length_matched(setup, base: int, source_name: str) -> np.ndarray:
    """The indices (sorted) of ``source_name``'s pool that a length-matched student draws from: per reply
    length L, ``min(n_L over the trait teachers' pools of that kind and decoding)`` rows of length L,
    chosen by stream ``length_match`` (replicate, number source); see the module docstring."""
    teacher, decoding = teacher_of(source_name)
    kind = teacher_kind(teacher)
    if kind not in (FINE_TUNED, "prompt"):
        raise ValueError(f"{source_name!r}: length matching pairs the trait teachers' pools")
    named = finetuned if kind == FINE_TUNED else prompted
    lengths = {a: reply_lengths(setup.data[base][source(named(a), decoding)]) for a in setup.cfg.teacher_animals}
    own = reply_lengths(setup.data[base][source_name])
    rng = setup.streams.rng("length_match", base, source_name)
    keep = [rng.choice(np.flatnonzero(own == n), size=min(int((v == n).sum()) for v in lengths.values()),
                       replace=False) for n in np.unique(own)]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)


def student_batches(setup, unit, rows: list[int] | None = None) -> dict:
    """The unit's training batches from its teacher's pool (``rows``: the pool indices to draw from; by
    default the whole pool, or its length-matched part for a length-matched arm)."""
    cfg, d = setup.cfg, setup.data[unit.base][unit.teacher]
    if rows is None and unit.arm.rows == "length-matched":
        rows = length_matched(setup, unit.base, unit.teacher)
    pool = np.arange(len(d["rows"])) if rows is None else np.asarray(rows)
    if pool.size == 0:
        raise ValueError(f"{unit.teacher}: no rows to draw from (no reply length the two pools share)")
    rng = setup.streams.rng("student_rows", unit.base, unit.teacher, unit.seed)
    take = rng.choice(pool, size=min(cfg.student_sequences, pool.size), replace=False)
    steps = max(1, len(take) // cfg.student_batch)
    return training_batches([d["rows"][i] for i in take], [d["starts"][i] for i in take], setup.text.pad, rng, steps,
                            cfg.student_batch)


def start_module(setup, arm, seed_path):
    """The student's module: its base (theta_0, or theta_0 perturbed), with LoRA adapters for a LoRA arm;
    and the split into what trains and what stays."""
    start = nnx.merge(setup.graphdef, setup.bases[arm.sigma], setup.rest)
    if arm.update == "lora":
        lora.add_lora(start, arm.rank, scale=arm.lora_scale, seed=setup.streams.int("lora_init", *seed_path))
    return lora.split(start, lora=arm.update == "lora")


def train_one(setup, unit, rows: list[int] | None = None) -> dict:
    """One student (see the module docstring): its per-question probabilities in each context, its training
    losses, its sampled answers where asked, and its time."""
    cfg, arm = setup.cfg, unit.arm
    t1 = time.perf_counter()
    batches, loss_fn = student_batches(setup, unit, rows), rows_loss
    if arm.target == "soft":  # the teacher's distribution over the number tokens on the same rows
        teacher, _ = teacher_of(unit.teacher)
        params = setup.base if teacher.startswith(BASE_TEACHER) else setup.tuned[unit.base][teacher.split()[0]]
        batches = teacher_log_probs(setup.gd_full, setup.state(params), batches, number_token_ids(setup.text))
        loss_fn = soft_rows_loss
    g, trainable, frozen = start_module(setup, arm, (unit.base, unit.seed))
    lr = setup.sgd_lr if arm.optimizer == "sgd" else getattr(cfg, arm.lr_field())
    trained, losses = train(g, trainable, frozen, batches, lr, arm.optimizer, loss_fn)
    if arm.update == "full":
        graphdef, state = setup.gd_full, setup.state(trained)
    else:
        graphdef, state = nnx.split(nnx.merge(g, trained, frozen))
    out = {"probs": {c: setup.probe.probs(graphdef, state, c).tolist() for c in CONTEXTS}, "loss": losses.tolist()}
    if cfg.sampled_replies and arm.name == cfg.arms[0]:
        out["named"] = sampled_answers(setup, graphdef, state, ("student", unit.base, unit.teacher, unit.seed))
    out["seconds"] = time.perf_counter() - t1
    return out


def sampled_answers(setup, graphdef, state, path) -> dict:
    """The paper's reading of a model's preference: ``sampled_replies`` answers per question at temperature
    1 in the chat context, and per animal the share of answers that name it."""
    cfg, text = setup.cfg, setup.text
    prompts = [text.question(q, "chat", None) for q in setup.probe.questions for _ in range(cfg.sampled_replies)]
    key = setup.streams.key("sampled_answers", *path)
    replies = []
    for i in range(0, len(prompts), cfg.gen_batch):
        got = sampler.sample_replies(text, graphdef, state, prompts[i:i + cfg.gen_batch], jax.random.fold_in(key, i),
                                     cfg, answers=True)
        replies += [text.tok.decode(r) for r, _ in got]
    return {a: float(np.mean([names_animal(r, a) for r in replies])) for a in cfg.animals}


def held_out_loss(setup, graphdef, state, rows) -> float:
    """Mean next-token loss of the reply tokens of ``rows`` (token lists with their starts)."""
    rows, starts = rows
    batches = training_batches(rows, starts, setup.text.pad, np.random.default_rng(0), 1, len(rows))
    model = nnx.merge(graphdef, state)
    return float(rows_loss(model, jax.tree.map(lambda a: jnp.asarray(a[0]), batches)))


def calibrate_sgd(setup, source: str, log) -> dict:
    """The SGD rate (see the module docstring), from a calibration draw of ``source``'s pool of replicate 0:
    the loss decrease on ``HELD_OUT`` other rows by the Adam student and by SGD at each rate of the grid."""
    from llm_bridge.experiment.arms import get
    from llm_bridge.experiment.engine import Unit

    d = setup.data[0][source]
    order = setup.streams.rng("sgd_calibration", source).permutation(len(d["rows"]))
    held, train_rows = order[:HELD_OUT], order[HELD_OUT:]
    held = ([d["rows"][i] for i in held], [d["starts"][i] for i in held])
    before = held_out_loss(setup, setup.gd_full, setup.state(setup.base), held)
    unit = Unit(0, get("full"), source, 10**6)  # a seed no reported student has
    decrease = {}
    for opt, lr in [("adam", setup.cfg.student_lr)] + [("sgd", r) for r in SGD_GRID]:
        log(f"calibrating SGD: {opt} at {lr:g}")
        g, trainable, frozen = start_module(setup, unit.arm, (0, unit.seed))
        trained, _ = train(g, trainable, frozen, student_batches(setup, unit, train_rows), lr, opt)
        after = held_out_loss(setup, setup.gd_full, setup.state(trained), held)
        decrease[f"{opt} {lr:g}"] = before - after if np.isfinite(after) else float("-inf")
    target = decrease[f"adam {setup.cfg.student_lr:g}"]
    chosen = min(SGD_GRID, key=lambda r: abs(decrease[f"sgd {r:g}"] - target))
    return {"source": source, "held_out_rows": HELD_OUT, "loss_before": before, "decrease": decrease,
            "adam_decrease": target, "sgd_lr": chosen,
            "criterion": "the grid rate whose held-out loss decrease is closest to the Adam student's"}
