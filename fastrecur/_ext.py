"""Access to the optional native extension ``fastrecur._C`` (C++ CPU ops + CUDA kernels).

Importing ``fastrecur._C`` registers the ops under ``torch.ops.fastrecur_C``. The extension is optional:
the package works without it (``FASTRECUR_NO_EXT=1`` at install time, or no compiler), and
:func:`status` says why it is missing or what it contains.
"""
from __future__ import annotations

import os
import types

import torch

_IMPORT_ERROR: str | None = None
# FASTRECUR_EXT_LIBRARY=/path/to/lib.so loads that build of the ops instead of fastrecur._C (used by
# scripts/asan_check.sh to test a sanitizer build without installing it).
_OVERRIDE = os.environ.get("FASTRECUR_EXT_LIBRARY")
try:
    if _OVERRIDE:
        torch.ops.load_library(_OVERRIDE)
        _C = types.SimpleNamespace(__file__=_OVERRIDE)
    else:
        from fastrecur import _C  # noqa: F401  (loading the library registers torch.ops.fastrecur_C)
except Exception as e:  # ImportError, or OSError for an .so built against another torch
    _C = None
    _IMPORT_ERROR = f"{type(e).__name__}: {e}"


def available() -> bool:
    """True when ``fastrecur._C`` is built and loaded."""
    return _C is not None


def has_cuda_kernels() -> bool:
    """True when the loaded extension was compiled with its CUDA kernels (False when not available)."""
    return available() and bool(torch.ops.fastrecur_C.has_cuda_kernels())


def status() -> str:
    """One line saying whether the extension is usable, and if not, why."""
    if not available():
        return (
            f"fastrecur._C is not available ({_IMPORT_ERROR}); build it with "
            "`pip install --no-build-isolation -e .` (unset FASTRECUR_NO_EXT)"
        )
    cuda = (
        "with CUDA kernels"
        if has_cuda_kernels()
        else "CPU only (built without nvcc or a CUDA build of torch)"
    )
    return f"fastrecur._C loaded from {_C.__file__}, {cuda}"


def ops():
    """The op namespace ``torch.ops.fastrecur_C``; raises RuntimeError with :func:`status` if not built."""
    if not available():
        raise RuntimeError(status())
    return torch.ops.fastrecur_C


def workspace_info() -> dict:
    """Counters of the native workspace cache.

    Keys: ``allocations`` (workspace buffers allocated since load; a repeated call with the same or smaller
    shapes adds none), ``entries`` (cached buffers: one per device, CUDA stream and dtype), ``bytes`` (held by
    the cache) and ``last_call_ops`` (native ops -- ATen calls and fused kernels -- the last ``run_steps``
    issued)."""
    allocs, entries, nbytes, last_ops = ops().workspace_info()
    return {"allocations": allocs, "entries": entries, "bytes": nbytes, "last_call_ops": last_ops}


def clear_workspaces() -> None:
    """Free the cached workspaces (they are re-allocated by the next call)."""
    ops().clear_workspaces()
