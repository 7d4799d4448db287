"""docs/benchmarks.md's table (harness.bench_table): an idle run's numbers, never a busy one's."""

from __future__ import annotations

import json

from harness.bench_table import ROWS, smollm2_speed, table

MACHINE = {"cpu": "Test CPU", "cpu_count": 2, "isa": {"avx2": True, "avx512f": False, "xla_cpu_max_isa": None}}
VERSIONS = {"git_commit": "abcdef0123456789"}
FILES = {
    "projection_cost.json": {"rows": [
        {"params": 270093, "batch": 1024, "A_over_fwd_bwd": 0.6431, "inner_over_fwd_bwd": 0.9256},
        {"params": 10098944, "batch": 256, "A_over_fwd_bwd": 0.7777, "inner_over_fwd_bwd": 1.0375}]},
    "llm_speed_gpt2.json": {"config": {"batch": 8, "seq": 128}, "results": {
        "forward_tok_s": 1027.4, "forward_backward_tok_s": 212.2, "projection_over_forward_backward": 0.664}},
    "llm_speed_smollm2.json": {"config": {"batch": 4, "seq": 128, "repeats": 3, "gen_prompt": 32, "gen_new": 32},
                               "load_s": 4.62, "command": "python benchmarks/llm_speed.py --smollm2", "results": {
        name: {"ratio_ours_over_torch": r, "ours_tok_s": 126.0, "torch_tok_s": 151.0}
        for name, r in (("forward", 0.781), ("forward+backward", 0.8349), ("generate batch 1", 2.18),
                        ("generate batch 32", 1.29))}},
    "student_step_smollm2.json": {"config": {"batch": 8, "seq": 64}, "floor_gflops": 150.4, "results": {
        "full": {"ours_tok_s": 120.4, "ratio_ours_over_torch": 0.915, "roofline_fraction": 0.634},
        "lora r4": {"ours_tok_s": 170.0, "ratio_ours_over_torch": 1.2049, "roofline_fraction": 0.5}}},
    "student_step_rows.json": {"config": {"batch": 8, "seq": 160, "prefix": 16, "targets": 8}, "floor_gflops": 150.4,
                               "results": {"full": {"ours_tok_s": 400.0, "ratio_ours_over_torch": 1.9,
                                                    "roofline_fraction": 0.4}}},
    "student_step_rows_avx2.json": {"config": {"batch": 8, "seq": 160, "prefix": 16, "targets": 8},
                                    "floor_gflops": 120.0, "isa_caps": {"XLA_FLAGS": "--xla_cpu_max_isa=AVX2"},
                                    "results": {"full": {"ours_tok_s": 300.0, "ratio_ours_over_torch": 1.3,
                                                         "roofline_fraction": 0.6}}},
    "student_step_rows_native_avx2.json": {"config": {"batch": 8, "seq": 160, "prefix": 16, "targets": 8},
                                           "floor_gflops": 145.0, "results": {
                                               "full": {"ours_tok_s": 114.0, "ratio_ours_over_torch": 1.11,
                                                        "roofline_fraction": 0.5}}},
    "mnist_aux_speed.json": {"rows": [{"seeds": 25, "seconds_per_seed": 12.5, "ratio_to_floor": 1.861},
                                      {"seeds": 100, "seconds_per_seed": 12.59, "ratio_to_floor": 1.8712}],
                             "floor_seconds_per_seed": 6.728, "floor_gflops": 367.1},
}


def _write(tmp_path, busy: bool):
    (tmp_path / "benchmarks").mkdir(exist_ok=True)
    for name, body in FILES.items():
        (tmp_path / "benchmarks" / name).write_text(json.dumps(
            body | {"busy": busy, "machine": MACHINE, "versions": VERSIONS}))


def test_idle_runs_render_their_numbers_rounded_once_with_the_machine(tmp_path):
    _write(tmp_path, busy=False)
    text = table(tmp_path)
    rows = text.splitlines()[2:]
    assert len(rows) == len(ROWS) and all("Test CPU, 2 cores, AVX2; abcdef0" in r for r in rows)
    for expected in ("0.64x for the MNIST MLP", "0.78x for a 10.1M", "0.93x / 1.04x", "forward 1,027 tok/s",
                     "forward+backward 212 tok/s", "0.66x one forward+backward", "forward 0.78x",
                     "forward+backward 0.83x (126 vs 151 tok/s)", "2.18x at batch 1", "1.29x at batch 32",
                     "12.50 s at 25 seeds, 12.59 s at 100 seeds", "floor 6.73 s/seed", "367 GFLOP/s",
                     "1.86x / 1.87x the floor", "full 120 tok/s = 0.92x torch, 63 % of the roofline",
                     "lora r4 170 tok/s = 1.20x torch, 50 %", "matmul 150 GFLOP/s",
                     "8 rows of a 16-token shared prefix + 160 tokens, the last 8 targets", "full 400 tok/s = 1.90x",
                     "full 300 tok/s = 1.30x", "capped by XLA_FLAGS=--xla_cpu_max_isa=AVX2",
                     "full 114 tok/s = 1.11x torch, 50 % of the roofline (roofline: numpy fp32 matmul 145 GFLOP/s"):
        assert expected in text, expected
    assert "no idle run" not in text


def test_a_busy_or_missing_run_shows_what_to_run_instead_of_numbers(tmp_path):
    _write(tmp_path, busy=True)
    (tmp_path / "benchmarks" / "llm_speed_gpt2.json").unlink()
    rows = table(tmp_path).splitlines()[2:]
    assert all("no idle run committed yet" in r and "python benchmarks/" in r for r in rows)
    assert not any("0.64x" in r or "1,027" in r for r in rows)


def test_the_smollm2_speed_table_says_where_ours_is_behind(tmp_path):
    _write(tmp_path, busy=False)
    text = smollm2_speed(tmp_path)
    assert "| forward | 126 | 151 | 0.78x |" in text and "| generate batch 1 | 126 | 151 | 2.18x |" in text
    assert "ahead on generate batch 1, generate batch 32 and behind on forward, forward+backward" in text
    assert "loads in 4.6 s" in text and "`python benchmarks/llm_speed.py --smollm2`" in text
    _write(tmp_path, busy=True)
    assert smollm2_speed(tmp_path).startswith("No idle run committed yet")


def test_the_mnist_row_shows_each_isa_and_the_official_script(tmp_path):
    one = FILES["mnist_aux_speed.json"] | {"end_to_end": [
        {"seeds": 10, "ours_s": 150.0, "ours_s_per_seed": 15.0, "ours_ratio_to_floor": 2.2295,
         "official_s": 240.0, "official_s_per_seed": 24.0, "official_over_ours": 1.6}]}
    _write(tmp_path, busy=False)
    (tmp_path / "benchmarks" / "mnist_aux_speed.json").write_text(json.dumps(
        {"by_isa": {"native": one, "avx2": one}, "busy": False, "machine": MACHINE, "versions": VERSIONS}))
    row = [r for r in table(tmp_path).splitlines() if r.startswith("| MNIST")][0]
    assert "native: 12.50 s at 25 seeds" in row and "avx2: 12.50 s at 25 seeds" in row
    assert "10 seeds ours 15.00 s/seed (2.23x the floor), official script 24.00 s/seed = 1.60x ours" in row


def test_the_mnist_breakdown_shows_each_isas_step_and_its_shares(tmp_path):
    from harness.bench_table import mnist_breakdown

    assert "No idle run with `--breakdown`" in mnist_breakdown(tmp_path)
    one = FILES["mnist_aux_speed.json"] | {"breakdown": {
        "seeds": 25, "step_gflop": 100.0, "gemm_seconds": {"jax": 0.4, "torch": 0.5},
        "step_seconds": {"as run": 0.8, "no noise": 0.72, "sgd": 0.76, "no noise, sgd": 0.68}}}
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "mnist_aux_speed.json").write_text(json.dumps(
        {"by_isa": {"native": one}, "busy": False, "machine": MACHINE, "versions": VERSIONS, "command": "cmd"}))
    text = mnist_breakdown(tmp_path)
    assert "| native | 800 ms (125 GFLOP/s) | 720 ms (139 GFLOP/s) | 760 ms (132 GFLOP/s) |" in text
    assert "| 400 ms (250 GFLOP/s) | 500 ms (200 GFLOP/s) | 367 GFLOP/s |" in text
    assert "native: matrix products (at XLA's batched rate) 50 %, the noise 10 %, Adam over SGD 5 %, the rest" in text
    assert "35 %." in text


def test_the_mnist_products_table_gives_each_librarys_rate_and_the_fastest_against_the_floor(tmp_path):
    from harness.bench_table import mnist_gemms

    assert "No idle run committed yet" in mnist_gemms(tmp_path)
    gemms = {"seeds": 2, "step_gflop": 3.0, "shapes": [[2, 4, 4, 4], [2, 8, 8, 8]], "shape_gflop": [1.0, 2.0],
             "executed_over_floor_work": 0.9,
             "shape_seconds": {"torch": [0.01, 0.01], "jax": [0.01, 0.02]},
             "gemm_seconds": {"torch": 0.02, "jax": 0.03}, "gemm_gflops": {"torch": 150.0, "jax": 100.0}}
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "mnist_gemms.json").write_text(json.dumps(
        {"by_isa": {"native": {"gemms": gemms, "floor_gflops": 200.0}}, "busy": False, "machine": MACHINE,
         "versions": VERSIONS, "command": "cmd"}))
    text = mnist_gemms(tmp_path)
    assert "| batch x m x k x n | GFLOP | XLA | torch bmm |" in text  # libraries in a fixed order
    assert "| 2 x 8 x 8 x 8 | 2.0 | 100 | 200 |" in text and "| all | 3 | **100** | **150** |" in text
    assert ("native: the fastest here, torch bmm, runs the step's products at 150 GFLOP/s, 75 % of the floor (XLA "
            "50 %); torch's bmm at 1.50x XLA's rate. The run executes 90 % of the work the floor counts, so a run "
            "whose every operation went at the fastest rate would take 1.20x the floor, at XLA's 1.80x") in text
