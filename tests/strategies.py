"""Hypothesis strategies for Theorem-1 properties: networks, inputs, losses, teacher steps.

A drawn :class:`Case` is a float64 MLP ``f(params, x)``, its initial parameters theta0, a
batch of inputs from one of several distributions, an imitation loss (each family of
``theory.losses``, on all outputs or a random subset) and a teacher direction dtheta_T.
Networks of the same architecture share one ``f`` object so that jitted code is reused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

import theory

ACTIVATIONS = ("relu", "tanh", "gelu", "softplus")
INPUT_KINDS = ("uniform", "gaussian", "constant", "low_rank", "large_scale")
LOSS_KINDS = ("mse", "weighted_mse", "softmax_ce", "softmax_kl")
TEACHER_KINDS = ("gradient", "random")


@dataclass(frozen=True)
class Arch:
    d_in: int
    hidden: tuple[int, ...]
    d_out: int
    activation: str

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.d_in, *self.hidden, self.d_out)


@dataclass
class Case:
    arch: Arch
    f: Callable
    params0: Any
    x: jax.Array
    loss: theory.losses.ImitationLoss
    dtheta_T: Any
    loss_T: Callable
    description: str


@lru_cache(maxsize=None)
def apply_fn(arch: Arch) -> Callable:
    """One ``f`` per architecture (so jit caches are shared across drawn seeds)."""
    f, _ = theory.mlp(0, arch.sizes, arch.activation, dtype=jnp.float64)
    return f


def init_params(arch: Arch, seed: int):
    _, params = theory.mlp(seed, arch.sizes, arch.activation, dtype=jnp.float64)
    return params


def make_inputs(kind: str, n: int, d: int, seed: int) -> jax.Array:
    """``[n, d]`` float64 inputs of one of the INPUT_KINDS."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        x = rng.uniform(-1, 1, (n, d))
    elif kind == "gaussian":
        x = rng.normal(size=(n, d))
    elif kind == "constant":
        x = np.broadcast_to(rng.normal(size=(1, d)), (n, d))
    elif kind == "low_rank":
        x = rng.normal(size=(n, 1)) @ rng.normal(size=(1, d))
    elif kind == "large_scale":
        x = 10.0 * rng.normal(size=(n, d))
    else:
        raise ValueError(kind)
    return jnp.asarray(x, jnp.float64)


def make_loss(kind: str, d_out: int, subset: tuple[int, ...] | None, seed: int):
    if kind == "mse":
        return theory.mse(subset)
    if kind == "weighted_mse":
        n = d_out if subset is None else len(subset)
        return theory.weighted_mse(np.random.default_rng(seed).uniform(0.1, 3.0, n), subset)
    if kind == "softmax_ce":
        return theory.softmax_ce(subset)
    return theory.softmax_kl(subset)


def make_teacher(kind: str, f, params0, arch: Arch, seed: int):
    """``(dtheta_T, L_T)``: L_T is a cross-entropy on the teacher's own data (random labels on
    gaussian inputs); dtheta_T is ``-grad L_T`` or, for "random", a gaussian direction."""
    rng = np.random.default_rng(seed + 1)
    x_t = jnp.asarray(rng.normal(size=(8, arch.d_in)), jnp.float64)
    y_t = jnp.asarray(rng.integers(0, arch.d_out, 8))

    def loss_T(p):
        logp = jax.nn.log_softmax(f(p, x_t), axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, y_t[:, None], axis=-1))

    if kind == "gradient":
        return theory.teacher_direction(loss_T, params0), loss_T
    leaves, treedef = jax.tree.flatten(params0)
    noise = [jnp.asarray(rng.normal(size=leaf.shape), jnp.float64) for leaf in leaves]
    return jax.tree.unflatten(treedef, noise), loss_T


archs = st.builds(
    Arch,
    d_in=st.integers(1, 5),
    hidden=st.lists(st.sampled_from([3, 5, 8]), min_size=1, max_size=4).map(tuple),
    d_out=st.integers(2, 6),
    activation=st.sampled_from(ACTIVATIONS),
)


@st.composite
def subsets(draw, d_out: int):
    """None (all outputs) or a random non-empty subset of at least 2 outputs (softmax needs 2)."""
    if draw(st.booleans()):
        return None
    size = draw(st.integers(2, d_out))
    return tuple(sorted(draw(st.permutations(range(d_out)))[:size]))


@st.composite
def cases(draw, loss_kinds=LOSS_KINDS, teacher_kinds=TEACHER_KINDS, input_kinds=INPUT_KINDS):
    arch = draw(archs)
    seed = draw(st.integers(0, 2**16))
    f = apply_fn(arch)
    params0 = init_params(arch, seed)
    input_kind = draw(st.sampled_from(input_kinds))
    n = draw(st.sampled_from([1, 4, 7]))
    x = make_inputs(input_kind, n, arch.d_in, seed)
    loss_kind = draw(st.sampled_from(loss_kinds))
    subset = draw(subsets(arch.d_out))
    loss = make_loss(loss_kind, arch.d_out, subset, seed)
    teacher_kind = draw(st.sampled_from(teacher_kinds))
    d_t, loss_T = make_teacher(teacher_kind, f, params0, arch, seed)
    desc = f"{arch} seed={seed} inputs={input_kind}[{n}] loss={loss_kind}{subset or ''} teacher={teacher_kind}"
    return Case(arch, f, params0, x, loss, d_t, loss_T, desc)


def relu_pattern(params, x: jax.Array) -> np.ndarray:
    """Signs of every hidden pre-activation of a :class:`theory.MLP` (for ReLU kink detection)."""
    signs = []
    layers = params["layers"]
    n = len(layers)
    for i in range(n - 1):
        x = x @ layers[i]["kernel"][...] + layers[i]["bias"][...]
        signs.append(np.asarray(x > 0).reshape(-1))
        x = jax.nn.relu(x)
    return np.concatenate(signs)


def smooth_along(case: Case, eps: float) -> bool:
    """True unless ``case`` is a ReLU net whose activation pattern changes between theta0 and
    theta0 + eps * dtheta_T (then f is not differentiable along the segment and Lemma 1's
    Taylor expansion does not apply to that eps)."""
    if case.arch.activation != "relu":
        return True
    p_t = theory.teacher_params(case.params0, case.dtheta_T, eps)
    return bool(np.array_equal(relu_pattern(case.params0, case.x), relu_pattern(p_t, case.x)))


def examples(n: int) -> int:
    """Hypothesis examples for a property test: ``n`` under ``HYPOTHESIS_PROFILE=full`` (the slow CI
    tier runs every ``property`` test so), a fifth of it (at least 3) in the default tier, which
    keeps the README's ``pytest`` under its time budget. Each example compiles a new network."""
    return n if os.environ.get("HYPOTHESIS_PROFILE") == "full" else max(3, n // 5)
