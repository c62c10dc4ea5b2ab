"""Per-token cross-entropy losses of HRM/TRM's ACT loss head: stablemax (fused Triton, fp64) and softmax (eager).

``stablemax_cross_entropy(logits, labels, ignore_index=-100)`` -> float64 ``[B, S]``: the reference
(``models/losses.py``) computes, on ``logits.to(float64)``,
``s(x) = 1/(1 - x + 1e-30)`` for ``x < 0`` else ``x + 1``; ``logprobs = log(s / sum(s))``;
loss ``-logprobs[label]``, 0 where ``label == ignore_index``. Here one kernel computes it from the logits in their
own dtype without materialising any ``[B, S, V]`` float64 tensor, and one kernel gives the gradient w.r.t. the
logits in their dtype (``fastrecur.kernels.stablemax_ce``). On CUDA, labels outside ``[0, V)`` other than
``ignore_index`` give NaN losses and gradients, silently (the reference's gather raises instead; checking them
would cost a device sync at every training step, so the kernels stay sync-free). On the CPU (the Triton
interpreter, or the eager functions) the check costs no sync and is made: such a label is a ValueError naming it.

``stablemax_cross_entropy_reference`` is the eager reference (the models' eager/CPU path), bit for bit the
reference's op sequence. ``softmax_cross_entropy`` is the reference's softmax option, in plain torch; it uses
``reshape`` where the reference uses ``view``, which fails on the non-contiguous logits slice the loss head passes
whenever puzzle embeddings are on (a reference bug; this is what it meant).

Registered as ``torch.ops.fastrecur.stablemax_ce_fwd`` / ``_bwd`` custom ops (fake impls + autograd) so that
``torch.compile(fullgraph=True)`` traces the public function; ``custom_op`` rather than ``triton_op`` for the reason
given in ``fastrecur.ops.rotary_attention``.
"""

from __future__ import annotations

import numpy as np
import torch

from fastrecur.kernels import stablemax_ce as _k
from fastrecur.ops import reference as R
from fastrecur.ops._validate import check_tensor, check_triton_device

__all__ = ["stablemax_cross_entropy", "stablemax_cross_entropy_reference", "softmax_cross_entropy"]

LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


# --------------------------------------------------------------------------------------------------- validation
def _check_inputs(logits, labels, ignore_index, *, need_triton: bool) -> None:
    check_tensor("logits", logits, ndim=(2, 3))
    if need_triton:
        check_triton_device("logits", logits)
    check_tensor("labels", labels, ndim=logits.dim() - 1, dtypes=LABEL_DTYPES, device=logits.device)
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"labels must have shape logits.shape[:-1] = {tuple(logits.shape[:-1])}, got {tuple(labels.shape)}"
        )
    if logits.shape[-1] == 0:
        raise ValueError("logits must have at least one class (last dimension 0)")
    if (
        isinstance(ignore_index, bool)
        or not isinstance(ignore_index, int)
        or not (_INT32_MIN <= ignore_index <= _INT32_MAX)
    ):
        raise TypeError(f"ignore_index must be an int in the int32 range, got {ignore_index!r}")
    _check_label_range(logits.shape[-1], labels, ignore_index)


def _check_label_range(vocab: int, labels: torch.Tensor, ignore_index: int) -> None:
    """ValueError for a label outside ``[0, vocab)`` other than ``ignore_index``, checked only where it costs no
    device sync: plain CPU tensors (not while torch.compile traces, nor fake or functional tensors). The labels
    are read through numpy, a host read with no ATen op, so the CPU stand-in for a GPU step in
    ``tests/test_sync_free.py`` (which flags value reads) sees none -- on a GPU this code does not run."""
    if type(labels) is not torch.Tensor or labels.device.type != "cpu" or torch.compiler.is_compiling():
        return
    lab = labels.numpy()
    bad = (lab != ignore_index) & ((lab < 0) | (lab >= vocab))
    if bad.any():
        where = [int(i) for i in np.argwhere(bad)[0]]
        raise ValueError(
            f"labels must be in [0, {vocab}) (the vocabulary: logits.shape[-1]) or ignore_index={ignore_index}; "
            f"labels{where} = {int(lab[tuple(where)])} (on CUDA such a label gives NaN, unchecked)"
        )


# ---------------------------------------------------------------------------------------------------- reference
def stablemax_cross_entropy_reference(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """Eager reference, the reference repos' exact op sequence (float64 ``labels.shape`` losses)."""
    _check_inputs(logits, labels, ignore_index, need_triton=False)
    return R.stablemax_cross_entropy(logits, labels, ignore_index)


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Float32 softmax cross-entropy per token (``reduction='none'``), 0 at ignored labels; any logits layout."""
    _check_inputs(logits, labels, ignore_index, need_triton=False)
    return R.softmax_cross_entropy(logits, labels, ignore_index)


# ----------------------------------------------------------------------------------------------- custom ops
@torch.library.custom_op("fastrecur::stablemax_ce_fwd", mutates_args=())
def _stablemax_ce_fwd(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss [B, S] float64, row sums of s(x) [B, S] float64). The row sums carry no gradient."""
    return _k.stablemax_ce_fwd(logits, labels, ignore_index)


@_stablemax_ce_fwd.register_fake
def _(logits, labels, ignore_index):
    shape = logits.shape[:-1]
    return logits.new_empty(shape, dtype=torch.float64), logits.new_empty(shape, dtype=torch.float64)


@torch.library.custom_op("fastrecur::stablemax_ce_bwd", mutates_args=())
def _stablemax_ce_bwd(
    grad: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, rowsum: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    """Gradient w.r.t. the logits (contiguous, logits.dtype) from the float64 upstream gradient of the loss."""
    return _k.stablemax_ce_bwd(grad.to(torch.float64), logits, labels, rowsum, ignore_index)


@_stablemax_ce_bwd.register_fake
def _(grad, logits, labels, rowsum, ignore_index):
    return logits.new_empty(logits.shape)


def _setup_context(ctx, inputs, output):
    logits, labels, ignore_index = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(logits, labels, output[1])
    ctx.ignore_index = ignore_index


def _backward(ctx, grad_loss, _grad_rowsum):
    logits, labels, rowsum = ctx.saved_tensors
    dlogits = torch.ops.fastrecur.stablemax_ce_bwd(grad_loss, logits, labels, rowsum, ctx.ignore_index)
    return dlogits, None, None


_stablemax_ce_fwd.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------------------ public
def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Fused stablemax cross-entropy per token; see the module docstring.

    Args:
        logits: ``[B, S, V]`` (or ``[N, V]``) fp32/bf16/fp16, any strides, on CUDA (or CPU under
            ``TRITON_INTERPRET=1``).
        labels: ``logits.shape[:-1]``, an integer dtype, same device; ``ignore_index`` entries are skipped.
        ignore_index: label value that contributes 0 loss and 0 gradient.

    Returns:
        float64 losses of ``labels.shape``; differentiable w.r.t. ``logits`` (gradient in the logits' dtype).

    Errors:
        TypeError / ValueError naming ``logits``, ``labels`` or ``ignore_index`` for a wrong type, dtype, shape or
        device, and CPU tensors without ``TRITON_INTERPRET=1``. A label outside ``[0, V)`` other than
        ``ignore_index`` is a ValueError on the CPU; **on CUDA it is not checked and gives NaN** in its loss and
        gradient (a check there would cost a device sync at every call; the training loop stays sync-free).
    """
    _check_inputs(logits, labels, ignore_index, need_triton=True)
    if logits.dim() == 2:
        loss, _ = torch.ops.fastrecur.stablemax_ce_fwd(logits.unsqueeze(0), labels.unsqueeze(0), ignore_index)
        return loss.squeeze(0)
    loss, _ = torch.ops.fastrecur.stablemax_ce_fwd(logits, labels, ignore_index)
    return loss
