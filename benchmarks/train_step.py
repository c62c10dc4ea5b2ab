"""One training step at the papers' shapes: the eager model, the same under torch.compile (what the reference
trainers run), fastrecur's backends, and the step's floor -- plus a 16-step evaluation pass.

A training step is ``fastrecur.train.Trainer.train_step``, the trainer's own code: one ACT step with the loss
head, backward, the learning-rate schedule, AdamATan2 on every parameter, sign-SGD on the puzzle-embedding
rows of the batch, and the EMA of the weights where the reference trains with one (TRM: ``ema=True`` in its
README's commands; HRM: none). The carry persists across steps, as in training.

Cases (bf16, hidden 512, heads of 64; per-GPU batch of the papers' runs):

====================  ==========================  ==========  =======
case                  model                        positions   batch
====================  ==========================  ==========  =======
trm_mlp_sudoku        TRM-MLP (token mixing)       81 + 16     768
trm_mlp_sudoku_128    TRM-MLP, small-GPU recipe    81 + 16     128
trm_maze              TRM-attention, Maze-Hard     900 + 16    192
trm_maze_768          TRM-attention, Maze-Hard     900 + 16    768
hrm_sudoku            HRM                          81 + 1      768
trm_arc               TRM-attention, ARC shape     900 + 16    192
====================  ==========================  ==========  =======

Variants, timed in turns (one step of each per round, so a slow phase of the machine hits all alike):
``eager`` (numerically the reference), ``compile`` (``torch.compile`` of the loss head, default mode, as the
reference's ``pretrain.py``), ``triton`` and ``cpp`` (``backend=``; ``cpp_graphs``: the C++ loop with its
no-grad recursion replayed from a CUDA graph), and the **floor**: the step's forward and backward GEMMs alone
(``fastrecur.bench.train_floor_fn``; on CUDA replayed from one CUDA graph) plus the bytes its elementwise work
must move (:func:`elementwise_bytes`) at the copy bandwidth measured in the same run. The fastest fastrecur
variant is named in the results. Per variant: ms per step (median, and the fastest step), puzzles/s, peak
memory (CUDA), x floor, speed-up over compile, the largest batch that fits in the GPU's memory (estimated from
the measured peak, and on request searched by bisection on out-of-memory errors, in bounded time) and the loss
of the first step against eager's (same weights, same batch). The evaluation pass runs 16 ACT steps with no
grad at the eval batch size for eager, the backends and the inference engine.

    python benchmarks/train_step.py --device cuda --out benchmarks/results          # papers' shapes
    python benchmarks/train_step.py --small --out /tmp/ts                            # CPU, about a minute
    python benchmarks/train_step.py --device cuda --cases trm_mlp_sudoku --batch 128 --max-batch search

Results: ``OUT/train-step-<device>-<date>/results.{json,md}`` and ``x_floor.png``, with device, versions,
date and the roofline of the run in the header; the JSON is rewritten after every case (a run cut short keeps
the cases it finished). ``--budget-s`` bounds the whole run: a case, or torch.compile within it, that would
not fit in the time left is skipped with that reason.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from act_step_floor import graphed, round_robin  # noqa: E402  (the eval ACT step's benchmark, same folder)

from fastrecur import bench as fb  # noqa: E402
from fastrecur.backend.graphs import graphs_for  # noqa: E402
from fastrecur.bench.models import _schedule_blocks  # noqa: E402
from fastrecur.checkpoint import atomic_write  # noqa: E402
from fastrecur.nn.blocks import swiglu_intermediate_size  # noqa: E402
from fastrecur.train import TrainConfig, Trainer  # noqa: E402
from fastrecur.train.config import ARCH_PRESETS, apply_overrides  # noqa: E402

# ARC: one puzzle identifier per augmented puzzle. 960 puzzles (ARC-AGI-1 training + evaluation + ConceptARC)
# x 1001 versions (1000 augmentations + the original) + the blank id: an estimate of the reference's
# arc-aug-1000 table (the exact count depends on the dataset build); it sets the table's memory, not the speed.
ARC_PUZZLE_IDS = 960 * 1001 + 1

CASES: Dict[str, dict] = {
    "trm_mlp_sudoku": dict(
        arch="trm_mlp", label="TRM-MLP Sudoku", seq_len=81, vocab=11, puzzle_ids=1, batch=768, ema=True
    ),
    # the small-GPU recipe (issue 15's goal: 3x compile there); not in the default list
    "trm_mlp_sudoku_128": dict(
        arch="trm_mlp", label="TRM-MLP Sudoku", seq_len=81, vocab=11, puzzle_ids=1, batch=128, ema=True
    ),
    "trm_maze": dict(arch="trm", label="TRM-att Maze-Hard", seq_len=900, vocab=6, puzzle_ids=1, batch=192, ema=True),
    "trm_maze_768": dict(
        arch="trm", label="TRM-att Maze-Hard", seq_len=900, vocab=6, puzzle_ids=1, batch=768, ema=True
    ),
    "hrm_sudoku": dict(arch="hrm", label="HRM Sudoku", seq_len=81, vocab=11, puzzle_ids=1, batch=768, ema=False),
    "trm_arc": dict(
        arch="trm", label="TRM-att ARC", seq_len=900, vocab=12, puzzle_ids=ARC_PUZZLE_IDS, batch=192, ema=True
    ),
}
DEFAULT_CASES = ("trm_mlp_sudoku", "hrm_sudoku", "trm_maze", "trm_arc", "trm_maze_768")
# --small: the same recipes (cycles, layers, positions of Sudoku) at hidden 64 and batch 8; the 30x30 grids
# become 10x10 and ARC's table 1,000 rows, so that every case runs on a CPU in seconds.
SMALL = dict(hidden=64, batch=8, grid_seq_len=100, arc_puzzle_ids=1000)
TRAIN_VARIANTS = ("eager", "compile", "triton", "cpp", "cpp_graphs")
FASTRECUR_VARIANTS = ("triton", "cpp", "cpp_graphs")
EVAL_VARIANTS = ("eager", "compile", "triton", "cpp", "cpp_graphs", "engine", "engine_cg")
EVAL_STEPS = 16


class SyntheticData:
    """The dataset metadata a :class:`Trainer` is built from (no examples: the benchmark feeds its batches)."""

    def __init__(self, seq_len: int, vocab: int, puzzle_ids: int):
        self.metadata = dict(
            seq_len=seq_len,
            vocab_size=vocab,
            num_puzzle_identifiers=puzzle_ids,
            total_groups=1,
            mean_puzzle_examples=1.0,
        )


def case_spec(
    name: str,
    small: bool,
    hidden: Optional[int] = None,
    batch: Optional[int] = None,
    overrides: Optional[List[str]] = None,
) -> dict:
    """The case ``name`` as run: its table entry, scaled by ``--small``, with ``hidden`` / ``batch`` overrides and
    arch ``overrides`` (``["H_cycles=2", ...]``, as ``fastrecur train --set``; for tests)."""
    if name not in CASES:
        raise ValueError(f"case must be one of {sorted(CASES)}, got {name!r}")
    spec = dict(CASES[name], name=name, hidden=512, overrides=list(overrides or []))
    if small:
        spec.update(hidden=SMALL["hidden"], batch=SMALL["batch"])
        if spec["seq_len"] == 900:
            spec["seq_len"] = SMALL["grid_seq_len"]
        if spec["puzzle_ids"] > 1:
            spec["puzzle_ids"] = SMALL["arc_puzzle_ids"]
    if hidden is not None:
        spec["hidden"] = hidden
    if batch is not None:
        spec["batch"] = batch
    for k in ("hidden", "batch"):
        if not isinstance(spec[k], int) or spec[k] < 1:
            raise ValueError(f"{k} must be a positive int, got {spec[k]!r}")
    if spec["hidden"] % 64 and spec["hidden"] > 64:
        raise ValueError(f"hidden must be a multiple of 64 (heads of 64), got {spec['hidden']}")
    return spec


def train_config(spec: dict, backend: str, batch: int, device: torch.device, dtype: str) -> TrainConfig:
    """The reference recipe (``TrainConfig`` defaults: lr 1e-4, warmup 2000, AdamATan2 betas (0.9, 0.95),
    weight decay 0.1, puzzle-embedding lr 1e-2) for the case's arch preset at ``batch``."""
    arch = apply_overrides(
        dict(
            ARCH_PRESETS[spec["arch"]],
            hidden_size=spec["hidden"],
            num_heads=max(1, spec["hidden"] // 64),
            forward_dtype=dtype,
        ),
        spec.get("overrides", []),
    )
    return TrainConfig(
        arch=arch,
        global_batch_size=batch,
        max_steps=10**6,
        device=str(device),
        backend=backend,
        ema=spec["ema"],
        progress="none",
        seed=0,
    )


def make_trainer(
    spec: dict, variant: str, batch: int, device: torch.device, dtype: str, compile_backend: str = "inductor"
) -> Trainer:
    """A :class:`Trainer` for ``variant`` (same seed, so the same initial weights for every variant)."""
    backend = {"eager": "eager", "compile": "eager", "triton": "triton", "cpp": "cpp", "cpp_graphs": "cpp"}[variant]
    tr = Trainer(
        train_config(spec, backend, batch, device, dtype),
        SyntheticData(spec["seq_len"], spec["vocab"], spec["puzzle_ids"]),
    )
    # The batches are valid by construction: no per-call value check (the trainer turns it off on CUDA after
    # its first step; under torch.compile, turning it off later would recompile).
    tr.head.model.check_inputs = False
    if variant == "cpp_graphs":
        tr.head.model.inner.use_cuda_graphs = True
        # One static batch: a graph of exactly that size (the default rounds up to a power of two, for solves
        # whose halted rows are compacted; 768 rows would run as 1024, a third more work).
        graphs_for(tr.head.model.inner).bucket = False
    if variant == "compile":
        tr.head = torch.compile(tr.head, backend=compile_backend)  # the reference: torch.compile(model), default mode
    return tr


def make_batch(spec: dict, batch: int, device: torch.device, seed: int = 0) -> Dict[str, torch.Tensor]:
    """A random batch with the case's vocabulary and puzzle identifiers (token 0 = padding is not drawn)."""
    g = torch.Generator().manual_seed(seed)
    b, s = batch, spec["seq_len"]
    return {
        "inputs": torch.randint(1, spec["vocab"], (b, s), generator=g).to(device),
        "labels": torch.randint(1, spec["vocab"], (b, s), generator=g).to(device),
        "puzzle_identifiers": torch.randint(0, spec["puzzle_ids"], (b,), generator=g, dtype=torch.int32).to(device),
    }


def variant_status(variant: str, device: torch.device, opts) -> Tuple[bool, str]:
    """Whether ``variant`` runs here, and why not."""
    if variant in ("cpp_graphs", "engine_cg") and device.type != "cuda":
        return False, "CUDA graphs need a CUDA device"
    if variant == "compile" and opts.no_compile:
        return False, "--no-compile"
    if variant == "triton":
        return fb.triton_usable(device, opts.triton_cpu)
    if variant in ("cpp", "cpp_graphs", "engine", "engine_cg"):
        return fb.cpp_usable()
    return True, ""


# ============================================================================================================
# The floor
# ============================================================================================================
def elementwise_bytes(
    model, batch: int, training: bool, optimizer_params: int = 0, ema: bool = False, steps: int = 1
) -> Dict[str, int]:
    """Bytes the non-GEMM work of ``steps`` ACT steps must move at least (activation size of the model's
    forward dtype), by part:

    - ``norms``: per block pass two add + RMSNorm (``fastrecur.bench.op_cost``: input, residual and output
      once, the fp32 statistics), their backward for the passes with gradient;
    - ``swiglu``: the SwiGLU activation between the MLP's GEMMs (gate and up read, product written: 3 x rows x
      intermediate; backward 5 x), for TRM-MLP also the token-axis MLP's; attention models add RoPE on q and k
      (read and write both, forward and backward);
    - ``loss``: stablemax cross-entropy forward and backward (``op_cost``);
    - ``optimizer``: AdamATan2 reads parameter, gradient and both moments and writes parameter and moments
      (7 words per parameter), the EMA reads parameter and average and writes the average (3 words).

    Attention's own softmax traffic is left out (a fused attention kernel keeps it on chip), as are the
    embedding, the carry reset and the input injection: the count is a lower bound."""
    inner, c = model.inner, model.config
    elt = torch.empty((), dtype=inner.forward_dtype).element_size()
    S, D = inner.total_len, c.hidden_size
    dims = dict(B=batch, S=S, D=D, H=c.num_heads, L=c.seq_len, V=c.vocab_size)
    M = batch * S
    fwd_blocks = _schedule_blocks(model, inner.schedule.steps)
    grad_blocks = _schedule_blocks(model, inner.schedule.grad_steps) if training else 0
    if training and model.halt_on_q_continue:
        fwd_blocks *= 2  # the Q target's second inner step (no grad)
    norm = fb.op_cost("add_rms_norm", dims, elt)
    norm_f, norm_b = norm["fwd"]["bytes"], norm["fwd+bwd"]["bytes"] - norm["fwd"]["bytes"]
    act = M * swiglu_intermediate_size(D, c.expansion) * elt
    if getattr(c, "mlp_t", False):
        act += batch * D * swiglu_intermediate_size(S, c.expansion) * elt
        rope = 0
    else:
        rope = 4 * M * D * elt if c.pos_encodings == "rope" else 0
    parts = {
        "norms": steps * (fwd_blocks * 2 * norm_f + grad_blocks * 2 * norm_b),
        "swiglu": steps * (fwd_blocks * (3 * act + rope) + grad_blocks * (5 * act + rope)),
        "loss": steps * fb.op_cost("stablemax_cross_entropy", dims, elt)["fwd+bwd" if training else "fwd"]["bytes"],
        "optimizer": (7 + (3 if ema else 0)) * 4 * optimizer_params if training else 0,
    }
    parts["total"] = sum(parts.values())
    return parts


def floor_fn(model, batch: int, device: torch.device, training: bool, steps: int = 1) -> Callable[[], None]:
    """The step's GEMMs alone (``fastrecur.bench``'s GEMM floor), on CUDA replayed from one CUDA graph."""
    with torch.no_grad():
        fn = (
            fb.train_floor_fn(model, batch, device)
            if training
            else fb.gemm_floor_fn(model, batch, device, repeats=steps)
        )
        return graphed(fn, device) if device.type == "cuda" else fn


# ============================================================================================================
# Memory and the largest batch
# ============================================================================================================
def _free_cuda(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def fixed_bytes(trainer: Trainer) -> int:
    """Training memory that does not grow with the batch: parameters, their gradients, AdamATan2's two
    moments, the EMA's average, and the buffers (the puzzle-embedding table)."""
    model = trainer.head.model
    per_param = 4 + (1 if trainer.ema is not None else 0)  # weight, grad, 2 moments (+ EMA)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    bufs = sum(b.numel() * b.element_size() for b in model.buffers())
    return per_param * params + bufs


def estimate_largest_batch(own_peak: int, fixed: int, batch: int, capacity: int) -> Optional[int]:
    """Largest batch whose peak fits in ``capacity`` bytes, if the peak is ``fixed`` + a part proportional to the
    batch (``own_peak`` measured at ``batch``)."""
    per_item = (own_peak - fixed) / batch
    if per_item <= 0 or capacity <= fixed:
        return None
    return int((capacity - fixed) // per_item)


def largest_batch(
    fits: Callable[[int], bool],
    known: int,
    guess: Optional[int],
    max_probes: int,
    deadline: float,
    granularity: int = 8,
) -> dict:
    """The largest batch for which ``fits(batch)`` holds, by bisection (``fits`` returns False on out-of-memory).

    ``known`` fits; ``guess`` (an estimate, or None) is probed first, then the bracket grows by 1.5x until a
    batch fails and is bisected to ``granularity`` (batches are multiples of it past ``known``). Stops after
    ``max_probes`` probes or at ``deadline`` (``time.perf_counter()``); ``exact`` says whether the bracket
    closed. Returns ``{"largest": lo, "fails_at": hi or None, "probes": [(batch, fits), ...], "exact": bool}``."""
    if not isinstance(known, int) or known < 1:
        raise ValueError(f"known must be a positive int, got {known!r}")
    if max_probes < 0:
        raise ValueError(f"max_probes must be >= 0, got {max_probes}")
    lo, hi, probes = known, None, []

    def round_to(b: int) -> int:
        return max(lo + 1, (b // granularity) * granularity)

    nxt = round_to(guess) if guess and guess > known else round_to(int(known * 1.5) + granularity)
    while len(probes) < max_probes and time.perf_counter() < deadline:
        ok = bool(fits(nxt))
        probes.append((nxt, ok))
        if ok:
            lo = nxt
        else:
            hi = nxt
        if hi is None:
            nxt = round_to(int(lo * 1.5))
        elif hi - lo <= granularity:
            break
        else:
            nxt = round_to((lo + hi) // 2)
            if nxt >= hi:
                break
    return {"largest": lo, "fails_at": hi, "probes": probes, "exact": hi is not None and hi - lo <= granularity}


def probe_fits(spec: dict, variant: str, batch: int, device: torch.device, dtype: str, compile_backend: str) -> bool:
    """Whether two training steps of ``variant`` at ``batch`` run without running out of GPU memory."""
    tr = None
    try:
        tr = make_trainer(spec, variant, batch, device, dtype, compile_backend)
        data = make_batch(spec, batch, device)
        for _ in range(2):
            tr.train_step(data)
        fb._sync(device)
        return True
    except torch.OutOfMemoryError:
        return False
    except RuntimeError as e:  # out of memory inside a library (cuBLAS workspace, Triton launch)
        if "out of memory" in str(e).lower():
            return False
        raise
    finally:
        del tr
        _free_cuda(device)


# ============================================================================================================
# One case
# ============================================================================================================
def _first_metrics(tr: Trainer) -> Dict[str, float]:
    """The first step's train metrics (losses per puzzle of the batch), as the trainer logs them."""
    return tr._flush_train_metrics() or {}


def _deadline_left(deadline: Optional[float]) -> float:
    return math.inf if deadline is None else deadline - time.perf_counter()


def run_case(spec: dict, device: torch.device, opts, roofline: dict, deadline: Optional[float]) -> dict:
    """Time the training step and the evaluation pass of one case; a dict of results."""
    batch, dtype = spec["batch"], opts.dtype
    row: dict = {
        "case": spec["name"],
        "label": spec["label"],
        "arch": spec["arch"],
        "batch": batch,
        "hidden": spec["hidden"],
        "overrides": spec["overrides"],
        "seq_len": spec["seq_len"],
        "vocab": spec["vocab"],
        "puzzle_ids": spec["puzzle_ids"],
        "dtype": dtype,
        "ema": spec["ema"],
        "train": {},
        "eval": {},
    }
    data = make_batch(spec, batch, device)
    trainers: Dict[str, Trainer] = {}
    fns: Dict[str, Callable[[], None]] = {}
    cuda = device.type == "cuda"
    for v in opts.variant_list:
        ok, why = variant_status(v, device, opts)
        if ok and v == "compile" and _deadline_left(deadline) < opts.compile_reserve_s:
            ok, why = (
                False,
                f"time budget: {_deadline_left(deadline):.0f} s left, compiling needs about {opts.compile_reserve_s} s",
            )
        if ok and v != "eager" and _deadline_left(deadline) < 30:
            ok, why = False, f"time budget: {_deadline_left(deadline):.0f} s left"
        if not ok:
            row["train"][v] = {"skipped": why}
            continue
        r = row["train"][v] = {}
        _free_cuda(device)
        before = torch.cuda.memory_allocated(device) if cuda else 0
        tr = None
        try:
            tr = make_trainer(spec, v, batch, device, dtype, opts.compile_backend)
            torch.manual_seed(1)  # the same exploration draws for every variant's first step
            t0 = time.perf_counter()
            tr.train_step(data)
            fb._sync(device)
            r["first_step_s"] = time.perf_counter() - t0
            if v == "compile":  # later cases are judged by this compile's time, not the default guess
                opts.compile_reserve_s = 1.25 * r["first_step_s"] + 2 * opts.case_time_s
            r["first_step_metrics"] = _first_metrics(tr)
            if cuda:
                r["persistent_bytes"] = torch.cuda.memory_allocated(device) - before
            r["fixed_bytes"] = fixed_bytes(tr)
            t0 = time.perf_counter()
            tr.train_step(data)  # a warm step: its time sets the number of timed rounds
            fb._sync(device)
            r["second_step_s"] = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001  (one variant's failure, e.g. out of memory, is a result)
            r["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            tr = None
            _free_cuda(device)
            continue
        trainers[v] = tr
        fns[v] = lambda t=tr: t.train_step(data)
    floor_model = next(iter(trainers.values())).head.model if trainers else None
    if floor_model is not None:
        n_params = sum(p.numel() for p in floor_model.parameters())
        fns["floor_gemms"] = floor_fn(floor_model, batch, device, training=True)
    timed = round_robin(fns, device, _rounds(opts, row, fns)) if fns else {}
    for v in trainers:
        r = row["train"][v]
        r["ms"], r["ms_min"] = timed[f"{v}_ms"], timed[f"{v}_ms_min"]
        r["puzzles_per_s"] = batch / (r["ms"] / 1e3)
        if cuda:
            mem = fb.peak_memory(fns[v], device)
            r["peak_extra_bytes"] = mem["extra_bytes"]
            r["peak_bytes"] = r["persistent_bytes"] + mem["extra_bytes"]  # this variant's own peak
    if floor_model is not None:
        ew = elementwise_bytes(floor_model, batch, True, n_params, spec["ema"])
        row["floor"] = _floor_row(timed["floor_gemms_ms"], timed["floor_gemms_ms_min"], ew, roofline, batch)
        _derive(row["train"], row["floor"], "compile")
    # The evaluation pass reuses the variants' models (eval mode, no grad).
    if not opts.no_eval and _deadline_left(deadline) > 30:
        row["eval"], row["eval_floor"], row["eval_batch"] = run_eval(spec, trainers, device, opts, roofline)
    if cuda and opts.max_batch != "none":
        row["capacity_bytes"] = _capacity(device)
    del fns
    for v in list(trainers):
        trainers.pop(v)
    _free_cuda(device)
    if cuda and opts.max_batch != "none":
        _largest_batches(row, spec, device, opts, deadline)
    return row


def _rounds(opts, row: dict, fns: dict) -> int:
    """Rounds of the timing loop: ``--iters``, cut so that the rounds take about ``--case-time-s`` (judged
    from each variant's second, warm step)."""
    warm = sum(r.get("second_step_s", 0.0) for r in row["train"].values())
    if warm <= 0:
        return opts.iters
    return max(opts.min_iters, min(opts.iters, int(opts.case_time_s / warm)))


def _floor_row(gemm_ms: float, gemm_ms_min: float, ew: Dict[str, int], roofline: dict, batch: int) -> dict:
    ew_ms = ew["total"] / (roofline["copy_GBps"] * 1e9) * 1e3
    return {
        "gemm_ms": gemm_ms,
        "gemm_ms_min": gemm_ms_min,
        "elementwise_bytes": ew,
        "elementwise_ms": ew_ms,
        "ms": gemm_ms + ew_ms,
        "ms_min": gemm_ms_min + ew_ms,
        "puzzles_per_s": batch / ((gemm_ms + ew_ms) / 1e3),
    }


def _derive(rows: Dict[str, dict], floor: dict, compile_key: str) -> None:
    """x floor, speed-up over compile, loss against eager's, and the fastest fastrecur variant (in place)."""
    base = rows.get("eager", {}).get("first_step_metrics", {}).get("lm_loss")
    comp = rows.get(compile_key, {}).get("ms")
    for v, r in rows.items():
        if "ms" not in r:
            continue
        r["x_floor"] = r["ms"] / floor["ms"]
        r["x_floor_min"] = r["ms_min"] / floor["ms_min"]
        if comp:
            r["speedup_over_compile"] = comp / r["ms"]
        loss = r.get("first_step_metrics", {}).get("lm_loss")
        if base is not None and loss is not None:
            r["lm_loss_rel_diff_vs_eager"] = abs(loss - base) / max(abs(base), 1e-30)
    timed = [v for v in FASTRECUR_VARIANTS if "ms" in rows.get(v, {})]
    if timed:
        best = min(timed, key=lambda v: rows[v]["ms"])
        rows["fastest"] = {"variant": best, "ms": rows[best]["ms"]}


def run_eval(spec: dict, trainers: Dict[str, Trainer], device: torch.device, opts, roofline: dict):
    """16 ACT steps with no grad at the eval batch (``fastrecur.bench.make_solve``; the engine variants through
    ``make_engine_solve``) per variant, in turns, against the 16 steps' GEMM floor."""
    batch = opts.eval_batch or spec["batch"]
    data = make_batch(spec, batch, device, seed=1)
    rows: Dict[str, dict] = {}
    fns: Dict[str, Callable[[], None]] = {}
    model_of = {v: tr.head.model for v, tr in trainers.items() if v != "compile"}
    for v in EVAL_VARIANTS:
        ok, why = variant_status(v, device, opts)
        src = {"engine": "cpp", "engine_cg": "cpp"}.get(v, "eager" if v == "compile" else v)
        if ok and v == "compile" and not opts.eval_compile:
            ok, why = False, "not run (--eval-compile: another whole-model compile)"
        if ok and src not in model_of:
            ok, why = False, f"no {src} model in this run"
        if not ok:
            rows[v] = {"skipped": why}
            continue
        model = model_of[src]
        try:
            if v.startswith("engine"):
                fn = fb.make_engine_solve(model, data, opts.eval_steps, cuda_graphs=v == "engine_cg")
            else:
                fn = fb.make_solve(model, data, opts.eval_steps, compile_mode="default" if v == "compile" else None)
            t0 = time.perf_counter()
            fn()
            fb._sync(device)
            rows[v] = {"first_call_s": time.perf_counter() - t0}
            fns[v] = fn
        except Exception as e:  # noqa: BLE001
            rows[v] = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"}
    if not fns:
        return rows, None, batch
    model = model_of.get("eager") or next(iter(model_of.values()))
    fns["floor_gemms"] = floor_fn(model, batch, device, training=False, steps=opts.eval_steps)
    # Rounds: --eval-iters, cut so that they take about --case-time-s (an eval pass of a 900-position case at
    # batch 768 takes seconds per variant).
    first = sum(r.get("first_call_s", 0.0) for r in rows.values())
    rounds = max(1, min(opts.eval_iters, int(opts.case_time_s / first))) if first > 0 else opts.eval_iters
    timed = round_robin(fns, device, rounds)
    for v in fns:
        if v == "floor_gemms":
            continue
        rows[v].update(ms=timed[f"{v}_ms"], ms_min=timed[f"{v}_ms_min"], puzzles_per_s=batch / (timed[f"{v}_ms"] / 1e3))
        if device.type == "cuda":
            if rows[v]["first_call_s"] < opts.case_time_s / 4:  # one more call: only where it is short
                rows[v]["peak_extra_bytes"] = fb.peak_memory(fns[v], device)["extra_bytes"]
    floor = _floor_row(
        timed["floor_gemms_ms"],
        timed["floor_gemms_ms_min"],
        elementwise_bytes(model, batch, False, steps=opts.eval_steps),
        roofline,
        batch,
    )
    _derive(rows, floor, "compile")
    return rows, floor, batch


def _capacity(device: torch.device) -> int:
    """Bytes PyTorch can allocate on the device: its total memory less what others (the CUDA context, other
    processes) hold, less 2 % for fragmentation."""
    free, total = torch.cuda.mem_get_info(device)
    others = total - free - torch.cuda.memory_reserved(device)
    return int(0.98 * (total - others))


def _largest_batches(row: dict, spec: dict, device: torch.device, opts, deadline: Optional[float]) -> None:
    """Per variant: the estimate from its measured peak, and with ``--max-batch search`` probes (not for
    compile, which would recompile at each batch: its value is the estimate)."""
    cap = row["capacity_bytes"]
    for v, r in row["train"].items():
        if "peak_bytes" not in r:
            continue
        r["largest_batch_estimate"] = estimate_largest_batch(r["peak_bytes"], r["fixed_bytes"], row["batch"], cap)
        if opts.max_batch != "search" or v == "compile":
            continue
        end = min(time.perf_counter() + opts.max_batch_s, deadline if deadline is not None else math.inf)
        if end - time.perf_counter() < 5:
            r["largest_batch_search"] = {"skipped": "time budget"}
            continue
        r["largest_batch_search"] = largest_batch(
            lambda b, v=v: probe_fits(spec, v, b, device, opts.dtype, opts.compile_backend),
            row["batch"],
            r["largest_batch_estimate"],
            opts.max_batch_probes,
            end,
        )


# ============================================================================================================
# Report
# ============================================================================================================
def _ms(v: Optional[float]) -> str:
    return "n/a" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.3f}")


def _gib(v: Optional[int]) -> str:
    return "n/a" if v is None else f"{v / 2**30:.2f}"


def _largest(r: dict) -> str:
    s = r.get("largest_batch_search")
    if isinstance(s, dict) and "largest" in s:
        return f"{s['largest']}" + ("" if s["exact"] else "+")
    est = r.get("largest_batch_estimate")
    return f"~{est} (est.)" if est is not None else "n/a"


def _table(rows: Dict[str, dict], floor: Optional[dict], training: bool, steps: int = EVAL_STEPS) -> List[str]:
    head = (
        "| variant | ms / step | fastest step | puzzles/s | peak GiB | x floor | speed-up over compile | largest batch "
        "| first-step loss vs eager |"
        if training
        else f"| variant | ms / {steps} steps | fastest | puzzles/s | peak extra GiB | x floor "
        "| speed-up over compile |"
    )
    out = [head, "|---|" + "---:|" * (head.count("|") - 2)]
    for v, r in rows.items():
        if v == "fastest":
            continue
        if "ms" not in r:
            out.append(
                f"| {v} | {r.get('error') or 'skipped: ' + r.get('skipped', '?')} |" + " |" * (head.count("|") - 3)
            )
            continue
        cells = [
            v,
            _ms(r["ms"]),
            _ms(r["ms_min"]),
            f"{r['puzzles_per_s']:.0f}",
            _gib(r.get("peak_bytes" if training else "peak_extra_bytes")),
            f"{r['x_floor']:.2f}" if "x_floor" in r else "n/a",
            f"{r['speedup_over_compile']:.2f}x" if "speedup_over_compile" in r else "n/a",
        ]
        if training:
            d = r.get("lm_loss_rel_diff_vs_eager")
            cells += [_largest(r), "n/a" if d is None else f"{d:.1e}"]
        out.append("| " + " | ".join(cells) + " |")
    if floor:
        ew = floor["elementwise_bytes"]
        cells = ["**floor**", _ms(floor["ms"]), _ms(floor["ms_min"]), f"{floor['puzzles_per_s']:.0f}", "", "1", ""]
        out.append("| " + " | ".join(cells + (["", ""] if training else [])) + " |")
        out.append("")
        out.append(
            f"Floor = GEMMs {_ms(floor['gemm_ms'])} ms + elementwise {ew['total'] / 1e9:.2f} GB at the copy bandwidth "
            f"= {_ms(floor['elementwise_ms'])} ms (norms {ew['norms'] / 1e9:.2f}, "
            f"SwiGLU/RoPE {ew['swiglu'] / 1e9:.2f}, "
            f"loss {ew['loss'] / 1e9:.3f}, optimizer {ew['optimizer'] / 1e9:.3f} GB)."
        )
    if "fastest" in rows:
        out.append(f"Fastest fastrecur variant: **{rows['fastest']['variant']}**.")
    return out


def markdown(results: dict) -> str:
    m, roof = results["meta"], results["roofline"]
    lines = [
        f"# Training step at the papers' shapes ({m['device']})",
        "",
        f"{m['time']}; torch {m['torch']}, CUDA {m.get('cuda') or 'n/a'}, "
        f"triton {m.get('triton') or 'n/a'}, "
        f"Python {m['python']}, {m['threads']} threads; {m['dtype']}. Roofline measured in this run: copy "
        f"{roof['copy_GBps']:.0f} GB/s, matmul {roof['matmul_TFLOPs']:.1f} TFLOP/s. A step = `Trainer.train_step` "
        f"(ACT step, loss, backward, AdamATan2, puzzle-embedding sign-SGD, EMA where the reference uses it); "
        f"median of the timed rounds, variants in turns." + (" `--small` shapes." if m.get("small") else ""),
        "",
    ]
    for row in results["cases"]:
        lines += [
            f"## {row['label']}: batch {row['batch']}, {row['seq_len']} positions + puzzle prefix, "
            f"hidden {row['hidden']}" + ("" if row["ema"] else " (no EMA, as the reference)"),
            "",
        ]
        if "skipped" in row:
            lines += [f"Skipped: {row['skipped']}", ""]
            continue
        lines += _table(row["train"], row.get("floor"), True) + [""]
        if row.get("eval"):
            lines += [
                f"Evaluation pass: {m.get('eval_steps', EVAL_STEPS)} ACT steps, no grad, batch {row['eval_batch']}:",
                "",
            ]
            lines += _table(row["eval"], row.get("eval_floor"), False, m.get("eval_steps", EVAL_STEPS)) + [""]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str) -> Optional[str]:
    """x floor per case and variant (horizontal bars; training steps). None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot skipped: matplotlib is not installed", flush=True)
        return None
    cases = [r for r in results["cases"] if r.get("floor")]
    variants = [v for v in TRAIN_VARIANTS if any("x_floor" in r["train"].get(v, {}) for r in cases)]
    if not cases or not variants:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(cases) * len(variants) / 2 + 2))
    hgt = 0.8 / len(variants)
    for j, v in enumerate(variants):
        ax.barh(
            [i + j * hgt for i in range(len(cases))],
            [r["train"].get(v, {}).get("x_floor", 0) for r in cases],
            height=hgt,
            label=v,
        )
    ax.set_yticks([i + 0.4 - hgt / 2 for i in range(len(cases))])
    ax.set_yticklabels([f"{r['label']} b{r['batch']}" for r in cases], fontsize=8)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("ms per training step / floor (1 = the floor; lower is better)")
    ax.set_title(f"Training step vs its floor ({results['meta']['device']})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _write(out_dir: str, results: dict) -> None:
    os.makedirs(out_dir, exist_ok=True)
    for name, text in (("results.json", json.dumps(results, indent=1, default=str)), ("results.md", markdown(results))):
        atomic_write(os.path.join(out_dir, name), lambda tmp, text=text: open(tmp, "w").write(text))


# ============================================================================================================
# Command line
# ============================================================================================================
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="train_step.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--cases", default=",".join(DEFAULT_CASES), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument(
        "--variants", default=",".join(TRAIN_VARIANTS), help=f"comma-separated subset of {','.join(TRAIN_VARIANTS)}"
    )
    p.add_argument(
        "--small", action="store_true", help=f"hidden {SMALL['hidden']}, batch {SMALL['batch']}, 10x10 grids (CPU)"
    )
    p.add_argument("--hidden", type=int, default=None, help="hidden size (default 512; --small: 64)")
    p.add_argument("--batch", type=int, default=None, help="batch size of every case (default: each case's)")
    p.add_argument("--eval-batch", type=int, default=None, help="batch of the evaluation pass (default: the case's)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--iters", type=int, default=None, help="timed rounds at most (default: CUDA 20, CPU 5)")
    p.add_argument("--min-iters", type=int, default=3, help="timed rounds at least")
    p.add_argument(
        "--case-time-s",
        type=float,
        default=None,
        help="timed rounds per case take about this long (default: CUDA 20, CPU 10)",
    )
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend (inductor, as the reference; 'eager' only to test the plumbing quickly)",
    )
    p.add_argument(
        "--compile-reserve-s",
        type=float,
        default=150.0,
        help="compile only when at least this much of --budget-s is left (after a compile: 1.25x its first step "
        "+ 2 x --case-time-s)",
    )
    p.add_argument("--triton-cpu", action="store_true", help="time Triton on the CPU through the interpreter")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation pass")
    p.add_argument("--eval-compile", action="store_true", help="time torch.compile in the evaluation pass too")
    p.add_argument("--eval-iters", type=int, default=None, help="timed rounds of the eval pass (default: --iters / 4)")
    p.add_argument(
        "--eval-steps", type=int, default=EVAL_STEPS, help="ACT steps of the evaluation pass (16 = halt_max_steps)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="arch overrides of every case, as `fastrecur train --set` (e.g. H_cycles=2 L_cycles=1; for tests)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (a loaded CPU: 1 avoids spinning threads)"
    )
    p.add_argument(
        "--max-batch",
        default="estimate",
        choices=["none", "estimate", "search"],
        help="largest batch per variant (CUDA): from the measured peak, or searched on OOM too",
    )
    p.add_argument("--max-batch-s", type=float, default=60.0, help="seconds of probes per variant at most (search)")
    p.add_argument("--max-batch-probes", type=int, default=6)
    p.add_argument("--budget-s", type=float, default=None, help="time for the whole run (cases past it are skipped)")
    p.add_argument("--out", default=None, help="write OUT/train-step-<device>-<date>/")
    a = p.parse_args(argv)
    try:
        a.case_list = [c for c in a.cases.split(",") if c]
        a.specs = [case_spec(c, a.small, a.hidden, a.batch, a.overrides) for c in a.case_list]
    except ValueError as e:
        p.error(f"--cases/--hidden/--batch/--set: {e}")
    a.variant_list = [v for v in a.variants.split(",") if v]
    bad = sorted(set(a.variant_list) - set(TRAIN_VARIANTS))
    if bad or not a.variant_list:
        p.error(f"--variants: unknown {bad}; choose from {','.join(TRAIN_VARIANTS)}")
    for name in ("iters", "min_iters", "eval_batch", "eval_iters", "eval_steps", "threads", "max_batch_probes"):
        v = getattr(a, name)
        if v is not None and v < (0 if name == "max_batch_probes" else 1):
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    cuda = a.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    a.iters = a.iters or (20 if cuda else 5)
    a.min_iters = min(a.min_iters, a.iters)
    a.eval_iters = a.eval_iters or max(a.min_iters, a.iters // 4)
    a.case_time_s = a.case_time_s or (20.0 if cuda else 10.0)
    return a


def run(a: argparse.Namespace) -> dict:
    """Run every case of ``a`` (from :func:`parse_args`); returns the results (also written with ``--out``)."""
    device = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    deadline = t_start + a.budget_s if a.budget_s else None
    dt = getattr(torch, a.dtype)
    meta = dict(
        fb.environment(device, quick=False),
        small=a.small,
        dtype=a.dtype,
        iters=a.iters,
        eval_steps=a.eval_steps,
        overrides=a.overrides,
        compile_backend=a.compile_backend,
        args=" ".join(sys.argv[1:]),
    )
    if device.type == "cuda":
        meta["gpu_total_bytes"] = torch.cuda.get_device_properties(device).total_memory
    results = {"meta": meta, "roofline": fb.measure_roofline(device, dt, quick=a.small), "cases": []}
    out_dir = os.path.join(a.out, f"train-step-{device.type}-{meta['date']}") if a.out else None
    print(fb.meta_line(meta), f"roofline: {results['roofline']['copy_GBps']:.0f} GB/s copy", flush=True)
    for spec in a.specs:
        left = _deadline_left(deadline)
        if left < 20:
            row = {
                "case": spec["name"],
                "label": spec["label"],
                "batch": spec["batch"],
                "hidden": spec["hidden"],
                "seq_len": spec["seq_len"],
                "ema": spec["ema"],
                "skipped": f"time budget ({left:.0f} s left)",
            }
        else:
            row = run_case(spec, device, a, results["roofline"], deadline)
        results["cases"].append(row)
        print(
            json.dumps(
                {k: v for k, v in row.items() if k in ("case", "batch", "skipped")}
                | {
                    v: r.get("ms", r.get("error") or r.get("skipped"))
                    for v, r in row.get("train", {}).items()
                    if v != "fastest"
                }
                | {"floor": row.get("floor", {}).get("ms")},
                default=str,
            ),
            flush=True,
        )
        meta["runtime_s"] = time.perf_counter() - t_start
        if out_dir:
            _write(out_dir, results)
    meta["loadavg_end"] = fb._loadavg()
    md = markdown(results)
    print(md, flush=True)
    if out_dir:
        _write(out_dir, results)
        png = plot(results, os.path.join(out_dir, "x_floor.png"))
        print(f"wrote {out_dir} (results.json, results.md{', x_floor.png' if png else ''})", flush=True)
    return results


def main(argv=None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
