"""docs/mnist_dissect.md's reconciliation and alignment numbers are rendered from the committed results files
(mnist_aux.render): each renderer's key values equal the stored floats formatted once, a renderer refuses to
render prose whose claim the file no longer supports, and the doc's sections carry the render markers."""

import json
import re
import shutil

import numpy as np
import pytest
from conftest import REPO

from harness import render as harness_render
from mnist_aux import render

RESULTS = REPO / "results"
DOC = REPO / "docs" / "mnist_dissect.md"


def _load(stem: str) -> dict:
    return json.loads((RESULTS / f"{stem}.json").read_text())


def _signed(summary: dict, digits: int, scale: float = 1.0) -> str:
    m, (lo, hi) = summary["mean"], summary["ci95"]
    return f"{scale * m:+.{digits}f} [{scale * lo:+.{digits}f}, {scale * hi:+.{digits}f}]"


def _percent(summary: dict) -> str:
    m, (lo, hi) = summary["mean"], summary["ci95"]
    return f"{100 * m:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"


def _shared(point: dict, init: str = "shared") -> dict:
    return next(s for s in point["students"] if s["init"] == init)


def test_short_notation_of_rates_and_losses():
    assert render._e(3e-4) == "3e-4" and render._e(0.3 / 1024) == "2.93e-4" and render._e(0.3) == "0.3"
    assert render._e(0.0023355749, 2) == "2.3e-3" and render._e(3.589e-4, 2) == "3.6e-4"


def test_reconcile_tables_quote_the_stored_floats():
    r = _load("mnist_sweep_reconcile")
    text = render.reconcile_tables(RESULTS)
    cells = {(p["distill"]["loss"], p["distill"]["reduction"], p["distill"]["optimizer"]): p for p in r["points"]}
    kl_adam = cells[("kl", "mean", "adam")]
    assert (f"| KL | mean | Adam 3e-4 | {_percent(_shared(kl_adam)['accuracy_summary'])} | "
            f"{_percent(_shared(kl_adam, 'cross')['accuracy_summary'])} |") in text
    # SGD's rate is the one its tuning chose; a batch sum's is the per-example mean's over the batch size
    tuning = r["sgd_tuning"]
    assert tuning["mse/batchmean"]["chosen"] * r["base_config"]["batch_size"] == tuning["mse/mean"]["chosen"] == 0.3
    mse_sgd = _shared(cells[("mse", "batchmean", "sgd")])["accuracy_summary"]
    assert f"| MSE | batchmean | SGD 2.93e-4 (0.3 / 1024) | {_percent(mse_sgd)} |" in text
    opt = r["factor_effects"]["optimizer"]["mean_over_settings"]  # one decimal keeps every bound's sign
    mean, interval = _signed(opt, 1, 100.0).split(" ", 1)
    assert f"| optimizer: adam - sgd | {mean} points | {interval} |" in text
    assert f"{len(r['seeds'])} seeds per cell" in text and text.count("\n| KL |") + text.count("\n| MSE |") == 8


def test_reconcile_prose_quotes_the_stored_floats():
    r = _load("mnist_sweep_reconcile")
    summary, notes = render.reconcile_summary(RESULTS), render.reconcile_notes(RESULTS)
    opt = r["factor_effects"]["optimizer"]["mean_over_settings"]
    assert f"Adam vs tuned SGD {_signed(opt, 1, 100.0)} points (paired over {len(r['seeds'])} seeds" in summary
    mse_adam = next(p for p in r["points"] if p["x"] == "mse/mean/adam")
    assert f"{100 * _shared(mse_adam)['accuracy_summary']['mean']:.1f} %" in summary
    cross = [_shared(p, "cross")["accuracy_summary"]["mean"] for p in r["points"]]
    assert f"at chance in every cell ({100 * min(cross):.1f}-{100 * max(cross):.1f} %)" in notes
    final = {p["x"]: np.mean(_shared(p)["final_loss"]) for p in r["points"]}
    assert f"{final['kl/mean/sgd'] / final['kl/mean/adam']:.1f}x worse than Adam" in notes


def test_alignment_renderers_quote_the_stored_floats():
    r = _load("mnist_alignment")
    a = r["results"]
    text, summary = render.alignment_tables(RESULTS), render.alignment_summary(RESULTS)
    for arm in r["arms"]:
        kl = np.mean(a[arm]["kl_last_epoch_mean"])
        assert f"| {a[arm]['label']} | {_percent(a[arm]['final_accuracy_summary'])} | {kl:.2e} |" in text
    assert f"mean over steps {_signed(a['none']['mean_cos_disp_summary'], 3)}" in text
    assert f"is {_signed(a['displacement']['mean_cos_trait_summary'], 3)})" in text
    assert f"below chance ({100 * a['displacement']['final_accuracy_summary']['mean']:.1f} %)" in summary


@pytest.mark.parametrize("stem, edit, renderer", [
    ("mnist_alignment", lambda r: r["results"]["displacement"]["final_accuracy_summary"].update(ci95=[0.05, 0.15]),
     render.alignment_summary),
    ("mnist_sweep_reconcile", lambda r: r["factor_effects"]["optimizer"]["by_setting"]["kl/mean"].update(mean=0.05),
     render.reconcile_notes),
])
def test_a_claim_the_file_no_longer_supports_stops_the_rendering(tmp_path, stem, edit, renderer):
    shutil.copy(RESULTS / f"{stem}.json", tmp_path)
    renderer(tmp_path)  # the committed file supports the prose
    r = json.loads((tmp_path / f"{stem}.json").read_text())
    edit(r)
    (tmp_path / f"{stem}.json").write_text(json.dumps(r))
    with pytest.raises(ValueError, match="reword it"):
        renderer(tmp_path)


def test_the_reconcile_and_alignment_sections_are_rendered_not_typed():
    text = DOC.read_text()
    summary = text[text.index("## What the results show"):text.index("## Tables")]
    tables = text[text.index("## Tables"):text.index("## The factors the 2026 reproductions vary")]
    for spec in ("reconcile_summary", "alignment_summary"):
        assert f"<!-- render mnist_aux.render:{spec} -->" in summary
    for spec in ("reconcile_tables", "reconcile_notes", "sweeps_table", "alignment_tables"):
        assert f"<!-- render mnist_aux.render:{spec} -->" in tables
    # outside the blocks no percentage with decimals and no interval is typed in these sections
    typed = harness_render.BLOCK.sub("", summary + tables)
    assert not re.findall(r"\d\.\d+ ?%|\[[-+−]?\d[\d.]*, ", typed), "a result typed by hand outside a render block"
