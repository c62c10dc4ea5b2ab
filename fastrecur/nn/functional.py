"""Eager reference math of the HRM/TRM building blocks (the semantics every backend must reproduce)."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

CosSin = Optional[Tuple[torch.Tensor, torch.Tensor]]


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless RMSNorm over the last dim, computed in fp32 and cast back to ``x.dtype``."""
    dtype = x.dtype
    x = x.to(torch.float32)
    x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
    return x.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotate ``q``, ``k`` ``[B, S, H, hd]`` in fp32 with tables ``[S, hd]``; cast back to their dtype."""
    dtype = q.dtype
    q = q.to(cos.dtype)
    k = k.to(cos.dtype)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    return (q * cos + rotate_half(q) * sin).to(dtype), (k * cos + rotate_half(k) * sin).to(dtype)


def attention_core(qkv: torch.Tensor, cos_sin: CosSin, num_heads: int) -> torch.Tensor:
    """Non-causal multi-head attention on a fused ``qkv`` ``[B, S, 3*H*hd]`` -> ``[B, S, H*hd]``."""
    b, s, three_hd = qkv.shape
    head_dim = three_hd // (3 * num_heads)
    qkv = qkv.view(b, s, 3 * num_heads, head_dim)
    q, k, v = qkv[:, :, :num_heads], qkv[:, :, num_heads : 2 * num_heads], qkv[:, :, 2 * num_heads :]
    if cos_sin is not None:
        q, k = apply_rotary(q, k, *cos_sin)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=False)
    return out.transpose(1, 2).reshape(b, s, num_heads * head_dim)


def swiglu(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """``down(silu(gate) * up)`` with ``[gate | up] = x @ w_gate_up.T``."""
    gate, up = F.linear(x, w_gate_up).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, w_down)
