"""Markdown tables, the speed-up plot and the README readout."""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Tuple

from .common import ARCH_LABELS, SOLVE_STEPS


def _fmt(v, spec=".2f", none="n/a"):
    return none if v is None else format(v, spec)


def _mib(v):
    return None if v is None else v / 2**20


def meta_line(meta: dict) -> str:
    return (
        f"Device: {meta['device']}; torch {meta['torch']}; triton {meta.get('triton') or 'not installed'}; "
        f"threads {meta['threads']}; date {meta['date']}"
        + ("; --quick" if meta.get("quick") else "")
        + (
            f"; 1-min load average {meta['loadavg_start']} at start, {meta.get('loadavg_end')} at end on "
            f"{meta.get('cpu_count')} CPUs"
            if meta.get("device_type") == "cpu" and meta.get("loadavg_start") is not None
            else ""
        )
        + "."
    )


def _speedups(rows: List[dict], key: Tuple[str, ...], base: str = "eager") -> Dict[tuple, float]:
    """(case key..., variant) -> eager ms / variant ms."""
    eager = {tuple(r[k] for k in key): r["ms"] for r in rows if r.get("variant") == base and r.get("ms")}
    out = {}
    for r in rows:
        k = tuple(r[k] for k in key)
        if r.get("ms") and k in eager:
            out[k + (r["variant"],)] = eager[k] / r["ms"]
    return out


def _status(r: dict) -> Optional[str]:
    if "skipped" in r:
        return "skipped"
    if "error" in r:
        return "error"
    return None


def kernel_table(rows: List[dict]) -> List[str]:
    sp = _speedups(rows, ("op", "shape", "mode"))
    lines = [
        "| op | shape (B, S, D) | mode | variant | ms | GB/s | TFLOP/s | % roofline | peak MiB | speed-up vs eager |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        d = r["dims"]
        shape = f"{r['shape']} ({d['B']}, {d['S']}, {d['D']})"
        st = _status(r)
        if st:
            lines.append(f"| {r['op']} | {shape} | {r['mode']} | {r['variant']} | {st} | | | | | |")
            continue
        lines.append(
            f"| {r['op']} | {shape} | {r['mode']} | {r['variant']} | {r['ms']:.3f} | {r['GBps']:.1f} | "
            f"{r['TFLOPs']:.3f} | "
            f"{_fmt(100 * r['roofline_frac'] if r.get('roofline_frac') else None, '.1f')} | "
            f"{_fmt(_mib(r.get('peak_bytes')), '.1f')} | "
            f"{_fmt(sp.get((r['op'], r['shape'], r['mode'], r['variant'])))}x |"
        )
    return lines


def model_table(rows: List[dict]) -> List[str]:
    floors = {(r["arch"], r["kind"], r["batch"]): r["ms"] for r in rows if r["variant"] == "gemm_floor"}
    sp = _speedups(rows, ("arch", "kind", "batch"))
    lines = [
        "| model | step | batch | backend | ms | puzzles/s | x GEMM floor | peak MiB | speed-up vs eager |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        kind = "train step" if r["kind"] == "train" else f"{r.get('solve_steps', SOLVE_STEPS)}-step solve"
        head = f"| {ARCH_LABELS.get(r['arch'], r['arch'])} | {kind} | {r['batch']} | {r['variant']} |"
        st = _status(r)
        if st:
            lines.append(f"{head} {st} | | | | |")
            continue
        floor = floors.get((r["arch"], r["kind"], r["batch"]))
        ratio = r["ms"] / floor if floor else None
        s = sp.get((r["arch"], r["kind"], r["batch"], r["variant"]))
        lines.append(
            f"{head} {r['ms']:.1f} | {r['puzzles_per_s']:.2f} | {_fmt(ratio)} | "
            f"{_fmt(_mib(r.get('peak_bytes')), '.1f')} | "
            f"{'' if r['variant'] == 'gemm_floor' else _fmt(s) + 'x'} |"
        )
    return lines


def counter_table(rows: List[dict]) -> List[str]:
    lines = [
        "| model | backend | launches / eval ACT step (ATen + Triton + C++ native) | launches / train step (fwd+bwd) | "
        "CUDA kernels / eval step | saved for backward / train step (MiB) | tensors saved |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        head = f"| {ARCH_LABELS.get(r['arch'], r['arch'])} | {r['backend']} |"
        if "error" in r or "skipped" in r:
            lines.append(f"{head} {r.get('error') or r.get('skipped')} | | | | |")
            continue
        e, t = r["eval_step"], r["train_step"]
        lines.append(
            f"{head} {e['total']} ({e['aten']} + {e['triton']} + {e['cpp_native']}) | "
            f"{t['total']} ({t['aten']} + {t['triton']} + {t['cpp_native']}) | {e.get('cuda_kernels', 'n/a')} | "
            f"{r['saved_bytes'] / 2**20:.2f} | {r['saved_tensors']} |"
        )
    return lines


def grad_cycles_table(rows: List[dict]) -> List[str]:
    lines = [
        "| model | grad_cycles | backend | saved for backward (MiB) | train step ms | peak MiB |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        head = f"| {ARCH_LABELS.get(r['arch'], r['arch'])} | {r['grad_cycles']} | {r['variant']} |"
        if "error" in r or "skipped" in r:
            lines.append(f"{head} {r.get('error') or r.get('skipped')} | | |")
            continue
        lines.append(
            f"{head} {_fmt(_mib(r.get('saved_bytes')))} | {_fmt(r.get('ms'), '.1f')} | "
            f"{_fmt(_mib(r.get('peak_bytes')), '.1f')} |"
        )
    return lines


def _notes(results: dict) -> List[str]:
    """Why some cells are empty: one line per distinct skip reason or error."""
    seen = {}
    for section in ("kernels", "models", "grad_cycles", "counters"):
        for r in results.get(section, []):
            for k in ("skipped", "error"):
                if r.get(k):
                    label = r.get("variant") or r.get("backend")
                    seen.setdefault(f"{k} ({label}): {r[k]}", None)
    return [f"- {s}" for s in seen]


def markdown(results: dict, heading: str = "#") -> str:
    """The whole report as markdown (``heading`` = the level of its title)."""
    meta = results["meta"]
    h2 = heading + "#"
    out = [f"{heading} fastrecur benchmark", "", meta_line(meta), ""]
    if results.get("roofline"):
        rf = results["roofline"]
        out += [
            f"Roofline measured in this run: {rf['copy_GBps']:.1f} GB/s copy, {rf['matmul_TFLOPs']:.3f} TFLOP/s "
            f"{rf['dtype']} matmul ({rf['how']}).",
            "",
        ]
    if results.get("kernels"):
        out += [
            f"{h2} Kernels",
            "",
            "Median ms per call; GB/s and TFLOP/s from the bytes and FLOPs the fused op must move "
            "(the same for every variant); % roofline = max(bytes/copy bandwidth, FLOPs/matmul rate) / time.",
            "",
        ]
        out += kernel_table(results["kernels"]) + [""]
    if results.get("models"):
        cfg = results.get("model_config", {})
        out += [
            f"{h2} Models",
            "",
            f"Sudoku configurations (puzzle length {cfg.get('seq_len')}), hidden size {cfg.get('hidden')}, "
            f"{cfg.get('dtype')}; "
            f"median ms per training step (ACT step + backward + {cfg.get('optimizer', 'optimizer')} step) or per "
            f"{cfg.get('solve_steps', SOLVE_STEPS)}-step solve; x GEMM floor = time / the same step's GEMMs alone.",
            "",
        ]
        out += model_table(results["models"]) + [""]
    if results.get("counters"):
        cc = results.get("counter_config", {})
        out += [
            f"{h2} Launches and saved memory (device independent)",
            "",
            f"One ACT step at batch 1, hidden {cc.get('hidden')}, {cc.get('dtype')}. ATen: kernel-launching ATen ops "
            "(profiler leaves, views and allocations excluded); Triton: launches counted at the launchers"
            + (
                ""
                if cc.get("triton_executed", True)
                else " (on the CPU without running the kernels: the launchers decide the count, not the data)"
            )
            + "; C++ native: the extension's own count of the ops its loop issued. "
            "torch.compile is not counted on the CPU (Inductor's C++ kernels are invisible to the profiler).",
            "",
        ]
        out += counter_table(results["counters"]) + [""]
    if results.get("grad_cycles"):
        out += [f"{h2} Backpropagating through more cycles (grad_cycles)", ""]
        out += grad_cycles_table(results["grad_cycles"]) + [""]
    notes = _notes(results)
    if notes:
        out += [f"{h2} Notes", ""] + notes + [""]
    return "\n".join(out)


def plot(results: dict, path: str) -> Optional[str]:
    """Speed-up over eager per case and backend (horizontal bars); returns the path, or None (with a
    message) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot skipped: matplotlib is not installed (pip install matplotlib)", flush=True)
        return None
    panels = [
        ("kernels: speed-up over the eager sequence", _speedups(results.get("kernels", []), ("op", "shape", "mode"))),
        (
            "models: speed-up over eager",
            _speedups(
                [r for r in results.get("models", []) if r["variant"] != "gemm_floor"], ("arch", "kind", "batch")
            ),
        ),
    ]
    panels = [(t, sp) for t, sp in panels if any(k[-1] != "eager" for k in sp)]
    if not panels:
        print("plot skipped: no case has a variant besides eager", flush=True)
        return None
    rows = max(len({k[:-1] for k in sp}) for _, sp in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 0.3 * rows + 2.5), squeeze=False)
    for ax, (title, sp) in zip(axes[0], panels):
        cases = sorted({k[:-1] for k in sp}, key=str)
        variants = sorted({k[-1] for k in sp if k[-1] != "eager"})
        hgt = 0.8 / len(variants)
        for j, v in enumerate(variants):
            ax.barh([i + j * hgt for i in range(len(cases))], [sp.get(c + (v,), 0) for c in cases], height=hgt, label=v)
        ax.set_yticks([i + 0.4 - hgt / 2 for i in range(len(cases))])
        ax.set_yticklabels([" ".join(str(x) for x in c) for c in cases], fontsize=7)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("speed-up (eager time / time; > 1 is faster)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(meta_line(results["meta"]), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def readout(path: str) -> str:
    """The README "Results" section from a results JSON (only what it measured)."""
    with open(path) as f:
        results = json.load(f)
    body = markdown(results, heading="###")
    src = os.path.relpath(path) if not os.path.isabs(path) else path
    return (
        "## Results\n\n"
        f"Generated by `python -m fastrecur.bench --readout {src}` from a `fastrecur bench"
        f"{' --quick' if results['meta'].get('quick') else ''}` run; every number below was measured in that run.\n\n"
        + body.split("\n", 2)[2]
    )
