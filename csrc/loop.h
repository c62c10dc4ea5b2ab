// run_steps: the no-grad recursion of a recursive model's ACT step as one native call.
//
// - States are [B, S, D] contiguous tensors, updated in place; slot 0 of the program is the input x,
//   slots 1..n the states (carried and scratch) in the order passed (program.h).
// - GEMMs go through at::mm_out into a preallocated workspace (workspace.h, laid out by planner.h);
//   attention goes through at::scaled_dot_product_attention, which allocates its output (and, on some
//   backends, statistics) internally on every attention block -- the only per-step allocations.
// - Two ways to use the threads (CPU; CUDA always runs the whole batch through each kernel): the whole batch
//   through each op, the threads splitting the op; or per item, each thread running the whole program on its
//   own chunks of batch items with single-threaded GEMMs and kernels, in one parallel region per call, so a
//   chunk's states and a block's intermediates stay in that core's cache and threads meet once per call, not
//   once per step. The per-item mode issues (chunks)x more, smaller native ops. planner.h chooses.
#pragma once

#include <ATen/ATen.h>
#include <ATen/DeviceGuard.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <cmath>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "checks.h"
#include "cpu_gemm.h"
#include "dispatch.h"
#include "planner.h"
#include "program.h"
#include "workspace.h"

namespace fastrecur {

// Views of one chunk's workspace and of the transposed weights that one block uses, made once per run_steps
// call: the loop then issues only kernels. (A view costs about a microsecond of dispatch, and an ACT step would
// otherwise make over a thousand of them.)
struct BlockViews {
  at::Tensor gate_up_t, down_t;          // channel MLP weights, transposed views
  at::Tensor gu, gate, up, act, o;       // channel MLP: [M, 2I], its halves, [M, I], [M, D]
  at::Tensor w0_t, w1_t, qkv, q, k, v;   // attention: weights, [M, 3*H*hd] and the q/k/v [nb, H, S, hd] views
  at::Tensor att_scratch, att_scratch4;  // attention output when SDPA's is not [nb, S, H, hd] contiguous
  at::Tensor G, Ggate, Gup, tact, outT, outT3;  // mixer: [2*It, N], halves, [It, N], [S, N], [nb, S, D]

  // The gate/up GEMM of the channel MLP on h2 [M, D] (h2 @ gate_up.T), and of the token MLP on hT [Lp, N]
  // (w0 @ hT, w0 the padded [2*It, Lp] weight), with their workspace views (cpu_gemm.h).
  SwigluGemm mlp_up(const at::Tensor& h2) const { return {h2, gate_up_t, 1, gu, gate, up}; }
  SwigluGemm mix_up(const at::Tensor& w0_padded, const at::Tensor& hT) const {
    return {w0_padded, hT, 0, G, Ggate, Gup};
  }
};

// q, k and v as [nb, H, S, hd] views of a [nb * S, 3 * H * hd] projection (rows [q heads | k heads | v heads]).
struct QKV {
  at::Tensor q, k, v;
};
inline QKV split_qkv(const at::Tensor& qkv, int64_t nb, int64_t S, int64_t H, int64_t hd) {
  const at::Tensor q5 = qkv.view({nb, S, 3, H, hd});
  return {q5.select(2, 0).transpose(1, 2), q5.select(2, 1).transpose(1, 2), q5.select(2, 2).transpose(1, 2)};
}

// The GEMM implementation of each site of one block (cpu_gemm.h), the same for every chunk.
struct BlockGemms {
  int64_t mlp_up = kGemmAten, mlp_down = kGemmAten;  // channel MLP: gate/up (+ SwiGLU), down
  int64_t qkv = kGemmAten, att_out = kGemmAten;      // attention projections
  int64_t mix_up = kGemmAten, mix_down = kGemmAten;  // token MLP: gate/up (+ SwiGLU), down
};

// Where one chunk's items live: h2 [nb*S, D] and h3 [nb, S, D] views of the target state; for mixer blocks
// also hT [Lp, nb*D] (the chunk's columns of the transposed state) and hT3, its [nb, S, D] view.
struct ChunkIO {
  at::Tensor h2, h3, hT, hT3;
};

struct Runner {
  at::Tensor buf;
  int64_t B, S, D, num_heads, Lp;
  double eps;
  std::optional<at::Tensor> cos, sin;
  at::Tensor mixT, mixer_in;  // mixer: the transposed state [Lp, B*D] and its [B, S, D] view
  int64_t nb = 1;             // batch items per chunk: B (threads inside each op) or 1 (threads over items)
  std::vector<std::vector<BlockViews>> views;  // [chunk slot][block]; per item: one slot per thread
  std::vector<BlockGemms> gemms;               // [block]

  at::Tensor region(int64_t off, at::IntArrayRef sizes) const {
    int64_t n = 1;
    for (auto s : sizes) n *= s;
    return buf.narrow(0, off, n).view(sizes);
  }

  std::vector<BlockViews> chunk_views(const std::vector<Block>& blocks, int64_t kind, int64_t base,
                                      const ChunkLayout& cl) const {
    const int64_t M = nb * S, N = nb * D;
    std::vector<BlockViews> out;
    out.reserve(blocks.size());
    for (const auto& b : blocks) {
      BlockViews v;
      v.gate_up_t = b.gate_up.t();
      v.down_t = b.down.t();
      v.gu = region(base + cl.gu, {M, 2 * b.inter});
      v.gate = v.gu.narrow(1, 0, b.inter);
      v.up = v.gu.narrow(1, b.inter, b.inter);
      v.act = region(base + cl.act, {M, b.inter});
      v.o = region(base + cl.o, {M, D});
      if (kind == kAttention) {
        const int64_t H = num_heads, hd = b.head_dim;
        v.w0_t = b.w0.t();
        v.w1_t = b.w1.t();
        v.qkv = region(base + cl.qkv, {M, 3 * H * hd});
        const QKV s3 = split_qkv(v.qkv, nb, S, H, hd);
        v.q = s3.q;
        v.k = s3.k;
        v.v = s3.v;
        v.att_scratch = region(base + cl.act, {M, H * hd});
        v.att_scratch4 = v.att_scratch.view({nb, S, H, hd});
      } else {
        const int64_t It = b.mix_inter;
        v.G = region(base + cl.gu, {2 * It, N});
        v.Ggate = v.G.narrow(0, 0, It);
        v.Gup = v.G.narrow(0, It, It);
        v.tact = region(base + cl.act, {It, N});
        v.outT = region(base + cl.o, {S, N});
        v.outT3 = v.outT.view({S, nb, D}).permute({1, 0, 2});
      }
      out.push_back(std::move(v));
    }
    return out;
  }

  // The views of the chunk that starts at batch item b0 (nb items) of the state `target` ([B, S, D]).
  ChunkIO chunk_io(const at::Tensor& target, int64_t b0, bool mixer) const {
    ChunkIO io;
    io.h3 = nb == B ? target : target.narrow(0, b0, nb);
    io.h2 = io.h3.view({nb * S, D});
    if (mixer) {
      io.hT = nb == B ? mixT : mixT.narrow(1, b0 * D, nb * D);
      io.hT3 = nb == B ? mixer_in : mixer_in.narrow(0, b0, nb);
    }
    return io;
  }

  // gemms[bi] for every block: `mode`, or (kGemmAuto, CPU) each site's fastest implementation, timed on this
  // call's chunk workspaces with x's rows as input the first time its shapes are seen in this process
  // (cpu_gemm.h). Timing overwrites only workspace regions (and the mixer's transposed state, whose rows the
  // program rewrites before reading them; its padding rows stay zero).
  void choose_gemms(const std::vector<Block>& blocks, int64_t kind, int64_t mode, const at::Tensor& x,
                    bool per_item) {
    const int64_t slots = static_cast<int64_t>(views.size());
    const std::vector<int64_t> plain{kGemmAten, kGemmOneDnn}, swiglu{kGemmAten, kGemmOneDnn, kGemmOneDnnFused};
    auto io_of = [&](size_t slot) {
      return chunk_io(x, std::min<int64_t>(static_cast<int64_t>(slot) * nb, B - nb), kind == kMixer);
    };
    const ChunkIO io0 = io_of(0);
    gemms.assign(blocks.size(), BlockGemms());
    if (x.is_cpu()) {
      std::vector<std::pair<at::Tensor, int64_t>> split;  // the operands fused SwiGLUs split (cpu_gemm.h)
      for (size_t bi = 0; bi < blocks.size(); ++bi) {
        split.emplace_back(views[0][bi].gate_up_t, 1);
        if (kind == kMixer) split.emplace_back(blocks[bi].w0_padded, 0);
      }
      keep_only_halves(split);
    }
    for (size_t bi = 0; bi < blocks.size(); ++bi) {
      const Block& b = blocks[bi];
      BlockGemms& g = gemms[bi];
      const BlockViews& v0 = views[0][bi];
      auto pick = [&](const char* site, std::initializer_list<at::Tensor> operands, const std::vector<int64_t>& cands,
                      const std::function<void()>& prepare, const std::function<void(int64_t, size_t)>& run) {
        if (mode != kGemmAuto || !x.is_cpu()) return mode == kGemmAuto ? int64_t{kGemmAten} : mode;
        return choose_gemm(x, gemm_site_key(site, operands, per_item), cands, slots, prepare, run);
      };
      // Inputs the timing reads from the workspace start as zeros (not stale, possibly non-finite, contents).
      auto zero_all = [&](at::Tensor BlockViews::*field) {
        return [this, bi, field] {
          for (auto& sv : views) (sv[bi].*field).zero_();
        };
      };
      if (kind == kAttention) {
        g.qkv = pick("qkv", {io0.h2, v0.w0_t}, plain, [] {}, [&](int64_t impl, size_t s) {
          gemm(impl, views[s][bi].qkv, io_of(s).h2, views[s][bi].w0_t);
        });
        g.att_out = pick("att_out", {v0.att_scratch, v0.w1_t}, plain, zero_all(&BlockViews::att_scratch),
                         [&](int64_t impl, size_t s) {
                           gemm(impl, views[s][bi].o, views[s][bi].att_scratch, views[s][bi].w1_t);
                         });
      } else {
        g.mix_up = pick("mix_up", {b.w0_padded, io0.hT}, swiglu, [this] { mixT.zero_(); },
                        [&](int64_t impl, size_t s) {
                          BlockViews& v = views[s][bi];
                          gemm_swiglu(impl, v.mix_up(b.w0_padded, io_of(s).hT), v.tact, k_swiglu);
                        });
        g.mix_down = pick("mix_down", {b.w1, v0.tact}, plain, zero_all(&BlockViews::tact),
                          [&](int64_t impl, size_t s) { gemm(impl, views[s][bi].outT, b.w1, views[s][bi].tact); });
      }
      g.mlp_up = pick("mlp_up", {io0.h2, v0.gate_up_t}, swiglu, [] {}, [&](int64_t impl, size_t s) {
        BlockViews& v = views[s][bi];
        gemm_swiglu(impl, v.mlp_up(io_of(s).h2), v.act, k_swiglu);
      });
      g.mlp_down = pick("mlp_down", {v0.act, v0.down_t}, plain, zero_all(&BlockViews::act),
                        [&](int64_t impl, size_t s) {
                          gemm(impl, views[s][bi].o, views[s][bi].act, views[s][bi].down_t);
                        });
    }
  }

  // h2 = rms_norm(h2 + (silu(gate) * up) @ down.T) with [gate | up] = h2 @ gate_up.T; the new rows are also
  // written to `copy` when defined (the next mixer block's input). Returns the native ops issued.
  int64_t mlp(const at::Tensor& h2, const BlockGemms& g, BlockViews& v, const at::Tensor& copy = at::Tensor()) const {
    const at::Tensor act = gemm_swiglu(g.mlp_up, v.mlp_up(h2), v.act, k_swiglu);
    const at::Tensor o = gemm(g.mlp_down, v.o, act, v.down_t);
    k_add_rms_norm_rows(h2, h2, o, eps, copy);
    return 4;  // fused: the swish GEMM and the multiply GEMM replace a GEMM and the SwiGLU kernel
  }

  int64_t attention_block(const ChunkIO& io, const Block& b, const BlockGemms& g, BlockViews& v) const {
    const int64_t M = nb * S, H = num_heads, hd = b.head_dim;
    int64_t ops = 0;
    const at::Tensor qkv = gemm(g.qkv, v.qkv, io.h2, v.w0_t);
    // oneDNN returns its own output: its q/k/v views are made per call.
    const QKV s3 = g.qkv == kGemmAten ? QKV{v.q, v.k, v.v} : split_qkv(qkv, nb, S, H, hd);
    ops += 1;
    if (cos) {
      k_rope(qkv, 2 * H, hd, S, *cos, *sin);  // q and k heads are the first 2*H heads of each row
      ops += 1;
    }
    // Allocates its output internally (see the file comment).
    auto att = at::scaled_dot_product_attention(s3.q, s3.k, s3.v, std::nullopt, 0.0, false, 1.0 / std::sqrt(double(hd)))
                   .transpose(1, 2);  // [nb, S, H, hd]
    ops += 1;
    at::Tensor a2;
    if (att.is_contiguous()) {
      a2 = att.view({M, H * hd});
    } else {
      v.att_scratch4.copy_(att);
      a2 = v.att_scratch;
      ops += 1;
    }
    const at::Tensor o = gemm(g.att_out, v.o, a2, v.w1_t);
    k_add_rms_norm_rows(io.h2, io.h2, o, eps);
    return ops + 2 + mlp(io.h2, g, v);
  }

  // Token mixing in the [L, nb*D] layout, so both token GEMMs are single GEMMs over the chunk:
  // G = t_gate_up @ hT; act = silu(G[:I_t]) * G[I_t:]; out = t_down @ act;
  // h = rms_norm over L of (hT + out), written straight back into h's [nb, L, D] layout.
  // hT (rows S..Lp-1 zero) must already hold h transposed: the kernel that last wrote h wrote it too (the
  // injection, or the previous block's MLP norm), which saves a transpose copy per block.
  // next_is_mixer: this level call runs another block after this one (its input copy is written here).
  int64_t mixer_block(const ChunkIO& io, const Block& b, const BlockGemms& g, BlockViews& v,
                      bool next_is_mixer) const {
    const at::Tensor tact = gemm_swiglu(g.mix_up, v.mix_up(b.w0_padded, io.hT), v.tact, k_swiglu);
    const at::Tensor outT = gemm(g.mix_down, v.outT, b.w1, tact);
    k_add_rms_norm_dim1(io.h3, io.hT3, g.mix_down == kGemmAten ? v.outT3 : outT.view({S, nb, D}).permute({1, 0, 2}),
                        eps);
    return 4 + mlp(io.h2, g, v, next_is_mixer ? io.hT3 : at::Tensor());
  }

  // Blocks [first, last) on one chunk's target state `io`, with chunk slot `slot`'s workspace.
  int64_t level_chunk(const std::vector<Block>& blocks, int64_t kind, int64_t first, int64_t last, const ChunkIO& io,
                      size_t slot) {
    int64_t ops = 0;
    for (int64_t bi = first; bi < last; ++bi) {
      const BlockGemms& g = gemms[static_cast<size_t>(bi)];
      ops += kind == kAttention ? attention_block(io, blocks[bi], g, views[slot][bi])
                                : mixer_block(io, blocks[bi], g, views[slot][bi], bi + 1 < last);
    }
    return ops;
  }

  // The whole program on the chunk of items [b0, b0 + nb), with chunk slot `slot`'s workspace. Items never
  // interact (every step reads and writes the same items of the states), so a chunk can run every step
  // before the next chunk starts: in the per-item mode each thread runs whole programs on its chunks, in one
  // parallel region per call (no barrier per step), and a chunk's states stay in its core's cache across
  // steps. slot3: x and the states, [B, S, D] each. Returns the native ops issued.
  int64_t run_program(const int64_t* prog, int64_t n_steps, int64_t width, at::IntArrayRef level_offsets,
                      const std::vector<Block>& blocks, int64_t kind, const std::vector<at::Tensor>& slot3, int64_t b0,
                      size_t slot) {
    // The chunk's views of every slot, made once per chunk (a view costs about a microsecond).
    std::vector<ChunkIO> io(slot3.size());
    for (size_t i = 0; i < slot3.size(); ++i) io[i] = chunk_io(slot3[i], b0, kind == kMixer);
    std::vector<at::Tensor> srcs;
    const at::Tensor none;
    int64_t ops = 0;
    for (int64_t s = 0; s < n_steps; ++s) {
      const int64_t* r = prog + s * width;
      const ChunkIO& target = io[r[1]];
      if (r[0] == kCopy) {
        if (r[2] != r[1]) {
          target.h3.copy_(io[r[2]].h3);
          ops += 1;
        }
        continue;
      }
      // target = target + (inj_0 + inj_1 + ...), summed in the order given, like the eager loop; one fused
      // kernel, which also writes the transposed copy a first mixer block reads.
      const int64_t n_inj = r[3];
      const int64_t* inj = r + kProgramHeader;
      const int64_t first = level_offsets[r[2]], last = level_offsets[r[2] + 1];
      const bool mixer = kind == kMixer && last > first;
      if (n_inj > 0 || mixer) {
        srcs.clear();
        for (int64_t j = 0; j < n_inj; ++j) srcs.push_back(io[inj[j]].h2);
        k_inject_add(target.h2, srcs, mixer ? target.hT3 : none);
        ops += 1;
      }
      if (last > first) ops += level_chunk(blocks, kind, first, last, target, slot);
    }
    return ops;
  }
};

inline void run_steps_op(at::TensorList states, const at::Tensor& x, const at::Tensor& program,
                         at::TensorList weights, at::IntArrayRef level_offsets, const std::optional<at::Tensor>& cos,
                         const std::optional<at::Tensor>& sin, int64_t num_heads, double eps, int64_t block_kind,
                         int64_t per_item_mode, int64_t gemm_mode) {
  check_states(states, x);
  FR_CHECK(per_item_mode >= -1 && per_item_mode <= 1, "per_item must be -1 (auto), 0 or 1, got ", per_item_mode);
  FR_CHECK(gemm_mode >= kGemmAuto && gemm_mode <= kGemmOneDnnFused,
           "gemm must be -1 (auto), 0 (aten), 1 (onednn) or 2 (onednn_fused), got ", gemm_mode);
  if (gemm_mode == kGemmOneDnn || gemm_mode == kGemmOneDnnFused) {
    FR_CHECK(x.is_cpu(), "gemm=", gemm_mode, " (oneDNN) runs on the CPU only; x is on ", x.device());
    FR_CHECK(onednn().supports(x.scalar_type()), "gemm=", gemm_mode, ": oneDNN has no ", x.scalar_type(),
             " inner product on this CPU; use -1 (auto) or 0 (aten)");
  }
  check_eps(eps);
  std::vector<Block> blocks = make_blocks(weights, level_offsets, block_kind, x, states, num_heads);
  const int64_t B = x.size(0), S = x.size(1), D = x.size(2);
  // RoPE tables (attention blocks only; mixer blocks have no positions to rotate)
  FR_CHECK(cos.has_value() == sin.has_value(), "cos and sin must be given together (or both None)");
  const bool use_rope = block_kind == kAttention && cos.has_value();
  if (use_rope) {
    for (const auto& b : blocks) check_rope_tables(*cos, *sin, x, S, b.head_dim);
  }
  const int64_t n_slots = static_cast<int64_t>(states.size()) + 1;
  check_program(program, n_slots, static_cast<int64_t>(level_offsets.size()) - 1);
  const int64_t n_steps = program.size(0), width = program.size(1);
  const int64_t* prog = program.const_data_ptr<int64_t>();

  at::DeviceGuard guard(x.device());
  auto ws = workspace_for(x);
  std::lock_guard<std::mutex> lock(ws->mu);
  const Plan plan = make_plan(blocks, block_kind, x, per_item_mode);
  Runner run;
  run.B = B;
  run.S = S;
  run.D = D;
  run.num_heads = num_heads;
  run.eps = eps;
  run.Lp = plan.Lp;
  run.nb = plan.nb;
  run.buf = workspace_buffer(*ws, plan.total, x);
  int64_t ops = 0;
  if (block_kind == kMixer) {
    run.mixT = run.region(plan.mix_off, {run.Lp, B * D});
    run.mixer_in = run.mixT.narrow(0, 0, S).view({S, B, D}).permute({1, 0, 2});
    int64_t off = plan.wpad_off;
    for (auto& b : blocks) {
      if (!plan.pad_weights) {
        b.w0_padded = b.w0;
        continue;
      }
      // Zero-padded token weights and the zero rows of the transposed state: once per call, not per step.
      b.w0_padded = run.region(off, {2 * b.mix_inter, run.Lp});
      b.w0_padded.narrow(1, 0, S).copy_(b.w0);
      b.w0_padded.narrow(1, S, run.Lp - S).zero_();
      off += align_up(2 * b.mix_inter * run.Lp);
      ops += 2;
    }
    if (plan.pad_weights) {
      run.mixT.narrow(0, S, run.Lp - S).zero_();
      ops += 1;
    }
  }
  if (use_rope) {
    run.cos = *cos;
    run.sin = *sin;
  }
  const size_t n_chunk_slots = static_cast<size_t>(plan.chunk_slots);
  for (size_t i = 0; i < n_chunk_slots; ++i) {
    run.views.push_back(
        run.chunk_views(blocks, block_kind, plan.chunks_off + static_cast<int64_t>(i) * plan.chunk.size, plan.chunk));
  }
  run.choose_gemms(blocks, block_kind, gemm_mode, x, plan.per_item);
  std::vector<at::Tensor> slot3;  // slot i as [B, S, D]: x, then the states
  slot3.push_back(x);
  for (const auto& t : states) slot3.push_back(t);
  std::vector<int64_t> slot_ops(n_chunk_slots, 0);
  if (!plan.per_item) {
    slot_ops[0] = run.run_program(prog, n_steps, width, level_offsets, blocks, block_kind, slot3, 0, 0);
  } else {
    const at::ThreadLocalState caller_tls;
    at::parallel_for(0, B / run.nb, 1, [&](int64_t c0, int64_t c1) {
      // Worker threads take the caller's thread-local state: grad mode (off: weights may require grad and
      // the _out GEMMs refuse those under autograd) and the profiler, so their ops show in a trace.
      at::ThreadLocalStateGuard tls_guard(caller_tls);
      const size_t slot = static_cast<size_t>(at::get_thread_num());
      FR_CHECK_RUN(slot < n_chunk_slots, "thread ", slot, " has no workspace (", n_chunk_slots,
                   " threads when the call started; do not change torch.set_num_threads during a call)");
      for (int64_t c = c0; c < c1; ++c) {
        slot_ops[slot] += run.run_program(prog, n_steps, width, level_offsets, blocks, block_kind, slot3, c * run.nb,
                                          slot);
      }
    });
  }
  for (auto n : slot_ops) ops += n;
  record_last_call(ops, plan.per_item);
}

}  // namespace fastrecur
