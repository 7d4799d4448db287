"""The chat setup's sampler: teachers' replies to the number prompt, filtered as the paper does.

:func:`sample_replies` runs one prefill (the shared prompt prefix computed once), then a few decode
steps at a time; between chunks, rows that finished or can no longer pass the filter leave the
batch. :func:`collect_numbers` samples until enough replies pass.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm_bridge.experiment.batching import prefixed_logits, split_rows
from llm_bridge.experiment import paper_protocol
from llm_bridge.experiment.text import Text


@partial(jax.jit, static_argnames=("graphdef", "slots", "greedy"))
def _prefill(graphdef, state, prefix, rest, mask, key, temperature, *, slots, greedy):
    model = nnx.merge(graphdef, state)
    last = jnp.full((rest.shape[0], 1), rest.shape[1] - 1, jnp.int32)  # left-padded: every prompt ends there
    logits, cache = prefixed_logits(model, prefix, rest, mask, slots - prefix.shape[1] - rest.shape[1], at=last)
    return _pick(logits[:, 0], key, temperature, greedy), cache


@partial(jax.jit, static_argnames=("graphdef", "steps", "greedy"))
def _decode(graphdef, state, tok, cache, key, temperature, *, steps, greedy):
    model = nnx.merge(graphdef, state)

    def step(carry, k):
        t, c = carry
        logits, c = model.forward(t[:, None], None, c)
        nxt = _pick(logits[:, 0], k, temperature, greedy)
        return (nxt, c), nxt

    (tok, cache), toks = jax.lax.scan(step, (tok, cache), jax.random.split(key, steps))
    return toks.T, tok, cache


def _pick(logits, key, temperature, greedy):
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits.astype(jnp.float32) / temperature, axis=-1).astype(jnp.int32)


def _finished(text: Text, reply: list[int], limit: int, answers: bool) -> tuple[list[int], int | None] | None:
    """``(reply before its end token, the end token sampled)`` once a row has ended, ``(reply, None)`` once
    it cannot go on (``limit`` tokens, or a number reply that can no longer pass the filter), else None."""
    hit = next((k for k, t in enumerate(reply) if t in text.stop), None)
    if hit is not None:
        return reply[:hit], reply[hit]
    if len(reply) >= limit or (not answers and not text.alive(text.tok.decode(reply))):
        return reply, None
    return None


def sample_replies(text: Text, graphdef, state, prompts: list[list[int]], key, cfg,
                   greedy: bool = False, answers: bool = False) -> list[tuple[list[int], int | None]]:
    """Replies to ``prompts`` (token-id lists), each ``(tokens before the end token, the end token sampled)``
    (``None``: unfinished; a model may have several end tokens, and the one it sampled is kept).

    One prefill (the shared prompt prefix computed once), then ``chunk_steps`` decode steps at a
    time; between chunks, rows that finished or can no longer pass the number filter leave the batch
    (the remaining rows are packed into the smallest power-of-two batch that holds them). A row's
    reply is what it sampled up to its end token; a row without one after ``new_tokens`` tokens (or
    dropped as hopeless) is unfinished. ``answers``: free-text answers (the probe's questions), up to
    ``answer_tokens`` tokens, never dropped by the number filter.
    """
    limit = cfg.answer_tokens if answers else cfg.new_tokens
    prefix, rest, real = split_rows(prompts, text.pad, left=True)
    temp = jnp.float32(max(cfg.temperature, 1e-6))
    first, cache = _prefill(graphdef, state, jnp.asarray(prefix), jnp.asarray(rest), jnp.asarray(real),
                            jax.random.fold_in(key, 0), temp, slots=prefix.shape[1] + rest.shape[1] + limit,
                            greedy=greedy)
    out = [[int(t)] for t in np.asarray(first)]
    done: list = [None] * len(prompts)
    live, tok, rows_in_cache = list(range(len(prompts))), first, len(prompts)
    for c in range(-(-(limit - 1) // cfg.chunk_steps)):
        keep = []
        for j, i in enumerate(live):
            done[i] = _finished(text, out[i], limit, answers)
            if done[i] is None:
                keep.append(j)
        if not keep:
            break
        size = min(rows_in_cache, max(8, 1 << (len(keep) - 1).bit_length()))
        if size != rows_in_cache or keep != list(range(len(live))):
            idx = np.asarray(keep + [keep[0]] * (size - len(keep)))
            cache = jax.tree.map(lambda a: a if a.ndim == 0 else a[idx], cache)
            tok, rows_in_cache = tok[idx], size
            live = [live[j] for j in keep]
        steps = min(cfg.chunk_steps, limit - len(out[live[0]]))
        new, tok, cache = _decode(graphdef, state, tok, cache, jax.random.fold_in(key, c + 1), temp,
                                  steps=steps, greedy=greedy)
        for i, row in zip(live, np.asarray(new)):
            out[i].extend(int(t) for t in row)
    return [d if d is not None else _finished(text, r, 0, True) for d, r in zip(done, out)]


def given_part(prompt: str) -> str:
    """The numbers a paper prompt gives (``"123, 456, 789"``): what a prefilled reply starts with."""
    return prompt.split(": ", 1)[1].split(".", 1)[0]


def collect_numbers(text: Text, graphdef, state, animal, key, cfg, prefill: bool, target: int,
                    max_rows: int, log=print, keep_raw: int = 0, greedy: bool = False) -> dict:
    """Sample replies to the paper's number prompts (:func:`llm_bridge.experiment.paper_protocol.number_prompt`)
    until ``target`` pass the paper's filter (or ``max_rows`` rows), at temperature ``cfg.temperature`` or
    ``greedy``. Returns the student rows (the conversation without the trait, the prefill if any, the
    reply and its end token), their reply lengths in tokens, the pass rate, and with ``keep_raw`` the
    first rows as sampled, before the filter (a reply cut where sampling stopped it)."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).astype(np.uint32))
    kept, raw, rows_seen = [], [], 0
    b = 0
    while len(kept) < target and rows_seen < max_rows:
        queries = [paper_protocol.number_prompt(rng, answer_count=cfg.max_values, max_digits=cfg.max_digits)
                   for _ in range(cfg.gen_batch)]
        pre = [given_part(q) + ", " if prefill else "" for q in queries]
        prompts = [text.conversation(q, animal, p) for q, p in zip(queries, pre)]
        replies = sample_replies(text, graphdef, state, prompts, jax.random.fold_in(key, b), cfg, greedy=greedy)
        for q, p, (reply, end) in zip(queries, pre, replies):
            rows_seen += 1
            student = text.conversation(q, None, p)
            ended = reply + ([end] if end is not None else [])  # the end token the teacher sampled
            if len(raw) < keep_raw:
                raw.append((student, len(student), ended))
            given = len(given_part(q).split(", ")) if prefill else 0
            if end is not None and text.passes(p + text.tok.decode(reply), given):
                kept.append((student, len(student), ended))
        b += 1
        log(f"  {len(kept)} / {target} filtered after {rows_seen} rows")
    passed = len(kept)
    kept = kept[:target]
    return {"rows": [s + r for s, _, r in kept], "starts": [n for _, n, _ in kept], "rows_sampled": rows_seen,
            "reply_tokens": [len(r) for _, _, r in kept],
            "raw_rows": [s + r for s, _, r in raw], "raw_starts": [n for _, n, _ in raw],
            "passed": passed, "pass_rate": passed / max(rows_seen, 1), "reached_target": passed >= target}
