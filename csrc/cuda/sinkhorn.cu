// sinkhorn on CUDA: the shared OT block solver of ot_device.cuh in Sinkhorn mode (with tol=: sinkhorn_fwd_tol, each
// block stopping at its own count); the backward runs the CPU kernel.
#include "ot_device.cuh"

namespace helo_fast {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> sinkhorn_fwd_cuda(const at::Tensor& cost, const at::Tensor& a,
                                                                 const at::Tensor& b, double eps, int64_t n_iters,
                                                                 bool save_history) {
  return ot_fwd_cuda("sinkhorn_fwd", cost, a, b, eps, n_iters, save_history, false);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sinkhorn_bwd_cuda(const at::Tensor& grad, const at::Tensor& cost,
                                                                 const at::Tensor& a, const at::Tensor& b,
                                                                 const at::Tensor& f_hist, const at::Tensor& g_hist,
                                                                 double eps) {
  return ot_bwd_via_cpu("helo_fast::sinkhorn_bwd", grad, cost, a, b, f_hist, g_hist, eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_fwd_tol_cuda(
    const at::Tensor& cost, const at::Tensor& a, const at::Tensor& b, double eps, int64_t n_iters, double tol,
    bool save_history) {
  OtTolOutputs out = ot_fwd_tol_cuda("sinkhorn_fwd_tol", cost, a, b, eps, n_iters, tol, save_history, false);
  return {out.plan, out.f, out.g, out.hist_n, out.hist_m, out.iterations, out.violation};
}

}  // namespace

TORCH_LIBRARY_IMPL(helo_fast, CUDA, m) {
  m.impl("sinkhorn_fwd", &sinkhorn_fwd_cuda);
  m.impl("sinkhorn_bwd", &sinkhorn_bwd_cuda);
  m.impl("sinkhorn_fwd_tol", &sinkhorn_fwd_tol_cuda);
}

}  // namespace helo_fast
