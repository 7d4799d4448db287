"""The benchmarks' table in docs/benchmarks.md, rendered from results/benchmarks/*.json (``harness.render``).

A row shows a file's numbers only when the benchmark found the machine idle at its start and end
(``harness/idle.py``; a forced run on a busy machine records ``"busy": true``) and the file records
where it ran (the provenance every results file carries); otherwise the row says what to run. Each
row names the CPU and its vector ISA, since ratios against XLA differ between AVX2 and AVX-512.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.render import num

COMMANDS = {
    "projection_cost.json": "python benchmarks/projection_cost.py --json results/benchmarks/projection_cost.json",
    "llm_speed_gpt2.json": "python benchmarks/llm_speed.py",
    "llm_speed_smollm2.json": "python benchmarks/llm_speed.py --smollm2 --batch 4 --seq 128",
    "mnist_aux_speed.json": "python benchmarks/mnist_aux_speed.py --seeds 10 25 --breakdown --fetch-official --isa native avx2 "
                            "--data-dir DIR --out results/benchmarks/mnist_aux_speed.json",
    "mnist_gemms.json": "python benchmarks/mnist_aux_speed.py --seeds 25 --gemms-only --isa native avx2 "
                        "--out results/benchmarks/mnist_gemms.json",
    "student_step_smollm2.json": "python benchmarks/student_step.py",
    "student_step_rows.json": "python benchmarks/student_step.py --prefix 16 --seq 160 --targets 8 "
                              "--out results/benchmarks/student_step_rows.json",
    "student_step_rows_avx2.json": "env XLA_FLAGS=--xla_cpu_max_isa=AVX2 ATEN_CPU_CAPABILITY=avx2 "
                                   "MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 OPENBLAS_CORETYPE=Haswell "
                                   "python benchmarks/student_step.py --prefix 16 --seq 160 --targets 8 "
                                   "--out results/benchmarks/student_step_rows_avx2.json",
    "student_step_rows_native_avx2.json": "python benchmarks/student_step.py --prefix 16 --seq 160 --targets 8 "
                                          "--out results/benchmarks/student_step_rows_native_avx2.json "
                                          "(on a CPU without AVX-512)",
}


def _read(results_dir: Path, name: str) -> dict | None:
    """The benchmark file when it is an idle run with provenance, else None."""
    path = Path(results_dir) / "benchmarks" / name
    if not path.exists():
        return None
    d = json.loads(path.read_text(encoding="utf-8"))
    busy = d.get("busy", d.get("meta", {}).get("busy", True))
    return None if busy or "machine" not in d or not isinstance(d["machine"], dict) else d


def _where(d: dict) -> str:
    m = d["machine"]
    isa = m.get("isa") or {}
    vector = "AVX-512" if isa.get("avx512f") else ("AVX2" if isa.get("avx2") else "no AVX2")
    if isa.get("xla_cpu_max_isa"):
        vector += f" (XLA limited to {isa['xla_cpu_max_isa']})"
    return f"{m.get('cpu', '?')}, {m.get('cpu_count', '?')} cores, {vector}; {d['versions'].get('git_commit', '?')[:7]}"


def _projection(d: dict) -> str:
    mlp, dense = d["rows"][0], d["rows"][-1]
    return (f"{num(mlp['A_over_fwd_bwd'])}x for the MNIST MLP ({mlp['params'] / 1e6:.2f}M params, batch {mlp['batch']}) "
            f"and {num(dense['A_over_fwd_bwd'])}x for a {dense['params'] / 1e6:.1f}M-parameter dense net (batch "
            f"{dense['batch']}); the jvp-only inner product {num(mlp['inner_over_fwd_bwd'])}x / "
            f"{num(dense['inner_over_fwd_bwd'])}x (target ≤ 3x)")


def _gpt2(d: dict) -> str:
    r, c = d["results"], d["config"]
    return (f"batch {c['batch']} x {c['seq']}: forward {r['forward_tok_s']:,.0f} tok/s, forward+backward "
            f"{r['forward_backward_tok_s']:,.0f} tok/s, jvp projection {num(r['projection_over_forward_backward'])}x "
            f"one forward+backward")


def _smollm2(d: dict) -> str:
    r, c = d["results"], d["config"]
    ratio = {k: num(v["ratio_ours_over_torch"]) for k, v in r.items()}
    fb = r["forward+backward"]
    return (f"ours / transformers + torch on the same float32 weights, batch {c['batch']} x {c['seq']}: forward "
            f"{ratio['forward']}x, forward+backward {ratio['forward+backward']}x ({fb['ours_tok_s']:,.0f} vs "
            f"{fb['torch_tok_s']:,.0f} tok/s), cached greedy generation {ratio['generate batch 1']}x at batch 1 and "
            f"{ratio['generate batch 32']}x at batch 32")


def _mnist(d: dict) -> str:
    if "by_isa" in d:
        return "; ".join(f"{isa}: {_mnist_one(m)}" for isa, m in d["by_isa"].items())
    return _mnist_one(d)


def _mnist_one(d: dict) -> str:
    rows = d["rows"]
    per_seed = ", ".join(f"{num(r['seconds_per_seed'])} s at {r['seeds']} seeds" for r in rows)
    ratios = " / ".join(f"{num(r['ratio_to_floor'])}x" for r in rows)
    out = (f"{per_seed}; floor {num(d['floor_seconds_per_seed'])} s/seed from a {d['floor_gflops']:.0f} GFLOP/s numpy "
           f"2048² matmul timed in the same run: {ratios} the floor (target ≤ 1.2x)")
    whole = d.get("end_to_end") or []
    if whole:
        out += "; end to end " + ", ".join(
            f"{r['seeds']} seeds ours {num(r['ours_s_per_seed'])} s/seed ({num(r['ours_ratio_to_floor'])}x the floor)"
            + (f", official script {num(r['official_s_per_seed'])} s/seed = {num(r['official_over_ours'])}x ours"
               if "official_s" in r else "") for r in whole) + " (target ≥ 1.5x)"
    return out


def _student_step(d: dict) -> str:
    c = d["config"]
    parts = [f"{kind} {v['ours_tok_s']:,.0f} tok/s = {num(v['ratio_ours_over_torch'])}x torch, "
             f"{100 * v['roofline_fraction']:.0f} % of the roofline" for kind, v in d["results"].items()]
    every_token = not c.get("prefix") and c.get("targets", c["seq"] - 1) == c["seq"] - 1
    shape = (f"{c['batch']} x {c['seq']} tokens" if every_token
             else f"{c['batch']} rows of a {c['prefix']}-token shared prefix + {c['seq']} tokens, the last "
                  f"{c['targets']} targets (torch: the full rows, labels -100 elsewhere)")
    caps = d.get("isa_caps") or {}
    return (f"Adam steps on {shape}: " + "; ".join(parts)
            + f" (roofline: numpy fp32 matmul {d['floor_gflops']:.0f} GFLOP/s; targets ≥ 1.2x torch, ≥ 70 %)"
            + (f"; capped by {', '.join(f'{k}={v}' for k, v in sorted(caps.items()))}" if caps else ""))


ROWS = (
    ("Lemma-1 coefficient A (one jvp) vs one forward+backward", "projection_cost.json", _projection),
    ("GPT-2-small shape (124M, float32, random weights)", "llm_speed_gpt2.json", _gpt2),
    ("SmolLM2-135M-Instruct vs transformers + torch", "llm_speed_smollm2.json", _smollm2),
    ("SmolLM2 student step, full and LoRA", "student_step_smollm2.json", _student_step),
    ("SmolLM2 student step on the study's rows", "student_step_rows.json", _student_step),
    ("SmolLM2 student step on the study's rows, every library capped at AVX2", "student_step_rows_avx2.json",
     _student_step),
    ("SmolLM2 student step on the study's rows, a CPU with AVX2 and no AVX-512", "student_step_rows_native_avx2.json",
     _student_step),
    ("MNIST paper preset, seconds per seed", "mnist_aux_speed.json", _mnist),
)


def table(results_dir: Path) -> str:
    """The markdown table: benchmark, what the idle run measured (or what to run), where, command."""
    out = ["| benchmark | measured | machine, commit | command |", "| --- | --- | --- | --- |"]
    for label, name, fmt in ROWS:
        d = _read(results_dir, name)
        measured = fmt(d) if d else "no idle run committed yet"
        where = _where(d) if d else "-"
        command = d.get("command") or COMMANDS[name] if d else COMMANDS[name]  # what the run recorded
        out.append(f"| {label} | {measured} | {where} | `{command}` |")
    return "\n".join(out) + "\n"


def mnist_breakdown(results_dir: Path) -> str:
    """docs/benchmarks.md's breakdown of one MNIST distillation step, per ISA, from the idle run."""
    d = _read(results_dir, "mnist_aux_speed.json")
    if d is None or "by_isa" not in d or not any(m.get("breakdown") for m in d["by_isa"].values()):
        return f"No idle run with `--breakdown` committed yet: `{COMMANDS['mnist_aux_speed.json']}`.\n"
    lines = [f"Measured on {_where(d)} (`{d['command']}`):", "",
             "| ISA | step as run | without its noise | SGD for Adam | both | its matrix products: XLA | torch bmm | numpy floor |",
             "|---|---|---|---|---|---|---|---|"]
    for isa, m in d["by_isa"].items():
        b = m.get("breakdown")
        if not b:
            continue
        t, g = b["step_seconds"], b["step_gflop"]
        cell = lambda s: f"{s * 1e3:.0f} ms ({g / s:.0f} GFLOP/s)"
        gemm = [cell(b["gemm_seconds"][k]) if k in b["gemm_seconds"] else "-" for k in ("jax", "torch")]
        lines.append(f"| {isa} | {cell(t['as run'])} | {cell(t['no noise'])} | {cell(t['sgd'])} | "
                     f"{cell(t['no noise, sgd'])} | {gemm[0]} | {gemm[1]} | {m['floor_gflops']:.0f} GFLOP/s |")
    first = next(m["breakdown"] for m in d["by_isa"].values() if m.get("breakdown"))
    lines += ["", f"One step: {first['seeds']} seeds x 4 students on a batch of 1024 ({first['step_gflop']:.0f} GFLOP); "
              "GFLOP/s are that count over each time. Shares of the step as run:"]
    for isa, m in d["by_isa"].items():
        b = m.get("breakdown")
        if b:
            t = b["step_seconds"]
            gemm = b["gemm_seconds"]["jax"] / t["as run"]
            noise = 1 - t["no noise"] / t["as run"]
            adam = 1 - t["sgd"] / t["as run"]
            lines.append(f"{isa}: matrix products (at XLA's batched rate) {100 * gemm:.0f} %, the noise "
                         f"{100 * noise:.0f} %, Adam over SGD {100 * adam:.0f} %, the rest (activations, loss, "
                         f"layout copies) {100 * (1 - gemm - noise - adam):.0f} %.")
    return "\n".join(lines) + "\n"


GEMM_NAMES = {"jax": "XLA", "torch": "torch bmm", "numpy": "numpy matmul"}


def mnist_gemms(results_dir: Path) -> str:
    """docs/benchmarks.md's table of one MNIST distillation step's matrix products by each library, per ISA,
    and what the fastest reaches against the floor (``--gemms-only``)."""
    d = _read(results_dir, "mnist_gemms.json")
    if d is None or not any(m.get("gemms") for m in d.get("by_isa", {}).values()):
        return f"No idle run committed yet: `{COMMANDS['mnist_gemms.json']}`.\n"
    lines = [f"Measured on {_where(d)} (`{d['command']}`), GFLOP/s of each product (best of 5):", ""]
    reading = []
    for isa, m in d["by_isa"].items():
        g = m.get("gemms")
        if not g:
            continue
        libs = [k for k in GEMM_NAMES if k in g["shape_seconds"]]
        lines += [f"{isa} (numpy 2048² floor {m['floor_gflops']:.0f} GFLOP/s):", "",
                  "| batch x m x k x n | GFLOP | " + " | ".join(GEMM_NAMES[k] for k in libs) + " |",
                  "|---" * (2 + len(libs)) + "|"]
        for i, shape in enumerate(g["shapes"]):
            lines.append(f"| {' x '.join(map(str, shape))} | {num(g['shape_gflop'][i], 1)} | " + " | ".join(
                f"{g['shape_gflop'][i] / g['shape_seconds'][k][i]:.0f}" for k in libs) + " |")
        lines += [f"| all | {g['step_gflop']:.0f} | " + " | ".join(f"**{g['gemm_gflops'][k]:.0f}**" for k in libs)
                  + " |", ""]
        best = max(libs, key=lambda k: g["gemm_gflops"][k])
        share = g["gemm_gflops"][best] / m["floor_gflops"]
        work = g.get("executed_over_floor_work")
        xla = g["gemm_gflops"]["jax"] / m["floor_gflops"]
        reading.append(f"{isa}: the fastest here, {GEMM_NAMES[best]}, runs the step's products at "
                       f"{g['gemm_gflops'][best]:.0f} GFLOP/s, {100 * share:.0f} % of the floor"
                       + (f" (XLA {100 * xla:.0f} %)" if best != "jax" else "")
                       + (f"; torch's bmm at {g['gemm_gflops']['torch'] / g['gemm_gflops']['jax']:.2f}x XLA's rate"
                          if "torch" in libs else "")
                       + ("." if work is None else
                          f". The run executes {100 * work:.0f} % of the work the floor counts, so a run whose every "
                          f"operation went at the fastest rate would take {work / share:.2f}x the floor, at XLA's "
                          f"{work / xla:.2f}x (lower bounds: the noise, Adam and the rest come on top)."))
    return "\n".join(lines + reading) + "\n"


def smollm2_speed(results_dir: Path) -> str:
    """docs/llm_bridge.md's SmolLM2 speed table (ours vs transformers + torch) from the idle run, or what to run."""
    d = _read(results_dir, "llm_speed_smollm2.json")
    if d is None:
        return f"No idle run committed yet: `{COMMANDS['llm_speed_smollm2.json']}`.\n"
    r, c = d["results"], d["config"]
    lines = [f"Measured on {_where(d)} (idle at start and end; medians of {c['repeats']}; `{d['command']}`):", "",
             "| figure | ours tok/s | torch tok/s | ours / torch |", "|---|---|---|---|"]
    lines += [f"| {name} | {v['ours_tok_s']:,.0f} | {v['torch_tok_s']:,.0f} | {num(v['ratio_ours_over_torch'])}x |"
              for name, v in r.items()]
    ahead = [name for name, v in r.items() if v["ratio_ours_over_torch"] >= 1.0]
    behind = [name for name in r if name not in ahead]
    equal = {k: v["greedy_tokens_equal"] for k, v in r.items() if "greedy_tokens_equal" in v}
    lines += ["", f"Ours is ahead on {', '.join(ahead) or 'no figure'} and behind on {', '.join(behind) or 'no figure'} "
              f"(goal ≥ 1.0x). Forward and forward+backward on {c['batch']} x {c['seq']} tokens; generation from "
              f"{c['gen_prompt']}-token random prompts, {c['gen_new']} new tokens, greedy, KV cache; greedy tokens "
              "identical: " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in equal.items())
              + " (random-token prompts give near-tied logits, where float32 summation order can pick the other "
              f"token). The model loads in {d['load_s']:.1f} s (file to float32 parameters)."]
    return "\n".join(lines) + "\n"
