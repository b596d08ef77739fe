// What the per-problem OT solvers of the CPU kernels (sinkhorn_solver.h, ipot_solver.h) share: the scaled inputs,
// the log ratio of a marginal, the exp of an outer sum, and the scaling-form building blocks (safe divisions by a
// marginal, the shifted kernel, the fused matrix-vector products). Each solver works on one [n, m] problem at a
// time, all buffers passed in by the caller (allocated once per thread, never per iteration), on the scaled
// log-kernel K = -cost / eps (the callers convert). Every iteration loop ticks an InterruptCountdown
// (csrc/interrupt.h), so that Ctrl-C stops a call of many iterations.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "../interrupt.h"
#include "cpu_math.h"
#include "ot_vec.h"

namespace helo_fast::ot_cpu {
using namespace cpu_math;  // the shared math (csrc/cpu/cpu_math.h)

// log sum_j exp(x_j + y_j) over contiguous x, y of length len (two passes: max, then sum).
template <typename T>
HF_INLINE T lse_add(const T* __restrict x, const T* __restrict y, int64_t len) {
  const T mx = finite_or_zero(max_of_sums(x, y, len, -std::numeric_limits<T>::infinity()));
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < len; ++j) s += fast_exp(x[j] + y[j] - mx);
  return mx + std::log(s);
}

// out_j = log sum_i exp(row_i(mat)_j + v_i) for a row-major [rows, cols] mat (column log-sum-exp);
// colmax scratch [cols]. Two passes over mat, both along contiguous rows.
template <typename T>
HF_INLINE void column_lse_add(const T* __restrict mat, const T* __restrict v, int64_t rows, int64_t cols,
                              T* __restrict out, T* __restrict colmax) {
  for (int64_t j = 0; j < cols; ++j) colmax[j] = -std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < rows; ++i) {
    const T* __restrict row = mat + i * cols;
    const T vi = v[i];
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) colmax[j] = vmax(colmax[j], row[j] + vi);
  }
  for (int64_t j = 0; j < cols; ++j) {
    colmax[j] = finite_or_zero(colmax[j]);
    out[j] = 0;
  }
  for (int64_t i = 0; i < rows; ++i) {
    const T* __restrict row = mat + i * cols;
    const T vi = v[i];
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) out[j] += fast_exp(row[j] + vi - colmax[j]);
  }
  for (int64_t j = 0; j < cols; ++j) out[j] = colmax[j] + std::log(out[j]);
}

// K = -cost / eps (division as in the reference), log a, log b for one problem; In is the input
// dtype (float32 inputs of float64 solves are converted here, one problem at a time).
template <typename In, typename T>
HF_INLINE void scaled_inputs(const In* __restrict cost, const In* __restrict a, const In* __restrict b, int64_t n,
                             int64_t m, T eps, T* __restrict K, T* __restrict loga, T* __restrict logb) {
#pragma omp simd
  for (int64_t i = 0; i < n * m; ++i) K[i] = -(T(cost[i]) / eps);
  for (int64_t i = 0; i < n; ++i) loga[i] = std::log(T(a[i]));
  for (int64_t j = 0; j < m; ++j) logb[j] = std::log(T(b[j]));
}

// log w - lse for a log-marginal entry log w, and -inf where w = 0 (lse may then be -inf too: no -inf - -inf).
template <typename T>
HF_INLINE T log_ratio(T log_w, T lse) {
  return log_w == -std::numeric_limits<T>::infinity() ? log_w : log_w - lse;
}

// out_ij = exp(r_i + c_j + scale * K_ij)
template <typename T>
HF_INLINE void exp_outer(const T* __restrict K, const T* __restrict r, const T* __restrict c, T scale, int64_t n,
                         int64_t m, T* __restrict out) {
  for (int64_t i = 0; i < n; ++i) {
    const T ri = r[i];
    const T* __restrict krow = K + i * m;
    T* __restrict orow = out + i * m;
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) orow[j] = fast_exp(scale * krow[j] + ri + c[j]);
  }
}

// x / w for w > 0 and 0 for w <= 0 (a zero-mass marginal entry w), branch-free: the division of a zero numerator
// by a positive denominator, so no 0/0.
template <typename T>
HF_INLINE T ratio_or_zero(T x, T w) {
  return (x * T(w > 0)) / (w + T(w <= 0));
}

// A scaling-form update w / dot for a marginal entry w >= 0: w / dot (inf where dot is 0), and 0 where w = 0
// (a zero row or column of the plan, whatever dot is).
template <typename T>
HF_INLINE T scaling_update(T w, T dot) {
  return w / (dot + T(w <= 0));
}

// scaling_update on whole vectors: out = w / dot, 0 where w = 0.
template <typename V>
HF_INLINE void scaling_update_into(V& out, const V& w, const V& dot) {
  const V zero{};
  out = w / (dot + (w <= zero ? zero + 1 : zero));
}

// inv [len] = 1 / w for w > 0 and 0 for w = 0: the scaling-form loops multiply by it instead of dividing by the
// marginal (computed once per problem).
template <typename T>
HF_INLINE void inverse_or_zero(const T* __restrict w, int64_t len, T* __restrict inv) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) inv[i] = ratio_or_zero(T(1), w[i]);
}

// out_ij = r_i * (mat_ij * c_j): a plan from its scaling-form factors. mat [n, m] with rows ld apart; out [n, m].
// (mat_ij c_j flushed to 0 means a true plan entry below tiny * r_i, which ExactnessGuard's row check covers.)
template <typename T>
HF_INLINE void scale_rows_and_columns(const T* __restrict r, const T* __restrict mat, int64_t ld, const T* __restrict c,
                                      int64_t n, int64_t m, T* __restrict out) {
  for (int64_t i = 0; i < n; ++i) {
    const T ri = r[i];
    const T* __restrict mrow = mat + i * ld;
    T* __restrict orow = out + i * m;
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) orow[j] = ri * (mrow[j] * c[j]);
  }
}

// Whether every entry of x [len] is finite (an overflow in a scaling-form backward leaves an inf or a NaN).
template <typename T>
HF_INLINE bool all_finite(const T* __restrict x, int64_t len) {
  int64_t bad = 0;
#pragma omp simd reduction(+ : bad)
  for (int64_t i = 0; i < len; ++i) bad += int64_t(!(x[i] - x[i] == 0));
  return bad == 0;
}

// Kx = exp(K - max K) (entries in (0, 1]) for K [n, m], written into rows ld >= m apart whose padding columns
// [m, ld) are zero; returns max K.
template <typename T>
HF_INLINE T shifted_kernel_rows(const T* __restrict K, int64_t n, int64_t m, int64_t ld, T* __restrict Kx) {
  const T c = max_of(K, n * m, -std::numeric_limits<T>::infinity());
  for (int64_t i = 0; i < n; ++i) {
    const T* __restrict krow = K + i * m;
    T* __restrict xrow = Kx + i * ld;
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) xrow[j] = fast_exp(krow[j] - c);
    for (int64_t j = m; j < ld; ++j) xrow[j] = 0;
  }
  return c;
}

// out = matᵀ x for a row-major [rows, cols] mat, four rows per update of out (a quarter of the
// dependent load-add-store chain through out).
template <typename T>
HF_INLINE void column_product(const T* __restrict mat, const T* __restrict x, int64_t rows, int64_t cols,
                              T* __restrict out) {
  for (int64_t j = 0; j < cols; ++j) out[j] = 0;
  int64_t i = 0;
  for (; i + 4 <= rows; i += 4) {
    const T x0 = x[i], x1 = x[i + 1], x2 = x[i + 2], x3 = x[i + 3];
    const T* __restrict r0 = mat + i * cols;
    const T* __restrict r1 = r0 + cols;
    const T* __restrict r2 = r1 + cols;
    const T* __restrict r3 = r2 + cols;
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) out[j] += (r0[j] * x0 + r1[j] * x1) + (r2[j] * x2 + r3[j] * x3);
  }
  for (; i < rows; ++i) {
    const T xi = x[i];
    const T* __restrict row = mat + i * cols;
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) out[j] += row[j] * xi;
  }
}

// One pass over a row-major [rows, cols] mat for two chained products: s_i = row_i · x, then
// out = sum_i coef(i, s_i) row_i (out zeroed first). Eight rows at a time: eight independent dot chains
// (one would leave the FMA units waiting on its latency) while the rows are in L1, and an eighth of the
// load-add-store chain through out.
template <typename T, typename Coef>
HF_INLINE void row_dots_then_column_product(const T* __restrict mat, const T* __restrict x, int64_t rows, int64_t cols,
                                            T* __restrict out, Coef&& coef) {
  for (int64_t j = 0; j < cols; ++j) out[j] = 0;
  int64_t i = 0;
  for (; i + 8 <= rows; i += 8) {
    const T* __restrict r0 = mat + i * cols;
    const T* __restrict r1 = r0 + cols;
    const T* __restrict r2 = r1 + cols;
    const T* __restrict r3 = r2 + cols;
    const T* __restrict r4 = r3 + cols;
    const T* __restrict r5 = r4 + cols;
    const T* __restrict r6 = r5 + cols;
    const T* __restrict r7 = r6 + cols;
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7)
    for (int64_t j = 0; j < cols; ++j) {
      s0 += r0[j] * x[j];
      s1 += r1[j] * x[j];
      s2 += r2[j] * x[j];
      s3 += r3[j] * x[j];
      s4 += r4[j] * x[j];
      s5 += r5[j] * x[j];
      s6 += r6[j] * x[j];
      s7 += r7[j] * x[j];
    }
    const T c0 = coef(i, s0), c1 = coef(i + 1, s1), c2 = coef(i + 2, s2), c3 = coef(i + 3, s3);
    const T c4 = coef(i + 4, s4), c5 = coef(i + 5, s5), c6 = coef(i + 6, s6), c7 = coef(i + 7, s7);
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j)
      out[j] += ((r0[j] * c0 + r1[j] * c1) + (r2[j] * c2 + r3[j] * c3)) +
                ((r4[j] * c4 + r5[j] * c5) + (r6[j] * c6 + r7[j] * c7));
  }
  for (; i < rows; ++i) {
    const T* __restrict row = mat + i * cols;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < cols; ++j) s += row[j] * x[j];
    const T ci = coef(i, s);
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) out[j] += row[j] * ci;
  }
}

// log x for x > 0 and -inf for x = 0 (a zero-mass row or column). (A select of fast_log's result: written as
// fast_log(x + (x <= 0)) plus a select of constants, the loop stops vectorising.)
template <typename T>
HF_INLINE T log_or_neg_inf(T x) {
  const T l = fast_log(x);
  return x > 0 ? l : -std::numeric_limits<T>::infinity();
}

}  // namespace helo_fast::ot_cpu
