"""``fastrecur inspect CHECKPOINT (DATASET | --puzzle "...")``: look inside a trained model's recursion.

Writes to ``--out``: ``steps.png`` (the first puzzle's grid after each ACT step: givens bold, violations red,
changed cells grey; ARC: input, prediction per step and target in the ARC palette), ``residuals.png``
(forward residual of each state over all inner updates, log scale),
``participation_ratio.png`` (PR of each state over samples x positions), ``accuracy.png`` (exact accuracy
versus ACT steps run) and ``inspect.json`` with every number plotted. Prints the grids in the terminal too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

from fastrecur.cli import check_dataset_matches_model, check_output_dir, positive_int, resolve_device
from fastrecur.data.sudoku import CELL_LEGEND
from fastrecur.ops.reference import IGNORE_LABEL_ID
from fastrecur.plots import (
    arc_text_grid,
    draw_accuracy,
    draw_arc_steps,
    draw_bars,
    draw_residuals,
    draw_sudoku_steps,
    text_grid,
)

from .pr import participation_ratio
from .trace import trace


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run folder, checkpoint folder, or .safetensors file beside a config.json")
    p.add_argument("dataset", nargs="?", help="dataset folder (reference format); or give --puzzle")
    p.add_argument(
        "--puzzle",
        help="one Sudoku ('.' or '0' for blanks) or maze (rows of '# SGo' separated by '/'); Sudoku grids print "
        f"[d] for a given, d* changed, d! a violation; {CELL_LEGEND}",
    )
    p.add_argument("--split", default="test")
    p.add_argument("--max-examples", type=positive_int, default=256, help="examples traced from the dataset")
    p.add_argument("--steps", type=positive_int, default=None, help="ACT steps (default: the model's halt_max_steps)")
    p.add_argument("--out", default="inspect-out")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-ema", action="store_true", help="use the live weights even if an EMA copy exists")


def _sudoku_side(seq_len: int, vocab: int):
    from fastrecur.data.sudoku import BOX_SHAPES

    n = int(round(seq_len**0.5))
    return n if n * n == seq_len and n in BOX_SHAPES and vocab == n + 2 else None


def _puzzle_batch(text: str, cfg) -> dict:
    from fastrecur.data import encode_maze, encode_sudoku

    if set(text) <= set("# SGo/\n"):
        tokens = encode_maze(text.replace("/", "\n"), name="--puzzle")
    else:
        tokens = encode_sudoku(text, name="--puzzle")
    if tokens.size != cfg.seq_len:
        raise ValueError(f"--puzzle has {tokens.size} cells but the model takes seq_len={cfg.seq_len}")
    if int(tokens.max()) >= cfg.vocab_size:
        raise ValueError(
            f"--puzzle uses token ids up to {int(tokens.max())}, outside the model's vocabulary of {cfg.vocab_size}"
        )
    t = torch.as_tensor(tokens.astype(np.int64)).view(1, -1)
    return {
        "inputs": t,
        "labels": torch.full_like(t, IGNORE_LABEL_ID),
        "puzzle_identifiers": torch.zeros(1, dtype=torch.long),
    }


def _dataset_batch(path: str, split: str, limit: int, cfg) -> dict:
    from fastrecur.data import PuzzleDataset

    if limit < 1:
        raise ValueError(f"--max-examples must be >= 1, got {limit}")
    ds = PuzzleDataset(path, split=split)
    check_dataset_matches_model(cfg, ds.metadata, f"{path} [{split}]")
    parts = []
    for batch, n_valid in ds.iter_eval(min(limit, 256)):
        parts.append({k: v[:n_valid] for k, v in batch.items()})
        if sum(p["inputs"].shape[0] for p in parts) >= limit:
            break
    return {k: torch.cat([p[k] for p in parts])[:limit].long() for k in parts[0]}


def _other_grid(tokens: np.ndarray, cfg) -> str:
    """A maze (vocabulary of 6) drawn with its characters, an ARC grid as its colours; any other puzzle as
    token ids."""
    from fastrecur.data.arc import arc_canvas_side, crop_grid

    side = arc_canvas_side(cfg.seq_len, cfg.vocab_size)
    if side:
        return arc_text_grid(crop_grid(tokens, side))
    if cfg.vocab_size == 6:
        from fastrecur.data import decode_maze

        try:
            return decode_maze(tokens)
        except ValueError:  # a prediction with pad tokens is not a drawable maze
            pass
    return " ".join(str(int(t)) for t in tokens)


def run(args) -> int:
    from fastrecur.train.state import CheckpointError, load_model

    if (args.dataset is None) == (args.puzzle is None):
        print("fastrecur inspect: give a DATASET folder or --puzzle (one of them)", file=sys.stderr)
        return 2
    try:
        check_output_dir(args.out)
        args.device = resolve_device(args.device)
        head, info = load_model(args.checkpoint, args.device, use_ema=not args.no_ema, backend="eager")
        model = head.model
        batch = (
            _puzzle_batch(args.puzzle, model.config)
            if args.puzzle
            else _dataset_batch(args.dataset, args.split, args.max_examples, model.config)
        )
        batch = {k: v.to(args.device) for k, v in batch.items()}
        tr = trace(model, batch, steps=args.steps, keep_states=True)
    except (CheckpointError, ValueError, TypeError, FileNotFoundError) as e:
        print(f"fastrecur inspect: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    cfg = model.config
    inputs0 = batch["inputs"][0].cpu().numpy()
    preds0 = [s.preds[0].cpu().numpy() for s in tr.steps]
    q0 = [float(s.q_halt[0]) for s in tr.steps]
    n = _sudoku_side(cfg.seq_len, cfg.vocab_size)
    box = None
    if n:
        from fastrecur.data.sudoku import BOX_SHAPES

        box = BOX_SHAPES[n]
    print(
        f"{type(model).__name__} from {info['weights']}; {batch['inputs'].shape[0]} example(s), {len(tr.steps)} ACT "
        "steps\n"
    )
    prev = None
    for i, p in enumerate(preds0):
        if n:
            grid = text_grid(p, inputs0, prev, box)
        else:
            grid = _other_grid(p, cfg)
        print(f"step {i + 1} (q_halt {q0[i]:+.2f}):\n{grid}\n")
        prev = p

    from fastrecur.data.arc import arc_canvas_side, crop_grid

    arc_side = arc_canvas_side(cfg.seq_len, cfg.vocab_size)
    labels = batch["labels"]
    valid = labels != IGNORE_LABEL_ID
    has_labels = bool(valid.any())
    acc = [float(((s.preds == labels) | ~valid).all(-1).float().mean()) for s in tr.steps] if has_labels else []
    plen = model.inner.puzzle_emb_len
    # Participation ratio over samples x positions (puzzle-embedding prefix excluded) at the last ACT step.
    pr = (
        {k: participation_ratio(v[:, plen:]) for k, v in tr.steps[-1].states.items()}
        if batch["inputs"].numel() > 1
        else {}
    )
    per_step = len(tr.steps[0].updates)
    residuals = {}
    for state in sorted({u.state for u in tr.steps[0].updates}):
        rows = [
            (i * per_step + j, float(u.residual.mean()))
            for i, s in enumerate(tr.steps)
            for j, u in enumerate(s.updates)
            if u.state == state
        ]
        residuals[state] = np.array(rows)
    result = {
        "model": type(model).__name__,
        "checkpoint": info["weights"],
        "examples": int(batch["inputs"].shape[0]),
        "act_steps": len(tr.steps),
        "exact_accuracy_per_step": acc,
        "participation_ratio": pr,
        "residuals": {k: v[:, 1].tolist() for k, v in residuals.items()},
        "residual_update_index": {k: v[:, 0].astype(int).tolist() for k, v in residuals.items()},
        "first_example": {"inputs": inputs0.tolist(), "preds": [p.tolist() for p in preds0], "q_halt": q0},
    }
    with open(os.path.join(args.out, "inspect.json"), "w") as f:
        json.dump(result, f, indent=1)
    try:
        if n:
            draw_sudoku_steps(os.path.join(args.out, "steps.png"), inputs0, preds0, box, q0)
        elif arc_side:  # input, prediction per step and target in the ARC palette
            target = crop_grid(batch["labels"][0].cpu().numpy(), arc_side) if has_labels else None
            draw_arc_steps(
                os.path.join(args.out, "steps.png"),
                crop_grid(inputs0, arc_side),
                [crop_grid(p, arc_side) for p in preds0],
                q0,
                target,
            )
        draw_residuals(os.path.join(args.out, "residuals.png"), residuals, per_step)
        if pr:
            draw_bars(
                os.path.join(args.out, "participation_ratio.png"), pr, "participation ratio (last ACT step)", "PR"
            )
        if acc:
            draw_accuracy(os.path.join(args.out, "accuracy.png"), acc)
    except ImportError as e:
        print(f"fastrecur inspect: no plots ({e}); numbers are in inspect.json")
    if acc:
        print("exact accuracy after each ACT step: " + " ".join(f"{a:.3f}" for a in acc))
    if pr:
        print("participation ratio: " + ", ".join(f"{k} {v:.1f}" for k, v in pr.items()))
    print(f"written to {args.out}/")
    return 0
