// Throughput of the 512-bit operations fastrecur's CPU kernels are made of, alone and issued beside an FMA or
// an add: the evidence behind "instruction-bound" in benchmarks/README.md (issue #16). Plain intrinsics, no
// torch. Build and run (a CPU with AVX-512 and AVX512-BF16):
//   g++ -O2 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mf16c -mfma vector_op_throughput.cpp \
//       -o vector_op_throughput && ./vector_op_throughput
// Each figure is cycles per step of 8 independent chains (enough to cover every latency here), a step being the
// operation alone, the operation and an FMA, or the operation and an add: a pair that takes as long as the
// operation alone ran on other pipes. The clock is measured first from a chain of dependent integer adds (one
// per cycle).
#include <immintrin.h>

#include <chrono>
#include <cstdint>
#include <cstdio>

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

double cycles_per_ns() {
  const long n = 1000000000;
  long x = 0;
  const double t0 = now();
  for (long i = 0; i < n; ++i) __asm__ volatile("add $1, %0" : "+r"(x));
  return n / ((now() - t0) * 1e9);
}

template <class F>
double cycles_per_op(F f, double ghz) {
  __m512 v0 = _mm512_set1_ps(1.0f), v1 = _mm512_set1_ps(1.001f), v2 = _mm512_set1_ps(1.002f),
         v3 = _mm512_set1_ps(1.003f), v4 = _mm512_set1_ps(1.004f), v5 = _mm512_set1_ps(1.005f),
         v6 = _mm512_set1_ps(1.006f), v7 = _mm512_set1_ps(1.007f);
  const long it = 10000000;
  const double t0 = now();
  for (long k = 0; k < it; ++k) {
    v0 = f(v0), v1 = f(v1), v2 = f(v2), v3 = f(v3), v4 = f(v4), v5 = f(v5), v6 = f(v6), v7 = f(v7);
    __asm__ volatile("" : "+v"(v0), "+v"(v1), "+v"(v2), "+v"(v3), "+v"(v4), "+v"(v5), "+v"(v6), "+v"(v7));
  }
  return (now() - t0) * 1e9 * ghz / (it * 8.0);
}

__m512i I(__m512 x) { return _mm512_castps_si512(x); }
__m512 F(__m512i x) { return _mm512_castsi512_ps(x); }

}  // namespace

int main() {
  const double ghz = cycles_per_ns();
  const __m512 one = _mm512_set1_ps(1.0001f), half = _mm512_set1_ps(0.5f);
  const __m512i m = _mm512_set1_epi32(0x7fffffff);
  auto fma = [&](__m512 x) { return _mm512_fmadd_ps(x, one, half); };
  auto add = [&](__m512 x) { return _mm512_add_ps(x, half); };
  std::printf("clock: %.2f GHz (dependent adds)\n", ghz);
  std::printf("cycles per step: %-13s %8s %10s %10s\n", "", "op alone", "op + FMA", "op + add");
  auto row = [&](const char* name, auto g) {
    std::printf("%-30s %8.2f %10.2f %10.2f\n", name, cycles_per_op(g, ghz),
                cycles_per_op([&](__m512 x) { return g(fma(x)); }, ghz),
                cycles_per_op([&](__m512 x) { return g(add(x)); }, ghz));
  };
  row("vfmadd231ps", fma);
  row("vaddps", add);
  row("vmulps", [&](__m512 x) { return _mm512_mul_ps(x, one); });
  row("vdivps", [&](__m512 x) { return _mm512_div_ps(half, x); });
  row("vrcp14ps", [&](__m512 x) { return _mm512_rcp14_ps(x); });
  row("vrndscaleps", [&](__m512 x) { return _mm512_roundscale_ps(x, 0); });
  row("vrangeps", [&](__m512 x) { return _mm512_range_ps(x, half, 2); });
  row("vscalefps", [&](__m512 x) { return _mm512_scalef_ps(x, half); });
  row("vpslld (bf16 widen)", [&](__m512 x) { return F(_mm512_slli_epi32(I(x), 1)); });
  row("vpandd", [&](__m512 x) { return F(_mm512_and_si512(I(x), m)); });
  row("vpermw", [&](__m512 x) { return F(_mm512_permutexvar_epi16(m, I(x))); });
  row("vcvtne2ps2bf16", [&](__m512 x) { return F((__m512i)_mm512_cvtne2ps_pbh(x, half)); });
  row("vdpbf16ps", [&](__m512 x) { return _mm512_dpbf16_ps(x, (__m512bh)m, (__m512bh)m); });
  row("vcvtph2ps (16 fp16 -> fp32)", [&](__m512 x) { return _mm512_cvtph_ps(_mm512_castsi512_si256(I(x))); });
  row("vcvtps2ph (16 fp32 -> fp16)", [&](__m512 x) { return F(_mm512_castsi256_si512(_mm512_cvtps_ph(x, 0))); });
  return 0;
}
