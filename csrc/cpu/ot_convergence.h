// The OT solvers of sinkhorn_solver.h and ipot_solver.h with a convergence test (the `tol` of helo_fast.sinkhorn /
// ipot): the same iterations, and after every kCheckEvery-th iteration and the cap each problem measures its
// marginal violation and stops once it is <= tol. The test is helo_fast/_convergence.py's (the reference computes
// the same numbers):
//   Sinkhorn: sum_j |sum_i P_ij - b_j| (the rows are exact after each iteration's row update);
//   IPOT:     sum_i |sum_j T_ij - a_i| (the columns are exact after each iteration's column update).
// Like the fixed-count solvers, each runs in scaling form first and reports false where ExactnessGuard fails (the
// caller then runs the log-domain version from scratch). Every solver writes the iterations it ran and the last
// violation through `out`; histories (when not null) hold the first `iterations` rows.
#pragma once

#include <cmath>
#include <cstdint>

#include "ipot_solver.h"
#include "sinkhorn_solver.h"

namespace helo_fast::ot_cpu {

constexpr int64_t kCheckEvery = 10;  // helo_fast._convergence.CHECK_EVERY

HF_INLINE bool is_check_point(int64_t k, int64_t n_iters) { return k % kCheckEvery == 0 || k == n_iters; }

// What a solve with a tolerance reports.
template <typename T>
struct ConvergenceReport {
  int64_t iterations = 0;
  T violation = 0;
};

// sum_j |mass_j - w_j| over len entries.
template <typename T>
HF_INLINE T l1_gap(const T* __restrict mass, const T* __restrict w, int64_t len) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < len; ++j) s += std::abs(mass[j] - w[j]);
  return s;
}

// sinkhorn_forward_linear with the test: after iteration k the plan's column sums are v ∘ (Kxᵀ u), and Kxᵀ u is
// what the iteration's fused pass left in `col` for the next one, so the test costs O(m). F, G [n], [m] receive the
// final log-domain potentials (F = log u, G = log v - max K). Scratch: Kx [n, m], u [n], v, mass [m].
template <typename T>
HF_INLINE bool sinkhorn_forward_linear_tol(const T* __restrict K, const T* __restrict a, const T* __restrict b,
                                           const T* __restrict inv_a, const T* __restrict inv_b, int64_t n, int64_t m,
                                           int64_t n_iters, T tol, T* __restrict plan, T* f_hist, T* g_hist,
                                           T* __restrict Kx, T* __restrict u, T* __restrict v, T* __restrict mass,
                                           T* __restrict F, T* __restrict G, ConvergenceReport<T>& out) {
  const T c = shifted_kernel_rows(K, n, m, m, Kx);
  const ExactnessGuard<T> guard;
  T* __restrict col = plan;  // Kxᵀ u [m]; the plan is only written after the last iteration
  for (int64_t i = 0; i < n; ++i) u[i] = 1;
  T u_max = 1;
  column_product(Kx, u, n, m, col);
  InterruptCountdown interrupt(n * m);
  for (int64_t k = 1; k <= n_iters; ++k) {
    interrupt.tick();
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) v[j] = scaling_update(b[j], col[j]);
    row_dots_then_column_product(Kx, v, n, m, col,
                                 [&](int64_t i, T dot) HF_INLINE_LAMBDA { return u[i] = scaling_update(a[i], dot); });
    const ScalingStats<T> vs = scaling_stats(v, inv_b, m), us = scaling_stats(u, inv_a, n);
    if (!guard.dots_exact(n, u_max, vs) || !guard.dots_exact(m, vs.max, us)) return false;
    u_max = us.max;
    if (f_hist != nullptr) {
      T* __restrict fh = f_hist + (k - 1) * n;
      T* __restrict gh = g_hist + (k - 1) * m;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) fh[i] = log_or_neg_inf(u[i]);
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) gh[j] = log_or_neg_inf(v[j]) - c;
    }
    out.iterations = k;
    if (is_check_point(k, n_iters)) {
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) mass[j] = v[j] * col[j];
      out.violation = l1_gap(mass, b, m);
      if (out.violation <= tol) break;
    }
  }
  for (int64_t i = 0; i < n; ++i) F[i] = log_or_neg_inf(u[i]);
  for (int64_t j = 0; j < m; ++j) G[j] = log_or_neg_inf(v[j]) - c;
  scale_rows_and_columns(u, Kx, m, v, n, m, plan);
  return true;
}

// sinkhorn_forward (log domain) with the test: column sums exp(G_j + LSE_i(F_i + K_ij)). Scratch: colmax, lse [m].
template <typename T>
HF_INLINE void sinkhorn_forward_tol(const T* __restrict K, const T* __restrict loga, const T* __restrict logb,
                                    const T* __restrict b, int64_t n, int64_t m, int64_t n_iters, T tol,
                                    T* __restrict F, T* __restrict G, T* f_hist, T* g_hist, T* __restrict colmax,
                                    T* __restrict lse, ConvergenceReport<T>& out) {
  for (int64_t i = 0; i < n; ++i) F[i] = 0;
  InterruptCountdown interrupt(n * m);
  for (int64_t k = 1; k <= n_iters; ++k) {
    interrupt.tick();
    column_lse_add(K, F, n, m, G, colmax);
    for (int64_t j = 0; j < m; ++j) G[j] = log_ratio(logb[j], G[j]);
    for (int64_t i = 0; i < n; ++i) F[i] = log_ratio(loga[i], lse_add(G, K + i * m, m));
    if (f_hist != nullptr) {
      for (int64_t i = 0; i < n; ++i) f_hist[(k - 1) * n + i] = F[i];
      for (int64_t j = 0; j < m; ++j) g_hist[(k - 1) * m + j] = G[j];
    }
    out.iterations = k;
    if (is_check_point(k, n_iters)) {
      column_lse_add(K, F, n, m, lse, colmax);
      for (int64_t j = 0; j < m; ++j) lse[j] = std::exp(G[j] + lse[j]);  // G = -inf (b_j = 0): 0
      out.violation = l1_gap(lse, b, m);
      if (out.violation <= tol) break;
    }
  }
}

// sum_i |delta_i (Q_i · sigma) - a_i|: the row-marginal violation of the scaling-form IPOT plan (Q rows ld apart).
template <typename T>
HF_INLINE T ipot_row_violation_linear(const T* __restrict Q, const T* __restrict delta, const T* __restrict sigma,
                                      const T* __restrict a, int64_t n, int64_t ld) {
  T s = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T* __restrict qrow = Q + i * ld;
    T dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < ld; ++j) dot += qrow[j] * sigma[j];
    s += std::abs(delta[i] * dot - a[i]);
  }
  return s;
}

// ipot_forward_linear_tracked with the test (an extra pass over Q at each check). Arguments as there, plus tol.
template <bool kExactZeros, int kVecBytes, typename T>
HF_INLINE bool ipot_forward_linear_tol_tracked(const T* __restrict K, const T* __restrict a, const T* __restrict b,
                                               const T* __restrict inv_a, const T* __restrict inv_b, int64_t n,
                                               int64_t m, int64_t n_iters, T tol, T* __restrict plan, T* d_hist,
                                               T* s_hist, T* __restrict Kx, T* __restrict Tm, T* __restrict delta,
                                               T* __restrict sigma, T* __restrict col, ConvergenceReport<T>& out) {
  const int64_t ld = padded_row_stride<T>(m);
  const T c = shifted_kernel_rows(K, n, m, ld, Kx);
  IpotExactness<T> exact(b, m);
  for (int64_t j = 0; j < ld; ++j) sigma[j] = j < m ? T(1) / T(m) : T(0);
  InterruptCountdown interrupt(n * m);
  for (int64_t k = 0; k < n_iters; ++k) {
    interrupt.tick();
    const IpotIterationStats<T> it = ipot_iteration<kExactZeros, kVecBytes>(
        Kx, k == 0 ? nullptr : Tm, k == 0 ? nullptr : delta, a, b, inv_a, inv_b, n, m, ld, Tm, delta, sigma, col);
    if (!exact.step(k == 0, it, n, m)) return false;
    if (d_hist != nullptr) {
      T* __restrict dh = d_hist + k * n;
      T* __restrict sh = s_hist + k * m;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) dh[i] = log_or_neg_inf(delta[i]) - c;
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) sh[j] = log_or_neg_inf(sigma[j]);
    }
    out.iterations = k + 1;
    if (is_check_point(k + 1, n_iters)) {
      out.violation = ipot_row_violation_linear(Tm, delta, sigma, a, n, ld);
      if (out.violation <= tol) break;
    }
  }
  scale_rows_and_columns(delta, Tm, ld, sigma, n, m, plan);
  return true;
}

template <typename T, int kVecBytes, typename... Args>
HF_INLINE bool ipot_forward_linear_tol(Args&&... args) {
  return ipot_forward_linear_tol_tracked<false, kVecBytes, T>(args...) ||
         ipot_forward_linear_tol_tracked<true, kVecBytes, T>(args...);
}

// ipot_forward (log domain) with the test: row sums exp(d_i + LSE_j(Q_ij + s_j)).
template <typename T>
HF_INLINE void ipot_forward_tol(const T* __restrict K, const T* __restrict loga, const T* __restrict logb,
                                const T* __restrict a, int64_t n, int64_t m, int64_t n_iters, T tol, T* __restrict plan,
                                T* d_hist, T* s_hist, T* __restrict Q, T* __restrict d, T* __restrict s,
                                T* __restrict colmax, ConvergenceReport<T>& out) {
  const T s0 = -std::log(T(m));
  for (int64_t j = 0; j < m; ++j) s[j] = s0;
  InterruptCountdown interrupt(n * m);
  for (int64_t k = 0; k < n_iters; ++k) {
    interrupt.tick();
    for (int64_t i = 0; i < n; ++i) {
      const T* __restrict krow = K + i * m;
      T* __restrict qrow = Q + i * m;
      if (k == 0) {
#pragma omp simd
        for (int64_t j = 0; j < m; ++j) qrow[j] = krow[j] + T(0);
      } else {
        const T di = d[i];
#pragma omp simd
        for (int64_t j = 0; j < m; ++j) qrow[j] = krow[j] + ((di + qrow[j]) + s[j]);
      }
      d[i] = log_ratio(loga[i], lse_add(qrow, s, m));
    }
    column_lse_add(Q, d, n, m, s, colmax);
    for (int64_t j = 0; j < m; ++j) s[j] = log_ratio(logb[j], s[j]);
    if (d_hist != nullptr) {
      for (int64_t i = 0; i < n; ++i) d_hist[k * n + i] = d[i];
      for (int64_t j = 0; j < m; ++j) s_hist[k * m + j] = s[j];
    }
    out.iterations = k + 1;
    if (is_check_point(k + 1, n_iters)) {
      T v = 0;
      for (int64_t i = 0; i < n; ++i) v += std::abs(std::exp(d[i] + lse_add(Q + i * m, s, m)) - a[i]);
      out.violation = v;
      if (v <= tol) break;
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    const T di = d[i];
    const T* __restrict qrow = Q + i * m;
    T* __restrict prow = plan + i * m;
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) prow[j] = fast_exp((di + qrow[j]) + s[j]);
  }
}

}  // namespace helo_fast::ot_cpu
