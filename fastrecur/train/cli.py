"""``fastrecur train``: the reference recipe from the command line, one process or several (torchrun).

Examples::

    fastrecur train --preset sudoku-4x4-cpu --out runs/demo          # generates 4x4 Sudoku, trains ~3 min on a CPU
    fastrecur train --data data/sudoku-9x9 --arch trm --set hidden_size=256 H_cycles=2 --out runs/trm
    fastrecur train --data data/sudoku-9x9 --arch-config config/arch/trm.yaml --ema --out runs/ref
    torchrun --nproc_per_node 4 -m fastrecur.train.cli --data ... --out ...  # NCCL on GPU, gloo on CPU

A run folder with a checkpoint is resumed exactly (``--resume auto``, the default); ``--resume never``
refuses to reuse a folder that has one; ``--resume RUN`` takes another run folder and resumes its newest
checkpoint (named by ``RUN/checkpoints/latest.json``, written after each checkpoint is complete), or give a
checkpoint folder ``RUN/checkpoints/step_N``; without ``--out`` the run continues in ``RUN``. A checkpoint of
another model config, or one already at the run's last step, is refused.
"""

from __future__ import annotations

import argparse
import os
import sys

from .config import ARCH_PRESETS, RUN_PRESETS, TrainConfig, apply_overrides, load_arch_file
from .state import run_folder_of

# CLI flag -> (type, help) of the TrainConfig field of that name (flags default to None = "not given": a preset's
# value, else TrainConfig's, which --help shows).
_FLAGS = {
    "global_batch_size": (int, "examples per optimiser step, over all ranks"),
    "epochs": (int, "step budget in epochs of the training set (the reference's; --max-steps overrides it)"),
    "max_steps": (int, "optimiser steps to train (overrides --epochs)"),
    "max_minutes": (float, "stop after this many minutes of training, with an evaluation and a checkpoint"),
    "lr": (float, "peak learning rate of the weights (AdamATan2)"),
    "lr_min_ratio": (float, "the cosine schedule decays to lr * this ratio (1 = constant after the warmup)"),
    "lr_warmup_steps": (int, "steps of linear learning-rate warmup from 0"),
    "weight_decay": (float, "decoupled weight decay of the weights"),
    "beta1": (float, "AdamATan2 beta1, in [0, 1)"),
    "beta2": (float, "AdamATan2 beta2, in [0, 1)"),
    "puzzle_emb_lr": (float, "learning rate of the puzzle embeddings (sparse sign-SGD)"),
    "puzzle_emb_weight_decay": (float, "weight decay of the puzzle embeddings"),
    "grad_clip_norm": (float, "clip the gradients' global norm to this (default: no clipping)"),
    "ema_rate": (float, "EMA decay per step, in [0, 1] (with --ema)"),
    "seed": (int, "seed of the initial weights (seed + rank) and of the data order"),
    "eval_interval": (int, "evaluate on the test split every N steps (0: only at the end)"),
    "eval_batch_size": (int, "evaluation batch size (default: --global-batch-size)"),
    "checkpoint_interval": (int, "write a checkpoint every N steps (0: only at the end)"),
    "keep_checkpoints": (int, "how many of the newest checkpoints to keep"),
    "log_interval": (int, "write a metrics.csv row (and a plain progress line) every N steps"),
    "threads": (int, "CPU threads torch uses (default: torch's choice)"),
}
_DEFAULTS = TrainConfig()


def _with_default(name: str, text: str) -> str:
    value = getattr(_DEFAULTS, name)
    return text if value is None else f"{text} (default {value})"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=sorted(RUN_PRESETS),
        help="a complete small run (dataset generated if missing); its values replace the defaults shown here, and "
        "the options given replace its values",
    )
    parser.add_argument("--data", help="dataset folder with train/ (and test/ for evaluation)")
    parser.add_argument(
        "--out",
        help="run folder: checkpoints, metrics.csv, training.png (default: RUN with --resume RUN, else runs/PRESET "
        "with --preset, runs/ARCH with --arch, or runs/default)",
    )
    parser.add_argument(
        "--arch", choices=sorted(ARCH_PRESETS), help="architecture with the reference's sizes (default trm)"
    )
    parser.add_argument("--arch-config", help="reference arch YAML (hrm_v1.yaml, trm.yaml) or JSON")
    parser.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="arch overrides, e.g. --set H_cycles=2 L_cycles=4 hidden_size=128 (variants: shared_layers, skip, "
        "grad_cycles)",
    )
    parser.add_argument(
        "--loss-type",
        choices=("stablemax_cross_entropy", "softmax_cross_entropy"),
        help="the LM loss (default: the arch config's loss_type, else stablemax_cross_entropy as the reference)",
    )
    for name, (typ, text) in _FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=typ, default=None, help=_with_default(name, text))
    parser.add_argument(
        "--ema", action=argparse.BooleanOptionalAction, default=None, help="keep an EMA of the weights (TRM recipe)"
    )
    parser.add_argument("--freeze-weights", action="store_true", default=None, help="train only the puzzle embeddings")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: preset's, else auto)")
    parser.add_argument(
        "--backend",
        default=None,
        choices=("auto", "eager", "triton", "cpp"),
        help="how the model runs: eager (PyTorch ops), triton (fused kernels: CUDA, or the CPU with "
        "TRITON_INTERPRET=1), cpp (the C++ loop), or auto (the fastest here; default)",
    )
    parser.add_argument(
        "--progress",
        default=None,
        choices=("auto", "tqdm", "plain", "none"),
        help="the progress display: a tqdm bar (auto, the default, and tqdm), a line every --log-interval steps and "
        "one per checkpoint (plain), or none; the evaluation results are printed in every mode",
    )
    parser.add_argument(
        "--plot",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw training.png at the end (default; needs matplotlib: pip install 'fastrecur[plot]')",
    )
    parser.add_argument(
        "--resume",
        default="auto",
        help="auto (default: the newest checkpoint in --out, if any), never (refuse an --out that has one), a run "
        "folder (the --out of an earlier run: its newest checkpoint, the one OUT/checkpoints/latest.json names), a "
        "checkpoint folder (OUT/checkpoints/step_N), or a *.fallback.pt file (written when saving a checkpoint "
        "failed); without --out the run continues in the run folder resumed",
    )


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
    for key in list(_FLAGS) + ["loss_type", "ema", "freeze_weights", "device", "backend", "progress", "plot"]:
        v = getattr(args, key, None)
        if v is not None:
            values[key] = v
    if args.data:
        values["data_path"] = args.data
    elif dataset_spec is not None:
        values["data_path"] = os.path.join("data", args.preset)
    else:
        raise ValueError("--data is required (or a --preset that generates its dataset)")
    if args.out is not None:
        if not args.out.strip():
            raise ValueError("--out is empty: give the run folder (or leave --out out for the default)")
        values["out_dir"] = args.out
    else:  # --resume RUN (or a checkpoint inside RUN) continues in RUN
        resumed = run_folder_of(args.resume) if args.resume not in ("auto", "never") else None
        values["out_dir"] = resumed or os.path.join("runs", name)
    return TrainConfig.from_dict(values).validate(), dataset_spec


def _ensure_dataset(path: str, spec, log) -> None:
    if os.path.isfile(os.path.join(path, "train", "dataset.json")):
        return
    if spec is None:
        from fastrecur.cli import InputError

        raise InputError(f"dataset {path!r} has no train/dataset.json (build one with `fastrecur data ...`)")
    from fastrecur.data import build_arc_dataset, build_sudoku_dataset

    log(f"generating the dataset into {path}: {spec}")
    spec = dict(spec)
    build = build_arc_dataset if spec.pop("kind", "sudoku") == "arc" else build_sudoku_dataset
    build(path, **spec)


def run(args) -> int:
    import torch.distributed as dist

    from fastrecur.cli import InputError, check_dataset_matches_model, resolve_device
    from fastrecur.data import PuzzleDataset

    from .loop import Trainer, init_distributed
    from .state import CheckpointError, check_run_folder, latest_checkpoint

    try:
        config, spec = build_config(args)
        resolve_device(config.device)  # a device this machine lacks: refused before any work
        # Before any work: the run's files can be written. The folder itself is created by Trainer.fit, after every
        # input (dataset, model config, checkpoint to resume) has been accepted: an input error leaves none behind.
        check_run_folder(config.out_dir, plot=config.plot, create=False)
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise InputError(str(e)) from e
    rank, world = init_distributed(config.device)
    log = (lambda s: print(s, flush=True)) if rank == 0 else (lambda s: None)
    try:
        if rank == 0:
            _ensure_dataset(config.data_path, spec, log)
        if world > 1:
            dist.barrier()
        train_ds = PuzzleDataset(config.data_path, split="train")
        eval_ds = (
            PuzzleDataset(config.data_path, split="test")
            if os.path.isdir(os.path.join(config.data_path, "test"))
            else None
        )
        if train_ds.num_train_batches(config.global_batch_size, seed=config.seed) < 1:
            raise InputError(
                f"{config.data_path}/train has {len(train_ds)} examples, too few for one batch of "
                f"--global-batch-size {config.global_batch_size}: lower it or build a larger dataset"
            )
        if eval_ds is not None:
            check_dataset_matches_model(
                train_ds.metadata,
                eval_ds.metadata,
                f"{config.data_path}/test",
                f"the model of {config.data_path}/train",
            )
        resume = args.resume
        if resume == "never":
            if latest_checkpoint(config.out_dir) is not None:
                raise CheckpointError(f"{config.out_dir!r} already holds a checkpoint and --resume never was given")
            resume = None
        try:  # what Trainer refuses is its inputs: the config, the dataset, the checkpoint to resume
            trainer = Trainer(config, train_ds, eval_ds, rank=rank, world_size=world, resume=resume, log=log)
        except (ValueError, TypeError) as e:
            raise InputError(str(e)) from e
        trainer.fit()
        if dist.is_initialized():
            # No rank may close its connections while another still finishes its last collective: a gloo rank
            # whose peer had torn down aborted ("terminate called without an active exception") under load.
            dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def main(argv=None) -> int:
    from fastrecur.cli import CommandParser, run_command

    parser = CommandParser(prog="fastrecur train", description="train HRM/TRM/SRM/flat with the reference recipe")
    add_arguments(parser)
    return run_command("train", run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
