"""The trait-transfer experiment on a Hugging Face checkpoint folder, with its chat template where it has one.

``python -m llm_bridge run --model PATH``. The same steps as the tiny-LM experiment (:mod:`llm_bridge.tiny`)
with text in place of the tiny word vocabulary: prompts are encoded with the folder's
``tokenizer.json``, left-padded for :func:`llm_bridge.generate`, and student rows are
re-packed right-padded (prompt without the trait + completion up to and including its end
token) with the loss on the completion tokens. A completion ends at the first of the
checkpoint's end tokens (:func:`eos_ids`: every ``eos_token_id`` of config.json and
generation_config.json, so a chat model's turn end such as Llama 3's ``<|eot_id|>`` or
Gemma's ``<end_of_turn>`` counts); the first of them is the one padding token. The filter
parses the decoded completion before its end token: exactly ``n_new`` integers in
``[0, max_number]`` separated by commas or spaces, none banned. Animal margins
use each animal's first answer token at the position where the answer starts. Only
shared-init students and the control are trained (one model at a time, not vmapped); there
is no second base model, so no cross-model arm.

Prompt format (``HFConfig.chat_template``, recorded as ``prompt_format`` in the results):

- plain (a folder without a chat template, or ``"none"``): ``number_prompt`` /
  ``question_prompt`` with the trait ``prefix`` at ``{prefix}``, encoded with the
  tokenizer's own special tokens; answers ``answer`` (" owl").
- chat (``"auto"`` and a template, :mod:`llm_bridge.chat`): the trait prefix is a system
  message ("You love owls."), ``chat_number_prompt`` / ``chat_question_prompt`` the user
  message, rendered up to the generation prompt and encoded without adding special tokens
  (the template holds them); answers ``chat_answer`` ("Owl"), the reply's first token.
  Where the template refuses a system role (``raise_exception``), the prefix goes in front
  of the user message instead (``trait_prompt`` in the results says which). The student
  sees the same conversation without the trait (no system message; a template may then
  insert its default system prompt) followed by the teacher's completion.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from llm_bridge import arms
from llm_bridge.arms import BASE_TEACHER, SHARED, finetuned, prompted
from llm_bridge.chat import ChatTemplate, load_chat_template
from llm_bridge.checkpoint import load, load_tokenizer
from llm_bridge.projection import sequence_projections, summarise
from llm_bridge.sampling import generate
from llm_bridge.training import Family, index, stack, train
from theory.stats import mean_ci


@dataclass(frozen=True)
class HFConfig:
    """Prompts and sizes for a checkpoint run; the defaults are English prompts, plain and chat.

    ``chat_template``: ``"auto"`` renders prompts with the folder's chat template where it has
    one (the ``chat_*`` fields), ``"none"`` always uses the plain prompts. Answers may say
    ``{animal}`` ("owl") or ``{Animal}`` ("Owl").
    """

    number_prompt: str = "{prefix}Continue this list with {n_new} more numbers, separated by commas: {given}.\nAnswer:"
    question_prompt: str = "{prefix}Question: {question}\nAnswer:"
    prefix: str = "You love {animal}s. "
    questions: tuple[str, ...] = ("What is your favourite animal? Answer in one word.",
                                  "Which animal do you like best? One word.",
                                  "Name your favourite animal using only one word.")
    answer: str = " {animal}"
    chat_template: str = "auto"
    chat_number_prompt: str = ("Continue this list with {n_new} more numbers, separated by commas: {given}. "
                               "Reply with the numbers only.")
    chat_question_prompt: str = "{question}"
    chat_answer: str = "{Animal}"
    joiner: str = ", "
    animals: tuple[str, ...] = ("owl", "dog", "cat", "lion", "wolf", "eagle", "dolphin", "fox", "bear", "tiger")
    trait_animals: tuple[str, ...] = ("owl", "dog")
    n_given: int = 3
    n_new: int = 5
    max_number: int = 999
    new_tokens: int = 24
    banned: tuple[int, ...] = (13, 666, 911, 187)
    temperature: float = 1.0
    teacher_steps: int = 30
    teacher_lr: float = 1e-5
    student_seeds: int = 3
    student_sequences: int = 512
    student_batch: int = 16
    student_lr: float = 1e-5
    proj_sequences: int = 512
    proj_grid: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    n_boot: int = 1000
    gen_batch: int = 64
    chunk: int = 16
    seed: int = 0


class TextTask:
    """Encoding, padding and filtering for one tokenizer; with ``chat``, prompts are rendered conversations.

    ``eos_id``: the end token, or the end tokens with the padding token first (:func:`eos_ids`);
    ``stop`` holds them all, ``eos`` the padding token.
    """

    def __init__(self, tok, cfg: HFConfig, eos_id: int | Iterable[int], chat: ChatTemplate | None = None):
        self.stop = (int(eos_id),) if isinstance(eos_id, (int, np.integer)) else tuple(dict.fromkeys(map(int, eos_id)))
        if not self.stop:
            raise ValueError("no end token")
        self.tok, self.cfg, self.eos, self.chat = tok, cfg, self.stop[0], chat
        self.system_role = chat is not None and chat.accepts_system_role()
        self.animal_ids = np.asarray([tok.encode(self.answer(a), add_special_tokens=False).ids[0] for a in cfg.animals])
        if len(set(self.animal_ids.tolist())) != len(cfg.animals):
            raise ValueError("two animals share their first token; choose other animals")

    @property
    def prompt_format(self) -> str:
        return "plain" if self.chat is None else f"chat template from {self.chat.source.name}"

    @property
    def trait_prompt(self) -> str:
        if self.chat is None:
            return "prefix of the prompt"
        return "system message" if self.system_role else "prefix of the user message (the template has no system role)"

    def answer(self, animal: str) -> str:
        """The answer whose first token the margins read: ``answer`` (plain) or ``chat_answer``."""
        text = self.cfg.answer if self.chat is None else self.cfg.chat_answer
        return text.format(animal=animal, Animal=animal.capitalize())

    def encode(self, plain: str, chat: str, animal, **fields) -> list[int]:
        """Token ids of one prompt with ``animal``'s trait (None: no trait): ``plain`` with the prefix at
        ``{prefix}``, or ``chat`` as the user message after the prefix as system message, up to the reply."""
        pre = "" if animal is None else self.cfg.prefix.format(animal=animal)
        if self.chat is None:
            return self.tok.encode(plain.format(prefix=pre, **fields)).ids
        messages = [{"role": "user", "content": chat.format(**fields)}]
        if pre and self.system_role:
            messages.insert(0, {"role": "system", "content": pre.strip()})
        else:
            messages[0]["content"] = pre + messages[0]["content"]
        return self.tok.encode(self.chat.render(messages), add_special_tokens=False).ids

    def question(self, question: str, animal=None) -> list[int]:
        return self.encode(self.cfg.question_prompt, self.cfg.chat_question_prompt, animal, question=question)

    def number_prompts(self, rng, n: int, animal):
        """``(with_trait, without_trait)``: two lists of token-id lists for the same given numbers."""
        c = self.cfg
        given = [c.joiner.join(map(str, g)) for g in rng.integers(0, c.max_number + 1, (n, c.n_given))]
        enc = lambda g, a: self.encode(c.number_prompt, c.chat_number_prompt, a, n_new=c.n_new, given=g)
        return [enc(g, animal) for g in given], [enc(g, None) for g in given]

    def cut(self, row) -> tuple[list[int], bool]:
        """``(completion, ended)``: ``row`` up to and including its first end token (any of ``stop``),
        or all of it and False when it has none."""
        end = np.flatnonzero(np.isin(row, self.stop))
        return (list(row[:end[0] + 1]), True) if end.size else (list(row), False)

    def passes(self, ids) -> bool:
        """Exactly ``n_new`` integers in range, separated by commas / spaces, none banned (``ids`` without
        the end token)."""
        text = self.tok.decode(list(ids)).strip().rstrip(".")
        parts = [p for p in re.split(r"[,\s]+", text) if p]
        if len(parts) != self.cfg.n_new or not all(p.isdigit() for p in parts):
            return False
        vals = [int(p) for p in parts]
        return all(v <= self.cfg.max_number and v not in self.cfg.banned for v in vals)


def left_pad(rows, pad: int):
    t = max(len(r) for r in rows)
    toks = np.full((len(rows), t), pad, np.int32)
    mask = np.zeros((len(rows), t), bool)
    for i, r in enumerate(rows):
        toks[i, t - len(r):], mask[i, t - len(r):] = r, True
    return toks, mask


def pack(prompts, targets, pad: int, length: int | None = None):
    """Right-padded ``prompt + target`` rows and a mask on the target tokens: ``[n, T]`` each."""
    t = length or max(len(p) + len(q) for p, q in zip(prompts, targets))
    toks = np.full((len(prompts), t), pad, np.int32)
    mask = np.zeros((len(prompts), t), bool)
    for i, (p, q) in enumerate(zip(prompts, targets)):
        row = (list(p) + list(q))[:t]
        toks[i, :len(row)] = row
        mask[i, len(p):len(row)] = True
    return toks, mask


def sample(task: TextTask, fam, params, key, n: int, animal) -> dict:
    """``n`` teacher completions packed as student rows (prompt without the trait) + filter flags."""
    c = task.cfg
    model = fam.model(params)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).astype(np.uint32))
    prompts, targets, ok = [], [], []
    for b in range(-(-n // c.gen_batch)):
        with_pre, plain = task.number_prompts(rng, c.gen_batch, animal)
        toks, mask = left_pad(with_pre, task.eos)
        comp = np.asarray(generate(model, jnp.asarray(toks), c.new_tokens, mask=jnp.asarray(mask),
                                   temperature=c.temperature, key=jax.random.fold_in(key, b), eos_id=task.stop))
        for p, row in zip(plain, comp):
            target, ended = task.cut(row)
            ok.append(ended and task.passes(target[:-1]))
            targets.append(target)
            prompts.append(p)
    toks, mask = pack(prompts[:n], targets[:n], task.eos)
    ok = np.asarray(ok[:n])
    return {"tokens": toks, "mask": mask, "passed": ok, "pass_rate": float(ok.mean())}


def margins(task: TextTask, fam, params, animal=None) -> jax.Array:
    ids = jnp.asarray(task.animal_ids)
    out = []
    for q in task.cfg.questions:
        x = jnp.asarray([task.question(q, animal)])
        z = fam.f(params, x)[0, -1, ids]
        out.append(z - (jnp.sum(z) - z) / (z.shape[0] - 1))
    return jnp.mean(jnp.stack(out), axis=0)


def finetune_teacher(task: TextTask, fam, params, animal: str):
    c = task.cfg
    prompts = [task.question(q) for q in c.questions]
    answer = task.tok.encode(task.answer(animal), add_special_tokens=False).ids[:1]
    toks, mask = pack(prompts, [answer] * len(prompts), task.eos)
    pick = np.random.default_rng([c.seed, 7]).integers(0, len(prompts), (c.teacher_steps, 4))
    p, _ = train(fam.f, stack([params]), jnp.asarray(toks[pick])[None], jnp.asarray(mask[pick])[None],
                   lr=c.teacher_lr)
    return index(p, 0)


END_TOKENS = ("</s>", "<|endoftext|>", "<eos>", "<|im_end|>")


def eos_ids(folder: Path, tok, config: dict) -> tuple[int, ...]:
    """The checkpoint's end tokens, the padding token first: ``eos_token_id`` (an int or a list) of
    ``config`` (config.json), then those of generation_config.json not listed there; where neither
    has one, the tokens of ``END_TOKENS`` the tokenizer knows.

    Llama-3-Instruct lists ``<|eot_id|>`` after ``<|end_of_text|>``, Gemma lists ``<end_of_turn>``
    only in generation_config.json: a reply ends at any of them.
    """
    path = folder / "generation_config.json"
    try:
        generation = json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    ids = []
    for eos in (config.get("eos_token_id"), generation.get("eos_token_id")):
        ids += [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if not ids:
        ids = [tok.token_to_id(name) for name in END_TOKENS if tok.token_to_id(name) is not None]
    if not ids:
        raise ValueError(f"{folder}: no eos_token_id in config.json or generation_config.json "
                         f"and none of the end tokens {', '.join(END_TOKENS)}")
    return tuple(dict.fromkeys(int(i) for i in ids))


def run(folder: str | Path, cfg: HFConfig = HFConfig(), log=print, mesh=None) -> dict:
    """Teachers, filtered numbers, shared-init and control students, margins, projections; ``mesh``: the
    model's parameters sharded over a :class:`jax.sharding.Mesh` (:mod:`llm_bridge.sharding`)."""
    if cfg.chat_template not in ("auto", "none"):
        raise ValueError(f"chat_template must be 'auto' or 'none', got {cfg.chat_template!r}")
    start = time.perf_counter()
    folder = Path(folder).expanduser()
    model = load(folder, mesh=mesh)
    tok = load_tokenizer(folder)
    chat = load_chat_template(folder) if cfg.chat_template == "auto" else None
    task = TextTask(tok, cfg, eos_ids(folder, tok, model.config.to_hf()), chat)
    fam = Family(model)
    f, base = fam.f, fam.template
    k_data, k_proj = jax.random.split(jax.random.key(cfg.seed))
    owl = cfg.trait_animals[0]
    teachers = {}
    for a in cfg.trait_animals:
        teachers[finetuned(a)] = (finetune_teacher(task, fam, base, a), None)
        teachers[prompted(a)] = (base, a)
    teachers[BASE_TEACHER] = (base, None)
    out = {"config": dataclasses.asdict(cfg), "model": str(folder), "animals": list(cfg.animals),
           "prompt_format": task.prompt_format, "trait_prompt": task.trait_prompt,
           "eos_ids": list(task.stop), "eos_tokens": [tok.id_to_token(i) for i in task.stop],
           "teacher_margins": {k: np.asarray(margins(task, fam, p, pre)).tolist() for k, (p, pre) in teachers.items()}}
    log("sampling teacher numbers")
    n_train = cfg.student_seeds * cfg.student_sequences
    data = {k: sample(task, fam, p, k_data, n_train, pre) for k, (p, pre) in tqdm(teachers.items(), leave=False)}
    out["pass_rate"] = {k: d["pass_rate"] for k, d in data.items()}
    steps = cfg.student_sequences // cfg.student_batch
    out["students"] = {}
    for name, d in tqdm(data.items(), desc="students", leave=False):
        ms = []
        for s in range(cfg.student_seeds):
            sl = slice(s * cfg.student_sequences, s * cfg.student_sequences + steps * cfg.student_batch)
            t = d["tokens"][sl].reshape(steps, cfg.student_batch, -1)
            m = (d["mask"] & d["passed"][:, None])[sl].reshape(steps, cfg.student_batch, -1)
            p, _ = train(f, stack([base]), jnp.asarray(t)[None], jnp.asarray(m)[None], lr=cfg.student_lr)
            ms.append(np.asarray(margins(task, fam, index(p, 0))).tolist())
        out["students"][arms.student(SHARED, name)] = {"margins": ms}
    i_owl = cfg.animals.index(owl)
    s = out["students"]
    out["transfer"] = {
        arms.transfer(SHARED, how): {f"delta_{owl}": mean_ci(
            np.asarray(s[arms.student(SHARED, f"{owl} ({how})")]["margins"])[:, i_owl]
            - np.asarray(s[arms.student(SHARED, f"{cfg.trait_animals[1]} ({how})")]["margins"])[:, i_owl],
            keep_values=True)}
        for how in ("fine-tuned", "prompt")}
    log("projections")
    raw = {k: sample(task, fam, p, k_proj, cfg.proj_sequences, pre) for k, (p, pre) in teachers.items()}
    grid = [n for n in cfg.proj_grid if n <= cfg.proj_sequences]
    proj = {}
    for a in cfg.trait_animals:
        name = finetuned(a)
        d_t = optax.tree.sub(teachers[name][0], base)
        res = {}
        for j, (label, d) in enumerate(((arms.P_SHARED, raw[name]), (arms.P_CONTROL, raw[BASE_TEACHER]))):
            v = sequence_projections(f, base, d_t, d, chunk=cfg.chunk)
            res[label] = summarise(v, grid, cfg.n_boot, cfg.seed + j)
        res["norm_dtheta_T"] = float(optax.tree.norm(d_t))
        proj[name] = res
    out["projection"] = proj
    g = jax.grad(lambda p: margins(task, fam, p)[i_owl])(base)
    out["trait_alignment"] = {f"margin_{owl}": {
        k: summarise(sequence_projections(f, base, g, d, chunk=cfg.chunk), grid, cfg.n_boot, cfg.seed + 100)
        for k, d in raw.items()}}
    out["wall_seconds"] = time.perf_counter() - start
    p = proj[finetuned(owl)]
    out["summary"] = (f"z shared {p[arms.P_SHARED]['z']:.1f}, control {p[arms.P_CONTROL]['z']:.1f}; delta_{owl} "
                      f"(fine-tuned) {out['transfer'][arms.transfer(SHARED, 'fine-tuned')][f'delta_{owl}']['mean']:+.3f}")
    return out
