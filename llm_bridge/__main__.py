"""``python -m llm_bridge run --model tiny``: the LM trait-transfer experiment with Theorem 1's projection.

A thin launcher; the pipeline is :func:`llm_bridge.experiment.run` (docs/llm_experiment.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from llm_bridge import experiment


def run_checkpoint(args) -> int:
    """``--model PATH``: the experiment on a Hugging Face checkpoint folder; one-line errors, exit 2."""
    import dataclasses

    from llm_bridge import hf_experiment

    folder = Path(args.model).expanduser()
    if not (folder / "config.json").is_file():
        print(f"error: --model {args.model!r} is neither 'tiny' nor a checkpoint folder with config.json",
              file=sys.stderr)
        return 2
    try:
        cfg = hf_experiment.HFConfig()
        if args.hf_config is not None:
            fields = json.loads(args.hf_config.read_text())
            cfg = dataclasses.replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
        if args.student_seeds is not None:
            cfg = dataclasses.replace(cfg, student_seeds=args.student_seeds)
        if args.chat_template is not None:
            cfg = dataclasses.replace(cfg, chat_template=args.chat_template)
        start = time.perf_counter()
        results = hf_experiment.run(folder, cfg)
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"error: --model {args.model!r}: {type(err).__name__}: {err}".replace("\n", " "), file=sys.stderr)
        return 2
    out_path = args.out or experiment.ROOT / "results" / f"llm_checkpoint_{folder.name}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=1, sort_keys=True))
    print(f"llm_bridge run: {results['summary']}; {time.perf_counter() - start:.0f} s -> {out_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm_bridge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the experiment and write its results JSON")
    r.add_argument("--model", default="tiny",
                   help="'tiny' (embedded tiny LMs pretrained here, cached) or a Hugging Face checkpoint folder")
    r.add_argument("--preset", choices=("paper", "smoke"), default="paper",
                   help="configuration preset for the tiny models: 'paper' (default) or 'smoke' (the tests')")
    r.add_argument("--out", type=Path, default=None,
                   help="results JSON path (default results/llm_trait_transfer.json, results/quick/... for smoke)")
    r.add_argument("--cache-dir", type=Path, default=None,
                   help="where trained base models are cached by config hash "
                        "(default $SUBLIMINAL_LLM_CACHE or results/cache/llm_bases)")
    r.add_argument("--no-cache", action="store_true", help="always pretrain the base models, never read or write the cache")
    r.add_argument("--hf-config", type=Path, default=None,
                   help="with a checkpoint: JSON file overriding fields of llm_bridge.hf_experiment.HFConfig "
                        "(prompts, sizes, learning rates)")
    r.add_argument("--student-seeds", type=int, default=None, help="override the preset's number of student seeds")
    r.add_argument("--chat-template", choices=("auto", "none"), default=None,
                   help="with a checkpoint: 'auto' (default) renders prompts with the folder's chat template where "
                        "it has one (tokenizer_config.json or chat_template.jinja), 'none' uses plain text prompts")
    args = parser.parse_args(argv)

    if args.model != "tiny":
        return run_checkpoint(args)

    cfg = experiment.paper() if args.preset == "paper" else experiment.smoke()
    if args.student_seeds is not None:
        import dataclasses
        cfg = dataclasses.replace(cfg, student_seeds=args.student_seeds)
    cache = None if args.no_cache else (args.cache_dir or experiment.cache_dir_from_env())
    out_path = args.out or (experiment.ROOT / "results" / ("" if args.preset == "paper" else "quick")
                            / "llm_trait_transfer.json")
    start = time.perf_counter()
    results = experiment.run(cfg, cache)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=1, sort_keys=True)
    out_path.write_text(text)
    if args.out is None:  # paper_figs reads one results file per figure; both figures share this run
        out_path.with_name("llm_projection_vs_samples.json").write_text(text)
    print(f"llm_bridge run: {results['summary']}; {time.perf_counter() - start:.0f} s -> {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
