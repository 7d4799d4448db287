"""The paper's LM experiment (Cloud et al. 2025, sections 3-5) on tiny LMs, over several pretrained bases.

Pipeline (``python -m llm_bridge run --model tiny``), one named step each:

1. :func:`bases`: tiny Llama-family decoders pretrained from the procedural corpus of
   :mod:`llm_bridge.corpus`, one per base seed (``Config.base_seeds``, five by default), each
   trained alone (so a base's weights do not depend on which other bases a run asks for),
   cached on disk by config hash and :data:`CACHE_VERSION`, written atomically.
2. :func:`teachers`: on every base, the trait by fine-tuning on the answer (owl, and dog as
   the trait-specific control), and by the prompt prefix ``you love X .`` on the base weights.
3. :func:`sample_numbers`: each teacher samples number continuations at temperature 1; the
   filter keeps well-formed lists without banned numbers and reports the pass rate.
4. :func:`train_students`: next-token cross-entropy on the sampled tokens only, every arm of
   every base vmapped at once: from the teacher's base (shared init), from the next base
   (cross-model), and on the base's own numbers (control); the soft-label arm (students from
   the teacher's base distilled on its softmax over the number tokens, and the base as its
   own soft teacher as control).
5. Trait metric (:func:`margins`): per student, ``logit_a - mean_{b != a} logit_b`` of each
   animal at the answer position, mean over the question phrasings. The transfer
   ``delta_owl`` (owl-teacher student minus dog-teacher student, paired by seed) is averaged
   over each base's students, and reported with a 95% t-interval over *bases*
   (:func:`theory.stats.nested_mean_ci`): students are nested within bases.
6. :func:`projections` (Theorem 1): ``dtheta_T = theta_teacher - theta_base``; per sequence i
   the hard-label student's step projected on ``dtheta_T`` (:mod:`llm_bridge.projection`),
   its z-score, the bootstrap sign curve; the soft-label version via
   :func:`theory.inner_product_jvp`; the alignment with the trait gradient.

Everything is a deterministic function of the config: a run from an empty cache gives the
same results file, byte for byte apart from timings and provenance (a slow test checks it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

import theory
from llm_bridge import arms, corpus
from llm_bridge.arms import BASE_TEACHER, CROSS, SHARED, SOFT, finetuned, prompted
from llm_bridge.checkpoint import load, save
from llm_bridge.llama import Llama, LlamaConfig
from llm_bridge.projection import sequence_projections, student_step, summarise
from llm_bridge.sampling import generate
from llm_bridge.training import Family, index, soft_fit, stack, train, train_soft
from harness.results import atomic_dir, shown
from theory.stats import mean_ci, nested_mean_ci

# Bump when a change to the corpus, the model or the pretraining loop changes what a cached
# base holds: the cache key includes it, so stale bases are never read. Version 1 was the
# unversioned cache of the two-base experiment (see docs/llm_experiment.md, "Reproducibility").
CACHE_VERSION = 2
DEFAULT_CACHE = Path("results") / "cache" / "llm_bases"
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
    # base pretraining: one base per seed; base i's cross-model students start from base i + 1
    base_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
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
    # students (per base)
    student_seeds: int = 2
    student_sequences: int = 8000
    student_epochs: int = 1
    student_batch: int = 64
    student_lr: float = 1.5e-3
    # the soft-label arm: shared-init students distilled on the number-token softmax.
    # Its own rate: at student_lr Adam's steps overshoot the small number-softmax KL (it rises
    # during training, the control's too); at 3e-4 it falls. Chosen on that KL, not on margins.
    soft_students: bool = True
    soft_lr: float = 3e-4
    # projection (per base)
    proj_sequences: int = 1024
    proj_grid: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024)
    n_boot: int = 2000
    seed: int = 0

    def __post_init__(self):
        if len(self.base_seeds) < 2 or len(set(self.base_seeds)) != len(self.base_seeds):
            raise ValueError(f"base_seeds must be at least two distinct seeds, got {self.base_seeds}")
        for name in ("student_seeds", "student_sequences", "student_epochs", "student_batch", "base_steps",
                     "base_batch", "teacher_steps", "teacher_batch", "proj_sequences", "n_boot"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.student_seeds < 2:
            raise ValueError(f"student_seeds must be >= 2 (a CI needs two), got {self.student_seeds}")
        if self.student_sequences < self.student_batch:
            raise ValueError(f"student_sequences ({self.student_sequences}) < student_batch ({self.student_batch})")
        if len(self.animals) != 2 or not set(self.animals) <= set(corpus.ANIMALS):
            raise ValueError(f"animals must be two of {corpus.ANIMALS}, got {self.animals}")

    def base_part(self) -> dict:
        """The fields that determine a base model (its cache key, with the seed and :data:`CACHE_VERSION`)."""
        keys = ("n_numbers", "n_given", "n_new", "hidden", "layers", "heads", "mlp", "base_steps", "base_batch",
                "base_lr", "p_pref", "p_prefix", "p_arith")
        return {k: getattr(self, k) for k in keys}


def paper() -> Config:
    """The default run: ``python -m llm_bridge run --model tiny``; 5 bases x 2 student seeds per arm.

    Sizes chosen for a <= 10-minute run on 2 CPU cores (docs/llm_experiment.md has the
    measured phase times): the students' data, steps and rates are those of the two-base
    experiment; what shrank is the number of student seeds per base (2: the CI is now over
    bases) and the projection rows per base (1024: the two-base run had z ~ 15 at 4096).
    """
    return Config()


def smoke() -> Config:
    """The tests' preset: three short-trained bases, two student seeds, small data.

    ``python -m llm_bridge run --preset smoke``; about 2 minutes on 2 CPU cores from an
    empty cache.
    """
    return Config(base_seeds=(0, 1, 2), base_steps=600, student_seeds=2, student_sequences=512,
                  proj_sequences=512, proj_grid=(16, 64, 256, 512), n_boot=300)


# ---------------------------------------------------------------- bases

def model_config(cfg: Config) -> LlamaConfig:
    vocab = corpus.Vocab(cfg.n_numbers)
    return LlamaConfig(vocab_size=vocab.size, hidden_size=cfg.hidden, intermediate_size=cfg.mlp,
                       num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, max_position_embeddings=64,
                       rope_theta=10000.0, tie_word_embeddings=False)


def base_key(cfg: Config, seed: int) -> str:
    blob = json.dumps(cfg.base_part() | {"seed": seed, "model": "llama", "cache_version": CACHE_VERSION},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_base(folder: Path):
    """A cached base's params and final loss, or ``None`` (a warning) if the entry is broken."""
    try:
        params = nnx.split(load(folder), nnx.Param, ...)[1]
        loss = json.loads((folder / "pretraining.json").read_text())["final_loss"]
        return params, float(loss)
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"warning: broken cached base {shown(folder)} ({type(err).__name__}: {err}); pretraining it again",
              file=sys.stderr)
        return None


def pretrain(cfg: Config, fam: Family, seed: int):
    """One base, alone: Adam on the procedural corpus (rows from ``rng([seed, 1])``, init from ``Rngs(seed)``).

    Returns ``(params, final_loss)`` (mean loss of the last 50 steps).
    """
    vocab = corpus.Vocab(cfg.n_numbers)
    length = corpus.max_length(cfg.n_given, cfg.n_new)
    rng = np.random.default_rng([seed, 1])
    t, m = corpus.pretraining_batch(vocab, rng, cfg.base_steps * cfg.base_batch, n_given=cfg.n_given,
                                    n_new=cfg.n_new, length=length, p_pref=cfg.p_pref,
                                    p_prefix=cfg.p_prefix, p_arith=cfg.p_arith)
    init = stack([nnx.split(Llama(model_config(cfg), rngs=nnx.Rngs(seed)), nnx.Param, ...)[1]])
    shape = (1, cfg.base_steps, cfg.base_batch, length)
    trained, loss = train(fam.f, init, jnp.asarray(t.reshape(shape)), jnp.asarray(m.reshape(shape)), lr=cfg.base_lr)
    return index(trained, 0), float(loss[0, -50:].mean())


def bases(cfg: Config, cache_dir: Path | None, log=print) -> tuple[Family, list, dict]:
    """The base models, one per base seed: read from ``cache_dir`` or pretrained and saved there.

    Returns ``(family, [params per seed], info)``; ``info`` records the cache keys, whether each
    base came from the cache, and each base's final pretraining loss.
    """
    fam = Family(Llama(model_config(cfg), rngs=nnx.Rngs(0)))
    keys = [base_key(cfg, s) for s in cfg.base_seeds]
    params, losses, cached = [], [], []
    for seed, key in zip(tqdm(cfg.base_seeds, desc="bases", leave=False), keys):
        folder = None if cache_dir is None else Path(cache_dir) / f"base_{key}"
        hit = _read_base(folder) if folder is not None and folder.exists() else None
        cached.append(hit is not None)
        if hit is None:
            log(f"pretraining base {seed} ({cfg.base_steps} steps)")
            hit = pretrain(cfg, fam, seed)
            if folder is not None:
                with atomic_dir(folder) as tmp:
                    save(tmp, fam.model(hit[0]))
                    (tmp / "pretraining.json").write_text(json.dumps({"final_loss": hit[1], "seed": seed}))
        params.append(hit[0])
        losses.append(hit[1])
    info = {"seeds": list(cfg.base_seeds), "cache_keys": keys, "cache_version": CACHE_VERSION,
            "final_loss": losses, "from_cache": cached, "cache_dir": shown(cache_dir)}
    return fam, params, info


# ---------------------------------------------------------------- teachers, data, metrics

def question_batch(vocab: corpus.Vocab, animal: str | None, phrasing: str, answer: str | None = None) -> np.ndarray:
    text = "<bos> " + corpus.prefix(animal) + phrasing + " ->" + ("" if answer is None else f" {answer} <eos>")
    return np.asarray([vocab.encode(text)], np.int32)


@partial(jax.jit, static_argnums=(0, 2, 3))
def margins(fam: Family, params, vocab: corpus.Vocab, animal_prefix: str | None = None) -> jax.Array:
    """Per animal, ``logit_a - mean_{b != a} logit_b`` at the answer position, mean over phrasings: ``[10]``.

    Jitted (one program, not one compile per primitive as eager differentiation would do)."""
    ids = jnp.asarray(vocab.animal_ids)
    out = []
    for ph in corpus.PHRASINGS:
        z = fam.f(params, jnp.asarray(question_batch(vocab, animal_prefix, ph)))[0, -1, ids]
        n = z.shape[0]
        out.append(z - (jnp.sum(z) - z) / (n - 1))
    return jnp.mean(jnp.stack(out), axis=0)


@partial(jax.jit, static_argnums=(0, 2))
def margin_gradient(fam: Family, params, vocab: corpus.Vocab, weights: jax.Array):
    """``grad_params (weights . margins(params))``: a trait direction (``weights [10]`` over the animals)."""
    return jax.grad(lambda p: jnp.dot(weights, margins(fam, p, vocab)))(params)


def finetune_teachers(cfg: Config, fam: Family, base_params: list, vocab: corpus.Vocab) -> list[dict]:
    """Per base, ``{animal: params}``: Adam on ``<phrasing> -> animal`` with the loss on the answer token only.

    All bases x animals in one vmapped run; the batches of animal a are the same on every base.
    """
    full = {a: [question_batch(vocab, None, ph, a)[0] for ph in corpus.PHRASINGS] for a in cfg.animals}
    length = max(len(r) for rows in full.values() for r in rows)
    batches = {}  # per animal, the same batches on every base
    for animal, rows in full.items():
        t = np.zeros((len(rows), length), np.int32)
        m = np.zeros((len(rows), length), bool)
        for i, r in enumerate(rows):
            t[i, :len(r)] = r
            m[i, len(r) - 2] = True  # the answer token is the target at that position
        pick = np.random.default_rng([cfg.seed, 7, corpus.ANIMALS.index(animal)]).integers(
            0, len(rows), (cfg.teacher_steps, cfg.teacher_batch))
        batches[animal] = (t[pick], m[pick])
    toks = [batches[a][0] for _ in base_params for a in cfg.animals]
    masks = [batches[a][1] for _ in base_params for a in cfg.animals]
    inits = [p for p in base_params for _ in cfg.animals]
    trained, _ = train(fam.f, stack(inits), jnp.asarray(np.stack(toks)), jnp.asarray(np.stack(masks)),
                       lr=cfg.teacher_lr)
    n = len(cfg.animals)
    return [{a: index(trained, b * n + j) for j, a in enumerate(cfg.animals)} for b in range(len(base_params))]


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


def teacher_table(cfg: Config, base: list, tuned: list[dict]) -> list[dict]:
    """Per base, ``{teacher name: (params, prompt prefix or None)}``: fine-tuned, prompted, and the base itself."""
    out = []
    for a, ft in zip(base, tuned):
        t = {}
        for animal in cfg.animals:
            t[finetuned(animal)] = (ft[animal], None)
            t[prompted(animal)] = (a, animal)
        t[BASE_TEACHER] = (a, None)
        out.append(t)
    return out


# ---------------------------------------------------------------- students

def student_arms(cfg: Config, teachers: dict) -> list[tuple[str, str]]:
    """``(kind, teacher)`` of every hard-label arm of one base: shared on every teacher, cross-model
    on the fine-tuned teachers (the pairs the paper's claim is about; time)."""
    out = []
    for name in teachers:
        out.append((SHARED, name))
        if name.endswith("(fine-tuned)"):
            out.append((CROSS, name))
    return out


def row_orders(cfg: Config, base_seed: int) -> list[np.ndarray]:
    """Per student seed, the rows of its slice and their order ``[steps, batch]``, shared by every arm
    of the base (paired seeds)."""
    steps = cfg.student_epochs * cfg.student_sequences // cfg.student_batch
    orders = []
    for s in range(cfg.student_seeds):
        rng = np.random.default_rng([cfg.seed, 11, base_seed, s])
        order = np.concatenate([rng.permutation(cfg.student_sequences) for _ in range(cfg.student_epochs)])
        orders.append(order[:steps * cfg.student_batch].reshape(steps, cfg.student_batch))
    return orders


def student_rows(cfg: Config, d: dict, orders: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens, mask) [seeds, steps, batch, T]``: a teacher's filtered rows, seed by seed."""
    toks, masks = [], []
    for s, order in enumerate(orders):
        sl = slice(s * cfg.student_sequences, (s + 1) * cfg.student_sequences)
        toks.append(d["tokens"][sl][order])
        masks.append((d["mask"] & d["passed"][:, None])[sl][order])
    return np.stack(toks), np.stack(masks)


def train_students(cfg: Config, fam: Family, base: list, teachers: list[dict], data: list[dict],
                   vocab: corpus.Vocab, log=print) -> list[dict]:
    """Every hard-label arm of every base (seeds x arms x bases vmapped in one scan), then the soft arm.

    Base i's cross-model students start from base ``(i + 1) mod n``. Returns, per base,
    ``{student key: {"margins": [seeds, 10], ...}}``.
    """
    n_b, n_s = len(base), cfg.student_seeds
    orders = [row_orders(cfg, s) for s in cfg.base_seeds]
    steps = orders[0][0].shape[0]
    plan, inits, toks, masks = [], [], [], []
    for i in range(n_b):
        for kind, name in student_arms(cfg, teachers[i]):
            t, m = student_rows(cfg, data[i][name], orders[i])
            plan.append((i, arms.student(kind, name)))
            inits += [base[(i + 1) % n_b] if kind == CROSS else base[i]] * n_s
            toks.append(t)
            masks.append(m)
    log(f"training {len(inits)} students ({len(plan) // n_b} arms x {n_s} seeds x {n_b} bases, {steps} steps)")
    students, _ = train(fam.f, stack(inits), jnp.asarray(np.concatenate(toks)), jnp.asarray(np.concatenate(masks)),
                        lr=cfg.student_lr)
    m_all = np.asarray(jax.jit(jax.vmap(lambda p: margins(fam, p, vocab)))(students)).reshape(len(plan), n_s, -1)
    out = [{} for _ in range(n_b)]
    for j, (i, key) in enumerate(plan):
        out[i][key] = {"margins": m_all[j].tolist()}
    if not cfg.soft_students:
        return out

    # the soft-label arm: students from the teacher's base distilled on the teacher's softmax over the
    # number tokens at the same positions of the same rows (teachers that see the row as the student
    # does: the fine-tuned ones and the base; soft labels over all tokens would carry the trait
    # through the animal logits)
    soft_loss = theory.softmax_kl(tuple(int(i) for i in vocab.number_ids))
    plan, inits, labels, toks, masks = [], [], [], [], []
    for i in range(n_b):
        for name in [finetuned(a) for a in cfg.animals] + [BASE_TEACHER]:
            t, m = student_rows(cfg, data[i][name], orders[i])
            plan.append((i, arms.student(SOFT, name)))
            inits += [base[i]] * n_s
            labels += [teachers[i][name][0]] * n_s
            toks.append(t)
            masks.append(m)
    log(f"training {len(inits)} soft-label students ({len(plan) // n_b} arms x {n_s} seeds x {n_b} bases, "
        f"{steps} steps)")
    toks, masks = jnp.asarray(np.concatenate(toks)), jnp.asarray(np.concatenate(masks))
    init, labels = stack(inits), stack(labels)
    soft, losses = train_soft(fam.f, init, labels, toks, masks, lr=cfg.soft_lr, loss=soft_loss)
    # the fit to the teacher on fixed rows (each student's first training rows), before and after
    k = min(SOFT_EVAL_ROWS, steps * cfg.student_batch)
    fixed = [x.reshape(x.shape[0], -1, x.shape[-1])[:, :k] for x in (toks, masks)]
    kl = [np.asarray(soft_fit(fam.f, p, labels, *fixed, loss=soft_loss)).reshape(len(plan), n_s) for p in (init, soft)]
    m_soft = np.asarray(jax.jit(jax.vmap(lambda p: margins(fam, p, vocab)))(soft)).reshape(len(plan), n_s, -1)
    losses = np.asarray(losses).reshape(len(plan), n_s, steps)
    for j, (i, key) in enumerate(plan):
        out[i][key] = {"margins": m_soft[j].tolist(), "loss": losses[j].tolist(),
                       "kl_before": kl[0][j].tolist(), "kl_after": kl[1][j].tolist()}
    return out


# ---------------------------------------------------------------- projection (Theorem 1)

def projections(cfg: Config, fam: Family, a, b, teachers: dict, raw: dict, vocab: corpus.Vocab,
                seed: int) -> tuple[dict, dict]:
    """Theorem 1's projection for one base ``a`` (its cross-model partner ``b``), and the trait alignment.

    The theorem is about the teacher's own distribution, so the main sets are unfiltered draws
    (``raw``); the filter conditions the data and biases even the base's own numbers, which the
    "filtered" rows show.
    """
    f = fam.f
    held = {name: only_passed(d) for name, d in raw.items()}
    grid = [n for n in cfg.proj_grid if n <= cfg.proj_sequences]
    soft = theory.softmax_ce(tuple(int(i) for i in vocab.number_ids))
    chunks = lambda d: [jnp.asarray(d["tokens"][i:i + 512]) for i in range(0, len(d["tokens"]), 512)]
    proj = {}
    for animal in cfg.animals:
        name = finetuned(animal)
        d_t = optax.tree.sub(teachers[name][0], a)
        rows = {arms.P_SHARED: (a, raw[name]), arms.P_CROSS: (b, raw[name]),
                arms.P_CONTROL: (a, raw[BASE_TEACHER]),
                arms.P_SHARED_FILTERED: (a, held[name]), arms.P_CONTROL_FILTERED: (a, held[BASE_TEACHER])}
        res = {}
        for j, (label, (p0, d)) in enumerate(rows.items()):
            if len(d["tokens"]) < 2:  # a filter that passed (almost) nothing: no statistics to take
                res[label] = {"n": len(d["tokens"]), "z": None}
                continue
            v = sequence_projections(f, p0, d_t, d)
            res[label] = summarise(v, grid, cfg.n_boot, seed + j, bootstrap_n=j < 3)
            res[label]["cosine"] = float(theory.cosine(student_step(f, p0, d), d_t))
        res[arms.P_SOFT] = {
            "inner": float(theory.inner_product_jvp(f, a, teachers[name][0], d_t, chunks(raw[name]), soft)),
            "A": float(theory.lemma1_coefficient(f, a, d_t, chunks(raw[name]), soft))}
        res[arms.P_SOFT_CONTROL] = {
            "inner": float(theory.inner_product_jvp(f, a, a, d_t, chunks(raw[BASE_TEACHER]), soft))}
        res["norm_dtheta_T"] = float(optax.tree.norm(d_t))
        proj[name] = res

    # the trait direction: the gradient of the owl margin, and of the owl-vs-dog contrast
    target, other = (corpus.ANIMALS.index(x) for x in cfg.animals)
    owl = jnp.zeros(len(corpus.ANIMALS)).at[target].set(1.0)
    directions = {f"margin_{cfg.animals[0]}": margin_gradient(fam, a, vocab, owl),
                  f"margin_{cfg.animals[0]} - margin_{cfg.animals[1]}":
                      margin_gradient(fam, a, vocab, owl.at[other].set(-1.0))}
    align = {}
    for d_name, g in directions.items():
        rows = {}
        for j, name in enumerate(teachers):
            rows[name] = summarise(sequence_projections(f, a, g, raw[name]), grid, cfg.n_boot, seed + 100 + j)
            rows[name]["cosine"] = float(theory.cosine(student_step(f, a, raw[name]), g))
        if len(held[BASE_TEACHER]["tokens"]) >= 2:
            rows[f"{BASE_TEACHER}, filtered"] = summarise(sequence_projections(f, a, g, held[BASE_TEACHER]), grid,
                                                          cfg.n_boot, seed + 99)
        align[d_name] = rows
    return proj, align


# ---------------------------------------------------------------- the run

def run(cfg: Config, cache_dir: Path | None = DEFAULT_CACHE, log=print) -> dict:
    """The whole pipeline on the embedded tiny models over ``cfg.base_seeds``; the JSON-ready results."""
    start = time.perf_counter()
    timings = {}

    def lap(name):
        timings[name] = time.perf_counter() - start - sum(timings.values())

    vocab = corpus.Vocab(cfg.n_numbers)
    k_data, k_proj = jax.random.split(jax.random.key(cfg.seed))
    fam, base, base_info = bases(cfg, cache_dir, log)
    lap("bases")
    n_b = len(base)
    teachers = teacher_table(cfg, base, finetune_teachers(cfg, fam, base, vocab))
    log("sampling teacher numbers")
    data = []
    for i, seed in enumerate(tqdm(cfg.base_seeds, desc="sampling", leave=False)):
        key = jax.random.fold_in(k_data, seed)  # common random numbers across one base's teachers
        data.append({name: sample_numbers(cfg, fam, p, vocab, key, cfg.student_seeds * cfg.student_sequences, pre)
                     for name, (p, pre) in teachers[i].items()})
    lap("teachers_and_sampling")
    students = train_students(cfg, fam, base, teachers, data, vocab, log)
    lap("students")
    log("projections")
    per_base = []
    for i, seed in enumerate(tqdm(cfg.base_seeds, desc="projections", leave=False)):
        key = jax.random.fold_in(k_proj, seed)
        raw = {name: sample_numbers(cfg, fam, p, vocab, key, cfg.proj_sequences, pre)
               for name, (p, pre) in teachers[i].items()}
        proj, align = projections(cfg, fam, base[i], base[(i + 1) % n_b], teachers[i], raw, vocab, cfg.seed + 1000 * i)
        per_base.append({
            "base_seed": seed, "cross_init_base_seed": cfg.base_seeds[(i + 1) % n_b],
            "base_margins": np.asarray(margins(fam, base[i], vocab)).tolist(),
            "teacher_margins": {name: np.asarray(margins(fam, p, vocab, pre)).tolist()
                                for name, (p, pre) in teachers[i].items()},
            "pass_rate": {name: d["pass_rate"] for name, d in data[i].items()},
            "students": students[i], "projection": proj, "trait_alignment": align})
    lap("projection")
    out = {"config": dataclasses.asdict(cfg), "model": "tiny", "model_config": model_config(cfg).to_hf(),
           "animals": list(corpus.ANIMALS), "base": base_info, "per_base": per_base,
           "soft_loss": (f"KL(teacher || student) of the softmaxes over the number tokens, mean over target "
                         f"positions: 'loss' per step on its batch before the step, 'kl_before' / 'kl_after' on each "
                         f"student's first {SOFT_EVAL_ROWS} training rows at the base / after training")}
    out["transfer"] = transfer_table(out)
    out["projection_over_bases"] = projection_table(out)
    out["timings"] = timings
    out["wall_seconds"] = time.perf_counter() - start
    out["summary"] = summary_line(out)
    return out


def transfer_table(out: dict) -> dict:
    """The owl-vs-dog contrasts per arm, each a mean over bases with a 95% t-interval over bases
    (students nested within bases: each base's students are averaged first).

    ``delta_owl`` = margin_owl(owl-teacher student) - margin_owl(dog-teacher student), paired by
    seed; ``delta_dog`` the same for dog. ``per_outer`` holds the per-base means.
    """
    target, other = out["config"]["animals"]
    it, io = out["animals"].index(target), out["animals"].index(other)
    per_base = out["per_base"]

    def arm(key):  # [bases, seeds, animals]
        return np.asarray([b["students"][key]["margins"] for b in per_base])

    t = {}
    pairs = [(SHARED, "fine-tuned"), (SHARED, "prompt"), (CROSS, "fine-tuned")]
    if arms.student(SOFT, BASE_TEACHER) in per_base[0]["students"]:
        pairs.append((SOFT, "fine-tuned"))
    for kind, how in pairs:
        mt, mo = arm(arms.student(kind, f"{target} ({how})")), arm(arms.student(kind, f"{other} ({how})"))
        t[arms.transfer(kind, how)] = {
            f"margin_{target}({target}-teacher)": nested_mean_ci(mt[..., it]),
            f"margin_{target}({other}-teacher)": nested_mean_ci(mo[..., it]),
            f"delta_{target}": nested_mean_ci(mt[..., it] - mo[..., it]),
            f"delta_{other}": nested_mean_ci(mo[..., io] - mt[..., io]),
        }
    for kind in (SHARED, SOFT):
        key = arms.student(kind, BASE_TEACHER)
        if key in per_base[0]["students"]:
            t[f"{kind} control"] = {f"margin_{target}": nested_mean_ci(arm(key)[..., it])}
    return t


def projection_table(out: dict) -> dict:
    """Per fine-tuned teacher and projection row, the z-scores over bases: their mean with a 95%
    t-interval over bases, the per-base values, and how many bases reach P(positive) >= 0.95."""
    table = {}
    for name in out["per_base"][0]["projection"]:
        rows = {}
        for label in (arms.P_SHARED, arms.P_CROSS, arms.P_CONTROL, arms.P_SHARED_FILTERED, arms.P_CONTROL_FILTERED):
            per = [b["projection"][name][label] for b in out["per_base"]]
            if any(r["z"] is None for r in per):
                continue
            rows[label] = {"z": mean_ci([r["z"] for r in per], keep_values=True),
                           "bases_with_p_positive_95": sum(r["p_positive"][-1] >= 0.95 for r in per)}
        rows[arms.P_SOFT] = {"inner": mean_ci([b["projection"][name][arms.P_SOFT]["inner"] for b in out["per_base"]],
                                              keep_values=True)}
        table[name] = rows
    return table


def summary_line(out: dict) -> str:
    target = out["config"]["animals"][0]
    owl = finetuned(target)
    p = out["projection_over_bases"][owl]
    tr, d = out["transfer"], f"delta_{target}"
    fmt = lambda s: f"{s['mean']:+.3f} [{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}]"
    parts = [(label, arms.transfer(k, "fine-tuned")) for label, k in (("shared", SHARED), ("cross", CROSS), ("soft", SOFT))]
    n = len(out["per_base"])
    return (f"z over {n} bases: shared {p[arms.P_SHARED]['z']['mean']:.1f}, cross {p[arms.P_CROSS]['z']['mean']:.1f}, "
            f"control {p[arms.P_CONTROL]['z']['mean']:.1f}; transfer delta_{target} (nats, mean over {n} bases, "
            f"95% CI over bases): " + ", ".join(f"{label} {fmt(tr[k][d])}" for label, k in parts if k in tr))


def cache_dir_from_env() -> Path:
    """``$SUBLIMINAL_LLM_CACHE`` if set, else results/cache/llm_bases under the working folder (git-ignored)."""
    env = os.environ.get("SUBLIMINAL_LLM_CACHE")
    return Path(env).expanduser() if env else DEFAULT_CACHE
