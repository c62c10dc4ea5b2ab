"""The ACT wrapper shared by every model: carry handling, halting, exploration and the Q target.

Same contract as the reference ``*_ACTV1`` classes: ``initial_carry(batch)`` and
``forward(carry=..., batch=...) -> (carry, outputs)``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Dict, Mapping

import torch
from torch import nn

from fastrecur import backend as backend_lib

from .config import ModelConfig
from .inner import InnerCarry, RecursiveInner


@dataclass
class ACTCarry:
    """Carry across ACT steps: recurrent states, steps taken, halted flags and the rows being worked on."""

    inner_carry: InnerCarry
    steps: torch.Tensor
    halted: torch.Tensor
    current_data: Dict[str, torch.Tensor]


class ACTModel(nn.Module):
    """Base class: subclasses set ``self.config`` and ``self.inner`` and say how halting works.

    Halting hooks (read at every step; none of them changes module state):
        :meth:`uses_adaptive_halting`: whether the step may halt rows before ``halt_max_steps``.
        :meth:`q_says_halt`: where the Q head says halt.

    Attributes:
        halt_on_q_continue: halt when ``q_halt > q_continue`` and train Q-continue on a bootstrapped target
            (HRM); otherwise halt when ``q_halt > 0`` and produce no target (TRM's ``no_ACT_continue``).
        check_inputs: validate the batch on every call (one host sync per call on GPU; turn off in hot loops
            once inputs are known good).
    """

    inner: RecursiveInner
    config: ModelConfig
    halt_on_q_continue: bool = True

    def __init__(self, backend: str = "auto"):
        super().__init__()
        self.backend = backend_lib.validate_name(backend)
        self.check_inputs = True
        self._last_checked = None  # (weakref, version) of the inputs and ids whose values were last checked

    def _check_backend_fits(self) -> None:
        """Called by subclasses once ``config`` exists: an explicitly chosen backend must cover the model."""
        backend_lib.check_fits(self.backend, self.config)

    def execution_backend(self, device) -> backend_lib.Backend:
        """The :class:`~fastrecur.backend.Backend` this model runs on for tensors on ``device`` ("auto" resolved
        by :func:`fastrecur.backend.select`)."""
        return backend_lib.select(self.backend, torch.device(device), self.config)

    def q_says_halt(self, q_halt: torch.Tensor, q_continue: torch.Tensor) -> torch.Tensor:
        """Where this model's Q head says halt (bool, shape of ``q_halt``): ``q_halt > q_continue`` with
        ``halt_on_q_continue`` (HRM), else ``q_halt > 0`` (TRM's ``no_ACT_continue``)."""
        return q_halt > q_continue if self.halt_on_q_continue else q_halt > 0

    def uses_adaptive_halting(self) -> bool:
        """Whether this ACT step halts rows where :meth:`q_says_halt` (never past ``halt_max_steps``), with
        exploration in training; otherwise every row halts at ``halt_max_steps`` exactly.

        Default (HRM, TRM, as the reference ``*_ACTV1``): in training with ``halt_max_steps > 1``; evaluation
        runs ``halt_max_steps`` steps, so a batch halts together. Subclasses whose reference halts otherwise
        override this hook (:class:`~fastrecur.models.TransformerBaseline`) instead of ``forward``.
        """
        return self.training and self.config.halt_max_steps > 1

    @property
    def puzzle_emb(self):
        return self.inner.puzzle_emb

    # ----- validation -----
    def check_batch(self, batch: Mapping[str, torch.Tensor], name: str = "batch") -> None:
        if not isinstance(batch, Mapping):
            raise TypeError(f"{name} must be a dict of tensors, got {type(batch).__name__}")
        for key in ("inputs", "puzzle_identifiers"):
            if key not in batch:
                raise ValueError(f"{name} is missing {key!r} (has {sorted(batch)})")
        inputs, pids = batch["inputs"], batch["puzzle_identifiers"]
        for key, t in batch.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}[{key!r}] must be a tensor, got {type(t).__name__}")
            if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
                raise TypeError(f"{name}[{key!r}] must be an integer tensor, got {t.dtype}")
        cfg = self.config
        if inputs.dim() != 2 or inputs.shape[1] != cfg.seq_len:
            raise ValueError(
                f"{name}['inputs'] must have shape [batch, seq_len={cfg.seq_len}], got {tuple(inputs.shape)}"
            )
        if pids.shape != (inputs.shape[0],):
            raise ValueError(
                f"{name}['puzzle_identifiers'] must have shape [{inputs.shape[0]}], got {tuple(pids.shape)}"
            )
        if "labels" in batch and batch["labels"].shape != inputs.shape:
            raise ValueError(
                f"{name}['labels'] must have the shape of inputs {tuple(inputs.shape)}, got "
                f"{tuple(batch['labels'].shape)}"
            )
        if not self.check_inputs or inputs.numel() == 0:
            return
        # The value checks sync with the device: skip them when this very batch was checked last (the ACT
        # loop passes the same batch at every step).
        seen = (inputs, inputs._version, pids, pids._version)
        last = self._last_checked
        if last is not None and last[0]() is inputs and last[2]() is pids and last[1] == seen[1] and last[3] == seen[3]:
            return
        lo, hi = int(inputs.min()), int(inputs.max())
        if lo < 0 or hi >= cfg.vocab_size:
            raise ValueError(
                f"{name}['inputs'] has token ids in [{lo}, {hi}], outside the vocabulary [0, {cfg.vocab_size})"
            )
        if cfg.puzzle_emb_ndim > 0:
            lo, hi = int(pids.min()), int(pids.max())
            if lo < 0 or hi >= cfg.num_puzzle_identifiers:
                raise ValueError(
                    f"{name}['puzzle_identifiers'] has ids in [{lo}, {hi}], outside [0, {cfg.num_puzzle_identifiers})"
                )
        self._last_checked = (weakref.ref(inputs), inputs._version, weakref.ref(pids), pids._version)

    # ----- the reference contract -----
    def initial_carry(self, batch: Mapping[str, torch.Tensor]) -> ACTCarry:
        """A carry with every row halted, so the first ``forward`` loads the batch and resets the states."""
        self.check_batch(batch)
        b = batch["inputs"].shape[0]
        device = batch["inputs"].device
        return ACTCarry(
            inner_carry=self.inner.empty_carry(b, device=device),
            steps=torch.zeros((b,), dtype=torch.int32, device=device),
            halted=torch.ones((b,), dtype=torch.bool, device=device),
            current_data={k: torch.empty_like(v) for k, v in batch.items()},
        )

    def forward(self, carry: ACTCarry, batch: Mapping[str, torch.Tensor]):
        """One ACT step: ``(carry, outputs)`` with ``outputs`` ``logits`` [batch, seq_len, vocab_size],
        ``q_halt_logits`` and ``q_continue_logits`` [batch] fp32, and ``target_q_continue`` [batch] in training
        with adaptive halting and ``halt_on_q_continue``. Errors: ``TypeError``/``ValueError`` for a batch or
        carry that does not fit (see :meth:`check_batch`)."""
        return self._act_step(carry, batch, compute_target_q=self.halt_on_q_continue)

    def _act_step(self, carry: ACTCarry, batch: Mapping[str, torch.Tensor], compute_target_q: bool):
        """:meth:`forward`, with the bootstrapped ``target_q_continue`` when ``compute_target_q`` (training with
        adaptive halting only); in evaluation with adaptive halting, ``outputs["actual_steps"]`` (fp32 [batch])
        holds the steps taken so far."""
        self.check_batch(batch)
        if not isinstance(carry, ACTCarry):
            raise TypeError(f"carry must come from initial_carry() or forward(), got {type(carry).__name__}")
        b = batch["inputs"].shape[0]
        if carry.halted.shape != (b,):
            raise ValueError(
                f"carry is for a batch of {carry.halted.shape[0]} rows but batch has {b}; call initial_carry(batch)"
            )
        if set(carry.current_data) != set(batch):
            raise ValueError(f"carry holds keys {sorted(carry.current_data)} but batch has {sorted(batch)}")
        backend = self.execution_backend(batch["inputs"].device)

        # Rows that halted last time start over: fresh states, new data.
        new_inner = self.inner.reset_carry(carry.halted, carry.inner_carry)
        new_steps = torch.where(carry.halted, 0, carry.steps)
        new_data = {
            k: torch.where(carry.halted.view((-1,) + (1,) * (batch[k].ndim - 1)), batch[k], v)
            for k, v in carry.current_data.items()
        }

        new_inner, logits, (q_halt, q_continue) = self.inner(new_inner, new_data, backend=backend)
        outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue}

        with torch.no_grad():
            new_steps = new_steps + 1
            is_last_step = new_steps >= self.config.halt_max_steps
            halted = is_last_step
            if self.uses_adaptive_halting():
                halted = halted | self.q_says_halt(q_halt, q_continue)
                if not self.training:
                    outputs["actual_steps"] = new_steps.float()
                else:
                    # Exploration: a random minimum number of steps for some rows (the reference's RNG calls).
                    explore = torch.rand_like(q_halt) < self.config.halt_exploration_prob
                    min_halt_steps = explore * torch.randint_like(new_steps, low=2, high=self.config.halt_max_steps + 1)
                    halted = halted & (new_steps >= min_halt_steps)
                    if compute_target_q:
                        # Bootstrapped Q target from a second inner step on the new carry (no replay buffer).
                        _, _, (next_q_halt, next_q_continue) = self.inner(new_inner, new_data, backend=backend)
                        outputs["target_q_continue"] = torch.sigmoid(
                            torch.where(is_last_step, next_q_halt, torch.maximum(next_q_halt, next_q_continue))
                        )
        return ACTCarry(new_inner, new_steps, halted, new_data), outputs

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"


__all__ = ["ACTCarry", "ACTModel", "InnerCarry"]
