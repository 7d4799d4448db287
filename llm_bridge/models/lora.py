"""LoRA adapters on a loaded model with flax's ``nnx.LoRA``.

``add_lora(model, rank, scale=s)`` wraps the attention and MLP projections (``nnx.Linear``) of
every decoder layer, named by the model's family record (``Family.lora``,
:mod:`llm_bridge.models`), in :class:`ScaledLoRA`: the layer computes ``linear(x) + s * x @ A @ B``
with ``A`` He-uniform and ``B`` zero (so a fresh adapter leaves the model's outputs unchanged).
The scale is the LoRA paper's ``alpha / r`` (Hu et al. 2021; rsLoRA's ``alpha / sqrt(r)``,
Kalajdzievski 2023): with a fixed alpha the adapters' contribution does not grow with the rank,
so a rank comparison is not a step-size comparison (:mod:`llm_bridge.experiment.arms` picks it).
``nnx.LoRAParam`` is a subclass of ``nnx.Param``: splitting a model by ``nnx.LoRAParam`` gives the
adapters alone, by ``nnx.Param`` every weight. The training loop is
:func:`llm_bridge.experiment.training.fit_frozen`.
"""

from __future__ import annotations

import jax
from flax import nnx

from llm_bridge.models import family_of


class ScaledLoRA(nnx.LoRA):
    """``nnx.LoRA`` whose adapter product is multiplied by ``scale`` (a static float): ``base(x) + scale *
    x @ A @ B``. At ``scale = 1`` it computes exactly what ``nnx.LoRA`` does."""

    def __init__(self, *args, scale: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale = float(scale)

    def __call__(self, x: jax.Array, **kwargs):
        if self.scale == 1.0:
            return super().__call__(x, **kwargs)
        x, lora_a, lora_b = self.promote_dtype((x, self.lora_a[...], self.lora_b[...]), dtype=self.dtype)
        out = (x @ lora_a @ lora_b) * self.scale
        if self.base_module is not None:
            out += self.base_module(x, **kwargs)
        return out


def add_lora(model: nnx.Module, rank: int, *, scale: float = 1.0, seed: int = 0,
             targets: tuple[str, ...] | None = None) -> int:
    """Wrap every ``nnx.Linear`` attribute named in ``targets`` (default: the model family's
    ``Family.lora``) inside ``model.layers`` in :class:`ScaledLoRA` of ``rank`` and ``scale``, in
    place; returns the number of wrapped projections (an error if none)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be an integer >= 1, got {rank!r}")
    if not (isinstance(scale, (int, float)) and scale > 0 and scale < float("inf")):
        raise ValueError(f"LoRA scale must be a finite number > 0, got {scale!r}")
    if targets is None:
        targets = family_of(model).lora
    rngs = nnx.Rngs(seed)
    wrapped = 0
    for _, module in nnx.iter_graph(model.layers):
        if not isinstance(module, nnx.Module):
            continue
        for name in targets:
            linear = getattr(module, name, None)
            if isinstance(linear, nnx.Linear):
                setattr(module, name, ScaledLoRA(linear.in_features, rank, linear.out_features, base_module=linear,
                                                 param_dtype=linear.kernel[...].dtype, rngs=rngs, scale=scale))
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
