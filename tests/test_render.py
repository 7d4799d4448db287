"""README and docs numbers are rendered from the results files (harness.render), and the committed files
equal what the command renders."""

import os
from pathlib import Path

import pytest
from conftest import REPO

from harness import render


def test_the_committed_readme_and_docs_are_what_the_results_render(monkeypatch, capsys):
    """`python -m harness.render --check` from the repository: no stale number in README.md or docs/*.md."""
    monkeypatch.chdir(REPO)
    code = render.main(["--check"])
    assert code == 0, capsys.readouterr().err
    blocks = sum(len(render.BLOCK.findall(p.read_text())) for p in render.default_files(REPO))
    assert blocks >= 10


def test_one_rounding_rule_from_the_stored_value():
    s = {"mean": 0.53387, "ci95": [0.51302, 0.55473]}
    assert render.pct(s) == "53.4 % [51.3, 55.5]"  # each number rounded once, from the file's value
    assert render.ci({"mean": -0.0003, "ci95": [-0.0006, -0.0001]}, 2, True, scale=100) == "-0.03 [-0.06, -0.01]"
    assert render.num(0.125, 2) == "0.12" and render.num(2.5, 0, True) == "+2"  # round half to even, as format


def test_check_names_a_stale_block_and_render_fixes_it(tmp_path, monkeypatch, capsys):
    md = tmp_path / "x.md"
    md.write_text("a\n<!-- render tests_render_helper:value 7 -->\nold\n<!-- /render -->\nb\n")
    (tmp_path / "tests_render_helper.py").write_text("def value(results_dir, k):\n    return f'seven is {k}'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert render.main(["--check", str(md)]) == 1
    assert "tests_render_helper:value" in capsys.readouterr().err and "old" in md.read_text()
    assert render.main([str(md)]) == 0
    assert md.read_text() == "a\n<!-- render tests_render_helper:value 7 -->\nseven is 7\n<!-- /render -->\nb\n"
    assert render.main(["--check", str(md)]) == 0
    assert render.main(["--check", str(tmp_path / "missing.md")]) == 2
