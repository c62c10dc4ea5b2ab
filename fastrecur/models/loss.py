"""The reference ``ACTLossHead``: LM loss per valid token, Q-halt and Q-continue BCE, metrics."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_LABEL_ID = -100


def _stablemax_s(x: torch.Tensor, epsilon: float = 1e-30) -> torch.Tensor:
    return torch.where(x < 0, 1 / (1 - x + epsilon), x + 1)


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_LABEL_ID, valid_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-token ``-log(s(x)[label] / sum s(x))`` in float64, 0 where ``labels == ignore_index``.

    ``s(x) = 1/(1-x)`` for ``x < 0`` else ``x + 1`` (stablemax). Matches the reference; returns float64.
    """
    s = _stablemax_s(logits.to(torch.float64))
    logprobs = torch.log(s / s.sum(-1, keepdim=True))
    if valid_mask is None:
        valid_mask = labels != ignore_index
    picked = torch.gather(logprobs, -1, torch.where(valid_mask, labels, 0).to(torch.long).unsqueeze(-1)).squeeze(-1)
    return -torch.where(valid_mask, picked, 0)


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_LABEL_ID, valid_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-token softmax cross-entropy in float32, 0 on ignored labels.

    The reference's version fails inside its own loss head (``.view`` on the non-contiguous logits slice when
    puzzle embeddings are on; in the TRM repo also an unexpected ``valid_mask`` argument). This is what it
    meant: plain softmax CE over valid tokens (``valid_mask`` ignored beyond ``ignore_index``).
    """
    return F.cross_entropy(
        logits.to(torch.float32).reshape(-1, logits.shape[-1]), labels.to(torch.long).reshape(-1), ignore_index=ignore_index, reduction="none"
    ).view(labels.shape)


LOSSES = {"stablemax_cross_entropy": stablemax_cross_entropy, "softmax_cross_entropy": softmax_cross_entropy}


class ACTLossHead(nn.Module):
    """Wraps an ACT model; ``forward(return_keys, carry=..., batch=...)`` returns
    ``(new_carry, loss, metrics, detached_outputs, all_halted)`` like the reference.

    ``loss = lm_loss + 0.5 * (q_halt_loss + q_continue_loss)`` where ``lm_loss`` sums, over the batch, the
    mean per-token loss over valid tokens; ``q_halt_loss`` is BCE of ``q_halt`` against "whole sequence right".
    """

    def __init__(self, model: nn.Module, loss_type: str = "stablemax_cross_entropy"):
        super().__init__()
        if loss_type not in LOSSES:
            raise ValueError(f"loss_type must be one of {sorted(LOSSES)}, got {loss_type!r}")
        self.model = model
        self.loss_type = loss_type
        self.loss_fn = LOSSES[loss_type]

    def initial_carry(self, *args, **kwargs):
        return self.model.initial_carry(*args, **kwargs)

    def forward(self, return_keys: Sequence[str] = (), **model_kwargs) -> Tuple[Any, torch.Tensor, Dict[str, torch.Tensor], Dict[str, torch.Tensor], torch.Tensor]:
        new_carry, outputs = self.model(**model_kwargs)
        if "labels" not in new_carry.current_data:
            raise ValueError("the batch has no 'labels': the loss head needs them")
        labels = new_carry.current_data["labels"]

        with torch.no_grad():
            outputs["preds"] = torch.argmax(outputs["logits"], dim=-1)
            mask = labels != IGNORE_LABEL_ID
            loss_counts = mask.sum(-1)
            loss_divisor = loss_counts.clamp_min(1).unsqueeze(-1)
            is_correct = mask & (outputs["preds"] == labels)
            seq_is_correct = is_correct.sum(-1) == loss_counts
            valid = new_carry.halted & (loss_counts > 0)
            metrics = {
                "count": valid.sum(),
                "accuracy": torch.where(valid, (is_correct.to(torch.float32) / loss_divisor).sum(-1), 0).sum(),
                "exact_accuracy": (valid & seq_is_correct).sum(),
                "q_halt_accuracy": (valid & ((outputs["q_halt_logits"] >= 0) == seq_is_correct)).sum(),
                "steps": torch.where(valid, new_carry.steps, 0).sum(),
            }

        lm_loss = (self.loss_fn(outputs["logits"], labels, ignore_index=IGNORE_LABEL_ID, valid_mask=mask) / loss_divisor).sum()
        q_halt_loss = F.binary_cross_entropy_with_logits(outputs["q_halt_logits"], seq_is_correct.to(outputs["q_halt_logits"].dtype), reduction="sum")
        metrics.update({"lm_loss": lm_loss.detach(), "q_halt_loss": q_halt_loss.detach()})
        q_continue_loss = 0
        if "target_q_continue" in outputs:
            q_continue_loss = F.binary_cross_entropy_with_logits(outputs["q_continue_logits"], outputs["target_q_continue"], reduction="sum")
            metrics["q_continue_loss"] = q_continue_loss.detach()
        detached = {k: outputs[k].detach() for k in return_keys if k in outputs}
        return new_carry, lm_loss + 0.5 * (q_halt_loss + q_continue_loss), metrics, detached, new_carry.halted.all()
