"""README and docs numbers rendered from the results files: one command, one rounding rule.

A markdown file holds marked blocks::

    <!-- render mnist_aux.render:fig10_table -->
    ...text the function returns...
    <!-- /render -->

``python -m harness.render`` rewrites every block of README.md and docs/*.md with what the named
function (``module:function``, imported by name, so this module imports nothing of the project's)
returns for the results folder; ``--check`` writes nothing and fails, naming each stale block, when
a file differs from its rendering (a default-tier test runs it). Arguments after the function name
are passed to it as strings.

One rounding rule: every number is formatted once, from the value stored in the results file, by
:func:`num`, :func:`pct` or :func:`ci` (Python's round-half-even of the float, through ``format``);
never from a number rounded before.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

BLOCK = re.compile(r"(<!-- render (?P<spec>[\w.]+:\w+)(?P<args>(?: [^ >]+)*) -->\n)(?P<body>.*?)(<!-- /render -->)",
                   re.S)


def num(x: float, digits: int = 2, sign: bool = False) -> str:
    """``x`` with ``digits`` decimals (a leading ``+`` for positive values with ``sign``)."""
    return f"{x:{'+' if sign else ''}.{digits}f}"


def ci(summary: dict, digits: int = 2, sign: bool = False, scale: float = 1.0, unit: str = "") -> str:
    """``mean [lo, hi]`` of a summary (theory.stats schema), each formatted once by :func:`num`."""
    m, (lo, hi) = summary["mean"] * scale, (v * scale for v in summary["ci95"])
    return f"{num(m, digits, sign)}{unit} [{num(lo, digits, sign)}, {num(hi, digits, sign)}]"


def signed_ci(summary: dict, digits: int = 2, scale: float = 1.0) -> str:
    """:func:`ci` of a signed quantity (a difference, a z) with at least ``digits`` decimals and as many more
    (up to ``digits + 2``) as it takes for every nonzero value to keep its sign, so that an interval that
    excludes 0 never reads as touching it."""
    values = [summary["mean"], *summary["ci95"]]
    d = next((d for d in range(digits, digits + 3) if all(round(scale * v, d) != 0 for v in values if v != 0)),
             digits + 2)
    return ci(summary, d, sign=True, scale=scale)


def pct(summary: dict, digits: int = 1, sign: bool = False) -> str:
    """A proportion's summary in percent: ``53.4 % [51.3, 55.5]``."""
    return ci(summary, digits, sign, scale=100.0, unit=" %")


def rows(results_dir: Path, *functions: str) -> str:
    """The rows that each of ``functions`` (``module:function``) returns, one after another (a table whose
    rows come from several packages is one block)."""
    return "\n".join(_call(spec, results_dir, ()) for spec in functions)


def table(results_dir: Path, *functions: str) -> str:
    """The README's results table: its header, then :func:`rows` of ``functions``."""
    return "| what | measured | command |\n| --- | --- | --- |\n" + rows(results_dir, *functions)


def _call(spec: str, results_dir: Path, args) -> str:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)(results_dir, *args).rstrip("\n")


def render(text: str, results_dir: Path) -> str:
    """``text`` with every block replaced by its rendering."""
    def one(m):
        args = m.group("args").split()
        return m.group(1) + _call(m.group("spec"), results_dir, args) + "\n" + m.group(5)
    return BLOCK.sub(one, text)


def stale_blocks(text: str, results_dir: Path) -> list[str]:
    """The specs of the blocks of ``text`` whose body differs from their rendering."""
    return [m.group("spec") for m in BLOCK.finditer(text)
            if m.group("body") != _call(m.group("spec"), results_dir, m.group("args").split()) + "\n"]


def default_files(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.render", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path, help="markdown files (default README.md and docs/*.md)")
    parser.add_argument("--results-dir", type=Path, default=Path("results"),
                        help="the results folder the numbers come from (default results/)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 naming each block that differs from its rendering")
    args = parser.parse_args(argv)
    files = args.files or default_files(Path("."))
    stale = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            print(f"harness.render: error: {path}: {err.strerror or err}", file=sys.stderr)
            return 2
        if args.check:
            stale += [f"{path}: {spec}" for spec in stale_blocks(text, args.results_dir)]
            continue
        new = render(text, args.results_dir)
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"harness.render: {path} updated")
    if stale:
        print("harness.render: stale numbers (run `python -m harness.render`): " + "; ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
