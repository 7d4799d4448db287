"""``python -m llm_bridge run --model tiny``: the LM trait-transfer experiment with Theorem 1's projection.

A thin launcher; the pipelines are :func:`llm_bridge.tiny.run` (the embedded tiny LMs,
several pretrained bases) and :func:`llm_bridge.hf_experiment.run` (a checkpoint folder);
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

from theory import results

TINY_ONLY = ("preset", "cache_dir", "no_cache", "base_seeds")
CHECKPOINT_ONLY = ("hf_config", "chat_template")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _refuse_foreign_flags(args, parser) -> None:
    """One-line usage error (exit 2) for a flag of the other kind of model."""
    foreign = CHECKPOINT_ONLY if args.model == "tiny" else TINY_ONLY
    given = [_flag(n) for n in foreign if getattr(args, n) not in (None, False)]
    if given:
        kind = "--model tiny" if args.model == "tiny" else "a checkpoint --model"
        parser.error(f"{', '.join(given)} does not apply to {kind}")


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
        out = hf_experiment.run(folder, cfg)
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"error: --model {args.model!r}: {type(err).__name__}: {err}".replace("\n", " "), file=sys.stderr)
        return 2
    out["provenance"] = results.provenance(results.command_line("python -m llm_bridge"))
    results.write_json(out_path, out)
    print(f"llm_bridge run: {out['summary']}; {time.perf_counter() - start:.0f} s -> {results.shown(out_path)}")
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
    out["provenance"] = results.provenance(results.command_line("python -m llm_bridge"))
    results.write_json(out_path, out)
    print(f"llm_bridge run: {out['summary']}; {time.perf_counter() - start:.0f} s -> {results.shown(out_path)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm_bridge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the experiment and write its results JSON")
    r.add_argument("--model", default="tiny",
                   help="'tiny' (embedded tiny LMs pretrained here, cached) or a Hugging Face checkpoint folder")
    r.add_argument("--out", type=Path, default=None,
                   help="results JSON path (default RESULTS_DIR/llm_trait_transfer.json; RESULTS_DIR/quick/... for "
                        "the smoke preset; RESULTS_DIR/llm_checkpoint_NAME.json for a checkpoint)")
    r.add_argument("--results-dir", type=Path, default=None,
                   help="folder for the default --out (default: results/ under the working directory)")
    r.add_argument("--student-seeds", type=int, default=None,
                   help="override the preset's number of student seeds (per base for --model tiny)")
    tiny_flags = r.add_argument_group("only with --model tiny")
    tiny_flags.add_argument("--preset", choices=("paper", "smoke"), default=None,
                            help="'paper' (default: 5 bases, about 10 minutes on 2 CPU cores) or 'smoke' (the "
                                 "tests': 3 short-trained bases, about 2 minutes)")
    tiny_flags.add_argument("--base-seeds", type=int, nargs="+", default=None,
                            help="override the preset's base seeds (at least two; base i's cross-model students "
                                 "start from base i + 1)")
    tiny_flags.add_argument("--cache-dir", type=Path, default=None,
                            help="where pretrained bases are cached by config hash and cache version "
                                 "(default $SUBLIMINAL_LLM_CACHE or results/cache/llm_bases under the working folder)")
    tiny_flags.add_argument("--no-cache", action="store_true",
                            help="always pretrain the bases, never read or write the cache")
    ckpt = r.add_argument_group("only with a checkpoint --model")
    ckpt.add_argument("--hf-config", type=Path, default=None,
                      help="JSON file overriding fields of llm_bridge.hf_experiment.HFConfig (prompts, sizes, rates)")
    ckpt.add_argument("--chat-template", choices=("auto", "none"), default=None,
                      help="'auto' (default) renders prompts with the folder's chat template where it has one "
                           "(tokenizer_config.json or chat_template.jinja), 'none' uses plain text prompts")
    args = parser.parse_args(argv)
    _refuse_foreign_flags(args, parser)
    if args.student_seeds is not None and args.student_seeds < 2:
        parser.error(f"--student-seeds must be >= 2 (a CI needs two seeds), got {args.student_seeds}")
    return run_tiny(args) if args.model == "tiny" else run_checkpoint(args)


if __name__ == "__main__":
    sys.exit(main())
