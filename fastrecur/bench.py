"""``python -m fastrecur.bench``: time one ACT step of HRM/TRM per backend against its GEMM floor.

For each case it times, in the same process: the eager model, ``torch.compile`` of it (unless
``--no-compile``), the C++ backend when built, and the **floor**: the same step's GEMMs alone (same shapes,
same count, preallocated outputs). A ratio to the floor says how much time is left on the table; a ratio
to eager alone does not. Results go to ``OUT/<device>-<date>/results.json`` and ``results.md``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from typing import Callable, Dict, List

import torch

from fastrecur.core.schedule import Update
from fastrecur.models import HRM, TRM
from fastrecur.nn.blocks import swiglu_intermediate_size


def sudoku_cfg(arch: str, dtype: str, batch: int) -> dict:
    base = dict(batch_size=batch, seq_len=81, puzzle_emb_ndim=512, num_puzzle_identifiers=1, vocab_size=11, hidden_size=512,
                expansion=4, num_heads=8, halt_max_steps=16, halt_exploration_prob=0.1, forward_dtype=dtype)
    if arch == "hrm":
        return dict(base, H_cycles=2, L_cycles=2, H_layers=4, L_layers=4, pos_encodings="rope")
    if arch == "trm":
        return dict(base, H_cycles=3, L_cycles=6, H_layers=0, L_layers=2, pos_encodings="rope")
    if arch == "trm_mlp":
        return dict(base, H_cycles=3, L_cycles=6, H_layers=0, L_layers=2, pos_encodings="none", mlp_t=True)
    raise ValueError(arch)


def build(arch: str, cfg: dict, backend: str):
    return (HRM if arch == "hrm" else TRM)(cfg, backend=backend)


def sudoku_batch(cfg: dict, device) -> Dict[str, torch.Tensor]:
    b, s = cfg["batch_size"], cfg["seq_len"]
    return {"inputs": torch.randint(1, cfg["vocab_size"], (b, s), device=device),
            "labels": torch.randint(1, cfg["vocab_size"], (b, s), device=device),
            "puzzle_identifiers": torch.zeros(b, dtype=torch.int32, device=device)}


def median_time(fn: Callable[[], None], device, warmup: int, iters: int) -> float:
    """Median wall time of ``fn`` in seconds (device-synchronised)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_floor_fn(model, batch_size: int, device) -> Callable[[], None]:
    """A function running exactly the GEMMs of one eval ACT step of ``model`` (no elementwise work)."""
    c, inner = model.config, model.inner
    dt = inner.forward_dtype
    S, D = inner.total_len, c.hidden_size
    M = batch_size * S
    inter = swiglu_intermediate_size(D, c.expansion)
    blocks = sum(len(getattr(inner, s.level).layers) * getattr(inner, s.level).repeat for s in inner.schedule.steps if isinstance(s, Update))
    r = lambda *shape: torch.randn(*shape, device=device, dtype=dt)  # noqa: E731
    h, w_gu, w_d, act, gu, out = r(M, D), r(2 * inter, D), r(D, inter), r(M, inter), r(M, 2 * inter), r(M, D)
    ops: List[Callable[[], None]] = [lambda: torch.mm(h, w_gu.t(), out=gu), lambda: torch.mm(act, w_d.t(), out=out)]
    if getattr(c, "mlp_t", False):
        it = swiglu_intermediate_size(S, c.expansion)
        wt_gu, wt_d = r(2 * it, S), r(S, it)
        hb, gt, at, ot = r(batch_size, S, D), r(batch_size, 2 * it, D), r(batch_size, it, D), r(batch_size, S, D)
        ops += [lambda: torch.matmul(wt_gu, hb, out=gt), lambda: torch.matmul(wt_d, at, out=ot)]
    else:
        hd, H = D // c.num_heads, c.num_heads
        w_qkv, w_o, qkv = r(3 * D, D), r(D, D), r(M, 3 * D)
        q, k, scores, o = r(batch_size * H, S, hd), r(batch_size * H, hd, S), r(batch_size * H, S, S), r(batch_size * H, S, hd)
        ops += [lambda: torch.mm(h, w_qkv.t(), out=qkv), lambda: torch.mm(h, w_o.t(), out=out),
                lambda: torch.bmm(q, k, out=scores), lambda: torch.bmm(scores, q, out=o)]
    lm = r(c.vocab_size, D)

    def run():
        for _ in range(blocks):
            for op in ops:
                op()
        torch.mm(h, lm.t())

    return run


def bench_case(arch: str, dtype: str, batch: int, device, backends: List[str], warmup: int, iters: int) -> dict:
    cfg = sudoku_cfg(arch, dtype, batch)
    data = sudoku_batch(cfg, device)
    row = {"arch": arch, "dtype": dtype, "batch": batch, "ms": {}}
    model = build(arch, cfg, "eager").to(device).eval()
    model.check_inputs = False
    for name in backends:
        m = model
        if name == "compile":
            m = torch.compile(model)
        elif name not in ("eager",):
            try:
                m = build(arch, cfg, name).to(device).eval()
                m.load_state_dict(model.state_dict())
                m.check_inputs = False
            except ValueError as e:
                row["ms"][name] = None
                row.setdefault("skipped", {})[name] = str(e)
                continue
        with torch.no_grad():
            carry = m.initial_carry(data)
            state = {"carry": carry}

            def step():
                state["carry"], _ = m(carry=state["carry"], batch=data)

            row["ms"][name] = 1e3 * median_time(step, device, warmup, iters)
    with torch.no_grad():
        row["ms"]["gemm_floor"] = 1e3 * median_time(gemm_floor_fn(model, batch, device), device, warmup, iters)
    return row


def markdown(rows: List[dict], meta: dict) -> str:
    names = sorted({k for r in rows for k in r["ms"]}, key=lambda k: (k == "gemm_floor", k))
    lines = [f"Device: {meta['device']}; torch {meta['torch']}; threads {meta['threads']}; date {meta['date']}.",
             "Milliseconds per eval ACT step (median); in brackets, the ratio to the GEMM floor.", "",
             "| case | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for r in rows:
        floor = r["ms"]["gemm_floor"]
        cells = ["n/a" if r["ms"].get(n) is None else f"{r['ms'][n]:.2f} ({r['ms'][n] / floor:.2f}x)" for n in names]
        lines.append(f"| {r['arch']} {r['dtype']} b={r['batch']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="fewer cases and iterations")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", default="bench-out")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile on CPU)")


def run(a: argparse.Namespace) -> int:
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    torch.manual_seed(0)
    backends = ["eager"] + ([] if a.no_compile else ["compile"]) + ["cpp"]
    cases = [("trm_mlp", "bfloat16", 1), ("trm", "bfloat16", 1), ("hrm", "bfloat16", 1)]
    if not a.quick:
        cases += [("trm_mlp", "float32", 1), ("trm_mlp", "bfloat16", 8), ("trm", "bfloat16", 8)]
    warmup, iters = (2, 5) if a.quick else (3, 15)
    meta = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU {platform.processor() or platform.machine()}",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "date": datetime.date.today().isoformat()}
    rows = []
    for arch, dtype, b in cases:
        row = bench_case(arch, dtype, b, device, backends, warmup, iters)
        print(f"{arch:8s} {dtype:9s} b={b:<3d} " + "  ".join(f"{k}={'n/a' if v is None else f'{v:.2f}ms'}" for k, v in row["ms"].items()), flush=True)
        rows.append(row)
    out = os.path.join(a.out, f"{a.device}-{meta['date']}")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown(rows, meta))
    print(markdown(rows, meta))
    print(f"written to {out}/")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastrecur.bench", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
