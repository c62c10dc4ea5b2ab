"""The eager reference math of every fused op: exactly the op sequence of the public HRM/TRM code.

This is what the eager backend runs and what the fused kernels are tested against. It needs only torch: the
``fastrecur.ops`` package loads the Triton ops beside it when Triton is installed and skips them otherwise, so
the eager/CPU path works wherever PyTorch does. No input validation here: the public
``*_reference`` functions in the op modules validate and call these; the models call them directly.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_LABEL_ID = -100


def rms_norm(x: Tensor, eps: float = 1e-5, weight: Optional[Tensor] = None) -> Tensor:
    """HRM/TRM rms_norm: upcast to fp32, ``x * rsqrt(mean(x^2, -1) + eps)`` [* weight], cast back.
    (fp64 inputs stay fp64: the tests' fp64 references run this.)"""
    ct = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(ct)
    y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(ct)
    return y.to(x.dtype)


def add_rms_norm(x: Tensor, residual: Tensor, eps: float = 1e-5, weight: Optional[Tensor] = None) -> Tensor:
    """``rms_norm(x + residual)``, the sum taken in the activation dtype as the models do."""
    return rms_norm(x + residual, eps, weight)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``x [B, S, H, hd]`` rotated in ``cos.dtype`` (fp32) with tables ``[S, hd]``, cast back (the
    reference's rounding)."""
    xf = x.to(cos.dtype)
    return (xf * cos.unsqueeze(-2) + rotate_half(xf) * sin.unsqueeze(-2)).to(x.dtype)


def rotary_attention(qkv: Tensor, cos: Optional[Tensor], sin: Optional[Tensor], num_heads: int) -> Tensor:
    """Non-causal attention on a fused ``qkv [B, S, 3*H*hd]`` (q, k, v in order), RoPE on q and k ->
    ``[B, S, H*hd]``."""
    B, S, three_hd = qkv.shape
    hd = three_hd // (3 * num_heads)
    q, k, v = qkv.view(B, S, 3, num_heads, hd).unbind(2)
    if cos is not None:
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).reshape(B, S, num_heads * hd)


def swiglu(h: Tensor, w_gate_up: Tensor, w_down: Tensor) -> Tensor:
    """HRM/TRM SwiGLU: ``down(silu(gate) * up)`` with ``gate, up = (h @ w_gate_up.T).chunk(2, -1)``."""
    gate, up = F.linear(h, w_gate_up).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, w_down)


def swiglu_mlp_block(h: Tensor, w_gate_up: Tensor, w_down: Tensor, eps: float = 1e-5) -> Tensor:
    """``rms_norm(h + swiglu(h))``."""
    return add_rms_norm(h, swiglu(h, w_gate_up, w_down), eps)


def token_mix_block(h: Tensor, w_gate_up_t: Tensor, w_down_t: Tensor, eps: float = 1e-5) -> Tensor:
    """TRM ``mlp_t``: transpose, ``rms_norm(t + SwiGLU_L(t))`` over the token axis, transpose back.

    Returns the transposed view, as the reference model code does (the fused op returns it contiguous)."""
    return swiglu_mlp_block(h.transpose(1, 2), w_gate_up_t, w_down_t, eps).transpose(1, 2)


def _stablemax_s(x: Tensor, epsilon: float = 1e-30) -> Tensor:
    return torch.where(x < 0, 1 / (1 - x + epsilon), x + 1)


def stablemax_cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_LABEL_ID) -> Tensor:
    """Per-token ``-log(s(x)[label] / sum s(x))`` in float64, 0 where ``labels == ignore_index``;
    ``s(x) = 1/(1-x)`` for ``x < 0`` else ``x + 1`` (stablemax)."""
    s_x = _stablemax_s(logits.to(torch.float64))
    logprobs = torch.log(s_x / torch.sum(s_x, dim=-1, keepdim=True))
    valid = labels != ignore_index
    picked = torch.gather(logprobs, index=torch.where(valid, labels, 0).to(torch.long).unsqueeze(-1), dim=-1).squeeze(
        -1
    )
    return -torch.where(valid, picked, 0)


def softmax_cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_LABEL_ID) -> Tensor:
    """Float32 softmax cross-entropy per token (``reduction='none'``), 0 at ignored labels; any logits layout.

    The reference's version fails inside its own loss head (``.view`` on the non-contiguous logits slice when
    puzzle embeddings are on; in the TRM repo also an unexpected ``valid_mask`` argument); this is what it meant."""
    return F.cross_entropy(
        logits.to(torch.float32).reshape(-1, logits.shape[-1]),
        labels.to(torch.long).reshape(-1),
        ignore_index=ignore_index,
        reduction="none",
    ).view(labels.shape)
