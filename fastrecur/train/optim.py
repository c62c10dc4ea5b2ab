"""Optimisers and schedules of the reference training recipe, in plain PyTorch (nothing to compile).

- :class:`AdamATan2`: the ``adam-atan2`` package's optimiser (the one HRM and TRM import), written with
  ordinary tensor ops so it runs on any device.
- :class:`SparseEmbeddingSignSGD`: the reference ``CastedSparseEmbeddingSignSGD_Distributed`` for the
  puzzle-embedding table (a buffer, trained only on the rows of the current batch).
- :func:`cosine_schedule_with_warmup_lr_lambda`: linear warmup, then cosine down to ``min_ratio``.
- :class:`EMAHelper`: exponential moving average of the parameters (the reference ``models/ema.py``).
"""

from __future__ import annotations

import copy
import math
from typing import Dict, Tuple, Union

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.optimizer import Optimizer


def _check_unit_interval(name: str, value: float, upper_open: bool = True) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value >= 1 if upper_open else value > 1):
        raise ValueError(f"{name} must be in [0, 1{')' if upper_open else ']'}, got {value}")


def _check_non_negative(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


class AdamATan2(Optimizer):
    """Adam with ``atan2`` in place of the division by ``sqrt(v) + eps`` (Everett et al. 2024, "Scaling
    Exponents Across Parameterizations and Optimizers"), with decoupled weight decay: the algorithm of the
    ``adam-atan2`` package 0.0.3 that HRM and TRM train with (its CUDA kernel ``csrc/adam_atan2.cu`` and its
    test's reference step agree). Per element, at step ``t`` (counted from 1)::

        p <- p * (1 - lr * weight_decay)
        m <- lerp(m, g, 1 - beta1)                 v <- lerp(v, g*g, 1 - beta2)
        p <- p - (lr / (1 - beta1^t)) * atan2(m, sqrt(v) / sqrt(1 - beta2^t))

    The first-moment bias correction scales the step outside ``atan2``; only the second moment's is inside.
    There is no epsilon: ``atan2`` is bounded and ``atan2(0, 0) = 0``. As in the package, the math runs in
    fp32 for fp16/bf16 parameters (fp64 stays fp64) and the moments are stored in the parameter's dtype; the
    step count is a float32 tensor per parameter, and the bias corrections are computed from it in double.
    Held against the package's reference step by ``tests/test_recipe_reference.py``.

    Args:
        params: parameters or parameter groups (dense gradients only: a sparse one raises ``RuntimeError``).
        lr: learning rate >= 0 (the training loop sets it every step from the schedule).
        betas: ``(beta1, beta2)``, each in ``[0, 1)``.
        weight_decay: decoupled weight decay >= 0 (multiplied by ``lr``).

    Raises:
        TypeError / ValueError: an argument of the wrong type or out of range, named in the message.
    """

    def __init__(self, params, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), weight_decay: float = 1e-2):
        _check_non_negative("lr", lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair of floats, got {betas!r}")
        _check_unit_interval("betas[0]", betas[0])
        _check_unit_interval("betas[1]", betas[1])
        _check_non_negative("weight_decay", weight_decay)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient. ``closure`` re-evaluates the loss (optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamATan2 does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = float(state["step"])
                step_size = lr / (1.0 - beta1**t)
                bias_correction2_sqrt = math.sqrt(1.0 - beta2**t)

                # Low-precision parameters are updated in fp32 and written back once.
                math_dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
                param = p if p.dtype == math_dtype else p.to(math_dtype)
                grad = p.grad.to(math_dtype)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m32 = m if m.dtype == math_dtype else m.to(math_dtype)
                v32 = v if v.dtype == math_dtype else v.to(math_dtype)

                param.mul_(1.0 - lr * wd)
                m32.lerp_(grad, 1.0 - beta1)
                v32.lerp_(grad * grad, 1.0 - beta2)
                param.add_(torch.atan2(m32, v32.sqrt().div_(bias_correction2_sqrt)), alpha=-step_size)

                for dst, src in ((p, param), (m, m32), (v, v32)):
                    if dst is not src:
                        dst.copy_(src)
        return loss


class SparseEmbeddingSignSGD(Optimizer):
    """Sign-SGD with decoupled weight decay on the rows of a puzzle-embedding table that the batch used
    (the reference ``CastedSparseEmbeddingSignSGD_Distributed``)::

        ids, g   = the batch's ids and d loss / d local_weights, gathered from every rank
        G        = per unique id, the sum of its rows of g
        W[ids]  <- W[ids] * (1 - lr * weight_decay) - lr * sign(G)

    Rows not in the batch are untouched (no decay either). With ``world_size > 1`` the ids and row
    gradients are all-gathered first, so every rank applies the same update to its copy of the table.

    Args:
        embedding: the model's ``CastedSparseEmbedding`` (``model.inner.puzzle_emb``): its ``weights`` buffer,
            ``local_weights`` (leaf with grad, rows of this batch) and ``local_ids``. The module is kept,
            not the tensors, because it replaces ``local_weights`` when the batch size changes.
        lr, weight_decay: as above (lr is set by the training loop every step).
        world_size: number of ranks to gather from (1: no communication).
    """

    def __init__(self, embedding: nn.Module, lr: float = 1e-3, weight_decay: float = 1e-2, world_size: int = 1):
        for attr in ("weights", "local_weights", "local_ids"):
            if not isinstance(getattr(embedding, attr, None), torch.Tensor):
                raise TypeError(
                    f"embedding must be a sparse puzzle embedding with a tensor {attr!r} (model.inner.puzzle_emb)"
                )
        _check_non_negative("lr", lr)
        _check_non_negative("weight_decay", weight_decay)
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
        self.embedding = embedding
        super().__init__([embedding.weights], dict(lr=lr, weight_decay=weight_decay, world_size=world_size))

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.embedding.local_weights.grad = None

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad = self.embedding.local_weights.grad
        if grad is None:
            return loss
        for group in self.param_groups:
            (weights,) = group["params"]
            sparse_sign_sgd_(
                weights, grad, self.embedding.local_ids, group["lr"], group["weight_decay"], group["world_size"]
            )
        return loss


def sparse_sign_sgd_(
    weights: torch.Tensor,
    local_grad: torch.Tensor,
    local_ids: torch.Tensor,
    lr: float,
    weight_decay: float,
    world_size: int = 1,
) -> None:
    """The update of :class:`SparseEmbeddingSignSGD` on raw tensors (in place on ``weights``)."""
    if weights.dim() != 2:
        raise ValueError(f"weights must be [num_embeddings, dim], got shape {tuple(weights.shape)}")
    if local_grad.dim() != 2 or local_grad.shape[1] != weights.shape[1]:
        raise ValueError(f"local_grad must be [batch, {weights.shape[1]}], got shape {tuple(local_grad.shape)}")
    if local_ids.shape != (local_grad.shape[0],):
        raise ValueError(f"local_ids must be [{local_grad.shape[0]}], got shape {tuple(local_ids.shape)}")
    if local_ids.dtype.is_floating_point:
        raise TypeError(f"local_ids must be an integer tensor, got {local_ids.dtype}")
    all_grad, all_ids = local_grad, local_ids
    if world_size > 1:
        all_grad = _all_gather_rows(local_grad, world_size)
        all_ids = _all_gather_rows(local_ids, world_size)
    # Static shapes, no host sync (``unique`` would wait for the device to learn how many ids there are): sort
    # the ids (stable, so each id's rows are summed in batch order, as unique + index_add_ does), number the
    # runs of equal ids, sum each run's gradient rows into its slot. Slots past the last run repeat the last
    # run's id and new row, so the one write below stores identical values wherever an id appears twice.
    n = all_ids.shape[0]
    if n == 0:
        return
    sorted_ids, order = torch.sort(all_ids.long(), stable=True)
    starts = torch.ones_like(sorted_ids, dtype=torch.bool)
    starts[1:] = sorted_ids[1:] != sorted_ids[:-1]
    run = torch.cumsum(starts, 0) - 1  # [n] run index of each sorted row
    summed = torch.zeros((n, all_grad.shape[1]), dtype=all_grad.dtype, device=all_grad.device)
    summed.index_add_(0, run, all_grad.index_select(0, order))
    run_ids = torch.zeros_like(sorted_ids).index_copy_(0, run, sorted_ids)  # id of each run (rows of one run agree)
    slot = torch.minimum(torch.arange(n, device=run.device), run[-1])
    ids, summed = run_ids[slot], summed[slot]
    rows = weights[ids]
    rows.mul_(1.0 - lr * weight_decay).add_(torch.sign(summed).to(rows.dtype), alpha=-lr)
    weights.index_copy_(0, ids, rows)


def _all_gather_rows(t: torch.Tensor, world_size: int) -> torch.Tensor:
    out = torch.empty((world_size * t.shape[0],) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device)
    dist.all_gather_into_tensor(out, t.contiguous())
    return out


def cosine_schedule_with_warmup_lr_lambda(
    current_step: int,
    *,
    base_lr: float,
    num_warmup_steps: int,
    num_training_steps: int,
    min_ratio: float = 0.0,
    num_cycles: float = 0.5,
) -> float:
    """Learning rate at ``current_step`` (the reference's function): ``base_lr * step / warmup`` during the
    warmup, then ``base_lr * (min_ratio + (1 - min_ratio) * (1 + cos(2 pi num_cycles progress)) / 2)``.
    ``min_ratio = 1`` (the reference configs) is a constant rate after warmup."""
    for name, v in (
        ("current_step", current_step),
        ("num_warmup_steps", num_warmup_steps),
        ("num_training_steps", num_training_steps),
    ):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    _check_non_negative("base_lr", base_lr)
    _check_unit_interval("min_ratio", min_ratio, upper_open=False)
    if current_step < num_warmup_steps:
        return base_lr * float(current_step) / float(max(1, num_warmup_steps))
    progress = float(current_step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
    return base_lr * (
        min_ratio + max(0.0, (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))
    )


class EMAHelper:
    """Exponential moving average of a module's trainable parameters (the reference ``EMAHelper``):
    ``shadow <- mu * shadow + (1 - mu) * param`` after every optimiser step. Buffers (the puzzle-embedding
    table among them) are not averaged: :meth:`ema_copy` carries the live buffers, as the reference's does.
    """

    def __init__(self, mu: float = 0.999):
        _check_unit_interval("mu", mu, upper_open=False)
        self.mu = float(mu)
        self.shadow: Dict[str, torch.Tensor] = {}

    @staticmethod
    def _params(module: nn.Module):
        return ((n, p) for n, p in module.named_parameters() if p.requires_grad)

    def register(self, module: nn.Module) -> None:
        """Start the average at ``module``'s current parameters."""
        self.shadow = {n: p.detach().clone() for n, p in self._params(module)}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Fold ``module``'s current parameters into the average."""
        for n, p in self._params(module):
            if n not in self.shadow:
                raise KeyError(f"parameter {n!r} was not registered with this EMA")
            s = self.shadow[n]
            s.copy_((1.0 - self.mu) * p.detach() + self.mu * s)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Write the averaged parameters into ``module`` (same structure as the registered one)."""
        for n, p in self._params(module):
            p.copy_(self.shadow[n])

    def ema_copy(self, module: nn.Module) -> nn.Module:
        """A deep copy of ``module`` holding the averaged parameters (``module`` is unchanged)."""
        out = copy.deepcopy(module)
        self.copy_to(out)
        return out

    def state_dict(self) -> Dict[str, Union[float, Dict[str, torch.Tensor]]]:
        return {"mu": self.mu, "shadow": {n: t.detach().clone() for n, t in self.shadow.items()}}

    def load_state_dict(self, state: Dict) -> None:
        if not isinstance(state, dict) or "shadow" not in state:
            raise ValueError("EMA state must be a dict with 'mu' and 'shadow'")
        missing = set(self.shadow) - set(state["shadow"]) if self.shadow else set()
        if missing:
            raise ValueError(f"EMA state lacks parameters {sorted(missing)}")
        self.mu = float(state.get("mu", self.mu))
        self.shadow = {n: t.detach().clone() for n, t in state["shadow"].items()}


def build_optimizers(
    loss_head: nn.Module,
    *,
    lr: float,
    puzzle_emb_lr: float,
    weight_decay: float,
    puzzle_emb_weight_decay: float,
    betas: Tuple[float, float],
    world_size: int = 1,
    freeze_weights: bool = False,
):
    """The reference's optimisers: ``[sign-SGD on the puzzle table (if any), AdamATan2 on every parameter]``
    with their base learning rates. As in the reference, one AdamATan2 group holds every parameter, so weight
    decay applies to all of them (embeddings, heads and biases included). ``freeze_weights``: only the
    puzzle embedding trains."""
    model = loss_head.model if hasattr(loss_head, "model") else loss_head
    emb = getattr(model.inner, "puzzle_emb", None) if hasattr(model, "inner") else None
    optimizers, base_lrs = [], []
    if emb is not None:
        optimizers.append(
            SparseEmbeddingSignSGD(emb, lr=0.0, weight_decay=puzzle_emb_weight_decay, world_size=world_size)
        )
        base_lrs.append(puzzle_emb_lr)
    elif freeze_weights:
        raise ValueError("freeze_weights needs a model with puzzle embeddings (puzzle_emb_ndim > 0)")
    if not freeze_weights:
        optimizers.append(AdamATan2(loss_head.parameters(), lr=0.0, weight_decay=weight_decay, betas=betas))
        base_lrs.append(lr)
    return optimizers, base_lrs


__all__ = [
    "AdamATan2",
    "EMAHelper",
    "SparseEmbeddingSignSGD",
    "build_optimizers",
    "cosine_schedule_with_warmup_lr_lambda",
    "sparse_sign_sgd_",
]
