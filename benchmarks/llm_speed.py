"""Throughput of llm_bridge on CPU, and the cost of the jvp-based Lemma-1 projection.

Measures, for GPT-2-small-shaped random weights (124M parameters, float32) on one batch
of ``--batch x --seq`` tokens:

  forward            ``f(params, tokens) -> logits``                       tokens / s
  forward+backward   ``grad`` of the next-token cross-entropy              tokens / s
  projection         ``theory.lemma1_coefficient`` (one jvp + the softmax curvature
                     quadratic form, no Jacobian), as a multiple of one forward+backward

Each number is the median of ``--repeats`` timed calls after one compile-and-warm-up
call. Run on an otherwise idle machine: ``python benchmarks/llm_speed.py`` (about 2-4
minutes on 2 CPU cores); ``--smoke`` runs a tiny model in seconds to check the script.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

import llm_bridge
import theory


def _median_seconds(fn, repeats: int, label: str) -> float:
    """Median wall time of ``fn()`` (which must block until its result is ready)."""
    fn()  # compile + warm up
    times = []
    for _ in tqdm(range(repeats), desc=label, leave=False):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="sequences per batch (default 8)")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence (default 128)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement; median reported")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights, tokens and direction")
    parser.add_argument("--smoke", action="store_true", help="tiny 2-layer model instead of GPT-2 small")
    args = parser.parse_args(argv)

    k_model, k_tokens, k_dir = jax.random.split(jax.random.key(args.seed), 3)
    if args.smoke:
        config = llm_bridge.GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4)
        args.seq = min(args.seq, 64)
    else:
        config = llm_bridge.GPT2Config()  # GPT-2 small: 12 layers, 768 wide, 50257 vocab
    model = llm_bridge.GPT2(config, rngs=nnx.Rngs(k_model))
    f, params = llm_bridge.pure(model)
    n_params = sum(p.size for p in jax.tree.leaves(params))
    x = jax.random.randint(k_tokens, (args.batch, args.seq), 0, config.vocab_size)
    n_tokens = x.size

    # A random unit-norm teacher direction dtheta_T (Lemma 1 holds for any direction).
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(k_dir, len(leaves))
    direction = jax.tree.unflatten(treedef, [jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, leaves)])
    direction = jax.tree.map(lambda d: d / jnp.sqrt(float(n_params)), direction)

    forward = jax.jit(f)
    grad = jax.jit(jax.value_and_grad(lambda p, t: llm_bridge.next_token_loss(f(p, t), t)))
    loss = theory.softmax_ce()

    t_fwd = _median_seconds(lambda: forward(params, x).block_until_ready(), args.repeats, "forward")
    t_bwd = _median_seconds(lambda: jax.block_until_ready(grad(params, x)), args.repeats, "forward+backward")
    t_jvp = _median_seconds(lambda: float(theory.lemma1_coefficient(f, params, direction, x, loss)),
                            args.repeats, "projection")

    a = float(theory.lemma1_coefficient(f, params, direction, x, loss))
    if not np.isfinite(a) or a < 0:
        print(f"FAILED: Lemma-1 coefficient A = {a} (must be finite and >= 0)")
        return 1
    name = "tiny GPT-2 (smoke)" if args.smoke else "GPT-2 small"
    print(f"{name} {n_params:,} params, batch {args.batch}x{args.seq}, float32, "
          f"{jax.devices()[0].platform}: forward {n_tokens / t_fwd:,.0f} tok/s, "
          f"forward+backward {n_tokens / t_bwd:,.0f} tok/s, jvp projection {t_jvp / t_bwd:.2f}x forward+backward "
          f"({t_fwd:.3f} / {t_bwd:.3f} / {t_jvp:.3f} s per batch; median of {args.repeats})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
