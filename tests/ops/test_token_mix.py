"""fastrecur.ops.token_mix: TRM mlp_t (SwiGLU and rms_norm over the token axis) through the Triton
interpreter against eager torch (fp64 and the input dtype), output and all three gradients; layouts, bad
inputs, torch.compile and opcheck."""

import pytest
import torch

from fastrecur.ops.token_mix import token_mix_block, token_mix_block_reference

from .helpers import DTYPES, assert_needs_interpreter, check_compiles_like_eager, check_fused


def _weights(n_tok, i, dtype):
    return (torch.randn(2 * i, n_tok) / n_tok**0.5).to(dtype), (torch.randn(n_tok, i) / i**0.5).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(dtype):
    """B = 2, L = 14, D = 24, I = 40."""
    h = torch.randn(2, 14, 24, dtype=dtype)
    y, _ = check_fused(token_mix_block, token_mix_block_reference, [h, *_weights(14, 40, dtype)])
    assert y.is_contiguous() and y.shape == (2, 14, 24)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sudoku_length_batch_one(dtype):
    """L = 97 (TRM Sudoku with its puzzle prefix), batch 1, a small channel dim."""
    h = torch.randn(1, 97, 16, dtype=dtype)
    check_fused(token_mix_block, token_mix_block_reference, [h, *_weights(97, 48, dtype)])


def test_strided_inputs():
    """h stored channel-major ([B, D, L] memory seen as [B, L, D]) and a transposed weight."""
    h = torch.randn(3, 20, 14).transpose(1, 2)
    w_gate_up_t = (torch.randn(14, 64) / 14**0.5).t()
    _, w_down_t = _weights(14, 32, torch.float32)
    y, _ = check_fused(token_mix_block, token_mix_block_reference, [h, w_gate_up_t, w_down_t])
    assert y.is_contiguous()


def test_bad_inputs(monkeypatch):
    h = torch.randn(2, 6, 8)
    wgu, wd = _weights(6, 4, torch.float32)
    with pytest.raises(ValueError, match="h"):
        token_mix_block(h[0], wgu, wd)
    with pytest.raises(ValueError, match="w_gate_up_t"):
        token_mix_block(h, _weights(7, 4, torch.float32)[0], wd)
    with pytest.raises(ValueError, match="w_down_t"):
        token_mix_block(h, wgu, wd.t())
    with pytest.raises(TypeError, match="w_gate_up_t"):
        token_mix_block(h, wgu.bfloat16(), wd)
    with pytest.raises(ValueError, match="eps"):
        token_mix_block(h, wgu, wd, eps=float("inf"))
    with pytest.raises(ValueError, match="2048"):
        token_mix_block(torch.randn(1, 2049, 1), torch.randn(2, 2049), torch.randn(2049, 1))
    with pytest.raises(ValueError, match="batch"):
        token_mix_block(torch.zeros(1, 6, 8).expand(65536, 6, 8), wgu, wd)
    assert_needs_interpreter(monkeypatch, lambda: token_mix_block(h, wgu, wd), value="")


def test_compile_fullgraph_and_opcheck():
    h = torch.randn(2, 14, 16, requires_grad=True)
    wgu = torch.randn(32, 14, requires_grad=True)
    wd = torch.randn(14, 16, requires_grad=True)

    check_compiles_like_eager(lambda a, b, c: token_mix_block(a, b, c) * 3, [h, wgu, wd])
    torch.library.opcheck(torch.ops.fastrecur.token_mix_block_fwd.default, (h, wgu, wd, 1e-5))
