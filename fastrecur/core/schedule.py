"""The recursion core's data: one ACT step of every model as a flat list of state updates.

A :class:`Schedule` says which block (a "level" module of the inner model) updates which state with
which injection, in which order, and from which step on autograd records. Every backend (the eager loop,
the Triton loop, the C++ in-place loop) runs the same schedule, so a new recursion is a new schedule.

Semantics of one step:
- ``Update(target, level, inject)``: ``state[target] = level(state[target] + sum(state[s] for s in inject))``
  where the name ``"x"`` in ``inject`` stands for the input embeddings; an empty ``inject`` adds nothing.
- ``Copy(target, source)``: ``state[target] = state[source]`` (a snapshot, e.g. SRM's segment start).
Steps ``[0, grad_start)`` run under ``torch.no_grad()``; steps ``[grad_start, len(steps))`` with autograd.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple, Union

INPUT = "x"


@dataclass(frozen=True)
class Update:
    """``state[target] = level(state[target] + sum(inject))``."""

    target: str
    level: str
    inject: Tuple[str, ...]


@dataclass(frozen=True)
class Copy:
    """``state[target] = state[source]`` (no compute; a named snapshot)."""

    target: str
    source: str


Step = Union[Update, Copy]


@dataclass(frozen=True)
class Schedule:
    """One ACT step of a recursive model.

    Attributes:
        states: carried states, in carry order (e.g. ``("z_H", "z_L")``); each has an init buffer.
        scratch: states that live only within one ACT step (e.g. SRM's segment snapshot ``"a"``).
        steps: the updates, in order.
        grad_start: index of the first step that runs with autograd (``len(steps)`` = none does).
        readout: the state read by ``lm_head`` and ``q_head``.
    """

    states: Tuple[str, ...]
    scratch: Tuple[str, ...]
    steps: Tuple[Step, ...]
    grad_start: int
    readout: str

    def __post_init__(self):
        names = set(self.states) | set(self.scratch)
        if len(names) != len(self.states) + len(self.scratch) or INPUT in names:
            raise ValueError(f"state names must be unique and not {INPUT!r}: {self.states + self.scratch}")
        if self.readout not in self.states:
            raise ValueError(f"readout {self.readout!r} is not a carried state of {self.states}")
        if not 0 <= self.grad_start <= len(self.steps):
            raise ValueError(f"grad_start {self.grad_start} outside [0, {len(self.steps)}]")
        defined = set(self.states)
        for i, step in enumerate(self.steps):
            sources = step.inject if isinstance(step, Update) else (step.source,)
            for s in sources:
                if s != INPUT and s not in defined:
                    raise ValueError(f"step {i} reads {s!r} before it is defined")
            if isinstance(step, Update) and step.target not in defined:
                raise ValueError(f"step {i} updates {step.target!r} before it is defined")
            defined.add(step.target)

    @property
    def no_grad_steps(self) -> Tuple[Step, ...]:
        return self.steps[: self.grad_start]

    @property
    def grad_steps(self) -> Tuple[Step, ...]:
        return self.steps[self.grad_start :]

    @property
    def levels(self) -> Tuple[str, ...]:
        """Names of the level modules the schedule uses, in first-use order."""
        seen = []
        for s in self.steps:
            if isinstance(s, Update) and s.level not in seen:
                seen.append(s.level)
        return tuple(seen)
