"""torch.library.opcheck on every op of the native extension (torch.ops.fastrecur_C), with realistic inputs:
the schema declares every mutation (Tensor(a!)), the fake (meta) implementations registered by fastrecur._ext
agree with the real kernels, autograd registration is sound, and the ops survive AOT dispatch with dynamic
shapes, which is what torch.compile needs to trace them. CPU always; CUDA when a GPU and the extension's CUDA
kernels are present (skipped otherwise).

Skipped when the extension is not built, unless FASTRECUR_REQUIRE_EXT=1 (then they fail).
"""

import os

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from fastrecur import _ext

EPS = 1e-5
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DEVICES = ["cpu", "cuda"]


@pytest.fixture(autouse=True)
def _need_ext():
    if not _ext.available():
        if os.environ.get("FASTRECUR_REQUIRE_EXT") == "1":
            pytest.fail(f"FASTRECUR_REQUIRE_EXT=1 but {_ext.status()}")
        pytest.skip(_ext.status())


def device_or_skip(name: str) -> torch.device:
    if name == "cuda" and not (torch.cuda.is_available() and _ext.has_cuda_kernels()):
        pytest.skip("needs a GPU and the extension's CUDA kernels")
    return torch.device(name)


def C():
    return torch.ops.fastrecur_C


def randn(*shape, dtype, device, scale=1.0):
    return (torch.randn(*shape) * scale).to(dtype=dtype, device=device)


def rope_tables(seq, hd, device):
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    emb = torch.outer(torch.arange(seq, dtype=torch.float32), inv).repeat(1, 2)
    return emb.cos().to(device), emb.sin().to(device)


def check(op, args):
    """opcheck every test utility and fail with the ones that did not succeed."""
    result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


# Shapes of the Sudoku models at batch 2 (S = 97 positions, D = 64 keeps the checks fast; widths that are not
# multiples of the vector length exercise the tails).
B, S, D, H, HD, INTER = 2, 97, 64, 2, 32, 176


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck_elementwise_ops(dtype, device):
    dev = device_or_skip(device)
    a, b = randn(B, S, D, dtype=dtype, device=dev), randn(B, S, D, dtype=dtype, device=dev)
    check(C().add_rms_norm.default, (a, b, EPS, torch.empty_like(a)))
    gu = randn(B, S, 2 * INTER, dtype=dtype, device=dev, scale=3.0)
    check(C().swiglu.default, (gu, torch.empty(B, S, INTER, dtype=dtype, device=dev)))
    cos, sin = rope_tables(S, HD, dev)
    check(C().rope_.default, (randn(B, S, 3 * H, HD, dtype=dtype, device=dev), cos, sin))
    bT = randn(S, B, D, dtype=dtype, device=dev).transpose(0, 1)  # strided operand, as in the mixer block
    check(
        C().add_rms_norm_dim1.default,
        (randn(B, S, D, dtype=dtype, device=dev), bT, EPS, torch.empty(B, S, D, dtype=dtype, device=dev)),
    )
    srcs = [randn(B, S, D, dtype=dtype, device=dev) for _ in range(2)]
    check(C().inject_add.default, (randn(B, S, D, dtype=dtype, device=dev), srcs))


def attention_weights(n, dtype, device):
    def w(rows, cols):
        return randn(rows, cols, dtype=dtype, device=device, scale=cols**-0.5)

    return [t for _ in range(n) for t in (w(3 * H * HD, D), w(D, H * HD), w(2 * INTER, D), w(D, INTER))]


def mixer_weights(n, dtype, device, inter_t=24):
    def w(rows, cols):
        return randn(rows, cols, dtype=dtype, device=device, scale=cols**-0.5)

    return [t for _ in range(n) for t in (w(2 * inter_t, S), w(S, inter_t), w(2 * INTER, D), w(D, INTER))]


# A TRM-like program on slots 1 (z_H) and 2 (z_L), slot 0 = x: z_L = L(z_L + (z_H + x)) twice,
# z_H = L(z_H + z_L), then a copy (z_L = z_H). Rows: [opcode, target, level | source, n_inject, inject...].
PROGRAM = torch.tensor([[0, 2, 0, 2, 1, 0], [0, 2, 0, 2, 1, 0], [0, 1, 0, 1, 2, 0], [1, 2, 1, 0, 0, 0]])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["attention", "mixer"])
def test_opcheck_run_steps(kind, dtype, device):
    dev = device_or_skip(device)
    torch.manual_seed(0)
    x = randn(B, S, D, dtype=dtype, device=dev)
    states = [randn(B, S, D, dtype=dtype, device=dev) for _ in range(2)]
    if kind == "attention":
        weights, (cos, sin), block_kind = attention_weights(2, dtype, dev), rope_tables(S, HD, dev), 0
    else:
        weights, (cos, sin), block_kind = mixer_weights(2, dtype, dev), (None, None), 1
    check(C().run_steps.default, (states, x, PROGRAM, weights, [0, 2], cos, sin, H, EPS, block_kind, -1))


def test_tensorless_ops_run_under_fake_mode():
    """The four query ops take no tensors (CompositeImplicitAutograd): they run as they are under
    FakeTensorMode and give the same answers as outside it."""
    want = (C().has_cuda_kernels(), C().cpu_isa(), len(C().workspace_info()))
    with FakeTensorMode():
        got = (C().has_cuda_kernels(), C().cpu_isa(), len(C().workspace_info()))
    assert got == want and want[2] == 5 and want[1] in ("avx512_bf16", "avx512", "avx2", "default")


def test_fake_mode_leaves_tensors_untouched():
    """Under FakeTensorMode the ops run their fake implementations: no kernel runs, outputs keep their
    metadata."""
    with FakeTensorMode():
        a, b, out = torch.randn(2, 3, 40), torch.randn(2, 3, 40), torch.empty(2, 3, 40)
        C().add_rms_norm(a, b, EPS, out)
        assert out.shape == (2, 3, 40) and out.dtype == torch.float32


def test_torch_compile_traces_the_ops():
    """A function calling the ops compiles to one graph (fullgraph=True: no graph break) and gives the
    eager result, which itself equals the plain-torch math."""

    def fused(a, b, gu, base, src):
        out = torch.empty_like(a)
        torch.ops.fastrecur_C.add_rms_norm(a, b, EPS, out)
        act = gu.new_empty(gu.shape[:-1] + (gu.shape[-1] // 2,))
        torch.ops.fastrecur_C.swiglu(gu, act)
        tgt = base.clone()
        torch.ops.fastrecur_C.inject_add(tgt, [src])
        return out * 2, act + 1, tgt

    torch.manual_seed(0)
    args = (
        torch.randn(2, 5, 40),
        torch.randn(2, 5, 40),
        torch.randn(2, 5, 2 * 37),
        torch.randn(2, 5, 40),
        torch.randn(2, 5, 40),
    )
    compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)
    got, want = compiled(*args), fused(*args)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    a, b, gu, base, src = args
    s = a + b
    torch.testing.assert_close(want[0], 2 * s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + EPS))
    g, u = gu.chunk(2, -1)
    torch.testing.assert_close(want[1], F.silu(g) * u + 1)
    torch.testing.assert_close(want[2], base + src)
