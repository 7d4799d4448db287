"""Cost of the Lemma-1 coefficient A (one jvp) relative to one forward+backward pass.

For each network, times (best of --repeats, after a warm-up compile):
  fwd+bwd   value and gradient of the student's imitation loss (what one training step costs)
  A         theory.lemma1_coefficient's per-batch kernel: one jax.jvp + the O(k) quadratic form
  inner     theory.inner_product_jvp's kernel: one jvp + one teacher forward (no backward)
and prints the ratios A / fwd+bwd and inner / fwd+bwd (target <= 3). Ratios are measured
in one run on one machine; run it on an idle machine (a second busy process skews them).

    python benchmarks/projection_cost.py            # ~1 minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import jax

import theory
from harness.idle import Busy, check as idle_check
from harness.results import command_line, provenance, write_json
from theory.core import _imitation_grad_sum, _inner_sum, _quad_sum

NETWORKS = {
    "MLP 784-256-256-13 (MNIST aux)": ([784, 256, 256, 13], 1024),
    "dense 1024-1792x3-1024 (10M)": ([1024, 1792, 1792, 1792, 1024], 256),
}


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else the platform's machine name."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def best_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10, help="timed repetitions per kernel (best is kept)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--force", action="store_true",
                        help="time even on a busy machine (harness.idle); the result is then marked not idle")
    args = parser.parse_args()
    try:
        idle = [idle_check("start", args.force)]
    except Busy as err:
        parser.exit(2, f"projection_cost: {err}\n")
    rows = []
    for name, (sizes, batch) in NETWORKS.items():
        f, p0 = theory.mlp(0, sizes, "relu")
        n_params = sum(x.size for x in jax.tree.leaves(p0))
        x = jax.random.normal(jax.random.key(1), (batch, sizes[0]))
        d_t = theory.perturbed_init(p0, 0.01, jax.random.key(2))
        d_t = jax.tree.map(lambda a, b: a - b, d_t, p0)
        p_t = theory.teacher_params(p0, d_t, 1.0)
        loss = theory.softmax_kl()
        t_grad = best_time(lambda: _imitation_grad_sum(f, p0, p_t, x, loss), args.repeats)
        t_a = best_time(lambda: _quad_sum(f, p0, d_t, x, loss), args.repeats)
        t_inner = best_time(lambda: _inner_sum(f, p0, p_t, d_t, x, loss), args.repeats)
        rows.append({"network": name, "params": int(n_params), "batch": batch, "fwd_bwd_s": t_grad, "A_s": t_a,
                     "inner_s": t_inner, "A_over_fwd_bwd": t_a / t_grad, "inner_over_fwd_bwd": t_inner / t_grad})
        print(f"{name:32s} {n_params / 1e6:6.2f}M params, batch {batch}: fwd+bwd {1e3 * t_grad:8.2f} ms | "
              f"A {1e3 * t_a:8.2f} ms ({t_a / t_grad:.2f}x) | jvp inner {1e3 * t_inner:8.2f} ms ({t_inner / t_grad:.2f}x)")
    try:
        idle.append(idle_check("end", args.force, load=False))  # the load average now includes this run
    except Busy as err:
        parser.exit(2, f"projection_cost: {err}\n")
    meta = {"machine": cpu_name(), "cores": os.cpu_count(), "load_average": os.getloadavg(), "jax": jax.__version__,
            "devices": [str(d) for d in jax.devices()], "repeats": args.repeats, "idle": idle,
            "busy": not all(r["idle"] for r in idle)}
    if args.json:
        write_json(Path(args.json).expanduser(), {"meta": meta, "rows": rows,
                                                  **provenance(command_line("python benchmarks/projection_cost.py"))})
    worst = max(r["A_over_fwd_bwd"] for r in rows)
    print(f"projection_cost: A costs at most {worst:.2f}x one forward+backward (target <= 3x)")


if __name__ == "__main__":
    main()
