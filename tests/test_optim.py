"""Optimisers, schedule and EMA of fastrecur.train: argument checks, state round trips, hand-checked schedule values.

Their updates are held against the reference code's own outputs in test_recipe_reference.py."""

import math

import pytest
import torch
from torch import nn

from fastrecur.nn.linear import CastedSparseEmbedding
from fastrecur.train.optim import (
    AdamATan2,
    EMAHelper,
    SparseEmbeddingSignSGD,
    build_optimizers,
    cosine_schedule_with_warmup_lr_lambda,
    sparse_sign_sgd_,
)


def test_adam_atan2_low_precision_math_and_frozen_parameters():
    """Low-precision parameters keep their dtype (moments too); a parameter without a gradient gets no state.
    (The update itself is held against the adam-atan2 package's reference step in test_recipe_reference.py.)"""
    p = nn.Parameter(torch.randn(5, 3).to(torch.bfloat16))
    frozen = nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    opt = AdamATan2([p, frozen], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    before = p.detach().clone()
    for _ in range(3):
        p.grad = torch.randn(5, 3).to(torch.bfloat16)
        opt.step()
    assert p.dtype == torch.bfloat16 and not torch.equal(p.detach(), before)
    assert opt.state[p]["exp_avg"].dtype == torch.bfloat16 and float(opt.state[p]["step"]) == 3
    assert torch.equal(frozen.detach(), torch.ones(4, dtype=torch.bfloat16)) and frozen not in opt.state
    p.grad = torch.zeros(5, 3, dtype=torch.bfloat16).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


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


@pytest.mark.parametrize(
    "kwargs,err",
    [
        (dict(lr=-1.0), ValueError),
        (dict(betas=(1.0, 0.9)), ValueError),
        (dict(betas=(0.9,)), TypeError),
        (dict(weight_decay=-0.1), ValueError),
        (dict(lr="x"), TypeError),
        (dict(betas=(0.9, float("nan"))), TypeError),
    ],
)
def test_adam_atan2_validates(kwargs, err):
    with pytest.raises(err):
        AdamATan2([nn.Parameter(torch.zeros(2))], **kwargs)


def test_sparse_sign_sgd_without_gradient_is_a_no_op():
    """zero_grad clears the rows' gradient and a step without one changes nothing (the update itself is held
    against the reference optimiser in test_recipe_reference.py)."""
    emb = CastedSparseEmbedding(10, 6, batch_size=5, init_std=0.5, cast_to=torch.float32)
    emb.train()
    opt = SparseEmbeddingSignSGD(emb, lr=0.1, weight_decay=0.5)
    emb(torch.tensor([3, 7, 3, 0, 9], dtype=torch.int32)).sum().backward()
    opt.zero_grad()
    assert emb.local_weights.grad is None
    before = emb.weights.clone()
    opt.step()
    assert torch.equal(emb.weights, before)


def test_sparse_sign_sgd_validates():
    with pytest.raises(TypeError):
        SparseEmbeddingSignSGD(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="local_ids"):
        sparse_sign_sgd_(torch.zeros(4, 3), torch.zeros(2, 3), torch.zeros(3, dtype=torch.int32), 0.1, 0.0)
    with pytest.raises(ValueError, match="local_grad"):
        sparse_sign_sgd_(torch.zeros(4, 3), torch.zeros(2, 5), torch.zeros(2, dtype=torch.int32), 0.1, 0.0)


def test_cosine_schedule_with_warmup():
    def f(s, **kw):
        return cosine_schedule_with_warmup_lr_lambda(s, base_lr=2.0, num_warmup_steps=10, num_training_steps=110, **kw)

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


def test_ema_copy_leaves_the_live_model_and_state_round_trips():
    """ema_copy does not touch the live model; state_dict/load_state_dict restore the average (the average
    itself is held against the reference EMAHelper in test_recipe_reference.py)."""
    torch.manual_seed(0)
    m = nn.Linear(3, 2)
    ema = EMAHelper(mu=0.9)
    ema.register(m)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    ema.update(m)
    live = {n: p.detach().clone() for n, p in m.named_parameters()}
    copy = ema.ema_copy(m)
    for n, p in m.named_parameters():
        assert torch.equal(p, live[n]), "ema_copy must not touch the live model"
        assert not torch.equal(dict(copy.named_parameters())[n], p)
    ema2 = EMAHelper(0.5)
    ema2.register(m)
    ema2.load_state_dict(ema.state_dict())
    assert ema2.mu == 0.9 and all(torch.equal(ema2.shadow[n], ema.shadow[n]) for n in ema.shadow)
    with pytest.raises(ValueError, match="lacks"):
        ema2.load_state_dict({"mu": 0.9, "shadow": {}})


def test_build_optimizers_as_reference():
    from fastrecur.models import TRM, ACTLossHead

    cfg = dict(
        batch_size=2,
        seq_len=4,
        puzzle_emb_ndim=8,
        num_puzzle_identifiers=3,
        vocab_size=5,
        H_cycles=1,
        L_cycles=1,
        H_layers=0,
        L_layers=1,
        hidden_size=8,
        expansion=2,
        num_heads=1,
        pos_encodings="rope",
        halt_max_steps=2,
        halt_exploration_prob=0.0,
        forward_dtype="float32",
        puzzle_emb_len=1,
    )
    head = ACTLossHead(TRM(cfg))
    opts, lrs = build_optimizers(
        head, lr=1e-4, puzzle_emb_lr=1e-2, weight_decay=0.1, puzzle_emb_weight_decay=0.2, betas=(0.9, 0.95)
    )
    assert [type(o) for o in opts] == [SparseEmbeddingSignSGD, AdamATan2] and lrs == [1e-2, 1e-4]
    adam_params = opts[1].param_groups[0]["params"]
    assert len(opts[1].param_groups) == 1 and len(adam_params) == len(list(head.parameters()))
    assert all(p is not head.model.inner.puzzle_emb.weights for p in adam_params)
    opts, _ = build_optimizers(
        head,
        lr=1e-4,
        puzzle_emb_lr=1e-2,
        weight_decay=0.1,
        puzzle_emb_weight_decay=0.2,
        betas=(0.9, 0.95),
        freeze_weights=True,
    )
    assert [type(o) for o in opts] == [SparseEmbeddingSignSGD]


def test_sparse_sign_sgd_many_duplicate_ids_equals_a_per_id_loop():
    """The static-shape update (sort, runs of equal ids) against the update written per unique id, in fp64."""
    g = torch.Generator().manual_seed(3)
    weights = torch.randn(50, 8, dtype=torch.float64, generator=g)
    ids = torch.randint(0, 12, (64,), generator=g)
    grad = torch.randn(64, 8, dtype=torch.float64, generator=g)
    want = weights.clone()
    for i in ids.unique().tolist():
        want[i] = want[i] * (1 - 0.1 * 0.5) - 0.1 * torch.sign(grad[ids == i].sum(0))
    sparse_sign_sgd_(weights, grad, ids, lr=0.1, weight_decay=0.5)
    assert torch.equal(weights, want)
