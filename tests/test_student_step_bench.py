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
