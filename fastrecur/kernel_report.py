"""``python -m fastrecur.kernel_report``: static GPU facts about every Triton kernel, without a GPU.

For each kernel (from each ``fastrecur.kernels.<op>.compile_targets()``) and each target (sm_90a Hopper,
sm_80 Ampere; with the tile sizes its launcher picks there) it compiles ahead of time and prints registers,
shared memory, local memory (LOCAL), the stack frame (STACK: where ptxas puts register spills), the widest
global load in the SASS (``LDG.E.128`` = 16 bytes) and the tensor-core instruction used (HGMMA =
Hopper wgmma, HMMA = mma.sync, none). Then, for the TRM-Sudoku (B=768, S=97, D=512) and TRM-Maze (S=916)
shapes, the bytes each fused op must move and its FLOPs against the eager sequence it replaces.

Must run with ``TRITON_INTERPRET`` unset (the interpreter replaces kernels by Python functions).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, List

KERNEL_MODULES = ("add_rms_norm", "swiglu_mlp", "token_mix", "rotary_attention", "stablemax_ce")
TARGETS = {"sm_90a": ("cuda", 90, 32), "sm_80": ("cuda", 80, 32)}


def _bin(tool: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)


def cubin_facts(cubin: bytes) -> Dict[str, object]:
    """Registers, shared memory, spill bytes (LOCAL), stack frame, widest global load and tensor-core kind."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        res = subprocess.run([_bin("cuobjdump"), "-res-usage", path], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([_bin("nvdisasm"), path], capture_output=True, text=True, check=True).stdout
    finally:
        os.remove(path)
    num = lambda key: int(m.group(1)) if (m := re.search(rf"\b{key}:(\d+)", res)) else 0  # noqa: E731
    widths = [int(w) for w in re.findall(r"LDG\.E(?:\.[A-Z_]+)*?\.(\d+)", sass)]
    plain = re.search(r"LDG\.E(?:\.(?:U|S)(?:8|16)|\.(?:EL|LTC\d+B|CONSTANT|STRONG\.\w+))*\s", sass)
    widest = max(widths) if widths else (4 if plain or "LDG" in sass else 0)
    tc = "HGMMA" if "HGMMA" in sass else ("HMMA" if "HMMA" in sass else "none")
    return {
        "registers": num("REG"),
        "shared_bytes": num("SHARED"),
        "spill_bytes": num("LOCAL"),
        "stack_bytes": num("STACK"),
        "widest_load_bytes": widest // 8 if widest >= 32 else widest,
        "tensor_core": tc,
    }


def _compile_targets(mod, target) -> List[dict]:
    """``mod.compile_targets()`` for ``target``: a module whose tile sizes depend on the architecture takes a
    ``capability`` argument, so each target is compiled with the configuration its launcher uses there."""
    if "capability" in inspect.signature(mod.compile_targets).parameters:
        return mod.compile_targets(capability=(target[1] // 10, target[1] % 10))
    return mod.compile_targets()


def kernel_rows(modules=KERNEL_MODULES, targets=TARGETS) -> List[dict]:
    """One row per kernel, ``compile_targets()`` entry and target: ``cubin_facts``, or ``error`` when the import
    or the compile failed."""
    rows = []
    for mod_name in modules:
        try:
            from fastrecur.kernels._common import compile_spec

            mod = importlib.import_module(f"fastrecur.kernels.{mod_name}")
        except ImportError as e:
            rows.append({"module": mod_name, "error": f"import failed: {e}"})
            continue
        per_target = [(tname, target, _compile_targets(mod, target)) for tname, target in targets.items()]
        for i in range(len(per_target[0][2])):
            for tname, target, specs in per_target:
                spec = specs[i]
                row = {"module": mod_name, "kernel": spec["name"], "target": tname}
                try:
                    row.update(cubin_facts(compile_spec(spec, target).asm["cubin"]))
                except Exception as e:  # report, do not hide: a kernel that fails to compile is a finding
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                rows.append(row)
    return rows


class _CountBytes:
    """A dispatch mode summing the bytes each ATen op reads and writes (its tensor inputs and outputs).

    Views are free. On meta tensors nothing is computed, so the eager sequence of a fused op can be
    counted at full TRM shapes on any machine. SDPA decomposes to its math path on meta (as on CPU); on a
    GPU eager SDPA would take a flash kernel and move less: the attention row is an upper bound there.
    """

    _FREE = {
        "view",
        "_unsafe_view",
        "t",
        "transpose",
        "slice",
        "expand",
        "unsqueeze",
        "permute",
        "split",
        "detach",
        "select",
        "chunk",
        "split_with_sizes",
        "alias",
        "squeeze",
        "reshape",
        "as_strided",
    }

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                import torch
                from torch.utils._pytree import tree_flatten

                out = func(*args, **(kwargs or {}))
                if func._overloadpacket.__name__ not in counter._FREE:
                    counter.bytes += sum(
                        t.numel() * t.element_size()
                        for t in tree_flatten((args, kwargs, out))[0]
                        if isinstance(t, torch.Tensor)
                    )
                    counter.ops += 1
                return out

        self.mode = Mode()
        self.bytes = 0
        self.ops = 0


def _nbytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def traffic_rows() -> List[dict]:
    """Per fused op and TRM shape: FLOPs, bytes the eager sequence moves (counted op by op on meta tensors)
    and the bytes the fused op must move (its inputs, weights, outputs and saved fp32 statistics), bf16."""
    import torch

    from fastrecur.nn.blocks import swiglu_intermediate_size
    from fastrecur.ops import reference as R

    bf, f32 = torch.bfloat16, torch.float32
    meta = lambda *shape, dt=bf: torch.empty(*shape, device="meta", dtype=dt)  # noqa: E731
    rows = []
    for shape, (B, S) in {"TRM-Sudoku": (768, 97), "TRM-Maze": (768, 916)}.items():
        D, H, hd, V = 512, 8, 64, 11
        I, It, M = swiglu_intermediate_size(D, 4), swiglu_intermediate_size(S, 4), B * S
        h, r, wgu, wd = meta(B, S, D), meta(B, S, D), meta(2 * I, D), meta(D, I)
        wtgu, wtd = meta(2 * It, S), meta(S, It)
        qkv, cos, sin = meta(B, S, 3 * D), meta(S, hd, dt=f32), meta(S, hd, dt=f32)
        logits, labels = meta(B, S, V), torch.empty(B, S, device="meta", dtype=torch.long)
        stats = meta(M, dt=f32)
        cases = [
            ("add_rms_norm", lambda: R.add_rms_norm(h, r, 1e-5), 4 * M * D, _nbytes(h, r, h, stats)),
            (
                "swiglu_mlp_block",
                lambda: R.swiglu_mlp_block(h, wgu, wd, 1e-5),
                6 * M * D * I,
                _nbytes(h, wgu, wd, h, stats) + 2 * M * I * 2,
            ),  # act written once and read once
            (
                "token_mix_block",
                lambda: R.token_mix_block(h, wtgu, wtd, 1e-5),
                6 * B * S * D * It,
                _nbytes(h, wtgu, wtd, h) + 2 * B * It * D * 2 + B * D * 4,
            ),
            (
                "rotary_attention",
                lambda: R.rotary_attention(qkv, cos, sin, H),
                4 * B * H * S * S * hd,
                _nbytes(qkv, cos, sin, h, meta(B * H * S, dt=f32)),
            ),
            (
                "stablemax_cross_entropy",
                lambda: R.stablemax_cross_entropy(logits, labels),
                8 * M * V,
                _nbytes(logits, labels, meta(M, dt=torch.float64)),
            ),
        ]
        for op, fn, flops, fused in cases:
            if op == "token_mix_block" and S > 97:
                continue  # TRM-MLP is a Sudoku configuration (the reference reports 0% on Maze)
            c = _CountBytes()
            with c.mode:
                fn()
            rows.append(
                {
                    "shape": shape,
                    "op": op,
                    "flops": flops,
                    "eager_ops": c.ops,
                    "eager_bytes": c.bytes,
                    "fused_bytes": fused,
                }
            )
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastrecur.kernel_report", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    a = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("kernel_report: unset TRITON_INTERPRET (the interpreter has no compiled kernels to inspect)")
    rows, traffic = kernel_rows(), traffic_rows()
    if a.json:
        json.dump({"kernels": rows, "traffic": traffic}, sys.stdout, indent=1)
        print()
        return
    print(f"{'kernel':45s} {'target':7s} {'regs':>5s} {'smem':>7s} {'spill':>6s} {'stack':>6s} {'ldg':>4s} {'tc':>6s}")
    for r in rows:
        name = f"{r['module']}.{r.get('kernel', '?')}"
        if "error" in r:
            print(f"{name:45s} {r.get('target', ''):7s} ERROR {r['error']}")
        else:
            print(
                f"{name:45s} {r['target']:7s} {r['registers']:5d} {r['shared_bytes']:7d} {r['spill_bytes']:6d} "
                f"{r['stack_bytes']:6d} {r['widest_load_bytes']:4d} {r['tensor_core']:>6s}"
            )
    print(
        "\nForward traffic, bf16 (eager: counted op by op on meta tensors; fused: inputs + weights + outputs + stats)"
    )
    print(f"{'shape':11s} {'op':24s} {'GFLOP':>8s} {'eager ops':>9s} {'eager MB':>9s} {'fused MB':>9s} {'ratio':>6s}")
    for t in traffic:
        print(
            f"{t['shape']:11s} {t['op']:24s} {t['flops'] / 1e9:8.1f} {t['eager_ops']:9d} {t['eager_bytes'] / 1e6:9.1f} "
            f"{t['fused_bytes'] / 1e6:9.1f} {t['eager_bytes'] / t['fused_bytes']:5.1f}x"
        )


if __name__ == "__main__":
    main()
