// The per-problem Sinkhorn solvers of the CPU kernels (csrc/cpu/sinkhorn.cpp, gromov_wasserstein.cpp,
// ot_converged.cpp): forward and unrolled backward, in log domain and in scaling form (which falls back to the log
// domain where ot_exactness.h's guard fails). Shared pieces: ot_solver_common.h.
//
// Sinkhorn (POT sinkhorn_log order), scaled potentials F = f/eps, G = g/eps, F_0 = 0:
//   G_k = log b - LSE_i(F_{k-1} + K),  F_k = log a - LSE_j(G_k + K),  P = exp(F_N + G_N + K).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "ot_exactness.h"
#include "ot_solver_common.h"

namespace helo_fast::ot_cpu {

// Runs n_iters iterations; F [n], G [m] end as F_N, G_N. f_hist [n_iters, n] / g_hist [n_iters, m]
// receive F_k / G_k for k = 1..N when not null. colmax: scratch [m].
template <typename T>
HF_INLINE void sinkhorn_forward(const T* __restrict K, const T* __restrict loga, const T* __restrict logb, int64_t n,
                                int64_t m, int64_t n_iters, T* __restrict F, T* __restrict G, T* f_hist, T* g_hist,
                                T* __restrict colmax) {
  for (int64_t i = 0; i < n; ++i) F[i] = 0;
  InterruptCountdown interrupt(n * m);
  for (int64_t k = 0; k < n_iters; ++k) {
    interrupt.tick();
    column_lse_add(K, F, n, m, G, colmax);
    for (int64_t j = 0; j < m; ++j) G[j] = log_ratio(logb[j], G[j]);
    for (int64_t i = 0; i < n; ++i) F[i] = log_ratio(loga[i], lse_add(G, K + i * m, m));
    if (f_hist != nullptr) {
      for (int64_t i = 0; i < n; ++i) f_hist[k * n + i] = F[i];
      for (int64_t j = 0; j < m; ++j) g_hist[k * m + j] = G[j];
    }
  }
}

// Gradient of the unrolled Sinkhorn iterations. gP: dL/dP [n, m]. Writes dK [n, m] (dL/dK),
// dloga [n], dlogb [m]. Scratch: dF, zeros, fa [n]; dG, gb [m].
template <typename T>
HF_INLINE void sinkhorn_backward(const T* __restrict K, const T* __restrict loga, const T* __restrict logb, int64_t n,
                                 int64_t m, int64_t n_iters, const T* __restrict f_hist, const T* __restrict g_hist,
                                 const T* __restrict gP, T* __restrict dK, T* __restrict dloga, T* __restrict dlogb,
                                 T* __restrict dF, T* __restrict dG, T* __restrict zeros, T* __restrict gb) {
  const T* FN = f_hist + (n_iters - 1) * n;
  const T* GN = g_hist + (n_iters - 1) * m;
  for (int64_t j = 0; j < m; ++j) {
    dG[j] = 0;
    dlogb[j] = 0;
  }
  for (int64_t i = 0; i < n; ++i) {
    const T fi = FN[i];
    const T* __restrict krow = K + i * m;
    const T* __restrict grow = gP + i * m;
    T* __restrict drow = dK + i * m;
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < m; ++j) {
      const T t = grow[j] * fast_exp(fi + GN[j] + krow[j]);
      drow[j] = t;
      dG[j] += t;
      acc += t;
    }
    dF[i] = acc;
    dloga[i] = 0;
    zeros[i] = 0;
  }
  InterruptCountdown interrupt(n * m);
  for (int64_t k = n_iters; k >= 1; --k) {
    interrupt.tick();
    const T* __restrict Fk = f_hist + (k - 1) * n;
    const T* __restrict Gk = g_hist + (k - 1) * m;
    const T* __restrict Fprev = k > 1 ? f_hist + (k - 2) * n : zeros;
    // F_k = log a - LSE_j(G_k + K): softmax weights along j are exp(G_k + K + F_k - log a).
    for (int64_t i = 0; i < n; ++i) {
      const T fa = log_ratio(Fk[i], loga[i]);
      const T c = dF[i];
      dloga[i] += c;
      const T* __restrict krow = K + i * m;
      T* __restrict drow = dK + i * m;
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) {
        const T t = c * fast_exp(Gk[j] + krow[j] + fa);
        drow[j] -= t;
        dG[j] -= t;
      }
    }
    // G_k = log b - LSE_i(F_{k-1} + K): softmax weights along i are exp(F_{k-1} + K + G_k - log b).
    for (int64_t j = 0; j < m; ++j) {
      gb[j] = log_ratio(Gk[j], logb[j]);
      dlogb[j] += dG[j];
    }
    for (int64_t i = 0; i < n; ++i) {
      const T fp = Fprev[i];
      const T* __restrict krow = K + i * m;
      T* __restrict drow = dK + i * m;
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t j = 0; j < m; ++j) {
        const T t = dG[j] * fast_exp(fp + krow[j] + gb[j]);
        drow[j] -= t;
        acc += t;
      }
      dF[i] = -acc;
    }
    for (int64_t j = 0; j < m; ++j) dG[j] = 0;
  }
}

// Sinkhorn in scaling form: v = b / (Kxᵀ u), u = a / (Kx v). Writes plan and (if not null) the
// log-domain histories F_k = log u_k, G_k = log v_k - max K. inv_a, inv_b: inverse_or_zero of a, b. Scratch:
// Kx [n, m], u [n], v [m].
// One pass over Kx per iteration: each row's u_i feeds the next iteration's Kxᵀ u right away.
// False (outputs undefined) where ExactnessGuard or a scaling's range fails.
template <typename T>
HF_INLINE bool sinkhorn_forward_linear(const T* __restrict K, const T* __restrict a, const T* __restrict b,
                                       const T* __restrict inv_a, const T* __restrict inv_b, int64_t n, int64_t m,
                                       int64_t n_iters, T* __restrict plan, T* f_hist, T* g_hist, T* __restrict Kx,
                                       T* __restrict u, T* __restrict v) {
  const T c = shifted_kernel_rows(K, n, m, m, Kx);
  const ExactnessGuard<T> guard;  // Kx is fixed: its lost entries stay below the kernel cut-off
  T* __restrict col = plan;       // Kxᵀ u [m]; the plan is only written after the last iteration
  for (int64_t i = 0; i < n; ++i) u[i] = 1;
  T u_max = 1;
  column_product(Kx, u, n, m, col);
  InterruptCountdown interrupt(n * m);
  for (int64_t k = 0; k < n_iters; ++k) {
    interrupt.tick();
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) v[j] = scaling_update(b[j], col[j]);
    row_dots_then_column_product(Kx, v, n, m, col,
                                 [&](int64_t i, T dot) HF_INLINE_LAMBDA { return u[i] = scaling_update(a[i], dot); });
    const ScalingStats<T> vs = scaling_stats(v, inv_b, m), us = scaling_stats(u, inv_a, n);
    if (!guard.dots_exact(n, u_max, vs) || !guard.dots_exact(m, vs.max, us)) return false;
    u_max = us.max;
    if (f_hist != nullptr) {
      T* __restrict fh = f_hist + k * n;
      T* __restrict gh = g_hist + k * m;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) fh[i] = log_or_neg_inf(u[i]);
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) gh[j] = log_or_neg_inf(v[j]) - c;
    }
  }
  scale_rows_and_columns(u, Kx, m, v, n, m, plan);
  return true;
}

// dst = exp(src + shift) [len], the scalings of a marginal saved as logs (-inf where it is 0); inv_w: its
// inverse_or_zero.
template <typename T>
HF_INLINE ScalingStats<T> load_scaling(const T* __restrict src, T shift, const T* __restrict inv_w, int64_t len,
                                       T* __restrict dst) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) dst[i] = fast_exp(src[i] + shift);
  return scaling_stats(dst, inv_w, len);
}

// The Sinkhorn backward of sinkhorn_backward in scaling form: with u_k = exp(F_k), v_k = exp(G_k + max K),
// the softmax weights are u_i Kx_ij v_j / a_i, and dK = Kx ∘ acc with
//   acc = gP ∘ (u_N v_Nᵀ) - sum_k (alpha_k v_kᵀ + u_{k-1} beta_kᵀ),
//   alpha_k = dF_k u_k / a,  beta_k = (dG_k - v_k ∘ Kxᵀ alpha_k) v_k / b,  dF_{k-1} = -u_{k-1} ∘ Kx beta_k.
// No exps; one pass over Kx per iteration (Kx beta_k, then Kxᵀ alpha_{k-1} from the same rows) and one
// over acc. It checks each iteration's scalings as the forward did, and its results for overflow (acc grows
// like u vᵀ where Kx is tiny); false (outputs undefined) where either fails. Zero-mass rows and columns get
// zero gradients. inv_a, inv_b: inverse_or_zero of a, b. Scratch: Kx, acc [n, m]; u, up, upa, alpha [n]; v, beta,
// w, dG [m].
template <typename T>
HF_INLINE bool sinkhorn_backward_linear(const T* __restrict K, const T* __restrict inv_a, const T* __restrict inv_b,
                                        int64_t n, int64_t m, int64_t n_iters, const T* __restrict f_hist,
                                        const T* __restrict g_hist, const T* __restrict gP, T* __restrict dK,
                                        T* __restrict dloga, T* __restrict dlogb, T* __restrict Kx, T* __restrict acc,
                                        T* __restrict u, T* __restrict up, T* __restrict alpha, T* __restrict upa,
                                        T* __restrict v, T* __restrict beta, T* __restrict w, T* __restrict dG) {
  const T c = shifted_kernel_rows(K, n, m, m, Kx);
  const ExactnessGuard<T> guard;
  // up = u_{k-1} (u_0 = 1), upa = up / a and v = v_k for the iteration k about to run; u_now: the stats of u_k.
  ScalingStats<T> u_now;
  auto load_iteration = [&](int64_t k) HF_INLINE_LAMBDA {
    ScalingStats<T> u_prev;
    if (k == 1) {
      for (int64_t i = 0; i < n; ++i) up[i] = 1;
      u_prev.max = 1;
    } else {
      u_prev = load_scaling(f_hist + (k - 2) * n, T(0), inv_a, n, up);
    }
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) upa[i] = up[i] * inv_a[i];
    const ScalingStats<T> vs = load_scaling(g_hist + (k - 1) * m, c, inv_b, m, v);
    const bool ok =
        (k == 1 || u_prev.in_range) && guard.dots_exact(n, u_prev.max, vs) && guard.dots_exact(m, vs.max, u_now);
    u_now = u_prev;
    return ok;
  };
  u_now = load_scaling(f_hist + (n_iters - 1) * n, T(0), inv_a, n, u);
  if (!load_iteration(n_iters)) return false;
  // dL/dP = gP: dF_N, dG_N are the row and column sums of gP ∘ P.
  for (int64_t j = 0; j < m; ++j) dG[j] = 0, dlogb[j] = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T ui = u[i];
    const T* __restrict krow = Kx + i * m;
    const T* __restrict grow = gP + i * m;
    T* __restrict arow = acc + i * m;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < m; ++j) {
      const T g = (grow[j] * ui) * v[j];
      const T t = grow[j] * ((ui * krow[j]) * v[j]);  // gP ∘ P, finite where g overflows
      arow[j] = g;
      dG[j] += t;
      s += t;
    }
    dloga[i] = s;
    alpha[i] = s * (ui * inv_a[i]);
  }
  column_product(Kx, alpha, n, m, w);
  InterruptCountdown interrupt(n * m);
  for (int64_t k = n_iters; k >= 1; --k) {
    interrupt.tick();
    // Column step G_k = log b - LSE_i(F_{k-1} + K); dG is nonzero only for k = N.
    for (int64_t j = 0; j < m; ++j) {
      const T dg = dG[j] - v[j] * w[j];
      dG[j] = 0;
      dlogb[j] += dg;
      beta[j] = dg * (v[j] * inv_b[j]);
    }
    for (int64_t i = 0; i < n; ++i) {
      const T al = alpha[i], upi = up[i];
      T* __restrict arow = acc + i * m;
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) arow[j] -= al * v[j] + upi * beta[j];
    }
    if (k == 1) break;  // dF_0 is the gradient of the constant F_0 = 0
    // Row step F_{k-1} = log a - LSE_j(G_{k-1} + K), fused with w = Kxᵀ alpha_{k-1}.
    row_dots_then_column_product(Kx, beta, n, m, w, [&](int64_t i, T dot) HF_INLINE_LAMBDA {
      const T df = -up[i] * dot;
      dloga[i] += df;
      return alpha[i] = df * upa[i];
    });
    if (!load_iteration(k - 1)) return false;
  }
#pragma omp simd
  for (int64_t e = 0; e < n * m; ++e) dK[e] = Kx[e] * acc[e];
  return all_finite(dK, n * m) && all_finite(dloga, n) && all_finite(dlogb, m);
}

}  // namespace helo_fast::ot_cpu
