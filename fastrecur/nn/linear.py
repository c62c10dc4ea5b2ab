"""Linear and embedding layers that keep fp32 master weights and compute in the activation dtype."""

import torch
import torch.nn.functional as F
from torch import nn

from .init import trunc_normal_init_


class CastedLinear(nn.Module):
    """``y = x @ W.T (+ b)`` with ``W`` cast to ``x``'s dtype; truncated LeCun-normal init, zero bias."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_init_(torch.empty((out_features, in_features)), std=in_features**-0.5))
        self.bias = nn.Parameter(torch.zeros((out_features,))) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias)

    def cast_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return self.weight.to(dtype)


class CastedEmbedding(nn.Module):
    """Embedding table in fp32, looked up and cast to ``cast_to``."""

    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.embedding_weight = nn.Parameter(
            trunc_normal_init_(torch.empty((num_embeddings, embedding_dim)), std=init_std)
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embedding_weight.to(self.cast_to))


class CastedSparseEmbedding(nn.Module):
    """Per-puzzle embedding table trained by a sparse sign-SGD optimiser, as in the reference.

    The table ``weights`` is a persistent *buffer*, not a Parameter (so ordinary optimisers skip it). In
    training, the rows of the current batch are copied into ``local_weights`` (a leaf that requires grad)
    and ``local_ids`` records which rows they were; the sparse optimiser reads both after backward.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, batch_size: int, init_std: float, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.weights = nn.Buffer(
            trunc_normal_init_(torch.empty((num_embeddings, embedding_dim)), std=init_std), persistent=True
        )
        self.local_weights = nn.Buffer(torch.zeros(batch_size, embedding_dim, requires_grad=True), persistent=False)
        self.local_ids = nn.Buffer(torch.zeros(batch_size, dtype=torch.int32), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.weights[ids].to(self.cast_to)
        if ids.shape[0] != self.local_weights.shape[0]:
            # The reference fixes the batch size at construction; follow a different batch size instead of failing.
            self.local_weights = torch.zeros(
                ids.shape[0], self.weights.shape[1], device=self.weights.device, requires_grad=True
            )
            self.local_ids = torch.zeros(ids.shape[0], dtype=torch.int32, device=self.weights.device)
        with torch.no_grad():
            self.local_weights.copy_(self.weights[ids])
            self.local_ids.copy_(ids)
        return self.local_weights.to(self.cast_to)
