"""The MNIST auxiliary-logit classifier: an MLP 784-256-256-(10+m) with ReLU.

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
    """``x [batch, d_in] -> logits [batch, n_out]``; two ReLU hidden layers of width ``hidden``."""

    def __init__(self, d_in: int, hidden: int, n_out: int, *, rngs: nnx.Rngs):
        def normal(fan_in: int):
            return nnx.initializers.normal(stddev=fan_in**-0.5)

        self.fc1 = nnx.Linear(d_in, hidden, kernel_init=normal(d_in), rngs=rngs)
        self.fc2 = nnx.Linear(hidden, hidden, kernel_init=normal(hidden), rngs=rngs)
        self.out = nnx.Linear(hidden, n_out, kernel_init=normal(hidden), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jax.nn.relu(self.fc2(jax.nn.relu(self.fc1(x)))))


@functools.cache
def _graphdef(d_in: int, hidden: int, n_out: int) -> nnx.GraphDef:
    abstract = nnx.eval_shape(lambda: MLP(d_in, hidden, n_out, rngs=nnx.Rngs(0)))
    return nnx.split(abstract)[0]


def init_params(key: jax.Array, d_in: int = 784, hidden: int = 256, n_out: int = 13) -> Params:
    """Fresh parameters from ``key`` (official init: kernels N(0, 1/sqrt(d_in)), biases 0)."""
    return nnx.to_pure_dict(nnx.state(MLP(d_in, hidden, n_out, rngs=nnx.Rngs(params=key))))


def apply(params: Params, x: jax.Array) -> jax.Array:
    """The pure network ``f(params, x)``: ``[batch, d_in] -> [batch, n_out]`` logits.

    Shapes are read from ``params``, so the same function serves every width. Under
    ``vmap`` over a stack of models with ``x`` shared (``in_axes=(0, None)``), JAX folds the
    model axis into the first layer's matmul: one ``[batch, d_in] x [d_in, models * hidden]``
    product instead of ``models`` small ones.
    """
    d_in, hidden = params["fc1"]["kernel"].shape[-2:]
    n_out = params["out"]["kernel"].shape[-1]
    return nnx.merge(_graphdef(int(d_in), int(hidden), int(n_out)), params)(x)
