// The schema of every C++ op of helo_fast (torch.ops.helo_fast.*): the one TORCH_LIBRARY block. The kernels
// add implementations per device (TORCH_LIBRARY_IMPL) in csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu; the Python
// side (fake kernels, autograd, autocast) is helo_fast/_ops/<op>.py, except lcd_attention's autograd
// (csrc/lcd_attention_autograd.cpp).
#include <torch/library.h>

TORCH_LIBRARY(helo_fast, m) {
  // sinkhorn
  m.def(
      "sinkhorn_fwd(Tensor cost, Tensor a, Tensor b, float eps, int n_iters, bool save_history) -> "
      "(Tensor plan, Tensor f_hist, Tensor g_hist)");
  m.def(
      "sinkhorn_bwd(Tensor grad_plan, Tensor cost, Tensor a, Tensor b, Tensor f_hist, Tensor g_hist, float eps) -> "
      "(Tensor grad_cost, Tensor grad_a, Tensor grad_b)");
  // ipot
  m.def(
      "ipot_fwd(Tensor cost, Tensor a, Tensor b, float beta, int n_iters, bool save_history) -> "
      "(Tensor plan, Tensor d_hist, Tensor s_hist)");
  m.def(
      "ipot_bwd(Tensor grad_plan, Tensor cost, Tensor a, Tensor b, Tensor d_hist, Tensor s_hist, float beta) -> "
      "(Tensor grad_cost, Tensor grad_a, Tensor grad_b)");
  // sinkhorn and ipot with a tolerance (each problem stops at its own count; csrc/cpu/ot_converged.cpp)
  m.def(
      "sinkhorn_fwd_tol(Tensor cost, Tensor a, Tensor b, float eps, int n_iters, float tol, bool save_history) -> "
      "(Tensor plan, Tensor f, Tensor g, Tensor f_hist, Tensor g_hist, Tensor iterations, Tensor violation)");
  m.def(
      "ipot_fwd_tol(Tensor cost, Tensor a, Tensor b, float beta, int n_iters, float tol, bool save_history) -> "
      "(Tensor plan, Tensor d_hist, Tensor s_hist, Tensor iterations, Tensor violation)");
  // gromov_wasserstein
  m.def(
      "gromov_wasserstein_fwd(Tensor cs, Tensor ct, Tensor a, Tensor b, float eps, int outer_iters, "
      "int inner_iters, str solver, bool save_history) -> (Tensor plan, Tensor plans, Tensor hist_n, Tensor hist_m)");
  m.def(
      "gromov_wasserstein_bwd(Tensor grad_plan, Tensor cs, Tensor ct, Tensor a, Tensor b, Tensor plans, "
      "Tensor hist_n, Tensor hist_m, float eps, str solver) -> "
      "(Tensor grad_cs, Tensor grad_ct, Tensor grad_a, Tensor grad_b)");
  // lcd_attention
  // The public function's argument order (helo_fast.functional.lcd_attention, generator -> seed), then what the
  // Python layer adds (dropkey_value of the dtype; the forward's save flag, the backward's saved outputs).
  m.def(
      "lcd_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor? bias, float scale, float dropkey_p, float dropout_p, "
      "Tensor? residual, Tensor? ln_weight, Tensor? ln_bias, float ln_eps, bool bias_before_scale, Tensor seed, "
      "Tensor? dropkey_mask, Tensor? dropout_mask, float dropkey_value, bool save_for_backward) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "lcd_attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor? bias, float scale, float dropkey_p, "
      "float dropout_p, Tensor? residual, Tensor? ln_weight, Tensor? ln_bias, float ln_eps, bool bias_before_scale, "
      "Tensor seed, Tensor? dropkey_mask, Tensor? dropout_mask, float dropkey_value, Tensor mean, Tensor rstd, "
      "Tensor prob, Tensor ln_input) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The backward as a differentiable graph (create_graph=True): [dq, dk, dv, dbias, dresidual, dln_weight, dln_bias]
  // of the reference (an empty tensor where an input is absent or needs no gradient). Implemented in Python
  // (helo_fast/_ops/lcd_attention.py, CompositeImplicitAutograd); lcd_attention_fwd's autograd calls it.
  m.def(
      "lcd_attention_reference_vjp(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor? bias, float scale, "
      "float dropkey_p, float dropout_p, Tensor? residual, Tensor? ln_weight, Tensor? ln_bias, float ln_eps, "
      "bool bias_before_scale, Tensor seed, Tensor? dropkey_mask, Tensor? dropout_mask) -> Tensor[]");
  // seeded_dropout
  m.def("seeded_dropout_fwd(Tensor x, Tensor seed, float p) -> Tensor");
}
