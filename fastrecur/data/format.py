"""The reference puzzle-dataset format (HRM / TRM ``dataset/common.py``, ``puzzle_dataset.py``): writer and reader.

Layout of one split, ``<root>/<split>/``:

- ``dataset.json``: pad_id, ignore_label_id, blank_identifier_id, vocab_size, seq_len, num_puzzle_identifiers,
  total_groups, mean_puzzle_examples, total_puzzles (TRM's builders write it, HRM's do not; the reader
  derives it when missing), sets (normally ``["all"]``).
- per set ``s``: ``s__inputs.npy`` and ``s__labels.npy`` ``[N, seq_len]`` (the reference writes uint8),
  ``s__puzzle_identifiers.npy`` ``[P]``, ``s__puzzle_indices.npy`` ``[P+1]``, ``s__group_indices.npy``
  ``[G+1]`` (int32).

Hierarchy: an *example* is one (input, label) row. A *puzzle* is the run of examples
``puzzle_indices[p]:puzzle_indices[p+1]`` sharing one puzzle identifier (ARC: the demonstrations of one task;
Sudoku/maze: a single example). A *group* is the run of puzzles ``group_indices[g]:group_indices[g+1]``,
normally one original puzzle together with its augmented copies. Identifier 0 (``blank_identifier_id``) is the
"no identifier" used by Sudoku and maze, whose ``num_puzzle_identifiers`` is 1. Label cells equal to
``ignore_label_id`` (0 = pad in every reference builder) carry no loss; the reader maps them to -100.

Training sampling (reference): per epoch, the groups in a random order; from each group one random puzzle;
its examples (a random subset when it does not fit) packed into the global batch; the incomplete last batch
dropped. Evaluation: every example once, in order, the last batch padded.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from fastrecur.checkpoint import atomic_write
from fastrecur.cli import InputError

IGNORE_LABEL_ID = -100  # the loss's ignore index (reference models/losses.py)
FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
_REQUIRED_KEYS = (
    "pad_id",
    "ignore_label_id",
    "blank_identifier_id",
    "vocab_size",
    "seq_len",
    "num_puzzle_identifiers",
    "total_groups",
    "mean_puzzle_examples",
    "sets",
)


class DatasetFormatError(InputError):
    """A dataset folder that does not follow the reference format (missing file, bad shape, bad index). An
    :class:`~fastrecur.cli.InputError` (so a ``ValueError``): the commands report it as one line, exit 2."""


@dataclass
class DatasetMetadata:
    """The fields of ``dataset.json``."""

    pad_id: int
    ignore_label_id: Optional[int]
    blank_identifier_id: int
    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int
    total_groups: int
    mean_puzzle_examples: float
    total_puzzles: int
    sets: List[str] = field(default_factory=lambda: ["all"])

    @classmethod
    def from_dict(cls, d: dict, where: str = "dataset.json", total_puzzles: Optional[int] = None) -> "DatasetMetadata":
        """Validate and convert a parsed ``dataset.json``; ``total_puzzles`` fills in a missing key (HRM)."""
        if not isinstance(d, dict):
            raise DatasetFormatError(f"{where}: expected a JSON object, got {type(d).__name__}")
        missing = [k for k in _REQUIRED_KEYS if k not in d]
        if missing:
            raise DatasetFormatError(f"{where}: missing keys {missing}")
        vals = dict(d)
        if "total_puzzles" not in vals:
            if total_puzzles is None:
                raise DatasetFormatError(f"{where}: missing key 'total_puzzles' and nothing to derive it from")
            vals["total_puzzles"] = total_puzzles
        for k in (
            "pad_id",
            "blank_identifier_id",
            "vocab_size",
            "seq_len",
            "num_puzzle_identifiers",
            "total_groups",
            "total_puzzles",
        ):
            if isinstance(vals[k], bool) or not isinstance(vals[k], int):
                raise DatasetFormatError(f"{where}: {k} must be an integer, got {vals[k]!r}")
        for k in ("vocab_size", "seq_len", "num_puzzle_identifiers"):
            if vals[k] < 1:
                raise DatasetFormatError(f"{where}: {k} must be >= 1, got {vals[k]}")
        if vals["ignore_label_id"] is not None and (
            isinstance(vals["ignore_label_id"], bool) or not isinstance(vals["ignore_label_id"], int)
        ):
            raise DatasetFormatError(
                f"{where}: ignore_label_id must be an integer or null, got {vals['ignore_label_id']!r}"
            )
        if not 0 <= vals["pad_id"] < vals["vocab_size"]:
            raise DatasetFormatError(
                f"{where}: pad_id {vals['pad_id']} is outside the vocabulary 0..{vals['vocab_size'] - 1}"
            )
        if not 0 <= vals["blank_identifier_id"] < vals["num_puzzle_identifiers"]:
            raise DatasetFormatError(
                f"{where}: blank_identifier_id {vals['blank_identifier_id']} is outside "
                f"0..num_puzzle_identifiers-1 = {vals['num_puzzle_identifiers'] - 1}"
            )
        if not isinstance(vals["mean_puzzle_examples"], (int, float)) or isinstance(vals["mean_puzzle_examples"], bool):
            raise DatasetFormatError(
                f"{where}: mean_puzzle_examples must be a number, got {vals['mean_puzzle_examples']!r}"
            )
        sets = vals["sets"]
        if (
            not isinstance(sets, list)
            or not sets
            or not all(isinstance(s, str) and s for s in sets)
            or len(set(sets)) != len(sets)
        ):
            raise DatasetFormatError(f"{where}: sets must be a non-empty list of distinct names, got {sets!r}")
        return cls(**{k: vals[k] for k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------
# Writing


def _atomic_write(path: str, write) -> None:
    """``write(f)`` into a binary file object, atomically (:func:`fastrecur.checkpoint.atomic_write`: a temp
    file in the same folder, then a rename), so a crashed build never leaves a half-written file."""

    def write_path(tmp: str) -> None:
        with open(tmp, "wb") as f:
            write(f)

    atomic_write(path, write_path)


def _check_index(arr: np.ndarray, name: str, length: int, end: int, where: str) -> None:
    """A CSR-style offset array: [length] entries, starts at 0, strictly increasing, ends at ``end``."""
    if arr.ndim != 1 or arr.shape[0] != length:
        raise DatasetFormatError(f"{where}: {name} must have shape [{length}], got {list(arr.shape)}")
    if arr[0] != 0 or arr[-1] != end:
        raise DatasetFormatError(f"{where}: {name} must start at 0 and end at {end}, got {int(arr[0])}..{int(arr[-1])}")
    if length > 1 and not (np.diff(arr.astype(np.int64)) > 0).all():
        raise DatasetFormatError(f"{where}: {name} must be strictly increasing (every puzzle/group non-empty)")


def _validate_arrays(arrays: Dict[str, np.ndarray], meta: DatasetMetadata, where: str, check_values: bool) -> None:
    for k in FIELDS:
        a = arrays[k]
        if not np.issubdtype(a.dtype, np.integer):
            raise DatasetFormatError(f"{where}: {k} must have an integer dtype, got {a.dtype}")
    inputs, labels = arrays["inputs"], arrays["labels"]
    if inputs.ndim != 2 or inputs.shape[1] != meta.seq_len:
        raise DatasetFormatError(
            f"{where}: inputs must have shape [N, seq_len={meta.seq_len}], got {list(inputs.shape)}"
        )
    if labels.shape != inputs.shape:
        raise DatasetFormatError(f"{where}: labels shape {list(labels.shape)} differs from inputs {list(inputs.shape)}")
    n = inputs.shape[0]
    if n == 0:
        raise DatasetFormatError(f"{where}: no examples")
    ident = arrays["puzzle_identifiers"]
    if ident.ndim != 1 or ident.shape[0] == 0:
        raise DatasetFormatError(f"{where}: puzzle_identifiers must be a non-empty 1-D array, got {list(ident.shape)}")
    p = ident.shape[0]
    _check_index(arrays["puzzle_indices"], "puzzle_indices", p + 1, n, where)
    gi = arrays["group_indices"]
    if gi.ndim != 1 or gi.shape[0] < 2:
        raise DatasetFormatError(f"{where}: group_indices must be 1-D with at least 2 entries, got {list(gi.shape)}")
    _check_index(gi, "group_indices", gi.shape[0], p, where)
    if ident.min() < 0 or ident.max() >= meta.num_puzzle_identifiers:
        raise DatasetFormatError(
            f"{where}: puzzle_identifiers must lie in 0..{meta.num_puzzle_identifiers - 1}, "
            f"got [{int(ident.min())}, {int(ident.max())}]"
        )
    if check_values:
        lo, hi = int(inputs.min()), int(inputs.max())
        if lo < 0 or hi >= meta.vocab_size:
            raise DatasetFormatError(f"{where}: input tokens must lie in 0..{meta.vocab_size - 1}, got [{lo}, {hi}]")
        lab = np.asarray(labels)
        if meta.ignore_label_id is not None:
            lab = lab[lab != meta.ignore_label_id]
        if lab.size and (int(lab.min()) < 0 or int(lab.max()) >= meta.vocab_size):
            raise DatasetFormatError(
                f"{where}: label tokens must lie in 0..{meta.vocab_size - 1} (or be "
                f"ignore_label_id), got [{int(lab.min())}, {int(lab.max())}]"
            )


def write_split(
    root: str,
    split: str,
    *,
    inputs: np.ndarray,
    labels: np.ndarray,
    puzzle_identifiers: np.ndarray,
    puzzle_indices: np.ndarray,
    group_indices: np.ndarray,
    vocab_size: int,
    num_puzzle_identifiers: int = 1,
    pad_id: int = 0,
    ignore_label_id: Optional[int] = 0,
    blank_identifier_id: int = 0,
    set_name: str = "all",
) -> DatasetMetadata:
    """Validate and write one split with a single set, ``<root>/<split>/``; returns its metadata.

    Token arrays are stored as uint8 (as the reference) when the vocabulary fits, else int32; index arrays as
    int32. Each file is written atomically, and ``dataset.json`` last, so its presence means the arrays are
    complete.
    """
    if not isinstance(split, str) or not split or os.sep in split:
        raise ValueError(f"split must be a plain folder name such as 'train' or 'test', got {split!r}")
    if not isinstance(set_name, str) or not set_name or os.sep in set_name or "__" in set_name:
        raise ValueError(f"set_name must be a plain name without '__', got {set_name!r}")
    arrays = {
        "inputs": np.asarray(inputs),
        "labels": np.asarray(labels),
        "puzzle_identifiers": np.asarray(puzzle_identifiers),
        "puzzle_indices": np.asarray(puzzle_indices),
        "group_indices": np.asarray(group_indices),
    }
    for k, a in arrays.items():
        if a.dtype == object or not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"{k} must be an integer array, got dtype {a.dtype}")
    num_examples = arrays["inputs"].shape[0] if arrays["inputs"].ndim == 2 else 0
    num_puzzles = arrays["puzzle_identifiers"].shape[0] if arrays["puzzle_identifiers"].ndim == 1 else 0
    meta = DatasetMetadata(
        pad_id=pad_id,
        ignore_label_id=ignore_label_id,
        blank_identifier_id=blank_identifier_id,
        vocab_size=vocab_size,
        seq_len=int(arrays["inputs"].shape[-1]) if arrays["inputs"].ndim else 0,
        num_puzzle_identifiers=num_puzzle_identifiers,
        total_groups=int(arrays["group_indices"].size) - 1,
        mean_puzzle_examples=num_examples / max(num_puzzles, 1),
        total_puzzles=num_puzzles,
        sets=[set_name],
    )
    meta = DatasetMetadata.from_dict(meta.to_dict(), where="write_split")
    _validate_arrays(arrays, meta, f"write_split({split!r})", check_values=True)

    token_dtype = np.uint8 if vocab_size <= 256 else np.int32
    folder = os.path.join(os.fspath(root), split)
    os.makedirs(folder, exist_ok=True)
    for k, a in arrays.items():
        a = np.ascontiguousarray(a, dtype=token_dtype if k in ("inputs", "labels") else np.int32)
        _atomic_write(os.path.join(folder, f"{set_name}__{k}.npy"), lambda f, a=a: np.save(f, a, allow_pickle=False))
    text = json.dumps(meta.to_dict()).encode()
    _atomic_write(os.path.join(folder, "dataset.json"), lambda f: f.write(text))
    return meta


def write_identifiers(root: str, names: Optional[List[str]] = None) -> None:
    """``<root>/identifiers.json``: the name of each puzzle identifier (reference: ``["<blank>"]`` for Sudoku
    and maze), used only for display."""
    text = json.dumps(list(names) if names is not None else ["<blank>"]).encode()
    os.makedirs(os.fspath(root), exist_ok=True)
    _atomic_write(os.path.join(os.fspath(root), "identifiers.json"), lambda f: f.write(text))


# ----------------------------------------------------------------------------------------------------------
# Reading


def check_int(value, name: str, lo: int = 1, hi: Optional[int] = None) -> int:
    """An int (not a bool) in ``[lo, hi]``; ValueError naming ``name`` otherwise. Shared by the data modules."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < lo
        or (hi is not None and value > hi)
    ):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ValueError(f"{name} must be an int {rng}, got {value!r}")
    return int(value)


def square_tokens(tokens) -> Tuple[np.ndarray, int]:
    """Token ids of a square grid as a flat int64 array and its side; TypeError for non-integer input."""
    t = np.asarray(tokens)
    if t.dtype == object or not np.issubdtype(t.dtype, np.integer):
        raise TypeError(f"tokens: expected an integer array, got dtype {t.dtype}")
    t = t.reshape(-1).astype(np.int64)
    return t, int(round(t.size**0.5))


class PuzzleDataset:
    """One split of a dataset in the reference format, memory-mapped.

    ``PuzzleDataset(root, split="train")`` validates the files (presence, shapes, dtypes, index arrays, token
    ranges) and raises :class:`DatasetFormatError` (a ValueError) naming the file and the problem. Reads
    datasets written by :func:`write_split` and by the reference HRM/TRM builders.

    Batches are dicts of CPU ``torch.int32`` tensors ``inputs``/``labels`` ``[rows, seq_len]`` and
    ``puzzle_identifiers`` ``[rows]``; label cells equal to ``ignore_label_id`` become -100.
    """

    def __init__(self, root: str, split: str = "train", *, mmap: bool = True, check_values: bool = True):
        if not isinstance(split, str) or not split:
            raise ValueError(f"split must be a non-empty string such as 'train' or 'test', got {split!r}")
        self.root = os.fspath(root)
        self.split = split
        folder = os.path.join(self.root, split)
        meta_path = os.path.join(folder, "dataset.json")
        if not os.path.isfile(meta_path):
            raise DatasetFormatError(
                f"{meta_path} does not exist (expected <root>/{split}/dataset.json; build a "
                f"dataset with `fastrecur data ...`)"
            )
        try:
            with open(meta_path, "r") as f:
                raw = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise DatasetFormatError(f"{meta_path}: not readable JSON: {e}") from e
        sets = raw.get("sets") if isinstance(raw, dict) else None
        self._data: List[Dict[str, np.ndarray]] = []
        if isinstance(sets, list) and all(isinstance(s, str) for s in sets):
            for s in sets:
                self._data.append(self._load_set(folder, s, mmap))
        derived_puzzles = sum(int(d["puzzle_identifiers"].shape[0]) for d in self._data)
        self.metadata = DatasetMetadata.from_dict(raw, where=meta_path, total_puzzles=derived_puzzles)
        for s, d in zip(self.metadata.sets, self._data):
            _validate_arrays(d, self.metadata, os.path.join(folder, f"{s}__*.npy"), check_values)
        groups = sum(int(d["group_indices"].shape[0]) - 1 for d in self._data)
        if groups != self.metadata.total_groups:
            raise DatasetFormatError(
                f"{meta_path}: total_groups is {self.metadata.total_groups} but the "
                f"group_indices files hold {groups} groups"
            )
        self._offsets = np.cumsum([0] + [int(d["inputs"].shape[0]) for d in self._data])

    @staticmethod
    def _load_set(folder: str, set_name: str, mmap: bool) -> Dict[str, np.ndarray]:
        out = {}
        for k in FIELDS:
            path = os.path.join(folder, f"{set_name}__{k}.npy")
            if not os.path.isfile(path):
                raise DatasetFormatError(f"{path} does not exist (dataset.json lists set {set_name!r})")
            # Token arrays stay on disk; the small index arrays are read into memory (as the reference).
            mode = "r" if mmap and k in ("inputs", "labels") else None
            try:
                out[k] = np.load(path, mmap_mode=mode, allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:
                raise DatasetFormatError(f"{path}: not a readable .npy array: {e}") from e
        return out

    # -- basic info -----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def sets(self) -> List[str]:
        return list(self.metadata.sets)

    def __repr__(self) -> str:
        m = self.metadata
        return (
            f"PuzzleDataset({self.root!r}, split={self.split!r}: {len(self)} examples, {m.total_puzzles} "
            f"puzzles, {m.total_groups} groups, seq_len={m.seq_len}, vocab_size={m.vocab_size})"
        )

    def example(self, index: int) -> Tuple[np.ndarray, np.ndarray, int]:
        """(input tokens, raw label tokens, puzzle identifier) of example ``index`` (over all sets in order)."""
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"example index {index} out of range 0..{len(self) - 1}")
        s = int(np.searchsorted(self._offsets, index, side="right")) - 1
        d, i = self._data[s], index - int(self._offsets[s])
        p = int(np.searchsorted(d["puzzle_indices"], i, side="right")) - 1
        return np.array(d["inputs"][i]), np.array(d["labels"][i]), int(d["puzzle_identifiers"][p])

    # -- batches --------------------------------------------------------------------------------------------

    def _collate(
        self, d: Dict[str, np.ndarray], example_idx: np.ndarray, puzzle_idx: np.ndarray, rows: int
    ) -> Dict[str, torch.Tensor]:
        """Gather examples into int32 tensors, map ignored labels to -100, pad to ``rows`` rows."""
        m = self.metadata
        n = int(example_idx.size)
        inputs = np.full((rows, m.seq_len), m.pad_id, dtype=np.int32)
        labels = np.full((rows, m.seq_len), IGNORE_LABEL_ID, dtype=np.int32)
        ident = np.full((rows,), m.blank_identifier_id, dtype=np.int32)
        if n:
            # Sorted reads are friendlier to the memory map; scatter back into the sampled order.
            order = np.argsort(example_idx, kind="stable")
            inputs[order] = d["inputs"][example_idx[order]]
            lab = np.asarray(d["labels"][example_idx[order]]).astype(np.int32)
            if m.ignore_label_id is not None:
                lab[lab == m.ignore_label_id] = IGNORE_LABEL_ID
            labels[order] = lab
            ident[:n] = d["puzzle_identifiers"][puzzle_idx]
        return {
            "inputs": torch.from_numpy(inputs),
            "labels": torch.from_numpy(labels),
            "puzzle_identifiers": torch.from_numpy(ident),
        }

    def _epoch_plan(self, set_i: int, global_batch_size: int, seed: int, epoch: int):
        """The group order and chosen puzzle of every group for one epoch of set ``set_i``, and the start
        (in that order) of each full batch. Depends only on (seed, epoch, set)."""
        d = self._data[set_i]
        gi = d["group_indices"].astype(np.int64)
        pi = d["puzzle_indices"].astype(np.int64)
        num_groups = gi.size - 1
        rng = np.random.Generator(np.random.Philox(seed=[seed, epoch, set_i]))
        order = rng.permutation(num_groups)
        lo, hi = gi[order], gi[order + 1]
        puzzles = lo + np.minimum((rng.random(num_groups) * (hi - lo)).astype(np.int64), hi - lo - 1)
        sizes = pi[puzzles + 1] - pi[puzzles]
        csum = np.concatenate([[0], np.cumsum(sizes)])
        # A batch takes whole puzzles until it holds >= global_batch_size examples (the last one truncated),
        # as the reference packer; the incomplete final batch is dropped.
        starts = []
        a = 0
        while True:
            b = int(np.searchsorted(csum, csum[a] + global_batch_size, side="left"))
            if b > num_groups:
                break
            starts.append(a)
            a = b
        starts.append(a)
        return puzzles, csum, np.array(starts, dtype=np.int64)

    def _check_sharding(self, global_batch_size, rank, world_size, name: str) -> Tuple[int, int, int]:
        global_batch_size = check_int(global_batch_size, name)
        world_size = check_int(world_size, "world_size")
        rank = check_int(rank, "rank", 0)
        if rank >= world_size:
            raise ValueError(f"rank {rank} must be < world_size {world_size}")
        if global_batch_size % world_size:
            raise ValueError(f"{name} {global_batch_size} must be a multiple of world_size {world_size}")
        return global_batch_size, rank, world_size

    def num_train_batches(self, global_batch_size: int, *, seed: int = 0, epoch: int = 0) -> int:
        """How many batches ``iter_train`` yields for this (seed, epoch): ``total_groups // global_batch_size``
        when every puzzle has one example (Sudoku, maze)."""
        global_batch_size, _, _ = self._check_sharding(global_batch_size, 0, 1, "global_batch_size")
        seed, epoch = check_int(seed, "seed", 0), check_int(epoch, "epoch", 0)
        return sum(len(self._epoch_plan(i, global_batch_size, seed, epoch)[2]) - 1 for i in range(len(self._data)))

    def iter_train(
        self,
        global_batch_size: int,
        *,
        seed: int,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
    ) -> Iterator[Dict[str, torch.Tensor]]:
        """One training epoch of this rank's rows (``global_batch_size // world_size`` per batch).

        Sampling as the reference: groups in a random order, one random puzzle per group, its examples (a
        random subset if the batch is nearly full) packed into global batches, the incomplete last batch
        dropped; every rank computes the same global batch and keeps its contiguous slice, so the ranks
        together cover it exactly. Deterministic in (seed, epoch); ``start_batch=k`` resumes after the first k
        batches of the epoch, yielding exactly what an uninterrupted run would yield from there on. Sets are
        visited in ``metadata.sets`` order and batches numbered across them.
        """
        global_batch_size, rank, world_size = self._check_sharding(
            global_batch_size, rank, world_size, "global_batch_size"
        )
        seed = check_int(seed, "seed", 0)
        epoch = check_int(epoch, "epoch", 0)
        start_batch = check_int(start_batch, "start_batch", 0)
        local = global_batch_size // world_size
        return self._iter_train(global_batch_size, seed, epoch, rank, local, start_batch)

    def _iter_train(self, global_batch_size, seed, epoch, rank, local, start_batch):
        batch_no = 0
        for set_i, d in enumerate(self._data):
            pi = d["puzzle_indices"]
            puzzles, csum, starts = self._epoch_plan(set_i, global_batch_size, seed, epoch)
            num_batches = len(starts) - 1
            if batch_no + num_batches <= start_batch:
                batch_no += num_batches
                continue
            for k in range(num_batches):
                if batch_no < start_batch:
                    batch_no += 1
                    continue
                a, b = int(starts[k]), int(starts[k + 1])
                sizes = (csum[a + 1 : b + 1] - csum[a:b]).copy()
                sizes[-1] -= csum[b] - csum[a] - global_batch_size  # truncate the last puzzle
                chosen = puzzles[a:b]
                pos = np.concatenate([[0], np.cumsum(sizes)])
                base = np.repeat(pi[chosen].astype(np.int64), sizes)
                within = np.arange(global_batch_size, dtype=np.int64) - np.repeat(pos[:-1], sizes)
                full = pi[chosen + 1] - pi[chosen]
                if (full > 1).any():
                    # Multi-example puzzles: a random subset in random order, seeded per batch so that
                    # resuming never needs to replay earlier batches.
                    ex_rng = np.random.Generator(np.random.Philox(seed=[seed, epoch, set_i, k, 1]))
                    for j in np.nonzero(full > 1)[0]:
                        within[pos[j] : pos[j + 1]] = ex_rng.choice(int(full[j]), int(sizes[j]), replace=False)
                example_idx = base + within
                puzzle_idx = np.repeat(chosen, sizes)
                sl = slice(rank * local, (rank + 1) * local)
                yield self._collate(d, example_idx[sl], puzzle_idx[sl], local)
                batch_no += 1

    def iter_eval(
        self, batch_size: int, *, rank: int = 0, world_size: int = 1
    ) -> Iterator[Tuple[Dict[str, torch.Tensor], int]]:
        """Every example once, in order, as ``(batch, n_valid_rows)``.

        ``batch_size`` is global (as the reference's eval loader): global batch j holds examples
        ``[j*batch_size, (j+1)*batch_size)`` and rank r gets its contiguous ``batch_size // world_size`` slice.
        Every batch has exactly ``batch_size // world_size`` rows; rows past the end are padding (inputs
        pad_id, labels -100, puzzle_identifiers blank_identifier_id), always after the ``n_valid_rows`` real
        rows, and a rank past the end still gets an all-padding batch so ranks stay in step. With several
        sets, each set is batched on its own, in ``metadata.sets`` order.
        """
        batch_size, rank, world_size = self._check_sharding(batch_size, rank, world_size, "batch_size")
        local = batch_size // world_size
        return self._iter_eval(batch_size, rank, local)

    def _iter_eval(self, batch_size, rank, local):
        for d in self._data:
            n = int(d["inputs"].shape[0])
            pi = d["puzzle_indices"]
            for start in range(0, n, batch_size):
                end = min(n, start + batch_size)
                lo = min(end, start + rank * local)
                hi = min(end, start + (rank + 1) * local)
                idx = np.arange(lo, hi, dtype=np.int64)
                puzzle_idx = np.searchsorted(pi, idx, side="right") - 1
                yield self._collate(d, idx, puzzle_idx, local), hi - lo


def steps_per_epoch_estimate(meta: DatasetMetadata, global_batch_size: int) -> float:
    """The reference trainer's ``total_groups * mean_puzzle_examples / global_batch_size`` (steps per epoch
    used for its schedule length)."""
    return meta.total_groups * meta.mean_puzzle_examples / check_int(global_batch_size, "global_batch_size")


__all__ = [
    "DatasetFormatError",
    "DatasetMetadata",
    "IGNORE_LABEL_ID",
    "PuzzleDataset",
    "steps_per_epoch_estimate",
    "write_identifiers",
    "write_split",
]
