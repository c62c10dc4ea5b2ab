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
    return cfg, [HRM(cfg), HRM(dict(cfg, shared_layers=True)), TRM(dict(cfg, puzzle_emb_len=1)),
                 SRM(dict(cfg, puzzle_emb_len=1)), FlatRecurrence(flat)]


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
            assert torch.equal(rec.halted, carry.halted)
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
