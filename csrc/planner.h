// The planner of a run_steps call: how the threads are used (whole batch through each op, or per item), how
// many items run a block together (a chunk), and where each intermediate lives in the one workspace buffer.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "program.h"

namespace fastrecur {

// The token-mixer's first GEMM contracts over the sequence axis L (97 for Sudoku). An odd or unaligned K is a
// slow path for 16-bit GEMMs (oneDNN bf16 on an AMD EPYC CPU: about 13x slower for K = 97 than K = 98) and for
// cuBLAS's tensor-core kernels (16-byte aligned rows, also for TF32), so L is zero-padded to a multiple of
// kTokenPad there. CPU fp32 rows are not padded: there the padding only added FLOPs (K = 104 took 7 % longer
// than K = 97 with MKL).
constexpr int64_t kTokenPad = 8;
inline int64_t token_rows(int64_t L, const at::Tensor& x) {
  const bool pad = x.is_cuda() || at::elementSize(x.scalar_type()) == 2;
  return pad ? (L + kTokenPad - 1) / kTokenPad * kTokenPad : L;
}

// Per-item mode (CPU only): each thread runs the whole program on its own batch items with single-threaded
// GEMMs, so a block's intermediates (up to a few MB per item) stay in that core's cache instead of streaming
// through memory between ops, and threads wait for each other once per call (loop.h). Chosen when there are at
// least as many items as threads, and more than one thread; otherwise the whole batch goes through each op and
// the threads split the op. On one thread there is no waiting to save, and the larger GEMMs of the whole batch
// win (TRM-MLP Sudoku ACT step at batch 8 on the EPYC, fp32: 2283 ms whole batch, 2483 ms per item; bf16
// equal; on two threads per item won in bf16, 553 against 596 ms, and tied in fp32). Same results either way
// up to GEMM rounding (the GEMMs see other shapes).
inline bool use_per_item(const at::Tensor& x, int64_t mode) {
  if (mode >= 0) return mode == 1 && x.is_cpu();
  const int64_t threads = at::get_num_threads();
  return x.is_cpu() && threads > 1 && x.size(0) > 1 && x.size(0) >= threads;
}

// Items per chunk in the per-item mode: 2 for 16-bit types when the batch splits evenly (two items' bf16
// intermediates take the bytes of one fp32 item, and single-threaded bf16 GEMMs on 194 rows ran 3 % faster
// than on 97), else 1.
inline int64_t items_per_chunk(int64_t B, at::ScalarType dtype) {
  return at::elementSize(dtype) == 2 && B % 2 == 0 ? 2 : 1;
}

// Workspace regions, offsets in elements, each on a 64-element boundary.
// Shared by all chunks: the mixer's transposed state [Lp, B, D] (rows S..Lp-1 zero) and the zero-padded token
// weights. Per chunk (a group of batch items that run a block together): one block's GEMM outputs and
// activations.
struct ChunkLayout {
  int64_t o = 0, qkv = 0, gu = 0, act = 0, size = 0;
};

inline int64_t align_up(int64_t n) { return (n + 63) / 64 * 64; }

inline ChunkLayout plan_chunk(const std::vector<Block>& blocks, int64_t kind, int64_t nb, int64_t S, int64_t D) {
  const int64_t M = nb * S, N = nb * D;
  int64_t qkv = 0, gu = 0, act = 0;
  for (const auto& b : blocks) {
    gu = std::max(gu, M * 2 * b.inter);
    act = std::max(act, M * b.inter);
    if (kind == kAttention) {
      qkv = std::max(qkv, M * 3 * b.mix_inter);
      act = std::max(act, M * b.mix_inter);  // attention output, if SDPA's is not [nb, S, H, hd]
    } else {
      gu = std::max(gu, 2 * b.mix_inter * N);  // token-MLP gate/up [2*I_t, nb*D]
      act = std::max(act, b.mix_inter * N);    // token-MLP activation [I_t, nb*D]
    }
  }
  ChunkLayout l;
  int64_t off = 0;
  l.o = off; off += align_up(M * D);  // channel MLP output [M, D]; mixer: token-MLP output [S, nb*D]
  l.qkv = off; off += align_up(qkv);
  l.gu = off; off += align_up(gu);
  l.act = off; off += align_up(act);
  l.size = off;
  return l;
}

// The whole call's plan. Workspace: shared regions first (mixer only: the transposed state [Lp, B*D] at
// mix_off, the zero-padded token weights from wpad_off), then one chunk layout per chunk slot from chunks_off;
// `total` elements in all.
struct Plan {
  bool per_item = false;
  int64_t nb = 1;            // batch items per chunk
  int64_t chunk_slots = 1;   // workspaces for chunks in flight: one per thread in the per-item mode
  int64_t Lp = 0;            // token rows of the mixer's transposed state (S, padded for 16-bit/CUDA)
  bool pad_weights = false;  // mixer: token weights copied into zero-padded [2*It, Lp] regions
  ChunkLayout chunk;
  int64_t mix_off = 0, wpad_off = 0, chunks_off = 0, total = 0;
};

inline Plan make_plan(const std::vector<Block>& blocks, int64_t kind, const at::Tensor& x, int64_t per_item_mode) {
  const int64_t B = x.size(0), S = x.size(1), D = x.size(2);
  Plan p;
  p.per_item = use_per_item(x, per_item_mode);
  p.nb = p.per_item ? items_per_chunk(B, x.scalar_type()) : B;
  p.chunk_slots = p.per_item ? at::get_num_threads() : 1;
  p.Lp = token_rows(S, x);
  p.chunk = plan_chunk(blocks, kind, p.nb, S, D);
  p.pad_weights = kind == kMixer && p.Lp > S;
  int64_t total = 0;
  p.mix_off = total;
  if (kind == kMixer) total += align_up(p.Lp * B * D);
  p.wpad_off = total;
  if (p.pad_weights) {
    for (const auto& b : blocks) total += align_up(2 * b.mix_inter * p.Lp);
  }
  p.chunks_off = total;
  total += p.chunk_slots * p.chunk.size;
  p.total = total;
  return p;
}

}  // namespace fastrecur
