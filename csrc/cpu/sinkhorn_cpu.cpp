// Batched log-domain Sinkhorn on CPU (POT sinkhorn_log order: column potential, then row potential).
// One problem per task of at::parallel_for; all scratch is allocated once per problem.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

namespace helo_fast {
namespace {

template <typename scalar_t>
void sinkhorn_one(const scalar_t* cost, const scalar_t* a, const scalar_t* b, scalar_t* plan, int64_t n, int64_t m,
                  double eps, int64_t n_iters, std::vector<scalar_t>& f, std::vector<scalar_t>& g) {
  const scalar_t inv_eps = scalar_t(1.0 / eps);
  const scalar_t neg_inf = -std::numeric_limits<scalar_t>::infinity();
  std::fill(f.begin(), f.end(), scalar_t(0));
  std::fill(g.begin(), g.end(), scalar_t(0));
  std::vector<scalar_t> col_max(m), col_sum(m);
  for (int64_t it = 0; it < n_iters; ++it) {
    // g_j = eps * (log b_j - logsumexp_i((f_i - C_ij) / eps))
    std::fill(col_max.begin(), col_max.end(), neg_inf);
    for (int64_t i = 0; i < n; ++i) {
      const scalar_t* row = cost + i * m;
      for (int64_t j = 0; j < m; ++j) col_max[j] = std::max(col_max[j], (f[i] - row[j]) * inv_eps);
    }
    std::fill(col_sum.begin(), col_sum.end(), scalar_t(0));
    for (int64_t i = 0; i < n; ++i) {
      const scalar_t* row = cost + i * m;
      for (int64_t j = 0; j < m; ++j) col_sum[j] += std::exp((f[i] - row[j]) * inv_eps - col_max[j]);
    }
    for (int64_t j = 0; j < m; ++j) g[j] = scalar_t(eps) * (std::log(b[j]) - col_max[j] - std::log(col_sum[j]));
    // f_i = eps * (log a_i - logsumexp_j((g_j - C_ij) / eps))
    for (int64_t i = 0; i < n; ++i) {
      const scalar_t* row = cost + i * m;
      scalar_t mx = neg_inf;
      for (int64_t j = 0; j < m; ++j) mx = std::max(mx, (g[j] - row[j]) * inv_eps);
      scalar_t s = 0;
      for (int64_t j = 0; j < m; ++j) s += std::exp((g[j] - row[j]) * inv_eps - mx);
      f[i] = scalar_t(eps) * (std::log(a[i]) - mx - std::log(s));
    }
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) plan[i * m + j] = std::exp((f[i] + g[j] - cost[i * m + j]) * inv_eps);
}

at::Tensor sinkhorn_fwd_cpu(const at::Tensor& cost_in, const at::Tensor& a_in, const at::Tensor& b_in, double eps,
                            int64_t n_iters) {
  TORCH_CHECK(cost_in.dim() == 3, "sinkhorn_fwd: cost must be [B, n, m]");
  const at::Tensor cost = cost_in.contiguous(), a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t batch = cost.size(0), n = cost.size(1), m = cost.size(2);
  at::Tensor plan = at::empty_like(cost);
  AT_DISPATCH_FLOATING_TYPES(cost.scalar_type(), "sinkhorn_fwd_cpu", [&] {
    const scalar_t* c = cost.data_ptr<scalar_t>();
    const scalar_t* pa = a.data_ptr<scalar_t>();
    const scalar_t* pb = b.data_ptr<scalar_t>();
    scalar_t* out = plan.data_ptr<scalar_t>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> f(n), g(m);
      for (int64_t k = begin; k < end; ++k)
        sinkhorn_one<scalar_t>(c + k * n * m, pa + k * n, pb + k * m, out + k * n * m, n, m, eps, n_iters, f, g);
    });
  });
  return plan;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(helo_fast, m) {
  m.def("sinkhorn_fwd(Tensor cost, Tensor a, Tensor b, float eps, int n_iters) -> Tensor");
}

TORCH_LIBRARY_IMPL(helo_fast, CPU, m) { m.impl("sinkhorn_fwd", &sinkhorn_fwd_cpu); }

}  // namespace helo_fast
