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

# Seconds of one worker per test file in the slow tier, measured on 2026-12-07 with `-n 0` on the 2-core
# development machine while two background jobs shared it (so roughly 1.3x an idle run; the SmolLM2 smoke from
# its preset's docstring). Both tiers run on two workers with --dist loadfile, which hands whole files to the
# workers in queue order. xdist's default queue (files by number of tests, most first) put the one-test
# SmolLM2 smoke file, the longest, last: the slow tier then took about half the rest plus the whole smoke run.
# pyproject's addopts turn that reordering off (--no-loadscope-reorder) and pytest_collection_modifyitems
# queues the files longest first (these costs, then the number of tests), the classic longest-job-first rule.
# xdist also hands a worker its next file as soon as it has two or fewer tests pending, so a one-test file
# gets a second long file parked behind it: the longest file holds several tests sharing one run
# (tests/test_llm_chat_smoke.py; tests/test_queue_order.py checks it).
FILE_SECONDS = {
    "tests/test_llm_chat_smoke.py": 1126, "tests/test_llm_tiny.py": 351, "tests/test_sharding.py": 259,
    "tests/test_llm_engine.py": 201, "tests/test_mnist_dissect.py": 147, "tests/test_notebook.py": 122,
    "tests/test_theory_lemma1.py": 111, "tests/test_llm_chat_setup.py": 111, "tests/test_llm_chat.py": 81,
    "tests/test_mnist_engine.py": 76, "tests/test_mnist_train.py": 60, "tests/test_llm_gguf.py": 40,
    "tests/test_data_tfds.py": 39, "tests/test_mnist_sharding.py": 30,
    "tests/test_mnist_smoke.py": 27 + 114,  # + the align and sweep CLIs' run, moved from the default tier (idle, AVX2)
}


# The default tier (the README's `pytest`: -m 'not slow') is mostly compiling small XLA programs, each run a few
# times: with XLA's backend (LLVM) optimisation off they compile in about half the time and the tier runs about
# 1.4x faster on 2 cores (an AVX2 EPYC, 2026-12-07: tests/test_mnist_smoke.py + test_llm_chat_setup.py 163 s ->
# 95 s). What the tests check does not depend on it: no test asserts at the float32 floor, and the other tiers
# (numerics under AVX, slow, property) keep XLA's default level, so optimised code is tested too. A user's own
# XLA_FLAGS naming the level, or SUBLIMINAL_TEST_XLA_OPT=1, keeps theirs.
FAST_COMPILE = "--xla_backend_optimization_level=0"


def pytest_configure(config):
    flags = os.environ.get("XLA_FLAGS", "")
    if (config.option.markexpr == "not slow" and "xla_backend_optimization_level" not in flags
            and os.environ.get("SUBLIMINAL_TEST_XLA_OPT") != "1"):
        os.environ["XLA_FLAGS"] = f"{flags} {FAST_COMPILE}".strip()  # before JAX starts its CPU backend


def pytest_collection_modifyitems(config, items):
    """Queue the test files longest first (see :data:`FILE_SECONDS`); a file's own tests keep their order."""
    files = [item.nodeid.split("::", 1)[0] for item in items]
    count: dict[str, int] = {}
    for f in files:
        count[f] = count.get(f, 0) + 1
    order = {f: i for i, f in enumerate(dict.fromkeys(files))}
    key = {id(item): (-FILE_SECONDS.get(f, 0), -count[f], order[f]) for item, f in zip(items, files)}
    items.sort(key=lambda item: key[id(item)])


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
