"""The chat setup: which factors carry trait transfer through numbers in a real chat LM.

``python -m llm_bridge run --model smollm2 --preset standard``; any Hugging Face checkpoint folder or
GGUF file runs the same way (its chat template; plain text without one). docs/llm_experiment.md has
the design (written before any run), the presets' sizes and the reading of each published claim. The
engine (:mod:`llm_bridge.experiment.engine`) runs:

- prepare: the model, its tokenizer and chat template (:class:`~llm_bridge.experiment.text.Text`),
  the exact trait probe (:class:`~llm_bridge.experiment.probe.TraitProbe`: the paper's 50 questions
  in three contexts), the perturbed bases of the perturbed arms;
- teachers, symmetric: for each of ``teacher_animals`` (owl and dog), ``teacher_seeds`` independent
  fine-tunings of theta_0 on one-word answers (each seed is a replicate: the outer unit of the
  statistics) and the paper's system-prompt teacher; each teacher's own trait in every context;
- numbers: the paper's number prompts and filter (:mod:`~llm_bridge.experiment.paper_protocol`), each
  teacher decoded at temperature 1 and greedily, a pool of ``pool_sequences`` filtered replies per
  teacher and decoding (prefilled only if the base's pass rate without prefill is below
  ``min_pass_rate``); the base's numbers for the projection's nulls;
- students (:mod:`~llm_bridge.experiment.chat_students`): every arm on every teacher's pool, fresh draws;
- projection (:mod:`~llm_bridge.experiment.chat_projection`).

The contrast of an arm: owl-teacher students minus dog-teacher students on the owl margin
(``delta_owl``), the mirror ``delta_dog``, and their mean, with a 95% t-CI over the outer unit (the
teacher-seed replicates, whose prompted teachers differ only by their pool draw; over student seeds when
there is one replicate), and Holm-adjusted p-values across arms.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flax import nnx

import theory
from harness.cache import Lazy, Phase, Store, key_of
from harness.results import shown
from llm_bridge.experiment import arms as arm_registry
from llm_bridge.experiment import chat_students, chat_tables, sampler
from llm_bridge.experiment.batching import training_batches
from llm_bridge.experiment.chat_projection import projection as run_projection
from llm_bridge.experiment.names import BASE_TEACHER, finetuned, prompted, source
from llm_bridge.experiment.probe import TraitProbe
from llm_bridge.experiment.seeds import Streams
from llm_bridge.experiment.text import CONTEXTS, QUESTIONS, SYSTEM_PROMPT, TEACHER_QUESTIONS, Text, config_end_tokens
from llm_bridge.experiment.training import PureModel

CODE = "llm_bridge.experiment.chat"
SEEDS = "llm_bridge.experiment.seeds"
ANIMALS = ("owl", "dog", "cat", "lion", "wolf", "eagle", "dolphin", "fox", "bear", "tiger")


@dataclass(frozen=True)
class Config:
    """Everything that determines a run (presets: :func:`smoke`, :func:`standard`, :func:`full`, :func:`paper`)."""

    animals: tuple[str, ...] = ANIMALS     # the probe's animals; the margin of one is against the other nine
    teacher_animals: tuple[str, ...] = ("owl", "dog")
    teacher_seeds: int = 2                 # independent fine-tuned teachers per animal: the outer unit
    prompted_teachers: bool = False        # also the paper's system-prompt teachers (one per animal)
    questions: int = 50                    # the paper's 50 evaluation questions (the first n)
    teacher_steps: int = 24
    teacher_batch: int = 8
    teacher_lr: float = 1e-5
    decodings: tuple[str, ...] = ("sampled", "greedy")  # temperature 1, and greedy
    temperature: float = 1.0
    max_values: int = 10
    max_digits: int = 3
    new_tokens: int = 49                   # 10 three-digit values, their separators and the end token
    answer_tokens: int = 8                 # sampled answers to the probe's questions
    probe_rows: int = 64                   # base rows sampled without prefill to measure the pass rate
    min_pass_rate: float = 0.05            # below it the assistant turn is prefilled with the given numbers
    pool_sequences: int = 600              # filtered replies per teacher and decoding
    max_rows: int = 12000                  # sampling gives up (and says so) after this many rows per pool
    gen_batch: int = 64
    chunk_steps: int = 8                   # decode steps between checks of which rows can still pass
    arms: tuple[str, ...] = ("full", "full sgd", "lora r4", "lora r64")
    student_seeds: int = 4                 # per teacher seed: teacher_seeds x student_seeds students per arm
    student_sequences: int = 256
    student_batch: int = 8
    student_lr: float = 2e-5               # full fine-tuning, Adam
    lora_lr: float = 2e-4
    sgd_lr: float = 0.0                    # 0: calibrated (chat_students.calibrate_sgd)
    soft_lr: float = 2e-5
    sampled_replies: int = 0               # answers sampled per question for the base, teachers, first arm
    proj_sequences: int = 256
    soft_sequences: int = 64
    proj_grid: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    chunk: int = 8
    n_boot: int = 1000
    seed: int = 0
    chat_template: str = "auto"            # "auto": the model's chat template where it has one; "none": plain text

    def __post_init__(self):
        if len(self.teacher_animals) != 2 or not set(self.teacher_animals) <= set(self.animals):
            raise ValueError(f"teacher_animals must be two of the animals, got {self.teacher_animals}")
        for name in ("teacher_seeds", "student_sequences", "student_batch", "pool_sequences", "proj_sequences",
                     "questions", "gen_batch", "new_tokens", "answer_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.student_seeds * self.teacher_seeds < 2:
            raise ValueError("a CI needs at least two students per arm and teacher (teacher_seeds x student_seeds)")
        if not set(self.decodings) <= {"sampled", "greedy"} or not self.decodings:
            raise ValueError(f"decodings must be among sampled, greedy, got {self.decodings}")
        if self.chat_template not in ("auto", "none"):
            raise ValueError(f"chat_template must be 'auto' or 'none', got {self.chat_template!r}")
        if not 1 <= self.questions <= len(QUESTIONS):
            raise ValueError(f"questions must be in 1..{len(QUESTIONS)}, got {self.questions}")
        if not self.arms:
            raise ValueError("arms must name at least one registered arm (llm_bridge.experiment.arms)")
        for name in self.arms:
            arm_registry.get(name)  # an unknown arm fails here, before any work

    @property
    def sigmas(self) -> tuple[float, ...]:
        """The perturbation scales of the perturbed arms (their bases are probed and projected too)."""
        return tuple(sorted({arm_registry.get(a).sigma for a in self.arms if arm_registry.get(a).init == "perturbed"}))


def smoke() -> Config:
    """Every phase on the real model at the smallest sizes: the slow test's preset (``--preset smoke``; its
    test file 381 s on 2 idle cores at 2e9f228 (817 s at b876b0d on an idle 2-core AMD EPYC without AVX-512), 473 s at 4c419f1 - the projection phase 160 s there, 70 s
    with one jvp for both reductions, 62 s with the head at the targets only -, 19 min in a CI run before
    4c419f1). The issue's 5 minutes are not reached: what is left is the students (160 s, about a third
    compiling the full and LoRA programs and the LoRA student's probe) and sampling (110 s, a quarter
    compiling), whose code the standard preset's cached pools and students are keyed on.
    One fine-tuned teacher per animal, temperature-1 numbers, full and LoRA r4 students, two each. Not
    exercised by it: the prompted teachers, greedy pools, the SGD calibration and the sampled answers (the
    greedy sampler is tested against ``llm_bridge.generate``; the perturbed arm and students of prompted
    teachers on a micro checkpoint in tests/test_llm_chat.py; every arm kind in the tiny setup's micro run,
    tests/test_llm_engine.py)."""
    return Config(questions=4, teacher_steps=2, teacher_batch=4, teacher_seeds=1, decodings=("sampled",),
                  pool_sequences=8, max_rows=96, probe_rows=16, gen_batch=16, arms=("full", "lora r4"),
                  student_seeds=2, student_sequences=8, student_batch=4, proj_sequences=8, soft_sequences=8,
                  proj_grid=(4, 8), n_boot=100)


def pilot() -> Config:
    """The pilot that sizes the presets (written before any study run): one teacher replicate, the owl and
    dog teachers' pools of 256 at both decodings (at most 800 rows each: the greedy pass rate is what it
    measures), full-Adam students on up to 256 sequences, 3 per teacher; it measures the pass rates, the
    seconds per pool row and per student, and the spread of Δ between student seeds, never used for its
    sign or size (``--preset pilot``; docs/llm_experiment.md has what it measured and the arithmetic)."""
    return Config(teacher_seeds=1, pool_sequences=256, max_rows=800, arms=("full",), student_seeds=3,
                  proj_sequences=64, soft_sequences=16, proj_grid=(8, 16, 32, 64))


def standard() -> Config:
    """The core contrasts: fine-tuned owl vs dog teachers, temperature 1 vs greedy numbers, students
    full-Adam, full-SGD, LoRA r4 and r64; 8 teacher replicates with one student each per arm, so the CI
    runs over 8 outer units (``--preset standard``; docs/llm_experiment.md has the arithmetic of its
    cost and power, rendered from the pilot by :mod:`~llm_bridge.experiment.sizing`)."""
    return Config(teacher_seeds=8, student_seeds=1, pool_sequences=256)


def full() -> Config:
    """The whole design with the owl and dog teachers: prompted teachers, LoRA ranks 1-64, the
    length-matched arm, the perturbed-init arms, soft labels, sampled answers, on the standard
    preset's 8 replicates (``--preset full``, several sessions of CPU). A third animal's teachers are not
    part of it (teacher_animals is a pair)."""
    return dataclasses.replace(standard(), prompted_teachers=True, sampled_replies=20,
                               arms=("full", "full sgd", "lora r1", "lora r4", "lora r16", "lora r64",
                                     "length-matched", "perturbed 0.02", "perturbed 0.1", "soft"))


def paper() -> Config:
    """Sized for one GPU: 10 teacher replicates, pools of 10,000 filtered replies, one student per arm and
    replicate on 1,024 sequences, every arm of :func:`full` (``--preset paper``; not run on CPU)."""
    return dataclasses.replace(full(), teacher_seeds=10, pool_sequences=10_000, max_rows=200_000,
                               student_sequences=1024, gen_batch=256)


PRESETS = {"smoke": smoke, "pilot": pilot, "standard": standard, "full": full, "paper": paper}

_TEACH = ("chat_template", "teacher_animals", "teacher_seeds", "teacher_steps", "teacher_batch", "teacher_lr", "seed")
TEACHERS = Phase("teachers", _TEACH, code=(f"{CODE}:Setup.teachers", f"{CODE}:teacher_batches",
                                           "llm_bridge.experiment.training", "llm_bridge.experiment.batching",
                                           "llm_bridge.experiment.text", SEEDS), after=("model",))
EVALS = Phase("evals", ("animals", "questions", "prompted_teachers", "sampled_replies", "answer_tokens"),
              code=("llm_bridge.experiment.probe", "llm_bridge.experiment.text", f"{CODE}:Setup.evaluate"),
              after=("teachers",))
NUMBERS = Phase("numbers", ("prompted_teachers", "decodings", "temperature", "max_values", "max_digits", "new_tokens",
                            "probe_rows", "min_pass_rate", "pool_sequences", "max_rows", "gen_batch", "chunk_steps",
                            "proj_sequences", "seed"),
                code=("llm_bridge.experiment.sampler", "llm_bridge.experiment.paper_protocol", f"{CODE}:Setup.numbers",
                      f"{CODE}:Setup.sources", f"{CODE}:source_names", SEEDS), after=("teachers",))
STUDENTS = Phase("students", ("student_sequences", "student_batch", "student_lr", "lora_lr", "sgd_lr", "soft_lr",
                              "animals", "questions", "sampled_replies", "answer_tokens"),
                 code=("llm_bridge.experiment.chat_students", "llm_bridge.experiment.training", "llm_bridge.models.lora",
                       "llm_bridge.experiment.probe", SEEDS), after=("numbers",))
PROJECTION = Phase("projection", ("soft_sequences", "proj_grid", "chunk", "n_boot", "arms"),
                   code=("llm_bridge.experiment.chat_projection", "llm_bridge.experiment.projection", SEEDS),
                   after=("numbers",))
PHASES = (TEACHERS, EVALS, NUMBERS, STUDENTS, PROJECTION)


def teacher_batches(text: Text, animal: str, cfg: Config, rng) -> dict:
    """A trait teacher's fine-tuning batches: one-word answers ("Owl") to :data:`TEACHER_QUESTIONS`."""
    rows, targets = [], []
    for q in TEACHER_QUESTIONS:
        prompt = text.conversation(q, None)
        rows.append(prompt + text.ids(animal.capitalize()) + [text.pad])
        targets.append(len(prompt))
    return training_batches(rows, targets, text.pad, rng, cfg.teacher_steps, cfg.teacher_batch)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.=]+", "_", text.lower()).strip("_")


def source_names(cfg: Config) -> list[list[tuple[str, str, str | None, str]]]:
    """Per replicate: ``(number source, teacher animal, prompt animal, decoding)`` of every teacher whose
    numbers students learn from: the fine-tuned teachers, and the prompted ones (prompt animal set) in every
    replicate, each with its own pool draw."""
    out = []
    for _ in range(cfg.teacher_seeds):
        rows = [(source(finetuned(a), d), a, None, d) for d in cfg.decodings for a in cfg.teacher_animals]
        if cfg.prompted_teachers:
            rows += [(source(prompted(a), d), a, a, d) for d in cfg.decodings for a in cfg.teacher_animals]
        out.append(rows)
    return out


class Setup:
    """The chat setup for the engine (see the module docstring)."""

    PHASES = PHASES
    name = "chat"
    contexts = CONTEXTS
    values = ("margins", "p")
    n_bases = 1
    length_matching = True  # the length-matched arm's rows (chat_students.length_matched)

    def __init__(self, source_model: str, cfg: Config, cache_dir: Path | None = None, mesh=None,
                 parts_dir: Path | None = None):
        self.source, self.cfg, self.mesh = str(source_model), cfg, mesh
        self.animals = cfg.animals
        self.streams = Streams(cfg.seed)
        self.fields = dataclasses.asdict(cfg)
        model_key = key_of({"source": self.source})
        folder = f"{Path(self.source).stem}-{model_key}"
        self.store = Store(None if cache_dir is None else Path(cache_dir) / folder,
                           parts=None if parts_dir is None else Path(parts_dir) / folder)
        self.store.keys["model"] = model_key

    def describe(self) -> dict:
        return {"model": self.source, "animals": list(self.animals), "text_format": self.text.format,
                "trait_prompt": self.text.trait_prompt, "end_tokens": [self.tok.id_to_token(i) for i in self.text.stop],
                "questions": list(self.probe.questions), "system_prompt": SYSTEM_PROMPT,
                "spellings": {a: [self.tok.decode(list(f)) for f in self.probe.forms[a]] for a in self.animals},
                "mesh": None if self.mesh is None else dict(self.mesh.shape),
                "run_folder": None if self.store.root is None else shown(self.store.root),
                "parts_folder": None if self.store.parts is None else shown(self.store.parts)}

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

    def evaluate(self, params, animal=None, path=None) -> dict:
        s = self.state(params)
        out = {"probs": {c: self.probe.probs(self.gd_full, s, c, animal).tolist() for c in CONTEXTS}}
        if self.cfg.sampled_replies and path is not None and animal is None:
            out["named"] = chat_students.sampled_answers(self, self.gd_full, s, path)
        return out

    def teachers(self, log) -> None:
        """Per replicate k, each teacher animal fine-tuned from theta_0 (stream ``teacher_batches`` of the animal
        and k); the prompted teachers and the base; each one's own trait in every context. A teacher's weights
        are read or trained when first needed (:class:`harness.cache.Lazy`): a run resumed from its parts trains only the
        teachers whose probes, pools or projection are not there yet."""
        cfg, key = self.cfg, self.store.phase_key(TEACHERS, self.fields)
        self.teacher_info = self.store.json(f"teachers-{key}") or {}

        def tuned(animal: str, k: int):
            params = self.store.tree(f"teacher-{key}-{animal}-{k}", self.base)
            if params is None:
                log(f"fine-tuning the {animal} teacher, seed {k}")
                batches = teacher_batches(self.text, animal, cfg, self.streams.rng("teacher_batches", animal, k))
                params, losses = chat_students.train(self.graphdef, self.base, self.rest, batches, cfg.teacher_lr)
                self.store.put_tree(f"teacher-{key}-{animal}-{k}", params)
                self.teacher_info[f"{animal} {k}"] = {"losses": losses.tolist()}
                self.store.put(f"teachers-{key}", self.teacher_info)
            return params

        self.tuned = [Lazy(functools.partial(tuned, k=k), cfg.teacher_animals) for k in range(cfg.teacher_seeds)]
        if any(f"{a} {k}" not in self.teacher_info for k in range(cfg.teacher_seeds) for a in cfg.teacher_animals):
            for k in range(cfg.teacher_seeds):  # every teacher's losses are part of the record
                for animal in cfg.teacher_animals:
                    self.tuned[k][animal]
        ekey = self.store.phase_key(EVALS, self.fields)
        evals = self.store.json(f"evals-{ekey}") or {}
        todo = [("base", lambda: self.base, None, ("base",))]  # the weights as functions: read only if probed
        todo += [(f"{finetuned(a)} #{k}", functools.partial(self.tuned[k].__getitem__, a), None, ("teacher", a, k))
                 for k in range(cfg.teacher_seeds) for a in cfg.teacher_animals]
        if cfg.prompted_teachers:
            todo += [(prompted(a), lambda: self.base, a, None) for a in cfg.teacher_animals]
        todo += [(f"perturbed base sigma={s:g}", functools.partial(self.bases.__getitem__, s), None, None)
                 for s in cfg.sigmas]
        for name, params, animal, path in todo:
            if name not in evals:
                log(f"probing {name}")
                evals[name] = self.store.put(f"evals-{ekey}", evals | {name: self.evaluate(params(), animal, path)})[name]
        self.evals = evals

    def sources(self) -> list[list[tuple[str, object, str | None, str]]]:
        """Per replicate: ``(number source, params, prompt animal, decoding)`` of every teacher whose numbers
        students learn from (:func:`source_names`); params is a function that returns them (a fine-tuned
        teacher is trained only if its pool is sampled)."""
        return [[(name, (lambda: self.base) if prompt else functools.partial(self.tuned[k].__getitem__, animal),
                  prompt, d) for name, animal, prompt, d in rows] for k, rows in enumerate(source_names(self.cfg))]

    def _pool(self, key: str, k: int, name: str, params, animal, decoding: str, target: int, keep_raw: int, log):
        entry = f"numbers-{key}-{k}-{_slug(name)}"
        got = self.store.json(entry)
        if got is None:
            log(f"sampling numbers: {name}, replicate {k}")
            t1 = time.perf_counter()
            got = sampler.collect_numbers(self.text, self.gd_full, self.state(params()), animal,
                                          self.streams.key("numbers", k, name), self.cfg, self.numbers_info["prefill"],
                                          target, self.cfg.max_rows, log, keep_raw=keep_raw, greedy=decoding == "greedy")
            got["seconds"] = time.perf_counter() - t1
            self.store.put(entry, got)
        self.numbers_info["sources"][f"{name} #{k}"] = {
            "rows_sampled": got["rows_sampled"], "pass_rate": got["pass_rate"], "reached_target": got["reached_target"],
            "filtered": len(got["rows"]), "seconds": got.get("seconds"),
            "reply_tokens": np.percentile(got["reply_tokens"], [10, 50, 90]).tolist() if got["reply_tokens"] else None}
        return got

    def numbers(self, log) -> list[list[str]]:
        cfg, key = self.cfg, self.store.phase_key(NUMBERS, self.fields)
        info = self.store.json(f"numbers_info-{key}")
        if info is None:
            log("measuring the paper prompts' pass rate without prefill")
            probe_cfg = dataclasses.replace(cfg, gen_batch=cfg.probe_rows)
            plain = sampler.collect_numbers(self.text, self.gd_full, self.state(self.base), None,
                                            self.streams.key("pass_rate_probe"), probe_cfg, prefill=False,
                                            target=cfg.probe_rows + 1, max_rows=cfg.probe_rows, log=lambda _: None)
            info = self.store.put(f"numbers_info-{key}", {
                "pass_rate_without_prefill": plain["pass_rate"], "probe_rows": plain["rows_sampled"],
                "prefill": plain["pass_rate"] < cfg.min_pass_rate})
        self.numbers_info = info | {"sources": {}}
        self.data = [{} for _ in range(cfg.teacher_seeds)]
        for k, rows in enumerate(self.sources()):
            for name, params, animal, decoding in rows:
                self.data[k][name] = self._pool(key, k, name, params, animal, decoding, cfg.pool_sequences, 0, log)
        self.base_numbers = self._pool(key, 0, source(BASE_TEACHER, "sampled"), lambda: self.base, None, "sampled",
                                       cfg.proj_sequences, cfg.proj_sequences, log)
        self.sgd_lr = cfg.sgd_lr
        if not self.sgd_lr and any(arm_registry.get(a).optimizer == "sgd" for a in cfg.arms):
            calibration = self.store.json(f"sgd_calibration-{key}-{self.store.phase_key(STUDENTS, self.fields)}")
            if calibration is None:
                calibration = chat_students.calibrate_sgd(self, self.sources()[0][0][0], log)
                self.store.put(f"sgd_calibration-{key}-{self.store.keys['students']}", calibration)
            self.numbers_info["sgd_calibration"], self.sgd_lr = calibration, calibration["sgd_lr"]
        return [[name for name, *_ in rows] for rows in self.sources()]

    def students(self, units, log) -> list[dict]:
        key = self.store.phase_key(STUDENTS, self.fields)
        out = []
        for n, u in enumerate(units):
            name = f"student-{key}-{u.base}-{_slug(u.arm.name)}-{_slug(u.teacher)}-{u.seed}"
            got = self.store.json(name)
            if got is None:
                log(f"student {n + 1}/{len(units)}: {u.arm.name} on {u.teacher} numbers, replicate {u.base}, seed {u.seed}")
                got = self.store.put(name, chat_students.train_one(self, u))
            out.append(chat_tables.student_record(got, list(self.animals)))
        return out

    def projection(self, log) -> dict:
        key = self.store.phase_key(PROJECTION, self.fields)
        got = self.store.json(f"projection-{key}")
        if got is None:
            log("projections (Theorem 1)")
            got = self.store.put(f"projection-{key}", run_projection(self))
        return got

    def contrasts(self) -> dict:
        return chat_tables.contrasts(self.cfg)

    def tables(self, out: dict) -> dict:
        return chat_tables.tables(self, out)

    def summary(self, out: dict) -> str:
        return chat_tables.summary(self.cfg, out)
