// C++ unit test: helo_fast::sinkhorn_fwd through the dispatcher meets both marginals.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>

int main() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("helo_fast::sinkhorn_fwd", "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, int64_t)>();
  at::manual_seed(0);
  const int64_t batch = 3, n = 5, m = 7;
  at::Tensor cost = at::rand({batch, n, m}, at::kDouble);
  at::Tensor a = at::rand({batch, n}, at::kDouble) + 0.1;
  a = a / a.sum(-1, true);
  at::Tensor b = at::full({batch, m}, 1.0 / m, at::kDouble);
  at::Tensor plan = op.call(cost, a, b, 0.1, 500);
  const double row_err = (plan.sum(2) - a).abs().max().item<double>();
  const double col_err = (plan.sum(1) - b).abs().max().item<double>();
  std::printf("sinkhorn_fwd: row marginal error %.3g, column marginal error %.3g\n", row_err, col_err);
  if (!(row_err < 1e-12 && col_err < 1e-9) || !plan.isfinite().all().item<bool>()) {
    std::printf("FAILED\n");
    return 1;
  }
  std::printf("1 passed, 0 failed\n");
  return 0;
}
