"""fastrecur.ops.add_rms_norm: the Triton kernels (interpreter on CPU) against eager torch in fp64 and in the
input dtype, forward and every input gradient; layouts, bad inputs, torch.compile and opcheck. Also the test
that ``check_fused`` (the comparison every fused-op test uses) is not vacuous.
"""

import pytest
import torch

from fastrecur.ops.add_rms_norm import add_rms_norm, add_rms_norm_reference, rms_norm_reference

from .helpers import DTYPES, assert_needs_interpreter, check_compiles_like_eager, check_fused


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 96), (1, 48), (2, 3, 48), (40,)])
def test_matches_reference(dtype, shape):
    x = torch.randn(shape, dtype=dtype)
    r = torch.randn(shape, dtype=dtype)
    y, (dx, dr) = check_fused(add_rms_norm, add_rms_norm_reference, [x, r])
    assert y.is_contiguous()
    assert torch.equal(dx, dr)


@pytest.mark.parametrize("dtype", DTYPES)
def test_weight(dtype):
    x = torch.randn(5, 48, dtype=dtype)
    r = torch.randn(5, 48, dtype=dtype)
    w = (1 + 0.5 * torch.randn(48)).to(dtype)
    check_fused(
        lambda a, b, c: add_rms_norm(a, b, 1e-5, c), lambda a, b, c: add_rms_norm_reference(a, b, 1e-5, c), [x, r, w]
    )


def test_weightless_is_model_rms_norm():
    """The reference is the models' rms_norm of the sum (the sum rounded in the activation dtype)."""
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    r = torch.randn(4, 32, dtype=torch.bfloat16)
    s = (x + r).float()
    expected = (s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + 1e-5)).bfloat16()
    assert torch.equal(add_rms_norm_reference(x, r), expected)
    assert torch.equal(rms_norm_reference(x + r), expected)


def test_strided_inputs():
    """Rows with a padded stride and columns with stride 2 go through the strided kernel path."""
    x = torch.randn(6, 130)[:, 1:49]
    r = torch.randn(6, 96)[:, ::2]
    assert not x.is_contiguous() and r.stride(-1) == 2
    check_fused(add_rms_norm, add_rms_norm_reference, [x, r])


def test_eps_is_used():
    x = torch.full((2, 16), 1e-3)
    r = torch.zeros(2, 16)
    for eps in (1e-5, 1e-2):
        torch.testing.assert_close(add_rms_norm(x, r, eps), add_rms_norm_reference(x, r, eps), rtol=1e-5, atol=1e-6)


def test_bad_inputs(monkeypatch):
    x = torch.randn(3, 16)
    with pytest.raises(ValueError, match="residual"):
        add_rms_norm(x, torch.randn(3, 8))
    with pytest.raises(TypeError, match="residual"):
        add_rms_norm(x, x.half())
    with pytest.raises(TypeError, match="x"):
        add_rms_norm(x.int(), x.int())
    with pytest.raises(TypeError, match="x"):
        add_rms_norm([1.0], x)
    with pytest.raises(ValueError, match="weight"):
        add_rms_norm(x, x, 1e-5, torch.ones(8))
    with pytest.raises(TypeError, match="weight"):
        add_rms_norm(x, x, 1e-5, torch.ones(16, dtype=torch.float16))
    with pytest.raises(ValueError, match="eps"):
        add_rms_norm(x, x, 0.0)
    with pytest.raises(ValueError, match="residual"):
        add_rms_norm(x, torch.empty(3, 16, device="meta"))
    with pytest.raises(ValueError, match="x"):
        add_rms_norm(torch.randn(3, 0), torch.randn(3, 0))
    assert_needs_interpreter(monkeypatch, lambda: add_rms_norm(x, x))


def test_compile_fullgraph_and_opcheck():
    """torch.compile traces the op (and its backward) with no graph break; opcheck validates the
    registration (schema, fake impl, autograd, AOT dispatch)."""
    x = torch.randn(2, 5, 48, requires_grad=True)
    r = torch.randn(2, 5, 48, requires_grad=True)
    w = torch.randn(48, requires_grad=True)

    check_compiles_like_eager(lambda a, b, c: add_rms_norm(a, b, 1e-5, c) * 2, [x, r, w])
    torch.library.opcheck(torch.ops.fastrecur.add_rms_norm_fwd.default, (x, r, w, 1e-5))
    torch.library.opcheck(torch.ops.fastrecur.add_rms_norm_fwd.default, (x, r, None, 1e-5))


def test_kernel_bwd_program_loop_and_batched_strides():
    """The norm backward kernel itself: programs looping over several row blocks (dweight partials summed),
    a 3-D [batch, rows, cols] view whose cols are strided (the token-mix layout), against autograd in fp64."""
    from fastrecur.kernels.add_rms_norm import rms_norm_bwd

    x = torch.randn(3, 40, 24)  # memory [B, cols, rows]: the kernel sees x.transpose(1, 2)
    r = torch.randn(3, 40, 24)
    w = torch.randn(40)
    dy = torch.randn(3, 40, 24)
    x64, r64, w64 = (t.double().requires_grad_() for t in (x, r, w))
    s = (x64 + r64).transpose(1, 2)
    rstd = torch.rsqrt(s.pow(2).mean(-1) + 1e-5)
    y64 = s * rstd[..., None] * w64
    ds64, dw64 = torch.autograd.grad(y64, [x64, w64], dy.double().transpose(1, 2))
    ds, dw = rms_norm_bwd(
        dy.transpose(1, 2),
        rstd.float().contiguous(),
        x3=x.transpose(1, 2),
        r3=r.transpose(1, 2),
        weight=w,
        max_programs=2,
    )
    torch.testing.assert_close(ds.transpose(1, 2).double(), ds64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dw.double(), dw64, rtol=1e-5, atol=1e-5)


def test_saved_output_guarded():
    """The backward reads the saved output: modifying it in place must fail loudly, not give wrong grads."""
    x = torch.randn(3, 16, requires_grad=True)
    y = add_rms_norm(x, torch.randn(3, 16))
    y.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_check_fused_catches_errors():
    """The comparison helper is not vacuous: a 1e-3 relative error in fp32 or in bf16 (2^-10 of the largest
    value, well under one bf16 ulp elsewhere but visible against fp64) or a wrong gradient fails it."""
    x = torch.randn(4, 32)
    r = torch.randn(4, 32)
    with pytest.raises(AssertionError):
        check_fused(lambda a, b: add_rms_norm(a, b) * 1.001, add_rms_norm_reference, [x, r])

    class WrongGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            return a.clone()

        @staticmethod
        def backward(ctx, g):
            return g * 1.01

    with pytest.raises(AssertionError):
        check_fused(lambda a, b: WrongGrad.apply(add_rms_norm(a, b)), add_rms_norm_reference, [x, r])
    xb, rb = x.bfloat16(), r.bfloat16()
    with pytest.raises(AssertionError):
        check_fused(lambda a, b: add_rms_norm(a, b) * 1.05, add_rms_norm_reference, [xb, rb])
