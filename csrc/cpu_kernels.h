// CPU implementations of the elementwise parts of a fastrecur block (fused residual add + RMSNorm over the
// row or over the token axis, fused SwiGLU activation, in-place NeoX RoPE). Header-only: it is compiled into
// the single torch-facing translation unit, bindings.cpp (one TU keeps the CI build short), through dispatch.h.
//
// Values are converted to fp32 in blocks of at most kBlk elements on the stack, the math runs on
// at::vec::Vectorized<float>, and results are rounded once to the activation dtype. Rows (or column
// chunks) are spread over threads with at::parallel_for. Callers validate shapes and aliasing; these
// functions trust their arguments. The innermost axis must be contiguous (stride 1).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace fastrecur::cpu {

using fVec = at::vec::Vectorized<float>;
constexpr int64_t kV = fVec::size();
constexpr int64_t kBlk = 256;          // fp32 staging block (elements)
constexpr int64_t kMaxHeadDim = 1024;  // RoPE stages one head at a time
constexpr int64_t kColChunk = 64;      // token-axis norm: columns handled per task
constexpr int64_t kGrainElems = 32768; // rough work per parallel task, in elements

inline int64_t grain_for(int64_t elems_per_item) {
  return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, elems_per_item));
}

// Returns n values of src as fp32: src itself for float, else converted into buf.
template <typename T>
inline const float* as_float(const T* src, float* buf, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    (void)buf;
    (void)n;
    return src;
  } else {
    at::vec::convert(src, buf, n);
    return buf;
  }
}

// Rounds n fp32 values into dst (round-to-nearest-even, like torch's casts).
template <typename T>
inline void store_as(const float* src, T* dst, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    std::copy(src, src + n, dst);
  } else {
    at::vec::convert(src, dst, n);
  }
}

// dst[0:n] = round_to_T(x[0:n] + y[0:n]); buf keeps the rounded values as fp32, i.e. exactly what eager torch
// holds after `x + y` in dtype T (the norm must see those, not the unrounded sum).
template <typename T>
inline void add_round_store(const float* x, const float* y, float* buf, T* dst, int64_t n) {
  int64_t i = 0;
  for (; i + kV <= n; i += kV) (fVec::loadu(x + i) + fVec::loadu(y + i)).store(buf + i);
  if (i < n) (fVec::loadu(x + i, n - i) + fVec::loadu(y + i, n - i)).store(buf + i, n - i);
  store_as(buf, dst, n);
  if constexpr (!std::is_same_v<T, float>) at::vec::convert(dst, buf, n);  // re-read the rounded values
}

// acc += buf[0:n]^2, lane-wise.
inline void accumulate_squares(const float* buf, int64_t n, fVec& acc) {
  int64_t i = 0;
  for (; i + kV <= n; i += kV) {
    const fVec s = fVec::loadu(buf + i);
    acc = acc + s * s;
  }
  if (i < n) {
    const fVec s = fVec::loadu(buf + i, n - i);  // zero-filled tail
    acc = acc + s * s;
  }
}

inline float lane_sum(const fVec& v) {
  float t[kV];
  v.store(t);
  float s = 0.f;
  for (int64_t i = 0; i < kV; ++i) s += t[i];
  return s;
}

// dst[0:n] *= scale (scale is one value, or per element when scales != nullptr).
template <typename T>
inline void scale_inplace(T* dst, int64_t n, float scale, const float* scales, float* buf) {
  const float* x = as_float(dst, buf, n);
  int64_t i = 0;
  for (; i + kV <= n; i += kV) {
    const fVec s = scales ? fVec::loadu(scales + i) : fVec(scale);
    (fVec::loadu(x + i) * s).store(buf + i);
  }
  if (i < n) {
    const fVec s = scales ? fVec::loadu(scales + i, n - i) : fVec(scale);
    (fVec::loadu(x + i, n - i) * s).store(buf + i, n - i);
  }
  store_as(buf, dst, n);
}

// A second destination for finished rows: row r (of rows laid out as [n0, seq]) is also written to
// ptr + (r / seq) * s0 + (r % seq) * s1 (element offsets), e.g. the [seq, n0, cols] transposed copy the next
// token-mixer block reads. ptr == nullptr: none.
template <typename T>
struct RowCopy {
  T* ptr = nullptr;
  int64_t seq = 1, s0 = 0, s1 = 0;
  void put(int64_t r, const T* src, int64_t n) const {
    if (ptr) std::copy(src, src + n, ptr + (r / seq) * s0 + (r % seq) * s1);
  }
};

// out[r, :] = rms_norm(a[r, :] + b[r, :]); out may be a or b (each element is read before it is written).
// With copy.ptr set, each finished row is also copied there.
template <typename T>
void add_rms_norm_rows(T* out, int64_t os, const T* a, int64_t as, const T* b, int64_t bs, int64_t rows,
                       int64_t cols, float eps, RowCopy<T> copy = {}) {
  at::parallel_for(0, rows, grain_for(cols), [&](int64_t r0, int64_t r1) {
    float fa[kBlk], fb[kBlk], fs[kBlk];
    for (int64_t r = r0; r < r1; ++r) {
      T* o = out + r * os;
      const T* pa = a + r * as;
      const T* pb = b + r * bs;
      fVec acc(0.f);
      for (int64_t c0 = 0; c0 < cols; c0 += kBlk) {
        const int64_t n = std::min(kBlk, cols - c0);
        add_round_store(as_float(pa + c0, fa, n), as_float(pb + c0, fb, n), fs, o + c0, n);
        accumulate_squares(fs, n, acc);
      }
      const float scale = 1.f / std::sqrt(lane_sum(acc) / static_cast<float>(cols) + eps);
      for (int64_t c0 = 0; c0 < cols; c0 += kBlk) {
        scale_inplace(o + c0, std::min(kBlk, cols - c0), scale, nullptr, fs);
      }
      copy.put(r, o, cols);
    }
  });
}

// Rounds n fp32 values to T and back in place (what eager holds after an op in dtype T); no-op for float.
template <typename T>
inline void round_through(float* buf, T* tmp, int64_t n) {
  if constexpr (!std::is_same_v<T, float>) {
    at::vec::convert(buf, tmp, n);
    at::vec::convert(tmp, buf, n);
  } else {
    (void)buf;
    (void)tmp;
    (void)n;
  }
}

// The injection of a level call, in eager's order and rounding: target = target + (src[0] + src[1] + ...),
// every partial sum rounded to T. All [rows, cols] contiguous; target may not alias a source (the caller
// checks). With copy.ptr set, each updated row is also copied there. n_src == 0: only the copy.
template <typename T>
void inject_add(T* target, const T* const* src, int64_t n_src, int64_t rows, int64_t cols, RowCopy<T> copy = {}) {
  at::parallel_for(0, rows, grain_for(cols), [&](int64_t r0, int64_t r1) {
    float acc[kBlk], fb[kBlk], ft[kBlk];
    T tmp[kBlk];
    for (int64_t r = r0; r < r1; ++r) {
      T* t = target + r * cols;
      for (int64_t c0 = 0; n_src > 0 && c0 < cols; c0 += kBlk) {
        const int64_t n = std::min(kBlk, cols - c0);
        const float* s0 = as_float(src[0] + r * cols + c0, fb, n);
        std::copy(s0, s0 + n, acc);
        for (int64_t j = 1; j < n_src; ++j) {
          const float* sj = as_float(src[j] + r * cols + c0, fb, n);
          int64_t i = 0;
          for (; i + kV <= n; i += kV) (fVec::loadu(acc + i) + fVec::loadu(sj + i)).store(acc + i);
          if (i < n) (fVec::loadu(acc + i, n - i) + fVec::loadu(sj + i, n - i)).store(acc + i, n - i);
          round_through(acc, tmp, n);
        }
        add_round_store(as_float(t + c0, ft, n), acc, fb, t + c0, n);
      }
      copy.put(r, t, cols);
    }
  });
}

// exp(-x) for silu. For bf16/fp16 activations exp_u20 (a polynomial good to a few fp32 ulp, about 2x faster
// than Sleef's 1-ulp exp): the result is rounded to 8 or 11 mantissa bits anyway. fp32 keeps the 1-ulp exp,
// so the fp32 path stays as close to eager as before (the recursion amplifies any rounding difference).
template <typename T>
inline fVec neg_exp(const fVec& x) {
  if constexpr (std::is_same_v<T, float>) {
    return x.neg().exp();
  } else {
    return x.neg().exp_u20();
  }
}

// out[r, c] = silu(gate[r, c]) * up[r, c] in fp32, rounded once.
template <typename T>
void swiglu(T* out, int64_t os, const T* gate, int64_t gs, const T* up, int64_t us, int64_t rows, int64_t cols) {
  at::parallel_for(0, rows, grain_for(cols), [&](int64_t r0, int64_t r1) {
    float fg[kBlk], fu[kBlk], fo[kBlk];
    const fVec one(1.f);
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t c0 = 0; c0 < cols; c0 += kBlk) {
        const int64_t n = std::min(kBlk, cols - c0);
        const float* g = as_float(gate + r * gs + c0, fg, n);
        const float* u = as_float(up + r * us + c0, fu, n);
        int64_t i = 0;
        for (; i + kV <= n; i += kV) {
          const fVec x = fVec::loadu(g + i);
          (x / (one + neg_exp<T>(x)) * fVec::loadu(u + i)).store(fo + i);
        }
        if (i < n) {
          const fVec x = fVec::loadu(g + i, n - i);
          (x / (one + neg_exp<T>(x)) * fVec::loadu(u + i, n - i)).store(fo + i, n - i);
        }
        store_as(fo, out + r * os + c0, n);
      }
    }
  });
}

// In-place NeoX RoPE on the first `heads` heads of each row; row r is at position r % seq_len.
// Same operation order as eager: x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x2, x1).
template <typename T>
void rope(T* x, int64_t rs, int64_t rows, int64_t heads, int64_t hd, int64_t seq_len, const float* cos,
          const float* sin) {
  const int64_t half = hd / 2;
  at::parallel_for(0, rows * heads, grain_for(hd), [&](int64_t t0, int64_t t1) {
    float fx[kMaxHeadDim], fo[kMaxHeadDim];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r = t / heads, h = t - r * heads;
      T* p = x + r * rs + h * hd;
      const float* c = cos + (r % seq_len) * hd;
      const float* s = sin + (r % seq_len) * hd;
      const float* v = as_float(p, fx, hd);
      int64_t i = 0;
      for (; i < half; i += kV) {
        const int64_t n = std::min(kV, half - i);
        const fVec x1 = fVec::loadu(v + i, n), x2 = fVec::loadu(v + half + i, n);
        (x1 * fVec::loadu(c + i, n) + x2.neg() * fVec::loadu(s + i, n)).store(fo + i, n);
        (x2 * fVec::loadu(c + half + i, n) + x1 * fVec::loadu(s + half + i, n)).store(fo + half + i, n);
      }
      store_as(fo, p, hd);
    }
  });
}

// Logical [n0, n1, n2] tensors with element strides (s0, s1, 1): out = rms_norm over axis 1 of (a + b).
// Tasks are (i0, chunk of kColChunk columns); out may alias a or b element for element.
template <typename T>
void add_rms_norm_dim1(T* out, const int64_t* ost, const T* a, const int64_t* ast, const T* b, const int64_t* bst,
                       int64_t n0, int64_t n1, int64_t n2, float eps) {
  const int64_t chunks = (n2 + kColChunk - 1) / kColChunk;
  at::parallel_for(0, n0 * chunks, grain_for(n1 * kColChunk), [&](int64_t t0, int64_t t1) {
    float fa[kColChunk], fb[kColChunk], fs[kColChunk], acc[kColChunk];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i0 = t / chunks, c0 = (t - i0 * chunks) * kColChunk;
      const int64_t n = std::min(kColChunk, n2 - c0);
      T* o = out + i0 * ost[0] + c0;
      const T* pa = a + i0 * ast[0] + c0;
      const T* pb = b + i0 * bst[0] + c0;
      std::fill(acc, acc + kColChunk, 0.f);
      for (int64_t l = 0; l < n1; ++l) {
        add_round_store(as_float(pa + l * ast[1], fa, n), as_float(pb + l * bst[1], fb, n), fs, o + l * ost[1], n);
        for (int64_t i = 0; i < n; ++i) acc[i] += fs[i] * fs[i];
      }
      for (int64_t i = 0; i < n; ++i) acc[i] = 1.f / std::sqrt(acc[i] / static_cast<float>(n1) + eps);
      for (int64_t l = 0; l < n1; ++l) scale_inplace(o + l * ost[1], n, 0.f, acc, fs);
    }
  });
}

}  // namespace fastrecur::cpu
