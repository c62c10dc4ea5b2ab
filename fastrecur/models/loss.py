"""The reference ``ACTLossHead``: LM loss per valid token, Q-halt and Q-continue BCE, metrics."""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fastrecur.ops import reference as R

IGNORE_LABEL_ID = R.IGNORE_LABEL_ID
stablemax_cross_entropy = R.stablemax_cross_entropy
softmax_cross_entropy = R.softmax_cross_entropy
LOSSES = ("stablemax_cross_entropy", "softmax_cross_entropy")


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

    def per_token_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The configured loss per token (0 on ignored labels), as the model's backend computes it (fused on
        Triton)."""
        select = getattr(self.model, "execution_backend", None)
        if select is None:  # a model outside fastrecur: the reference loss
            return getattr(R, self.loss_type)(logits, labels, IGNORE_LABEL_ID)
        return select(labels.device).per_token_loss(self.loss_type, labels.device)(logits, labels, IGNORE_LABEL_ID)

    def initial_carry(self, *args, **kwargs):
        return self.model.initial_carry(*args, **kwargs)

    def forward(
        self, return_keys: Sequence[str] = (), **model_kwargs
    ) -> Tuple[Any, torch.Tensor, Dict[str, torch.Tensor], Dict[str, torch.Tensor], torch.Tensor]:
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

        lm_loss = (self.per_token_loss(outputs["logits"], labels) / loss_divisor).sum()
        q_halt_loss = F.binary_cross_entropy_with_logits(
            outputs["q_halt_logits"], seq_is_correct.to(outputs["q_halt_logits"].dtype), reduction="sum"
        )
        metrics.update({"lm_loss": lm_loss.detach(), "q_halt_loss": q_halt_loss.detach()})
        q_continue_loss = 0
        if "target_q_continue" in outputs:
            q_continue_loss = F.binary_cross_entropy_with_logits(
                outputs["q_continue_logits"], outputs["target_q_continue"], reduction="sum"
            )
            metrics["q_continue_loss"] = q_continue_loss.detach()
        detached = {k: outputs[k].detach() for k in return_keys if k in outputs}
        return new_carry, lm_loss + 0.5 * (q_halt_loss + q_continue_loss), metrics, detached, new_carry.halted.all()
