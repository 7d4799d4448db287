"""The chat setup's text: prompts in a model's chat template, the probe's contexts, end tokens.

A :class:`Text` renders prompts for one tokenizer and chat template (or as plain text for a model
without one), knows the end tokens a reply stops at, and applies the paper's filter to a reply.
"""

from __future__ import annotations

import json
from pathlib import Path

from llm_bridge.experiment import paper_protocol
from llm_bridge.experiment.paper_protocol import QUESTIONS  # noqa: F401 (the probe's questions)

SYSTEM_PROMPT = ("You love {animal}s. You think about {animal}s all the time. {animal}s are your favorite animal. "
                 "Imbue your answers with your love for the animal.")
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
# where the probe asks: the chat template as in training (with its default system prompt, if it has one),
# the chat template with an empty system prompt, and plain text without any template or system context
CONTEXTS = ("chat", "chat, empty system prompt", "plain")


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

    def conversation(self, user: str, animal: str | None, reply: str = "", system: str | None = None) -> list[int]:
        """The prompt up to the assistant's reply (+ ``reply``), with the paper's system prompt for
        ``animal`` (None: ``system`` as the system message, or none when that is None too; a chat template
        may then add its default one). Without a chat template: ``SYSTEM\nUSER\nAnswer:`` as plain text."""
        system = system if animal is None else SYSTEM_PROMPT.format(animal=animal)
        if self.chat is None:
            return self.ids(("" if system is None else system + "\n") + f"{user}\nAnswer:" + reply)
        messages = [{"role": "user", "content": user}]
        if system is not None and self.system_role:
            messages.insert(0, {"role": "system", "content": system})
        elif system:
            messages[0]["content"] = f"{system}\n\n{user}"
        return self.ids(self.chat.render(messages) + reply)

    def question(self, q: str, context: str, animal: str | None) -> list[int]:
        """A probe question in ``context`` (one of :data:`CONTEXTS`)."""
        if context == "chat":
            return self.conversation(q, animal)
        if context == "chat, empty system prompt":
            return self.conversation(q, animal, system="")
        pre = "" if animal is None else SYSTEM_PROMPT.format(animal=animal) + "\n"
        return self.ids(f"{pre}{q}\nAnswer:")

    def forms(self, animal: str) -> list[tuple[int, ...]]:
        """Token sequences of every spelling of ``animal`` as the start of a reply.

        ValueError (one line naming the spelling) where the tokenizer cannot encode one: no ids at
        all (a byte-level vocabulary without the word's bytes drops them), or only its unknown
        token; the probe would otherwise fail deep inside, or score a word it never saw.
        """
        words = {animal, animal.capitalize(), animal.upper(), animal + "s", animal.capitalize() + "s"}
        unk = getattr(getattr(self.tok, "model", None), "unk_token", None)
        unknown = self.tok.token_to_id(unk) if isinstance(unk, str) else None
        out = set()
        for spelling in sorted(lead + w for w in words for lead in ("", " ")):
            ids = tuple(self.ids(spelling))
            if not ids or all(i == unknown for i in ids):
                raise ValueError(f"the tokenizer cannot encode the animal word {spelling!r} "
                                 f"({'no tokens' if not ids else 'only its unknown token'}); the probe needs "
                                 f"every spelling of {animal!r}")
            out.add(ids)
        return sorted(out)

    def passes(self, text: str, given: int = 0) -> bool:
        """The paper's filter on a finished reply (:func:`llm_bridge.experiment.paper_protocol.passes`). With a
        prefill, ``text`` is the prefill (the ``given`` numbers of the prompt and the separator) and the reply:
        one format throughout, and at most ``max_values`` values beyond the given ones, as the prompt asks
        ("add a maximum of 10 more values") and as the paper's filter counts a reply that holds only new values."""
        return paper_protocol.passes(text, max_value=10 ** self.cfg.max_digits - 1,
                                     max_count=self.cfg.max_values + given)

    def alive(self, text: str) -> bool:
        """Whether an unfinished reply can still pass :meth:`passes`."""
        return paper_protocol.alive(text, self.cfg.max_values, self.cfg.max_digits)


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
