// Per-problem log-domain OT solvers (forward and unrolled backward) for the CPU kernels: one [n, m]
// problem at a time, all buffers passed in by the caller (allocated once per thread, never per
// iteration). Everything works on the scaled log-kernel K = -cost / eps; the callers convert.
//
// Sinkhorn (POT sinkhorn_log order), scaled potentials F = f/eps, G = g/eps, F_0 = 0:
//   G_k = log b - LSE_i(F_{k-1} + K),  F_k = log a - LSE_j(G_k + K),  P = exp(F_N + G_N + K).
// IPOT (log domain), L_0 = 0, s_0 = -log m:
//   Q_k = K + L_{k-1},  d_k = log a - LSE_j(Q_k + s_{k-1}),  s_k = log b - LSE_i(Q_k + d_k),
//   L_k = d_k + Q_k + s_k,  T = exp(L_N).   Note L_k = k K + D_k + S_k with D_k, S_k the running
//   sums of d and s, which is how the backward rebuilds every Q_k from the saved vectors alone.
#pragma once

#include <cmath>
#include <cstdint>

#include "ot_cpu_math.h"
#include "ot_cpu_vec.h"

namespace helo_fast::ot_cpu {

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

// ---------------------------------------------------------------------------------------------
// Sinkhorn
// ---------------------------------------------------------------------------------------------

// Runs n_iters iterations; F [n], G [m] end as F_N, G_N. f_hist [n_iters, n] / g_hist [n_iters, m]
// receive F_k / G_k for k = 1..N when not null. colmax: scratch [m].
template <typename T>
HF_INLINE void sinkhorn_forward(const T* __restrict K, const T* __restrict loga, const T* __restrict logb, int64_t n,
                                int64_t m, int64_t n_iters, T* __restrict F, T* __restrict G, T* f_hist, T* g_hist,
                                T* __restrict colmax) {
  for (int64_t i = 0; i < n; ++i) F[i] = 0;
  for (int64_t k = 0; k < n_iters; ++k) {
    column_lse_add(K, F, n, m, G, colmax);
    for (int64_t j = 0; j < m; ++j) G[j] = logb[j] - G[j];
    for (int64_t i = 0; i < n; ++i) F[i] = loga[i] - lse_add(G, K + i * m, m);
    if (f_hist != nullptr) {
      for (int64_t i = 0; i < n; ++i) f_hist[k * n + i] = F[i];
      for (int64_t j = 0; j < m; ++j) g_hist[k * m + j] = G[j];
    }
  }
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
  for (int64_t k = n_iters; k >= 1; --k) {
    const T* __restrict Fk = f_hist + (k - 1) * n;
    const T* __restrict Gk = g_hist + (k - 1) * m;
    const T* __restrict Fprev = k > 1 ? f_hist + (k - 2) * n : zeros;
    // F_k = log a - LSE_j(G_k + K): softmax weights along j are exp(G_k + K + F_k - log a).
    for (int64_t i = 0; i < n; ++i) {
      const T fa = Fk[i] - loga[i];
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
      gb[j] = Gk[j] - logb[j];
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

// ---------------------------------------------------------------------------------------------
// IPOT
// ---------------------------------------------------------------------------------------------

// Runs n_iters IPOT iterations and writes the plan T = exp(L_N) to plan [n, m]. d_hist [n_iters, n]
// and s_hist [n_iters, m] receive d_k, s_k (k = 1..N) when not null. Scratch: Q [n, m], d [n],
// s [m], colmax [m].
template <typename T>
HF_INLINE void ipot_forward(const T* __restrict K, const T* __restrict loga, const T* __restrict logb, int64_t n,
                            int64_t m, int64_t n_iters, T* __restrict plan, T* d_hist, T* s_hist, T* __restrict Q,
                            T* __restrict d, T* __restrict s, T* __restrict colmax) {
  const T s0 = -std::log(T(m));
  for (int64_t j = 0; j < m; ++j) s[j] = s0;
  for (int64_t k = 0; k < n_iters; ++k) {
    for (int64_t i = 0; i < n; ++i) {
      const T* __restrict krow = K + i * m;
      T* __restrict qrow = Q + i * m;
      if (k == 0) {
#pragma omp simd
        for (int64_t j = 0; j < m; ++j) qrow[j] = krow[j] + T(0);
      } else {
        const T di = d[i];  // previous iteration's d; s still holds the previous s
#pragma omp simd
        for (int64_t j = 0; j < m; ++j) qrow[j] = krow[j] + ((di + qrow[j]) + s[j]);
      }
      d[i] = loga[i] - lse_add(qrow, s, m);
    }
    column_lse_add(Q, d, n, m, s, colmax);
    for (int64_t j = 0; j < m; ++j) s[j] = logb[j] - s[j];
    if (d_hist != nullptr) {
      for (int64_t i = 0; i < n; ++i) d_hist[k * n + i] = d[i];
      for (int64_t j = 0; j < m; ++j) s_hist[k * m + j] = s[j];
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

// Gradient of the unrolled IPOT iterations. gT: dL/dT [n, m]. Writes dK [n, m], dloga [n],
// dlogb [m]. Scratch: lam [n, m]; Dcum [(n_iters+1) n]; Scum [(n_iters+1) m]; rr [n];
// ds, dsprev, c1, c2 [m].
template <typename T>
HF_INLINE void ipot_backward(const T* __restrict K, const T* __restrict loga, const T* __restrict logb, int64_t n,
                             int64_t m, int64_t n_iters, const T* __restrict d_hist, const T* __restrict s_hist,
                             const T* __restrict gT, T* __restrict dK, T* __restrict dloga, T* __restrict dlogb,
                             T* __restrict lam, T* __restrict Dcum, T* __restrict Scum, T* __restrict rr,
                             T* __restrict ds, T* __restrict dsprev, T* __restrict c1, T* __restrict c2) {
  for (int64_t i = 0; i < n; ++i) Dcum[i] = 0;
  for (int64_t j = 0; j < m; ++j) Scum[j] = 0;
  for (int64_t k = 1; k <= n_iters; ++k) {
    for (int64_t i = 0; i < n; ++i) Dcum[k * n + i] = Dcum[(k - 1) * n + i] + d_hist[(k - 1) * n + i];
    for (int64_t j = 0; j < m; ++j) Scum[k * m + j] = Scum[(k - 1) * m + j] + s_hist[(k - 1) * m + j];
  }
  // lam = dL_N = gT * T with T = exp(N K + D_N + S_N).
  exp_outer(K, Dcum + n_iters * n, Scum + n_iters * m, T(n_iters), n, m, lam);
  for (int64_t i = 0; i < n * m; ++i) {
    lam[i] *= gT[i];
    dK[i] = 0;
  }
  for (int64_t i = 0; i < n; ++i) dloga[i] = 0;
  for (int64_t j = 0; j < m; ++j) {
    dlogb[j] = 0;
    ds[j] = 0;
  }
  const T s0 = -std::log(T(m));
  for (int64_t k = n_iters; k >= 1; --k) {
    const T kf = T(k);
    const T* __restrict Dk = Dcum + k * n;
    const T* __restrict Sk = Scum + k * m;
    const T* __restrict Sprev = Scum + (k - 1) * m;
    // ds_k += column sums of dL_k (L_k = d_k + Q_k + s_k).
    for (int64_t i = 0; i < n; ++i) {
      const T* __restrict lrow = lam + i * m;
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) ds[j] += lrow[j];
    }
    for (int64_t j = 0; j < m; ++j) {
      dlogb[j] += ds[j];
      c1[j] = Sk[j] - logb[j];                                           // s_k column softmax: kK + D_k + S_k - log b
      c2[j] = Sprev[j] + (k > 1 ? s_hist[(k - 2) * m + j] : s0);         // d_k row softmax: kK + D_k + S_{k-1} + s_{k-1} - log a
      dsprev[j] = 0;
    }
    for (int64_t i = 0; i < n; ++i) rr[i] = Dk[i] - loga[i];
    for (int64_t i = 0; i < n; ++i) {
      const T* __restrict krow = K + i * m;
      T* __restrict lrow = lam + i * m;
      T* __restrict drow = dK + i * m;
      const T di = Dk[i];
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t j = 0; j < m; ++j) {
        const T l = lrow[j] - ds[j] * fast_exp(kf * krow[j] + di + c1[j]);
        lrow[j] = l;
        acc += l;
      }
      const T ddi = acc;  // dL/dd_k,i: row sum of dL_k minus the s_k softmax term
      dloga[i] += ddi;
      const T ri = rr[i];
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) {
        const T t = ddi * fast_exp(kf * krow[j] + ri + c2[j]);
        const T l = lrow[j] - t;  // dL/dQ_k = dL/dL_{k-1}
        lrow[j] = l;
        drow[j] += l;
        dsprev[j] -= t;
      }
    }
    for (int64_t j = 0; j < m; ++j) ds[j] = dsprev[j];
  }
}

// ---------------------------------------------------------------------------------------------
// Linear-domain fast paths. The same iterations on the kernel exp(K - max K) with scalings u = exp(F),
// v = exp(G + max K) (Sinkhorn) or delta, sigma (IPOT): multiplies instead of exps, equal in exact
// arithmetic. They return false as soon as a scaling leaves [range_lo, range_hi] (tiny eps / beta,
// huge costs, zero marginals): the caller then runs the log-domain solver above, which never fails.
// ---------------------------------------------------------------------------------------------

template <typename T>
struct ScalingRange;
template <>
struct ScalingRange<float> {
  static constexpr float lo = 1e-25f, hi = 1e25f;
};
template <>
struct ScalingRange<double> {
  static constexpr double lo = 1e-250, hi = 1e250;
};

// out_ij = (r_i * mat_ij) * c_j: a plan from its scaling-form factors. mat [n, m] with rows ld apart; out [n, m].
template <typename T>
HF_INLINE void scale_rows_and_columns(const T* __restrict r, const T* __restrict mat, int64_t ld,
                                      const T* __restrict c, int64_t n, int64_t m, T* __restrict out) {
  for (int64_t i = 0; i < n; ++i) {
    const T ri = r[i];
    const T* __restrict mrow = mat + i * ld;
    T* __restrict orow = out + i * m;
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) orow[j] = (ri * mrow[j]) * c[j];
  }
}

// Number of entries of x [len] outside the safe scaling range (NaN counts).
template <typename T>
HF_INLINE int64_t count_out_of_range(const T* __restrict x, int64_t len) {
  int64_t bad = 0;
#pragma omp simd reduction(+ : bad)
  for (int64_t i = 0; i < len; ++i) bad += int64_t(!(x[i] >= ScalingRange<T>::lo)) + int64_t(!(x[i] <= ScalingRange<T>::hi));
  return bad;
}

// Kx = exp(K - max K) (entries in (0, 1]) for K [n, m], written into rows ld >= m apart whose padding columns
// [m, ld) are zero; returns max K.
template <typename T>
HF_INLINE T shifted_kernel_rows(const T* __restrict K, int64_t n, int64_t m, int64_t ld, T* __restrict Kx) {
  T c = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : c)
  for (int64_t e = 0; e < n * m; ++e) c = vmax(c, K[e]);
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
HF_INLINE void row_dots_then_column_product(const T* __restrict mat, const T* __restrict x, int64_t rows,
                                            int64_t cols, T* __restrict out, Coef&& coef) {
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

// Sinkhorn in scaling form: v = b / (Kxᵀ u), u = a / (Kx v). Writes plan and (if not null) the
// log-domain histories F_k = log u_k, G_k = log v_k - max K. Scratch: Kx [n, m], u [n], v [m].
// One pass over Kx per iteration: each row's u_i feeds the next iteration's Kxᵀ u right away.
template <typename T>
HF_INLINE bool sinkhorn_forward_linear(const T* __restrict K, const T* __restrict a, const T* __restrict b, int64_t n,
                                       int64_t m, int64_t n_iters, T* __restrict plan, T* f_hist, T* g_hist,
                                       T* __restrict Kx, T* __restrict u, T* __restrict v) {
  const T c = shifted_kernel_rows(K, n, m, m, Kx);
  T* __restrict col = plan;  // Kxᵀ u [m]; the plan is only written after the last iteration
  for (int64_t i = 0; i < n; ++i) u[i] = 1;
  column_product(Kx, u, n, m, col);
  for (int64_t k = 0; k < n_iters; ++k) {
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) v[j] = b[j] / col[j];
    row_dots_then_column_product(Kx, v, n, m, col, [&](int64_t i, T dot) HF_INLINE_LAMBDA { return u[i] = a[i] / dot; });
    if (count_out_of_range(u, n) + count_out_of_range(v, m) != 0) return false;
    if (f_hist != nullptr) {
      T* __restrict fh = f_hist + k * n;
      T* __restrict gh = g_hist + k * m;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) fh[i] = fast_log(u[i]);
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) gh[j] = fast_log(v[j]) - c;
    }
  }
  scale_rows_and_columns(u, Kx, m, v, n, m, plan);
  return true;
}

// dst = exp(src + shift) [len]; false if an entry leaves the safe scaling range.
template <typename T>
HF_INLINE bool load_scaling(const T* __restrict src, T shift, int64_t len, T* __restrict dst) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) dst[i] = fast_exp(src[i] + shift);
  return count_out_of_range(dst, len) == 0;
}

// The Sinkhorn backward of sinkhorn_backward in scaling form: with u_k = exp(F_k), v_k = exp(G_k + max K),
// the softmax weights are u_i Kx_ij v_j / a_i, and dK = Kx ∘ acc with
//   acc = gP ∘ (u_N v_Nᵀ) - sum_k (alpha_k v_kᵀ + u_{k-1} beta_kᵀ),
//   alpha_k = dF_k u_k / a,  beta_k = (dG_k - v_k ∘ Kxᵀ alpha_k) v_k / b,  dF_{k-1} = -u_{k-1} ∘ Kx beta_k.
// No exps; one pass over Kx per iteration (Kx beta_k, then Kxᵀ alpha_{k-1} from the same rows) and one
// over acc. Scratch: Kx, acc [n, m]; u, up, upa, alpha [n]; v, beta, w, dG [m].
template <typename T>
HF_INLINE bool sinkhorn_backward_linear(const T* __restrict K, const T* __restrict a, const T* __restrict b, int64_t n,
                                        int64_t m, int64_t n_iters, const T* __restrict f_hist,
                                        const T* __restrict g_hist, const T* __restrict gP, T* __restrict dK,
                                        T* __restrict dloga, T* __restrict dlogb, T* __restrict Kx, T* __restrict acc,
                                        T* __restrict u, T* __restrict up, T* __restrict alpha, T* __restrict upa,
                                        T* __restrict v, T* __restrict beta, T* __restrict w, T* __restrict dG) {
  const T c = shifted_kernel_rows(K, n, m, m, Kx);
  // up = u_{k-1} (u_0 = 1), upa = up / a and v = v_k for the iteration k about to run.
  auto load_iteration = [&](int64_t k) HF_INLINE_LAMBDA {
    if (k == 1)
      for (int64_t i = 0; i < n; ++i) up[i] = 1;
    else if (!load_scaling(f_hist + (k - 2) * n, T(0), n, up))
      return false;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) upa[i] = up[i] / a[i];
    return load_scaling(g_hist + (k - 1) * m, c, m, v);
  };
  if (!load_scaling(f_hist + (n_iters - 1) * n, T(0), n, u) || !load_iteration(n_iters)) return false;
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
      const T t = g * krow[j];
      arow[j] = g;
      dG[j] += t;
      s += t;
    }
    dloga[i] = s;
    alpha[i] = s * ui / a[i];
  }
  column_product(Kx, alpha, n, m, w);
  for (int64_t k = n_iters; k >= 1; --k) {
    // Column step G_k = log b - LSE_i(F_{k-1} + K); dG is nonzero only for k = N.
    for (int64_t j = 0; j < m; ++j) {
      const T dg = dG[j] - v[j] * w[j];
      dG[j] = 0;
      dlogb[j] += dg;
      beta[j] = dg * v[j] / b[j];
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
  return true;
}

// Rows [i0, i0 + rows) (rows <= L, the lanes of a 32-byte vector) of one ipot_iteration: their rows of Q, their
// deltas, and their share of col += Qᵀ delta, added while the rows are in L1. The L rows' dot products are L
// independent chains summed by one row_sums tree, and their deltas are one vector division.
template <bool kFirst, typename T, typename Rows>
HF_INLINE void ipot_row_group(const T* __restrict Kx, const T* Q_prev, const T* delta_prev, const T* __restrict a,
                              int64_t i0, Rows rows, int64_t ld, const T* __restrict sig, T* Q, T* delta,
                              T* __restrict col) {
  using V = Vec32<T>;
  constexpr int64_t L = vec32_lanes<T>();
  V acc[L];
  T d_prev[L] = {};
  for (int64_t r = 0; r < L; ++r) acc[r] = V{};
  if constexpr (!kFirst)
    for (int64_t r = 0; r < rows; ++r) d_prev[r] = delta_prev[i0 + r];
  for (int64_t c = 0; c < ld; c += L) {
    const V s = load32(sig + c);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t e = (i0 + r) * ld + c;
      V q = load32(Kx + e);
      if constexpr (!kFirst) q = q * ((d_prev[r] * load32(Q_prev + e)) * s);
      store32(Q + e, q);
      acc[r] += q * s;
    }
  }
  const V dots = row_sums(acc);
  T d[L];
  if (rows == L) {
    store32(d, load32(a + i0) / dots);
  } else {
    for (int64_t r = 0; r < rows; ++r) d[r] = a[i0 + r] / dots[r];
  }
  for (int64_t r = 0; r < rows; ++r) delta[i0 + r] = d[r];
  for (int64_t c = 0; c < ld; c += L) {
    V sum = load32(col + c);
    for (int64_t r = 0; r < rows; ++r) sum += load32(Q + (i0 + r) * ld + c) * d[r];
    store32(col + c, sum);
  }
}

// One IPOT iteration in scaling form on rows ld = padded_row_stride<T>(m) apart whose padding columns are zero
// (those of Kx, hence of Q): Q = Kx ∘ T_prev with T_prev = delta_prev Q_prev sigma_prev (Q_prev = delta_prev =
// nullptr in the first iteration, where T_0 = 1), delta = a / (Q sigma_prev), sigma = b / (Qᵀ delta).
// sig [ld] holds sigma_prev on entry (padding zero) and sigma on return. Q may alias Q_prev and delta
// delta_prev (updates in place). col: scratch [ld].
template <typename T>
HF_INLINE void ipot_iteration(const T* __restrict Kx, const T* Q_prev, const T* delta_prev, const T* __restrict a,
                              const T* __restrict b, int64_t n, int64_t m, int64_t ld, T* Q, T* delta,
                              T* __restrict sig, T* __restrict col) {
  constexpr int64_t L = vec32_lanes<T>();
  for (int64_t c = 0; c < ld; ++c) col[c] = 0;
  for (int64_t i0 = 0; i0 < n; i0 += L) {
    auto group = [&](auto rows) HF_INLINE_LAMBDA {
      if (Q_prev == nullptr)
        ipot_row_group<true>(Kx, Q_prev, delta_prev, a, i0, rows, ld, sig, Q, delta, col);
      else
        ipot_row_group<false>(Kx, Q_prev, delta_prev, a, i0, rows, ld, sig, Q, delta, col);
    };
    if (n - i0 >= L)
      group(std::integral_constant<int64_t, L>{});
    else
      group(n - i0);
  }
#pragma omp simd
  for (int64_t j = 0; j < m; ++j) sig[j] = b[j] / col[j];
}

// IPOT in scaling form: Q = Kx ∘ T, delta = a / (Q sigma), sigma = b / (Qᵀ delta), T = delta Q sigma.
// Writes plan and (if not null) d_k = log delta_k - max K, s_k = log sigma_k. Scratch (ld =
// padded_row_stride<T>(m)): Kx, Tm [n, ld]; delta [n]; sigma, col [ld].
template <typename T>
HF_INLINE bool ipot_forward_linear(const T* __restrict K, const T* __restrict a, const T* __restrict b, int64_t n,
                                   int64_t m, int64_t n_iters, T* __restrict plan, T* d_hist, T* s_hist,
                                   T* __restrict Kx, T* __restrict Tm, T* __restrict delta, T* __restrict sigma,
                                   T* __restrict col) {
  const int64_t ld = padded_row_stride<T>(m);
  const T c = shifted_kernel_rows(K, n, m, ld, Kx);
  for (int64_t j = 0; j < ld; ++j) sigma[j] = j < m ? T(1) / T(m) : T(0);
  for (int64_t k = 0; k < n_iters; ++k) {
    ipot_iteration(Kx, k == 0 ? nullptr : Tm, k == 0 ? nullptr : delta, a, b, n, m, ld, Tm, delta, sigma, col);
    if (count_out_of_range(delta, n) + count_out_of_range(sigma, m) != 0) return false;
    if (d_hist != nullptr) {
      T* __restrict dh = d_hist + k * n;
      T* __restrict sh = s_hist + k * m;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) dh[i] = fast_log(delta[i]) - c;
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) sh[j] = fast_log(sigma[j]);
    }
  }
  scale_rows_and_columns(delta, Tm, ld, sigma, n, m, plan);
  return true;
}

// The iterates of ipot_forward_linear, all kept: Qs [n_iters, n, ld] (Q_k, ld = padded_row_stride<T>(m)),
// delta [n_iters, n] (delta_k), sigma [n_iters + 1, m] (sigma_0 = 1/m, then sigma_k). The same operations as
// the forward, so this fails exactly where the forward fell back to the log domain. Scratch: Kx [n, ld]; sig,
// col [ld].
template <typename T>
HF_INLINE bool ipot_forward_linear_iterates(const T* __restrict K, const T* __restrict a, const T* __restrict b,
                                            int64_t n, int64_t m, int64_t n_iters, T* __restrict Kx, T* __restrict Qs,
                                            T* __restrict delta, T* __restrict sigma, T* __restrict sig,
                                            T* __restrict col) {
  const int64_t ld = padded_row_stride<T>(m), nq = n * ld;
  shifted_kernel_rows(K, n, m, ld, Kx);
  for (int64_t j = 0; j < ld; ++j) sig[j] = j < m ? T(1) / T(m) : T(0);
  for (int64_t j = 0; j < m; ++j) sigma[j] = sig[j];
  for (int64_t k = 1; k <= n_iters; ++k) {
    T* dk = delta + (k - 1) * n;
    T* sk = sigma + k * m;
    const bool first = k == 1;
    ipot_iteration(Kx, first ? nullptr : Qs + (k - 2) * nq, first ? nullptr : dk - n, a, b, n, m, ld,
                   Qs + (k - 1) * nq, dk, sig, col);
    for (int64_t j = 0; j < m; ++j) sk[j] = sig[j];
    if (count_out_of_range(dk, n) + count_out_of_range(sk, m) != 0) return false;
  }
  return true;
}

// ipot_backward in scaling form, on the iterates of ipot_forward_linear_iterates (c = max K, so d_k = log delta_k
// - c and Q_k(log) = log Q_k + c): with P_k = delta_k ∘ Q_k, s_k's column softmax weights exp(L_k - log b) are
// T_k / b = P_k sigma_k / b and d_k's row softmax weights exp(L_k - s_k + s_{k-1} - log a) are P_k sigma_{k-1} / a,
// so the sweep has no exps. Returns false (outputs undefined) where ipot_forward_linear bails out or a column
// factor sigma_k / b overflows; the caller then runs ipot_backward. Scratch (ld = padded_row_stride<T>(m)):
// Qs [n_iters, n, ld]; lam [n, ld]; delta [n_iters, n]; sigma [n_iters + 1, m]; rho [n]; ds, dsnext [m]; cw, sig
// [ld].
template <typename T>
HF_INLINE bool ipot_backward_linear(const T* __restrict K, const T* __restrict a, const T* __restrict b, int64_t n,
                                    int64_t m, int64_t n_iters, const T* __restrict gT, T* __restrict dK,
                                    T* __restrict dloga, T* __restrict dlogb, T* __restrict Qs, T* __restrict lam,
                                    T* __restrict delta, T* __restrict sigma, T* __restrict rho, T* __restrict ds,
                                    T* __restrict dsnext, T* __restrict cw, T* __restrict sig) {
  const int64_t nm = n * m, ld = padded_row_stride<T>(m), nq = n * ld;
  if (!ipot_forward_linear_iterates(K, a, b, n, m, n_iters, lam, Qs, delta, sigma, sig, cw)) return false;
  // lam = dL_N = gT ∘ T_N.
  {
    const T* __restrict dN = delta + (n_iters - 1) * n;
    const T* __restrict sN = sigma + n_iters * m;
    const T* __restrict qN = Qs + (n_iters - 1) * nq;
    for (int64_t i = 0; i < n; ++i) {
      const T di = dN[i];
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) lam[i * m + j] = gT[i * m + j] * ((di * qN[i * ld + j]) * sN[j]);
    }
  }
  for (int64_t e = 0; e < nm; ++e) dK[e] = 0;
  for (int64_t i = 0; i < n; ++i) dloga[i] = 0;
  for (int64_t j = 0; j < m; ++j) dlogb[j] = 0, ds[j] = 0;
  for (int64_t i = 0; i < n; ++i) {
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) ds[j] += lam[i * m + j];
  }
  for (int64_t k = n_iters; k >= 1; --k) {
    const T* __restrict qk = Qs + (k - 1) * nq;
    const T* __restrict dk = delta + (k - 1) * n;
    const T* __restrict sk = sigma + k * m;
    const T* __restrict sprev = sigma + (k - 1) * m;
    // ds holds dL/ds_k: the column sums of dL_k plus d_{k+1}'s softmax term.
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) cw[j] = sk[j] / b[j];
    if (count_out_of_range(cw, m) != 0) return false;
    for (int64_t j = 0; j < m; ++j) {
      dlogb[j] += ds[j];
      cw[j] *= ds[j];
      dsnext[j] = 0;
    }
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) rho[i] = dk[i] / a[i];
    for (int64_t i = 0; i < n; ++i) {
      const T di = dk[i];
      const T* __restrict qrow = qk + i * ld;
      T* __restrict lrow = lam + i * m;
      T* __restrict drow = dK + i * m;
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t j = 0; j < m; ++j) acc += lrow[j] - (di * qrow[j]) * cw[j];
      dloga[i] += acc;  // dL/dd_k,i: row sum of dL_k minus the s_k softmax term
      // dL/dQ_k = dL/dL_{k-1}; its column sums and s_{k-1}'s share of the d_k softmax term give dL/ds_{k-1}.
      const T r = acc * rho[i];
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) {
        const T t = r * (qrow[j] * sprev[j]);
        const T l = (lrow[j] - (di * qrow[j]) * cw[j]) - t;
        lrow[j] = l;
        drow[j] += l;
        dsnext[j] += l - t;
      }
    }
    for (int64_t j = 0; j < m; ++j) ds[j] = dsnext[j];
  }
  return true;
}

}  // namespace helo_fast::ot_cpu
