"""Bad inputs to every command end as one line ``fastrecur CMD: ...`` on stderr and exit status 2, no traceback
(``fastrecur.cli``); every row of ``docs/bad-inputs.md`` is a row of ``ROWS`` here (or names the test that holds it).

Each row runs ``fastrecur.cli.main(argv)`` in this process (the command's own code path, fast); three of them also
run as a real ``python -m fastrecur.cli`` process. Datasets and the model are tiny and made in a temporary folder.
"""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

import fastrecur
from fastrecur.cli import InputError, check_dataset_matches_model, check_output_dir, main, resolve_device, run_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastrecur.__file__)))
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
TINY_ARCH = [
    "name=TRM",
    "H_cycles=1",
    "L_cycles=1",
    "H_layers=0",
    "L_layers=1",
    "hidden_size=16",
    "num_heads=1",
    "expansion=2",
    "puzzle_emb_ndim=16",
    "puzzle_emb_len=1",
    "forward_dtype=float32",
    "halt_max_steps=2",
]
SUDOKU4 = "3.1.......3....4"

# (id, argv with {placeholders}, what the one line must contain, with placeholders too). Placeholders: s4 / s6
# (4x4 / 6x6 Sudoku datasets), mixed (4x4 train split, 6x6 test split), run4 (a model trained on s4), truncated
# (its checkpoint folder with the weights file cut to 100 bytes), mismatched (with a config.json of another hidden
# size), tmp (an empty folder), file (a plain file).
ROWS = [
    # fastrecur itself
    ("unknown-command", ["solv", "{run4}"], "unknown command 'solv'"),
    # data
    ("data-no-kind", ["data"], "required: KIND"),
    ("data-unknown-kind", ["data", "sudokuu", "--out", "{tmp}/d"], "invalid choice: 'sudokuu'"),
    ("data-sudoku-no-out", ["data", "sudoku"], "required: --out"),
    ("data-sudoku-size", ["data", "sudoku", "--out", "{tmp}/d", "--size", "5"], "invalid choice: 5"),
    ("data-sudoku-train-0", ["data", "sudoku", "--out", "{tmp}/d", "--size", "4", "--train", "0"], "1..100000"),
    ("data-sudoku-not-int", ["data", "sudoku", "--out", "{tmp}/d", "--train", "ten"], "expected an integer, got 'ten'"),
    ("data-sudoku-givens", ["data", "sudoku", "--out", "{tmp}/d", "--size", "4", "--givens", "100"], "givens"),
    ("data-sudoku-out-is-file", ["data", "sudoku", "--out", "{file}", "--size", "4"], "is a file"),
    ("data-maze-size", ["data", "maze", "--out", "{tmp}/m", "--size", "1"], "argument --size: must be in 3..64"),
    ("data-maze-loop-frac", ["data", "maze", "--out", "{tmp}/m", "--size", "5", "--loop-frac", "2"], "loop_frac"),
    ("data-maze-aug", ["data", "maze", "--out", "{tmp}/m", "--aug", "9"], "invalid choice: 9"),
    (
        "data-maze-impossible-path",
        ["data", "maze", "--out", "{tmp}/m", "--size", "5", "--min-path", "1000", "--train", "1", "--test", "1"],
        "a 5x5 maze has no path of 25 or more steps",
    ),
    # train
    ("train-no-data", ["train", "--out", "{tmp}/r"], "--data is required"),
    (
        "train-missing-data",
        ["train", "--data", "{tmp}/none", "--out", "{tmp}/r", "--device", "cpu"],
        "has no train/dataset.json",
    ),
    ("train-device-name", ["train", "--data", "{s4}", "--device", "gpu"], "device must be"),
    ("train-bad-override", ["train", "--data", "{s4}", "--set", "hidden_size"], "must be KEY=VALUE"),
    (
        "train-override-not-a-number",
        ["train", "--data", "{s4}", "--set", "hidden_size=abc"],
        "TRM config: 'hidden_size' must be int, got str ('abc')",
    ),
    (
        "train-model-config",
        [
            "train",
            "--data",
            "{s4}",
            "--out",
            "{tmp}/r",
            "--device",
            "cpu",
            "--set",
            *TINY_ARCH,
            "hidden_size=33",
            "num_heads=2",
            "--global-batch-size",
            "8",
        ],
        "not divisible by num_heads",
    ),
    (
        "train-set-seq-len",
        ["train", "--data", "{s4}", "--out", "{tmp}/r", "--global-batch-size", "8", "--set", "seq_len=99"],
        "seq_len=99, but seq_len comes from the dataset's metadata, which gives 16",
    ),
    (
        "train-set-vocab-size",
        ["train", "--data", "{s4}", "--out", "{tmp}/r", "--global-batch-size", "8", "--set", "vocab_size=3"],
        "vocab_size=3, but vocab_size comes from the dataset's metadata, which gives 6",
    ),
    ("train-arch-and-config", ["train", "--data", "{s4}", "--arch", "trm", "--arch-config", "x.yaml"], "not both"),
    ("train-arch-config-missing", ["train", "--data", "{s4}", "--arch-config", "{tmp}/none.yaml"], "does not exist"),
    ("train-max-steps-0", ["train", "--data", "{s4}", "--max-steps", "0"], "max_steps must be"),
    ("train-lr-negative", ["train", "--data", "{s4}", "--lr", "-1"], "lr must be"),
    ("train-lr-nan", ["train", "--data", "{s4}", "--out", "{tmp}/r", "--lr", "nan"], "lr must be a finite number"),
    ("train-beta2-1", ["train", "--data", "{s4}", "--out", "{tmp}/r", "--beta2", "1"], "beta2 must be in [0, 1)"),
    ("train-not-int", ["train", "--data", "{s4}", "--global-batch-size", "abc"], "invalid int value: 'abc'"),
    (
        "train-batch-over-dataset",
        [
            "train",
            "--data",
            "{s4}",
            "--out",
            "{tmp}/r",
            "--device",
            "cpu",
            "--set",
            *TINY_ARCH,
            "--global-batch-size",
            "64",
        ],
        "too few for one batch",
    ),
    ("train-out-empty", ["train", "--data", "{s4}", "--out", ""], "--out is empty"),
    ("train-out-is-file", ["train", "--data", "{s4}", "--out", "{file}", "--device", "cpu"], "cannot be written"),
    (
        "train-resume-missing",
        [
            "train",
            "--data",
            "{s4}",
            "--out",
            "{tmp}/r",
            "--device",
            "cpu",
            "--set",
            *TINY_ARCH,
            "--global-batch-size",
            "8",
            "--resume",
            "{tmp}/none",
        ],
        "does not exist",
    ),
    (
        "train-resume-file",
        [
            "train",
            "--data",
            "{s4}",
            "--out",
            "{tmp}/r",
            "--device",
            "cpu",
            "--set",
            *TINY_ARCH,
            "--global-batch-size",
            "8",
            "--resume",
            "{file}",
        ],
        "checkpoint '{file}' is a file, not a checkpoint",
    ),
    (
        "train-resume-other-model",
        [
            "train",
            "--data",
            "{s4}",
            "--out",
            "{tmp}/r",
            "--device",
            "cpu",
            "--set",
            *TINY_ARCH,
            "hidden_size=32",
            "--global-batch-size",
            "8",
            "--resume",
            "{run4}",
        ],
        "holds another model than this run's: hidden_size is 16 there, 32 in this run",
    ),
    (
        "train-resume-already-done",
        [
            "train",
            "--data",
            "{s4}",
            "--out",
            "{tmp}/r",
            "--device",
            "cpu",
            "--set",
            *TINY_ARCH,
            "--global-batch-size",
            "8",
            "--max-steps",
            "1",
            "--resume",
            "{run4}",
        ],
        "is already at step 1 and this run stops at step 1",
    ),
    (
        "train-test-split-mismatch",
        [
            "train",
            "--data",
            "{mixed}",
            "--out",
            "{tmp}/r",
            "--device",
            "cpu",
            "--set",
            *TINY_ARCH,
            "--global-batch-size",
            "8",
        ],
        "has seq_len 36",
    ),
    # eval
    ("eval-no-args", ["eval"], "required: checkpoint, dataset"),
    ("eval-missing-checkpoint", ["eval", "{tmp}/none", "{s4}"], "does not exist"),
    ("eval-dataset-as-checkpoint", ["eval", "{s4}", "{s4}"], "neither a run folder"),
    ("eval-file-as-checkpoint", ["eval", "{file}", "{s4}"], "checkpoint '{file}' is a file, not a checkpoint"),
    (
        "eval-truncated-checkpoint",
        ["eval", "{truncated}", "{s4}", "--no-ema", "--device", "cpu"],
        "not a readable safetensors file",
    ),
    ("eval-6x6-data-4x4-model", ["eval", "{run4}", "{s6}", "--device", "cpu"], "takes sequences of 16 tokens"),
    ("eval-missing-dataset", ["eval", "{run4}", "{tmp}/none", "--device", "cpu"], "dataset.json does not exist"),
    ("eval-unknown-split", ["eval", "{run4}", "{s4}", "--split", "dev", "--device", "cpu"], "dev/dataset.json"),
    ("eval-batch-size-0", ["eval", "{run4}", "{s4}", "--batch-size", "0"], "--batch-size: must be >= 1"),
    ("eval-steps-0", ["eval", "{run4}", "{s4}", "--steps", "0"], "--steps: must be >= 1"),
    ("eval-device-name", ["eval", "{run4}", "{s4}", "--device", "gpu"], "not a device name"),
    # solve
    ("solve-no-puzzle", ["solve", "{run4}"], "one of the arguments"),
    ("solve-missing-checkpoint", ["solve", "{tmp}/none", "--puzzle", SUDOKU4], "does not exist"),
    (
        "solve-checkpoint-config-mismatch",
        ["solve", "{mismatched}", "--puzzle", SUDOKU4, "--no-ema"],
        "does not match its config.json",
    ),
    ("solve-wrong-size", ["solve", "{run4}", "--puzzle", "." * 81], "takes 16 tokens"),
    ("solve-bad-cells", ["solve", "{run4}", "--puzzle", "1..4....2..1.3.9"], "are not digits 1..4"),
    ("solve-tokens-out-of-vocab", ["solve", "{run4}", "--tokens", " ".join(["99"] * 16)], "token ids must be in"),
    ("solve-steps-0", ["solve", "{run4}", "--puzzle", SUDOKU4, "--steps", "0"], "--steps: must be >= 1"),
    ("solve-puzzle-id", ["solve", "{run4}", "--puzzle", SUDOKU4, "--puzzle-id", "7"], "--puzzle-id must be in [0, 1)"),
    # inspect
    ("inspect-no-input", ["inspect", "{run4}", "--out", "{tmp}/i"], "give a DATASET folder or --puzzle"),
    ("inspect-6x6-data-4x4-model", ["inspect", "{run4}", "{s6}", "--out", "{tmp}/i"], "has seq_len 36"),
    ("inspect-max-examples-0", ["inspect", "{run4}", "{s4}", "--max-examples", "0"], "must be >= 1"),
    ("inspect-out-is-file", ["inspect", "{run4}", "{s4}", "--out", "{file}"], "is a file"),
    ("inspect-puzzle-size", ["inspect", "{run4}", "--puzzle", "." * 36, "--out", "{tmp}/i"], "model takes seq_len=16"),
    # bench
    ("bench-archs", ["bench", "--archs", "gpt", "--out", "{tmp}/b"], "--archs: unknown ['gpt']"),
    ("bench-sections", ["bench", "--sections", "kernel", "--out", "{tmp}/b"], "--sections: unknown ['kernel']"),
    ("bench-ops", ["bench", "--ops", "softmax", "--out", "{tmp}/b"], "--ops: unknown ['softmax']"),
    ("bench-batches", ["bench", "--batches", "0,8", "--out", "{tmp}/b"], "--batches must be"),
    ("bench-iters-0", ["bench", "--iters", "0"], "--iters: must be >= 1"),
    ("eval-submission-is-file", ["eval", "{run4}", "{s4}", "--submission", "{file}"], "is a file"),
    ("bench-dtype", ["bench", "--dtype", "int8"], "invalid choice: 'int8'"),
    ("bench-readout-missing", ["bench", "--readout", "{tmp}/none.json"], "no such file"),
    ("bench-out-is-file", ["bench", "--sections", "counters", "--out", "{file}", "--device", "cpu"], "is a file"),
]
# Devices this machine lacks: only where it has no CUDA.
CUDA_ROWS = [
    ("train-device-cuda", ["train", "--data", "{s4}", "--device", "cuda"], "no usable CUDA device"),
    ("eval-device-cuda", ["eval", "{run4}", "{s4}", "--device", "cuda"], "no usable CUDA device"),
    ("solve-device-cuda", ["solve", "{run4}", "--puzzle", SUDOKU4, "--device", "cuda"], "no usable CUDA device"),
    ("inspect-device-cuda", ["inspect", "{run4}", "{s4}", "--device", "cuda:1"], "no usable CUDA device"),
    ("bench-device-cuda", ["bench", "--device", "cuda"], "no usable CUDA device"),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """The placeholders' values: two tiny datasets, a mixed one, a model trained for one step on the 4x4 one."""
    import shutil

    from fastrecur.data import build_sudoku_dataset

    root = tmp_path_factory.mktemp("bad-inputs")
    s4, s6, mixed = str(root / "s4"), str(root / "s6"), root / "mixed"
    build_sudoku_dataset(s4, n=4, num_train=16, num_test=8, seed=0)
    build_sudoku_dataset(s6, n=6, num_train=2, num_test=4, seed=0)
    shutil.copytree(os.path.join(s4, "train"), mixed / "train")
    shutil.copytree(os.path.join(s6, "test"), mixed / "test")
    run4 = str(root / "run4")
    assert (
        main(
            [
                "train",
                "--data",
                s4,
                "--out",
                run4,
                "--device",
                "cpu",
                "--set",
                *TINY_ARCH,
                "--global-batch-size",
                "8",
                "--max-steps",
                "1",
                "--threads",
                "1",
                "--progress",
                "none",
                "--no-plot",
            ]
        )
        == 0
    )
    (root / "file").write_text("not a folder\n")
    step = os.path.join(run4, "checkpoints", "step_00000001")
    truncated, mismatched = root / "truncated", root / "mismatched"
    shutil.copytree(step, truncated)
    with open(truncated / "model.safetensors", "r+b") as f:
        f.truncate(100)
    shutil.copytree(step, mismatched)
    config = json.loads((mismatched / "config.json").read_text())
    config["model_config"]["hidden_size"] = 32
    (mismatched / "config.json").write_text(json.dumps(config))
    return {
        "s4": s4,
        "s6": s6,
        "mixed": str(mixed),
        "run4": run4,
        "file": str(root / "file"),
        "truncated": str(truncated),
        "mismatched": str(mismatched),
    }


def _argv(argv, places, tmp_path):
    return [a.format(tmp=str(tmp_path), **places) for a in argv]


def _one_line(argv, capsys):
    """``main(argv)``'s exit status and its stderr lines (argparse's exit is caught as a status)."""
    try:
        status = main(argv)
    except SystemExit as e:
        status = e.code
    return status, capsys.readouterr().err.strip().splitlines()


def _command(argv):
    """What the line starts with: ``fastrecur``, ``fastrecur data sudoku`` or ``fastrecur CMD``."""
    if argv[0] not in ("data", "train", "eval", "solve", "inspect", "bench"):
        return "fastrecur"
    if argv[0] == "data" and len(argv) > 1 and argv[1] in ("sudoku", "maze"):
        return f"fastrecur data {argv[1]}"
    return f"fastrecur {argv[0]}"


@pytest.mark.parametrize(
    "argv,says",
    [pytest.param(a, s, id=i) for i, a, s in ROWS] + [pytest.param(a, s, id=i, marks=NO_CUDA) for i, a, s in CUDA_ROWS],
)
def test_bad_input_is_one_line_and_status_2(argv, says, places, tmp_path, capsys):
    argv, (says,) = _argv(argv, places, tmp_path), _argv([says], places, tmp_path)
    status, err = _one_line(argv, capsys)
    assert status == 2, (status, err)
    assert len(err) == 1, err
    assert err[0].startswith(_command(argv) + ": "), err
    assert says in err[0], err
    if argv[0] == "train" and "--out" in argv and argv[argv.index("--out") + 1].startswith(str(tmp_path)):
        assert os.listdir(tmp_path) == [], "an input error left a run folder behind"


def test_a_train_input_error_leaves_no_run_folder(places, tmp_path, capsys):
    """fastrecur train creates its --out folder only once every input is accepted: a new folder (and its new
    parents) is not created, an existing one is left as it was."""
    bad = ["train", "--data", places["s4"], "--device", "cpu", "--set", *TINY_ARCH, "--global-batch-size", "64"]
    status, err = _one_line(bad + ["--out", str(tmp_path / "new" / "run")], capsys)
    assert status == 2 and "too few for one batch" in err[0], err
    assert os.listdir(tmp_path) == []
    (tmp_path / "mine").mkdir()
    status, err = _one_line(bad + ["--out", str(tmp_path / "mine")], capsys)
    assert status == 2 and "too few for one batch" in err[0], err
    assert os.listdir(tmp_path) == ["mine"] and os.listdir(tmp_path / "mine") == []


def test_catalogue_lists_every_row():
    """docs/bad-inputs.md has a row for each case here (and only those)."""
    with open(os.path.join(REPO, "docs", "bad-inputs.md")) as f:
        text = f.read()
    listed = set(re.findall(r"^\| `([a-z0-9-]+)` \|", text, flags=re.M))
    assert listed == {r[0] for r in ROWS + CUDA_ROWS}, listed ^ {r[0] for r in ROWS + CUDA_ROWS}


@pytest.mark.parametrize(
    "argv,says",
    [
        (["eval", "{run4}", "{s6}", "--device", "cpu"], "fastrecur eval: the model of "),
        (["data", "sudoku", "--out", "{tmp}/d", "--size", "5"], "fastrecur data sudoku: argument --size"),
        (["bench", "--archs", "gpt", "--out", "{tmp}/b"], "fastrecur bench: --archs"),
    ],
)
def test_a_real_process_prints_one_line_and_exits_2(argv, says, places, tmp_path):
    env = dict(os.environ, PYTHONPATH=PKG_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "fastrecur.cli", *_argv(argv, places, tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    err = [line for line in proc.stderr.splitlines() if "Warning" not in line and line.strip()]
    assert proc.returncode == 2 and len(err) == 1 and err[0].startswith(says), proc.stderr
    assert "Traceback" not in proc.stderr


# ----- the mechanism: what counts as an input error, and what does not -----
def test_a_bug_keeps_its_traceback():
    """Only the input-error kinds become one line: a plain ValueError or KeyError raised by a command is a bug in
    fastrecur and propagates."""

    def buggy(exc):
        def run(args):
            raise exc

        return run

    with pytest.raises(ValueError, match="internal"):
        run_command("eval", buggy(ValueError("internal")), None)
    with pytest.raises(KeyError):
        run_command("eval", buggy(KeyError("k")), None)
    assert run_command("eval", buggy(InputError("wrong\ninput")), None) == 2


def test_input_error_is_a_value_error_on_one_line(capsys):
    assert issubclass(InputError, ValueError)
    assert run_command("solve", lambda a: (_ for _ in ()).throw(InputError("two\n  lines")), None) == 2
    assert capsys.readouterr().err == "fastrecur solve: two lines\n"


@pytest.mark.parametrize(
    "name,says",
    [
        ("gpu", "not a device name"),
        ("xla", "fastrecur runs on cpu or cuda"),
        pytest.param("cuda", "no usable CUDA device", marks=NO_CUDA),
        pytest.param("cuda:3", "no usable CUDA device", marks=NO_CUDA),
    ],
)
def test_resolve_device_refuses_devices_this_machine_lacks(name, says):
    with pytest.raises(InputError, match=says):
        resolve_device(name)


def test_resolve_device_accepts():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_check_output_dir(tmp_path):
    check_output_dir(str(tmp_path / "new" / "deeper"))  # may be created later
    (tmp_path / "f").write_text("")
    with pytest.raises(InputError, match="is a file"):
        check_output_dir(str(tmp_path / "f"))
    with pytest.raises(InputError, match="is a file"):
        check_output_dir(str(tmp_path / "f" / "below"), "--out")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    "model,data,says",
    [
        (
            dict(seq_len=16, vocab_size=6, num_puzzle_identifiers=1),
            dict(seq_len=36, vocab_size=8, num_puzzle_identifiers=1),
            "seq_len 36",
        ),
        (
            dict(seq_len=81, vocab_size=11, num_puzzle_identifiers=1),
            dict(seq_len=81, vocab_size=12, num_puzzle_identifiers=1),
            "vocabulary of 11",
        ),
        (
            dict(seq_len=900, vocab_size=12, num_puzzle_identifiers=10, puzzle_emb_ndim=8),
            dict(seq_len=900, vocab_size=12, num_puzzle_identifiers=20),
            "embeds 10 puzzle identifiers but",
        ),
    ],
)
def test_dataset_model_mismatch(model, data, says):
    with pytest.raises(InputError, match=says):
        check_dataset_matches_model(model, data)


def test_dataset_model_match():
    check_dataset_matches_model(
        dict(seq_len=900, vocab_size=12, num_puzzle_identifiers=10, puzzle_emb_ndim=8),
        dict(seq_len=900, vocab_size=12, num_puzzle_identifiers=3),
    )
    # without puzzle embeddings the identifiers are not looked up
    check_dataset_matches_model(
        dict(seq_len=16, vocab_size=6, num_puzzle_identifiers=1, puzzle_emb_ndim=0),
        dict(seq_len=16, vocab_size=6, num_puzzle_identifiers=5),
    )


def test_a_backend_that_cannot_run_here_is_refused_before_work(monkeypatch):
    """--backend triton on a CPU without the interpreter (and the C++ loop on CUDA without its kernels) are
    input errors named before anything runs: ``check_available``, which load_model, the Trainer and the engine
    call."""
    import torch

    from fastrecur import backend
    from fastrecur.ops import _validate

    monkeypatch.setattr(_validate, "triton_interpreter_enabled", lambda: False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        backend.check_available("triton", torch.device("cpu"))
    assert backend.check_available("auto", torch.device("cpu")).name in ("cpp", "eager")
    assert backend.check_available("eager", torch.device("cpu")).name == "eager"
