"""paper_figs.py: registry, result caching, CLI errors; and the theory teaching demo."""

import json

import matplotlib.pyplot as plt
import pytest

import paper_figs
from theory import demo


class FakeFigure:
    name = "fake"

    def __init__(self):
        self.calls = 0

    def compute(self, quick):
        self.calls += 1
        return {"config": {"seed": 0, "quick": quick}, "value": 3}

    def plot(self, results):
        fig, ax = plt.subplots()
        ax.bar([0], [results["value"]])
        return fig


def test_results_are_computed_once_then_reused(tmp_path):
    fig = FakeFigure()
    r1, how1 = paper_figs.load_or_compute(fig, tmp_path, quick=True, recompute=False)
    r2, how2 = paper_figs.load_or_compute(fig, tmp_path, quick=True, recompute=False)
    assert fig.calls == 1 and r1["value"] == r2["value"] == 3
    assert json.loads((tmp_path / "fake.json").read_text())["config"] == {"seed": 0, "quick": True}
    paper_figs.load_or_compute(fig, tmp_path, quick=True, recompute=True)
    assert fig.calls == 2


def test_every_theory_figure_is_registered(capsys):
    assert paper_figs.main(["--list"]) == 0
    names = capsys.readouterr().out.split()
    assert {"theorem1_convergence", "theorem1_shared_vs_different_init", "theorem1_demo"} <= set(names)


def test_unknown_figure_is_a_usage_error():
    with pytest.raises(SystemExit) as err:
        paper_figs.main(["--only", "no_such_figure"])
    assert err.value.code == 2


def test_demo_shows_transfer_for_shared_init_and_not_for_a_different_one(tmp_path, capsys):
    r = demo.compute(quick=True)
    assert r["shared"]["inner"] > 0 and r["shared"]["L_T_after_small_step"] < r["shared"]["L_T_init"]
    assert r["different"]["inner"] < 0 and r["different"]["L_T_after_small_step"] > r["different"]["L_T_init"]
    # first order: the exact inner product is close to eps * A at the demo's (large) eps
    assert 0.5 < r["shared"]["inner"] / r["shared"]["eps_A"] < 1.5
    assert demo.main(["--out", str(tmp_path / "demo.png")]) == 0
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert "theory.demo: wrote" in capsys.readouterr().out
