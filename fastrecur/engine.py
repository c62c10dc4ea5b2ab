"""Inference engine: the whole ACT loop of a model with no autograd at all, with early halting and compaction.

:func:`solve` runs every ACT step of a batch through the recursion core on the model's backend (by default the
fastest here, :func:`fastrecur.backend.select`): on the C++ backend one native call
(:func:`~fastrecur.core.cpp_runner.run_steps_cpp`) per ACT step runs *all* the steps of the schedule in place;
on the eager and Triton backends the Python loop over the same steps. It is what ``fastrecur eval``, ``solve``
and ``inspect`` run. It differs from looping ``model(carry, batch)`` in ways that only remove work or widen
what can be asked:

- the input embeddings are computed once per solve, not once per ACT step (the data of a row never changes
  during its solve);
- on the C++ backend the weights are cast to the activation dtype once (cached until a parameter changes),
  not once per level call (the eager stepper casts per call, as the model does);
- with ``halting="q"`` (or ``"q_continue"``), rows that halt are **compacted out**: their outputs are stored
  and the remaining rows of the states and of the embeddings are gathered (``index_select``) into a smaller
  batch, so each ACT step costs what the rows still running cost;
- ``max_steps`` may exceed the model's ``halt_max_steps``: the recursion simply continues (the ACT wrapper
  would reset a row's state after ``halt_max_steps``; here N steps always means N steps of one recursion).

Rows never interact in these models (attention and token mixing act within a row; norms are per row), so a
row's outputs are those of solving it alone, up to the rounding of GEMMs whose blocking depends on the
batch size (fp32: ~1e-6 of scale).

Halting modes (a row halts after the ACT step at which its condition holds, and always at ``max_steps``):

- ``"max_steps"``: never early -- the reference evaluation, every row runs ``halt_max_steps`` steps; no
  compaction and no host synchronisation until the end;
- ``"q"``: ``q_halt > 0`` (TRM's rule; at least one step is always taken);
- ``"q_continue"``: ``q_halt > q_continue`` (HRM's training rule, for models trained with Q-continue).

Early halting needs one host synchronisation per ACT step (the number of rows left decides the next
step's shape).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional

import torch

from fastrecur import backend as backend_lib

HALTING = ("max_steps", "q", "q_continue")

# A stepper runs the whole schedule of one ACT step on (states, x): states is updated (rebound or in place).
Stepper = Callable[[Dict[str, torch.Tensor], torch.Tensor], None]


@dataclass
class SolveResult:
    """Per-row results of :func:`solve` (rows in the order of the batch).

    Attributes:
        logits: [B, seq_len, vocab] logits of each row's final ACT step, in the model's activation dtype.
        predictions: [B, seq_len] int64, ``logits.argmax(-1)``.
        steps: [B] int32, ACT steps each row took (1 .. max_steps).
        q_halt_logits, q_continue_logits: [B] fp32, the Q logits of each row's final step.
        step_predictions: [max_steps, B, seq_len] int64 predictions after every ACT step, -1 once the row has
            halted; None unless ``return_step_predictions=True``.
        step_q_halt_logits, step_q_continue_logits: [max_steps, B] fp32 Q logits after every ACT step, NaN once
            the row has halted; None unless ``return_step_predictions=True``.
        max_steps: the step limit the solve ran under.
        backend: the name of the backend that ran it.
    """

    logits: torch.Tensor
    predictions: torch.Tensor
    steps: torch.Tensor
    q_halt_logits: torch.Tensor
    q_continue_logits: torch.Tensor
    step_predictions: Optional[torch.Tensor]
    max_steps: int
    step_q_halt_logits: Optional[torch.Tensor] = None
    step_q_continue_logits: Optional[torch.Tensor] = None
    backend: str = ""

    @property
    def mean_steps(self) -> float:
        return float(self.steps.float().mean()) if self.steps.numel() else 0.0

    @property
    def work_fraction(self) -> float:
        """Row-steps computed / row-steps of a ``max_steps`` solve (1.0 = no saving)."""
        n = self.steps.numel() * self.max_steps
        return float(self.steps.sum()) / n if n else 1.0


def check_model(model):
    """TypeError unless ``model`` is an ACT model on the recursion core (duck-typed)."""
    inner = getattr(model, "inner", None)
    if not (isinstance(model, torch.nn.Module) and hasattr(model, "check_batch") and hasattr(inner, "schedule")):
        raise TypeError(
            f"model must be a fastrecur ACT model (HRM, TRM, SRM, FlatRecurrence), got {type(model).__name__}"
        )


def make_stepper(inner, backend, cuda_graphs: bool = False) -> Stepper:
    """A function running the *whole* schedule of one ACT step (no autograd) for ``inner`` on ``backend`` (a
    :class:`~fastrecur.backend.Backend` or a concrete backend's name).

    Weights are read at every step (the C++ backend's cached casts follow in-place updates and replaced
    parameters). ``cuda_graphs=True`` replays a CUDA graph per shape (see :mod:`fastrecur.backend.graphs`)."""
    backend = backend_lib.get(backend)
    steps = tuple(inner.schedule.steps)
    if cuda_graphs:
        from fastrecur.backend.graphs import graphs_for

        return lambda states, x: graphs_for(inner).run(steps, states, x, backend)
    return backend.run_fn(inner, steps)


def initial_states(inner, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Fresh carried states for every row of ``x``: the init buffers broadcast to [B, S, D], contiguous."""
    return {s: getattr(inner, buf).to(x.dtype).expand(x.shape).contiguous() for s, buf in inner.state_inits.items()}


def solve(
    model,
    batch: Mapping[str, torch.Tensor],
    halting: str = "max_steps",
    max_steps: Optional[int] = None,
    backend: Optional[str] = None,
    return_step_predictions: bool = False,
    cuda_graphs: bool = False,
) -> SolveResult:
    """Solve ``batch`` with ``model``'s full ACT loop and no autograd.

    Args:
        model: an ACT model (HRM, TRM, SRM, FlatRecurrence); its training flag is ignored (no exploration).
        batch: ``{"inputs": [B, seq_len], "puzzle_identifiers": [B], ...}`` integer tensors on the model's
            device (other keys are ignored).
        halting: "max_steps", "q" or "q_continue" (see the module docstring).
        max_steps: step limit; default ``model.config.halt_max_steps``; larger values continue the recursion.
        backend: "auto", "eager", "triton" or "cpp"; default: the model's own ``backend`` setting.
        return_step_predictions: also return the predictions and Q logits after every ACT step.
        cuda_graphs: replay the recursion of each ACT step as a CUDA graph (CUDA only; see
            :mod:`fastrecur.backend.graphs`).

    Returns:
        :class:`SolveResult`.

    Raises:
        TypeError / ValueError: invalid model, batch (an empty one included: ``batch['inputs']`` with 0 rows) or
        options, or a backend that cannot run on the batch's device here (:func:`fastrecur.backend.check_available`
        says why).
    """
    check_model(model)
    if halting not in HALTING:
        raise ValueError(f"halting must be one of {list(HALTING)}, got {halting!r}")
    backend_lib.validate_name(model.backend if backend is None else backend)
    if max_steps is None:
        max_steps = model.config.halt_max_steps
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    if not isinstance(return_step_predictions, bool) or not isinstance(cuda_graphs, bool):
        raise TypeError("return_step_predictions and cuda_graphs must be bools")
    model.check_batch(batch)
    if batch["inputs"].shape[0] == 0:  # checked here: the kernels would name their internal tensors
        raise ValueError("batch['inputs'] has 0 rows: give at least one puzzle")
    inner = model.inner
    device = batch["inputs"].device
    if cuda_graphs and device.type != "cuda":
        raise ValueError(f"cuda_graphs=True needs the batch on a CUDA device, got {device}")
    runner = backend_lib.check_available(model.backend if backend is None else backend, device, model.config)

    with torch.no_grad():
        x = inner.input_embeddings(batch["inputs"], batch["puzzle_identifiers"]).contiguous()
        B = x.shape[0]
        states = initial_states(inner, x)
        step = make_stepper(inner, runner, cuda_graphs)
        readout = inner.schedule.readout

        steps_taken = torch.full((B,), max_steps, dtype=torch.int32, device=device)
        final_logits = final_qh = final_qc = None
        step_preds = step_qh = step_qc = None
        if return_step_predictions:
            step_preds = torch.full((max_steps, B, model.config.seq_len), -1, dtype=torch.int64, device=device)
            step_qh = torch.full((max_steps, B), float("nan"), dtype=torch.float32, device=device)
            step_qc = torch.full((max_steps, B), float("nan"), dtype=torch.float32, device=device)
        rows = torch.arange(B, device=device)  # original index of each row still running

        for t in range(1, max_steps + 1):
            step(states, x)
            logits, (q_halt, q_cont) = inner.readout(states[readout])
            if final_logits is None:
                final_logits = torch.empty((B,) + logits.shape[1:], dtype=logits.dtype, device=device)
                final_qh = torch.empty(B, dtype=q_halt.dtype, device=device)
                final_qc = torch.empty(B, dtype=q_cont.dtype, device=device)
            if step_preds is not None:
                step_preds[t - 1].index_copy_(0, rows, logits.argmax(-1))
                step_qh[t - 1].index_copy_(0, rows, q_halt.float())
                step_qc[t - 1].index_copy_(0, rows, q_cont.float())
            if t == max_steps:
                final_logits.index_copy_(0, rows, logits)
                final_qh.index_copy_(0, rows, q_halt)
                final_qc.index_copy_(0, rows, q_cont)
                break
            if halting == "max_steps":
                continue
            halt = q_halt > 0 if halting == "q" else q_halt > q_cont
            done = halt.nonzero().squeeze(1)
            if done.numel() == 0:  # the host sync of early halting
                continue
            out_rows = rows.index_select(0, done)
            final_logits.index_copy_(0, out_rows, logits.index_select(0, done))
            final_qh.index_copy_(0, out_rows, q_halt.index_select(0, done))
            final_qc.index_copy_(0, out_rows, q_cont.index_select(0, done))
            steps_taken.index_fill_(0, out_rows, t)
            if done.numel() == rows.numel():
                break
            # Compaction: the rows still running become a smaller, contiguous batch.
            keep = (~halt).nonzero().squeeze(1)
            rows = rows.index_select(0, keep)
            x = x.index_select(0, keep)
            states = {k: v.index_select(0, keep) for k, v in states.items() if k in inner.state_inits}

    return SolveResult(
        final_logits,
        final_logits.argmax(-1),
        steps_taken,
        final_qh,
        final_qc,
        step_preds,
        max_steps,
        step_qh,
        step_qc,
        runner.name,
    )


__all__ = ["HALTING", "SolveResult", "initial_states", "make_stepper", "solve"]
