"""benchmarks/train_step.py (the training step at the papers' shapes) in its CPU mode: structure and internal
consistency of the results, the floor's byte count by hand, the largest-batch search on a stand-in predicate.

No speed is asserted beyond what must hold on any machine: a variant's step does the floor's GEMMs (within 2x:
the CPU is shared and the timings few).
The run is a tiny TRM recipe (hidden 64, one layer, two cycles, batch 4, fp32, one thread), with torch.compile
through dynamo's "eager" backend (the variant's plumbing, not inductor: that takes minutes on a small CPU).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch

from fastrecur.backend import backends

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
ts = importlib.import_module("train_step")

HAS_CPP = backends()["cpp"][0]
TINY = ["H_cycles=2", "L_cycles=2", "L_layers=1"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("train_step")
    n = torch.get_num_threads()
    args = ts.parse_args(
        [
            "--device",
            "cpu",
            "--small",
            "--cases",
            "trm_mlp_sudoku,trm_arc",
            "--dtype",
            "float32",
            "--batch",
            "4",
            "--set",
            *TINY,
            "--iters",
            "2",
            "--min-iters",
            "1",
            "--eval-steps",
            "2",
            "--threads",
            "1",
            "--compile-backend",
            "eager",
            "--out",
            str(out),
        ]
    )
    try:
        res = ts.run(args)
    finally:
        torch.set_num_threads(n)
    return res, out


def test_results_structure_and_files(results):
    res, out = results
    meta = res["meta"]
    for key in ("device", "torch", "date", "time", "threads", "dtype"):
        assert meta[key], key
    assert res["roofline"]["copy_GBps"] > 0
    assert [c["case"] for c in res["cases"]] == ["trm_mlp_sudoku", "trm_arc"]
    for case in res["cases"]:
        assert set(ts.TRAIN_VARIANTS) <= set(case["train"])
        for v in ts.TRAIN_VARIANTS:  # every variant is timed or says why not
            r = case["train"][v]
            assert "ms" in r or r.get("skipped"), (v, r)
        assert "error" not in json.dumps(case)
        assert case["train"]["cpp_graphs"]["skipped"].startswith("CUDA graphs")
        assert "ms" in case["train"]["eager"] and "ms" in case["train"]["compile"]
        assert set(ts.EVAL_VARIANTS) <= set(case["eval"])
        assert "ms" in case["eval"]["eager"]
    d = out / f"train-step-cpu-{meta['date']}"
    saved = json.loads((d / "results.json").read_text())
    assert saved["cases"][0]["train"]["eager"]["ms"] == res["cases"][0]["train"]["eager"]["ms"]
    md = (d / "results.md").read_text()
    assert "TRM-MLP Sudoku" in md and "**floor**" in md and meta["device"] in md
    assert "Evaluation pass: 2 ACT steps" in md


def test_derived_figures_are_consistent(results):
    res, _ = results
    copy_bw = res["roofline"]["copy_GBps"] * 1e9
    for case in res["cases"]:
        for rows, floor, batch in (
            (case["train"], case["floor"], case["batch"]),
            (case["eval"], case["eval_floor"], case["eval_batch"]),
        ):
            ew = floor["elementwise_bytes"]
            assert ew["total"] == ew["norms"] + ew["swiglu"] + ew["loss"] + ew["optimizer"]
            assert floor["elementwise_ms"] == pytest.approx(ew["total"] / copy_bw * 1e3)
            assert floor["ms"] == pytest.approx(floor["gemm_ms"] + floor["elementwise_ms"])
            timed = {v: r for v, r in rows.items() if v != "fastest" and "ms" in r}
            for v, r in timed.items():
                assert r["x_floor"] == pytest.approx(r["ms"] / floor["ms"])
                assert r["puzzles_per_s"] == pytest.approx(batch / (r["ms"] / 1e3))
                # A step does at least the floor's GEMMs. Up to timing noise on a shared CPU and the layouts the
                # floor picks at tiny shapes: under half of it would mean the floor counts work the step skips.
                assert r["ms_min"] >= 0.5 * floor["gemm_ms_min"], (v, r["ms_min"], floor)
            if "compile" in timed:
                for v, r in timed.items():
                    assert r["speedup_over_compile"] == pytest.approx(timed["compile"]["ms"] / r["ms"])
            mine = [v for v in ts.FASTRECUR_VARIANTS if v in timed]
            if mine:
                assert rows["fastest"]["variant"] == min(mine, key=lambda v: timed[v]["ms"])
        assert case["floor"]["elementwise_bytes"]["optimizer"] > 0
        assert case["eval_floor"]["elementwise_bytes"]["optimizer"] == 0


def test_variants_train_the_same_step(results):
    """Same initial weights, same batch: the first step's loss of every variant is eager's within fp32 rounding
    (1e-5 of the loss, the project's fp32 equality bound for model outputs)."""
    res, _ = results
    for case in res["cases"]:
        base = case["train"]["eager"]["first_step_metrics"]
        assert base["lm_loss"] > 0
        for v, r in case["train"].items():
            if "first_step_metrics" not in r:
                continue
            assert r["first_step_metrics"]["lm_loss"] == pytest.approx(base["lm_loss"], rel=1e-5), v
            assert r["first_step_metrics"]["q_halt_loss"] == pytest.approx(base["q_halt_loss"], rel=1e-5), v
            assert r["lm_loss_rel_diff_vs_eager"] <= 1e-5
        if HAS_CPP:
            assert "ms" in case["train"]["cpp"] and "ms" in case["eval"]["engine"]


def test_elementwise_bytes_by_hand():
    """TRM-MLP, 2 H cycles x (2 L updates + 1 H update) x 1 layer = 6 block passes, the last cycle's 3 with
    gradient; counted here from the formulas, not through op_cost."""
    spec = ts.case_spec("trm_mlp_sudoku", small=True, batch=2, overrides=TINY)
    tr = ts.make_trainer(spec, "eager", 2, torch.device("cpu"), "float32")
    model = tr.head.model
    B, S, D, L, V, elt = 2, 81 + 16, 64, 81, 11, 4
    M = B * S
    inter, inter_t = 256, 512  # swiglu_intermediate_size(64, 4), (97, 4): 2/3 of 4x (171, 259) rounded up to 256s
    n = sum(p.numel() for p in model.parameters())
    norm_fwd = 3 * M * D * elt + 4 * M
    act = M * inter * elt + B * D * inter_t * elt
    loss_fwd = B * L * V * elt + 3 * B * L * 8
    loss_bwd = B * L * 8 + B * L * V * elt + B * L * 8 + B * L * 8 + B * L * V * elt
    got = ts.elementwise_bytes(model, B, True, optimizer_params=n, ema=True)
    assert got["norms"] == 6 * 2 * norm_fwd + 3 * 2 * norm_fwd
    assert got["swiglu"] == 6 * 3 * act + 3 * 5 * act
    assert got["loss"] == loss_fwd + loss_bwd
    assert got["optimizer"] == 10 * 4 * n
    ev = ts.elementwise_bytes(model, B, False, steps=16)
    assert ev["norms"] == 16 * 6 * 2 * norm_fwd and ev["swiglu"] == 16 * 6 * 3 * act and ev["optimizer"] == 0
    assert ev["loss"] == 16 * loss_fwd


def test_largest_batch_search_on_a_stand_in():
    limit = 1000
    calls = []

    def fits(b):
        calls.append(b)
        return b <= limit

    far = time.perf_counter() + 60
    r = ts.largest_batch(fits, known=64, guess=900, max_probes=20, deadline=far)
    assert r["exact"] and limit - 8 < r["largest"] <= limit and r["fails_at"] > limit
    assert r["probes"][0] == (896, True)  # the guess first, rounded down to the granularity
    assert len(calls) == len(r["probes"]) <= 20
    r = ts.largest_batch(fits, known=64, guess=None, max_probes=2, deadline=far)  # cut short: not exact
    assert not r["exact"] and r["largest"] <= limit and len(r["probes"]) == 2
    r = ts.largest_batch(fits, known=64, guess=900, max_probes=20, deadline=time.perf_counter() - 1)
    assert r == {"largest": 64, "fails_at": None, "probes": [], "exact": False}
    with pytest.raises(ValueError, match="known"):
        ts.largest_batch(fits, known=0, guess=None, max_probes=1, deadline=far)


def test_estimate_largest_batch():
    # peak 10 GB at batch 100 with 2 GB fixed: 80 MB per item; 42 GB holds (42 - 2) / 0.08 = 500.
    assert ts.estimate_largest_batch(10 * 10**9, 2 * 10**9, 100, 42 * 10**9) == 500
    assert ts.estimate_largest_batch(10**9, 2 * 10**9, 100, 42 * 10**9) is None


def test_fixed_bytes_counts_weights_grads_moments_and_ema():
    spec = ts.case_spec("trm_arc", small=True, batch=2, overrides=TINY)
    tr = ts.make_trainer(spec, "eager", 2, torch.device("cpu"), "float32")
    params = sum(p.numel() * 4 for p in tr.head.model.parameters())
    table = 1000 * 64 * 4  # the puzzle-embedding table (--small: 1,000 ids x hidden 64, fp32)
    assert tr.head.model.inner.puzzle_emb.weights.numel() == 1000 * 64
    assert ts.fixed_bytes(tr) >= 5 * params + table


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--cases", "nope"], "case must be one of"),
        (["--variants", "eager,fast"], "unknown"),
        (["--iters", "0"], "must be >= 1"),
        (["--hidden", "100"], "multiple of 64"),
    ],
)
def test_bad_arguments_exit_2(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        ts.parse_args(["--device", "cpu"] + argv)
    assert e.value.code == 2
    assert match in capsys.readouterr().err


def test_cuda_request_without_cuda_exits_2(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit) as e:
        ts.parse_args(["--device", "cuda"])
    assert e.value.code == 2 and "no CUDA device" in capsys.readouterr().err


def test_papers_shapes():
    """The cases at full size are the papers' recipes (positions include the puzzle-embedding prefix)."""
    expect = {
        "trm_mlp_sudoku": (81, 768),
        "trm_mlp_sudoku_128": (81, 128),
        "trm_maze": (900, 192),
        "trm_maze_768": (900, 768),
        "hrm_sudoku": (81, 768),
        "trm_arc": (900, 192),
    }
    for name, (seq, batch) in expect.items():
        spec = ts.case_spec(name, small=False)
        assert (spec["seq_len"], spec["batch"], spec["hidden"]) == (seq, batch, 512)
    cfg = ts.train_config(ts.case_spec("hrm_sudoku", small=False), "eager", 768, torch.device("cpu"), "bfloat16")
    assert (cfg.arch["H_cycles"], cfg.arch["L_cycles"], cfg.arch["num_heads"], cfg.ema) == (2, 2, 8, False)
    assert os.path.basename(ts.__file__) == "train_step.py"
