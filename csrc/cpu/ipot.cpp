// Batched log-domain IPOT (HELO_SPEC §4.5) on CPU, forward and unrolled backward.
// Schemas in csrc/schema.cpp; the CUDA kernel is csrc/cuda/ipot.cu.
// The backward rebuilds every log-plan from the saved vectors d_k, s_k (see ipot_solver.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../interrupt.h"
#include "../ot_checks.h"
#include "ipot_solver.h"

namespace helo_fast {
namespace {

using namespace ot_cpu;

template <typename T, int kVecBytes>
HF_INLINE void ipot_fwd_chunk(const T* cost, const T* a, const T* b, T* plan, T* d_hist, T* s_hist, int64_t n,
                              int64_t m, T beta, int64_t n_iters, int64_t begin, int64_t end) {
  // Q and Kx have rows of padded_row_stride<T>(m) for the scaling-form solver, s and colmax that many entries.
  const int64_t ld = padded_row_stride<T>(m);
  std::vector<T> buf(n * m + 2 * n * ld + 3 * n + 2 * m + 2 * ld);
  T *K = buf.data(), *Q = K + n * m, *Kx = Q + n * ld;
  T *loga = Kx + n * ld, *d = loga + n, *inv_a = d + n;
  T *logb = inv_a + n, *inv_b = logb + m, *s = inv_b + m, *colmax = s + ld;
  InterruptCountdown interrupt(n * m, n_iters);
  for (int64_t p = begin; p < end; ++p) {
    interrupt.tick();
    scaled_inputs(cost + p * n * m, a + p * n, b + p * m, n, m, beta, K, loga, logb);
    T* dh = d_hist ? d_hist + p * n_iters * n : nullptr;
    T* sh = s_hist ? s_hist + p * n_iters * m : nullptr;
    T* out = plan + p * n * m;
    inverse_or_zero(a + p * n, n, inv_a);
    inverse_or_zero(b + p * m, m, inv_b);
    if (ipot_forward_linear<T, kVecBytes>(K, a + p * n, b + p * m, inv_a, inv_b, n, m, n_iters, out, dh, sh, Kx, Q, d,
                                          s, colmax))
      continue;
    ipot_forward(K, loga, logb, n, m, n_iters, out, dh, sh, Q, d, s, colmax);
  }
}
HF_DEFINE_SIMD_DISPATCH(ipot_fwd_chunk)

template <typename T, int kVecBytes>
HF_INLINE void ipot_bwd_chunk(const T* grad, const T* cost, const T* a, const T* b, const T* d_hist, const T* s_hist,
                              T* g_cost, T* g_a, T* g_b, int64_t n, int64_t m, T beta, int64_t n_iters, int64_t begin,
                              int64_t end) {
  // lam and Qs have rows of padded_row_stride<T>(m) for the scaling-form backward, c1 and c2 that many entries.
  const int64_t ld = padded_row_stride<T>(m);
  std::vector<T> buf(n * m + (1 + n_iters) * n * ld + (n_iters + 1) * (n + m) + 4 * n + 5 * m + 2 * ld);
  T *K = buf.data(), *lam = K + n * m, *Qs = lam + n * ld, *Dcum = Qs + n_iters * n * ld;
  T* Scum = Dcum + (n_iters + 1) * n;
  T *loga = Scum + (n_iters + 1) * m, *dloga = loga + n, *rr = dloga + n;
  T *inv_a = rr + n, *logb = inv_a + n, *inv_b = logb + m, *dlogb = inv_b + m, *ds = dlogb + m, *dsprev = ds + m;
  T *c1 = dsprev + m, *c2 = c1 + ld;
  InterruptCountdown interrupt(n * m, n_iters);
  for (int64_t p = begin; p < end; ++p) {
    interrupt.tick();
    const T* pa = a + p * n;
    const T* pb = b + p * m;
    scaled_inputs(cost + p * n * m, pa, pb, n, m, beta, K, loga, logb);
    inverse_or_zero(pa, n, inv_a);
    inverse_or_zero(pb, m, inv_b);
    T* dK = g_cost + p * n * m;
    const T *dh = d_hist + p * n_iters * n, *sh = s_hist + p * n_iters * m, *gT = grad + p * n * m;
    if (!ipot_backward_linear<kVecBytes>(K, pa, pb, inv_a, inv_b, n, m, n_iters, gT, dK, dloga, dlogb, Qs, lam, Dcum,
                                         Scum, rr, ds, dsprev, c1, c2))
      ipot_backward(K, loga, logb, n, m, n_iters, dh, sh, gT, dK, dloga, dlogb, lam, Dcum, Scum, rr, ds, dsprev, c1,
                    c2);
#pragma omp simd
    for (int64_t i = 0; i < n * m; ++i) dK[i] = -(dK[i] / beta);
    for (int64_t i = 0; i < n; ++i) g_a[p * n + i] = ratio_or_zero(dloga[i], pa[i]);
    for (int64_t j = 0; j < m; ++j) g_b[p * m + j] = ratio_or_zero(dlogb[j], pb[j]);
  }
}
HF_DEFINE_SIMD_DISPATCH(ipot_bwd_chunk)

std::tuple<at::Tensor, at::Tensor, at::Tensor> ipot_fwd_cpu(const at::Tensor& cost_in, const at::Tensor& a_in,
                                                            const at::Tensor& b_in, double beta, int64_t n_iters,
                                                            bool save_history) {
  check_ot_problem("ipot_fwd", cost_in, a_in, b_in, beta, n_iters);
  const auto hist_type = history_dtype(cost_in.scalar_type());
  const auto work = save_history ? hist_type : cost_in.scalar_type();
  const at::Tensor cost = cost_in.to(work).contiguous(), a = a_in.to(work).contiguous(), b = b_in.to(work).contiguous();
  const int64_t batch = cost.size(0), n = cost.size(1), m = cost.size(2);
  const int64_t hist = save_history ? n_iters : 0;
  at::Tensor plan = at::empty_like(cost);
  at::Tensor d_hist = at::empty({batch, hist, n}, cost.options().dtype(hist_type));
  at::Tensor s_hist = at::empty({batch, hist, m}, cost.options().dtype(hist_type));
  AT_DISPATCH_FLOATING_TYPES(cost.scalar_type(), "ipot_fwd_cpu", [&] {
    const scalar_t* c = cost.const_data_ptr<scalar_t>();
    const scalar_t* pa = a.const_data_ptr<scalar_t>();
    const scalar_t* pb = b.const_data_ptr<scalar_t>();
    scalar_t* out = plan.mutable_data_ptr<scalar_t>();
    scalar_t* dh = save_history ? d_hist.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* sh = save_history ? s_hist.mutable_data_ptr<scalar_t>() : nullptr;
    interruptible_parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      ipot_fwd_chunk_dispatch<scalar_t>(c, pa, pb, out, dh, sh, n, m, scalar_t(beta), n_iters, begin, end);
    });
  });
  return {plan.to(cost_in.scalar_type()), d_hist, s_hist};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ipot_bwd_cpu(const at::Tensor& grad_in, const at::Tensor& cost_in,
                                                            const at::Tensor& a_in, const at::Tensor& b_in,
                                                            const at::Tensor& d_hist_in, const at::Tensor& s_hist_in,
                                                            double beta) {
  const int64_t n_iters = d_hist_in.dim() == 3 ? d_hist_in.size(1) : 0;
  check_ot_backward("ipot_bwd", grad_in, cost_in, d_hist_in, s_hist_in);
  check_ot_problem("ipot_bwd", cost_in, a_in, b_in, beta, n_iters);
  const auto work = history_dtype(cost_in.scalar_type());
  const at::Tensor grad = grad_in.to(work).contiguous(), cost = cost_in.to(work).contiguous(),
                   a = a_in.to(work).contiguous(), b = b_in.to(work).contiguous(), d_hist = d_hist_in.contiguous(),
                   s_hist = s_hist_in.contiguous();
  const int64_t batch = cost.size(0), n = cost.size(1), m = cost.size(2);
  at::Tensor g_cost = at::empty_like(cost), g_a = at::empty_like(a), g_b = at::empty_like(b);
  AT_DISPATCH_FLOATING_TYPES(cost.scalar_type(), "ipot_bwd_cpu", [&] {
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* c = cost.const_data_ptr<scalar_t>();
    const scalar_t* pa = a.const_data_ptr<scalar_t>();
    const scalar_t* pb = b.const_data_ptr<scalar_t>();
    const scalar_t* dh = d_hist.const_data_ptr<scalar_t>();
    const scalar_t* sh = s_hist.const_data_ptr<scalar_t>();
    scalar_t* gc = g_cost.mutable_data_ptr<scalar_t>();
    scalar_t* ga = g_a.mutable_data_ptr<scalar_t>();
    scalar_t* gb = g_b.mutable_data_ptr<scalar_t>();
    interruptible_parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      ipot_bwd_chunk_dispatch<scalar_t>(gp, c, pa, pb, dh, sh, gc, ga, gb, n, m, scalar_t(beta), n_iters, begin, end);
    });
  });
  const auto out = cost_in.scalar_type();
  return {g_cost.to(out), g_a.to(out), g_b.to(out)};
}

}  // namespace

TORCH_LIBRARY_IMPL(helo_fast, CPU, m) {
  m.impl("ipot_fwd", &ipot_fwd_cpu);
  m.impl("ipot_bwd", &ipot_bwd_cpu);
}

}  // namespace helo_fast
