"""HRM ACT v1 (sapientinc/HRM), drop-in: same config dict, state-dict keys and ``forward`` contract."""

from __future__ import annotations

from typing import Any, Mapping

from .act import ACTModel
from .config import BASE_KEYS, Key, puzzle_emb_len, validate_config
from .inner import RecursiveInner
from .schedules import hrm_schedule

# ``mlp_t``: the TinyRecursiveModels copy of HRM (``recursive_reasoning.hrm``) has it.
HRM_KEYS = {**BASE_KEYS, "shared_layers": Key(bool, False), "mlp_t": Key(bool, False)}


class HRM(ACTModel):
    """Hierarchical Reasoning Model with ACT (the reference ``HierarchicalReasoningModel_ACTV1``).

    Two states: ``z_L`` is updated ``L_cycles`` times by ``L_level(z_L, z_H + x)``, then ``z_H`` once by
    ``H_level(z_H, z_L)``; ``H_cycles`` such rounds per ACT step. Only the final ``L`` and ``H`` updates carry
    gradient (the 1-step approximation). Halting: ``q_halt > q_continue`` in training, with a bootstrapped
    Q-continue target from a second no-grad inner step; evaluation always runs ``halt_max_steps``.

    ``mlp_t=True`` swaps attention for token mixing in both levels, as the TinyRecursiveModels copy of HRM does.
    ``shared_layers=True`` gives the layer-shared HRM (Ge 2025): each level holds ONE block applied
    ``H_layers`` (``L_layers``) times per call; the state dict then has only ``layers.0`` per level.

    Args:
        config: the reference's config dict (see ``HRM_KEYS``); unknown keys are an error.
        backend: "auto", "eager", "triton" or "cpp" (see ``fastrecur.backends()``).
    """

    config_keys = HRM_KEYS  # the config schema the constructor validates (and train.config checks early)

    def __init__(self, config: Mapping[str, Any], backend: str = "auto"):
        super().__init__(backend)
        self.config = validate_config(config, self.config_keys, "HRM")
        c = self.config
        shared = c.shared_layers
        levels = {
            "H_level": (1, c.H_layers) if shared else (c.H_layers, 1),
            "L_level": (1, c.L_layers) if shared else (c.L_layers, 1),
        }
        self.inner = RecursiveInner(
            c,
            hrm_schedule(c.H_cycles, c.L_cycles),
            levels,
            {"z_H": "H_init", "z_L": "L_init"},
            puzzle_emb_len(c.puzzle_emb_ndim, c.hidden_size),
            mlp_t=c.mlp_t,
        )
        self._check_backend_fits()
