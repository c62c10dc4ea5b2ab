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


def _cpu_isa_mismatch() -> str | None:
    """Why this CPU cannot run the installed build (compiled for an instruction set it lacks), or None.

    Checked before the library is loaded: AVX-512 code on a CPU without it dies with SIGILL, not an error."""
    try:
        from fastrecur import _build_info
    except ImportError:  # built before the instruction set was recorded, or not built by setup.py
        return None
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is None:  # older torch: trust the build (it ran on this machine's torch)
        return None
    caps = get()
    missing = [f for f in _build_info.CPU_ISA_NEEDS if not caps.get(f, False)]
    if not missing:
        return None
    return (
        f"fastrecur._C was built for {_build_info.CPU_ISA} CPUs, but this CPU lacks {', '.join(missing)}; "
        "rebuild it here (pip install --no-build-isolation .), or build a portable library with "
        "FASTRECUR_CPU_ISA=avx2 or FASTRECUR_CPU_ISA=default"
    )


# FASTRECUR_EXT_LIBRARY=/path/to/lib.so loads that build of the ops instead of fastrecur._C (used by
# scripts/asan_check.sh to test a sanitizer build without installing it).
_OVERRIDE = os.environ.get("FASTRECUR_EXT_LIBRARY")
_MISMATCH = None if _OVERRIDE else _cpu_isa_mismatch()
try:
    if _OVERRIDE:
        torch.ops.load_library(_OVERRIDE)
        _C = types.SimpleNamespace(__file__=_OVERRIDE)
    elif _MISMATCH:
        _C = None
        _IMPORT_ERROR = _MISMATCH
    else:
        from fastrecur import _C  # noqa: F401  (loading the library registers torch.ops.fastrecur_C)
except Exception as e:  # ImportError, or OSError for an .so built against another torch
    _C = None
    _IMPORT_ERROR = f"{type(e).__name__}: {e}"

# Ops that take tensors: each writes only into its Tensor(a!) arguments (declared in its schema, so
# functionalization and torch.library.opcheck see the mutation) and returns nothing, so its fake (meta)
# implementation -- what FakeTensorMode, torch.compile and torch.export run instead of the kernel -- has no
# output to describe: it returns None. Shapes are validated by the real op when it runs. The other ops
# (workspace_info, clear_workspaces, has_cuda_kernels, cpu_isa, gemm_choices) take no tensors and are registered as
# CompositeImplicitAutograd, which already runs under every tracing mode.
TENSOR_OPS = ("add_rms_norm", "swiglu", "rope_", "add_rms_norm_dim1", "inject_add", "run_steps")


def _fake_writes_in_place(*args, **kwargs) -> None:
    return None


if _C is not None:
    for _name in TENSOR_OPS:
        if hasattr(torch.ops.fastrecur_C, _name):  # an older library (FASTRECUR_EXT_LIBRARY) may lack an op
            torch.library.register_fake(f"fastrecur_C::{_name}")(_fake_writes_in_place)


def available() -> bool:
    """True when ``fastrecur._C`` is built and loaded."""
    return _C is not None


def has_cuda_kernels() -> bool:
    """True when the loaded extension was compiled with its CUDA kernels (False when not available)."""
    return available() and bool(torch.ops.fastrecur_C.has_cuda_kernels())


def cpu_isa() -> str:
    """The x86 instruction set the loaded extension's CPU kernels were compiled for ("avx512_bf16", "avx512",
    "avx2" or "default"); "" when the extension is not available."""
    return str(torch.ops.fastrecur_C.cpu_isa()) if available() else ""


def _not_built_reason() -> str:
    """Why ``fastrecur._C`` did not load, saying where the imported package is: running ``python -m fastrecur...``
    from the root of a source checkout imports that checkout (the current folder comes first on
    ``sys.path``), which has no built extension unless it was built in place."""
    if _OVERRIDE or _MISMATCH:
        return f"fastrecur._C is not available ({_IMPORT_ERROR})"
    package = os.path.dirname(os.path.abspath(__file__))
    built = sorted(f for f in os.listdir(package) if f.startswith("_C.") and f.endswith((".so", ".pyd")))
    if built:
        return (
            f"fastrecur._C at {os.path.join(package, built[0])} could not be loaded ({_IMPORT_ERROR}); it was "
            "probably built against another torch: rebuild it (pip install --no-build-isolation -e . in a source "
            "checkout, else reinstall fastrecur)"
        )
    checkout = os.path.isfile(os.path.join(os.path.dirname(package), "setup.py"))
    where = (
        f"fastrecur._C is not available: the imported fastrecur package is at {package}, which has no built extension"
    )
    fix = (
        "run from another folder (to import the installed fastrecur) or build in place with "
        "`pip install --no-build-isolation -e .`"
    )
    if checkout:
        return f"{where}; it is a source checkout: {fix}"
    return (
        f"{where}; if that is a source checkout, {fix}; otherwise reinstall fastrecur with a C++ compiler "
        "(FASTRECUR_NO_EXT unset)"
    )


def status() -> str:
    """One line saying whether the extension is usable, and if not, why (and where the imported package is)."""
    if not available():
        return _not_built_reason()
    cuda = "with CUDA kernels" if has_cuda_kernels() else "CPU only (built without nvcc or a CUDA build of torch)"
    return f"fastrecur._C loaded from {_C.__file__}, {cuda}, CPU kernels for {cpu_isa()}"


def ops():
    """The op namespace ``torch.ops.fastrecur_C``; raises RuntimeError with :func:`status` if not built."""
    if not available():
        raise RuntimeError(status())
    return torch.ops.fastrecur_C


def workspace_info() -> dict:
    """Counters of the native workspace cache.

    Keys: ``allocations`` (workspace buffers allocated since load; a repeated call with the same or smaller
    shapes adds none), ``entries`` (cached buffers: one per device, CUDA stream and dtype), ``bytes`` (held by
    the cache), ``last_call_ops`` (native ops -- ATen calls and fused kernels -- the last ``run_steps``
    issued) and ``last_call_per_item`` (whether that call ran in the CPU per-item mode)."""
    allocs, entries, nbytes, last_ops, per_item = ops().workspace_info()
    return {
        "allocations": allocs,
        "entries": entries,
        "bytes": nbytes,
        "last_call_ops": last_ops,
        "last_call_per_item": bool(per_item),
    }


def gemm_choices() -> dict:
    """The CPU GEMM library the C++ loop measured fastest for each GEMM site seen so far in this process
    (``run_steps_cpp(gemm="auto")``, the default): key ``"site|operand shapes x strides|dtype|threads|mode"`` ->
    ``"aten"``, ``"onednn"`` or ``"onednn_fused"`` (SwiGLU sites only). Empty before the first measured call
    and on CUDA."""
    return dict(line.rsplit("=", 1) for line in ops().gemm_choices())


def clear_workspaces() -> None:
    """Free the cached workspaces (they are re-allocated by the next call)."""
    ops().clear_workspaces()
