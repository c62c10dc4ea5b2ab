"""The seeds' recursions (layer-shared HRM, flat recurrence, SRM) and TRM's gradient window, each checked
against an independent plain loop written here from the building blocks (not through the schedule)."""

import pytest
import torch

from fastrecur.models import HRM, SRM, TRM, FlatRecurrence
from golden import scale_err
from test_models import tiny_batch, tiny_config


def _blocks(level, cos_sin):
    def run(h, inj):
        h = h + inj
        for _ in range(level.repeat):
            for blk in level.layers:
                h = blk(h, cos_sin)
        return h

    return run


def plain_inner_step(model, states, batch):
    """One ACT step written out by hand per model class. Returns (new_states, logits, q_halt, q_continue)."""
    inner, c = model.inner, model.config
    x = inner.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
    L = _blocks(inner.L_level, inner.cos_sin())
    if isinstance(model, SRM):
        z = states["z"]
        for seg in range(c.H_cycles):
            with torch.set_grad_enabled(seg >= c.H_cycles - c.grad_cycles and torch.is_grad_enabled()):
                a = z
                for _ in range(c.L_cycles):
                    z = L(z, a + x) if c.skip == "segment" else L(z, x)
        out = {"z": z}
    elif isinstance(model, FlatRecurrence):
        z = states["z"]
        for i in range(c.L_cycles):
            with torch.set_grad_enabled(i >= c.L_cycles - c.grad_cycles and torch.is_grad_enabled()):
                z = L(z, x)
        out = {"z": z}
    elif isinstance(model, HRM):
        H = _blocks(inner.H_level, inner.cos_sin())
        zH, zL = states["z_H"], states["z_L"]
        with torch.no_grad():
            for h in range(c.H_cycles):
                for l in range(c.L_cycles):
                    if not (h == c.H_cycles - 1 and l == c.L_cycles - 1):
                        zL = L(zL, zH + x)
                if h != c.H_cycles - 1:
                    zH = H(zH, zL)
        zL = L(zL, zH + x)
        zH = H(zH, zL)
        out = {"z_H": zH, "z_L": zL}
    else:  # TRM
        zH, zL = states["z_H"], states["z_L"]
        for h in range(c.H_cycles):
            with torch.set_grad_enabled(h >= c.H_cycles - c.grad_cycles and torch.is_grad_enabled()):
                for _ in range(c.L_cycles):
                    zL = L(zL, zH + x)
                zH = L(zH, zL)
        out = {"z_H": zH, "z_L": zL}
    z = out["z"] if "z" in out else out["z_H"]
    q = inner.q_head(z[:, 0]).float()
    return {k: v.detach() for k, v in out.items()}, inner.lm_head(z)[:, inner.puzzle_emb_len :], q[..., 0], q[..., 1]


def make(kind, backend="eager"):
    """A model of variant ``kind`` (on the eager backend by default: the plain loop below is its oracle)."""
    cfg = tiny_config(H_cycles=3, L_cycles=2, L_layers=2, H_layers=2)
    flat = {k: v for k, v in cfg.items() if k not in ("H_cycles", "H_layers")}
    if kind == "hrm_shared":
        return HRM(dict(cfg, shared_layers=True), backend=backend), cfg
    if kind == "flat":
        return FlatRecurrence(flat, backend=backend), cfg
    if kind == "flat_full_grad":
        return FlatRecurrence(dict(flat, grad_cycles=2), backend=backend), cfg
    if kind == "srm":
        return SRM(dict(cfg, puzzle_emb_len=1), backend=backend), cfg
    if kind == "srm_noskip":
        return SRM(dict(cfg, puzzle_emb_len=1, skip="none"), backend=backend), cfg
    if kind == "srm_mlp_t":
        return SRM(dict(cfg, puzzle_emb_len=1, mlp_t=True, pos_encodings="none"), backend=backend), cfg
    if kind == "trm_grad2":
        return TRM(dict(cfg, puzzle_emb_len=1, grad_cycles=2), backend=backend), cfg
    raise ValueError(kind)


KINDS = ["hrm_shared", "flat", "flat_full_grad", "srm", "srm_noskip", "srm_mlp_t", "trm_grad2"]


@pytest.mark.parametrize("kind", KINDS)
def test_variant_eval_matches_plain_loop(kind):
    torch.manual_seed(1)
    model, cfg = make(kind)
    model.eval()
    batch = tiny_batch(cfg)
    with torch.no_grad():
        carry = model.initial_carry(batch)
        carry, out = model(carry=carry, batch=batch)
        states = {k: getattr(carry.inner_carry, k) for k in vars(carry.inner_carry)}
        for _ in range(2):  # two more ACT steps from the same carry, both ways
            carry, out = model(carry=carry, batch=batch)
            states, logits, qh, qc = plain_inner_step(model, states, carry.current_data)
            assert scale_err(out["logits"], logits) < 1e-5
            assert scale_err(out["q_halt_logits"], qh) < 1e-5
            for k, v in states.items():
                assert scale_err(getattr(carry.inner_carry, k), v) < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_variant_grads_match_plain_loop(kind):
    torch.manual_seed(2)
    model, cfg = make(kind)
    model.train()
    batch = tiny_batch(cfg)
    carry = model.initial_carry(batch)
    with torch.no_grad():
        carry, _ = model(carry=carry, batch=batch)
    states = {k: getattr(carry.inner_carry, k).clone() for k in vars(carry.inner_carry)}
    data = {k: v.clone() for k, v in carry.current_data.items()}
    R = torch.randn(3, cfg["seq_len"], cfg["vocab_size"])
    carry.halted[:] = False
    _, out = model(carry=carry, batch=batch)
    (out["logits"] * R).sum().add(out["q_halt_logits"].sum()).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    _, logits, qh, _ = plain_inner_step(model, states, data)
    (logits * R).sum().add(qh.sum()).backward()
    want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(got) == set(want)
    for n in want:
        assert scale_err(got[n], want[n]) < 1e-4, n


def test_srm_skip_changes_outputs():
    torch.manual_seed(3)
    a, cfg = make("srm")
    b = SRM(dict(a.config.to_dict(), skip="none"))
    b.load_state_dict(a.state_dict())
    batch = tiny_batch(cfg)
    with torch.no_grad():
        _, oa = a.eval()(carry=a.initial_carry(batch), batch=batch)
        _, ob = b.eval()(carry=b.initial_carry(batch), batch=batch)
    assert scale_err(oa["logits"], ob["logits"]) > 1e-3


def test_variant_state_dict_keys():
    hrm_keys = set(HRM(tiny_config(L_layers=2, H_layers=2)).state_dict())
    shared = set(make("hrm_shared")[0].state_dict())
    assert shared == {k for k in hrm_keys if ".layers.1." not in k}
    flat = set(make("flat")[0].state_dict())
    assert flat == {
        k for k in hrm_keys if not k.startswith("inner.H_level") and k not in ("inner.H_init", "inner.L_init")
    } | {"inner.z_init"}
    trm_keys = set(TRM(tiny_config(L_layers=2, puzzle_emb_len=1)).state_dict())
    assert set(make("srm")[0].state_dict()) == (trm_keys - {"inner.H_init", "inner.L_init"}) | {"inner.z_init"}


def test_grad_window_grows_saved_memory():
    """More cycles with gradient keep more activations for backward (what grad_cycles trades)."""
    sizes = {}
    for g in (1, 3):
        cfg = tiny_config(H_cycles=3, L_cycles=2, puzzle_emb_len=1, grad_cycles=g)
        model = TRM(cfg).train()
        batch = tiny_batch(cfg)
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(carry=model.initial_carry(batch), batch=batch)
        sizes[g] = total[0]
    assert sizes[3] > 2.5 * sizes[1]
