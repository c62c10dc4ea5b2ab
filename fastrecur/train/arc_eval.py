"""ARC scoring by the reference's rule (TRM ``evaluators/arc.py``): votes across augmentations, pass@K and a
Kaggle ``submission.json``.

Per predicted row (the test split of a dataset from :func:`fastrecur.data.arc.build_arc_dataset`): crop the
prediction and the input at their EOS border (:func:`fastrecur.data.arc.crop_grid`), undo the row's
augmentation (named by its puzzle identifier in ``identifiers.json``), and record one vote for that grid on
(task, original test input), with ``sigmoid(q_halt logit)`` in float64. Rows whose identifier is the blank one
are padding and ignored. Per test input the candidate grids are ranked by (vote count, mean sigmoid q_halt),
highest first, ties kept in order of first vote (ranks in order); pass@K counts the input solved when the
solution is among the first K; a task scores the fraction of its test inputs solved, and pass@K is the mean
over the tasks of ``test_puzzles.json``. Votes are gathered across ranks (``all_gather_object``), so every rank
returns the same metrics.

``submission.json`` (Kaggle format): ``{task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]}``, one entry
per test input in order, the top two candidates (the first repeated when there is only one). Where the
reference leaves out a test input that got no prediction (which shifts the later inputs' attempts), this
writes ``[[0]]`` attempts so the file stays aligned, and counts the input unsolved as the reference does.

Usage, independent of how the model is run::

    ev = ARCEvaluator("data/arc")
    for batch, preds, q_halt in ...:   # preds: argmax tokens [B, seq_len]; q_halt: [B] logits
        ev.update(batch["inputs"], preds, q_halt, batch["puzzle_identifiers"])
    metrics = ev.result(save_dir="runs/x")   # {"ARC/pass@1": ..., "ARC/pass@2": ..., ...}
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from fastrecur.data.arc import crop_grid, grid_array, parse_augmentation, undo_augmentation
from fastrecur.data.format import DatasetFormatError, _atomic_write

PASS_KS = (1, 2, 5, 10, 100, 1000)  # the reference's pass_Ks
SUBMISSION_K = 2


def _grid_key(grid: np.ndarray) -> bytes:
    """An exact key of a uint8 grid: its shape and bytes (what the reference hashes)."""
    return bytes([grid.shape[0], grid.shape[1]]) + np.ascontiguousarray(grid).tobytes()


def is_arc_dataset(root: str) -> bool:
    """True when ``root`` holds ``test_puzzles.json`` (a dataset written by ``fastrecur data arc``)."""
    return os.path.isfile(os.path.join(os.fspath(root), "test_puzzles.json"))


def evaluator_for(dataset, save_dir: Optional[str] = None) -> Optional["ARCEvaluator"]:
    """An :class:`ARCEvaluator` for a :class:`~fastrecur.data.format.PuzzleDataset` when it is the test split of
    an ARC dataset (its root holds ``test_puzzles.json``), else None."""
    root, split = getattr(dataset, "root", None), getattr(dataset, "split", None)
    if root is None or split != "test" or not is_arc_dataset(root):
        return None
    return ARCEvaluator(root, blank_identifier_id=dataset.metadata.blank_identifier_id, save_dir=save_dir)


class ARCEvaluator:
    """Accumulates votes of per-example predictions and scores them (see the module docstring).

    Args:
        data_path: the ARC dataset folder, with ``identifiers.json`` and ``test_puzzles.json``.
        blank_identifier_id: the identifier of padding rows (the dataset's ``blank_identifier_id``, 0).
        pass_ks: the K of each pass@K reported (the reference's 1, 2, 5, 10, 100, 1000).
        save_dir: where :func:`fastrecur.train.evaluate.evaluate_model` has ``submission.json`` written (None:
            not written).

    Raises :class:`~fastrecur.data.format.DatasetFormatError` (a ValueError) naming a missing or malformed file.
    """

    def __init__(
        self,
        data_path: str,
        *,
        blank_identifier_id: int = 0,
        pass_ks: Sequence[int] = PASS_KS,
        save_dir: Optional[str] = None,
    ):
        root = os.fspath(data_path)
        self.save_dir = save_dir
        self.identifiers = self._load(root, "identifiers.json", list)
        self.test_puzzles = self._load(root, "test_puzzles.json", dict)
        if not all(isinstance(n, str) for n in self.identifiers):
            raise DatasetFormatError(f"{os.path.join(root, 'identifiers.json')}: expected a list of names")
        ks = list(pass_ks)
        if not ks or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks):
            raise ValueError(f"pass_ks must be a non-empty list of ints >= 1, got {pass_ks!r}")
        self.pass_ks = ks
        self.blank_identifier_id = int(blank_identifier_id)
        # task -> original input key -> [(prediction key, sigmoid q_halt)], in order of arrival
        self.votes: Dict[str, Dict[bytes, List[Tuple[bytes, float]]]] = {}
        self._parsed: Dict[int, tuple] = {}

    @staticmethod
    def _load(root: str, name: str, kind: type):
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            raise DatasetFormatError(
                f"ARC evaluation needs {path} (written by `fastrecur data arc`); is {root!r} an ARC dataset?"
            )
        try:
            with open(path) as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise DatasetFormatError(f"{path}: malformed JSON ({e})") from e
        if not isinstance(data, kind):
            raise DatasetFormatError(
                f"{path}: expected a JSON {'list' if kind is list else 'object'}, got {type(data).__name__}"
            )
        return data

    def _augmentation(self, identifier: int) -> tuple:
        if identifier not in self._parsed:
            if not 0 <= identifier < len(self.identifiers):
                raise ValueError(
                    f"puzzle identifier {identifier} is outside identifiers.json (0..{len(self.identifiers) - 1})"
                )
            self._parsed[identifier] = parse_augmentation(self.identifiers[identifier])
        return self._parsed[identifier]

    def update(self, inputs, preds, q_halt_logits, puzzle_identifiers) -> None:
        """Record one batch: ``inputs`` and ``preds`` integer tokens ``[B, seq_len]`` (seq_len a square),
        ``q_halt_logits`` ``[B]`` (float), ``puzzle_identifiers`` ``[B]``; tensors or arrays, any device."""
        inputs, preds, ids = (np.asarray(torch.as_tensor(x).cpu()) for x in (inputs, preds, puzzle_identifiers))
        q = torch.as_tensor(q_halt_logits).detach().cpu().to(torch.float64).sigmoid().numpy()
        if inputs.ndim != 2 or preds.shape != inputs.shape:
            raise ValueError(
                f"inputs and preds must both be [B, seq_len], got {list(inputs.shape)} and {list(preds.shape)}"
            )
        if ids.shape != (inputs.shape[0],) or q.shape != ids.shape:
            raise ValueError(
                f"puzzle_identifiers and q_halt_logits must be [B={inputs.shape[0]}], got "
                f"{list(ids.shape)} and {list(q.shape)}"
            )
        side = int(round(inputs.shape[1] ** 0.5))
        if side * side != inputs.shape[1]:
            raise ValueError(f"seq_len {inputs.shape[1]} is not a square canvas")
        for inp, pred, ident, qv in zip(inputs, preds, ids, q):
            if int(ident) == self.blank_identifier_id:
                continue
            task, tid, mapping = self._augmentation(int(ident))
            in_key = _grid_key(undo_augmentation(crop_grid(inp, side), tid, mapping))
            pred_key = _grid_key(undo_augmentation(crop_grid(pred, side), tid, mapping))
            self.votes.setdefault(task, {}).setdefault(in_key, []).append((pred_key, float(qv)))

    def reset(self) -> None:
        """Forget all votes."""
        self.votes = {}

    def _gathered(self, world_size: int, group) -> list:
        if world_size <= 1:
            return [self.votes]
        import torch.distributed as dist

        everyone: list = [None] * world_size
        dist.all_gather_object(everyone, self.votes, group=group)
        return everyone

    def result(
        self, save_dir: Optional[str] = None, *, rank: int = 0, world_size: int = 1, group=None
    ) -> Dict[str, float]:
        """``{"ARC/pass@K": fraction}`` for each K, over the votes of all ranks (a collective when
        ``world_size > 1``: every rank must call it). Rank 0 writes ``save_dir/submission.json`` when given."""
        all_votes = self._gathered(world_size, group)
        correct = [0.0] * len(self.pass_ks)
        submission: Dict[str, list] = {}
        for name, task in self.test_puzzles.items():
            solved = [0] * len(self.pass_ks)
            attempts = []
            for i, pair in enumerate(task["test"]):
                where = f"test_puzzles.json: task {name} test[{i}]"
                in_key = _grid_key(grid_array(pair["input"], where + ".input"))
                label_key = _grid_key(grid_array(pair["output"], where + ".output"))
                stats: Dict[bytes, list] = {}
                for votes in all_votes:
                    for pred_key, q in votes.get(name, {}).get(in_key, []):
                        s = stats.setdefault(pred_key, [0, 0.0])
                        s[0] += 1
                        s[1] += q
                if not stats:
                    attempts.append({f"attempt_{k + 1}": [[0]] for k in range(SUBMISSION_K)})
                    continue
                for s in stats.values():
                    s[1] /= s[0]
                ranked = [key for key, _ in sorted(stats.items(), key=lambda kv: kv[1], reverse=True)]
                for j, k in enumerate(self.pass_ks):
                    solved[j] += label_key in ranked[:k]
                top = ranked[:SUBMISSION_K]
                top += [top[0]] * (SUBMISSION_K - len(top))
                attempts.append({f"attempt_{k + 1}": _key_grid(key).tolist() for k, key in enumerate(top)})
            submission[name] = attempts
            for j in range(len(self.pass_ks)):
                correct[j] += solved[j] / len(task["test"])
        if save_dir is not None and rank == 0:
            write_submission(os.path.join(os.fspath(save_dir), "submission.json"), submission)
        n = max(len(self.test_puzzles), 1)
        return {f"ARC/pass@{k}": correct[j] / n for j, k in enumerate(self.pass_ks)}


def _key_grid(key: bytes) -> np.ndarray:
    return np.frombuffer(key[2:], dtype=np.uint8).reshape(key[0], key[1])


def write_submission(path: str, submission: Dict[str, list]) -> None:
    """Write a Kaggle ``submission.json`` atomically (creating its folder)."""
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    text = json.dumps(submission).encode()
    _atomic_write(os.fspath(path), lambda f: f.write(text))


__all__ = ["ARCEvaluator", "PASS_KS", "evaluator_for", "is_arc_dataset", "write_submission"]
