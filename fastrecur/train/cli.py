"""``fastrecur train``: the reference recipe from the command line, one process or several (torchrun).

Examples::

    fastrecur train --preset sudoku-4x4-cpu --out runs/demo          # generates 4x4 Sudoku, trains ~3 min on a CPU
    fastrecur train --data data/sudoku-9x9 --arch trm --set hidden_size=256 H_cycles=2 --out runs/trm
    fastrecur train --data data/sudoku-9x9 --arch-config config/arch/trm.yaml --ema --out runs/ref
    torchrun --nproc_per_node 4 -m fastrecur.train.cli --data ... --out ...  # NCCL on GPU, gloo on CPU

A run folder with a checkpoint is resumed exactly (``--resume auto``, the default); ``--resume never``
refuses to reuse a folder that has one.
"""
from __future__ import annotations

import argparse
import os
import sys

from .config import ARCH_PRESETS, RUN_PRESETS, TrainConfig, apply_overrides, load_arch_file

# CLI flag -> TrainConfig field (flags default to None = "not given").
_FLAGS = {
    "global_batch_size": int, "epochs": int, "max_steps": int, "max_minutes": float, "lr": float, "lr_min_ratio": float,
    "lr_warmup_steps": int, "weight_decay": float, "beta1": float, "beta2": float, "puzzle_emb_lr": float,
    "puzzle_emb_weight_decay": float, "grad_clip_norm": float, "ema_rate": float, "seed": int, "eval_interval": int,
    "eval_batch_size": int, "checkpoint_interval": int, "keep_checkpoints": int, "log_interval": int, "threads": int,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(RUN_PRESETS), help="a complete small run (dataset generated if missing)")
    parser.add_argument("--data", help="dataset folder with train/ (and test/ for evaluation)")
    parser.add_argument("--out", help="run folder: checkpoints, metrics.csv, training.png (default runs/<preset or arch>)")
    parser.add_argument("--arch", choices=sorted(ARCH_PRESETS), help="architecture with the reference's sizes (default trm)")
    parser.add_argument("--arch-config", help="reference arch YAML (hrm_v1.yaml, trm.yaml) or JSON; YAML beyond the simple "
                                              "key: value form needs PyYAML")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="arch overrides, e.g. --set H_cycles=2 L_cycles=4 hidden_size=128 (variants: shared_layers, skip, "
                             "grad_cycles)")
    parser.add_argument("--loss-type", choices=("stablemax_cross_entropy", "softmax_cross_entropy"))
    for name, typ in _FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=typ, default=None)
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None, help="keep an EMA of the weights (TRM recipe)")
    parser.add_argument("--freeze-weights", action="store_true", default=None, help="train only the puzzle embeddings")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: preset's, else auto)")
    parser.add_argument("--backend", default=None, choices=("auto", "eager", "triton", "cpp"))
    parser.add_argument("--progress", default=None, choices=("auto", "tqdm", "plain", "none"))
    parser.add_argument("--resume", default="auto", help="auto (latest checkpoint in --out if any), never, or a checkpoint folder")


def build_config(args) -> tuple:
    """``(TrainConfig, dataset spec or None)`` from parsed arguments: defaults < preset < flags."""
    values = TrainConfig().to_dict()
    dataset_spec = None
    name = "default"
    if args.preset:
        preset = RUN_PRESETS[args.preset]
        values.update(preset["train"])
        dataset_spec = preset.get("dataset")
        name = args.preset
    if args.arch_config and args.arch:
        raise ValueError("give --arch or --arch-config, not both")
    if args.arch:
        values["arch"] = dict(ARCH_PRESETS[args.arch])
        name = args.arch if not args.preset else name
    elif args.arch_config:
        values["arch"] = load_arch_file(args.arch_config)
    values["arch"] = apply_overrides(values["arch"], args.set)
    for key in list(_FLAGS) + ["loss_type", "ema", "freeze_weights", "device", "backend", "progress"]:
        v = getattr(args, key, None)
        if v is not None:
            values[key] = v
    if args.data:
        values["data_path"] = args.data
    elif dataset_spec is not None:
        values["data_path"] = os.path.join("data", args.preset)
    else:
        raise ValueError("--data is required (or a --preset that generates its dataset)")
    values["out_dir"] = args.out or os.path.join("runs", name)
    return TrainConfig.from_dict(values).validate(), dataset_spec


def _ensure_dataset(path: str, spec, log) -> None:
    if os.path.isfile(os.path.join(path, "train", "dataset.json")):
        return
    if spec is None:
        raise FileNotFoundError(f"dataset {path!r} has no train/dataset.json (build one with `fastrecur data ...`)")
    from fastrecur.data import build_sudoku_dataset

    log(f"generating the dataset into {path}: {spec}")
    build_sudoku_dataset(path, **spec)


def run(args) -> int:
    import torch.distributed as dist

    from fastrecur.data import PuzzleDataset

    from .loop import Trainer, init_distributed
    from .state import CheckpointError, latest_checkpoint

    try:
        config, spec = build_config(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"fastrecur train: {e}", file=sys.stderr)
        return 2
    rank, world = init_distributed(config.device)
    log = (lambda s: print(s, flush=True)) if rank == 0 else (lambda s: None)
    try:
        if rank == 0:
            _ensure_dataset(config.data_path, spec, log)
        if world > 1:
            dist.barrier()
        train_ds = PuzzleDataset(config.data_path, split="train")
        eval_ds = PuzzleDataset(config.data_path, split="test") if os.path.isdir(os.path.join(config.data_path, "test")) else None
        resume = args.resume
        if resume == "never":
            if latest_checkpoint(config.out_dir) is not None:
                raise CheckpointError(f"{config.out_dir!r} already holds a checkpoint and --resume never was given")
            resume = None
        trainer = Trainer(config, train_ds, eval_ds, rank=rank, world_size=world, resume=resume, log=log)
        trainer.fit()
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"fastrecur train: {e}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastrecur train", description="train HRM/TRM/SRM/flat with the reference recipe")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
