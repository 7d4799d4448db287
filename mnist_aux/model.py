"""The MNIST auxiliary-logit classifier: an MLP 784-256-256-(10+m) with ReLU.

``depth`` (default 2, the paper's) sets the number of hidden layers, for the depth sweep;
the layers are ``fc1 .. fc<depth>`` then ``out``, drawn in that order, so a depth-2 model
is the same model with the same numbers as before the option existed.

Paper section 6.2 and its official script: weights ~ N(0, 1/sqrt(d_in)) (standard
deviation ``d_in ** -0.5``), biases 0; the first 10 outputs are the digit logits, the last
``m`` the auxiliary logits that no loss ever trains directly on digits. Other schemes
(:data:`INIT_SCHEMES`, for the init-scheme sweep) change only the initializers; the keys
and the order of the draws are the same.

The module is defined with Flax NNX; everything else in the package works on its pure
parameter pytree (``nnx.to_pure_dict`` of the module's state, a nested dict of arrays)
through :func:`apply`, so hot loops are plain ``jax.jit`` / ``vmap`` / ``lax.scan``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

INIT_SCHEMES = {
    "official": "the official script's: kernels N(0, 1/d_in) (std d_in^-1/2), biases 0",
    "torch": "PyTorch's nn.Linear default: kernels Kaiming-uniform with a = sqrt(5), i.e. U(-b, b) with "
             "b = d_in^-1/2, biases U(-b, b)",
    "he_normal": "He normal (jax.nn.initializers.he_normal: truncated normal, variance 2/d_in), biases 0",
    "lecun_normal": "LeCun normal (jax.nn.initializers.lecun_normal: truncated normal, variance 1/d_in), biases 0",
    "orthogonal": "Haar-orthogonal kernels (gain 1: orthonormal columns, or rows when fan_in < fan_out), the polar "
                  "factor of a Gaussian matrix by Newton-Schulz iterations (the distribution of "
                  "jax.nn.initializers.orthogonal, whose LAPACK QR hangs XLA CPU under jit + vmap), biases 0",
}

POLAR_MAX_ITERATIONS = 100  # Newton-Schulz steps at most; Gaussian 784 x 256 needs 12-13, 256 x 256 23-32 (30 draws)
POLAR_TOLERANCE = 2e-6  # stop when max |X^T X - I| is below this (float32 rounding floor: 4e-7 to 7e-7)


def _symmetric_uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def polar_factor(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(q, steps)``: the orthonormal-column polar factor ``a (a^T a)^-1/2`` of a tall matrix
    ``a [m, n]`` (m >= n, full column rank), and the number of iterations it took.

    Cubic Newton-Schulz iterations ``x <- 1.5 x - 0.5 x (x^T x)`` from ``x = a / ||a||_F``
    (every singular value in (0, 1], where the iteration converges to 1) until
    ``max |x^T x - I| <`` :data:`POLAR_TOLERANCE` or :data:`POLAR_MAX_ITERATIONS` steps. Only
    matrix products, so it runs inside jit and vmap, where XLA CPU's LAPACK QR hangs here.
    The polar factor of a Gaussian matrix is Haar-distributed (its law is invariant under
    orthogonal maps on both sides), the same law as the sign-fixed QR factor that
    ``jax.nn.initializers.orthogonal`` returns; the matrices differ, the distribution does not.
    """
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)

    def state(x, steps):  # the Gram matrix x^T x serves both the stopping test and the next step
        return x, x.T @ x, steps

    def body(s):
        x, gram, steps = s
        return state(1.5 * x - 0.5 * x @ gram, steps + 1)

    def cond(s):
        _, gram, steps = s
        return (steps < POLAR_MAX_ITERATIONS) & (jnp.max(jnp.abs(gram - eye)) >= POLAR_TOLERANCE)

    x, _, steps = jax.lax.while_loop(cond, body, state(a / jnp.linalg.norm(a), jnp.int32(0)))
    return x, steps


def orthogonal(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """A Haar-orthogonal ``[fan_in, fan_out]`` kernel (gain 1), drawn as
    ``jax.nn.initializers.orthogonal`` draws its Gaussian matrix, orthogonalised by
    :func:`polar_factor` instead of QR."""
    rows, cols = shape
    tall = (rows, cols) if rows >= cols else (cols, rows)
    q, _ = polar_factor(jax.random.normal(key, tall, jnp.float32))
    return (q if rows >= cols else q.T).astype(dtype)


def initializers(scheme: str, fan_in: int):
    """``(kernel_init, bias_init)`` of a layer with ``fan_in`` inputs under ``scheme``."""
    zeros = nnx.initializers.zeros_init()
    if scheme == "official":
        return nnx.initializers.normal(stddev=fan_in**-0.5), zeros
    if scheme == "torch":  # kaiming_uniform_(a=sqrt(5)): bound sqrt(6 / ((1 + a^2) fan_in)) = fan_in^-1/2
        return _symmetric_uniform(fan_in**-0.5), _symmetric_uniform(fan_in**-0.5)
    if scheme == "he_normal":
        return jax.nn.initializers.he_normal(), zeros
    if scheme == "lecun_normal":
        return jax.nn.initializers.lecun_normal(), zeros
    if scheme == "orthogonal":
        return orthogonal, zeros
    raise ValueError(f"unknown init scheme {scheme!r}; known: {', '.join(INIT_SCHEMES)}")


Params = dict  # {"fc1": {"kernel": [784, h], "bias": [h]}, "fc2": ..., "out": {"kernel": [h, 10+m], ...}}


class MLP(nnx.Module):
    """``x [batch, d_in] -> logits [batch, n_out]``; ``depth`` ReLU hidden layers of width ``hidden``."""

    def __init__(self, d_in: int, hidden: int, n_out: int, *, rngs: nnx.Rngs, depth: int = 2,
                 init_scheme: str = "official"):
        if depth < 1:
            raise ValueError(f"depth must be >= 1 hidden layer, got {depth}")

        def linear(fan_in: int, fan_out: int):
            kernel_init, bias_init = initializers(init_scheme, fan_in)
            return nnx.Linear(fan_in, fan_out, kernel_init=kernel_init, bias_init=bias_init, rngs=rngs)

        self.depth = depth
        for i in range(depth):
            setattr(self, f"fc{i + 1}", linear(d_in if i == 0 else hidden, hidden))
        self.out = linear(hidden, n_out)

    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.depth):
            x = jax.nn.relu(getattr(self, f"fc{i + 1}")(x))
        return self.out(x)


@functools.cache
def _graphdef(d_in: int, hidden: int, n_out: int, depth: int = 2) -> nnx.GraphDef:
    abstract = nnx.eval_shape(lambda: MLP(d_in, hidden, n_out, rngs=nnx.Rngs(0), depth=depth))
    return nnx.split(abstract)[0]


def init_params(key: jax.Array, d_in: int = 784, hidden: int = 256, n_out: int = 13, depth: int = 2,
                init_scheme: str = "official") -> Params:
    """Fresh parameters from ``key`` (default: the official init, kernels N(0, 1/sqrt(d_in)),
    biases 0; see :data:`INIT_SCHEMES`)."""
    return nnx.to_pure_dict(nnx.state(MLP(d_in, hidden, n_out, rngs=nnx.Rngs(params=key), depth=depth,
                                          init_scheme=init_scheme)))


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
