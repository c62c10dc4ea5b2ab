"""Helpers shared by the kernel files: the interpreter switch, dtype rounding, ``tl.dot`` operand/precision
options, stride tuples, launcher outputs, and ``compile_spec`` (ahead-of-time compile of a ``compile_targets()``
entry, used by ``fastrecur.kernel_report`` and the compile tests).

Every kernel file exports ``compile_targets()``: a list of representative launches, each a dict with ``name``,
``fn`` (the ``@triton.jit`` function), ``signature`` (argument -> Triton type string, as
``triton.compiler.ASTSource`` takes it), ``constexprs`` (including the integer arguments the runtime JIT would
specialise to 1), ``divisible_by_16`` (the pointer/integer arguments the JIT would mark 16-aligned; without them
the compiled code cannot vectorise its loads) and the launch options, either ``options`` (a dict) or
``num_warps``/``num_stages``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = [
    "TL_PTR",
    "interpreting",
    "round_to",
    "round_rne",
    "dot_operand",
    "dot_options",
    "dot_precision",
    "strides3",
    "norm_outputs",
    "compile_spec",
]

# Triton pointer types of the activation dtypes fastrecur supports (for compile signatures).
TL_PTR = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}


# --------------------------------------------------------------------------------------------- device helpers
@triton.jit
def round_to(x, DTYPE: tl.constexpr):
    """Round fp32 ``x`` to DTYPE and back: reproduces where eager torch rounds an intermediate.

    A plain cast: under the interpreter bf16 is truncated, not rounded (see ``round_rne`` for the exact one).
    """
    return x.to(DTYPE).to(tl.float32)


@triton.jit
def round_rne(x, DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """fp32 ``x`` rounded to nearest-even in ``DTYPE``, returned as ``DTYPE``.

    The interpreter converts fp32 to bf16 by truncation; there the rounding is done on the bits first, so the
    conversion itself is exact and the interpreter matches torch (and the GPU's cvt.rn) bit for bit.
    """
    if INTERPRET and DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(DTYPE)


@triton.jit
def dot_operand(x, DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """Round an fp32 tile to the storage dtype for a tensor-core dot (kept fp32 under the interpreter, whose bf16
    dot is broken: same values, same products, fp32 accumulation either way)."""
    y = round_rne(x, DTYPE, INTERPRET)
    if INTERPRET:
        y = y.to(tl.float32)
    return y


# ------------------------------------------------------------------------------------------------ host helpers
def interpreting() -> bool:
    """Whether the kernels were defined under ``TRITON_INTERPRET=1`` (then the interpreter runs them, whatever the
    environment says now). ``triton.jit`` reads the variable when a kernel is defined, and every kernel file
    imports this module first."""
    return not isinstance(round_to, triton.runtime.jit.JITFunction)


def dot_options(dtype: torch.dtype, interpret: bool | None = None) -> dict:
    """Constexprs ``UPCAST`` and ``IN_PREC`` for the ``tl.dot`` calls of the SwiGLU matmul kernels.

    UPCAST: the interpreter computes wrong results for bf16 ``tl.dot`` operands, so there the operands are
    converted to fp32 after loading (fp32 accumulation either way). IN_PREC: fp32 inputs use IEEE fp32
    products (tf32 would break the 1e-5 agreement with eager fp32); 16-bit inputs ignore it.
    ``interpret`` defaults to ``interpreting()`` (compile targets pass False).
    """
    upcast = interpreting() if interpret is None else interpret
    return {"UPCAST": upcast, "IN_PREC": "ieee" if dtype == torch.float32 else "tf32"}


def dot_precision(dtype: torch.dtype, interpret: bool | None = None) -> str:
    """``tl.dot`` input precision of the attention kernels: fp32 inputs use 3xTF32 on the GPU (fp32-level accuracy
    on tensor cores; plain tf32 would round the operands to 10 mantissa bits, and "ieee" lowers to FMA loops that
    spill heavily there); the interpreter's dot is a NumPy fp32 matmul either way. 16-bit operands ignore it.
    ``interpret`` defaults to ``interpreting()`` (compile targets pass False)."""
    interpret = interpreting() if interpret is None else interpret
    return "ieee" if interpret or dtype != torch.float32 else "tf32x3"


def strides3(t) -> tuple[int, int, int]:
    """The strides of a 3-D tensor; zeros for None (an argument the kernel does not read)."""
    return (t.stride(0), t.stride(1), t.stride(2)) if t is not None else (0, 0, 0)


def norm_outputs(x2: torch.Tensor, y=None, rstd=None):
    """Outputs of a launcher ending in a row norm over ``x2 [M, N]``: ``y`` [M, N] in x2's dtype (contiguous) and
    ``rstd`` [M] fp32, each allocated unless given."""
    n_rows, n_cols = x2.shape
    if y is None:
        y = torch.empty((n_rows, n_cols), dtype=x2.dtype, device=x2.device)
    if rstd is None:
        rstd = torch.empty((n_rows,), dtype=torch.float32, device=x2.device)
    return y, rstd


# ------------------------------------------------------------------------------------- ahead-of-time compile
def compile_spec(spec: dict, target=("cuda", 90, 32)):
    """Compile one ``compile_targets()`` entry for ``target`` = ``("cuda", cc, 32)`` without a GPU; returns the
    ``triton.compile`` result (``.asm['ptx']``, ``.asm['cubin']``, ``.metadata``).

    Must run without ``TRITON_INTERPRET`` (the interpreter replaces kernels by Python functions).
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = spec["fn"]
    signature = dict(spec["signature"])
    for name in spec["constexprs"]:
        signature[name] = "constexpr"
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in spec.get("divisible_by_16", ())}
    options = dict(
        spec.get("options") or {"num_warps": spec.get("num_warps", 4), "num_stages": spec.get("num_stages", 3)}
    )
    src = ASTSource(fn=fn, signature=signature, constexprs=dict(spec["constexprs"]), attrs=attrs)
    return triton.compile(src, target=GPUTarget(*target), options=options)
