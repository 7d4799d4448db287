"""Committed results come from committed trees (issue 27, item 5) and MNIST results from the official images
(issue 25).

Every results file the repository tracks records, in each provenance block (``versions``: ``git_commit``
and ``uncommitted_changes``), a commit of this history and a clean tree; every tracked sweep cache entry
is of the current cache format or still read by a tracked sweep file. The files computed before these
rules (on the partly rebuilt MNIST training images, by runs resumed across uncommitted code) are listed
in :data:`AWAITING_RECOMPUTE` and :data:`AWAITING_IDLE_RERUN`: each is replaced as the recompute on the official images lands, and the
test fails if a listed file no longer needs to be listed, so the list only shrinks.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import dicts_where

from mnist_aux import sweeps

REPO = Path(__file__).resolve().parents[1]

# results files computed before the rules above, each waiting for `python -m mnist_aux sweep NAME` (or the
# command its README row gives) on the official images, from a committed tree
AWAITING_RECOMPUTE: set[str] = set()  # every MNIST results file was recomputed on the official images (2026-12-07)
# benchmark files measured before benchmarks recorded provenance and refused a busy machine (issue 27, item 8),
# each waiting for a rerun on an idle machine: `python benchmarks/NAME.py` (docs/benchmarks.md)
AWAITING_IDLE_RERUN: set[str] = set()  # the benchmark files were rerun on an idle machine on 2026-12-07


def _tracked(pattern: str) -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", pattern], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [f for f in out.stdout.split() if f.endswith(".json")]


def _versions(obj):
    """Every provenance ``versions`` block in a results file (the run's, and each cached point's)."""
    return dicts_where(obj, lambda d: "git_commit" in d or "uncommitted_changes" in d)


def _problems(path: str, have_commit) -> list[str]:
    blocks = list(_versions(json.loads((REPO / path).read_text())))
    out = [] if blocks else ["no provenance"]
    for b in blocks:
        if b.get("uncommitted_changes") is not False:
            out.append("written from a tree with uncommitted changes")
        if not have_commit(b.get("git_commit")):
            out.append(f"names commit {b.get('git_commit')}, not in this history")
    results = json.loads((REPO / path).read_text())
    reads_images = results.get("reads_images", True)  # False: a benchmark of synthetic matrices (--gemms-only)
    if Path(path).name.startswith("mnist_") and reads_images and _official(results) is not True:
        out.append("not recorded as computed on the official MNIST content")
    return sorted(set(out))


def _official(results: dict) -> bool | None:
    """Whether an MNIST results file's data were the official content (the copies comparison: its official
    run's; its other run is the rebuilt copy by design)."""
    if "runs" in results and "official" in results["runs"]:
        results = results["runs"]["official"]
    data = results.get("data")
    return data.get("official_content") if isinstance(data, dict) else None


@pytest.fixture(scope="module")
def have_commit():
    shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=REPO, capture_output=True,
                             text=True).stdout.strip() == "true"

    def check(commit) -> bool:
        if not isinstance(commit, str):
            return False
        if shallow:  # a shallow clone lacks old commits: only the form is checked
            return len(commit) == 40
        return subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=REPO,
                              capture_output=True).returncode == 0
    return check


def test_results_files_come_from_committed_trees(have_commit):
    files = [f for f in _tracked("results") if not f.startswith(("results/sweeps/", "results/archive/"))]
    assert files
    listed = AWAITING_RECOMPUTE | AWAITING_IDLE_RERUN
    bad = {f: p for f in files if f not in listed and (p := _problems(f, have_commit))}
    assert not bad, bad
    stale = sorted(f for f in listed if f in files and not _problems(f, have_commit))
    assert not stale, f"recomputed: remove from AWAITING_RECOMPUTE: {stale}"


def test_sweep_cache_entries_are_current_or_still_read(have_commit):
    """A tracked cache entry of an older format is dead unless a listed sweep file still reads it."""
    read_by_legacy = set()
    for f in AWAITING_RECOMPUTE:
        if (REPO / f).exists() and "/mnist_sweep_" in f:
            read_by_legacy |= {p.get("key") for p in json.loads((REPO / f).read_text()).get("points", [])}
    dead = []
    for f in _tracked("results/sweeps"):
        entry = json.loads((REPO / f).read_text())
        if entry["point"].get("format") != sweeps.FORMAT and entry["key"] not in read_by_legacy:
            dead.append(f)
        elif entry["point"].get("format") == sweeps.FORMAT and _problems(f, have_commit):
            dead.append(f"{f}: {_problems(f, have_commit)}")
    assert not dead, dead
