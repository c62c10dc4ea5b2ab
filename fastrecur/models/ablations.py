"""The TRM paper's comparison architectures (SamsungSAILMontreal/TinyRecursiveModels, ``models/recursive_reasoning``),
drop-in: same config dict, state-dict keys and ``forward(carry, batch)`` contract, as schedules of the recursion core.

- :class:`TRMSingleZ` (``trm_singlez``): TRM with one state.
- :class:`TRMHier6` (``trm_hier6``): TRM with six low-level states.
- :class:`TransformerBaseline` (``transformers_baseline``, ``Model_ACTV2``): no recursion inside an ACT step.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import torch

from fastrecur.core.schedule import Schedule

from .act import ACTCarry, ACTModel
from .config import BASE_KEYS, Key, ModelConfig, puzzle_emb_len, validate_config
from .inner import RecursiveInner
from .schedules import HIER6_STATES, SUM_LEVEL, single_pass_schedule, trm_hier6_schedule, trm_singlez_schedule
from .trm import TRM_KEYS, check_trm_like


class _TRMVariant(ACTModel):
    """TRM's config keys, embeddings, ``L_level`` (``L_layers`` blocks, ``mlp_t`` as TRM) and halting, with
    another schedule. Subclasses set ``model_name``, ``state_inits`` and :meth:`make_schedule`.

    Args:
        config: the reference's config dict (TRM's keys, ``fastrecur.models.trm.TRM_KEYS``); unknown keys,
            wrong types and out-of-range values raise ``ValueError``/``TypeError`` naming the key.
        backend: "auto", "eager", "triton" or "cpp" (see ``fastrecur.backends()``).
    """

    config_keys = TRM_KEYS  # the config schema the constructor validates (and train.config checks early)

    model_name = ""
    state_inits: Dict[str, str] = {}
    extra_levels: Dict[str, Tuple[int, int]] = {}  # levels besides L_level, e.g. a block-less sum level

    def make_schedule(self, c: ModelConfig) -> Schedule:
        raise NotImplementedError

    def __init__(self, config: Mapping[str, Any], backend: str = "auto"):
        super().__init__(backend)
        self.config = validate_config(config, self.config_keys, self.model_name)
        c = self.config
        n = check_trm_like(c, self.model_name)
        self.halt_on_q_continue = not c.no_ACT_continue
        levels = {"L_level": (c.L_layers, 1), **self.extra_levels}
        self.inner = RecursiveInner(c, self.make_schedule(c), levels, self.state_inits, n, mlp_t=c.mlp_t)
        self._check_backend_fits()


class TRMSingleZ(_TRMVariant):
    """TRM with a single state ``z_L`` (the reference ``recursive_reasoning.trm_singlez``).

    Per H cycle: ``L_cycles x [z_L = L_level(z_L + x)]`` then ``z_L = L_level(z_L)`` (nothing injected);
    ``H_cycles`` cycles per ACT step, the last ``grad_cycles`` (reference: 1) with gradient. Outputs
    ``lm_head(z_L)`` and ``q_head(z_L[:, 0])``. Config keys, embeddings, ``mlp_t`` and halting: TRM's. State
    dict: TRM's without ``inner.H_init``. Carry: ``z_L``.
    """

    model_name = "TRMSingleZ"
    state_inits = {"z_L": "L_init"}

    def make_schedule(self, c):
        return trm_singlez_schedule(c.H_cycles, c.L_cycles, c.grad_cycles)


class TRMHier6(_TRMVariant):
    """TRM with six low-level states ``z_L1 .. z_L6`` (the reference ``recursive_reasoning.trm_hier6``).

    Per H cycle: L step ``k`` (``k = 1 .. L_cycles``, at most 6) sets ``z_Lk = L_level(z_L1 + ... + z_L6 +
    z_H + x)``; then ``z_H = L_level(z_H + z_L1 + ... + z_L6)``. States past ``L_cycles`` keep their initial
    value and still enter the sums. The rest as TRM. State dict: TRM's with ``inner.L1_init .. inner.L6_init``
    instead of ``inner.L_init``. Carry: ``z_H, z_L1 .. z_L6``.

    Errors: ``ValueError`` for ``L_cycles > 6`` (the reference fails there with an ``IndexError``).
    """

    model_name = "TRMHier6"
    state_inits = {"z_H": "H_init", **{z: f"L{z[3:]}_init" for z in HIER6_STATES}}
    extra_levels = {SUM_LEVEL: (0, 1)}  # no blocks, no parameters: the state dict stays the reference's

    def make_schedule(self, c):
        try:
            return trm_hier6_schedule(c.H_cycles, c.L_cycles, c.grad_cycles)
        except ValueError as e:
            raise ValueError(f"{self.model_name} config: {e}") from None


BASELINE_KEYS = {
    **{k: v for k, v in BASE_KEYS.items() if k not in ("L_cycles", "L_layers")},
    "H_cycles": Key(int, 1),  # ignored, as in the reference ("kept for compatibility")
    "pos_encodings": Key(str, choices=("rope", "learned")),
    "act_enabled": Key(bool, True),
    "act_inference": Key(bool, False),
}


class TransformerBaseline(ACTModel):
    """The transformer baseline (the reference ``recursive_reasoning.transformers_baseline.Model_ACTV2``).

    One state ``z_H`` and one ``H_level`` of ``H_layers`` attention blocks; each ACT step is one pass
    ``z_H = H_level(z_H + x)`` with gradient (no inner cycles; ``H_cycles`` is accepted and ignored). Outputs
    ``lm_head(z_H)``, ``q_head(z_H[:, 0])``. State dict: ``inner.H_init``, the I/O weights, ``inner.H_level.*``.
    Positions: rope or learned. ``num_heads`` need not divide ``hidden_size`` (heads of ``hidden_size // num_heads``
    channels, as the reference's ``config/arch/transformers_baseline.yaml``: 12 heads of 42 on 512).

    Halting as the reference: adaptive (``q_halt > q_continue``, never past ``halt_max_steps``) in training
    when ``act_enabled`` (default) and in evaluation when ``act_inference`` (then ``outputs["actual_steps"]``
    holds the steps taken so far); exploration in training only; the bootstrapped ``target_q_continue`` only
    when ``forward(..., compute_target_q=True)``, which the reference's loss head never passes.

    Args:
        config: the reference's config dict (``BASELINE_KEYS``: HRM's keys without ``L_cycles``/``L_layers``,
            plus ``act_enabled``, ``act_inference``); unknown keys are an error naming them.
        backend: "auto", "eager", "triton" or "cpp" ("triton" needs a head_dim its attention kernel takes).
    """

    config_keys = BASELINE_KEYS  # the config schema the constructor validates (and train.config checks early)

    halt_on_q_continue = True

    def __init__(self, config: Mapping[str, Any], backend: str = "auto"):
        super().__init__(backend)
        self.config = validate_config(config, self.config_keys, "TransformerBaseline", head_remainder=True)
        c = self.config
        self.inner = RecursiveInner(
            c,
            single_pass_schedule("H_level"),
            {"H_level": (c.H_layers, 1)},
            {"z_H": "H_init"},
            puzzle_emb_len(c.puzzle_emb_ndim, c.hidden_size),
        )
        self._check_backend_fits()

    def uses_adaptive_halting(self) -> bool:
        """The reference's rule: ``halt_max_steps > 1`` and ``act_enabled`` in training, ``act_inference`` in
        evaluation (the :meth:`ACTModel.uses_adaptive_halting` hook; reads ``self.training``, never sets it)."""
        c = self.config
        return c.halt_max_steps > 1 and (c.act_enabled if self.training else c.act_inference)

    def forward(self, carry: ACTCarry, batch: Mapping[str, torch.Tensor], compute_target_q: bool = False):
        """One ACT step: ``(carry, outputs)`` as :meth:`ACTModel.forward`, halting as the class docstring says.

        Args:
            compute_target_q: also return ``target_q_continue`` (training with adaptive halting only), from a
                second no-grad step on the new carry.

        Errors: ``TypeError`` for a ``compute_target_q`` that is not a bool; the batch and carry checks of
        :meth:`ACTModel.forward`.
        """
        if not isinstance(compute_target_q, bool):
            raise TypeError(f"compute_target_q must be a bool, got {type(compute_target_q).__name__}")
        return self._act_step(carry, batch, compute_target_q=compute_target_q)


__all__ = ["TRMHier6", "TRMSingleZ", "TransformerBaseline"]
