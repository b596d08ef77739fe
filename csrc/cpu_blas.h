// The vendor BLAS that PyTorch's CPU library carries (MKL in the x86 wheels), called one small product at a time
// from inside the fused CPU kernels. Its Fortran entry points sgemm_ / dgemm_ are declared weak: where the PyTorch
// build has no BLAS with these symbols they are null, blas_available() is false and the kernels keep their own
// tiles. The BLAS picks its instruction set itself (MKL: the widest of this CPU, or MKL_ENABLE_INSTRUCTIONS).
#pragma once

#include <cstdint>
#include <type_traits>

extern "C" {
// LP64 Fortran BLAS (32-bit integers), as PyTorch's own BLAS calls use them.
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}

namespace helo_fast::cpu_blas {

// Whether products in T can go to the BLAS (float and double, where the library has the symbol).
template <typename T>
inline bool blas_available() {
  if constexpr (std::is_same_v<T, float>) {
    return &sgemm_ != nullptr;
  } else if constexpr (std::is_same_v<T, double>) {
    return &dgemm_ != nullptr;
  } else {
    return false;
  }
}

// Row-major C[M, N] = A · B with A = a[m * lda + k] (a_transposed: a[k * lda + m]) and B = b[k * ldb + n]
// (b_transposed: b[n * ldb + k]); C's rows ldc apart. A column-major BLAS computes Cᵀ = Bᵀ Aᵀ on the same memory.
// Only for T with blas_available<T>().
template <typename T>
inline void gemm(bool a_transposed, bool b_transposed, int64_t M, int64_t N, int64_t K, const T* a, int64_t lda,
                 const T* b, int64_t ldb, T* c, int64_t ldc) {
  const char ta = b_transposed ? 'T' : 'N', tb = a_transposed ? 'T' : 'N';
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  const int ldb_ = static_cast<int>(ldb), lda_ = static_cast<int>(lda), ldc_ = static_cast<int>(ldc);
  const T one = 1, zero = 0;
  if constexpr (std::is_same_v<T, float>) {
    sgemm_(&ta, &tb, &m, &n, &k, &one, b, &ldb_, a, &lda_, &zero, c, &ldc_);
  } else {
    dgemm_(&ta, &tb, &m, &n, &k, &one, b, &ldb_, a, &lda_, &zero, c, &ldc_);
  }
}

}  // namespace helo_fast::cpu_blas
