// Plain C++ interface between the torch-facing code (dispatch.h, compiled into bindings.cpp) and the CUDA kernels
// (kernels.cu). It deliberately uses no torch types: kernels.cu then compiles without the torch headers,
// which keeps the nvcc step short (torch headers cost ~100 s per translation unit on the CI machine).
//
// Every launcher enqueues exactly one kernel on `stream` (a cudaStream_t passed as void*) and returns 0 on
// success or the cudaError_t code of the launch; error_string() turns a code into text. Shapes, dtypes and
// aliasing are validated by the caller (elementwise_ops.h, loop.h); these functions trust their arguments.
#pragma once
#include <cstdint>

namespace fastrecur::cuda {

enum class DType : int { kFloat = 0, kBFloat16 = 1, kHalf = 2 };

struct Strides3 {
  int64_t s0, s1, s2;
};

// Optional second destination of finished rows: row r (rows laid out as [n0, seq]) is also written to
// ptr + (r / seq) * s0 + (r % seq) * s1 (element offsets; columns contiguous). ptr == nullptr: none.
struct RowCopy {
  void* ptr;
  int64_t seq, s0, s1;
};

// out[r, :] = rms_norm(a[r, :] + b[r, :]) over `cols`; rows are `*_stride` elements apart, columns contiguous.
// The sum is rounded to the activation dtype before the norm (as eager torch does). out may equal a or b.
int add_rms_norm_rows(DType dt, void* out, int64_t out_stride, const void* a, int64_t a_stride,
                      const void* b, int64_t b_stride, int64_t rows, int64_t cols, float eps, RowCopy copy,
                      void* stream);

// The injection of a level call: target = target + (src[0] + ... + src[n_src - 1]), each partial sum rounded
// to the activation dtype (eager's order). All [rows, cols] contiguous; target may equal a source exactly.
constexpr int kMaxInject = 8;
struct InjectSources {
  const void* p[kMaxInject];
};
int inject_add(DType dt, void* target, InjectSources src, int n_src, int64_t rows, int64_t cols, RowCopy copy,
               void* stream);

// out[r, c] = silu(gate[r, c]) * up[r, c], computed in fp32 and rounded once.
int swiglu(DType dt, void* out, int64_t out_stride, const void* gate, int64_t gate_stride, const void* up,
           int64_t up_stride, int64_t rows, int64_t cols, void* stream);

// In place NeoX RoPE on the first `heads` heads (head_dim each, contiguous) of every row of x; row r has
// position r % seq_len; cos/sin are fp32 [seq_len, head_dim] contiguous.
int rope(DType dt, void* x, int64_t row_stride, int64_t rows, int64_t heads, int64_t head_dim,
         int64_t seq_len, const float* cos, const float* sin, void* stream);

// Logical [n0, n1, n2] tensors (any strides; s2 == 1 for speed only): out = rms_norm over axis 1 of (a + b).
// out may alias a or b element for element.
int add_rms_norm_dim1(DType dt, void* out, Strides3 out_st, const void* a, Strides3 a_st, const void* b,
                      Strides3 b_st, int64_t n0, int64_t n1, int64_t n2, float eps, void* stream);

const char* error_string(int code);

}  // namespace fastrecur::cuda
