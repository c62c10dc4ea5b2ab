"""A training step (``Trainer.train_step``, static shapes) makes no host syncs: nothing in it waits for the
device to hand a value back to Python. That is what lets the step run ahead of the GPU and be captured as
one CUDA graph (issue 15).

On the CPU a dispatch mode (:class:`SyncDetector`) records every ATen op that would make the host wait on a
GPU: reading a value (``aten._local_scalar_dense``: ``.item()``, ``float(t)``, ``bool(t)``), ops whose
output shape depends on the values (``nonzero``, ``unique``, ``masked_select``, indexing with a boolean mask:
the ``dynamic_output_shape`` tag; plain integer indexing is not one) and ops returning a host value
(``data_dependent_output`` tag: ``equal``, ``is_nonzero``). Each record names the op and the fastrecur
function and line it came from.

Known, and so allowed, is one host read: AdamATan2 keeps each parameter's step count in a CPU tensor (as
``torch.optim.Adam`` does unless ``capturable``) and reads it to compute the bias corrections; that tensor
never lives on the GPU, so reading it does not sync -- but it does keep the optimizer step out of a CUDA
graph (the count must move to the device for that).

What the CPU cannot see: work inside the C++ extension's ops (their ATen calls happen below the dispatch
mode), and device-to-host copies (``.cpu()`` / ``.tolist()`` are no-ops on a CPU tensor). The CUDA test at
the end covers both with ``torch.cuda.set_sync_debug_mode("error")``.

The one sync left by design:

- ``fastrecur/models/act.py`` ``ACTModel.check_batch``: ``int(inputs.min())`` etc. when ``check_inputs``
  is on and the batch is new (the trainer turns it off on CUDA after its first step).
"""

from __future__ import annotations

import traceback
from typing import List, Tuple

import pytest
import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from fastrecur.backend import backends
from fastrecur.train import TrainConfig, Trainer
from fastrecur.train.config import ARCH_PRESETS
from fastrecur.train.optim import AdamATan2

HAS_CPP = backends()["cpp"][0]
HAS_TRITON = backends()["triton"][0]
SYNC_OPS = ("aten._local_scalar_dense", "aten.item")


def _where() -> str:
    """``file:function:line`` of the innermost fastrecur frame on the stack (the code that asked for the op)."""
    for f in reversed(traceback.extract_stack()):
        if "/fastrecur/" in f.filename:
            return f"fastrecur/{f.filename.split('/fastrecur/', 1)[1]}:{f.name}:{f.lineno}"
    return "outside fastrecur"


class SyncDetector(TorchDispatchMode):
    """Records the ops that would sync with a GPU (see the module docstring), except reads of ``host``
    tensors (tensors that live on the host whatever the model's device). ``records``: (op, where)."""

    def __init__(self, host: Tuple[torch.Tensor, ...] = ()):
        super().__init__()
        self.host_ptrs = {t.data_ptr() for t in host}
        self.records: List[Tuple[str, str]] = []

    def _syncs(self, func, args) -> bool:
        name = str(func.overloadpacket)
        tensors = [a for a in pytree.tree_leaves(args) if isinstance(a, torch.Tensor)]
        if name in SYNC_OPS:
            return not (tensors and tensors[0].data_ptr() in self.host_ptrs)
        tags = set(func.tags)
        if torch.Tag.data_dependent_output in tags:
            return True
        if torch.Tag.dynamic_output_shape in tags:
            if name in ("aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_"):
                # only a boolean mask among the indices makes the shape depend on the values
                return any(t.dtype in (torch.bool, torch.uint8) for t in tensors[1:])
            return True
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._syncs(func, (args, kwargs)):
            self.records.append((str(func.overloadpacket), _where()))
        return func(*args, **kwargs)


# ------------------------------------------------------------------------------------------ the detector
def test_detector_flags_what_syncs_and_nothing_else():
    x = torch.randn(6)
    mask = x > 0
    host = torch.zeros(())
    with SyncDetector(host=(host,)) as d:
        x.sum().item()
        bool(mask.any())
        x.nonzero()
        x[mask]
        x.unique(return_inverse=True)
        torch.equal(x, x)
    assert [op for op, _ in d.records] == [
        "aten._local_scalar_dense",
        "aten._local_scalar_dense",
        "aten.nonzero",
        "aten.index",
        "aten._unique2",
        "aten.equal",
    ]
    with SyncDetector(host=(host,)) as d:
        float(host)  # a host tensor: no device to wait for
        x[torch.tensor([0, 2, 2])]  # integer indices: the shape is the index's
        x[torch.tensor([1])] = 3.0
        torch.where(mask, x, 0.0).sum()
        torch.rand_like(x) < 0.5
    assert d.records == []


# ------------------------------------------------------------------------------------------ the training step
TINY = dict(
    H_cycles=2,
    L_cycles=2,
    L_layers=1,
    hidden_size=64,
    num_heads=1,
    expansion=2,
    forward_dtype="float32",
    halt_max_steps=4,
)


class _Data:
    metadata = dict(seq_len=9, vocab_size=11, num_puzzle_identifiers=5, total_groups=1, mean_puzzle_examples=1.0)


def _arch(arch: str, puzzle_emb: bool, dtype: str = "float32") -> dict:
    a = dict(ARCH_PRESETS[arch], **dict(TINY, forward_dtype=dtype))
    if not puzzle_emb:
        a["puzzle_emb_ndim"] = 0
        if "puzzle_emb_len" in a:  # TRM's prefix length (HRM derives it)
            a["puzzle_emb_len"] = 0
    return a


def _trainer(arch: str, backend: str, puzzle_emb: bool, device: str = "cpu", dtype: str = "float32") -> Trainer:
    cfg = TrainConfig(
        arch=_arch(arch, puzzle_emb, dtype),
        global_batch_size=4,
        max_steps=100,
        device=device,
        backend=backend,
        ema=True,
        progress="none",
    )
    return Trainer(cfg, _Data())


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {
        "inputs": torch.randint(1, 11, (4, 9), generator=g),
        "labels": torch.randint(1, 11, (4, 9), generator=g),
        "puzzle_identifiers": torch.tensor([0, 3, 3, 1], dtype=torch.int32),
    }


def _host_tensors(tr: Trainer) -> Tuple[torch.Tensor, ...]:
    """AdamATan2's step counts: created without a device (a CPU tensor also when training on CUDA)."""
    out = []
    for opt in tr.optimizers:
        if isinstance(opt, AdamATan2):
            for st in opt.state.values():
                assert st["step"].dim() == 0 and st["step"].device.type == "cpu"
                out.append(st["step"])
    return tuple(out)


def _steady_state_syncs(tr: Trainer, steps: int = 2) -> List[Tuple[str, str]]:
    """The syncs of ``steps`` training steps after a first one (optimizer state and carry exist), inputs
    checked once already (``check_inputs`` off, as the trainer does on CUDA)."""
    batch = _batch()
    tr.train_step(batch)
    tr.head.model.check_inputs = False
    host = _host_tensors(tr)
    assert host, "AdamATan2 has no state after a step"
    with SyncDetector(host=host) as d:
        for i in range(steps):
            tr.train_step(_batch(i + 1))  # new batches too: rows that halt take new data
    return d.records


ARCHS = ["trm_mlp", "trm", "hrm"]
# Triton through the interpreter (tests/conftest.py) on one attention model: its ops' Python side (launch
# grids, checks) is what can sync; the kernels themselves run on the device.
CASES = [(a, b) for a in ARCHS for b in ["eager"] + (["cpp"] if HAS_CPP else [])] + (
    [("trm", "triton")] if HAS_TRITON else []
)


@pytest.mark.parametrize("arch, backend", CASES)
def test_training_step_without_puzzle_embedding_is_sync_free(arch, backend):
    """ACT step, halting and exploration, loss and metrics, backward, AdamATan2 and EMA: no sync."""
    assert _steady_state_syncs(_trainer(arch, backend, puzzle_emb=False)) == []


@pytest.mark.parametrize("arch", ARCHS)
def test_training_step_with_puzzle_embedding_is_sync_free(arch):
    """The puzzle-embedding optimizer (sparse sign-SGD) included: its per-id sums have static shapes."""
    assert _steady_state_syncs(_trainer(arch, "eager", puzzle_emb=True), steps=2) == []


def test_input_check_syncs_until_turned_off():
    """``check_inputs`` reads the token id range (a sync) on every new batch; off, the step has none."""
    tr = _trainer("trm_mlp", "eager", puzzle_emb=False)
    tr.train_step(_batch())
    host = _host_tensors(tr)
    with SyncDetector(host=host) as d:
        tr.train_step(_batch(1))
    assert d.records and all(
        op == "aten._local_scalar_dense" and w.startswith("fastrecur/models/act.py:check_batch") for op, w in d.records
    ), d.records
    tr.head.model.check_inputs = False
    with SyncDetector(host=host) as d:
        tr.train_step(_batch(2))
    assert d.records == []


# ------------------------------------------------------------------------------------------ on the GPU
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.set_sync_debug_mode)")
@pytest.mark.parametrize("backend", ["eager", "cpp", "triton"])
@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_training_step_without_puzzle_embedding_does_not_sync(arch, backend):
    """The real thing: CUDA's sync debug mode raises on any synchronizing call (the extension's included)."""
    ok, why = backends()[backend]
    if not ok:
        pytest.skip(why)
    _cuda_steps_without_sync(_trainer(arch, backend, puzzle_emb=False, device="cuda", dtype="bfloat16"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.set_sync_debug_mode)")
def test_cuda_training_step_with_puzzle_embedding_does_not_sync():
    _cuda_steps_without_sync(_trainer("trm", "eager", puzzle_emb=True, device="cuda", dtype="bfloat16"))


def _cuda_steps_without_sync(tr: Trainer) -> None:
    """Two warm-up steps, then one under ``set_sync_debug_mode("error")`` (a RuntimeError on any sync)."""
    batches = [{k: v.cuda() for k, v in _batch(i).items()} for i in range(3)]
    tr.train_step(batches[0])  # first step: inputs checked, optimizer state and workspaces allocated
    tr.train_step(batches[1])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        tr.train_step(batches[2])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
