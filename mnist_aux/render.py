"""The MNIST numbers of the README and the docs, rendered from the results files (:mod:`harness.render`)."""

from __future__ import annotations

import json
from pathlib import Path

from harness.render import ci, pct, signed_ci


def _load(results_dir: Path, stem: str) -> dict:
    return json.loads((Path(results_dir) / f"{stem}.json").read_text())


def points(summary: dict) -> str:
    """A difference of two proportions in percentage points, with as many decimals as it takes for every
    nonzero bound to keep its sign (so an interval that excludes 0 never reads as touching it)."""
    return signed_ci(summary, 1, scale=100.0)


def _fig10_row(results_dir: Path) -> str:
    r = _load(results_dir, "mnist_aux_fig10")
    s, n = r["summary"], len(r["seeds"])
    return (f"| MNIST Figure 10, {n} seeds: aux-only student / cross-model student / teacher (test accuracy) | "
            f"**{pct(s['student_aux'])}** / **{pct(s['cross_aux'])}** / {100 * s['teacher']['mean']:.1f} % | "
            f"`python -m mnist_aux run --preset paper --seeds {n}` |")


def _copies_row(results_dir: Path) -> str:
    r = _load(results_dir, "mnist_data_copies")
    d, n = r["comparison"]["accuracy_difference"], len(r["seeds"])
    return (f"| MNIST training images, official vs the earlier partly rebuilt copy ({n} paired seeds, Figure 10's arms): "
            f"official − rebuilt, aux-only student / teacher / cross-model aux-only | {points(d['student_aux'])} points / "
            f"{points(d['teacher'])} / {points(d['cross_aux'])} | `python -m mnist_aux copies --other-train-images "
            f"{r['other_train_images']}` |")


def _reconcile_row(results_dir: Path) -> str:
    r = _load(results_dir, "mnist_sweep_reconcile")
    e, n = r["factor_effects"], len(r["seeds"])
    m = lambda k: e[k]["mean_over_settings"]
    return (f"| MNIST, why published numbers differ ({n} paired seeds per cell): Adam − tuned SGD / KL − MSE / "
            f"batchmean − mean, aux-only student | {points(m('optimizer'))} points / {points(m('loss'))} / "
            f"{points(m('reduction'))} | `python -m mnist_aux sweep reconcile` |")


def _shared(point: dict) -> dict | None:
    return next((s for s in point["students"] if s["init"] == "shared"), None)


def _factors_row(results_dir: Path) -> str:
    from mnist_aux.sweeps import FACTOR_SWEEPS

    parts, spans, cross, seeds = [], [], [], set()
    for name in FACTOR_SWEEPS:
        if name == "peers":
            continue
        r = _load(results_dir, f"mnist_sweep_{name}")
        seeds.add(len(r["seeds"]))
        pts = [(p["label"], _shared(p)["accuracy_summary"]["mean"]) for p in r["points"] if _shared(p)]
        lo, hi = min(pts, key=lambda t: t[1]), max(pts, key=lambda t: t[1])
        parts.append(f"{100 * lo[1]:.1f} % ({lo[0]}) … {100 * hi[1]:.1f} % ({hi[0]})")
        spans.append((hi[1] - lo[1], r["title"]))
        cross += [s["accuracy_summary"]["mean"] for p in r["points"] for s in p["students"] if s["init"] == "cross"]
    top = [t for _, t in sorted(spans, reverse=True)[:2]]
    return (f"| MNIST, the factors peers vary ({'/'.join(map(str, sorted(seeds)))} seeds per point, aux-only student; "
            "lowest … highest mean per sweep, CIs in [docs](docs/mnist_dissect.md#the-factors-the-2026-reproductions-vary"
            f"-and-the-peer-table)): {' / '.join(n for n in FACTOR_SWEEPS if n != 'peers')} | {' / '.join(parts)}: "
            f"**{top[0]} and {top[1]} move transfer most** (widest spans); cross-model aux-only students "
            f"{100 * min(cross):.1f}-{100 * max(cross):.1f} % at every point | `python -m mnist_aux sweep NAME` |")


def _align_row(results_dir: Path) -> str:
    r = _load(results_dir, "mnist_alignment")
    a, n = r["results"], len(r["seeds"])
    acc = lambda k: pct(a[k]["final_accuracy_summary"])
    return (f"| MNIST, every student step projected off θ_T − θ_0 / off the digit-loss gradient ({n} seeds; "
            f"unconstrained {acc('none')}) | {acc('displacement')} / {acc('trait')} | `python -m mnist_aux align` |")


def readme_rows(results_dir: Path) -> str:
    """The MNIST rows of the README's results table."""
    return "\n".join(f(results_dir) for f in (_fig10_row, _copies_row, _reconcile_row, _factors_row, _align_row))


def peer_table(results_dir: Path) -> str:
    """docs/mnist_dissect.md's peer table (:func:`mnist_aux.peers.markdown`)."""
    from mnist_aux import peers

    return peers.markdown(_load(results_dir, "mnist_peers"))


def factor_sweep(results_dir: Path, name: str) -> str:
    """docs/mnist_dissect.md's table of one factor sweep (:func:`mnist_aux.sweeps.paired_markdown`)."""
    from mnist_aux import sweeps

    return sweeps.paired_markdown(_load(results_dir, f"mnist_sweep_{name}"))


def fig10_tables(results_dir: Path) -> str:
    """docs/mnist_aux.md's Figure 10 tables (accuracy and theory cosines per arm) and what they say per seed."""
    import numpy as np

    from mnist_aux.__main__ import table

    r = _load(results_dir, "mnist_aux_fig10")
    aux, cross = np.asarray(r["accuracy"]["student_aux"]), np.asarray(r["accuracy"]["cross_aux"])
    cos = np.asarray(r["theory_cosine"]["student_aux"])
    t = r["timing"]
    return (table(r) + f"\n\nThe aux-only student beats chance in {int((aux > 0.1).sum())} of {aux.size} seeds "
            f"({100 * aux.min():.0f} % to {100 * aux.max():.0f} %; above 50 % in {int((aux > 0.5).sum())}) and the "
            f"cross-model aux-only student stays near chance ({100 * cross.min():.0f} % to {100 * cross.max():.0f} %). "
            f"The shared-init student's first step points toward the teacher in {int((cos > 0).sum())} of {cos.size} "
            f"seeds, though only slightly (mean cosine {cos.mean():.3f} in a 270k-dimensional space). Wall time "
            f"{t['wall_seconds'] / 60:.0f} min, peak {t['peak_rss_gib']:.1f} GiB ({t['n_chunks']} chunks of "
            f"{t['seeds_per_chunk']} seeds; load average {', '.join(f'{v:.1f}' for v in r['machine']['load_average'])} "
            f"when it started, on the {r['machine']['cpu']})." )


def copies_table(results_dir: Path) -> str:
    """docs/mnist_aux.md's paired comparison of the two copies of the training images."""
    from mnist_aux import experiment

    return experiment.copies_markdown(_load(results_dir, "mnist_data_copies"))


SWEEP_ROWS = (  # docs/mnist_dissect.md's sweeps table: (sweep, row title, how a point is named, show the cosine)
    ("width", "hidden width", "x", False),
    ("n_aux", "aux logits m", "x", False),
    ("depth", "hidden layers", "x", False),
    ("sigma", "init mismatch σ (θ_0 + σ·std·noise)", "x", True),
    ("inputs", "distillation inputs", "label", False),
    ("heads", "which layers are shared", "label", False),
)


def _sweep_row(results_dir: Path, name: str, title: str, naming: str, cosine: bool) -> str:
    r = _load(results_dir, f"mnist_sweep_{name}")
    n, cells, fewer, cross = len(r["seeds"]), [], [], []
    for p in r["points"]:
        key = p["x"] if naming == "x" else p["label"]
        shared = next((s for s in p["students"] if s["init"] != "cross"), None)  # the point's own student
        if shared is not None:
            cell = f"{key}: {ci(shared['accuracy_summary'], 1, scale=100.0)}"
            cells.append(cell + (f", cos {shared['theory_cosine_summary']['mean']:+.3f}" if cosine else ""))
        if len(p["seeds"]) != n:
            fewer.append(f"{key}: {len(p['seeds'])} seeds" if not fewer else f"{key}: {len(p['seeds'])}")
        cross += [s["accuracy_summary"]["mean"] for s in p["students"] if s["init"] == "cross"]
    title += f" ({', '.join(fewer)})" if fewer else ""
    official = "" if r.get("data", {}).get("official_content") else " (rebuilt training images)"
    return (f"| {title}{official} | {'; '.join(cells)} | {100 * min(cross):.1f}-{100 * max(cross):.1f} % |")


def sweeps_table(results_dir: Path) -> str:
    """docs/mnist_dissect.md's table of the six factor sweeps: each point's own student's accuracy mean [95 % CI]
    (%; the shared-init student, or the point's perturbed or partly re-initialised one), and the range of the cross-model students' means; a sweep still on the rebuilt training
    images says so."""
    head = ["| sweep | shared-init student accuracy along the sweep | cross-model |", "| --- | --- | --- |"]
    return "\n".join(head + [_sweep_row(results_dir, *row) for row in SWEEP_ROWS])
