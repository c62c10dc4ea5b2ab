"""Input checks shared by every op: clear ``TypeError``/``ValueError`` naming the argument."""
from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_tensor(
    name: str,
    t,
    *,
    ndim: Optional[int | Sequence[int]] = None,
    dtypes: Optional[Iterable[torch.dtype]] = FLOAT_DTYPES,
    device: Optional[torch.device] = None,
    contiguous_last_dim: bool = False,
) -> torch.Tensor:
    """Check one tensor argument; return it unchanged.

    Raises ``TypeError`` for a non-tensor or a wrong dtype, ``ValueError`` for a wrong rank, device or layout.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} (all inputs must be on one device)")
    if contiguous_last_dim and t.dim() > 0 and t.stride(-1) != 1 and t.shape[-1] > 1:
        raise ValueError(f"{name} must be contiguous in its last dimension (stride {t.stride()})")
    return t


def check_same_dtype(**tensors: torch.Tensor) -> torch.dtype:
    """All named tensors share one dtype; return it."""
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {first_name} has {first.dtype}; they must match")
    return first.dtype


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_triton_device(name: str, t: torch.Tensor) -> None:
    """Triton kernels run on CUDA tensors, or on CPU tensors only under ``TRITON_INTERPRET=1``.

    Never falls back silently: a CPU tensor without the interpreter is an error.
    """
    if t.device.type == "cuda":
        return
    if t.device.type == "cpu" and triton_interpreter_enabled():
        return
    raise ValueError(
        f"{name} is on {t.device}: the Triton kernels need a CUDA tensor, or a CPU tensor with "
        "TRITON_INTERPRET=1 set before fastrecur is imported (slow; for testing). Use backend='eager' on CPU."
    )
