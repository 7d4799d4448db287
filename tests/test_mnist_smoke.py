"""The CLIs end to end on the real (offline) MNIST copy; the smoke preset shows subliminal transfer.

Default tier: ``run``, ``align`` and ``sweep`` on the tiny preset (every step runs, from a
working folder outside the repository). Slow tier: the smoke preset's physics, below.

The smoke preset at 8 seeds (seeds 0-7) measured on the 2-core development machine:
teacher 0.9155 (s.e. 0.0018), student aux-only 0.392 (s.e. 0.035), cross-model aux-only
0.105 (s.e. 0.011), student all-logits 0.876 (s.e. 0.0071), reference 0.0985 (s.e. 0.0086). Each threshold below sits at
least 3 standard errors inside those values, so the test tolerates another CPU's rounding,
not a broken experiment. It runs the CLI end to end and plots the figure from its output.
"""

import gzip
import hashlib
import json
import subprocess
import sys

import matplotlib.pyplot as plt
import pytest
from conftest import mnist_dir

from mnist_aux.data import DATASETS
from mnist_aux.figures import FIGURES

pytestmark = pytest.mark.skipif(mnist_dir() is None, reason="no offline MNIST copy ($SUBLIMINAL_MNIST_DIR)")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working folder outside the repository: the CLIs write results/ there."""
    return tmp_path_factory.mktemp("work")


def _cli(workdir, *args):
    proc = subprocess.run([sys.executable, "-m", "mnist_aux", *args, "--data-dir", str(mnist_dir()), "--no-download",
                           "--no-progress"], cwd=workdir, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def smoke_results(workdir):
    last = _cli(workdir, "run", "--preset", "smoke", "--seeds", "8")
    assert last.startswith("mnist_aux: 8 seeds (smoke, mnist)") and last.endswith("-> results/mnist_aux_smoke.json")
    return json.loads((workdir / "results" / "mnist_aux_smoke.json").read_text())


@pytest.mark.slow
def test_smoke_preset_shows_subliminal_transfer(smoke_results):
    mean = {arm: s["mean"] for arm, s in smoke_results["summary"].items()}
    assert mean["teacher"] > 0.90
    assert mean["student_aux"] > 0.28  # chance is 0.10: the student learned digits from noise + aux logits
    assert 0.06 < mean["cross_aux"] < 0.15  # a different init learns nothing from the same signal
    assert mean["student_all"] > 0.84
    assert 0.05 < mean["reference"] < 0.15


@pytest.mark.slow
def test_smoke_theory_link(smoke_results):
    """Theorem 1: the shared-init student's first step points toward the teacher's displacement."""
    cos = smoke_results["theory_cosine"]
    assert all(c > 0 for c in cos["student_aux"])
    assert smoke_results["theory_cosine_summary"]["student_aux"]["ci95"][0] > 0


def test_run_cli_end_to_end(workdir):
    """``run`` on the tiny preset, 2 seeds: the results file lands under the working folder,
    records where the data came from as given, and plots (the smoke tests above check physics)."""
    last = _cli(workdir, "run", "--preset", "tiny", "--seeds", "2")
    assert last.endswith("-> results/mnist_aux_tiny.json")
    results = json.loads((workdir / "results" / "mnist_aux_tiny.json").read_text())
    assert results["seeds"] == [0, 1] and results["cross_init_seed"] == [1, 0]
    assert results["data"]["dir"] == str(mnist_dir()) and results["command"].startswith("python -m mnist_aux run")
    assert all(s["n"] == 2 for s in results["summary"].values())
    fig = FIGURES[0].plot(results)
    assert len(fig.axes) == 3
    plt.close(fig)


@pytest.mark.slow  # 59 s of the default tier on an AVX2 EPYC (114 s at XLA's default optimisation level)
def test_align_and_sweep_clis_end_to_end(workdir):
    """The other two CLIs on the tiny preset, 2 seeds; results and caches under the working folder."""
    _cli(workdir, "align", "--preset", "tiny", "--seeds", "2", "--arms", "displacement", "--log-every", "5")
    aligned = json.loads((workdir / "results" / "mnist_alignment.json").read_text())
    assert aligned["results"]["displacement"]["max_residual_cos"] < 1e-6
    assert aligned["teacher"]["teacher_cache"].startswith("results/cache/teachers/")
    last = _cli(workdir, "sweep", "heads", "--preset", "tiny", "--seeds", "2")
    assert last.endswith("-> results/mnist_sweep_heads.json")
    swept = json.loads((workdir / "results" / "mnist_sweep_heads.json").read_text())
    assert [p["teacher"]["hit"] for p in swept["points"]] == [True] * 3  # the alignment's teachers, from the cache
    assert len(list((workdir / "results" / "sweeps").glob("*.json"))) == 3


@pytest.mark.slow
def test_smoke_results_record_data_source_and_plot(smoke_results):
    """Each file's "official" flag is what hashing its decompressed bytes here says (the shared copy was
    once a partial reconstruction of the training images and is now the official content)."""
    files = smoke_results["data"]["files"]
    for name, record in files.items():
        with gzip.open(mnist_dir() / name, "rb") as f:
            content = hashlib.file_digest(f, "sha256").hexdigest()
        assert record["content_sha256"] == content
        assert record["official"] == (content == DATASETS["mnist"].content_sha256[name]), name
    assert smoke_results["data"]["official_content"] == all(r["official"] for r in files.values())
    assert smoke_results["preset"] == "smoke" and smoke_results["seeds"] == list(range(8))
    fig = FIGURES[0].plot(smoke_results)
    assert len(fig.axes) == 3
    plt.close(fig)
