"""``fastrecur solve CHECKPOINT --puzzle "..."``: solve one puzzle, printing the prediction after each ACT step.

The puzzle is a Sudoku string (``.`` or ``0`` for blanks, whitespace ignored; 16, 36 or 81 cells) for a model
trained on Sudoku; for other datasets give the token ids (``--tokens "1 2 3 ..."``). The inference engine
(:func:`fastrecur.engine.solve`, fastest backend here by default) runs the recursion from fresh states for
``halt_max_steps`` ACT steps, or ``--steps`` (more continue the same recursion; it is never restarted), or with
``--halting q`` until the Q head says halt; each step prints the predicted grid, how many cells changed, and
the Q head's halt logit. The last prediction is the answer; for Sudoku it is checked (valid solution, givens
kept). For a model trained on ARC data (``fastrecur data arc``) give the input grid as JSON (``--grid``, with
``--puzzle-id`` naming its task's identifier): the grids print as colours 0-9 cropped at their EOS border, and
``--png`` draws the input, each step's prediction and ``--target`` in the ARC palette.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import List, Optional

import numpy as np
import torch

from fastrecur.cli import InputError, add_inference_arguments
from fastrecur.data.sudoku import CELL_LEGEND, NOT_A_DIGIT_CHAR, sudoku_cell_chars


def format_grid(cells: List[str], n: int, box: Optional[tuple]) -> str:
    """An n x n grid of one-character cells, with box separators when ``box = (rows, cols)`` is given."""
    lines = []
    for r in range(n):
        if box and r and r % box[0] == 0:
            lines.append("-+-".join(["-" * (2 * box[1] - 1)] * (n // box[1])))
        row = cells[r * n : (r + 1) * n]
        if box:
            lines.append(" | ".join(" ".join(row[c : c + box[1]]) for c in range(0, n, box[1])))
        else:
            lines.append(" ".join(row))
    return "\n".join(lines)


def parse_tokens(text: str, option: str = "--tokens") -> np.ndarray:
    """Token ids separated by spaces or commas -> int64 array; a ValueError naming ``option`` for an empty list
    or an entry that is not an integer."""
    parts = text.replace(",", " ").split()
    bad = [p for p in parts if not p.lstrip("+-").isdigit()]
    if bad or not parts:
        what = f"{bad[0]!r} is not an integer" if bad else "no token ids given"
        raise ValueError(f"{option}: {what}; give token ids separated by spaces or commas, e.g. '1 2 3'")
    return np.array([int(p) for p in parts], dtype=np.int64)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="run folder, checkpoint folder, or .safetensors file beside a config.json")
    g = parser.add_mutually_exclusive_group(required=True)
    g.add_argument(
        "--puzzle",
        help=f"Sudoku string, '.' or '0' for blanks (e.g. '3.1.......3....4'); printed grids: {CELL_LEGEND}",
    )
    g.add_argument("--tokens", help="token ids separated by spaces or commas (any dataset)")
    g.add_argument(
        "--grid",
        help="ARC: the input grid as JSON, e.g. '[[0,1],[2,3]]' (a model trained on "
        "`fastrecur data arc`; its task: --puzzle-id, an index in identifiers.json)",
    )
    parser.add_argument("--target", help="ARC: the expected output grid as JSON (each step marked right or wrong)")
    parser.add_argument("--png", help="ARC: draw the input, the prediction per ACT step and the target to this PNG")
    parser.add_argument(
        "--puzzle-id", type=int, default=None, help="puzzle identifier (default: the dataset's blank id)"
    )
    add_inference_arguments(parser)


def step_predictions(
    head, inputs: np.ndarray, puzzle_id: int, steps: int, device: torch.device, halting: str = "max_steps"
):
    """The engine on one puzzle: yields ``(step, predicted tokens, q_halt logit)`` after each ACT step it ran."""
    from fastrecur import engine

    from .evaluate import halting_rule

    batch = {
        "inputs": torch.as_tensor(inputs, dtype=torch.int32, device=device).view(1, -1),
        "puzzle_identifiers": torch.tensor([puzzle_id], dtype=torch.int32, device=device),
    }
    model = head.model.eval()  # the ACT model alone: no labels, so no loss to compute
    res = engine.solve(
        model, batch, halting=halting_rule(model, halting), max_steps=steps, return_step_predictions=True
    )
    for t in range(int(res.steps[0])):
        yield t + 1, res.step_predictions[t, 0].cpu().numpy(), float(res.step_q_halt_logits[t, 0])


def run(args) -> int:
    from .evaluate import resolve_device
    from .state import CheckpointError, load_model

    try:
        device = resolve_device(args.device)
        head, info = load_model(args.checkpoint, device, use_ema=not args.no_ema, backend=args.backend)
    except (CheckpointError, ValueError) as e:  # ValueError: a backend that cannot run this model
        raise InputError(str(e)) from e
    cfg = head.model.config
    meta = info["config"].get("data", {})
    seq_len = cfg.seq_len
    sudoku = args.puzzle is not None
    from fastrecur.data.arc import arc_canvas_side, crop_grid, encode_grid_pair, parse_grid_json
    from fastrecur.plots import arc_text_grid, draw_arc_steps

    arc_side = arc_canvas_side(seq_len, cfg.vocab_size)
    try:
        target = None
        if (args.grid or args.target or args.png) and not arc_side:
            raise ValueError(
                "--grid, --target and --png need a model trained on ARC data (vocabulary 12, square seq_len)"
            )
        if args.png and importlib.util.find_spec("matplotlib") is None:
            raise ValueError("--png needs matplotlib: pip install 'fastrecur[plot]'")
        if args.target:
            target = parse_grid_json(args.target, "--target", arc_side)
        if args.grid:
            grid = parse_grid_json(args.grid, "--grid", arc_side)
            inputs = encode_grid_pair(grid, grid, arc_side)[0].astype(np.int64)
        elif sudoku:
            from fastrecur.data import encode_sudoku

            inputs = encode_sudoku(args.puzzle, name="--puzzle").astype(np.int64)
        else:
            inputs = parse_tokens(args.tokens)
        if inputs.size != seq_len:
            raise ValueError(f"the model takes {seq_len} tokens, the puzzle has {inputs.size}")
        if inputs.min() < 0 or inputs.max() >= cfg.vocab_size:
            raise ValueError(f"token ids must be in [0, {cfg.vocab_size}), got [{inputs.min()}, {inputs.max()}]")
        if args.puzzle_id is not None and not 0 <= args.puzzle_id < cfg.num_puzzle_identifiers:
            raise ValueError(
                f"--puzzle-id must be in [0, {cfg.num_puzzle_identifiers}) for this model, got {args.puzzle_id}"
            )
    except ValueError as e:
        print(f"fastrecur solve: {e}", file=sys.stderr)
        return 2
    steps = args.steps or cfg.halt_max_steps
    if steps < 1:
        print("fastrecur solve: --steps must be >= 1", file=sys.stderr)
        return 2
    pid = args.puzzle_id if args.puzzle_id is not None else int(meta.get("blank_identifier_id", 0))
    n = int(round(seq_len**0.5))
    box = None
    if sudoku:
        from fastrecur.data.sudoku import BOX_SHAPES

        box = BOX_SHAPES.get(n)
    render = (
        (lambda t: arc_text_grid(crop_grid(t, arc_side)))
        if arc_side
        else (lambda t: format_grid(sudoku_cell_chars(t), n, box))
        if sudoku
        else (
            lambda t: (
                format_grid([str(x) for x in t.tolist()], n, None)
                if n * n == seq_len
                else " ".join(str(x) for x in t.tolist())
            )
        )
    )
    print(f"puzzle ({info['weights']}):\n{render(inputs)}\n")
    prev = None
    preds = inputs
    arc_steps = []
    for step, preds, q_halt in step_predictions(head, inputs, pid, steps, device, args.halting):
        changed = "" if prev is None else f", {int((preds != prev).sum())} cell(s) changed"
        would = "halt" if q_halt > 0 else "continue"
        print(f"step {step}: q_halt {q_halt:+.2f} ({would}){changed}\n{render(preds)}\n")
        prev = preds
        arc_steps.append((crop_grid(preds, arc_side), q_halt) if arc_side else None)
    if arc_side:
        answer = arc_steps[-1][0]
        right = "" if target is None else f"  ({'right' if np.array_equal(answer, target) else 'wrong'})"
        print(f"answer: {answer.tolist()}{right}")
        if args.png:
            draw_arc_steps(
                args.png, crop_grid(inputs, arc_side), [g for g, _ in arc_steps], [q for _, q in arc_steps], target
            )
            print(f"drawn to {args.png}")
    elif sudoku:
        from fastrecur.data import decode_sudoku, is_valid_solution

        answer = "".join(sudoku_cell_chars(preds))
        given = inputs != 1
        keeps = bool(np.all(preds[given] == inputs[given]))
        valid = NOT_A_DIGIT_CHAR not in answer and is_valid_solution(decode_sudoku(preds))
        print(
            f"answer: {answer}  ({'valid' if valid else 'NOT a valid'} solution, givens "
            f"{'kept' if keeps else 'CHANGED'})"
        )
    else:
        print("answer: " + " ".join(str(x) for x in preds.tolist()))
    return 0


__all__ = ["add_arguments", "format_grid", "run", "step_predictions"]
