"""The LM trait-transfer experiment (issue 6): filter, base caching, CLI, and the robust claims on the smoke preset.

Thresholds come from measured smoke runs (docs/llm_experiment.md) and sit at least three
standard errors inside the measured values.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import theory
from llm_bridge import corpus, experiment
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


SHARED_Z_MIN = 7  # measured z ~ 11 at 1024 sequences (16 at 2048); z has unit standard error

TINY = dataclasses.replace(experiment.smoke(), hidden=16, mlp=32, heads=2, base_steps=3)


def test_base_models_are_cached_by_config_hash(tmp_path):
    _, first, info1 = experiment.bases(TINY, tmp_path, log=lambda *_: None)
    assert info1["from_cache"] == [False, False]
    _, again, info2 = experiment.bases(TINY, tmp_path, log=lambda *_: None)
    assert info2["from_cache"] == [True, True] and info2["cache_keys"] == info1["cache_keys"]
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # two seeds are two different models; another config is another cache entry
    assert not np.allclose(np.asarray(jax.tree.leaves(first[0])[0]), np.asarray(jax.tree.leaves(first[1])[0]))
    other = dataclasses.replace(TINY, base_lr=1e-2)
    assert experiment.base_key(other, 0) != experiment.base_key(TINY, 0)
    assert len(list(tmp_path.iterdir())) == 2


def test_soft_label_distillation_fits_the_teacher_on_the_number_softmax():
    """train_soft / soft_fit against a per-position numpy KL of the number softmaxes (both
    renormalised over the number tokens, at the target positions only); a student that is its
    own teacher starts at loss 0; distillation moves the student toward the teacher."""
    mcfg = experiment.model_config(dataclasses.replace(TINY, layers=1))
    fam = experiment.Family(Llama(mcfg, rngs=nnx.Rngs(0)))
    teacher = nnx.split(Llama(mcfg, rngs=nnx.Rngs(1)), nnx.Param, ...)[1]
    vocab = corpus.Vocab(TINY.n_numbers)
    tokens = np.random.default_rng(0).integers(0, vocab.size, (8, 10)).astype(np.int32)
    mask = np.zeros(tokens.shape, bool)
    mask[1:, 5:] = True  # row 0 has no targets and counts for nothing
    loss = theory.softmax_kl(vocab.number_ids)
    init, teachers = experiment.stack([fam.template, teacher]), experiment.stack([teacher, teacher])
    steps = 12  # the same batch every step: losses[:, 0] is the loss at init on these rows
    rows = [jnp.asarray(np.broadcast_to(x, (2, steps) + x.shape)) for x in (tokens, mask)]
    trained, losses = experiment.train_soft(fam.f, init, teachers, *rows, lr=1e-2, loss=loss)
    fixed = [x[:, 0] for x in rows]
    before = np.asarray(experiment.soft_fit(fam.f, init, teachers, *fixed, loss=loss))
    after = np.asarray(experiment.soft_fit(fam.f, trained, teachers, *fixed, loss=loss))

    logits = jax.jit(jax.vmap(fam.f, (0, None)))(init, jnp.asarray(tokens))  # [student, teacher]
    y, z = np.asarray(logits, np.float64)[..., vocab.number_ids]
    log_q = y - np.log(np.exp(y).sum(-1, keepdims=True))
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)[:, :-1]
    np.testing.assert_allclose(before[0], kl[mask[:, 1:]].mean(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(losses[:, 0]), before, rtol=1e-5, atol=1e-7)
    assert abs(before[1]) < 1e-6
    assert after[0] < 0.5 * before[0], (before, after)


def test_cli_refuses_a_bad_model_path(tmp_path, capsys):
    assert main(["run", "--model", str(tmp_path / "nowhere")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0]


def test_cli_help_explains_flags(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--preset", "--out", "--cache-dir", "--no-cache"):
        assert flag in out


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One smoke run (bases cached in $SUBLIMINAL_LLM_CACHE or results/cache/llm_bases)."""
    return experiment.run(experiment.smoke(), experiment.cache_dir_from_env(), log=lambda *_: None)


def test_smoke_run_records_config_seeds_and_pass_rates(smoke_run):
    json.dumps(smoke_run)  # JSON-ready
    cfg = smoke_run["config"]
    assert list(cfg["base_seeds"]) == [0, 1] and len(smoke_run["base"]["cache_keys"]) == 2
    for name, rate in smoke_run["pass_rate"].items():
        # 4 banned numbers of 100 in 5 draws drop ~18%; malformed outputs are rare
        assert 0.6 < rate < 0.95, (name, rate)
    # the traits are real: each teacher prefers its animal by several nats, the base does not
    for name, m in smoke_run["teacher_margins"].items():
        if name != "base (no trait)":
            animal = name.split()[0]
            assert m[corpus.ANIMALS.index(animal)] > 3
    assert max(abs(x) for x in smoke_run["teacher_margins"]["base (no trait)"]) < 1.5


def test_smoke_projection_claims(smoke_run):
    """Theorem 1 on the tiny LM: shared-init projection positive, controls null, soft control ~0."""
    for animal in ("owl", "dog"):
        p = smoke_run["projection"][f"{animal} (fine-tuned)"]
        assert p["shared"]["z"] > SHARED_Z_MIN, p["shared"]
        assert abs(p["control (base numbers)"]["z"]) < 3, p["control (base numbers)"]
        assert abs(p["soft labels, control (base as teacher)"]["inner"]) < 1e-6
        assert p["soft labels, number tokens"]["inner"] > 0
        curve = dict(zip(p["shared"]["grid"], p["shared"]["p_positive"]))
        assert curve[256] >= 0.95


def test_smoke_trait_alignment_signs(smoke_run):
    """Alignment of the student's step with the owl-vs-dog trait gradient: dog numbers pull it
    down, owl numbers up relative to them; the base's own numbers are null."""
    a = smoke_run["trait_alignment"]["margin_owl - margin_dog"]
    assert a["dog (fine-tuned)"]["z"] < 0
    assert a["owl (fine-tuned)"]["z"] - a["dog (fine-tuned)"]["z"] > 2
    assert abs(a["base (no trait)"]["z"]) < 3


def test_smoke_soft_label_students(smoke_run):
    """The soft-label arm (number tokens, shared init): every seed trained and measured; the base
    as its own soft teacher starts at loss 0 and stays near the base; the owl-vs-dog contrast has
    the teachers' signs. Measured on the smoke run (soft_lr 3e-4): the KL to the fine-tuned
    teachers falls from 0.016-0.023 to 0.005-0.008 (ratio 0.28-0.37), the control's rises from
    0 to 0.001-0.003; delta_owl per seed +0.053 / +0.022, delta_dog +0.074 / +0.086."""
    cfg, s = smoke_run["config"], smoke_run["students"]
    n, steps = cfg["student_seeds"], cfg["student_sequences"] // cfg["student_batch"]
    for name in ("owl (fine-tuned)", "dog (fine-tuned)", "base (no trait)"):
        arm = s[f"{experiment.SOFT}: {name}"]
        assert np.asarray(arm["margins"]).shape == (n, len(corpus.ANIMALS))
        assert np.asarray(arm["loss"]).shape == (n, steps) and np.isfinite(arm["loss"]).all()
        assert len(arm["kl_before"]) == len(arm["kl_after"]) == n
    assert not any(k.startswith(experiment.SOFT) and "prompt" in k for k in s)
    ctrl = s[f"{experiment.SOFT}: base (no trait)"]
    assert max(abs(x) for x in ctrl["kl_before"]) < 1e-6 and max(abs(x[0]) for x in ctrl["loss"]) < 1e-6
    # measured: at most 0.05 from base A's margins (the hard-label control students: 0.13)
    dev = np.abs(np.asarray(ctrl["margins"]) - np.asarray(smoke_run["base_margins"]["A"]))
    assert dev.max() < 0.2, dev
    assert max(ctrl["kl_after"]) < 0.01
    for name in ("owl (fine-tuned)", "dog (fine-tuned)"):  # the fine-tuned teachers' number softmax differs
        arm = s[f"{experiment.SOFT}: {name}"]
        assert min(arm["kl_before"]) > 0.005
        assert all(after < 0.6 * before for before, after in zip(arm["kl_before"], arm["kl_after"]))  # it fits
    t = smoke_run["transfer"][f"{experiment.SOFT}, fine-tuned"]
    assert t["delta_owl"]["mean"] > 0 and min(t["delta_dog"]["values"]) > 0.02, t
    assert "soft" in smoke_run["summary"]
