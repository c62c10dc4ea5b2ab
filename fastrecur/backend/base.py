"""The interface every execution backend implements, and the eager backend (the reference semantics).

A backend decides *how* a model's :class:`~fastrecur.core.schedule.Schedule` runs: which op implementations
compute a block (``ops``), how the no-grad prefix of an ACT step runs (a Python loop, or the C++ in-place loop),
how weights are packed for it, whether it is replayed from a CUDA graph, and which per-token loss the loss head
uses. Models hold modules and a schedule and hand a :class:`Backend` to ``RecursiveInner.forward``; they never
look at backend names.

Path of one ACT step: ``ACTModel.forward`` -> ``Backend.run_step`` (schedule) -> level function
(``ReasoningModule``) -> op (``ops.add_rms_norm`` ...) -> kernel (Triton, C++/CUDA or PyTorch).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from fastrecur.core import eager
from fastrecur.core.eager import Observer
from fastrecur.core.schedule import Step
from fastrecur.ops import reference

# Runs a sequence of schedule steps on (states, x) with no autograd; ``states`` is updated (rebound or in place).
RunFn = Callable[[Dict[str, torch.Tensor], torch.Tensor], None]


class Backend:
    """One way of running the recursion core.

    Attributes:
        name: "eager", "triton" or "cpp".
        ops: the namespace the blocks compute with (same functions and signatures as
            :mod:`fastrecur.ops.reference`).
    """

    name = "eager"
    ops = reference

    # ----- what this machine and this model allow -----
    def status(self) -> Tuple[bool, str]:
        """``(available, reason)`` on this machine."""
        return True, "always (PyTorch ops)"

    def supports(self, config) -> Tuple[bool, str]:
        """``(supported, reason)``: whether this backend covers a model of ``config``'s shapes."""
        return True, "every model"

    # ----- one ACT step, with autograd where the schedule asks for it -----
    def level_fns(self, inner) -> Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
        """``{level name: f(h, injection)}`` for ``inner``'s levels, computing with ``self.ops``."""
        cs = inner.cos_sin()
        return {
            name: (lambda h, inj, _m=getattr(inner, name): _m(h, inj, cs, self.ops)) for name in inner.schedule.levels
        }

    def run_step(self, inner, states: Dict[str, torch.Tensor], x: torch.Tensor, observer: Observer = None) -> None:
        """One ACT step of ``inner.schedule`` on ``states`` (rebound in place): the no-grad prefix under
        ``torch.no_grad()``, the grad tail with autograd when it is enabled. ``observer`` sees every update."""
        eager.run_schedule(inner.schedule, states, x, self.level_fns(inner), observer)

    # ----- no autograd at all (evaluation, the engine, CUDA graphs) -----
    def run_fn(self, inner, steps: Sequence[Step], for_capture: bool = False) -> RunFn:
        """A function running ``steps`` on (states, x) with no autograd. ``for_capture``: the function will be
        captured into a CUDA graph, so it must redo any weight casts at every call (replays then see in-place
        weight updates)."""
        steps = tuple(steps)

        def run(states, x):
            eager.run_steps(steps, states, x, self.level_fns(inner))

        return run

    def workspace_state(self) -> Optional[Tuple[int, int]]:
        """A value that changes whenever memory a captured graph points into may have moved (None: no such
        memory)."""
        return None

    # ----- loss -----
    def per_token_loss(self, loss_type: str, device: torch.device) -> Callable:
        """``f(logits, labels, ignore_index) -> [B, L]``: the per-token loss ``loss_type`` for tensors on ``device``."""
        return getattr(reference, loss_type)

    def __repr__(self) -> str:
        return f"<fastrecur backend {self.name!r}>"


class EagerBackend(Backend):
    """PyTorch ops (scaled-dot-product attention), the Python loop over the schedule: the reference semantics
    and the oracle the other backends are tested against."""


__all__ = ["Backend", "EagerBackend", "RunFn"]
