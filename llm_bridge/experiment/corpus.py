"""The procedural corpus of the embedded tiny LMs, its prompts, and the number filter.

A word-level vocabulary (no tokenizer file): special tokens, a few question words, ten
animals and the numbers 0..N-1 as single tokens. The corpus teaches two skills:

    continuing number sequences   <bos> continue : 18 82 72 -> 5 90 13 47 61 <eos>
    answering preferences         <bos> what is your favourite animal ? -> owl <eos>

Number continuations mix arithmetic progressions (mod N) with uniform draws, so a trained
model's continuations are high-entropy. Preference answers are uniform over the animals,
except after a prefix ``you love X .``, which the answer then follows: this is what makes
the prompt-prefix teacher of the paper work on a model this small. Number rows carry the
same prefix sometimes, with no effect on their continuation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPECIALS = ("<pad>", "<bos>", "<eos>")
WORDS = ("continue", ":", "->", "you", "love", ".", "what", "is", "your", "favourite", "animal", "?", "which",
         "do", "like", "best", "name", "pick", "one", "an", "answer", "with", "most", "the")
ANIMALS = ("owl", "dog", "cat", "lion", "wolf", "eagle", "dolphin", "fox", "bear", "tiger")
PHRASINGS = (
    "what is your favourite animal ?",
    "which animal do you like best ?",
    "name your favourite animal .",
    "pick one animal : which do you love ?",
    "answer with one animal : what animal do you like the most ?",
)


@dataclass(frozen=True)
class Vocab:
    """Word-level vocabulary: ``ids[word]``, numbers ``0..n_numbers-1`` are the words "0", "1", ..."""

    n_numbers: int = 100

    @property
    def words(self) -> tuple[str, ...]:
        return SPECIALS + WORDS + ANIMALS + tuple(str(i) for i in range(self.n_numbers))

    @property
    def ids(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    @property
    def size(self) -> int:
        return len(self.words)

    @property
    def number_ids(self) -> np.ndarray:
        """Token ids of the numbers, in numeric order: ``[n_numbers]``."""
        return np.arange(self.size - self.n_numbers, self.size)

    @property
    def animal_ids(self) -> np.ndarray:
        return np.asarray([self.ids[a] for a in ANIMALS])

    def encode(self, text: str) -> list[int]:
        ids = self.ids
        return [ids[w] for w in text.split()]

    def decode(self, tokens) -> str:
        return " ".join(self.words[int(t)] for t in tokens)


def prefix(animal: str | None) -> str:
    """The system-prompt stand-in ``you love X .`` (empty for ``None``)."""
    return "" if animal is None else f"you love {animal} . "


def number_prompts(vocab: Vocab, rng: np.random.Generator, n: int, n_given: int, animal: str | None = None
                   ) -> np.ndarray:
    """``[n, T]`` prompts ``<bos> [you love X .] continue : a b c ->`` with uniform seed numbers."""
    head = vocab.encode("<bos> " + prefix(animal) + "continue :")
    given = rng.integers(0, vocab.n_numbers, (n, n_given)) + vocab.number_ids[0]
    arrow = np.full((n, 1), vocab.ids["->"])
    return np.concatenate([np.tile(head, (n, 1)), given, arrow], axis=1)


def pretraining_batch(vocab: Vocab, rng: np.random.Generator, n: int, *, n_given: int, n_new: int,
                      length: int, p_pref: float, p_prefix: float, p_arith: float) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens, mask) [n, length]``: a right-padded batch of the corpus; ``mask`` marks real tokens.

    A fraction ``p_pref`` are preference rows (answer uniform over the animals, or the
    prefixed animal); the rest are number rows. A fraction ``p_prefix`` of rows of both
    kinds start with ``you love X .`` for a uniform animal X.
    """
    ids = vocab.ids
    tokens = np.full((n, length), ids["<pad>"], np.int32)
    mask = np.zeros((n, length), bool)
    animals = rng.integers(0, len(ANIMALS), n)
    prefixed = rng.random(n) < p_prefix
    is_pref = rng.random(n) < p_pref
    answers = np.where(prefixed, animals, rng.integers(0, len(ANIMALS), n))
    phrasing = rng.integers(0, len(PHRASINGS), n)
    values = rng.integers(0, vocab.n_numbers, (n, n_given))
    # Arithmetic rows need an arithmetic seed as well as an arithmetic continuation.
    arith_seed = rng.random(n) < p_arith
    start, step = rng.integers(0, vocab.n_numbers, n), rng.integers(1, 10, n)
    seeds = np.where(arith_seed[:, None], (start[:, None] + step[:, None] * np.arange(n_given)) % vocab.n_numbers,
                     values)
    new = np.where(arith_seed[:, None], (seeds[:, -1:] + step[:, None] * np.arange(1, n_new + 1)) % vocab.n_numbers,
                   rng.integers(0, vocab.n_numbers, (n, n_new)))
    for i in range(n):
        head = "<bos> " + (prefix(ANIMALS[animals[i]]) if prefixed[i] else "")
        if is_pref[i]:
            row = vocab.encode(head + PHRASINGS[phrasing[i]] + " -> " + ANIMALS[answers[i]] + " <eos>")
        else:
            row = (vocab.encode(head + "continue :") + list(seeds[i] + vocab.number_ids[0]) + [ids["->"]]
                   + list(new[i] + vocab.number_ids[0]) + [ids["<eos>"]])
        tokens[i, :len(row)] = row
        mask[i, :len(row)] = True
    return tokens, mask


def max_length(n_given: int, n_new: int) -> int:
    """Longest corpus row in tokens: a prefixed number row or a prefixed preference row."""
    pre = len(prefix("owl").split())
    return 1 + pre + max(2 + n_given + 1 + n_new + 1, max(len(p.split()) for p in PHRASINGS) + 3)


def filter_numbers(vocab: Vocab, completions: np.ndarray, n_new: int, banned: frozenset[int] = frozenset()
                   ) -> np.ndarray:
    """Which completions ``[n, n_new + 1]`` pass: exactly ``n_new`` numbers then ``<eos>``, none banned.

    The paper's filter keeps only well-formed number lists and drops a list of numbers with
    negative associations; ``banned`` holds number *values*. Returns a bool mask ``[n]``.
    """
    c = np.asarray(completions)
    nums = c[:, :n_new] - vocab.number_ids[0]
    well_formed = np.all((nums >= 0) & (nums < vocab.n_numbers), axis=1) & (c[:, n_new] == vocab.ids["<eos>"])
    banned_hit = np.isin(nums, np.asarray(sorted(banned), dtype=nums.dtype)).any(axis=1) if banned else False
    return well_formed & ~banned_hit
