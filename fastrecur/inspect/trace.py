"""Record what happens inside the recursion, update by update, for every model on the recursion core.

``trace(model, batch)`` runs the model's ACT loop (no grad, eval semantics: ``halt_max_steps`` steps unless
``steps`` says otherwise) on the eager path with an observer on the core's runner. The observer is off by
default (``inner.observer is None``): the normal path pays one ``is None`` test per update.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

import torch

from fastrecur.core.schedule import Update


@dataclass
class UpdateRecord:
    """One state update: ``residual[b] = ||z_t - z_{t-1}|| / ||z_{t-1}||`` per sample (fp32, over positions x hidden)."""

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

    The model runs in eval mode on the eager backend (restored afterwards); results equal the untraced
    model's (the observer only reads). ``keep_states`` keeps each step's carried states (for
    ``participation_ratio``).
    """
    from fastrecur.core.engine import check_model

    check_model(model)
    n = model.config.halt_max_steps if steps is None else steps
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    inner = model.inner
    records: List[ActStepRecord] = []
    prev: Dict[str, torch.Tensor] = {}

    def observe(i, step, states):
        if isinstance(step, Update):
            records[-1].updates.append(UpdateRecord(i, step.target, step.level, _relative_change(states[step.target], prev[step.target])))
        prev[step.target] = states[step.target]

    was_training, backend = model.training, model.backend
    model.eval()
    model.backend = "eager"
    inner.observer = observe
    try:
        with torch.no_grad():
            carry = model.initial_carry(batch)
            for _ in range(n):
                records.append(ActStepRecord())
                # The states entering this step (after any reset of halted rows) are the residuals' baseline.
                start = inner.reset_carry(carry.halted, carry.inner_carry)
                prev.clear()
                prev.update(start.as_dict())
                carry, out = model(carry=carry, batch=batch)
                rec = records[-1]
                rec.preds = out["logits"].argmax(-1)
                rec.q_halt, rec.q_continue, rec.halted = out["q_halt_logits"], out["q_continue_logits"], carry.halted.clone()
                if keep_states:
                    rec.states = {k: v.clone() for k, v in carry.inner_carry.as_dict().items()}
    finally:
        inner.observer = None
        model.backend = backend
        model.train(was_training)
    return Trace(records)
