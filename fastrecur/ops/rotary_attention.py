"""Fused RoPE + non-causal attention on the fused qkv projection output (HRM/TRM self-attention core).

``rotary_attention(qkv, cos, sin, num_heads)`` computes, from ``qkv [B, S, 3*H*hd]`` (q, k, v in that order, each
``H`` heads of ``hd``):

    q, k, v = split(qkv); q, k = rope(q), rope(k)    # NeoX rotate_half, in fp32, cast back to qkv.dtype
    out = softmax(q k^T / sqrt(hd)) v                 # non-causal, per head
    -> [B, S, H*hd] in qkv.dtype                      # heads concatenated, ready for o_proj

with one Triton kernel forward and three backward (``fastrecur.kernels.rotary_attention``). ``cos``/``sin`` are
``[S, hd]`` fp32 (``cat(freqs, freqs)``), or both ``None`` for no RoPE. They get no gradient (they are the
model's fixed tables); passing ones that require grad is an error rather than a silently missing gradient.

``rotary_attention_reference`` is the eager version (the models' eager/CPU path): the reference repos' math
with ``F.scaled_dot_product_attention``.

Registered as ``torch.ops.fastrecur.rotary_attention_fwd`` / ``_bwd`` custom ops with fake impls and autograd,
so ``torch.compile(fullgraph=True)`` traces the public function without graph breaks. They are
``torch.library.custom_op`` rather than ``triton_op``: under ``TRITON_INTERPRET=1`` (CI) a ``triton_op`` is traced
by running its body on fake tensors, which the interpreter cannot do (it reads their data pointers), so the op
could not be compiled or checked on CPU; the custom op is opaque to the compiler, which costs nothing here
(Inductor could not fuse into these kernels anyway).
"""

from __future__ import annotations

from typing import Optional

import torch

from fastrecur.kernels import rotary_attention as _k
from fastrecur.ops import reference as R
from fastrecur.ops._validate import check_tensor, check_triton_device

__all__ = ["rotary_attention", "rotary_attention_reference", "SUPPORTED_HEAD_DIMS"]

SUPPORTED_HEAD_DIMS = _k.SUPPORTED_HEAD_DIMS


# ---------------------------------------------------------------------------------------------------- reference
def rotary_attention_reference(
    qkv: torch.Tensor, cos: Optional[torch.Tensor], sin: Optional[torch.Tensor], num_heads: int
) -> torch.Tensor:
    """Eager reference (any device, autograd through torch): same contract as :func:`rotary_attention`."""
    _check_inputs(qkv, cos, sin, num_heads, need_triton=False)
    return R.rotary_attention(qkv, cos, sin, num_heads)


# --------------------------------------------------------------------------------------------------- validation
def _check_inputs(qkv, cos, sin, num_heads, *, need_triton: bool) -> tuple[int, int, int]:
    """Validate; return (B, S, head_dim)."""
    check_tensor("qkv", qkv, ndim=3, contiguous_last_dim=True)
    if need_triton:
        check_triton_device("qkv", qkv)
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads <= 0:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    B, S, C = qkv.shape
    if C % (3 * num_heads) != 0:
        raise ValueError(f"qkv's last dimension {C} is not 3 * num_heads * head_dim for num_heads={num_heads}")
    hd = C // (3 * num_heads)
    if hd not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim {hd} (= qkv.shape[-1] / (3 * num_heads)) must be one of {SUPPORTED_HEAD_DIMS}")
    if (cos is None) != (sin is None):
        raise ValueError("cos and sin must both be tensors or both be None (no RoPE)")
    if cos is not None:
        for name, t in (("cos", cos), ("sin", sin)):
            check_tensor(name, t, ndim=2, dtypes=(torch.float32,), device=qkv.device, contiguous_last_dim=True)
            if tuple(t.shape) != (S, hd):
                raise ValueError(f"{name} must have shape [S, head_dim] = [{S}, {hd}], got {tuple(t.shape)}")
            if need_triton and t.requires_grad:
                raise ValueError(f"{name} requires grad, but rotary_attention gives no gradient to the RoPE tables")
    return B, S, hd


# ----------------------------------------------------------------------------------------------- custom ops
@torch.library.custom_op("fastrecur::rotary_attention_fwd", mutates_args=())
def _rotary_attention_fwd(
    qkv: torch.Tensor, cos: Optional[torch.Tensor], sin: Optional[torch.Tensor], num_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, S, H*hd], lse [B, H, S] fp32). The log-sum-exp output carries no gradient."""
    return _k.rotary_attention_fwd(qkv, cos, sin, num_heads)


@_rotary_attention_fwd.register_fake
def _(qkv, cos, sin, num_heads):
    B, S, C = qkv.shape
    hd = C // (3 * num_heads)
    return qkv.new_empty((B, S, num_heads * hd)), qkv.new_empty((B, num_heads, S), dtype=torch.float32)


@torch.library.custom_op("fastrecur::rotary_attention_bwd", mutates_args=())
def _rotary_attention_bwd(
    grad_out: torch.Tensor,
    qkv: torch.Tensor,
    cos: Optional[torch.Tensor],
    sin: Optional[torch.Tensor],
    out: torch.Tensor,
    lse: torch.Tensor,
    num_heads: int,
) -> torch.Tensor:
    """dqkv (contiguous, qkv.dtype) from the upstream gradient of ``out``."""
    if grad_out.stride(-1) != 1:  # autograd may hand over expanded/strided grads
        grad_out = grad_out.contiguous()
    return _k.rotary_attention_bwd(grad_out.to(qkv.dtype), qkv, cos, sin, out, lse, num_heads)


@_rotary_attention_bwd.register_fake
def _(grad_out, qkv, cos, sin, out, lse, num_heads):
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    qkv, cos, sin, num_heads = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(qkv, cos, sin, out, lse)
    ctx.num_heads = num_heads


def _backward(ctx, grad_out, _grad_lse):
    qkv, cos, sin, out, lse = ctx.saved_tensors
    dqkv = torch.ops.fastrecur.rotary_attention_bwd(grad_out, qkv, cos, sin, out, lse, ctx.num_heads)
    return dqkv, None, None, None


_rotary_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------------------ public
def rotary_attention(
    qkv: torch.Tensor, cos: Optional[torch.Tensor], sin: Optional[torch.Tensor], num_heads: int
) -> torch.Tensor:
    """Fused RoPE + softmax attention from the fused qkv projection; see the module docstring.

    Args:
        qkv: ``[B, S, 3*H*hd]`` fp32/bf16/fp16, contiguous last dim (other strides free), on CUDA (or CPU under
            ``TRITON_INTERPRET=1``). ``hd`` in ``SUPPORTED_HEAD_DIMS``.
        cos, sin: ``[S, hd]`` fp32 on qkv's device, or both ``None`` (no RoPE).
        num_heads: ``H``.

    Returns:
        ``[B, S, H*hd]`` in qkv's dtype; differentiable w.r.t. ``qkv``.
    """
    _check_inputs(qkv, cos, sin, num_heads, need_triton=True)
    out, _ = torch.ops.fastrecur.rotary_attention_fwd(qkv, cos, sin, num_heads)
    return out
