// CPU implementations of the elementwise parts of a fastrecur block (fused residual add + RMSNorm over the
// row or over the token axis, fused SwiGLU activation, in-place NeoX RoPE, the injection sum). Header-only:
// it is compiled into the single torch-facing translation unit, bindings.cpp (one TU keeps the CI build
// short), through dispatch.h.
//
// Every kernel works one vector of kV fp32 lanes at a time, in registers: values are loaded from the
// activation dtype and widened (vload<T>), the math runs on at::vec::Vectorized<float>, and results are
// rounded once to the activation dtype on the store (vstore<T>, round-to-nearest-even like torch's casts).
// The bf16/fp16 conversions are vector instructions (AVX-512: masked loads and stores for the tails too;
// AVX2: F16C and integer shifts, tails through a small stack buffer); only the portable build
// (FASTRECUR_CPU_ISA=default) converts lane by lane. Rows (or column chunks) are spread over threads with
// at::parallel_for. Callers validate shapes and aliasing; these functions trust their arguments. The
// innermost axis must be contiguous (stride 1).
//
// Memory traffic: each kernel reads its inputs and writes its outputs once from memory; the two-pass norms
// re-read a row's fp32 buffer or a 64-column strip they have just written, from L1/L2. fastrecur.bench.roofline
// measures each kernel against a copy of the same bytes.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace fastrecur::cpu {

using fVec = at::vec::Vectorized<float>;
constexpr int64_t kV = fVec::size();
constexpr int64_t kMaxHeadDim = 1024;  // largest RoPE head_dim the ops accept (the CUDA kernels' limit too)
constexpr int64_t kColChunk = 64;      // token-axis norm: columns handled per task (a multiple of kV)
constexpr int64_t kGrainElems = 32768; // rough work per parallel task, in elements
static_assert(kColChunk % kV == 0, "kColChunk must be a multiple of the vector length");

inline int64_t grain_for(int64_t elems_per_item) {
  return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, elems_per_item));
}

// ---------------------------------------------------------------------------------------------------------
// Vector loads and stores in the activation dtype: vload<T>(p) widens kV values to fp32, vstore<T>(p, v) rounds
// kV fp32 values to T (nearest-even; NaN stays NaN). The (p, n) forms handle a tail of n < kV elements
// (loads zero-fill the missing lanes; stores write only n elements).
// ---------------------------------------------------------------------------------------------------------

#if defined(CPU_CAPABILITY_AVX512)

inline __mmask16 tail_mask(int64_t n) { return static_cast<__mmask16>((1u << n) - 1u); }

inline __m512 bf16_bits_to_fp32(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

#if defined(__AVX512BF16__)
// One instruction (AVX512-BF16): round-to-nearest-even like the integer sequence below, except that fp32
// subnormals (|x| < 1.2e-38) become zero.
inline __m256i fp32_to_bf16_bits(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); }
#else
inline __m256i fp32_to_bf16_bits(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  r = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), _mm512_set1_epi32(0x7fc0), r);  // NaN
  return _mm512_cvtepi32_epi16(r);
}
#endif

template <typename T>
inline fVec vload(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return fVec(_mm512_loadu_ps(p));
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    return fVec(bf16_bits_to_fp32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
  } else {
    return fVec(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
  }
}

template <typename T>
inline fVec vload(const T* p, int64_t n) {
  const __mmask16 m = tail_mask(n);
  if constexpr (std::is_same_v<T, float>) {
    return fVec(_mm512_maskz_loadu_ps(m, p));
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    return fVec(bf16_bits_to_fp32(_mm256_maskz_loadu_epi16(m, p)));
  } else {
    return fVec(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p)));
  }
}

template <typename T>
inline __m256i to_bits16(const fVec& v) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    return fp32_to_bf16_bits(static_cast<__m512>(v));
  } else {
    return _mm512_cvtps_ph(static_cast<__m512>(v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
}

template <typename T>
inline void vstore(T* p, const fVec& v) {
  if constexpr (std::is_same_v<T, float>) {
    _mm512_storeu_ps(p, static_cast<__m512>(v));
  } else {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), to_bits16<T>(v));
  }
}

template <typename T>
inline void vstore(T* p, const fVec& v, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    _mm512_mask_storeu_ps(p, tail_mask(n), static_cast<__m512>(v));
  } else {
    _mm256_mask_storeu_epi16(p, tail_mask(n), to_bits16<T>(v));
  }
}

template <typename T>
inline fVec from_bits16(__m256i h) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    return fVec(bf16_bits_to_fp32(h));
  } else {
    return fVec(_mm512_cvtph_ps(h));
  }
}

// v rounded to T and widened back: what eager torch holds after an op whose result has dtype T.
template <typename T>
inline fVec round_to(const fVec& v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    return from_bits16<T>(to_bits16<T>(v));
  }
}

// Stores v rounded to T and returns the rounded value (one conversion for both).
template <typename T>
inline fVec vstore_round(T* p, const fVec& v) {
  if constexpr (std::is_same_v<T, float>) {
    vstore(p, v);
    return v;
  } else {
    const __m256i h = to_bits16<T>(v);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), h);
    return from_bits16<T>(h);
  }
}

template <typename T>
inline fVec vstore_round(T* p, const fVec& v, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    vstore(p, v, n);
    return v;
  } else {
    const __m256i h = to_bits16<T>(v);
    _mm256_mask_storeu_epi16(p, tail_mask(n), h);
    return from_bits16<T>(h);
  }
}

#else  // AVX2 or the portable build: whole vectors with F16C / integer shifts (AVX2) or lane by lane

#if defined(CPU_CAPABILITY_AVX2)
inline __m256 bf16_bits_to_fp32(__m128i h) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

inline __m128i fp32_to_bf16_bits(__m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}
#endif

template <typename T>
inline fVec vload(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return fVec::loadu(p);
  } else {
#if defined(CPU_CAPABILITY_AVX2)
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      return fVec(bf16_bits_to_fp32(h));
    } else {
      return fVec(_mm256_cvtph_ps(h));
    }
#else
    float buf[kV];
    for (int64_t i = 0; i < kV; ++i) buf[i] = static_cast<float>(p[i]);
    return fVec::loadu(buf);
#endif
  }
}

template <typename T>
inline fVec vload(const T* p, int64_t n) {
  T buf[kV] = {};
  std::memcpy(buf, p, n * sizeof(T));
  return vload<T>(buf);
}

template <typename T>
inline void vstore(T* p, const fVec& v) {
  if constexpr (std::is_same_v<T, float>) {
    v.store(p);
  } else {
#if defined(CPU_CAPABILITY_AVX2)
    __m128i h;
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      h = fp32_to_bf16_bits(static_cast<__m256>(v));
    } else {
      h = _mm256_cvtps_ph(static_cast<__m256>(v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), h);
#else
    float buf[kV];
    v.store(buf);
    for (int64_t i = 0; i < kV; ++i) p[i] = static_cast<T>(buf[i]);
#endif
  }
}

template <typename T>
inline void vstore(T* p, const fVec& v, int64_t n) {
  T buf[kV];
  vstore<T>(buf, v);
  std::memcpy(p, buf, n * sizeof(T));
}

template <typename T>
inline fVec round_to(const fVec& v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    T buf[kV];
    vstore<T>(buf, v);
    return vload<T>(buf);
  }
}

template <typename T>
inline fVec vstore_round(T* p, const fVec& v) {
  vstore(p, v);
  return std::is_same_v<T, float> ? v : vload(p);
}

template <typename T>
inline fVec vstore_round(T* p, const fVec& v, int64_t n) {
  vstore(p, v, n);
  return std::is_same_v<T, float> ? v : vload(p, n);
}

#endif

inline float lane_sum(const fVec& v) {
  float t[kV];
  v.store(t);
  float s = 0.f;
  for (int64_t i = 0; i < kV; ++i) s += t[i];
  return s;
}

// A second destination for finished rows: row r (of rows laid out as [n0, seq]) is also written to
// ptr + (r / seq) * s0 + (r % seq) * s1 (element offsets), e.g. the [seq, n0, cols] transposed copy the next
// token-mixer block reads. ptr == nullptr: none.
template <typename T>
struct RowCopy {
  T* ptr = nullptr;
  int64_t seq = 1, s0 = 0, s1 = 0;
  T* row(int64_t r) const { return ptr ? ptr + (r / seq) * s0 + (r % seq) * s1 : nullptr; }
};

// out[r, :] = rms_norm(a[r, :] + b[r, :]); out may be a or b (each element is read before it is written).
// With copy.ptr set, each finished row is also written there.
// Pass 1 keeps the sum rounded to T (exactly what eager holds after `a + b` in dtype T, which the norm must
// see) as fp32 in a row buffer (L1) and accumulates its squares lane-wise; pass 2 scales the buffer into out
// (fp32 at batch 8 on the EPYC: 15 % faster than storing in pass 1 and re-reading out).
template <typename T>
void add_rms_norm_rows(T* out, int64_t os, const T* a, int64_t as, const T* b, int64_t bs, int64_t rows,
                       int64_t cols, float eps, RowCopy<T> copy = {}) {
  const int64_t full = cols - cols % kV, tail = cols - full;
  at::parallel_for(0, rows, grain_for(cols), [&](int64_t r0, int64_t r1) {
    std::vector<float> sums(static_cast<size_t>(cols));  // the row's rounded sums, for pass 2 (L1)
    float* sb = sums.data();
    for (int64_t r = r0; r < r1; ++r) {
      T* o = out + r * os;
      const T* pa = a + r * as;
      const T* pb = b + r * bs;
      T* o2 = copy.row(r);
      fVec acc(0.f);
      for (int64_t c = 0; c < full; c += kV) {
        const fVec s = round_to<T>(vload(pa + c) + vload(pb + c));
        s.store(sb + c);
        acc = at::vec::fmadd(s, s, acc);
      }
      if (tail) {
        const fVec s = round_to<T>(vload(pa + full, tail) + vload(pb + full, tail));
        s.store(sb + full, static_cast<int>(tail));
        acc = at::vec::fmadd(s, s, acc);
      }
      const fVec scale(1.f / std::sqrt(lane_sum(acc) / static_cast<float>(cols) + eps));
      for (int64_t c = 0; c < full; c += kV) {
        const fVec y = fVec::loadu(sb + c) * scale;
        vstore(o + c, y);
        if (o2) vstore(o2 + c, y);
      }
      if (tail) {
        const fVec y = fVec::loadu(sb + full, static_cast<int>(tail)) * scale;
        vstore(o + full, y, tail);
        if (o2) vstore(o2 + full, y, tail);
      }
    }
  });
}

// The injection of a level call, in eager's order and rounding: target = target + (src[0] + src[1] + ...),
// every partial sum rounded to T. All [rows, cols] contiguous; a source may be target itself (each element
// is read before it is written). With copy.ptr set, each updated row is also written there. n_src == 0:
// only the copy.
template <typename T>
void inject_add(T* target, const T* const* src, int64_t n_src, int64_t rows, int64_t cols, RowCopy<T> copy = {}) {
  const int64_t full = cols - cols % kV, tail = cols - full;
  at::parallel_for(0, rows, grain_for(cols), [&](int64_t r0, int64_t r1) {
    auto one = [&](T* t, T* t2, int64_t off, int64_t n) {
      fVec v;
      if (n_src > 0) {
        fVec acc = n == kV ? vload(src[0] + off) : vload(src[0] + off, n);
        for (int64_t j = 1; j < n_src; ++j) {
          acc = round_to<T>(acc + (n == kV ? vload(src[j] + off) : vload(src[j] + off, n)));
        }
        v = (n == kV ? vload(t) : vload(t, n)) + acc;
      } else {
        v = n == kV ? vload(t) : vload(t, n);
      }
      if (n == kV) {
        if (n_src > 0) vstore(t, v);
        if (t2) vstore(t2, v);
      } else {
        if (n_src > 0) vstore(t, v, n);
        if (t2) vstore(t2, v, n);
      }
    };
    for (int64_t r = r0; r < r1; ++r) {
      T* t = target + r * cols;
      T* t2 = copy.row(r);
      for (int64_t c = 0; c < full; c += kV) one(t + c, t2 ? t2 + c : nullptr, r * cols + c, kV);
      if (tail) one(t + full, t2 ? t2 + full : nullptr, r * cols + full, tail);
    }
  });
}

#if defined(CPU_CAPABILITY_AVX512)
// exp(x) for the 16-bit SwiGLU: x clamped to [-88, 88] (the product it feeds is then exact to the output's
// precision), split as n * ln2 + r with n an integer (ln2 in two parts, Cody-Waite) and |r| <= ln2 / 2,
// e^r by its degree-6 Taylor polynomial (relative error below 1.3e-7, about one fp32 ulp), times 2^n by
// scalef. Eleven vector operations; Sleef's 1-ulp exp takes about twice that, at::vec's exp_u20 about 20.
inline __m512 exp_fast(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-88.f)), _mm512_set1_ps(88.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723212e-6f), r);
  __m512 p = _mm512_set1_ps(1.f / 720.f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}
#endif

// silu(x) * u = x * u / (1 + exp(-x)). fp32 keeps Sleef's 1-ulp exp and a true division, so the fp32 path
// stays as close to eager as before (the recursion amplifies any rounding difference). bf16/fp16 results
// are rounded to 8 or 11 mantissa bits, so there a cheaper exp (AVX-512: exp_fast, about one fp32 ulp;
// otherwise at::vec's exp_u20) and, on AVX-512, a reciprocal estimate refined by one Newton step (relative
// error about 2^-23, several times cheaper than a division) suffice.
template <typename T>
inline fVec silu_mul(const fVec& x, const fVec& u) {
  const fVec one(1.f);
  if constexpr (std::is_same_v<T, float>) {
    return x / (one + x.neg().exp()) * u;
  } else {
#if defined(CPU_CAPABILITY_AVX512)
    const __m512 d = _mm512_add_ps(one, exp_fast(x.neg()));  // in [1, e^88]: finite, so is its reciprocal
    const __m512 r0 = _mm512_rcp14_ps(d);
    const __m512 r = _mm512_mul_ps(r0, _mm512_fnmadd_ps(d, r0, _mm512_set1_ps(2.f)));  // r0 * (2 - d * r0)
    return x * u * fVec(r);
#else
    return x / (one + x.neg().exp_u20()) * u;
#endif
  }
}

// out[r, c] = silu(gate[r, c]) * up[r, c] in fp32, rounded once.
template <typename T>
void swiglu(T* out, int64_t os, const T* gate, int64_t gs, const T* up, int64_t us, int64_t rows, int64_t cols) {
  const int64_t full = cols - cols % kV, tail = cols - full;
  at::parallel_for(0, rows, grain_for(cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* o = out + r * os;
      const T* g = gate + r * gs;
      const T* u = up + r * us;
      for (int64_t c = 0; c < full; c += kV) vstore(o + c, silu_mul<T>(vload(g + c), vload(u + c)));
      if (tail) vstore(o + full, silu_mul<T>(vload(g + full, tail), vload(u + full, tail)), tail);
    }
  });
}

// In-place NeoX RoPE on the first `heads` heads of each row; row r is at position r % seq_len.
// Same operation order as eager: x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x2, x1). Element i
// of each half is read before either is written, so the update is in place without staging.
template <typename T>
void rope(T* x, int64_t rs, int64_t rows, int64_t heads, int64_t hd, int64_t seq_len, const float* cos,
          const float* sin) {
  const int64_t half = hd / 2, full = half - half % kV, tail = half - full;
  at::parallel_for(0, rows, grain_for(heads * hd), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* c = cos + (r % seq_len) * hd;
      const float* s = sin + (r % seq_len) * hd;
      for (int64_t h = 0; h < heads; ++h) {
        T* p = x + r * rs + h * hd;
        for (int64_t i = 0; i < full; i += kV) {
          const fVec x1 = vload(p + i), x2 = vload(p + half + i);
          vstore(p + i, x1 * vload(c + i) + x2.neg() * vload(s + i));
          vstore(p + half + i, x2 * vload(c + half + i) + x1 * vload(s + half + i));
        }
        if (tail) {
          const int64_t i = full;
          const fVec x1 = vload(p + i, tail), x2 = vload(p + half + i, tail);
          vstore(p + i, x1 * vload(c + i, tail) + x2.neg() * vload(s + i, tail), tail);
          vstore(p + half + i, x2 * vload(c + half + i, tail) + x1 * vload(s + half + i, tail), tail);
        }
      }
    }
  });
}

// Logical [n0, n1, n2] tensors with element strides (s0, s1, 1): out = rms_norm over axis 1 of (a + b).
// Tasks are (i0, strip of kColChunk columns); the strip's sums of squares stay in registers. out may alias a
// or b element for element. Pass 1 stores the rounded sums, pass 2 scales the strip it re-reads (from L1/L2).
template <typename T>
void add_rms_norm_dim1(T* out, const int64_t* ost, const T* a, const int64_t* ast, const T* b, const int64_t* bst,
                       int64_t n0, int64_t n1, int64_t n2, float eps) {
  constexpr int64_t kVecs = kColChunk / kV;
  const int64_t chunks = (n2 + kColChunk - 1) / kColChunk;
  at::parallel_for(0, n0 * chunks, grain_for(n1 * kColChunk), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i0 = t / chunks, c0 = (t - i0 * chunks) * kColChunk;
      const int64_t n = std::min(kColChunk, n2 - c0);
      T* o = out + i0 * ost[0] + c0;
      const T* pa = a + i0 * ast[0] + c0;
      const T* pb = b + i0 * bst[0] + c0;
      fVec acc[kVecs];
      for (int64_t v = 0; v < kVecs; ++v) acc[v] = fVec(0.f);
      if (n == kColChunk) {
        for (int64_t l = 0; l < n1; ++l) {
          for (int64_t v = 0; v < kVecs; ++v) {
            const int64_t off = l * ost[1] + v * kV;
            const fVec s = vstore_round(o + off, vload(pa + l * ast[1] + v * kV) + vload(pb + l * bst[1] + v * kV));
            acc[v] = at::vec::fmadd(s, s, acc[v]);
          }
        }
      } else {  // the last strip of a width that is not a multiple of kColChunk
        for (int64_t l = 0; l < n1; ++l) {
          for (int64_t v = 0; v * kV < n; ++v) {
            const int64_t m = std::min(kV, n - v * kV);
            const fVec sum = vload(pa + l * ast[1] + v * kV, m) + vload(pb + l * bst[1] + v * kV, m);
            const fVec s = vstore_round(o + l * ost[1] + v * kV, sum, m);
            acc[v] = at::vec::fmadd(s, s, acc[v]);
          }
        }
      }
      const fVec vn(static_cast<float>(n1)), veps(eps), one(1.f);
      for (int64_t v = 0; v < kVecs; ++v) acc[v] = one / (acc[v] / vn + veps).sqrt();
      for (int64_t l = 0; l < n1; ++l) {
        T* row = o + l * ost[1];
        for (int64_t v = 0; v * kV < n; ++v) {
          const int64_t m = std::min(kV, n - v * kV);
          if (m == kV) {
            vstore(row + v * kV, vload(row + v * kV) * acc[v]);
          } else {
            vstore(row + v * kV, vload(row + v * kV, m) * acc[v], m);
          }
        }
      }
    }
  });
}

}  // namespace fastrecur::cpu
