// Batched log-domain Sinkhorn on CPU (POT sinkhorn_log order), forward and unrolled backward.
// Schemas in csrc/schema.cpp; the CUDA kernel is csrc/cuda/sinkhorn.cu.
// One problem at a time per at::parallel_for task; scratch is allocated once per task.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "../interrupt.h"
#include "../ot_checks.h"
#include "sinkhorn_solver.h"

namespace helo_fast {
namespace {

using namespace ot_cpu;

// float32 problems that need a gradient are solved in float64 (T) from float32 inputs (In): inputs are
// converted and results written back one problem at a time, never as whole-batch copies.
template <typename T, typename In>
HF_INLINE const T* in_compute_type(const In* src, int64_t len, T* scratch) {
  if constexpr (std::is_same_v<T, In>) {
    return src;
  } else {
    for (int64_t i = 0; i < len; ++i) scratch[i] = T(src[i]);
    return scratch;
  }
}

template <typename T, typename In>
HF_INLINE void sinkhorn_fwd_chunk(const In* cost, const In* a, const In* b, In* plan, T* f_hist, T* g_hist, int64_t n,
                                  int64_t m, T eps, int64_t n_iters, int64_t begin, int64_t end) {
  std::vector<T> buf(3 * n * m + 4 * n + 5 * m);
  T *K = buf.data(), *Kx = K + n * m, *P = Kx + n * m;
  T *loga = P + n * m, *F = loga + n, *at = F + n, *inv_a = at + n;
  T *logb = inv_a + n, *G = logb + m, *colmax = G + m, *bt = colmax + m, *inv_b = bt + m;
  InterruptCountdown interrupt(n * m, n_iters);
  for (int64_t p = begin; p < end; ++p) {
    interrupt.tick();
    scaled_inputs(cost + p * n * m, a + p * n, b + p * m, n, m, eps, K, loga, logb);
    const T* pa = in_compute_type(a + p * n, n, at);
    const T* pb = in_compute_type(b + p * m, m, bt);
    inverse_or_zero(pa, n, inv_a);
    inverse_or_zero(pb, m, inv_b);
    T* fh = f_hist ? f_hist + p * n_iters * n : nullptr;
    T* gh = g_hist ? g_hist + p * n_iters * m : nullptr;
    In* out = plan + p * n * m;
    T* out_t;
    if constexpr (std::is_same_v<T, In>)
      out_t = out;
    else
      out_t = P;
    if (!sinkhorn_forward_linear(K, pa, pb, inv_a, inv_b, n, m, n_iters, out_t, fh, gh, Kx, F, G)) {
      sinkhorn_forward(K, loga, logb, n, m, n_iters, F, G, fh, gh, colmax);
      exp_outer(K, F, G, T(1), n, m, out_t);
    }
    if constexpr (!std::is_same_v<T, In>)
      for (int64_t e = 0; e < n * m; ++e) out[e] = In(out_t[e]);
  }
}
HF_DEFINE_SIMD_DISPATCH_AVX512(sinkhorn_fwd_chunk)

template <typename T, typename In>
HF_INLINE void sinkhorn_bwd_chunk(const In* grad, const In* cost, const In* a, const In* b, const T* f_hist,
                                  const T* g_hist, In* g_cost, In* g_a, In* g_b, int64_t n, int64_t m, T eps,
                                  int64_t n_iters, int64_t begin, int64_t end) {
  std::vector<T> buf(5 * n * m + 10 * n + 8 * m);
  T *K = buf.data(), *Kx = K + n * m, *acc = Kx + n * m, *dK = acc + n * m, *gt = dK + n * m;
  T *loga = gt + n * m, *dF = loga + n, *zeros = dF + n, *dloga = zeros + n, *u = dloga + n, *up = u + n;
  T *alpha = up + n, *upa = alpha + n, *at = upa + n, *inv_a = at + n;
  T *logb = inv_a + n, *dG = logb + m, *gb = dG + m, *dlogb = gb + m, *v = dlogb + m, *beta = v + m, *bt = beta + m;
  T* inv_b = bt + m;
  InterruptCountdown interrupt(n * m, n_iters);
  for (int64_t p = begin; p < end; ++p) {
    interrupt.tick();
    scaled_inputs(cost + p * n * m, a + p * n, b + p * m, n, m, eps, K, loga, logb);
    const T* pa = in_compute_type(a + p * n, n, at);
    const T* pb = in_compute_type(b + p * m, m, bt);
    const T* gp = in_compute_type(grad + p * n * m, n * m, gt);
    inverse_or_zero(pa, n, inv_a);
    inverse_or_zero(pb, m, inv_b);
    const T* fh = f_hist + p * n_iters * n;
    const T* gh = g_hist + p * n_iters * m;
    if (!sinkhorn_backward_linear(K, inv_a, inv_b, n, m, n_iters, fh, gh, gp, dK, dloga, dlogb, Kx, acc, u, up, alpha,
                                  upa, v, beta, gb, dG))
      sinkhorn_backward(K, loga, logb, n, m, n_iters, fh, gh, gp, dK, dloga, dlogb, dF, dG, zeros, gb);
    In* dc = g_cost + p * n * m;
#pragma omp simd
    for (int64_t e = 0; e < n * m; ++e) dc[e] = In(-(dK[e] / eps));
    for (int64_t i = 0; i < n; ++i) g_a[p * n + i] = In(ratio_or_zero(dloga[i], pa[i]));
    for (int64_t j = 0; j < m; ++j) g_b[p * m + j] = In(ratio_or_zero(dlogb[j], pb[j]));
  }
}
HF_DEFINE_SIMD_DISPATCH_AVX512(sinkhorn_bwd_chunk)

std::tuple<at::Tensor, at::Tensor, at::Tensor> sinkhorn_fwd_cpu(const at::Tensor& cost_in, const at::Tensor& a_in,
                                                                const at::Tensor& b_in, double eps, int64_t n_iters,
                                                                bool save_history) {
  check_ot_problem("sinkhorn_fwd", cost_in, a_in, b_in, eps, n_iters);
  const at::Tensor cost = cost_in.contiguous(), a = a_in.contiguous(), b = b_in.contiguous();
  const auto hist_type = history_dtype(cost.scalar_type());
  const int64_t batch = cost.size(0), n = cost.size(1), m = cost.size(2);
  const int64_t hist = save_history ? n_iters : 0;
  at::Tensor plan = at::empty_like(cost);
  at::Tensor f_hist = at::empty({batch, hist, n}, cost.options().dtype(hist_type));
  at::Tensor g_hist = at::empty({batch, hist, m}, cost.options().dtype(hist_type));
  AT_DISPATCH_FLOATING_TYPES(cost.scalar_type(), "sinkhorn_fwd_cpu", [&] {
    using hist_t = std::conditional_t<std::is_same_v<scalar_t, float>, double, scalar_t>;
    const scalar_t* c = cost.const_data_ptr<scalar_t>();
    const scalar_t* pa = a.const_data_ptr<scalar_t>();
    const scalar_t* pb = b.const_data_ptr<scalar_t>();
    scalar_t* out = plan.mutable_data_ptr<scalar_t>();
    interruptible_parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      if (save_history)
        sinkhorn_fwd_chunk_dispatch<hist_t>(c, pa, pb, out, f_hist.mutable_data_ptr<hist_t>(),
                                            g_hist.mutable_data_ptr<hist_t>(), n, m, hist_t(eps), n_iters, begin, end);
      else
        sinkhorn_fwd_chunk_dispatch<scalar_t>(c, pa, pb, out, static_cast<scalar_t*>(nullptr),
                                              static_cast<scalar_t*>(nullptr), n, m, scalar_t(eps), n_iters, begin,
                                              end);
    });
  });
  return {plan, f_hist, g_hist};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sinkhorn_bwd_cpu(const at::Tensor& grad_in, const at::Tensor& cost_in,
                                                                const at::Tensor& a_in, const at::Tensor& b_in,
                                                                const at::Tensor& f_hist_in,
                                                                const at::Tensor& g_hist_in, double eps) {
  const int64_t n_iters = f_hist_in.dim() == 3 ? f_hist_in.size(1) : 0;
  check_ot_backward("sinkhorn_bwd", grad_in, cost_in, f_hist_in, g_hist_in);
  check_ot_problem("sinkhorn_bwd", cost_in, a_in, b_in, eps, n_iters);
  const at::Tensor grad = grad_in.contiguous(), cost = cost_in.contiguous(), a = a_in.contiguous(),
                   b = b_in.contiguous(), f_hist = f_hist_in.contiguous(), g_hist = g_hist_in.contiguous();
  const int64_t batch = cost.size(0), n = cost.size(1), m = cost.size(2);
  at::Tensor g_cost = at::empty_like(cost), g_a = at::empty_like(a), g_b = at::empty_like(b);
  AT_DISPATCH_FLOATING_TYPES(cost.scalar_type(), "sinkhorn_bwd_cpu", [&] {
    using hist_t = std::conditional_t<std::is_same_v<scalar_t, float>, double, scalar_t>;
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* c = cost.const_data_ptr<scalar_t>();
    const scalar_t* pa = a.const_data_ptr<scalar_t>();
    const scalar_t* pb = b.const_data_ptr<scalar_t>();
    const hist_t* fh = f_hist.const_data_ptr<hist_t>();
    const hist_t* gh = g_hist.const_data_ptr<hist_t>();
    scalar_t* gc = g_cost.mutable_data_ptr<scalar_t>();
    scalar_t* ga = g_a.mutable_data_ptr<scalar_t>();
    scalar_t* gb = g_b.mutable_data_ptr<scalar_t>();
    interruptible_parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      sinkhorn_bwd_chunk_dispatch<hist_t>(gp, c, pa, pb, fh, gh, gc, ga, gb, n, m, hist_t(eps), n_iters, begin, end);
    });
  });
  return {g_cost, g_a, g_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(helo_fast, CPU, m) {
  m.impl("sinkhorn_fwd", &sinkhorn_fwd_cpu);
  m.impl("sinkhorn_bwd", &sinkhorn_bwd_cpu);
}

}  // namespace helo_fast
