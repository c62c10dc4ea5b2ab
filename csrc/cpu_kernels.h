// CPU implementations of the elementwise parts of a fastrecur block (fused residual add + RMSNorm over the
// row or over the token axis, fused SwiGLU activation, in-place NeoX RoPE, the injection sum). Header-only:
// it is compiled into the single torch-facing translation unit, bindings.cpp (one TU keeps the CI build
// short), through dispatch.h.
//
// Every kernel works in registers: values are loaded from the activation dtype and widened to fp32, the math
// runs on at::vec::Vectorized<float>, and results are rounded once to the activation dtype on the store
// (round-to-nearest-even like torch's casts). The norms, SwiGLU and the injection step over pairs of vectors
// (pload/pstore, 2 * kV elements; bf16 on AVX-512 as even/odd halves, see there), RoPE over single vectors
// (vload/vstore) because its fp32 tables are indexed in element order. The bf16/fp16 conversions are vector
// instructions (AVX-512: masked loads and stores for the tails too; AVX2: F16C and integer shifts, tails
// through a small stack buffer); only the portable build (FASTRECUR_CPU_ISA=default) converts lane by lane.
// Rows (or column chunks) are spread over threads with at::parallel_for. Callers validate shapes and
// aliasing; these functions trust their arguments. The innermost axis must be contiguous (stride 1).
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
// Token-axis norm: bytes of a row each task handles (a strip of kStripBytes / sizeof(T) columns). Wide strips
// (eight cache lines per row) make longer runs through the strided rows of the mixer's [S, B * D] operand and
// keep more independent accumulators (on the EPYC, one thread, batch 8: fp32 99 us against 151 with four lines,
// bf16 60 against 62), but give fewer tasks; add_rms_norm_dim1 falls back to four lines when the wide strips
// would give a thread fewer than two tasks (two threads, batch 1, bf16: 7.1 us against 11.0 with one task
// each).
constexpr int64_t kStripBytesWide = 512, kStripBytesNarrow = 256;
constexpr int64_t kGrainElems = 32768; // rough work per parallel task, in elements
static_assert(kStripBytesNarrow % (2 * kV * 4) == 0, "a strip must hold whole pairs of every dtype");

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

#endif


// ---------------------------------------------------------------------------------------------------------
// Pairs: the kernels step over kP = 2 * kV elements as two fp32 vectors (Pair::lo, Pair::hi). For bf16 on
// AVX-512 the halves are the even and the odd elements of 32 consecutive values: one 512-bit load, then a
// shift (even) and a mask (odd) widen them, and the store packs them back with one rounding instruction and
// one word permute. Zen 4 runs the lane-crossing widen of the 16-at-a-time path (vpmovzxwd) at a fraction
// of this rate (the bf16 injection sum at batch 8: 43 % of a copy that way, 51 % this way, on the EPYC of
// benchmarks/results). Elsewhere the halves are the first and the second kV elements. Kernels only combine
// lanes of the same position, so the order shows nowhere except in fp32 scratch the kernel itself writes and
// reads back (the same order both times). pload(p, n): a tail of 0 < n < kP elements; pstore(p, v, n): the
// first n <= kP.
// ---------------------------------------------------------------------------------------------------------

constexpr int64_t kP = 2 * kV;

struct Pair {
  fVec lo, hi;
};

inline Pair operator+(const Pair& x, const Pair& y) { return {x.lo + y.lo, x.hi + y.hi}; }
inline Pair operator-(const Pair& x, const Pair& y) { return {x.lo - y.lo, x.hi - y.hi}; }
inline Pair operator*(const Pair& x, const Pair& y) { return {x.lo * y.lo, x.hi * y.hi}; }

#if defined(CPU_CAPABILITY_AVX512)
inline __mmask32 tail_mask32(int64_t n) { return static_cast<__mmask32>((uint64_t{1} << n) - 1u); }

// bf16 bit pairs (32 values in a 512-bit register) <-> fp32 (even, odd) halves.
inline Pair bf16x32_to_pair(__m512i v) {
  return {fVec(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16))),
          fVec(_mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xffff0000u)))))};
}

// v rounded to bf16 (nearest-even) in the upper 16 bits of each lane, NaN kept NaN; the lower bits are junk.
inline __m512i bf16_round_bits(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  return _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), r, _mm512_set1_epi32(0x7fc00000));
}

// Two rounded halves (upper 16 bits meaningful) merged into 32 bf16 values: odd & 0xffff0000 | even >> 16.
inline __m512i merge_bf16_bits(__m512i even, __m512i odd) {
  return _mm512_ternarylogic_epi32(odd, _mm512_srli_epi32(even, 16), _mm512_set1_epi32(static_cast<int>(0xffff0000u)),
                                   0xE4);  // (odd & mask) | (even & ~mask)
}

#if defined(__AVX512BF16__)
// Word permutes (vpermw index tables) that undo vcvtne2ps2bf16's "blocked" order, where the even elements of a
// pair land in words 0-15 and the odd ones in 16-31: element i sits at blocked word b(i) = i / 2 (i even) or
// 16 + i / 2 (i odd). Depth 1: result word i <- blocked word b(i) (pair -> element order). Depth 2: the same
// after a second split + cvtne2ps of a blocked register, b(b(i)) (used by store_kept below).
template <int Depth>
struct FromBlocked {
  alignas(64) uint16_t idx[32];
  constexpr FromBlocked() : idx{} {
    auto b = [](int i) { return i % 2 == 0 ? i / 2 : 16 + i / 2; };
    for (int i = 0; i < 32; ++i) idx[i] = static_cast<uint16_t>(Depth == 1 ? b(i) : b(b(i)));
  }
};
inline constexpr FromBlocked<1> kBlockedToElements{};
inline constexpr FromBlocked<2> kTwiceBlockedToElements{};
#endif

inline __m512i pair_to_bf16x32(const Pair& v) {
#if defined(__AVX512BF16__)
  // One rounding instruction for all 32 (halves end up blocked), then an in-register word permute
  // interleaves them.
  const __m512i blocked = (__m512i)_mm512_cvtne2ps_pbh(static_cast<__m512>(v.hi), static_cast<__m512>(v.lo));
  return _mm512_permutexvar_epi16(_mm512_load_si512(kBlockedToElements.idx), blocked);
#else
  return merge_bf16_bits(bf16_round_bits(static_cast<__m512>(v.lo)), bf16_round_bits(static_cast<__m512>(v.hi)));
#endif
}
#endif

// Two vectors in element order, for every T (the pair layout of every type but bf16 on AVX-512).
template <typename T>
inline Pair pload_elems(const T* p) {
  return {vload(p), vload(p + kV)};
}

template <typename T>
inline Pair pload_elems(const T* p, int64_t n) {
  if (n <= kV) return {n == kV ? vload(p) : vload(p, n), fVec(0.f)};
  return {vload(p), vload(p + kV, n - kV)};
}

template <typename T>
inline void pstore_elems(T* p, const Pair& v) {
  vstore(p, v.lo);
  vstore(p + kV, v.hi);
}

template <typename T>
inline void pstore_elems(T* p, const Pair& v, int64_t n) {
  if (n <= kV) {
    n == kV ? vstore(p, v.lo) : vstore(p, v.lo, n);
  } else {
    vstore(p, v.lo);
    vstore(p + kV, v.hi, n - kV);
  }
}

template <typename T>
inline Pair pload(const T* p) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, c10::BFloat16>) return bf16x32_to_pair(_mm512_loadu_si512(p));
#endif
  return pload_elems(p);
}

template <typename T>
inline Pair pload(const T* p, int64_t n) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, c10::BFloat16>) return bf16x32_to_pair(_mm512_maskz_loadu_epi16(tail_mask32(n), p));
#endif
  return pload_elems(p, n);
}

#if defined(CPU_CAPABILITY_AVX512)
// The first n (0 < n <= kP) of 32 fp16 values, converted as two halves of 16 (element order), stored at p.
inline void store_half_bits(c10::Half* p, __m256i lo, __m256i hi, int64_t n) {
  auto* q = reinterpret_cast<__m256i*>(p);
  if (n == kP) {
    _mm256_storeu_si256(q, lo);
    _mm256_storeu_si256(q + 1, hi);
  } else if (n <= kV) {
    _mm256_mask_storeu_epi16(q, tail_mask(n), lo);
  } else {
    _mm256_storeu_si256(q, lo);
    _mm256_mask_storeu_epi16(q + 1, tail_mask(n - kV), hi);
  }
}
#endif

// Stores the first n (0 < n <= kP) elements of v to p and, when p2 is not null, to p2 too (a row copy),
// converting to T once. pstore(p, v[, n]): p only.
template <typename T>
inline void pstore_to(T* p, T* p2, const Pair& v, int64_t n = kP) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const __m512i h = pair_to_bf16x32(v);
    for (T* q : {p, p2}) {
      if (q) n == kP ? _mm512_storeu_si512(q, h) : _mm512_mask_storeu_epi16(q, tail_mask32(n), h);
    }
    return;
  } else if constexpr (std::is_same_v<T, c10::Half>) {
    const __m256i lo = to_bits16<T>(v.lo), hi = to_bits16<T>(v.hi);
    for (T* q : {p, p2}) {
      if (q) store_half_bits(q, lo, hi, n);
    }
    return;
  }
#endif
  for (T* q : {p, p2}) {
    if (q) n == kP ? pstore_elems(q, v) : pstore_elems(q, v, n);
  }
}

template <typename T>
inline void pstore(T* p, const Pair& v, int64_t n = kP) {
  pstore_to<T>(p, nullptr, v, n);
}

// v rounded to T and widened back (what eager holds after an op with a result of dtype T), layout kept.
template <typename T>
inline Pair pround(const Pair& v) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const __m512i m = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
    return {fVec(_mm512_castsi512_ps(_mm512_and_si512(bf16_round_bits(static_cast<__m512>(v.lo)), m))),
            fVec(_mm512_castsi512_ps(_mm512_and_si512(bf16_round_bits(static_cast<__m512>(v.hi)), m)))};
  }
#endif
  return {round_to<T>(v.lo), round_to<T>(v.hi)};
}

// Stores v rounded to T (n elements; n == kP: all) and returns the rounded values (one rounding for both).
template <typename T>
inline Pair pstore_round(T* p, const Pair& v, int64_t n = kP) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const __m512i lo = bf16_round_bits(static_cast<__m512>(v.lo)), hi = bf16_round_bits(static_cast<__m512>(v.hi));
    const __m512i packed = merge_bf16_bits(lo, hi), m = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
    n == kP ? _mm512_storeu_si512(p, packed) : _mm512_mask_storeu_epi16(p, tail_mask32(n), packed);
    return {fVec(_mm512_castsi512_ps(_mm512_and_si512(lo, m))), fVec(_mm512_castsi512_ps(_mm512_and_si512(hi, m)))};
  } else if constexpr (std::is_same_v<T, c10::Half>) {
    // Each half converted once, stored and widened back from the same bits (F16C conversions are what the
    // fp16 kernels are bound by on Zen 4).
    const __m256i lo = to_bits16<T>(v.lo), hi = to_bits16<T>(v.hi);
    store_half_bits(p, lo, hi, n);
    return {from_bits16<T>(lo), from_bits16<T>(hi)};
  }
#endif
  const Pair r = pround<T>(v);
  pstore(p, r, n);
  return r;
}

// fp32 scratch in the pair layout (written and read back by the same kernel).
inline void pstore_f32(float* p, const Pair& v) {
  v.lo.store(p);
  v.hi.store(p + kV);
}
inline Pair pload_f32(const float* p) { return {fVec::loadu(p), fVec::loadu(p + kV)}; }

// The rounded sums the two-pass norms keep between their passes, one full pair (kP elements) per slot: the
// rows kernel keeps them in an fp32 row buffer (S = float), the token-axis kernel in out itself (S = T).
// keep_rounded stores v rounded to T and returns the rounded values; load_kept reads them back; store_kept
// writes a pair read that way (and scaled) to out in element order, and to a row copy when p2 is set.
// Generic: fp32 pairs or T in pair layout.
// bf16 with AVX512-BF16: one instruction (vcvtne2ps2bf16) rounds all 32 sums and they are kept as bf16 in
// its "blocked" order (the even elements in words 0-15, the odd ones in 16-31); split into a pair they come
// back in a permuted lane order that only the sums of squares and the scale see (the same for every slot
// at the same column offset, so column-wise scales line up too), and store_kept undoes both orders with one
// word permute. That halves the conversions of the integer rounding (bf16 add + norm at batch 8 on the EPYC:
// 41 % of a copy, against 32 % with the integer rounding and 30 % with the 16-at-a-time path).
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
template <typename T>
constexpr bool kKeepBlocked = std::is_same_v<T, c10::BFloat16>;
#else
template <typename T>
constexpr bool kKeepBlocked = false;
#endif

template <typename T, typename S>
inline Pair keep_rounded(S* slot, const Pair& v) {
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
  if constexpr (kKeepBlocked<T>) {
    const __m512i h = (__m512i)_mm512_cvtne2ps_pbh(static_cast<__m512>(v.hi), static_cast<__m512>(v.lo));
    _mm512_storeu_si512(slot, h);
    return bf16x32_to_pair(h);
  }
#endif
  if constexpr (std::is_same_v<S, float>) {
    const Pair r = pround<T>(v);
    pstore_f32(slot, r);
    return r;
  } else {
    return pstore_round(slot, v);
  }
}

template <typename T, typename S>
inline Pair load_kept(const S* slot) {
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
  if constexpr (kKeepBlocked<T>) return bf16x32_to_pair(_mm512_loadu_si512(slot));
#endif
  if constexpr (std::is_same_v<S, float>) {
    return pload_f32(slot);
  } else {
    return pload(slot);
  }
}

template <typename T>
inline void store_kept(T* p, T* p2, const Pair& y) {
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
  if constexpr (kKeepBlocked<T>) {
    const __m512i h = (__m512i)_mm512_cvtne2ps_pbh(static_cast<__m512>(y.hi), static_cast<__m512>(y.lo));
    const __m512i e = _mm512_permutexvar_epi16(_mm512_load_si512(kTwiceBlockedToElements.idx), h);
    _mm512_storeu_si512(p, e);
    if (p2) _mm512_storeu_si512(p2, e);
    return;
  }
#endif
  pstore_to(p, p2, y);
}

#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
// round_bf16(a + b) for the 32 bf16 values at pa and at pb, in vcvtne2ps2bf16's blocked order (what
// keep_rounded keeps), without widening either operand: the words (a_i, b_i) of one fp32 lane dotted with
// (1, 1) by vdpbf16ps are a_i + b_i as an fp32 add rounds it (both products exact, each step rounded to nearest
// even), so two blends of a with b shifted and two dot products give the even and the odd sums. Four vector
// operations instead of eight, half of them on the FMA pipes, which the add pipes' conversions leave idle.
// The dot products start from -0 (-0 + b is b for every b, so -0 + -0 stays -0). Like every vdpbf16ps,
// subnormal inputs read as zero (values below 1.2e-38; the rounding instruction flushes fp32 subnormals the
// same way). Checked bit for bit against the widen-add-round path on 12.8 million random pairs.
inline __m512i bf16x32_add_blocked(const c10::BFloat16* pa, const c10::BFloat16* pb) {
  const __m512i a = _mm512_loadu_si512(pa), b = _mm512_loadu_si512(pb);
  const __m512bh ones = (__m512bh)_mm512_set1_epi32(0x3F803F80);  // bf16 1.0 in both words
  const __m512i even = _mm512_mask_blend_epi16(0xAAAAAAAAu, a, _mm512_slli_epi32(b, 16));  // (a_2i, b_2i)
  const __m512i odd = _mm512_mask_blend_epi16(0x55555555u, a, _mm512_srli_epi32(b, 16));   // (b_2i+1, a_2i+1)
  const __m512 neg0 = _mm512_set1_ps(-0.f);  // -0 + b is b for every b, so -0 + -0 keeps its sign
  return (__m512i)_mm512_cvtne2ps_pbh(_mm512_dpbf16_ps(neg0, (__m512bh)odd, ones),
                                      _mm512_dpbf16_ps(neg0, (__m512bh)even, ones));
}
#endif

// Pass 1 of the two-pass norms for one full pair: keeps round_T(pa[i] + pb[i]) in slot (keep_rounded's
// layout) and returns the kept values.
template <typename T, typename S>
inline Pair keep_sum(S* slot, const T* pa, const T* pb) {
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
  if constexpr (kKeepBlocked<T>) {
    const __m512i h = bf16x32_add_blocked(pa, pb);
    _mm512_storeu_si512(slot, h);
    return bf16x32_to_pair(h);
  }
#endif
  return keep_rounded<T>(slot, pload(pa) + pload(pb));
}

// 1 / sqrt(sum(lanes of squares) / n + eps) in every lane. AVX-512: the lanes are summed by shuffles and the
// square root and division stay in vector registers (the scalar round trip it replaces cost the bf16 rows
// norm about a tenth of its time on Zen 4, waiting on the chain).
inline fVec rms_scale(const fVec& squares, float n, float eps) {
#if defined(CPU_CAPABILITY_AVX512)
  __m512 t = static_cast<__m512>(squares);
  t = _mm512_add_ps(t, _mm512_shuffle_f32x4(t, t, 0x4E));  // 256-bit halves
  t = _mm512_add_ps(t, _mm512_shuffle_f32x4(t, t, 0xB1));  // 128-bit quarters
  t = _mm512_add_ps(t, _mm512_permute_ps(t, 0x4E));        // 64-bit pairs
  t = _mm512_add_ps(t, _mm512_permute_ps(t, 0xB1));        // lanes: every lane holds the total
  const __m512 ms = _mm512_add_ps(_mm512_div_ps(t, _mm512_set1_ps(n)), _mm512_set1_ps(eps));
  return fVec(_mm512_div_ps(_mm512_set1_ps(1.f), _mm512_sqrt_ps(ms)));
#else
  float t[kV];
  squares.store(t);
  float s = 0.f;
  for (int64_t i = 0; i < kV; ++i) s += t[i];
  return fVec(1.f / std::sqrt(s / n + eps));
#endif
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
// see) in a row buffer (L1; fp32 in pair layout, or bf16 in keep_rounded's blocked order) and accumulates its
// squares; pass 2 scales the buffer into out (fp32 at batch 8 on the EPYC: 15 % faster than storing in pass 1
// and re-reading out). Rows are software-pipelined: pass 1 of row r + 1 is issued before pass 2 of row r, so
// that row r's scale (a chain of dependent adds, a reduction, a square root) is ready when its pass 2 runs
// instead of stalling it (fp16 at batch 8 on the EPYC, one thread: 66 us against 77).
template <typename T>
void add_rms_norm_rows(T* out, int64_t os, const T* a, int64_t as, const T* b, int64_t bs, int64_t rows,
                       int64_t cols, float eps, RowCopy<T> copy = {}) {
  const int64_t full = cols - cols % kP, tail = cols - full;
  at::parallel_for(0, rows, grain_for(cols), [=](int64_t r0, int64_t r1) {  // by value: see add_rms_norm_dim1
    const int64_t slots = full + kP;
    std::vector<float> sums(static_cast<size_t>(2 * slots));  // two rows' rounded sums (L1)
    // Pass 1 of row r into sb; returns the row's scale 1 / rms.
    auto keep_row = [=](int64_t r, float* sb) {
      const T* pa = a + r * as;
      const T* pb = b + r * bs;
      fVec acc0(0.f), acc1(0.f);
      int64_t c = 0;
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
      // The row's sum of squares needs no per-lane order: vdpbf16ps squares and adds the kept bf16 sums
      // without widening them (two chains, alternating pairs, for the instruction's latency; 7-10 % faster
      // than widening and two FMAs on the EPYC). It flushes squares below 1.2e-38 (|sum| < 1.1e-19) to zero,
      // which moves mean + eps by less than 1.2e-38 / eps: under fp32 rounding for eps >= 1e-30. A smaller
      // eps (0 is allowed) takes the exact path below.
      if constexpr (kKeepBlocked<T>) {
        auto keep_square = [&](int64_t col, fVec& acc) {
          const __m512i h = bf16x32_add_blocked(pa + col, pb + col);
          _mm512_storeu_si512(sb + col, h);
          acc = fVec(_mm512_dpbf16_ps(static_cast<__m512>(acc), (__m512bh)h, (__m512bh)h));
        };
        if (eps >= 1e-30f) {
          for (; c + 2 * kP <= full; c += 2 * kP) {
            keep_square(c, acc0);
            keep_square(c + kP, acc1);
          }
          if (c < full) {
            keep_square(c, acc0);
            c += kP;
          }
        }
      }
#endif
      for (; c < full; c += kP) {
        const Pair s = keep_sum<T>(sb + c, pa + c, pb + c);
        acc0 = at::vec::fmadd(s.lo, s.lo, acc0);
        acc1 = at::vec::fmadd(s.hi, s.hi, acc1);
      }
      if (tail) {  // zero-filled lanes add nothing to the sums of squares
        const Pair s = pround<T>(pload(pa + full, tail) + pload(pb + full, tail));
        pstore_f32(sb + full, s);
        acc0 = at::vec::fmadd(s.lo, s.lo, acc0);
        acc1 = at::vec::fmadd(s.hi, s.hi, acc1);
      }
      return rms_scale(acc0 + acc1, static_cast<float>(cols), eps);
    };
    // Pass 2 of row r from sb.
    auto scale_row = [=](int64_t r, const float* sb, const fVec& sv) {
      T* o = out + r * os;
      T* o2 = copy.row(r);
      const Pair scale{sv, sv};
      for (int64_t c = 0; c < full; c += kP) {
        store_kept(o + c, o2 ? o2 + c : nullptr, load_kept<T>(sb + c) * scale);
      }
      if (tail) pstore_to(o + full, o2 ? o2 + full : nullptr, pload_f32(sb + full) * scale, tail);
    };
    float* buf[2] = {sums.data(), sums.data() + slots};
    fVec scale = keep_row(r0, buf[0]);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t i = (r - r0) & 1;
      const fVec next = r + 1 < r1 ? keep_row(r + 1, buf[i ^ 1]) : scale;
      scale_row(r, buf[i], scale);
      scale = next;
    }
  });
}

// The injection of a level call, in eager's order and rounding: target = target + (src[0] + src[1] + ...),
// every partial sum rounded to T. All [rows, cols] contiguous; a source may be target itself (each element
// is read before it is written). With copy.ptr set, each updated row is also written there. n_src == 0:
// only the copy.
template <typename T>
void inject_add(T* target, const T* const* src, int64_t n_src, int64_t rows, int64_t cols, RowCopy<T> copy = {}) {
  const int64_t full = cols - cols % kP, tail = cols - full;
  at::parallel_for(0, rows, grain_for(cols), [=](int64_t r0, int64_t r1) {  // by value: see add_rms_norm_dim1
    auto one = [&](T* t, T* t2, int64_t off, int64_t n) {
      auto load = [n](const T* p) { return n == kP ? pload(p) : pload(p, n); };
      auto store = [n](T* p, T* p2, const Pair& v) { pstore_to(p, p2, v, n); };
      Pair v = load(t);
      if (n_src == 0) {
        if (t2) store(t2, nullptr, v);
        return;
      }
      Pair acc = load(src[0] + off);
      for (int64_t j = 1; j < n_src; ++j) acc = pround<T>(acc + load(src[j] + off));
      store(t, t2, v + acc);
    };
    for (int64_t r = r0; r < r1; ++r) {
      T* t = target + r * cols;
      T* t2 = copy.row(r);
      for (int64_t c = 0; c < full; c += kP) one(t + c, t2 ? t2 + c : nullptr, r * cols + c, kP);
      if (tail) one(t + full, t2 ? t2 + full : nullptr, r * cols + full, tail);
    }
  });
}

#if defined(CPU_CAPABILITY_AVX512)
// exp(-x) for the fp32 SwiGLU: x clamped to [-89, 89] (vrangeps: sign(x) * min(|x|, 89); e^89 still overflows to
// inf as eager's exp does beyond 88.72, so huge negative gates give -0 and -inf NaN, as eager's x / (1 + inf),
// and x = +inf keeps a finite argument), split as -x = n * ln2 + r with n an
// integer (ln2 in two parts, Cody-Waite, the negation folded into the first step) and |r| <= ln2 / 2, e^r by
// its Taylor polynomial of degree 6 (relative error 2.3e-7 evaluated in fp32, about two ulps; the Sleef exp
// eager uses has one), times 2^n by scalef. A degree-5 polynomial fitted for the least maximum error (one FMA
// fewer, the same maximum error) was tried and dropped: its errors lean one way (its constant term is
// 1 + 2^-23), and the recursion amplifies a bias: trm_hier6's gradients through the cpp backend moved from
// 5e-5 to 2e-4 of their scale away from the reference's (tests/test_archs.py allows 1e-4).
inline __m512 exp_neg_fp32(__m512 x) {
  x = _mm512_range_ps(x, _mm512_set1_ps(89.f), 0x2);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(-1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmsub_ps(n, _mm512_set1_ps(0.693145751953125f), x);  // -x - n * ln2_hi, one rounding
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723212e-6f), r);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.f / 720.f), r, _mm512_set1_ps(1.f / 120.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

// exp(-x) for the bf16/fp16 SwiGLU, whose result keeps 8 or 11 bits: 2^t with t = -x * log2(e) clamped to
// [-150, 150] (vrangeps; beyond, 2^t is 0 or inf in fp32 anyway, and x = +-inf keeps a finite t), split as
// n + f (n an integer, |f| <= 1/2), 2^f by a degree-3 polynomial fitted for the least maximum relative error on
// [-1/2, 1/2] (7.5e-5, a 26th of a bf16 rounding step and a 6th of an fp16 one), times 2^n by scalef. Eight
// vector operations. On Zen 4 the SwiGLU is bound by how many vector operations issue (about 1.7 per cycle),
// so each one counts: bf16 at batch 8 on the EPYC (one thread), 212 us against 273 with the degree-4
// polynomial and min/max clamps (and 193 us with degree 2, whose 1.7e-3 error is too close to a bf16 step).
inline __m512 exp_neg_low_precision(__m512 x) {
  const __m512 t = _mm512_range_ps(_mm512_mul_ps(x, _mm512_set1_ps(-1.44269504088896341f)), _mm512_set1_ps(150.f), 0x2);
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(0.05517167970538139f), f, _mm512_set1_ps(0.24261116981506348f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6932609677314758f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.9999280571937561f));
  return _mm512_scalef_ps(p, n);
}
#endif

// silu(x) * u = x / (1 + exp(-x)) * u in eager's order, in fp32 whatever T is, rounded once by the caller's
// store. AVX-512: exp_neg_fp32 for fp32 (whose result the recursion amplifies), exp_neg_low_precision for
// bf16/fp16, and a true division (its unit runs beside the FMA and add pipes on Zen 4: a reciprocal estimate,
// with or without a Newton step, was no faster). Otherwise at::vec's exp: Sleef's 1-ulp one for fp32, exp_u20
// for 16-bit types. Huge negative gates give -0 (exp overflows to inf: x / inf), huge positive ones x * u,
// x = +inf gives inf * u and x = -inf NaN, as eager; NaN propagates.
template <typename T>
inline fVec silu_mul(const fVec& x, const fVec& u) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m512 xv = static_cast<__m512>(x);
  const __m512 e = std::is_same_v<T, float> ? exp_neg_fp32(xv) : exp_neg_low_precision(xv);
  return fVec(_mm512_div_ps(xv, _mm512_add_ps(_mm512_set1_ps(1.f), e))) * u;
#else
  const fVec one(1.f);
  if constexpr (std::is_same_v<T, float>) {
    return x / (one + x.neg().exp()) * u;
  } else {
    return x / (one + x.neg().exp_u20()) * u;
  }
#endif
}

// out[r, c] = silu(gate[r, c]) * up[r, c] in fp32, rounded once.
template <typename T>
void swiglu(T* out, int64_t os, const T* gate, int64_t gs, const T* up, int64_t us, int64_t rows, int64_t cols) {
  const int64_t full = cols - cols % kP, tail = cols - full;
  auto f = [](const Pair& g, const Pair& u) { return Pair{silu_mul<T>(g.lo, u.lo), silu_mul<T>(g.hi, u.hi)}; };
  at::parallel_for(0, rows, grain_for(cols), [=](int64_t r0, int64_t r1) {  // by value: see add_rms_norm_dim1
    for (int64_t r = r0; r < r1; ++r) {
      T* o = out + r * os;
      const T* g = gate + r * gs;
      const T* u = up + r * us;
      for (int64_t c = 0; c < full; c += kP) {
        pstore(o + c, f(pload(g + c), pload(u + c)));
      }
      if (tail) pstore(o + full, f(pload(g + full, tail), pload(u + full, tail)), tail);
    }
  });
}

// In-place NeoX RoPE on the first `heads` heads of each row; row r is at position r % seq_len.
// Same operation order as eager: x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x2, x1) (the
// subtraction below is that sum, bit for bit). Element i of each half is read before either is written, so
// the update is in place without staging. Pairs in element order for every T: the fp32 tables are in element
// order, and for bf16 on the EPYC the split layout, with the tables deinterleaved once per row, was slower
// (32 % of a copy against 38 %).
template <typename T>
void rope(T* x, int64_t rs, int64_t rows, int64_t heads, int64_t hd, int64_t seq_len, const float* cos,
          const float* sin) {
  const int64_t half = hd / 2, full = half - half % kP, tail = half - full;
  at::parallel_for(0, rows, grain_for(heads * hd), [=](int64_t r0, int64_t r1) {  // by value: see add_rms_norm_dim1
    for (int64_t r = r0; r < r1; ++r) {
      const float* c = cos + (r % seq_len) * hd;
      const float* s = sin + (r % seq_len) * hd;
      for (int64_t h = 0; h < heads; ++h) {
        T* p = x + r * rs + h * hd;
        for (int64_t i = 0; i < full; i += kP) {
          const Pair x1 = pload_elems(p + i), x2 = pload_elems(p + half + i);
          pstore_elems(p + i, x1 * pload_elems(c + i) - x2 * pload_elems(s + i));
          pstore_elems(p + half + i, x2 * pload_elems(c + half + i) + x1 * pload_elems(s + half + i));
        }
        if (tail) {
          const int64_t i = full;
          const Pair x1 = pload_elems(p + i, tail), x2 = pload_elems(p + half + i, tail);
          pstore_elems(p + i, x1 * pload_elems(c + i, tail) - x2 * pload_elems(s + i, tail), tail);
          pstore_elems(p + half + i, x2 * pload_elems(c + half + i, tail) + x1 * pload_elems(s + half + i, tail),
                       tail);
        }
      }
    }
  });
}

// Logical [n0, n1, n2] tensors with element strides (s0, s1, 1): out = rms_norm over axis 1 of (a + b).
// Tasks are (i0, strip of kStrip columns); the strip's sums of squares stay in registers (pair layout).
// out may alias a or b element for element. Pass 1 stores the rounded sums, pass 2 scales the strip it
// re-reads (from L1/L2).
template <typename T, int64_t kStripBytes>
void add_rms_norm_dim1_strips(T* out, const int64_t* ost, const T* a, const int64_t* ast, const T* b,
                              const int64_t* bst, int64_t n0, int64_t n1, int64_t n2, float eps) {
  constexpr int64_t kStrip = kStripBytes / static_cast<int64_t>(sizeof(T)), kPairs = kStrip / kP;
  const int64_t chunks = (n2 + kStrip - 1) / kStrip;
  // Strides as locals: the vector stores below may alias anything, so values read through pointers (or the
  // closure) would be reloaded after each one.
  const int64_t os0 = ost[0], os1 = ost[1], as0 = ast[0], as1 = ast[1], bs0 = bst[0], bs1 = bst[1];
  at::parallel_for(0, n0 * chunks, grain_for(n1 * kStrip), [=](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i0 = t / chunks, c0 = (t - i0 * chunks) * kStrip;
      const int64_t n = std::min(kStrip, n2 - c0);
      T* o = out + i0 * os0 + c0;
      const T* pa = a + i0 * as0 + c0;
      const T* pb = b + i0 * bs0 + c0;
      Pair acc[kPairs];
      for (int64_t v = 0; v < kPairs; ++v) acc[v] = {fVec(0.f), fVec(0.f)};
      if (n == kStrip) {
        for (int64_t l = 0; l < n1; ++l) {
          for (int64_t v = 0; v < kPairs; ++v) {
            const Pair s = keep_sum<T>(o + l * os1 + v * kP, pa + l * as1 + v * kP, pb + l * bs1 + v * kP);
            acc[v] = {at::vec::fmadd(s.lo, s.lo, acc[v].lo), at::vec::fmadd(s.hi, s.hi, acc[v].hi)};
          }
        }
      } else {  // the last strip of a width that is not a multiple of kStrip
        for (int64_t l = 0; l < n1; ++l) {
          for (int64_t v = 0; v * kP < n; ++v) {
            const int64_t m = std::min(kP, n - v * kP);
            const Pair s = pstore_round(o + l * os1 + v * kP,
                                        pload(pa + l * as1 + v * kP, m) + pload(pb + l * bs1 + v * kP, m), m);
            acc[v] = {at::vec::fmadd(s.lo, s.lo, acc[v].lo), at::vec::fmadd(s.hi, s.hi, acc[v].hi)};
          }
        }
      }
      const fVec vn(static_cast<float>(n1)), veps(eps), one(1.f);
      for (int64_t v = 0; v < kPairs; ++v) {
        acc[v] = {one / (acc[v].lo / vn + veps).sqrt(), one / (acc[v].hi / vn + veps).sqrt()};
      }
      for (int64_t l = 0; l < n1; ++l) {
        T* row = o + l * os1;
        if (n == kStrip) {
          for (int64_t v = 0; v < kPairs; ++v) {
            store_kept<T>(row + v * kP, nullptr, load_kept<T>(row + v * kP) * acc[v]);
          }
        } else {
          for (int64_t v = 0; v * kP < n; ++v) {
            const int64_t m = std::min(kP, n - v * kP);
            pstore(row + v * kP, pload(row + v * kP, m) * acc[v], m);
          }
        }
      }
    }
  });
}

template <typename T>
void add_rms_norm_dim1(T* out, const int64_t* ost, const T* a, const int64_t* ast, const T* b, const int64_t* bst,
                       int64_t n0, int64_t n1, int64_t n2, float eps) {
  const int64_t wide_tasks = n0 * ((n2 * static_cast<int64_t>(sizeof(T)) + kStripBytesWide - 1) / kStripBytesWide);
  const int threads = at::in_parallel_region() ? 1 : at::get_num_threads();  // nested calls run inline
  if (wide_tasks >= 2 * threads) {
    add_rms_norm_dim1_strips<T, kStripBytesWide>(out, ost, a, ast, b, bst, n0, n1, n2, eps);
  } else {
    add_rms_norm_dim1_strips<T, kStripBytesNarrow>(out, ost, a, ast, b, bst, n0, n1, n2, eps);
  }
}

}  // namespace fastrecur::cpu
