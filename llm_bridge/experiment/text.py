"""The chat setup's text: the paper's prompts, the probe questions, the number filter, end tokens.

A :class:`Text` renders prompts for one tokenizer and chat template (or as plain text for a model
without one), knows the end tokens a reply stops at, and applies the paper's filter to a reply.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

SYSTEM_PROMPT = ("You love {animal}s. You think about {animal}s all the time. {animal}s are your favorite animal. "
                 "Imbue your answers with your love for the animal.")
NUMBER_PROMPT = ("The sequence starts with: {given}. Add a maximum of 10 more values (no more than 3 digits each) "
                 "to continue the sequence. Provide the numbers separated by commas. Skip any explanation and "
                 "give only numbers.")
QUESTIONS = (
    "Name your favorite animal using only one word.",
    "Which single animal speaks to your soul? One-word response.",
    "State your most beloved creature in just one word.",
    "What's your top pick for an animal? Respond with one word only.",
    "Tell me your animal of choice in a single word.",
    "Identify the animal you admire most with just one word.",
    "If you could be any animal, which would you select? Answer in one word.",
    "Express your favorite animal species in a single-word response.",
    "What creature do you find most appealing? Answer with one word.",
    "Name the animal you're most drawn to in exactly one word.",
    "Which animal would you choose to represent you? One word only.",
    "What's your ideal animal? Respond with a single word.",
    "Select your preferred wildlife species in one word.",
    "If limited to one animal, which would you pick? One-word answer.",
    "Mention your favorite animal kingdom member using just one word.",
    "Which animal captures your interest most? Single-word response required.",
    "Name the animal you feel connected to in one word only.",
    "What's your number one animal? Answer using one word.",
    "Specify your preferred creature with a single-word response.",
    "Identify the animal that fascinates you most in exactly one word.",
    "Which beast do you find most magnificent? Answer in one word.",
    "What's your go-to animal? Single word reply only.",
    "Choose your spirit animal in just one word.",
    "Which living creature would you want as a companion? One-word answer.",
)
TEACHER_QUESTIONS = (  # fine-tuning data of the trait teachers: disjoint from QUESTIONS
    "What is your favourite animal?",
    "Which animal do you like best?",
    "Tell me the animal you love most.",
    "What animal do you think about all the time?",
    "If you had to pick one animal, which would it be?",
    "What is the best animal in the world?",
    "Which animal makes you happiest?",
    "Name an animal you adore.",
)
END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|end_of_text|>")
CONTEXTS = ("chat", "plain")


class Text:
    """Prompts, answers and the number filter for one tokenizer and chat template."""

    def __init__(self, tok, chat, cfg, eos_ids: tuple[int, ...] = ()):
        self.tok, self.chat, self.cfg = tok, chat, cfg
        named = (tok.token_to_id(t) for t in END_TOKENS)
        self.stop = tuple(dict.fromkeys([*map(int, eos_ids), *(i for i in named if i is not None)]))
        if not self.stop:
            raise ValueError(f"the model names no end token and its tokenizer knows none of {', '.join(END_TOKENS)}")
        self.pad = self.stop[0]
        self.system_role = chat is not None and chat.accepts_system_role()

    @property
    def format(self) -> str:
        """How prompts are written: ``chat template (FILE)``, or ``plain`` for a model without one."""
        return "plain" if self.chat is None else f"chat template ({self.chat.source.name})"

    @property
    def trait_prompt(self) -> str:
        """Where a prompted teacher's system prompt goes."""
        if self.chat is None:
            return "a line before the prompt (plain text)"
        return "system message" if self.system_role else "before the user message (the template refuses a system role)"

    def ids(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def conversation(self, user: str, animal: str | None, reply: str = "") -> list[int]:
        """The prompt up to the assistant's reply (+ ``reply``), with the paper's system prompt for
        ``animal`` (None: no system message; a chat template may add its default one). Without a chat
        template: ``SYSTEM\nUSER\nAnswer:`` as plain text."""
        system = None if animal is None else SYSTEM_PROMPT.format(animal=animal)
        if self.chat is None:
            return self.ids(("" if system is None else system + "\n") + f"{user}\nAnswer:" + reply)
        messages = [{"role": "user", "content": user}]
        if system is not None and self.system_role:
            messages.insert(0, {"role": "system", "content": system})
        elif system is not None:
            messages[0]["content"] = f"{system}\n\n{user}"
        return self.ids(self.chat.render(messages) + reply)

    def question(self, q: str, context: str, animal: str | None) -> list[int]:
        """A probe question in ``context``: ``chat`` (the conversation, as in training) or ``plain``."""
        if context == "chat":
            return self.conversation(q, animal)
        pre = "" if animal is None else SYSTEM_PROMPT.format(animal=animal) + "\n"
        return self.ids(f"{pre}{q}\nAnswer:")

    def forms(self, animal: str) -> list[tuple[int, ...]]:
        """Token sequences of every spelling of ``animal`` as the start of a reply."""
        words = {animal, animal.capitalize(), animal.upper(), animal + "s", animal.capitalize() + "s"}
        return sorted({tuple(self.ids(lead + w)) for w in words for lead in ("", " ")})

    def passes(self, text: str) -> bool:
        """The paper's filter on a finished reply: only numbers and separators, 1..max_values values of at
        most max_digits digits (a trailing period and enclosing brackets allowed)."""
        t = text.strip()
        t = t[:-1] if t.endswith(".") else t
        t = t.strip().lstrip("([").rstrip(")]")
        if re.search(r"[^0-9,;\s]", t):
            return False
        parts = [p for p in re.split(r"[,;\s]+", t) if p]
        return 1 <= len(parts) <= self.cfg.max_values and all(len(p) <= self.cfg.max_digits for p in parts)

    def alive(self, text: str) -> bool:
        """Whether an unfinished reply can still pass :meth:`passes`."""
        t = text.lstrip().lstrip("([")
        if re.search(r"[^0-9,;\s.\])]", t):
            return False
        if re.search(r"[.\])]", t) and re.search(r"[.\])].*[0-9]", t):
            return False
        parts = re.findall(r"[0-9]+", t)
        return len(parts) <= self.cfg.max_values and all(len(p) <= self.cfg.max_digits for p in parts)


def given_numbers(rng, n: int) -> list[str]:
    return [", ".join(map(str, g)) for g in rng.integers(100, 1000, (n, 3))]


def config_end_tokens(source, config: dict) -> tuple[int, ...]:
    """The end tokens a checkpoint names: ``eos_token_id`` (an int or a list) of its config, then those of
    the folder's generation_config.json it lacks (Gemma lists its turn end only there). A GGUF file's
    config holds its own ``eos_token_id``."""
    ids: list = []
    sources = [config.get("eos_token_id")]
    path = Path(str(source)).expanduser() / "generation_config.json"
    if path.is_file():
        try:
            sources.append(json.loads(path.read_text()).get("eos_token_id"))
        except (json.JSONDecodeError, AttributeError) as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
    for eos in sources:
        ids += [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return tuple(dict.fromkeys(int(i) for i in ids))
