"""The trace API against a plain recomputation, and the participation ratio on constructed data."""

import pytest
import torch

from fastrecur.inspect import participation_ratio, trace
from fastrecur.models import HRM, SRM, TRM, FlatRecurrence
from test_models import tiny_batch, tiny_config


def test_participation_ratio_known_values():
    g = torch.Generator().manual_seed(0)
    k, d, n = 5, 32, 20000
    basis = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0][:, :k]
    x = torch.randn(n, k, generator=g, dtype=torch.float64) @ basis.T  # k equal independent directions
    assert participation_ratio(x) == pytest.approx(k, rel=0.03)
    y = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.01
    y[:, 3] += 10 * torch.randn(n, generator=g, dtype=torch.float64)  # one dominant direction
    assert participation_ratio(y) == pytest.approx(1.0, abs=0.01)
    # Leading dims are observations: [B, S, D] works the same as the flattened [B*S, D].
    assert participation_ratio(x.view(100, 200, d)) == pytest.approx(participation_ratio(x))


def test_participation_ratio_bad_input():
    with pytest.raises(ValueError, match="at least one observation"):
        participation_ratio(torch.zeros(5))
    with pytest.raises(TypeError, match="floating"):
        participation_ratio(torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="zero variance"):
        participation_ratio(torch.ones(4, 3))


def _models():
    cfg = tiny_config(H_cycles=2, L_cycles=2, halt_max_steps=3)
    flat = {k: v for k, v in cfg.items() if k not in ("H_cycles", "H_layers")}
    e = dict(backend="eager")  # the untraced model runs the same Python loop, so the comparison is bitwise
    return cfg, [
        HRM(cfg, **e),
        HRM(dict(cfg, shared_layers=True), **e),
        TRM(dict(cfg, puzzle_emb_len=1), **e),
        SRM(dict(cfg, puzzle_emb_len=1), **e),
        FlatRecurrence(flat, **e),
    ]


@pytest.mark.parametrize("i", range(5))
def test_trace_equals_plain_recomputation(i):
    cfg, models = _models()
    model = models[i].eval()
    batch = tiny_batch(cfg)
    tr = trace(model, batch, keep_states=True)
    assert len(tr.steps) == 3
    # Recompute by hand: run the untraced model and, per update, the level on the previous state.
    inner = model.inner
    with torch.no_grad():
        carry = model.initial_carry(batch)
        for rec in tr.steps:
            start = inner.reset_carry(carry.halted, carry.inner_carry).as_dict()
            x = inner.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
            states, cs = dict(start), inner.cos_sin()
            updates = iter(rec.updates)
            for step in inner.schedule.steps:
                if not hasattr(step, "level"):
                    states[step.target] = states[step.source]
                    continue
                inj = sum((x if n == "x" else states[n]) for n in step.inject)
                new = getattr(inner, step.level)(states[step.target], inj, cs)
                want = (new - states[step.target]).flatten(1).norm(dim=1) / states[step.target].flatten(1).norm(dim=1)
                u = next(updates)
                assert (u.state, u.level) == (step.target, step.level)
                torch.testing.assert_close(u.residual, want, rtol=1e-5, atol=1e-7)
                states[step.target] = new
            assert next(updates, None) is None
            carry, out = model(carry=carry, batch=batch)
            assert torch.equal(rec.preds, out["logits"].argmax(-1))
            assert torch.equal(rec.q_halt, out["q_halt_logits"])
            q_rule = out["q_halt_logits"] > (out["q_continue_logits"] if model.halt_on_q_continue else 0)
            assert torch.equal(rec.halted, q_rule)
            for k, v in rec.states.items():
                assert torch.equal(v, getattr(carry.inner_carry, k))
    assert inner.observer is None  # tracing leaves the model as it was


def test_trace_rejects_bad_input():
    cfg, models = _models()
    with pytest.raises(TypeError, match="ACT model"):
        trace(torch.nn.Linear(2, 2), tiny_batch(cfg))
    with pytest.raises(ValueError, match="steps"):
        trace(models[0], tiny_batch(cfg), steps=0)
    with pytest.raises(ValueError, match="seq_len"):
        trace(models[0], dict(tiny_batch(cfg), inputs=torch.zeros(3, 2, dtype=torch.long)))


def test_inspect_command_writes_pngs_and_json(tmp_path, capsys):
    import argparse
    import json

    from fastrecur.data import PuzzleDataset, build_sudoku_dataset
    from fastrecur.inspect import cli
    from fastrecur.train import Trainer
    from test_train import tiny_config as train_config

    data = tmp_path / "data"
    build_sudoku_dataset(str(data), n=4, num_train=24, num_test=6, num_aug=0, seed=1)
    Trainer(
        train_config(str(data), tmp_path / "run", max_steps=3),
        PuzzleDataset(str(data), "train"),
        PuzzleDataset(str(data), "test"),
        log=lambda s: None,
    ).fit()
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    out = tmp_path / "insp"
    assert cli.run(p.parse_args([str(tmp_path / "run"), str(data), "--out", str(out)])) == 0
    for name in ("steps.png", "residuals.png", "participation_ratio.png", "accuracy.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    result = json.loads((out / "inspect.json").read_text())
    assert result["examples"] == 6 and len(result["exact_accuracy_per_step"]) == 3
    assert set(result["participation_ratio"]) == {"z_H", "z_L"}
    assert all(1.0 <= v <= 16 for v in result["participation_ratio"].values())
    printed = capsys.readouterr().out
    assert printed.count("step ") >= 3 and "[" in printed  # givens marked in the terminal grids

    # Bad puzzles: wrong length, characters outside the vocabulary; neither DATASET nor --puzzle.
    assert cli.run(p.parse_args([str(tmp_path / "run"), "--puzzle", "1..4", "--out", str(out)])) == 2
    assert cli.run(p.parse_args([str(tmp_path / "run"), "--puzzle", "1..4....2..1.3x.", "--out", str(out)])) == 2
    assert cli.run(p.parse_args([str(tmp_path / "run"), "--out", str(out)])) == 2
    err = capsys.readouterr().err
    assert "16" in err or "cells" in err
    assert cli.run(p.parse_args([str(tmp_path / "run"), "--puzzle", "1..4....2..1.3..", "--out", str(out / "p")])) == 0

    # The errors name the user's option, not encode_sudoku's parameter (inspect and solve alike).
    capsys.readouterr()
    assert cli.run(p.parse_args([str(tmp_path / "run"), "--puzzle", "1..4....2..1.3.9", "--out", str(out)])) == 2
    assert (
        capsys.readouterr().err
        == "fastrecur inspect: --puzzle: characters ['9'] are not digits 1..4 or blanks '.'/'0'\n"
    )
    from fastrecur.cli import main

    for argv, line in [
        (["--tokens", "a b c"], "fastrecur solve: --tokens: 'a' is not an integer; give token ids separated by spaces"),
        (["--tokens", " , "], "fastrecur solve: --tokens: no token ids given"),
        (["--puzzle", "1..4....2..1.3.9"], "fastrecur solve: --puzzle: characters ['9'] are not digits 1..4"),
    ]:
        assert main(["solve", str(tmp_path / "run"), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(line) and err.count("\n") == 1, err


def test_one_rendering_of_sudoku_cells():
    # A predicted pad token (0) prints as '?' in solve's grids and inspect's alike, never as '.' (a blank).
    import numpy as np

    from fastrecur.data.sudoku import sudoku_cell_chars
    from fastrecur.plots import text_grid
    from fastrecur.train import solve

    tokens = np.array([0, 1, 2, 3, 4, 5, 6, 2, 3, 4, 5, 2, 3, 4, 5, 2])  # pad, blank, digits 1..4, then 5 = digit 4
    assert sudoku_cell_chars(tokens) == ["?", ".", "1", "2", "3", "4", "?", "1", "2", "3", "4", "1", "2", "3", "4", "1"]
    inputs = np.ones(16, dtype=np.int64)  # no givens
    first_row = text_grid(tokens, inputs, None, (2, 2)).splitlines()[0]
    assert first_row.split()[:2] == ["?", "."], first_row
    assert solve.format_grid(sudoku_cell_chars(tokens), 4, (2, 2)).splitlines()[0].startswith("? . | 1 2")
    import argparse

    p = argparse.ArgumentParser()
    solve.add_arguments(p)
    assert "'?' not a digit (the pad token 0 predicted)" in " ".join(p.format_help().split())  # documented


def test_trace_of_cpp_model_runs_eager_and_matches():
    """Which path a trace takes on the C++ backend: the eager loop (the C++ loop reports no per-update numbers),
    with results equal to tracing the eager model, and the model's backend restored afterwards."""
    import fastrecur

    if not fastrecur.backends()["cpp"][0]:
        pytest.skip(fastrecur.backends()["cpp"][1])
    cfg, models = _models()
    eager_model = models[3]
    cpp_model = SRM(eager_model.config.to_dict(), backend="cpp")
    cpp_model.load_state_dict(eager_model.state_dict())
    batch = tiny_batch(cfg)
    te, tc = trace(eager_model, batch), trace(cpp_model, batch)
    assert cpp_model.backend == "cpp"
    for se, sc in zip(te.steps, tc.steps):
        assert torch.equal(se.preds, sc.preds) and torch.equal(se.q_halt, sc.q_halt)
        for ue, uc in zip(se.updates, sc.updates):
            assert torch.equal(ue.residual, uc.residual)
