// lcd_attention's autograd, for every device: the forward op's Autograd kernel. It runs lcd_attention_fwd below
// autograd, keeps what lcd_attention_bwd reads (the inputs and the forward's saved outputs; the masks are
// regenerated from the seed) and gives the backward to lcd_attention_bwd. In C++ because the same rules as a
// torch.library Python autograd cost ~85 us per forward+backward call (argument filling, Function.apply and the
// Python backward): a fifth to a third of the op at HeLo's B=128 LCD-CA shape on 2 threads (docs/performance.md).
//
// A backward that must itself be differentiable (create_graph=True with an input or grad_out requiring grad) is
// helo_fast/_ops/lcd_attention.py's rule: it calls lcd_attention_reference_vjp, which that module implements by
// differentiating the reference. torch.compile traces the backward with grad mode off, so it gets the kernels.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

namespace helo_fast::attention {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptionalTensor = std::optional<at::Tensor>;
using ForwardOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using BackwardOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The op's arguments in the schema's order (csrc/schema.cpp), up to the seed's masks.
constexpr int kOpArgs = 15;
// Position of each differentiable input among those arguments.
constexpr int kQ = 0, kK = 1, kV = 2, kBias = 3, kResidual = 7, kLnWeight = 8, kLnBias = 9;
// The forward's arguments: the op's, then dropkey_value and save_for_backward.
constexpr int kForwardArgs = kOpArgs + 2;

ForwardOutputs call_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptionalTensor& bias,
                            double scale, double dropkey_p, double dropout_p, const OptionalTensor& residual,
                            const OptionalTensor& ln_weight, const OptionalTensor& ln_bias, double ln_eps,
                            bool bias_before_scale, const at::Tensor& seed, const OptionalTensor& dropkey_mask,
                            const OptionalTensor& dropout_mask, double dropkey_value, bool save_for_backward) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("helo_fast::lcd_attention_fwd", "")
          .typed<ForwardOutputs(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptionalTensor&, double,
                                double, double, const OptionalTensor&, const OptionalTensor&, const OptionalTensor&,
                                double, bool, const at::Tensor&, const OptionalTensor&, const OptionalTensor&, double,
                                bool)>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(q, k, v, bias, scale, dropkey_p, dropout_p, residual, ln_weight, ln_bias, ln_eps, bias_before_scale,
                 seed, dropkey_mask, dropout_mask, dropkey_value, save_for_backward);
}

OptionalTensor optional_of(const at::Tensor& t) { return t.defined() ? OptionalTensor(t) : std::nullopt; }

class LcdAttentionFunction : public torch::autograd::Function<LcdAttentionFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const OptionalTensor& bias, double scale, double dropkey_p, double dropout_p,
                               const OptionalTensor& residual, const OptionalTensor& ln_weight,
                               const OptionalTensor& ln_bias, double ln_eps, bool bias_before_scale,
                               const at::Tensor& seed, const OptionalTensor& dropkey_mask,
                               const OptionalTensor& dropout_mask, double dropkey_value, bool save_for_backward) {
    auto [out, mean, rstd, prob, ln_input] =
        call_forward(q, k, v, bias, scale, dropkey_p, dropout_p, residual, ln_weight, ln_bias, ln_eps,
                     bias_before_scale, seed, dropkey_mask, dropout_mask, dropkey_value, save_for_backward);
    const auto value = [](const OptionalTensor& t) { return t.has_value() ? *t : at::Tensor(); };
    ctx->save_for_backward({q, k, v, value(bias), value(residual), value(ln_weight), value(ln_bias), seed,
                            value(dropkey_mask), value(dropout_mask), mean, rstd, prob, ln_input});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["dropkey_p"] = dropkey_p;
    ctx->saved_data["dropout_p"] = dropout_p;
    ctx->saved_data["ln_eps"] = ln_eps;
    ctx->saved_data["bias_before_scale"] = bias_before_scale;
    ctx->saved_data["dropkey_value"] = dropkey_value;
    ctx->saved_data["saved"] = save_for_backward;
    ctx->mark_non_differentiable({mean, rstd, prob, ln_input});
    // The saved outputs get no gradient: materializing them would zero-fill tensors of their sizes (at HeLo's
    // transformer shape, B=128: 5 MB of fresh pages per backward) for nothing.
    ctx->set_materialize_grads(false);
    return {out, mean, rstd, prob, ln_input};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    variable_list grads(kForwardArgs);  // one per forward argument; undefined = no gradient
    const at::Tensor& grad_out = grad_outputs[0];
    if (!grad_out.defined()) return grads;  // the output took no part in the loss
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &seed = saved[7];
    const OptionalTensor bias = optional_of(saved[3]), residual = optional_of(saved[4]);
    const OptionalTensor ln_weight = optional_of(saved[5]), ln_bias = optional_of(saved[6]);
    const OptionalTensor dropkey_mask = optional_of(saved[8]), dropout_mask = optional_of(saved[9]);
    const double scale = ctx->saved_data["scale"].toDouble(), dropkey_p = ctx->saved_data["dropkey_p"].toDouble();
    const double dropout_p = ctx->saved_data["dropout_p"].toDouble(), ln_eps = ctx->saved_data["ln_eps"].toDouble();
    const bool bias_before_scale = ctx->saved_data["bias_before_scale"].toBool();
    const double dropkey_value = ctx->saved_data["dropkey_value"].toDouble();
    const std::array<std::pair<int, at::Tensor>, 7> inputs{{{kQ, q},
                                                            {kK, k},
                                                            {kV, v},
                                                            {kBias, saved[3]},
                                                            {kResidual, saved[4]},
                                                            {kLnWeight, saved[5]},
                                                            {kLnBias, saved[6]}}};
    bool any_input_requires_grad = false;
    for (const auto& [position, t] : inputs) any_input_requires_grad |= t.defined() && t.requires_grad();
    std::array<at::Tensor, 7> input_grads;
    if (at::GradMode::is_enabled() && (any_input_requires_grad || grad_out.requires_grad())) {
      static const auto vjp =
          c10::Dispatcher::singleton()
              .findSchemaOrThrow("helo_fast::lcd_attention_reference_vjp", "")
              .typed<std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                             const OptionalTensor&, double, double, double, const OptionalTensor&,
                                             const OptionalTensor&, const OptionalTensor&, double, bool,
                                             const at::Tensor&, const OptionalTensor&, const OptionalTensor&)>();
      const std::vector<at::Tensor> result =
          vjp.call(grad_out, q, k, v, bias, scale, dropkey_p, dropout_p, residual, ln_weight, ln_bias, ln_eps,
                   bias_before_scale, seed, dropkey_mask, dropout_mask);
      TORCH_CHECK(result.size() == input_grads.size(), "helo_fast::lcd_attention_reference_vjp returned ",
                  result.size(), " gradients, expected ", input_grads.size());
      std::copy(result.begin(), result.end(), input_grads.begin());
    } else {
      at::Tensor mean = saved[10], rstd = saved[11], prob = saved[12], ln_input = saved[13];
      const bool forward_saved = ctx->saved_data["saved"].toBool();
      if (!forward_saved) {  // the forward ran without saving: recompute what it would have
        std::tie(std::ignore, mean, rstd, prob, ln_input) =
            call_forward(q, k, v, bias, scale, dropkey_p, dropout_p, residual, ln_weight, ln_bias, ln_eps,
                         bias_before_scale, seed, dropkey_mask, dropout_mask, dropkey_value, true);
      }
      // The CPU backward reads the saved LayerNorm input, so its kernel needs no residual; CUDA recomputes it.
      const OptionalTensor kernel_residual = q.is_cuda() || !forward_saved ? residual : std::nullopt;
      static const auto op =
          c10::Dispatcher::singleton()
              .findSchemaOrThrow("helo_fast::lcd_attention_bwd", "")
              .typed<BackwardOutputs(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                     const OptionalTensor&, double, double, double, const OptionalTensor&,
                                     const OptionalTensor&, const OptionalTensor&, double, bool, const at::Tensor&,
                                     const OptionalTensor&, const OptionalTensor&, double, const at::Tensor&,
                                     const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(input_grads[0], input_grads[1], input_grads[2], input_grads[3], input_grads[4], input_grads[5],
               input_grads[6]) =
          op.call(grad_out, q, k, v, bias, scale, dropkey_p, dropout_p, kernel_residual, ln_weight, ln_bias, ln_eps,
                  bias_before_scale, seed, dropkey_mask, dropout_mask, dropkey_value, mean, rstd, prob, ln_input);
    }
    // An absent input (an empty placeholder in the ops' results) or one that needs no gradient gets none.
    for (size_t i = 0; i < inputs.size(); ++i) {
      const at::Tensor& input = inputs[i].second;
      if (input.defined() && input.requires_grad()) grads[inputs[i].first] = input_grads[i];
    }
    return grads;
  }
};

ForwardOutputs lcd_attention_fwd_autograd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                          const OptionalTensor& bias, double scale, double dropkey_p, double dropout_p,
                                          const OptionalTensor& residual, const OptionalTensor& ln_weight,
                                          const OptionalTensor& ln_bias, double ln_eps, bool bias_before_scale,
                                          const at::Tensor& seed, const OptionalTensor& dropkey_mask,
                                          const OptionalTensor& dropout_mask, double dropkey_value,
                                          bool save_for_backward) {
  using torch::autograd::isFwGradDefined;
  TORCH_CHECK_NOT_IMPLEMENTED(
      !(isFwGradDefined(q) || isFwGradDefined(k) || isFwGradDefined(v) || isFwGradDefined(bias) ||
        isFwGradDefined(residual) || isFwGradDefined(ln_weight) || isFwGradDefined(ln_bias)),
      "helo_fast::lcd_attention_fwd has no forward-mode AD (jvp) rule; helo_fast.lcd_attention runs the reference "
      "for inputs with forward-mode tangents and inside torch.func transforms");
  const variable_list out = LcdAttentionFunction::apply(q, k, v, bias, scale, dropkey_p, dropout_p, residual, ln_weight,
                                                        ln_bias, ln_eps, bias_before_scale, seed, dropkey_mask,
                                                        dropout_mask, dropkey_value, save_for_backward);
  return {out[0], out[1], out[2], out[3], out[4]};
}

}  // namespace

TORCH_LIBRARY_IMPL(helo_fast, Autograd, m) { m.impl("lcd_attention_fwd", &lcd_attention_fwd_autograd); }

}  // namespace helo_fast::attention
