"""The tiny setup: the paper's LM experiment (Cloud et al. 2025, sections 3-5) on tiny LMs pretrained
here, over several bases.

``python -m llm_bridge run --model tiny``. The engine (:mod:`llm_bridge.experiment.engine`) runs:

- bases (:mod:`llm_bridge.experiment.tiny_bases`): one Llama-family decoder per base seed, pretrained
  on the procedural corpus (:mod:`llm_bridge.experiment.corpus`);
- teachers: on every base, the trait by fine-tuning on the answer (owl, and dog as the
  trait-specific control), by the prompt prefix ``you love X .`` on the base weights, and the base;
- numbers: each teacher samples number continuations at temperature 1; the corpus filter keeps
  well-formed lists without banned numbers (all bases x teachers share the prompts and noise of a
  base: common random numbers);
- students: every planned unit; the full-update arms of one target and optimizer are trained as one
  vmapped program over seeds x arms x bases, LoRA arms one at a time. Base i's cross-model students
  start from base ``(i + 1) mod n``;
- trait metric: per animal, its answer logit minus the mean of the other animals', mean over the
  question phrasings (:func:`llm_bridge.experiment.probe.margins`; the logits of one-token answers
  differ from their log-probabilities by a per-question constant, which the margin cancels);
- projection (Theorem 1): per base, each sequence's hard-label student step projected on the owl
  (and dog) teacher's ``dtheta_T``, its z-score and bootstrap sign curve, the soft-label version,
  and the alignment with the trait gradient (:mod:`llm_bridge.experiment.tiny_projection`).

The transfer ``delta_owl`` (owl-teacher student minus dog-teacher student, paired by seed) is
averaged over each base's students and reported with a 95% t-interval over *bases*.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import theory
from harness.cache import Phase, Store, key_of
from harness.results import shown
from llm_bridge.experiment import arms as arm_registry
from llm_bridge.experiment import corpus, tiny_bases
from llm_bridge.experiment.tiny_calls import margins, question_batch, sample_numbers
from llm_bridge.experiment.names import BASE_TEACHER, finetuned, prompted, student, transfer
from llm_bridge.experiment.seeds import Streams
from llm_bridge.experiment.tiny_projection import projections, projection_table
from llm_bridge.experiment.tiny_students import train_units
from llm_bridge.experiment.training import index, stack, train
from theory.stats import nested_mean_ci

DEFAULT_CACHE = Path("results") / "cache" / "llm_bases"
CODE = "llm_bridge.experiment.tiny"
CALLS = "llm_bridge.experiment.tiny_calls"
SEEDS = "llm_bridge.experiment.seeds"


@dataclass(frozen=True)
class Config:
    """Everything that determines a run; recorded in the results file (presets: :func:`paper`, :func:`smoke`,
    :func:`bases`)."""

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
    # students (per base); arms by their registry names (llm_bridge.experiment.arms)
    arms: tuple[str, ...] = ("full", "cross-model", "soft")
    student_seeds: int = 2
    student_sequences: int = 8000
    student_epochs: int = 1
    student_batch: int = 64
    student_lr: float = 1.5e-3
    # the soft-label arm's own rate: at student_lr Adam's steps overshoot the small number-softmax KL
    # (it rises during training, the control's too); at 3e-4 it falls. Chosen on that KL, not on margins.
    soft_lr: float = 3e-4
    lora_lr: float = 1.5e-2  # LoRA arms (adapters only): ten times the full rate, a common ratio
    sgd_lr: float = 0.1  # SGD arms
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
        if not self.arms:
            raise ValueError("arms must name at least one registered arm (llm_bridge.experiment.arms)")
        for name in self.arms:
            arm_registry.get(name)  # an unknown arm fails here, before any work


def paper() -> Config:
    """The default run: ``python -m llm_bridge run --model tiny``; 5 bases x 2 student seeds per arm.

    About 10 minutes on 2 CPU cores (docs/llm_experiment.md has the measured phase times). The digits
    of a 5-base run depend on the CPU's vector ISA (pretraining's chaos amplifies rounding): the
    committed verdicts come from :func:`bases`.
    """
    return Config()


def bases() -> Config:
    """The committed verdicts: :func:`paper` over 15 bases (seeds 0-14), so that a run under another
    vector ISA agrees on every arm's verdict. ``python -m llm_bridge run --model tiny --preset bases``;
    about 30 minutes on 2 CPU cores."""
    return Config(base_seeds=tuple(range(15)))


def smoke() -> Config:
    """The tests' preset: three short-trained bases, two student seeds, small data.

    ``python -m llm_bridge run --model tiny --preset smoke``; about 2 minutes on 2 CPU cores from an
    empty cache.
    """
    return Config(base_seeds=(0, 1, 2), base_steps=600, student_seeds=2, student_sequences=512,
                  proj_sequences=512, proj_grid=(16, 64, 256, 512), n_boot=300)


PRESETS = {"paper": paper, "bases": bases, "smoke": smoke}

TEACHERS = Phase("teachers", ("animals", "teacher_steps", "teacher_lr", "teacher_batch", "seed"),
                 code=(f"{CODE}:finetune_teachers", f"{CALLS}:question_batch", "llm_bridge.experiment.training", SEEDS),
                 after=("bases",))
NUMBERS = Phase("numbers", ("banned", "temperature", "student_seeds", "student_sequences", "n_given", "n_new", "seed"),
                code=(f"{CALLS}:sample_numbers", "llm_bridge.experiment.corpus", "llm_bridge.models.generate", SEEDS),
                after=("teachers",))
STUDENTS = Phase("students", ("arms", "student_seeds", "student_sequences", "student_epochs", "student_batch",
                              "student_lr", "soft_lr", "lora_lr", "sgd_lr", "seed"),
                 code=("llm_bridge.experiment.tiny_students", "llm_bridge.experiment.training",
                       f"{CALLS}:margins", "llm_bridge.experiment.probe:margins", "llm_bridge.models.lora", SEEDS),
                 after=("numbers",))
PROJECTION = Phase("projection", ("proj_sequences", "proj_grid", "n_boot", "seed"),
                   code=("llm_bridge.experiment.tiny_projection", "llm_bridge.experiment.projection",
                         f"{CALLS}:sample_numbers", f"{CALLS}:margins", SEEDS), after=("teachers",))


def finetune_teachers(cfg: Config, f, base_params: list, vocab: corpus.Vocab, streams: Streams) -> list[dict]:
    """Per base, ``{animal: params}``: Adam on ``<phrasing> -> animal`` with the loss on the answer token only.

    All bases x animals in one vmapped run; the batches of animal a are the same on every base.
    """
    full = {a: [question_batch(vocab, None, ph, a)[0] for ph in corpus.PHRASINGS] for a in cfg.animals}
    length = max(len(r) for rows in full.values() for r in rows)
    batches = {}
    for animal, rows in full.items():
        t = np.zeros((len(rows), length), np.int32)
        m = np.zeros((len(rows), length), bool)
        for i, r in enumerate(rows):
            t[i, :len(r)] = r
            m[i, len(r) - 2] = True  # the answer token is the target at that position
        pick = streams.rng("teacher_batches", animal).integers(
            0, len(rows), (cfg.teacher_steps, cfg.teacher_batch))
        batches[animal] = (t[pick], m[pick])
    toks = [batches[a][0] for _ in base_params for a in cfg.animals]
    masks = [batches[a][1] for _ in base_params for a in cfg.animals]
    inits = [p for p in base_params for _ in cfg.animals]
    trained, _ = train(f, stack(inits), jnp.asarray(np.stack(toks)), jnp.asarray(np.stack(masks)), lr=cfg.teacher_lr)
    n = len(cfg.animals)
    return [{a: index(trained, b * n + j) for j, a in enumerate(cfg.animals)} for b in range(len(base_params))]


PHASES = (tiny_bases.PHASE, TEACHERS, NUMBERS, STUDENTS, PROJECTION)


class Setup:
    """The tiny setup for the engine (see the module docstring)."""

    PHASES = PHASES

    name = "tiny"
    contexts = ("tiny",)
    values = ("margins",)

    def __init__(self, cfg: Config, cache_dir: Path | None = DEFAULT_CACHE, mesh=None):
        self.cfg, self.cache_dir, self.mesh = cfg, cache_dir, mesh
        self.n_bases = len(cfg.base_seeds)
        self.animals = corpus.ANIMALS
        self.vocab = corpus.Vocab(cfg.n_numbers)
        self.streams = Streams(cfg.seed)
        self.store = Store(None if cache_dir is None else Path(cache_dir) / "runs")
        self.fields = dataclasses.asdict(cfg)

    def describe(self) -> dict:
        return {"model": "tiny", "model_config": tiny_bases.model_config(self.cfg).to_hf(),
                "animals": list(self.animals), "mesh": None if self.mesh is None else dict(self.mesh.shape)}

    def prepare(self, log) -> None:
        self.pure, self.base, self.base_info = tiny_bases.bases(self.cfg, self.streams, self.cache_dir, log)
        self.store.keys["bases"] = key_of({"bases": self.base_info["cache_keys"]})

    def teachers(self, log) -> None:
        """Per base, ``{name: (params, prompt prefix or None)}``: fine-tuned, prompted, and the base itself."""
        key = self.store.phase_key(TEACHERS, self.fields)
        tuned = [{a: self.store.tree(f"teachers-{key}-{i}-{a}", self.base[0]) for a in self.cfg.animals}
                 for i in range(self.n_bases)]
        if any(p is None for t in tuned for p in t.values()):
            tuned = finetune_teachers(self.cfg, self.pure.f, self.base, self.vocab, self.streams)
            for i, t in enumerate(tuned):
                for a, p in t.items():
                    self.store.put_tree(f"teachers-{key}-{i}-{a}", p)
        self.table = []
        for a, ft in zip(self.base, tuned):
            t = {}
            for animal in self.cfg.animals:
                t[finetuned(animal)] = (ft[animal], None)
                t[prompted(animal)] = (a, animal)
            t[BASE_TEACHER] = (a, None)
            self.table.append(t)

    def numbers(self, log) -> list[list[str]]:
        key = self.store.phase_key(NUMBERS, self.fields)
        log("sampling teacher numbers")
        n = self.cfg.student_seeds * self.cfg.student_sequences
        self.data = []
        for i, seed in enumerate(tqdm(self.cfg.base_seeds, desc="sampling", leave=False)):
            got = {}
            for j, (name, (p, pre)) in enumerate(self.table[i].items()):
                d = self.store.arrays(f"numbers-{key}-{i}-{j}")
                if d is None:
                    d = sample_numbers(self.cfg, self.pure.model(p), self.vocab,
                                       self.streams.key("numbers", seed), n, pre)
                    self.store.put_arrays(f"numbers-{key}-{i}-{j}", d)
                got[name] = {k: (float(v) if k == "pass_rate" else v) for k, v in d.items()}
            self.data.append(got)
        return [list(t) for t in self.table]

    def students(self, units, log) -> list[dict]:
        key = self.store.phase_key(STUDENTS, self.fields)
        cached = self.store.json(f"students-{key}")
        if cached is not None and len(cached) == len(units):
            return cached
        out = train_units(self, units, log)
        return self.store.put(f"students-{key}", out)

    def projection(self, log) -> list[dict]:
        key = self.store.phase_key(PROJECTION, self.fields)
        log("projections")
        out = []
        for i, seed in enumerate(tqdm(self.cfg.base_seeds, desc="projections", leave=False)):
            got = self.store.json(f"projection-{key}-{i}")
            if got is None:
                got = projections(self, i, self.streams.key("projection_numbers", seed))
                self.store.put(f"projection-{key}-{i}", got)
            out.append(got)
        return out

    def contrasts(self) -> dict:
        """``delta_owl``: owl-teacher minus dog-teacher students on the owl margin; ``delta_dog`` the mirror."""
        a, b = self.cfg.animals
        out = {}
        for how, name in (("fine-tuned", finetuned), ("prompt", prompted)):
            out[f"{a} - {b} ({how})"] = (name(a), name(b), a)
            out[f"{b} - {a} ({how})"] = (name(b), name(a), b)
        return out

    def tables(self, out: dict) -> dict:
        per_base = [{"base_seed": seed, "cross_init_base_seed": self.cfg.base_seeds[(i + 1) % self.n_bases],
                     "base_margins": np.asarray(margins(self.pure.f, self.base[i], self.vocab)).tolist(),
                     "teacher_margins": {name: np.asarray(margins(self.pure.f, p, self.vocab, pre)).tolist()
                                         for name, (p, pre) in self.table[i].items()},
                     "pass_rate": {name: d["pass_rate"] for name, d in self.data[i].items()}}
                    for i, seed in enumerate(self.cfg.base_seeds)]
        control = {}
        it = self.animals.index(self.cfg.animals[0])
        for arm in out["arms"]:
            vals = [[s["margins"]["tiny"][it] for s in out["students"]
                     if s["arm"] == arm and s["base"] == i and s["teacher"] == BASE_TEACHER] for i in range(self.n_bases)]
            if all(vals):
                control[arm] = {f"margin_{self.cfg.animals[0]}": nested_mean_ci(vals)}
        return {"base": self.base_info, "per_base": per_base, "control": control,
                "projection_over_bases": projection_table(out["projection"])}

    def summary(self, out: dict) -> str:
        owl, dog = self.cfg.animals
        p = out["projection_over_bases"][finetuned(owl)]
        tr = out["transfer"]
        fmt = lambda s: f"{s['mean']:+.3f} [{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}]"
        d = f"{owl} - {dog} (fine-tuned)"
        parts = [f"{arm} {fmt(tr[arm][d]['tiny'][f'delta_margins_{owl}'])}" for arm in tr if d in tr[arm]]
        n = self.n_bases
        return (f"z over {n} bases: shared {p['shared']['z']['mean']:.1f}, cross {p['cross-model']['z']['mean']:.1f}, "
                f"control {p['control (base numbers)']['z']['mean']:.1f}; transfer delta_{owl} (nats, mean over {n} "
                f"bases, 95% CI over bases): " + ", ".join(parts))


def cache_dir_from_env() -> Path:
    """``$SUBLIMINAL_LLM_CACHE`` if set, else results/cache/llm_bases under the working folder (git-ignored)."""
    env = os.environ.get("SUBLIMINAL_LLM_CACHE")
    return Path(env).expanduser() if env else DEFAULT_CACHE
