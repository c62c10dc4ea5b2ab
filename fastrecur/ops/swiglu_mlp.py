"""``swiglu_mlp_block(h, w_gate_up, w_down, eps)`` = rms_norm(h + SwiGLU(h)): the second half of every
HRM/TRM block, as two fused Triton kernels forward and one fused Triton kernel + three GEMMs backward.

Registered as ``torch.ops.fastrecur.swiglu_mlp_block_fwd`` / ``swiglu_mlp_block_bwd`` (``custom_op`` with
fake impls and ``register_autograd``; see ``add_rms_norm.py`` for why not ``triton_op``).

Layout: h ``[..., D]`` with any strides (flattened to rows through strides when possible, else copied by
``reshape``); weights with any strides. Output contiguous. Saved for backward: h, the weights (all alive
anyway), the output y and the fp32 rstd per row -- gate/up and act are recomputed in the backward kernel.
No double backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastrecur.kernels import swiglu_mlp as _k

from . import reference as R
from ._validate import check_same_dtype, check_tensor, check_triton_device
from .add_rms_norm import check_eps

__all__ = [
    "swiglu_mlp_block",
    "swiglu_mlp_block_reference",
    "swiglu_reference",
    "check_block_args",
    "register_block_autograd",
]


swiglu_reference = R.swiglu
swiglu_mlp_block_reference = R.swiglu_mlp_block


def check_block_args(h: Tensor, name_gu: str, w_gate_up, name_down: str, w_down, dim: int, eps) -> float:
    """The checks of a fused SwiGLU block after h's own: the weight pair acting on h's dimension of size ``dim``
    (``w_gate_up [2I, dim]``, ``w_down [dim, I]``, both on h's device with h's dtype, dim within the fused
    norm's limit), h on a Triton device, eps; returns eps as float.
    """
    check_tensor(name_gu, w_gate_up, ndim=2, device=h.device)
    check_tensor(name_down, w_down, ndim=2, device=h.device)
    check_same_dtype(**{"h": h, name_gu: w_gate_up, name_down: w_down})
    two_i, k = w_gate_up.shape
    if k != dim:
        raise ValueError(f"{name_gu} has shape {tuple(w_gate_up.shape)}: its second dim must be {dim}")
    if two_i == 0 or two_i % 2:
        raise ValueError(f"{name_gu} has shape {tuple(w_gate_up.shape)}: its first dim must be 2*I with I > 0")
    inter = two_i // 2
    if tuple(w_down.shape) != (dim, inter):
        raise ValueError(f"{name_down} has shape {tuple(w_down.shape)}, expected ({dim}, {inter})")
    if dim > _k.MAX_NORM_COLS:
        raise ValueError(f"the normalised dim {dim} exceeds the fused kernel's limit {_k.MAX_NORM_COLS}")
    check_triton_device("h", h)
    return check_eps(eps)


def register_block_autograd(fwd, bwd) -> None:
    """Autograd for a fused SwiGLU block op ``fwd(h, w_gate_up, w_down, eps) -> (y, rstd)`` through its backward op
    ``bwd(dy, h, y, rstd, w_gate_up, w_down) -> (dh, dw_gate_up, dw_down)``, whose fake impl is registered here
    too. Saves h, the weights, y and rstd; rstd gets no gradient."""

    @bwd.register_fake
    def _(dy, h, y, rstd, w_gate_up, w_down):
        return h.new_empty(h.shape), w_gate_up.new_empty(w_gate_up.shape), w_down.new_empty(w_down.shape)

    def setup_context(ctx, inputs, output):
        h, w_gate_up, w_down, _eps = inputs
        y, rstd = output
        ctx.save_for_backward(h, w_gate_up, w_down, y, rstd)
        ctx.mark_non_differentiable(rstd)

    def backward(ctx, dy, _drstd):
        h, w_gate_up, w_down, y, rstd = ctx.saved_tensors
        dh, dwgu, dwd = bwd(dy, h, y, rstd, w_gate_up, w_down)
        return dh, dwgu, dwd, None

    fwd.register_autograd(backward, setup_context=setup_context)


# ----------------------------------------------------------------------------------------------------------
@torch.library.custom_op("fastrecur::swiglu_mlp_block_fwd", mutates_args=())
def _fwd(h: Tensor, w_gate_up: Tensor, w_down: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    # outputs allocated here in their final shape: a custom op must not return views
    y = h.new_empty(h.shape)
    rstd = h.new_empty(h.shape[:-1], dtype=torch.float32)
    d = h.shape[-1]
    _k.swiglu_mlp_fwd(h.reshape(-1, d), w_gate_up, w_down, eps, y=y.view(-1, d), rstd=rstd.view(-1))
    return y, rstd


@_fwd.register_fake
def _(h, w_gate_up, w_down, eps):
    return h.new_empty(h.shape), h.new_empty(h.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("fastrecur::swiglu_mlp_block_bwd", mutates_args=())
def _bwd(
    dy: Tensor, h: Tensor, y: Tensor, rstd: Tensor, w_gate_up: Tensor, w_down: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    d = h.shape[-1]
    dh = h.new_empty(h.shape)
    _, dwgu, dwd = _k.swiglu_mlp_bwd(
        dy.reshape(-1, d), h.reshape(-1, d), y.reshape(-1, d), rstd.reshape(-1), w_gate_up, w_down, dh=dh.view(-1, d)
    )
    return dh, dwgu, dwd


register_block_autograd(_fwd, _bwd)


# ----------------------------------------------------------------------------------------------------------
def swiglu_mlp_block(h: Tensor, w_gate_up: Tensor, w_down: Tensor, eps: float = 1e-5) -> Tensor:
    """``rms_norm(h + (silu(gate) * up) @ w_down.T)``, ``gate, up`` = halves of ``h @ w_gate_up.T``.

    Args:
        h: ``[..., D]`` activations (fp32/bf16/fp16; CUDA, or CPU under ``TRITON_INTERPRET=1``), any strides.
        w_gate_up: ``[2I, D]``, gate rows first then up rows, same dtype and device as h.
        w_down: ``[D, I]``.
        eps: rms_norm epsilon (1e-5 in HRM/TRM).
    Returns:
        Contiguous ``[..., D]``. D must be at most 2048 (the norm is the epilogue of a row-owning kernel).
    """
    check_tensor("h", h)
    if h.dim() < 1 or h.shape[-1] == 0:
        raise ValueError(f"h must have a non-empty last dimension, got shape {tuple(h.shape)}")
    eps = check_block_args(h, "w_gate_up", w_gate_up, "w_down", w_down, h.shape[-1], eps)
    y, _ = _fwd(h, w_gate_up, w_down, eps)
    return y
