"""llm_bridge against transformers' PyTorch models: logits, greedy decoding, gradients.

Every case (tests/llm_cases.py) is a tiny random model saved with ``save_pretrained`` and
loaded with ``llm_bridge.load``. Errors are ``max |ours - ref| / max |ref|`` in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import llm_bridge
from llm_cases import CASES, case, rel_err, tokens

# float32 comparisons near the rounding floor: .ci/run also runs them under an older ISA (AVX)
pytestmark = pytest.mark.numerics

torch = pytest.importorskip("torch")

NAMES = list(CASES)
ONE_PER_FEATURE = ["gpt2-tied-head9", "neox-pythia", "llama-gqa4-bias-head6", "qwen2-gqa2-tied"]


def _long(x) -> torch.Tensor:
    return torch.tensor(np.asarray(x), dtype=torch.long)


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_pytorch(name):
    c = case(name)
    x = tokens(1, 3, 24)
    with torch.no_grad():
        ref = c.hf(_long(x)).logits.numpy()
    f, params = llm_bridge.pure(c.ours)
    assert rel_err(jax.jit(f)(params, jnp.asarray(x)), ref) <= 1e-4


@pytest.mark.parametrize("name", ["neox-seq-tied-head10", "qwen2-gqa3-head10-sharded"])
def test_float64_models_run_under_strict_promotion(name, x64):
    """A float64 load computes, differentiates and samples in float64 (for tight theory tests).

    transformers computes RoPE in float32 even for float64 models, so the logits are
    compared with its float32 ones: the difference is float32 rounding, not a formula change.
    """
    c = case(name)
    model = llm_bridge.load(c.folder, dtype=jnp.float64)
    x = tokens(1, 2, 16)
    f, params = llm_bridge.pure(model)

    def loss(p, t):
        logits = f(p, t)
        return llm_bridge.next_token_loss(logits, t), logits

    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, jnp.asarray(x))
    assert value.dtype == logits.dtype == jnp.float64
    assert all(g.dtype == jnp.float64 for g in jax.tree.leaves(grads))
    with torch.no_grad():
        assert rel_err(logits, c.hf(_long(x)).logits.numpy()) <= 1e-5
    assert llm_bridge.generate(model, jnp.asarray(x), 3, temperature=0.5, key=jax.random.key(0)).shape == (2, 3)


@pytest.mark.parametrize("name", NAMES)
def test_greedy_generation_matches_pytorch(name):
    """20 greedy tokens with the KV cache, for a batch of one full and two left-padded prompts.

    transformers counts positions from each row's first real token (attention_mask
    cumsum); so does ``generate(..., mask=)``.
    """
    c = case(name)
    prompts = tokens(2, 3, 7)
    mask = np.ones(prompts.shape, bool)
    mask[1, :3] = False
    mask[2, :1] = False
    prompts = np.where(mask, prompts, 0)
    with torch.no_grad():
        ref = c.hf.generate(_long(prompts), attention_mask=_long(mask), do_sample=False, max_new_tokens=20,
                            min_new_tokens=20, pad_token_id=0)
    ours = llm_bridge.generate(c.ours, jnp.asarray(prompts), 20, mask=jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(ours), ref[:, prompts.shape[1]:].numpy())


@pytest.mark.parametrize("name", ["gpt2-untied-sharded", "llama-mqa6-sharded"])
def test_cached_decoding_matches_full_forward(name):
    """Prefill 4 tokens, extend by a chunk of 4, then 1 at a time: same logits as one full pass."""
    model = case(name).ours
    x = jnp.asarray(tokens(4, 2, 11))
    f, params = llm_bridge.pure(model)
    full = jax.jit(f)(params, x)
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda s, t, cache: nnx.merge(graphdef, s).forward(t, None, cache))
    cache = model.init_cache(2, 16)
    pieces = []
    for lo, hi in [(0, 4), (4, 8)] + [(t, t + 1) for t in range(8, 11)]:
        logits, cache = run(state, x[:, lo:hi], cache)
        pieces.append(logits)
    assert int(cache.index) == 11
    assert rel_err(jnp.concatenate(pieces, axis=1), full) <= 1e-5


@pytest.mark.parametrize("name", ONE_PER_FEATURE)
def test_logits_at_positions_are_the_full_pass_there(name):
    """``forward(..., at=)`` computes the final norm and LM head only at the given positions (a loss reads a
    few reply tokens of each row): the full pass's logits there, row by row, with and without a cache; no
    positions gives no logits and the same cache."""
    model = case(name).ours
    forward = nnx.jit(lambda m, x, cache=None, at=None: m.forward(x, None, cache, at=at))  # compiled, not op by op
    x = jnp.asarray(tokens(5, 2, 12))
    at = jnp.asarray([[0, 11, 4, 4], [7, 2, 2, 9]], jnp.int32)
    full, _ = forward(model, x)
    got, _ = forward(model, x, at=at)
    assert got.shape == (2, 4, full.shape[-1])
    assert rel_err(got, jnp.take_along_axis(full, at[..., None], axis=1)) <= 1e-5
    none, cache = forward(model, x[:, :5], model.init_cache(2, 12), at=jnp.zeros((2, 0), jnp.int32))
    _, ref_cache = forward(model, x[:, :5], model.init_cache(2, 12))
    assert none.shape == (2, 0, full.shape[-1])
    # the same cache up to rounding (two compiled programs may fuse the K/V projections differently)
    assert all(rel_err(a, b) <= 1e-5 if jnp.issubdtype(a.dtype, jnp.floating) else np.array_equal(a, b)
               for a, b in zip(jax.tree.leaves(cache), jax.tree.leaves(ref_cache)))
    rest, _ = forward(model, x[:, 5:], cache, at=at[:, :2] % 7)
    assert rel_err(rest, jnp.take_along_axis(full[:, 5:], (at[:, :2] % 7)[..., None], axis=1)) <= 1e-5


@pytest.mark.parametrize("name", ONE_PER_FEATURE)
def test_gradient_matches_pytorch(name):
    """d(next-token CE)/d(every parameter), tied embeddings receiving both uses' gradients."""
    c = case(name)
    x = tokens(5, 2, 16)
    c.hf.zero_grad(set_to_none=True)
    c.hf(_long(x), labels=_long(x)).loss.backward()
    ref = {k: p.grad.numpy() for k, p in c.hf.named_parameters()}
    ref = {("embed_out.weight" if k == "lm_head.weight" and name.startswith("neox") else k): g
           for k, g in ref.items()}
    c.hf.zero_grad(set_to_none=True)

    f, params = llm_bridge.pure(c.ours)
    grads = jax.jit(jax.grad(lambda p: llm_bridge.next_token_loss(f(p, jnp.asarray(x)), jnp.asarray(x))))(params)
    holder = nnx.clone(c.ours)
    nnx.update(holder, grads)
    ours = {k: np.asarray(v) for k, v in llm_bridge.to_hf_weights(holder).items()}
    assert set(ours) == set(ref)
    errors = {k: rel_err(ours[k], ref[k]) for k in ref}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-4, (worst, errors[worst])
