"""Whole models with backend="triton" (the fused Triton kernels, run by the interpreter on CPU) held to the
reference golden outputs and gradients, and to the eager backend."""

import pytest
import torch

import fastrecur
from golden import CASES, assert_close, build, load_case, run_eval, run_train

pytestmark = pytest.mark.skipif(not fastrecur.backends()["triton"][0], reason=fastrecur.backends()["triton"][1])


@pytest.mark.parametrize("name", CASES)
def test_triton_backend_matches_reference(name):
    case = load_case(name)
    model = build(case, backend="triton")
    outs = run_eval(model, case["batch"], steps=2)
    for i, (got, want) in enumerate(zip(outs, case["eval"])):
        for k in want:
            assert_close(got[k], want[k], f"{name} triton eval step {i} {k}")
    model = build(case, backend="triton")
    out, grads = run_train(model, case["batch"], case["R"])
    for k, want in case["train"].items():
        assert_close(out[k], want, f"{name} triton train {k}")
    assert set(grads) == set(case["grads"])
    for k, want in case["grads"].items():
        assert_close(grads[k], want, f"{name} triton grad {k}")


def test_triton_backend_refuses_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    case = load_case("trm")
    model = build(case, backend="triton").eval()
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        with torch.no_grad():
            model(carry=model.initial_carry(case["batch"]), batch=case["batch"])


def test_triton_loss_head_uses_fused_stablemax_and_matches_eager():
    from fastrecur.models import ACTLossHead

    case = load_case("trm_mlp")
    results = {}
    for backend in ("eager", "triton"):
        head = ACTLossHead(build(case, backend=backend), "stablemax_cross_entropy").train()
        batch = case["batch"]
        carry = head.initial_carry(batch)
        _, loss, metrics, _, _ = head(carry=carry, batch=batch)
        loss.backward()
        results[backend] = (loss.detach(), {n: p.grad for n, p in head.named_parameters() if p.grad is not None})
    (le, ge), (lt, gt) = results["eager"], results["triton"]
    assert_close(lt, le, "loss")
    for n in ge:
        assert_close(gt[n], ge[n], f"loss-head grad {n}")


def one_head_twins(kind, backends):
    """The variant ``kind`` (tests/test_variants.py) with one attention head -- head_dim 16, the smallest the
    Triton attention kernel takes -- built once per backend with the same weights; and its config."""
    from test_variants import make

    torch.manual_seed(5)
    base, cfg = make(kind)
    one_head = dict(base.config.to_dict(), num_heads=1)
    models = [type(base)(one_head, backend=b) for b in backends]
    for m in models:
        m.load_state_dict(base.state_dict())
    return models, cfg


@pytest.mark.parametrize("kind", ["hrm_shared", "flat", "srm", "srm_mlp_t"])
def test_triton_variants_equal_eager(kind):
    """The seeds' recursions on the Triton backend (interpreter): outputs over ACT steps and gradients equal eager."""
    from golden import scale_err as _err
    from test_cpp_models import _run

    (eager_model, triton_model), cfg = one_head_twins(kind, ("eager", "triton"))
    (eo, eg), (to, tg) = _run(eager_model, cfg, steps=2), _run(triton_model, cfg, steps=2)
    for i, (a, b) in enumerate(zip(to, eo)):
        assert _err(a, b) <= 1e-4, f"{kind} output {i}: {_err(a, b):.2e}"
    assert set(tg) == set(eg)
    for n in eg:
        assert _err(tg[n], eg[n]) <= 1e-3, f"{kind} grad {n}: {_err(tg[n], eg[n]):.2e}"


def test_triton_backend_rejects_unsupported_head_dim_and_auto_falls_back():
    from fastrecur.models import TRM
    from test_models import tiny_config

    cfg = dict(tiny_config(), puzzle_emb_len=1)  # hidden 16, 2 heads: head_dim 8
    with pytest.raises(ValueError, match="head_dim"):
        TRM(cfg, backend="triton")
    assert TRM(cfg, backend="auto").execution_backend(torch.device("cuda")).name != "triton"
    from fastrecur.backend import get

    assert get("triton").supports(TRM(dict(cfg, mlp_t=True, pos_encodings="none"), backend="triton").config)[0]
