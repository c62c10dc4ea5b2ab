// CUDA kernels for the elementwise parts of a fastrecur block: fused residual add + RMSNorm (over the row
// or over the token axis), fused SwiGLU activation, and in-place NeoX RoPE. The GEMMs and attention stay in
// ATen (cuBLAS / SDPA); these kernels only replace the chains of small eager ops between them.
//
// All arithmetic is fp32; values are loaded from the activation dtype, and stored values are rounded once
// (round-to-nearest-even, like torch). No torch headers here, see cuda_api.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cuda_api.h"

namespace fastrecur::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
// Grid-stride kernels never need more blocks than this to fill an H100/A100.
constexpr int64_t kMaxBlocks = 65535;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }

// Round an fp32 value to T and back: the value eager torch would hold after an op in dtype T.
template <typename T>
__device__ __forceinline__ float round_to(float v) { return to_f(from_f<T>(v)); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

int64_t blocks_for(int64_t n) {
  int64_t b = (n + kThreads - 1) / kThreads;
  return b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b);
}

// One warp per row. Each lane touches the same columns in both passes, so the second pass reads back its own
// writes and needs no synchronisation; out == a (in place) is safe for the same reason.
template <typename T>
__global__ void add_rms_norm_rows_kernel(T* out, int64_t out_stride, const T* a, int64_t a_stride, const T* b,
                                         int64_t b_stride, int64_t rows, int64_t cols, float eps, RowCopy copy) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= rows) return;  // whole warp exits together: row is uniform per warp
  T* o = out + row * out_stride;
  const T* pa = a + row * a_stride;
  const T* pb = b + row * b_stride;
  float ss = 0.f;
  for (int64_t c = lane; c < cols; c += 32) {
    const float s = round_to<T>(to_f(pa[c]) + to_f(pb[c]));
    o[c] = from_f<T>(s);
    ss += s * s;
  }
  ss = warp_sum(ss);
  const float scale = rsqrtf(ss / static_cast<float>(cols) + eps);
  T* cp = copy.ptr ? static_cast<T*>(copy.ptr) + (row / copy.seq) * copy.s0 + (row % copy.seq) * copy.s1 : nullptr;
  for (int64_t c = lane; c < cols; c += 32) {
    const T v = from_f<T>(to_f(o[c]) * scale);
    o[c] = v;
    if (cp) cp[c] = v;
  }
}

// One thread per element (grid-stride); reads its sources and target before writing, so target == source is safe.
template <typename T>
__global__ void inject_add_kernel(T* target, InjectSources src, int n_src, int64_t rows, int64_t cols,
                                  RowCopy copy) {
  const int64_t n = rows * cols;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    T v = target[i];
    if (n_src > 0) {
      float acc = to_f(static_cast<const T*>(src.p[0])[i]);
      // Unrolled over the fixed-size array so it stays in parameter space (a dynamic index would copy it to
      // local memory).
#pragma unroll
      for (int j = 1; j < kMaxInject; ++j) {
        if (j < n_src) acc = round_to<T>(acc + to_f(static_cast<const T*>(src.p[j])[i]));
      }
      v = from_f<T>(to_f(v) + acc);
      target[i] = v;
    }
    if (copy.ptr) {
      const int64_t r = i / cols, c = i - r * cols;
      static_cast<T*>(copy.ptr)[(r / copy.seq) * copy.s0 + (r % copy.seq) * copy.s1 + c] = v;
    }
  }
}

template <typename T>
__global__ void swiglu_kernel(T* out, int64_t out_stride, const T* gate, int64_t gate_stride, const T* up,
                              int64_t up_stride, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i - r * cols;
    const float g = to_f(gate[r * gate_stride + c]);
    const float u = to_f(up[r * up_stride + c]);
    out[r * out_stride + c] = from_f<T>(g / (1.f + expf(-g)) * u);
  }
}

// One thread per rotation pair (j, j + half): it reads and writes only that pair, so in place is safe.
template <typename T>
__global__ void rope_kernel(T* x, int64_t row_stride, int64_t rows, int64_t heads, int64_t head_dim,
                            int64_t seq_len, const float* cos, const float* sin) {
  const int64_t half = head_dim / 2;
  const int64_t n = rows * heads * half;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = i % half;
    const int64_t rh = i / half;
    const int64_t h = rh % heads, r = rh / heads;
    const int64_t pos = r % seq_len;
    T* p = x + r * row_stride + h * head_dim;
    const float x1 = to_f(p[j]), x2 = to_f(p[j + half]);
    const float* c = cos + pos * head_dim;
    const float* s = sin + pos * head_dim;
    // Same operation order as eager: x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1).
    p[j] = from_f<T>(x1 * c[j] + (-x2) * s[j]);
    p[j + half] = from_f<T>(x2 * c[j + half] + x1 * s[j + half]);
  }
}

// One thread per (i0, i2) column of the logical [n0, n1, n2] tensors; adjacent threads take adjacent i2,
// so loads are coalesced when s2 == 1. Two passes over n1 (the token axis), like the row kernel.
template <typename T>
__global__ void add_rms_norm_dim1_kernel(T* out, Strides3 os, const T* a, Strides3 as, const T* b, Strides3 bs,
                                         int64_t n0, int64_t n1, int64_t n2, float eps) {
  const int64_t n = n0 * n2;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i0 = i / n2, i2 = i - i0 * n2;
    T* o = out + i0 * os.s0 + i2 * os.s2;
    const T* pa = a + i0 * as.s0 + i2 * as.s2;
    const T* pb = b + i0 * bs.s0 + i2 * bs.s2;
    float ss = 0.f;
    for (int64_t l = 0; l < n1; ++l) {
      const float s = round_to<T>(to_f(pa[l * as.s1]) + to_f(pb[l * bs.s1]));
      o[l * os.s1] = from_f<T>(s);
      ss += s * s;
    }
    const float scale = rsqrtf(ss / static_cast<float>(n1) + eps);
    for (int64_t l = 0; l < n1; ++l) o[l * os.s1] = from_f<T>(to_f(o[l * os.s1]) * scale);
  }
}

template <typename F>
int dispatch(DType dt, F&& f) {
  switch (dt) {
    case DType::kFloat: f(float{}); break;
    case DType::kBFloat16: f(__nv_bfloat16{}); break;
    case DType::kHalf: f(__half{}); break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int add_rms_norm_rows(DType dt, void* out, int64_t out_stride, const void* a, int64_t a_stride, const void* b,
                      int64_t b_stride, int64_t rows, int64_t cols, float eps, RowCopy copy, void* stream) {
  if (rows == 0) return 0;
  const int64_t blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    add_rms_norm_rows_kernel<T><<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<T*>(out), out_stride, static_cast<const T*>(a), a_stride, static_cast<const T*>(b), b_stride,
        rows, cols, eps, copy);
  });
}

int inject_add(DType dt, void* target, InjectSources src, int n_src, int64_t rows, int64_t cols, RowCopy copy,
               void* stream) {
  if (rows * cols == 0 || (n_src == 0 && copy.ptr == nullptr)) return 0;
  if (n_src < 0 || n_src > kMaxInject) return static_cast<int>(cudaErrorInvalidValue);
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    inject_add_kernel<T><<<blocks_for(rows * cols), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<T*>(target), src, n_src, rows, cols, copy);
  });
}

int swiglu(DType dt, void* out, int64_t out_stride, const void* gate, int64_t gate_stride, const void* up,
           int64_t up_stride, int64_t rows, int64_t cols, void* stream) {
  if (rows * cols == 0) return 0;
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    swiglu_kernel<T><<<blocks_for(rows * cols), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<T*>(out), out_stride, static_cast<const T*>(gate), gate_stride, static_cast<const T*>(up),
        up_stride, rows, cols);
  });
}

int rope(DType dt, void* x, int64_t row_stride, int64_t rows, int64_t heads, int64_t head_dim, int64_t seq_len,
         const float* cos, const float* sin, void* stream) {
  const int64_t n = rows * heads * (head_dim / 2);
  if (n == 0) return 0;
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    rope_kernel<T><<<blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<T*>(x), row_stride, rows, heads, head_dim, seq_len, cos, sin);
  });
}

int add_rms_norm_dim1(DType dt, void* out, Strides3 out_st, const void* a, Strides3 a_st, const void* b,
                      Strides3 b_st, int64_t n0, int64_t n1, int64_t n2, float eps, void* stream) {
  if (n0 * n2 == 0) return 0;
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    add_rms_norm_dim1_kernel<T><<<blocks_for(n0 * n2), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<T*>(out), out_st, static_cast<const T*>(a), a_st, static_cast<const T*>(b), b_st, n0, n1, n2,
        eps);
  });
}

const char* error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace fastrecur::cuda
