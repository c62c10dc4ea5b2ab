"""fastrecur.ops.rotary_attention: the Triton kernels (through the interpreter on CPU) against an independent fp64
attention and against the eager reference in the input dtype; every qkv gradient; masking; strides; errors."""

import math

import pytest
import torch

from fastrecur.kernels import rotary_attention as K
from fastrecur.ops.rotary_attention import rotary_attention, rotary_attention_reference

from .helpers import assert_needs_interpreter, bad_call_params, rel_err

HALF_TOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # ~2 ulp of values around 1


def _rope_tables(S: int, hd: int, base: float = 10000.0):
    inv_freq = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    freqs = torch.outer(torch.arange(S, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _inputs(B, S, H, hd, dtype, rope=True, scale=1.0):
    qkv = (torch.randn(B, S, 3 * H * hd) * scale).to(dtype)
    cos, sin = _rope_tables(S, hd) if rope else (None, None)
    return qkv, cos, sin


def _attention_fp64(qkv, cos, sin, H):
    """Independent fp64 math: explicit rotation by half-swap and explicit softmax (no SDPA)."""
    B, S, C = qkv.shape
    hd = C // (3 * H)
    x = qkv.double().view(B, S, 3, H, hd)
    q, k, v = x[:, :, 0], x[:, :, 1], x[:, :, 2]
    if cos is not None:
        c, s = cos.double()[:, None, :], sin.double()[:, None, :]

        def rot(t):
            half = hd // 2
            swapped = torch.cat((-t[..., half:], t[..., :half]), dim=-1)
            return t * c + swapped * s

        q, k = rot(q), rot(k)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(B, S, H * hd), scores


def _check_fp32_against_fp64(qkv, cos, sin, H, config=None):
    """Forward (and lse) <= 1e-5 relative, qkv gradient <= 1e-4 relative, against fp64 autograd."""
    qkv64 = qkv.detach().double().requires_grad_()
    ref, scores = _attention_fp64(qkv64, cos, sin, H)
    grad_out = torch.randn(ref.shape, dtype=torch.float64)
    ref.backward(grad_out)
    if config is None:
        x = qkv.detach().requires_grad_()
        out = rotary_attention(x, cos, sin, H)
        out.backward(grad_out.float())
        dqkv = x.grad
        _, lse = torch.ops.fastrecur.rotary_attention_fwd(qkv, cos, sin, H)
    else:  # launchers directly, with forced tile sizes
        out, lse = K.rotary_attention_fwd(qkv, cos, sin, H, config=config)
        dqkv = K.rotary_attention_bwd(grad_out.float(), qkv, cos, sin, out, lse, H, config=config)
    assert out.dtype == qkv.dtype and out.shape == ref.shape
    assert rel_err(out, ref) <= 1e-5
    assert rel_err(lse, torch.logsumexp(scores.detach(), -1)) <= 1e-5
    assert dqkv.shape == qkv.shape
    assert rel_err(dqkv, qkv64.grad) <= 1e-4


@pytest.mark.parametrize(
    "B,S,H,hd,rope",
    [
        (2, 14, 2, 16, True),  # single partial tile
        (1, 97, 1, 32, True),  # Sudoku length: 1 query tile of 128, 2 key tiles, masked tails; batch 1
        (2, 37, 2, 16, False),  # no RoPE
        (1, 1, 2, 16, True),  # one position
    ],
)
def test_fp32_matches_fp64(B, S, H, hd, rope):
    _check_fp32_against_fp64(*_inputs(B, S, H, hd, torch.float32, rope), H)


def test_fp32_many_small_tiles():
    """Force small, unequal tiles (32 queries x 16 keys, as before Hopper in the backward) so the online softmax
    and both backward loops run over several masked tiles."""
    qkv, cos, sin = _inputs(2, 37, 2, 16, torch.float32)
    _check_fp32_against_fp64(qkv, cos, sin, 2, config=dict(BLOCK_M=32, BLOCK_N=16))


def test_fp32_odd_strides():
    """qkv a column/row slice of a wider buffer (batch and row strides not derived from the shape), cos/sin
    column slices of wider tables."""
    B, S, H, hd = 2, 19, 2, 16
    C = 3 * H * hd
    buf = torch.randn(B, S + 5, C + 24)
    qkv = buf[:, 3 : 3 + S, 8 : 8 + C]
    cos_full, sin_full = _rope_tables(S, 2 * hd)
    cos, sin = _rope_tables(S, hd)
    cos_wide = torch.cat((cos, cos_full), dim=1)[:, :hd]
    sin_wide = torch.cat((sin, sin_full), dim=1)[:, :hd]
    assert qkv.stride(1) == C + 24 and cos_wide.stride(0) == 3 * hd
    _check_fp32_against_fp64(qkv, cos_wide, sin_wide, H)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,S,H,hd,rope", [(2, 14, 2, 16, True), (1, 97, 2, 32, False), (1, 45, 1, 16, True)])
def test_half_matches_eager_reference(dtype, B, S, H, hd, rope):
    """16-bit inputs against the eager reference in the same dtype (same roundings of rotated q, k): outputs
    within ~2 ulp, gradients within a few ulp of their largest value."""
    qkv, cos, sin = _inputs(B, S, H, hd, dtype, rope)
    x_ref = qkv.clone().requires_grad_()
    ref = rotary_attention_reference(x_ref, cos, sin, H)
    grad_out = torch.randn(ref.shape).to(dtype)
    ref.backward(grad_out)
    x = qkv.clone().requires_grad_()
    out = rotary_attention(x, cos, sin, H)
    out.backward(grad_out)
    assert out.dtype == dtype and x.grad.dtype == dtype
    tol = HALF_TOL[dtype]
    assert rel_err(out, ref) <= tol
    assert rel_err(x.grad, x_ref.grad) <= 2 * tol
    # And the rounding is the reference's: the fp64 truth is no closer to the kernel than to eager by much.
    truth, _ = _attention_fp64(qkv, cos, sin, H)
    assert rel_err(out, truth) <= 2 * max(rel_err(ref, truth), tol / 4)


def test_eager_reference_matches_fp64():
    qkv, cos, sin = _inputs(2, 21, 2, 32, torch.float32)
    ref, _ = _attention_fp64(qkv, cos, sin, 2)
    assert rel_err(rotary_attention_reference(qkv, cos, sin, 2), ref) <= 1e-5
    assert rel_err(rotary_attention_reference(qkv, None, None, 2), _attention_fp64(qkv, None, None, 2)[0]) <= 1e-5


def test_maze_length_forward_backward():
    """The Maze/ARC length (916 = 900 + 16 prefix): 8 query tiles x 15 key tiles forward, 15 x 15 backward."""
    B, S, H, hd = 1, 916, 1, 16
    qkv, cos, sin = _inputs(B, S, H, hd, torch.float32)
    qkv64 = qkv.double().requires_grad_()
    ref, _ = _attention_fp64(qkv64, cos, sin, H)
    ref.sum().backward()
    x = qkv.clone().requires_grad_()
    out = rotary_attention(x, cos, sin, H)
    out.sum().backward()  # an expanded (stride 0) upstream gradient
    assert rel_err(out, ref) <= 1e-5
    assert rel_err(x.grad, qkv64.grad) <= 1e-4


def test_compiles_without_graph_breaks():
    qkv, cos, sin = _inputs(1, 9, 2, 16, torch.float32)
    fn = lambda t: rotary_attention(t, cos, sin, 2) * 2.0  # noqa: E731
    assert torch._dynamo.explain(fn)(qkv).graph_break_count == 0
    x = qkv.clone().requires_grad_()
    out = torch.compile(fn, fullgraph=True, backend="aot_eager")(x)
    out.sum().backward()
    x_ref = qkv.clone().requires_grad_()
    ref = rotary_attention_reference(x_ref, cos, sin, 2) * 2.0
    ref.sum().backward()
    assert rel_err(out, ref) <= 1e-5 and rel_err(x.grad, x_ref.grad) <= 1e-4


def test_opcheck():
    qkv, cos, sin = _inputs(1, 9, 2, 16, torch.float32)
    torch.library.opcheck(torch.ops.fastrecur.rotary_attention_fwd.default, (qkv.requires_grad_(), cos, sin, 2))
    torch.library.opcheck(torch.ops.fastrecur.rotary_attention_fwd.default, (qkv, None, None, 2))


def _bad_calls():
    qkv, cos, sin = _inputs(1, 8, 2, 16, torch.float32)
    yield "list", lambda: rotary_attention(qkv.tolist(), cos, sin, 2), TypeError
    yield "ndim", lambda: rotary_attention(qkv[0], cos, sin, 2), ValueError
    yield "int dtype", lambda: rotary_attention(qkv.long(), cos, sin, 2), TypeError
    yield "fp64", lambda: rotary_attention(qkv.double(), cos, sin, 2), TypeError
    yield "heads not dividing", lambda: rotary_attention(qkv, cos, sin, 5), ValueError
    yield "num_heads 0", lambda: rotary_attention(qkv, cos, sin, 0), ValueError
    yield "num_heads float", lambda: rotary_attention(qkv, cos, sin, 2.0), ValueError
    yield "hd 24", lambda: rotary_attention(torch.randn(1, 8, 72), None, None, 1), ValueError
    yield "hd 8", lambda: rotary_attention(qkv, None, None, 4), ValueError
    yield "last dim strided", lambda: rotary_attention(torch.randn(1, 8, 192, 2)[..., 0], cos, sin, 2), ValueError
    yield "cos only", lambda: rotary_attention(qkv, cos, None, 2), ValueError
    yield "cos shape", lambda: rotary_attention(qkv, cos[:4], sin[:4], 2), ValueError
    yield "cos 3d", lambda: rotary_attention(qkv, cos[None], sin[None], 2), ValueError
    yield "cos half", lambda: rotary_attention(qkv, cos.half(), sin.half(), 2), TypeError
    yield "cos grad", lambda: rotary_attention(qkv, cos.requires_grad_(), sin, 2), ValueError
    yield "cos device", lambda: rotary_attention(qkv, cos.to("meta"), sin.to("meta"), 2), ValueError


@pytest.mark.parametrize("call,exc", bad_call_params(_bad_calls))
def test_bad_inputs(call, exc):
    with pytest.raises(exc):
        call()


def test_cpu_without_interpreter_is_an_error(monkeypatch):
    qkv, cos, sin = _inputs(1, 8, 2, 16, torch.float32)
    assert_needs_interpreter(monkeypatch, lambda: rotary_attention(qkv, cos, sin, 2))
    rotary_attention_reference(qkv, cos, sin, 2)  # the eager path needs no Triton
