"""The run's random streams, by name: every draw of an experiment comes from one of them.

``Streams(seed)`` hands out a JAX key (:meth:`Streams.key`) or a numpy generator
(:meth:`Streams.rng`) per stream name and path (e.g. ``("student_rows", base, seed)``); a result
file records :meth:`Streams.record`, the derivation of every stream the run used, so a number
can be traced to the draw behind it. A stream depends only on the run seed, its name and its
path, never on which other streams a run asks for or in which order.
"""

from __future__ import annotations

import jax
import numpy as np

# name -> (kind, derivation from the run seed s and the path p), the legacy derivations of the
# experiments before the engine (kept so the engine reproduces their numbers bit for bit)
LEGACY = {
    # tiny setup
    "pretraining": ("numpy", "default_rng([base_seed, 1]); init nnx.Rngs(base_seed)"),
    "teacher_batches": ("numpy", "default_rng([s, 7, animal index])"),
    "numbers": ("jax", "tiny: fold_in(split(key(s))[0], base_seed); chat: fold_in(key(s), 20 + source index)"),
    "projection_numbers": ("jax", "fold_in(split(key(s))[1], base_seed)"),
    "student_rows": ("numpy", "tiny: default_rng([s, 11, base_seed, seed]); chat: default_rng([s, 2, seed])"),
    "bootstrap": ("numpy", "s + offset of the projection row"),
    # chat setup
    "teacher_rows": ("numpy", "default_rng([s, 1, animal index])"),
    "pass_rate_probe": ("jax", "fold_in(key(s), 10)"),
    "perturbation": ("jax", "fold_in(key(s), int(1000 sigma) + 7)"),
    "lora_init": ("nnx", "Rngs(1000 + seed)"),
}


class Streams:
    """Named random streams of one run (see the module docstring)."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.used: set[str] = set()

    def _note(self, name: str) -> None:
        if name not in LEGACY:
            raise KeyError(f"no random stream named {name!r}; streams: {', '.join(LEGACY)}")
        self.used.add(name)

    def key(self, name: str, *path: int) -> jax.Array:
        """The JAX key of stream ``name`` at ``path`` (integers)."""
        self._note(name)
        root = jax.random.key(self.seed)
        if name == "numbers" and len(path) == 2 and path[0] == "tiny":
            return jax.random.fold_in(jax.random.split(root)[0], path[1])
        if name == "projection_numbers":
            return jax.random.fold_in(jax.random.split(root)[1], path[0])
        if name == "numbers":
            return jax.random.fold_in(root, 20 + path[0])
        if name == "pass_rate_probe":
            return jax.random.fold_in(root, 10)
        if name == "perturbation":
            return jax.random.fold_in(root, int(1000 * path[0]) + 7)
        raise KeyError(f"stream {name!r} is not a JAX stream")

    def rng(self, name: str, *path: int) -> np.random.Generator:
        """The numpy generator of stream ``name`` at ``path`` (integers)."""
        self._note(name)
        if name == "pretraining":
            return np.random.default_rng([path[0], 1])
        if name == "teacher_batches":
            return np.random.default_rng([self.seed, 7, path[0]])
        if name == "teacher_rows":
            return np.random.default_rng([self.seed, 1, path[0]])
        if name == "student_rows" and path[0] == "tiny":
            return np.random.default_rng([self.seed, 11, *path[1:]])
        if name == "student_rows":
            return np.random.default_rng([self.seed, 2, *path])
        raise KeyError(f"stream {name!r} is not a numpy stream")

    def int(self, name: str, *path: int) -> int:
        """An integer seed of stream ``name`` (bootstrap resampling, adapter initialisation)."""
        self._note(name)
        if name == "bootstrap":
            return self.seed + path[0]
        if name == "lora_init":
            return 1000 + path[0]
        raise KeyError(f"stream {name!r} is not an integer stream")

    def record(self) -> dict:
        return {"seed": self.seed, "streams": {n: LEGACY[n][1] for n in sorted(self.used)}}
