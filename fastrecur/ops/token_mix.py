"""``token_mix_block(h, w_gate_up_t, w_down_t, eps)``: TRM's ``mlp_t`` token mixing with the residual add and
the token-axis rms_norm fused, forward and backward, with no materialised transpose of h.

Semantics (h ``[B, L, D]``): ``t = h.transpose(1, 2)``; ``t = rms_norm(t + SwiGLU_L(t))`` with SwiGLU over the
token axis (``w_gate_up_t [2I, L]``, ``w_down_t [L, I]``) and the norm over L; return ``t.transpose(1, 2)`` as a
contiguous ``[B, L, D]`` tensor.

Registered as ``torch.ops.fastrecur.token_mix_block_fwd`` / ``token_mix_block_bwd`` (``custom_op`` with fake
impls and ``register_autograd``; see ``add_rms_norm.py`` for why not ``triton_op``).
Layout: h with any strides (the kernels index it through its strides; nothing is copied in the forward).
Saved for backward: h, the weights, the output y and the fp32 rstd per (batch, channel). The backward
copies h once to ``[L, B*D]`` for the ``w_gate_up_t`` gradient GEMM. No double backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastrecur.kernels import token_mix as _k

from . import reference as R
from ._validate import check_tensor
from .swiglu_mlp import check_block_args, register_block_autograd

__all__ = ["token_mix_block", "token_mix_block_reference"]


token_mix_block_reference = R.token_mix_block


@torch.library.custom_op("fastrecur::token_mix_block_fwd", mutates_args=())
def _fwd(h: Tensor, w_gate_up_t: Tensor, w_down_t: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    return _k.token_mix_fwd(h, w_gate_up_t, w_down_t, eps)


@_fwd.register_fake
def _(h, w_gate_up_t, w_down_t, eps):
    b, _, d = h.shape
    return h.new_empty(h.shape), h.new_empty((b, d), dtype=torch.float32)


@torch.library.custom_op("fastrecur::token_mix_block_bwd", mutates_args=())
def _bwd(
    dy: Tensor, h: Tensor, y: Tensor, rstd: Tensor, w_gate_up_t: Tensor, w_down_t: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    return _k.token_mix_bwd(dy, h, y, rstd, w_gate_up_t, w_down_t)


register_block_autograd(_fwd, _bwd)


def token_mix_block(h: Tensor, w_gate_up_t: Tensor, w_down_t: Tensor, eps: float = 1e-5) -> Tensor:
    """TRM token mixing block, fused: ``rms_norm_L(t + SwiGLU_L(t))`` with ``t = h.transpose(1, 2)``, returned
    as contiguous ``[B, L, D]``.

    Args:
        h: ``[B, L, D]`` (fp32/bf16/fp16; CUDA, or CPU under ``TRITON_INTERPRET=1``), any strides.
        w_gate_up_t: ``[2I, L]`` (gate rows, then up rows); w_down_t: ``[L, I]``; same dtype/device as h.
        eps: rms_norm epsilon. L must be at most 2048, B at most 65535.
    """
    check_tensor("h", h, ndim=3)
    if h.shape[1] == 0 or h.shape[2] == 0:
        raise ValueError(f"h must have non-empty token and channel dims, got shape {tuple(h.shape)}")
    if h.shape[0] > 65535:
        raise ValueError(f"h has batch size {h.shape[0]}: the kernels launch one grid row per batch (max 65535)")
    eps = check_block_args(h, "w_gate_up_t", w_gate_up_t, "w_down_t", w_down_t, h.shape[1], eps)
    y, _ = _fwd(h, w_gate_up_t, w_down_t, eps)
    return y
