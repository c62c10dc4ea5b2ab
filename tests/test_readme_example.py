"""The README's Python example runs as written: a new user's first paste must not fail (a trial found an
undefined ``batch`` and a checkpoint name fastrecur never writes). The example is read from README.md, run in a
folder holding what `make train` would have made (a tiny run of the same preset, a small dataset), and its
results checked against the run itself."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "fastrecur.cli"]


def readme_python_example() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    start = text.index("## Use from Python")
    begin = text.index("```python\n", start) + len("```python\n")
    return text[begin : text.index("```", begin)]


def test_readme_python_example_runs(tmp_path):
    code = readme_python_example()
    assert 'load_model("runs/demo")' in code and "data/sudoku-4x4-cpu" in code  # the paths prepared below
    data = tmp_path / "data" / "sudoku-4x4-cpu"
    run = [
        CLI + ["data", "sudoku", "--size", "4", "--train", "128", "--test", "64", "--out", str(data)],
        CLI
        + ["train", "--preset", "sudoku-4x4-cpu", "--data", str(data), "--out", str(tmp_path / "runs" / "demo")]
        + ["--max-steps", "2", "--progress", "none", "--device", "cpu"],
    ]
    for cmd in run:
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    # The example's own prints, plus checks of what it computed against the run it loaded.
    check = (
        "\nassert result.predictions.shape == (64, 16) and int(result.steps.min()) >= 1\n"
        "assert torch.isfinite(loss) and model.model.inner.lm_head.weight.grad.abs().sum() > 0\n"
        "print('README example ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code + check], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "README example ok" in proc.stdout
