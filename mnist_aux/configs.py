"""Frozen experiment configurations and the named presets ``paper`` and ``smoke``.

Each preset's docstring gives the command that runs it and how long it takes on the
2-core CPU development machine this project is built on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    """Everything that determines the experiment's numbers (with the list of seeds).

    The defaults are the paper's section 6.2 setup as its official script runs it.
    """

    dataset: str = "mnist"  # "mnist" or "fashion_mnist"
    hidden: int = 256  # width of the hidden layers
    depth: int = 2  # number of hidden layers (the paper's 2; other values for the depth sweep)
    n_aux: int = 3  # m, auxiliary logits after the 10 digit logits
    lr: float = 3e-4  # Adam, betas (0.9, 0.999), eps 1e-8, for the teacher and every student
    batch_size: int = 1024
    teacher_epochs: int = 5  # cross-entropy on the 10 digit logits, reshuffled every epoch
    distill_epochs: int = 5  # KL on noise images, the same set every epoch
    n_train: int = 60_000  # teacher trains on the first n_train training images
    n_noise: int = 60_000  # uniform[-1, 1] noise images per model
    # JAX PRNG behind every key. threefry2x32 is exact under vmap: a seed's numbers do not
    # depend on the seeds beside it. "rbg" draws noise about twice as fast on CPU, but JAX
    # batches rbg keys by drawing ALL of a vmapped batch's bits from its FIRST key, so
    # under vmap a seed's init and noise would depend on its chunk; kept for benchmarks only.
    prng_impl: str = "threefry2x32"
    init_scheme: str = "official"  # teacher = student initialisation (mnist_aux.model.INIT_SCHEMES)

    def __post_init__(self):
        if self.dataset not in ("mnist", "fashion_mnist"):
            raise ValueError(f"dataset must be 'mnist' or 'fashion_mnist', got {self.dataset!r}")
        for name in ("hidden", "depth", "n_aux", "batch_size", "n_train", "n_noise"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.teacher_epochs < 0 or self.distill_epochs < 0:
            raise ValueError("epoch counts must be >= 0")
        if self.prng_impl not in ("rbg", "unsafe_rbg", "threefry2x32"):
            raise ValueError(f"prng_impl must be rbg, unsafe_rbg or threefry2x32, got {self.prng_impl!r}")
        from mnist_aux.model import INIT_SCHEMES
        if self.init_scheme not in INIT_SCHEMES:
            raise ValueError(f"init_scheme must be one of {', '.join(INIT_SCHEMES)}, got {self.init_scheme!r}")
        if not 1 <= self.n_train <= 60_000:
            raise ValueError(f"n_train must be in 1..60000, got {self.n_train}")

    @property
    def n_out(self) -> int:
        """10 digit logits + m auxiliary logits."""
        return 10 + self.n_aux

    @property
    def aux_indices(self) -> tuple[int, ...]:
        """The auxiliary logits, ``(10, ..., 10 + m - 1)``."""
        return tuple(range(10, self.n_out))

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key_dict(self) -> dict:
        """The fields that cache keys hash: :meth:`to_dict` without fields added after the caches'
        format at their default value (``init_scheme="official"``), so entries written before a
        field existed keep their keys (their numbers are the default's)."""
        d = self.to_dict()
        if d["init_scheme"] == "official":
            del d["init_scheme"]
        return d


def paper() -> Config:
    """The paper's Figure 10 setup (section 6.2, official script's hyper-parameters).

    Command: ``python -m mnist_aux run --preset paper --seeds 100``
    (writes results/mnist_aux_fig10.json). 100 seeds took 49.5 minutes (2,447 CPU-seconds,
    peak 3 GiB) on the 2-core CPU development machine while other jobs shared its cores;
    see docs/mnist_aux.md.
    """
    return Config()


def smoke() -> Config:
    """A short CI check that subliminal transfer happens at all (not the paper's numbers).

    Hidden width 128, Adam lr 1e-3, batch 128; one teacher epoch on the first 30,720
    training images; three distillation epochs on 10,240 noise images per model (240
    steps). Chosen by measurement so that, over 8 seeds, the teacher is above 90%, the
    aux-only student well above chance and the cross-model aux-only student at chance
    (tests/test_mnist_smoke.py). Command: ``python -m mnist_aux run --preset smoke
    --seeds 8``; about 15-20 seconds on the 2-core CPU development machine, half of it
    compilation.
    """
    return Config(hidden=128, lr=1e-3, batch_size=128, teacher_epochs=1, n_train=30_720,
                  distill_epochs=3, n_noise=10_240)


def tiny() -> Config:
    """The CLIs' end-to-end check: every step runs, no number means anything (a 32-wide
    network, 1,024 training images, 10 distillation steps per epoch).

    Command: ``python -m mnist_aux sweep heads --preset tiny --seeds 2`` (or ``run`` /
    ``align``); a few seconds plus compilation on the 2-core CPU development machine
    (tests/test_mnist_smoke.py).
    """
    return Config(hidden=32, lr=1e-3, batch_size=64, teacher_epochs=1, n_train=1024, distill_epochs=3, n_noise=640)


PRESETS = {"paper": paper, "smoke": smoke, "tiny": tiny}
