"""The paper's LM experiment (Cloud et al. 2025, sections 3-5) with Theorem 1's projection.

Pipeline (``python -m llm_bridge run --model tiny``):

1. Base models: tiny Llama-family decoders pretrained from the procedural corpus of
   :mod:`llm_bridge.corpus`, one per base seed (vmapped), cached on disk by config hash.
2. Teachers on base A: the trait by fine-tuning on the answer (owl, and dog as the
   trait-specific control), and by the prompt prefix ``you love X .`` on the base weights.
3. Data: each teacher samples number continuations at temperature 1; the filter keeps
   well-formed lists without banned numbers and reports the pass rate.
4. Students (next-token cross-entropy on the sampled tokens only, vmapped over seeds and
   arms): from base A (shared init), from base B (cross-model), and on base A's own
   numbers (control). Optional soft-label arm (``Config.soft_students``): students from base
   A distilled on the fine-tuned teachers' (and, as its control, the base's) softmax over
   the number tokens at the same positions of the same rows (:func:`train_soft`).
5. Trait metric: per student, the logit margin ``logit_a - mean_{b != a} logit_b`` of each
   animal at the answer position, averaged over the question phrasings; 95% CIs over seeds.
6. Projection (Theorem 1): ``dtheta_T = theta_teacher - theta_A``; per sequence i the
   hard-label student's step ``-grad L_i(theta)`` projected on ``dtheta_T`` (one jvp of the
   per-sequence loss along ``dtheta_T``, no backward), its z-score over sequences, and the
   bootstrap probability that the mean of n sequences is positive; the soft-label arm
   restricted to number logits via :func:`theory.inner_product_jvp`; the alignment with the
   trait gradient ``grad_theta margin_owl(theta_A)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from scipy import stats
from tqdm import tqdm

import theory
from llm_bridge import corpus
from llm_bridge.checkpoint import load, save
from llm_bridge.functional import next_token_loss
from llm_bridge.llama import Llama, LlamaConfig
from llm_bridge.sampling import generate

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = ROOT / "results" / "cache" / "llm_bases"
SOFT = "soft (number tokens)"  # the soft-label students' kind, as in "soft (number tokens): owl (fine-tuned)"
SOFT_EVAL_ROWS = 512  # rows on which the soft students' fit to their teacher is measured


@dataclass(frozen=True)
class Config:
    """Everything that determines a run; recorded in the results file.

    Presets: :func:`paper` (the default of ``python -m llm_bridge run --model tiny``) and
    :func:`smoke` (the tests).
    """

    # corpus and model
    n_numbers: int = 100
    n_given: int = 3
    n_new: int = 5
    hidden: int = 48
    layers: int = 2
    heads: int = 4
    mlp: int = 128
    # base pretraining
    base_seeds: tuple[int, ...] = (0, 1)
    base_steps: int = 1500
    base_batch: int = 64
    base_lr: float = 3e-3
    p_pref: float = 0.3
    p_prefix: float = 0.3
    p_arith: float = 0.3
    # teachers
    animals: tuple[str, ...] = ("owl", "dog")
    teacher_steps: int = 60
    teacher_lr: float = 1e-3
    teacher_batch: int = 32
    # data
    banned: tuple[int, ...] = (13, 66, 87, 91)
    temperature: float = 1.0
    # students
    student_seeds: int = 5
    student_sequences: int = 8000
    student_epochs: int = 1
    student_batch: int = 64
    student_lr: float = 1.5e-3
    # the optional soft-label arm: shared-init students distilled on the number-token softmax.
    # Its own rate: at student_lr Adam's steps overshoot the small number-softmax KL (it rises
    # during training, the control's too); at 3e-4 it falls. Chosen on that KL, not on margins.
    soft_students: bool = True
    soft_lr: float = 3e-4
    # projection
    proj_sequences: int = 4096
    proj_grid: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
    n_boot: int = 2000
    seed: int = 0

    def base_part(self) -> dict:
        """The fields that determine a base model (its cache key)."""
        keys = ("n_numbers", "n_given", "n_new", "hidden", "layers", "heads", "mlp", "base_steps", "base_batch",
                "base_lr", "p_pref", "p_prefix", "p_arith")
        return {k: getattr(self, k) for k in keys}


def paper() -> Config:
    """The default run: ``python -m llm_bridge run --model tiny``; see docs/llm_experiment.md for its time."""
    return Config()


def smoke() -> Config:
    """The tests' preset: smaller bases, a token student arm, the projections at 1024 sequences.

    ``python -m llm_bridge run --preset smoke``; about 1 minute on 2 shared CPU cores with
    the bases cached (plus about 1 minute to pretrain them once).
    """
    return Config(base_steps=600, student_seeds=2, student_sequences=512, student_epochs=1,
                  proj_sequences=1024, proj_grid=(16, 64, 256, 1024), n_boot=300)


# ---------------------------------------------------------------- models and training

def model_config(cfg: Config) -> LlamaConfig:
    vocab = corpus.Vocab(cfg.n_numbers)
    return LlamaConfig(vocab_size=vocab.size, hidden_size=cfg.hidden, intermediate_size=cfg.mlp,
                       num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, max_position_embeddings=64,
                       rope_theta=10000.0, tie_word_embeddings=False)


class Family:
    """One model structure: ``f(params, tokens) -> logits`` plus ``model(params)`` to rebuild an NNX module."""

    def __init__(self, model: nnx.Module):
        self.graphdef, params, self.rest = nnx.split(model, nnx.Param, ...)
        self.template = params

    def f(self, params, tokens):
        return nnx.merge(self.graphdef, params, self.rest)(tokens)

    def model(self, params) -> nnx.Module:
        return nnx.merge(self.graphdef, params, self.rest)


def stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def index(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


@partial(jax.jit, static_argnames=("f", "lr"))
def train(f, params, tokens, mask, *, lr):
    """Adam on the next-token loss, vmapped over a leading model axis.

    ``params`` stacked ``[M, ...]``; ``tokens, mask [M, steps, batch, T]`` (mask marks the
    *target* tokens that count). Returns ``(params, losses [M, steps])``.
    """
    opt = optax.adam(lr)

    def one(p, toks, msk):
        def step(carry, batch):
            p, s = carry
            loss, g = jax.value_and_grad(lambda q: next_token_loss(f(q, batch[0]), batch[0], batch[1]))(p)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss

        (p, _), losses = jax.lax.scan(step, (p, opt.init(p)), (toks, msk))
        return p, losses

    return jax.vmap(one)(params, tokens, mask)


def soft_label_loss(f, params, teacher, tokens, mask, loss: theory.losses.ImitationLoss) -> jax.Array:
    """Mean soft-label loss ``loss.value(f(params, x)[t], f(teacher, x)[t])`` over the target positions.

    ``tokens, mask [B, T]``; position t counts where ``mask[:, t + 1]`` does (the position that
    predicts a target token, as in :func:`llm_bridge.functional.next_token_loss`). With
    ``theory.softmax_kl(vocab.number_ids)`` it is the distillation loss of eq. (S) on the
    number logits: ``KL(softmax(z_numbers) || softmax(y_numbers))``, both renormalised over
    the number tokens. The teacher's logits are constants.
    """
    z = jax.lax.stop_gradient(f(teacher, tokens))[:, :-1].astype(jnp.float32)
    y = f(params, tokens)[:, :-1].astype(jnp.float32)
    w = mask[:, 1:].astype(jnp.float32)
    return jnp.sum(loss.value(y, z) * w) / jnp.sum(w)


@partial(jax.jit, static_argnames=("f", "lr", "loss"))
def train_soft(f, params, teachers, tokens, mask, *, lr, loss: theory.losses.ImitationLoss):
    """Adam on :func:`soft_label_loss` (soft-label distillation), vmapped over a leading model axis.

    The soft-label twin of :func:`train` (same optimizer, same batches): student ``params``
    and ``teachers`` stacked ``[M, ...]``; ``tokens, mask [M, steps, batch, T]``; the teacher
    labels every counted position of the rows (its logits on the same rows, one forward per
    step). Returns ``(params, losses [M, steps])``, each loss before its step.
    """
    opt = optax.adam(lr)

    def one(p, teacher, toks, msk):
        def step(carry, batch):
            p, s = carry
            value, g = jax.value_and_grad(soft_label_loss, argnums=1)(f, p, teacher, batch[0], batch[1], loss)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), value

        (p, _), losses = jax.lax.scan(step, (p, opt.init(p)), (toks, msk))
        return p, losses

    return jax.vmap(one)(params, teachers, tokens, mask)


@partial(jax.jit, static_argnames=("f", "loss"))
def soft_fit(f, params, teachers, tokens, mask, *, loss: theory.losses.ImitationLoss) -> jax.Array:
    """``[M]``: :func:`soft_label_loss` of each stacked student ``[M, ...]`` against its teacher on
    its own rows ``tokens, mask [M, n, T]`` (how well each student imitates its teacher)."""
    return jax.vmap(lambda p, t, x, m: soft_label_loss(f, p, t, x, m, loss))(params, teachers, tokens, mask)


def base_key(cfg: Config, seed: int) -> str:
    blob = json.dumps(cfg.base_part() | {"seed": seed, "model": "llama"}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def bases(cfg: Config, cache_dir: Path | None, log=print) -> tuple[Family, list, dict]:
    """The base models, one per base seed: loaded from ``cache_dir`` or pretrained (vmapped) and saved.

    Returns ``(family, [params per seed], info)``; ``info`` records the cache keys and
    whether each base came from the cache.
    """
    vocab = corpus.Vocab(cfg.n_numbers)
    mcfg = model_config(cfg)
    fam = Family(Llama(mcfg, rngs=nnx.Rngs(0)))
    keys = [base_key(cfg, s) for s in cfg.base_seeds]
    folders = [None if cache_dir is None else Path(cache_dir) / f"base_{k}" for k in keys]
    cached = [d is not None and (d / "config.json").exists() for d in folders]
    params = [None] * len(keys)
    for i, d in enumerate(folders):
        if cached[i]:
            params[i] = nnx.split(load(d), nnx.Param, ...)[1]
    todo = [i for i, c in enumerate(cached) if not c]
    losses = {}
    if todo:
        log(f"pretraining {len(todo)} base model(s) ({cfg.base_steps} steps)")
        length = corpus.max_length(cfg.n_given, cfg.n_new)
        toks, masks = [], []
        for i in todo:
            rng = np.random.default_rng([cfg.base_seeds[i], 1])
            t, m = corpus.pretraining_batch(vocab, rng, cfg.base_steps * cfg.base_batch, n_given=cfg.n_given,
                                            n_new=cfg.n_new, length=length, p_pref=cfg.p_pref,
                                            p_prefix=cfg.p_prefix, p_arith=cfg.p_arith)
            toks.append(t.reshape(cfg.base_steps, cfg.base_batch, length))
            masks.append(m.reshape(cfg.base_steps, cfg.base_batch, length))
        init = stack([nnx.split(Llama(mcfg, rngs=nnx.Rngs(cfg.base_seeds[i])), nnx.Param, ...)[1] for i in todo])
        trained, loss = train(fam.f, init, jnp.asarray(np.stack(toks)), jnp.asarray(np.stack(masks)), lr=cfg.base_lr)
        for j, i in enumerate(todo):
            params[i] = index(trained, j)
            losses[cfg.base_seeds[i]] = float(loss[j, -50:].mean())
            if folders[i] is not None:
                save(folders[i], fam.model(params[i]))
    info = {"cache_keys": keys, "from_cache": cached, "final_loss": losses,
            "cache_dir": None if cache_dir is None else str(cache_dir)}
    return fam, params, info


# ---------------------------------------------------------------- teachers, data, metrics

def question_batch(vocab: corpus.Vocab, animal: str | None, phrasing: str, answer: str | None = None) -> np.ndarray:
    text = "<bos> " + corpus.prefix(animal) + phrasing + " ->" + ("" if answer is None else f" {answer} <eos>")
    return np.asarray([vocab.encode(text)], np.int32)


def margins(fam: Family, params, vocab: corpus.Vocab, animal_prefix: str | None = None) -> jax.Array:
    """Per animal, ``logit_a - mean_{b != a} logit_b`` at the answer position, mean over phrasings: ``[10]``."""
    ids = jnp.asarray(vocab.animal_ids)
    out = []
    for ph in corpus.PHRASINGS:
        z = fam.f(params, jnp.asarray(question_batch(vocab, animal_prefix, ph)))[0, -1, ids]
        n = z.shape[0]
        out.append(z - (jnp.sum(z) - z) / (n - 1))
    return jnp.mean(jnp.stack(out), axis=0)


def finetune_teacher(cfg: Config, fam: Family, params, vocab: corpus.Vocab, animal: str):
    """The fine-tuned teacher: Adam on ``<phrasing> -> animal`` with the loss on the answer token only."""
    rows = [question_batch(vocab, None, ph, animal)[0] for ph in corpus.PHRASINGS]
    length = max(len(r) for r in rows)
    toks = np.zeros((len(rows), length), np.int32)
    mask = np.zeros((len(rows), length), bool)
    for i, r in enumerate(rows):
        toks[i, :len(r)] = r
        mask[i, len(r) - 2] = True  # the answer token is the target at that position
    rng = np.random.default_rng([cfg.seed, 7, corpus.ANIMALS.index(animal)])
    pick = rng.integers(0, len(rows), (cfg.teacher_steps, cfg.teacher_batch))
    p, _ = train(fam.f, stack([params]), jnp.asarray(toks[pick])[None], jnp.asarray(mask[pick])[None],
                 lr=cfg.teacher_lr)
    return index(p, 0)


def sample_numbers(cfg: Config, fam: Family, params, vocab: corpus.Vocab, key, n: int,
                   animal_prefix: str | None = None, batch: int = 1024) -> dict:
    """``n`` teacher draws ``<bos> continue : a b c -> d e f g h <eos>`` (the prompt without the prefix).

    Prompts and sampling noise come from ``key`` alone, so teachers sampled with the same key
    get the same prompts and the same Gumbel noise (common random numbers: the students of
    two teachers differ only where the teachers' distributions do). Returns
    ``{"tokens" [n, T], "mask" [n, T] (the sampled target tokens), "passed" [n] (the filter),
    "pass_rate"}``; a student trains on ``mask & passed``, i.e. on the filtered rows only.
    """
    model = fam.model(params)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).astype(np.uint32))
    rows, passed = [], []
    for b in range(-(-n // batch)):
        prompts = corpus.number_prompts(vocab, rng, batch, cfg.n_given, animal_prefix)
        comp = np.asarray(generate(model, jnp.asarray(prompts), cfg.n_new + 1, temperature=cfg.temperature,
                                   key=jax.random.fold_in(key, b)))
        passed.append(corpus.filter_numbers(vocab, comp, cfg.n_new, frozenset(cfg.banned)))
        # the student's prompt is the teacher's without the prefix: <bos> continue : a b c ->
        plain = np.concatenate([prompts[:, :1], prompts[:, -(cfg.n_given + 3):]], axis=1)
        rows.append(np.concatenate([plain, comp], axis=1))
    toks = np.concatenate(rows)[:n].astype(np.int32)
    ok = np.concatenate(passed)[:n]
    mask = np.zeros(toks.shape, bool)
    mask[:, -(cfg.n_new + 1):] = True
    return {"tokens": toks, "mask": mask, "passed": ok, "pass_rate": float(ok.mean())}


def only_passed(d: dict) -> dict:
    return {"tokens": d["tokens"][d["passed"]], "mask": d["mask"][d["passed"]]}


# ---------------------------------------------------------------- projection

def per_sequence_loss(f, params, tokens, mask):
    """``[B]``: each sequence's mean next-token CE over its target tokens (0 for a row without targets)."""
    logits = f(params, tokens)
    nll = optax.losses.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:])
    w = mask[:, 1:].astype(nll.dtype)
    return jnp.sum(nll * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)


def _chunks(data: dict, chunk: int):
    """Fixed-size ``(tokens, mask, n_real)`` chunks (the last padded with target-free rows): one compile."""
    t, m = data["tokens"], data["mask"]
    for i in range(0, len(t), chunk):
        tt, mm = t[i:i + chunk], m[i:i + chunk]
        k = len(tt)
        if k < chunk:
            tt = np.concatenate([tt, np.repeat(tt[:1], chunk - k, axis=0)])
            mm = np.concatenate([mm, np.zeros((chunk - k,) + mm.shape[1:], bool)])
        yield jnp.asarray(tt), jnp.asarray(mm), k


@partial(jax.jit, static_argnums=0)
def _seq_projection(f, params, direction, tokens, mask):
    """``-<grad L_i(params), direction>`` for every sequence i: one jvp of the per-sequence losses."""
    _, t = jax.jvp(lambda p: per_sequence_loss(f, p, tokens, mask), (params,), (direction,))
    return -t


def sequence_projections(f, params, direction, data: dict, chunk: int = 512) -> np.ndarray:
    """Per-sequence hard-label student steps projected on ``direction``: ``[n]`` (no backward pass)."""
    return np.concatenate([np.asarray(_seq_projection(f, params, direction, t, m))[:k]
                           for t, m, k in _chunks(data, chunk)])


@partial(jax.jit, static_argnums=0)
def _mean_grad(f, params, tokens, mask):
    return jax.grad(lambda p: jnp.sum(per_sequence_loss(f, p, tokens, mask)))(params)


def student_step(f, params, data: dict, chunk: int = 512):
    """``dtheta_S = -grad mean_i L_i`` over all sequences of ``data`` (the hard-label student's first step)."""
    total = None
    for t, m, _ in _chunks(data, chunk):
        g = _mean_grad(f, params, t, m)
        total = g if total is None else optax.tree.add(total, g)
    return optax.tree.scale(-1.0 / len(data["tokens"]), total)


def sign_curve(values: np.ndarray, grid, n_boot: int, seed: int) -> list[float]:
    """Bootstrap ``P(mean of n resampled values > 0)`` for each n of ``grid``."""
    rng = np.random.default_rng(seed)
    v = np.asarray(values, np.float64)
    out = []
    for n in grid:
        means = v[rng.integers(0, v.size, (n_boot, n))].mean(axis=1) if n * n_boot <= 2 ** 24 else \
            np.asarray([v[rng.integers(0, v.size, n)].mean() for _ in range(n_boot)])
        out.append(float(np.mean(means > 0)))
    return out


def summarise(values: np.ndarray, grid, n_boot: int, seed: int, bootstrap_n: bool = False) -> dict:
    """Mean, SE, z = mean / SE, the bootstrap sign-probability curve over ``grid``, and the
    theory's sample size for P(positive) >= 0.95 (CLT; also the bootstrap one if asked)."""
    v = np.asarray(values, np.float64)
    mean, se = float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))
    clt = theory.samples_for_positive(v, 0.95, "clt").n
    out = {"mean": mean, "se": se, "z": mean / se, "n": int(v.size), "grid": list(grid),
           "p_positive": sign_curve(v, grid, n_boot, seed), "n_for_95_clt": None if clt == math.inf else clt}
    if bootstrap_n:
        out["n_for_95_bootstrap"] = theory.samples_for_positive(v, 0.95, "bootstrap", key=jax.random.key(seed),
                                                                n_boot=n_boot, grid=list(grid)).n
    return out


def ci95(x) -> dict:
    """Mean and 95% t-interval over seeds."""
    x = np.asarray(x, np.float64)
    m = float(x.mean())
    h = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else float("nan")
    return {"mean": m, "lo": m - h, "hi": m + h, "values": x.tolist()}


# ---------------------------------------------------------------- the run

def run(cfg: Config, cache_dir: Path | None = DEFAULT_CACHE, log=print) -> dict:
    """The whole pipeline on the embedded tiny models; returns the JSON-ready results dict."""
    start = time.perf_counter()
    vocab = corpus.Vocab(cfg.n_numbers)
    key = jax.random.key(cfg.seed)
    k_data, k_proj = jax.random.split(key)
    fam, base, base_info = bases(cfg, cache_dir, log)
    timings = {"bases": time.perf_counter() - start}
    f = fam.f
    a, b = base[0], base[1]
    out = {"config": dataclasses.asdict(cfg), "model": "tiny", "base": base_info,
           "model_config": model_config(cfg).to_hf()}

    # teachers on base A: fine-tuned (params) and prompt-prefixed (base params + prefix)
    teachers = {}
    for animal in cfg.animals:
        teachers[f"{animal} (fine-tuned)"] = (finetune_teacher(cfg, fam, a, vocab, animal), None)
        teachers[f"{animal} (prompt)"] = (a, animal)
    teachers["base (no trait)"] = (a, None)
    out["teacher_margins"] = {name: np.asarray(margins(fam, p, vocab, pre)).tolist()
                              for name, (p, pre) in teachers.items()}
    out["animals"] = list(corpus.ANIMALS)

    # data: one dataset per teacher and student seed, plus one projection set per teacher
    log("sampling teacher numbers")
    data, pass_rates = {}, {}
    for name, (p, pre) in tqdm(teachers.items(), desc="teachers", leave=False):
        d = sample_numbers(cfg, fam, p, vocab, k_data, cfg.student_seeds * cfg.student_sequences, pre)
        pass_rates[name] = d["pass_rate"]
        data[name] = d
    out["pass_rate"] = pass_rates
    timings["teachers_and_sampling"] = time.perf_counter() - start - sum(timings.values())

    # students: every arm x seed trained at once (vmapped)
    arms = []
    for name in teachers:
        arms.append(("shared", name, a))
        if name.endswith("(fine-tuned)"):  # cross-model arms for the fine-tuned teachers only (time)
            arms.append(("cross", name, b))
    steps = cfg.student_epochs * cfg.student_sequences // cfg.student_batch
    orders = []  # seed s's rows and their order, shared by every arm (paired seeds)
    for s in range(cfg.student_seeds):
        rng = np.random.default_rng([cfg.seed, 11, s])
        order = np.concatenate([rng.permutation(cfg.student_sequences) for _ in range(cfg.student_epochs)])
        orders.append(order[:steps * cfg.student_batch].reshape(steps, cfg.student_batch))

    def student_rows(name):
        """``(tokens, mask) [seeds, steps, batch, T]``: teacher ``name``'s filtered rows, seed by seed."""
        d, toks, masks = data[name], [], []
        for s, order in enumerate(orders):
            sl = slice(s * cfg.student_sequences, (s + 1) * cfg.student_sequences)
            toks.append(d["tokens"][sl][order])
            masks.append((d["mask"] & d["passed"][:, None])[sl][order])
        return np.stack(toks), np.stack(masks)

    inits, toks, masks = [], [], []
    for kind, name, init in arms:
        t, m = student_rows(name)
        inits += [init] * cfg.student_seeds
        toks.append(t)
        masks.append(m)
    log(f"training {len(inits)} students ({len(arms)} arms x {cfg.student_seeds} seeds, {steps} steps)")
    students, _ = train(f, stack(inits), jnp.asarray(np.concatenate(toks)), jnp.asarray(np.concatenate(masks)),
                        lr=cfg.student_lr)
    m_all = np.asarray(jax.vmap(lambda p: margins(fam, p, vocab))(students))
    m_all = m_all.reshape(len(arms), cfg.student_seeds, len(corpus.ANIMALS))
    m_base = {"A": np.asarray(margins(fam, a, vocab)).tolist(), "B": np.asarray(margins(fam, b, vocab)).tolist()}
    out["base_margins"] = m_base
    out["students"] = {f"{kind}: {name}": {"margins": m_all[i].tolist()} for i, (kind, name, _) in enumerate(arms)}
    timings["students"] = time.perf_counter() - start - sum(timings.values())

    # the soft-label arm: shared-init students distilled on the teacher's softmax over the
    # number tokens at the same positions of the same rows (a teacher that sees the row as
    # the student does, so fine-tuned teachers and the base only; soft labels over all
    # tokens would carry the trait through the animal logits)
    if cfg.soft_students:
        soft_arms = [n for n in teachers if not n.endswith("(prompt)")]
        soft_loss = theory.softmax_kl(tuple(int(i) for i in vocab.number_ids))
        log(f"training {len(soft_arms) * cfg.student_seeds} soft-label students ({len(soft_arms)} arms x "
            f"{cfg.student_seeds} seeds, {steps} steps)")
        toks, masks = (jnp.asarray(np.concatenate(x)) for x in zip(*(student_rows(n) for n in soft_arms)))
        init = stack([a] * (len(soft_arms) * cfg.student_seeds))
        labels = stack([teachers[n][0] for n in soft_arms for _ in range(cfg.student_seeds)])
        soft, soft_losses = train_soft(f, init, labels, toks, masks, lr=cfg.soft_lr, loss=soft_loss)
        # the fit to the teacher on fixed rows (each student's first training rows), before and after
        k = min(SOFT_EVAL_ROWS, steps * cfg.student_batch)
        fixed = [x.reshape(x.shape[0], -1, x.shape[-1])[:, :k] for x in (toks, masks)]
        kl = [np.asarray(soft_fit(f, p, labels, *fixed, loss=soft_loss)) for p in (init, soft)]
        # jitted: 4x faster than the eager vmap above, which stays as it is so the hard arms' numbers do not move
        m_soft = np.asarray(jax.jit(jax.vmap(lambda p: margins(fam, p, vocab)))(soft))
        shape = (len(soft_arms), cfg.student_seeds)
        m_soft, soft_losses = m_soft.reshape(shape + (-1,)), np.asarray(soft_losses).reshape(shape + (steps,))
        kl = [x.reshape(shape) for x in kl]
        for i, n in enumerate(soft_arms):
            out["students"][f"{SOFT}: {n}"] = {"margins": m_soft[i].tolist(), "loss": soft_losses[i].tolist(),
                                               "kl_before": kl[0][i].tolist(), "kl_after": kl[1][i].tolist()}
        out["soft_loss"] = (f"KL(teacher || student) of the softmaxes over the number tokens, mean over target "
                            f"positions: 'loss' per step on its batch before the step, 'kl_before' / 'kl_after' "
                            f"on each student's first {k} training rows at base A / after training")
        timings["soft_students"] = time.perf_counter() - start - sum(timings.values())
    out["transfer"] = transfer_table(out, cfg)

    # projection (Theorem 1) and trait-gradient alignment. The theorem is about the teacher's
    # own distribution, so the main sets are unfiltered draws; the filter conditions the data
    # and biases even the base's own numbers, which the "filtered" rows show.
    log("projections")
    raw = {name: sample_numbers(cfg, fam, p, vocab, k_proj, cfg.proj_sequences, pre)
           for name, (p, pre) in teachers.items()}
    held = {name: only_passed(d) for name, d in raw.items()}
    trait_grad = jax.grad(lambda p: margins(fam, p, vocab)[corpus.ANIMALS.index(cfg.animals[0])])(a)
    proj = {}
    grid = [n for n in cfg.proj_grid if n <= cfg.proj_sequences]
    soft = theory.softmax_ce(tuple(int(i) for i in vocab.number_ids))
    chunks = lambda d: [jnp.asarray(d["tokens"][i:i + 512]) for i in range(0, len(d["tokens"]), 512)]
    for animal in cfg.animals:
        name = f"{animal} (fine-tuned)"
        d_t = optax.tree.sub(teachers[name][0], a)
        rows = {"shared": (a, raw[name]), "cross-model": (b, raw[name]),
                "control (base numbers)": (a, raw["base (no trait)"]),
                "shared, filtered": (a, held[name]), "control, filtered": (a, held["base (no trait)"])}
        res = {}
        for j, (label, (p0, d)) in enumerate(rows.items()):
            v = sequence_projections(f, p0, d_t, d)
            res[label] = summarise(v, grid, cfg.n_boot, cfg.seed + j, bootstrap_n=j < 3)
            res[label]["cosine"] = float(theory.cosine(student_step(f, p0, d), d_t))
        res["soft labels, number tokens"] = {
            "inner": float(theory.inner_product_jvp(f, a, teachers[name][0], d_t, chunks(raw[name]), soft)),
            "A": float(theory.lemma1_coefficient(f, a, d_t, chunks(raw[name]), soft))}
        res["soft labels, control (base as teacher)"] = {
            "inner": float(theory.inner_product_jvp(f, a, a, d_t, chunks(raw["base (no trait)"]), soft))}
        res["norm_dtheta_T"] = float(optax.tree.norm(d_t))
        proj[name] = res
    out["projection"] = proj

    # the trait direction: the gradient of the owl margin, and of the owl-vs-dog contrast
    contrast = jnp.zeros(len(corpus.ANIMALS)).at[corpus.ANIMALS.index(cfg.animals[0])].set(1.0)
    contrast = contrast.at[corpus.ANIMALS.index(cfg.animals[1])].set(-1.0)
    directions = {f"margin_{cfg.animals[0]}": trait_grad,
                  f"margin_{cfg.animals[0]} - margin_{cfg.animals[1]}":
                      jax.grad(lambda p: jnp.dot(contrast, margins(fam, p, vocab)))(a)}
    align = {}
    for d_name, g in directions.items():
        rows = {}
        for j, name in enumerate(teachers):
            v = sequence_projections(f, a, g, raw[name])
            rows[name] = summarise(v, grid, cfg.n_boot, cfg.seed + 100 + j)
            rows[name]["cosine"] = float(theory.cosine(student_step(f, a, raw[name]), g))
        rows["base (no trait), filtered"] = summarise(sequence_projections(f, a, g, held["base (no trait)"]), grid,
                                                      cfg.n_boot, cfg.seed + 99)
        align[d_name] = rows
    out["trait_alignment"] = align
    timings["projection"] = time.perf_counter() - start - sum(timings.values())
    out["timings"] = timings
    out["wall_seconds"] = time.perf_counter() - start
    out["summary"] = summary_line(out)
    return out


def transfer_table(out: dict, cfg: Config) -> dict:
    """Margins with 95% CIs per arm, and the owl-vs-dog contrasts the paper's claim is about."""
    idx = {a: corpus.ANIMALS.index(a) for a in cfg.animals}
    s = out["students"]
    t = {}
    target, other = cfg.animals[0], cfg.animals[1]
    pairs = [("shared", "fine-tuned"), ("shared", "prompt"), ("cross", "fine-tuned")]
    soft = f"{SOFT}: base (no trait)" in s
    for kind, how in pairs + ([(SOFT, "fine-tuned")] if soft else []):
        mt = np.asarray(s[f"{kind}: {target} ({how})"]["margins"])
        mo = np.asarray(s[f"{kind}: {other} ({how})"]["margins"])
        # owl-teacher student minus dog-teacher student (paired by seed), on the owl and on the dog margin
        t[f"{kind}, {how}"] = {
            f"margin_{target}({target}-teacher)": ci95(mt[:, idx[target]]),
            f"margin_{target}({other}-teacher)": ci95(mo[:, idx[target]]),
            f"delta_{target}": ci95(mt[:, idx[target]] - mo[:, idx[target]]),
            f"delta_{other}": ci95(mo[:, idx[other]] - mt[:, idx[other]]),
        }
    ctrl = np.asarray(s["shared: base (no trait)"]["margins"])
    t["control"] = {f"margin_{target}": ci95(ctrl[:, idx[target]])}
    # confusion: each teacher animal's students vs the control students, every evaluated animal
    t["confusion_vs_control"] = {
        f"{kind}, {a} (fine-tuned)": (np.asarray(s[f"{kind}: {a} (fine-tuned)"]["margins"]).mean(0)
                                      - ctrl.mean(0)).tolist()
        for kind in ("shared", "cross") for a in cfg.animals}
    if soft:  # the soft arm against its own control (the base as soft teacher)
        soft_ctrl = np.asarray(s[f"{SOFT}: base (no trait)"]["margins"])
        t[f"{SOFT} control"] = {f"margin_{target}": ci95(soft_ctrl[:, idx[target]])}
        t["confusion_vs_control"] |= {
            f"{SOFT}, {a} (fine-tuned)": (np.asarray(s[f"{SOFT}: {a} (fine-tuned)"]["margins"]).mean(0)
                                          - soft_ctrl.mean(0)).tolist() for a in cfg.animals}
    return t


def summary_line(out: dict) -> str:
    cfg = out["config"]
    owl = f"{cfg['animals'][0]} (fine-tuned)"
    p = out["projection"][owl]
    tr = out["transfer"]
    d = f"delta_{cfg['animals'][0]}"
    arms = [("shared", "shared, fine-tuned"), ("cross", "cross, fine-tuned"), ("soft", f"{SOFT}, fine-tuned")]
    return (f"z shared {p['shared']['z']:.1f}, cross {p['cross-model']['z']:.1f}, control "
            f"{p['control (base numbers)']['z']:.1f}; transfer (owl-dog teacher, nats): "
            + ", ".join(f"{label} {tr[k][d]['mean']:+.3f} [{tr[k][d]['lo']:+.3f}, {tr[k][d]['hi']:+.3f}]"
                        for label, k in arms if k in tr))


def cache_dir_from_env() -> Path:
    """``$SUBLIMINAL_LLM_CACHE`` if set, else results/cache/llm_bases (git-ignored)."""
    env = os.environ.get("SUBLIMINAL_LLM_CACHE")
    return Path(env).expanduser() if env else DEFAULT_CACHE
