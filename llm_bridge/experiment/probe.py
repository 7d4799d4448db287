"""The one trait metric: per animal, the margin of its score over the mean of the other animals'.

:func:`margins` takes per-question scores ``[Q, A]`` (log-probabilities of each animal's answer, or
anything that differs from them by a per-question constant, such as the logits of one-token
answers) and returns, per animal, ``score_a - mean_{b != a} score_b`` averaged over the questions.
The tiny setup scores its one-token answers by their logits (:mod:`llm_bridge.experiment.tiny`);
the chat setup by exact probabilities (:class:`TraitProbe`: every spelling of each animal, each
continuation token included) in each context.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm_bridge.experiment.batching import NO_POSITIONS, split_rows, tile
from llm_bridge.experiment.text import QUESTIONS, Text


def question_margins(scores, xp=jnp):
    """``[Q, A]``: per question, each animal's score minus the mean of the other animals' scores
    (``scores [Q, A]``; ``xp``: jax.numpy, or numpy for host arrays)."""
    n = scores.shape[-1]
    return scores - (xp.sum(scores, axis=-1, keepdims=True) - scores) / (n - 1)


def column_means(x: np.ndarray) -> np.ndarray:
    """``[A]``: the mean over questions of ``x [Q, A]``, each column summed as a 1-D array (numpy's pairwise
    sum: the rounding of the chat results files, which an ``axis=0`` reduction would not give)."""
    return np.asarray([x[:, a].mean() for a in range(x.shape[1])])


def margins(scores, xp=jnp):
    """``[A]``: :func:`question_margins` averaged over the questions (on the host: :func:`column_means`)."""
    m = question_margins(scores, xp)
    return column_means(m) if xp is np else xp.mean(m, axis=0)


class TraitProbe:
    """Exact P(animal) over paraphrases: one prefill per context, continuation tokens on the cached prompts."""

    def __init__(self, text: Text, cfg):
        if not 1 <= cfg.questions <= len(QUESTIONS):
            raise ValueError(f"questions must be in 1..{len(QUESTIONS)}, got {cfg.questions}")
        self.text, self.cfg = text, cfg
        self.questions = QUESTIONS[:cfg.questions]
        forms = {a: text.forms(a) for a in cfg.animals}
        every = {f for fs in forms.values() for f in fs}
        # prefix-free: a spelling that extends another one is already counted in the shorter one
        self.forms = {a: [f for f in fs if not any(g != f and f[:len(g)] == g for g in every)]
                      for a, fs in forms.items()}
        flat = [(a, f) for a in cfg.animals for f in self.forms[a]]
        self.owner = np.asarray([cfg.animals.index(a) for a, _ in flat])
        self.first = np.asarray([f[0] for _, f in flat])
        # continuation rows: the longest token prefixes (a shorter one is read off a longer row)
        heads = {f[:-1] for _, f in flat if len(f) > 1}
        rows = sorted(h for h in heads if not any(o != h and o[:len(h)] == h for o in heads))
        width = max((len(r) for r in rows), default=1)
        self.cont = np.full((max(len(rows), 1), width), text.pad, np.int32)
        for i, r in enumerate(rows):
            self.cont[i, :len(r)] = r
        # (spelling, continuation row, position, token) for every token of a spelling after its first
        reads = [(j, next(i for i, r in enumerate(rows) if r[:len(f) - 1] == f[:-1]), k - 1, f[k])
                 for j, (_, f) in enumerate(flat) for k in range(1, len(f))]
        self.reads = np.asarray(reads or [(0, 0, 0, 0)], np.int32).reshape(-1, 4)
        self.has_multi = bool(reads)

    def prompts(self, context: str, animal: str | None) -> list[list[int]]:
        return [self.text.question(q, context, animal) for q in self.questions]

    def probs(self, graphdef, state, context: str, animal: str | None = None) -> np.ndarray:
        """``[questions, animals]``: P(reply starts with the animal) for each paraphrase."""
        prefix, rest, real = split_rows(self.prompts(context, animal), self.text.pad, left=True)
        lp0, more = _form_logprobs(graphdef, state, jnp.asarray(prefix), jnp.asarray(rest), jnp.asarray(real),
                                   jnp.asarray(self.first), jnp.asarray(self.cont), jnp.asarray(self.reads[:, 1:]))
        logp = np.asarray(lp0, np.float64)
        if self.has_multi:
            np.add.at(logp.T, self.reads[:, 0], np.asarray(more, np.float64).T)
        p = np.zeros((logp.shape[0], len(self.cfg.animals)))
        np.add.at(p.T, self.owner, np.exp(logp).T)
        return p


@partial(jax.jit, static_argnames=("graphdef",))
def _form_logprobs(graphdef, state, prefix, rest, real, first, cont, reads):
    """``([Q, F], [Q, N])``: after each question prompt, the log-probability of each spelling's first
    token, and of each read ``(row, position, token)`` of the continuation rows ``cont [R, L]`` run on
    the cached prompt (the token at ``position + 1`` of a spelling whose earlier tokens are the row's)."""
    model = nnx.merge(graphdef, state)
    q, r = rest.shape[0], cont.shape[0]
    _, cache = model.forward(prefix, None, model.init_cache(1, prefix.shape[1] + rest.shape[1] + cont.shape[1]),
                             at=NO_POSITIONS)
    logits, cache = model.forward(rest, real, tile(cache, q), at=jnp.full((q, 1), rest.shape[1] - 1, jnp.int32))
    lp0 = jax.nn.log_softmax(logits[:, 0].astype(jnp.float32))[:, first]             # [Q, F]
    cache = jax.tree.map(lambda a: a if a.ndim == 0 else jnp.repeat(a, r, axis=0), cache)
    logits, _ = model.forward(jnp.tile(cont, (q, 1)), None, cache)                     # [Q*R, L, V]
    logits = logits.astype(jnp.float32).reshape(q, r, cont.shape[1], -1)
    row, pos, tok = reads[:, 0], reads[:, 1], reads[:, 2]
    lse = jax.nn.logsumexp(logits[:, row, pos], axis=-1)                              # [Q, N]
    return lp0, logits[:, row, pos, tok] - lse


def trait_summary(p: np.ndarray, animals, trait: str) -> dict:
    """Mean over questions of P(animal) for each animal (``p [Q, A]``), and of ``trait``'s margin of
    log-probabilities (:func:`question_margins`)."""
    i = animals.index(trait)
    margin = question_margins(np.log(np.maximum(p, 1e-300)), np)[:, i]
    return {"p": dict(zip(animals, p.mean(axis=0).tolist())), f"margin_{trait}": float(margin.mean()),
            f"p_{trait}": float(p[:, i].mean())}
