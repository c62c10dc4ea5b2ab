"""`fastrecur eval`, `solve` and `inspect` run through the inference engine on the fastest backend, with one
meaning of "N steps": N steps of one recursion, continued past halt_max_steps, never restarted."""

import argparse

import numpy as np
import pytest
import torch

from fastrecur import _ext, engine
from fastrecur.data import PuzzleDataset, build_sudoku_dataset
from fastrecur.inspect import trace
from fastrecur.models import HRM, TRM
from fastrecur.models.loss import IGNORE_LABEL_ID, ACTLossHead
from fastrecur.train import evaluate
from fastrecur.train.solve import step_predictions
from golden import run_eval
from test_models import tiny_batch, tiny_config


def _continued_inner_loop(model, batch, steps):
    """An independent continuation: the inner model called ``steps`` times on its own carry, on the eager
    backend, never reset."""
    from fastrecur.backend import get

    inner = model.inner
    b = batch["inputs"].shape[0]
    carry = inner.reset_carry(torch.ones(b, dtype=torch.bool), inner.empty_carry(b))
    outs = []
    with torch.no_grad():
        for _ in range(steps):
            carry, logits, (qh, qc) = inner(carry, batch, backend=get("eager"))
            outs.append((logits, qh))
    return outs


def test_auto_is_the_cpp_loop_on_the_cpu_when_built():
    model = TRM(dict(tiny_config(), puzzle_emb_len=1))
    want = "cpp" if _ext.available() else "eager"
    assert model.execution_backend(torch.device("cpu")).name == want


@pytest.mark.parametrize("arch", ["trm", "hrm"])
def test_steps_past_halt_max_steps_continue_the_recursion(arch):
    """solve's per-step output: the first halt_max_steps steps equal the ACT model's loop; later steps continue
    the recursion (equal to the inner model called on its own carry), not a restart."""
    torch.manual_seed(0)
    cfg = tiny_config(halt_max_steps=3, batch_size=1)
    model = TRM(dict(cfg, puzzle_emb_len=1), backend="eager") if arch == "trm" else HRM(cfg, backend="eager")
    with torch.no_grad():
        model.inner.q_head.weight.normal_(0, 0.5)  # a Q logit that depends on the state
    head = ACTLossHead(model)
    batch = tiny_batch(cfg, b=1)
    batch = {k: v.to(torch.int32) for k, v in batch.items()}
    got = list(
        step_predictions(head, batch["inputs"][0].numpy(), int(batch["puzzle_identifiers"][0]), 7, torch.device("cpu"))
    )
    assert [g[0] for g in got] == list(range(1, 8))
    ref = run_eval(model, batch, 3)
    cont = _continued_inner_loop(model, batch, 7)
    for (step, preds, q_halt), (logits, qh) in zip(got, cont):
        assert np.array_equal(preds, logits.argmax(-1)[0].numpy()), step
        assert q_halt == pytest.approx(float(qh[0]), abs=1e-5), step
    for (step, preds, q_halt), out in zip(got, ref):
        assert q_halt == pytest.approx(float(out["q_halt_logits"][0]), abs=1e-5), step
    # Step 4 is not step 1 again (the ACT wrapper would have reset the state after step 3).
    assert got[3][2] != pytest.approx(got[0][2], abs=1e-6)


def test_trace_continues_past_halt_max_steps_like_the_engine():
    torch.manual_seed(1)
    cfg = tiny_config(halt_max_steps=2)
    model = TRM(dict(cfg, puzzle_emb_len=1), backend="eager")
    batch = tiny_batch(cfg)
    tr = trace(model, batch, steps=5)
    res = engine.solve(model, batch, max_steps=5, return_step_predictions=True, backend="eager")
    for t in range(5):
        assert torch.equal(tr.steps[t].preds, res.step_predictions[t])
        assert torch.allclose(tr.steps[t].q_halt, res.step_q_halt_logits[t], atol=1e-5)


@pytest.fixture(scope="module")
def sudoku_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sudoku4")
    build_sudoku_dataset(str(d), n=4, num_train=8, num_test=10, num_aug=0, seed=0)
    return str(d)


def _sudoku_head(backend, seed=0):
    torch.manual_seed(seed)
    cfg = tiny_config(batch_size=4, seq_len=16, vocab_size=6, num_puzzle_identifiers=1, hidden_size=32, H_layers=0)
    cfg.update(puzzle_emb_ndim=0, puzzle_emb_len=0)  # no puzzle embedding
    model = TRM(cfg, backend=backend)
    with torch.no_grad():  # spread the Q head so that rows halt at different steps
        model.inner.q_head.weight.normal_(0, 0.5)
        model.inner.q_head.bias.zero_()
    return ACTLossHead(model, "softmax_cross_entropy")


def _metrics_by_model_loop(head, ds, batch_size):
    """The evaluation as the reference defines it, computed independently: the ACT model looped for
    halt_max_steps steps per batch; the halting step from each step's q_halt."""
    model = head.model.eval()
    H = model.config.halt_max_steps
    tot = dict(count=0, exact=0.0, tok=0.0, halt=0.0, exact_halt=0.0)
    for batch, n_valid in ds.iter_eval(batch_size):
        outs = run_eval(model, batch, H)
        labels = batch["labels"][:n_valid]
        mask = labels != IGNORE_LABEL_ID
        halt_at = torch.full((n_valid,), H - 1)
        for t in reversed(range(H)):
            halt_at = torch.where(outs[t]["q_halt_logits"][:n_valid] > 0, t, halt_at)
        for r in range(n_valid):
            final = outs[-1]["logits"][r].argmax(-1)
            at = outs[int(halt_at[r])]["logits"][r].argmax(-1)
            m = mask[r]
            tot["count"] += 1
            tot["exact"] += float(bool(((final == labels[r]) | ~m).all()))
            tot["tok"] += float(((final == labels[r]) & m).sum()) / max(int(m.sum()), 1)
            tot["halt"] += int(halt_at[r]) + 1
            tot["exact_halt"] += float(bool(((at == labels[r]) | ~m).all()))
    n = tot.pop("count")
    return n, {k: v / n for k, v in tot.items()}


@pytest.mark.parametrize("backend", ["eager", "auto"])
def test_evaluate_model_equals_the_model_loop(sudoku_dir, backend):
    head = _sudoku_head(backend)
    ds = PuzzleDataset(sudoku_dir, "test")
    n, want = _metrics_by_model_loop(_sudoku_head("eager"), ds, 4)
    got = evaluate.evaluate_model(head, ds, 4, torch.device("cpu"))
    assert got["count"] == n == 10
    assert got["exact_accuracy"] == pytest.approx(want["exact"])
    assert got["accuracy"] == pytest.approx(want["tok"])
    assert got["halt_step"] == pytest.approx(want["halt"])
    assert got["exact_accuracy_at_halt"] == pytest.approx(want["exact_halt"])
    assert got["steps"] == 4.0


def test_evaluate_with_q_halting_reports_the_prediction_where_each_row_halts(sudoku_dir):
    ds = PuzzleDataset(sudoku_dir, "test")
    full = evaluate.evaluate_model(_sudoku_head("eager"), ds, 4, torch.device("cpu"))
    q = evaluate.evaluate_model(_sudoku_head("eager"), ds, 4, torch.device("cpu"), halting="q")
    assert q["steps"] == pytest.approx(full["halt_step"])
    assert q["exact_accuracy"] == pytest.approx(full["exact_accuracy_at_halt"])
    assert 1.0 <= q["steps"] < 4.0  # the spread Q head halts some rows early
    with pytest.raises(ValueError, match="halting"):
        evaluate.evaluate_model(_sudoku_head("eager"), ds, 4, torch.device("cpu"), halting="never")


def test_eval_command_options(sudoku_dir, tmp_path, capsys):
    p = argparse.ArgumentParser()
    evaluate.add_arguments(p)
    args = p.parse_args(["run", sudoku_dir, "--halting", "q", "--steps", "9", "--backend", "eager"])
    assert (args.halting, args.steps, args.backend) == ("q", 9, "eager")
    with pytest.raises(SystemExit):
        p.parse_args(["run", sudoku_dir, "--halting", "sometimes"])
