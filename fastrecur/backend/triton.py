"""The Triton backend: the blocks and the stablemax loss computed by the fused Triton ops (``fastrecur.ops``),
the schedule run by the same Python loop as the eager backend. On a CPU only through the interpreter
(``TRITON_INTERPRET=1``; slow, for testing)."""

from __future__ import annotations

import functools
import importlib
import importlib.util
from typing import Callable, Tuple

import torch

from .base import Backend


@functools.lru_cache(maxsize=2)  # probed once per process (and interpreter setting): asked every ACT step
def _probe(interpreter: bool) -> Tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed"
    if torch.cuda.is_available():
        return True, "CUDA device present"
    if interpreter:
        from fastrecur.ops._validate import installed_interpreter_incompatibility

        problem = installed_interpreter_incompatibility()
        if problem:
            return False, problem
        return True, "CPU through the Triton interpreter (TRITON_INTERPRET=1; slow, for testing)"
    return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on the CPU through the interpreter)"


class TritonBackend(Backend):
    """Fused Triton kernels for every block op (attention blocks need a head_dim the kernel takes)."""

    name = "triton"

    @property
    def ops(self):
        # Imported on first use: without triton the package still imports (the eager backend needs none of it).
        return importlib.import_module("fastrecur.ops")

    def status(self) -> Tuple[bool, str]:
        from fastrecur.ops._validate import triton_interpreter_enabled

        return _probe(triton_interpreter_enabled())

    def supports(self, config) -> Tuple[bool, str]:
        if getattr(config, "mlp_t", False):
            return True, "token-mixer blocks"
        try:
            from fastrecur.ops.rotary_attention import SUPPORTED_HEAD_DIMS
        except ImportError as e:
            return False, f"the Triton kernels cannot be imported ({e})"
        head_dim = config.hidden_size // config.num_heads
        if head_dim not in SUPPORTED_HEAD_DIMS:
            return (
                False,
                f"the Triton attention kernel takes head_dim in {SUPPORTED_HEAD_DIMS}; this model has {head_dim}",
            )
        return True, f"head_dim {head_dim}"

    def per_token_loss(self, loss_type: str, device: torch.device) -> Callable:
        if loss_type == "stablemax_cross_entropy":
            return self.ops.stablemax_cross_entropy
        return super().per_token_loss(loss_type, device)


__all__ = ["TritonBackend"]
