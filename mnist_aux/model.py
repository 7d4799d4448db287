"""The MNIST auxiliary-logit classifier: an MLP 784-256-256-(10+m) with ReLU.

``depth`` (default 2, the paper's) sets the number of hidden layers, for the depth sweep;
the layers are ``fc1 .. fc<depth>`` then ``out``, drawn in that order, so a depth-2 model
is the same model with the same numbers as before the option existed.

Paper section 6.2 and its official script: weights ~ N(0, 1/sqrt(d_in)) (standard
deviation ``d_in ** -0.5``), biases 0; the first 10 outputs are the digit logits, the last
``m`` the auxiliary logits that no loss ever trains directly on digits.

The module is defined with Flax NNX; everything else in the package works on its pure
parameter pytree (``nnx.to_pure_dict`` of the module's state, a nested dict of arrays)
through :func:`apply`, so hot loops are plain ``jax.jit`` / ``vmap`` / ``lax.scan``.
"""

from __future__ import annotations

import functools

import jax
from flax import nnx

Params = dict  # {"fc1": {"kernel": [784, h], "bias": [h]}, "fc2": ..., "out": {"kernel": [h, 10+m], ...}}


class MLP(nnx.Module):
    """``x [batch, d_in] -> logits [batch, n_out]``; ``depth`` ReLU hidden layers of width ``hidden``."""

    def __init__(self, d_in: int, hidden: int, n_out: int, *, rngs: nnx.Rngs, depth: int = 2):
        if depth < 1:
            raise ValueError(f"depth must be >= 1 hidden layer, got {depth}")

        def normal(fan_in: int):
            return nnx.initializers.normal(stddev=fan_in**-0.5)

        self.depth = depth
        for i in range(depth):
            fan_in = d_in if i == 0 else hidden
            setattr(self, f"fc{i + 1}", nnx.Linear(fan_in, hidden, kernel_init=normal(fan_in), rngs=rngs))
        self.out = nnx.Linear(hidden, n_out, kernel_init=normal(hidden), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.depth):
            x = jax.nn.relu(getattr(self, f"fc{i + 1}")(x))
        return self.out(x)


@functools.cache
def _graphdef(d_in: int, hidden: int, n_out: int, depth: int = 2) -> nnx.GraphDef:
    abstract = nnx.eval_shape(lambda: MLP(d_in, hidden, n_out, rngs=nnx.Rngs(0), depth=depth))
    return nnx.split(abstract)[0]


def init_params(key: jax.Array, d_in: int = 784, hidden: int = 256, n_out: int = 13, depth: int = 2) -> Params:
    """Fresh parameters from ``key`` (official init: kernels N(0, 1/sqrt(d_in)), biases 0)."""
    return nnx.to_pure_dict(nnx.state(MLP(d_in, hidden, n_out, rngs=nnx.Rngs(params=key), depth=depth)))


def depth_of(params: Params) -> int:
    """The number of hidden layers of a parameter tree (its ``fc<i>`` entries)."""
    return sum(1 for name in params if name.startswith("fc"))


def apply(params: Params, x: jax.Array) -> jax.Array:
    """The pure network ``f(params, x)``: ``[batch, d_in] -> [batch, n_out]`` logits.

    Shapes are read from ``params``, so the same function serves every width. Under
    ``vmap`` over a stack of models with ``x`` shared (``in_axes=(0, None)``), JAX folds the
    model axis into the first layer's matmul: one ``[batch, d_in] x [d_in, models * hidden]``
    product instead of ``models`` small ones.
    """
    d_in, hidden = params["fc1"]["kernel"].shape[-2:]
    n_out = params["out"]["kernel"].shape[-1]
    return nnx.merge(_graphdef(int(d_in), int(hidden), int(n_out), depth_of(params)), params)(x)
