// Device dispatch of the fused elementwise kernels: one function per kernel (k_*) that takes validated
// at::Tensor views and calls the CPU kernel (cpu_kernels.h, by dtype) or the CUDA launcher (cuda_api.h, on
// the tensor's current stream). Arguments are trusted: the public ops (elementwise_ops.h) and the loop
// (loop.h) validate them first. FASTRECUR_WITH_CUDA is defined by the build when kernels.cu is compiled in.
#pragma once

#include <ATen/ATen.h>
#include <ATen/record_function.h>

#include <vector>

#include "checks.h"
#include "cpu_kernels.h"
#include "cuda_api.h"

#ifdef FASTRECUR_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace fastrecur {

[[maybe_unused]] inline cuda::DType cuda_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::DType::kFloat;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    default: return cuda::DType::kHalf;
  }
}

#ifdef FASTRECUR_WITH_CUDA
inline void* cuda_stream(const at::Tensor& t) {
  return static_cast<void*>(c10::cuda::getCurrentCUDAStream(t.device().index()).stream());
}
inline void check_launch(int code, const char* what) {
  FR_CHECK_RUN(code == 0, what, " kernel launch failed: ", cuda::error_string(code));
}
#else
[[noreturn]] inline void no_cuda() {
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
[[maybe_unused]] inline cuda::RowCopy cuda_row_copy(const at::Tensor& c) {
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
inline void k_add_rms_norm_rows(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double eps,
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
inline void k_inject_add(const at::Tensor& target, const std::vector<at::Tensor>& srcs, const at::Tensor& copy) {
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
inline void k_swiglu(const at::Tensor& out, const at::Tensor& gate, const at::Tensor& up) {
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
inline void k_rope(const at::Tensor& x, int64_t heads, int64_t head_dim, int64_t seq_len, const at::Tensor& cos,
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
inline void k_add_rms_norm_dim1(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double eps) {
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

}  // namespace fastrecur
