"""Record what happens inside the recursion, update by update, for every model on the recursion core.

``trace(model, batch)`` runs the model's recursion for ``steps`` ACT steps (default ``halt_max_steps``; more
continue the same recursion, as :func:`fastrecur.engine.solve` does) with no grad, on the eager loop with an
observer on the core's runner. The observer is off by default (``inner.observer is None``): the normal path pays
one ``is None`` test per update.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

import torch

from fastrecur.core.schedule import Update


@dataclass
class UpdateRecord:
    """One state update: ``residual[b] = ||z_t - z_{t-1}|| / ||z_{t-1}||`` per sample (fp32, over positions
    x hidden)."""

    index: int
    state: str
    level: str
    residual: torch.Tensor


@dataclass
class ActStepRecord:
    """One ACT step: every update, then the readout and the halting decision."""

    updates: List[UpdateRecord] = field(default_factory=list)
    preds: Optional[torch.Tensor] = None  # [B, seq_len] argmax tokens
    q_halt: Optional[torch.Tensor] = None
    q_continue: Optional[torch.Tensor] = None
    halted: Optional[torch.Tensor] = None
    states: Dict[str, torch.Tensor] = field(default_factory=dict)  # carried states after the step (if kept)


@dataclass
class Trace:
    steps: List[ActStepRecord]

    def residuals(self, state: str) -> torch.Tensor:
        """``[num_updates_of_state, B]``: the residuals of ``state`` over all ACT steps, in order."""
        rows = [u.residual for s in self.steps for u in s.updates if u.state == state]
        if not rows:
            raise ValueError(f"no updates of state {state!r} were traced")
        return torch.stack(rows)


def _relative_change(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    new, old = new.detach().float().flatten(1), old.detach().float().flatten(1)
    return (new - old).norm(dim=1) / old.norm(dim=1).clamp_min(1e-12)


def trace(model, batch: Mapping[str, torch.Tensor], steps: Optional[int] = None, keep_states: bool = False) -> Trace:
    """Run ``steps`` ACT steps (default ``halt_max_steps``) of ``model`` on ``batch`` and record every update.

    The inner model runs with no grad on the eager backend from fresh states, ``steps`` ACT steps of one
    recursion (never reset at ``halt_max_steps``); results equal :func:`fastrecur.engine.solve` with
    ``halting="max_steps"`` (the observer only reads). ``halted`` records where the model's Q head would halt
    (``q_halt > 0``, or ``q_halt > q_continue`` for HRM-style halting). ``keep_states`` keeps each step's
    carried states (for ``participation_ratio``).
    """
    from fastrecur import backend as backend_lib
    from fastrecur.engine import check_model

    check_model(model)
    model.check_batch(batch)
    n = model.config.halt_max_steps if steps is None else steps
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    inner = model.inner
    records: List[ActStepRecord] = []
    prev: Dict[str, torch.Tensor] = {}

    def observe(i, step, states):
        if isinstance(step, Update):
            records[-1].updates.append(
                UpdateRecord(i, step.target, step.level, _relative_change(states[step.target], prev[step.target]))
            )
        prev[step.target] = states[step.target]

    eager = backend_lib.get("eager")
    inner.observer = observe
    try:
        with torch.no_grad():
            carry = inner.reset_carry(
                torch.ones(batch["inputs"].shape[0], dtype=torch.bool, device=batch["inputs"].device),
                inner.empty_carry(batch["inputs"].shape[0], device=batch["inputs"].device),
            )
            for _ in range(n):
                records.append(ActStepRecord())
                prev.clear()
                prev.update(carry.as_dict())  # the states entering this step are the residuals' baseline
                carry, logits, (q_halt, q_continue) = inner(carry, batch, backend=eager)
                rec = records[-1]
                rec.preds = logits.argmax(-1)
                rec.q_halt, rec.q_continue = q_halt, q_continue
                rec.halted = model.q_says_halt(q_halt, q_continue)
                if keep_states:
                    rec.states = {k: v.clone() for k, v in carry.as_dict().items()}
    finally:
        inner.observer = None
    return Trace(records)
