"""``add_rms_norm(x, residual, eps, weight)`` = rms_norm(x + residual): fused Triton forward and backward.

Registered as ``torch.ops.fastrecur.add_rms_norm_fwd`` / ``add_rms_norm_bwd`` (``torch.library.custom_op``
with fake impls, autograd via ``register_autograd``), so ``torch.compile(fullgraph=True)`` traces a call
as one opaque node and the backward as another. ``custom_op`` rather than ``triton_op``: under the Triton
interpreter (CPU tests) a ``triton_op`` cannot be traced by AOT autograd (its kernels would be launched on
fake tensors), and opaque ops behave the same on both machines.

Layout: inputs of any shape ``[..., D]`` and any strides (rows are addressed through strides when the
leading dims flatten to a view; otherwise ``reshape`` copies them). The output is contiguous.
Saved for backward: without a weight only y (the output, which the next layer holds anyway) and the fp32
inverse RMS per row; with a weight x and residual (already alive) are saved and the sum is recomputed.
No double backward.
"""

from __future__ import annotations

import numbers
from typing import Optional

import torch
from torch import Tensor

from fastrecur.kernels import add_rms_norm as _k

from . import reference as R
from ._validate import check_same_dtype, check_tensor, check_triton_device

__all__ = ["add_rms_norm", "add_rms_norm_reference", "rms_norm_reference", "check_eps"]


# ----------------------------------------------------------------------------------------------------------
# Eager references: the exact block math of the models (the eager backend calls these)
# ----------------------------------------------------------------------------------------------------------
rms_norm_reference = R.rms_norm
add_rms_norm_reference = R.add_rms_norm


# ----------------------------------------------------------------------------------------------------------
# Validation helpers shared by the fused ops
# ----------------------------------------------------------------------------------------------------------
def check_eps(eps) -> float:
    """eps must be a positive finite real number; returned as float."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    eps = float(eps)
    if not (eps > 0.0 and eps < float("inf")):
        raise ValueError(f"eps must be positive and finite, got {eps}")
    return eps


# ----------------------------------------------------------------------------------------------------------
# Custom ops
# ----------------------------------------------------------------------------------------------------------
@torch.library.custom_op("fastrecur::add_rms_norm_fwd", mutates_args=())
def _add_rms_norm_fwd(x: Tensor, residual: Tensor, weight: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor]:
    # outputs allocated here in their final shape: a custom op must not return views
    y = x.new_empty(x.shape)
    rstd = x.new_empty(x.shape[:-1], dtype=torch.float32)
    d = x.shape[-1]
    _k.add_rms_norm_fwd(x.reshape(-1, d), residual.reshape(-1, d), weight, eps, y=y.view(-1, d), rstd=rstd.view(-1))
    return y, rstd


@_add_rms_norm_fwd.register_fake
def _(x, residual, weight, eps):
    return x.new_empty(x.shape), x.new_empty(x.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("fastrecur::add_rms_norm_bwd", mutates_args=())
def _add_rms_norm_bwd(
    dy: Tensor,
    y: Optional[Tensor],
    x: Optional[Tensor],
    residual: Optional[Tensor],
    rstd: Tensor,
    weight: Optional[Tensor],
) -> tuple[Tensor, Tensor]:
    """Returns (d(x + residual), dweight); dweight is an empty tensor when there is no weight."""
    d = dy.shape[-1]

    def rows(t):
        return None if t is None else t.reshape(-1, d).unsqueeze(0)

    ds = dy.new_empty(dy.shape)
    _, dw = _k.rms_norm_bwd(
        rows(dy), rstd.reshape(1, -1), y3=rows(y), x3=rows(x), r3=rows(residual), weight=weight, ds3=rows(ds)
    )
    return ds, dw if dw is not None else dy.new_empty(0)


@_add_rms_norm_bwd.register_fake
def _(dy, y, x, residual, rstd, weight):
    return dy.new_empty(dy.shape), (weight.new_empty(weight.shape) if weight is not None else dy.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, residual, weight, _eps = inputs
    y, rstd = output
    ctx.has_weight = weight is not None
    if weight is None:
        ctx.save_for_backward(y, rstd)
    else:
        ctx.save_for_backward(x, residual, weight, rstd)
    ctx.mark_non_differentiable(rstd)


def _backward(ctx, dy, _drstd):
    if ctx.has_weight:
        x, residual, weight, rstd = ctx.saved_tensors
        ds, dw = _add_rms_norm_bwd(dy, None, x, residual, rstd, weight)
        return ds, ds, dw, None
    y, rstd = ctx.saved_tensors
    ds, _ = _add_rms_norm_bwd(dy, y, None, None, rstd, None)
    return ds, ds, None, None


_add_rms_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------------------
# Public op
# ----------------------------------------------------------------------------------------------------------
def add_rms_norm(x: Tensor, residual: Tensor, eps: float = 1e-5, weight: Optional[Tensor] = None) -> Tensor:
    """``rms_norm(x + residual)`` over the last dim in one fused Triton kernel (forward and backward).

    Args:
        x, residual: ``[..., D]``, same shape, dtype (fp32/bf16/fp16) and device (CUDA, or CPU under
            ``TRITON_INTERPRET=1``). Any strides.
        eps: added to the mean square (default 1e-5, as in HRM/TRM).
        weight: optional ``[D]`` scale applied after normalisation (in fp32, before the final cast);
            HRM/TRM use none.
    Returns:
        Contiguous tensor like ``x``. The gradient w.r.t. x and residual is the same tensor.
    """
    check_tensor("x", x)
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"x must have a non-empty last dimension, got shape {tuple(x.shape)}")
    check_tensor("residual", residual, device=x.device)
    if residual.shape != x.shape:
        raise ValueError(f"residual has shape {tuple(residual.shape)} but x has {tuple(x.shape)}; they must match")
    check_same_dtype(x=x, residual=residual)
    if weight is not None:
        check_tensor("weight", weight, ndim=1, device=x.device)
        check_same_dtype(x=x, weight=weight)
        if weight.shape[0] != x.shape[-1]:
            raise ValueError(f"weight has shape {tuple(weight.shape)}, expected ({x.shape[-1]},) = x's last dim")
    check_triton_device("x", x)
    eps = check_eps(eps)
    y, _ = _add_rms_norm_fwd(x, residual, weight, eps)
    return y
