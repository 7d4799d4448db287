"""benchmarks/student_step.py: the smoke run writes both update kinds with sane numbers (not a timing claim)."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "student_step.py"


def _script():
    spec = importlib.util.spec_from_file_location("student_step_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_smoke_run_writes_full_and_lora(tmp_path):
    out = tmp_path / "s.json"
    rc = _script().main(["--smoke", "--force", "--out", str(out), "--steps", "2", "--repeats", "1", "--ranks", "2"])
    assert rc == 0
    result = json.loads(out.read_text())
    assert set(result["results"]) == {"full", "lora r2"}
    assert result["busy"] is True  # --force: marked, whatever the machine's state
    assert result["command"].startswith("python benchmarks/student_step.py --smoke --force")
    assert result["floor_gflops"] == max(result["floor_timings_gflops"]) > 0
    for kind, row in result["results"].items():
        for key in ("ours_tok_s", "torch_tok_s", "ratio_ours_over_torch", "gflops_achieved"):
            assert math.isfinite(row[key]) and row[key] > 0, (kind, key, row[key])
        assert 0 < row["roofline_fraction"] < 1.5, (kind, row["roofline_fraction"])
        assert row["xla_flops_per_step"] > 0 and row["analytic_flops_per_step"] > 0
        assert row["first_loss_rel_diff"] < 1e-3  # both sides took the same step
    full, adapters = result["results"]["full"], result["results"]["lora r2"]
    assert full["trainable_params"] == full["params"] > adapters["trainable_params"]
    assert adapters["trainable_params"] == adapters["torch_trainable_params"]
    assert adapters["lora_scale"] == 16 / 2


def test_study_rows_name_the_last_targets_after_a_shared_prefix():
    """--prefix / --targets: the loss reads the positions before each row's last N tokens, laid out as
    batching.training_batches lays the study's rows out (width a multiple of WIDTH_BUCKET, weight 0 beyond N)."""
    import argparse

    import jax

    module = _script()
    args = argparse.Namespace(steps=2, batch=3, seq=40, prefix=16)
    b = module.random_batches(jax.random.key(0), args, 5, 100)
    assert b["prefix"].shape == (2, 1, 16) and b["rest"].shape == (2, 3, 40)
    assert b["at"].shape == (2, 3, 16) and b["weight"].sum(axis=-1).tolist() == [[5] * 3] * 2
    w = b["weight"][0, 0]
    assert b["at"][0, 0][w].tolist() == list(range(34, 39))
    assert (b["label"][1, 2][w] == b["rest"][1, 2, 35:]).all()
    every = module.random_batches(jax.random.key(0), argparse.Namespace(steps=1, batch=2, seq=9, prefix=0), 8, 100)
    assert every["prefix"].shape == (1, 1, 0) and every["at"][0, 1].tolist() == list(range(8))
    assert (every["label"][0] == every["rest"][0, :, 1:]).all()


@pytest.mark.slow
def test_smoke_run_with_the_study_rows_takes_the_same_step_as_torch(tmp_path):
    out = tmp_path / "rows.json"
    rc = _script().main(["--smoke", "--force", "--out", str(out), "--steps", "2", "--repeats", "1", "--ranks",
                         "--prefix", "16", "--seq", "40", "--targets", "5"])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["config"]["prefix"] == 16 and result["config"]["targets"] == 5
    assert result["results"]["full"]["first_loss_rel_diff"] < 1e-3  # torch's -100 labels: the same loss
    assert result["config"]["tokens_per_call"] == 2 * 3 * 0 + 2 * 8 * (16 + 40)
