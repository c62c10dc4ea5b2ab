"""One eval ACT step of a Sudoku model (D=512, 97 positions; default TRM-MLP) against its GEMM floor, and where
the rest goes.

For each dtype and batch size it times, in one process: eager PyTorch, torch.compile, ``backend="cpp"`` (the
C++ loop) and the **GEMM floor** -- the same step's GEMMs alone, each in its fastest layout, with
preallocated outputs (``fastrecur.bench.gemm_floor_fn``). Then it profiles one cpp step and splits its time
into GEMMs, each fused kernel and the rest, so the distance to the floor is explained, not just measured.

    python benchmarks/act_step_floor.py                       # bf16 + fp32, batch 1 and 64 (CPU: ~15 min)
    python benchmarks/act_step_floor.py --dtypes float32 --batches 1 --no-compile
    python benchmarks/act_step_floor.py --archs trm,hrm --no-compile --out benchmarks/results  # attention models
    python benchmarks/act_step_floor.py --out benchmarks/results   # -> OUT/act-step-floor-<device>-<date>/
    python benchmarks/act_step_floor.py --cpp-gemms aten,onednn,onednn_fused   # + the loop on each GEMM library

Each timing is the median (and minimum) over ``--iters`` steps from a warm carry (a steady-state step of a
16-step solve), the variants timed in turns.
Results record the device, CPU model, versions, threads, load average and the extension's instruction set;
every table is printed under one line naming the device and, on a CPU, its ISA features (AVX-512,
AVX512-BF16, AMX). A kernel roofline follows (``fastrecur.bench.roofline``: each fused kernel against a copy
of the same bytes, at the same dtypes and batches; on a CPU on one thread, the per-item mode's setting and the
only one a shared machine times reliably); ``--no-roofline`` skips it.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time

import torch

from fastrecur import _ext
from fastrecur import bench as fb
from fastrecur.backend import graphs
from fastrecur.bench import roofline
from fastrecur.cli import InputError, check_output_dir, positive_int, run_command

# Profiler names of the fused kernels (csrc/dispatch.h FR_RECORD labels), reported one by one.
FUSED = (
    "fastrecur::swiglu",
    "fastrecur::add_rms_norm",
    "fastrecur::add_rms_norm_dim1",
    "fastrecur::inject_add",
    "fastrecur::rope",
)
GEMMS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "mkldnn::_linear_pointwise")
# The C++ loop's CPU GEMM libraries (run_steps_cpp's gemm), each timed as a variant "cpp_<name>" when asked.
CPP_GEMMS = ("aten", "onednn", "onednn_fused")


def step_fn(model, data):
    """A steady-state eval ACT step (the carry advances, as in a solve)."""
    with torch.no_grad():
        state = {"carry": model(carry=model.initial_carry(data), batch=data)[0]}

    def step():
        with torch.no_grad():
            state["carry"], _ = model(carry=state["carry"], batch=data)

    return step


def round_robin(variants: dict, device, iters: int) -> dict:
    """Median and minimum ms of each variant, timed in turns (one call of each per round, ``iters`` rounds after
    one warm-up round), so slow phases of a shared machine hit every variant alike."""
    times = {name: [] for name in variants}
    for rnd in range(iters + 1):
        for name, fn in variants.items():
            fb._sync(device)
            t0 = time.perf_counter()
            fn()
            fb._sync(device)
            if rnd:
                times[name].append(1e3 * (time.perf_counter() - t0))
    out = {}
    for name, ts in times.items():
        out[f"{name}_ms"] = statistics.median(ts)
        out[f"{name}_ms_min"] = min(ts)
    return out


def graphed(fn, device):
    """``fn`` captured once in a CUDA graph and replayed: its kernels' device time without the host's launch
    cost (the GPU floor is the GEMMs as the device runs them, not as Python launches them)."""
    g = graphs.capture_graph(fn, device)

    def replay():
        g.replay()

    # The graph reads and writes the tensors that ``fn`` holds (allocated outside the graph's pool): they must
    # live as long as the graph. Returning only ``g.replay`` freed them once the caller dropped ``fn``, and each
    # replay then wrote GEMM outputs into memory the allocator had handed on (an H100 run crashed on corrupted
    # token ids in the next ACT step's embedding).
    replay.keep_alive = (g, fn)
    return replay


# Name fragments of GPU kernels (device-time breakdown on CUDA).
GPU_GEMM = ("gemm", "xmma", "cutlass", "nvjet", "cublas")
GPU_FUSED = ("swiglu", "add_rms_norm", "inject_add", "rope")
GPU_ATTN = ("flash", "fmha", "attention", "softmax")


def _gpu_category(name: str) -> str:
    low = name.lower()
    if any(f in low for f in GPU_GEMM):
        return "gemm"
    for f in GPU_FUSED:
        if f in low:
            return f
    if any(f in low for f in GPU_ATTN):
        return "attention (SDPA)"
    return "other kernels (copies, embedding, readout, casts)"


def breakdown(step, device, step_ms: float) -> dict:
    """Where one profiled step's time goes, in ms per ACT step: GEMMs, each fused kernel, the rest.

    CPU: the self times of every thread's ops (per-item mode runs ops on all threads), as shares of their sum
    applied to ``step_ms``. CUDA: the device time of the kernels of each kind, as measured (their sum below the
    step's wall time is the time the GPU waited for launches)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        step()
        fb._sync(device)
    self_us = collections.Counter()
    if cuda:
        for e in prof.key_averages():
            t = getattr(e, "self_device_time_total", 0) or 0
            if t > 0:
                self_us[_gpu_category(e.key)] += t
        return {k: v / 1e3 for k, v in self_us.most_common()}
    for e in prof.key_averages():
        name = e.key
        if name in GEMMS:
            key = "gemm"
        elif name in FUSED:
            key = name.split("::")[1]
        elif "scaled_dot_product" in name or "flash_attention" in name:
            key = "attention (SDPA)"
        elif name.startswith("fastrecur_C::"):
            key = "loop (views, checks)"
        else:
            key = "other ATen (embedding, readout, casts)"
        self_us[key] += e.self_cpu_time_total
    total = sum(self_us.values()) or 1.0
    return {k: step_ms * v / total for k, v in self_us.most_common()}


def gemm_choice_summary(before: dict) -> str:
    """The sites the loop measured since ``before`` (a ``_ext.gemm_choices()`` snapshot), as "site=library"."""
    new = {k: v for k, v in _ext.gemm_choices().items() if k not in before}
    return ", ".join(sorted({f"{k.split('|', 1)[0]}={v}" for k, v in new.items()})) or "none measured"


def run_case(arch: str, dtype: str, batch: int, device, iters: int, compile_: bool, gemms=()) -> dict:
    cfg = fb.sudoku_cfg(arch, dtype, batch, 512, 81)
    torch.manual_seed(0)
    data = fb.sudoku_batch(cfg, device)
    row = {"arch": arch, "dtype": dtype, "batch": batch, "hidden": 512, "positions": 97}
    models = {}
    for backend in ("eager", "cpp"):
        torch.manual_seed(0)
        m = fb.build(arch, cfg, backend).to(device).eval()
        m.check_inputs = False
        models[backend] = m
    before = _ext.gemm_choices()
    variants = {"eager": step_fn(models["eager"], data), "cpp": step_fn(models["cpp"], data)}
    if device.type == "cpu":
        row["cpp_gemm_choices"] = gemm_choice_summary(before)
    for g in gemms:
        torch.manual_seed(0)
        m = fb.build(arch, cfg, "cpp").to(device).eval()
        m.check_inputs = False
        m.inner.cpp_gemm = g
        variants[f"cpp_{g}"] = step_fn(m, data)
    if device.type == "cuda":
        torch.manual_seed(0)
        m = fb.build(arch, cfg, "cpp").to(device).eval()
        m.check_inputs = False
        m.inner.use_cuda_graphs = True
        variants["cpp_graphs"] = step_fn(m, data)
    if compile_:
        t0 = time.perf_counter()
        variants["compile"] = step_fn(torch.compile(models["eager"]), data)
        variants["compile"]()
        row["compile_first_call_s"] = round(time.perf_counter() - t0, 1)
    with torch.no_grad():
        variants["gemm_floor"] = fb.gemm_floor_fn(models["eager"], batch, device)
        if device.type == "cuda":
            variants["gemm_floor"] = graphed(variants["gemm_floor"], device)
    row.update(round_robin(variants, device, iters))
    # Primary ratio from the medians; the ratio of the fastest runs is the one least disturbed by other work
    # on a shared machine (both are reported).
    row["cpp_x_floor"] = row["cpp_ms"] / row["gemm_floor_ms"]
    row["cpp_x_floor_min"] = row["cpp_ms_min"] / row["gemm_floor_ms_min"]
    row["eager_x_cpp"] = row["eager_ms"] / row["cpp_ms"]
    if compile_:
        row["compile_x_cpp"] = row["compile_ms"] / row["cpp_ms"]
    for g in gemms:
        row[f"cpp_{g}_x_floor"] = row[f"cpp_{g}_ms"] / row["gemm_floor_ms"]
    if "cpp_graphs" in variants:
        row["cpp_graphs_x_floor"] = row["cpp_graphs_ms"] / row["gemm_floor_ms"]
        row["eager_x_cpp_graphs"] = row["eager_ms"] / row["cpp_graphs_ms"]
    variants["cpp"]()  # the loop reports the threading mode it chose for this step
    row["cpp_mode"] = "per item" if _ext.workspace_info()["last_call_per_item"] else "whole batch"
    row["cpp_breakdown_ms"] = breakdown(variants["cpp"], device, row["cpp_ms"])
    return row


def markdown(results: dict) -> str:
    m = results["meta"]
    lines = [
        f"# Sudoku eval ACT step (hidden 512, 97 positions) vs its GEMM floor ({m['device']})",
        "",
        m.get("device_line", ""),
        "",
        f"{m['date']}, torch {m['torch']}, {m['threads']} threads, extension CPU kernels: {m['cpu_isa']}, "
        f"load average at start {m['loadavg_start']}. Median of {m['iters']} steps at batch <= 8, "
        f"{m['iters_large']} at larger batches, the variants timed in turns; ms per ACT step.",
        "",
        "| model | dtype | batch | eager | torch.compile | cpp | GEMM floor | **cpp / floor** | fastest runs: cpp / "
        "floor | eager / cpp | compile / cpp | cpp mode |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    ms = lambda v: f"{v:.1f}" if v >= 10 else f"{v:.3f}"  # noqa: E731  (GPU steps take about a millisecond)
    for r in results["rows"]:
        comp = ms(r["compile_ms"]) if "compile_ms" in r else "n/a"
        cx = f"{r['compile_x_cpp']:.2f}x" if "compile_x_cpp" in r else "n/a"
        lines.append(
            f"| {fb.ARCH_LABELS.get(r['arch'], r['arch'])} | {r['dtype']} | {r['batch']} | {ms(r['eager_ms'])} | "
            f"{comp} | {ms(r['cpp_ms'])} | "
            f"{ms(r['gemm_floor_ms'])} | **{r['cpp_x_floor']:.3f}** | {r['cpp_x_floor_min']:.3f} | "
            f"{r['eager_x_cpp']:.2f}x | {cx} | {r['cpp_mode']} |"
        )
    if any("cpp_graphs_ms" in r for r in results["rows"]):
        lines += [
            "",
            "With CUDA graphs (`inner.use_cuda_graphs = True`: the no-grad recursion is one graph replay "
            "per ACT step); the GEMM floor above is itself replayed from a CUDA graph:",
            "",
            "| model | dtype | batch | cpp + graphs | **cpp + graphs / floor** | eager / (cpp + graphs) |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for r in results["rows"]:
            if "cpp_graphs_ms" in r:
                lines.append(
                    f"| {fb.ARCH_LABELS.get(r['arch'], r['arch'])} | {r['dtype']} | {r['batch']} | "
                    f"{ms(r['cpp_graphs_ms'])} | "
                    f"**{r['cpp_graphs_x_floor']:.3f}** | {r['eager_x_cpp_graphs']:.2f}x |"
                )
    gemms = [g for g in CPP_GEMMS if any(f"cpp_{g}_ms" in r for r in results["rows"])]
    if gemms:
        lines += [
            "",
            "The cpp loop's CPU GEMM library (`FASTRECUR_CPU_GEMM` / `run_steps_cpp(gemm=...)`): ATen (MKL for fp32, "
            "oneDNN for 16-bit), oneDNN's inner product, oneDNN with each SwiGLU fused into its GEMMs as post-ops; "
            "`cpp` above is the default, each GEMM site measured once (its choices in the last column). ms per ACT "
            "step, and (x floor):",
            "",
            "| model | dtype | batch | " + " | ".join(gemms) + " | cpp (measured) | choices |",
            "|---|---|---:|" + "---:|" * (len(gemms) + 1) + "---|",
        ]
        for r in results["rows"]:
            cells = [
                f"{ms(r[f'cpp_{g}_ms'])} ({r[f'cpp_{g}_x_floor']:.3f})" if f"cpp_{g}_ms" in r else "n/a" for g in gemms
            ]
            lines.append(
                f"| {fb.ARCH_LABELS.get(r['arch'], r['arch'])} | {r['dtype']} | {r['batch']} | "
                + " | ".join(cells)
                + f" | {ms(r['cpp_ms'])} ({r['cpp_x_floor']:.3f}) | {r.get('cpp_gemm_choices', '')} |"
            )
    if any("cpp_breakdown_ms" in r for r in results["rows"]):
        what = (
            "device time of the plain cpp step's kernels, by kind"
            if results["meta"].get("device_type") == "cuda"
            else "profiler self time of every thread's ops, as shares of the step"
        )
        lines += ["", f"Where the cpp step's time goes ({what}; ms per ACT step):", ""]
        keys = []
        for r in results["rows"]:
            keys += [k for k in r.get("cpp_breakdown_ms", {}) if k not in keys]
        lines += ["| model | dtype | batch | " + " | ".join(keys) + " |", "|---|---|---:|" + "---:|" * len(keys)]
        for r in results["rows"]:
            b = r.get("cpp_breakdown_ms", {})
            lines.append(
                f"| {fb.ARCH_LABELS.get(r['arch'], r['arch'])} | {r['dtype']} | {r['batch']} | "
                + " | ".join(ms(b.get(k, 0)) for k in keys)
                + " |"
            )
    if results.get("roofline"):
        header = m.get("roofline_device_line", m.get("device_line", m["device"]))
        lines += ["", roofline.markdown(results["roofline"], header, m["roofline_clock"])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = fb.ModuleParser(
        "act_step_floor", prog="python benchmarks/act_step_floor.py", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--archs", default="trm_mlp", help=f"comma-separated subset of {','.join(fb.ARCHS)}")
    p.add_argument(
        "--dtypes", default="bfloat16,float32", help=f"comma-separated subset of {','.join(fb.KERNEL_DTYPES)}"
    )
    p.add_argument("--batches", default="1,64", help="comma-separated batch sizes >= 1 (default 1,64)")
    p.add_argument("--iters", type=positive_int, default=20, help="steps timed per variant at batch <= 8")
    p.add_argument("--iters-large", type=positive_int, default=5, help="steps timed per variant at batch > 8")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--no-roofline", action="store_true", help="skip the kernel roofline table")
    p.add_argument(
        "--cpp-gemms",
        default="",
        help=f"CPU: also time the cpp loop with each of these GEMM libraries (comma-separated subset of "
        f"{','.join(CPP_GEMMS)}; default none: only the measured choice)",
    )
    p.add_argument("--out", default=None, help="write OUT/act-step-floor-<device>-<date>/results.{json,md}")
    return run_command("act_step_floor", run, p.parse_args(argv))


def run(a: argparse.Namespace) -> int:
    """Check every argument before any work, then time the cases and print (and write) the tables."""
    archs = fb.parse_subset("--archs", a.archs, fb.ARCHS)
    dtypes = fb.parse_subset("--dtypes", a.dtypes, fb.KERNEL_DTYPES)
    batches = fb.parse_batches("--batches", a.batches)
    gemms = fb.parse_subset("--cpp-gemms", a.cpp_gemms, CPP_GEMMS, allow_empty=True)
    device = torch.device(a.device)
    if gemms and device.type != "cpu":
        raise InputError("--cpp-gemms: the GEMM library is a CPU setting (CUDA runs cuBLAS)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no GPU here")
    if not _ext.available():
        raise InputError(_ext.status())
    if a.out is not None:
        check_output_dir(a.out, try_write=True)
    meta = dict(
        fb.environment(device, quick=False),
        cpu_isa=_ext.cpu_isa(),
        iters=a.iters,
        iters_large=a.iters_large,
        device_line=roofline.device_line(device),
        cpu_features=roofline.cpu_features(),
    )
    print(meta["device_line"], flush=True)
    rows = []
    for arch in archs:
        for dtype in dtypes:
            for batch in batches:
                iters = a.iters if batch <= 8 else a.iters_large
                row = run_case(arch, dtype, batch, device, iters, not a.no_compile, gemms)
                print(json.dumps(row), flush=True)
                rows.append(row)
    results = {"meta": meta, "rows": rows}
    if not a.no_roofline:
        threads = torch.get_num_threads()
        if device.type == "cpu":
            torch.set_num_threads(1)
        try:
            meta["roofline_clock"] = roofline.clock_name(device)
            meta["roofline_device_line"] = roofline.device_line(device)
            results["roofline"] = roofline.kernel_roofline(device, [getattr(torch, d) for d in dtypes], batches)
        finally:
            torch.set_num_threads(threads)
    meta["loadavg_end"] = fb._loadavg()
    md = markdown(results)
    print(md)
    if a.out:
        tag = "" if a.archs == "trm_mlp" else "-" + a.archs.replace(",", "-")
        roofline.write_results(a.out, f"act-step-floor{tag}-{device.type}-{meta['date']}", results, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
