"""Comparisons shared by the fused-op tests (imported as ``from .helpers import ...``)."""

import pytest
import torch

from golden import scale_err

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
rel_err = scale_err  # one definition for every test (tests/golden.py)


def check_fused(fused, reference, args, out_tol=None, grad_tol=None):
    """Compare ``fused(*args)`` with ``reference`` on the output and the gradient of every argument.

    fp32: output within 1e-5 and gradients within 1e-4 of the fp64 reference (relative to its max).
    fp16/bf16: output within a few ulps (of the largest value) of the eager reference run in the same
    dtype, and each error against fp64 at most 3x eager's own error plus one ulp. bf16 is looser because
    the Triton interpreter truncates fp32 -> bf16 instead of rounding to nearest (so each rounded
    intermediate carries up to twice eager's error); fp16 matches eager almost bit for bit.
    """
    dtype = args[0].dtype
    leaves = [a.detach().clone().requires_grad_() for a in args]
    y = fused(*leaves)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, dy)

    ref64 = [a.detach().double().requires_grad_() for a in args]
    y64 = reference(*ref64)
    grads64 = torch.autograd.grad(y64, ref64, dy.double())
    assert y.shape == y64.shape and y.dtype == dtype
    if dtype == torch.float32:
        assert rel_err(y, y64) <= (out_tol or 1e-5)
        for i, (g, g64) in enumerate(zip(grads, grads64)):
            assert g.shape == args[i].shape
            assert rel_err(g, g64) <= (grad_tol or 1e-4), f"grad of argument {i}"
        return y, grads

    eps = torch.finfo(dtype).eps
    lowp = [a.detach().clone().requires_grad_() for a in args]
    y_lp = reference(*lowp)
    grads_lp = torch.autograd.grad(y_lp, lowp, dy)
    ulps = 2 if dtype == torch.float16 else 4
    assert (y.double() - y_lp.double()).abs().max().item() <= ulps * eps * y64.abs().max().item()
    assert rel_err(y, y64) <= 3 * rel_err(y_lp, y64) + eps
    for i, (g, g_lp, g64) in enumerate(zip(grads, grads_lp, grads64)):
        assert g.shape == args[i].shape and g.dtype == dtype
        assert rel_err(g, g64) <= 3 * rel_err(g_lp, g64) + eps, f"grad of argument {i}"
    return y, grads


def check_compiles_like_eager(f, args):
    """``f(*args)`` traces with no graph break, and ``torch.compile(fullgraph=True)`` of it (aot_eager) gives
    eager's output and the gradients of ``y.sum()`` w.r.t. every argument."""
    assert torch._dynamo.explain(f)(*args).graph_break_count == 0
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    y = compiled(*args)
    grads = torch.autograd.grad(y.sum(), args)
    y_e = f(*args)
    grads_e = torch.autograd.grad(y_e.sum(), args)
    torch.testing.assert_close(y, y_e)
    for g, g_e in zip(grads, grads_e):
        torch.testing.assert_close(g, g_e)


def assert_needs_interpreter(monkeypatch, call, value: str = "0"):
    """With ``TRITON_INTERPRET`` set to the (disabling) ``value``, ``call()`` on CPU tensors raises a ValueError
    naming the variable: no silent fallback."""
    monkeypatch.setenv("TRITON_INTERPRET", value)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        call()


def bad_call_params(bad_calls):
    """``pytest.param(call, exc, id=name)`` for each ``(name, call, exc)`` that ``bad_calls()`` yields, for a
    ``parametrize("call,exc", ...)`` test expecting ``call()`` to raise ``exc``."""
    return [pytest.param(call, exc, id=name) for name, call, exc in bad_calls()]
