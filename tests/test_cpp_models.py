"""Whole models with backend="cpp" (the no-grad recursion in the C++ loop, the grad tail in autograd) held to
the reference golden cases and to the eager backend, for every model on the recursion core."""

import copy
import dataclasses
import os

import pytest
import torch

import fastrecur
from golden import CASES, assert_close, build, load_case, run_eval, run_train, scale_err
from test_models import tiny_batch
from test_variants import KINDS, make

_ok, _why = fastrecur.backends()["cpp"]
pytestmark = pytest.mark.skipif(not _ok and os.environ.get("FASTRECUR_REQUIRE_EXT") != "1", reason=_why)


@pytest.mark.parametrize("name", CASES)
def test_cpp_backend_matches_reference(name):
    case = load_case(name)
    outs = run_eval(build(case, backend="cpp"), case["batch"])
    for i, (got, want) in enumerate(zip(outs, case["eval"])):
        for k in want:
            assert_close(got[k], want[k], f"{name} cpp eval step {i} {k}")
    out, grads = run_train(build(case, backend="cpp"), case["batch"], case["R"])
    for k, want in case["train"].items():
        assert_close(out[k], want, f"{name} cpp train {k}")
    assert set(grads) == set(case["grads"])
    for k, want in case["grads"].items():
        assert_close(grads[k], want, f"{name} cpp grad {k}")


def _twin(kind, backend, dtype="float32"):
    torch.manual_seed(5)
    model, cfg = make(kind)
    cfg_dict = dict(model.config.to_dict(), forward_dtype=dtype)
    twin = type(model)(cfg_dict, backend=backend)
    twin.load_state_dict(model.state_dict(), strict=False)  # init buffers keep their dtype
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("_init"):
                dict(twin.named_buffers())[name].copy_(buf)
    return twin, cfg


def _run(model, cfg, steps=3):
    """Eval outputs over several ACT steps, then one training step's outputs and parameter gradients."""
    batch = tiny_batch(cfg)
    outs = []
    with torch.no_grad():
        carry = model.eval().initial_carry(batch)
        for _ in range(steps):
            carry, out = model(carry=carry, batch=batch)
            outs.append(out["logits"].float())
    torch.manual_seed(0)
    model.train()
    carry = model.initial_carry(batch)
    carry, _ = model(carry=carry, batch=batch)
    carry, out = model(carry=carry, batch=batch)
    (out["logits"].float().square().mean() + out["q_halt_logits"].sum()).backward()
    grads = {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return outs + [out["logits"].float()], grads


def _fp64_twin(model):
    """``model`` computing in float64 (weights, init states and activations): the yardstick for fp32 rounding."""
    twin = copy.deepcopy(model).double()
    twin.inner.forward_dtype = torch.float64
    for m in twin.modules():
        if hasattr(m, "cast_to"):
            m.cast_to = torch.float64
    return twin


def _as_fp64(carry):
    inner = type(carry.inner_carry)(**{k: v.double() for k, v in carry.inner_carry.as_dict().items()})
    return dataclasses.replace(carry, inner_carry=inner)


@pytest.mark.parametrize("kind", KINDS)
def test_cpp_equals_eager_fp32(kind):
    """Each ACT step from the same carry gives the same outputs and carry: within 1e-5 of scale, or within 4x the
    eager step's own fp32 rounding error (measured against the same step in fp64) where that is larger (the
    token mixer's GEMMs differ in layout between the backends); over whole runs (each backend on its own carry)
    outputs and gradients agree to fp32 rounding grown by the recursion."""
    eager_model, cfg = _twin(kind, "eager")
    cpp_model, _ = _twin(kind, "cpp")
    fp64_model = _fp64_twin(eager_model)
    batch = tiny_batch(cfg)
    with torch.no_grad():
        carry = eager_model.eval().initial_carry(batch)
        cpp_model.eval()
        fp64_model.eval()
        for step in range(3):
            c_carry, c_out = cpp_model(carry=carry, batch=batch)
            d_carry, d_out = fp64_model(carry=_as_fp64(carry), batch=batch)
            carry, e_out = eager_model(carry=carry, batch=batch)
            pairs = [(k, c_out[k], e_out[k], d_out[k]) for k in ("logits", "q_halt_logits", "q_continue_logits")]
            pairs += [
                (f"state {k}", getattr(c_carry.inner_carry, k), v, getattr(d_carry.inner_carry, k))
                for k, v in carry.inner_carry.as_dict().items()
            ]
            for name, c, e, d in pairs:
                bound = max(1e-5, 4 * scale_err(e, d))
                assert scale_err(c, e) <= bound, f"{kind} step {step} {name}: {scale_err(c, e):.2e} > {bound:.2e}"
    # Whole runs: each backend carries its own state, so fp32 rounding differences (different reduction
    # orders in the fused kernels) grow over the ACT steps; the per-step checks above and below are the tight ones.
    (eo, eg), (co, cg) = _run(eager_model, cfg), _run(cpp_model, cfg)
    for i, (a, b) in enumerate(zip(co, eo)):
        assert scale_err(a, b) <= 1e-3, f"{kind} output {i}: {scale_err(a, b):.2e}"
    assert set(cg) == set(eg)
    for n in eg:
        assert scale_err(cg[n], eg[n]) <= 3e-4, f"{kind} grad {n}: {scale_err(cg[n], eg[n]):.2e}"


def train_step_from_same_carry(models, batch):
    """One training ACT step of each model from the same carry (one eval step of the first model), with the same
    random weighting of the logits: a list of (logits, {parameter name: gradient}), one per model."""
    with torch.no_grad():
        carry, _ = models[0].eval()(carry=models[0].initial_carry(batch), batch=batch)
    results = []
    for model in models:
        model.train()
        torch.manual_seed(1)
        _, out = model(carry=carry, batch=batch)
        weight = torch.randn_like(out["logits"].float())
        ((out["logits"].float() * weight).sum() + out["q_halt_logits"].sum()).backward()
        results.append(
            (out["logits"].float().detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
        )
    return results


@pytest.mark.parametrize("kind", KINDS)
def test_cpp_step_gradients_equal_eager_fp32(kind):
    """One training ACT step from the same carry: every parameter gradient within 1e-5 of its scale."""
    eager_model, cfg = _twin(kind, "eager")
    cpp_model, _ = _twin(kind, "cpp")
    (_, eg), (_, cg) = train_step_from_same_carry([eager_model, cpp_model], tiny_batch(cfg))
    assert set(cg) == set(eg) and eg
    for n in eg:
        assert scale_err(cg[n], eg[n]) <= 1e-5, f"{kind} grad {n}: {scale_err(cg[n], eg[n]):.2e}"


@pytest.mark.parametrize("kind", ["srm", "srm_mlp_t", "hrm_shared"])
def test_cpp_bf16_error_within_twice_eager(kind):
    """bf16 cpp's error against an fp32 run is at most twice the eager bf16 path's error (+ small atol)."""
    ref, cfg = _twin(kind, "eager", "float32")
    eager_bf, _ = _twin(kind, "eager", "bfloat16")
    cpp_bf, _ = _twin(kind, "cpp", "bfloat16")
    ro, _ = _run(ref, cfg)
    eo, _ = _run(eager_bf, cfg)
    co, _ = _run(cpp_bf, cfg)
    for i, (r, e, c) in enumerate(zip(ro, eo, co)):
        e_err = (e - r).pow(2).mean().sqrt()
        c_err = (c - r).pow(2).mean().sqrt()
        assert c_err <= 2 * e_err + 2e-2, f"{kind} output {i}: cpp rms err {c_err:.3e} vs eager {e_err:.3e}"


def test_cpp_does_not_modify_the_callers_carry():
    model, cfg = _twin("srm", "cpp")
    batch = tiny_batch(cfg)
    with torch.no_grad():
        carry = model.eval().initial_carry(batch)
        carry, _ = model(carry=carry, batch=batch)
        before = carry.inner_carry.z.clone()
        model(carry=carry, batch=batch)
    assert torch.equal(carry.inner_carry.z, before)


def test_cpp_weight_cast_cache_follows_in_place_updates():
    """The C++ path caches the weights cast to bf16; an in-place update (as an optimiser step) must be seen."""
    eager_model, cfg = _twin("srm", "eager", "bfloat16")
    cpp_model, _ = _twin("srm", "cpp", "bfloat16")
    batch = tiny_batch(cfg)
    with torch.no_grad():
        for m in (eager_model, cpp_model):
            m.eval()(carry=m.initial_carry(batch), batch=batch)  # fills the cache on the cpp model
            for p in m.inner.L_level.parameters():
                p.mul_(0.5)
        _, e = eager_model(carry=eager_model.initial_carry(batch), batch=batch)
        _, c = cpp_model(carry=cpp_model.initial_carry(batch), batch=batch)
    assert scale_err(c["logits"].float(), e["logits"].float()) < 3e-2
