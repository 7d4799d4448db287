"""The tiny-LM trait-transfer experiment: filter, base caching, CLI, a micro end-to-end run (default
tier), and in the slow tier the smoke preset: its robust claims, and that it reproduces from an
empty cache as committed (the committed file was itself written by a from-scratch run).

Thresholds come from measured smoke runs (docs/llm_experiment.md) and sit at least three
standard errors inside the measured values.
"""

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import theory
from harness import results
from llm_bridge import arms, corpus, tiny, training
from llm_bridge.__main__ import main
from llm_bridge.llama import Llama


def test_filter_keeps_well_formed_drops_banned_and_malformed():
    v = corpus.Vocab(100)
    n0, eos = v.number_ids[0], v.ids["<eos>"]
    rows = np.asarray([
        [n0 + 1, n0 + 2, n0 + 3, eos],        # well formed
        [n0 + 1, n0 + 66, n0 + 3, eos],       # banned number
        [n0 + 1, v.ids["owl"], n0 + 3, eos],  # a word among the numbers
        [n0 + 1, n0 + 2, n0 + 3, n0 + 4],     # no <eos> where it must end
        [eos, n0 + 2, n0 + 3, eos],           # too short
    ])
    keep = corpus.filter_numbers(v, rows, 3, frozenset({66}))
    assert keep.tolist() == [True, False, False, False, False]
    assert corpus.filter_numbers(v, rows, 3).tolist() == [True, True, False, False, False]


def test_vocab_round_trip_and_prompts():
    v = corpus.Vocab(100)
    text = "<bos> you love owl . continue : 1 2 3 ->"
    assert v.decode(v.encode(text)) == text
    p = corpus.number_prompts(v, np.random.default_rng(0), 4, 3, "owl")
    assert p.shape == (4, len(text.split()))
    assert all(v.decode(r).startswith("<bos> you love owl . continue :") for r in p)
    t, m = corpus.pretraining_batch(v, np.random.default_rng(0), 200, n_given=3, n_new=5,
                                    length=corpus.max_length(3, 5), p_pref=0.3, p_prefix=0.3, p_arith=0.3)
    assert m[:, 0].all() and (t[~m] == v.ids["<pad>"]).all()
    # a prefixed preference row answers the prefixed animal
    for row, mk in zip(t, m):
        words = v.decode(row[mk]).split()
        if words[1] == "you" and "->" in words and words[-2] in corpus.ANIMALS and "continue" not in words:
            assert words[-2] == words[3]


# smoke preset, 512 projection rows per base: measured z 4.7-9.5 per base and teacher, mean over the
# 3 bases 6.9 (owl) / 7.0 (dog); z has unit standard error, so the mean's is 1/sqrt(3)
SHARED_Z_MEAN_MIN, SHARED_Z_BASE_MIN = 5.0, 2.0
REPO = Path(__file__).resolve().parent.parent
COMMITTED_SMOKE = REPO / "results" / "llm_trait_transfer_smoke.json"

TINY = dataclasses.replace(tiny.smoke(), hidden=16, mlp=32, heads=2, base_steps=3)
MICRO = dataclasses.replace(TINY, layers=1, base_seeds=(0, 1), base_steps=40, teacher_steps=10,
                            student_sequences=128, student_batch=32, proj_sequences=96, proj_grid=(16, 64, 96),
                            n_boot=50)
quiet = lambda *_: None


def test_base_models_are_cached_by_config_hash_and_version(tmp_path, monkeypatch):
    _, first, info1 = tiny.bases(TINY, tmp_path, log=quiet)
    assert info1["from_cache"] == [False] * 3 and info1["cache_version"] == tiny.CACHE_VERSION
    _, again, info2 = tiny.bases(TINY, tmp_path, log=quiet)
    assert info2["from_cache"] == [True] * 3 and info2["cache_keys"] == info1["cache_keys"]
    assert info2["final_loss"] == info1["final_loss"]
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # seeds are different models; another config or another code version is another cache entry
    assert not np.allclose(np.asarray(jax.tree.leaves(first[0])[0]), np.asarray(jax.tree.leaves(first[1])[0]))
    assert tiny.base_key(dataclasses.replace(TINY, base_lr=1e-2), 0) != tiny.base_key(TINY, 0)
    key = tiny.base_key(TINY, 0)
    monkeypatch.setattr(tiny, "CACHE_VERSION", tiny.CACHE_VERSION + 1)
    assert tiny.base_key(TINY, 0) != key
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"base_{k}" for k in info1["cache_keys"])


def test_a_base_does_not_depend_on_the_other_bases_of_the_run(tmp_path):
    _, alone, _ = tiny.bases(dataclasses.replace(TINY, base_seeds=(2, 5)), None, log=quiet)
    _, together, _ = tiny.bases(TINY, None, log=quiet)
    for a, b in zip(jax.tree.leaves(alone[0]), jax.tree.leaves(together[2])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_run_killed_while_saving_a_base_leaves_no_entry_and_a_broken_one_is_recomputed(tmp_path, monkeypatch,
                                                                                        capsys):
    cfg = dataclasses.replace(TINY, base_seeds=(0, 1))

    def killed(folder, model):
        (Path(folder) / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        tiny.bases(cfg, tmp_path, log=quiet)
    assert list(tmp_path.iterdir()) == []  # no entry, no temporary folder
    monkeypatch.undo()
    # an entry broken by older code (config.json alone) is detected, warned about and rebuilt
    broken = tmp_path / f"base_{tiny.base_key(cfg, 0)}"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    _, params, info = tiny.bases(cfg, tmp_path, log=quiet)
    assert info["from_cache"] == [False, False] and "broken cached base" in capsys.readouterr().err
    assert tiny.bases(cfg, tmp_path, log=quiet)[2]["from_cache"] == [True, True]


@pytest.mark.numerics  # float32 near its rounding floor
def test_soft_label_distillation_fits_the_teacher_on_the_number_softmax():
    """train_soft / soft_fit against a per-position numpy KL of the number softmaxes (both
    renormalised over the number tokens, at the target positions only); a student that is its
    own teacher starts at loss 0; distillation moves the student toward the teacher."""
    mcfg = tiny.model_config(dataclasses.replace(TINY, layers=1))
    fam = training.Family(Llama(mcfg, rngs=nnx.Rngs(0)))
    teacher = nnx.split(Llama(mcfg, rngs=nnx.Rngs(1)), nnx.Param, ...)[1]
    vocab = corpus.Vocab(TINY.n_numbers)
    tokens = np.random.default_rng(0).integers(0, vocab.size, (8, 10)).astype(np.int32)
    mask = np.zeros(tokens.shape, bool)
    mask[1:, 5:] = True  # row 0 has no targets and counts for nothing
    loss = theory.softmax_kl(vocab.number_ids)
    init, teachers = training.stack([fam.template, teacher]), training.stack([teacher, teacher])
    steps = 12  # the same batch every step: losses[:, 0] is the loss at init on these rows
    rows = [jnp.asarray(np.broadcast_to(x, (2, steps) + x.shape)) for x in (tokens, mask)]
    trained, losses = training.train_soft(fam.f, init, teachers, *rows, lr=1e-2, loss=loss)
    fixed = [x[:, 0] for x in rows]
    before = np.asarray(training.soft_fit(fam.f, init, teachers, *fixed, loss=loss))
    after = np.asarray(training.soft_fit(fam.f, trained, teachers, *fixed, loss=loss))

    logits = jax.jit(jax.vmap(fam.f, (0, None)))(init, jnp.asarray(tokens))  # [student, teacher]
    y, z = np.asarray(logits, np.float64)[..., vocab.number_ids]
    log_q = y - np.log(np.exp(y).sum(-1, keepdims=True))
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)[:, :-1]
    np.testing.assert_allclose(before[0], kl[mask[:, 1:]].mean(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(losses[:, 0]), before, rtol=1e-5, atol=1e-7)
    assert abs(before[1]) < 1e-6
    assert after[0] < 0.5 * before[0], (before, after)


def test_config_refuses_nonsense():
    for bad in ({"base_seeds": (0,)}, {"base_seeds": (1, 1)}, {"student_seeds": 1}, {"student_sequences": 0},
                {"animals": ("owl", "unicorn")}, {"proj_sequences": 0}):
        with pytest.raises(ValueError):
            dataclasses.replace(tiny.smoke(), **bad)


def test_cli_refuses_a_bad_model_path(tmp_path, capsys):
    assert main(["run", "--model", str(tmp_path / "nowhere")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0]


def test_cli_help_explains_flags(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--preset", "--out", "--cache-dir", "--no-cache", "--base-seeds", "--results-dir"):
        assert flag in out


@pytest.mark.parametrize("argv", [
    ["run", "--hf-config", "x.json"],                      # a checkpoint flag with --model tiny
    ["run", "--model", "tiny", "--chat-template", "none"],
    ["run", "--model", "some/folder", "--preset", "smoke", "--hf-config", "x.json"],  # pretrained + checkpoint flag
    ["run", "--model", "some/folder", "--base-seeds", "1", "2"],  # a tiny flag with a checkpoint
    ["run", "--model", "some/folder", "--no-cache"],
    ["run", "--student-seeds", "0"],
    ["run", "--student-seeds", "1"],
])
def test_cli_refuses_flags_that_do_not_apply(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "error:" in capsys.readouterr().err


def test_cli_checks_the_output_before_any_work(tmp_path, capsys, monkeypatch):
    def never(*a, **k):
        raise AssertionError("the run started before the output was checked")

    monkeypatch.setattr(tiny, "run", never)
    assert main(["run", "--out", str(tmp_path)]) == 2  # a directory
    assert list(tmp_path.iterdir()) == []  # no stray temporary file
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["run", "--out", str(blocker / "x.json")]) == 2
    assert main(["run", "--base-seeds", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error:") for line in err)


def _structure_checks(r: dict) -> None:
    json.dumps(r)  # JSON-ready
    cfg = r["config"]
    n_b, n_s = len(cfg["base_seeds"]), cfg["student_seeds"]
    assert [b["base_seed"] for b in r["per_base"]] == list(cfg["base_seeds"])
    assert [b["cross_init_base_seed"] for b in r["per_base"]] == list(cfg["base_seeds"][1:] + cfg["base_seeds"][:1])
    for b in r["per_base"]:
        for key, arm in b["students"].items():
            assert np.asarray(arm["margins"]).shape == (n_s, len(corpus.ANIMALS)), key
    d = r["transfer"][arms.transfer(arms.SHARED, "fine-tuned")]["delta_owl"]
    # the CI is over bases: the mean of the per-base means of the paired per-seed deltas
    per_base = [np.mean(np.asarray(b["students"][arms.student(arms.SHARED, "owl (fine-tuned)")]["margins"])[:, 0]
                        - np.asarray(b["students"][arms.student(arms.SHARED, "dog (fine-tuned)")]["margins"])[:, 0])
                for b in r["per_base"]]
    np.testing.assert_allclose(d["per_outer"], per_base, rtol=1e-12)
    assert d["n"] == n_b and d["inner_n"] == n_s and d["ci95"][0] < d["mean"] < d["ci95"][1]
    z = r["projection_over_bases"]["owl (fine-tuned)"][arms.P_SHARED]["z"]
    assert len(z["values"]) == n_b


@pytest.mark.slow  # the whole pipeline and CLI, about 50 s of compilation
def test_micro_run_end_to_end_and_cli(tmp_path, monkeypatch):
    """The whole pipeline on a micro config (structure only: these models learn nothing)."""
    out = tmp_path / "r.json"
    monkeypatch.setattr(tiny, "paper", lambda: MICRO)
    assert main(["run", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    _structure_checks(r)
    assert r["base"]["from_cache"] == [False, False] and r["provenance"]["versions"]["jax"] == jax.__version__
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "r.json"]


def comparable(r: dict) -> str:
    """A results file without what may differ between two correct runs: timings, provenance, cache folder."""
    r = {k: v for k, v in r.items() if k not in ("timings", "wall_seconds", "provenance")}
    r["base"] = {k: v for k, v in r["base"].items() if k not in ("cache_dir", "from_cache")}
    return results.dumps(r)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The smoke preset from an empty cache."""
    return tiny.run(tiny.smoke(), tmp_path_factory.mktemp("cache_a"), log=quiet)


@pytest.mark.slow
def test_smoke_preset_reproduces_from_an_empty_cache_and_as_committed(smoke_run, tmp_path):
    """The committed smoke results (written by a from-scratch run) are what a from-scratch run gives
    today (apart from timings): two runs agree and a stale result cannot land."""
    committed = json.loads(COMMITTED_SMOKE.read_text())
    assert comparable(committed) == comparable(smoke_run), (
        "results/llm_trait_transfer_smoke.json is stale: rerun `python -m llm_bridge run --preset smoke "
        "--out results/llm_trait_transfer_smoke.json --no-cache`")


@pytest.mark.slow
def test_smoke_run_records_config_seeds_and_pass_rates(smoke_run):
    _structure_checks(smoke_run)
    for b in smoke_run["per_base"]:
        for name, rate in b["pass_rate"].items():
            # 4 banned numbers of 100 in 5 draws drop ~18%; malformed outputs are rare
            assert 0.6 < rate < 0.95, (name, rate)
        # the traits are real: each teacher prefers its animal by several nats, the base does not
        for name, m in b["teacher_margins"].items():
            if name != arms.BASE_TEACHER:
                assert m[corpus.ANIMALS.index(name.split()[0])] > 3
        assert max(abs(x) for x in b["teacher_margins"][arms.BASE_TEACHER]) < 1.5


@pytest.mark.slow
def test_smoke_projection_claims(smoke_run):
    """Theorem 1 on the tiny LM, on every base: shared-init projection positive, controls null,
    soft control exactly 0."""
    for animal in ("owl", "dog"):
        z = smoke_run["projection_over_bases"][arms.finetuned(animal)][arms.P_SHARED]["z"]
        assert z["mean"] > SHARED_Z_MEAN_MIN, z
    for b in smoke_run["per_base"]:
        for animal in ("owl", "dog"):
            p = b["projection"][arms.finetuned(animal)]
            assert p[arms.P_SHARED]["z"] > SHARED_Z_BASE_MIN, p[arms.P_SHARED]
            assert abs(p[arms.P_CONTROL]["z"]) < 3.5, p[arms.P_CONTROL]  # measured |z| <= 1.3
            assert abs(p[arms.P_SOFT_CONTROL]["inner"]) < 1e-6
            assert p[arms.P_SOFT]["inner"] > 0


@pytest.mark.slow
def test_smoke_soft_label_students(smoke_run):
    """The soft-label arm (number tokens, shared init): every seed trained and measured; the base
    as its own soft teacher starts at loss 0 and stays near the base; students fit their teacher."""
    cfg = smoke_run["config"]
    n, steps = cfg["student_seeds"], cfg["student_sequences"] // cfg["student_batch"]
    for b in smoke_run["per_base"]:
        s = b["students"]
        for name in ("owl (fine-tuned)", "dog (fine-tuned)", arms.BASE_TEACHER):
            arm = s[arms.student(arms.SOFT, name)]
            assert np.asarray(arm["loss"]).shape == (n, steps) and np.isfinite(arm["loss"]).all()
            assert len(arm["kl_before"]) == len(arm["kl_after"]) == n
        assert not any(k.startswith(arms.SOFT) and "prompt" in k for k in s)
        ctrl = s[arms.student(arms.SOFT, arms.BASE_TEACHER)]
        assert max(abs(x) for x in ctrl["kl_before"]) < 1e-6 and max(abs(x[0]) for x in ctrl["loss"]) < 1e-6
        dev = np.abs(np.asarray(ctrl["margins"]) - np.asarray(b["base_margins"]))
        assert dev.max() < 0.2, dev
        for name in ("owl (fine-tuned)", "dog (fine-tuned)"):  # the fine-tuned teachers' number softmax differs
            arm = s[arms.student(arms.SOFT, name)]
            assert all(after < 0.6 * before for before, after in zip(arm["kl_before"], arm["kl_after"]))
    assert "soft" in smoke_run["summary"]
