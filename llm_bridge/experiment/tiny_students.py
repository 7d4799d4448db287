"""The tiny setup's students: every planned unit trained and probed.

Units whose arm updates every parameter are trained together, one vmapped program per target and
optimizer (seeds x arms x bases on a leading model axis, :func:`llm_bridge.experiment.training.train`
and :func:`~llm_bridge.experiment.training.train_soft`); LoRA units one at a time
(:func:`~llm_bridge.experiment.training.fit_frozen` on the adapters). Student seed s of base b
trains on slice s of each teacher's filtered rows, in an order shared by every arm of the base
(paired seeds).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import theory
from llm_bridge.experiment.tiny_calls import margins
from llm_bridge.experiment.training import PureModel, fit_frozen, mean_loss, soft_fit, stack, train, train_soft
from llm_bridge.models import lora

SOFT_EVAL_ROWS = 512  # rows on which the soft students' fit to their teacher is measured


def row_orders(cfg, streams, base_seed: int) -> list[np.ndarray]:
    """Per student seed, the rows of its slice and their order ``[steps, batch]``, shared by every arm
    of the base (paired seeds)."""
    steps = cfg.student_epochs * cfg.student_sequences // cfg.student_batch
    orders = []
    for s in range(cfg.student_seeds):
        rng = streams.rng("student_rows", base_seed, s)
        order = np.concatenate([rng.permutation(cfg.student_sequences) for _ in range(cfg.student_epochs)])
        orders.append(order[:steps * cfg.student_batch].reshape(steps, cfg.student_batch))
    return orders


def unit_rows(cfg, d: dict, order: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens, mask) [steps, batch, T]``: seed ``s``'s slice of a teacher's filtered rows."""
    sl = slice(s * cfg.student_sequences, (s + 1) * cfg.student_sequences)
    return d["tokens"][sl][order], (d["mask"] & d["passed"][:, None])[sl][order]


def start(setup, unit):
    """The params a unit's student starts from: its base, the next base, or its base perturbed."""
    if unit.arm.init == "other base":
        return setup.base[(unit.base + 1) % setup.n_bases]
    if unit.arm.init == "perturbed":
        return theory.perturbed_init(setup.base[unit.base], unit.arm.sigma,
                                     setup.streams.key("perturbation", setup.cfg.base_seeds[unit.base], unit.arm.sigma))
    return setup.base[unit.base]


def _rows(setup, units, orders):
    toks, masks = zip(*(unit_rows(setup.cfg, setup.data[u.base][u.teacher], orders[u.base][u.seed], u.seed)
                        for u in units))
    return jnp.asarray(np.stack(toks)), jnp.asarray(np.stack(masks))


def _spread(setup, units: list) -> list:
    """The units padded (with copies of the last) to a multiple of the mesh's devices, so the stacked
    students split evenly over the ``data`` axis; no change without a mesh."""
    n = 1 if setup.mesh is None else setup.mesh.devices.size
    return units + [units[-1]] * (-len(units) % n)


def _place(setup, tree):
    """A stack of students (leading axis) split over the mesh's ``data`` axis (each device, and each
    process of a multi-host run, trains its share); unchanged without a mesh."""
    if setup.mesh is None:
        return tree
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    spec = lambda a: NamedSharding(setup.mesh, P("data", *(None,) * (a.ndim - 1)))
    return jax.tree.map(lambda a: jax.device_put(a, spec(a)), tree)


def _host(x) -> np.ndarray:
    """A result on the host, whole on every process (a multi-host run's shards gathered)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _probe(setup, params, f=None) -> np.ndarray:
    """``[M, 10]``: the margins of a stack of students (of ``f``'s structure, default the base's)."""
    f, vocab = f or setup.pure.f, setup.vocab
    return _host(jax.jit(jax.vmap(lambda p: margins(f, p, vocab)))(params))


def _hard(setup, units, orders, lr: float, opt: str) -> list[dict]:
    n, units = len(units), _spread(setup, units)
    toks, masks = _place(setup, _rows(setup, units, orders))
    init = _place(setup, stack([start(setup, u) for u in units]))
    students, _ = train(setup.pure.f, init, toks, masks, lr=lr, opt=opt)
    return [{"margins": {"tiny": m.tolist()}} for m in _probe(setup, students)[:n]]


def _soft(setup, units, orders, lr: float, opt: str) -> list[dict]:
    # soft labels over the number tokens only: over all tokens they would carry the trait through the
    # animal logits
    loss = theory.softmax_kl(tuple(int(i) for i in setup.vocab.number_ids))
    n, units = len(units), _spread(setup, units)
    toks, masks = _place(setup, _rows(setup, units, orders))
    init = _place(setup, stack([start(setup, u) for u in units]))
    labels = _place(setup, stack([setup.table[u.base][u.teacher][0] for u in units]))
    soft, losses = train_soft(setup.pure.f, init, labels, toks, masks, lr=lr, loss=loss, opt=opt)
    # the fit to the teacher on fixed rows (each student's first training rows), before and after
    k = min(SOFT_EVAL_ROWS, toks.shape[1] * toks.shape[2])
    fixed = [x.reshape(x.shape[0], -1, x.shape[-1])[:, :k] for x in (toks, masks)]
    kl = [_host(soft_fit(setup.pure.f, p, labels, *fixed, loss=loss)) for p in (init, soft)]
    losses = _host(losses)
    return [{"margins": {"tiny": m.tolist()}, "loss": losses[j].tolist(), "kl_before": float(kl[0][j]),
             "kl_after": float(kl[1][j])} for j, m in enumerate(_probe(setup, soft)[:n])]


def _lora(setup, unit, orders) -> dict:
    """One LoRA student: adapters of the arm's rank and scale on the base, trained alone."""
    toks, masks = _rows(setup, [unit], orders)
    module = setup.pure.model(start(setup, unit))
    lora.add_lora(module, unit.arm.rank, scale=unit.arm.lora_scale,
                  seed=setup.streams.int("lora_init", setup.cfg.base_seeds[unit.base], unit.seed))
    graphdef, trainable, frozen = lora.split(module, lora=True)
    hard = lambda model, batch: mean_loss(model(batch[0]), batch[0], batch[1])
    lr = getattr(setup.cfg, unit.arm.lr_field())
    trained, losses = fit_frozen(graphdef, trainable, frozen, (toks[0], masks[0]), jnp.float32(lr), loss_fn=hard,
                                 opt=unit.arm.optimizer)
    merged = PureModel(nnx.merge(graphdef, trained, frozen))
    return {"margins": {"tiny": _probe(setup, stack([merged.template]), merged.f)[0].tolist()},
            "loss": np.asarray(losses).tolist()}


def train_units(setup, units, log) -> list[dict]:
    """Every unit's result (its margins, and the soft students' losses), in the order of ``units``."""
    orders = [row_orders(setup.cfg, setup.streams, s) for s in setup.cfg.base_seeds]
    out: list[dict | None] = [None] * len(units)
    groups: dict = {}
    for j, u in enumerate(units):
        if u.arm.update == "lora":
            log(f"training LoRA student {u.arm.name} on {u.teacher} (base {u.base}, seed {u.seed})")
            out[j] = _lora(setup, u, orders)
        else:
            groups.setdefault((u.arm.target, u.arm.optimizer, u.arm.lr_field()), []).append(j)
    for (target, opt, lr_field), idx in groups.items():
        group = [units[j] for j in idx]
        log(f"training {len(group)} {target}-label students ({opt}, {len({u.arm.name for u in group})} arms x "
            f"{setup.cfg.student_seeds} seeds x {setup.n_bases} bases)")
        fn = _soft if target == "soft" else _hard
        for j, r in zip(idx, fn(setup, group, orders, getattr(setup.cfg, lr_field), opt)):
            out[j] = r
    return out
