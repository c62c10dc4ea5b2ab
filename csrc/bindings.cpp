// fastrecur._C: the no-grad recursion of a recursive model's ACT step as one native call, plus the fused
// elementwise ops it is built from (exposed on their own for testing and reuse).
//
// Registered with TORCH_LIBRARY(fastrecur_C), so Python reaches everything as torch.ops.fastrecur_C.<op>.
// This is the only torch-facing translation unit (the CPU kernels are header-only, cpu_kernels.h; the CUDA
// kernels live in kernels.cu behind the torch-free interface cuda_api.h). FASTRECUR_WITH_CUDA is defined
// by the build when kernels.cu is compiled in.
//
// run_steps design:
// - States are [B, S, D] contiguous tensors, updated in place; slot 0 of the program is the input x,
//   slots 1..n the states (carried and scratch) in the order passed.
// - GEMMs go through at::mm_out into a preallocated workspace; attention goes through
//   at::scaled_dot_product_attention, which allocates its output (and, on some backends, statistics)
//   internally on every attention block -- the only per-step allocations.
// - The workspace is one flat buffer per (device, CUDA stream, dtype), kept in a process-wide cache and grown
//   (never shrunk) when a call needs more; clear_workspaces() releases it. workspace_info() reports how
//   many buffers were ever allocated, so tests can check that a repeated call allocates nothing new.
// - Two ways to use the threads (CPU; CUDA always runs the whole batch through each kernel): the whole batch
//   through each op, the threads splitting the op; or per item (use_per_item), each thread running whole
//   level calls on its own batch items with single-threaded GEMMs, so a block's intermediates stay in that
//   core's cache. The per-item mode issues (batch size)x more, smaller native ops.

#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/DeviceGuard.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "cpu_kernels.h"
#include "cuda_api.h"

#ifdef FASTRECUR_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace fastrecur {
namespace {

// Invalid arguments raise ValueError (shape, device, layout, aliasing) or TypeError (dtype) in Python, each
// naming the argument; failures while running (e.g. a CUDA launch error) raise RuntimeError.
#define FR_CHECK(cond, ...) TORCH_CHECK_VALUE(cond, "fastrecur_C: ", __VA_ARGS__)
#define FR_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, "fastrecur_C: ", __VA_ARGS__)
#define FR_CHECK_RUN(cond, ...) TORCH_CHECK(cond, "fastrecur_C: ", __VA_ARGS__)

// ---------------------------------------------------------------------------------------------------------
// Input checks
// ---------------------------------------------------------------------------------------------------------

bool is_act_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

void check_act(const at::Tensor& t, const std::string& name) {
  FR_CHECK(t.defined(), name, " is undefined");
  FR_CHECK_TYPE(is_act_dtype(t.scalar_type()), name, " must be float32, bfloat16 or float16, got ", t.scalar_type());
  FR_CHECK(t.device().is_cpu() || t.device().is_cuda(), name, " must be on CPU or CUDA, got ", t.device());
}

void check_like(const at::Tensor& t, const at::Tensor& ref, const std::string& name, const std::string& ref_name) {
  FR_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), name, " has dtype ", t.scalar_type(), " but ", ref_name, " has ",
           ref.scalar_type());
  FR_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name, " is on ", ref.device());
}

void check_contig(const at::Tensor& t, const std::string& name) {
  FR_CHECK(t.is_contiguous(), name, " must be contiguous (got strides ", t.strides(), ")");
}

// An output may be exactly one of its inputs (element for element) or disjoint from it; anything in
// between would make results depend on the order in which elements are processed.
void check_alias_ok(const at::Tensor& out, const at::Tensor& in, const std::string& out_name,
                    const std::string& in_name) {
  const auto st = at::get_overlap_status(out, in);
  if (st == at::MemOverlapStatus::No) return;
  const bool exact = out.data_ptr() == in.data_ptr() && out.sizes() == in.sizes() && out.strides() == in.strides();
  FR_CHECK(exact, out_name, " partially overlaps ", in_name, "; it must be the same tensor or not overlap it");
}

void check_disjoint(const at::Tensor& a, const at::Tensor& b, const std::string& a_name, const std::string& b_name) {
  FR_CHECK(at::get_overlap_status(a, b) == at::MemOverlapStatus::No, a_name, " and ", b_name,
           " share memory; they must be distinct, non-overlapping tensors");
}

void check_rope_tables(const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& x, int64_t seq_len,
                       int64_t head_dim) {
  for (const auto* p : {&cos, &sin}) {
    const std::string name = p == &cos ? "cos" : "sin";
    FR_CHECK(p->defined(), name, " is undefined");
    FR_CHECK_TYPE(p->scalar_type() == at::kFloat, name, " must be float32, got ", p->scalar_type());
    FR_CHECK(p->device() == x.device(), name, " is on ", p->device(), " but the activations are on ", x.device());
    FR_CHECK(p->dim() == 2 && p->size(0) == seq_len && p->size(1) == head_dim, name, " must have shape [",
             seq_len, ", ", head_dim, "] (seq_len, head_dim), got ", p->sizes());
    check_contig(*p, name);
  }
  FR_CHECK(head_dim % 2 == 0, "RoPE needs an even head_dim, got ", head_dim);
  FR_CHECK(head_dim <= cpu::kMaxHeadDim, "head_dim ", head_dim, " exceeds the supported maximum ",
           cpu::kMaxHeadDim);
}

// ---------------------------------------------------------------------------------------------------------
// Device dispatch of the fused elementwise kernels (arguments already validated)
// ---------------------------------------------------------------------------------------------------------

[[maybe_unused]] cuda::DType cuda_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::DType::kFloat;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    default: return cuda::DType::kHalf;
  }
}

#ifdef FASTRECUR_WITH_CUDA
void* cuda_stream(const at::Tensor& t) {
  return static_cast<void*>(c10::cuda::getCurrentCUDAStream(t.device().index()).stream());
}
void check_launch(int code, const char* what) {
  FR_CHECK_RUN(code == 0, what, " kernel launch failed: ", cuda::error_string(code));
}
#else
[[noreturn]] void no_cuda() {
  FR_CHECK_RUN(false, "this build of fastrecur._C has no CUDA kernels (built without nvcc or a CUDA build of torch); "
                  "rebuild it on a machine with CUDA_HOME set, or run on CPU");
}
#endif

#define FR_DISPATCH_CPU(dtype, ...)                                                              \
  switch (dtype) {                                                                               \
    case at::kFloat: { using T = float; __VA_ARGS__; break; }                                    \
    case at::kBFloat16: { using T = c10::BFloat16; __VA_ARGS__; break; }                         \
    case at::kHalf: { using T = c10::Half; __VA_ARGS__; break; }                                 \
    default: FR_CHECK_TYPE(false, "unsupported dtype ", dtype);                                       \
  }

// Profiler label of a fused kernel (visible in torch.profiler next to the ATen ops it sits between).
#define FR_RECORD(name) RECORD_FUNCTION(name, c10::ArrayRef<const c10::IValue>{})

// The optional second destination of finished rows, as a [n0, seq, cols] view with a contiguous last dim
// (undefined: none). The caller validated it.
[[maybe_unused]] cuda::RowCopy cuda_row_copy(const at::Tensor& c) {
  if (!c.defined()) return cuda::RowCopy{nullptr, 1, 0, 0};
  return cuda::RowCopy{c.data_ptr(), c.size(1), c.stride(0), c.stride(1)};
}
template <typename T>
cpu::RowCopy<T> cpu_row_copy(const at::Tensor& c) {
  cpu::RowCopy<T> rc;
  if (c.defined()) {
    rc.ptr = c.data_ptr<T>();
    rc.seq = c.size(1);
    rc.s0 = c.stride(0);
    rc.s1 = c.stride(1);
  }
  return rc;
}

// out, a, b: 2D [rows, cols] views with stride(1) == 1; copy: see cuda_row_copy (rows == n0 * seq).
void k_add_rms_norm_rows(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double eps,
                         const at::Tensor& copy = at::Tensor()) {
  FR_RECORD("fastrecur::add_rms_norm");
  const int64_t rows = out.size(0), cols = out.size(1);
  if (out.is_cuda()) {
#ifdef FASTRECUR_WITH_CUDA
    check_launch(cuda::add_rms_norm_rows(cuda_dtype(out.scalar_type()), out.data_ptr(), out.stride(0), a.data_ptr(),
                                         a.stride(0), b.data_ptr(), b.stride(0), rows, cols,
                                         static_cast<float>(eps), cuda_row_copy(copy), cuda_stream(out)),
                 "add_rms_norm");
#else
    no_cuda();
#endif
    return;
  }
  FR_DISPATCH_CPU(out.scalar_type(),
                  cpu::add_rms_norm_rows<T>(out.data_ptr<T>(), out.stride(0), a.const_data_ptr<T>(), a.stride(0),
                                            b.const_data_ptr<T>(), b.stride(0), rows, cols, static_cast<float>(eps),
                                            cpu_row_copy<T>(copy)));
}

// target: contiguous [rows, cols]; srcs: contiguous tensors of the same shape (at most cuda::kMaxInject);
// target += (srcs[0] + srcs[1] + ...) in eager's order and rounding; copy: see cuda_row_copy.
void k_inject_add(const at::Tensor& target, const std::vector<at::Tensor>& srcs, const at::Tensor& copy) {
  FR_RECORD("fastrecur::inject_add");
  const int64_t rows = target.size(0), cols = target.size(1);
  const int n_src = static_cast<int>(srcs.size());
  if (target.is_cuda()) {
#ifdef FASTRECUR_WITH_CUDA
    cuda::InjectSources src{};
    for (int j = 0; j < n_src; ++j) src.p[j] = srcs[j].data_ptr();
    check_launch(cuda::inject_add(cuda_dtype(target.scalar_type()), target.data_ptr(), src, n_src, rows, cols,
                                  cuda_row_copy(copy), cuda_stream(target)),
                 "inject_add");
#else
    no_cuda();
#endif
    return;
  }
  FR_DISPATCH_CPU(target.scalar_type(), {
    std::vector<const T*> p;
    for (const auto& t : srcs) p.push_back(t.const_data_ptr<T>());
    cpu::inject_add<T>(target.data_ptr<T>(), p.data(), n_src, rows, cols, cpu_row_copy<T>(copy));
  });
}

// out, gate, up: 2D [rows, cols] views with stride(1) == 1.
void k_swiglu(const at::Tensor& out, const at::Tensor& gate, const at::Tensor& up) {
  FR_RECORD("fastrecur::swiglu");
  const int64_t rows = out.size(0), cols = out.size(1);
  if (out.is_cuda()) {
#ifdef FASTRECUR_WITH_CUDA
    check_launch(cuda::swiglu(cuda_dtype(out.scalar_type()), out.data_ptr(), out.stride(0), gate.data_ptr(),
                              gate.stride(0), up.data_ptr(), up.stride(0), rows, cols, cuda_stream(out)),
                 "swiglu");
#else
    no_cuda();
#endif
    return;
  }
  FR_DISPATCH_CPU(out.scalar_type(),
                  cpu::swiglu<T>(out.data_ptr<T>(), out.stride(0), gate.const_data_ptr<T>(), gate.stride(0),
                                 up.const_data_ptr<T>(), up.stride(0), rows, cols));
}

// x: 2D [rows, >= heads * head_dim] view with stride(1) == 1; rotates the first `heads` heads of each row.
void k_rope(const at::Tensor& x, int64_t heads, int64_t head_dim, int64_t seq_len, const at::Tensor& cos,
            const at::Tensor& sin) {
  FR_RECORD("fastrecur::rope");
  const int64_t rows = x.size(0);
  if (x.is_cuda()) {
#ifdef FASTRECUR_WITH_CUDA
    check_launch(cuda::rope(cuda_dtype(x.scalar_type()), x.data_ptr(), x.stride(0), rows, heads, head_dim, seq_len,
                            cos.const_data_ptr<float>(), sin.const_data_ptr<float>(), cuda_stream(x)),
                 "rope");
#else
    no_cuda();
#endif
    return;
  }
  FR_DISPATCH_CPU(x.scalar_type(), cpu::rope<T>(x.data_ptr<T>(), x.stride(0), rows, heads, head_dim, seq_len,
                                                cos.const_data_ptr<float>(), sin.const_data_ptr<float>()));
}

// out, a, b: 3D [n0, n1, n2] views with stride(2) == 1; norm over axis 1.
void k_add_rms_norm_dim1(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double eps) {
  FR_RECORD("fastrecur::add_rms_norm_dim1");
  const int64_t n0 = out.size(0), n1 = out.size(1), n2 = out.size(2);
  if (out.is_cuda()) {
#ifdef FASTRECUR_WITH_CUDA
    auto st = [](const at::Tensor& t) { return cuda::Strides3{t.stride(0), t.stride(1), t.stride(2)}; };
    check_launch(cuda::add_rms_norm_dim1(cuda_dtype(out.scalar_type()), out.data_ptr(), st(out), a.data_ptr(), st(a),
                                         b.data_ptr(), st(b), n0, n1, n2, static_cast<float>(eps), cuda_stream(out)),
                 "add_rms_norm_dim1");
#else
    no_cuda();
#endif
    return;
  }
  FR_DISPATCH_CPU(out.scalar_type(),
                  cpu::add_rms_norm_dim1<T>(out.data_ptr<T>(), out.strides().data(), a.const_data_ptr<T>(),
                                            a.strides().data(), b.const_data_ptr<T>(), b.strides().data(), n0, n1,
                                            n2, static_cast<float>(eps)));
}

// ---------------------------------------------------------------------------------------------------------
// Public elementwise ops (validated)
// ---------------------------------------------------------------------------------------------------------

void check_eps(double eps) {
  FR_CHECK(std::isfinite(eps) && eps >= 0.0, "eps must be a finite, non-negative number, got ", eps);
}

// out = rms_norm(a + b) over the last dim.
void add_rms_norm_op(const at::Tensor& a, const at::Tensor& b, double eps, const at::Tensor& out) {
  check_act(a, "a");
  check_like(b, a, "b", "a");
  check_like(out, a, "out", "a");
  FR_CHECK(a.dim() >= 1 && a.numel() > 0, "a must be a non-empty tensor with at least one dim, got ", a.sizes());
  FR_CHECK(b.sizes() == a.sizes() && out.sizes() == a.sizes(), "a, b and out must have the same shape, got ",
           a.sizes(), ", ", b.sizes(), ", ", out.sizes());
  check_contig(a, "a");
  check_contig(b, "b");
  check_contig(out, "out");
  check_alias_ok(out, a, "out", "a");
  check_alias_ok(out, b, "out", "b");
  check_eps(eps);
  at::DeviceGuard guard(a.device());
  const int64_t cols = a.size(-1);
  k_add_rms_norm_rows(out.view({-1, cols}), a.view({-1, cols}), b.view({-1, cols}), eps);
}

// out = silu(gate_up[..., :I]) * gate_up[..., I:].
void swiglu_op(const at::Tensor& gate_up, const at::Tensor& out) {
  check_act(gate_up, "gate_up");
  check_like(out, gate_up, "out", "gate_up");
  FR_CHECK(gate_up.dim() >= 1 && gate_up.size(-1) % 2 == 0 && gate_up.numel() > 0,
           "gate_up must be non-empty with an even last dim [..., 2*I], got ", gate_up.sizes());
  auto expect = gate_up.sizes().vec();
  expect.back() /= 2;
  FR_CHECK(out.sizes() == at::IntArrayRef(expect), "out must have shape ", expect, ", got ", out.sizes());
  check_contig(gate_up, "gate_up");
  check_contig(out, "out");
  check_disjoint(out, gate_up, "out", "gate_up");
  at::DeviceGuard guard(out.device());
  const int64_t inter = out.size(-1);
  auto gu = gate_up.view({-1, 2 * inter});
  k_swiglu(out.view({-1, inter}), gu.narrow(1, 0, inter), gu.narrow(1, inter, inter));
}

// In place RoPE on x [B, S, H, head_dim].
void rope_op(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  check_act(x, "x");
  FR_CHECK(x.dim() == 4 && x.numel() > 0, "x must be a non-empty [B, S, H, head_dim] tensor, got ", x.sizes());
  check_contig(x, "x");
  check_rope_tables(cos, sin, x, x.size(1), x.size(3));
  at::DeviceGuard guard(x.device());
  k_rope(x.view({x.size(0) * x.size(1), x.size(2) * x.size(3)}), x.size(2), x.size(3), x.size(1), cos, sin);
}

// out = rms_norm over dim 1 of (a + b), for [n0, n1, n2] tensors whose last dim is contiguous.
void add_rms_norm_dim1_op(const at::Tensor& a, const at::Tensor& b, double eps, const at::Tensor& out) {
  check_act(a, "a");
  check_like(b, a, "b", "a");
  check_like(out, a, "out", "a");
  FR_CHECK(a.dim() == 3 && a.numel() > 0, "a must be a non-empty 3-D tensor [N, L, D], got ", a.sizes());
  FR_CHECK(b.sizes() == a.sizes() && out.sizes() == a.sizes(), "a, b and out must have the same shape, got ",
           a.sizes(), ", ", b.sizes(), ", ", out.sizes());
  for (const auto* p : {&a, &b, &out}) {
    const std::string name = p == &a ? "a" : (p == &b ? "b" : "out");
    FR_CHECK(p->stride(2) == 1, name, " must have a contiguous last dim (stride 1), got strides ", p->strides());
  }
  FR_CHECK(at::has_internal_overlap(out) == at::MemOverlap::No, "out must not overlap itself (e.g. an expanded view)");
  check_alias_ok(out, a, "out", "a");
  check_alias_ok(out, b, "out", "b");
  check_eps(eps);
  at::DeviceGuard guard(a.device());
  k_add_rms_norm_dim1(out, a, b, eps);
}

// ---------------------------------------------------------------------------------------------------------
// Workspace cache
// ---------------------------------------------------------------------------------------------------------

struct Workspace {
  std::mutex mu;  // held for a whole run_steps call: the buffer is not shared between concurrent calls
  at::Tensor buf;
};

// (device type, device index, CUDA stream id or 0, dtype): calls on different streams get different
// buffers, so work queued on one stream never races with another stream's use of the buffer.
using WsKey = std::tuple<int, int, int64_t, int>;

std::mutex g_ws_mu;
// Never destroyed: a static destructor runs after the CUDA runtime has shut down, and freeing a CUDA buffer
// then aborts the process at exit (seen on an H100 with PYTORCH_NO_CUDA_MEMORY_CACHING=1). The OS reclaims it.
std::map<WsKey, std::shared_ptr<Workspace>>& g_ws = *new std::map<WsKey, std::shared_ptr<Workspace>>();
std::atomic<int64_t> g_ws_allocs{0};
std::atomic<int64_t> g_last_native_ops{0};
std::atomic<int64_t> g_last_per_item{0};

std::shared_ptr<Workspace> workspace_for(const at::Tensor& x) {
  int64_t stream = 0;
#ifdef FASTRECUR_WITH_CUDA
  if (x.is_cuda()) stream = c10::cuda::getCurrentCUDAStream(x.device().index()).id();
#endif
  const WsKey key{static_cast<int>(x.device().type()), static_cast<int>(x.device().index()), stream,
                  static_cast<int>(x.scalar_type())};
  std::lock_guard<std::mutex> lock(g_ws_mu);
  auto& ws = g_ws[key];
  if (!ws) ws = std::make_shared<Workspace>();
  return ws;
}

std::vector<int64_t> workspace_info_op() {
  std::lock_guard<std::mutex> lock(g_ws_mu);
  int64_t bytes = 0;
  for (const auto& kv : g_ws) {
    if (kv.second->buf.defined()) bytes += kv.second->buf.nbytes();
  }
  return {g_ws_allocs.load(), static_cast<int64_t>(g_ws.size()), bytes, g_last_native_ops.load(),
          g_last_per_item.load()};
}

void clear_workspaces_op() {
  std::lock_guard<std::mutex> lock(g_ws_mu);
  g_ws.clear();  // a call in flight keeps its shared_ptr alive until it finishes
}

#ifndef FASTRECUR_CPU_ISA
#define FASTRECUR_CPU_ISA default
#endif
#define FR_STRINGIFY2(x) #x
#define FR_STRINGIFY(x) FR_STRINGIFY2(x)
// The x86 instruction set the CPU kernels were compiled for (csrc/build_config.py).
std::string cpu_isa_op() { return FR_STRINGIFY(FASTRECUR_CPU_ISA); }

bool has_cuda_kernels_op() {
#ifdef FASTRECUR_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// ---------------------------------------------------------------------------------------------------------
// run_steps: the no-grad recursion
// ---------------------------------------------------------------------------------------------------------

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

// The token-mixer's first GEMM contracts over the sequence axis L (97 for Sudoku). An odd or unaligned K is a
// slow path for 16-bit GEMMs (oneDNN bf16 on an AMD EPYC CPU: about 13x slower for K = 97 than K = 98) and for
// cuBLAS's tensor-core kernels (16-byte aligned rows, also for TF32), so L is zero-padded to a multiple of
// kTokenPad there. CPU fp32 rows are not padded: there the padding only added FLOPs (K = 104 took 7 % longer
// than K = 97 with MKL).
constexpr int64_t kTokenPad = 8;
int64_t token_rows(int64_t L, const at::Tensor& x) {
  const bool pad = x.is_cuda() || at::elementSize(x.scalar_type()) == 2;
  return pad ? (L + kTokenPad - 1) / kTokenPad * kTokenPad : L;
}

// A weight [rows, cols] in nn.Linear layout. `transposable`: weights used as the right-hand GEMM operand
// (h @ W.T) may also be the transpose of a contiguous [cols, rows] tensor (W.T contiguous), the faster layout
// for single-threaded CPU GEMMs with few rows (fastrecur.models caches it so on CPU).
void check_weight(const at::Tensor& w, const at::Tensor& x, const std::string& name, int64_t rows, int64_t cols,
                  bool transposable = false) {
  FR_CHECK(w.defined(), name, " is undefined");
  check_like(w, x, name, "x");
  FR_CHECK(w.dim() == 2, name, " must be 2-D, got shape ", w.sizes());
  FR_CHECK((rows < 0 || w.size(0) == rows) && (cols < 0 || w.size(1) == cols), name, " must have shape [",
           rows < 0 ? std::string("*") : std::to_string(rows), ", ", cols < 0 ? std::string("*") : std::to_string(cols),
           "], got ", w.sizes());
  FR_CHECK(w.numel() > 0, name, " is empty");
  if (transposable && !w.is_contiguous()) {
    FR_CHECK(w.t().is_contiguous(), name, " must be contiguous or the transpose of a contiguous tensor (got strides ",
             w.strides(), ")");
    return;
  }
  check_contig(w, name);
}

Block make_block(at::TensorList weights, int64_t idx, int64_t kind, const at::Tensor& x, int64_t num_heads) {
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

// Workspace regions, offsets in elements, each on a 64-element boundary.
// Shared by all chunks: the mixer's transposed state [Lp, B, D] (rows S..Lp-1 zero) and the zero-padded token
// weights. Per chunk (a group of batch items that run a block together): one block's GEMM outputs and
// activations.
struct ChunkLayout {
  int64_t o = 0, qkv = 0, gu = 0, act = 0, size = 0;
};

int64_t align_up(int64_t n) { return (n + 63) / 64 * 64; }

ChunkLayout plan_chunk(const std::vector<Block>& blocks, int64_t kind, int64_t nb, int64_t S, int64_t D) {
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

// Views of one chunk's workspace and of the transposed weights that one block uses, made once per run_steps
// call: the loop then issues only kernels. (A view costs about a microsecond of dispatch, and an ACT step would
// otherwise make over a thousand of them.)
struct BlockViews {
  at::Tensor gate_up_t, down_t;          // channel MLP weights, transposed views
  at::Tensor gu, gate, up, act, o;       // channel MLP: [M, 2I], its halves, [M, I], [M, D]
  at::Tensor w0_t, w1_t, qkv, q, k, v;   // attention: weights, [M, 3*H*hd] and the q/k/v [nb, H, S, hd] views
  at::Tensor att_scratch, att_scratch4;  // attention output when SDPA's is not [nb, S, H, hd] contiguous
  at::Tensor G, Ggate, Gup, tact, outT, outT3;  // mixer: [2*It, N], halves, [It, N], [S, N], [nb, S, D]
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
        auto q5 = v.qkv.view({nb, S, 3, H, hd});
        v.q = q5.select(2, 0).transpose(1, 2);
        v.k = q5.select(2, 1).transpose(1, 2);
        v.v = q5.select(2, 2).transpose(1, 2);
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

  // h2 = rms_norm(h2 + (silu(gate) * up) @ down.T) with [gate | up] = h2 @ gate_up.T; the new rows are also
  // written to `copy` when defined (the next mixer block's input). Returns the native ops issued.
  int64_t mlp(const at::Tensor& h2, BlockViews& v, const at::Tensor& copy = at::Tensor()) const {
    at::mm_out(v.gu, h2, v.gate_up_t);
    k_swiglu(v.act, v.gate, v.up);
    at::mm_out(v.o, v.act, v.down_t);
    k_add_rms_norm_rows(h2, h2, v.o, eps, copy);
    return 4;
  }

  int64_t attention_block(const ChunkIO& io, const Block& b, BlockViews& v) const {
    const int64_t M = nb * S, H = num_heads, hd = b.head_dim;
    int64_t ops = 0;
    at::mm_out(v.qkv, io.h2, v.w0_t);
    ops += 1;
    if (cos) {
      k_rope(v.qkv, 2 * H, hd, S, *cos, *sin);  // q and k heads are the first 2*H heads of each row
      ops += 1;
    }
    // Allocates its output internally (see the file comment).
    auto att = at::scaled_dot_product_attention(v.q, v.k, v.v, std::nullopt, 0.0, false, 1.0 / std::sqrt(double(hd)))
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
    at::mm_out(v.o, a2, v.w1_t);
    k_add_rms_norm_rows(io.h2, io.h2, v.o, eps);
    return ops + 2 + mlp(io.h2, v);
  }

  // Token mixing in the [L, nb*D] layout, so both token GEMMs are single GEMMs over the chunk:
  // G = t_gate_up @ hT; act = silu(G[:I_t]) * G[I_t:]; out = t_down @ act;
  // h = rms_norm over L of (hT + out), written straight back into h's [nb, L, D] layout.
  // hT (rows S..Lp-1 zero) must already hold h transposed: the kernel that last wrote h wrote it too (the
  // injection, or the previous block's MLP norm), which saves a transpose copy per block.
  // next_is_mixer: this level call runs another block after this one (its input copy is written here).
  int64_t mixer_block(const ChunkIO& io, const Block& b, BlockViews& v, bool next_is_mixer) const {
    at::mm_out(v.G, b.w0_padded, io.hT);
    k_swiglu(v.tact, v.Ggate, v.Gup);
    at::mm_out(v.outT, b.w1, v.tact);
    k_add_rms_norm_dim1(io.h3, io.hT3, v.outT3, eps);
    return 4 + mlp(io.h2, v, next_is_mixer ? io.hT3 : at::Tensor());
  }

  // Blocks [first, last) on the chunk at batch item b0, with chunk slot `slot`'s workspace.
  int64_t level_chunk(const std::vector<Block>& blocks, int64_t kind, int64_t first, int64_t last,
                      const at::Tensor& target, int64_t b0, size_t slot) {
    const ChunkIO io = chunk_io(target, b0, kind == kMixer);
    int64_t ops = 0;
    for (int64_t bi = first; bi < last; ++bi) {
      ops += kind == kAttention ? attention_block(io, blocks[bi], views[slot][bi])
                                : mixer_block(io, blocks[bi], views[slot][bi], bi + 1 < last);
    }
    return ops;
  }
};

// Per-item mode (CPU only): each thread runs whole level calls on its own batch items with single-threaded
// GEMMs, so a block's intermediates (up to a few MB per item) stay in that core's cache instead of streaming
// through memory between ops, and threads never wait for each other inside a block. Chosen when there are at
// least as many items as threads; with fewer, the whole batch goes through each op and the threads split
// the op. Same results either way up to GEMM rounding (the GEMMs see other shapes).
bool use_per_item(const at::Tensor& x, int64_t mode) {
  if (mode >= 0) return mode == 1 && x.is_cpu();
  return x.is_cpu() && x.size(0) > 1 && x.size(0) >= at::get_num_threads();
}

// Items per chunk in the per-item mode: 2 for 16-bit types when the batch splits evenly (two items' bf16
// intermediates take the bytes of one fp32 item, and single-threaded bf16 GEMMs on 194 rows ran 3 % faster
// than on 97), else 1.
int64_t items_per_chunk(int64_t B, at::ScalarType dtype) {
  return at::elementSize(dtype) == 2 && B % 2 == 0 ? 2 : 1;
}

void run_steps_op(at::TensorList states, const at::Tensor& x, const at::Tensor& program, at::TensorList weights,
                  at::IntArrayRef level_offsets, const std::optional<at::Tensor>& cos,
                  const std::optional<at::Tensor>& sin, int64_t num_heads, double eps, int64_t block_kind,
                  int64_t per_item_mode) {
  // ---- activations
  check_act(x, "x");
  FR_CHECK(x.dim() == 3 && x.numel() > 0, "x must be a non-empty [B, S, D] tensor, got ", x.sizes());
  check_contig(x, "x");
  const int64_t B = x.size(0), S = x.size(1), D = x.size(2);
  const int64_t n_slots = static_cast<int64_t>(states.size()) + 1;
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
  // ---- levels and weights
  FR_CHECK(block_kind == kAttention || block_kind == kMixer, "block_kind must be 0 (attention) or 1 (mixer), got ",
           block_kind);
  FR_CHECK(per_item_mode >= -1 && per_item_mode <= 1, "per_item must be -1 (auto), 0 or 1, got ", per_item_mode);
  FR_CHECK(block_kind != kAttention || num_heads >= 1, "num_heads must be >= 1, got ", num_heads);
  check_eps(eps);
  FR_CHECK(level_offsets.size() >= 2 && level_offsets[0] == 0,
           "level_offsets must start at 0 and hold n_levels + 1 block offsets, got ", level_offsets);
  for (size_t i = 1; i < level_offsets.size(); ++i) {
    FR_CHECK(level_offsets[i] >= level_offsets[i - 1], "level_offsets must be non-decreasing, got ", level_offsets);
  }
  const int64_t n_levels = static_cast<int64_t>(level_offsets.size()) - 1;
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
  // ---- RoPE tables (attention blocks only; mixer blocks have no positions to rotate)
  FR_CHECK(cos.has_value() == sin.has_value(), "cos and sin must be given together (or both None)");
  const bool use_rope = block_kind == kAttention && cos.has_value();
  if (use_rope) {
    for (const auto& b : blocks) check_rope_tables(*cos, *sin, x, S, b.head_dim);
  }
  // ---- program
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

  // ---- run
  at::DeviceGuard guard(x.device());
  auto ws = workspace_for(x);
  std::lock_guard<std::mutex> lock(ws->mu);
  Runner run;
  run.B = B;
  run.S = S;
  run.D = D;
  run.num_heads = num_heads;
  run.eps = eps;
  run.Lp = token_rows(S, x);
  const bool per_item = use_per_item(x, per_item_mode);
  run.nb = per_item ? items_per_chunk(B, x.scalar_type()) : B;
  const size_t n_chunk_slots = per_item ? static_cast<size_t>(at::get_num_threads()) : 1;
  const ChunkLayout cl = plan_chunk(blocks, block_kind, run.nb, S, D);
  // Shared regions first (mixer only), then one chunk layout per slot.
  int64_t total = 0;
  const int64_t mix_off = total;
  const bool pad_weights = block_kind == kMixer && run.Lp > S;
  if (block_kind == kMixer) total += align_up(run.Lp * B * D);
  const int64_t wpad_off = total;
  if (pad_weights) {
    for (const auto& b : blocks) total += align_up(2 * b.mix_inter * run.Lp);
  }
  const int64_t chunks_off = total;
  total += static_cast<int64_t>(n_chunk_slots) * cl.size;
  if (!ws->buf.defined() || ws->buf.numel() < total) {
    ws->buf = at::Tensor();  // release the old buffer before allocating the larger one
    ws->buf = at::empty({total}, x.options());
    g_ws_allocs.fetch_add(1);
  }
  run.buf = ws->buf;
  int64_t ops = 0;
  if (block_kind == kMixer) {
    run.mixT = run.region(mix_off, {run.Lp, B * D});
    run.mixer_in = run.mixT.narrow(0, 0, S).view({S, B, D}).permute({1, 0, 2});
    int64_t off = wpad_off;
    for (auto& b : blocks) {
      if (!pad_weights) {
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
    if (pad_weights) {
      run.mixT.narrow(0, S, run.Lp - S).zero_();
      ops += 1;
    }
  }
  if (use_rope) {
    run.cos = *cos;
    run.sin = *sin;
  }
  for (size_t i = 0; i < n_chunk_slots; ++i) {
    run.views.push_back(run.chunk_views(blocks, block_kind, chunks_off + static_cast<int64_t>(i) * cl.size, cl));
  }
  const int64_t M = B * S;
  // Slot i as [B, S, D] and as [M, D] (views made once per call).
  std::vector<at::Tensor> slot3, slot2;
  slot3.push_back(x);
  for (const auto& t : states) slot3.push_back(t);
  for (const auto& t : slot3) slot2.push_back(t.view({M, D}));
  const at::Tensor none;
  std::vector<at::Tensor> srcs;
  std::vector<int64_t> slot_ops(n_chunk_slots, 0);
  const at::ThreadLocalState caller_tls;
  for (int64_t s = 0; s < n_steps; ++s) {
    const int64_t* r = prog + s * width;
    const at::Tensor& target = slot3[r[1]];
    if (r[0] == kCopy) {
      if (r[2] != r[1]) {
        target.copy_(slot3[r[2]]);
        ops += 1;
      }
      continue;
    }
    // target = target + (inj_0 + inj_1 + ...), summed in the order given, like the eager loop; one fused
    // kernel, which also writes the transposed copy a first mixer block reads.
    const int64_t n_inj = r[3];
    const int64_t* inj = r + kProgramHeader;
    const int64_t first = level_offsets[r[2]], last = level_offsets[r[2] + 1];
    const bool mixer = block_kind == kMixer && last > first;
    if (n_inj > 0 || mixer) {
      srcs.clear();
      for (int64_t j = 0; j < n_inj; ++j) srcs.push_back(slot2[inj[j]]);
      k_inject_add(slot2[r[1]], srcs, mixer ? run.mixer_in : none);
      ops += 1;
    }
    if (last == first) continue;
    if (!per_item) {
      ops += run.level_chunk(blocks, block_kind, first, last, target, 0, 0);
      continue;
    }
    at::parallel_for(0, B / run.nb, 1, [&](int64_t c0, int64_t c1) {
      // Worker threads take the caller's thread-local state: grad mode (off: weights may require grad and
      // the _out GEMMs refuse those under autograd) and the profiler, so their ops show in a trace.
      at::ThreadLocalStateGuard tls_guard(caller_tls);
      const size_t slot = static_cast<size_t>(at::get_thread_num());
      FR_CHECK_RUN(slot < n_chunk_slots, "thread ", slot, " has no workspace (", n_chunk_slots,
                   " threads when the call started; do not change torch.set_num_threads during a call)");
      for (int64_t c = c0; c < c1; ++c) {
        slot_ops[slot] += run.level_chunk(blocks, block_kind, first, last, target, c * run.nb, slot);
      }
    });
  }
  for (auto n : slot_ops) ops += n;
  g_last_native_ops.store(ops);
  g_last_per_item.store(per_item ? 1 : 0);
}

}  // namespace
}  // namespace fastrecur

TORCH_LIBRARY(fastrecur_C, m) {
  m.def("add_rms_norm(Tensor a, Tensor b, float eps, Tensor(a!) out) -> ()");
  m.def("swiglu(Tensor gate_up, Tensor(a!) out) -> ()");
  m.def("rope_(Tensor(a!) x, Tensor cos, Tensor sin) -> ()");
  m.def("add_rms_norm_dim1(Tensor a, Tensor b, float eps, Tensor(a!) out) -> ()");
  m.def(
      "run_steps(Tensor(a!)[] states, Tensor x, Tensor program, Tensor[] weights, int[] level_offsets, "
      "Tensor? cos, Tensor? sin, int num_heads, float eps, int block_kind, int per_item=-1) -> ()");
  m.def("workspace_info() -> int[]", &fastrecur::workspace_info_op);
  m.def("clear_workspaces() -> ()", &fastrecur::clear_workspaces_op);
  m.def("has_cuda_kernels() -> bool", &fastrecur::has_cuda_kernels_op);
  m.def("cpu_isa() -> str", &fastrecur::cpu_isa_op);
}

TORCH_LIBRARY_IMPL(fastrecur_C, CPU, m) {
  m.impl("add_rms_norm", &fastrecur::add_rms_norm_op);
  m.impl("swiglu", &fastrecur::swiglu_op);
  m.impl("rope_", &fastrecur::rope_op);
  m.impl("add_rms_norm_dim1", &fastrecur::add_rms_norm_dim1_op);
  m.impl("run_steps", &fastrecur::run_steps_op);
}

TORCH_LIBRARY_IMPL(fastrecur_C, CUDA, m) {
  m.impl("add_rms_norm", &fastrecur::add_rms_norm_op);
  m.impl("swiglu", &fastrecur::swiglu_op);
  m.impl("rope_", &fastrecur::rope_op);
  m.impl("add_rms_norm_dim1", &fastrecur::add_rms_norm_dim1_op);
  m.impl("run_steps", &fastrecur::run_steps_op);
}

// Importing fastrecur._C loads this library, which runs the registrations above; the Python module itself is
// empty (the ops live under torch.ops.fastrecur_C).
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "fastrecur native ops (torch.ops.fastrecur_C)",
                                          -1, nullptr};
  return PyModule_Create(&module_def);
}
