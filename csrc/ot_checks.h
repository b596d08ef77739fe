// Argument checks of the OT ops for callers that reach torch.ops.helo_fast directly (C++ users, tests):
// the Python functional layer validates first with clear ValueErrors; these are the last line.
#pragma once

#include <ATen/ATen.h>

namespace helo_fast {

// The dtype of the saved histories and of the gradient computation for inputs of dtype `t`: float32
// problems that need a gradient run their forward and backward in float64 (the unrolled backward sums
// n_iters signed terms; float32 potentials and accumulation would exceed the reference's own float32
// error), and return float32 results.
inline at::ScalarType history_dtype(at::ScalarType t) { return t == at::kFloat ? at::kDouble : t; }

// a [B, n], b [B, m] marginals of a problem whose plan is [B, n, m] with `like`'s dtype and device.
inline void check_marginals(const char* op, const at::Tensor& like, int64_t batch, int64_t n, int64_t m,
                            const at::Tensor& a, const at::Tensor& b, double eps_or_beta, int64_t n_iters) {
  TORCH_CHECK(a.dim() == 2 && a.size(0) == batch && a.size(1) == n, op, ": a must be [B, n] = [", batch, ", ", n,
              "], got ", a.sizes());
  TORCH_CHECK(b.dim() == 2 && b.size(0) == batch && b.size(1) == m, op, ": b must be [B, m] = [", batch, ", ", m,
              "], got ", b.sizes());
  TORCH_CHECK(a.scalar_type() == like.scalar_type() && b.scalar_type() == like.scalar_type(), op,
              ": a and b must have the dtype of the cost");
  TORCH_CHECK(a.device() == like.device() && b.device() == like.device(), op, ": a and b must be on the cost's device");
  TORCH_CHECK(eps_or_beta > 0, op, ": the regularisation (eps / beta) must be > 0, got ", eps_or_beta);
  TORCH_CHECK(n_iters >= 1, op, ": the number of iterations must be >= 1, got ", n_iters);
}

inline void check_ot_problem(const char* op, const at::Tensor& cost, const at::Tensor& a, const at::Tensor& b,
                             double eps_or_beta, int64_t n_iters) {
  TORCH_CHECK(cost.dim() == 3, op, ": cost must be [B, n, m], got ", cost.sizes());
  check_marginals(op, cost, cost.size(0), cost.size(1), cost.size(2), a, b, eps_or_beta, n_iters);
}

inline void check_gromov_wasserstein_problem(const char* op, const at::Tensor& cs, const at::Tensor& ct,
                                             const at::Tensor& a, const at::Tensor& b, double eps, int64_t outer,
                                             int64_t inner) {
  TORCH_CHECK(cs.dim() == 3 && cs.size(1) == cs.size(2), op, ": cs must be [B, n, n], got ", cs.sizes());
  TORCH_CHECK(ct.dim() == 3 && ct.size(1) == ct.size(2) && ct.size(0) == cs.size(0), op,
              ": ct must be [B, m, m] with the batch of cs, got ", ct.sizes());
  TORCH_CHECK(ct.scalar_type() == cs.scalar_type() && ct.device() == cs.device(), op,
              ": ct must have the dtype and device of cs");
  TORCH_CHECK(outer >= 1, op, ": outer_iters must be >= 1, got ", outer);
  check_marginals(op, cs, cs.size(0), cs.size(1), ct.size(1), a, b, eps, inner);
}

// grad [B, n, m] like cost; histories [B, N, n] and [B, N, m] saved by the forward with save_history.
inline void check_ot_backward(const char* op, const at::Tensor& grad, const at::Tensor& cost, const at::Tensor& hist_n,
                              const at::Tensor& hist_m) {
  TORCH_CHECK(grad.sizes() == cost.sizes() && grad.scalar_type() == cost.scalar_type(), op,
              ": grad must have the shape and dtype of the plan ", cost.sizes());
  TORCH_CHECK(hist_n.dim() == 3 && hist_n.size(1) >= 1, op,
              ": the saved histories are empty (run the forward with save_history=True)");
  TORCH_CHECK(hist_n.dim() == 3 && hist_m.dim() == 3 && hist_n.size(0) == cost.size(0) &&
                  hist_n.size(2) == cost.size(1) && hist_m.size(0) == cost.size(0) && hist_m.size(2) == cost.size(2) &&
                  hist_m.size(1) == hist_n.size(1) && hist_n.size(1) >= 1,
              op, ": the saved histories must be [B, N, n] and [B, N, m] (run the forward with save_history=True)");
  TORCH_CHECK(hist_n.scalar_type() == history_dtype(cost.scalar_type()) && hist_m.scalar_type() == hist_n.scalar_type(),
              op, ": the saved histories must have dtype ", history_dtype(cost.scalar_type()));
}

}  // namespace helo_fast
