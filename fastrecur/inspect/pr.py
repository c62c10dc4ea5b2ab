"""Participation ratio of latent states: how many dimensions the states really use."""

from __future__ import annotations

import torch


def participation_ratio(states: torch.Tensor) -> float:
    """``PR = (sum lambda)^2 / sum lambda^2`` over the eigenvalues of the states' covariance, in fp64.

    Args:
        states: ``[..., D]``; all leading dims (samples x positions) are flattened into observations.
    Returns:
        A float in ``[1, D]``: k equal, independent directions give k; one dominant direction gives ~1.

    ``sum lambda = trace(C)`` and ``sum lambda^2 = ||C||_F^2``, so no eigendecomposition is needed.
    """
    if not isinstance(states, torch.Tensor):
        raise TypeError(f"states must be a tensor, got {type(states).__name__}")
    if not states.dtype.is_floating_point:
        raise TypeError(f"states must be floating point, got {states.dtype}")
    if states.dim() < 2:
        raise ValueError(
            f"states must have shape [..., D] with at least one observation dim, got {tuple(states.shape)}"
        )
    x = states.detach().reshape(-1, states.shape[-1]).to(torch.float64)
    if x.shape[0] < 2:
        raise ValueError(f"states needs at least 2 observations to form a covariance, got {x.shape[0]}")
    if not torch.isfinite(x).all():
        raise ValueError("states contains NaN or Inf")
    x = x - x.mean(0, keepdim=True)
    cov = x.T @ x / (x.shape[0] - 1)
    tr = torch.trace(cov)
    fro2 = (cov * cov).sum()
    if fro2 == 0:
        raise ValueError("states have zero variance: the participation ratio is undefined")
    return float(tr * tr / fro2)
