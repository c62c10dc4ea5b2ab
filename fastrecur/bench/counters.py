"""Counters: kernel launches per ACT step and bytes saved for backward."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from fastrecur.models import ACTLossHead

from .common import TRITON_LAUNCH_RANGE, _log, _sync, _triton_version, cpp_usable, triton_usable
from .models import build, run_model_case, sudoku_batch, sudoku_cfg
from .report import _fmt, _mib

# ATen ops that launch no kernel: views and metadata, allocations, no-op conversions.
_NO_KERNEL = {
    "as_strided",
    "view",
    "_unsafe_view",
    "reshape",
    "_reshape_alias",
    "transpose",
    "t",
    "slice",
    "narrow",
    "select",
    "unsqueeze",
    "squeeze",
    "expand",
    "permute",
    "alias",
    "detach",
    "detach_",
    "resolve_conj",
    "resolve_neg",
    "split",
    "split_with_sizes",
    "chunk",
    "unbind",
    "view_as",
    "lift_fresh",
    "set_",
    "empty",
    "empty_strided",
    "empty_like",
    "new_empty",
    "new_empty_strided",
    "to",
    "contiguous",
    "expand_as",
    "unflatten",
    "flatten",
    "numpy_T",
    "type_as",
    "is_nonzero",
    "item",
    "_local_scalar_dense",
    "result_type",
    "_has_compatible_shallow_copy_type",
    "is_same_size",
    "requires_grad_",
    "retain_grad",
    "_version",
    "record_stream",
    "_reshape_copy",
    "movedim",
    "swapaxes",
}


class TritonLaunchCounter:
    """Counts Triton kernel launches of ``fastrecur.kernels`` while active, by wrapping each kernel's ``run``
    (what ``kernel[grid](...)`` calls, compiled or interpreted), innermost kernel only.

    ``execute=False`` counts without running the kernels (their outputs stay uninitialised): the number of
    launches is decided by the Python launchers, not by the kernels' data, so on a CPU the counts can be
    taken without paying for the interpreter (``TRITON_INTERPRET=1`` must still be set, for the ops' device
    check). Values computed that way are garbage; only counts and saved-tensor sizes are meaningful."""

    def __init__(self, execute: bool = True):
        self.execute = execute
        self.count = 0
        self.by_kernel: Dict[str, int] = {}
        self._patched: list = []

    def __enter__(self):
        import pkgutil

        try:
            from triton.runtime.jit import KernelInterface

            import fastrecur.kernels as kpkg
        except ImportError:
            return self
        for info in pkgutil.iter_modules(kpkg.__path__):
            mod = importlib.import_module(f"fastrecur.kernels.{info.name}")
            for attr in vars(mod).values():
                k = attr
                while isinstance(getattr(k, "fn", None), KernelInterface):
                    k = k.fn  # autotuner / heuristics wrappers: count the kernel itself once
                if not isinstance(k, KernelInterface) or "run" in vars(k):
                    continue
                self._patched.append(k)
                k.run = self._wrap(k, k.run)
        return self

    def _wrap(self, kernel, run):
        name = getattr(kernel, "__name__", None) or getattr(getattr(kernel, "fn", None), "__name__", "kernel")

        def counted(*args, **kwargs):
            if kwargs.get("warmup", False):
                return run(*args, **kwargs)
            self.count += 1
            self.by_kernel[name] = self.by_kernel.get(name, 0) + 1
            # A named range: ATen ops inside it are the launcher's own (the interpreter's copies), not kernels.
            with torch.profiler.record_function(TRITON_LAUNCH_RANGE + name):
                return run(*args, **kwargs) if self.execute else None

        return counted

    def __exit__(self, *exc):
        for k in self._patched:
            del k.run
        self._patched.clear()
        return False


class CppOpCounter:
    """Sums the C++ loop's own count of native ops (ATen calls + fused kernels) over every
    ``run_steps_cpp`` call while active, read from ``workspace_info()`` right after each call."""

    def __init__(self):
        self.ops = 0
        self.calls = 0

    def __enter__(self):
        from fastrecur.core import cpp_runner

        self._mod, self._orig = cpp_runner, cpp_runner.run_steps_cpp

        def counted(*args, **kwargs):
            from fastrecur import _ext

            out = self._orig(*args, **kwargs)
            self.calls += 1
            self.ops += _ext.workspace_info()["last_call_ops"]
            return out

        cpp_runner.run_steps_cpp = counted  # the models import it at call time
        return self

    def __exit__(self, *exc):
        self._mod.run_steps_cpp = self._orig
        return False


def _inside(event, prefix: str) -> bool:
    p = event.cpu_parent
    while p is not None:
        if p.name.startswith(prefix):
            return True
        p = p.cpu_parent
    return False


def count_launches(
    fn: Callable[[], Any], device: torch.device, triton_counter: Optional[TritonLaunchCounter] = None
) -> dict:
    """Kernel launches of one call of ``fn``.

    ``aten``: ATen ops that launch a kernel -- leaves of the profiler's op tree, views and allocations
    excluded -- including those issued inside fastrecur's custom ops, excluding those inside the C++ loop
    and inside a Triton launch (the interpreter's own copies). ``triton``: Triton launches.
    ``cpp_native``: the C++ loop's own count of the native ops it issued (its ATen calls and fused kernels).
    ``total`` is their sum. On CUDA, ``cuda_kernels`` is the profiler's count of device kernels.
    ``triton_counter``: an active counter to read (e.g. a non-executing one); by default one is made here."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with contextlib.ExitStack() as stack:
        tl = triton_counter or stack.enter_context(TritonLaunchCounter())
        cc = stack.enter_context(CppOpCounter())
        t0, k0 = tl.count, dict(tl.by_kernel)
        with profile(activities=acts) as prof:
            fn()
            _sync(device)
    launches = tl.count - t0
    by_kernel = {k: v - k0.get(k, 0) for k, v in tl.by_kernel.items() if v != k0.get(k, 0)}
    events = prof.events()
    aten = 0
    for e in events:
        if not e.name.startswith("aten::") or e.name[6:] in _NO_KERNEL:
            continue
        if any(ch.name.startswith("aten::") for ch in e.cpu_children):
            continue  # composite: its children are counted
        if _inside(e, "fastrecur_C::run_steps") or _inside(e, TRITON_LAUNCH_RANGE):
            continue
        aten += 1
    out = {
        "aten": aten,
        "triton": launches,
        "cpp_native": cc.ops,
        "cpp_calls": cc.calls,
        "total": aten + launches + cc.ops,
        "triton_by_kernel": by_kernel,
    }
    if device.type == "cuda":
        out["cuda_kernels"] = sum(
            1 for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA
        )
    return out


def saved_bytes(fn: Callable[[], Any], model: torch.nn.Module) -> dict:
    """Bytes saved for backward during one call of ``fn`` (``saved_tensors_hooks``): distinct storages that
    are not the model's parameters or buffers (the activations a training step keeps alive)."""
    own = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    seen: Dict[int, int] = {}
    count = [0, 0]

    def pack(t):
        count[0] += 1
        st = t.untyped_storage()
        if st.data_ptr() not in own:
            seen[st.data_ptr()] = st.nbytes()
        count[1] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return {"saved_bytes": sum(seen.values()), "saved_tensors": count[0], "saved_tensor_bytes": count[1]}


def counter_rows(
    arch: str,
    backend: str,
    device: torch.device,
    hidden: int,
    dtype: str,
    batch: int = 1,
    seq_len: int = 81,
    execute_triton: bool = True,
) -> dict:
    """Launches per eval ACT step and per training step (forward + backward, no optimizer) and bytes saved
    for backward per training step, for ``arch`` on ``backend`` (eager, triton or cpp).
    ``execute_triton=False``: count Triton launches without running the kernels (see :class:`TritonLaunchCounter`)."""
    with TritonLaunchCounter(execute=execute_triton) as tl:
        row = _counter_rows(arch, backend, device, hidden, dtype, batch, seq_len, tl)
    if not execute_triton:
        row["triton_executed"] = False
    return row


def _counter_rows(arch, backend, device, hidden, dtype, batch, seq_len, tl) -> dict:
    torch.manual_seed(0)
    cfg = sudoku_cfg(arch, dtype, batch, hidden, seq_len)
    data = sudoku_batch(cfg, device)
    model = build(arch, cfg, backend).to(device)
    model.check_inputs = False
    row = {"arch": arch, "backend": backend, "hidden": hidden, "seq_len": seq_len, "batch": batch, "dtype": dtype}
    model.eval()
    with torch.no_grad():
        carry = model.initial_carry(data)
        carry, _ = model(carry=carry, batch=data)  # warm: loads the batch, builds caches

        def eval_step():
            model(carry=carry, batch=data)

        eval_step()
        row["eval_step"] = count_launches(eval_step, device, tl)
    head = ACTLossHead(model).train()
    tstate = {"carry": head.initial_carry(data)}

    def train_step():
        c, loss, _, _, _ = head(carry=tstate["carry"], batch=data)
        loss.backward()
        tstate["carry"] = c
        model.zero_grad(set_to_none=True)

    train_step()
    row["train_step"] = count_launches(train_step, device, tl)
    row.update(saved_bytes(train_step, model))
    return row


def _counters_subprocess(archs: Sequence[str], hidden: int, seq_len: int, dtype: str, timeout: float) -> List[dict]:
    """Triton launch counts on the CPU: :func:`counter_rows` for backend triton in a subprocess with
    ``TRITON_INTERPRET=1`` (the variable must be set before the kernels are defined), kernels not executed."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    code = (
        "import json, sys; from fastrecur.bench import counter_rows; import torch; "
        f"rows = [counter_rows(a, 'triton', torch.device('cpu'), {hidden}, {dtype!r}, 1, {seq_len}, "
        "execute_triton=False) "
        f"for a in {list(archs)!r}]; "
        "print('@@JSON@@' + json.dumps(rows))"
    )
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    for line in p.stdout.splitlines():
        if line.startswith("@@JSON@@"):
            return json.loads(line[len("@@JSON@@") :])
    tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
    raise RuntimeError(f"interpreter subprocess failed (rc {p.returncode}): {' | '.join(tail)}")


def run_counters(a: argparse.Namespace, device: torch.device) -> Tuple[List[dict], dict]:
    """The counters section: every arch x backend (eager, triton, cpp). Triton on a CPU without the
    interpreter enabled in this process runs in an interpreter subprocess at hidden 64."""
    rows: List[dict] = []
    interp_here = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    tri_ok, tri_why = triton_usable(device, requested_on_cpu=True)
    cpp_ok, cpp_why = cpp_usable()
    sub_archs = []
    dry = device.type == "cpu"  # on CPU, count launches without interpreting the kernels
    for arch in a.arch_list:
        for backend in ("eager", "triton", "cpp"):
            if backend == "triton" and device.type == "cpu" and not interp_here and _triton_version():
                sub_archs.append(arch)
                continue
            ok, why = {"eager": (True, ""), "triton": (tri_ok, tri_why), "cpp": (cpp_ok, cpp_why)}[backend]
            if not ok:
                rows.append({"arch": arch, "backend": backend, "skipped": why})
                continue
            try:
                rows.append(
                    counter_rows(
                        arch,
                        backend,
                        device,
                        a.hidden,
                        a.dtype,
                        seq_len=a.seq_len,
                        execute_triton=not (dry and backend == "triton"),
                    )
                )
            except Exception as e:
                rows.append({"arch": arch, "backend": backend, "error": f"{type(e).__name__}: {e}"})
            r = rows[-1]
            _log(
                f"counters {arch:8s} {backend:7s} "
                + (
                    f"{r['eval_step']['total']} launches/eval step, saved {r['saved_bytes'] / 2**20:.2f} MiB"
                    if "eval_step" in r
                    else (r.get("error") or r.get("skipped"))
                )
            )
    if sub_archs:
        try:
            sub = _counters_subprocess(sub_archs, a.hidden, a.seq_len, a.dtype, timeout=600)
        except Exception as e:
            sub = [{"arch": arch, "backend": "triton", "error": f"{type(e).__name__}: {e}"} for arch in sub_archs]
        for r in sub:
            _log(
                f"counters {r['arch']:8s} triton  "
                + (
                    f"{r['eval_step']['total']} launches/eval step (counted at the launchers, kernels not run)"
                    if "eval_step" in r
                    else r.get("error", "")
                )
            )
        rows += sub
    order = {arch: i for i, arch in enumerate(a.arch_list)}
    rows.sort(key=lambda r: (order[r["arch"]], ("eager", "triton", "cpp").index(r["backend"])))
    return rows, {"hidden": a.hidden, "seq_len": a.seq_len, "batch": 1, "dtype": a.dtype, "triton_executed": not dry}


def run_grad_cycles(a: argparse.Namespace, device: torch.device) -> List[dict]:
    """TRM and SRM trained with grad_cycles = 1..H_cycles at the first batch size: saved-for-backward bytes
    (``saved_tensors_hooks``), training step time and peak memory (CUDA)."""
    rows = []
    b = a.batch_list[0]
    variants = ["eager"] + (["triton"] if triton_usable(device, a.triton_cpu)[0] else [])
    for arch in [x for x in ("trm", "srm") if x in a.arch_list]:
        for gc in range(1, sudoku_cfg(arch, a.dtype, b)["H_cycles"] + 1):
            for variant in variants:
                row = run_model_case(arch, "train", b, variant, device, a, a.warmup, a.iters, grad_cycles=gc)
                if "error" not in row:
                    try:
                        cfg = dict(sudoku_cfg(arch, a.dtype, b, a.hidden, a.seq_len), grad_cycles=gc)
                        model = build(arch, cfg, variant).to(device)
                        model.check_inputs = False
                        data = sudoku_batch(cfg, device)
                        head = ACTLossHead(model).train()
                        carry = head.initial_carry(data)
                        row.update(saved_bytes(lambda: head(carry=carry, batch=data)[1].backward(), model))
                    except Exception as e:
                        row["error"] = f"{type(e).__name__}: {e}"
                rows.append(row)
                _log(
                    f"grad_cycles {arch} {gc} {variant}: saved {_fmt(_mib(row.get('saved_bytes')))} MiB, "
                    f"{_fmt(row.get('ms'), '.1f')} ms"
                )
    return rows
