"""Command line: ``python -m mnist_aux run --preset paper --seeds 100``.

Runs the paper's Figure 10 experiment (section 6.2) for many seeds at once and writes a
results JSON that ``python paper_figs.py --only mnist_aux_fig10`` plots. ``python -m
mnist_aux presets`` lists the presets with their commands and run times. ``run`` splits the
seeds over devices (``--mesh data=N``, default all) and over hosts (``--distributed``, only
process 0 writes): docs/scaling_up.md.
"""

from __future__ import annotations

import sys

from mnist_aux.arguments import build_parser, check
from mnist_aux.commands import COMMANDS, _fail
from harness.results import OutputError

# names this module held before the parser and the handlers had modules of their own (render.py reads table)
from mnist_aux.arguments import MAX_SEEDS, SEED_MAX  # noqa: F401
from mnist_aux.commands import default_out, outside_unit_interval, table  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    args = build_parser(__doc__).parse_args(argv)
    args.argv = argv  # None: sys.argv[1:]
    problem = check(args)
    if problem:
        return _fail(problem)
    try:
        return COMMANDS[args.command](args)
    except OutputError as err:
        return _fail(str(err))


if __name__ == "__main__":
    sys.exit(main())
