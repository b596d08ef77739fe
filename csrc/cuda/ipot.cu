// ipot on CUDA: the shared OT block solver of ot_device.cuh in IPOT mode (with tol=: ipot_fwd_tol, each block stopping
// at its own count); the backward runs the CPU kernel.
#include "ot_device.cuh"

namespace helo_fast {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> ipot_fwd_cuda(const at::Tensor& cost, const at::Tensor& a,
                                                             const at::Tensor& b, double beta, int64_t n_iters,
                                                             bool save_history) {
  return ot_fwd_cuda("ipot_fwd", cost, a, b, beta, n_iters, save_history, true);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ipot_bwd_cuda(const at::Tensor& grad, const at::Tensor& cost,
                                                             const at::Tensor& a, const at::Tensor& b,
                                                             const at::Tensor& d_hist, const at::Tensor& s_hist,
                                                             double beta) {
  return ot_bwd_via_cpu("helo_fast::ipot_bwd", grad, cost, a, b, d_hist, s_hist, beta);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ipot_fwd_tol_cuda(
    const at::Tensor& cost, const at::Tensor& a, const at::Tensor& b, double beta, int64_t n_iters, double tol,
    bool save_history) {
  OtTolOutputs out = ot_fwd_tol_cuda("ipot_fwd_tol", cost, a, b, beta, n_iters, tol, save_history, true);
  return {out.plan, out.hist_n, out.hist_m, out.iterations, out.violation};
}

}  // namespace

TORCH_LIBRARY_IMPL(helo_fast, CUDA, m) {
  m.impl("ipot_fwd", &ipot_fwd_cuda);
  m.impl("ipot_bwd", &ipot_bwd_cuda);
  m.impl("ipot_fwd_tol", &ipot_fwd_tol_cuda);
}

}  // namespace helo_fast
