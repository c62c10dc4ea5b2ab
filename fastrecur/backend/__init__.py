"""Execution backends: the one place that decides how a model's recursion runs.

``"eager"`` (PyTorch ops, the reference semantics), ``"triton"`` (fused Triton kernels), ``"cpp"`` (the C++
in-place loop for the no-grad recursion, grad tail with autograd) and ``"auto"``: the fastest path here that
the tests hold equal to eager --

- CPU: ``cpp`` when the extension is loaded, else ``eager``;
- CUDA: ``cpp`` when the extension has its CUDA kernels (no-grad loop in native code, grad tail on Triton
  when it covers the model), else ``triton`` when it covers the model, else ``eager``.

:func:`backends` says which are available here and why not; :func:`select` gives the :class:`Backend` a model
runs on for a device. Models call only these two and the :class:`Backend` interface.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch

from .base import Backend, EagerBackend
from .cpp import CppBackend
from .triton import TritonBackend

NAMES = ("auto", "eager", "triton", "cpp")

_EAGER = EagerBackend()
_TRITON = TritonBackend()
_BACKENDS: Dict[str, Backend] = {"eager": _EAGER, "triton": _TRITON, "cpp": CppBackend(tail=_EAGER, cuda_tail=_TRITON)}


def validate_name(name) -> str:
    """``name`` if it is a backend name, else ValueError naming the choices."""
    if not isinstance(name, str) or name not in NAMES:
        raise ValueError(f"backend must be one of {list(NAMES)}, got {name!r}")
    return name


def backends() -> Dict[str, Tuple[bool, str]]:
    """``{name: (available, reason)}`` for every concrete backend on this machine."""
    return {name: b.status() for name, b in _BACKENDS.items()}


def get(name) -> Backend:
    """The concrete backend called ``name`` ("eager", "triton" or "cpp"; not "auto": see :func:`select`); a
    :class:`Backend` is returned as it is."""
    if isinstance(name, Backend):
        return name
    if name not in _BACKENDS:
        raise ValueError(f"backend must be one of {sorted(_BACKENDS)}, got {name!r}")
    return _BACKENDS[name]


def _auto(device: torch.device, config) -> Backend:
    cpp, triton = _BACKENDS["cpp"], _TRITON
    if device.type == "cuda":
        if cpp.has_cuda_kernels():
            return cpp
        if triton.status()[0] and triton.supports(config)[0]:
            return triton
        return _EAGER
    return cpp if device.type == "cpu" and cpp.status()[0] else _EAGER


def select(name: str, device: torch.device, config=None) -> Backend:
    """The backend a model of ``config`` runs on with ``backend=name`` for tensors on ``device``."""
    validate_name(name)
    return _auto(device, config) if name == "auto" else _BACKENDS[name]


def check_available(name: str, device: torch.device, config=None) -> Backend:
    """The backend a model of ``config`` runs on with ``backend=name`` on ``device``, or ValueError saying why it
    cannot run there ("auto" always can): not built or installed, Triton on a CPU without the interpreter, the C++
    loop on CUDA without its CUDA kernels."""
    device = torch.device(device)
    chosen = select(name, device, config)
    ok, why = chosen.status()
    if ok and chosen.name == "triton" and device.type != "cuda":
        from fastrecur.ops._validate import triton_interpreter_enabled

        if not triton_interpreter_enabled():
            ok, why = False, "the Triton kernels run on CUDA, or on the CPU only with TRITON_INTERPRET=1 (slow)"
    if ok and chosen.name == "cpp" and device.type == "cuda" and not chosen.has_cuda_kernels():
        ok, why = False, "the extension was built without its CUDA kernels"
    if not ok:
        raise ValueError(f"backend {name!r} cannot run on {device} here: {why}")
    return chosen


def check_fits(name: str, config) -> None:
    """ValueError when an explicitly chosen backend cannot run a model of ``config`` (checked at construction)."""
    if name != "auto":
        ok, why = _BACKENDS[name].supports(config)
        if not ok:
            raise ValueError(f"backend {name!r} cannot run this model: {why} (use backend='eager' or 'cpp')")


__all__ = ["Backend", "NAMES", "backends", "check_available", "check_fits", "get", "select", "validate_name"]
