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
from llm_bridge.experiment.text import NUMBER_PROMPT, Text, given_numbers


@partial(jax.jit, static_argnames=("graphdef", "slots", "greedy"))
def _prefill(graphdef, state, prefix, rest, mask, key, temperature, *, slots, greedy):
    model = nnx.merge(graphdef, state)
    logits, cache = prefixed_logits(model, prefix, rest, mask, slots - prefix.shape[1] - rest.shape[1])
    return _pick(logits[:, -1], key, temperature, greedy), cache


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


def sample_replies(text: Text, graphdef, state, prompts: list[list[int]], key, cfg,
                   greedy: bool = False) -> list[tuple[list[int], bool]]:
    """Replies to ``prompts`` (token-id lists), each ``(tokens before the end token, finished)``.

    One prefill (the shared prompt prefix computed once), then ``chunk_steps`` decode steps at a
    time; between chunks, rows that finished or can no longer pass the filter leave the batch (the
    remaining rows are packed into the smallest power-of-two batch that holds them). A row's
    reply is what it sampled up to its end token; a row without one after ``new_tokens`` tokens
    (or dropped as hopeless) is unfinished.
    """
    prefix, rest, real = split_rows(prompts, text.pad, left=True)
    slots = prefix.shape[1] + rest.shape[1] + cfg.new_tokens
    temp = jnp.float32(max(cfg.temperature, 1e-6))
    first, cache = _prefill(graphdef, state, jnp.asarray(prefix), jnp.asarray(rest), jnp.asarray(real),
                            jax.random.fold_in(key, 0), temp, slots=slots, greedy=greedy)
    out = [[int(t)] for t in np.asarray(first)]
    done = [None] * len(prompts)
    live = list(range(len(prompts)))
    tok = first
    stop = set(text.stop)
    rows_in_cache = len(prompts)
    for c in range(-(-(cfg.new_tokens - 1) // cfg.chunk_steps)):
        keep = []
        for j, i in enumerate(live):
            hit = [k for k, t in enumerate(out[i]) if t in stop]
            if hit:
                done[i] = (out[i][:hit[0]], True)
            elif len(out[i]) >= cfg.new_tokens or not text.alive(text.tok.decode(out[i])):
                done[i] = (out[i], False)
            else:
                keep.append(j)
        if not keep:
            break
        size = min(rows_in_cache, max(8, 1 << (len(keep) - 1).bit_length()))
        if size != rows_in_cache or keep != list(range(len(live))):
            idx = np.asarray(keep + [keep[0]] * (size - len(keep)))
            cache = jax.tree.map(lambda a: a if a.ndim == 0 else a[idx], cache)
            tok, rows_in_cache = tok[idx], size
            live = [live[j] for j in keep]
        steps = min(cfg.chunk_steps, cfg.new_tokens - len(out[live[0]]))
        new, tok, cache = _decode(graphdef, state, tok, cache, jax.random.fold_in(key, c + 1), temp,
                                  steps=steps, greedy=greedy)
        for i, row in zip(live, np.asarray(new)):
            out[i].extend(int(t) for t in row)
    for i in range(len(prompts)):
        if done[i] is None:
            hit = [k for k, t in enumerate(out[i]) if t in stop]
            done[i] = (out[i][:hit[0]], True) if hit else (out[i], False)
    return done


def collect_numbers(text: Text, graphdef, state, animal, key, cfg, prefill: bool, target: int,
                    max_rows: int, log=print, keep_raw: int = 0) -> dict:
    """Sample until ``target`` replies pass the filter (or ``max_rows`` rows): the student rows (the
    conversation without the trait, the prefill if any, the reply and its end token). ``keep_raw``:
    also keep the first rows as sampled, before the filter (a reply cut where sampling stopped it)."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).astype(np.uint32))
    kept, raw, rows_seen = [], [], 0
    b = 0
    while len(kept) < target and rows_seen < max_rows:
        given = given_numbers(rng, cfg.gen_batch)
        pre = [g + ", " if prefill else "" for g in given]
        prompts = [text.conversation(NUMBER_PROMPT.format(given=g), animal, p) for g, p in zip(given, pre)]
        replies = sample_replies(text, graphdef, state, prompts, jax.random.fold_in(key, b), cfg)
        for g, p, (reply, finished) in zip(given, pre, replies):
            rows_seen += 1
            student = text.conversation(NUMBER_PROMPT.format(given=g), None, p)
            if len(raw) < keep_raw:
                raw.append((student, len(student), reply + ([text.pad] if finished else [])))
            if finished and text.passes(text.tok.decode(reply)):
                kept.append((student, len(student), reply + [text.pad]))
        b += 1
        log(f"  {len(kept)} / {target} filtered after {rows_seen} rows")
    passed = len(kept)
    kept = kept[:target]
    return {"rows": [s + r for s, _, r in kept], "starts": [n for _, n, _ in kept], "rows_sampled": rows_seen,
            "raw_rows": [s + r for s, _, r in raw], "raw_starts": [n for _, n, _ in raw],
            "passed": passed, "pass_rate": passed / max(rows_seen, 1), "reached_target": passed >= target}
