"""Shared test configuration: hypothesis profiles, float64 fixture, data locations."""

import os
from pathlib import Path

import jax
import pytest
from hypothesis import HealthCheck, settings

# "ci": reproducible and patient (no database, no deadline); "dev": few examples, fast.
settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
# "full": as "ci", and the property tests draw their full example counts (tests/strategies.examples)
settings.register_profile(
    "full", derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "dev", max_examples=10, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def x64():
    """Run the test in float64 with strict dtype promotion (tight tolerances need it)."""
    with jax.enable_x64(True), jax.numpy_dtype_promotion("strict"):
        yield


def mnist_dir() -> Path | None:
    """The MNIST IDX folder: $SUBLIMINAL_MNIST_DIR, else ../shared/data/mnist beside the repo."""
    env = os.environ.get("SUBLIMINAL_MNIST_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data" / "mnist")
    for c in candidates:
        if (c / "train-images-idx3-ubyte.gz").exists():
            return c
    return None


def dicts_where(obj, keep):
    """Every dict nested anywhere in ``obj`` (a loaded JSON value) for which ``keep(dict)`` is true."""
    if isinstance(obj, dict):
        if keep(obj):
            yield obj
        for v in obj.values():
            yield from dicts_where(v, keep)
    elif isinstance(obj, list):
        for v in obj:
            yield from dicts_where(v, keep)
