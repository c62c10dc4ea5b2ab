"""fastrecur.ops.stablemax_ce: the fused stablemax cross-entropy kernels (through the interpreter on CPU) against
an independent fp64 formula and the reference's eager op sequence; loss and logits gradient; the softmax helper."""

import re

import pytest
import torch

from fastrecur.ops.stablemax_ce import (
    softmax_cross_entropy,
    stablemax_cross_entropy,
    stablemax_cross_entropy_reference,
)

from .helpers import assert_needs_interpreter, bad_call_params

IGNORE = -100


def _independent_stablemax_ce(logits, labels, ignore_index=IGNORE):
    """fp64 per-token loss written differently from the reference: log(sum s) - log(s_label)."""
    x = logits.double()
    s = torch.where(x < 0, 1.0 / (1.0 - x), x + 1.0)
    valid = labels != ignore_index
    s_y = s.gather(-1, torch.where(valid, labels, 0).long().unsqueeze(-1)).squeeze(-1)
    return torch.where(valid, s.sum(-1).log() - s_y.log(), torch.zeros_like(s_y))


def _logits_and_labels(B, S, V, dtype, scale=3.0):
    logits = (torch.randn(B, S, V) * scale).to(dtype)
    labels = torch.randint(0, V, (B, S))
    labels[0, 1] = IGNORE
    labels[-1] = IGNORE  # a row with every label ignored
    return logits, labels


def _check(logits, labels, ignore_index=IGNORE):
    """Loss <= 1e-12 relative to fp64 (the brief asks 1e-6); gradient equal to the reference's autograd gradient
    (computed in fp64, cast to the logits' dtype) up to one rounding of the final cast."""
    x_ref = logits.detach().clone().requires_grad_()
    ref = stablemax_cross_entropy_reference(x_ref, labels, ignore_index)
    grad = torch.randn(ref.shape, dtype=torch.float64)
    ref.backward(grad)
    x = logits.detach().clone().requires_grad_()
    loss = stablemax_cross_entropy(x, labels, ignore_index)
    loss.backward(grad)
    assert loss.dtype == torch.float64 and loss.shape == labels.shape
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss, _independent_stablemax_ce(logits, labels, ignore_index), rtol=1e-12, atol=1e-12)
    assert x.grad.dtype == logits.dtype and x.grad.shape == logits.shape
    ulp = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[logits.dtype]
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=ulp, atol=1e-7)
    ignored = labels == ignore_index
    assert (loss[ignored] == 0).all() and (x.grad[ignored] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("V", [7, 11, 12])
def test_matches_reference(dtype, V):
    _check(*_logits_and_labels(3, 5, V, dtype))


def test_vocab_larger_than_one_block():
    """V above the kernel's 1024-wide block: the row sum and gradient loop over vocabulary chunks."""
    _check(*_logits_and_labels(1, 3, 1500, torch.float32, scale=20.0))


def test_strided_inputs_and_2d():
    """The loss head's logits slice (prefix positions dropped: non-contiguous), int32 labels with a stride, and a
    flat [N, V] call."""
    full = torch.randn(2, 9, 6) * 4
    logits = full[:, 3:]
    labels = torch.randint(0, 6, (2, 12), dtype=torch.int32)[:, ::2]
    labels[1, 0] = IGNORE
    assert not logits.is_contiguous() and not labels.is_contiguous()
    _check(logits, labels)
    _check(logits.reshape(-1, 6), labels.reshape(-1))


def test_custom_ignore_index_and_extremes():
    logits = torch.tensor([[[-1e6, 0.0, 1e6, -0.0], [-1.0, -1.0, -1.0, -1.0], [0.5, -0.5, 1e-30, 3.0]]])
    labels = torch.tensor([[0, 3, 7]])
    _check(logits, labels, ignore_index=7)


def test_out_of_range_label_gives_nan_in_the_kernel():
    # What a CUDA caller gets (unchecked there: no device sync): the kernels themselves, called past the check.
    logits = torch.randn(1, 3, 5, requires_grad=True)
    labels = torch.tensor([[1, 5, -3]])
    loss, _ = torch.ops.fastrecur.stablemax_ce_fwd(logits, labels, IGNORE)
    assert torch.isfinite(loss[0, 0]) and torch.isnan(loss[0, 1:]).all()
    loss.backward(torch.ones_like(loss))
    assert torch.isfinite(logits.grad[0, 0]).all() and torch.isnan(logits.grad[0, 1:]).all()


@pytest.mark.parametrize("fn", [stablemax_cross_entropy, stablemax_cross_entropy_reference, softmax_cross_entropy])
@pytest.mark.parametrize("bad, where", [(5, [0, 1]), (-3, [0, 1]), (-100, None)])
def test_out_of_range_label_is_an_error_on_the_cpu(fn, bad, where):
    # On the CPU the check costs no sync: a label outside [0, V) other than ignore_index is named.
    logits = torch.randn(1, 3, 5)
    labels = torch.tensor([[1, bad, 4]], dtype=torch.int32)
    if where is None:  # the ignore index itself is fine: 0 loss there
        assert fn(logits, labels)[0, 1] == 0
        return
    tail = re.escape(f"ignore_index=-100; labels{where} = {bad} ")
    with pytest.raises(ValueError, match=r"^labels must be in \[0, 5\) .* " + tail):
        fn(logits, labels)


def test_compiles_without_graph_breaks():
    logits, labels = _logits_and_labels(2, 4, 6, torch.float32)

    def fn(t):
        return stablemax_cross_entropy(t, labels).sum() / 3

    assert torch._dynamo.explain(fn)(logits).graph_break_count == 0
    x = logits.clone().requires_grad_()
    torch.compile(fn, fullgraph=True, backend="aot_eager")(x).backward()
    x_ref = logits.clone().requires_grad_()
    (stablemax_cross_entropy_reference(x_ref, labels).sum() / 3).backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-7)


def test_opcheck():
    logits, labels = _logits_and_labels(2, 4, 6, torch.float32)
    torch.library.opcheck(torch.ops.fastrecur.stablemax_ce_fwd.default, (logits.requires_grad_(), labels, IGNORE))


def test_softmax_cross_entropy():
    full = torch.randn(2, 7, 5).to(torch.bfloat16)
    logits = full[:, 2:]  # non-contiguous: the reference's .view fails here
    labels = torch.randint(0, 5, (2, 5))
    labels[0, :2] = IGNORE
    loss = softmax_cross_entropy(logits, labels)
    x = logits.double()
    expected = -(x.log_softmax(-1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1))
    expected = torch.where(labels == IGNORE, torch.zeros_like(expected), expected)
    assert loss.dtype == torch.float32 and loss.shape == labels.shape
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-6)


def _bad_calls():
    logits, labels = _logits_and_labels(2, 3, 5, torch.float32)
    yield "logits list", lambda: stablemax_cross_entropy(logits.tolist(), labels), TypeError
    yield "logits int", lambda: stablemax_cross_entropy(logits.long(), labels), TypeError
    yield "logits 4d", lambda: stablemax_cross_entropy(logits[None], labels), ValueError
    yield "labels float", lambda: stablemax_cross_entropy(logits, labels.float()), TypeError
    yield "labels bool", lambda: stablemax_cross_entropy(logits, labels > 0), TypeError
    yield "labels shape", lambda: stablemax_cross_entropy(logits, labels[:, :2]), ValueError
    yield "labels ndim", lambda: stablemax_cross_entropy(logits, labels[0]), ValueError
    yield "labels device", lambda: stablemax_cross_entropy(logits, labels.to("meta")), ValueError
    yield "ignore_index float", lambda: stablemax_cross_entropy(logits, labels, -100.0), TypeError
    yield "ignore_index huge", lambda: stablemax_cross_entropy(logits, labels, 2**40), TypeError
    yield "empty vocab", lambda: stablemax_cross_entropy(logits[..., :0], labels), ValueError
    yield "softmax labels float", lambda: softmax_cross_entropy(logits, labels.float()), TypeError


@pytest.mark.parametrize("call,exc", bad_call_params(_bad_calls))
def test_bad_inputs(call, exc):
    with pytest.raises(exc):
        call()


def test_cpu_without_interpreter_is_an_error(monkeypatch):
    logits, labels = _logits_and_labels(2, 3, 5, torch.float32)
    assert_needs_interpreter(monkeypatch, lambda: stablemax_cross_entropy(logits, labels))
    stablemax_cross_entropy_reference(logits, labels)  # the eager path needs no Triton
