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
// writes and needs no synchronisation; out == a (in place) is safe for the same reason. Used for rows wider
// than 1024 columns; narrower ones (every model width here) take the register kernel below.
template <typename T>
__global__ void add_rms_norm_rows_kernel(T* out, int64_t out_stride, const T* a, int64_t a_stride, const T* b,
                                         int64_t b_stride, int64_t rows, int64_t cols, float eps, RowCopy copy) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
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

// The same, for cols <= 32 * K: the row is held in registers, so all of a lane's loads are issued before its
// first store (in the loop above each store may alias the next load, which serialises them: a 512-wide row
// took one memory latency per 32 columns). Same arithmetic and summation order as the loop kernel.
template <typename T, int K>
__global__ void add_rms_norm_rows_reg_kernel(T* out, int64_t out_stride, const T* a, int64_t a_stride, const T* b,
                                             int64_t b_stride, int64_t rows, int cols, float eps, RowCopy copy) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= rows) return;
  T* o = out + row * out_stride;
  const T* pa = a + row * a_stride;
  const T* pb = b + row * b_stride;
  float v[K];
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int c = lane + 32 * k;
    v[k] = c < cols ? round_to<T>(to_f(pa[c]) + to_f(pb[c])) : 0.f;
    ss += v[k] * v[k];
  }
  ss = warp_sum(ss);
  const float scale = rsqrtf(ss / static_cast<float>(cols) + eps);
  T* cp = copy.ptr ? static_cast<T*>(copy.ptr) + (row / copy.seq) * copy.s0 + (row % copy.seq) * copy.s1 : nullptr;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int c = lane + 32 * k;
    if (c < cols) {
      const T y = from_f<T>(v[k] * scale);
      o[c] = y;
      if (cp) cp[c] = y;
    }
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

// VEC consecutive values moved as one 16-byte (or narrower) access.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// 2D launch: blockIdx.x picks VEC * blockDim.x columns, blockIdx.y strides over rows, so no thread divides a
// 64-bit flat index (the flat grid-stride version spent more time on index arithmetic than on memory).
// VEC > 1 only when cols, every row stride and every base pointer are multiples of VEC elements.
template <typename T, int VEC>
__global__ void swiglu_kernel(T* out, int64_t out_stride, const T* gate, int64_t gate_stride, const T* up,
                              int64_t up_stride, int64_t rows, int64_t cols) {
  const int64_t c = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  if (c >= cols) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const Pack<T, VEC> g = *reinterpret_cast<const Pack<T, VEC>*>(gate + r * gate_stride + c);
    const Pack<T, VEC> u = *reinterpret_cast<const Pack<T, VEC>*>(up + r * up_stride + c);
    Pack<T, VEC> y;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float gf = to_f(g.v[k]);
      y.v[k] = from_f<T>(gf / (1.f + expf(-gf)) * to_f(u.v[k]));
    }
    *reinterpret_cast<Pack<T, VEC>*>(out + r * out_stride + c) = y;
  }
}

// One thread per rotation pair (j, j + half) of a row (blockIdx.y strides over rows): it reads and writes only
// that pair, so in place is safe.
template <typename T>
__global__ void rope_kernel(T* x, int64_t row_stride, int64_t rows, int heads, int head_dim, int64_t seq_len,
                            const float* cos, const float* sin) {
  const int half = head_dim / 2;
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= heads * half) return;
  const int h = t / half, j = t - h * half;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
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

// The same for n1 <= kDim1Groups * K: a block takes 32 columns (threadIdx.x) and splits their n1 values
// among kDim1Groups row groups (threadIdx.y takes rows y, y + groups, ...), held in registers; the column sums
// meet in shared memory. The loop kernel above gives each column one thread walking all of n1, so at batch 1
// (512 columns) it ran on two blocks, one dependent load at a time. All loads come before the first
// __syncthreads and every store after it, and blocks own disjoint columns, so out == a is safe.
constexpr int kDim1Groups = 8;
template <typename T, int K>
__global__ void add_rms_norm_dim1_reg_kernel(T* out, Strides3 os, const T* a, Strides3 as, const T* b, Strides3 bs,
                                             int64_t n0, int64_t n1, int64_t n2, float eps) {
  __shared__ float part[kDim1Groups][33];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  const bool active = col < n0 * n2;
  const int64_t i0 = active ? col / n2 : 0, i2 = active ? col - i0 * n2 : 0;
  float v[K];
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t l = threadIdx.y + kDim1Groups * k;
    v[k] = active && l < n1 ? round_to<T>(to_f(a[i0 * as.s0 + l * as.s1 + i2 * as.s2]) +
                                          to_f(b[i0 * bs.s0 + l * bs.s1 + i2 * bs.s2]))
                            : 0.f;
    ss += v[k] * v[k];
  }
  part[threadIdx.y][threadIdx.x] = ss;
  __syncthreads();
  if (threadIdx.y == 0) {
    float total = 0.f;
#pragma unroll
    for (int g = 0; g < kDim1Groups; ++g) total += part[g][threadIdx.x];
    part[0][threadIdx.x] = rsqrtf(total / static_cast<float>(n1) + eps);
  }
  __syncthreads();
  if (!active) return;
  const float scale = part[0][threadIdx.x];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t l = threadIdx.y + kDim1Groups * k;
    if (l < n1) out[i0 * os.s0 + l * os.s1 + i2 * os.s2] = from_f<T>(v[k] * scale);
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
  // 4 warps (rows) per block: at batch 1 (97 rows) that is 25 blocks rather than 13 of 8 warps.
  constexpr int kRowThreads = 128;
  const int64_t blocks = (rows + kRowThreads / 32 - 1) / (kRowThreads / 32);
  auto st = static_cast<cudaStream_t>(stream);
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    T* o = static_cast<T*>(out);
    const T* pa = static_cast<const T*>(a);
    const T* pb = static_cast<const T*>(b);
    const int c = static_cast<int>(cols);
#define FR_ROWS_REG(K) \
  add_rms_norm_rows_reg_kernel<T, K><<<blocks, kRowThreads, 0, st>>>(o, out_stride, pa, a_stride, pb, b_stride, rows, c, eps, copy)
    if (cols <= 128) FR_ROWS_REG(4);
    else if (cols <= 256) FR_ROWS_REG(8);
    else if (cols <= 512) FR_ROWS_REG(16);
    else if (cols <= 1024) FR_ROWS_REG(32);
    else add_rms_norm_rows_kernel<T><<<blocks, kRowThreads, 0, st>>>(o, out_stride, pa, a_stride, pb, b_stride, rows, cols, eps, copy);
#undef FR_ROWS_REG
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
  auto st = static_cast<cudaStream_t>(stream);
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    constexpr int kVec = 16 / sizeof(T);
    auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    const bool vec = cols % kVec == 0 && out_stride % kVec == 0 && gate_stride % kVec == 0 && up_stride % kVec == 0 &&
                     aligned(out) && aligned(gate) && aligned(up);
    const int v = vec ? kVec : 1;
    const int64_t threads_needed = (cols / v + 31) / 32 * 32;
    const int threads = static_cast<int>(threads_needed < kThreads ? threads_needed : kThreads);
    const dim3 grid(static_cast<unsigned>((cols / v + threads - 1) / threads),
                    static_cast<unsigned>(rows < kMaxBlocks ? rows : kMaxBlocks));
    auto o = static_cast<T*>(out);
    auto g = static_cast<const T*>(gate);
    auto u = static_cast<const T*>(up);
    if (vec) swiglu_kernel<T, kVec><<<grid, threads, 0, st>>>(o, out_stride, g, gate_stride, u, up_stride, rows, cols);
    else swiglu_kernel<T, 1><<<grid, threads, 0, st>>>(o, out_stride, g, gate_stride, u, up_stride, rows, cols);
  });
}

int rope(DType dt, void* x, int64_t row_stride, int64_t rows, int64_t heads, int64_t head_dim, int64_t seq_len,
         const float* cos, const float* sin, void* stream) {
  const int64_t pairs = heads * (head_dim / 2);  // per row; far below 2^31 (checked by the caller's shapes)
  if (rows * pairs == 0) return 0;
  const int threads = static_cast<int>(pairs < kThreads ? (pairs + 31) / 32 * 32 : kThreads);
  const dim3 grid(static_cast<unsigned>((pairs + threads - 1) / threads),
                  static_cast<unsigned>(rows < kMaxBlocks ? rows : kMaxBlocks));
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    rope_kernel<T><<<grid, threads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<T*>(x), row_stride, rows, static_cast<int>(heads), static_cast<int>(head_dim), seq_len, cos, sin);
  });
}

int add_rms_norm_dim1(DType dt, void* out, Strides3 out_st, const void* a, Strides3 a_st, const void* b,
                      Strides3 b_st, int64_t n0, int64_t n1, int64_t n2, float eps, void* stream) {
  if (n0 * n2 == 0) return 0;
  auto st = static_cast<cudaStream_t>(stream);
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    auto o = static_cast<T*>(out);
    auto pa = static_cast<const T*>(a);
    auto pb = static_cast<const T*>(b);
    const dim3 block(32, kDim1Groups);
    const int64_t blocks = (n0 * n2 + 31) / 32;
#define FR_DIM1_REG(K) \
  add_rms_norm_dim1_reg_kernel<T, K><<<blocks, block, 0, st>>>(o, out_st, pa, a_st, pb, b_st, n0, n1, n2, eps)
    const bool reg = blocks <= 0x7fffffff;  // the register kernel's grid is one block per 32 columns
    if (reg && n1 <= kDim1Groups * 4) FR_DIM1_REG(4);
    else if (reg && n1 <= kDim1Groups * 8) FR_DIM1_REG(8);
    else if (reg && n1 <= kDim1Groups * 16) FR_DIM1_REG(16);
    else if (reg && n1 <= kDim1Groups * 32) FR_DIM1_REG(32);
    else add_rms_norm_dim1_kernel<T><<<blocks_for(n0 * n2), kThreads, 0, st>>>(o, out_st, pa, a_st, pb, b_st, n0, n1, n2, eps);
#undef FR_DIM1_REG
  });
}

const char* error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace fastrecur::cuda
