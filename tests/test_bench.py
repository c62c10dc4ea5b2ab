"""The benchmark harness (``fastrecur.bench``) runs one tiny case per backend and writes valid results.

No speed assertions: these tests check that every section runs, that the numbers it derives are consistent
(bytes and FLOPs of the fused ops against ``fastrecur.kernel_report``; launch counts add up) and that the
JSON, markdown and README readout are written. tests/conftest.py sets TRITON_INTERPRET=1, so the Triton
variant runs here through the interpreter at the tiny shape.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from fastrecur import bench
from fastrecur.backend import backends

CPU = torch.device("cpu")
HAS_TRITON = backends()["triton"][0]
HAS_CPP = backends()["cpp"][0]


# --------------------------------------------------------------------------------------------- kernel level
def test_kernel_cases_cover_every_op_and_shape():
    cases = bench.kernel_cases("full")
    assert {c.op for c in cases} == set(bench.KERNEL_OPS)
    assert {c.shape for c in cases} == {"TRM-Sudoku", "HRM-Sudoku", "TRM-Maze"}
    assert {c.shape for c in cases if c.op == "token_mix_block"} == {"TRM-Sudoku"}  # TRM-MLP is a Sudoku model
    sudoku = next(c for c in cases if c.shape == "TRM-Sudoku")
    assert (sudoku.dims["B"], sudoku.dims["S"], sudoku.dims["D"]) == (768, 97, 512)
    assert next(c for c in cases if c.shape == "TRM-Maze").dims["S"] == 916
    assert all(c.dims["B"] < 768 for c in bench.kernel_cases("quick"))


def test_op_cost_agrees_with_kernel_report():
    """The forward bytes/FLOPs used for GB/s and the roofline are kernel_report's counts of the same ops."""
    from fastrecur.kernel_report import traffic_rows

    for t in traffic_rows():
        dims = dict(bench.KERNEL_SHAPES[t["shape"]])
        if t["op"] == "stablemax_cross_entropy":
            dims.update(L=dims["S"], V=11)  # kernel_report takes logits over all S positions, vocab 11
        cost = bench.op_cost(t["op"], dims, elt=2)["fwd"]
        assert cost["flops"] == t["flops"], t
        extra = 8 * dims["B"] * dims["S"] if t["op"] == "stablemax_cross_entropy" else 0  # + saved fp64 row sums
        assert cost["bytes"] == t["fused_bytes"] + extra, t
        both = bench.op_cost(t["op"], dims, elt=2)["fwd+bwd"]
        assert both["bytes"] > cost["bytes"] and both["flops"] > cost["flops"]


@pytest.mark.parametrize("variant", ["eager"] + (["triton"] if HAS_TRITON else []))
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_kernel_case_runs(variant, mode):
    case = next(c for c in bench.kernel_cases("tiny") if c.op == "add_rms_norm")
    roof = {"copy_GBps": 10.0, "matmul_TFLOPs": 0.1}
    row = bench.run_kernel_case(case, variant, mode, CPU, torch.float32, warmup=0, iters=1, roofline=roof)
    assert "error" not in row, row.get("error")
    assert row["ms"] > 0 and row["GBps"] > 0 and row["roofline_frac"] > 0
    assert row["bytes"] == bench.op_cost("add_rms_norm", case.dims, 4)[mode]["bytes"]


def test_kernel_variants_compute_the_same():
    """The timed callables are the real ops: fused and eager agree on the tiny case (fp32)."""
    if not HAS_TRITON:
        pytest.skip("triton not available")
    for case in bench.kernel_cases("tiny", ["add_rms_norm", "stablemax_cross_entropy"]):
        torch.manual_seed(0)
        args, _ = case.make_inputs(CPU, torch.float32)
        torch.testing.assert_close(case.fused(*args), case.eager(*args), rtol=1e-5, atol=1e-5)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="scale"):
        bench.kernel_shapes("huge")
    with pytest.raises(ValueError, match="unknown op"):
        bench.op_cost("softmax", bench.KERNEL_SHAPES["TRM-Sudoku"])
    with pytest.raises(ValueError, match="unknown op"):
        bench.kernel_cases("tiny", ["nope"])
    with pytest.raises(ValueError, match="arch"):
        bench.sudoku_cfg("gpt", "float32", 1)
    assert (
        bench.main(["--archs", "gpt", "--out", "/nonexistent-never-written"]) == 2
    )  # one line: tests/test_cli_errors.py


def test_triton_not_timed_on_cpu_unless_asked():
    ok, why = bench.triton_usable(CPU, requested_on_cpu=False)
    assert not ok and "interpreter" in why


# --------------------------------------------------------------------------------------------- counters
def test_counters_add_up():
    row = bench.counter_rows("hrm", "eager", CPU, hidden=64, dtype="float32", seq_len=4)
    for step in ("eval_step", "train_step"):
        c = row[step]
        assert c["total"] == c["aten"] + c["triton"] + c["cpp_native"]
        assert c["aten"] > 0 and c["triton"] == 0 and c["cpp_native"] == 0
    assert row["train_step"]["total"] > row["eval_step"]["total"]  # backward launches kernels too
    assert row["saved_bytes"] > 0 and row["saved_tensors"] > 0


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
def test_counters_cpp_reports_native_ops():
    row = bench.counter_rows("hrm", "cpp", CPU, hidden=64, dtype="float32", seq_len=4)
    assert row["eval_step"]["cpp_calls"] == 1 and row["eval_step"]["cpp_native"] > 0
    eager = bench.counter_rows("hrm", "eager", CPU, hidden=64, dtype="float32", seq_len=4)
    # the C++ loop replaces the Python-issued ATen calls of the no-grad steps
    assert row["eval_step"]["aten"] < eager["eval_step"]["aten"]


def test_saved_bytes_grow_with_grad_cycles():
    """The grad_cycles sweep measures what issue 9 is about: more cycles with gradient keep more activations."""
    saved = []
    for gc in (1, 2):
        cfg = dict(bench.sudoku_cfg("trm", "float32", 1, 64, 4), grad_cycles=gc)
        model = bench.build("trm", cfg, "eager")
        data = bench.sudoku_batch(cfg, CPU)
        head = bench.ACTLossHead(model).train()
        carry = head.initial_carry(data)
        saved.append(bench.saved_bytes(lambda: head(carry=carry, batch=data)[1].backward(), model)["saved_bytes"])
    assert saved[1] > saved[0]


# --------------------------------------------------------------------------------------------- CLI end to end
def test_cli_writes_json_markdown_and_readout(tmp_path, capsys):
    argv = [
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
        "--quick",
        "--no-compile",
        "--archs",
        "hrm",
        "--hidden",
        "64",
        "--seq-len",
        "4",
        "--batches",
        "1",
        "--solve-steps",
        "2",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--kernel-scale",
        "tiny",
        "--ops",
        "add_rms_norm",
        "--sections",
        "kernels,models,counters",
    ]
    assert bench.main(argv) == 0
    (out,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert out.name.startswith("cpu-")
    results = json.loads((out / "results.json").read_text())
    meta = results["meta"]
    for key in ("device", "torch", "triton", "date", "threads"):
        assert key in meta
    assert meta["runtime_s"] > 0
    variants = {r["variant"] for r in results["kernels"]}
    assert variants == {"eager", "compile", "triton"}
    assert all("ms" in r or "skipped" in r for r in results["kernels"])
    models = {(r["kind"], r["variant"]): r for r in results["models"]}
    for kind in ("train", "solve"):
        assert models[(kind, "eager")]["puzzles_per_s"] > 0
        assert models[(kind, "gemm_floor")]["ms"] > 0
        assert models[(kind, "compile")]["skipped"] == "--no-compile"
        assert "error" not in models[(kind, "cpp")] and ("ms" in models[(kind, "cpp")]) == HAS_CPP
    counters = {r["backend"]: r for r in results["counters"]}
    assert counters["eager"]["eval_step"]["total"] > 0
    if HAS_TRITON:  # in process: the interpreter is on under tests/conftest.py
        assert counters["triton"]["eval_step"]["triton"] > 0
    md = (out / "results.md").read_text()
    assert meta["date"] in md and meta["torch"] in md and "| HRM | train step | 1 | eager |" in md
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not (out / "speedup.png").exists()
    else:
        assert (out / "speedup.png").stat().st_size > 0

    capsys.readouterr()
    assert bench.main(["--readout", str(out / "results.json")]) == 0
    text = capsys.readouterr().out
    assert text.startswith("## Results") and meta["device"] in text and "### Models" in text
    assert os.path.basename(str(out)) in text


@pytest.mark.skipif(not HAS_TRITON, reason="triton not available")
def test_triton_launches_counted_per_kernel():
    """One fused add_rms_norm forward + backward = one forward and one backward Triton launch, executed or not."""
    case = next(c for c in bench.kernel_cases("tiny") if c.op == "add_rms_norm")
    fn = bench.kernel_callable(case, "triton", "fwd+bwd", CPU, torch.float32)
    counts = bench.count_launches(fn, CPU)
    assert counts["triton"] == 2 and counts["total"] == counts["aten"] + 2
    with bench.TritonLaunchCounter(execute=False) as dry:
        assert bench.count_launches(fn, CPU, dry)["triton"] == 2


# ----------------------------------------------------------------- argument errors of the benchmark scripts
def _act_step_floor_main():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "act_step_floor.py"
    spec = importlib.util.spec_from_file_location("act_step_floor", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _status_and_err(main, argv, capsys):
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's errors (one line, exit status 2)
        status = e.code
    return status, capsys.readouterr()


def _check_refused_before_work(module_name, work, argv, message, tmp_path, capsys, monkeypatch):
    """fastrecur.bench.<module_name> refuses ``argv`` in one line naming the argument, exit 2, before any work:
    ``work`` (its timing function) is never called and no thread count is set."""
    import importlib

    module = importlib.import_module(f"fastrecur.bench.{module_name}")
    timed = []
    monkeypatch.setattr(module, work, lambda *a, **k: timed.append(a) or [])
    monkeypatch.setattr(torch, "set_num_threads", lambda n: timed.append(n))
    (tmp_path / "f").write_text("x")
    argv = [x.replace("{file}", str(tmp_path / "f")) for x in argv]
    status, cap = _status_and_err(module.main, ["--batches", "1", *argv], capsys)
    prefix = f"fastrecur bench.{module_name}: "
    assert status == 2 and cap.err.startswith(prefix) and cap.err.count("\n") == 1, cap.err
    assert message.replace("{file}", str(tmp_path / "f")) in cap.err
    assert timed == [] and cap.out == ""


BAD_BENCH_ARGUMENTS = [
    (["--threads", "-1"], "argument --threads: must be >= 1, got -1"),
    (["--threads", "0"], "argument --threads: must be >= 1, got 0"),
    (["--dtypes", "int8"], "--dtypes: unknown ['int8']"),
    (["--dtypes", "float32,float64"], "--dtypes: unknown ['float64']"),
    (["--batches", "0"], "--batches must be comma-separated integers >= 1"),
    (["--batches", "1,x"], "--batches must be comma-separated integers >= 1"),
    (["--out", "{file}"], "--out '{file}': '{file}' is a file"),
    (["--out", "/proc/fastrecur-nope"], "--out '/proc/fastrecur-nope': cannot create"),
]


@pytest.mark.parametrize(
    "argv, message",
    BAD_BENCH_ARGUMENTS
    + [
        (["--kernels", "foo"], "--kernels: unknown ['foo']"),
        (["--kernels", ""], "--kernels: no name given"),
        (["--rounds", "0"], "argument --rounds: must be >= 1, got 0"),
    ],
)
def test_roofline_argument_errors(tmp_path, capsys, monkeypatch, argv, message):
    _check_refused_before_work("roofline", "kernel_roofline", argv, message, tmp_path, capsys, monkeypatch)


@pytest.mark.parametrize(
    "argv, message",
    BAD_BENCH_ARGUMENTS[2:]
    + [
        (["--archs", "gpt"], "--archs: unknown ['gpt']"),
        (["--iters", "0"], "argument --iters: must be >= 1, got 0"),
        (["--iters-large", "-2"], "argument --iters-large: must be >= 1, got -2"),
        (["--cpp-gemms", "mkl"], "--cpp-gemms: unknown ['mkl']"),
        (["--device", "cuda", "--cpp-gemms", "onednn"], "--cpp-gemms: the GEMM library is a CPU setting"),
    ],
)
def test_act_step_floor_argument_errors(tmp_path, capsys, argv, message):
    main = _act_step_floor_main()
    (tmp_path / "f").write_text("x")
    argv = [x.replace("{file}", str(tmp_path / "f")) for x in argv]
    status, cap = _status_and_err(main, ["--batches", "1", *argv], capsys)
    assert status == 2 and cap.err.startswith("fastrecur act_step_floor: ") and cap.err.count("\n") == 1, cap.err
    assert message.replace("{file}", str(tmp_path / "f")) in cap.err
    assert cap.out == ""  # nothing timed (the device line is the first thing a run prints)


@pytest.mark.parametrize(
    "argv, message", BAD_BENCH_ARGUMENTS + [(["--rounds", "0"], "argument --rounds: must be >= 1, got 0")]
)
def test_gemm_fusion_argument_errors(tmp_path, capsys, monkeypatch, argv, message):
    _check_refused_before_work("gemm_fusion", "fusion_rows", argv, message, tmp_path, capsys, monkeypatch)


def test_bench_output_folder_checked_before_work(capsys):
    status, cap = _status_and_err(bench.main, ["--sections", "counters", "--out", "/proc/fastrecur-nope"], capsys)
    assert status == 2 and "fastrecur bench: --out '/proc/fastrecur-nope': cannot create" in cap.err
    assert cap.out == ""


# ------------------------------------------- the extension's status when the imported package has no _C
@pytest.mark.parametrize("layout", ["checkout", "installed", "checkout-with-stale-library"])
def test_extension_status_names_the_imported_package(tmp_path, monkeypatch, layout):
    # `python -m fastrecur.bench.roofline` from a source checkout's root imports that checkout, not the installed
    # package: the message must say where the imported package is and what to do, not only "build it".
    from fastrecur import _ext

    package = tmp_path / "fastrecur"
    package.mkdir()
    if layout.startswith("checkout"):
        (tmp_path / "setup.py").write_text("")
    if layout.endswith("stale-library"):
        (package / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    monkeypatch.setattr(_ext, "__file__", str(package / "_ext.py"))
    monkeypatch.setattr(_ext, "_C", None)
    monkeypatch.setattr(_ext, "_OVERRIDE", None)
    monkeypatch.setattr(_ext, "_MISMATCH", None)
    monkeypatch.setattr(_ext, "_IMPORT_ERROR", "ImportError: cannot import name '_C' from 'fastrecur'")
    text = _ext.status()
    if layout == "checkout-with-stale-library":
        assert f"fastrecur._C at {package}/_C.cpython-311-x86_64-linux-gnu.so could not be loaded" in text
        assert "another torch" in text
        return
    assert f"the imported fastrecur package is at {package}, which has no built extension" in text
    assert "run from another folder" in text and "pip install --no-build-isolation -e ." in text
    assert ("it is a source checkout" in text) == (layout == "checkout")
    assert ("reinstall fastrecur" in text) == (layout == "installed")
    with pytest.raises(RuntimeError, match="imported fastrecur package is at"):
        _ext.ops()
