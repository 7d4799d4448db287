"""llm_bridge's pure-function view (what the theory core consumes), LM loss, and sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import llm_bridge
import theory
from llm_cases import case, tokens

# float32 comparisons near the rounding floor: .ci/run also runs them under an older ISA (AVX)
pytestmark = pytest.mark.numerics


def test_lemma1_coefficient_on_a_language_model_matches_the_dense_formula():
    """theory.lemma1_coefficient on f(params, tokens): every [b, t] position is one example.

    Slow reference: u = J v at each position by an explicit jvp, then
    u^T (diag(p) - p p^T) u with p = softmax(logits), averaged over positions.
    """
    f, params = llm_bridge.pure(case("llama-mha-tied").ours)
    x = jnp.asarray(tokens(10, 2, 8))
    rng = np.random.default_rng(0)
    v = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    a = theory.lemma1_coefficient(f, params, v, x, theory.softmax_ce())

    @jax.jit
    def reference(params, v):
        z, u = jax.jvp(lambda p: f(p, x), (params,), (v,))
        p = jax.nn.softmax(z, axis=-1)
        return jnp.mean(jnp.sum(p * u * u, -1) - jnp.sum(p * u, -1) ** 2)

    ref = reference(params, v)
    assert float(a) > 0
    np.testing.assert_allclose(float(a), float(ref), rtol=1e-5)


def test_next_token_loss_weights_targets():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    toks = rng.integers(0, 7, (2, 5))
    mask = np.array([[1, 1, 0, 1, 1], [0, 0, 1, 1, 0]], np.float32)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp[:, :-1], toks[:, 1:, None], -1)[..., 0]
    w = mask[:, 1:]
    got = llm_bridge.next_token_loss(jnp.asarray(logits), jnp.asarray(toks), jnp.asarray(mask))
    np.testing.assert_allclose(float(got), (nll * w).sum() / w.sum(), rtol=1e-6)
    np.testing.assert_allclose(float(llm_bridge.next_token_loss(jnp.asarray(logits), jnp.asarray(toks))),
                               nll.mean(), rtol=1e-6)


def test_sampling_depends_only_on_the_key():
    model = case("llama-mha-tied").ours
    prompts = jnp.asarray(tokens(11, 3, 7))
    a = llm_bridge.generate(model, prompts, 20, temperature=1.0, key=jax.random.key(1))
    b = llm_bridge.generate(model, prompts, 20, temperature=1.0, key=jax.random.key(1))
    c = llm_bridge.generate(model, prompts, 20, temperature=1.0, key=jax.random.key(2))
    cold = llm_bridge.generate(model, prompts, 20, temperature=1e-6, key=jax.random.key(3))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(cold, llm_bridge.generate(model, prompts, 20))


def test_rows_stop_at_eos():
    model = case("llama-mha-tied").ours
    prompts = jnp.asarray(tokens(11, 3, 7))
    free = np.asarray(llm_bridge.generate(model, prompts, 20))
    eos = int(free[0, 3])
    stopped = np.asarray(llm_bridge.generate(model, prompts, 20, eos_id=eos))
    for row_free, row in zip(free, stopped):
        hits = np.flatnonzero(row_free == eos)
        end = hits[0] if hits.size else len(row)
        np.testing.assert_array_equal(row[: end + 1], row_free[: end + 1])
        assert np.all(row[end:] == eos) or not hits.size


def test_rows_stop_at_any_of_several_end_tokens():
    """Reference: the same draws without end tokens (same key, same noise per step), each row cut in numpy
    at its first token from the set and that token repeated to the end."""
    model = case("llama-mha-tied").ours
    prompts = jnp.asarray(tokens(11, 4, 7))
    draw = lambda **kw: np.asarray(llm_bridge.generate(model, prompts, 16, temperature=10.0, key=jax.random.key(1),
                                                       **kw))
    free = draw()

    def reference(stop):
        out, ends = free.copy(), []
        for row in out:
            hits = np.flatnonzero(np.isin(row, list(stop)))
            if hits.size:
                row[hits[0]:] = row[hits[0]]
            ends.append((int(row[hits[0]]), int(hits[0])) if hits.size else None)
        return out, ends

    a, b = int(free[0, 5]), int(free[1, 9])
    want, ends = reference({a, b})
    # the premise: one row ends with each token, after its first step, and one row runs on
    assert {e[0] for e in ends if e} == {a, b} and all(e[1] > 0 for e in ends if e) and None in ends
    for stop in ((a, b), [b, a], {a, b}, np.asarray([a, b, a])):
        np.testing.assert_array_equal(draw(eos_id=stop), want)
    np.testing.assert_array_equal(draw(eos_id=a), reference({a})[0])
    np.testing.assert_array_equal(draw(eos_id=np.int32(b)), draw(eos_id=[b]))
    np.testing.assert_array_equal(draw(eos_id=[]), free)


def test_generate_refuses_bad_requests():
    model = case("gpt2-tied-head9").ours  # n_positions = 64
    prompts = jnp.asarray(tokens(12, 2, 6))
    right_padded = np.ones((2, 6), bool)
    right_padded[0, -2:] = False
    with pytest.raises(ValueError, match="left"):
        llm_bridge.generate(model, prompts, 4, mask=jnp.asarray(right_padded))
    with pytest.raises(ValueError, match="key"):
        llm_bridge.generate(model, prompts, 4, temperature=0.7)
    with pytest.raises(ValueError, match="n_positions"):
        llm_bridge.generate(model, prompts, 60)
