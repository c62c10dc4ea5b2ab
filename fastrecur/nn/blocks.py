"""HRM/TRM building blocks: attention, SwiGLU MLP, token mixer, the post-norm block and a level.

Module and parameter names follow the reference code so that state dicts are interchangeable:
``self_attn.qkv_proj``, ``self_attn.o_proj``, ``mlp.gate_up_proj``, ``mlp.down_proj``, ``mlp_t.*``, ``layers.{i}``.
"""

from typing import List, Optional, Tuple

import torch
from torch import nn

from fastrecur.ops import reference as R

from .linear import CastedLinear

CosSin = Optional[Tuple[torch.Tensor, torch.Tensor]]


def swiglu_intermediate_size(hidden_size: int, expansion: float) -> int:
    """``ceil_to_multiple(round(expansion * hidden * 2 / 3), 256)``: D=512, expansion 4 gives 1536."""
    inter = round(expansion * hidden_size * 2 / 3)
    return -(inter // -256) * 256


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, expansion: float):
        super().__init__()
        inter = swiglu_intermediate_size(hidden_size, expansion)
        self.gate_up_proj = CastedLinear(hidden_size, 2 * inter, bias=False)
        self.down_proj = CastedLinear(inter, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return R.swiglu(x, self.gate_up_proj.cast_weight(x.dtype), self.down_proj.cast_weight(x.dtype))


class Attention(nn.Module):
    """Non-causal multi-head self-attention with a fused qkv projection and optional RoPE."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        # head_dim = hidden_size // num_heads, as the reference: with a remainder the heads span fewer channels
        # than hidden_size (e.g. 12 heads of 42 on 512), and o_proj maps them back.
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv_proj = CastedLinear(hidden_size, 3 * num_heads * self.head_dim, bias=False)
        self.o_proj = CastedLinear(num_heads * self.head_dim, hidden_size, bias=False)

    def forward(self, h: torch.Tensor, cos_sin: CosSin, ops=R) -> torch.Tensor:
        cos, sin = cos_sin if cos_sin is not None else (None, None)
        return self.o_proj(ops.rotary_attention(self.qkv_proj(h), cos, sin, self.num_heads))


class ReasoningBlock(nn.Module):
    """Post-norm block: ``h = norm(h + mix(h)); h = norm(h + mlp(h))``.

    ``mix`` is self-attention, or with ``mlp_t`` a SwiGLU over the token axis whose norm also runs over
    the token axis (TRM's MLP-mixer variant; ``seq_len`` then includes the puzzle-embedding prefix).
    """

    def __init__(
        self, hidden_size: int, num_heads: int, expansion: float, eps: float, mlp_t: bool = False, seq_len: int = 0
    ):
        super().__init__()
        self.eps = eps
        self.mlp_t_enabled = mlp_t
        if mlp_t:
            self.mlp_t = SwiGLU(seq_len, expansion)
        else:
            self.self_attn = Attention(hidden_size, num_heads)
        self.mlp = SwiGLU(hidden_size, expansion)

    def forward(self, h: torch.Tensor, cos_sin: CosSin = None, ops=R) -> torch.Tensor:
        """``ops``: the op namespace to compute with (:mod:`fastrecur.ops.reference`, or the fused
        :mod:`fastrecur.ops`: same functions, same math), chosen by the backend."""
        dt = h.dtype
        if self.mlp_t_enabled:
            h = ops.token_mix_block(
                h, self.mlp_t.gate_up_proj.cast_weight(dt), self.mlp_t.down_proj.cast_weight(dt), self.eps
            )
        else:
            h = ops.add_rms_norm(h, self.self_attn(h, cos_sin, ops), self.eps)
        return ops.swiglu_mlp_block(
            h, self.mlp.gate_up_proj.cast_weight(dt), self.mlp.down_proj.cast_weight(dt), self.eps
        )


class ReasoningModule(nn.Module):
    """A level: ``h = h + injection`` then the blocks in order.

    With ``repeat > 1`` the same blocks are applied that many times (layer sharing: one block serving
    every layer position).
    """

    def __init__(self, layers: List[ReasoningBlock], repeat: int = 1):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.repeat = repeat

    def forward(self, h: torch.Tensor, injection: torch.Tensor, cos_sin: CosSin = None, ops=R) -> torch.Tensor:
        h = h + injection
        for _ in range(self.repeat):
            for layer in self.layers:
                h = layer(h, cos_sin, ops)
        return h
