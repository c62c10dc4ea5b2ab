// The fused elementwise kernels as public ops (torch.ops.fastrecur_C.add_rms_norm, swiglu, rope_,
// add_rms_norm_dim1, inject_add): each validates its arguments (checks.h), then calls the device dispatch
// (dispatch.h). The loop (loop.h) calls the dispatch directly on views it has validated once per call.
#pragma once

#include <ATen/ATen.h>
#include <ATen/DeviceGuard.h>
#include <ATen/MemoryOverlap.h>

#include <string>
#include <vector>

#include "checks.h"
#include "cuda_api.h"
#include "dispatch.h"

namespace fastrecur {

// t as [rows, cols] for a contiguous t whose last dim is cols: t itself when it is 2-D already, otherwise a
// view. A view through the dispatcher (autograd view tracking included) costs about a tenth of a microsecond,
// which small kernel calls notice.
inline at::Tensor as_rows(const at::Tensor& t, int64_t cols) {
  return t.dim() == 2 ? t : t.view({-1, cols});
}

// out = rms_norm(a + b) over the last dim.
inline void add_rms_norm_op(const at::Tensor& a, const at::Tensor& b, double eps, const at::Tensor& out) {
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
  k_add_rms_norm_rows(as_rows(out, cols), as_rows(a, cols), as_rows(b, cols), eps);
}

// out = silu(gate_up[..., :I]) * gate_up[..., I:].
inline void swiglu_op(const at::Tensor& gate_up, const at::Tensor& out) {
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
  const at::Tensor gu = as_rows(gate_up, 2 * inter);
  k_swiglu(as_rows(out, inter), gu.narrow(1, 0, inter), gu.narrow(1, inter, inter));
}

// In place RoPE on x [B, S, H, head_dim].
inline void rope_op(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  check_act(x, "x");
  FR_CHECK(x.dim() == 4 && x.numel() > 0, "x must be a non-empty [B, S, H, head_dim] tensor, got ", x.sizes());
  check_contig(x, "x");
  check_rope_tables(cos, sin, x, x.size(1), x.size(3));
  at::DeviceGuard guard(x.device());
  k_rope(x.view({x.size(0) * x.size(1), x.size(2) * x.size(3)}), x.size(2), x.size(3), x.size(1), cos, sin);
}

// out = rms_norm over dim 1 of (a + b), for [n0, n1, n2] tensors whose last dim is contiguous.
inline void add_rms_norm_dim1_op(const at::Tensor& a, const at::Tensor& b, double eps, const at::Tensor& out) {
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

// target += (srcs[0] + srcs[1] + ...), the partial sums rounded to the dtype in eager's order (the injection of
// a level call in the loop, exposed for tests and the kernel benchmark). target: contiguous, written in place;
// srcs: 1 to cuda::kMaxInject contiguous tensors of target's shape, dtype and device; each source is target
// itself or disjoint from it.
inline void inject_add_op(const at::Tensor& target, at::TensorList srcs) {
  check_act(target, "target");
  FR_CHECK(target.numel() > 0 && target.dim() >= 1, "target must be a non-empty tensor, got ", target.sizes());
  check_contig(target, "target");
  const int64_t n = static_cast<int64_t>(srcs.size());
  FR_CHECK(n >= 1 && n <= cuda::kMaxInject, "srcs must hold 1 to ", cuda::kMaxInject, " tensors, got ", n);
  std::vector<at::Tensor> src;
  for (int64_t j = 0; j < n; ++j) {
    const std::string name = "srcs[" + std::to_string(j) + "]";
    FR_CHECK(srcs[j].defined(), name, " is undefined");
    check_like(srcs[j], target, name, "target");
    FR_CHECK(srcs[j].sizes() == target.sizes(), name, " must have the shape of target ", target.sizes(), ", got ",
             srcs[j].sizes());
    check_contig(srcs[j], name);
    check_alias_ok(target, srcs[j], "target", name);
    src.push_back(as_rows(srcs[j], target.size(-1)));
  }
  at::DeviceGuard guard(target.device());
  k_inject_add(as_rows(target, target.size(-1)), src, at::Tensor());
}

}  // namespace fastrecur
