"""Structure, carry semantics, dtypes, checkpoints and input validation of the eager models."""

import copy

import pytest
import torch

import fastrecur
from fastrecur.models import HRM, SRM, TRM, ACTLossHead, FlatRecurrence
from golden import build, load_case

# The small config the model tests share (hidden 16, 2 heads of 8, one block per level, 2 x 2 cycles, 4 ACT steps,
# fp32, no exploration); other test files build theirs from it with tiny_config(**overrides).
TINY = dict(
    batch_size=3,
    seq_len=6,
    puzzle_emb_ndim=16,
    num_puzzle_identifiers=4,
    vocab_size=5,
    H_cycles=2,
    L_cycles=2,
    H_layers=1,
    L_layers=1,
    hidden_size=16,
    expansion=2,
    num_heads=2,
    pos_encodings="rope",
    halt_max_steps=4,
    halt_exploration_prob=0.0,
    forward_dtype="float32",
)


def tiny_config(**over):
    """``TINY`` with the keys of ``over`` replaced or added (a new dict)."""
    return dict(TINY, **over)


def sudoku_config(**over):
    """The reference's Sudoku-Extreme HRM (hidden 512, 8 heads, 4 blocks per level, 16 ACT steps, bf16), as
    :func:`tiny_config` with ``over``."""
    sudoku = tiny_config(batch_size=2, seq_len=81, puzzle_emb_ndim=512, num_puzzle_identifiers=1, vocab_size=11)
    sudoku.update(H_layers=4, L_layers=4, hidden_size=512, expansion=4, num_heads=8, halt_max_steps=16)
    sudoku.update(halt_exploration_prob=0.1, forward_dtype="bfloat16")
    return dict(sudoku, **over)


def tiny_batch(cfg, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "inputs": torch.randint(0, cfg["vocab_size"], (b, cfg["seq_len"]), generator=g),
        "labels": torch.randint(0, cfg["vocab_size"], (b, cfg["seq_len"]), generator=g),
        "puzzle_identifiers": torch.randint(0, cfg["num_puzzle_identifiers"], (b,), generator=g),
    }


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts():
    assert n_params(HRM(sudoku_config())) == 27_275_266
    assert n_params(HRM(sudoku_config(shared_layers=True))) == 6_828_034
    trm_cfg = sudoku_config(H_cycles=3, L_cycles=6, H_layers=0, L_layers=2)
    trm = n_params(TRM(trm_cfg))
    trm_mlp = n_params(TRM(dict(trm_cfg, mlp_t=True, pos_encodings="none")))
    assert 6.5e6 < trm < 7.5e6, trm
    assert 4.5e6 < trm_mlp < 5.5e6, trm_mlp


def _grad_modes(model, level_names):
    """Record torch.is_grad_enabled() at each level call, in order."""
    calls = []
    hooks = [
        getattr(model.inner, n).register_forward_hook(lambda m, i, o, n=n: calls.append((n, torch.is_grad_enabled())))
        for n in level_names
    ]
    return calls, hooks


def test_trm_gradient_only_in_last_h_cycle():
    cfg = tiny_config(H_cycles=3, L_cycles=2, puzzle_emb_len=1)
    model = TRM(cfg, backend="eager").train()  # the Python loop, whose level calls the hooks see
    batch = tiny_batch(cfg)
    calls, _ = _grad_modes(model, ["L_level"])
    carry, out = model(carry=model.initial_carry(batch), batch=batch)
    # 3 cycles of (2 L + 1 H) updates; only the last cycle's 3 with grad.
    assert [g for _, g in calls] == [False] * 6 + [True] * 3
    assert out["logits"].requires_grad and not carry.inner_carry.z_H.requires_grad


def test_hrm_gradient_only_in_last_l_and_h_call():
    cfg = tiny_config(H_cycles=2, L_cycles=3)
    model = HRM(cfg, backend="eager").train()
    batch = tiny_batch(cfg)
    calls, _ = _grad_modes(model, ["L_level", "H_level"])
    model(carry=model.initial_carry(batch), batch=batch)
    # First call is the training step (8 level calls), then the no-grad Q-target step (8 more).
    first = calls[:8]
    assert [n for n, _ in first] == ["L_level"] * 3 + ["H_level"] + ["L_level"] * 3 + ["H_level"]
    assert [g for _, g in first] == [False] * 6 + [True, True]
    assert not any(g for _, g in calls[8:])


def test_puzzle_embedding_gradient_goes_to_local_rows():
    """As in the reference: the puzzle table is a buffer; its batch rows get the gradient for sign-SGD."""
    case = load_case("trm")
    model = build(case).train()
    batch = case["batch"]
    carry = model.initial_carry(batch)
    _, out = model(carry=carry, batch=batch)
    out["logits"].sum().backward()
    assert model.inner.lm_head.weight.grad is not None
    assert model.inner.puzzle_emb.weights.grad is None
    assert model.inner.puzzle_emb.local_weights.grad is not None  # read by the sparse sign-SGD optimiser


def test_carry_semantics_reset_and_keep():
    cfg = tiny_config()
    model = HRM(cfg).eval()
    b1, b2 = tiny_batch(cfg, seed=1), tiny_batch(cfg, seed=2)
    with torch.no_grad():
        carry = model.initial_carry(b1)
        carry, _ = model(carry=carry, batch=b1)
        assert torch.equal(carry.steps, torch.ones(3, dtype=torch.int32))
        assert torch.equal(carry.current_data["inputs"], b1["inputs"])
        # Halt row 1 only: it must reset to the init states and take b2's row; rows 0 and 2 keep b1 and their states.
        carry.halted = torch.tensor([False, True, False])
        prev = copy.deepcopy(carry)
        reset = model.inner.reset_carry(carry.halted, carry.inner_carry)
        assert torch.equal(reset.z_H[1], model.inner.H_init.expand_as(reset.z_H[1]))
        assert torch.equal(reset.z_L[1], model.inner.L_init.expand_as(reset.z_L[1]))
        assert torch.equal(reset.z_H[0], prev.inner_carry.z_H[0])
        carry, _ = model(carry=carry, batch=b2)
    assert torch.equal(carry.current_data["inputs"][1], b2["inputs"][1])
    assert torch.equal(carry.current_data["inputs"][0], b1["inputs"][0])
    assert torch.equal(carry.current_data["inputs"][2], b1["inputs"][2])
    assert carry.steps.tolist() == [2, 1, 2]


def test_eval_runs_halt_max_steps():
    cfg = tiny_config(halt_max_steps=4)
    model = TRM(dict(cfg, puzzle_emb_len=1)).eval()
    # Make q_halt strongly positive: training would halt at once, eval must not.
    with torch.no_grad():
        model.inner.q_head.bias.fill_(10.0)
    batch = tiny_batch(cfg)
    carry = model.initial_carry(batch)
    with torch.no_grad():
        for step in range(1, 5):
            carry, _ = model(carry=carry, batch=batch)
            assert carry.halted.all() == (step == 4)
    model.train()
    carry = model.initial_carry(batch)
    carry, _ = model(carry=carry, batch=batch)
    assert carry.halted.all()


def test_hrm_q_target_present_in_training():
    cfg = tiny_config()
    model = HRM(cfg).train()
    batch = tiny_batch(cfg)
    _, out = model(carry=model.initial_carry(batch), batch=batch)
    t = out["target_q_continue"]
    assert t.shape == (3,) and ((t > 0) & (t < 1)).all()


def test_trm_no_act_continue_false_gives_hrm_target():
    cfg = tiny_config(puzzle_emb_len=1, no_ACT_continue=False)
    model = TRM(cfg).train()
    batch = tiny_batch(cfg)
    _, out = model(carry=model.initial_carry(batch), batch=batch)
    assert "target_q_continue" in out


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_forward_dtype(dtype):
    cfg = tiny_config(forward_dtype=dtype)
    model = HRM(cfg).eval()
    batch = tiny_batch(cfg)
    with torch.no_grad():
        carry, out = model(carry=model.initial_carry(batch), batch=batch)
    assert out["logits"].dtype == getattr(torch, dtype)
    assert out["q_halt_logits"].dtype == torch.float32
    assert carry.inner_carry.z_H.dtype == getattr(torch, dtype)
    assert model.inner.H_init.dtype == getattr(torch, dtype)


def test_default_forward_dtype_is_bf16():
    cfg = tiny_config()
    del cfg["forward_dtype"]
    assert HRM(cfg).inner.forward_dtype == torch.bfloat16


def test_state_dict_round_trip_and_prefixed_checkpoint(tmp_path):
    case = load_case("hrm")
    model = build(case)
    # As saved by the reference: a torch.compile'd loss head.
    prefixed = {"_orig_mod.model." + k: v for k, v in case["state"].items()}
    path = tmp_path / "step_100.pt"
    torch.save(prefixed, path)
    fresh = HRM(case["config"])
    res = fastrecur.load_checkpoint(fresh, path)
    assert not res.missing_keys and not res.unexpected_keys
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    # Into a loss head, and through a safetensors round trip written by save_checkpoint.
    st = tmp_path / "m.safetensors"
    fastrecur.save_checkpoint(model, st)
    head = ACTLossHead(HRM(case["config"]), "stablemax_cross_entropy")
    fastrecur.load_checkpoint(head, st)
    for k, v in model.state_dict().items():
        assert torch.equal(head.model.state_dict()[k], v), k


def test_checkpoint_puzzle_embedding_resize_and_key_errors():
    case = load_case("trm")
    cfg = dict(case["config"], num_puzzle_identifiers=9)
    model = TRM(cfg)
    res = fastrecur.load_checkpoint(model, case["state"])
    assert res.resized == {"inner.puzzle_emb.weights": ((5, 64), (9, 64))}
    want = case["state"]["inner.puzzle_emb.weights"].mean(0)
    assert torch.allclose(model.inner.puzzle_emb.weights, want.expand(9, 64))
    bad = dict(case["state"])
    bad["inner.extra"] = torch.zeros(1)
    del bad["inner.lm_head.weight"]
    with pytest.raises(ValueError, match=r"missing keys \['inner.lm_head.weight'\].*unexpected keys \['inner.extra'\]"):
        fastrecur.load_checkpoint(TRM(case["config"]), bad)


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    case = load_case("trm")
    path = tmp_path / "c.pt"
    torch.save(case["state"], path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    model = TRM(case["config"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="could not be read"):
        fastrecur.load_checkpoint(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_inputs_raise_clear_errors():
    cfg = tiny_config()
    model = HRM(cfg).eval()
    batch = tiny_batch(cfg)
    carry = model.initial_carry(batch)
    with pytest.raises(ValueError, match="seq_len=6"):
        model(carry=carry, batch=dict(batch, inputs=batch["inputs"][:, :5]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(carry=carry, batch=dict(batch, inputs=batch["inputs"] + 5))
    with pytest.raises(TypeError, match="integer tensor"):
        model(carry=carry, batch=dict(batch, inputs=batch["inputs"].float()))
    with pytest.raises(ValueError, match="puzzle_identifiers"):
        model(carry=carry, batch=dict(batch, puzzle_identifiers=batch["puzzle_identifiers"] + 10))
    small = {k: v[:2] for k, v in batch.items()}
    with pytest.raises(ValueError, match="batch of 3 rows but batch has 2"):
        model(carry=carry, batch=small)
    with pytest.raises(ValueError, match="missing 'inputs'"):
        model(carry=carry, batch={"labels": batch["labels"]})


def test_bad_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown key"):
        HRM(tiny_config(hidden_sise=3))
    cfg = tiny_config()
    del cfg["vocab_size"]
    with pytest.raises(ValueError, match="missing required key 'vocab_size'"):
        HRM(cfg)
    with pytest.raises(TypeError, match="'H_cycles' must be int"):
        HRM(tiny_config(H_cycles="2"))
    with pytest.raises(ValueError, match="pos_encodings"):
        HRM(tiny_config(pos_encodings="none"))  # HRM has no position-free variant
    with pytest.raises(ValueError, match="puzzle_emb_len"):
        TRM(tiny_config(puzzle_emb_ndim=0))  # reference default puzzle_emb_len 16 breaks on shapes
    with pytest.raises(ValueError, match="divisible"):
        HRM(tiny_config(num_heads=3))
    with pytest.raises(ValueError, match="backend"):
        HRM(tiny_config(), backend="cuda")
    # The reference training script passes causal=False: accepted.
    HRM(tiny_config(causal=False))


def test_backends_report():
    info = fastrecur.backends()
    assert info["eager"][0]
    for name in ("triton", "cpp"):
        ok, why = info[name]
        assert isinstance(ok, bool) and why


def test_variants_construct_and_run():
    cfg = tiny_config()
    flat_cfg = {k: v for k, v in cfg.items() if k not in ("H_cycles", "H_layers")}
    for model in (SRM(dict(cfg, puzzle_emb_len=1)), FlatRecurrence(flat_cfg)):
        batch = tiny_batch(cfg)
        carry, out = model.train()(carry=model.initial_carry(batch), batch=batch)
        assert out["logits"].shape == (3, 6, 5)
        assert list(vars(carry.inner_carry)) == ["z"]
        assert "inner.z_init" in model.state_dict()


def test_value_check_runs_once_per_batch_but_sees_in_place_changes():
    cfg = tiny_config()
    model = HRM(cfg).eval()
    batch = tiny_batch(cfg)
    with torch.no_grad():
        carry = model.initial_carry(batch)
        carry, _ = model(carry=carry, batch=batch)
        batch["inputs"][0, 0] = cfg["vocab_size"]  # corrupt the same tensor in place: must still be caught
        with pytest.raises(ValueError, match="outside the vocabulary"):
            model(carry=carry, batch=batch)
