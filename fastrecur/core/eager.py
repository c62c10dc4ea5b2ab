"""The eager runner: a Python loop over a schedule's steps (the reference semantics and the oracle)."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import torch

from .schedule import INPUT, Copy, Schedule, Step

LevelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Called after every step as observer(step_index, step, states); None (the default) costs nothing.
Observer = Optional[Callable[[int, Step, Dict[str, torch.Tensor]], None]]


def _injection(names: Sequence[str], states: Dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    # Summed left to right, as the reference writes it (``z_H + input_embeddings``).
    out = None
    for n in names:
        t = x if n == INPUT else states[n]
        out = t if out is None else out + t
    return out


def run_steps(
    steps: Sequence[Step],
    states: Dict[str, torch.Tensor],
    x: torch.Tensor,
    levels: Dict[str, LevelFn],
    observer: Observer = None,
    first_index: int = 0,
) -> None:
    """Apply ``steps`` to ``states`` (a dict, rebound in place). ``levels[name](h, injection)`` runs a level."""
    for i, step in enumerate(steps, first_index):
        if isinstance(step, Copy):
            states[step.target] = states[step.source]
        else:
            h, inj = states[step.target], _injection(step.inject, states, x)
            # No inject adds nothing (TRM single-z's ``z = L(z)``): h + 0 is h, bit for bit.
            states[step.target] = levels[step.level](h, h.new_zeros(()) if inj is None else inj)
        if observer is not None:
            observer(i, step, states)


def run_schedule(
    schedule: Schedule,
    states: Dict[str, torch.Tensor],
    x: torch.Tensor,
    levels: Dict[str, LevelFn],
    observer: Observer = None,
) -> None:
    """Run the no-grad prefix under ``torch.no_grad()``, then the grad tail with autograd."""
    with torch.no_grad():
        run_steps(schedule.no_grad_steps, states, x, levels, observer)
    run_steps(schedule.grad_steps, states, x, levels, observer, schedule.grad_start)
