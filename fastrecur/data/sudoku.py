"""Sudoku puzzles: generator with unique solutions, solver, augmentations and the reference token encoding.

Sizes: n in {4, 6, 9} with boxes 2x2, 2x3 (2 rows x 3 columns) and 3x3.
Grids are ``n x n`` integer arrays of digits, 0 = blank. Tokens (the reference encoding): 0 pad, 1 blank,
digit d -> d + 1, so vocabulary ``n + 2`` (11 for 9x9) and sequence length ``n * n``.

The solver is bitmask backtracking with the minimum-remaining-values rule (always branch on the empty cell
with the fewest candidates). Its *backtrack* count is the number of dead ends (an empty cell left with no
candidate) met while exploring the whole search tree to prove uniqueness; it does not depend on how digits are
labelled, and it is 0 exactly when the puzzle falls to naked singles alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from .format import check_int, square_tokens, write_identifiers, write_split

BOX_SHAPES = {4: (2, 2), 6: (2, 3), 9: (3, 3)}
PAD_ID = 0
BLANK_ID = 1

GridLike = Union[str, Sequence[int], np.ndarray]


def _check_size(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) not in BOX_SHAPES:
        raise ValueError(f"n must be one of {sorted(BOX_SHAPES)} (Sudoku side length), got {n!r}")
    return int(n)


def vocab_size(n: int = 9) -> int:
    """Token vocabulary of an n x n Sudoku: pad, blank and the n digits."""
    return _check_size(n) + 2


@dataclass(frozen=True)
class _Geometry:
    """Per-size lookup tables for the solver, built once per n."""

    n: int
    units: Tuple[Tuple[int, int, int], ...]  # (row, column, box) of each cell
    full: int  # bitmask of all n digits
    popcount: Tuple[int, ...]
    digit_of_bit: dict


@lru_cache(maxsize=None)
def _geometry(n: int) -> _Geometry:
    br, bc = BOX_SHAPES[n]
    units = tuple((i // n, i % n, (i // n) // br * br + (i % n) // bc) for i in range(n * n))
    full = (1 << n) - 1
    popcount = tuple(bin(m).count("1") for m in range(full + 1))
    return _Geometry(n, units, full, popcount, {1 << d: d + 1 for d in range(n)})


@dataclass
class SudokuSearchResult:
    """Outcome of :func:`solve_sudoku`."""

    solution: Optional[np.ndarray]  # the first solution found (n x n digits), None if there is none
    num_solutions: int  # solutions found, capped at the search limit
    backtracks: int  # dead ends met during the search


def _search(cells: List[int], geo: _Geometry, limit: int, exclude=None, rng=None):
    """Depth-first MRV search over ``cells`` (flat digits, 0 = blank; modified in place).

    Stops after ``limit`` solutions. ``exclude[i]`` is a bitmask of digits forbidden in cell i (used to ask
    "is there a solution other than the known one?"). ``rng`` shuffles the digit order (grid generation).
    Returns (num_solutions, dead_ends, first_solution) or None if the givens already clash.
    """
    n = geo.n
    units, full, pc, digit_of_bit = geo.units, geo.full, geo.popcount, geo.digit_of_bit
    rows, cols, boxes = [0] * n, [0] * n, [0] * n
    empties = []
    for i, v in enumerate(cells):
        if v == 0:
            empties.append(i)
            continue
        r, c, b = units[i]
        bit = 1 << (v - 1)
        if (rows[r] | cols[c] | boxes[b]) & bit:
            return None
        rows[r] |= bit
        cols[c] |= bit
        boxes[b] |= bit
    excl = exclude if exclude is not None else [0] * len(cells)
    state = [0, 0, None]  # solutions, dead ends, first solution

    def rec(m: int) -> bool:
        if m == 0:
            state[0] += 1
            if state[2] is None:
                state[2] = list(cells)
            return state[0] >= limit
        best_j, best_c, best_mask = -1, n + 1, 0
        for j in range(m):
            i = empties[j]
            r, c, b = units[i]
            mask = full & ~(rows[r] | cols[c] | boxes[b] | excl[i])
            k = pc[mask]
            if k < best_c:
                best_j, best_c, best_mask = j, k, mask
                if k <= 1:
                    break
        if best_c == 0:
            state[1] += 1
            return False
        i = empties[best_j]
        # Move the chosen cell out of the active prefix; the order of the rest does not matter.
        empties[best_j] = empties[m - 1]
        empties[m - 1] = i
        r, c, b = units[i]
        if rng is not None and best_c > 1:
            bits = [1 << d for d in range(n) if best_mask >> d & 1]
            bits = [bits[k] for k in rng.permutation(len(bits))]
        else:
            bits = []
            mask = best_mask
            while mask:
                bit = mask & -mask
                bits.append(bit)
                mask ^= bit
        for bit in bits:
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            cells[i] = digit_of_bit[bit]
            if rec(m - 1):
                return True
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit
        cells[i] = 0
        return False

    rec(len(empties))
    return state[0], state[1], state[2]


def _as_grid(grid: GridLike, n: Optional[int], name: str) -> np.ndarray:
    """Digits (0 = blank) as an int n x n array from a string ('.'/'0' blanks), flat or 2-D array."""
    if isinstance(grid, str):
        text = "".join(grid.split())
        size = int(round(len(text) ** 0.5))
        if size * size != len(text) or size not in BOX_SHAPES:
            raise ValueError(
                f"{name}: a Sudoku string must have 16, 36 or 81 characters (blanks '.' or '0', "
                f"whitespace ignored), got {len(text)}"
            )
        bad = sorted({ch for ch in text if not (ch == "." or ch in "0123456789" and int(ch) <= size)})
        if bad:
            raise ValueError(f"{name}: characters {bad!r} are not digits 1..{size} or blanks '.'/'0'")
        arr = np.array([0 if ch == "." else int(ch) for ch in text], dtype=np.int64)
    else:
        arr = np.asarray(grid)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            raise TypeError(f"{name}: expected a string or an integer array, got dtype {arr.dtype}")
        arr = arr.astype(np.int64).reshape(-1)
        size = int(round(arr.size**0.5))
        if size * size != arr.size or size not in BOX_SHAPES:
            raise ValueError(f"{name}: a Sudoku grid must have 16, 36 or 81 cells (4x4, 6x6, 9x9), got {arr.size}")
        if arr.min() < 0 or arr.max() > size:
            raise ValueError(
                f"{name}: digits must lie in 0..{size} (0 = blank), got values in [{arr.min()}, {arr.max()}]"
            )
    if n is not None and size != n:
        raise ValueError(f"{name}: expected a {n}x{n} grid, got {size}x{size}")
    return arr.reshape(size, size)


def solve_sudoku(puzzle: GridLike, limit: int = 2) -> SudokuSearchResult:
    """Solve ``puzzle`` (string or grid, 0/'.' blank), counting solutions up to ``limit`` and dead ends.

    ``num_solutions == 1`` with the default limit 2 means the solution is unique. Givens that clash with
    each other give ``num_solutions == 0``.
    """
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ValueError(f"limit must be a positive int, got {limit!r}")
    grid = _as_grid(puzzle, None, "puzzle")
    geo = _geometry(grid.shape[0])
    out = _search(grid.reshape(-1).tolist(), geo, int(limit))
    if out is None:
        return SudokuSearchResult(None, 0, 0)
    count, dead, first = out
    sol = None if first is None else np.array(first, dtype=np.int64).reshape(grid.shape)
    return SudokuSearchResult(sol, count, dead)


def is_valid_solution(grid: GridLike, n: Optional[int] = None) -> bool:
    """True if ``grid`` is completely filled and every row, column and box holds each digit once."""
    g = _as_grid(grid, n, "grid")
    size = g.shape[0]
    br, bc = BOX_SHAPES[size]
    want = np.arange(1, size + 1)
    boxes = g.reshape(size // br, br, size // bc, bc).transpose(0, 2, 1, 3).reshape(size, size)
    return all((np.sort(u, axis=1) == want).all() for u in (g, g.T, boxes))


@dataclass
class SudokuPuzzle:
    """A generated puzzle: ``puzzle`` and ``solution`` are n x n digit arrays (0 = blank in the puzzle)."""

    puzzle: np.ndarray
    solution: np.ndarray
    givens: int
    backtracks: int


def _random_full_grid(n: int, rng: np.random.Generator) -> List[int]:
    geo = _geometry(n)
    out = _search([0] * (n * n), geo, 1, rng=rng)
    return out[2]


def _dig(solution: List[int], n: int, rng: np.random.Generator, givens: Optional[int]) -> List[int]:
    """Remove givens in random order while the solution stays unique; stop at ``givens`` if reached.

    Removing cell i keeps uniqueness iff no solution has a different digit there, so each test is one search
    with that digit forbidden (cheaper than counting to two). A cell that cannot be removed now can never be
    removed later (fewer givens only admit more solutions), so one pass yields a minimal puzzle.
    """
    geo = _geometry(n)
    puzzle = list(solution)
    remaining = n * n
    exclude = [0] * (n * n)
    for i in rng.permutation(n * n).tolist():
        if givens is not None and remaining <= givens:
            break
        v = puzzle[i]
        puzzle[i] = 0
        exclude[i] = 1 << (v - 1)
        count = _search(list(puzzle), geo, 1, exclude=exclude)[0]
        exclude[i] = 0
        if count:
            puzzle[i] = v
        else:
            remaining -= 1
    return puzzle


def generate_sudoku(
    n: int = 9,
    *,
    rng: Union[int, np.random.Generator, None] = None,
    givens: Optional[int] = None,
    min_backtracks: int = 0,
    max_attempts: int = 1000,
) -> SudokuPuzzle:
    """One Sudoku with a unique solution.

    ``givens``: target number of givens (None = remove as many as uniqueness allows). A candidate whose
    minimal form still has more givens than the target is discarded and a new grid is tried.
    ``min_backtracks``: keep only puzzles whose uniqueness proof meets at least this many dead ends (0 = any;
    1 = not solvable by naked singles alone). Raises RuntimeError after ``max_attempts`` failed candidates.
    """
    n = _check_size(n)
    if givens is not None:
        if isinstance(givens, bool) or not isinstance(givens, (int, np.integer)) or not 0 <= givens <= n * n:
            raise ValueError(f"givens must be None or an int in 0..{n * n}, got {givens!r}")
        givens = int(givens)
    if isinstance(min_backtracks, bool) or not isinstance(min_backtracks, (int, np.integer)) or min_backtracks < 0:
        raise ValueError(f"min_backtracks must be a non-negative int, got {min_backtracks!r}")
    if not isinstance(max_attempts, (int, np.integer)) or max_attempts < 1:
        raise ValueError(f"max_attempts must be a positive int, got {max_attempts!r}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    geo = _geometry(n)
    for _ in range(int(max_attempts)):
        solution = _random_full_grid(n, rng)
        puzzle = _dig(solution, n, rng, givens)
        count_givens = sum(1 for v in puzzle if v)
        if givens is not None and count_givens > givens:
            continue
        count, dead, _ = _search(list(puzzle), geo, 2)
        if count != 1:  # cannot happen by construction; kept as a guard on the generator itself
            raise AssertionError("generated a Sudoku without a unique solution")
        if dead < min_backtracks:
            continue
        shape = (n, n)
        return SudokuPuzzle(
            np.array(puzzle, dtype=np.int64).reshape(shape),
            np.array(solution, dtype=np.int64).reshape(shape),
            count_givens,
            dead,
        )
    wanted = [f"at most {givens} givens"] if givens is not None else []
    wanted += [f"at least {min_backtracks} backtracks"] if min_backtracks else []
    raise RuntimeError(
        f"no {n}x{n} Sudoku with {' and '.join(wanted)} after {max_attempts} attempts; "
        f"raise givens or lower min_backtracks"
    )


def generate_sudokus(
    count: int,
    n: int = 9,
    *,
    seed: int = 0,
    givens: Optional[int] = None,
    min_backtracks: int = 0,
    unique: bool = True,
    max_attempts: int = 1000,
) -> List[SudokuPuzzle]:
    """``count`` puzzles from one seed (deterministic); ``unique`` drops exact duplicate puzzles."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count must be a non-negative int, got {count!r}")
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    misses = 0
    while len(out) < count:
        p = generate_sudoku(n, rng=rng, givens=givens, min_backtracks=min_backtracks, max_attempts=max_attempts)
        key = p.puzzle.tobytes()
        if unique and key in seen:
            misses += 1
            if misses > max_attempts:
                raise RuntimeError(
                    f"could not find {count} distinct {n}x{n} puzzles (only {len(out)} after "
                    f"{misses} duplicates); ask for fewer or allow more givens"
                )
            continue
        seen.add(key)
        out.append(p)
    return out


def augment_sudoku(puzzle: np.ndarray, solution: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """One random validity-preserving transform, applied identically to puzzle and solution (digit grids).

    As the reference: a digit permutation (blank stays blank), a permutation of the bands and of the rows
    within each band, the same for stacks and columns, and a transpose with probability 1/2. The transpose is
    only used for square boxes (4x4, 9x9): it would turn 6x6's 2x3 boxes into 3x2 ones.
    """
    p = np.asarray(puzzle)
    s = np.asarray(solution)
    if p.ndim != 2 or p.shape != s.shape or p.shape[0] != p.shape[1]:
        raise ValueError(f"puzzle and solution must be equal n x n grids, got {p.shape} and {s.shape}")
    n = _check_size(p.shape[0])
    br, bc = BOX_SHAPES[n]
    digit_map = np.concatenate([[0], rng.permutation(np.arange(1, n + 1))])
    transpose = br == bc and rng.random() < 0.5
    row_perm = np.concatenate([b * br + rng.permutation(br) for b in rng.permutation(n // br)])
    col_perm = np.concatenate([s_ * bc + rng.permutation(bc) for s_ in rng.permutation(n // bc)])

    def apply(x):
        if transpose:
            x = x.T
        return digit_map[x[row_perm][:, col_perm]]

    return apply(p), apply(s)


def encode_sudoku(text_or_grid: GridLike, n: Optional[int] = None, *, name: str = "text_or_grid") -> np.ndarray:
    """Tokens (uint8, length n*n) of a puzzle or solution: blank -> 1, digit d -> d + 1.

    Accepts an n*n-character string with '.' or '0' for blanks (whitespace ignored) or a flat / n x n integer
    array with 0 for blanks; ``n`` (optional) checks the size. Errors (ValueError, TypeError) start with
    ``name``: a command passes its option's name (``--puzzle``).
    """
    if n is not None:
        n = _check_size(n)
    grid = _as_grid(text_or_grid, n, name)
    return (grid.reshape(-1) + 1).astype(np.uint8)


def decode_sudoku(tokens: Union[Sequence[int], np.ndarray]) -> str:
    """Inverse of :func:`encode_sudoku`: an n*n-character string, '.' for blanks, digits 1..n."""
    t, size = square_tokens(tokens)
    if size * size != t.size or size not in BOX_SHAPES:
        raise ValueError(f"tokens: expected 16, 36 or 81 tokens, got {t.size}")
    bad = t[(t < BLANK_ID) | (t > size + 1)]
    if bad.size:
        raise ValueError(
            f"tokens: values {sorted(set(bad.tolist()))} are outside the {size}x{size} Sudoku "
            f"vocabulary (1 = blank, 2..{size + 1} = digits; 0 = pad is not a cell)"
        )
    return "".join("." if v == BLANK_ID else str(v - 1) for v in t.tolist())


def build_sudoku_dataset(
    out_dir: str,
    n: int = 9,
    num_train: int = 1000,
    num_test: int = 100,
    num_aug: int = 0,
    givens: Optional[int] = None,
    min_backtracks: int = 0,
    seed: int = 0,
) -> dict:
    """Generate distinct puzzles and write ``<out_dir>/{train,test}/`` in the reference format.

    As the reference Sudoku builder: every example is its own puzzle (identifier 0, ``num_puzzle_identifiers``
    1); each original training puzzle and its ``num_aug`` random augmentations (:func:`augment_sudoku`) form
    one group; the test split is not augmented. Train and test puzzles are distinct. Returns
    ``{"train": DatasetMetadata, "test": DatasetMetadata}``.
    """

    n = _check_size(n)
    num_train = check_int(num_train, "num_train", 1)
    num_test = check_int(num_test, "num_test", 1)
    num_aug = check_int(num_aug, "num_aug", 0)
    gen_seed, aug_seed = np.random.SeedSequence(seed).spawn(2)
    puzzles = generate_sudokus(num_train + num_test, n, seed=gen_seed, givens=givens, min_backtracks=min_backtracks)
    aug_rng = np.random.default_rng(aug_seed)
    out = {}
    for split, chosen, k in (("train", puzzles[:num_train], num_aug), ("test", puzzles[num_train:], 0)):
        inputs, labels = [], []
        for p in chosen:
            inputs.append(p.puzzle)
            labels.append(p.solution)
            for _ in range(k):
                a, b = augment_sudoku(p.puzzle, p.solution, aug_rng)
                inputs.append(a)
                labels.append(b)
        num = len(inputs)
        out[split] = write_split(
            out_dir,
            split,
            inputs=np.stack(inputs).reshape(num, n * n) + 1,
            labels=np.stack(labels).reshape(num, n * n) + 1,
            puzzle_identifiers=np.zeros(num, np.int32),
            puzzle_indices=np.arange(num + 1),
            group_indices=np.arange(0, num + 1, k + 1),
            vocab_size=vocab_size(n),
        )
    write_identifiers(out_dir)
    return out


# The one rendering of a Sudoku cell token, shared by ``fastrecur solve`` and ``fastrecur inspect``: a digit,
# BLANK_CHAR for the blank token (1), NOT_A_DIGIT_CHAR for the pad token (0, "pad token predicted") or any id
# above the digits -- never '.', which would pass a predicted pad for a blank cell.
BLANK_CHAR = "."
NOT_A_DIGIT_CHAR = "?"
CELL_LEGEND = "cells: digits; '.' blank; '?' not a digit (the pad token 0 predicted)"


def sudoku_cell_chars(tokens: np.ndarray) -> List[str]:
    """Token ids (0 pad, 1 blank, d+1 digit d) -> one character per cell: the digit, ``'.'`` for blank,
    ``'?'`` for the pad token or an id above the digits."""
    n = int(round(np.asarray(tokens).size ** 0.5))
    return [
        BLANK_CHAR if t == 1 else (str(t - 1) if 2 <= t <= n + 1 else NOT_A_DIGIT_CHAR)
        for t in np.asarray(tokens).reshape(-1).tolist()
    ]
