"""Which execution backends exist on this machine, and why not when they do not."""
from __future__ import annotations

import importlib.util
from typing import Dict, Tuple

import torch

BACKENDS = ("auto", "eager", "triton", "cpp")
# Backends the models can run today; the others are reported but refused with a clear message.
_WIRED = {"eager", "triton", "cpp"}


def validate_backend_name(name) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {name!r}")
    if name not in ("auto",) and name not in _WIRED:
        raise ValueError(f"backend {name!r} is not available: {backends()[name][1]}")
    return name


def _triton_status() -> Tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed"
    if "triton" not in _WIRED:
        return False, "the Triton ops are not wired into the models in this version"
    if torch.cuda.is_available():
        return True, "CUDA device present"
    from fastrecur.ops._validate import triton_interpreter_enabled

    if triton_interpreter_enabled():
        return True, "CPU through the Triton interpreter (TRITON_INTERPRET=1; slow, for testing)"
    return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on the CPU through the interpreter)"


def _cpp_status() -> Tuple[bool, str]:
    try:
        from fastrecur import _ext
    except ImportError as e:  # the loader itself is missing
        return False, f"extension loader missing: {e}"
    if not _ext.available():
        return False, _ext.status()
    if "cpp" not in _WIRED:
        return False, f"extension built ({_ext.status()}) but not wired into the models in this version"
    return True, _ext.status()


def backends() -> Dict[str, Tuple[bool, str]]:
    """``{name: (available, reason)}`` for every backend."""
    return {"eager": (True, "always (PyTorch ops)"), "triton": _triton_status(), "cpp": _cpp_status()}


def resolve_backend(name: str, device: torch.device) -> str:
    """The concrete backend for ``name`` on ``device``: "auto" is Triton on CUDA, eager on CPU."""
    if name == "auto":
        return "triton" if device.type == "cuda" and backends()["triton"][0] else "eager"
    return name
