"""Puzzle data without the internet: Sudoku and maze generators, and the reference HRM/TRM dataset format.

::

    from fastrecur.data import build_sudoku_dataset, PuzzleDataset
    build_sudoku_dataset("data/sudoku-9x9", n=9, num_train=1000, num_test=200, num_aug=100, seed=0)
    ds = PuzzleDataset("data/sudoku-9x9", split="train")
    for batch in ds.iter_train(768, seed=0, epoch=0):   # dict of int32 tensors: inputs, labels, puzzle_identifiers
        ...

Command line: ``fastrecur data sudoku ...`` / ``fastrecur data maze ...`` / ``fastrecur data arc ...``
(see :mod:`fastrecur.data.cli`).
"""

from .arc import ARCDataWarning, build_arc_dataset
from .format import (
    IGNORE_LABEL_ID,
    DatasetFormatError,
    DatasetMetadata,
    PuzzleDataset,
    steps_per_epoch_estimate,
    write_identifiers,
    write_split,
)
from .maze import (
    MazePuzzle,
    build_maze_dataset,
    decode_maze,
    dihedral,
    encode_maze,
    generate_maze,
    generate_mazes,
    solve_maze,
)
from .sudoku import (
    SudokuPuzzle,
    SudokuSearchResult,
    augment_sudoku,
    build_sudoku_dataset,
    decode_sudoku,
    encode_sudoku,
    generate_sudoku,
    generate_sudokus,
    is_valid_solution,
    solve_sudoku,
)

__all__ = [
    "ARCDataWarning",
    "build_arc_dataset",
    "IGNORE_LABEL_ID",
    "DatasetFormatError",
    "DatasetMetadata",
    "PuzzleDataset",
    "steps_per_epoch_estimate",
    "write_identifiers",
    "write_split",
    "MazePuzzle",
    "build_maze_dataset",
    "decode_maze",
    "dihedral",
    "encode_maze",
    "generate_maze",
    "generate_mazes",
    "solve_maze",
    "SudokuPuzzle",
    "SudokuSearchResult",
    "augment_sudoku",
    "build_sudoku_dataset",
    "decode_sudoku",
    "encode_sudoku",
    "generate_sudoku",
    "generate_sudokus",
    "is_valid_solution",
    "solve_sudoku",
]
