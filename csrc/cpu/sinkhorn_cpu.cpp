// Batched log-domain Sinkhorn on CPU (POT sinkhorn_log order), forward and unrolled backward.
// Schemas of helo_fast::sinkhorn_fwd / sinkhorn_bwd live here; CUDA kernels in csrc/cuda/ot_cuda.cu.
// One problem at a time per at::parallel_for task; scratch is allocated once per task.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../ot_cpu_solvers.h"
#include "../ot_checks.h"

namespace helo_fast {
namespace {

using namespace ot_cpu;

template <typename T>
HF_INLINE void sinkhorn_fwd_chunk(const T* cost, const T* a, const T* b, T* plan, T* f_hist, T* g_hist, int64_t n,
                                  int64_t m, T eps, int64_t n_iters, int64_t begin, int64_t end) {
  std::vector<T> buf(2 * n * m + 2 * n + 3 * m);
  T *K = buf.data(), *Kx = K + n * m;
  T *loga = Kx + n * m, *F = loga + n;
  T *logb = F + n, *G = logb + m, *colmax = G + m;
  for (int64_t p = begin; p < end; ++p) {
    scaled_inputs(cost + p * n * m, a + p * n, b + p * m, n, m, eps, K, loga, logb);
    T* fh = f_hist ? f_hist + p * n_iters * n : nullptr;
    T* gh = g_hist ? g_hist + p * n_iters * m : nullptr;
    T* out = plan + p * n * m;
    if (sinkhorn_forward_linear(K, a + p * n, b + p * m, n, m, n_iters, out, fh, gh, Kx, F, G)) continue;
    sinkhorn_forward(K, loga, logb, n, m, n_iters, F, G, fh, gh, colmax);
    exp_outer(K, F, G, T(1), n, m, out);
  }
}
HF_DEFINE_SIMD_DISPATCH(sinkhorn_fwd_chunk)

template <typename T>
HF_INLINE void sinkhorn_bwd_chunk(const T* grad, const T* cost, const T* a, const T* b, const T* f_hist,
                                  const T* g_hist, T* g_cost, T* g_a, T* g_b, int64_t n, int64_t m, T eps,
                                  int64_t n_iters, int64_t begin, int64_t end) {
  std::vector<T> buf(3 * n * m + 7 * n + 6 * m);
  T *K = buf.data(), *Kx = K + n * m, *acc = Kx + n * m;
  T *loga = acc + n * m, *dF = loga + n, *zeros = dF + n, *dloga = zeros + n, *u = dloga + n, *up = u + n;
  T *alpha = up + n;
  T *logb = alpha + n, *dG = logb + m, *gb = dG + m, *dlogb = gb + m, *v = dlogb + m, *beta = v + m;
  for (int64_t p = begin; p < end; ++p) {
    const T* pa = a + p * n;
    const T* pb = b + p * m;
    scaled_inputs(cost + p * n * m, pa, pb, n, m, eps, K, loga, logb);
    T* dK = g_cost + p * n * m;
    const T* fh = f_hist + p * n_iters * n;
    const T* gh = g_hist + p * n_iters * m;
    const T* gp = grad + p * n * m;
    if (!sinkhorn_backward_linear(K, pa, pb, n, m, n_iters, fh, gh, gp, dK, dloga, dlogb, Kx, acc, u, up, alpha, dF, v,
                                  beta, gb, dG))
      sinkhorn_backward(K, loga, logb, n, m, n_iters, fh, gh, gp, dK, dloga, dlogb, dF, dG, zeros, gb);
#pragma omp simd
    for (int64_t i = 0; i < n * m; ++i) dK[i] = -(dK[i] / eps);
    for (int64_t i = 0; i < n; ++i) g_a[p * n + i] = dloga[i] / pa[i];
    for (int64_t j = 0; j < m; ++j) g_b[p * m + j] = dlogb[j] / pb[j];
  }
}
HF_DEFINE_SIMD_DISPATCH(sinkhorn_bwd_chunk)

std::tuple<at::Tensor, at::Tensor, at::Tensor> sinkhorn_fwd_cpu(const at::Tensor& cost_in, const at::Tensor& a_in,
                                                                const at::Tensor& b_in, double eps, int64_t n_iters,
                                                                bool save_history) {
  check_ot_problem("sinkhorn_fwd", cost_in, a_in, b_in, eps, n_iters);
  const auto hist_type = history_dtype(cost_in.scalar_type());
  const auto work = save_history ? hist_type : cost_in.scalar_type();
  const at::Tensor cost = cost_in.to(work).contiguous(), a = a_in.to(work).contiguous(), b = b_in.to(work).contiguous();
  const int64_t batch = cost.size(0), n = cost.size(1), m = cost.size(2);
  const int64_t hist = save_history ? n_iters : 0;
  at::Tensor plan = at::empty_like(cost);
  at::Tensor f_hist = at::empty({batch, hist, n}, cost.options().dtype(hist_type));
  at::Tensor g_hist = at::empty({batch, hist, m}, cost.options().dtype(hist_type));
  AT_DISPATCH_FLOATING_TYPES(cost.scalar_type(), "sinkhorn_fwd_cpu", [&] {
    const scalar_t* c = cost.const_data_ptr<scalar_t>();
    const scalar_t* pa = a.const_data_ptr<scalar_t>();
    const scalar_t* pb = b.const_data_ptr<scalar_t>();
    scalar_t* out = plan.mutable_data_ptr<scalar_t>();
    scalar_t* fh = save_history ? f_hist.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gh = save_history ? g_hist.mutable_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      sinkhorn_fwd_chunk_dispatch<scalar_t>(c, pa, pb, out, fh, gh, n, m, scalar_t(eps), n_iters, begin, end);
    });
  });
  return {plan.to(cost_in.scalar_type()), f_hist, g_hist};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sinkhorn_bwd_cpu(const at::Tensor& grad_in, const at::Tensor& cost_in,
                                                                const at::Tensor& a_in, const at::Tensor& b_in,
                                                                const at::Tensor& f_hist_in,
                                                                const at::Tensor& g_hist_in, double eps) {
  const int64_t n_iters = f_hist_in.dim() == 3 ? f_hist_in.size(1) : 0;
  check_ot_backward("sinkhorn_bwd", grad_in, cost_in, f_hist_in, g_hist_in);
  check_ot_problem("sinkhorn_bwd", cost_in, a_in, b_in, eps, n_iters);
  const auto work = history_dtype(cost_in.scalar_type());
  const at::Tensor grad = grad_in.to(work).contiguous(), cost = cost_in.to(work).contiguous(),
                   a = a_in.to(work).contiguous(), b = b_in.to(work).contiguous(), f_hist = f_hist_in.contiguous(),
                   g_hist = g_hist_in.contiguous();
  const int64_t batch = cost.size(0), n = cost.size(1), m = cost.size(2);
  at::Tensor g_cost = at::empty_like(cost), g_a = at::empty_like(a), g_b = at::empty_like(b);
  AT_DISPATCH_FLOATING_TYPES(cost.scalar_type(), "sinkhorn_bwd_cpu", [&] {
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* c = cost.const_data_ptr<scalar_t>();
    const scalar_t* pa = a.const_data_ptr<scalar_t>();
    const scalar_t* pb = b.const_data_ptr<scalar_t>();
    const scalar_t* fh = f_hist.const_data_ptr<scalar_t>();
    const scalar_t* gh = g_hist.const_data_ptr<scalar_t>();
    scalar_t* gc = g_cost.mutable_data_ptr<scalar_t>();
    scalar_t* ga = g_a.mutable_data_ptr<scalar_t>();
    scalar_t* gb = g_b.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      sinkhorn_bwd_chunk_dispatch<scalar_t>(gp, c, pa, pb, fh, gh, gc, ga, gb, n, m, scalar_t(eps), n_iters, begin,
                                            end);
    });
  });
  const auto out = cost_in.scalar_type();
  return {g_cost.to(out), g_a.to(out), g_b.to(out)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(helo_fast, m) {
  m.def("sinkhorn_fwd(Tensor cost, Tensor a, Tensor b, float eps, int n_iters, bool save_history) -> "
        "(Tensor plan, Tensor f_hist, Tensor g_hist)");
  m.def("sinkhorn_bwd(Tensor grad_plan, Tensor cost, Tensor a, Tensor b, Tensor f_hist, Tensor g_hist, float eps) -> "
        "(Tensor grad_cost, Tensor grad_a, Tensor grad_b)");
}

TORCH_LIBRARY_IMPL(helo_fast, CPU, m) {
  m.impl("sinkhorn_fwd", &sinkhorn_fwd_cpu);
  m.impl("sinkhorn_bwd", &sinkhorn_bwd_cpu);
}

}  // namespace helo_fast
