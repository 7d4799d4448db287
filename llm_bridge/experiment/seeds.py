"""The run's random streams, by name: every draw of an experiment comes from one of them.

``Streams(seed)`` hands out a JAX key (:meth:`Streams.key`), a numpy generator (:meth:`Streams.rng`)
or an integer seed (:meth:`Streams.int`) per stream name and path, e.g.
``streams.rng("student_rows", base_seed, student_seed)``. A stream depends only on the run seed, its
name and its path, never on which other streams a run asks for or in which order:

    key(name, *path) = fold_in(... fold_in(fold_in(jax.random.key(seed), id(name)), id(path[0])) ..., id(path[-1]))
    rng(name, *path) = numpy.random.default_rng([seed, id(name), id(path[0]), ...])
    int(name, *path) = rng(name, *path).integers(2**31)

where ``id`` of a name or a string is its CRC-32 and of an integer the integer itself. The results
file records :meth:`Streams.record`: the run seed, this rule and every stream the run drew from.
:data:`STREAMS` lists the names, so a typo fails instead of opening a new stream.
"""

from __future__ import annotations

import zlib

import jax
import numpy as np

STREAMS = {
    "pretraining": "a tiny base's pretraining rows (path: base seed); its init is nnx.Rngs(base seed)",
    "teacher_batches": "a fine-tuned teacher's training batches (path: animal, then the teacher seed in the chat setup)",
    "numbers": "a teacher's number prompts and sampling noise (path: base seed; chat: replicate and number source)",
    "projection_numbers": "the projection's fresh teacher samples (path: base seed)",
    "pass_rate_probe": "the chat setup's pass-rate probe without prefill",
    "student_rows": "a student's rows and their order, shared by every arm (path: base seed, student seed; chat: "
                    "replicate, number source, student seed)",
    "length_match": "the rows a length-matched student draws from (path: replicate, number source)",
    "perturbation": "the noise of a perturbed init (path: base seed, sigma)",
    "lora_init": "a LoRA student's adapter initialisation (path: base seed, student seed)",
    "sampled_answers": "a model's sampled answers to the probe's questions (path: what the model is)",
    "sgd_calibration": "the calibration draw that fixes the SGD rate (path: number source)",
    "bootstrap": "the bootstrap resampling of the projection rows (path: base seed; the rows of a base take consecutive seeds from it)",
}
RULE = ("key = fold_in chain of jax.random.key(seed) with crc32(name) then each path element; rng = "
        "numpy default_rng([seed, crc32(name), *path]); int = rng(...).integers(2**31); a string path element "
        "enters as its crc32, a float as crc32 of its repr")


def _id(x) -> int:
    if isinstance(x, (bool, np.bool_)):
        raise TypeError("a stream path element must be an int, a float or a string")
    if isinstance(x, (int, np.integer)):
        if not 0 <= int(x) < 2**32:
            raise ValueError(f"a stream path integer must be in 0 .. 2**32-1, got {x}")
        return int(x)
    if isinstance(x, float):
        x = repr(x)
    return zlib.crc32(str(x).encode())


class Streams:
    """Named random streams of one run (see the module docstring)."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.used: set[str] = set()

    def _ids(self, name: str, path) -> list[int]:
        if name not in STREAMS:
            raise KeyError(f"no random stream named {name!r}; streams: {', '.join(STREAMS)}")
        self.used.add(name)
        return [_id(name), *map(_id, path)]

    def key(self, name: str, *path) -> jax.Array:
        key = jax.random.key(self.seed)
        for i in self._ids(name, path):
            key = jax.random.fold_in(key, i)
        return key

    def rng(self, name: str, *path) -> np.random.Generator:
        return np.random.default_rng([self.seed, *self._ids(name, path)])

    def int(self, name: str, *path) -> int:
        return int(self.rng(name, *path).integers(2**31))

    def record(self) -> dict:
        return {"seed": self.seed, "rule": RULE, "streams": {n: STREAMS[n] for n in sorted(self.used)}}
