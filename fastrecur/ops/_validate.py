"""Input checks shared by every op: clear ``TypeError``/``ValueError`` naming the argument."""

from __future__ import annotations

import functools
import os
from typing import Iterable, Optional, Sequence, Tuple

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
            raise ValueError(
                f"{name} must have {' or '.join(map(str, allowed))} dimensions, got shape {tuple(t.shape)}"
            )
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


def _major_minor(version: str) -> Tuple[int, int]:
    parts = (version.split("+")[0].split(".") + ["0", "0"])[:2]
    return tuple(int("".join(ch for ch in p if ch.isdigit()) or 0) for p in parts)  # type: ignore[return-value]


def interpreter_incompatibility(triton_version: str, numpy_version: str) -> Optional[str]:
    """Why the Triton interpreter cannot run the kernels with these versions, or None.

    Triton 3.6's interpreter (and older) converts 1-element arrays to Python ints, which numpy 2.4 refuses, so
    every kernel with a loop over program ids fails inside the interpreter (seen: triton 3.6.0 with numpy 2.4.6
    fails, with numpy 2.3.5 passes; triton 3.7.0 and 3.8.0 pass with numpy 2.4.6)."""
    if _major_minor(triton_version) < (3, 7) and _major_minor(numpy_version) >= (2, 4):
        return (
            f"the Triton interpreter of triton {triton_version} cannot run these kernels with numpy "
            f"{numpy_version} (it needs numpy < 2.4, or triton >= 3.7)"
        )
    return None


@functools.lru_cache(maxsize=1)
def installed_interpreter_incompatibility() -> Optional[str]:
    """:func:`interpreter_incompatibility` for the installed triton and numpy (None when triton is missing)."""
    try:
        import numpy
        import triton
    except ImportError:
        return None
    return interpreter_incompatibility(triton.__version__, numpy.__version__)


def check_triton_device(name: str, t: torch.Tensor) -> None:
    """Triton kernels run on CUDA tensors, or on CPU tensors only under ``TRITON_INTERPRET=1``.

    Never falls back silently: a CPU tensor without the interpreter is an error.
    """
    if t.device.type == "cuda":
        return
    if t.device.type == "cpu" and triton_interpreter_enabled():
        problem = installed_interpreter_incompatibility()
        if problem:
            raise RuntimeError(f"{name} is on the CPU, but {problem}. Use backend='eager' on CPU.")
        return
    raise ValueError(
        f"{name} is on {t.device}: the Triton kernels need a CUDA tensor, or a CPU tensor with "
        "TRITON_INTERPRET=1 set before fastrecur is imported (slow; for testing). Use backend='eager' on CPU."
    )
