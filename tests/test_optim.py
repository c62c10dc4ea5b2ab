"""Optimisers, schedule and EMA of fastrecur.train against independent fp64 re-implementations."""
import math

import pytest
import torch
from torch import nn

from fastrecur.nn.linear import CastedSparseEmbedding
from fastrecur.train.optim import (AdamATan2, EMAHelper, SparseEmbeddingSignSGD, build_optimizers,
                                   cosine_schedule_with_warmup_lr_lambda, sparse_sign_sgd_)


def _adam_atan2_fp64(p, grads, lr, betas, wd, a=1.0, b=1.0):
    """Plain fp64 loop over the adam-atan2 package's update rule."""
    p = p.double().clone()
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    for t, g in enumerate(grads, 1):
        g = g.double()
        p = p * (1 - lr * wd)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat = m / (1 - betas[0] ** t)
        v_hat = v / (1 - betas[1] ** t)
        p = p - lr * a * torch.atan2(m_hat, b * torch.sqrt(v_hat))
    return p


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("ab", [(1.0, 1.0), (1.27, 1.0)])
def test_adam_atan2_matches_fp64_reference(dtype, tol, ab):
    torch.manual_seed(0)
    shapes = [(7, 5), (3,), (1,)]
    init = [torch.randn(s, dtype=torch.float64) * 0.1 for s in shapes]
    grads = [[torch.randn(s, dtype=torch.float64) * (0.001 if i % 2 else 1.0) for s in shapes] for i in range(6)]
    grads[2][0].zero_()  # atan2(0, 0) = 0: no NaN without an epsilon
    params = [nn.Parameter(x.to(dtype).clone()) for x in init]
    frozen = nn.Parameter(torch.ones(4, dtype=dtype))
    opt = AdamATan2(params + [frozen], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, a=ab[0], b=ab[1])
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.to(dtype)
        opt.step()
    for x, p, i in zip(init, params, range(len(shapes))):
        want = _adam_atan2_fp64(x.to(dtype), [g[i].to(dtype) for g in grads], 1e-2, (0.9, 0.95), 0.1, *ab)
        assert p.dtype == dtype
        torch.testing.assert_close(p.detach().double(), want, rtol=0, atol=tol)
    assert torch.equal(frozen.detach(), torch.ones(4, dtype=dtype)), "a parameter without grad must not move"
    assert float(opt.state[params[0]]["step"]) == len(grads)


def test_adam_atan2_state_dict_resumes_exactly():
    torch.manual_seed(1)
    x = torch.randn(9, 4)
    gs = [torch.randn(9, 4) for _ in range(6)]
    p1 = nn.Parameter(x.clone())
    o1 = AdamATan2([p1], lr=3e-3, betas=(0.9, 0.95), weight_decay=0.5)
    for g in gs:
        p1.grad = g.clone()
        o1.step()
    p2 = nn.Parameter(x.clone())
    o2 = AdamATan2([p2], lr=3e-3, betas=(0.9, 0.95), weight_decay=0.5)
    for g in gs[:3]:
        p2.grad = g.clone()
        o2.step()
    sd = o2.state_dict()
    p3 = nn.Parameter(p2.detach().clone())
    o3 = AdamATan2([p3], lr=0.0)
    o3.load_state_dict(sd)
    for g in gs[3:]:
        p3.grad = g.clone()
        o3.step()
    assert torch.equal(p1, p3)


@pytest.mark.parametrize("kwargs,err", [
    (dict(lr=-1.0), ValueError), (dict(betas=(1.0, 0.9)), ValueError), (dict(betas=(0.9,)), TypeError),
    (dict(weight_decay=-0.1), ValueError), (dict(a=0.0), ValueError), (dict(lr="x"), TypeError),
])
def test_adam_atan2_validates(kwargs, err):
    with pytest.raises(err):
        AdamATan2([nn.Parameter(torch.zeros(2))], **kwargs)


def test_sparse_sign_sgd_matches_manual_update():
    torch.manual_seed(0)
    emb = CastedSparseEmbedding(10, 6, batch_size=5, init_std=0.5, cast_to=torch.float32)
    emb.train()
    before = emb.weights.clone()
    ids = torch.tensor([3, 7, 3, 0, 9], dtype=torch.int32)
    out = emb(ids)
    w = torch.randn(5, 6)
    (out * w).sum().backward()
    opt = SparseEmbeddingSignSGD(emb, lr=0.1, weight_decay=0.5)
    opt.step()
    # fp64 oracle: per unique id, sum the rows' gradients (= w), sign, decoupled decay; other rows untouched.
    want = before.double().clone()
    for i in ids.unique().tolist():
        g = w.double()[ids == i].sum(0)
        want[i] = want[i] * (1 - 0.1 * 0.5) - 0.1 * torch.sign(g)
    torch.testing.assert_close(emb.weights.double(), want, rtol=0, atol=1e-7)
    untouched = [i for i in range(10) if i not in ids.tolist()]
    assert torch.equal(emb.weights[untouched], before[untouched])
    opt.zero_grad()
    assert emb.local_weights.grad is None
    opt.step()  # no gradient: nothing happens
    torch.testing.assert_close(emb.weights.double(), want, rtol=0, atol=1e-7)


def test_sparse_sign_sgd_validates():
    with pytest.raises(TypeError):
        SparseEmbeddingSignSGD(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="local_ids"):
        sparse_sign_sgd_(torch.zeros(4, 3), torch.zeros(2, 3), torch.zeros(3, dtype=torch.int32), 0.1, 0.0)
    with pytest.raises(ValueError, match="local_grad"):
        sparse_sign_sgd_(torch.zeros(4, 3), torch.zeros(2, 5), torch.zeros(2, dtype=torch.int32), 0.1, 0.0)


def test_cosine_schedule_with_warmup():
    f = lambda s, **kw: cosine_schedule_with_warmup_lr_lambda(s, base_lr=2.0, num_warmup_steps=10, num_training_steps=110, **kw)  # noqa: E731
    assert f(0) == 0.0 and f(5) == pytest.approx(1.0) and f(10) == pytest.approx(2.0)
    assert f(60) == pytest.approx(1.0)  # halfway through the cosine
    assert f(110) == pytest.approx(0.0, abs=1e-12)
    assert f(110, min_ratio=0.1) == pytest.approx(0.2)
    assert f(60, min_ratio=0.1) == pytest.approx(0.2 + 1.8 * 0.5)
    assert all(f(s, min_ratio=1.0) == pytest.approx(2.0) for s in (10, 50, 110, 500))  # the reference configs
    assert f(35) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    with pytest.raises(ValueError):
        f(-1)
    with pytest.raises(ValueError):
        f(5, min_ratio=1.5)


def test_ema_matches_recurrence_and_copy_keeps_buffers():
    torch.manual_seed(0)
    m = nn.Linear(3, 2)
    m.register_buffer("table", torch.zeros(2))
    ema = EMAHelper(mu=0.9)
    ema.register(m)
    want = {n: p.detach().double().clone() for n, p in m.named_parameters()}
    for _ in range(4):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p))
        ema.update(m)
        for n, p in m.named_parameters():
            want[n] = 0.9 * want[n] + 0.1 * p.detach().double()
    m.table.fill_(3.0)
    live = {n: p.detach().clone() for n, p in m.named_parameters()}
    copy = ema.ema_copy(m)
    for n, p in copy.named_parameters():
        torch.testing.assert_close(p.detach().double(), want[n], rtol=0, atol=1e-6)
    assert torch.equal(copy.table, m.table), "buffers are carried, not averaged"
    for n, p in m.named_parameters():
        assert torch.equal(p, live[n]), "ema_copy must not touch the live model"
    ema2 = EMAHelper(0.5)
    ema2.register(m)
    ema2.load_state_dict(ema.state_dict())
    assert ema2.mu == 0.9 and all(torch.equal(ema2.shadow[n], ema.shadow[n]) for n in ema.shadow)


def test_build_optimizers_as_reference():
    from fastrecur.models import TRM, ACTLossHead

    cfg = dict(batch_size=2, seq_len=4, puzzle_emb_ndim=8, num_puzzle_identifiers=3, vocab_size=5, H_cycles=1, L_cycles=1, H_layers=0,
               L_layers=1, hidden_size=8, expansion=2, num_heads=1, pos_encodings="rope", halt_max_steps=2, halt_exploration_prob=0.0,
               forward_dtype="float32", puzzle_emb_len=1)
    head = ACTLossHead(TRM(cfg))
    opts, lrs = build_optimizers(head, lr=1e-4, puzzle_emb_lr=1e-2, weight_decay=0.1, puzzle_emb_weight_decay=0.2, betas=(0.9, 0.95))
    assert [type(o) for o in opts] == [SparseEmbeddingSignSGD, AdamATan2] and lrs == [1e-2, 1e-4]
    adam_params = opts[1].param_groups[0]["params"]
    assert len(opts[1].param_groups) == 1 and len(adam_params) == len(list(head.parameters()))
    assert all(p is not head.model.inner.puzzle_emb.weights for p in adam_params)
    opts, _ = build_optimizers(head, lr=1e-4, puzzle_emb_lr=1e-2, weight_decay=0.1, puzzle_emb_weight_decay=0.2, betas=(0.9, 0.95),
                               freeze_weights=True)
    assert [type(o) for o in opts] == [SparseEmbeddingSignSGD]
