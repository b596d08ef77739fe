// The per-problem IPOT solvers of the CPU kernels (csrc/cpu/ipot.cpp, gromov_wasserstein.cpp, ot_converged.cpp):
// forward and unrolled backward, in log domain and in scaling form (which falls back to the log domain where
// ot_exactness.h's guard fails). Shared pieces: ot_solver_common.h; vectors: ot_vec.h.
//
// IPOT (log domain), L_0 = 0, s_0 = -log m:
//   Q_k = K + L_{k-1},  d_k = log a - LSE_j(Q_k + s_{k-1}),  s_k = log b - LSE_i(Q_k + d_k),
//   L_k = d_k + Q_k + s_k,  T = exp(L_N).   Note L_k = k K + D_k + S_k with D_k, S_k the running
//   sums of d and s, which is how the backward rebuilds every Q_k from the saved vectors alone.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "ot_exactness.h"
#include "ot_solver_common.h"
#include "ot_vec.h"

namespace helo_fast::ot_cpu {

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
      c1[j] = log_ratio(Sk[j], logb[j]);  // s_k column softmax: kK + D_k + S_k - log b
      // d_k row softmax: kK + D_k + S_{k-1} + s_{k-1} - log a
      c2[j] = Sprev[j] + (k > 1 ? s_hist[(k - 2) * m + j] : s0);
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
  Vec<T, kVecBytes> zero_growth{};
  ScalingAccumulators<T, kVecBytes> delta;  // the deltas of the whole row groups
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
    V s;
    vec_load<kVecBytes>(s, sig + c);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t e = (i0 + r) * ld + c;
      V q;
      vec_load<kVecBytes>(q, Kx + e);
      if constexpr (!kFirst) {
        const V g = (q * s) * d_prev[r];
        V q_prev;
        vec_load<kVecBytes>(q_prev, Q_prev + e);
        q = g * q_prev;
        if constexpr (kExactZeros)
          max_into(gz, q_prev == V{} ? g : V{});
        else
          max_into(gz, g);
      }
      vec_store<kVecBytes>(Q + e, q);
      acc[r] += q * s;
    }
  }
  stats.zero_growth = gz;
  V dots;
  row_sums(acc, dots, std::make_index_sequence<L>());
  T d[L];
  if (rows == L) {
    V w, inv_w;
    vec_load<kVecBytes>(w, a + i0);
    vec_load<kVecBytes>(inv_w, inv_a + i0);
    V dv;
    scaling_update_into(dv, w, dots);
    vec_store<kVecBytes>(d, dv);
    stats.delta.add(dv, inv_w);
  } else {
    for (int64_t r = 0; r < rows; ++r) d[r] = scaling_update(a[i0 + r], dots[r]);
  }
  for (int64_t r = 0; r < rows; ++r) delta[i0 + r] = d[r];
  for (int64_t c = 0; c < ld; c += L) {
    V sum, q;
    vec_load<kVecBytes>(sum, col + c);
    for (int64_t r = 0; r < rows; ++r) {
      vec_load<kVecBytes>(q, Q + (i0 + r) * ld + c);
      sum += q * d[r];
    }
    vec_store<kVecBytes>(col + c, sum);
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
                                               const T* __restrict a, const T* __restrict b, const T* __restrict inv_a,
                                               const T* __restrict inv_b, int64_t n, int64_t m, int64_t ld, T* Q,
                                               T* delta, T* __restrict sig, T* __restrict col) {
  using V = Vec<T, kVecBytes>;
  constexpr int64_t L = vec_lanes<T, kVecBytes>();
  IpotAccumulators<T, kVecBytes> acc;
  for (int64_t c = 0; c < ld; ++c) col[c] = 0;
  for (int64_t i0 = 0; i0 < n; i0 += L) {
    auto group = [&](auto rows) HF_INLINE_LAMBDA {
      if (Q_prev == nullptr)
        ipot_row_group<true, kExactZeros, kVecBytes>(Kx, Q_prev, delta_prev, a, inv_a, i0, rows, ld, sig, Q, delta, col,
                                                     acc);
      else
        ipot_row_group<false, kExactZeros, kVecBytes>(Kx, Q_prev, delta_prev, a, inv_a, i0, rows, ld, sig, Q, delta,
                                                      col, acc);
    };
    if (n - i0 >= L)
      group(std::integral_constant<int64_t, L>{});
    else
      group(n - i0);
  }
  ScalingAccumulators<T, kVecBytes> sigma_acc;
  int64_t j = 0;
  for (; j + L <= m; j += L) {
    V w, dots, inv_w, x;
    vec_load<kVecBytes>(w, b + j);
    vec_load<kVecBytes>(dots, col + j);
    vec_load<kVecBytes>(inv_w, inv_b + j);
    scaling_update_into(x, w, dots);
    vec_store<kVecBytes>(sig + j, x);
    sigma_acc.add(x, inv_w);
  }
  for (int64_t t = j; t < m; ++t) sig[t] = scaling_update(b[t], col[t]);
  IpotIterationStats<T> out;
  max_lanes_into(out.zero_growth, acc.zero_growth);
  const int64_t whole = n / L * L;  // rows in whole groups; the rest, a partial group, reduced here
  out.delta = acc.delta.stats(delta + whole, inv_a + whole, n - whole);
  out.sigma = sigma_acc.stats(sig + j, inv_b + j, m - j);
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
                                           int64_t n_iters, T* __restrict plan, T* d_hist, T* s_hist, T* __restrict Kx,
                                           T* __restrict Tm, T* __restrict delta, T* __restrict sigma,
                                           T* __restrict col) {
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
                                                    const T* __restrict inv_a, const T* __restrict inv_b, int64_t n,
                                                    int64_t m, int64_t n_iters, T* __restrict Kx, T* __restrict Qs,
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
        ipot_iteration<kExactZeros, kVecBytes>(Kx, first ? nullptr : Qs + (k - 2) * nq, first ? nullptr : dk - n, a, b,
                                               inv_a, inv_b, n, m, ld, Qs + (k - 1) * nq, dk, sig, col);
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
                                    int64_t n_iters, const T* __restrict gT, T* __restrict dK, T* __restrict dloga,
                                    T* __restrict dlogb, T* __restrict Qs, T* __restrict lam, T* __restrict delta,
                                    T* __restrict sigma, T* __restrict rho, T* __restrict ds, T* __restrict dsnext,
                                    T* __restrict cw, T* __restrict sig) {
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
