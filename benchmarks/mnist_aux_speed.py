"""Speed of the mnist_aux paper preset against a matmul compute floor measured in the same run.

The experiment's exact cost is 2.47 TFLOP per seed (3.07 nominal; the first layer's input
gradient is never needed). The floor is that cost divided by the float32 rate of a
2048x2048 numpy matmul timed here (best of several, before and after). We time one
teacher epoch and one distillation epoch of the paper preset for S seeds at once (after
ahead-of-time compilation, which is reported apart) and extrapolate to the full
experiment: seconds per seed = (5 teacher epochs + 5 distillation epochs + evaluation) / S.
Target: within 1.2x of the floor at 25 and at 100 seeds.

This package does less than the 2.47 TFLOP (the teacher's forward pass on each noise
batch is shared by the 4 students: 1.99 TFLOP), so "achieved GFLOP/s" is reported both
against the issue's 2.47 TFLOP and against the operations actually executed.

End to end (``--end-to-end``): the wall time of ``python -m mnist_aux run --preset paper --seeds S``
(compilation, data loading and evaluation included) against the paper's official PyTorch script run
the same way with N_MODELS = S (``--official PATH`` or ``--fetch-official``; patched only in its data
path, seed count and plotting: benchmarks/official_mnist.py), seconds per seed for each and their
ratio, and ours against the floor.

Vector ISAs (``--isa native avx2``): each ISA's measurements run in a child process with the ISA
capped: ``XLA_FLAGS=--xla_cpu_max_isa=AVX2`` for XLA, ``ATEN_CPU_CAPABILITY=avx2``,
``MKL_ENABLE_INSTRUCTIONS=AVX2`` and ``ONEDNN_MAX_CPU_ISA=AVX2`` for torch, ``OPENBLAS_CORETYPE=Haswell``
for numpy's floor. This emulates an AVX2-only CPU only as far as each library honours its cap; a
native AVX2 machine is the real test.

Timings are only meaningful on an idle machine: the script refuses a busy one (harness.idle)
unless ``--force``.

Usage:
    python benchmarks/mnist_aux_speed.py                       # 25 and 100 seeds, threefry2x32
    python benchmarks/mnist_aux_speed.py --seeds 25 --prng threefry2x32 rbg
    python benchmarks/mnist_aux_speed.py --seeds 25 --gemms-only --isa native avx2 \\
        --out results/benchmarks/mnist_gemms.json     # the step's products by XLA, torch and numpy
    python benchmarks/mnist_aux_speed.py --seeds 10 25 --end-to-end --fetch-official --isa native avx2 \\
        --data-dir ../shared/data/mnist --out results/benchmarks/mnist_aux_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mnist_aux import experiment, train  # noqa: E402
from mnist_aux.configs import paper  # noqa: E402
from harness.idle import Busy, check as idle_check  # noqa: E402
from harness.results import OutputError, command_line, prepare_output, provenance, write_json  # noqa: E402
from harness.timing import ISA_ENV, isa_caps, numpy_matmul_gflops  # noqa: E402
from benchmarks import official_mnist  # noqa: E402

ISSUE_EXACT_TFLOP = 2.47


def _timed(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def time_chunk(cfg, chunk: int, train_x, train_y, test_x, test_y) -> dict:
    """Seconds for one teacher epoch, one distillation epoch and the evaluation of ``chunk``
    seeds; each program is compiled ahead of time, so the timed call is the first run."""
    programs = experiment.Programs(cfg)
    seeds = jnp.arange(chunk, dtype=jnp.int32)
    keys, theta0, theta0_cross = programs("setup", seeds, jnp.roll(seeds, 1))
    teacher = jax.tree.map(jnp.copy, theta0)
    opt_state = programs("opt_init", teacher)
    out = {}

    def timed(name, program, *args):
        programs._jitted[program].lower(*args)  # trace outside the timing
        compiled_before = programs.compile_seconds
        start = time.perf_counter()
        result = jax.block_until_ready(programs(program, *args))
        out[name] = time.perf_counter() - start - (programs.compile_seconds - compiled_before)
        return result

    teacher, _, _ = timed("teacher_epoch_s", "teacher_epoch", teacher, opt_state, keys.shuffle, np.int32(0),
                          train_x, train_y)
    students = programs("students", theta0, theta0_cross)
    timed("distill_epoch_s", "distill_epoch", students, programs("opt_init", students), teacher, keys, np.int32(0))
    models = programs("stack", theta0, teacher, programs("students", theta0, theta0_cross))
    timed("eval_s", "accuracy", models, test_x, test_y)
    out["compile_s"] = programs.compile_seconds
    return out


BREAKDOWN_BATCHES = 10  # full batches per timed distillation epoch in --breakdown


def _step_gemms(seeds: int, h: int = 256, o: int = 13, k: int = 4, b: int = 1024) -> list[tuple[int, int, int, int]]:
    """``(batch, m, k, n)`` of one distillation step's matrix products for ``seeds`` seeds: the teacher's
    forward, then the 4 students' forward, weight gradients and input gradients (none for the first layer),
    the first layer's 4 students merged into one product as XLA does."""
    teacher = [(seeds, b, 784, h), (seeds, b, h, h), (seeds, b, h, o)]
    forward = [(seeds, b, 784, k * h), (seeds * k, b, h, h), (seeds * k, b, h, o)]
    weights = [(seeds, 784, b, k * h), (seeds * k, h, b, h), (seeds * k, h, b, o)]
    inputs_ = [(seeds * k, b, h, h), (seeds * k, b, o, h)]
    return teacher + forward + weights + inputs_


GEMM_BACKENDS = ("jax", "torch", "numpy")  # XLA's batched dot, torch's bmm, numpy's matmul (its BLAS per matrix)


def _gemm_seconds(shapes, backend: str) -> list[float]:
    """Best-of-5 seconds of each of ``shapes``' batched products ``[batch, m, k] @ [batch, k, n]`` with XLA
    (``jax``), torch's bmm or numpy's matmul (float32, contiguous operands)."""
    def best(fn):
        fn()
        return min(_timed(fn) for _ in range(5))

    out = []
    for batch, m, k, n in shapes:
        if backend == "jax":
            a, b = jnp.ones((batch, m, k), jnp.float32), jnp.ones((batch, k, n), jnp.float32)
            f = jax.jit(lambda x, y: jnp.einsum("bmk,bkn->bmn", x, y))
            out.append(best(lambda: f(a, b)))
        elif backend == "torch":
            import torch

            a, b = torch.ones(batch, m, k), torch.ones(batch, k, n)
            out.append(best(lambda: torch.bmm(a, b)))
        else:
            a, b = np.ones((batch, m, k), np.float32), np.ones((batch, k, n), np.float32)
            out.append(best(lambda: np.matmul(a, b)))
    return out


def gemms(seeds: int, cfg) -> dict:
    """One distillation step's matrix products (:func:`_step_gemms`) for ``seeds`` seeds by each library of
    :data:`GEMM_BACKENDS` (torch where installed): seconds per shape and in all, GFLOP/s."""
    shapes = _step_gemms(seeds, cfg.hidden, cfg.n_out)
    flops = [2 * b * m * k * n for b, m, k, n in shapes]
    per_shape = {}
    for backend in GEMM_BACKENDS:
        try:
            per_shape[backend] = _gemm_seconds(shapes, backend)
        except ImportError:
            continue
    total = {k: sum(v) for k, v in per_shape.items()}
    work = train.flops_per_seed(cfg)
    return {"seeds": seeds, "step_gflop": sum(flops) / 1e9, "shapes": [list(x) for x in shapes],
            "executed_over_floor_work": (work["ours"] + work["eval"]) / (ISSUE_EXACT_TFLOP * 1e12),
            "shape_gflop": [f / 1e9 for f in flops], "shape_seconds": per_shape, "gemm_seconds": total,
            "gemm_gflops": {k: sum(flops) / v / 1e9 for k, v in total.items()}}


def breakdown(seeds: int, ds) -> dict:
    """Where a distillation epoch's time goes for ``seeds`` seeds (:data:`BREAKDOWN_BATCHES` full batches of
    the paper preset): the epoch as run; with its inputs replaced by a cheap deterministic batch (what the
    noise costs); with plain SGD for Adam (what the optimizer costs); both; and the step's matrix products
    alone, by XLA's batched dot and by torch's bmm, as GFLOP/s beside numpy's floor."""
    from contextlib import ExitStack
    from unittest import mock

    import optax

    from mnist_aux import arms, inputs

    cfg = paper().replace(n_noise=paper().batch_size * BREAKDOWN_BATCHES)

    def cheap(kind, cfg, keys, b, size, images=None):
        return jax.lax.iota(jnp.float32, size * 784).reshape(size, 784) * 1e-6 + b.astype(jnp.float32) * 1e-3 - 0.5

    out = {}
    for name, patches in {"as run": [], "no noise": [(inputs, "batch", cheap)],
                          "sgd": [(arms, "optimizer", lambda plan: optax.sgd(cfg.lr))],
                          "no noise, sgd": [(inputs, "batch", cheap), (arms, "optimizer", lambda plan: optax.sgd(cfg.lr))]}.items():
        with ExitStack() as stack:
            for module, attr, value in patches:
                stack.enter_context(mock.patch.object(module, attr, value))
            programs = experiment.Programs(cfg)
            s = jnp.arange(seeds, dtype=jnp.int32)
            keys, theta0, theta0_cross = programs("setup", s, jnp.roll(s, 1))
            students = programs("students", theta0, theta0_cross)
            opt = programs("student_opt_init", students)

            def epoch():
                return programs("distill_epoch", jax.tree.map(jnp.copy, students), jax.tree.map(jnp.copy, opt),
                                theta0, keys, np.int32(0))

            epoch()
            out[name] = min(_timed(epoch) for _ in range(3)) / BREAKDOWN_BATCHES
    return gemms(seeds, cfg) | {"step_seconds": out}


def wall_seconds(cmd: list[str], env: dict) -> float:
    """Wall time of a command run to completion (its output discarded unless it fails)."""
    start = time.perf_counter()
    done = subprocess.run(cmd, env=os.environ | env | {"MPLBACKEND": "Agg"}, capture_output=True, text=True)
    if done.returncode:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({done.returncode}): {tail[0]}")
    return time.perf_counter() - start


def end_to_end(seeds: int, data_dir: str, official: str | None, env: dict, folder: Path) -> dict:
    """Seconds of our paper run and, with ``official``, of the patched official script, at ``seeds``."""
    from benchmarks import official_mnist

    out = {"ours_s": wall_seconds([sys.executable, "-m", "mnist_aux", "run", "--preset", "paper", "--seeds",
                                   str(seeds), "--data-dir", data_dir, "--no-download", "--no-progress",
                                   "--out", str(folder / f"ours_{seeds}.json")], env)}
    if official:
        script = folder / f"official_{seeds}.py"
        script.write_text(official_mnist.patch(Path(official).read_text(), data_dir, seeds))
        out["official_s"] = wall_seconds([sys.executable, str(script)], env)
    return out


def measure(args, ds, env: dict) -> dict:
    """One ISA's measurements (in this process, whose ISA caps were set at its start)."""
    floors = [numpy_matmul_gflops()]
    if args.gemms_only:
        products = gemms(max(args.seeds), paper())
        floors.append(numpy_matmul_gflops())
        rate = max(floors)
        return {"rows": [], "end_to_end": [], "breakdown": None, "gemms": products, "floor_gflops": rate,
                "floor_seconds_per_seed": ISSUE_EXACT_TFLOP * 1e3 / rate, "floor_timings_gflops": floors, "env": env}
    rows = []
    for prng in args.prng:
        cfg = paper().replace(prng_impl=prng)
        flops = train.flops_per_seed(cfg)
        put = jnp.asarray
        tx, ty = put(ds.train_x[: cfg.n_train]), put(ds.train_y[: cfg.n_train])
        vx, vy = put(ds.test_x), put(ds.test_y)
        for n in args.seeds:
            n_chunks, chunk = experiment.chunking(n, args.seeds_per_chunk, 1)
            t = time_chunk(cfg, chunk, tx, ty, vx, vy)
            floors.append(numpy_matmul_gflops())
            per_seed = (cfg.teacher_epochs * t["teacher_epoch_s"] + cfg.distill_epochs * t["distill_epoch_s"]
                        + t["eval_s"]) / chunk
            rows.append({"seeds": n, "chunk": chunk, "prng": prng, **t, "seconds_per_seed": per_seed,
                         "gflops_vs_2.47T": ISSUE_EXACT_TFLOP * 1e3 / per_seed,
                         "gflops_executed": (flops["ours"] + flops["eval"]) / per_seed / 1e9})
            print(f"{n:4d} seeds ({n_chunks} x {chunk}) {prng:13s} {per_seed:6.2f} s/seed  "
                  f"teacher epoch {t['teacher_epoch_s']:6.2f} s  distill epoch {t['distill_epoch_s']:6.2f} s  "
                  f"compile {t['compile_s']:5.1f} s", flush=True)
    whole = []
    if args.end_to_end:
        with tempfile.TemporaryDirectory() as tmp:
            for n in args.seeds:
                got = end_to_end(n, args.data_dir, args.official, env, Path(tmp))
                whole.append({"seeds": n, **got})
                print(f"{n:4d} seeds end to end: ours {got['ours_s']:.0f} s"
                      + (f", official {got['official_s']:.0f} s" if "official_s" in got else ""), flush=True)
                floors.append(numpy_matmul_gflops())
    parts = breakdown(min(max(args.seeds), args.seeds_per_chunk), ds) if args.breakdown else None
    rate = max(floors)
    floor = ISSUE_EXACT_TFLOP * 1e3 / rate
    for r in rows:
        r["ratio_to_floor"] = r["seconds_per_seed"] / floor
    for r in whole:
        r["ours_s_per_seed"] = r["ours_s"] / r["seeds"]
        r["ours_ratio_to_floor"] = r["ours_s_per_seed"] / floor
        if "official_s" in r:
            r["official_s_per_seed"] = r["official_s"] / r["seeds"]
            r["official_over_ours"] = r["official_s"] / r["ours_s"]
    return {"rows": rows, "end_to_end": whole, "breakdown": parts, "floor_gflops": rate, "floor_seconds_per_seed": floor,
            "floor_timings_gflops": floors, "env": env}


def report(isa: str, m: dict) -> None:
    print(f"\n[{isa}] floor: numpy 2048^2 matmul {m['floor_gflops']:.0f} GFLOP/s (best of "
          f"{len(m['floor_timings_gflops'])} timings) -> {m['floor_seconds_per_seed']:.2f} s/seed for {ISSUE_EXACT_TFLOP} TFLOP")
    if m["rows"]:
        print("| seeds | prng | s/seed | GFLOP/s (2.47 TF/seed) | GFLOP/s executed | x floor |")
        print("| --- | --- | --- | --- | --- | --- |")
    for r in m["rows"]:
        print(f"| {r['seeds']} | {r['prng']} | {r['seconds_per_seed']:.2f} | {r['gflops_vs_2.47T']:.0f} | "
              f"{r['gflops_executed']:.0f} | {r['ratio_to_floor']:.2f} |")
    if m.get("breakdown"):
        report_breakdown(m["breakdown"], m["floor_gflops"])
    if m.get("gemms"):
        report_gemms(m["gemms"], m["floor_gflops"])
    if m["end_to_end"]:
        print("| seeds | ours s/seed (end to end) | x floor | official s/seed | official / ours |")
        print("| --- | --- | --- | --- | --- |")
        for r in m["end_to_end"]:
            print(f"| {r['seeds']} | {r['ours_s_per_seed']:.2f} | {r['ours_ratio_to_floor']:.2f} | "
                  f"{r.get('official_s_per_seed', float('nan')):.2f} | {r.get('official_over_ours', float('nan')):.2f} |")


def report_breakdown(b: dict, floor_gflops: float) -> None:
    steps = b["step_seconds"]
    print(f"one distillation step, {b['seeds']} seeds x 4 students ({b['step_gflop']:.0f} GFLOP): "
          + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in steps.items()))
    print("its matrix products alone: " + ", ".join(
        f"{k} {b['gemm_seconds'][k] * 1e3:.0f} ms ({v:.0f} GFLOP/s)" for k, v in b["gemm_gflops"].items())
        + f"; numpy floor {floor_gflops:.0f} GFLOP/s; the step as run: {b['step_gflop'] / steps['as run']:.0f} GFLOP/s")


def report_gemms(g: dict, floor_gflops: float) -> None:
    print(f"one distillation step's matrix products, {g['seeds']} seeds ({g['step_gflop']:.0f} GFLOP), GFLOP/s "
          f"(numpy 2048^2 floor {floor_gflops:.0f}):")
    print("| batch x m x k x n | GFLOP | " + " | ".join(g["shape_seconds"]) + " |")
    for i, shape in enumerate(g["shapes"]):
        print(f"| {' x '.join(map(str, shape))} | {g['shape_gflop'][i]:.1f} | " + " | ".join(
            f"{g['shape_gflop'][i] / v[i]:.0f}" for v in g["shape_seconds"].values()) + " |")
    print("| all | " + f"{g['step_gflop']:.0f} | " + " | ".join(f"{v:.0f}" for v in g["gemm_gflops"].values()) + " |")


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[25, 100], help="seed counts to time (default 25 100)")
    parser.add_argument("--seeds-per-chunk", type=int, default=50,
                        help="seeds run at once, as the CLI's default (default 50): 100 seeds = 2 chunks of 50")
    parser.add_argument("--prng", nargs="+", default=["threefry2x32"], choices=["threefry2x32", "rbg"],
                        help="PRNG implementations to compare (rbg: faster noise, not exact under vmap)")
    parser.add_argument("--data-dir", help="MNIST IDX folder (default: $SUBLIMINAL_MNIST_DIR, the download cache)")
    parser.add_argument("--end-to-end", action="store_true",
                        help="also time whole runs (python -m mnist_aux run, and the official script if given)")
    parser.add_argument("--official", metavar="PATH", help="a copy of the official run_mnist_experiment.py "
                        f"(commit {official_mnist.COMMIT[:8]}); implies --end-to-end")
    parser.add_argument("--fetch-official", action="store_true",
                        help="download the official script at that commit (sha256 checked); implies --end-to-end")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time one distillation step without its noise, without Adam, and its matrix products alone")
    parser.add_argument("--gemms-only", action="store_true",
                        help="time only one distillation step's matrix products (for the largest --seeds) by XLA, "
                             "torch's bmm and numpy's matmul, beside the floor (a minute or two)")
    parser.add_argument("--isa", nargs="+", choices=sorted(ISA_ENV),
                        help="measure under each vector-ISA cap in a child process (default: this process as is)")
    parser.add_argument("--out", help="also write the measurements as JSON here (checked before the run)")
    parser.add_argument("--force", action="store_true",
                        help="time even on a busy machine (harness.idle); the result is then marked not idle")
    parser.add_argument("--child-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.end_to_end = args.end_to_end or bool(args.official or args.fetch_official)
    if args.gemms_only and (args.end_to_end or args.breakdown):
        parser.error("--gemms-only times the matrix products alone: drop --end-to-end, --official and --breakdown")
    return parser, args


def _children(args) -> dict:
    """Each ISA's measurements, from a child process started with that ISA's caps."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for isa in args.isa:
            path = Path(tmp) / f"{isa}.json"
            cmd = [sys.executable, __file__, "--seeds", *map(str, args.seeds), "--seeds-per-chunk",
                   str(args.seeds_per_chunk), "--prng", *args.prng, "--child-json", str(path)]
            cmd += ["--data-dir", args.data_dir] if args.data_dir else []
            cmd += ["--end-to-end"] if args.end_to_end else []
            cmd += ["--breakdown"] if args.breakdown else []
            cmd += ["--gemms-only"] if args.gemms_only else []
            cmd += ["--official", args.official] if args.official else []
            cmd += ["--force"] if args.force else []
            done = subprocess.run(cmd, env=os.environ | ISA_ENV[isa])
            if done.returncode:
                raise RuntimeError(f"the {isa} measurements failed (exit status {done.returncode}; see above)")
            out[isa] = json.loads(path.read_text())
    return out


def main(argv=None) -> int:
    parser, args = parse(argv)
    if args.out:
        try:
            prepare_output(args.out)
        except OutputError as err:
            parser.exit(2, f"mnist_aux_speed: {err}\n")
    from mnist_aux import data

    try:
        ds = None if args.gemms_only else data.load("mnist", args.data_dir, allow_download=False)
        if args.end_to_end and not args.data_dir:
            parser.exit(2, "mnist_aux_speed: --end-to-end needs --data-dir (the runs read it offline)\n")
        if args.fetch_official and not args.child_json:
            args.official = str(official_mnist.fetch(Path(tempfile.mkdtemp()) / "run_mnist_experiment.py"))
        if args.official:
            official_mnist.patch(Path(args.official).read_text(), args.data_dir, 2)  # fail early
    except (data.DataError, official_mnist.PatchError, OSError) as err:
        parser.exit(2, f"mnist_aux_speed: {err}\n")
    if args.child_json:  # the parent checked the machine at its start and checks it at its end
        Path(args.child_json).write_text(json.dumps(measure(args, ds, isa_caps())))
        return 0
    try:
        idle = [idle_check("start", args.force)]
    except Busy as err:
        parser.exit(2, f"mnist_aux_speed: {err}\n")
    load_start = os.getloadavg()
    if args.isa:
        try:
            by_isa = _children(args)
        except RuntimeError as err:
            parser.exit(2, f"mnist_aux_speed: {err}\n")
    else:
        by_isa = {"as_started": measure(args, ds, isa_caps())}
    for isa, m in by_isa.items():
        report(isa, m)
    load_end = os.getloadavg()
    try:
        idle.append(idle_check("end", args.force, load=False))  # the load average now includes this run
    except Busy as err:
        parser.exit(2, f"mnist_aux_speed: {err}\n")
    busy = not all(r["idle"] for r in idle)
    print(f"load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end on {os.cpu_count()} cores"
          + ("  WARNING: machine busy (--force), timings unreliable" if busy else ""))
    if args.out:
        write_json(args.out, {
            "by_isa": by_isa, "data": None if ds is None else ds.source, "reads_images": ds is not None, "official_script": {"commit": official_mnist.COMMIT,
                                                                    "path": official_mnist.PATH} if args.official else None,
            "load_average": {"start": load_start, "end": load_end}, "busy": busy, "idle": idle,
            **provenance(command_line("python benchmarks/mnist_aux_speed.py"))})
    return 0


if __name__ == "__main__":
    sys.exit(main())
