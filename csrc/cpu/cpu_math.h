// Branch-free scalar math for the CPU kernels (OT, lcd_attention, seeded_dropout), written so that GCC vectorises the
// loops that call it
// (`#pragma omp simd`): std::exp is a library call the compiler cannot vectorise without -ffast-math.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string_view>
#include <type_traits>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#define HF_INLINE inline __attribute__((always_inline))
#define HF_INLINE_LAMBDA __attribute__((always_inline))

// GCC's partial-redundancy elimination and jump threading turn the clamps of fast_exp into branches
// (they pre-compute exp of the clamp bounds), which stops the vectoriser ("control flow in loop").
// Disabled for the rest of every translation unit that includes this header: include it after the
// ATen/torch headers.
// Also for the rest of the unit: a GCC vector wider than the registers of the code it is compiled for (split into
// pieces, often kept on the stack) is an error, so the vector width chosen per instruction set cannot drift.
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC optimize("no-tree-pre", "no-thread-jumps")
#pragma GCC diagnostic error "-Wvector-operation-performance"
#endif

namespace helo_fast::cpu_math {

// exp(x) with range reduction x = k ln2 + r, |r| <= ln2/2, and a polynomial for exp(r); the integer k
// is read from the bits of a round-to-nearest "magic number" sum, so no float->int conversion is
// needed. About 1 ulp; returns exactly 0 below the underflow threshold (and for x = -inf).
// max/min as selects: they map to one SIMD instruction (std::fmax's NaN rules block vectorisation).
template <typename T>
HF_INLINE T vmax(T x, T y) {
  return x > y ? x : y;
}
template <typename T>
HF_INLINE T vmin(T x, T y) {
  return x < y ? x : y;
}

HF_INLINE float fast_exp(float x) {
  const float clamped = vmin(vmax(x, -87.0f), 88.0f);
  const float magic = 12582912.0f;  // 1.5 * 2^23
  const float shifted = clamped * 1.44269504088896341f + magic;
  const float k = shifted - magic;
  float r = clamped - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t ki = std::bit_cast<int32_t>(shifted) - std::bit_cast<int32_t>(magic);
  const float scale = std::bit_cast<float>((ki + 127) << 23);
  // A multiply by the 0/1 mask rather than a ternary: the loop stays branch-free (if-conversion may not
  // speculate a floating-point multiply under the default -ftrapping-math).
  return (p * scale) * float(x >= -87.0f);
}

HF_INLINE double fast_exp(double x) {
  const double clamped = vmin(vmax(x, -708.0), 709.0);
  const double magic = 6755399441055744.0;  // 1.5 * 2^52
  const double shifted = clamped * 1.4426950408889634074 + magic;
  const double k = shifted - magic;
  double r = clamped - k * 6.93147180369123816490e-01;
  r = r - k * 1.90821492927058770002e-10;
  // Taylor series of exp(r) to degree 13: error < 2e-17 for |r| <= ln2/2.
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const int64_t ki = std::bit_cast<int64_t>(shifted) - std::bit_cast<int64_t>(magic);
  const double scale = std::bit_cast<double>((ki + 1023) << 52);
  return (p * scale) * double(x >= -708.0);
}

// log(x) for normal positive finite x (the callers range-check first): x = 2^e m with m in
// [sqrt(1/2), sqrt(2)), log m = 2 atanh(f), f = (m - 1)/(m + 1), |f| < 0.172, odd series to f^23.
HF_INLINE double fast_log(double x) {
  const int64_t bits = std::bit_cast<int64_t>(x);
  const double mant = std::bit_cast<double>((bits & 0x000fffffffffffffLL) | 0x3ff0000000000000LL);  // [1, 2)
  const double big = mant > 1.4142135623730951 ? 1.0 : 0.0;
  const double m = mant * (1.0 - 0.5 * big);
  // The biased exponent as a double without an int64 -> double conversion (not vectorisable on AVX2):
  // the bits of 2^52 + k are those of 2^52 with k in the mantissa.
  const double biased = std::bit_cast<double>(((bits >> 52) & 0x7ff) | 0x4330000000000000LL) - 4503599627370496.0;
  const double e = biased - 1023.0 + big;
  const double f = (m - 1.0) / (m + 1.0);
  const double f2 = f * f;
  double p = 1.0 / 23.0;
  p = p * f2 + 1.0 / 21.0;
  p = p * f2 + 1.0 / 19.0;
  p = p * f2 + 1.0 / 17.0;
  p = p * f2 + 1.0 / 15.0;
  p = p * f2 + 1.0 / 13.0;
  p = p * f2 + 1.0 / 11.0;
  p = p * f2 + 1.0 / 9.0;
  p = p * f2 + 1.0 / 7.0;
  p = p * f2 + 1.0 / 5.0;
  p = p * f2 + 1.0 / 3.0;
  p = p * f2 + 1.0;
  return e * 6.93147180369123816490e-01 + (e * 1.90821492927058770002e-10 + 2.0 * f * p);
}
HF_INLINE float fast_log(float x) { return float(fast_log(double(x))); }

// A row of only -inf has no finite maximum; shifting by 0 instead keeps exp(-inf - shift) = 0.
template <typename T>
HF_INLINE T finite_or_zero(T x) {
  return x == -std::numeric_limits<T>::infinity() ? T(0) : x;
}

}  // namespace helo_fast::cpu_math

// Runtime SIMD dispatch without -march flags: the kernels are compiled per instruction set (baseline
// x86-64, AVX2+FMA, and AVX-512 for HF_DEFINE_SIMD_DISPATCH_AVX512); the always-inline solver bodies take
// the target of the wrapper they are inlined into. HELO_FAST_CPU_ISA=default|avx2 caps the choice, as for
// the attention kernels, so the tests can run every variant on one machine. On other architectures only the
// baseline variant is compiled (HF_X86_DISPATCH is 0).
#if defined(__x86_64__) && defined(__GNUC__)
#define HF_X86_DISPATCH 1
#else
#define HF_X86_DISPATCH 0
#endif
namespace helo_fast::cpu_math {
enum class SimdIsa { kBase, kAvx2, kAvx512 };
#if HF_X86_DISPATCH
inline SimdIsa best_simd_isa() {
  static const SimdIsa isa = [] {
    const char* env = std::getenv("HELO_FAST_CPU_ISA");
    const std::string_view cap = env != nullptr ? env : "";
    if (cap == "default") return SimdIsa::kBase;
    __builtin_cpu_init();
    if (cap != "avx2" && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
      return SimdIsa::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return SimdIsa::kAvx2;
    return SimdIsa::kBase;
  }();
  return isa;
}
// The instruction sets of the variants, in the target syntax both GCC and clang honour (clang ignores GCC's
// prefer-vector-width, and would drop the whole attribute for it).
#define HF_AVX2_FEATURES "avx2,fma"
#if defined(__clang__)
#define HF_AVX512_FEATURES "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma"
#else
#define HF_AVX512_FEATURES "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512"
#endif
#define HF_TARGET_AVX2 __attribute__((target(HF_AVX2_FEATURES)))
#define HF_TARGET_AVX512 __attribute__((target(HF_AVX512_FEATURES)))
// HF_TARGET_REGION_BEGIN(FEATURES) ... HF_TARGET_REGION_END: every function defined in between (templates and
// lambdas included) is compiled for FEATURES. GCC: a target pragma; clang (which ignores GCC's): an attribute pragma.
#define HF_PRAGMA(text) _Pragma(#text)
#define HF_PRAGMA_EXPANDED(text) HF_PRAGMA(text)
#if defined(__clang__)
#define HF_TARGET_REGION_BEGIN(FEATURES) \
  HF_PRAGMA_EXPANDED(clang attribute push(__attribute__((target(FEATURES))), apply_to = function))
#define HF_TARGET_REGION_END HF_PRAGMA(clang attribute pop)
#else
#define HF_TARGET_REGION_BEGIN(FEATURES) HF_PRAGMA(GCC push_options) HF_PRAGMA_EXPANDED(GCC target(FEATURES))
#define HF_TARGET_REGION_END HF_PRAGMA(GCC pop_options)
#endif
#else
inline SimdIsa best_simd_isa() { return SimdIsa::kBase; }
#define HF_TARGET_AVX2
#define HF_TARGET_AVX512
#endif
}  // namespace helo_fast::cpu_math

// Flush-to-zero / denormals-are-zero for the lifetime of the guard (restored afterwards). The scaling-form
// solvers produce entries like exp(-k C / beta) that drift through the subnormal range, where every
// multiply costs ~100x; flushing them to 0 changes results by less than the smallest normal number.
namespace helo_fast::cpu_math {
#if defined(__SSE__)
struct FlushDenormals {
  unsigned int saved;
  FlushDenormals() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040u); }
  ~FlushDenormals() { _mm_setcsr(saved); }
};
#else
struct FlushDenormals {
  FlushDenormals() {}  // nothing to set here (user-provided, so a guard variable is not an unused one)
};
#endif
}  // namespace helo_fast::cpu_math

// NAME##SUFFIX<T>(args...): the always-inline template NAME<T> compiled for TARGET.
#define HF_DEFINE_SIMD_VARIANT(NAME, SUFFIX, TARGET) \
  template <typename T, typename... Args>            \
  TARGET void NAME##SUFFIX(Args... args) {           \
    NAME<T>(args...);                                \
  }

// NAME##SUFFIX<T>(args...): the always-inline template NAME<T, BYTES> compiled for TARGET, with vectors of BYTES.
#define HF_DEFINE_SIMD_VARIANT_WIDTH(NAME, SUFFIX, TARGET, BYTES) \
  template <typename T, typename... Args>                         \
  TARGET void NAME##SUFFIX(Args... args) {                        \
    NAME<T, BYTES>(args...);                                      \
  }

// Defines NAME_avx2 / NAME_base from the always-inline template NAME<T, kVecBytes> (its vectors one register of the
// variant: 32 bytes for AVX2, 16 for the baseline) and NAME_dispatch<T>(args...) choosing between them once per call.
#define HF_DEFINE_SIMD_DISPATCH(NAME)                                                    \
  HF_DEFINE_SIMD_VARIANT_WIDTH(NAME, _avx2, HF_TARGET_AVX2, 32)                          \
  HF_DEFINE_SIMD_VARIANT_WIDTH(NAME, _base, , 16)                                        \
  template <typename T, typename... Args>                                                \
  void NAME##_dispatch(Args... args) {                                                   \
    ::helo_fast::cpu_math::FlushDenormals flush_guard;                                   \
    if (::helo_fast::cpu_math::best_simd_isa() != ::helo_fast::cpu_math::SimdIsa::kBase) \
      NAME##_avx2<T>(args...);                                                           \
    else                                                                                 \
      NAME##_base<T>(args...);                                                           \
  }

// HF_DEFINE_SIMD_DISPATCH plus an AVX-512 variant (NAME_avx512) for T = double, preferred where the CPU
// has it. float kernels stay on AVX2: at the sizes measured (rows of 64) a float row is four zmm vectors
// and the horizontal sums of the row dot products outweigh the wider multiply-adds.
#define HF_DEFINE_SIMD_DISPATCH_AVX512(NAME)                                                \
  HF_DEFINE_SIMD_VARIANT(NAME, _avx512, HF_TARGET_AVX512)                                   \
  HF_DEFINE_SIMD_VARIANT(NAME, _avx2, HF_TARGET_AVX2)                                       \
  HF_DEFINE_SIMD_VARIANT(NAME, _base, )                                                     \
  template <typename T, typename... Args>                                                   \
  void NAME##_dispatch(Args... args) {                                                      \
    ::helo_fast::cpu_math::FlushDenormals flush_guard;                                      \
    const auto isa = ::helo_fast::cpu_math::best_simd_isa();                                \
    if constexpr (std::is_same_v<T, double>) {                                              \
      if (isa == ::helo_fast::cpu_math::SimdIsa::kAvx512) return NAME##_avx512<T>(args...); \
    }                                                                                       \
    if (isa != ::helo_fast::cpu_math::SimdIsa::kBase)                                       \
      NAME##_avx2<T>(args...);                                                              \
    else                                                                                    \
      NAME##_base<T>(args...);                                                              \
  }
