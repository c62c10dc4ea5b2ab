"""Helpers to run a fastrecur model on a golden case from the public reference code (tests/fixtures/golden)."""

import os

import torch

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), "fixtures", "golden")
CASES = ["hrm", "trm", "trm_mlp", "trm_learned"]


def load_case(name):
    return torch.load(os.path.join(GOLDEN_DIR, f"{name}.pt"), weights_only=True)


def build(case, backend="eager"):
    from fastrecur.models import HRM, TRM, TransformerBaseline, TRMHier6, TRMSingleZ

    classes = {
        "trm_singlez": TRMSingleZ,
        "trm_hier6": TRMHier6,
        "transformers_baseline": TransformerBaseline,
        "transformers_baseline_6heads": TransformerBaseline,
    }
    hrm = case["variant"].startswith("hrm") or "puzzle_emb_len" not in case["config"]
    cls = classes.get(case["variant"]) or (HRM if hrm else TRM)
    model = cls(case["config"], backend=backend)
    model.load_state_dict(case["state"])
    return model


def run_eval(model, batch, steps=3):
    model.eval()
    outs = []
    with torch.no_grad():
        carry = model.initial_carry(batch)
        for _ in range(steps):
            carry, out = model(carry=carry, batch=batch)
            outs.append(out)
    return outs


def run_train(model, batch, R):
    """Two training calls from a fresh carry; the golden loss on the second call's outputs; backward."""
    model.train()
    carry = model.initial_carry(batch)
    carry, _ = model(carry=carry, batch=batch)
    carry, out = model(carry=carry, batch=batch)
    loss = (out["logits"] * R).sum() + out["q_halt_logits"].sum() + 0.5 * out["q_continue_logits"].sum()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def scale_err(actual, expected) -> float:
    """Max abs error relative to the largest expected magnitude, in fp64: ``max|a - e| / max|e|``."""
    expected = expected.detach().double()
    return ((actual.detach().double() - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def assert_close(actual, expected, name, rtol=1e-4):
    """Error relative to the tensor's scale: ``max|a - e| <= rtol * max|e|``.

    Element-wise relative checks fail on near-zero entries: fp32 rounding differences (another torch build,
    another GEMM blocking) of ~1e-7 grow through the recursion to ~1e-5 of the tensor's scale.
    """
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = scale_err(actual, expected)
    assert err <= rtol, f"{name}: max abs error {err:.3e} of the tensor's scale {expected.abs().max():.3e} > {rtol:g}"
