"""Stand-in for ``flash_attn`` where it is not installed (``fastrecur.patch.apply`` registers it as ``flash_attn``):
``flash_attn_func`` computed by PyTorch's ``scaled_dot_product_attention`` (any device and dtype).

Only what the reference models use is covered; other FlashAttention options raise ``NotImplementedError``
naming them rather than computing something else.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def flash_attn_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size=(-1, -1),
    alibi_slopes=None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    **unsupported,
) -> torch.Tensor:
    """Attention in FlashAttention's layout.

    Args:
        q: ``[B, S, H, D]``; k, v: ``[B, S_k, H_kv, D]`` with ``H`` a multiple of ``H_kv`` (grouped-query heads).
        dropout_p: attention dropout probability (as FlashAttention: the caller passes 0 in evaluation).
        softmax_scale: ``1/sqrt(D)`` when None.
        causal: mask future keys (needs ``S == S_k``).
    Returns:
        ``[B, S, H, D]`` in ``q``'s dtype.
    Raises:
        ValueError: shapes that do not fit; NotImplementedError: ``window_size``, ``alibi_slopes``,
        ``return_attn_probs`` or other FlashAttention arguments.
    """
    if unsupported:
        raise NotImplementedError(f"fastrecur's flash_attn stand-in does not take {sorted(unsupported)}")
    if tuple(window_size) != (-1, -1) or alibi_slopes is not None or return_attn_probs:
        raise NotImplementedError(
            "fastrecur's flash_attn stand-in supports neither window_size, alibi_slopes nor return_attn_probs"
        )
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"q [B, S, H, D] and k, v [B, S_k, H_kv, D] expected, got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"the {q.shape[2]} query heads are not a multiple of the {k.shape[2]} key/value heads")
    if causal and q.shape[1] != k.shape[1]:
        raise NotImplementedError("causal attention with different query and key lengths is not covered")
    groups = q.shape[2] // k.shape[2]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=2), v.repeat_interleave(groups, dim=2)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        dropout_p=dropout_p,
        is_causal=causal,
        scale=softmax_scale,
    )
    return out.transpose(1, 2)


__all__ = ["flash_attn_func"]
