"""The tiny setup of the LM experiment: filter, base caching, CLI, a micro end-to-end run, and in the
slow tier the smoke preset: its robust claims, and that a run from an empty cache reaches the
committed file's verdicts and intervals (not its digits, which depend on the CPU's vector ISA).

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
from llm_bridge.__main__ import main
from llm_bridge.experiment import corpus, engine, names, tiny, tiny_bases, training
from llm_bridge.models.llama import Llama


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
# one from-scratch smoke run per vector ISA: llm_trait_transfer_smoke.json (AVX-512), _avx2.json (AVX2, no AVX-512)
COMMITTED_SMOKE = sorted((REPO / "results").glob("llm_trait_transfer_smoke*.json"))

TINY = dataclasses.replace(tiny.smoke(), hidden=16, mlp=32, heads=2, base_steps=3)
MICRO = dataclasses.replace(TINY, layers=1, base_seeds=(0, 1), base_steps=40, teacher_steps=10,
                            student_sequences=128, student_batch=32, proj_sequences=96, proj_grid=(16, 64, 96),
                            n_boot=50)
quiet = lambda *_: None


def _bases(cfg, cache):
    return tiny_bases.bases(cfg, tiny.Setup(cfg, cache).streams, cache, log=quiet)


def test_base_models_are_cached_by_config_hash_and_code(tmp_path):
    _, first, info1 = _bases(TINY, tmp_path)
    assert info1["from_cache"] == [False] * 3 and info1["phase_version"] == tiny_bases.PHASE.version
    _, again, info2 = _bases(TINY, tmp_path)
    assert info2["from_cache"] == [True] * 3 and info2["cache_keys"] == info1["cache_keys"]
    assert info2["final_loss"] == info1["final_loss"]
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # seeds are different models; another config or another code version is another cache entry
    assert not np.allclose(np.asarray(jax.tree.leaves(first[0])[0]), np.asarray(jax.tree.leaves(first[1])[0]))
    assert tiny_bases.base_key(dataclasses.replace(TINY, base_lr=1e-2), 0) != tiny_bases.base_key(TINY, 0)
    assert sorted(p.name for p in (tmp_path / "bases").iterdir()) == sorted(f"base_{k}" for k in info1["cache_keys"])


def test_a_base_key_follows_the_pretraining_code(monkeypatch):
    key = tiny_bases.base_key(TINY, 0)
    monkeypatch.setattr(tiny_bases, "PHASE", dataclasses.replace(tiny_bases.PHASE, version=tiny_bases.PHASE.version + 1))
    assert tiny_bases.base_key(TINY, 0) != key
    monkeypatch.undo()
    import harness.cache
    real = harness.cache.code_fingerprint
    monkeypatch.setattr(harness.cache, "code_fingerprint", lambda *code: real(*code) + "edited")
    assert tiny_bases.base_key(TINY, 0) != key


def test_a_base_does_not_depend_on_the_other_bases_of_the_run():
    _, alone, _ = _bases(dataclasses.replace(TINY, base_seeds=(2, 5)), None)
    _, together, _ = _bases(TINY, None)
    for a, b in zip(jax.tree.leaves(alone[0]), jax.tree.leaves(together[2])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_run_killed_while_saving_a_base_leaves_no_entry_and_a_broken_one_is_recomputed(tmp_path, monkeypatch,
                                                                                        capsys):
    cfg = dataclasses.replace(TINY, base_seeds=(0, 1))

    def killed(folder, model):
        (Path(folder) / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny_bases, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        _bases(cfg, tmp_path)
    assert list((tmp_path / "bases").iterdir()) == []  # no entry, no temporary folder
    monkeypatch.undo()
    # an entry broken by older code (config.json alone) is detected, warned about and rebuilt
    broken = tmp_path / "bases" / f"base_{tiny_bases.base_key(cfg, 0)}"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    _, params, info = _bases(cfg, tmp_path)
    assert info["from_cache"] == [False, False] and "broken cached base" in capsys.readouterr().err
    assert _bases(cfg, tmp_path)[2]["from_cache"] == [True, True]


@pytest.mark.numerics  # float32 near its rounding floor
def test_soft_label_distillation_fits_the_teacher_on_the_number_softmax():
    """train_soft / soft_fit against a per-position numpy KL of the number softmaxes (both
    renormalised over the number tokens, at the target positions only); a student that is its
    own teacher starts at loss 0; distillation moves the student toward the teacher."""
    mcfg = tiny_bases.model_config(dataclasses.replace(TINY, layers=1))
    fam = training.PureModel(Llama(mcfg, rngs=nnx.Rngs(0)))
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


def test_cli_help_explains_flags(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--preset", "--out", "--cache-dir", "--no-cache", "--base-seeds", "--results-dir",
                 "--config", "--student-seeds"):
        assert flag in out


@pytest.mark.parametrize("argv", [
    ["run", "--model", "tiny", "--chat-template", "none"],          # a chat flag with --model tiny
    ["run", "--model", "some/folder", "--base-seeds", "1", "2"],  # a tiny flag with the chat setup
    ["run", "--model", "smollm2", "--preset", "bases"],
    ["run", "--student-seeds", "0"],
    ["run", "--student-seeds", "1"],
    ["run", "--base-seeds", "0", "99999999999999999999"],
    ["run", "--base-seeds", "-1", "-2"],
])
def test_cli_refuses_flags_that_do_not_apply(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "error:" in capsys.readouterr().err


def test_cli_checks_the_output_and_cache_before_any_work(tmp_path, capsys, monkeypatch):
    def never(*a, **k):
        raise AssertionError("the run started before the output was checked")

    monkeypatch.setattr(engine, "run", never)
    assert main(["run", "--out", str(tmp_path)]) == 2  # a directory
    assert list(tmp_path.iterdir()) == []  # no stray temporary file
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["run", "--out", str(blocker / "x.json")]) == 2
    assert main(["run", "--base-seeds", "3"]) == 2
    assert main(["run", "--out", str(tmp_path / "r.json"), "--cache-dir", str(blocker)]) == 2  # a file as cache
    assert main(["run", "--out", str(tmp_path / "r.json"), "--cache-dir", "/proc/x"]) == 2
    (tmp_path / "c.json").write_text('{"arms": ["full", "qlora"]}')
    assert main(["run", "--out", str(tmp_path / "r.json"), "--config", str(tmp_path / "c.json")]) == 2
    (tmp_path / "c.json").write_text('{"no_such_field": 1}')
    assert main(["run", "--out", str(tmp_path / "r.json"), "--config", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 7 and all(line.startswith("error:") for line in err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "file"]


def test_a_default_output_holding_another_run_is_not_overwritten(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(engine, "run", lambda *a, **k: pytest.fail("ran"))
    (tmp_path / "results").mkdir()
    held = json.loads(json.dumps({"config": dataclasses.asdict(tiny.paper()), "model": "tiny"}))
    (tmp_path / "results" / "llm_trait_transfer.json").write_text(json.dumps(held))
    assert main(["run", "--student-seeds", "3", "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "holds another run" in err and "--out" in err
    assert json.loads((tmp_path / "results" / "llm_trait_transfer.json").read_text()) == held


def test_ctrl_c_is_one_line(tmp_path, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "run", interrupted)
    assert main(["run", "--out", str(tmp_path / "r.json"), "--cache-dir", str(tmp_path / "c")]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("interrupted: finished phases are kept") and "\n" not in err


def _structure_checks(r: dict) -> None:
    json.dumps(r)  # JSON-ready
    cfg = r["config"]
    n_b, n_s = len(cfg["base_seeds"]), cfg["student_seeds"]
    assert [b["base_seed"] for b in r["per_base"]] == list(cfg["base_seeds"])
    assert [b["cross_init_base_seed"] for b in r["per_base"]] == list(cfg["base_seeds"][1:] + cfg["base_seeds"][:1])
    for s in r["students"]:
        assert len(s["margins"]["tiny"]) == len(corpus.ANIMALS)
    d = r["transfer"]["full"]["owl - dog (fine-tuned)"]["tiny"]["delta_margins_owl"]
    # the CI is over bases: the mean of the per-base means of the paired per-seed deltas
    m = {(s["base"], s["teacher"], s["seed"]): s["margins"]["tiny"][0] for s in r["students"] if s["arm"] == "full"}
    per_base = [np.mean([m[b, "owl (fine-tuned)", k] - m[b, "dog (fine-tuned)", k] for k in range(n_s)])
                for b in range(n_b)]
    np.testing.assert_allclose(d["per_outer"], per_base, rtol=1e-12)
    assert d["n"] == n_b and d["inner_n"] == n_s and d["ci95"][0] < d["mean"] < d["ci95"][1]
    z = r["projection_over_bases"]["owl (fine-tuned)"][names.P_SHARED]["z"]
    assert len(z["values"]) == n_b


@pytest.mark.slow  # the whole pipeline and CLI, about 50 s of compilation
def test_micro_run_end_to_end_and_cli(tmp_path, monkeypatch):
    """The whole pipeline on a micro config (structure only: these models learn nothing); a second run
    reads every phase from the cache and writes the same results."""
    out = tmp_path / "r.json"
    monkeypatch.setitem(tiny.PRESETS, "paper", lambda: MICRO)
    assert main(["run", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    _structure_checks(r)
    assert r["base"]["from_cache"] == [False, False] and r["provenance"]["versions"]["jax"] == jax.__version__
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "r.json"]
    assert main(["run", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["base"]["from_cache"] == [True, True]
    assert again["students"] == r["students"] and again["projection"] == r["projection"]


def verdict(summary: dict) -> str:
    """``above``, ``below`` or ``covers`` 0: what a 95% CI says of a mean's sign."""
    lo, hi = summary["ci95"]
    return "above" if lo > 0 else "below" if hi < 0 else "covers"


def verdicts(r: dict) -> dict:
    """Every arm's contrast and every projection row's z over bases: ``{name: summary}``."""
    out = {}
    for arm, table in r["transfer"].items():
        for contrast, by in table.items():
            for k, s in by["tiny"].items():
                out[f"{arm}: {contrast}: {k}"] = s
    for teacher, rows in r["projection_over_bases"].items():
        for row, v in rows.items():
            if "z" in v:
                out[f"projection {teacher}: {row}"] = v["z"]
    return out


def test_verdicts_compare_signs_and_intervals_not_digits():
    a = {"mean": 0.5, "ci95": [0.1, 0.9]}
    assert verdict(a) == "above" and verdict({"mean": 0.1, "ci95": [-0.2, 0.4]}) == "covers"
    assert verdict({"mean": -1.0, "ci95": [-2.0, -0.1]}) == "below"


@pytest.fixture(scope="module")
def smoke_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache_a")


@pytest.fixture(scope="module")
def smoke_run(smoke_cache):
    """The smoke preset from an empty cache."""
    return engine.run(tiny.Setup(tiny.smoke(), smoke_cache), log=quiet)


@pytest.mark.slow
def test_the_smoke_preset_over_two_processes_gives_the_same_summary(smoke_run, smoke_cache, tmp_path):
    """jax.distributed on this machine: 2 processes (localhost coordinator, one CPU device each), the students
    split over a data=2 mesh and their results gathered to both hosts; only process 0 writes, and its summary
    is the one-process run's. The bases come from the one-process run's cache (pretraining is per base and
    not split)."""
    import shutil
    import socket
    import subprocess
    import sys

    shutil.copytree(smoke_cache / "bases", tmp_path / "cache" / "bases")
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    out = tmp_path / "r.json"
    procs = [subprocess.Popen([sys.executable, "-m", "llm_bridge", "run", "--preset", "smoke", "--out", str(out),
                               "--cache-dir", str(tmp_path / "cache"), "--mesh", "data=2", "--distributed",
                               "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr[-3000:]
    assert "llm_bridge run:" in outs[0][0] and "llm_bridge run:" not in outs[1][0]  # only process 0 writes
    two = json.loads(out.read_text())
    assert two["mesh"] == {"data": 2, "model": 1} and two["summary"] == smoke_run["summary"]
    # hard-label students agree up to float32 rounding amplified by their Adam steps (another summation order:
    # on an idle AVX2 EPYC the largest difference was 6e-5 nats, the median 3e-7, on margins up to 0.92; 1e-5
    # held on the AVX-512 Xeon only), far below the 0.1-nat effects the study reads; a student swapped, lost
    # or trained on other rows differs by tenths. The soft-label control (the base as its own teacher) is left
    # out: its gradient is zero up to rounding, which Adam's normalisation turns into steps, so another
    # summation order gives another (equally null) student
    hard = lambda r: [s["margins"]["tiny"] for s in r["students"] if s["arm"] != "soft"]
    np.testing.assert_allclose(hard(two), hard(smoke_run), atol=1e-3)


def agree(ours: dict, theirs: dict, same_isa: bool) -> list[str]:
    """What two runs of one preset must share (empty when they do). Whatever the CPU's vector ISA: Theorem 1's
    verdict, the shared-init projection above 0 for both teachers. Under the same ISA (the same float32
    rounding) a from-scratch run repeats the committed one, so there also every other row's verdict and an
    overlap of the two 95% CIs. Under another ISA, chaotic pretraining makes the run a fresh draw of 3 bases,
    and nothing else is compared: a 3-base interval excludes a true null mean 2.5% of the time, and two draws'
    intervals miss each other about 0.5% of the time per row (normal data, simulated), over 18 rows. Those
    verdicts are the 15-base preset's (run natively on AVX-512 and AVX2 and under AVX: docs/llm_experiment.md)."""
    out = []
    for k in ours.keys() | theirs.keys():
        if k not in ours or k not in theirs:
            out.append(f"{k}: in one run only")
            continue
        a, b = ours[k], theirs[k]
        if k.startswith("projection") and k.endswith(f": {names.P_SHARED}"):
            if verdict(a) != "above" or verdict(b) != "above":
                out.append(f"{k}: verdict {verdict(a)} vs {verdict(b)} (Theorem 1: above)")
        elif same_isa and verdict(a) != verdict(b):
            out.append(f"{k}: verdict {verdict(a)} vs {verdict(b)}")
        elif same_isa and (a["ci95"][1] < b["ci95"][0] or b["ci95"][1] < a["ci95"][0]):
            out.append(f"{k}: CIs {a['ci95']} and {b['ci95']} do not overlap")
    return out


def test_agree_compares_every_row_under_one_isa_and_the_theorem_under_two():
    """Measured: the smoke preset natively on AVX-512 and under --xla_cpu_max_isa=AVX, cross-model delta_owl
    -0.062 [-0.104, -0.020] and -0.012 [-0.141, +0.117] (another verdict); natively on AVX2, the dog teacher's
    shared-init z [6.73, 9.98] against AVX-512's [5.55, 6.47] (disjoint) and the base-number control's z above 0."""
    shared, cross = "projection owl (fine-tuned): shared", "cross-model: owl - dog (fine-tuned): delta_margins_owl"
    a = {shared: {"mean": 7.0, "ci95": [5.0, 9.0]}, cross: {"mean": -0.062, "ci95": [-0.104, -0.020]}}
    b = {shared: {"mean": 7.7, "ci95": [6.0, 9.4]}, cross: {"mean": -0.012, "ci95": [-0.141, 0.117]}}
    assert agree(a, b, same_isa=False) == []
    assert agree(a, b, same_isa=True) == [f"{cross}: verdict below vs covers"]
    b[cross] = {"mean": -0.5, "ci95": [-0.8, -0.2]}
    assert agree(a, b, same_isa=False) == [] and len(agree(a, b, same_isa=True)) == 1
    assert "do not overlap" in agree(a, b, same_isa=True)[0]
    b[shared] = {"mean": 1.0, "ci95": [-1.0, 3.0]}
    assert agree(a, b, same_isa=False) == [f"{shared}: verdict above vs covers (Theorem 1: above)"]
    del b[cross]
    assert f"{cross}: in one run only" in agree(a, b, same_isa=False)


def committed_smoke(isa: dict) -> tuple[Path, dict, bool]:
    """The committed smoke run written under ``isa`` (True: the same rounding), else the first one."""
    runs = [(p, json.loads(p.read_text())) for p in COMMITTED_SMOKE]
    same = [(p, r) for p, r in runs if r["provenance"]["machine"]["isa"] == isa]
    return (*same[0], True) if same else (*runs[0], False)


def test_the_committed_smoke_runs_share_the_theorems_verdict():
    """Each committed smoke run (one per vector ISA) is of today's smoke config, and any two share Theorem 1's
    verdict; which ISA wrote each is in its provenance."""
    runs = {p.name: json.loads(p.read_text()) for p in COMMITTED_SMOKE}
    assert len(runs) >= 2 and len({json.dumps(r["provenance"]["machine"]["isa"]) for r in runs.values()}) == len(runs)
    config = json.loads(json.dumps(dataclasses.asdict(tiny.smoke())))
    for name, r in runs.items():
        assert r["config"] == config, name
        assert agree(verdicts(r), verdicts(next(iter(runs.values()))), same_isa=False) == [], name


@pytest.mark.slow
def test_smoke_preset_agrees_with_the_committed_run_from_an_empty_cache(smoke_run):
    """The committed smoke results were written by from-scratch runs, one per vector ISA; a from-scratch run
    today shares with the one of its ISA every row's verdict and overlapping intervals, and with any of them
    Theorem 1's verdict (:func:`agree`). Digits are not compared."""
    from harness import results

    path, committed, same_isa = committed_smoke(results.isa())
    assert committed["config"] == json.loads(json.dumps(dataclasses.asdict(tiny.smoke())))
    problems = agree(verdicts(smoke_run), verdicts(committed), same_isa)
    assert not problems, (f"results/{path.name} disagrees (rerun `python -m llm_bridge run --preset smoke "
                          f"--no-cache --out results/{path.name}` on its ISA if the code changed): "
                          + "; ".join(problems))


@pytest.mark.slow
def test_smoke_run_records_config_seeds_and_pass_rates(smoke_run):
    _structure_checks(smoke_run)
    for b in smoke_run["per_base"]:
        for name, rate in b["pass_rate"].items():
            # 4 banned numbers of 100 in 5 draws drop ~18%; malformed outputs are rare
            assert 0.6 < rate < 0.95, (name, rate)
        # the traits are real: each teacher prefers its animal by several nats, the base does not
        for name, m in b["teacher_margins"].items():
            if name != names.BASE_TEACHER:
                assert m[corpus.ANIMALS.index(name.split()[0])] > 3
        assert max(abs(x) for x in b["teacher_margins"][names.BASE_TEACHER]) < 1.5


@pytest.mark.slow
def test_smoke_projection_claims(smoke_run):
    """Theorem 1 on the tiny LM, on every base: shared-init projection positive, controls null,
    soft control exactly 0."""
    for animal in ("owl", "dog"):
        z = smoke_run["projection_over_bases"][names.finetuned(animal)][names.P_SHARED]["z"]
        assert z["mean"] > SHARED_Z_MEAN_MIN, z
    for b in smoke_run["projection"]:
        for animal in ("owl", "dog"):
            p = b["projection"][names.finetuned(animal)]
            assert p[names.P_SHARED]["z"] > SHARED_Z_BASE_MIN, p[names.P_SHARED]
            assert abs(p[names.P_CONTROL]["z"]) < 3.5, p[names.P_CONTROL]  # measured |z| <= 1.3
            assert abs(p[names.P_SOFT_CONTROL]["inner"]) < 1e-6
            assert p[names.P_SOFT]["inner"] > 0


@pytest.mark.slow
def test_smoke_soft_label_students(smoke_run):
    """The soft-label arm (number tokens, shared init): every seed trained and measured; the base
    as its own soft teacher starts at loss 0 and stays near the base; students fit their teacher."""
    cfg = smoke_run["config"]
    steps = cfg["student_sequences"] // cfg["student_batch"]
    soft = [s for s in smoke_run["students"] if s["arm"] == "soft"]
    assert {s["teacher"] for s in soft} == {"owl (fine-tuned)", "dog (fine-tuned)", names.BASE_TEACHER}
    assert len(soft) == 3 * cfg["student_seeds"] * len(cfg["base_seeds"])
    for s in soft:
        assert np.asarray(s["loss"]).shape == (steps,) and np.isfinite(s["loss"]).all()
        if s["teacher"] == names.BASE_TEACHER:
            assert abs(s["kl_before"]) < 1e-6 and abs(s["loss"][0]) < 1e-6
            base = smoke_run["per_base"][s["base"]]["base_margins"]
            assert np.abs(np.asarray(s["margins"]["tiny"]) - np.asarray(base)).max() < 0.2
        else:  # the fine-tuned teachers' number softmax differs
            assert s["kl_after"] < 0.6 * s["kl_before"], s
    assert "soft" in smoke_run["summary"]
