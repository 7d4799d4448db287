"""The student arms: one registry entry each, run by every setup where the arm means something.

An arm is where a student starts (``init``), what it updates (``update``), what it imitates
(``target``) and how it steps (``optimizer``), plus which teachers' numbers it learns from:

=============  ================================================================================
init           ``shared``: the teacher's own base theta_0 (Theorem 1's assumption);
               ``other base``: another base model of the same architecture (the tiny setup's base
               i + 1: the paper's cross-model student); ``perturbed``: theta_0 + sigma * std * noise
               per parameter tensor (:func:`theory.perturbed_init`: no exactly shared init)
update         ``full``: every parameter; ``lora``: rank-r adapters on the attention and MLP
               projections (:mod:`llm_bridge.models.lora`), scaled by ``alpha / r`` (Hu et al. 2021)
               or ``alpha / sqrt(r)`` (rsLoRA, Kalajdzievski 2023), the base frozen
target         ``hard``: next-token cross-entropy on the teacher's sampled tokens (the paper's);
               ``soft``: KL to the teacher's softmax over the number tokens at the same positions
optimizer      ``adam`` or ``sgd`` (the rate comes from the setup's config: :meth:`lr_field`)
rows           ``all``: the student draws from its teacher's whole pool; ``length-matched``: from the
               part of it whose reply lengths match the other trait teacher's pool of the same kind
               and decoding, length by length (so owl and dog students see the same length
               distribution: :func:`llm_bridge.experiment.chat_students.length_matched`)
=============  ================================================================================

Adding an arm is one :func:`register` call below; the engine plans every registered arm that a
preset names, on the teachers whose kind the arm lists, in every setup where
:meth:`Arm.unavailable` finds nothing missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llm_bridge.experiment.names import BASE, FINE_TUNED, PROMPTED

INITS = ("shared", "other base", "perturbed")
UPDATES = ("full", "lora")
TARGETS = ("hard", "soft")
OPTIMIZERS = ("adam", "sgd")
ROWS = ("all", "length-matched")


@dataclass(frozen=True)
class Arm:
    """One student arm (see the module docstring)."""

    name: str
    init: str = "shared"
    sigma: float = 0.0
    update: str = "full"
    rank: int = 0
    alpha: float | None = None  # LoRA scale alpha / rank; None: alpha = rank (scale 1, adapters unscaled)
    rslora: bool = False
    target: str = "hard"
    optimizer: str = "adam"
    rows: str = "all"
    teachers: tuple[str, ...] = (FINE_TUNED, PROMPTED, BASE)

    def __post_init__(self):
        for value, allowed, what in ((self.init, INITS, "init"), (self.update, UPDATES, "update"),
                                     (self.target, TARGETS, "target"), (self.optimizer, OPTIMIZERS, "optimizer"),
                                     (self.rows, ROWS, "rows")):
            if value not in allowed:
                raise ValueError(f"arm {self.name!r}: {what} must be one of {', '.join(allowed)}, got {value!r}")
        if (self.update == "lora") != (self.rank >= 1):
            raise ValueError(f"arm {self.name!r}: a LoRA arm needs a rank >= 1 and only a LoRA arm has one")
        if (self.init == "perturbed") != (self.sigma > 0):
            raise ValueError(f"arm {self.name!r}: a perturbed init needs sigma > 0 and only it has one")
        if not set(self.teachers) <= {FINE_TUNED, PROMPTED, BASE}:
            raise ValueError(f"arm {self.name!r}: teachers must be among {FINE_TUNED}, {PROMPTED}, {BASE}")
        if self.rows == "length-matched" and BASE in self.teachers:
            raise ValueError(f"arm {self.name!r}: length matching pairs the two trait teachers; the base has no partner")

    @property
    def lora_scale(self) -> float:
        """The factor on the adapters' product: ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA); 1 when
        ``alpha`` is None."""
        if self.alpha is None:
            return 1.0
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def lr_field(self) -> str:
        """The config field holding this arm's learning rate: ``soft_lr``, ``lora_lr``, ``sgd_lr`` or ``student_lr``."""
        if self.target == "soft":
            return "soft_lr"
        if self.optimizer == "sgd":
            return "sgd_lr"
        return "lora_lr" if self.update == "lora" else "student_lr"

    def unavailable(self, setup) -> str | None:
        """Why this arm cannot run in ``setup`` (an object with ``n_bases`` and ``name``), or None."""
        if self.init == "other base" and setup.n_bases < 2:
            return f"arm {self.name!r} starts from another base model; the {setup.name} setup has one"
        if self.rows != "all" and not getattr(setup, "length_matching", False):
            return f"arm {self.name!r} draws length-matched rows; the {setup.name} setup does not match lengths"
        return None

    def describe(self) -> str:
        init = {"shared": "shared init", "other base": "another base",
                "perturbed": f"theta0 + {self.sigma:g} std noise"}[self.init]
        upd = "full" if self.update == "full" else (f"LoRA r{self.rank}" + (
            "" if self.alpha is None else f" alpha {self.alpha:g}{' (rsLoRA)' if self.rslora else ''}"))
        rows = ", length-matched rows" if self.rows == "length-matched" else ""
        return f"{init}, {upd}, {self.target} labels, {self.optimizer.upper() if self.optimizer == 'sgd' else 'Adam'}{rows}"


ARMS: dict[str, Arm] = {}


def register(arm: Arm) -> Arm:
    """Add ``arm`` to :data:`ARMS` (a name registered twice is an error)."""
    if arm.name in ARMS:
        raise ValueError(f"arm {arm.name!r} registered twice")
    ARMS[arm.name] = arm
    return arm


def get(name: str) -> Arm:
    if name not in ARMS:
        raise ValueError(f"unknown arm {name!r}; registered: {', '.join(ARMS)}")
    return ARMS[name]


register(Arm("full"))
register(Arm("cross-model", init="other base", teachers=(FINE_TUNED,)))
register(Arm("soft", target="soft", teachers=(FINE_TUNED, BASE)))
register(Arm("full sgd", optimizer="sgd"))
for _r in (1, 4, 16, 64, 256):
    register(Arm(f"lora r{_r}", update="lora", rank=_r, alpha=16.0))
register(Arm("length-matched", rows="length-matched", teachers=(FINE_TUNED, PROMPTED)))
for _s in (0.02, 0.1):
    register(Arm(f"perturbed {_s:g}", init="perturbed", sigma=_s))
