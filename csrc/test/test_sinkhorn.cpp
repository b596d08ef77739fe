// C++ unit test: the OT ops through the dispatcher. sinkhorn_fwd meets its marginals; sinkhorn_bwd
// matches a finite difference of the forward; ipot_fwd and gromov_wasserstein_fwd return valid plans.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <tuple>

using Triple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

static int failures = 0;

static void check(bool ok, const char* what) {
  std::printf("%s: %s\n", ok ? "ok" : "FAILED", what);
  failures += ok ? 0 : 1;
}

int main() {
  auto& dispatcher = c10::Dispatcher::singleton();
  auto sinkhorn = dispatcher.findSchemaOrThrow("helo_fast::sinkhorn_fwd", "")
                      .typed<Triple(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, int64_t, bool)>();
  auto sinkhorn_bwd = dispatcher.findSchemaOrThrow("helo_fast::sinkhorn_bwd", "")
                          .typed<Triple(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        const at::Tensor&, const at::Tensor&, double)>();
  auto ipot = dispatcher.findSchemaOrThrow("helo_fast::ipot_fwd", "")
                  .typed<Triple(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, int64_t, bool)>();
  auto gromov_wasserstein = dispatcher.findSchemaOrThrow("helo_fast::gromov_wasserstein_fwd", "")
                                .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                                    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                                    int64_t, int64_t, c10::string_view, bool)>();
  at::manual_seed(0);
  const int64_t batch = 3, n = 5, m = 7;
  at::Tensor cost = at::rand({batch, n, m}, at::kDouble);
  at::Tensor a = at::rand({batch, n}, at::kDouble) + 0.1;
  a = a / a.sum(-1, true);
  at::Tensor b = at::full({batch, m}, 1.0 / m, at::kDouble);

  at::Tensor plan = std::get<0>(sinkhorn.call(cost, a, b, 0.1, 500, false));
  const double row_err = (plan.sum(2) - a).abs().max().item<double>();
  const double col_err = (plan.sum(1) - b).abs().max().item<double>();
  std::printf("sinkhorn_fwd: row marginal error %.3g, column marginal error %.3g\n", row_err, col_err);
  check(row_err < 1e-12 && col_err < 1e-9 && plan.isfinite().all().item<bool>(), "sinkhorn_fwd marginals");

  // d/dt <W, P(cost + t V)> at t = 0 by central differences vs <grad_cost, V>.
  auto [p, f_hist, g_hist] = sinkhorn.call(cost, a, b, 0.2, 7, true);
  at::Tensor weight = at::randn_like(cost), direction = at::randn_like(cost);
  at::Tensor grad_cost = std::get<0>(sinkhorn_bwd.call(weight, cost, a, b, f_hist, g_hist, 0.2));
  const double h = 1e-6;
  const double up =
      (std::get<0>(sinkhorn.call(cost + h * direction, a, b, 0.2, 7, false)) * weight).sum().item<double>();
  const double down =
      (std::get<0>(sinkhorn.call(cost - h * direction, a, b, 0.2, 7, false)) * weight).sum().item<double>();
  const double numeric = (up - down) / (2 * h), analytic = (grad_cost * direction).sum().item<double>();
  std::printf("sinkhorn_bwd: analytic %.10g, finite difference %.10g\n", analytic, numeric);
  check(std::abs(analytic - numeric) < 1e-6 * std::max(1.0, std::abs(numeric)), "sinkhorn_bwd directional derivative");

  at::Tensor iplan = std::get<0>(ipot.call(cost, a, b, 0.1, 50, false));
  check((iplan.sum(1) - b).abs().max().item<double>() < 1e-12, "ipot_fwd column marginals");

  at::Tensor cs = at::rand({batch, n, n}, at::kDouble), ct = at::rand({batch, m, m}, at::kDouble);
  at::Tensor gplan = std::get<0>(gromov_wasserstein.call(cs, ct, a, b, 0.1, 5, 20, "ipot", false));
  check((gplan.sum(1) - b).abs().max().item<double>() < 1e-12 && gplan.isfinite().all().item<bool>(),
        "gromov_wasserstein_fwd plan");

  std::printf("%d failed\n", failures);
  return failures == 0 ? 0 : 1;
}
