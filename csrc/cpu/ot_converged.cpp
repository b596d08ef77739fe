// sinkhorn and ipot with a tolerance on CPU (helo_fast.sinkhorn / ipot with tol=): each problem of the batch stops
// at its own iteration count (csrc/cpu/ot_convergence.h); the backward of grad="unrolled" is the fixed-count *_bwd op
// on each problem's own history prefix (helo_fast/_ops/ot_converged.py). Schemas in csrc/schema.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../interrupt.h"
#include "../ot_checks.h"
#include "ipot_solver.h"
#include "ot_convergence.h"
#include "sinkhorn_solver.h"

namespace helo_fast {
namespace {

using namespace ot_cpu;

template <typename T>
HF_INLINE void sinkhorn_tol_chunk(const T* cost, const T* a, const T* b, T* plan, T* f_out, T* g_out, T* f_hist,
                                  T* g_hist, int64_t* iterations, T* violation, int64_t n, int64_t m, T eps,
                                  int64_t n_iters, T tol, int64_t begin, int64_t end) {
  std::vector<T> buf(2 * n * m + 4 * n + 6 * m);
  T *K = buf.data(), *Kx = K + n * m;
  T *loga = Kx + n * m, *F = loga + n, *inv_a = F + n, *u = inv_a + n;
  T *logb = u + n, *G = logb + m, *colmax = G + m, *inv_b = colmax + m, *v = inv_b + m, *mass = v + m;
  InterruptCountdown interrupt(n * m, n_iters);
  for (int64_t p = begin; p < end; ++p) {
    interrupt.tick();
    const T *pa = a + p * n, *pb = b + p * m;
    scaled_inputs(cost + p * n * m, pa, pb, n, m, eps, K, loga, logb);
    inverse_or_zero(pa, n, inv_a);
    inverse_or_zero(pb, m, inv_b);
    T* fh = f_hist ? f_hist + p * n_iters * n : nullptr;
    T* gh = g_hist ? g_hist + p * n_iters * m : nullptr;
    T* out = plan + p * n * m;
    ConvergenceReport<T> report;
    if (!sinkhorn_forward_linear_tol(K, pa, pb, inv_a, inv_b, n, m, n_iters, tol, out, fh, gh, Kx, u, v, mass, F, G,
                                     report)) {
      report = ConvergenceReport<T>();
      sinkhorn_forward_tol(K, loga, logb, pb, n, m, n_iters, tol, F, G, fh, gh, colmax, mass, report);
      exp_outer(K, F, G, T(1), n, m, out);
    }
    for (int64_t i = 0; i < n; ++i) f_out[p * n + i] = eps * F[i];
    for (int64_t j = 0; j < m; ++j) g_out[p * m + j] = eps * G[j];
    iterations[p] = report.iterations;
    violation[p] = report.violation;
  }
}
HF_DEFINE_SIMD_DISPATCH_AVX512(sinkhorn_tol_chunk)

template <typename T, int kVecBytes>
HF_INLINE void ipot_tol_chunk(const T* cost, const T* a, const T* b, T* plan, T* d_hist, T* s_hist, int64_t* iterations,
                              T* violation, int64_t n, int64_t m, T beta, int64_t n_iters, T tol, int64_t begin,
                              int64_t end) {
  const int64_t ld = padded_row_stride<T>(m);
  std::vector<T> buf(n * m + 2 * n * ld + 3 * n + 2 * m + 2 * ld);
  T *K = buf.data(), *Q = K + n * m, *Kx = Q + n * ld;
  T *loga = Kx + n * ld, *d = loga + n, *inv_a = d + n;
  T *logb = inv_a + n, *inv_b = logb + m, *s = inv_b + m, *colmax = s + ld;
  InterruptCountdown interrupt(n * m, n_iters);
  for (int64_t p = begin; p < end; ++p) {
    interrupt.tick();
    const T *pa = a + p * n, *pb = b + p * m;
    scaled_inputs(cost + p * n * m, pa, pb, n, m, beta, K, loga, logb);
    T* dh = d_hist ? d_hist + p * n_iters * n : nullptr;
    T* sh = s_hist ? s_hist + p * n_iters * m : nullptr;
    T* out = plan + p * n * m;
    inverse_or_zero(pa, n, inv_a);
    inverse_or_zero(pb, m, inv_b);
    ConvergenceReport<T> report;
    if (!ipot_forward_linear_tol<T, kVecBytes>(K, pa, pb, inv_a, inv_b, n, m, n_iters, tol, out, dh, sh, Kx, Q, d, s,
                                               colmax, report)) {
      report = ConvergenceReport<T>();
      ipot_forward_tol(K, loga, logb, pa, n, m, n_iters, tol, out, dh, sh, Q, d, s, colmax, report);
    }
    iterations[p] = report.iterations;
    violation[p] = report.violation;
  }
}
HF_DEFINE_SIMD_DISPATCH(ipot_tol_chunk)

// The work dtype: the history dtype when a gradient is wanted (float32 problems run in float64), else the input's.
at::ScalarType work_dtype(const at::Tensor& cost, bool save_history) {
  return save_history ? history_dtype(cost.scalar_type()) : cost.scalar_type();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_fwd_tol_cpu(
    const at::Tensor& cost_in, const at::Tensor& a_in, const at::Tensor& b_in, double eps, int64_t n_iters, double tol,
    bool save_history) {
  check_ot_problem("sinkhorn_fwd_tol", cost_in, a_in, b_in, eps, n_iters);
  TORCH_CHECK(tol > 0, "sinkhorn_fwd_tol: tol must be > 0, got ", tol);
  const auto work = work_dtype(cost_in, save_history);
  const at::Tensor cost = cost_in.to(work).contiguous(), a = a_in.to(work).contiguous(), b = b_in.to(work).contiguous();
  const int64_t batch = cost.size(0), n = cost.size(1), m = cost.size(2), hist = save_history ? n_iters : 0;
  at::Tensor plan = at::empty_like(cost), f = at::empty_like(a), g = at::empty_like(b);
  at::Tensor f_hist = at::empty({batch, hist, n}, cost.options()), g_hist = at::empty({batch, hist, m}, cost.options());
  at::Tensor iterations = at::empty({batch}, cost.options().dtype(at::kLong)),
             violation = at::empty({batch}, cost.options());
  AT_DISPATCH_FLOATING_TYPES(cost.scalar_type(), "sinkhorn_fwd_tol_cpu", [&] {
    scalar_t* fh = save_history ? f_hist.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gh = save_history ? g_hist.mutable_data_ptr<scalar_t>() : nullptr;
    interruptible_parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      sinkhorn_tol_chunk_dispatch<scalar_t>(
          cost.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
          plan.mutable_data_ptr<scalar_t>(), f.mutable_data_ptr<scalar_t>(), g.mutable_data_ptr<scalar_t>(), fh, gh,
          iterations.mutable_data_ptr<int64_t>(), violation.mutable_data_ptr<scalar_t>(), n, m, scalar_t(eps), n_iters,
          scalar_t(tol), begin, end);
    });
  });
  return {plan.to(cost_in.scalar_type()), f, g, f_hist, g_hist, iterations, violation};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ipot_fwd_tol_cpu(const at::Tensor& cost_in,
                                                                                        const at::Tensor& a_in,
                                                                                        const at::Tensor& b_in,
                                                                                        double beta, int64_t n_iters,
                                                                                        double tol, bool save_history) {
  check_ot_problem("ipot_fwd_tol", cost_in, a_in, b_in, beta, n_iters);
  TORCH_CHECK(tol > 0, "ipot_fwd_tol: tol must be > 0, got ", tol);
  const auto work = work_dtype(cost_in, save_history);
  const at::Tensor cost = cost_in.to(work).contiguous(), a = a_in.to(work).contiguous(), b = b_in.to(work).contiguous();
  const int64_t batch = cost.size(0), n = cost.size(1), m = cost.size(2), hist = save_history ? n_iters : 0;
  at::Tensor plan = at::empty_like(cost);
  at::Tensor d_hist = at::empty({batch, hist, n}, cost.options()), s_hist = at::empty({batch, hist, m}, cost.options());
  at::Tensor iterations = at::empty({batch}, cost.options().dtype(at::kLong)),
             violation = at::empty({batch}, cost.options());
  AT_DISPATCH_FLOATING_TYPES(cost.scalar_type(), "ipot_fwd_tol_cpu", [&] {
    scalar_t* dh = save_history ? d_hist.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* sh = save_history ? s_hist.mutable_data_ptr<scalar_t>() : nullptr;
    interruptible_parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      ipot_tol_chunk_dispatch<scalar_t>(cost.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(),
                                        b.const_data_ptr<scalar_t>(), plan.mutable_data_ptr<scalar_t>(), dh, sh,
                                        iterations.mutable_data_ptr<int64_t>(), violation.mutable_data_ptr<scalar_t>(),
                                        n, m, scalar_t(beta), n_iters, scalar_t(tol), begin, end);
    });
  });
  return {plan.to(cost_in.scalar_type()), d_hist, s_hist, iterations, violation};
}

}  // namespace

TORCH_LIBRARY_IMPL(helo_fast, CPU, m) {
  m.impl("sinkhorn_fwd_tol", &sinkhorn_fwd_tol_cpu);
  m.impl("ipot_fwd_tol", &ipot_fwd_tol_cpu);
}

}  // namespace helo_fast
