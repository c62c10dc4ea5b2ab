"""Evaluation: ``fastrecur eval CHECKPOINT DATASET [--split test]``.

Each eval batch is solved by the inference engine (:func:`fastrecur.engine.solve`, on the model's backend:
by default the fastest here) from fresh states. ``halting="max_steps"`` (the default, the reference's
evaluation) runs ``halt_max_steps`` ACT steps for every row (or ``max_steps``: more steps continue the same
recursion); ``halting="q"`` stops each row where its Q head says halt (``q_halt > 0``, or ``q_halt >
q_continue`` for HRM-style halting) and reports the prediction there. Reported on the valid rows:

- ``exact_accuracy``: fraction of puzzles with every labelled token right;
- ``accuracy``: mean over puzzles of the fraction of labelled tokens right (the reference's ``accuracy``);
- ``steps``: mean ACT steps run;
- ``halt_step``: mean step at which the Q head would first have halted the row (``q_halt > 0``, or
  ``q_halt > q_continue`` for HRM-style halting; ``halt_max_steps`` if never) -- what ACT would cost;
- ``exact_accuracy_at_halt``: exact accuracy of the prediction at that step;
- ``lm_loss``: mean per-puzzle LM loss of the final step;
- on the test split of an ARC dataset (``fastrecur data arc``): ``ARC/pass@K`` by the reference's voting rule
  (:mod:`fastrecur.train.arc_eval`), and a Kaggle ``submission.json`` (``--submission``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, Optional

import torch
import torch.distributed as dist

from fastrecur import engine
from fastrecur.cli import (
    InputError,
    add_inference_arguments,
    check_dataset_matches_model,
    check_output_dir,
    positive_int,
)
from fastrecur.cli import resolve_device as _resolve_device
from fastrecur.models.loss import IGNORE_LABEL_ID

HALTING = ("max_steps", "q")

_KEYS = ("count", "accuracy", "exact_accuracy", "steps", "halt_step", "exact_accuracy_at_halt", "lm_loss")


def _row_metrics(logits: torch.Tensor, labels: torch.Tensor):
    """Per row: (has labels, token accuracy, exactly right)."""
    mask = labels != IGNORE_LABEL_ID
    n = mask.sum(-1)
    correct = mask & (logits.argmax(-1) == labels)
    tok = correct.sum(-1).to(torch.float64) / n.clamp_min(1)
    return n > 0, tok, correct.sum(-1) == n


def halting_rule(model, halting: str) -> str:
    """The engine's halting mode for ``halting`` ("max_steps" or "q") on ``model``: "q" means the model's own
    Q rule (``q_continue`` for HRM-style halting)."""
    if halting not in HALTING:
        raise ValueError(f"halting must be one of {list(HALTING)}, got {halting!r}")
    if halting == "q" and getattr(model, "halt_on_q_continue", False):
        return "q_continue"
    return halting


@torch.no_grad()
def evaluate_model(
    head: torch.nn.Module,
    dataset,
    batch_size: int,
    device: torch.device,
    *,
    rank: int = 0,
    world_size: int = 1,
    max_batches: Optional[int] = None,
    halting: str = "max_steps",
    max_steps: Optional[int] = None,
    arc=None,
) -> Dict[str, float]:
    """Metrics of ``head`` (an ``ACTLossHead``) on ``dataset`` (``iter_eval``); summed over ranks when
    distributed. ``halting`` and ``max_steps``: see the module docstring. ``arc``: an
    :class:`~fastrecur.train.arc_eval.ARCEvaluator`, given each row's final prediction and q_halt logit; its
    ``ARC/pass@K`` metrics join the result. The head is left in eval mode; the caller restores train mode."""
    if not hasattr(dataset, "iter_eval"):
        raise TypeError(f"dataset must have iter_eval(batch_size, rank=, world_size=), got {type(dataset).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    head.eval()
    model = head.model
    mode = halting_rule(model, halting)
    sums = torch.zeros(len(_KEYS), dtype=torch.float64, device=device)
    if arc is not None:
        arc.reset()
    for i, (batch, n_valid) in enumerate(dataset.iter_eval(batch_size, rank=rank, world_size=world_size)):
        if max_batches is not None and i >= max_batches:
            break
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch["labels"]
        rows = labels.shape[0]
        valid_rows = torch.arange(rows, device=device) < int(n_valid)
        res = engine.solve(model, batch, halting=mode, max_steps=max_steps, return_step_predictions=True)
        if arc is not None:  # padding rows carry the blank identifier, which the evaluator skips
            arc.update(batch["inputs"], res.predictions, res.q_halt_logits, batch["puzzle_identifiers"])
        # Where the Q head would first have halted each row (the last step if never): what ACT would cost.
        wants = model.q_says_halt(res.step_q_halt_logits, res.step_q_continue_logits)
        wants[-1] = True
        first = wants.to(torch.int8).argmax(0)  # [B] 0-based step index
        preds_at_halt = res.step_predictions.gather(0, first.view(1, -1, 1).expand(1, -1, labels.shape[1]))[0]
        mask = labels != IGNORE_LABEL_ID
        exact_at_halt = ((preds_at_halt == labels) | ~mask).all(-1)
        has, tok, exact = _row_metrics(res.logits, labels)
        lm = head.per_token_loss(res.logits, labels).sum(-1) / mask.sum(-1).clamp_min(1)
        use = valid_rows & has
        f = use.to(torch.float64)
        sums += torch.stack(
            [
                f.sum(),
                (tok * f).sum(),
                (exact & use).sum().to(torch.float64),
                (res.steps.to(torch.float64) * f).sum(),
                ((first + 1).to(torch.float64) * f).sum(),
                (exact_at_halt & use).sum().to(torch.float64),
                (lm.to(torch.float64) * f).sum(),
            ]
        )
    if world_size > 1:
        dist.all_reduce(sums)
    vals = sums.tolist()
    count = max(vals[0], 1.0)
    out = {k: v / count for k, v in zip(_KEYS[1:], vals[1:])}
    out["count"] = int(vals[0])
    if arc is not None:
        out.update(arc.result(arc.save_dir, rank=rank, world_size=world_size))
    return out


def format_metrics(m: Dict[str, float]) -> str:
    return (
        f"exact {m['exact_accuracy']:.4f} | token {m['accuracy']:.4f} | steps {m['steps']:.2f} | halt step "
        f"{m['halt_step']:.2f} "
        f"(exact there {m['exact_accuracy_at_halt']:.4f}) | lm_loss {m['lm_loss']:.4f} | n={m['count']}"
        + "".join(f" | {k[4:]} {v:.4f}" for k, v in m.items() if k.startswith("ARC/"))
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="run folder, checkpoint folder, or .safetensors file beside a config.json")
    parser.add_argument("dataset", help="dataset folder (with train/ and test/)")
    parser.add_argument("--split", default="test", help="dataset split (default: test)")
    parser.add_argument("--batch-size", type=positive_int, default=256)
    add_inference_arguments(parser, device_default="auto")
    parser.add_argument(
        "--max-batches", type=positive_int, default=None, help="stop after this many batches (quick look)"
    )
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument(
        "--submission",
        default=None,
        metavar="DIR",
        help="ARC datasets: folder for submission.json (default: CHECKPOINT's folder)",
    )


def resolve_device(name: str) -> torch.device:
    """``fastrecur.cli.resolve_device``: an ``InputError`` (a ValueError) for a device this machine lacks."""
    return _resolve_device(name)


def run(args) -> int:
    from fastrecur.data import PuzzleDataset

    from .state import CheckpointError, load_model

    device = resolve_device(args.device)
    if args.submission:
        check_output_dir(args.submission, "--submission")
    try:
        head, info = load_model(args.checkpoint, device, use_ema=not args.no_ema, backend=args.backend)
    except (CheckpointError, ValueError) as e:  # ValueError: a backend that cannot run this model
        raise InputError(str(e)) from e
    ds = PuzzleDataset(args.dataset, split=args.split)
    check_dataset_matches_model(
        head.model.config, ds.metadata, f"{args.dataset} [{args.split}]", f"the model of {info['weights']}"
    )
    from .arc_eval import evaluator_for

    ckpt_dir = args.checkpoint if os.path.isdir(args.checkpoint) else os.path.dirname(os.path.abspath(args.checkpoint))
    arc = evaluator_for(ds, args.submission or ckpt_dir)
    m = evaluate_model(
        head,
        ds,
        args.batch_size,
        device,
        max_batches=args.max_batches,
        halting=args.halting,
        max_steps=args.steps,
        arc=arc,
    )
    if arc is not None:
        print(f"ARC submission: {os.path.join(arc.save_dir, 'submission.json')}", file=sys.stderr)
    if args.json:
        print(json.dumps(m, indent=2))
    else:
        ran = head.model.execution_backend(device).name
        dtype = head.model.config.forward_dtype
        print(f"{info['weights']} on {args.dataset} [{args.split}] ({ran} backend, {dtype}): {format_metrics(m)}")
    return 0


__all__ = ["add_arguments", "evaluate_model", "format_metrics", "run"]
