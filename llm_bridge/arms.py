"""Names of the LM experiments' teachers, student arms and projection rows (results-file keys).

One place for the strings that the tiny-LM experiment, the checkpoint experiment, the
figures and the tests use to find each other's results.
"""

from __future__ import annotations

# student arms: the init a student starts from and the labels it learns from
SHARED = "shared"                # the teacher's own base (shared initialisation), hard labels
CROSS = "cross"                  # another base (different initialisation), hard labels
SOFT = "soft (number tokens)"    # shared init, the teacher's softmax over the number tokens

# teachers
BASE_TEACHER = "base (no trait)"  # the base itself: its numbers train the control students


def finetuned(animal: str) -> str:
    """The teacher that has the trait by fine-tuning (so ``dtheta_T = theta_T - theta_0`` exists)."""
    return f"{animal} (fine-tuned)"


def prompted(animal: str) -> str:
    """The teacher that has the trait by a prompt prefix on the base weights."""
    return f"{animal} (prompt)"


def student(kind: str, teacher: str) -> str:
    """The key of a student arm, e.g. ``"shared: owl (fine-tuned)"``."""
    return f"{kind}: {teacher}"


def transfer(kind: str, how: str) -> str:
    """The key of an owl-vs-dog contrast in the transfer table, e.g. ``"shared, fine-tuned"``."""
    return f"{kind}, {how}"


# rows of the projection test (Theorem 1): where the student starts and whose numbers it sees
P_SHARED = "shared"
P_CROSS = "cross-model"
P_CONTROL = "control (base numbers)"
P_SHARED_FILTERED = "shared, filtered"
P_CONTROL_FILTERED = "control, filtered"
P_SOFT = "soft labels, number tokens"
P_SOFT_CONTROL = "soft labels, control (base as teacher)"
