"""The command line: argument parsing and the run over the chosen sections."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Dict, List, Optional

import torch

from fastrecur.cli import (
    CommandParser,
    InputError,
    check_output_dir,
    non_negative_int,
    positive_int,
    resolve_device,
    run_command,
)

from .common import (
    ARCHS,
    KERNEL_OPS,
    SOLVE_STEPS,
    TRITON_CPU_ENV,
    _loadavg,
    _log,
    environment,
    measure_roofline,
    parse_batches,
    parse_subset,
    triton_usable,
)
from .counters import run_counters, run_grad_cycles
from .kernels import kernel_cases, run_kernel_case
from .models import MODEL_VARIANTS, SOLVE_ONLY, make_optimizer, run_model_case, run_model_floor
from .report import markdown, meta_line, plot, readout


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="smaller batches/model and fewer iterations (CPU: < 15 min)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", default="bench-out", help="results go to OUT/<device>-<date>/")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile on CPU)")
    p.add_argument(
        "--sections",
        default="kernels,models,counters,grad_cycles",
        help="comma-separated subset of kernels,models,counters,grad_cycles",
    )
    p.add_argument("--archs", default=",".join(ARCHS), help=f"comma-separated subset of {','.join(ARCHS)}")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default: 1,64,768; --quick: 1,8)")
    p.add_argument(
        "--hidden", type=positive_int, default=None, help="hidden size of the models (default 512; --quick on CPU: 128)"
    )
    p.add_argument(
        "--seq-len", type=positive_int, default=81, help="puzzle length of the models (81 = Sudoku; smaller for tests)"
    )
    p.add_argument(
        "--solve-steps", type=positive_int, default=SOLVE_STEPS, help="ACT steps per solve (16 = halt_max_steps)"
    )
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument(
        "--kernel-scale",
        default=None,
        choices=["full", "quick", "tiny"],
        help="kernel shapes: full (B=768), quick (B=8; Maze B=1), tiny (tests). Default: quick with --quick",
    )
    p.add_argument("--ops", default=",".join(KERNEL_OPS), help="comma-separated subset of the fused ops")
    p.add_argument(
        "--triton-cpu",
        action="store_true",
        default=os.environ.get(TRITON_CPU_ENV, "0") not in ("", "0"),
        help=f"time Triton on CPU through the interpreter (needs TRITON_INTERPRET=1; env {TRITON_CPU_ENV}=1)",
    )
    p.add_argument(
        "--compile-models",
        default=None,
        help="archs whose models are timed with torch.compile at every batch size (default: all; with --quick "
        "only the first batch size, and on CPU only trm_mlp -- compiling a whole ACT step takes minutes on 2 cores)",
    )
    p.add_argument(
        "--threads", type=positive_int, default=None, help="torch.set_num_threads (default: torch's default; recorded)"
    )
    p.add_argument("--warmup", type=non_negative_int, default=None)
    p.add_argument("--iters", type=positive_int, default=None)
    p.add_argument(
        "--readout",
        metavar="RESULTS_JSON",
        default=None,
        help="print the README 'Results' section from RESULTS_JSON and exit",
    )


SECTIONS = ("kernels", "models", "counters", "grad_cycles")


def _csv(s: Optional[str]) -> List[str]:
    return [x for x in (s or "").split(",") if x]


def _resolve(a: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    """Fill the defaults that depend on --quick and the device; an :class:`InputError` for impossible values."""
    small = a.quick and device.type == "cpu"
    a.hidden = a.hidden or (128 if small else 512)
    a.batch_list = (parse_batches("--batches", a.batches) if a.batches is not None else []) or (
        [1, 8] if small else [1, 8] if a.quick else [1, 64, 768]
    )
    a.kernel_scale = a.kernel_scale or ("quick" if a.quick else "full")
    if a.warmup is None:
        a.warmup = 1 if small else (2 if a.quick else 3)
    if a.iters is None:
        a.iters = 3 if small else (5 if a.quick else 15)
    a.arch_list = parse_subset("--archs", a.archs, ARCHS)
    a.section_list = parse_subset("--sections", a.sections, SECTIONS)
    parse_subset("--ops", a.ops, KERNEL_OPS, allow_empty=True)
    a.compile_archs = (
        set(parse_subset("--compile-models", a.compile_models, ARCHS, allow_empty=True))
        if a.compile_models is not None
        else ({"trm_mlp"} if small else set(ARCHS))
    )
    a.compile_first_batch_only = a.quick and a.compile_models is None
    a.solve_iters = 1 if small else a.iters  # a solve is 16 ACT steps; its first call is the warm-up
    return a


def run(a: argparse.Namespace) -> int:
    if getattr(a, "readout", None):
        if not os.path.isfile(a.readout):
            raise InputError(f"--readout {a.readout!r}: no such file (give a results.json written by fastrecur bench)")
        print(readout(a.readout))
        return 0
    device = resolve_device(a.device)
    a = _resolve(a, device)
    check_output_dir(a.out, try_write=True)
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    t_start = time.perf_counter()
    meta = environment(device, a.quick)
    results: Dict[str, Any] = {
        "meta": meta,
        "args": {k: v for k, v in vars(a).items() if isinstance(v, (str, int, float, bool, list, type(None)))},
    }
    out = os.path.join(a.out, f"{a.device}-{meta['date']}")
    os.makedirs(out, exist_ok=True)
    _log(meta_line(meta))

    if "kernels" in a.section_list:
        results["roofline"] = measure_roofline(device, dtype, a.quick)
        _log(
            f"roofline: {results['roofline']['copy_GBps']:.1f} GB/s, {results['roofline']['matmul_TFLOPs']:.3f} TFLOP/s"
        )
        tri_ok, tri_why = triton_usable(device, a.triton_cpu)
        rows = []
        for case in kernel_cases(a.kernel_scale, _csv(a.ops)):
            for mode in ("fwd", "fwd+bwd"):
                for variant in ("eager", "compile", "triton"):
                    if variant == "compile" and a.no_compile:
                        row = {
                            "op": case.op,
                            "shape": case.shape,
                            "dims": case.dims,
                            "variant": variant,
                            "mode": mode,
                            "skipped": "--no-compile",
                        }
                    elif variant == "triton" and not tri_ok:
                        row = {
                            "op": case.op,
                            "shape": case.shape,
                            "dims": case.dims,
                            "variant": variant,
                            "mode": mode,
                            "skipped": tri_why,
                        }
                    else:
                        row = run_kernel_case(
                            case, variant, mode, device, dtype, a.warmup, a.iters, results["roofline"]
                        )
                    rows.append(row)
                    _log(
                        f"kernel {case.name:38s} {mode:8s} {variant:8s} "
                        + (f"{row['ms']:.3f} ms" if "ms" in row else (row.get("error") or "skipped"))
                    )
        results["kernels"] = rows

    if "models" in a.section_list:
        rows = []
        results["model_config"] = {
            "hidden": a.hidden,
            "seq_len": a.seq_len,
            "solve_steps": a.solve_steps,
            "dtype": a.dtype,
            "batches": a.batch_list,
            "optimizer": make_optimizer([torch.zeros(1, requires_grad=True)])[1],
        }
        for arch in a.arch_list:
            for kind in ("train", "solve"):
                for b in a.batch_list:
                    for variant in MODEL_VARIANTS:
                        if (
                            variant.startswith("compile")
                            and not a.no_compile
                            and (arch not in a.compile_archs or (a.compile_first_batch_only and b != a.batch_list[0]))
                        ):
                            row = {
                                "arch": arch,
                                "kind": kind,
                                "batch": b,
                                "variant": variant,
                                "skipped": "whole-model torch.compile not run for this case in --quick (minutes per "
                                "compile "
                                "on a small CPU; see --compile-models)",
                            }
                        else:
                            row = run_model_case(
                                arch,
                                kind,
                                b,
                                variant,
                                device,
                                a,
                                a.warmup,
                                a.solve_iters if kind == "solve" else a.iters,
                            )
                        if "skipped" in row and (
                            (variant in SOLVE_ONLY and kind != "solve")
                            or (variant.endswith("_cg") and device.type != "cuda")
                        ):
                            continue  # rows that cannot exist here: not emitted at all
                        rows.append(row)
                        _log(
                            f"model {arch:8s} {kind:6s} b={b:<4d} {variant:10s} "
                            + (
                                f"{row['ms']:.1f} ms"
                                if "ms" in row
                                else (row.get("error") or "skipped: " + row["skipped"])
                            )
                        )
                    rows.append(run_model_floor(arch, kind, b, device, a, a.warmup, a.iters))
        results["models"] = rows

    if "counters" in a.section_list:
        results["counters"], results["counter_config"] = run_counters(a, device)

    if "grad_cycles" in a.section_list:
        results["grad_cycles"] = run_grad_cycles(a, device)

    meta["runtime_s"] = time.perf_counter() - t_start
    meta["loadavg_end"] = _loadavg()
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    md = markdown(results)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md)
    png = plot(results, os.path.join(out, "speedup.png"))
    print(md)
    _log(f"written to {out}/ (results.json, results.md{', speedup.png' if png else ''}) in {meta['runtime_s']:.0f} s")
    return 0


def main(argv=None) -> int:
    import fastrecur.bench

    p = CommandParser(prog="fastrecur bench", description=fastrecur.bench.__doc__.split("\n\n")[0])
    add_arguments(p)
    return run_command("bench", run, p.parse_args(argv))
