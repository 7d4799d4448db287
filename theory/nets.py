"""Adapting Flax NNX modules to the pure ``f(params, x)`` the theory works on, and a small MLP.

``pure(module)`` splits a module once (``nnx.split``) into its trainable ``nnx.Param``
state and everything else, and returns ``f(params, x) = nnx.merge(graphdef, params,
rest)(x)``; inside ``jax.jit`` the merge happens at trace time only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
from flax import nnx

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jax.numpy.tanh,
    "gelu": jax.nn.gelu,
    "softplus": jax.nn.softplus,
}


def pure(module: nnx.Module):
    """``(f, params)`` for an NNX module: ``f(params, x)`` is pure, ``params`` its nnx.Param state."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def f(p, x):
        return nnx.merge(graphdef, p, rest)(x)

    return f, params


class MLP(nnx.Module):
    """``x [batch, sizes[0]] -> [batch, sizes[-1]]``: Linear layers with ``activation`` between them."""

    def __init__(self, sizes: Sequence[int], activation: str, *, rngs: nnx.Rngs, dtype=None):
        if len(sizes) < 2:
            raise ValueError(f"an MLP needs at least input and output sizes, got {sizes}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
        kw = {} if dtype is None else {"param_dtype": dtype, "dtype": dtype}
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs, bias_init=nnx.initializers.normal(0.1), **kw)
                                for a, b in zip(sizes[:-1], sizes[1:])])
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for layer in self.layers[:-1]:
            x = act(layer(x))
        return self.layers[-1](x)


def mlp(seed: int, sizes: Sequence[int], activation: str = "relu", dtype=None):
    """``(f, params)`` of a freshly initialised :class:`MLP` (seeded; biases N(0, 0.1^2))."""
    return pure(MLP(sizes, activation, rngs=nnx.Rngs(seed), dtype=dtype))
