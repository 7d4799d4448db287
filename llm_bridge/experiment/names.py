"""Names of the LM experiments' teachers, students and projection rows: the results files' keys.

One place for the strings that the setups, the engine, the tables, the figures and the tests use
to find each other's results.
"""

from __future__ import annotations

BASE_TEACHER = "base (no trait)"  # the base itself: its numbers train the control students
FINE_TUNED, PROMPTED, BASE = "fine-tuned", "prompt", "base"  # how a teacher has (or lacks) the trait


def finetuned(animal: str) -> str:
    """The teacher that has the trait by fine-tuning (so ``dtheta_T = theta_T - theta_0`` exists)."""
    return f"{animal} ({FINE_TUNED})"


def prompted(animal: str) -> str:
    """The teacher that has the trait by a prompt (system prompt, or the tiny LMs' prefix) on the base weights."""
    return f"{animal} ({PROMPTED})"


def teacher_kind(name: str) -> str:
    """``fine-tuned``, ``prompt`` or ``base`` for a teacher name (or a number source: a name with its decoding)."""
    if name.startswith(BASE_TEACHER):
        return BASE
    return FINE_TUNED if f"({FINE_TUNED})" in name else PROMPTED


def source(teacher: str, decoding: str) -> str:
    """A number source: a teacher and how its replies were decoded, e.g. ``"owl (fine-tuned) [greedy]"``."""
    return f"{teacher} [{decoding}]"


def teacher_of(source_name: str) -> tuple[str, str]:
    """``(teacher, decoding)`` of a :func:`source` name."""
    teacher, _, decoding = source_name.rpartition(" [")
    return teacher, decoding.rstrip("]")


def student(arm: str, teacher: str) -> str:
    """The key of a student arm on a teacher's numbers, e.g. ``"shared: owl (fine-tuned)"``."""
    return f"{arm}: {teacher}"


def transfer(arm: str, how: str) -> str:
    """The key of an owl-vs-dog contrast in the transfer table, e.g. ``"shared, fine-tuned"``."""
    return f"{arm}, {how}"


# rows of the projection test (Theorem 1): where the student starts and whose numbers it sees
P_SHARED = "shared"
P_CROSS = "cross-model"
P_CONTROL = "control (base numbers)"
P_SHARED_FILTERED = "shared, filtered"
P_CONTROL_FILTERED = "control, filtered"
P_SOFT = "soft labels, number tokens"
P_SOFT_CONTROL = "soft labels, control (base as teacher)"
