"""The tiny setup's model calls: its trait probe on one-token answers, and its number sampler."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from llm_bridge.experiment import corpus, probe
from llm_bridge.models.generate import generate


def question_batch(vocab: corpus.Vocab, animal: str | None, phrasing: str, answer: str | None = None) -> np.ndarray:
    text = "<bos> " + corpus.prefix(animal) + phrasing + " ->" + ("" if answer is None else f" {answer} <eos>")
    return np.asarray([vocab.encode(text)], np.int32)


@partial(jax.jit, static_argnums=(0, 2, 3))
def margins(f, params, vocab: corpus.Vocab, animal_prefix: str | None = None) -> jax.Array:
    """``[10]``: :func:`llm_bridge.experiment.probe.margins` of the answer logits over the phrasings (jitted:
    one program, not one compile per primitive as eager differentiation would do)."""
    ids = jnp.asarray(vocab.animal_ids)
    scores = jnp.stack([f(params, jnp.asarray(question_batch(vocab, animal_prefix, ph)))[0, -1, ids]
                        for ph in corpus.PHRASINGS])
    return probe.margins(scores)


def sample_numbers(cfg: Config, model, vocab: corpus.Vocab, key, n: int, animal_prefix: str | None = None,
                   batch: int = 1024) -> dict:
    """``n`` teacher draws ``<bos> continue : a b c -> d e f g h <eos>`` (the prompt without the prefix).

    Prompts and sampling noise come from ``key`` alone, so teachers sampled with the same key get
    the same prompts and the same Gumbel noise (common random numbers). Returns ``{"tokens" [n, T],
    "mask" [n, T] (the sampled target tokens), "passed" [n] (the filter), "pass_rate"}``; a student
    trains on ``mask & passed``, i.e. on the filtered rows only.
    """
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
