"""The inner recursive model shared by HRM, TRM, SRM and FlatRecurrence.

It owns the I/O (token, puzzle and position embeddings, ``lm_head``, ``q_head``), the levels (stacks of
blocks) and the initial states, and runs a :class:`~fastrecur.core.schedule.Schedule` over them. The
attribute names are the reference's, so state-dict keys match (``embed_tokens.embedding_weight``,
``L_level.layers.0.mlp.gate_up_proj.weight``, ``H_init``, ...).
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fastrecur.backend import Backend
from fastrecur.core.schedule import Schedule
from fastrecur.nn.blocks import ReasoningBlock, ReasoningModule
from fastrecur.nn.init import trunc_normal_init_
from fastrecur.nn.linear import CastedEmbedding, CastedLinear, CastedSparseEmbedding
from fastrecur.nn.rotary import RotaryEmbedding

from .config import ModelConfig


class InnerCarry:
    """The recurrent states of one batch, by name (``carry.z_H``, ``carry.z_L`` or ``carry.z``)."""

    def __init__(self, **states: torch.Tensor):
        self.__dict__.update(states)

    def as_dict(self) -> Dict[str, torch.Tensor]:
        return dict(self.__dict__)

    def __repr__(self):
        return "InnerCarry(" + ", ".join(f"{k}={tuple(v.shape)}" for k, v in self.__dict__.items()) + ")"


class RecursiveInner(nn.Module):
    """One ACT step: embed, run the schedule, read out logits and Q-values.

    Args:
        config: validated config.
        schedule: the recursion.
        levels: ``{level_name: (num_blocks, repeat)}`` in construction order.
        state_inits: ``{state_name: init_buffer_name}`` for the carried states.
        puzzle_emb_len: prefix positions taken by the puzzle embedding.
        mlp_t: token-mixer blocks instead of attention (TRM variant).
    """

    def __init__(
        self,
        config: ModelConfig,
        schedule: Schedule,
        levels: Mapping[str, Tuple[int, int]],
        state_inits: Mapping[str, str],
        puzzle_emb_len: int,
        mlp_t: bool = False,
    ):
        super().__init__()
        self.config = config
        self.schedule = schedule
        self.state_inits = dict(state_inits)
        self.forward_dtype = getattr(torch, config.forward_dtype)
        self.puzzle_emb_len = puzzle_emb_len
        self.total_len = config.seq_len + puzzle_emb_len
        D = config.hidden_size

        # Construction order follows the reference so that the same seed gives the same initial weights.
        self.embed_scale = math.sqrt(D)
        self.embed_tokens = CastedEmbedding(
            config.vocab_size, D, init_std=1.0 / self.embed_scale, cast_to=self.forward_dtype
        )
        self.lm_head = CastedLinear(D, config.vocab_size, bias=False)
        self.q_head = CastedLinear(D, 2, bias=True)
        if config.puzzle_emb_ndim > 0:
            self.puzzle_emb = CastedSparseEmbedding(
                config.num_puzzle_identifiers,
                config.puzzle_emb_ndim,
                batch_size=config.batch_size,
                init_std=0,
                cast_to=self.forward_dtype,
            )
        if config.pos_encodings == "rope":
            self.rotary_emb = RotaryEmbedding(D // config.num_heads, self.total_len, config.rope_theta)
        elif config.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(
                self.total_len, D, init_std=1.0 / self.embed_scale, cast_to=self.forward_dtype
            )

        for name, (num_blocks, repeat) in levels.items():
            blocks = [
                ReasoningBlock(
                    D, config.num_heads, config.expansion, config.rms_norm_eps, mlp_t=mlp_t, seq_len=self.total_len
                )
                for _ in range(num_blocks)
            ]
            setattr(self, name, ReasoningModule(blocks, repeat=repeat))
        for buf in self.state_inits.values():
            self.register_buffer(
                buf, trunc_normal_init_(torch.empty(D, dtype=self.forward_dtype), std=1), persistent=True
            )

        # Set by fastrecur.inspect.trace to see every state update; None = no tracing, no cost.
        self.observer = None
        # The C++ backend on CUDA: capture the no-grad recursion as a CUDA graph per shape and replay it
        # (fastrecur.backend.graphs documents the limits). Off by default.
        self.use_cuda_graphs = False
        # The C++ backend on CPU: None picks how threads share the work (per batch item when there are at least
        # as many items as threads, else splitting each op); True/False force it (fastrecur.core.cpp_runner).
        self.cpp_per_item = None
        # The C++ backend on CPU: which library runs the GEMMs ("aten", "onednn", "onednn_fused", "auto"); None
        # reads $FASTRECUR_CPU_GEMM, else measures each GEMM site once (fastrecur.core.cpp_runner).
        self.cpp_gemm = None

        with torch.no_grad():  # Q starts near "continue" so early training does not halt at once
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5)

    # ----- I/O -----
    def input_embeddings(self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor) -> torch.Tensor:
        emb = self.embed_tokens(inputs.to(torch.int32))
        if self.config.puzzle_emb_ndim > 0:
            pe = self.puzzle_emb(puzzle_identifiers)
            pad = self.puzzle_emb_len * self.config.hidden_size - pe.shape[-1]
            if pad > 0:
                pe = F.pad(pe, (0, pad))
            emb = torch.cat((pe.view(-1, self.puzzle_emb_len, self.config.hidden_size), emb), dim=-2)
        if self.config.pos_encodings == "learned":
            # 1/sqrt(2) keeps the forward variance of the sum
            emb = 0.707106781 * (emb + self.embed_pos.embedding_weight.to(self.forward_dtype))
        return self.embed_scale * emb

    def cos_sin(self):
        return self.rotary_emb() if hasattr(self, "rotary_emb") else None

    def readout(self, z: torch.Tensor):
        logits = self.lm_head(z)[:, self.puzzle_emb_len :]
        q = self.q_head(z[:, 0]).to(torch.float32)  # first (puzzle-embedding) position
        return logits, (q[..., 0], q[..., 1])

    # ----- carry -----
    def empty_carry(self, batch_size: int, device=None) -> InnerCarry:
        shape = (batch_size, self.total_len, self.config.hidden_size)
        return InnerCarry(
            **{s: torch.empty(shape, dtype=self.forward_dtype, device=device) for s in self.schedule.states}
        )

    def reset_carry(self, reset_flag: torch.Tensor, carry: InnerCarry) -> InnerCarry:
        flag = reset_flag.view(-1, 1, 1)
        return InnerCarry(
            **{s: torch.where(flag, getattr(self, b), getattr(carry, s)) for s, b in self.state_inits.items()}
        )

    # ----- one ACT step -----
    def forward(self, carry: InnerCarry, batch: Mapping[str, torch.Tensor], backend: Backend):
        """One ACT step of the schedule, run by ``backend`` (a :class:`fastrecur.backend.Backend`; the ACT
        wrapper selects it). A trace (``self.observer``) sees every update (backends that cannot report
        updates run the step on the eager loop then)."""
        x = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        states = {s: getattr(carry, s) for s in self.schedule.states}
        backend.run_step(self, states, x, self.observer)
        new_carry = InnerCarry(**{s: states[s].detach() for s in self.schedule.states})
        logits, q = self.readout(states[self.schedule.readout])
        return new_carry, logits, q
