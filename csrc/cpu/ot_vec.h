// GCC vectors for the scaling-form IPOT loops of the CPU kernels (32 bytes in the AVX2 variant, 16 in the baseline
// one): loads, stores, the padded row stride of their matrices, and the sums of as many accumulators as a vector
// has lanes at once. (64-byte vectors in an AVX-512 variant measured slower here:
// 3.1-3.5 vs 2.8 ms for HeLo's GW forward at B=128 on 2 threads.)
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "cpu_math.h"

namespace helo_fast::ot_cpu {
using namespace cpu_math;  // the shared math (csrc/cpu/cpu_math.h)

// Vectors of kBytes = 16 or 32 bytes: one register of the variant's instruction set (SSE2 or NEON for the baseline
// variant, AVX2), as chosen by HF_DEFINE_SIMD_DISPATCH; a wider vector than the registers would be split into pieces.
// unaligned: the same vector aligned as T and may_alias (the matmul tiles of gromov_wasserstein.cpp read and write
// through it, by pointer: a reference returned by a function would lose its alignment under clang; see vec_load).
// (Specialised per type and width: GCC drops vector_size on a dependent alias template.)
template <typename T, int kBytes>
struct VecOf;
template <>
struct VecOf<float, 16> {
  typedef float type __attribute__((vector_size(16)));
  typedef float unaligned __attribute__((vector_size(16), aligned(4), may_alias));
};
template <>
struct VecOf<float, 32> {
  typedef float type __attribute__((vector_size(32)));
  typedef float unaligned __attribute__((vector_size(32), aligned(4), may_alias));
};
template <>
struct VecOf<double, 16> {
  typedef double type __attribute__((vector_size(16)));
  typedef double unaligned __attribute__((vector_size(16), aligned(8), may_alias));
};
template <>
struct VecOf<double, 32> {
  typedef double type __attribute__((vector_size(32)));
  typedef double unaligned __attribute__((vector_size(32), aligned(8), may_alias));
};
template <typename T, int kBytes>
using Vec = typename VecOf<T, kBytes>::type;

// Lanes of a vector of kBytes of T.
template <typename T, int kBytes>
constexpr int64_t vec_lanes() {
  return kBytes / sizeof(T);
}

// The helpers below never take or return a vector by value: they are compiled for the baseline ISA (the variants'
// targets apply only where they are inlined), where a 32-byte vector argument or result has another ABI (-Wpsabi).
// v = the vector of kBytes at p / the vector of kBytes at p = v (any alignment of T). Through memcpy, not a reference
// to the `unaligned` view: clang takes the alignment of a reference a function returns from the vector type itself
// (16 or 32 bytes), not from the typedef, and so emitted aligned loads and stores (movapd: a crash on rows that are
// only T-aligned).
template <int kBytes, typename T>
HF_INLINE void vec_load(typename VecOf<T, kBytes>::type& v, const T* p) {
  std::memcpy(&v, p, kBytes);
}
template <int kBytes, typename T>
HF_INLINE void vec_store(T* p, const typename VecOf<T, kBytes>::type& v) {
  std::memcpy(p, &v, kBytes);
}

// x = lane-wise max(x, y): vmax per lane (x > y ? x : y, so a NaN y is taken and a NaN x replaced).
template <typename V>
HF_INLINE void max_into(V& x, const std::type_identity_t<V>& y) {
  x = x > y ? x : y;
}

// The width of the reductions in solver pieces that every variant shares (no kVecBytes of their own): one register
// of each (SSE2 or NEON, and the low half of an AVX2 or AVX-512 one).
constexpr int kSharedVecBytes = 16;

// v = x in every lane.
template <int kBytes, typename T>
HF_INLINE void vec_splat(typename VecOf<T, kBytes>::type& v, T x) {
  for (int64_t l = 0; l < vec_lanes<T, kBytes>(); ++l) v[l] = x;
}

// m = vmax(m, v[l]) / s += v[l] for the lanes l of v in order.
template <typename T, typename V>
HF_INLINE void max_lanes_into(T& m, const V& v) {
  for (std::size_t l = 0; l < sizeof(V) / sizeof(T); ++l) m = vmax(m, v[l]);
}
template <typename T, typename V>
HF_INLINE void sum_lanes_into(T& s, const V& v) {
  for (std::size_t l = 0; l < sizeof(V) / sizeof(T); ++l) s += v[l];
}

// The largest of init and x[i] (kPairs: x[i] + y[i]) for i < len. Explicit vector maxima, not `omp simd
// reduction(max)`: clang vectorises a floating-point max reduction only under -ffinite-math-only and -fno-signed-zeros
// (else -Wpass-failed), GCC did it with the same lane-wise selects as here. A maximum is exact, so the result does
// not depend on the lanes (for numbers; a NaN is kept or dropped by vmax's order-dependent rule, as before).
template <bool kPairs, int kBytes, typename T>
HF_INLINE T max_reduce(const T* __restrict x, const T* __restrict y, int64_t len, T init) {
  using V = Vec<T, kBytes>;
  constexpr int64_t L = vec_lanes<T, kBytes>();
  V acc;
  vec_splat<kBytes>(acc, init);
  int64_t i = 0;
  for (; i + L <= len; i += L) {
    V v;
    vec_load<kBytes>(v, x + i);
    if constexpr (kPairs) {
      V w;
      vec_load<kBytes>(w, y + i);
      v += w;
    }
    max_into(acc, v);
  }
  T mx = init;
  max_lanes_into(mx, acc);
  for (; i < len; ++i) mx = vmax(mx, kPairs ? x[i] + y[i] : x[i]);
  return mx;
}
template <int kBytes = kSharedVecBytes, typename T>
HF_INLINE T max_of(const T* __restrict x, int64_t len, T init) {
  return max_reduce<false, kBytes>(x, x, len, init);
}
template <int kBytes = kSharedVecBytes, typename T>
HF_INLINE T max_of_sums(const T* __restrict x, const T* __restrict y, int64_t len, T init) {
  return max_reduce<true, kBytes>(x, y, len, init);
}

// Row stride of a [rows, cols] matrix of T whose rows are whole 32-byte vectors (cols rounded up; so also whole
// 16-byte ones): the layout of every variant.
template <typename T>
HF_INLINE int64_t padded_row_stride(int64_t cols) {
  constexpr int64_t lanes = vec_lanes<T, 32>();
  return (cols + lanes - 1) / lanes * lanes;
}

// Lane i of a pair sum of x and y within each 16-byte block of kBlock lanes: x's adjacent pairs of the block summed
// in the first half of the block, y's in the second (the pattern of x86 hadd); kSecond: the pairs' second lanes.
template <std::size_t kBlock, bool kSecond>
constexpr int pair_lane(std::size_t i, std::size_t lanes) {
  const std::size_t block = i / kBlock, r = i % kBlock, half = kBlock / 2;
  const std::size_t from_y = r < half ? 0 : lanes;
  return static_cast<int>(from_y + block * kBlock + 2 * (r % half) + (kSecond ? 1 : 0));
}

// Lane r of out = the sum of the lanes of acc[r], for all r < lanes at once: rounds of pair sums within 16-byte
// blocks and, for 32-byte vectors, one exchange of the blocks. One tree costs about as much as a single row's scalar
// reduction, which `omp simd reduction` lowers to a store and a chain of scalar adds.
template <typename V, std::size_t Rows, std::size_t... I>
HF_INLINE void row_sums(const V (&acc)[Rows], V& out, std::index_sequence<I...>) {
  static_assert(Rows == sizeof(V) / sizeof(acc[0][0]) && Rows == sizeof...(I), "one accumulator per lane");
  constexpr std::size_t block = 16 / sizeof(acc[0][0]);
  V t[Rows];
  for (std::size_t r = 0; r < Rows; ++r) t[r] = acc[r];
  std::size_t count = Rows;  // t[0, count): summed pairwise within blocks until one vector holds all rows' sums
  for (std::size_t width = 1; width < block; width *= 2, count /= 2)
    for (std::size_t r = 0; r < count / 2; ++r)
      t[r] = __builtin_shufflevector(t[2 * r], t[2 * r + 1], pair_lane<block, false>(I, Rows)...) +
             __builtin_shufflevector(t[2 * r], t[2 * r + 1], pair_lane<block, true>(I, Rows)...);
  if constexpr (sizeof(V) == 32 && Rows == 8) {  // block b of t[0] (t[1]): rows 0-3 (4-7), their block b's sums
    out = __builtin_shufflevector(t[0], t[1], 0, 1, 2, 3, 8, 9, 10, 11) +
          __builtin_shufflevector(t[0], t[1], 4, 5, 6, 7, 12, 13, 14, 15);
  } else if constexpr (sizeof(V) == 32) {  // 4 rows of double: block b of t[0] (t[1]): rows 0, 1 (2, 3)
    out = __builtin_shufflevector(t[0], t[1], 0, 1, 4, 5) + __builtin_shufflevector(t[0], t[1], 2, 3, 6, 7);
  } else {
    out = t[0];
  }
}

}  // namespace helo_fast::ot_cpu
