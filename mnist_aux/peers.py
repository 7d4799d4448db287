"""The peer table: every public number for the MNIST auxiliary-logit experiment beside ours.

Independent reproductions of the paper's Figure 10 report aux-only student accuracies from
17% to 84% for "the same" experiment. Each :class:`PeerNumber` is one published number (as
its authors report it, with their spread and its kind), the setting it was measured at,
and where our number at the closest setting we run comes from: a results file
(``results/<stem>.json``: Figure 10's 100-seed run or a sweep of :mod:`mnist_aux.sweeps`)
and the point and student in it. :func:`assemble` reads those files and returns the table
(``results/mnist_peers.json``); :func:`markdown` writes it for docs/mnist_dissect.md and
``mnist_peers`` (:mod:`mnist_aux.dissect_figures`) draws it.

Nothing here is re-measured for a peer: their numbers are quoted, ours are the committed
results' 95% CIs (Student's t over seeds).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from harness.results import read_results
from theory.stats import mean_ci

FIG10 = "mnist_aux_fig10"


@dataclass(frozen=True)
class PeerNumber:
    source: str  # who reported it
    where: str  # paper / repository
    arm: str  # which student
    value: float | None  # their mean accuracy (fraction); None: the setting only, no number quoted
    spread: float | None  # their +- (fraction), of kind ``spread_kind``
    spread_kind: str  # "std", "+-" (kind not stated), or ""
    n: int | None  # their number of runs
    setting: str  # their setting, as they describe it
    stem: str  # our results file
    point: str | None  # the point's x in a sweep file (None: Figure 10's file)
    init: str  # our student: a sweep student's init, or a Figure-10 arm
    ours: str  # our setting: how it differs from the paper's (:data:`BASE`)
    gap: str  # how our setting differs, and what that may explain


PAPER = "Cloud et al. 2025, Figure 10"
JIANG = "Jiang, Nagashima, Miyamoto (Comments & Extensions)"
YUXUAN = "yuxuanwang2009/subliminal-learning"
JASS = "jasshone/takehome"
BROCKERS = "Brockers et al. (arXiv 2605.23645)"
BASE = ("784-256-256-(10+3), official init, Adam 3e-4, batch 1024, teacher 5 epochs CE on digits, "
        "student 5 epochs KL on the 3 aux logits, 60k uniform noise")

PEERS = (
    PeerNumber(PAPER, "arXiv 2507.14805", "aux-only student, shared init", 0.53, None, "", 100,
               "the official script (read off the figure: ~53%)", FIG10, None, "student_aux", "the paper's; 100 seeds",
               "none: the paper's setting"),
    PeerNumber(PAPER, "arXiv 2507.14805", "aux-only student, cross-model init", 0.11, None, "", 100,
               "the official script (~11%)", FIG10, None, "cross_aux", "the paper's; 100 seeds",
               "we pair seeds by a derangement (torch.randperm leaves ~1 in n paired with itself)"),
    PeerNumber(PAPER, "arXiv 2507.14805", "all-logit student, shared init", 0.91, None, "", 100,
               "the official script (~91%)", FIG10, None, "student_all", "the paper's, imitating all 13 logits; 100 seeds",
               "none: the paper's setting"),
    PeerNumber(JIANG, "Comments & Extensions", "aux-only student, shared init", 0.271, 0.033, "+-", 20,
               "MSE on the aux logits (otherwise the paper's setting as we read it)", "mnist_sweep_aux_logits", "3/MSE",
               "shared", "MSE instead of KL; 20 seeds",
               "MSE = mean over the 3 aux logits per example, batch mean, Adam 3e-4; their reduction and rate "
               "are not stated in what we quote"),
    PeerNumber(JIANG, "Comments & Extensions", "aux-only student, cross-model init", 0.093, 0.018, "+-", 20,
               "as above", "mnist_sweep_aux_logits", "3/MSE", "cross", "as above",
               "as above"),
    PeerNumber(YUXUAN, "GitHub", "aux-only student, shared init", 0.588, 0.123, "std", 20,
               "Adam 3e-4, batch 128, 60k noise (range 28-78%)", "mnist_sweep_batch", "128", "shared",
               "batch 128 (teacher and student); 20 seeds",
               "their epochs and init are taken as the paper's; batch 128 is 8x the steps of batch 1024"),
    PeerNumber(YUXUAN, "GitHub", "aux-only student, different init", 0.090, 0.045, "std", 20,
               "as above", "mnist_sweep_batch", "128", "cross", "as above",
               "as above"),
    PeerNumber(YUXUAN, "GitHub", "all-logit student, shared init", 0.97, None, "", 20,
               "as above (96-98%)", "mnist_sweep_peers", "all_logits_b128", "shared",
               "batch 128, imitating all 13 logits; 20 seeds",
               "as above"),
    PeerNumber(JASS, "GitHub", "aux-only student, shared init", 0.55, None, "", 25,
               "25 vmapped models, the paper's setting (~55%)", "mnist_sweep_noise", "uniform", "shared",
               "the paper's; 20 seeds", "none known"),
    PeerNumber(JASS, "GitHub", "aux-only student, shared init", 0.772, None, "", None,
               "spatially correlated noise, width 256 (77.2%)", "mnist_sweep_noise", "uniform_blur2", "shared",
               "the uniform noise blurred by a 2-pixel Gaussian, each pixel rescaled to the uniform's std; 20 seeds",
               "their correlation length and scaling are not stated in what we quote; we fixed 2 px (the middle of "
               "1, 2, 4 px) in advance; the other lengths are in the noise sweep"),
    PeerNumber(BROCKERS, "arXiv 2605.23645", "aux-only student, shared init", None, None, "", None,
               "defaults: 2 x 256 hidden, m = 10, Adam 1e-3, MSE on the aux outputs (m swept 3..250)",
               "mnist_sweep_peers", "brockers", "shared",
               "m = 10, Adam 1e-3 (teacher and student), MSE on the 10 aux logits; 20 seeds",
               "their batch size, epochs and init are taken as the paper's; no single number quoted here"),
    PeerNumber(BROCKERS, "arXiv 2605.23645", "aux-only student, cross-model init", None, None, "", None,
               "as above", "mnist_sweep_peers", "brockers", "cross", "as above", "as above"),
)


def _ours(peer: PeerNumber, files: dict) -> dict:
    res = files[peer.stem]
    if peer.point is None:
        return {"accuracy": res["accuracy"][peer.init], "seeds": len(res["seeds"])}
    x, series = (peer.point.split("/") + [""])[:2]
    for p in res["points"]:
        if str(p["x"]) == x and p.get("series", "") == series:
            student = next((s for s in p["students"] if s["init"] == peer.init), None)
            if student is None:
                raise KeyError(f"{peer.stem}: point {peer.point!r} has no {peer.init!r} student")
            return {"accuracy": student["accuracy"], "seeds": len(p["seeds"]), "label": p["label"]}
    raise KeyError(f"{peer.stem}: no point {peer.point!r}")


def stems() -> list[str]:
    """The results files the table reads (``results/<stem>.json``)."""
    return sorted({p.stem for p in PEERS})


def load(folder, missing) -> dict:
    """The results files the table reads, ``stem -> dict`` from ``folder/<stem>.json``;
    ``missing(stem)`` supplies (or raises for) one that is absent or unreadable (not JSON, not a
    JSON object: :func:`harness.results.read_results`)."""
    files = {}
    for stem in stems():
        try:
            files[stem] = read_results(Path(folder) / f"{stem}.json")
        except ValueError:
            files[stem] = None
        if files[stem] is None:
            files[stem] = missing(stem)
    return files


def assemble(files: dict) -> dict:
    """The table from the results dicts ``files`` (stem -> dict): one row per :data:`PEERS` entry.

    ``KeyError`` with one line naming the file where one lacks the point or student a row reads,
    or is not laid out as a results file at all.
    """
    rows = []
    for peer in PEERS:
        try:
            ours = _ours(peer, files)
            summary = mean_ci(ours["accuracy"])
        except KeyError:
            raise
        except (TypeError, ValueError, IndexError, AttributeError) as err:
            raise KeyError(f"{peer.stem}: not laid out as a results file ({type(err).__name__}: "
                           f"{' '.join(str(err).split())[:200]})") from None
        rows.append({**asdict(peer), "ours_summary": summary, "ours_seeds": ours["seeds"],
                     "ours_point": ours.get("label", peer.init)})
    official = [(files[s].get("data") or {}).get("official_content") is True for s in stems()]
    return {"rows": rows, "sources": {s: str(files[s].get("command", "")) for s in stems()},
            "data": {"official_content": all(official)},  # every file it reads was computed on the official images
            "ci": "95% CI of the mean over seeds (Student's t)"}


def _pct(v):
    return "" if v is None else f"{100 * v:.1f}%"


def markdown(table: dict) -> str:
    lines = [f"Our setting is the paper's unless the row says otherwise: {BASE}.", "","| peer | student | their number | their setting | ours (95% CI) | our setting | gap |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in table["rows"]:
        theirs = "(setting only)" if r["value"] is None else _pct(r["value"])
        if r["spread"] is not None:
            theirs += f" ± {100 * r['spread']:.1f}" + (" (std)" if r["spread_kind"] == "std" else "")
        if r["n"]:
            theirs += f", n = {r['n']}"
        s = r["ours_summary"]
        ours = f"{_pct(s['mean'])} [{_pct(s['ci95'][0])}, {_pct(s['ci95'][1])}], n = {s['n']}"
        lines.append(f"| {r['source']} | {r['arm']} | {theirs} | {r['setting']} | {ours} | {r['ours']} | {r['gap']} |")
    return "\n".join(lines)
