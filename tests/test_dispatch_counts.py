"""Dispatch counts of one eval ACT step, TRM-MLP Sudoku shapes (hidden 512, 2 layers, 97 positions of which 16
are the puzzle embedding, H_cycles 3, L_cycles 6, batch 1, bf16).

- eager: the top-level ATen calls the profiler records (the issue's figure for the public TRM code: 1,417)
  and what a TorchDispatchMode sees (after CompositeImplicit decompositions, so more);
- cpp: exactly one Python-to-C++ call (fastrecur_C::run_steps) per ACT step, invisible inside to a
  TorchDispatchMode (its ATen calls are made below the Python dispatch key), and at most ~400 native ops in
  it by the extension's own counter, which the profiler's view of the call (ATen ops + the fused kernels'
  record_function labels) must match exactly.
"""

import collections
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastrecur import _ext
from fastrecur.models import TRM


def sudoku_trm(mlp_t=True, backend="eager", batch_size=1):
    torch.manual_seed(0)
    cfg = dict(
        batch_size=batch_size,
        seq_len=81,
        puzzle_emb_ndim=512,
        num_puzzle_identifiers=1,
        vocab_size=11,
        hidden_size=512,
        expansion=4,
        num_heads=8,
        halt_max_steps=16,
        halt_exploration_prob=0.1,
        forward_dtype="bfloat16",
        H_cycles=3,
        L_cycles=6,
        H_layers=0,
        L_layers=2,
        puzzle_emb_len=16,
        mlp_t=mlp_t,
        pos_encodings="none" if mlp_t else "rope",
    )
    model = TRM(cfg, backend=backend).eval()
    model.check_inputs = False
    batch = {
        "inputs": torch.randint(1, 11, (batch_size, 81), generator=torch.Generator().manual_seed(0)),
        "puzzle_identifiers": torch.zeros(batch_size, dtype=torch.int32),
    }
    return model, batch


class CountOps(TorchDispatchMode):
    """Counts every op that reaches the Python dispatch key (i.e. every call made from Python)."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _is_op(name):
    return name.startswith(("aten::", "fastrecur", "mkldnn::"))


# ATen ops that only make a view (no kernel, no memory traffic): not counted as native kernels.
VIEW_OPS = {
    "aten::" + n
    for n in (
        "view",
        "narrow",
        "slice",
        "permute",
        "t",
        "transpose",
        "select",
        "as_strided",
        "expand",
        "unsqueeze",
        "reshape",
        "alias",
        "detach",
        "_reshape_alias",
    )
}


def profile_step(model, batch, carry):
    """One ACT step under the profiler: (new carry, events)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        carry, _ = model(carry=carry, batch=batch)
    return carry, prof.events()


def top_level(events):
    """Op events with no op among their ancestors (what Python called)."""
    out = []
    for e in events:
        if not _is_op(e.name):
            continue
        p = e.cpu_parent
        while p is not None and not _is_op(p.name):
            p = p.cpu_parent
        if p is None:
            out.append(e.name)
    return out


def _need_ext():
    if not _ext.available():
        if os.environ.get("FASTRECUR_REQUIRE_EXT") == "1":
            pytest.fail(_ext.status())
        pytest.skip(_ext.status())


def test_eager_step_dispatch_count():
    model, batch = sudoku_trm(backend="eager")
    with torch.no_grad():
        carry = model.initial_carry(batch)
        carry, _ = model(carry=carry, batch=batch)  # first call: loads the batch
        carry, events = profile_step(model, batch, carry)
        with CountOps() as mode:
            model(carry=carry, batch=batch)
    top = top_level(events)
    n_mode = sum(mode.counts.values())
    print(
        f"\neager TRM-MLP Sudoku bf16 b=1, one eval ACT step: {len(top)} top-level ATen calls (profiler), "
        f"{n_mode} ops seen by a TorchDispatchMode; most common: {collections.Counter(top).most_common(6)}"
    )
    # 21 level calls x 2 blocks, ~30 ops per block, plus the ACT wrapper: the reference makes 1,417.
    assert 1200 <= len(top) <= 1700
    # 4 GEMMs per block, plus lm_head. torch 2.11 dispatches the token-mixing matmul as bmm, 2.14 as mm.
    assert mode.counts.get("aten.mm", 0) + mode.counts.get("aten.bmm", 0) == 21 * 2 * 4 + 1
    assert n_mode >= len(top)


@pytest.mark.parametrize("gemm", ["aten", "onednn", "onednn_fused"])
@pytest.mark.parametrize("mlp_t", [True, False], ids=["mlp_t", "attention"])
def test_cpp_step_is_one_native_call(mlp_t, gemm):
    _need_ext()
    model, batch = sudoku_trm(mlp_t=mlp_t, backend="cpp")
    model.inner.cpp_gemm = gemm
    with torch.no_grad():
        carry = model.initial_carry(batch)
        carry, _ = model(carry=carry, batch=batch)
        with CountOps() as mode:
            for _ in range(2):
                carry, _ = model(carry=carry, batch=batch)
        native_ops = _ext.workspace_info()["last_call_ops"]
        carry, events = profile_step(model, batch, carry)
    assert _ext.workspace_info()["last_call_ops"] == native_ops  # same step, same count
    n_mode = sum(mode.counts.values()) / 2
    calls = [e for e in events if e.name == "fastrecur_C::run_steps"]
    assert len(calls) == 1
    called = [
        e.name
        for e in events
        if _is_op(e.name) and e.cpu_parent is not None and e.cpu_parent.name == "fastrecur_C::run_steps"
    ]
    views = sum(n in VIEW_OPS for n in called)
    inner = [n for n in called if n not in VIEW_OPS]
    kinds = collections.Counter(inner)
    top = top_level(events)
    print(
        f"\ncpp TRM-{'MLP' if mlp_t else 'attention'} Sudoku bf16 b=1, one eval ACT step: {len(top)} top-level calls "
        f"(profiler), {n_mode:.0f} seen by a TorchDispatchMode, 1 run_steps call issuing {native_ops} native ops "
        f"(counter) / {len(inner)} (profiler): {kinds.most_common()}; plus {views} view ops"
    )
    # One Python-to-C++ call for the whole recursion; the mode does not see what it does inside.
    assert mode.counts["fastrecur_C.run_steps"] == 2
    assert mode.counts["aten.mm"] == 2  # only lm_head: every block GEMM is inside run_steps
    assert n_mode <= 60
    # The counter is the profiler's view of the call: ATen ops that run kernels plus one label per fused kernel.
    assert len(inner) == native_ops
    # 21 level calls x 2 blocks x 4 GEMMs, one fused kernel per elementwise stretch (a SwiGLU per MLP: two per
    # mixer block, one per attention block); with SwiGLU fused into oneDNN's GEMMs, each SwiGLU kernel becomes a
    # second GEMM.
    swiglus = 21 * 2 * (2 if mlp_t else 1)
    fused = gemm == "onednn_fused"
    assert kinds["aten::mm" if gemm == "aten" else "mkldnn::_linear_pointwise"] == 168 + (swiglus if fused else 0)
    assert kinds["fastrecur::swiglu"] == (0 if fused else swiglus)
    assert native_ops <= 400


def test_cpp_native_ops_per_threading_mode():
    """Whole-batch mode: the batch-1 count (one native op per GEMM or fused stretch) at any batch size.
    Per-item mode (CPU): the same ops once per chunk of items (two bf16 items per chunk), still one call."""
    _need_ext()
    counts = {}
    for per_item in (False, True):
        model, batch = sudoku_trm(backend="cpp", batch_size=4)
        model.inner.cpp_per_item = per_item
        with torch.no_grad():
            carry = model.initial_carry(batch)
            carry, _ = model(carry=carry, batch=batch)
            model(carry=carry, batch=batch)
        counts[per_item] = _ext.workspace_info()["last_call_ops"]
        assert _ext.workspace_info()["last_call_per_item"] is per_item
    model1, batch1 = sudoku_trm(backend="cpp")
    with torch.no_grad():
        carry = model1.initial_carry(batch1)
        carry, _ = model1(carry=carry, batch=batch1)
        model1(carry=carry, batch=batch1)
    one = _ext.workspace_info()["last_call_ops"]
    assert counts[False] == one <= 400
    # Two chunks of two items, each running the whole program: the block ops (21 level calls x 2 blocks x 8 ops:
    # 2 GEMMs + 2 fused kernels per MLP) and the 21 injections run once more; the per-call setup does not.
    assert counts[True] - counts[False] == 21 * 2 * 8 + 21
