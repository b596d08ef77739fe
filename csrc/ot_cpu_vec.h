// 32-byte GCC vectors for the scaling-form IPOT loops of the CPU kernels (one AVX2 register; GCC splits them in
// two for the baseline SSE2 variant): loads, stores, the padded row stride of their matrices, and the sums of as
// many accumulators as a vector has lanes at once. (64-byte vectors in an AVX-512 variant measured slower here:
// 3.1-3.5 vs 2.8 ms for HeLo's GW forward at B=128 on 2 threads.)
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "cpu_math.h"

namespace helo_fast::ot_cpu {
using namespace cpu_math;  // the shared math (csrc/cpu_math.h)

// (Specialised per type: GCC drops vector_size on a dependent alias template.)
template <typename T>
struct Vec32Of;
template <>
struct Vec32Of<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct Vec32Of<double> {
  typedef double type __attribute__((vector_size(32)));
};
template <typename T>
using Vec32 = typename Vec32Of<T>::type;

// Lanes of a 32-byte vector of T.
template <typename T>
constexpr int64_t vec32_lanes() {
  return 32 / sizeof(T);
}

template <typename T>
HF_INLINE Vec32<T> load32(const T* p) {
  Vec32<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
HF_INLINE void store32(T* p, Vec32<T> v) {
  std::memcpy(p, &v, sizeof(v));
}

// Row stride of a [rows, cols] matrix of T whose rows are whole 32-byte vectors (cols rounded up).
template <typename T>
HF_INLINE int64_t padded_row_stride(int64_t cols) {
  constexpr int64_t lanes = vec32_lanes<T>();
  return (cols + lanes - 1) / lanes * lanes;
}

// Lane r of row_sums(acc) = the sum of the lanes of acc[r], for all r < lanes at once: a tree of pair sums within
// 16-byte blocks (the pattern of x86 hadd) and one exchange of the blocks. One tree costs about as much as a
// single row's scalar reduction, which `omp simd reduction` lowers to a store and a chain of scalar adds.
// (Function templates, not plain functions or lambdas: GCC compiles those on their own, for the baseline ISA, where a
// 32-byte vector return changes the ABI; a template is only instantiated inlined into the target's variant.)
template <typename V>
HF_INLINE V pair_sums(V x, V y) {
  if constexpr (sizeof(x[0]) == 4) {
    return __builtin_shufflevector(x, y, 0, 2, 8, 10, 4, 6, 12, 14) +
           __builtin_shufflevector(x, y, 1, 3, 9, 11, 5, 7, 13, 15);
  } else {
    return __builtin_shufflevector(x, y, 0, 4, 2, 6) + __builtin_shufflevector(x, y, 1, 5, 3, 7);
  }
}

template <typename V, std::size_t Rows>
HF_INLINE V row_sums(const V (&acc)[Rows]) {
  static_assert(Rows == sizeof(V) / sizeof(acc[0][0]), "one accumulator per lane");
  if constexpr (Rows == 8) {  // float
    const V t0 = pair_sums(acc[0], acc[1]), t1 = pair_sums(acc[2], acc[3]);
    const V t2 = pair_sums(acc[4], acc[5]), t3 = pair_sums(acc[6], acc[7]);
    const V u0 = pair_sums(t0, t1), u1 = pair_sums(t2, t3);  // block b of u0 (u1): rows 0-3 (4-7), their block b's sums
    return __builtin_shufflevector(u0, u1, 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(u0, u1, 4, 5, 6, 7, 12, 13, 14, 15);
  } else {  // double
    const V t0 = pair_sums(acc[0], acc[1]), t1 = pair_sums(acc[2], acc[3]);  // block b: rows 0, 1 (2, 3), their sums
    return __builtin_shufflevector(t0, t1, 0, 1, 4, 5) + __builtin_shufflevector(t0, t1, 2, 3, 6, 7);
  }
}

}  // namespace helo_fast::ot_cpu
