"""The reference training recipe (HRM/TRM ``pretrain.py``), without hydra/wandb and with exact resume.

One training call = one ACT step + one optimiser step. The ACT carry persists across batches: rows that
halted take the next batch's rows, the others keep working on theirs. Loss = ``ACTLossHead`` (stablemax CE
by default) scaled by ``1 / global_batch_size``; with several ranks the gradients are summed by an
all-reduce (no DDP wrapper, as the reference), the puzzle-embedding rows are all-gathered by the sparse
optimiser, and rank 0 writes checkpoints, metrics and the plot.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.distributed as dist
import tqdm

from fastrecur.backend import check_available
from fastrecur.models import ACTLossHead

from .config import MODEL_CLASSES, TrainConfig, model_config, split_arch
from .evaluate import evaluate_model, format_metrics, resolve_device
from .optim import EMAHelper, build_optimizers, cosine_schedule_with_warmup_lr_lambda
from .state import (
    CheckpointError,
    carry_from_state,
    carry_to_state,
    check_run_folder,
    read_json,
    read_model_state,
    read_train_state,
    resolve_checkpoint_dir,
    restore_fallback,
    rng_state,
    save_run_checkpoint,
    set_rng_state,
    write_fallback,
    write_json,
)

TRAIN_KEYS = ("lm_loss", "q_halt_loss", "q_continue_loss", "accuracy", "exact_accuracy", "q_halt_accuracy", "steps")
EVAL_KEYS = ("accuracy", "exact_accuracy", "steps", "halt_step", "exact_accuracy_at_halt", "lm_loss")
CSV_FIELDS = (
    ["step", "epoch", "elapsed_s", "lr"] + [f"train_{k}" for k in TRAIN_KEYS] + [f"eval_{k}" for k in EVAL_KEYS]
)


def metadata_dict(metadata: Any) -> Dict[str, Any]:
    """The dataset metadata as a plain dict (it may be a dict, dataclass, pydantic model or namespace)."""
    if isinstance(metadata, dict):
        return dict(metadata)
    if dataclasses.is_dataclass(metadata):
        return dataclasses.asdict(metadata)
    if hasattr(metadata, "model_dump"):
        return metadata.model_dump()
    return dict(vars(metadata))


class Progress:
    """How a run reports on rank 0 (``enabled``): the progress display is a tqdm bar (modes ``auto``, ``tqdm``), a
    printed line every ``log_interval`` steps (``plain``) or nothing (``none``); messages (:meth:`write`: the
    evaluation results, the time budget reached) are printed in every mode, above the bar when there is one."""

    def __init__(self, mode: str, total: int, initial: int, enabled: bool, log: Callable[[str], None]):
        self.log, self.bar, self.enabled = log, None, enabled
        self.show_steps = enabled and mode != "none"
        self.total, self.t0, self.s0 = total, time.time(), initial
        if self.show_steps and mode in ("auto", "tqdm"):
            self.bar = tqdm.tqdm(total=total, initial=initial, dynamic_ncols=True, file=sys.stdout)

    def update(self, step: int, text: str) -> None:
        if not self.show_steps:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(text, refresh=False)
            return
        rate = (step - self.s0) / max(time.time() - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        eta_s = f"{int(eta // 60)}m{int(eta % 60):02d}s" if math.isfinite(eta) else "?"
        self.log(f"step {step}/{self.total} | {text} | {rate:.1f} it/s | ETA {eta_s}")

    def write(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            self.log(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _train_line(train: Dict[str, Optional[float]], lr: float) -> str:
    """The progress text of a logging window's train metrics; ``n/a`` for an average over no halted rows."""

    def fmt(key: str, spec: str) -> str:
        v = train[key]
        return "n/a" if v is None else format(v, spec)

    return (
        f"loss {fmt('lm_loss', '.4f')} acc {fmt('accuracy', '.3f')} exact {fmt('exact_accuracy', '.3f')} "
        f"steps {fmt('steps', '.1f')} lr {lr:.2e}"
    )


def _log(text: str) -> None:
    print(text, flush=True)


class Trainer:
    """Train an ACT model on a puzzle dataset with the reference recipe.

    Args:
        config: a :class:`TrainConfig`.
        train_ds: dataset with ``metadata`` and ``iter_train(global_batch_size, *, seed, epoch, rank, world_size,
            start_batch)`` (``fastrecur.data.PuzzleDataset``).
        eval_ds: dataset with ``iter_eval(batch_size, *, rank, world_size)``, or None (no evaluation).
        rank, world_size: this process's place in ``torch.distributed`` (initialised by the caller when > 1).
        resume: what to resume from (a run folder, a checkpoint folder or a fallback file: :meth:`load`; one
            already at the run's last step raises :class:`CheckpointError`), ``"auto"`` (the latest checkpoint in
            ``config.out_dir`` if any) or None.
        log: where messages go (rank 0 only).
    """

    def __init__(
        self,
        config: TrainConfig,
        train_ds,
        eval_ds=None,
        *,
        rank: int = 0,
        world_size: int = 1,
        resume: Optional[str] = None,
        log: Callable[[str], None] = _log,
    ):
        self.config = config.validate()
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0
        self.log = log if self.is_main else (lambda s: None)
        self.train_ds, self.eval_ds = train_ds, eval_ds
        if config.global_batch_size % world_size:
            raise ValueError(
                f"global_batch_size {config.global_batch_size} is not divisible by world_size {world_size}"
            )
        self.device = resolve_device(config.device)
        if self.device.type == "cuda" and self.device.index is None and world_size > 1:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if config.threads:
            torch.set_num_threads(config.threads)
        self.metadata = metadata_dict(train_ds.metadata)
        per_rank = config.global_batch_size // world_size
        self.model_class, self.model_cfg = model_config(config.arch, self.metadata, per_rank)
        _, _, arch_loss = split_arch(config.arch)
        self.loss_type = arch_loss or config.loss_type

        # As the reference: seed + rank, build, then every rank takes rank 0's weights.
        torch.manual_seed(config.seed + rank)
        with torch.device(self.device):
            model = MODEL_CLASSES[self.model_class](self.model_cfg, backend=config.backend)
            self.head = ACTLossHead(model, loss_type=self.loss_type)
        check_available(config.backend, self.device, model.config)  # ValueError naming why not, before any work
        if world_size > 1:
            with torch.no_grad():
                for t in list(self.head.parameters()) + list(self.head.buffers()):
                    dist.broadcast(t, src=0)
        self.params = list(self.head.parameters())
        self.optimizers, self.base_lrs = build_optimizers(
            self.head,
            lr=config.lr,
            puzzle_emb_lr=config.puzzle_emb_lr,
            weight_decay=config.weight_decay,
            puzzle_emb_weight_decay=config.puzzle_emb_weight_decay,
            betas=(config.beta1, config.beta2),
            world_size=world_size,
            freeze_weights=config.freeze_weights,
        )
        self.ema = None
        if config.ema:
            self.ema = EMAHelper(mu=config.ema_rate)
            self.ema.register(self.head.model)  # keys "inner.…", as the saved weights

        if config.max_steps is not None:
            self.total_steps = config.max_steps
        else:
            md = self.metadata
            self.total_steps = int(
                config.epochs * md["total_groups"] * md["mean_puzzle_examples"] / config.global_batch_size
            )
        if self.total_steps < 1:
            raise ValueError("the run has no steps: raise epochs or max_steps")
        self.step, self.epoch, self.batch_in_epoch, self.elapsed = 0, 0, 0, 0.0
        self.carry = None
        self.lr = 0.0
        self._acc: Optional[torch.Tensor] = None
        self._acc_steps = 0
        self.last_eval: Optional[Dict[str, float]] = None
        self.history: List[Dict[str, Any]] = []

        explicit = resume not in (None, "auto")
        if resume == "auto":
            from .state import latest_checkpoint

            resume = latest_checkpoint(config.out_dir)
        if resume is not None:
            self.load(resume, must_train=explicit)

    # ----- config.json -----
    def config_json(self) -> Dict[str, Any]:
        return {
            "format": "fastrecur-model",
            "model_class": self.model_class,
            "model_config": self.model_cfg,
            "loss_type": self.loss_type,
            "arch": self.config.arch,
            "train": self.config.to_dict(),
            "data": self.metadata,
        }

    # ----- one step -----
    def train_step(self, batch: Dict[str, torch.Tensor]) -> None:
        """One ACT step and one optimiser step on this rank's share of a global batch."""
        self.head.train()
        self.step += 1
        batch = {k: v.to(self.device) for k, v in batch.items()}
        if self.carry is None:
            self.carry = self.head.initial_carry(batch)
        self.carry, loss, metrics, _, _ = self.head(carry=self.carry, batch=batch, return_keys=())
        ((1.0 / self.config.global_batch_size) * loss).backward()
        if self.world_size > 1:
            grads = [p.grad for p in self.params if p.grad is not None]
            if grads:
                flat = torch.cat([g.reshape(-1) for g in grads])
                dist.all_reduce(flat)
                off = 0
                for g in grads:
                    g.copy_(flat[off : off + g.numel()].view_as(g))
                    off += g.numel()
        if self.config.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip_norm)
        for opt, base_lr in zip(self.optimizers, self.base_lrs):
            self.lr = cosine_schedule_with_warmup_lr_lambda(
                self.step,
                base_lr=base_lr,
                num_warmup_steps=self.config.lr_warmup_steps,
                num_training_steps=self.total_steps,
                min_ratio=self.config.lr_min_ratio,
            )
            for group in opt.param_groups:
                group["lr"] = self.lr
            opt.step()
            opt.zero_grad()
        if self.ema is not None:
            self.ema.update(self.head.model)
        if self.device.type == "cuda":
            self.head.model.check_inputs = False  # the first batch was checked; skip the per-call host sync
        vals = torch.stack(
            [metrics.get("count").to(torch.float64)]
            + [
                metrics[k].to(torch.float64)
                if k in metrics
                else torch.zeros((), dtype=torch.float64, device=self.device)
                for k in TRAIN_KEYS
            ]
        )
        self._acc = vals if self._acc is None else self._acc + vals
        self._acc_steps += 1

    def _flush_train_metrics(self) -> Optional[Dict[str, Optional[float]]]:
        """Train metrics over the steps since the last call, reduced over ranks (the reference's normalisation,
        ``pretrain.py``: losses per sample of the global batch, the rest per halted row, the rows its
        ``ACTLossHead`` counts in ``count``). The per-halted-row metrics are None when no row halted in the window
        (an average over no rows; the reference divides by ``max(count, 1)`` and logs 0, which reads as a
        measured 0)."""
        if self._acc is None:
            return None
        acc = self._acc
        if self.world_size > 1:
            dist.all_reduce(acc)
        vals = acc.tolist()
        count = vals[0]
        out: Dict[str, Optional[float]] = {}
        for k, v in zip(TRAIN_KEYS, vals[1:]):
            if k.endswith("loss"):
                out[k] = v / (self.config.global_batch_size * self._acc_steps)
            else:
                out[k] = v / count if count > 0 else None
        self._acc, self._acc_steps = None, 0
        return out

    # ----- evaluation -----
    def evaluate(self) -> Optional[Dict[str, float]]:
        if self.eval_ds is None:
            return None
        model = self.head
        if self.ema is not None:  # the reference evaluates the EMA copy
            model = copy.deepcopy(self.head)
            self.ema.copy_to(model.model)
        bs = self.config.eval_batch_size or self.config.global_batch_size
        from .arc_eval import evaluator_for  # ARC test split: pass@K too, submission.json in the run folder

        arc = evaluator_for(self.eval_ds, self.config.out_dir)
        try:
            return evaluate_model(
                model, self.eval_ds, bs, self.device, rank=self.rank, world_size=self.world_size, arc=arc
            )
        finally:
            self.head.train()

    # ----- checkpoints -----
    def _rank_state(self) -> Dict[str, Any]:
        return {"carry": carry_to_state(self.carry), "rng": rng_state(self.device)}

    def save(self) -> Optional[str]:
        """Write a checkpoint of the current state (collective: every rank must call it). If writing it fails,
        the state goes to a fallback file (:func:`~fastrecur.train.state.write_fallback`) and
        :class:`CheckpointError` says where and how to resume from it."""
        mine = self._rank_state()
        if self.world_size > 1:
            ranks = [None] * self.world_size if self.is_main else None
            dist.gather_object(mine, ranks, dst=0)
        else:
            ranks = [mine]
        folder, failure = None, None
        if self.is_main:
            state = {
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "elapsed": self.elapsed,
                "total_steps": self.total_steps,
                "world_size": self.world_size,
                "lr": self.lr,
                "optimizers": [opt.state_dict() for opt in self.optimizers],
                "ranks": ranks,
            }
            ema_model = self.ema.ema_copy(self.head.model) if self.ema is not None else None
            cfg = self.config_json()
            try:
                folder = save_run_checkpoint(
                    self.config.out_dir,
                    self.step,
                    model=self.head.model,
                    ema_model=ema_model,
                    config_json=cfg,
                    train_state=state,
                    keep=self.config.keep_checkpoints,
                )
                write_json(os.path.join(self.config.out_dir, "config.json"), cfg)
            except Exception as e:  # noqa: BLE001 -- whatever failed, keep the state, then report
                failure = f"writing the checkpoint of step {self.step} failed ({type(e).__name__}: {e})"
                try:
                    path = write_fallback(
                        self.config.out_dir,
                        self.step,
                        model=self.head.model,
                        ema_model=ema_model,
                        config_json=cfg,
                        train_state=state,
                    )
                except OSError as e2:
                    failure += f", and so did its fallback file ({e2}): the state of this run could not be saved"
                else:
                    failure += f"; the run's state was saved to {path} instead: fix the cause, then resume with "
                    failure += f"--resume {path}"
        if self.world_size > 1:  # every rank stops together when rank 0 could not save
            shared = [failure]
            dist.broadcast_object_list(shared, src=0)
            failure = shared[0]
        if failure is not None:
            raise CheckpointError(failure)
        return folder

    def check_same_model(self, folder: str) -> None:
        """Raise :class:`CheckpointError` unless the checkpoint folder's ``config.json`` describes this run's model:
        the same class, model config (the batch size per rank included) and loss; names the first differing
        keys with both values (a run resumed without the options it was started with, say).
        ``num_puzzle_identifiers`` may differ: a dataset rebuilt with other puzzles resets the puzzle embeddings
        with a warning (:func:`fastrecur.checkpoint.load_checkpoint`)."""
        saved = read_json(os.path.join(folder, "config.json"))
        if not isinstance(saved.get("model_config"), dict):
            raise CheckpointError(f"{folder!r}: config.json has no model_config: not written by fastrecur train?")
        mine = json.loads(json.dumps(self.config_json(), default=str))  # as saved: JSON types

        def flat(cfg):
            model = {k: v for k, v in cfg["model_config"].items() if k != "num_puzzle_identifiers"}
            return {"model_class": cfg.get("model_class"), **model, "loss_type": cfg.get("loss_type")}

        theirs, ours = flat(saved), flat(mine)
        missing = "(absent)"
        diff = [k for k in dict.fromkeys(list(ours) + list(theirs)) if theirs.get(k, missing) != ours.get(k, missing)]
        if diff:
            shown = "; ".join(
                f"{k} is {theirs.get(k, missing)!r} there, {ours.get(k, missing)!r} in this run" for k in diff[:3]
            )
            more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
            raise CheckpointError(
                f"{folder!r} holds another model than this run's: {shown}{more}; give the options it was trained "
                "with (--preset, --arch, --set, --global-batch-size) or another --out"
            )

    def load(self, folder: str, must_train: bool = False) -> None:
        """Resume from a run folder (the newest checkpoint, which its ``checkpoints/latest.json`` names), a
        checkpoint folder (``OUT/checkpoints/step_N``) or a file inside one, or from a fallback file written when
        a checkpoint could not be (it is first restored as a checkpoint folder of this run). Everything is read
        and checked before anything is applied; with ``must_train`` (an explicit ``--resume``) a checkpoint already
        at this run's last step is refused (the run would do nothing)."""
        from fastrecur.checkpoint import load_checkpoint

        if os.path.isfile(folder) and folder.endswith(".fallback.pt"):
            folder = restore_fallback(folder, self.config.out_dir) if self.is_main else None
            if self.world_size > 1:
                shared = [folder]
                dist.broadcast_object_list(shared, src=0)
                folder = shared[0]
        else:  # a run folder (its newest checkpoint), a checkpoint folder or a file inside one
            folder = resolve_checkpoint_dir(folder)

        self.check_same_model(folder)
        state = read_train_state(folder)
        if must_train and state["step"] >= self.total_steps:
            raise CheckpointError(
                f"the checkpoint {folder!r} is already at step {state['step']} and this run stops at step "
                f"{self.total_steps}: raise --max-steps (or --epochs) to train on"
            )
        weights, _ = read_model_state(folder, use_ema=False)
        ema_weights = read_model_state(folder, use_ema=True)[0] if self.ema is not None else None
        if self.ema is not None and not os.path.isfile(os.path.join(folder, "ema.safetensors")):
            raise CheckpointError(f"{folder!r} has no ema.safetensors but this run uses EMA")
        if state["world_size"] != self.world_size:
            raise CheckpointError(
                f"{folder!r} was written by {state['world_size']} rank(s); resuming it exactly needs the same number, "
                f"this run has {self.world_size}"
            )
        if len(state["optimizers"]) != len(self.optimizers):
            raise CheckpointError(
                f"{folder!r} holds {len(state['optimizers'])} optimiser states, this run has {len(self.optimizers)}"
            )
        rank_state = state["ranks"][self.rank]
        carry = carry_from_state(rank_state["carry"], self.device)
        ema_shadow = None
        if ema_weights is not None:
            ema_shadow = {}
            for n, _ in self.head.model.named_parameters():
                if n not in ema_weights:
                    raise CheckpointError(f"ema.safetensors lacks {n!r}")
                ema_shadow[n] = ema_weights[n].to(self.device)
        try:
            load_checkpoint(self.head, weights, strict=True)
        except ValueError as e:
            raise CheckpointError(f"{folder!r}: {e}") from e
        for opt, sd in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(sd)
        if ema_shadow is not None:
            self.ema.load_state_dict({"mu": self.config.ema_rate, "shadow": ema_shadow})
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.elapsed, self.lr = float(state.get("elapsed", 0.0)), float(state.get("lr", 0.0))
        self.carry = carry
        set_rng_state(rank_state["rng"], self.device)
        self.log(f"resumed from {folder} at step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch})")

    # ----- metrics file -----
    def _csv_path(self) -> str:
        return os.path.join(self.config.out_dir, "metrics.csv")

    def _csv_start(self) -> None:
        """Create metrics.csv, or keep the rows up to the resumed step (later ones are being redone)."""
        path = self._csv_path()
        rows = []
        if os.path.isfile(path):
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    try:
                        if int(row["step"]) <= self.step:
                            rows.append(row)
                    except (KeyError, ValueError):
                        continue
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        self.history = [{k: v for k, v in r.items()} for r in rows]

    def _csv_row(self, train: Optional[Dict[str, float]], ev: Optional[Dict[str, float]]) -> None:
        row: Dict[str, Any] = {
            "step": self.step,
            "epoch": self.epoch,
            "elapsed_s": round(self.elapsed, 2),
            "lr": self.lr,
        }
        for k, v in (train or {}).items():
            row[f"train_{k}"] = v
        for k in EVAL_KEYS:
            if ev is not None and k in ev:
                row[f"eval_{k}"] = ev[k]
        with open(self._csv_path(), "a", newline="") as f:
            csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore").writerow(row)
        self.history.append(row)

    # ----- the loop -----
    def fit(self) -> Dict[str, Any]:
        """Train to ``total_steps`` (or ``max_minutes``), evaluating and checkpointing at the configured
        intervals and at the end. Returns a summary (final eval metrics, steps, wall time)."""
        cfg = self.config
        if self.is_main:
            check_run_folder(cfg.out_dir, plot=cfg.plot)
            self._csv_start()
            n_params = sum(p.numel() for p in self.params)
            self.log(
                f"{self.model_class} ({n_params:,} parameters) | {self.total_steps} steps of {cfg.global_batch_size} "
                f"({self.world_size} rank(s), {self.device}) | out: {cfg.out_dir}"
            )
        progress = Progress(cfg.progress, self.total_steps, self.step, self.is_main, self.log)
        t_start, elapsed0 = time.time(), self.elapsed
        stop = self.step >= self.total_steps
        while not stop:
            got = False
            for batch in self.train_ds.iter_train(
                cfg.global_batch_size,
                seed=cfg.seed,
                epoch=self.epoch,
                rank=self.rank,
                world_size=self.world_size,
                start_batch=self.batch_in_epoch,
            ):
                got = True
                self.train_step(batch)
                self.batch_in_epoch += 1
                self.elapsed = elapsed0 + time.time() - t_start
                last = self.step >= self.total_steps
                if cfg.max_minutes is not None and not last:
                    flag = torch.tensor([float(self.elapsed >= 60 * cfg.max_minutes)], device=self.device)
                    if self.world_size > 1:
                        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    if flag.item() > 0:
                        last = True
                        progress.write(f"time budget of {cfg.max_minutes} min reached at step {self.step}")
                do_eval = last or (cfg.eval_interval and self.step % cfg.eval_interval == 0)
                do_log = do_eval or self.step % cfg.log_interval == 0
                train_m = self._flush_train_metrics() if do_log else None
                try:
                    ev = self.evaluate() if do_eval else None
                except Exception:
                    self.save()  # a failing evaluation does not lose the trained state
                    raise
                if ev is not None:
                    self.last_eval = ev
                if self.is_main and do_log:
                    self._csv_row(train_m, ev)
                    progress.update(self.step, _train_line(train_m, self.lr))
                    if ev is not None:
                        progress.write(f"[eval @ step {self.step}] {format_metrics(ev)}")
                if last or (cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0):
                    folder = self.save()
                    if self.is_main and cfg.progress == "plain":
                        progress.write(f"checkpoint saved: step {self.step} -> {folder}")
                if last:
                    stop = True
                    break
            else:
                if not got and self.batch_in_epoch == 0:
                    raise ValueError("the training set yields no batch (fewer examples than global_batch_size?)")
                self.epoch += 1
                self.batch_in_epoch = 0
        progress.close()
        summary = {"step": self.step, "elapsed_s": self.elapsed, "eval": self.last_eval}
        if self.is_main:
            if cfg.plot:
                self.plot()
            self.log(
                f"done: step {self.step} in {self.elapsed / 60:.1f} min"
                + (f" | eval: {format_metrics(self.last_eval)}" if self.last_eval else "")
            )
        return summary

    # ----- plot -----
    def plot(self) -> Optional[str]:
        """training.png: train LM loss, and train/eval accuracies, against steps (needs matplotlib)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            self.log("matplotlib is not installed: no plot (metrics are in metrics.csv; pip install matplotlib)")
            return None

        def series(key):
            xs, ys = [], []
            for r in self.history:
                v = r.get(key)
                if v not in (None, ""):
                    xs.append(int(r["step"]))
                    ys.append(float(v))
            return xs, ys

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        ax1.plot(*series("train_lm_loss"), label="train LM loss")
        ax1.set_xlabel("step")
        ax1.set_yscale("log")
        ax1.legend()
        for key, label, style in (
            ("train_accuracy", "train token acc", "-"),
            ("train_exact_accuracy", "train exact acc", "-"),
            ("eval_accuracy", "eval token acc", "o-"),
            ("eval_exact_accuracy", "eval exact acc", "o-"),
        ):
            xs, ys = series(key)
            if xs:
                ax2.plot(xs, ys, style, label=label)
        ax2.set_xlabel("step")
        ax2.set_ylim(0, 1)
        ax2.legend()
        fig.suptitle(f"{self.model_class} on {os.path.basename(os.path.normpath(self.config.data_path)) or 'data'}")
        fig.tight_layout()
        path = os.path.join(self.config.out_dir, "training.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        self.log(f"plot: {path}")
        return path


def init_distributed(device: str) -> tuple:
    """Initialise ``torch.distributed`` from torchrun's environment (env://) when ``WORLD_SIZE > 1``:
    NCCL on GPU, gloo on CPU. Returns ``(rank, world_size)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
    return dist.get_rank(), dist.get_world_size()


__all__ = ["CSV_FIELDS", "Progress", "Trainer", "init_distributed", "metadata_dict"]
