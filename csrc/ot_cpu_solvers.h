// Per-problem log-domain OT solvers (forward and unrolled backward) for the CPU kernels: one [n, m]
// problem at a time, all buffers passed in by the caller (allocated once per thread, never per
// iteration). Everything works on the scaled log-kernel K = -cost / eps; the callers convert. Every iteration
// loop ticks an InterruptCountdown (interrupt.h), so that Ctrl-C stops a call of many iterations.
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

#include "interrupt.h"
#include "cpu_math.h"
#include "ot_cpu_vec.h"

namespace helo_fast::ot_cpu {
using namespace cpu_math;  // the shared math (csrc/cpu_math.h)

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
        const T di = d[i];  // previous iteration's d; s still holds the previous s
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
  InterruptCountdown interrupt(n * m);
  for (int64_t k = n_iters; k >= 1; --k) {
    interrupt.tick();
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
      c1[j] = log_ratio(Sk[j], logb[j]);                                           // s_k column softmax: kK + D_k + S_k - log b
      c2[j] = Sprev[j] + (k > 1 ? s_hist[(k - 2) * m + j] : s0);         // d_k row softmax: kK + D_k + S_{k-1} + s_{k-1} - log a
      dsprev[j] = 0;
    }
    for (int64_t i = 0; i < n; ++i) rr[i] = log_ratio(Dk[i], loga[i]);
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
// Linear-domain fast paths. The same iterations on the kernel Kx = exp(K - max K) with scalings u = exp(F),
// v = exp(G + max K) (Sinkhorn) or delta, sigma (IPOT): multiplies instead of exps, equal in exact
// arithmetic. In floating point they differ only where a product underflows: under FTZ/DAZ (FlushDenormals)
// every computed entry is either exact to rounding or exactly 0, and a 0 stands for a true value that may
// later be multiplied by huge scalings (a plan entry of 0.5 = u_i e^-750 v_j). An entry that is 0 but matters
// leaves no trace in the marginals, so the solvers bound it: ExactnessGuard keeps, per iteration, a bound on
// the true value of every entry computed as 0 and checks that all of them together change no row or column
// sum by more than a quarter of the dtype's epsilon (relative). The solvers return false as soon as that
// bound, or the range of a scaling, fails; the caller then runs the log-domain solver above, which never
// underflows. Marginal entries that are 0 get scalings of exactly 0 (a zero row or column of the plan).
// ---------------------------------------------------------------------------------------------

// hi caps every scaling (so that their sums and the guard's products stay finite); kernel_cutoff bounds a kernel
// entry computed as 0.
template <typename T>
struct ScalingLimits;
template <>
struct ScalingLimits<float> {
  static constexpr float hi = 1e25f;
  static constexpr float kernel_cutoff = 1.646e-38f;  // > e^-87: a kernel entry fast_exp returned as 0 is below this
};
template <>
struct ScalingLimits<double> {
  static constexpr double hi = 1e250;
  static constexpr double kernel_cutoff = 3.308e-308;  // > e^-708
};

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

// inv [len] = 1 / w for w > 0 and 0 for w = 0: the scaling-form loops multiply by it instead of dividing by the
// marginal (computed once per problem).
template <typename T>
HF_INLINE void inverse_or_zero(const T* __restrict w, int64_t len, T* __restrict inv) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) inv[i] = ratio_or_zero(T(1), w[i]);
}

// The scalings x [len] of one update (x_i = w_i / dot_i, 0 where the marginal w_i is 0), reduced for
// ExactnessGuard: the largest x_i, the largest x_i / w_i (= 1 / dot_i), and whether all are finite and at most hi
// (an infinite or NaN scaling: a dot of 0 or an overflow).
template <typename T>
struct ScalingStats {
  T max = 0, max_over_marginal = 0;
  bool in_range = true;
};

// From the reductions max x_i, max x_i inv_w_i and sum x_i (NaN survives a sum, not a max).
template <typename T>
HF_INLINE ScalingStats<T> scaling_stats_of(T max, T max_ratio, T sum) {
  ScalingStats<T> s;
  s.max = max;
  s.max_over_marginal = max_ratio;
  s.in_range = sum - sum == 0 && max <= ScalingLimits<T>::hi;
  return s;
}

template <typename T>
HF_INLINE ScalingStats<T> scaling_stats(const T* __restrict x, const T* __restrict inv_w, int64_t len) {
  T mx = 0, mr = 0, sum = 0;
#pragma omp simd reduction(max : mx, mr) reduction(+ : sum)
  for (int64_t i = 0; i < len; ++i) {
    mx = vmax(mx, x[i]);
    mr = vmax(mr, x[i] * inv_w[i]);
    sum += x[i];
  }
  return scaling_stats_of(mx, mr, sum);
}

// The underflow bookkeeping of one scaling-form solve (see the section comment). `lost` bounds the true value of
// every matrix entry (Kx for Sinkhorn, Q for IPOT) that was computed as 0.
template <typename T>
struct ExactnessGuard {
  static constexpr T tiny = std::numeric_limits<T>::min();
  static constexpr T tolerance = std::numeric_limits<T>::epsilon() / 4;
  T lost = ScalingLimits<T>::kernel_cutoff;

  // Whether dot products of length `len` over a matrix with this `lost` bound, against a vector whose largest
  // entry is `other_max`, are exact to `tolerance` for the scalings `s` computed from them: each lost entry adds
  // at most lost * other_max, each product that underflowed at most tiny, against a dot of w_i / x_i.
  HF_INLINE bool dots_exact(int64_t len, T other_max, const ScalingStats<T>& s) const {
    return s.in_range && T(len) * (lost * other_max + tiny) * s.max_over_marginal <= tolerance;  // NaN fails
  }

  // IPOT: Q_next = g ∘ Q with g = (Kx ∘ sigma) delta (row i scaled by delta_i, column j by sigma_j) computed as
  // fl(fl(fl(Kx sigma) delta) Q). zero_growth: the largest computed g over the entries where Q was 0. A g computed
  // as 0 is below g_floor (Kx sigma flushed, or Kx itself was 0); an entry newly flushed to 0 was below
  // g_floor * max Q or tiny, and every Q after the first is at most max(b) (its column sums are b).
  HF_INLINE void grow(T zero_growth, T delta_max, T sigma_max, T b_max) {
    const T g_floor = vmax(tiny, ScalingLimits<T>::kernel_cutoff * sigma_max) * delta_max;
    const T q_max = T(2) * vmax(T(1), b_max);
    lost = vmax(vmax(lost * vmax(zero_growth, g_floor), tiny), g_floor * q_max);
  }
};

// out_ij = r_i * (mat_ij * c_j): a plan from its scaling-form factors. mat [n, m] with rows ld apart; out [n, m].
// (mat_ij c_j flushed to 0 means a true plan entry below tiny * r_i, which ExactnessGuard's row check covers.)
template <typename T>
HF_INLINE void scale_rows_and_columns(const T* __restrict r, const T* __restrict mat, int64_t ld,
                                      const T* __restrict c, int64_t n, int64_t m, T* __restrict out) {
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

// log x for x > 0 and -inf for x = 0 (a zero-mass row or column). (A select of fast_log's result: written as
// fast_log(x + (x <= 0)) plus a select of constants, the loop stops vectorising.)
template <typename T>
HF_INLINE T log_or_neg_inf(T x) {
  const T l = fast_log(x);
  return x > 0 ? l : -std::numeric_limits<T>::infinity();
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
  T* __restrict col = plan;  // Kxᵀ u [m]; the plan is only written after the last iteration
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
    const bool ok = (k == 1 || u_prev.in_range) && guard.dots_exact(n, u_prev.max, vs) && guard.dots_exact(m, vs.max, u_now);
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

// What one scaling-form IPOT iteration reports to IpotExactness: the largest growth factor of an entry of Q_prev that
// was 0 (0 in the first iteration), and the statistics of its delta and sigma. Gathered inside the iteration's own
// loops (separate passes over delta and sigma cost ~7% of HeLo's GW forward).
template <typename T>
struct IpotIterationStats {
  T zero_growth = 0;
  ScalingStats<T> delta, sigma;
};

// The lane-wise running maxima and sums behind IpotIterationStats, while the row groups run.
template <typename T, int kVecBytes>
struct IpotAccumulators {
  Vec<T, kVecBytes> zero_growth{}, delta_max{}, delta_ratio{}, delta_sum{};
  T tail_max = 0, tail_ratio = 0, tail_sum = 0;  // rows of a last, partial group
};

// Rows [i0, i0 + rows) (rows <= L, the lanes of a vector of kVecBytes) of one ipot_iteration: their rows of Q, their
// deltas, and their share of col += Qᵀ delta, added while the rows are in L1. The L rows' dot products are L
// independent chains summed by one row_sums tree, and their deltas are one vector division. acc gets the deltas'
// statistics and the largest growth factor g = (Kx sigma_prev) delta_prev: over the entries where Q_prev is 0 with
// kExactZeros, else over all entries (a looser bound for them, one vector max instead of three operations).
template <bool kFirst, bool kExactZeros, int kVecBytes, typename T, typename Rows>
HF_INLINE void ipot_row_group(const T* __restrict Kx, const T* Q_prev, const T* delta_prev, const T* __restrict a,
                              const T* __restrict inv_a, int64_t i0, Rows rows, int64_t ld, const T* __restrict sig,
                              T* Q, T* delta, T* __restrict col, IpotAccumulators<T, kVecBytes>& stats) {
  using V = Vec<T, kVecBytes>;
  constexpr int64_t L = vec_lanes<T, kVecBytes>();
  V acc[L];
  T d_prev[L] = {};
  V gz = stats.zero_growth;
  for (int64_t r = 0; r < L; ++r) acc[r] = V{};
  if constexpr (!kFirst)
    for (int64_t r = 0; r < rows; ++r) d_prev[r] = delta_prev[i0 + r];
  for (int64_t c = 0; c < ld; c += L) {
    const V s = vec_at<kVecBytes>(sig + c);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t e = (i0 + r) * ld + c;
      V q = vec_at<kVecBytes>(Kx + e);
      if constexpr (!kFirst) {
        const V g = (q * s) * d_prev[r];
        const V q_prev = vec_at<kVecBytes>(Q_prev + e);
        q = g * q_prev;
        if constexpr (kExactZeros)
          max_into(gz, q_prev == V{} ? g : V{});
        else
          max_into(gz, g);
      }
      vec_at<kVecBytes>(Q + e) = q;
      acc[r] += q * s;
    }
  }
  stats.zero_growth = gz;
  V dots;
  row_sums(acc, dots, std::make_index_sequence<L>());
  T d[L];
  if (rows == L) {
    const V w = vec_at<kVecBytes>(a + i0), zero{};
    const V dv = w / (dots + (w <= zero ? zero + 1 : zero));  // scaling_update on whole vectors
    vec_at<kVecBytes>(d) = dv;
    max_into(stats.delta_max, dv);
    max_into(stats.delta_ratio, dv * vec_at<kVecBytes>(inv_a + i0));
    stats.delta_sum += dv;
  } else {
    for (int64_t r = 0; r < rows; ++r) {
      d[r] = scaling_update(a[i0 + r], dots[r]);
      stats.tail_max = vmax(stats.tail_max, d[r]);
      stats.tail_ratio = vmax(stats.tail_ratio, d[r] * inv_a[i0 + r]);
      stats.tail_sum += d[r];
    }
  }
  for (int64_t r = 0; r < rows; ++r) delta[i0 + r] = d[r];
  for (int64_t c = 0; c < ld; c += L) {
    V sum = vec_at<kVecBytes>(col + c);
    for (int64_t r = 0; r < rows; ++r) sum += vec_at<kVecBytes>(Q + (i0 + r) * ld + c) * d[r];
    vec_at<kVecBytes>(col + c) = sum;
  }
}

// One IPOT iteration in scaling form on rows ld = padded_row_stride<T>(m) apart whose padding columns are zero
// (those of Kx, hence of Q): Q = Kx ∘ T_prev with T_prev = delta_prev Q_prev sigma_prev (Q_prev = delta_prev =
// nullptr in the first iteration, where T_0 = 1), delta = a / (Q sigma_prev), sigma = b / (Qᵀ delta) (0 where the
// marginal is 0; inv_a, inv_b: inverse_or_zero of a, b). sig [ld] holds sigma_prev on entry (padding zero) and
// sigma on return. Q may alias Q_prev and delta delta_prev (updates in place). col: scratch [ld]. kExactZeros: see
// ipot_row_group.
template <bool kExactZeros, int kVecBytes, typename T>
HF_INLINE IpotIterationStats<T> ipot_iteration(const T* __restrict Kx, const T* Q_prev, const T* delta_prev,
                                               const T* __restrict a, const T* __restrict b,
                                               const T* __restrict inv_a, const T* __restrict inv_b, int64_t n,
                                               int64_t m, int64_t ld, T* Q, T* delta, T* __restrict sig,
                                               T* __restrict col) {
  constexpr int64_t L = vec_lanes<T, kVecBytes>();
  IpotAccumulators<T, kVecBytes> acc;
  for (int64_t c = 0; c < ld; ++c) col[c] = 0;
  for (int64_t i0 = 0; i0 < n; i0 += L) {
    auto group = [&](auto rows) HF_INLINE_LAMBDA {
      if (Q_prev == nullptr)
        ipot_row_group<true, kExactZeros, kVecBytes>(Kx, Q_prev, delta_prev, a, inv_a, i0, rows, ld, sig, Q, delta, col, acc);
      else
        ipot_row_group<false, kExactZeros, kVecBytes>(Kx, Q_prev, delta_prev, a, inv_a, i0, rows, ld, sig, Q, delta, col, acc);
    };
    if (n - i0 >= L)
      group(std::integral_constant<int64_t, L>{});
    else
      group(n - i0);
  }
  IpotIterationStats<T> out;
  T s_max = 0, s_ratio = 0, s_sum = 0;
#pragma omp simd reduction(max : s_max, s_ratio) reduction(+ : s_sum)
  for (int64_t j = 0; j < m; ++j) {
    const T x = scaling_update(b[j], col[j]);
    sig[j] = x;
    s_max = vmax(s_max, x);
    s_ratio = vmax(s_ratio, x * inv_b[j]);
    s_sum += x;
  }
  T d_max = acc.tail_max, d_ratio = acc.tail_ratio, d_sum = acc.tail_sum;
  for (int64_t l = 0; l < L; ++l) {
    out.zero_growth = vmax(out.zero_growth, acc.zero_growth[l]);
    d_max = vmax(d_max, acc.delta_max[l]);
    d_ratio = vmax(d_ratio, acc.delta_ratio[l]);
    d_sum += acc.delta_sum[l];
  }
  out.delta = scaling_stats_of(d_max, d_ratio, d_sum);
  out.sigma = scaling_stats_of(s_max, s_ratio, s_sum);
  return out;
}

// ExactnessGuard across the iterations of one scaling-form IPOT solve: the bound on lost entries of Q grows with
// them, and each iteration's delta (row dots against sigma_prev) and sigma (column dots against delta) are checked.
template <typename T>
struct IpotExactness {
  ExactnessGuard<T> guard;
  T delta_max = 0, sigma_max, b_max = 0;
  IpotExactness(const T* __restrict b, int64_t m) : sigma_max(T(1) / T(m)) {
    for (int64_t j = 0; j < m; ++j) b_max = vmax(b_max, b[j]);
  }
  // After iteration `first` or a later one, with what that iteration reported.
  HF_INLINE bool step(bool first, const IpotIterationStats<T>& it, int64_t n, int64_t m) {
    if (!first) guard.grow(it.zero_growth, delta_max, sigma_max, b_max);
    const bool ok = guard.dots_exact(m, sigma_max, it.delta) && guard.dots_exact(n, it.delta.max, it.sigma);
    delta_max = it.delta.max;
    sigma_max = it.sigma.max;
    return ok;
  }
};

// IPOT in scaling form: Q = Kx ∘ T, delta = a / (Q sigma), sigma = b / (Qᵀ delta), T = delta Q sigma.
// Writes plan and (if not null) d_k = log delta_k - max K, s_k = log sigma_k (-inf for zero marginals). False
// (outputs undefined) where IpotExactness fails. inv_a, inv_b: inverse_or_zero of a, b. Scratch (ld =
// padded_row_stride<T>(m)): Kx, Tm [n, ld]; delta [n]; sigma, col [ld]. kExactZeros: see ipot_row_group; callers
// use ipot_forward_linear below.
template <bool kExactZeros, int kVecBytes, typename T>
HF_INLINE bool ipot_forward_linear_tracked(const T* __restrict K, const T* __restrict a, const T* __restrict b,
                                   const T* __restrict inv_a, const T* __restrict inv_b, int64_t n, int64_t m,
                                   int64_t n_iters, T* __restrict plan, T* d_hist, T* s_hist,
                                   T* __restrict Kx, T* __restrict Tm, T* __restrict delta, T* __restrict sigma,
                                   T* __restrict col) {
  const int64_t ld = padded_row_stride<T>(m);
  const T c = shifted_kernel_rows(K, n, m, ld, Kx);
  IpotExactness<T> exact(b, m);
  for (int64_t j = 0; j < ld; ++j) sigma[j] = j < m ? T(1) / T(m) : T(0);
  InterruptCountdown interrupt(n * m);
  for (int64_t k = 0; k < n_iters; ++k) {
    interrupt.tick();
    const IpotIterationStats<T> it = ipot_iteration<kExactZeros, kVecBytes>(Kx, k == 0 ? nullptr : Tm, k == 0 ? nullptr : delta,
                                                                 a, b, inv_a, inv_b, n, m, ld, Tm, delta, sigma, col);
    if (!exact.step(k == 0, it, n, m)) return false;
    if (d_hist != nullptr) {
      T* __restrict dh = d_hist + k * n;
      T* __restrict sh = s_hist + k * m;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) dh[i] = log_or_neg_inf(delta[i]) - c;
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) sh[j] = log_or_neg_inf(sigma[j]);
    }
  }
  scale_rows_and_columns(delta, Tm, ld, sigma, n, m, plan);
  return true;
}

// ipot_forward_linear_tracked with the cheap growth bound first (HeLo's problems pass it; it costs ~5% of the GW
// forward, the exact one ~15%), then, where that bound fails, with the exact one, which keeps more problems
// outside HeLo's regime in the scaling form. False where both fail.
template <typename T, int kVecBytes, typename... Args>
HF_INLINE bool ipot_forward_linear(const Args&... args) {
  return ipot_forward_linear_tracked<false, kVecBytes, T>(args...) ||
         ipot_forward_linear_tracked<true, kVecBytes, T>(args...);
}

// The iterates of ipot_forward_linear, all kept: Qs [n_iters, n, ld] (Q_k, ld = padded_row_stride<T>(m)),
// delta [n_iters, n] (delta_k), sigma [n_iters + 1, m] (sigma_0 = 1/m, then sigma_k). The same operations and
// checks as the forward, so this fails exactly where the forward fell back to the log domain. Scratch: Kx [n, ld];
// sig, col [ld].
template <bool kExactZeros, int kVecBytes, typename T>
HF_INLINE bool ipot_forward_linear_iterates_tracked(const T* __restrict K, const T* __restrict a, const T* __restrict b,
                                            const T* __restrict inv_a, const T* __restrict inv_b, int64_t n, int64_t m,
                                            int64_t n_iters, T* __restrict Kx, T* __restrict Qs,
                                            T* __restrict delta, T* __restrict sigma, T* __restrict sig,
                                            T* __restrict col) {
  const int64_t ld = padded_row_stride<T>(m), nq = n * ld;
  shifted_kernel_rows(K, n, m, ld, Kx);
  IpotExactness<T> exact(b, m);
  for (int64_t j = 0; j < ld; ++j) sig[j] = j < m ? T(1) / T(m) : T(0);
  for (int64_t j = 0; j < m; ++j) sigma[j] = sig[j];
  InterruptCountdown interrupt(n * m);
  for (int64_t k = 1; k <= n_iters; ++k) {
    interrupt.tick();
    T* dk = delta + (k - 1) * n;
    T* sk = sigma + k * m;
    const bool first = k == 1;
    const IpotIterationStats<T> it =
        ipot_iteration<kExactZeros, kVecBytes>(Kx, first ? nullptr : Qs + (k - 2) * nq, first ? nullptr : dk - n, a, b, inv_a,
                                    inv_b, n, m, ld, Qs + (k - 1) * nq, dk, sig, col);
    for (int64_t j = 0; j < m; ++j) sk[j] = sig[j];
    if (!exact.step(first, it, n, m)) return false;
  }
  return true;
}

template <typename T, int kVecBytes, typename... Args>
HF_INLINE bool ipot_forward_linear_iterates(const Args&... args) {
  return ipot_forward_linear_iterates_tracked<false, kVecBytes, T>(args...) ||
         ipot_forward_linear_iterates_tracked<true, kVecBytes, T>(args...);
}

// ipot_backward in scaling form, on the iterates of ipot_forward_linear_iterates (c = max K, so d_k = log delta_k
// - c and Q_k(log) = log Q_k + c): with P_k = delta_k ∘ Q_k, s_k's column softmax weights exp(L_k - log b) are
// T_k / b = P_k sigma_k / b and d_k's row softmax weights exp(L_k - s_k + s_{k-1} - log a) are P_k sigma_{k-1} / a,
// so the sweep has no exps. Returns false (outputs undefined) where ipot_forward_linear bails out or the sweep
// overflows (a non-finite result); the caller then runs ipot_backward. Zero-mass rows and columns get zero
// gradients. Scratch (ld = padded_row_stride<T>(m)):
// Qs [n_iters, n, ld]; lam [n, ld]; delta [n_iters, n]; sigma [n_iters + 1, m]; rho [n]; ds, dsnext [m]; cw, sig
// [ld].
template <int kVecBytes, typename T>
HF_INLINE bool ipot_backward_linear(const T* __restrict K, const T* __restrict a, const T* __restrict b,
                                    const T* __restrict inv_a, const T* __restrict inv_b, int64_t n, int64_t m,
                                    int64_t n_iters, const T* __restrict gT, T* __restrict dK,
                                    T* __restrict dloga, T* __restrict dlogb, T* __restrict Qs, T* __restrict lam,
                                    T* __restrict delta, T* __restrict sigma, T* __restrict rho, T* __restrict ds,
                                    T* __restrict dsnext, T* __restrict cw, T* __restrict sig) {
  const int64_t nm = n * m, ld = padded_row_stride<T>(m), nq = n * ld;
  if (!ipot_forward_linear_iterates<T, kVecBytes>(K, a, b, inv_a, inv_b, n, m, n_iters, lam, Qs, delta, sigma, sig, cw))
    return false;
  // lam = dL_N = gT ∘ T_N.
  {
    const T* __restrict dN = delta + (n_iters - 1) * n;
    const T* __restrict sN = sigma + n_iters * m;
    const T* __restrict qN = Qs + (n_iters - 1) * nq;
    for (int64_t i = 0; i < n; ++i) {
      const T di = dN[i];
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) lam[i * m + j] = gT[i * m + j] * (di * (qN[i * ld + j] * sN[j]));
    }
  }
  for (int64_t e = 0; e < nm; ++e) dK[e] = 0;
  for (int64_t i = 0; i < n; ++i) dloga[i] = 0;
  for (int64_t j = 0; j < m; ++j) dlogb[j] = 0, ds[j] = 0;
  for (int64_t i = 0; i < n; ++i) {
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) ds[j] += lam[i * m + j];
  }
  InterruptCountdown interrupt(n * m);
  for (int64_t k = n_iters; k >= 1; --k) {
    interrupt.tick();
    const T* __restrict qk = Qs + (k - 1) * nq;
    const T* __restrict dk = delta + (k - 1) * n;
    const T* __restrict sk = sigma + k * m;
    const T* __restrict sprev = sigma + (k - 1) * m;
    // ds holds dL/ds_k: the column sums of dL_k plus d_{k+1}'s softmax term.
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) cw[j] = sk[j] * inv_b[j];
    for (int64_t j = 0; j < m; ++j) {
      dlogb[j] += ds[j];
      cw[j] *= ds[j];
      dsnext[j] = 0;
    }
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) rho[i] = dk[i] * inv_a[i];
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
  return all_finite(dK, nm) && all_finite(dloga, n) && all_finite(dlogb, m);
}

}  // namespace helo_fast::ot_cpu
