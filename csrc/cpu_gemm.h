// The loop's GEMMs on the CPU, and which library runs each: ATen (at::mm_out: MKL for fp32, oneDNN for 16-bit
// types) or oneDNN's inner product directly, optionally with SwiGLU fused into it as post-ops (swish on the gate
// GEMM, binary multiply on the up GEMM), as the issue "#16: the no-grad loop at its GEMM floor" asks to measure.
//
// oneDNN is reached through torch's own op mkldnn::_linear_pointwise (the one Inductor's CPU fusion emits):
// torch ships oneDNN's headers but not its symbols, so the dispatcher is the only stable way in. That op
// allocates its output; ATen's GEMMs write into the workspace.
//
// Which one wins depends on the CPU, dtype, shape and threads. Measured on a 2-core AMD EPYC (Zen 4, no AMX;
// benchmarks/README.md, "The loop's GEMM library"): in fp32 oneDNN's GEMMs beat MKL's, by 5-16 % per GEMM on one
// thread and enough on two that the TRM-MLP Sudoku ACT step at batch 1 took 160 ms against 242 ms; in bf16 ATen
// already calls oneDNN and stays fastest; the SwiGLU post-ops were within a few % of GEMM + kernel, either way,
// per site, and 8-15 % slower over a bf16 step. So by default each GEMM site of a run_steps call is timed once
// per process with its shapes, dtype and threading (choose_gemm), and the fastest implementation is kept; ATen
// stays unless another is faster by kGemmMargin, so timing noise rarely flips a choice. Implementations round
// differently, so results are reproducible bit for bit across processes only with a fixed choice
// (FASTRECUR_CPU_GEMM / run_steps_cpp's `gemm`).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "checks.h"

namespace fastrecur {

// run_steps' `gemm` argument and the choice per GEMM site.
enum GemmImpl : int64_t {
  kGemmAuto = -1,        // measured per site (CPU); ATen on CUDA
  kGemmAten = 0,         // at::mm_out into the workspace
  kGemmOneDnn = 1,       // oneDNN's inner product
  kGemmOneDnnFused = 2,  // oneDNN, with SwiGLU as post-ops where a SwiGLU follows (else plain oneDNN)
};

// Another implementation replaces ATen only when it takes at most this fraction of ATen's time (3 % let a bf16
// site flip to oneDNN on timing noise and cost its step 3 %: benchmarks/README.md, "The loop's GEMM library").
constexpr double kGemmMargin = 0.95;

// torch's mkldnn::_linear_pointwise (y = attr(x @ w.T)) and its .binary overload (y = attr(x @ w.T, other)).
class OneDnnLinear {
 public:
  // nullptr when this torch has no oneDNN (built without USE_MKLDNN).
  static const OneDnnLinear* get() {
    static const OneDnnLinear* inst = [] {
      auto& d = c10::Dispatcher::singleton();
      auto u = d.findSchema({"mkldnn::_linear_pointwise", ""});
      auto b = d.findSchema({"mkldnn::_linear_pointwise", "binary"});
      return u && b ? new OneDnnLinear(*u, *b) : nullptr;
    }();
    return inst;
  }

  // x [M, K] @ w.T for w [N, K] (any strides), then `attr` ("none" or "swish") -> new [M, N] tensor.
  at::Tensor linear(const at::Tensor& x, const at::Tensor& w, c10::string_view attr = "none") const {
    return unary_.call(x, w, std::nullopt, attr, c10::List<std::optional<c10::Scalar>>(), std::nullopt);
  }
  // attr(x @ w.T, other) for attr "mul" or "add", other [M, N] contiguous -> new [M, N] tensor.
  at::Tensor linear_binary(const at::Tensor& x, const at::Tensor& other, const at::Tensor& w,
                           c10::string_view attr) const {
    return binary_.call(x, other, w, std::nullopt, attr);
  }

  // Whether oneDNN runs this dtype's inner product on this CPU (fp16 needs AVX512-FP16 or AMX-FP16; bf16 AVX-512
  // or AVX-NE-CONVERT); probed once per dtype.
  bool supports(at::ScalarType dtype) const {
    static std::mutex mu;
    static std::map<int, bool> known;
    std::lock_guard<std::mutex> lock(mu);
    auto it = known.find(static_cast<int>(dtype));
    if (it != known.end()) return it->second;
    bool ok = true;
    try {
      const auto opts = at::TensorOptions().dtype(dtype);
      linear_binary(at::ones({4, 16}, opts), linear(at::ones({4, 16}, opts), at::ones({16, 16}, opts), "swish"),
                    at::ones({16, 16}, opts), "mul");
    } catch (const std::exception&) {  // c10::Error, or dnnl::error from oneDNN itself
      ok = false;
    }
    known[static_cast<int>(dtype)] = ok;
    return ok;
  }

 private:
  using Unary = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, c10::string_view,
                           c10::List<std::optional<c10::Scalar>>, std::optional<c10::string_view>);
  using Binary = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            c10::string_view);
  OneDnnLinear(const c10::OperatorHandle& u, const c10::OperatorHandle& b)
      : unary_(u.typed<Unary>()), binary_(b.typed<Binary>()) {}
  c10::TypedOperatorHandle<Unary> unary_;
  c10::TypedOperatorHandle<Binary> binary_;
};

inline const OneDnnLinear& onednn() {
  const OneDnnLinear* od = OneDnnLinear::get();
  FR_CHECK_RUN(od != nullptr, "this torch has no oneDNN (mkldnn::_linear_pointwise); use gemm='aten'");
  return *od;
}

// oneDNN's fast paths take a matrix stored densely, row- or column-major; any other strides (a narrowed matrix,
// a padded leading dimension) fall to a reference kernel about 1000x slower (measured: bf16 and fp32, a [1536,
// 512] half of a [512, 3072] weight, 2.2-2.5 s against 1.5 ms). Sites with such operands run on ATen.
inline bool dense_2d(const at::Tensor& t) {
  return (t.stride(1) == 1 && t.stride(0) == t.size(1)) || (t.stride(0) == 1 && t.stride(1) == t.size(0));
}

// a @ b (a [M, K], b [K, N] views) with `impl`: into `out` ([M, N] workspace view) for ATen, which is returned;
// a new tensor for oneDNN. ATen when oneDNN cannot take the operands densely.
inline at::Tensor gemm(int64_t impl, at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (impl == kGemmAten || !dense_2d(a) || !dense_2d(b)) {
    at::mm_out(out, a, b);
    return out;
  }
  return onednn().linear(a, b.t());
}

// The two halves of `t` along `dim` as dense matrices: views when they already are, else contiguous copies,
// kept while `t` is unchanged (same address, same version) and used by the last run_steps call. Each entry
// holds `t` itself, so no other tensor can take its address while the entry lives (a freed weight's address
// reused by a new one, with the same version 0, would otherwise find the old weight's halves).
struct DenseHalves {
  at::Tensor source, lo, hi;
};
inline std::mutex g_halves_mu;
inline std::map<std::string, DenseHalves>& g_halves = *new std::map<std::string, DenseHalves>();

inline std::string halves_key(const at::Tensor& t, int64_t dim) {
  return std::to_string(reinterpret_cast<uintptr_t>(t.const_data_ptr())) + "|" + std::to_string(t._version()) +
         "|" + std::to_string(dim) + "|" + std::to_string(t.size(0)) + "x" + std::to_string(t.size(1)) + "|" +
         std::to_string(t.stride(0)) + "x" + std::to_string(t.stride(1));
}

inline std::pair<at::Tensor, at::Tensor> dense_halves(const at::Tensor& t, int64_t dim) {
  const int64_t n = t.size(dim) / 2;
  at::Tensor lo = t.narrow(dim, 0, n), hi = t.narrow(dim, n, n);
  if (dense_2d(lo) && dense_2d(hi)) return {lo, hi};
  const std::string key = halves_key(t, dim);
  std::lock_guard<std::mutex> lock(g_halves_mu);
  auto it = g_halves.find(key);
  if (it == g_halves.end()) it = g_halves.emplace(key, DenseHalves{t, lo.contiguous(), hi.contiguous()}).first;
  return {it->second.lo, it->second.hi};
}

// One SwiGLU GEMM pair: [gate | up] = a @ b, split in halves along `dim` (1: b's columns, the channel MLP;
// 0: a's rows, the token MLP), and its ATen workspace views.
struct SwigluGemm {
  at::Tensor a, b;
  int64_t dim;
  at::Tensor gu, gate, up;  // ATen: the product and its halves (workspace views)
};

// silu(gate) * up for the pair `g`, with `impl`: ATen and oneDNN write it into `act` ([rows, cols] view) with
// fastrecur's SwiGLU kernel `swiglu(out, gate, up)`; fused oneDNN returns a new tensor.
template <class SwigluKernel>
at::Tensor gemm_swiglu(int64_t impl, SwigluGemm g, const at::Tensor& act, SwigluKernel swiglu) {
  const bool dense = dense_2d(g.a) && dense_2d(g.b);
  if (impl == kGemmOneDnnFused && dense) {
    const OneDnnLinear& od = onednn();
    const auto [lo, hi] = dense_halves(g.dim == 0 ? g.a : g.b, g.dim);  // the split operand's gate and up halves
    const at::Tensor &a_gate = g.dim == 0 ? lo : g.a, &a_up = g.dim == 0 ? hi : g.a;
    const at::Tensor &b_gate = g.dim == 1 ? lo : g.b, &b_up = g.dim == 1 ? hi : g.b;
    return od.linear_binary(a_up, od.linear(a_gate, b_gate.t(), "swish"), b_up.t(), "mul");
  }
  if (impl == kGemmAten || !dense) {
    at::mm_out(g.gu, g.a, g.b);
    swiglu(act, g.gate, g.up);
    return act;
  }
  const at::Tensor gu = onednn().linear(g.a, g.b.t());
  const int64_t n = gu.size(g.dim) / 2;
  swiglu(act, gu.narrow(g.dim, 0, n), gu.narrow(g.dim, n, n));
  return act;
}

// Drops the dense halves that no block of the current call uses (called once per run_steps call, with the
// SwiGLU operands it may split), releasing the weights they hold.
inline void keep_only_halves(const std::vector<std::pair<at::Tensor, int64_t>>& used) {
  std::lock_guard<std::mutex> lock(g_halves_mu);
  if (g_halves.empty()) return;
  std::map<std::string, DenseHalves> kept;
  for (const auto& [t, dim] : used) {
    auto it = g_halves.find(halves_key(t, dim));
    if (it != g_halves.end()) kept.insert(*it);
  }
  g_halves.swap(kept);
}

// The measured choices, per GEMM site key (choose_gemm), process-wide.
inline std::mutex g_gemm_mu;
inline std::map<std::string, int64_t>& g_gemm_choice = *new std::map<std::string, int64_t>();

// Seconds of the fastest of 3 runs of run(slot), after one warm-up; infinity when it throws (oneDNN refusing a
// layout). Per-item (slots > 1): every thread times its own slot at once, as the loop runs them, and the slowest
// thread counts.
inline double time_site(const std::function<void(size_t)>& run, int64_t slots) {
  auto time_one = [&](size_t slot) {
    try {
      run(slot);
      double best = std::numeric_limits<double>::infinity();
      for (int r = 0; r < 3; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        run(slot);
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      return best;
    } catch (const std::exception&) {  // c10::Error, or dnnl::error from oneDNN itself
      return std::numeric_limits<double>::infinity();
    }
  };
  if (slots <= 1) return time_one(0);
  std::vector<double> t(static_cast<size_t>(slots), 0.0);
  const at::ThreadLocalState caller_tls;
  at::parallel_for(0, slots, 1, [&](int64_t, int64_t) {
    at::ThreadLocalStateGuard tls_guard(caller_tls);
    const size_t slot = static_cast<size_t>(at::get_thread_num());
    if (slot < t.size()) t[slot] = time_one(slot);
  });
  return *std::max_element(t.begin(), t.end());
}

// The measured implementation of one GEMM site (kGemmAuto): on the CPU, the fastest of
// `candidates` (ATen first) as timed by run(impl, slot), cached under `key` for the process.
// prepare() runs once before the first timing (it fills the timing's inputs).
inline int64_t choose_gemm(const at::Tensor& x, const std::string& key,
                           const std::vector<int64_t>& candidates, int64_t slots, const std::function<void()>& prepare,
                           const std::function<void(int64_t, size_t)>& run) {
  if (!x.is_cpu() || OneDnnLinear::get() == nullptr || !OneDnnLinear::get()->supports(x.scalar_type())) {
    return kGemmAten;
  }
  {
    std::lock_guard<std::mutex> lock(g_gemm_mu);
    auto it = g_gemm_choice.find(key);
    if (it != g_gemm_choice.end()) return it->second;
  }
  prepare();
  int64_t best = kGemmAten;
  double t_best = 0.0;
  for (int64_t impl : candidates) {
    const double t = time_site([&](size_t slot) { run(impl, slot); }, slots);
    if (impl == kGemmAten) {
      t_best = t;
    } else if (t < kGemmMargin * t_best) {
      best = impl;
      t_best = t;
    }
  }
  std::lock_guard<std::mutex> lock(g_gemm_mu);
  g_gemm_choice[key] = best;
  return best;
}

// The measured choices so far, as "key=implementation" lines (sorted by key).
inline std::vector<std::string> gemm_choices_op() {
  static const char* names[] = {"aten", "onednn", "onednn_fused"};
  std::lock_guard<std::mutex> lock(g_gemm_mu);
  std::vector<std::string> out;
  for (const auto& kv : g_gemm_choice) out.push_back(kv.first + "=" + names[kv.second]);
  return out;
}

// The key of a GEMM site: its name, the shapes and strides of its operands, the dtype and the threading.
inline std::string gemm_site_key(const char* site, std::initializer_list<at::Tensor> operands, bool per_item) {
  std::string k = site;
  for (const auto& t : operands) {
    k += '|';
    for (int64_t i = 0; i < t.dim(); ++i) {
      k += std::to_string(t.size(i)) + "x" + std::to_string(t.stride(i)) + ",";
    }
  }
  const at::Tensor& first = *operands.begin();
  k += '|' + std::string(c10::toString(first.scalar_type())) + "|t" + std::to_string(at::get_num_threads()) +
       (per_item ? "|item" : "|batch");
  return k;
}

}  // namespace fastrecur
