"""TRM token mixing (``mlp_t``) with the residual add and the token-axis RMSNorm fused, no transposes.

Semantics, h [B, L, D]: t = h.transpose(1, 2) [B, D, L]; t = rms_norm(t + SwiGLU_L(t)) over L; return
t.transpose(1, 2) as a contiguous [B, L, D] tensor.

This is the channel SwiGLU block of ``swiglu_mlp.py`` applied to the strided view ``t = h.permute(0, 2, 1)``
(m = channel d with stride 1, k = token l with stride D), so the same three kernels run unchanged:
* gate/up: act[b, d, i] = silu((W_gu_t @ h[b])[i, d]) * (...)[I + i, d]  -- a left-multiplication over L;
* down + norm: a program owns all L tokens of a block of channels, so the norm over L is its epilogue;
* backward: the fused dact/gate/up kernel, then the input gradient ds + W_gu_t.T @ dG as the down kernel
  with NORM=False (written straight into a contiguous [B, L, D]).
Intermediates are laid out so the two weight gradients are single cuBLAS GEMMs with K = B*D:
ds as [L, B, D], act as [I, B, D], d(gate, up) as [2I, B, D].
"""

from __future__ import annotations

import torch

from .add_rms_norm import rms_norm_bwd
from .swiglu_mlp import block_compile_targets, matmul_residual_norm, swiglu_gate_up, swiglu_mlp_bwd_tiles

__all__ = ["token_mix_fwd", "token_mix_bwd", "compile_targets"]


def _tview(t):
    """[B, L, D] memory seen as [B, D, L] (the semantic transpose), without copying."""
    return t.permute(0, 2, 1)


def token_mix_fwd(h, w_gate_up_t, w_down_t, eps: float):
    """h [B, L, D] (any strides), w_gate_up_t [2I, L], w_down_t [L, I] -> (y [B, L, D] contiguous, rstd [B, D]).

    Bytes: h is read twice (gate/up operand, residual), act [B, I, D] written and read once, y written once;
    eager additionally materialises the transposed copy, gu [B, D, 2I], silu, the projection and the sum.
    """
    n_batch, n_tok, d = h.shape
    i = w_down_t.shape[1]
    y = torch.empty((n_batch, n_tok, d), dtype=h.dtype, device=h.device)
    rstd = torch.empty((n_batch, d), dtype=torch.float32, device=h.device)
    if h.numel() == 0:
        return y, rstd
    act = torch.empty((n_batch, i, d), dtype=h.dtype, device=h.device)
    h3 = _tview(h)
    swiglu_gate_up(h3, w_gate_up_t, _tview(act))
    matmul_residual_norm(_tview(act), w_down_t, h3, _tview(y), rstd, eps)
    return y, rstd


def token_mix_bwd(dy, h, y, rstd, w_gate_up_t, w_down_t):
    """Returns (dh [B, L, D] contiguous, dw_gate_up_t [2I, L], dw_down_t [L, I]).

    The only copy: h transposed to [L, B*D] for the W_gate_up_t gradient (cuBLAS needs one stride for the
    contracted (b, d) axis); it costs one read and write of h.
    """
    n_batch, n_tok, d = h.shape
    i = w_down_t.shape[1]
    dev, dt = h.device, h.dtype
    ds = torch.empty((n_tok, n_batch, d), dtype=dt, device=dev)
    act = torch.empty((i, n_batch, d), dtype=dt, device=dev)
    dgu = torch.empty((2 * i, n_batch, d), dtype=dt, device=dev)
    dh = torch.empty((n_batch, n_tok, d), dtype=dt, device=dev)
    ds3 = ds.permute(1, 2, 0)  # [B, D, L]
    if h.numel() > 0:
        rms_norm_bwd(_tview(dy), rstd, y3=_tview(y), ds3=ds3)
        swiglu_mlp_bwd_tiles(_tview(h), ds3, w_gate_up_t, w_down_t, act.permute(1, 2, 0), dgu.permute(1, 2, 0))
        # dh[b] = ds[b] + W_gu_t.T @ dG[b]: the row-owning kernel over L, no norm
        matmul_residual_norm(dgu.permute(1, 2, 0), w_gate_up_t.t(), ds3, _tview(dh), None, 0.0, norm=False)
    else:
        ds.zero_()
        act.zero_()
        dgu.zero_()
        dh.zero_()
    bd = n_batch * d
    dw_down_t = ds.view(n_tok, bd).mm(act.view(i, bd).t())
    h_t = h.permute(1, 0, 2).reshape(n_tok, bd)
    dw_gate_up_t = dgu.view(2 * i, bd).mm(h_t.t())
    return dh, dw_gate_up_t, dw_down_t


def compile_targets(dtype: torch.dtype = torch.bfloat16, batch: int = 256, n_tok: int = 97, d: int = 512, i: int = 512):
    """Representative launches for TRM Sudoku mlp_t (L=97, I=512, D=512): the channel kernels with the
    token-mix strides (m = channel, stride 1; k = token, stride D). L = 97 leaves the arguments equal to it
    unaligned (K or N, and the weights' row stride)."""
    return block_compile_targets(
        dtype,
        d,
        n_tok,
        i,
        suffix="[token_mix]",
        layout={
            "gate_up": (["s_xm", "s_wk", "s_am"], ["K", "s_wn"]),
            "norm": (["s_am", "s_wk", "s_hm", "s_ym"], ["N"]),
            "bwd": (["s_xm", "s_dm", "s_gk", "s_wn", "s_am", "s_om"], ["K", "s_gn"]),
        },
    )
