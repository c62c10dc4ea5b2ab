"""fastrecur.ops.swiglu_mlp: rms_norm(h + SwiGLU(h)) through the Triton interpreter against eager torch
(fp64 and the input dtype), output and the gradients of h, w_gate_up and w_down; layouts, bad inputs,
torch.compile and opcheck."""

import pytest
import torch

from fastrecur.ops.swiglu_mlp import swiglu_mlp_block, swiglu_mlp_block_reference, swiglu_reference

from .helpers import DTYPES, assert_needs_interpreter, check_compiles_like_eager, check_fused, rel_err


def _weights(d, i, dtype):
    return (torch.randn(2 * i, d) / d**0.5).to(dtype), (torch.randn(d, i) / i**0.5).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(dtype):
    """M = 97 rows, D = 64, I = 80: neither rows nor the hidden size fill whole tiles."""
    h = torch.randn(97, 64, dtype=dtype)
    y, _ = check_fused(swiglu_mlp_block, swiglu_mlp_block_reference, [h, *_weights(64, 80, dtype)])
    assert y.is_contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batch_one_odd_dim(dtype):
    """[1, 5, 48] activations (D = 48 is not a power of two)."""
    h = torch.randn(1, 5, 48, dtype=dtype)
    check_fused(swiglu_mlp_block, swiglu_mlp_block_reference, [h, *_weights(48, 40, dtype)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_many_tiles(dtype):
    """1100 rows x I = 72: more row tiles than one swizzle group, two column tiles, several K steps."""
    h = torch.randn(1100, 96, dtype=dtype)
    check_fused(swiglu_mlp_block, swiglu_mlp_block_reference, [h, *_weights(96, 72, dtype)])


def test_empty_rows():
    h = torch.randn(0, 32, requires_grad=True)
    wgu, wd = (w.requires_grad_() for w in _weights(32, 16, torch.float32))
    y = swiglu_mlp_block(h, wgu, wd)
    assert y.shape == (0, 32)
    dh, dwgu, dwd = torch.autograd.grad(y.sum(), [h, wgu, wd])
    assert dh.shape == (0, 32) and not dwgu.any() and not dwd.any()


def test_strided_inputs():
    """Padded rows of h and transposed (column-major) weights are read through their strides."""
    h = torch.randn(33, 100)[:, 3:51]
    w_gate_up = (torch.randn(48, 80) / 48**0.5).t()  # [80, 48] with strides (1, 80)
    w_down = (torch.randn(40, 48) / 40**0.5).t()  # [48, 40]
    check_fused(swiglu_mlp_block, swiglu_mlp_block_reference, [h, w_gate_up, w_down])


def eps_dominated_grad_h_errors(device):
    """(fused, eager) relative errors of the fp32 gradient of h against fp64 on ``device``, in the case
    :func:`test_grad_h_where_eps_dominates_the_norm` describes (also run on a GPU by tests/test_gpu.py)."""
    g = torch.Generator().manual_seed(3)
    h = torch.randn(1, 3, 48, generator=g) * 3e-3
    w_gate_up = torch.randn(192, 48, generator=g) / 48**0.5
    w_down = torch.randn(48, 96, generator=g) / 96**0.5
    dy = torch.randn(1, 3, 48, generator=g)
    eps = 1e-5
    s = h.double() + swiglu_reference(h.double(), w_gate_up.double(), w_down.double())
    assert (s.square().mean(-1) < eps).all()  # the case is the one meant: eps dominates every row's norm

    def grad_h(f, dtype):
        leaves = [t.to(device, dtype).requires_grad_() for t in (h, w_gate_up, w_down)]
        return torch.autograd.grad(f(*leaves, eps), leaves[0], dy.to(device, dtype))[0]

    dh64 = grad_h(swiglu_mlp_block_reference, torch.float64)
    dh = grad_h(swiglu_mlp_block, torch.float32)
    assert dh.dtype == torch.float32 and dh64.abs().max() > 400
    return rel_err(dh, dh64), rel_err(grad_h(swiglu_mlp_block_reference, torch.float32), dh64)


def test_grad_h_where_eps_dominates_the_norm():
    """fp32, 3 rows of D = 48, I = 96, activations of scale 3e-3 (mean(s^2) < eps = 1e-5: rstd ~ 230, so the
    norm's gradient ds ~ 500 dominates dh = ds + dgu @ W_gate_up, whose second term is ~1). The fuzz test's
    case('swiglu_mlp_block', 108) shape. dh was once one CPU addmm: MKL's SGEMM with beta=1 and fewer than 4 rows
    adds each of the 2I = 192 products into ds in turn, rounding at ds's scale every time: 1.33e-6 of max|dh|
    here (18x eager's 7.5e-8). Now 1.0e-7; over seeds 0-5 at most 1.7x eager's error, so the bound is 2x."""
    fused_err, eager_err = eps_dominated_grad_h_errors(torch.device("cpu"))
    assert fused_err <= 2 * eager_err, (fused_err, eager_err)


def test_bad_inputs(monkeypatch):
    h = torch.randn(4, 16)
    wgu, wd = _weights(16, 8, torch.float32)
    with pytest.raises(ValueError, match="w_gate_up"):
        swiglu_mlp_block(h, wgu[:, :8], wd)
    with pytest.raises(ValueError, match="w_gate_up"):
        swiglu_mlp_block(h, wgu[:15], wd)
    with pytest.raises(ValueError, match="w_down"):
        swiglu_mlp_block(h, wgu, wd[:, :4])
    with pytest.raises(ValueError, match="w_down"):
        swiglu_mlp_block(h, wgu, wd.reshape(-1))
    with pytest.raises(TypeError, match="w_down"):
        swiglu_mlp_block(h, wgu, wd.half())
    with pytest.raises(TypeError, match="h"):
        swiglu_mlp_block(h.double(), wgu.double(), wd.double())
    with pytest.raises(ValueError, match="w_gate_up"):
        swiglu_mlp_block(h, wgu.to("meta"), wd)
    with pytest.raises(ValueError, match="eps"):
        swiglu_mlp_block(h, wgu, wd, eps=-1.0)
    with pytest.raises(ValueError, match="2048"):
        swiglu_mlp_block(torch.randn(1, 2049), torch.randn(2, 2049), torch.randn(2049, 1))
    assert_needs_interpreter(monkeypatch, lambda: swiglu_mlp_block(h, wgu, wd))


def test_compile_fullgraph_and_opcheck():
    h = torch.randn(2, 9, 32, requires_grad=True)
    wgu = torch.randn(48, 32, requires_grad=True)
    wd = torch.randn(32, 24, requires_grad=True)

    check_compiles_like_eager(lambda a, b, c: swiglu_mlp_block(a, b, c) + 1, [h, wgu, wd])
    torch.library.opcheck(torch.ops.fastrecur.swiglu_mlp_block_fwd.default, (h, wgu, wd, 1e-5))
