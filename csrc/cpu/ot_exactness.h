// The exactness guard of the scaling-form (linear-domain) OT solvers of sinkhorn_solver.h and ipot_solver.h: the
// bounds on their scalings and on the entries that underflowed to 0 (ExactnessGuard), and the statistics of a
// scaling update it checks (ScalingStats).
#pragma once

#include <cstdint>
#include <limits>

#include "ot_solver_common.h"

namespace helo_fast::ot_cpu {

// ---------------------------------------------------------------------------------------------
// Linear-domain fast paths. The same iterations on the kernel Kx = exp(K - max K) with scalings u = exp(F),
// v = exp(G + max K) (Sinkhorn) or delta, sigma (IPOT): multiplies instead of exps, equal in exact
// arithmetic. In floating point they differ only where a product underflows: under FTZ/DAZ (FlushDenormals)
// every computed entry is either exact to rounding or exactly 0, and a 0 stands for a true value that may
// later be multiplied by huge scalings (a plan entry of 0.5 = u_i e^-750 v_j). An entry that is 0 but matters
// leaves no trace in the marginals, so the solvers bound it: ExactnessGuard keeps, per iteration, a bound on
// the true value of every entry computed as 0 and checks that all of them together change no row or column
// sum by more than a quarter of the dtype's epsilon (relative). The solvers return false as soon as that
// bound, or the range of a scaling, fails; the caller then runs the log-domain solver, which never
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

// Lane-wise running maxima of x and x inv_w and sums of x, for scaling_stats_of (explicit vectors: see max_reduce).
template <typename T, int kBytes>
struct ScalingAccumulators {
  Vec<T, kBytes> max{}, ratio{}, sum{};
  HF_INLINE void add(const Vec<T, kBytes>& x, const Vec<T, kBytes>& inv_w) {
    max_into(max, x);
    max_into(ratio, x * inv_w);
    sum += x;
  }
  // The statistics of what add() saw and of the scalar tail x [len] with inverses inv_w [len].
  HF_INLINE ScalingStats<T> stats(const T* __restrict x, const T* __restrict inv_w, int64_t len) const {
    T mx = 0, mr = 0, s = 0;
    max_lanes_into(mx, max);
    max_lanes_into(mr, ratio);
    sum_lanes_into(s, sum);
    for (int64_t i = 0; i < len; ++i) {
      mx = vmax(mx, x[i]);
      mr = vmax(mr, x[i] * inv_w[i]);
      s += x[i];
    }
    return scaling_stats_of(mx, mr, s);
  }
};

template <typename T, int kBytes = kSharedVecBytes>
HF_INLINE ScalingStats<T> scaling_stats(const T* __restrict x, const T* __restrict inv_w, int64_t len) {
  constexpr int64_t L = vec_lanes<T, kBytes>();
  ScalingAccumulators<T, kBytes> acc;
  int64_t i = 0;
  for (; i + L <= len; i += L) {
    Vec<T, kBytes> xv, wv;
    vec_load<kBytes>(xv, x + i);
    vec_load<kBytes>(wv, inv_w + i);
    acc.add(xv, wv);
  }
  return acc.stats(x + i, inv_w + i, len - i);
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

}  // namespace helo_fast::ot_cpu
