"""Which execution backends exist on this machine, and why not when they do not."""
from __future__ import annotations

import functools
import importlib.util
from typing import Dict, Tuple

import torch

BACKENDS = ("auto", "eager", "triton", "cpp")


def validate_backend_name(name) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {name!r}")
    return name


def _triton_status() -> Tuple[bool, str]:
    from fastrecur.ops._validate import triton_interpreter_enabled

    return _triton_probe(triton_interpreter_enabled())


@functools.lru_cache(maxsize=2)  # probed once per process (and interpreter setting): it is asked every ACT step
def _triton_probe(interpreter: bool) -> Tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed"
    if torch.cuda.is_available():
        return True, "CUDA device present"
    if interpreter:
        from fastrecur.ops._validate import installed_interpreter_incompatibility

        problem = installed_interpreter_incompatibility()
        if problem:
            return False, problem
        return True, "CPU through the Triton interpreter (TRITON_INTERPRET=1; slow, for testing)"
    return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on the CPU through the interpreter)"


@functools.lru_cache(maxsize=1)
def _cpp_status() -> Tuple[bool, str]:
    try:
        from fastrecur import _ext
    except ImportError as e:  # the loader itself is missing
        return False, f"extension loader missing: {e}"
    if not _ext.available():
        return False, _ext.status()
    return True, _ext.status()


def backends() -> Dict[str, Tuple[bool, str]]:
    """``{name: (available, reason)}`` for every backend."""
    return {"eager": (True, "always (PyTorch ops)"), "triton": _triton_status(), "cpp": _cpp_status()}


def resolve_backend(name: str, device: torch.device) -> str:
    """The concrete backend for ``name`` on ``device``: "auto" is Triton on CUDA, eager on CPU."""
    if name == "auto":
        return "triton" if device.type == "cuda" and backends()["triton"][0] else "eager"
    return name
