"""The factors the 2026 reproductions vary (issue 11) and the peer table.

Init schemes, structured noise, the new sweeps' registry entries, cache keys that stay valid
for entries written before ``Config.init_scheme`` existed, and the peer table assembled from
the committed results files.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, mnist_dir

from mnist_aux import data, dissect, inputs, model, peers, sweeps, teachers, train
from mnist_aux.configs import Config
from mnist_aux.model import INIT_SCHEMES, init_params
from theory.stats import mean_ci

# float32 comparisons near the rounding floor: .ci/run also runs them under an older ISA (AVX)
pytestmark = pytest.mark.numerics

TINY = Config(hidden=32, lr=1e-3, batch_size=64, teacher_epochs=1, n_train=1024, distill_epochs=3, n_noise=640)
needs_mnist = pytest.mark.skipif(mnist_dir() is None, reason="no offline MNIST copy ($SUBLIMINAL_MNIST_DIR)")


# --------------------------------------------------------------------- init schemes


def _layers(scheme, hidden=512, seed=0):
    return init_params(jax.random.key(seed), 784, hidden, 13, init_scheme=scheme)


def test_official_scheme_is_the_default_bit_for_bit():
    a, b = _layers("official"), init_params(jax.random.key(0), 784, 512, 13)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("scheme, kernel_var, bias_bound", [
    ("official", 1.0, 0.0), ("lecun_normal", 1.0, 0.0), ("he_normal", 2.0, 0.0), ("torch", 1 / 3, 1.0),
    ("orthogonal", None, 0.0)])
def test_init_schemes_draw_their_distributions(scheme, kernel_var, bias_bound):
    """Kernel variance x fan_in and bias range per layer, as each scheme defines them."""
    for name, layer in _layers(scheme).items():
        w, b = np.asarray(layer["kernel"], np.float64), np.asarray(layer["bias"], np.float64)
        fan_in, fan_out = w.shape
        if kernel_var is not None:
            assert w.var() * fan_in == pytest.approx(kernel_var, rel=0.06), name
        else:  # orthonormal columns (fan_in >= fan_out here)
            assert np.allclose(w.T @ w, np.eye(fan_out), atol=1e-5), name
        if bias_bound == 0.0:
            assert not b.any(), name
        else:  # torch: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the bias too
            assert np.abs(b).max() <= fan_in**-0.5 and np.abs(b).max() > 0.8 * fan_in**-0.5, name
    if scheme in ("he_normal", "lecun_normal"):  # jax's are truncated at 2 std (of the untruncated normal)
        w = np.asarray(_layers(scheme)["fc1"]["kernel"])
        assert np.abs(w).max() <= 2.0 * np.sqrt(kernel_var / 784) / 0.87962566103423978 + 1e-6


def test_polar_factor_is_orthonormal_and_its_law_is_haar_like_the_qr_one():
    """Newton-Schulz polar factors of Gaussian matrices have orthonormal columns, and the
    same law as the sign-fixed QR factor (Haar): two-sample KS tests on an entry and on a
    3 x 3 block's trace against numpy's QR of independent draws.

    The iteration stops once its own float32 Gram matrix is within POLAR_TOLERANCE (2e-6) of
    I, so the returned factor can sit just under 2e-6 (1.9e-6 measured). Checking it again
    in float32 adds that check's own rounding, which depends on the CPU's vector ISA (2.09e-6
    on an AVX2-only machine for a factor the loop had accepted): the check is made in float64
    (no rounding of its own) against 5x the tolerance, a margin the ISA cannot eat (the
    float32 floor is 4e-7 to 7e-7 natively and under --xla_cpu_max_isa=AVX2, AVX, SSE4_2)."""
    from scipy.stats import ks_2samp
    for shape in ((784, 256), (256, 256), (256, 13)):
        for seed in (1, 3):  # seed 3's 784 x 256 factor stops at 1.9e-6, the closest to the tolerance
            q, steps = jax.jit(model.polar_factor)(jax.random.normal(jax.random.key(seed), shape))
            q64 = np.asarray(q, np.float64)
            assert np.abs(q64.T @ q64 - np.eye(shape[1])).max() < 5 * model.POLAR_TOLERANCE, (shape, seed)
            assert int(steps) < model.POLAR_MAX_ITERATIONS, (shape, seed)
    n = 2000
    ours = np.asarray(jax.vmap(lambda k: model.orthogonal(k, (6, 3)))(jax.random.split(jax.random.key(2), n)))
    rng = np.random.default_rng(3)
    ref = []
    for _ in range(n):
        qr, r = np.linalg.qr(rng.standard_normal((6, 3)))
        ref.append(qr * np.sign(np.diag(r)))
    ref = np.array(ref)
    for stat in (lambda q: q[:, 0, 0], lambda q: np.trace(q[:, :3, :3], axis1=1, axis2=2)):
        assert ks_2samp(stat(ours), stat(ref)).pvalue > 1e-3
    assert ks_2samp(ours[:, 0, 0], rng.uniform(-1, 1, n)).pvalue < 1e-6  # the test can tell laws apart
    wide = model.orthogonal(jax.random.key(4), (13, 256))  # fan_in < fan_out: orthonormal rows
    assert np.allclose(wide @ wide.T, np.eye(13), atol=1e-5)


@pytest.mark.slow  # a subprocess (about 10 s): a regression would otherwise hang the worker
def test_orthogonal_teachers_build_under_jit_and_vmap():
    """The orthogonal scheme inside the jitted, seed-vmapped programs (where jax's LAPACK QR
    initializer hung XLA CPU). Run in a subprocess so a regression fails on its timeout."""
    import subprocess
    import sys
    code = ("import jax, jax.numpy as jnp; from mnist_aux import train; from mnist_aux.configs import Config\n"
            "cfg = Config(init_scheme='orthogonal')  # width 256: jax's QR init hangs here at 4 seeds (64 does not)\n"
            "p = jax.jit(lambda s: train.references(cfg, s)[1])(jnp.arange(4))\n"
            "k = p['fc2']['kernel']; print(float(jnp.max(jnp.abs(jnp.einsum('sij,sik->sjk', k, k) - jnp.eye(256)))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.split()[-1]) < 1e-5


def test_schemes_differ_and_unknown_ones_are_refused():
    leaves = {s: np.asarray(_layers(s)["fc1"]["kernel"]) for s in INIT_SCHEMES}
    assert len({v.tobytes() for v in leaves.values()}) == len(INIT_SCHEMES)
    with pytest.raises(ValueError, match="init_scheme must be one of"):
        Config(init_scheme="xavier")
    with pytest.raises(ValueError, match="unknown init scheme"):
        init_params(jax.random.key(0), init_scheme="xavier")


def test_cache_keys_of_the_official_scheme_are_those_of_entries_written_before_it():
    """``init_scheme`` at its default is left out of every cache key, so points written before
    the field existed keep their keys; other schemes get new keys. Every point of every
    committed sweep has its cache entry, whose stored description hashes to its key."""
    cfg = Config()
    assert "init_scheme" in cfg.to_dict() and "init_scheme" not in cfg.key_dict()
    fake = _fake_data()
    assert teachers.key(cfg, range(3), fake) != teachers.key(cfg.replace(init_scheme="torch"), range(3), fake)
    point = sweeps.Point("p", 0, cfg, dissect.Distill(), ("shared",))
    desc = point.describe([0, 1], fake, 0)
    assert "init_scheme" not in desc["config"] and desc["data"] == fake.fingerprint
    assert sweeps.point_key(desc) != sweeps.point_key(sweeps.Point("p", 0, cfg.replace(init_scheme="torch"),
                                                                   dissect.Distill(), ("shared",)).describe([0, 1], fake, 0))
    for path in sorted((REPO / "results").glob("mnist_sweep_*.json")):
        for p in json.loads(path.read_text())["points"]:
            entry = json.loads((REPO / "results" / "sweeps" / f"{p['key']}.json").read_text())
            assert entry["key"] == p["key"] == sweeps.point_key(entry["point"]), (path.name, p["label"])


def _fake_data(value: int = 7):
    n = 8
    return data.Dataset(np.full((n, 784), value, np.uint8), np.arange(n, dtype=np.int32) % 10,
                        np.zeros((n, 784), np.uint8), np.zeros(n, np.int32))


def test_cache_keys_follow_the_data_not_the_gz_bytes(tmp_path):
    """The teachers' and the points' keys change with one pixel of the data, and do not change
    when the same data come from another route (another .gz, another source record)."""
    cfg, seeds = Config(), range(2)
    a, b = _fake_data(7), _fake_data(8)
    same = data.Dataset(a.train_x.copy(), a.train_y.copy(), a.test_x.copy(), a.test_y.copy(), {"origin": "elsewhere"})
    assert teachers.key(cfg, seeds, a) == teachers.key(cfg, seeds, same) != teachers.key(cfg, seeds, b)
    point = sweeps.Point("p", 0, cfg, dissect.Distill(), ("shared",))
    assert (sweeps.point_key(point.describe(seeds, a, 0)) == sweeps.point_key(point.describe(seeds, same, 0))
            != sweeps.point_key(point.describe(seeds, b, 0)))


# -------------------------------------------------------------------- structured noise


@pytest.mark.parametrize("kind", [f"uniform_blur{int(s)}" for s in inputs.UNIFORM_BLURS])
def test_blurred_uniform_is_the_uniform_batch_smoothed(kind):
    keys = train.seed_keys(0, "threefry2x32")
    x = np.asarray(inputs.batch(kind, TINY, keys, 3, 2048)).reshape(-1, 28, 28)
    assert np.array_equal(x, np.asarray(inputs.batch(kind, TINY, keys, 3, 2048)).reshape(-1, 28, 28))
    assert x.std(axis=0).mean() == pytest.approx(inputs.INPUT_STD, rel=0.05)  # every pixel rescaled back
    assert abs(x.mean()) < 0.01
    length = float(kind.removeprefix("uniform_blur"))

    def corr(shift):
        return np.corrcoef(x[:, 8:20, 8:20].ravel(), x[:, 8:20, 8 + shift:20 + shift].ravel())[0, 1]
    # a Gaussian blur of width L correlates pixels d apart by about exp(-d^2 / (4 L^2))
    assert corr(1) == pytest.approx(np.exp(-1 / (4 * length**2)), abs=0.05)
    u = np.asarray(train.noise_batch(keys.noise, 3, 2048)).reshape(-1, 28, 28)
    g = inputs._blur_matrix(sigma=length)
    scale = np.outer(np.linalg.norm(g, axis=1), np.linalg.norm(g, axis=1))
    assert np.allclose(x, np.einsum("ij,bjk,lk->bil", g, u, g) / scale, atol=1e-5)  # Figure 10's noise, smoothed


@needs_mnist
@pytest.mark.parametrize("kind", inputs.MOMENTS)
def test_mnist_matched_noise_has_mnists_moments(kind):
    mnist = data.load("mnist", mnist_dir(), allow_download=False)
    m = inputs.moments(mnist.train_x[:6000])
    x = np.asarray(data.normalize(mnist.train_x[:6000]), np.float64)
    assert np.allclose(m[0], x.mean(0), atol=1e-6) and np.allclose(m[1], x.std(0), atol=1e-6)
    keys = train.seed_keys(1, "threefry2x32")
    z = np.asarray(inputs.batch(kind, TINY, keys, 0, 8192, jnp.asarray(m)), np.float64)
    if kind == "uniform_mnist_pixel":
        assert np.abs(z.mean(0) - m[0]).max() < 0.03 and np.abs(z.std(0) - m[1]).max() < 0.03
        assert np.all(z >= m[0] - np.sqrt(3) * m[1] - 1e-5) and np.all(z <= m[0] + np.sqrt(3) * m[1] + 1e-5)
    else:
        assert z.mean() == pytest.approx(x.mean(), abs=0.01) and z.std() == pytest.approx(x.std(), rel=0.01)
        assert np.abs(z.mean(0) - x.mean()).max() < 0.05  # the same at every pixel


def test_moment_matched_inputs_need_the_images():
    with pytest.raises(ValueError, match="needs the images"):
        dissect.run(TINY, dissect.Distill(inputs="uniform_mnist_pixel"), ["shared"], [0, 1], None, teacher_cache=None)


# ------------------------------------------------------------------------- registry


class _Data:  # the registry only reads the config; points are not run here
    source = {"files": {}}
    fingerprint = "0" * 64


@pytest.mark.parametrize("name", ["init_scheme", "batch", "teacher_epochs", "aux_logits", "noise", "peers"])
def test_peer_factor_sweeps_have_20_seeds_and_both_students(name):
    sweep = sweeps.SWEEPS[name]
    assert sweep.seeds >= 20
    ctx = sweeps.Context(Config(), tuple(range(sweep.seeds)), _Data())
    points = sweep.points(ctx)
    assert all(p.inits == ("shared", "cross") and p.seeds is None for p in points)
    expected = {"init_scheme": list(INIT_SCHEMES), "batch": [64, 128, 256, 1024], "teacher_epochs": [1, 2, 5, 9, 15, 25],
                "aux_logits": [1, 3, 10, 25, 50, 100, 250] * 2, "noise": list(sweeps.NOISE),
                "peers": ["brockers", "all_logits_b128"]}[name]
    assert [p.x for p in points] == expected
    if name == "aux_logits":
        assert [p.spec.loss for p in points] == ["kl"] * 7 + ["mse"] * 7
        assert all(p.cfg.n_aux == p.x for p in points)
    # the point at the paper's setting is the one other sweeps share (one cache entry)
    fake = _fake_data()
    base = sweeps.Point("", 0, Config(), dissect.Distill(), ("shared", "cross")).describe(ctx.seeds, fake, 0)
    if name != "peers":
        assert sum(p.describe(ctx.seeds, fake, 0) == base for p in points) == 1


# ------------------------------------------------------------------------- peer table


def _committed(stem):
    path = REPO / "results" / f"{stem}.json"
    if not path.is_file():
        pytest.fail(f"{path} missing: run `python -m mnist_aux sweep {stem.removeprefix('mnist_sweep_')}`")
    return json.loads(path.read_text())


def test_peer_table_quotes_the_committed_results():
    files = {stem: _committed(stem) for stem in peers.stems()}
    table = peers.assemble(files)
    assert len(table["rows"]) == len(peers.PEERS)
    fig10 = files[peers.FIG10]
    assert table["rows"][0]["ours_summary"] == mean_ci(fig10["accuracy"]["student_aux"])
    for row in table["rows"]:
        assert row["ours_summary"]["n"] >= 20 and 0.0 <= row["ours_summary"]["mean"] <= 1.0
    jiang = next(r for r in table["rows"] if r["source"] == peers.JIANG and r["init"] == "shared")
    point = next(p for p in files["mnist_sweep_aux_logits"]["points"] if p["x"] == 3 and p["series"] == "MSE")
    assert point["distill"]["loss"] == "mse" and jiang["ours_summary"] == point["students"][0]["accuracy_summary"]
    text = peers.markdown(table)
    assert text.count("\n") == len(peers.PEERS) + 3 and "27.1% ± 3.3" in text and "58.8% ± 12.3 (std)" in text


def test_the_committed_peer_table_is_assembled_from_the_committed_results():
    """results/mnist_peers.json is what `python -m mnist_aux peers` assembles from the committed Figure 10 and
    sweep files (the docs render it: tests/test_render.py checks that they show it)."""
    table = _committed("mnist_peers")
    assert peers.assemble({stem: _committed(stem) for stem in peers.stems()})["rows"] == table["rows"]
    docs = (REPO / "docs" / "mnist_dissect.md").read_text()
    assert "<!-- render mnist_aux.render:peer_table -->" in docs
    assert all(f"<!-- render mnist_aux.render:factor_sweep {name} -->" in docs for name in sweeps.FACTOR_SWEEPS)


def test_paired_markdown_marks_a_zero_update_and_the_missing_points():
    results = _committed("mnist_sweep_aux_logits")
    m1 = next(p for p in results["points"] if p["x"] == 1 and p["series"] == "KL")
    shared = next(s for s in m1["students"] if s["init"] == "shared")
    assert all(v == 0.0 for v in shared["theory_inner"])  # KL on one logit: the student does not move
    text = sweeps.paired_markdown({**results, "points": [m1], "missing_points": ["m = 3, KL"]})
    assert "| m = 1, KL | 10.0 % [" in text and "undefined (zero update)" in text
    assert text.endswith("not yet computed: m = 3, KL") and text.count("\n| m = ") == 1


def test_peers_cli_names_a_missing_results_file_and_writes_nothing(tmp_path, capsys):
    from mnist_aux.__main__ import main
    for stem in peers.stems()[1:]:  # all but Figure 10's file
        (tmp_path / f"{stem}.json").write_text(json.dumps(_committed(stem)))
    assert main(["peers", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "mnist_aux_fig10.json is missing or unreadable" in err and "--seeds 100" in err and "\n" not in err
    assert not (tmp_path / "mnist_peers.json").exists()


def test_peer_table_names_a_missing_point():
    files = {stem: _committed(stem) for stem in peers.stems()}
    files["mnist_sweep_batch"] = {**files["mnist_sweep_batch"],
                                  "points": [p for p in files["mnist_sweep_batch"]["points"] if p["x"] != 128]}
    with pytest.raises(KeyError, match="mnist_sweep_batch: no point '128'"):
        peers.assemble(files)


def test_a_sweep_still_being_computed_is_assembled_from_its_cached_points(tmp_path, monkeypatch, capsys):
    """``sweep NAME --cached-only``: the cached points, the others listed as missing; nothing computed."""
    calls = []

    def fake_run(cfg, spec, inits, seeds, data, **kw):
        calls.append(cfg)
        return {"students": [], "cpu_seconds": 1.0}

    monkeypatch.setattr(dissect, "run", fake_run)
    ctx = sweeps.Context(Config(), tuple(range(20)), _Data(), cache=tmp_path)
    first = sweeps.SWEEPS["batch"].points(ctx)[0]
    ctx.point(first)  # one point cached
    partial = sweeps.run_sweep("batch", _Data(), cache=tmp_path, progress=False, cache_only=True, partial=True)
    assert [p["label"] for p in partial["points"]] == [first.label] and len(calls) == 1
    assert partial["missing_points"] == ["batch 128", "batch 256", "batch 1024"]
    with pytest.raises(sweeps.MissingPoint):
        sweeps.run_sweep("batch", _Data(), cache=tmp_path, progress=False, cache_only=True)
    with pytest.raises(sweeps.MissingPoint, match="no point is cached yet"):
        sweeps.run_sweep("noise", _Data(), cache=tmp_path, progress=False, cache_only=True, partial=True)
    from mnist_aux.__main__ import main
    assert main(["sweep", "batch", "--cached-only", "--recompute"]) == 2
    assert "give one of them" in capsys.readouterr().err
