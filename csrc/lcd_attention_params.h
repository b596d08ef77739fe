// Host-side argument handling of lcd_attention shared by the CPU and CUDA launchers: checks, contiguous
// copies where needed, the mask modes and the Params struct.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <optional>

#include "mask_hash.h"

namespace helo_fast::attention {

// Mask modes: no mask, the seeded hash mask, or an explicit bool tensor [B, H, Lq, Lk]; the values and the rule
// (mask_mode below) of helo_fast/_rng.py MASK_* / mask_mode, which decides them for every backend.
enum MaskMode : int { kNoMask = 0, kSeededMask = 1, kExplicitMask = 2 };

// Everything a kernel needs besides the tensors. Strides are in elements; bias strides are those of
// bias expanded to [B, H, Lq, Lk] (0 along broadcast dimensions).
struct Params {
  int64_t batch, heads, lq, lk, dim;
  double scale;
  double dropkey_value;  // helo_fast._numerics.dropkey_value(dtype)
  double dropout_scale;  // 1 / (1 - dropout_p)
  double ln_eps;
  float dropkey_p, dropout_p;
  uint32_t seed;
  int dropkey_mode, dropout_mode;
  bool bias_before_scale, has_bias, has_residual, has_ln, has_ln_bias;
  int64_t bias_stride[4];
  // q, k, v [B, H, L, D] strides of the batch, head and row dimensions (unit column stride). The CPU kernels read
  // strided views (a [B, L, H, D] layout seen as [B, H, L, D]); the CUDA kernels get contiguous copies.
  int64_t q_stride[3], k_stride[3], v_stride[3];
};

// The tensors a kernel reads, in the layout it expects: residual/masks contiguous; q/k/v contiguous, or (CPU) any
// layout with unit column stride, read through Params::q_stride etc.; bias as given (read through
// Params::bias_stride, so a broadcast [Lq, Lk] bias is never materialised).
struct Inputs {
  at::Tensor q, k, v, bias, residual, ln_weight, ln_bias, dropkey_mask, dropout_mask;
};

// Read-only pointers to the inputs for one dtype (null where a tensor is undefined), passed to the kernels. The
// LayerNorm parameters are in the accumulation type (make_inputs converts them): float16/bfloat16 inputs may come
// with float32 parameters, as torch.autocast leaves them.
template <typename scalar_t>
struct InputViews {
  const scalar_t *q, *k, *v, *bias, *residual;
  const at::opmath_type<scalar_t>*ln_weight, *ln_bias;
  const bool *dropkey_mask, *dropout_mask;
};

template <typename scalar_t>
InputViews<scalar_t> input_views(const Inputs& in) {
  using acc_t = at::opmath_type<scalar_t>;
  auto ptr = [](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr; };
  auto acc_ptr = [](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<acc_t>() : nullptr; };
  auto mask = [](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<bool>() : nullptr; };
  return {ptr(in.q),
          ptr(in.k),
          ptr(in.v),
          ptr(in.bias),
          ptr(in.residual),
          acc_ptr(in.ln_weight),
          acc_ptr(in.ln_bias),
          mask(in.dropkey_mask),
          mask(in.dropout_mask)};
}

inline at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->contiguous() : at::Tensor();
}

// A LayerNorm parameter [H*D] in the accumulation type of q (float32 for float16/bfloat16 q), contiguous.
inline at::Tensor layer_norm_parameter(const std::optional<at::Tensor>& t, const at::Tensor& q) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  const at::ScalarType acc = at::toOpMathType(q.scalar_type());
  TORCH_CHECK(t->scalar_type() == q.scalar_type() || t->scalar_type() == acc,
              "lcd_attention: ln_weight/ln_bias must have the dtype of q or its accumulation type");
  return t->to(acc).contiguous();
}

// The dtype the gradient of a LayerNorm parameter is returned in: the parameter's own.
inline at::ScalarType parameter_dtype(const std::optional<at::Tensor>& t, const at::Tensor& q) {
  return t.has_value() && t->defined() ? t->scalar_type() : q.scalar_type();
}

inline int mask_mode(const at::Tensor& explicit_mask, double p) {
  if (explicit_mask.defined()) return kExplicitMask;
  return p > 0 ? kSeededMask : kNoMask;
}

// make_inputs and make_params take their arguments in the op's order (csrc/schema.cpp), tensors and scalars apart.
inline Inputs make_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                          const std::optional<at::Tensor>& ln_weight, const std::optional<at::Tensor>& ln_bias,
                          const std::optional<at::Tensor>& dropkey_mask, const std::optional<at::Tensor>& dropout_mask,
                          bool keep_row_strides = false) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "lcd_attention: q, k, v must be 4-D [B, H, L, D]");
  const int64_t batch = q.size(0), heads = q.size(1), lq = q.size(2), dim = q.size(3), lk = k.size(2);
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == batch && k.size(1) == heads && k.size(3) == dim,
              "lcd_attention: k and v must be [B, H, Lk, D] matching q [B, H, Lq, D]");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "lcd_attention: q, k, v must share a dtype");
  Inputs in;
  // keep_row_strides: the CPU kernels read any layout whose columns are contiguous (HeLo's heads are transposed
  // views of [B, L, H*D]) and gather each head's rows in cache, instead of a whole-tensor copy here.
  auto rows_of = [keep_row_strides](const at::Tensor& t) {
    return keep_row_strides && t.stride(3) == 1 ? t : t.contiguous();
  };
  in.q = rows_of(q);
  in.k = rows_of(k);
  in.v = rows_of(v);
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == q.scalar_type(), "lcd_attention: bias must have the dtype of q");
    TORCH_CHECK(bias->dim() <= 4, "lcd_attention: bias must be broadcastable to [B, H, Lq, Lk]");
    in.bias = *bias;
  }
  in.residual = contiguous_or_undefined(residual);
  if (in.residual.defined())
    TORCH_CHECK(in.residual.sizes() == at::IntArrayRef({batch, lq, heads * dim}),
                "lcd_attention: residual must be [B, Lq, H*D]");
  in.ln_weight = layer_norm_parameter(ln_weight, q);
  in.ln_bias = layer_norm_parameter(ln_bias, q);
  TORCH_CHECK(!in.ln_bias.defined() || in.ln_weight.defined(), "lcd_attention: ln_bias needs ln_weight");
  for (const at::Tensor* t : {&in.ln_weight, &in.ln_bias})
    if (t->defined()) TORCH_CHECK(t->numel() == heads * dim, "lcd_attention: ln_weight/ln_bias must be [H*D]");
  in.dropkey_mask = contiguous_or_undefined(dropkey_mask);
  in.dropout_mask = contiguous_or_undefined(dropout_mask);
  for (const at::Tensor* t : {&in.dropkey_mask, &in.dropout_mask})
    if (t->defined())
      TORCH_CHECK(t->scalar_type() == at::kBool && t->sizes() == at::IntArrayRef({batch, heads, lq, lk}),
                  "lcd_attention: masks must be bool [B, H, Lq, Lk]");
  return in;
}

inline Params make_params(const Inputs& in, double scale, double dropkey_p, double dropout_p, double ln_eps,
                          bool bias_before_scale, int64_t seed, double dropkey_value) {
  Params p{};
  p.batch = in.q.size(0);
  p.heads = in.q.size(1);
  p.lq = in.q.size(2);
  p.dim = in.q.size(3);
  p.lk = in.k.size(2);
  p.scale = scale;
  p.dropkey_value = dropkey_value;
  p.dropout_scale = 1.0 / (1.0 - dropout_p);
  p.ln_eps = ln_eps;
  p.dropkey_p = static_cast<float>(dropkey_p);
  p.dropout_p = static_cast<float>(dropout_p);
  p.seed = static_cast<uint32_t>(seed & 0xFFFFFFFF);
  p.dropkey_mode = mask_mode(in.dropkey_mask, dropkey_p);
  p.dropout_mode = mask_mode(in.dropout_mask, dropout_p);
  p.bias_before_scale = bias_before_scale;
  p.has_bias = in.bias.defined();
  p.has_residual = in.residual.defined();
  p.has_ln = in.ln_weight.defined();
  p.has_ln_bias = in.ln_bias.defined();
  for (int d = 0; d < 3; ++d) {
    p.q_stride[d] = in.q.stride(d);
    p.k_stride[d] = in.k.stride(d);
    p.v_stride[d] = in.v.stride(d);
  }
  for (int d = 0; d < 4; ++d) p.bias_stride[d] = 0;
  if (p.has_bias) {
    const at::Tensor expanded = in.bias.expand({p.batch, p.heads, p.lq, p.lk});
    for (int d = 0; d < 4; ++d) p.bias_stride[d] = expanded.stride(d);
  }
  return p;
}

// Strides of a contiguous tensor of bias's shape, seen as [B, H, Lq, Lk] (0 along broadcast dims):
// where the gradient of logit (b, h, i, j) accumulates.
inline void bias_grad_strides(const at::Tensor& grad_bias, const Params& p, int64_t out[4]) {
  const at::Tensor expanded = grad_bias.expand({p.batch, p.heads, p.lq, p.lk});
  for (int d = 0; d < 4; ++d) out[d] = expanded.stride(d);
}

inline at::ScalarType acc_type_of(const at::Tensor& t) { return at::toOpMathType(t.scalar_type()); }

// The layout of the gradient of q, k or v: at::empty_like's (the input's own strides where it is dense, so the
// gradient of a transposed view of [B, L, H, D] flows back through the view without a copy), or contiguous where
// that has no unit column stride. The fake kernel (helo_fast/_ops/lcd_attention.py) follows the same rule.
inline at::Tensor gradient_like(const at::Tensor& input) {
  at::Tensor grad = at::empty_like(input);
  return grad.dim() > 0 && grad.stride(-1) != 1 ? at::empty(input.sizes(), input.options()) : grad;
}

// The forward op's outputs: out [B, Lq, H*D] (input dtype); LayerNorm mean, rstd [B, Lq]; and, when saved for
// the backward, the softmax weights [B, H, Lq, Lk] and the LayerNorm input [B, Lq, H*D] (empty otherwise), all
// but `out` in the accumulation type.
struct ForwardOutputs {
  at::Tensor out, mean, rstd, prob, ln_input;
};

inline ForwardOutputs allocate_forward_outputs(const Params& p, const at::Tensor& q, bool save_for_backward) {
  const auto stat_options = q.options().dtype(acc_type_of(q));
  auto saved = [&](at::IntArrayRef shape) {
    return save_for_backward ? at::empty(shape, stat_options) : q.new_empty({0}, stat_options);
  };
  return {at::empty({p.batch, p.lq, p.heads * p.dim}, q.options()), at::empty({p.batch, p.lq}, stat_options),
          at::empty({p.batch, p.lq}, stat_options), saved({p.batch, p.heads, p.lq, p.lk}),
          saved({p.batch, p.lq, p.heads * p.dim})};
}

}  // namespace helo_fast::attention
