"""paper_figs.py: registry, result caching, CLI errors; and the theory teaching demo."""

import json

import matplotlib.pyplot as plt
import pytest

import paper_figs
from theory import demo


class FakeFigure:
    name = "fake"
    results = "fake"

    def __init__(self):
        self.calls = 0

    def compute(self, quick, results_dir):
        self.calls += 1
        return {"config": {"seed": 0, "quick": quick}, "value": 3}

    def plot(self, results):
        fig, ax = plt.subplots()
        ax.bar([0], [results["value"]])
        return fig


def test_results_are_computed_once_then_reused(tmp_path):
    fig = FakeFigure()
    r1, how1 = paper_figs.load_or_compute(fig, tmp_path, quick=True, recompute=False, done={})
    r2, how2 = paper_figs.load_or_compute(fig, tmp_path, quick=True, recompute=False, done={})
    assert fig.calls == 1 and r1["value"] == r2["value"] == 3
    assert json.loads((tmp_path / "fake.json").read_text())["config"] == {"seed": 0, "quick": True}
    paper_figs.load_or_compute(fig, tmp_path, quick=True, recompute=True, done={})
    assert fig.calls == 2


def test_figures_sharing_a_results_file_compute_it_once(tmp_path):
    first, second = FakeFigure(), FakeFigure()
    second.name = "fake_second"
    done = {}
    paper_figs.load_or_compute(first, tmp_path, quick=True, recompute=True, done=done)
    r, how = paper_figs.load_or_compute(second, tmp_path, quick=True, recompute=True, done=done)
    assert first.calls == 1 and second.calls == 0 and r["value"] == 3 and "shares" in how


def test_results_go_under_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paper_figs.main(["--only", "theorem1_demo", "--quick"]) == 0
    assert (tmp_path / "results" / "quick" / "theorem1_demo.json").is_file()
    assert (tmp_path / "figures" / "quick" / "theorem1_demo.png").is_file()


def test_an_unwritable_results_folder_is_one_line_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert paper_figs.main(["--only", "theorem1_demo", "--results-dir", str(blocker)]) == 2
    assert "error" in capsys.readouterr().err


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


def test_every_committed_results_file_draws_its_figures():
    """Each registered figure whose results file is committed draws from it (a results file whose layout
    the plotting code no longer reads fails here, not in front of a reader)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "results"
    drawn = 0
    for name, fig in paper_figs.registered_figures().items():
        path = root / f"{fig.results}.json"
        if path.exists():
            plt.close(fig.plot(json.loads(path.read_text())))
            drawn += 1
    assert drawn >= 10
