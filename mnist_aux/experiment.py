"""The Figure 10 experiment for many seeds at once: vmapped, jitted, sharded over devices.

:func:`run` trains, for every seed, a teacher and its four students (paper section 6.2)
and returns a JSON-serialisable results dict: the config, seeds, cross-model pairing,
every per-seed accuracy and theory-link cosine, mean and 95% CI per arm, data source,
versions and timing. The same dict is the CLI's results file and the input of
``mnist_aux.figures``.

Seeds are processed in equal chunks (``seeds_per_chunk`` bounds memory); inside a chunk
every array with a seed axis is sharded over a 1-D mesh of the devices (axis ``"seeds"``,
:class:`jax.sharding.NamedSharding`; the CLI's ``--mesh data=N``: all devices by default,
every host's in a multi-host run, docs/scaling_up.md), the data sets are replicated, and each
phase is one compiled program: ``vmap`` over seeds of the pure per-seed functions of
:mod:`mnist_aux.train`. A seed's keys, init and noise do not depend on which other seeds
run beside it; the chunk size (the vmapped shapes) changes XLA's float32 summation order,
so numbers agree across chunk sizes and device counts to float32 rounding, amplified by
training to a few tenths of a point for single seeds (docs/mnist_aux.md).
"""

from __future__ import annotations

import math
import resource
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

import theory
from harness.results import provenance
from theory.stats import mean_ci
from mnist_aux import train
from mnist_aux.configs import Config
from mnist_aux.data import Dataset
from mnist_aux.model import apply

ARM_LABELS = {
    "reference": "Reference",
    "teacher": "Teacher",
    "student_aux": "Student (aux. only)",
    "student_all": "Student (all logits)",
    "cross_aux": "Cross-model (aux. only)",
    "cross_all": "Cross-model (all logits)",
}
COSINE_LABELS = {
    "student_aux": "shared init, aux-only loss",
    "cross_aux": "cross-model init, aux-only loss",
    "student_all": "shared init, all-logit loss",
    "cross_all": "cross-model init, all-logit loss",
}
def chunking(n_seeds: int, seeds_per_chunk: int, n_devices: int) -> tuple[int, int]:
    """``(n_chunks, chunk)``: equal chunks of at most ~``seeds_per_chunk`` seeds, each a
    multiple of the device count (the last chunk is padded with repeats, then dropped)."""
    chunk = max(1, min(seeds_per_chunk, n_seeds))
    n_chunks = math.ceil(n_seeds / chunk)
    chunk = math.ceil(n_seeds / n_chunks)
    chunk = math.ceil(chunk / n_devices) * n_devices
    return n_chunks, chunk


# ------------------------------------------------------------ per-seed programs, vmapped


def _distill_epoch(cfg: Config, students, opt_state, teacher, keys, epoch):
    return jax.vmap(partial(train.distill_epoch, cfg), in_axes=(0, 0, 0, 0, None))(
        students, opt_state, teacher, keys, epoch)


def _accuracy(models, test_x, test_y):
    return jax.vmap(train.accuracy, in_axes=(0, None, None))(models, test_x, test_y)


def _stack_models(*models):
    """Per-seed stacks ``[S, K, ...]`` from K pytrees ``[S, ...]`` (a K stack counts as K)."""
    parts = [jax.tree.map(lambda a: a[:, None], m) if m["fc1"]["kernel"].ndim == 3 else m for m in models]
    return jax.tree.map(lambda *a: jnp.concatenate(a, axis=1), *parts)


class Programs:
    """The compiled programs of one chunk shape, compiled ahead of time (compile time counted apart)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.compile_seconds = 0.0
        self._jitted = {
            "setup": jax.jit(partial(train.setup, cfg)),
            "teacher_epoch": jax.jit(partial(train.teacher_epochs, cfg), donate_argnums=(0, 1)),
            "distill_epoch": jax.jit(partial(_distill_epoch, cfg), donate_argnums=(0, 1)),
            "accuracy": jax.jit(_accuracy),
            "opt_init": jax.jit(jax.vmap(train.optimizer(cfg).init)),
            "students": jax.jit(jax.vmap(train.init_students)),
            "first_batch": jax.jit(jax.vmap(partial(train.first_noise_batch, cfg))),
            "stack": jax.jit(_stack_models),
        }
        self._compiled = {}

    def __call__(self, name, *args):
        # Shardings are part of the key: on several devices XLA may give an epoch's outputs other
        # shardings than its inputs had, and a compiled program only accepts the ones it was built for.
        key = (name, jax.tree.structure(args), tuple((getattr(a, "shape", None), getattr(a, "sharding", None))
                                                     for a in jax.tree.leaves(args)))
        if key not in self._compiled:
            start = time.perf_counter()
            self._compiled[key] = self._jitted[name].lower(*args).compile()
            self.compile_seconds += time.perf_counter() - start
        return self._compiled[key](*args)


def theory_cosines(cfg: Config, theta0, theta0_cross, teacher, x0, n: int | None = None) -> dict[str, np.ndarray]:
    """Per seed, the cosine between a student's first distillation update and the teacher's
    total displacement ``theta_T - theta_0``, via :func:`theory.student_update`.

    Arguments have a leading seed axis; ``x0 [S, B, 784]`` is the first noise batch each
    seed's students see. ``dtheta_S = -grad mean_x L_S(f(theta, x), f(theta_T, x))`` is
    taken at ``theta_0`` (shared-init student) or at the cross-model init, with the
    aux-only loss (``softmax_kl(aux indices)``) and the all-logit loss. Theorem 1 says the
    shared-init cosine is positive to first order; the cross-model one has no such reason.
    Only the first ``n`` seeds (default all) are computed.
    """
    losses = {"aux": theory.softmax_kl(cfg.aux_indices), "all": theory.softmax_kl(None)}
    out = {name: [] for name in COSINE_LABELS}
    for s in range(x0.shape[0] if n is None else n):
        pick = partial(jax.tree.map, lambda a: a[s])
        t, disp = pick(teacher), optax.tree.sub(pick(teacher), pick(theta0))
        for init_name, init in (("student", pick(theta0)), ("cross", pick(theta0_cross))):
            for loss_name, loss in losses.items():
                update = theory.student_update(apply, init, t, x0[s], loss)
                out[f"{init_name}_{loss_name}"].append(float(theory.cosine(update, disp)))
    return {k: np.asarray(v) for k, v in out.items()}


# ---------------------------------------------------------------------------- run


def _host(tree):
    """Seed-sharded results as numpy arrays, whole on every host: on a multi-host mesh the other
    hosts' seeds are gathered (``process_allgather``); on one host this is ``np.asarray``."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def run(cfg: Config, seeds, data: Dataset, *, seeds_per_chunk: int = 50, devices=None,
        pairing_seed: int = 0, progress: bool = True, command: str | None = None) -> dict:
    """Train and evaluate the six arms of Figure 10 for every seed in ``seeds``.

    ``devices`` (default: all devices, every host's after ``jax.distributed.initialize``) carry
    the seed axis; every host runs this function and gets the whole results; ``pairing_seed`` picks
    the derangement pairing each seed's cross-model students with another seed's
    initialisation. Returns the results dict (see the module docstring).
    """
    start = time.perf_counter()
    prov = provenance(command)  # before training: the commit that produced the numbers
    seeds = [int(s) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise ValueError("seeds must be distinct")
    perm = train.derangement(len(seeds), pairing_seed)
    partners = [seeds[p] for p in perm]
    devices = list(devices or jax.devices())
    mesh = jax.make_mesh((len(devices),), ("seeds",), (jax.sharding.AxisType.Auto,), devices=devices)
    per_seed, replicated = NamedSharding(mesh, P("seeds")), NamedSharding(mesh, P())
    n_chunks, chunk = chunking(len(seeds), seeds_per_chunk, len(devices))

    train_x = jax.device_put(data.train_x[: cfg.n_train], replicated)
    train_y = jax.device_put(data.train_y[: cfg.n_train], replicated)
    test_x = jax.device_put(data.test_x, replicated)
    test_y = jax.device_put(data.test_y, replicated)

    programs = Programs(cfg)
    flops = train.flops_per_seed(cfg)
    teacher_work = train.flops_per_seed(cfg.replace(distill_epochs=0))["ours"]
    work = {"teacher": teacher_work, "distill": flops["ours"] - teacher_work}
    phase_seconds = {"setup": 0.0, "teacher": 0.0, "distill": 0.0, "eval": 0.0, "theory_cosines": 0.0}
    acc = {arm: [] for arm in train.ARMS}
    cos = {name: [] for name in COSINE_LABELS}
    losses = {"teacher_ce": [], "student_kl": []}

    bar = tqdm(total=100.0, disable=not progress, unit="%", dynamic_ncols=True,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}",
               desc=f"mnist_aux {len(seeds)} seeds")
    per_epoch = {"teacher": 100.0 * work["teacher"] / (work["teacher"] + work["distill"]) / n_chunks / max(cfg.teacher_epochs, 1),
                 "distill": 100.0 * work["distill"] / (work["teacher"] + work["distill"]) / n_chunks / max(cfg.distill_epochs, 1)}

    def timed(phase, fn, *args):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        phase_seconds[phase] += time.perf_counter() - t0
        return out

    for c in range(n_chunks):
        idx = list(range(c * chunk, min((c + 1) * chunk, len(seeds))))
        n_real = len(idx)
        idx += [idx[-1]] * (chunk - n_real)  # pad to the compiled shape; padded results dropped
        s_arr = jax.device_put(np.asarray([seeds[i] for i in idx], np.int32), per_seed)
        p_arr = jax.device_put(np.asarray([partners[i] for i in idx], np.int32), per_seed)

        keys, theta0, theta0_cross = timed("setup", programs, "setup", s_arr, p_arr)
        teacher = jax.tree.map(jnp.copy, theta0)
        opt_state = timed("setup", programs, "opt_init", teacher)
        teacher_losses = []
        for epoch in range(cfg.teacher_epochs):
            bar.set_postfix_str(f"chunk {c + 1}/{n_chunks} teacher epoch {epoch + 1}/{cfg.teacher_epochs}")
            teacher, opt_state, loss = timed("teacher", programs, "teacher_epoch", teacher, opt_state,
                                             keys.shuffle, np.int32(epoch), train_x, train_y)
            teacher_losses.append(_host(loss))
            bar.update(per_epoch["teacher"])

        bar.set_postfix_str(f"chunk {c + 1}/{n_chunks} theory cosines")
        x0 = timed("theory_cosines", programs, "first_batch", keys)
        t0 = time.perf_counter()
        if jax.process_count() > 1:  # the per-seed loop below indexes seeds other hosts hold
            chunk_cos = theory_cosines(cfg, *_host((theta0, theta0_cross, teacher, x0)), n_real)
        else:
            chunk_cos = theory_cosines(cfg, theta0, theta0_cross, teacher, x0, n_real)
        phase_seconds["theory_cosines"] += time.perf_counter() - t0
        del x0

        students = timed("setup", programs, "students", theta0, theta0_cross)
        opt_state = timed("setup", programs, "opt_init", students)
        student_losses = []
        for epoch in range(cfg.distill_epochs):
            bar.set_postfix_str(f"chunk {c + 1}/{n_chunks} distill epoch {epoch + 1}/{cfg.distill_epochs}")
            students, opt_state, loss = timed("distill", programs, "distill_epoch", students, opt_state,
                                              teacher, keys, np.int32(epoch))
            student_losses.append(_host(loss))
            bar.update(per_epoch["distill"])
        del opt_state

        bar.set_postfix_str(f"chunk {c + 1}/{n_chunks} evaluation")
        models = timed("eval", programs, "stack", theta0, teacher, students)  # [S, 6, ...]
        chunk_acc = _host(timed("eval", programs, "accuracy", models, test_x, test_y))
        order = ("reference", "teacher") + train.STUDENTS
        for k, arm in enumerate(order):
            acc[arm].extend(chunk_acc[:n_real, k].tolist())
        for name in COSINE_LABELS:
            cos[name].extend(chunk_cos[name].tolist())
        if teacher_losses:
            losses["teacher_ce"].extend(np.stack(teacher_losses, 1)[:n_real].tolist())
        if student_losses:
            losses["student_kl"].extend(np.stack(student_losses, 1)[:n_real].tolist())
        del models, students, teacher, theta0, theta0_cross

    bar.close()
    wall = time.perf_counter() - start
    return {
        "experiment": "mnist_aux_fig10",
        "paper": "Cloud et al., Subliminal Learning, arXiv 2507.14805, section 6.2, Figure 10",
        "config": cfg.to_dict(),
        "seeds": seeds,
        "cross_init_seed": partners,
        "pairing": f"derangement(n={len(seeds)}, seed={pairing_seed}): seed i's cross-model students "
                   "start from the reference init of cross_init_seed[i]",
        "arms": list(train.ARMS),
        "arm_labels": ARM_LABELS,
        "accuracy": acc,
        "summary": {arm: mean_ci(v) for arm, v in acc.items()},
        "theory_cosine": cos,
        "theory_cosine_labels": COSINE_LABELS,
        "theory_cosine_summary": {name: mean_ci(v) for name, v in cos.items()},
        "losses": {**losses, "student_kl_order": list(train.STUDENTS),
                   "note": "per seed, mean loss of each epoch; student_kl per student in student_kl_order"},
        "data": data.source,
        "timing": {
            "wall_seconds": wall,
            "compile_seconds": programs.compile_seconds,
            "phase_seconds": phase_seconds,
            "seconds_per_seed": wall / len(seeds),
            "n_chunks": n_chunks,
            "seeds_per_chunk": chunk,
            "peak_rss_gib": peak_rss_gib(),
            "flops_per_seed": flops,
        },
        **prov,
        "machine": {**prov["machine"], "devices": [str(d) for d in devices]},
    }


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far, GiB (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def compare_copies(official: dict, other: dict) -> dict:
    """Paired per-seed differences between two Figure 10 runs on the same seeds and config that
    differ only in their data (``official - other``, per arm and per theory cosine), each with
    its mean and 95% t-CI over seeds: how far numbers computed on ``other`` moved."""
    if official["seeds"] != other["seeds"] or official["config"] != other["config"]:
        raise ValueError("a paired comparison needs the same seeds and config on both copies")
    diff = {arm: mean_ci(np.subtract(official["accuracy"][arm], other["accuracy"][arm])) for arm in official["accuracy"]}
    cos = {name: mean_ci(np.subtract(official["theory_cosine"][name], other["theory_cosine"][name]))
           for name in official["theory_cosine"]}
    return {"accuracy_difference": diff, "theory_cosine_difference": cos,
            "accuracy_official": official["summary"], "accuracy_other": other["summary"]}


def copies_markdown(results: dict) -> str:
    """The docs' table of :func:`compare_copies`: each arm on both copies and the paired difference."""
    n = len(results["seeds"])
    lines = [f"| arm ({n} paired seeds) | official copy | earlier (rebuilt) copy | official - rebuilt, paired |",
             "| --- | --- | --- | --- |"]

    def pct(s, sign=""):
        return f"{100 * s['mean']:{sign}.1f} % [{100 * s['ci95'][0]:{sign}.1f}, {100 * s['ci95'][1]:{sign}.1f}]"

    for arm, label in ARM_LABELS.items():
        c = results["comparison"]
        lines.append(f"| {label} | {pct(c['accuracy_official'][arm])} | {pct(c['accuracy_other'][arm])} | "
                     f"{pct(c['accuracy_difference'][arm], '+')} |")
    return "\n".join(lines)

