"""Rotary position embedding tables (NeoX ``rotate_half`` convention)."""

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """``cos``/``sin`` tables of shape ``[max_positions, dim]`` in fp32, built from ``cat(freqs, freqs)``.

    Not saved in the state dict (recomputed at construction), as in the reference.
    """

    def __init__(self, dim: int, max_position_embeddings: int, base: float, device=None):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
        t = torch.arange(max_position_embeddings, dtype=torch.float32, device=device)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos_cached = nn.Buffer(emb.cos(), persistent=False)
        self.sin_cached = nn.Buffer(emb.sin(), persistent=False)

    def forward(self):
        return self.cos_cached, self.sin_cached
