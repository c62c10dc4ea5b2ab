"""TRM ACT v1 (SamsungSAILMontreal/TinyRecursiveModels), drop-in: same config, state dict and contract."""

from __future__ import annotations

from typing import Any, Mapping

from .act import ACTModel
from .config import BASE_KEYS, Key, ModelConfig, puzzle_emb_len, validate_config
from .inner import RecursiveInner
from .schedules import trm_schedule

TRM_KEYS = {
    **BASE_KEYS,
    "H_layers": Key(int, 0),  # ignored by TRM, accepted for config compatibility
    "pos_encodings": Key(str, choices=("rope", "learned", "none")),
    "mlp_t": Key(bool, False),
    "puzzle_emb_len": Key(int, 16),
    "no_ACT_continue": Key(bool, True),
    "grad_cycles": Key(int, 1),
}


def check_trm_like(c: ModelConfig, model: str, cycles_key: str = "H_cycles") -> int:
    """Checks shared by TRM and SRM; returns the puzzle-embedding prefix length."""
    if c.grad_cycles > getattr(c, cycles_key):
        raise ValueError(f"{model} config: grad_cycles {c.grad_cycles} exceeds {cycles_key} {getattr(c, cycles_key)}")
    if c.puzzle_emb_ndim == 0 and c.puzzle_emb_len > 0:
        # The reference breaks on shapes here (states of seq_len + puzzle_emb_len positions, inputs of seq_len).
        raise ValueError(
            f"{model} config: puzzle_emb_ndim is 0 but puzzle_emb_len is {c.puzzle_emb_len}; "
            "without puzzle embeddings set puzzle_emb_len to 0"
        )
    n = puzzle_emb_len(c.puzzle_emb_ndim, c.hidden_size, c.puzzle_emb_len)
    if c.puzzle_emb_ndim > n * c.hidden_size:
        raise ValueError(
            f"{model} config: puzzle_emb_ndim {c.puzzle_emb_ndim} does not fit in puzzle_emb_len {n} x hidden_size "
            f"{c.hidden_size}"
        )
    return n


class TRM(ACTModel):
    """Tiny Recursive Model with ACT (the reference ``TinyRecursiveReasoningModel_ACTV1``).

    One ``L_level`` (``L_layers`` blocks) serves both states: per H cycle ``L_cycles x [z_L = L(z_L, z_H + x)]``
    then ``z_H = L(z_H, z_L)``; ``H_cycles`` cycles per ACT step, the last ``grad_cycles`` (reference: 1) with
    gradient. ``mlp_t=True`` swaps attention for token mixing (MLP-mixer). Positions: rope, learned or none.

    Halting: with ``no_ACT_continue`` (default) a row halts in training when ``q_halt > 0`` and no Q-continue
    target is produced. With ``no_ACT_continue=False`` it halts when ``q_halt > q_continue`` and gets HRM's
    bootstrapped target -- what the reference means there (its own code crashes on that path).

    Differences from the reference, both where it is broken: ``puzzle_emb_ndim=0`` with a non-zero
    ``puzzle_emb_len`` is rejected with a clear error instead of failing on shapes.
    """

    config_keys = TRM_KEYS  # the config schema the constructor validates (and train.config checks early)

    def __init__(self, config: Mapping[str, Any], backend: str = "auto"):
        super().__init__(backend)
        self.config = validate_config(config, self.config_keys, "TRM")
        c = self.config
        n = check_trm_like(c, "TRM")
        self.halt_on_q_continue = not c.no_ACT_continue
        self.inner = RecursiveInner(
            c,
            trm_schedule(c.H_cycles, c.L_cycles, c.grad_cycles),
            {"L_level": (c.L_layers, 1)},
            {"z_H": "H_init", "z_L": "L_init"},
            n,
            mlp_t=c.mlp_t,
        )
        self._check_backend_fits()
