"""Two gloo ranks (torch.distributed, env:// as torchrun sets it) train like one process on the global batch.

Exploration is off: its random minimum-steps draw comes from each rank's own RNG stream (seed + rank, as the
reference), so with it on the ranks' halting would differ from a single process by design.
"""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from fastrecur.data import PuzzleDataset, build_sudoku_dataset
from fastrecur.train import TrainConfig, Trainer
from test_train import TINY_ARCH

STEPS = 6
ARCH = dict(TINY_ARCH, halt_exploration_prob=0.0)


def _config(data_dir, out_dir):
    return TrainConfig(
        data_path=data_dir,
        out_dir=out_dir,
        arch=dict(ARCH),
        global_batch_size=8,
        max_steps=STEPS,
        lr=3e-3,
        lr_warmup_steps=2,
        puzzle_emb_lr=1e-2,
        ema=True,
        eval_interval=STEPS,
        checkpoint_interval=STEPS,
        log_interval=2,
        device="cpu",
        progress="none",
        seed=1,
        threads=1,
    )


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, data_dir, out_dir, result_dir):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    import torch.distributed as dist

    from fastrecur.train.loop import init_distributed

    r, w = init_distributed("cpu")
    assert (r, w) == (rank, world) and dist.get_backend() == "gloo"
    try:
        t = Trainer(
            _config(data_dir, out_dir),
            PuzzleDataset(data_dir, "train"),
            PuzzleDataset(data_dir, "test"),
            rank=r,
            world_size=w,
            log=lambda s: None,
        )
        summary = t.fit()
        state = {k: v.clone() for k, v in t.head.model.state_dict().items()}
        torch.save({"weights": state, "eval": summary["eval"]}, os.path.join(result_dir, f"rank{r}.pt"))
        dist.barrier()  # as `fastrecur train` does: no rank tears down while the other is in a collective
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sudoku4d")
    build_sudoku_dataset(str(d), n=4, num_train=48, num_test=12, num_aug=0, seed=1)
    return str(d)


def test_two_gloo_ranks_match_one_process(data_dir, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    mp.start_processes(
        _worker,
        args=(2, _free_port(), data_dir, str(tmp_path / "dist"), str(results)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    r0 = torch.load(results / "rank0.pt", weights_only=True)
    r1 = torch.load(results / "rank1.pt", weights_only=True)
    for k in r0["weights"]:
        assert torch.equal(r0["weights"][k], r1["weights"][k]), f"ranks differ on {k}"

    n = torch.get_num_threads()
    try:
        single = Trainer(
            _config(data_dir, str(tmp_path / "single")),
            PuzzleDataset(data_dir, "train"),
            PuzzleDataset(data_dir, "test"),
            log=lambda s: None,
        )
        summary = single.fit()
    finally:
        torch.set_num_threads(n)
    for k, v in single.head.model.state_dict().items():
        d = r0["weights"][k]
        if v.dtype.is_floating_point:
            torch.testing.assert_close(d, v, rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")
        else:
            assert torch.equal(d, v), k
    # the sparse puzzle-embedding update went through the all-gather: the table moved, identically
    assert single.head.model.inner.puzzle_emb.weights.abs().sum() > 0
    for key in ("accuracy", "exact_accuracy", "lm_loss"):  # evaluation sharded over ranks, reduced
        assert r0["eval"][key] == pytest.approx(summary["eval"][key], rel=1e-5, abs=1e-6)
    assert r0["eval"]["count"] == summary["eval"]["count"] == 12
    # rank 0 wrote one checkpoint holding both ranks' carries and RNG states
    state = torch.load(tmp_path / "dist" / "checkpoints" / f"step_{STEPS:08d}" / "train_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    assert state["ranks"][0]["carry"]["steps"].shape == (4,)
