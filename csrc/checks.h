// Argument checks shared by every fastrecur_C op. Invalid arguments raise ValueError (shape, device, layout,
// aliasing) or TypeError (dtype) in Python, each naming the argument; failures while running (e.g. a CUDA
// launch error) raise RuntimeError.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <cmath>
#include <string>
#include <string_view>

#include "cpu_kernels.h"

#define FR_CHECK(cond, ...) TORCH_CHECK_VALUE(cond, "fastrecur_C: ", __VA_ARGS__)
#define FR_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, "fastrecur_C: ", __VA_ARGS__)
#define FR_CHECK_RUN(cond, ...) TORCH_CHECK(cond, "fastrecur_C: ", __VA_ARGS__)

namespace fastrecur {

inline bool is_act_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

inline void check_act(const at::Tensor& t, std::string_view name) {
  FR_CHECK(t.defined(), name, " is undefined");
  FR_CHECK_TYPE(is_act_dtype(t.scalar_type()), name, " must be float32, bfloat16 or float16, got ", t.scalar_type());
  FR_CHECK(t.device().is_cpu() || t.device().is_cuda(), name, " must be on CPU or CUDA, got ", t.device());
}

inline void check_like(const at::Tensor& t, const at::Tensor& ref, std::string_view name,
                       std::string_view ref_name) {
  FR_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), name, " has dtype ", t.scalar_type(), " but ", ref_name, " has ",
           ref.scalar_type());
  FR_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name, " is on ", ref.device());
}

inline void check_contig(const at::Tensor& t, std::string_view name) {
  FR_CHECK(t.is_contiguous(), name, " must be contiguous (got strides ", t.strides(), ")");
}

// An output may be exactly one of its inputs (element for element) or disjoint from it; anything in
// between would make results depend on the order in which elements are processed.
inline void check_alias_ok(const at::Tensor& out, const at::Tensor& in, std::string_view out_name,
                           std::string_view in_name) {
  // Tensors on different storages cannot overlap (get_overlap_status answers TooHard for any strided view).
  if (!out.storage().is_alias_of(in.storage())) return;
  const auto st = at::get_overlap_status(out, in);
  if (st == at::MemOverlapStatus::No) return;
  const bool exact = out.data_ptr() == in.data_ptr() && out.sizes() == in.sizes() && out.strides() == in.strides();
  FR_CHECK(exact, out_name, " partially overlaps ", in_name, "; it must be the same tensor or not overlap it");
}

inline void check_disjoint(const at::Tensor& a, const at::Tensor& b, std::string_view a_name,
                           std::string_view b_name) {
  FR_CHECK(!a.storage().is_alias_of(b.storage()) || at::get_overlap_status(a, b) == at::MemOverlapStatus::No,
           a_name, " and ", b_name,
           " share memory; they must be distinct, non-overlapping tensors");
}

inline void check_rope_tables(const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& x, int64_t seq_len,
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

inline void check_eps(double eps) {
  FR_CHECK(std::isfinite(eps) && eps >= 0.0, "eps must be a finite, non-negative number, got ", eps);
}

// A weight [rows, cols] in nn.Linear layout. `transposable`: weights used as the right-hand GEMM operand
// (h @ W.T) may also be the transpose of a contiguous [cols, rows] tensor (W.T contiguous), the faster layout
// for single-threaded CPU GEMMs with few rows (fastrecur.models caches it so on CPU).
inline void check_weight(const at::Tensor& w, const at::Tensor& x, std::string_view name, int64_t rows, int64_t cols,
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

}  // namespace fastrecur
