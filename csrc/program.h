// What run_steps is asked to do, validated: the states it updates, the blocks of each level (weights and
// derived sizes) and the program (the steps of one ACT step's no-grad recursion, encoded by
// fastrecur.core.cpp_runner).
//
// Program rows: [opcode, target slot, level | source slot, n_inject, inject slot...]. Slot 0 is the input x
// (read-only), slots 1..n the states in the order passed. kUpdate: target += sum(inject slots), then the
// level's blocks run on it; kCopy: target = source.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "checks.h"
#include "cuda_api.h"

namespace fastrecur {

enum BlockKind : int64_t { kAttention = 0, kMixer = 1 };
enum Opcode : int64_t { kUpdate = 0, kCopy = 1 };
constexpr int64_t kProgramHeader = 4;  // [opcode, target, level | source, n_inject, inject...]

// One block's weights and derived sizes (attention: w0 = qkv, w1 = o; mixer: w0 = t_gate_up, w1 = t_down).
struct Block {
  at::Tensor w0, w1, gate_up, down;
  int64_t mix_inter = 0;  // attention: heads * head_dim; mixer: token-MLP hidden size
  int64_t head_dim = 0;
  int64_t inter = 0;  // channel MLP hidden size
  at::Tensor w0_padded;  // mixer: t_gate_up, its L axis zero-padded to token_rows (workspace), or w0 itself
};

// Block idx of `weights` (4 tensors per block: w0, w1, gate_up, down), validated against x [B, S, D].
inline Block make_block(at::TensorList weights, int64_t idx, int64_t kind, const at::Tensor& x,
                        int64_t num_heads) {
  const int64_t S = x.size(1), D = x.size(2);
  auto nm = [&](int k, const char* what) {
    return "weights[" + std::to_string(4 * idx + k) + "] (block " + std::to_string(idx) + " " + what + ")";
  };
  Block b;
  b.w0 = weights[4 * idx];
  b.w1 = weights[4 * idx + 1];
  b.gate_up = weights[4 * idx + 2];
  b.down = weights[4 * idx + 3];
  if (kind == kAttention) {
    check_weight(b.w0, x, nm(0, "qkv"), -1, D, true);
    FR_CHECK(b.w0.size(0) % (3 * num_heads) == 0, nm(0, "qkv"), " has ", b.w0.size(0),
             " rows, not a multiple of 3 * num_heads = ", 3 * num_heads);
    b.head_dim = b.w0.size(0) / (3 * num_heads);
    b.mix_inter = num_heads * b.head_dim;
    check_weight(b.w1, x, nm(1, "o"), D, b.mix_inter, true);
  } else {
    check_weight(b.w0, x, nm(0, "t_gate_up"), -1, S);
    FR_CHECK(b.w0.size(0) % 2 == 0, nm(0, "t_gate_up"), " must have an even number of rows [2*I_t, L], got ",
             b.w0.sizes());
    b.mix_inter = b.w0.size(0) / 2;
    check_weight(b.w1, x, nm(1, "t_down"), S, b.mix_inter);
  }
  check_weight(b.gate_up, x, nm(2, "gate_up"), -1, D, true);
  FR_CHECK(b.gate_up.size(0) % 2 == 0, nm(2, "gate_up"), " must have an even number of rows [2*I, D], got ",
           b.gate_up.sizes());
  b.inter = b.gate_up.size(0) / 2;
  check_weight(b.down, x, nm(3, "down"), D, b.inter, true);
  return b;
}

// states: non-empty list of contiguous tensors of x's shape, dtype and device, disjoint from x and each other.
inline void check_states(at::TensorList states, const at::Tensor& x) {
  check_act(x, "x");
  FR_CHECK(x.dim() == 3 && x.numel() > 0, "x must be a non-empty [B, S, D] tensor, got ", x.sizes());
  check_contig(x, "x");
  FR_CHECK(!states.empty(), "states must hold at least one tensor");
  for (size_t i = 0; i < states.size(); ++i) {
    const std::string name = "states[" + std::to_string(i) + "]";
    FR_CHECK(states[i].defined(), name, " is undefined");
    check_like(states[i], x, name, "x");
    FR_CHECK(states[i].sizes() == x.sizes(), name, " must have the shape of x ", x.sizes(), ", got ",
             states[i].sizes());
    check_contig(states[i], name);
    check_disjoint(states[i], x, name, "x");
    for (size_t j = 0; j < i; ++j) {
      check_disjoint(states[i], states[j], name, "states[" + std::to_string(j) + "]");
    }
  }
}

// The blocks of all levels (level l is blocks [level_offsets[l], level_offsets[l + 1])), validated; no weight
// may share memory with a state (the loop writes the states).
inline std::vector<Block> make_blocks(at::TensorList weights, at::IntArrayRef level_offsets, int64_t block_kind,
                                      const at::Tensor& x, at::TensorList states, int64_t num_heads) {
  FR_CHECK(block_kind == kAttention || block_kind == kMixer, "block_kind must be 0 (attention) or 1 (mixer), got ",
           block_kind);
  FR_CHECK(block_kind != kAttention || num_heads >= 1, "num_heads must be >= 1, got ", num_heads);
  FR_CHECK(level_offsets.size() >= 2 && level_offsets[0] == 0,
           "level_offsets must start at 0 and hold n_levels + 1 block offsets, got ", level_offsets);
  for (size_t i = 1; i < level_offsets.size(); ++i) {
    FR_CHECK(level_offsets[i] >= level_offsets[i - 1], "level_offsets must be non-decreasing, got ", level_offsets);
  }
  const int64_t n_blocks = level_offsets.back();
  FR_CHECK(static_cast<int64_t>(weights.size()) == 4 * n_blocks, "weights must hold 4 tensors per block (",
           n_blocks, " blocks by level_offsets), got ", weights.size());
  std::vector<Block> blocks;
  blocks.reserve(n_blocks);
  for (int64_t i = 0; i < n_blocks; ++i) {
    blocks.push_back(make_block(weights, i, block_kind, x, num_heads));
    for (int k = 0; k < 4; ++k) {
      for (size_t s = 0; s < states.size(); ++s) {
        check_disjoint(weights[4 * i + k], states[s], "weights[" + std::to_string(4 * i + k) + "]",
                       "states[" + std::to_string(s) + "]");
      }
    }
  }
  return blocks;
}

// The program: a contiguous int64 CPU tensor [n_steps, >= kProgramHeader] whose slots and levels exist.
inline void check_program(const at::Tensor& program, int64_t n_slots, int64_t n_levels) {
  FR_CHECK(program.defined() && program.device().is_cpu() && program.scalar_type() == at::kLong &&
               program.dim() == 2 && program.is_contiguous() && program.size(1) >= kProgramHeader,
           "program must be a contiguous int64 CPU tensor [n_steps, >= ", kProgramHeader, "], got ",
           program.defined() ? program.toString() : std::string("undefined"), " ", program.sizes());
  const int64_t n_steps = program.size(0), width = program.size(1);
  const int64_t* prog = program.const_data_ptr<int64_t>();
  for (int64_t s = 0; s < n_steps; ++s) {
    const int64_t* r = prog + s * width;
    const std::string at_step = "program step " + std::to_string(s) + ": ";
    FR_CHECK(r[0] == kUpdate || r[0] == kCopy, at_step, "unknown opcode ", r[0]);
    FR_CHECK(r[1] >= 1 && r[1] < n_slots, at_step, "target slot ", r[1], " outside [1, ", n_slots - 1,
             "] (slot 0 is x, which is read-only)");
    if (r[0] == kUpdate) {
      FR_CHECK(r[2] >= 0 && r[2] < n_levels, at_step, "level ", r[2], " outside [0, ", n_levels - 1, "]");
      FR_CHECK(r[3] >= 0 && r[3] <= width - kProgramHeader && r[3] <= cuda::kMaxInject, at_step, "inject count ",
               r[3], " outside [0, ", std::min<int64_t>(width - kProgramHeader, cuda::kMaxInject), "]");
      for (int64_t j = 0; j < r[3]; ++j) {
        FR_CHECK(r[kProgramHeader + j] >= 0 && r[kProgramHeader + j] < n_slots, at_step, "inject slot ",
                 r[kProgramHeader + j], " outside [0, ", n_slots - 1, "]");
      }
    } else {
      FR_CHECK(r[2] >= 0 && r[2] < n_slots, at_step, "copy source slot ", r[2], " outside [0, ", n_slots - 1, "]");
    }
  }
}

}  // namespace fastrecur
