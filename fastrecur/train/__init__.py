"""Training, evaluation and solving with the reference HRM/TRM recipe (``fastrecur train|eval|solve``).

::

    from fastrecur.data import PuzzleDataset
    from fastrecur.train import TrainConfig, Trainer
    cfg = TrainConfig(data_path="data/sudoku-4x4", out_dir="runs/x", arch={...}, global_batch_size=64, max_steps=1000)
    Trainer(cfg, PuzzleDataset(cfg.data_path, "train"), PuzzleDataset(cfg.data_path, "test")).fit()
"""

from .config import ARCH_PRESETS, RUN_PRESETS, TrainConfig, apply_overrides, load_arch_file
from .evaluate import evaluate_model
from .loop import Trainer, init_distributed
from .optim import (
    AdamATan2,
    EMAHelper,
    SparseEmbeddingSignSGD,
    build_optimizers,
    cosine_schedule_with_warmup_lr_lambda,
    sparse_sign_sgd_,
)
from .state import CheckpointError, load_model

__all__ = [
    "ARCH_PRESETS",
    "AdamATan2",
    "CheckpointError",
    "EMAHelper",
    "RUN_PRESETS",
    "SparseEmbeddingSignSGD",
    "TrainConfig",
    "Trainer",
    "apply_overrides",
    "build_optimizers",
    "cosine_schedule_with_warmup_lr_lambda",
    "evaluate_model",
    "init_distributed",
    "load_arch_file",
    "load_model",
    "sparse_sign_sgd_",
]
