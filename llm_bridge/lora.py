"""LoRA adapters on a loaded model with flax's ``nnx.LoRA``, and training of one parameter subset.

``add_lora(model, rank)`` wraps the attention and MLP projections (``nnx.Linear``) of every
decoder layer in ``nnx.LoRA(..., base_module=linear)``: the layer computes
``linear(x) + x @ A @ B`` with ``A`` He-uniform and ``B`` zero (so a fresh adapter leaves the
model's outputs unchanged). ``nnx.LoRAParam`` is a subclass of ``nnx.Param``: splitting a
model by ``nnx.LoRAParam`` gives the adapters alone, by ``nnx.Param`` every weight.

:func:`fit` trains one such subset with Adam while the rest of the model is passed in as a
plain argument (never closed over: a closed-over 135M-parameter model would be baked into
the compiled program as constants).
"""

from __future__ import annotations

from functools import partial

import jax
import optax
from flax import nnx

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",  # Llama family
           "c_attn", "c_proj", "c_fc",                                                      # GPT-2
           "query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")                     # GPT-NeoX


def add_lora(model: nnx.Module, rank: int, *, seed: int = 0, targets: tuple[str, ...] = TARGETS) -> int:
    """Wrap every ``nnx.Linear`` attribute named in ``targets`` inside ``model.layers`` in ``nnx.LoRA``
    of ``rank``, in place; returns the number of wrapped projections (an error if none)."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    rngs = nnx.Rngs(seed)
    wrapped = 0
    for _, module in nnx.iter_graph(model.layers):
        if not isinstance(module, nnx.Module):
            continue
        for name in targets:
            linear = getattr(module, name, None)
            if isinstance(linear, nnx.Linear):
                setattr(module, name, nnx.LoRA(linear.in_features, rank, linear.out_features, base_module=linear,
                                               param_dtype=linear.kernel[...].dtype, rngs=rngs))
                wrapped += 1
    if not wrapped:
        raise ValueError(f"no projection named {', '.join(targets)} found in the model's layers")
    return wrapped


def split(model: nnx.Module, lora: bool):
    """``(graphdef, trainable, frozen)``: the adapters and everything else (``lora``), or every
    ``nnx.Param`` and the rest (full fine-tuning)."""
    return nnx.split(model, nnx.LoRAParam if lora else nnx.Param, ...)


def count(tree) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(tree))


@partial(jax.jit, static_argnames=("graphdef", "loss_fn", "lr"))
def fit(graphdef, trainable, frozen, batches, *, loss_fn, lr: float):
    """Adam on ``trainable`` over ``batches`` (a pytree with a leading steps axis), ``frozen`` fixed.

    ``loss_fn(model, batch) -> scalar`` sees the merged module. Returns ``(trainable, losses
    [steps])``, each loss before its step.
    """
    opt = optax.adam(lr)

    def step(carry, batch):
        p, s = carry
        value, g = jax.value_and_grad(lambda q: loss_fn(nnx.merge(graphdef, q, frozen), batch))(p)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), value

    (p, _), losses = jax.lax.scan(step, (trainable, opt.init(trainable)), batches)
    return p, losses

