"""The ``fastrecur`` command: ``fastrecur {data,train,eval,solve,bench,inspect} ...``.

Each subcommand lives in its own module, which exposes ``add_arguments(parser)`` and ``run(args)``; it is
imported only when used, so ``fastrecur --help`` stays fast and a missing optional dependency of one
subcommand does not break the others.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "data": ("fastrecur.data.cli", "generate a puzzle dataset (Sudoku, maze) in the reference format"),
    "train": ("fastrecur.train.cli", "train HRM/TRM/SRM/flat with the reference recipe"),
    "eval": ("fastrecur.train.evaluate", "exact accuracy of a checkpoint on a dataset"),
    "solve": ("fastrecur.train.solve", "solve one puzzle, printing the prediction after each ACT step"),
    "bench": ("fastrecur.bench", "benchmark suite: kernels, models (vs the GEMM floor), launch counters"),
    "inspect": ("fastrecur.inspect.cli", "plots of the recursion: per-step grids, residuals, participation ratio"),
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="fastrecur", description="Recursive reasoning models, fast.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    name = argv[0]
    if name not in SUBCOMMANDS:
        parser.error(f"unknown command {name!r}; choose from {', '.join(SUBCOMMANDS)}")
    try:
        module = importlib.import_module(SUBCOMMANDS[name][0])
    except ImportError as e:
        print(f"fastrecur {name}: not available in this installation ({e})", file=sys.stderr)
        return 2
    sub_parser = argparse.ArgumentParser(prog=f"fastrecur {name}", description=SUBCOMMANDS[name][1])
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
