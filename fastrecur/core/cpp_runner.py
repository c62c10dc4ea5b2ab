"""Run the no-grad part of a :class:`~fastrecur.core.schedule.Schedule` as one native call.

:func:`run_steps_cpp` encodes the steps into an integer program (cached per step sequence), flattens the
level weights and calls ``torch.ops.fastrecur_C.run_steps``, which updates the state tensors **in place**:
no Python per op, and no allocation per step (GEMMs write into a workspace the extension allocates once per
device/stream/dtype and reuses; only scaled-dot-product attention allocates its output internally).

Semantics are those of the eager loop over the same steps:
- ``Update(t, level, inject)``: ``state[t] = level(state[t] + (inject[0] + inject[1] + ...))``;
- ``Copy(t, s)``: ``state[t] = state[s]``. The eager loop rebinds the name; here the values are copied into
  ``t``'s own buffer, which gives the same values because nothing is ever updated through an alias.
  A Copy target that is not in ``states`` is a scratch state: the runner allocates it and adds it to
  ``states``.

Program encoding (one int64 row per step, CPU): ``[opcode, target, level | source, n_inject, inject...]``
with opcode 0 = Update, 1 = Copy, and slots 0 = ``x``, 1.. = the state tensors in :attr:`_Program.slots`
order.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Dict, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch

from fastrecur import _ext
from fastrecur.core.schedule import INPUT, Copy, Step, Update

_OP_UPDATE, _OP_COPY = 0, 1
_KIND_ATTENTION, _KIND_MIXER = 0, 1
_PROGRAM_HEADER = 4
_ACT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class AttentionBlockWeights(NamedTuple):
    """Weights of one attention block, already in the activation dtype, in nn.Linear layout [out, in]
    (qkv, o, gate_up and down may also be ``Wt.t()`` with ``Wt`` contiguous: the faster layout for CPU GEMMs
    on few rows).

    qkv: [3 * H * hd, D]; o: [D, H * hd]; gate_up: [2 * I, D] (gate first); down: [D, I]."""

    qkv: torch.Tensor
    o: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


class MixerBlockWeights(NamedTuple):
    """Weights of one token-mixer block (TRM ``mlp_t``), already in the activation dtype.

    t_gate_up: [2 * I_t, L]; t_down: [L, I_t] (the token MLP over the sequence axis L), contiguous;
    gate_up: [2 * I, D]; down: [D, I] (the channel MLP), contiguous or ``Wt.t()`` with ``Wt`` contiguous."""

    t_gate_up: torch.Tensor
    t_down: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


BlockWeights = Union[AttentionBlockWeights, MixerBlockWeights]


@dataclass(frozen=True)
class _Program:
    program: torch.Tensor  # int64 [n_steps, 4 + max_inject], CPU
    slots: Tuple[str, ...]  # state name of slot i + 1
    scratch: Tuple[str, ...]  # slots the runner allocates (Copy targets not passed in)
    levels: Tuple[str, ...]  # level name of level index i


@functools.lru_cache(maxsize=256)
def _encode(steps: Tuple[Step, ...], given: Tuple[str, ...]) -> _Program:
    """Encode ``steps`` for the states named in ``given`` (sorted). Raises ValueError for undefined names."""
    defined = set(given)
    used, scratch, levels = [], [], []
    for i, step in enumerate(steps):
        if isinstance(step, Update):
            reads = (step.target,) + tuple(step.inject)
            if step.level not in levels:
                levels.append(step.level)
        elif isinstance(step, Copy):
            reads = (step.source,)
        else:
            raise TypeError(f"steps[{i}] must be an Update or a Copy, got {type(step).__name__}")
        for name in reads:
            if name == INPUT:
                continue
            if name not in defined:
                raise ValueError(f"steps[{i}] reads state {name!r}, which is neither in states nor copied before")
            if name not in used:
                used.append(name)
        if step.target == INPUT:
            raise ValueError(f"steps[{i}] writes the input {INPUT!r}, which is read-only")
        if step.target not in defined:  # a Copy into a new name: scratch state
            defined.add(step.target)
            scratch.append(step.target)
        if step.target not in used:
            used.append(step.target)
    slots = tuple(n for n in given if n in used) + tuple(scratch)
    index = {INPUT: 0, **{n: i + 1 for i, n in enumerate(slots)}}
    width = _PROGRAM_HEADER + max([len(s.inject) for s in steps if isinstance(s, Update)] + [1])
    rows = []
    for step in steps:
        if isinstance(step, Update):
            inj = [index[n] for n in step.inject]
            row = [_OP_UPDATE, index[step.target], levels.index(step.level), len(inj)] + inj
        else:
            row = [_OP_COPY, index[step.target], index[step.source], 0]
        rows.append(row + [0] * (width - len(row)))
    program = torch.tensor(rows, dtype=torch.int64).reshape(len(rows), width)
    return _Program(program, slots, tuple(scratch), tuple(levels))


def _span(t: torch.Tensor) -> Tuple[int, int]:
    start = t.data_ptr()
    return start, start + t.numel() * t.element_size()


# Weights the loop multiplies from the right (h @ W.T): they may be given as W = Wt.t() with Wt contiguous.
_TRANSPOSABLE = ("qkv", "o", "gate_up", "down")


def _check_tensor(t, name: str, x: Optional[torch.Tensor] = None, transposable: bool = False) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if x is not None:
        if t.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {t.dtype}, expected x's dtype {x.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, expected x's device {x.device}")
    if not t.is_contiguous() and not (transposable and t.dim() == 2 and t.t().is_contiguous()):
        raise ValueError(
            f"{name} must be contiguous" + (" or the transpose of a contiguous tensor" if transposable else "")
        )


# run_steps' gemm argument (csrc/cpu_gemm.h GemmImpl).
GEMM_CHOICES = {"auto": -1, "aten": 0, "onednn": 1, "onednn_fused": 2}
GEMM_ENV = "FASTRECUR_CPU_GEMM"


def _gemm_code(gemm: Optional[str], x: torch.Tensor) -> int:
    """The native code of ``gemm`` (None: $FASTRECUR_CPU_GEMM, else "auto"), checked against x's device."""
    name = "gemm"
    if gemm is None:
        gemm, name = os.environ.get(GEMM_ENV, "auto"), GEMM_ENV
    if gemm not in GEMM_CHOICES:
        raise ValueError(f"{name} must be one of {', '.join(GEMM_CHOICES)}, got {gemm!r}")
    if x.device.type != "cpu" and gemm not in ("auto", "aten"):
        raise ValueError(f"{name}={gemm!r} runs on the CPU only; x is on {x.device}")
    return GEMM_CHOICES[gemm]


def run_steps_cpp(
    steps: Sequence[Step],
    states: Dict[str, torch.Tensor],
    x: torch.Tensor,
    levels: Mapping[str, Sequence[BlockWeights]],
    cos: Optional[torch.Tensor] = None,
    sin: Optional[torch.Tensor] = None,
    num_heads: int = 1,
    eps: float = 1e-5,
    per_item: Optional[bool] = None,
    gemm: Optional[str] = None,
) -> Dict[str, torch.Tensor]:
    """Run ``steps`` (no autograd) through the native loop, updating ``states`` in place.

    Args:
        steps: the Update/Copy steps (e.g. ``schedule.no_grad_steps``).
        states: name -> [B, S, D] contiguous tensor in the activation dtype; distinct, non-overlapping
            buffers, not requiring grad (pass detached carries). Their contents are overwritten; scratch states
            (Copy targets not present) are allocated and added. The same dict is returned.
        x: input embeddings [B, S, D] (float32, bfloat16 or float16), read-only.
        levels: level name -> list of blocks, all :class:`AttentionBlockWeights` or all
            :class:`MixerBlockWeights`, weights in x's dtype and device.
        cos, sin: RoPE tables, fp32 [S, head_dim], or both None (no RoPE). Ignored by mixer blocks.
        num_heads: attention heads (attention blocks only).
        eps: RMSNorm epsilon.
        per_item: CPU only. True: each thread runs whole level calls on its own batch items, so a block's
            intermediates stay in its core's cache; False: the whole batch goes through each op and the threads
            split the op; None (default): per item when torch uses two or more threads and the batch has at
            least as many items as threads. Results agree to GEMM rounding.
        gemm: CPU only: which library runs the loop's GEMMs. ``"aten"`` (``torch.mm``: MKL for fp32, oneDNN
            for 16-bit types), ``"onednn"`` (oneDNN's inner product, through torch's
            ``mkldnn::_linear_pointwise``), ``"onednn_fused"`` (oneDNN with each SwiGLU fused into its GEMMs as
            post-ops: swish on the gate GEMM, a multiply on the up GEMM) or ``"auto"``: each GEMM site timed
            once per process and shape, the fastest kept (ATen unless another is 5 % faster). None (default):
            the environment variable ``FASTRECUR_CPU_GEMM``, else ``"auto"``. Results agree to GEMM rounding;
            fix the choice to reproduce results bit for bit across processes. On CUDA only ``"auto"`` and
            ``"aten"`` (both cuBLAS) are accepted.

    Raises:
        RuntimeError: the extension is not built (see ``fastrecur._ext.status()``).
        TypeError / ValueError: invalid arguments (checked here and again, in full, by the native op).
    """
    ops = _ext.ops()
    if isinstance(steps, (Update, Copy)) or not isinstance(steps, (list, tuple)):
        raise TypeError(f"steps must be a list or tuple of Update/Copy steps, got {type(steps).__name__}")
    if not isinstance(states, dict):
        raise TypeError(f"states must be a dict of name -> tensor, got {type(states).__name__}")
    _check_tensor(x, "x")
    if x.dtype not in _ACT_DTYPES:
        raise TypeError(f"x must be float32, bfloat16 or float16, got {x.dtype}")
    if x.dim() != 3:
        raise ValueError(f"x must be [B, S, D], got shape {tuple(x.shape)}")
    if (cos is None) != (sin is None):
        raise ValueError("cos and sin must be given together (or both None)")
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    if per_item not in (None, True, False):
        raise TypeError(f"per_item must be None, True or False, got {per_item!r}")
    gemm_code = _gemm_code(gemm, x)

    enc = _encode(tuple(steps), tuple(sorted(states)))
    if not steps:
        return states
    for name in enc.slots:
        if name in enc.scratch:
            continue
        t = states[name]
        _check_tensor(t, f"states[{name!r}]", x)
        if t.shape != x.shape:
            raise ValueError(f"states[{name!r}] has shape {tuple(t.shape)}, expected x's shape {tuple(x.shape)}")
        if t.requires_grad:
            raise ValueError(f"states[{name!r}] requires grad; run_steps_cpp updates it in place: pass t.detach()")
    for name in enc.scratch:
        if not (
            isinstance(states.get(name), torch.Tensor)
            and states[name].shape == x.shape
            and states[name].dtype == x.dtype
            and states[name].device == x.device
            and states[name].is_contiguous()
            and not states[name].requires_grad
        ):
            states[name] = torch.empty_like(x, memory_format=torch.contiguous_format)
    tensors = [states[n] for n in enc.slots]
    spans = [(_span(t), n) for t, n in zip(tensors, enc.slots)] + [(_span(x), "x")]
    spans.sort()
    for ((_, end), a), ((start, _), b) in zip(spans, spans[1:]):
        if start < end:
            raise ValueError(f"states {a!r} and {b!r} share memory; every state needs its own buffer")

    kinds = set()
    weights, offsets = [], [0]
    for name in enc.levels:
        if name not in levels:
            raise ValueError(f"levels has no entry {name!r} (needed by the steps); it has {sorted(levels)}")
        blocks = levels[name]
        for j, blk in enumerate(blocks):
            if not isinstance(blk, (AttentionBlockWeights, MixerBlockWeights)):
                raise TypeError(
                    f"levels[{name!r}][{j}] must be AttentionBlockWeights or MixerBlockWeights, "
                    f"got {type(blk).__name__}"
                )
            kinds.add(type(blk))
            for field, w in zip(blk._fields, blk):
                _check_tensor(w, f"levels[{name!r}][{j}].{field}", x, transposable=field in _TRANSPOSABLE)
            weights.extend(blk)
        offsets.append(offsets[-1] + len(blocks))
    if len(kinds) > 1:
        raise TypeError("all blocks must be of one kind (attention or mixer), got both")
    kind = _KIND_MIXER if kinds == {MixerBlockWeights} else _KIND_ATTENTION
    if kind == _KIND_MIXER:
        cos = sin = None
    with torch.no_grad():
        ops.run_steps(
            tensors,
            x,
            enc.program,
            weights,
            offsets,
            cos,
            sin,
            num_heads,
            float(eps),
            kind,
            -1 if per_item is None else int(per_item),
            gemm_code,
        )
    return states
