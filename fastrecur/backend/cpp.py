"""The C++ backend: the no-grad recursion of an ACT step as one native call (``torch.ops.fastrecur_C.run_steps``,
through :func:`fastrecur.core.cpp_runner.run_steps_cpp`), in place, optionally replayed from a CUDA graph; the
grad tail of a training step with autograd on the fastest tail backend here (Triton on CUDA when it covers the
model, else eager).

Weight packing: the loop takes every block's weights already cast to the activation dtype; the casts are cached
per model until a parameter changes (in-place optimiser steps bump its version, ``.to()`` moves change its
address). On the CPU, weights multiplied from the right are stored as ``W.T`` contiguous (given as
``Wt.t()``), the faster layout for GEMMs on few rows.

Model settings read here (attributes of the model's ``inner``): ``use_cuda_graphs`` (replay the no-grad
recursion from a CUDA graph per shape; see :mod:`fastrecur.backend.graphs`), ``cpp_per_item`` (CPU threading
mode; None picks it) and ``cpp_gemm`` (which library runs the CPU GEMMs; None: ``$FASTRECUR_CPU_GEMM`` or
measured; see :func:`fastrecur.core.cpp_runner.run_steps_cpp`).
"""

from __future__ import annotations

import functools
import weakref
from typing import Dict, Optional, Sequence, Tuple

import torch

from fastrecur import _ext
from fastrecur.core import cpp_runner, eager
from fastrecur.core.cpp_runner import AttentionBlockWeights, MixerBlockWeights
from fastrecur.core.eager import Observer
from fastrecur.core.schedule import Step

from .base import Backend, EagerBackend, RunFn


def _cast_level_weights(inner) -> Dict[str, list]:
    """Per level of ``inner.schedule``, the block weights in the activation dtype, as the C++ loop takes them."""
    dt = inner.forward_dtype

    def right(lin):
        # Multiplied from the right (h @ W.T). On CPU, W.T stored contiguous: single-threaded GEMMs on one
        # item's rows run faster in that layout (fp32; equal in bf16).
        w = lin.cast_weight(dt)
        return w.t().contiguous().t() if w.device.type == "cpu" else w

    levels = {}
    with torch.no_grad():
        for name in inner.schedule.levels:
            module = getattr(inner, name)
            blocks = []
            for b in module.layers:
                tail = (right(b.mlp.gate_up_proj), right(b.mlp.down_proj))
                if b.mlp_t_enabled:
                    blocks.append(
                        MixerBlockWeights(
                            b.mlp_t.gate_up_proj.cast_weight(dt), b.mlp_t.down_proj.cast_weight(dt), *tail
                        )
                    )
                else:
                    blocks.append(AttentionBlockWeights(right(b.self_attn.qkv_proj), right(b.self_attn.o_proj), *tail))
            levels[name] = blocks * module.repeat
    return levels


@functools.lru_cache(maxsize=1)  # the library is loaded once per process; every ACT step asks ("auto")
def _probe() -> Tuple[bool, str, bool]:
    """(available, reason, has CUDA kernels)."""
    ok = _ext.available()
    return ok, _ext.status(), ok and _ext.has_cuda_kernels()


class CppBackend(Backend):
    """The C++ in-place loop (CPU kernels, CUDA kernels where built) for every no-grad step."""

    name = "cpp"

    def __init__(self, tail: Backend, cuda_tail: Optional[Backend] = None):
        # tail: runs the grad tail (autograd) on the CPU; cuda_tail: on CUDA, when it is available and fits.
        self._tail, self._cuda_tail = tail, cuda_tail
        self._packed: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
        self._eager = EagerBackend()

    def status(self) -> Tuple[bool, str]:
        return _probe()[:2]

    def has_cuda_kernels(self) -> bool:
        """Whether the loaded extension was built with its CUDA kernels."""
        return _probe()[2]

    def tail_backend(self, inner, device: torch.device) -> Backend:
        """The backend for the grad tail of a training step on ``device``."""
        t = self._cuda_tail
        if device.type == "cuda" and t is not None and t.status()[0] and t.supports(inner.config)[0]:
            return t
        return self._tail

    def packed_weights(self, inner) -> Dict[str, list]:
        """The cast block weights of ``inner``, cached until a parameter changes."""
        key = tuple(
            (p.data_ptr(), p._version) for name in inner.schedule.levels for p in getattr(inner, name).parameters()
        )
        hit = self._packed.get(inner)
        if hit is not None and hit[0] == key:
            return hit[1]
        levels = _cast_level_weights(inner)
        self._packed[inner] = (key, levels)
        return levels

    def run_fn(self, inner, steps: Sequence[Step], for_capture: bool = False) -> RunFn:
        steps = tuple(steps)
        heads, eps = inner.config.num_heads, inner.config.rms_norm_eps
        weights_of = (lambda: _cast_level_weights(inner)) if for_capture else (lambda: self.packed_weights(inner))

        def run(states, x):
            cs = inner.cos_sin()
            cos, sin = cs if cs is not None else (None, None)
            # Looked up at call time, so instruments that wrap it (fastrecur.bench.counters) see every call.
            cpp_runner.run_steps_cpp(
                steps,
                states,
                x,
                weights_of(),
                cos,
                sin,
                num_heads=heads,
                eps=eps,
                per_item=getattr(inner, "cpp_per_item", None),
                gemm=getattr(inner, "cpp_gemm", None),
            )

        return run

    def workspace_state(self) -> Optional[Tuple[int, int]]:
        info = _ext.workspace_info()
        return info["allocations"], info["bytes"]

    def run_no_grad(self, inner, steps: Sequence[Step], states: Dict[str, torch.Tensor], x: torch.Tensor) -> None:
        """``steps`` through the C++ loop on private, contiguous copies of ``states`` (rebound in the dict; the
        caller's tensors stay untouched), from a CUDA graph when ``inner.use_cuda_graphs`` and ``x`` is on CUDA."""
        with torch.no_grad():
            for k in inner.schedule.states:
                states[k] = states[k].detach().clone(memory_format=torch.contiguous_format)
            x = x.detach().contiguous()
            if getattr(inner, "use_cuda_graphs", False) and x.is_cuda:
                from .graphs import graphs_for

                graphs_for(inner).run(tuple(steps), states, x, self)
            else:
                self.run_fn(inner, steps)(states, x)

    def run_step(self, inner, states: Dict[str, torch.Tensor], x: torch.Tensor, observer: Observer = None) -> None:
        if observer is not None:  # the observer must see every update: only the Python loop reports them
            self._eager.run_step(inner, states, x, observer)
            return
        _ext.ops()  # RuntimeError with the reason when the extension is not built
        grad = torch.is_grad_enabled()
        schedule = inner.schedule
        self.run_no_grad(inner, schedule.no_grad_steps if grad else schedule.steps, states, x)
        if grad:
            eager.run_steps(
                schedule.grad_steps,
                states,
                x,
                self.tail_backend(inner, x.device).level_fns(inner),
                first_index=schedule.grad_start,
            )

    def per_token_loss(self, loss_type: str, device: torch.device):
        t = self._cuda_tail
        use = t if device.type == "cuda" and t is not None and t.status()[0] else self._tail
        return use.per_token_loss(loss_type, device)


__all__ = ["CppBackend"]
