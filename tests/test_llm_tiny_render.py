"""The tiny-LM results as the README and docs/llm_experiment.md read them: which vector ISA each committed
15-base run was computed under, and whether the runs under other ISAs reach the native run's verdicts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llm_bridge.experiment import render

RESULTS = Path(__file__).resolve().parent.parent / "results"
AVX512 = {"avx": True, "avx2": True, "avx512f": True, "fma": True, "sse4_2": True, "xla_cpu_max_isa": None}


@pytest.mark.parametrize("isa, label", [(AVX512, "AVX-512"), ({**AVX512, "xla_cpu_max_isa": "AVX"}, "AVX"),
                                        ({**AVX512, "avx512f": False}, "AVX2"),
                                        ({**AVX512, "avx512f": False, "avx2": False}, "native")])
def test_isa_label_names_the_cap_or_the_widest_vectors(isa, label):
    assert render.isa_label({"provenance": {"machine": {"isa": isa}}}) == label


def _write(folder: Path, stem: str, isa: dict, flip: str | None = None) -> None:
    """The committed 15-base run under another ``isa``; ``flip``: an arm whose owl contrast changes verdict."""
    r = json.loads((RESULTS / "llm_trait_transfer_bases.json").read_text())
    r["provenance"]["machine"]["isa"] = isa
    if flip:
        s = r["transfer"][flip]["owl - dog (fine-tuned)"]["tiny"]["delta_margins_owl"]
        s["ci95"] = [-1.0, 1.0] if render.verdict(s) != "CI covers 0" else [0.5, 1.0]
    (folder / f"{stem}.json").write_text(json.dumps(r))


def test_the_readme_sentence_names_every_isa_that_confirms_the_verdicts(tmp_path):
    shutil.copy(RESULTS / "llm_trait_transfer_bases.json", tmp_path)
    assert "not yet confirmed by a run under another vector ISA" in render.readme_summary(tmp_path)
    _write(tmp_path, "llm_trait_transfer_bases_avx", {**AVX512, "xla_cpu_max_isa": "AVX"})
    _write(tmp_path, "llm_trait_transfer_bases_avx2", {**AVX512, "avx512f": False})
    sentence = render.readme_summary(tmp_path)
    assert ("Measured on AVX-512; runs under AVX (`XLA_FLAGS=--xla_cpu_max_isa=AVX`) and AVX2 (natively) reach the "
            "same verdict on every arm.") in sentence
    reading = render.docs_tiny_reading(tmp_path)
    assert "15 bases, AVX-512 vs AVX, over all 8 transfer rows" in reading
    assert "15 bases, AVX-512 vs AVX2, over all 8 transfer rows" in reading
    assert render.docs_tiny_table(tmp_path).splitlines()[0].endswith("| 15 bases | 15 bases, AVX | 15 bases, AVX2 |")
    _write(tmp_path, "llm_trait_transfer_bases_avx2", {**AVX512, "avx512f": False}, flip="soft")
    assert "differ in verdict on some arm" in render.readme_summary(tmp_path)
    assert "15 bases, AVX-512 vs AVX2, over all 8 transfer rows (both animals, every arm and teacher kind): the same " \
           "verdict on not every row" in render.docs_tiny_reading(tmp_path)
