"""theory: Theorem 1 / Lemma 1 of "Subliminal Learning" (Cloud et al., arXiv 2507.14805, App. C).

Everything works on a pure ``f(params, x) -> outputs [..., k]`` over pytrees; Flax NNX
modules are adapted with :func:`theory.nets.pure`. See README "theory API" for the table
of functions and the equations they implement.
"""

from theory import losses, stats
from theory.consequences import EpsSearch, smallest_failing_eps, teacher_loss_change, theorem1_branch
from theory.contrast import perturbed_init
from theory.core import (
    Projection,
    batches,
    cosine,
    inner,
    inner_product_jvp,
    lemma1_coefficient,
    projection,
    student_update,
    teacher_direction,
    teacher_params,
)
from theory.losses import mse, softmax_ce, softmax_kl, weighted_mse
from theory.nets import MLP, mlp, pure
from theory.sampled import SampleSize, per_sample_inner_products, sampled_student_update, samples_for_positive, sign_curve

__all__ = [
    "EpsSearch", "MLP", "Projection", "SampleSize", "batches", "cosine", "inner", "inner_product_jvp",
    "lemma1_coefficient", "losses", "mlp", "mse", "per_sample_inner_products", "perturbed_init", "projection",
    "pure", "sampled_student_update", "samples_for_positive", "sign_curve", "smallest_failing_eps", "softmax_ce",
    "softmax_kl", "stats", "student_update", "teacher_direction", "teacher_loss_change", "teacher_params",
    "theorem1_branch", "weighted_mse",
]
