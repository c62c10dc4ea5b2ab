"""SRM and FlatRecurrence: single-state recursions from the seed papers, on the same core."""

from __future__ import annotations

from typing import Any, Mapping

from .act import ACTModel
from .config import BASE_KEYS, Key, puzzle_emb_len, validate_config
from .inner import RecursiveInner
from .schedules import flat_schedule, srm_schedule
from .trm import TRM_KEYS, check_trm_like

SRM_KEYS = {**TRM_KEYS, "skip": Key(str, "segment", choices=("segment", "none"))}
FLAT_KEYS = {k: v for k, v in BASE_KEYS.items() if k not in ("H_cycles", "H_layers")}
FLAT_KEYS["grad_cycles"] = Key(int, 1)


class SRM(ACTModel):
    """Simple Recursive Model (Liao & Poggio 2025): one state ``z`` with a skip from each segment's start.

    Per ACT step, ``H_cycles`` segments; a segment sets ``a = z`` and then ``L_cycles`` times
    ``z = L_level(z, a + x)`` (``skip="none"``: ``z = L_level(z, x)``). All segments but the last
    ``grad_cycles`` (default 1) run without gradient. Outputs ``lm_head(z)``, ``q_head(z[:, 0])``; embeddings,
    puzzle embeddings, ``mlp_t``, positions and halting exactly as TRM. State dict: TRM's with
    ``inner.H_init``/``inner.L_init`` replaced by ``inner.z_init``.
    """

    config_keys = SRM_KEYS  # the config schema the constructor validates (and train.config checks early)

    def __init__(self, config: Mapping[str, Any], backend: str = "auto"):
        super().__init__(backend)
        self.config = validate_config(config, self.config_keys, "SRM")
        c = self.config
        n = check_trm_like(c, "SRM")
        self.halt_on_q_continue = not c.no_ACT_continue
        self.inner = RecursiveInner(
            c,
            srm_schedule(c.H_cycles, c.L_cycles, c.skip, c.grad_cycles),
            {"L_level": (c.L_layers, 1)},
            {"z": "z_init"},
            n,
            mlp_t=c.mlp_t,
        )
        self._check_backend_fits()


class FlatRecurrence(ACTModel):
    """Flat recurrence (Ge, Liao & Poggio 2025): one state ``z`` and one ``L_level`` of ``L_layers`` blocks.

    Per ACT step ``z = L_level(z, x)`` ``L_cycles`` times, all but the last ``grad_cycles`` (default 1) under
    ``no_grad``. Outputs and halting as HRM (``q_halt > q_continue`` with a bootstrapped target). Config: HRM's
    keys without ``H_cycles``/``H_layers``; state dict: HRM's minus ``inner.H_level.*`` with ``inner.z_init``.
    """

    config_keys = FLAT_KEYS  # the config schema the constructor validates (and train.config checks early)

    def __init__(self, config: Mapping[str, Any], backend: str = "auto"):
        super().__init__(backend)
        self.config = validate_config(config, self.config_keys, "FlatRecurrence")
        c = self.config
        if c.grad_cycles > c.L_cycles:
            raise ValueError(f"FlatRecurrence config: grad_cycles {c.grad_cycles} exceeds L_cycles {c.L_cycles}")
        self.inner = RecursiveInner(
            c,
            flat_schedule(c.L_cycles, c.grad_cycles),
            {"L_level": (c.L_layers, 1)},
            {"z": "z_init"},
            puzzle_emb_len(c.puzzle_emb_ndim, c.hidden_size),
        )
        self._check_backend_fits()
