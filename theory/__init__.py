"""theory: Theorem 1 / Lemma 1 of "Subliminal Learning" (Cloud et al., arXiv 2507.14805, App. C).

Everything works on a pure ``f(params, x) -> outputs [..., k]`` over pytrees; Flax NNX
modules are adapted with :func:`theory.nets.pure`. See README "theory API" for the table
of functions and the equations they implement.
"""

import importlib

# name -> the module that defines it; loaded on first use (PEP 562), so `import theory` and the
# --help of every command line start without importing JAX
_EXPORTS = {
    "EpsSearch": "consequences", "smallest_failing_eps": "consequences", "teacher_loss_change": "consequences",
    "theorem1_branch": "consequences", "perturbed_init": "contrast",
    "Projection": "core", "batches": "core", "cosine": "core", "inner": "core", "inner_product_jvp": "core",
    "lemma1_coefficient": "core", "projection": "core", "student_update": "core", "teacher_direction": "core",
    "teacher_params": "core",
    "mse": "losses", "softmax_ce": "losses", "softmax_kl": "losses", "weighted_mse": "losses",
    "MLP": "nets", "mlp": "nets", "pure": "nets",
    "SampleSize": "sampled", "per_sample_inner_products": "sampled", "sampled_student_update": "sampled",
    "samples_for_positive": "sampled", "sign_curve": "sampled",
}
_SUBMODULES = ("consequences", "contrast", "core", "demo", "figures", "losses", "nets", "sampled", "stats")

__all__ = sorted([*_EXPORTS, "losses", "stats"])


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"theory.{_EXPORTS[name]}"), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"theory.{name}")
    else:
        raise AttributeError(f"module 'theory' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))
