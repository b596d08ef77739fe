// lcd_attention on CPU: logits (+ bias, before or after scaling), DropKey, softmax, dropout, A·V, residual,
// LayerNorm, fused per query row. With save_for_backward the forward also returns the softmax weights
// [B, H, Lq, Lk] and the LayerNorm input [B, Lq, H*D] (accumulation type); the backward reads them and
// regenerates the dropout mask from the seed. Both passes run at::parallel_for over the batch and work on one
// (b, h) tile at a time (lcd_attention_kernels.h) with small register-blocked GEMMs (tile_math.h); the backward gives
// each chunk of batch entries its own slice of the bias / LayerNorm-parameter gradients, summed at the end.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include "../parallel.h"
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../lcd_attention_params.h"
#include "cpu_math.h"

namespace helo_fast::attention {
namespace {

// Scratch of one parallel task (a range of batch entries), in the accumulation type: the (b, h) tiles of the
// GEMMs with rows padded to whole vectors of vector_bytes (the kernels' width: dim_padded columns of D, lk_padded
// of Lk); padding stays zero.
template <typename acc_t>
struct ChunkScratch {
  int64_t dim_padded, lk_padded;
  std::vector<acc_t> q, k, kt, v, s, w, dp, dout, dq, dk, dv, y, dy;
  static int64_t padded(int64_t n, int64_t vector_bytes) {
    const int64_t lanes = vector_bytes / static_cast<int64_t>(sizeof(acc_t));
    return (n + lanes - 1) / lanes * lanes;
  }
  ChunkScratch(const Params& p, int64_t vector_bytes)
      : dim_padded(padded(p.dim, vector_bytes)),
        lk_padded(padded(p.lk, vector_bytes)),
        q(p.lq * dim_padded),
        k(p.lk * dim_padded),
        kt(p.dim * lk_padded),
        v(p.lk * dim_padded),
        s(p.lq * lk_padded),
        w(p.lq * lk_padded),
        dp(p.lq * lk_padded),
        dout(p.lq * dim_padded),
        dq(std::max(p.lq, p.lk) * dim_padded),
        dk(p.lk * dim_padded),
        dv(p.lk * dim_padded),
        y(p.lq * p.heads * p.dim),
        dy(p.lq * p.heads * p.dim) {}
};

// Outputs of the backward: gradients in the input dtype (q, k, v, the LayerNorm input) and reduction
// targets in the accumulation type (bias, ln_weight, ln_bias; one slice per chunk where chunks share them).
template <typename scalar_t, typename acc_t>
struct Grads {
  scalar_t *dq, *dk, *dv, *dy;
  int64_t dq_stride[3], dk_stride[3], dv_stride[3];  // (batch, head, row) strides; columns are contiguous
  acc_t* dbias;                  // [chunks, bias numel] when bias_shared_over_batch, else [bias numel]
  acc_t *dln_weight, *dln_bias;  // [chunks, H*D]
  int64_t dbias_stride[4];
  int64_t dbias_numel;
  bool bias_shared_over_batch;
};

// The kernels, compiled once per instruction set with vectors of its register width (HF_VEC_BYTES); the widest this
// CPU runs is picked at run time (cpu_math::best_simd_isa). (cpu_math.h makes a vector wider than the registers
// a compile error.)
#define HF_VEC_BYTES 16
namespace isa_default {
#include "lcd_attention_kernels.h"
}  // namespace isa_default
#undef HF_VEC_BYTES
#if HF_X86_DISPATCH
HF_TARGET_REGION_BEGIN(HF_AVX2_FEATURES)
#define HF_VEC_BYTES 32
namespace isa_avx2 {
#include "lcd_attention_kernels.h"
}  // namespace isa_avx2
#undef HF_VEC_BYTES
HF_TARGET_REGION_END
HF_TARGET_REGION_BEGIN(HF_AVX512_FEATURES)
#define HF_VEC_BYTES 64
namespace isa_avx512 {
#include "lcd_attention_kernels.h"
}  // namespace isa_avx512
#undef HF_VEC_BYTES
HF_TARGET_REGION_END
#endif

using cpu_math::SimdIsa;

// The vector width of the kernels of isa (their scratch tiles are padded to it).
int64_t vector_bytes(SimdIsa isa) { return isa == SimdIsa::kAvx512 ? 64 : isa == SimdIsa::kAvx2 ? 32 : 16; }

template <typename scalar_t, typename acc_t>
void forward_cpu(const Params& p, const InputViews<scalar_t>& x, scalar_t* out, acc_t* mean_out, acc_t* rstd_out,
                 acc_t* prob_out, acc_t* y_out) {
  const int64_t work_per_batch = std::max<int64_t>(1, 4 * p.heads * p.lq * p.lk * p.dim);
  const int64_t grain = std::max<int64_t>(1, 65536 / work_per_batch);
  const SimdIsa isa = cpu_math::best_simd_isa();
  helo_fast::parallel_for(0, p.batch, grain, [&](int64_t begin, int64_t end) {
    ChunkScratch<acc_t> scratch(p, vector_bytes(isa));
    switch (isa) {
#if HF_X86_DISPATCH
      case SimdIsa::kAvx512:
        isa_avx512::forward_batches(p, x, out, mean_out, rstd_out, prob_out, y_out, begin, end, scratch);
        break;
      case SimdIsa::kAvx2:
        isa_avx2::forward_batches(p, x, out, mean_out, rstd_out, prob_out, y_out, begin, end, scratch);
        break;
#endif
      default:
        isa_default::forward_batches(p, x, out, mean_out, rstd_out, prob_out, y_out, begin, end, scratch);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lcd_attention_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& bias, double scale,
    double dropkey_p, double dropout_p, const std::optional<at::Tensor>& residual,
    const std::optional<at::Tensor>& ln_weight, const std::optional<at::Tensor>& ln_bias, double ln_eps,
    bool bias_before_scale, const at::Tensor& seed, const std::optional<at::Tensor>& dropkey_mask,
    const std::optional<at::Tensor>& dropout_mask, double dropkey_value, bool save_for_backward) {
  const Inputs in = make_inputs(q, k, v, bias, residual, ln_weight, ln_bias, dropkey_mask, dropout_mask,
                                /*keep_row_strides=*/true);
  const Params p = make_params(in, scale, dropkey_p, dropout_p, ln_eps, bias_before_scale,
                               seed_of(seed, "lcd_attention"), dropkey_value);
  // (Named members, not a structured binding: the dispatch lambda captures them, which clang < 16 refuses for
  // bindings.)
  const ForwardOutputs outputs = allocate_forward_outputs(p, q, save_for_backward);
  const at::Tensor &out = outputs.out, &mean = outputs.mean, &rstd = outputs.rstd, &prob = outputs.prob,
                   &ln_input = outputs.ln_input;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "lcd_attention_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_cpu<scalar_t, acc_t>(p, input_views<scalar_t>(in), out.mutable_data_ptr<scalar_t>(),
                                 mean.mutable_data_ptr<acc_t>(), rstd.mutable_data_ptr<acc_t>(),
                                 save_for_backward ? prob.mutable_data_ptr<acc_t>() : nullptr,
                                 save_for_backward ? ln_input.mutable_data_ptr<acc_t>() : nullptr);
  });
  return {out, mean, rstd, prob, ln_input};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lcd_attention_bwd_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& bias, double scale, double dropkey_p, double dropout_p,
    const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& ln_weight,
    const std::optional<at::Tensor>& ln_bias, double ln_eps, bool bias_before_scale, const at::Tensor& seed,
    const std::optional<at::Tensor>& dropkey_mask, const std::optional<at::Tensor>& dropout_mask, double dropkey_value,
    const at::Tensor& mean_in, const at::Tensor& rstd_in, const at::Tensor& prob_in, const at::Tensor& ln_input_in) {
  const Inputs in = make_inputs(q, k, v, bias, residual, ln_weight, ln_bias, dropkey_mask, dropout_mask,
                                /*keep_row_strides=*/true);
  const Params p = make_params(in, scale, dropkey_p, dropout_p, ln_eps, bias_before_scale,
                               seed_of(seed, "lcd_attention"), dropkey_value);
  TORCH_CHECK(prob_in.sizes() == at::IntArrayRef({p.batch, p.heads, p.lq, p.lk}) &&
                  ln_input_in.sizes() == at::IntArrayRef({p.batch, p.lq, p.heads * p.dim}),
              "lcd_attention_bwd: prob and ln_input must be the forward's saved [B, H, Lq, Lk] and [B, Lq, H*D] "
              "(run the forward with save_for_backward=True)");
  const int64_t HD = p.heads * p.dim;
  const at::Tensor grad_out = grad_out_in.to(q.scalar_type()).contiguous();
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({p.batch, p.lq, HD}),
              "lcd_attention_bwd: grad_out must be [B, Lq, H*D]");
  const at::ScalarType acc = acc_type_of(q);
  const at::Tensor mean = mean_in.to(acc).contiguous(), rstd = rstd_in.to(acc).contiguous();
  const at::Tensor prob = prob_in.to(acc).contiguous(), ln_input = ln_input_in.to(acc).contiguous();
  // The kernel writes the gradients of q, k, v with any strides of unit column stride.
  at::Tensor dq = gradient_like(q), dk = gradient_like(k), dv = gradient_like(v);
  at::Tensor dy = at::empty({p.batch, p.lq, HD}, q.options());
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), p.batch));
  const auto acc_options = q.options().dtype(acc);
  at::Tensor dbias_acc, dln_weight_acc, dln_bias_acc;
  int64_t dbias_stride[4] = {0, 0, 0, 0};
  bool bias_shared = false;
  if (p.has_bias) {
    at::Tensor shaped = at::zeros(in.bias.sizes(), acc_options);
    bias_grad_strides(shaped, p, dbias_stride);
    bias_shared = dbias_stride[0] == 0 && p.batch > 1;
    dbias_acc = bias_shared ? at::zeros({chunks, shaped.numel()}, acc_options) : shaped;
  }
  if (p.has_ln) {
    dln_weight_acc = at::zeros({chunks, HD}, acc_options);
    if (p.has_ln_bias) dln_bias_acc = at::zeros({chunks, HD}, acc_options);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "lcd_attention_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const InputViews<scalar_t> x = input_views<scalar_t>(in);
    Grads<scalar_t, acc_t> g{};
    g.dq = dq.mutable_data_ptr<scalar_t>();
    g.dk = dk.mutable_data_ptr<scalar_t>();
    g.dv = dv.mutable_data_ptr<scalar_t>();
    for (int d = 0; d < 3; ++d) {
      g.dq_stride[d] = dq.stride(d);
      g.dk_stride[d] = dk.stride(d);
      g.dv_stride[d] = dv.stride(d);
    }
    g.dy = dy.mutable_data_ptr<scalar_t>();
    g.dbias = dbias_acc.defined() ? dbias_acc.mutable_data_ptr<acc_t>() : nullptr;
    g.dln_weight = dln_weight_acc.defined() ? dln_weight_acc.mutable_data_ptr<acc_t>() : nullptr;
    g.dln_bias = dln_bias_acc.defined() ? dln_bias_acc.mutable_data_ptr<acc_t>() : nullptr;
    for (int d = 0; d < 4; ++d) g.dbias_stride[d] = dbias_stride[d];
    g.dbias_numel = p.has_bias ? in.bias.numel() : 0;
    g.bias_shared_over_batch = bias_shared;
    const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
    const acc_t* mp = mean.const_data_ptr<acc_t>();
    const acc_t* rp = rstd.const_data_ptr<acc_t>();
    const acc_t* pp = prob.const_data_ptr<acc_t>();
    const acc_t* yp = ln_input.const_data_ptr<acc_t>();
    // One task per chunk of batch entries, so each chunk owns its slice of the shared reductions.
    const SimdIsa isa = cpu_math::best_simd_isa();
    helo_fast::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      ChunkScratch<acc_t> scratch(p, vector_bytes(isa));
      for (int64_t c = begin; c < end; ++c) {
        const int64_t first = c * p.batch / chunks, last = (c + 1) * p.batch / chunks;
        switch (isa) {
#if HF_X86_DISPATCH
          case SimdIsa::kAvx512:
            isa_avx512::backward_batches(p, x, go, mp, rp, pp, yp, first, last, c, g, scratch);
            break;
          case SimdIsa::kAvx2:
            isa_avx2::backward_batches(p, x, go, mp, rp, pp, yp, first, last, c, g, scratch);
            break;
#endif
          default:
            isa_default::backward_batches(p, x, go, mp, rp, pp, yp, first, last, c, g, scratch);
        }
      }
    });
  });
  // Absent inputs get distinct empty tensors (outputs must not alias each other).
  at::Tensor grad_bias = q.new_empty({0}), grad_ln_weight = q.new_empty({0}), grad_ln_bias = q.new_empty({0});
  if (p.has_bias) grad_bias = (bias_shared ? dbias_acc.sum(0).view(in.bias.sizes()) : dbias_acc).to(q.scalar_type());
  if (p.has_ln) grad_ln_weight = dln_weight_acc.sum(0).to(parameter_dtype(ln_weight, q));
  if (p.has_ln_bias) grad_ln_bias = dln_bias_acc.sum(0).to(parameter_dtype(ln_bias, q));
  return {dq, dk, dv, grad_bias, dy, grad_ln_weight, grad_ln_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(helo_fast, CPU, m) {
  m.impl("lcd_attention_fwd", &lcd_attention_fwd_cpu);
  m.impl("lcd_attention_bwd", &lcd_attention_bwd_cpu);
}

}  // namespace helo_fast::attention
