"""oneDNN post-ops against a GEMM followed by fastrecur's fused kernel, at the loop's shapes (CPU).

oneDNN can apply elementwise work to a GEMM's output before storing it ("post-ops"). For the loop's channel
MLP that means SwiGLU inside the GEMMs (a swish post-op on the gate GEMM, a binary multiply by it on the up
GEMM: two GEMMs of half the width and no SwiGLU pass) and the residual add inside the down GEMM (a binary add;
the RMSNorm still needs its own pass). This times, in turns on the same data (fastrecur issue #16):

- **gate/up + SwiGLU** ``silu(h @ Wg.T) * (h @ Wu.T)``: ATen's GEMM (``torch.mm``: MKL for fp32, oneDNN for
  16-bit) + fastrecur's SwiGLU kernel; oneDNN's inner product + the same kernel; oneDNN with the post-ops;
- **down + residual add**: oneDNN's down GEMM alone and with the add post-op, beside fastrecur's add + RMSNorm
  kernel (the add is a third of that kernel's bytes, so a post-op that costs more than a third of it loses).

Shapes: the TRM-MLP Sudoku step (97 positions, hidden 512, MLP width 1536) at each batch size. The C++ loop
makes the same choice per GEMM site at run time (``run_steps_cpp(gemm="auto")``); this table shows why.

    python -m fastrecur.bench.gemm_fusion                    # bf16, fp32; batches 1, 8; torch's threads
    python -m fastrecur.bench.gemm_fusion --threads 1 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, List

import torch

from fastrecur.cli import InputError, check_output_dir, positive_int, run_command

from .common import KERNEL_DTYPES, ModuleParser, onednn_runs, parse_batches, parse_subset
from .roofline import EPS, INTER, D, S, _rand, table_meta, time_in_turns, write_results


def fusion_rows(dtype: torch.dtype, batch: int, rounds: int) -> List[dict]:
    """The two sites' timings (µs per call, fastest round) at ``batch`` items of ``dtype``."""
    ops, linear = torch.ops.fastrecur_C, torch.ops.mkldnn._linear_pointwise
    M = batch * S
    h = _rand((M, D), dtype, "cpu")
    w_gu = _rand((2 * INTER, D), dtype, "cpu", D**-0.5)
    w_gate, w_up = w_gu[:INTER].contiguous(), w_gu[INTER:].contiguous()
    w_gu_t = w_gu.t().contiguous()  # ATen's faster layout for few rows (as the loop stores it)
    gu, act = torch.empty(M, 2 * INTER, dtype=dtype), torch.empty(M, INTER, dtype=dtype)
    swiglu = {
        "aten + kernel": lambda: (torch.mm(h, w_gu_t, out=gu), ops.swiglu(gu, act)),
        "onednn + kernel": lambda: ops.swiglu(linear(h, w_gu, None, "none", [], ""), act),
        "onednn post-ops": lambda: linear.binary(h, linear(h, w_gate, None, "swish", [], ""), w_up, None, "mul"),
    }
    a = _rand((M, INTER), dtype, "cpu")
    w_down = _rand((D, INTER), dtype, "cpu", INTER**-0.5)
    o, res = torch.empty(M, D, dtype=dtype), _rand((M, D), dtype, "cpu")
    down = {
        "onednn GEMM": lambda: linear(a, w_down, None, "none", [], ""),
        "onednn GEMM + add post-op": lambda: linear.binary(a, res, w_down, None, "add"),
        "add + RMSNorm kernel": lambda: ops.add_rms_norm(res, o, EPS, o),
    }
    t = time_in_turns({**swiglu, **down}, torch.device("cpu"), rounds)
    us: Dict[str, float] = {k: 1e6 * v[1] for k, v in t.items()}
    name = str(dtype).replace("torch.", "")
    best_plain = min(us["aten + kernel"], us["onednn + kernel"])
    return [
        {"site": "gate/up + SwiGLU", "dtype": name, "batch": batch, **{k: us[k] for k in swiglu},
         "post_ops_x_best_other": us["onednn post-ops"] / best_plain},
        {"site": "down + residual add", "dtype": name, "batch": batch, **{k: us[k] for k in down},
         "post_op_extra_us": us["onednn GEMM + add post-op"] - us["onednn GEMM"]},
    ]  # fmt: skip


def markdown(rows: List[dict], header: str, clock: str) -> str:
    lines = [
        f"oneDNN post-ops against GEMM + fastrecur kernel: {header}",
        "",
        f"Fastest of the rounds ({clock}), all variants timed in turns; µs per call.",
        "",
        "| dtype | batch | ATen GEMM + SwiGLU kernel | oneDNN GEMM + SwiGLU kernel | oneDNN swish + mul post-ops | "
        "**post-ops / best other** |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["site"] == "gate/up + SwiGLU":
            lines.append(
                f"| {r['dtype']} | {r['batch']} | {r['aten + kernel']:.1f} | {r['onednn + kernel']:.1f} | "
                f"{r['onednn post-ops']:.1f} | **{r['post_ops_x_best_other']:.3f}** |"
            )
    lines += [
        "",
        "| dtype | batch | oneDNN down GEMM | with residual-add post-op | **the post-op's cost** | "
        "fastrecur add + RMSNorm kernel (the add: a third of its bytes) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["site"] == "down + residual add":
            lines.append(
                f"| {r['dtype']} | {r['batch']} | {r['onednn GEMM']:.1f} | {r['onednn GEMM + add post-op']:.1f} | "
                f"**{r['post_op_extra_us']:.1f}** | {r['add + RMSNorm kernel']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = ModuleParser(
        "bench.gemm_fusion", prog="python -m fastrecur.bench.gemm_fusion", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--dtypes", default="bfloat16,float32", help=f"comma-separated subset of {','.join(KERNEL_DTYPES)}")
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes >= 1 (default 1,8)")
    p.add_argument("--rounds", type=positive_int, default=10, help="timing rounds, >= 1 (default 10)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads, >= 1 (default: torch's)")
    p.add_argument("--out", default=None, help="write OUT/gemm-fusion-cpu-<date>/results.{json,md}")
    return run_command("bench.gemm_fusion", run, p.parse_args(argv))


def run(a: argparse.Namespace) -> int:
    """Check every argument before any work, then time and print (and write) the tables."""
    dtypes = [getattr(torch, d) for d in parse_subset("--dtypes", a.dtypes, KERNEL_DTYPES)]
    batches = parse_batches("--batches", a.batches)
    from fastrecur import _ext

    if not _ext.available():
        raise InputError(_ext.status())
    missing = [str(d).replace("torch.", "") for d in dtypes if not onednn_runs(d)]
    if missing:
        raise InputError(f"--dtypes: this torch's oneDNN runs no {', '.join(missing)} inner product on this CPU")
    if a.out is not None:
        check_output_dir(a.out, try_write=True)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device("cpu")
    rows = [r for d in dtypes for b in batches for r in fusion_rows(d, b, a.rounds)]
    meta = table_meta(device)
    header = meta["device_line"] + f", {meta['date']}, {torch.get_num_threads()} threads, load {meta['loadavg_start']}"
    md = markdown(rows, header, meta["clock"])
    print(md)
    if a.out:
        write_results(a.out, f"gemm-fusion-cpu-{meta['date']}", {"meta": meta, "rows": rows}, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
