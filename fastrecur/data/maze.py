"""Mazes: generator with a guaranteed minimum shortest-path length, BFS solver, dihedral augmentation, and the
reference token encoding.

A maze is a ``size x size`` grid of the characters ``"# SGo"``: wall, open, start, goal, path. The puzzle shows
walls, open cells, S and G; its label is the same grid with the cells of the shortest S->G path (S and G
excluded) marked ``'o'``. Tokens (the reference encoding): 0 pad, then ``#``=1, `` ``=2, ``S``=3, ``G``=4,
``o``=5, so vocabulary 6 and sequence length ``size * size``. Moves are 4-neighbour steps.

Generation: a random depth-first ("recursive backtracker") maze on the lattice of even coordinates, then a
fraction of the walls between two corridor cells knocked out to make loops (so a shortest path has to be
found, not just followed), a random one of the 8 dihedral transforms (so the unused last row/column of even
sizes is not always at the same edge), and S, G placed at least ``min_path_len`` steps apart.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import List, Sequence, Tuple, Union

import numpy as np

from .format import check_int, square_tokens, write_identifiers, write_split

CHARSET = "# SGo"
WALL, OPEN, START, GOAL, PATH = (i + 1 for i in range(len(CHARSET)))
PAD_ID = 0
VOCAB_SIZE = len(CHARSET) + 1
_STEPS = ((-1, 0), (1, 0), (0, -1), (0, 1))


def dihedral(grid: np.ndarray, tid: int) -> np.ndarray:
    """The 8 symmetries of the square, numbered as the reference: 0 identity, 1-3 rotations by 90/180/270
    degrees (counter-clockwise), 4 left-right flip, 5 up-down flip, 6 transpose, 7 anti-transpose."""
    tid = check_int(tid, "tid", 0, 7)
    g = np.asarray(grid)
    if g.ndim != 2:
        raise ValueError(f"grid must be 2-D, got shape {g.shape}")
    if tid <= 3:
        return np.rot90(g, k=tid)
    return (np.fliplr(g), np.flipud(g), g.T, np.fliplr(np.rot90(g, k=1)))[tid - 4]


def bfs_distances(open_cells: np.ndarray, start: Tuple[int, int]) -> np.ndarray:
    """Steps from ``start`` to every cell over ``open_cells`` (bool grid, True = passable); -1 = unreachable."""
    h, w = open_cells.shape
    dist = np.full((h, w), -1, dtype=np.int64)
    dist[start] = 0
    queue = deque([start])
    passable = open_cells.tolist()
    d = dist.tolist()
    while queue:
        r, c = queue.popleft()
        nd = d[r][c] + 1
        for dr, dc in _STEPS:
            rr, cc = r + dr, c + dc
            if 0 <= rr < h and 0 <= cc < w and passable[rr][cc] and d[rr][cc] < 0:
                d[rr][cc] = nd
                queue.append((rr, cc))
    return np.array(d, dtype=np.int64)


@dataclass
class MazePuzzle:
    """A generated maze: ``puzzle`` and ``label`` are size x size token grids (see module doc)."""

    puzzle: np.ndarray
    label: np.ndarray
    path_len: int  # steps of the shortest S->G path
    num_shortest_paths: int  # capped at 2


def solve_maze(puzzle: np.ndarray) -> Tuple[np.ndarray, int, int]:
    """Shortest S->G path of a token grid: (label grid with the path marked, path length in steps, number of
    shortest paths capped at 2). Among several shortest paths the one walked back from G trying up, down,
    left, right first is marked. Raises ValueError if S or G is missing/duplicated or G is unreachable."""
    g = np.asarray(puzzle)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"puzzle must be a square token grid, got shape {g.shape}")
    for tok, name in ((START, "S"), (GOAL, "G")):
        if int((g == tok).sum()) != 1:
            raise ValueError(f"puzzle must contain exactly one {name}, found {int((g == tok).sum())}")
    if (g == PATH).any():
        raise ValueError("puzzle already contains path cells 'o'")
    passable = g != WALL
    s = tuple(int(x) for x in np.argwhere(g == START)[0])
    t = tuple(int(x) for x in np.argwhere(g == GOAL)[0])
    ds = bfs_distances(passable, s)
    if ds[t] < 0:
        raise ValueError("G is not reachable from S")
    dt = bfs_distances(passable, t)
    length = int(ds[t])
    # A cell lies on some shortest path iff ds + dt == length; the path is unique iff each distance layer
    # holds exactly one such cell.
    on_path = (ds >= 0) & (dt >= 0) & (ds + dt == length)
    layer_sizes = np.bincount(ds[on_path], minlength=length + 1)
    num = 1 if (layer_sizes == 1).all() else 2
    label = g.copy()
    r, c = t
    h = g.shape[0]
    for _ in range(length - 1):
        for dr, dc in _STEPS:
            rr, cc = r + dr, c + dc
            if 0 <= rr < h and 0 <= cc < h and ds[rr, cc] == ds[r, c] - 1 and on_path[rr, cc]:
                r, c = rr, cc
                break
        label[r, c] = PATH
    return label, length, num


def _carve(size: int, rng: np.random.Generator, loop_frac: float) -> np.ndarray:
    """Passable-cell mask of a depth-first maze on the even lattice, with ``loop_frac`` of the walls between
    two lattice cells removed."""
    m = (size + 1) // 2
    passable = np.zeros((size, size), dtype=bool)
    passable[0::2, 0::2] = True
    visited = np.zeros((m, m), dtype=bool)
    start = (int(rng.integers(m)), int(rng.integers(m)))
    visited[start] = True
    stack = [start]
    while stack:
        r, c = stack[-1]
        nbrs = [
            (r + dr, c + dc) for dr, dc in _STEPS if 0 <= r + dr < m and 0 <= c + dc < m and not visited[r + dr, c + dc]
        ]
        if not nbrs:
            stack.pop()
            continue
        rr, cc = nbrs[int(rng.integers(len(nbrs)))]
        visited[rr, cc] = True
        passable[r + rr, c + cc] = True  # the wall cell between (2r, 2c) and (2rr, 2cc)
        stack.append((rr, cc))
    if loop_frac > 0:
        # Wall cells with exactly one odd coordinate separate two lattice cells.
        rr, cc = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
        between = ((rr + cc) % 2 == 1) & ~passable
        between[-1, :] &= size % 2 == 1  # for even sizes the last row/column has no lattice cell beyond it
        between[:, -1] &= size % 2 == 1
        knock = between & (rng.random((size, size)) < loop_frac)
        passable |= knock
    return passable


def generate_maze(
    size: int = 30,
    *,
    rng: Union[int, np.random.Generator, None] = None,
    min_path_len: int = 0,
    unique_path: bool = True,
    loop_frac: float = 0.1,
    max_attempts: int = 1000,
) -> MazePuzzle:
    """One maze whose shortest S->G path has at least ``min_path_len`` steps (Maze-Hard 30x30: more than 110,
    i.e. ``min_path_len=111``); ``unique_path`` keeps only mazes with a single shortest path, so the label is
    determined by the puzzle. ``loop_frac``: fraction of inner walls removed to create loops."""
    size = check_int(size, "size", 3)
    min_path_len = check_int(min_path_len, "min_path_len", 0)
    max_attempts = check_int(max_attempts, "max_attempts", 1)
    if not isinstance(loop_frac, (int, float)) or not 0.0 <= loop_frac <= 1.0:
        raise ValueError(f"loop_frac must be a float in [0, 1], got {loop_frac!r}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    for _ in range(max_attempts):
        passable = dihedral(_carve(size, rng, float(loop_frac)), int(rng.integers(8)))
        cells = np.argwhere(passable)
        s = tuple(int(x) for x in cells[rng.integers(len(cells))])
        dist = bfs_distances(passable, s)
        if dist.max() < min_path_len:
            # Restart from the farthest cell: the second sweep approximately reaches the diameter.
            s = tuple(int(x) for x in np.unravel_index(int(np.argmax(dist)), dist.shape))
            dist = bfs_distances(passable, s)
        far = np.argwhere(dist >= max(min_path_len, 1))
        if len(far) == 0:
            continue
        t = tuple(int(x) for x in far[rng.integers(len(far))])
        puzzle = np.where(passable, OPEN, WALL).astype(np.uint8)
        puzzle[s] = START
        puzzle[t] = GOAL
        label, length, num = solve_maze(puzzle)
        if unique_path and num > 1:
            continue
        return MazePuzzle(puzzle, label, length, num)
    raise RuntimeError(
        f"no {size}x{size} maze with a shortest path of >= {min_path_len} steps"
        f"{' (unique)' if unique_path else ''} after {max_attempts} attempts; lower min_path_len "
        f"or loop_frac"
    )


def generate_mazes(
    count: int,
    size: int = 30,
    *,
    seed: int = 0,
    min_path_len: int = 0,
    unique_path: bool = True,
    loop_frac: float = 0.1,
    max_attempts: int = 1000,
) -> List[MazePuzzle]:
    """``count`` distinct mazes from one seed (deterministic)."""
    count = check_int(count, "count", 0)
    rng = np.random.default_rng(seed)
    out, seen, misses = [], set(), 0
    while len(out) < count:
        m = generate_maze(
            size,
            rng=rng,
            min_path_len=min_path_len,
            unique_path=unique_path,
            loop_frac=loop_frac,
            max_attempts=max_attempts,
        )
        key = m.puzzle.tobytes()
        if key in seen:
            misses += 1
            if misses > max_attempts:
                raise RuntimeError(f"could not find {count} distinct {size}x{size} mazes (only {len(out)})")
            continue
        seen.add(key)
        out.append(m)
    return out


def encode_maze(text: Union[str, Sequence[str]], *, name: str = "text") -> np.ndarray:
    """Tokens (uint8, length size*size) of a square maze given as rows of ``"# SGo"`` (a newline-separated
    string or a list of row strings). Errors (ValueError, TypeError) start with ``name``: a command passes its
    option's name (``--puzzle``)."""
    if isinstance(text, str):
        rows = text.split("\n")
        while rows and rows[-1] == "":  # a trailing newline is harmless
            rows.pop()
    elif isinstance(text, (list, tuple)) and all(isinstance(r, str) for r in text):
        rows = list(text)
    else:
        raise TypeError(f"{name}: expected a string or a list of row strings, got {type(text).__name__}")
    if not rows:
        raise ValueError(f"{name}: empty maze")
    size = len(rows)
    bad_len = [i for i, r in enumerate(rows) if len(r) != size]
    if bad_len:
        raise ValueError(
            f"{name}: the maze must be square ({size} rows of {size} characters); row {bad_len[0]} has "
            f"{len(rows[bad_len[0]])} characters"
        )
    flat = "".join(rows)
    bad = sorted(set(flat) - set(CHARSET))
    if bad:
        raise ValueError(f"{name}: characters {bad!r} are outside the maze alphabet {CHARSET!r}")
    lut = {ch: i + 1 for i, ch in enumerate(CHARSET)}
    return np.array([lut[ch] for ch in flat], dtype=np.uint8)


def decode_maze(tokens: Union[Sequence[int], np.ndarray]) -> str:
    """Inverse of :func:`encode_maze`: rows of ``"# SGo"`` joined by newlines."""
    t, size = square_tokens(tokens)
    if t.size == 0 or size * size != t.size:
        raise ValueError(f"tokens: expected size*size tokens of a square maze, got {t.size}")
    bad = t[(t < 1) | (t > len(CHARSET))]
    if bad.size:
        raise ValueError(
            f"tokens: values {sorted(set(bad.tolist()))} are outside the maze vocabulary "
            f"(1..{len(CHARSET)} = {CHARSET!r}; 0 = pad is not a cell)"
        )
    chars = np.array(list(CHARSET))[t - 1]
    return "\n".join("".join(chars[i * size : (i + 1) * size]) for i in range(size))


def build_maze_dataset(
    out_dir: str,
    size: int = 30,
    num_train: int = 1000,
    num_test: int = 100,
    min_path_len: int = 0,
    num_aug: int = 0,
    seed: int = 0,
    *,
    unique_path: bool = True,
    loop_frac: float = 0.1,
) -> dict:
    """Generate distinct mazes and write ``<out_dir>/{train,test}/`` in the reference format.

    As the reference maze builder: every example is its own puzzle (identifier 0); a training maze and its
    augmentations form one group; ``num_aug`` (0..7) distinct non-identity dihedral transforms per training
    maze (7 = all of them, the reference's ``aug=True``); the test split is not augmented. Returns
    ``{"train": DatasetMetadata, "test": DatasetMetadata}``.
    """
    size = check_int(size, "size", 3)
    num_train = check_int(num_train, "num_train", 1)
    num_test = check_int(num_test, "num_test", 1)
    num_aug = check_int(num_aug, "num_aug", 0, 7)
    gen_seed, aug_seed = np.random.SeedSequence(seed).spawn(2)
    mazes = generate_mazes(
        num_train + num_test,
        size,
        seed=gen_seed,
        min_path_len=min_path_len,
        unique_path=unique_path,
        loop_frac=loop_frac,
    )
    aug_rng = np.random.default_rng(aug_seed)
    out = {}
    for split, chosen, k in (("train", mazes[:num_train], num_aug), ("test", mazes[num_train:], 0)):
        inputs, labels = [], []
        for m in chosen:
            tids = [0] + (
                list(range(1, 8)) if k == 7 else sorted(aug_rng.choice(np.arange(1, 8), k, replace=False).tolist())
            )
            for tid in tids:
                inputs.append(dihedral(m.puzzle, tid).reshape(-1))
                labels.append(dihedral(m.label, tid).reshape(-1))
        num = len(inputs)
        out[split] = write_split(
            out_dir,
            split,
            inputs=np.stack(inputs),
            labels=np.stack(labels),
            puzzle_identifiers=np.zeros(num, np.int32),
            puzzle_indices=np.arange(num + 1),
            group_indices=np.arange(0, num + 1, k + 1),
            vocab_size=VOCAB_SIZE,
        )
    write_identifiers(out_dir)
    return out
