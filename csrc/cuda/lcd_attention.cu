// lcd_attention on CUDA, mirroring csrc/cpu/lcd_attention.cpp: one launch per call, float32/float64 and
// bf16/fp16 inputs with float32 accumulation. Masks are regenerated from the seed (csrc/mask_hash.h).
//
// Forward: one block per query row (b, i); the row's logits/weights (all heads) and its LayerNorm input
// live in shared memory. Backward: one block per batch entry, since all its query rows accumulate into
// dk and dv; the block recomputes the forward, keeping P, the dropout weights and d(logits) [H, Lq, Lk] and
// the LayerNorm input / its gradient [Lq, H*D] in a global workspace it alone touches, so every output
// element of dq, dk, dv is a plain sum written by one thread. Gradients shared across the batch (bias,
// ln_weight, ln_bias) accumulate with atomicAdd in the accumulation type.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "../lcd_attention_params.h"
#include "cuda_launch.cuh"

namespace helo_fast::attention {
namespace {

constexpr int kForwardThreads = 128;
constexpr int kBackwardThreads = 256;
constexpr int kWarp = 32;

using cuda::check_launch;
using cuda::current_stream;

__device__ __forceinline__ bool dropped(int mode, const bool* explicit_mask, uint32_t seed, uint64_t index,
                                        uint32_t stream, float p) {
  if (mode == kExplicitMask) return explicit_mask[index];
  return mode == kSeededMask && hash_dropped(seed, index, stream, p);
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t x) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// Sum of x over the block; `scratch` holds one value per warp. Every thread gets the result.
template <typename acc_t>
__device__ acc_t block_sum(acc_t x, acc_t* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = (blockDim.x + kWarp - 1) / kWarp;
  x = warp_sum(x);
  __syncthreads();
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  acc_t total = 0;
  for (int w = 0; w < warps; ++w) total += scratch[w];
  return total;
}

// Scaled logit (b, h, i, j) with bias and DropKey, as reference.lcd_attention computes it.
template <typename scalar_t, typename acc_t>
__device__ acc_t logit_of(const Params& p, const InputViews<scalar_t>& x, int64_t b, int64_t h, int64_t i, int64_t j) {
  const int64_t bh = b * p.heads + h;
  const scalar_t* qrow = x.q + (bh * p.lq + i) * p.dim;
  const scalar_t* krow = x.k + (bh * p.lk + j) * p.dim;
  acc_t s = 0;
  for (int64_t d = 0; d < p.dim; ++d) s += acc_t(qrow[d]) * acc_t(krow[d]);
  const acc_t scale = acc_t(p.scale);
  if (p.has_bias) {
    const acc_t bias =
        acc_t(x.bias[b * p.bias_stride[0] + h * p.bias_stride[1] + i * p.bias_stride[2] + j * p.bias_stride[3]]);
    s = p.bias_before_scale ? (s + bias) * scale : s * scale + bias;
  } else {
    s *= scale;
  }
  const uint64_t index = static_cast<uint64_t>((bh * p.lq + i) * p.lk + j);
  // DropKey replaces the logit (a fully dropped row: uniform weights in every dtype); the backward still routes the
  // logit's gradient to q, k and the bias, as the release's additive -1e12 does in float32.
  if (dropped(p.dropkey_mode, x.dropkey_mask, p.seed, index, kStreamDropKey, p.dropkey_p)) s = acc_t(p.dropkey_value);
  return s;
}

// Logits prob[0..Lk) -> softmax weights in place; weights after dropout in weight.
template <typename scalar_t, typename acc_t>
__device__ void softmax_dropout(const Params& p, const InputViews<scalar_t>& x, uint64_t mask_base, acc_t* prob,
                                acc_t* weight) {
  acc_t row_max = prob[0];
  for (int64_t j = 1; j < p.lk; ++j) row_max = prob[j] > row_max ? prob[j] : row_max;
  acc_t total = 0;
  for (int64_t j = 0; j < p.lk; ++j) {
    prob[j] = exp(prob[j] - row_max);
    total += prob[j];
  }
  const acc_t inv_total = acc_t(1) / total, keep_scale = acc_t(p.dropout_scale);
  for (int64_t j = 0; j < p.lk; ++j) {
    prob[j] *= inv_total;
    weight[j] = prob[j];
    if (p.dropout_mode != kNoMask &&
        dropped(p.dropout_mode, x.dropout_mask, p.seed, mask_base + j, kStreamDropout, p.dropout_p))
      weight[j] = 0;
    else if (p.dropout_mode != kNoMask)
      weight[j] = prob[j] * keep_scale;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void _lcd_attention_fwd_kernel(Params p, InputViews<scalar_t> x, scalar_t* out, acc_t* mean_out,
                                          acc_t* rstd_out, acc_t* prob_out, acc_t* y_out) {
  extern __shared__ unsigned char smem_raw[];
  acc_t* prob = reinterpret_cast<acc_t*>(smem_raw);  // [H * Lk] logits -> softmax weights
  acc_t* w = prob + p.heads * p.lk;                  // [H * Lk] weights after dropout
  acc_t* y = w + p.heads * p.lk;                     // [H * D] LayerNorm input
  acc_t* red = y + p.heads * p.dim;                  // [warps] reduction scratch
  const int64_t row = blockIdx.x, b = row / p.lq, i = row % p.lq, HD = p.heads * p.dim;
  for (int64_t idx = threadIdx.x; idx < p.heads * p.lk; idx += blockDim.x)
    prob[idx] = logit_of<scalar_t, acc_t>(p, x, b, idx / p.lk, i, idx % p.lk);
  __syncthreads();
  for (int64_t h = threadIdx.x; h < p.heads; h += blockDim.x) {
    const uint64_t mask_base = static_cast<uint64_t>(((b * p.heads + h) * p.lq + i) * p.lk);
    softmax_dropout<scalar_t, acc_t>(p, x, mask_base, prob + h * p.lk, w + h * p.lk);
  }
  __syncthreads();
  if (prob_out != nullptr)
    for (int64_t idx = threadIdx.x; idx < p.heads * p.lk; idx += blockDim.x)
      prob_out[((b * p.heads + idx / p.lk) * p.lq + i) * p.lk + idx % p.lk] = prob[idx];
  for (int64_t e = threadIdx.x; e < HD; e += blockDim.x) {
    const int64_t h = e / p.dim, d = e % p.dim;
    const scalar_t* vb = x.v + (b * p.heads + h) * p.lk * p.dim + d;
    acc_t acc = 0;
    for (int64_t j = 0; j < p.lk; ++j) acc += w[h * p.lk + j] * acc_t(vb[j * p.dim]);
    if (p.has_residual) acc += acc_t(x.residual[row * HD + e]);
    y[e] = acc;
    if (y_out != nullptr) y_out[row * HD + e] = acc;
  }
  __syncthreads();
  if (!p.has_ln) {
    for (int64_t e = threadIdx.x; e < HD; e += blockDim.x) out[row * HD + e] = scalar_t(y[e]);
    if (threadIdx.x == 0) {
      mean_out[row] = 0;
      rstd_out[row] = 1;
    }
    return;
  }
  acc_t part = 0;
  for (int64_t e = threadIdx.x; e < HD; e += blockDim.x) part += y[e];
  const acc_t mean = block_sum(part, red) / acc_t(HD);
  part = 0;
  for (int64_t e = threadIdx.x; e < HD; e += blockDim.x) part += (y[e] - mean) * (y[e] - mean);
  const acc_t rstd = acc_t(1) / sqrt(block_sum(part, red) / acc_t(HD) + acc_t(p.ln_eps));
  for (int64_t e = threadIdx.x; e < HD; e += blockDim.x) {
    acc_t val = (y[e] - mean) * rstd * acc_t(x.ln_weight[e]);
    if (p.has_ln_bias) val += acc_t(x.ln_bias[e]);
    out[row * HD + e] = scalar_t(val);
  }
  if (threadIdx.x == 0) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

template <typename scalar_t, typename acc_t>
struct DeviceGrads {
  const scalar_t* grad_out;
  const acc_t *mean, *rstd;
  scalar_t *dq, *dk, *dv, *dy;
  acc_t *dbias, *dln_weight, *dln_bias;  // accumulation-type buffers, zeroed, updated with atomicAdd
  acc_t* workspace;                      // per batch entry: P, W, dS [H, Lq, Lk] and dY [Lq, H*D]
  int64_t dbias_stride[4];
};

template <typename scalar_t, typename acc_t>
__global__ void _lcd_attention_bwd_kernel(Params p, InputViews<scalar_t> x, DeviceGrads<scalar_t, acc_t> g) {
  const int64_t b = blockIdx.x, H = p.heads, Lq = p.lq, Lk = p.lk, D = p.dim, HD = H * D;
  const int64_t n_logits = H * Lq * Lk;
  acc_t* prob = g.workspace + b * (3 * n_logits + Lq * HD);
  acc_t* weight = prob + n_logits;
  acc_t* dlogit = weight + n_logits;
  acc_t* dy = dlogit + n_logits;
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp, warps = blockDim.x / kWarp;

  // 1. Recompute logits, then softmax and dropout per (h, i) row.
  for (int64_t idx = tid; idx < n_logits; idx += blockDim.x) {
    const int64_t h = idx / (Lq * Lk), i = (idx / Lk) % Lq, j = idx % Lk;
    prob[idx] = logit_of<scalar_t, acc_t>(p, x, b, h, i, j);
  }
  __syncthreads();
  for (int64_t hi = tid; hi < H * Lq; hi += blockDim.x) {
    const uint64_t mask_base = static_cast<uint64_t>((b * H * Lq + hi) * Lk);
    softmax_dropout<scalar_t, acc_t>(p, x, mask_base, prob + hi * Lk, weight + hi * Lk);
  }
  __syncthreads();
  // 2. LayerNorm input y = W V (+ residual), stored in dy.
  for (int64_t idx = tid; idx < Lq * HD; idx += blockDim.x) {
    const int64_t i = idx / HD, e = idx % HD, h = e / D, d = e % D;
    const scalar_t* vb = x.v + (b * H + h) * Lk * D + d;
    const acc_t* wrow = weight + (h * Lq + i) * Lk;
    acc_t acc = 0;
    for (int64_t j = 0; j < Lk; ++j) acc += wrow[j] * acc_t(vb[j * D]);
    if (p.has_residual) acc += acc_t(x.residual[(b * Lq + i) * HD + e]);
    dy[idx] = acc;
  }
  __syncthreads();
  // 3. LayerNorm backward, one warp per query row: dy = rstd (g - mean(g) - xhat mean(g xhat)).
  for (int64_t i = warp; i < Lq; i += warps) {
    const int64_t row = b * Lq + i;
    acc_t* yrow = dy + i * HD;
    const scalar_t* go = g.grad_out + row * HD;
    if (p.has_ln) {
      const acc_t mean = g.mean[row], rstd = g.rstd[row];
      acc_t sum_g = 0, sum_gx = 0;
      for (int64_t e = lane; e < HD; e += kWarp) {
        const acc_t xhat = (yrow[e] - mean) * rstd, gout = acc_t(go[e]), ge = gout * acc_t(x.ln_weight[e]);
        atomicAdd(g.dln_weight + e, gout * xhat);
        if (p.has_ln_bias) atomicAdd(g.dln_bias + e, gout);
        sum_g += ge;
        sum_gx += ge * xhat;
      }
      sum_g = warp_sum(sum_g) / acc_t(HD);
      sum_gx = warp_sum(sum_gx) / acc_t(HD);
      for (int64_t e = lane; e < HD; e += kWarp) {
        const acc_t xhat = (yrow[e] - mean) * rstd, ge = acc_t(go[e]) * acc_t(x.ln_weight[e]);
        yrow[e] = rstd * (ge - sum_g - xhat * sum_gx);
      }
    } else {
      for (int64_t e = lane; e < HD; e += kWarp) yrow[e] = acc_t(go[e]);
    }
    for (int64_t e = lane; e < HD; e += kWarp) g.dy[row * HD + e] = scalar_t(yrow[e]);
  }
  __syncthreads();
  // 4. d(weight) = dY V^T through dropout, into dlogit.
  const acc_t keep_scale = acc_t(p.dropout_scale);
  for (int64_t idx = tid; idx < n_logits; idx += blockDim.x) {
    const int64_t h = idx / (Lq * Lk), i = (idx / Lk) % Lq, j = idx % Lk;
    const acc_t* dout = dy + i * HD + h * D;
    const scalar_t* vrow = x.v + ((b * H + h) * Lk + j) * D;
    acc_t dp = 0;
    for (int64_t d = 0; d < D; ++d) dp += dout[d] * acc_t(vrow[d]);
    if (p.dropout_mode != kNoMask) {
      const uint64_t index = static_cast<uint64_t>(b * n_logits + idx);
      dp = dropped(p.dropout_mode, x.dropout_mask, p.seed, index, kStreamDropout, p.dropout_p) ? acc_t(0)
                                                                                               : dp * keep_scale;
    }
    dlogit[idx] = dp;
  }
  __syncthreads();
  // 5. Softmax backward per (h, i) row; dlogit becomes d loss / d (q . k_j); bias gradient.
  const acc_t scale = acc_t(p.scale);
  for (int64_t hi = tid; hi < H * Lq; hi += blockDim.x) {
    const int64_t h = hi / Lq, i = hi % Lq;
    const acc_t* pr = prob + hi * Lk;
    acc_t* dl = dlogit + hi * Lk;
    acc_t pdp = 0;
    for (int64_t j = 0; j < Lk; ++j) pdp += pr[j] * dl[j];
    for (int64_t j = 0; j < Lk; ++j) {
      const acc_t ds = pr[j] * (dl[j] - pdp), dqk = ds * scale;
      if (g.dbias != nullptr)
        atomicAdd(
            g.dbias + b * g.dbias_stride[0] + h * g.dbias_stride[1] + i * g.dbias_stride[2] + j * g.dbias_stride[3],
            p.bias_before_scale ? dqk : ds);
      dl[j] = dqk;
    }
  }
  __syncthreads();
  // 6. dq = dS K, dk = dS^T Q, dv = W^T dY; each output element is one thread's sum.
  for (int64_t idx = tid; idx < H * Lq * D; idx += blockDim.x) {
    const int64_t h = idx / (Lq * D), i = (idx / D) % Lq, d = idx % D;
    const acc_t* dl = dlogit + (h * Lq + i) * Lk;
    const scalar_t* kb = x.k + (b * H + h) * Lk * D + d;
    acc_t acc = 0;
    for (int64_t j = 0; j < Lk; ++j) acc += dl[j] * acc_t(kb[j * D]);
    g.dq[b * H * Lq * D + idx] = scalar_t(acc);
  }
  for (int64_t idx = tid; idx < H * Lk * D; idx += blockDim.x) {
    const int64_t h = idx / (Lk * D), j = (idx / D) % Lk, d = idx % D;
    const scalar_t* qb = x.q + (b * H + h) * Lq * D + d;
    acc_t dk = 0, dv = 0;
    for (int64_t i = 0; i < Lq; ++i) {
      const int64_t lij = (h * Lq + i) * Lk + j;
      dk += dlogit[lij] * acc_t(qb[i * D]);
      dv += weight[lij] * dy[i * HD + h * D + d];
    }
    g.dk[b * H * Lk * D + idx] = scalar_t(dk);
    g.dv[b * H * Lk * D + idx] = scalar_t(dv);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lcd_attention_fwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& bias, double scale,
    double dropkey_p, double dropout_p, const std::optional<at::Tensor>& residual,
    const std::optional<at::Tensor>& ln_weight, const std::optional<at::Tensor>& ln_bias, double ln_eps,
    bool bias_before_scale, const at::Tensor& seed, const std::optional<at::Tensor>& dropkey_mask,
    const std::optional<at::Tensor>& dropout_mask, double dropkey_value, bool save_for_backward) {
  const c10::DeviceGuard guard(q.device());
  const Inputs in = make_inputs(q, k, v, bias, residual, ln_weight, ln_bias, dropkey_mask, dropout_mask);
  const Params p = make_params(in, scale, dropkey_p, dropout_p, ln_eps, bias_before_scale,
                               seed_of(seed, "lcd_attention"), dropkey_value);
  // prob and ln_input are written for the op's layout contract; the CUDA backward recomputes them instead.
  auto [out, mean, rstd, prob, ln_input] = allocate_forward_outputs(p, q, save_for_backward);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "lcd_attention_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t smem = (2 * p.heads * p.lk + p.heads * p.dim + kForwardThreads / kWarp) * sizeof(acc_t);
    TORCH_CHECK(smem <= 48 * 1024, "lcd_attention (cuda): H*(Lk + D) too large for one block's shared memory");
    _lcd_attention_fwd_kernel<scalar_t, acc_t><<<p.batch * p.lq, kForwardThreads, smem, current_stream(q)>>>(
        p, input_views<scalar_t>(in), out.mutable_data_ptr<scalar_t>(), mean.mutable_data_ptr<acc_t>(),
        rstd.mutable_data_ptr<acc_t>(), save_for_backward ? prob.mutable_data_ptr<acc_t>() : nullptr,
        save_for_backward ? ln_input.mutable_data_ptr<acc_t>() : nullptr);
    check_launch("lcd_attention");
  });
  return {out, mean, rstd, prob, ln_input};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lcd_attention_bwd_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& bias, double scale, double dropkey_p, double dropout_p,
    const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& ln_weight,
    const std::optional<at::Tensor>& ln_bias, double ln_eps, bool bias_before_scale, const at::Tensor& seed,
    const std::optional<at::Tensor>& dropkey_mask, const std::optional<at::Tensor>& dropout_mask, double dropkey_value,
    const at::Tensor& mean_in, const at::Tensor& rstd_in, const at::Tensor& /*prob: recomputed*/,
    const at::Tensor& /*ln_input: recomputed*/) {
  const c10::DeviceGuard guard(q.device());
  const Inputs in = make_inputs(q, k, v, bias, residual, ln_weight, ln_bias, dropkey_mask, dropout_mask);
  const Params p = make_params(in, scale, dropkey_p, dropout_p, ln_eps, bias_before_scale,
                               seed_of(seed, "lcd_attention"), dropkey_value);
  const int64_t HD = p.heads * p.dim, n_logits = p.heads * p.lq * p.lk;
  const at::ScalarType acc = acc_type_of(q);
  const auto acc_options = q.options().dtype(acc);
  const at::Tensor grad_out = grad_out_in.to(q.scalar_type()).contiguous();
  const at::Tensor mean = mean_in.to(acc).contiguous(), rstd = rstd_in.to(acc).contiguous();
  at::Tensor dq = at::empty_like(in.q), dk = at::empty_like(in.k), dv = at::empty_like(in.v);
  at::Tensor dy = at::empty({p.batch, p.lq, HD}, q.options());
  at::Tensor workspace = at::empty({p.batch, 3 * n_logits + p.lq * HD}, acc_options);
  at::Tensor dbias_acc, dln_weight_acc, dln_bias_acc;
  int64_t dbias_stride[4] = {0, 0, 0, 0};
  if (p.has_bias) {
    dbias_acc = at::zeros(in.bias.sizes(), acc_options);
    bias_grad_strides(dbias_acc, p, dbias_stride);
  }
  if (p.has_ln) dln_weight_acc = at::zeros({HD}, acc_options);
  if (p.has_ln_bias) dln_bias_acc = at::zeros({HD}, acc_options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "lcd_attention_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    DeviceGrads<scalar_t, acc_t> g{};
    g.grad_out = grad_out.const_data_ptr<scalar_t>();
    g.mean = mean.const_data_ptr<acc_t>();
    g.rstd = rstd.const_data_ptr<acc_t>();
    g.dq = dq.mutable_data_ptr<scalar_t>();
    g.dk = dk.mutable_data_ptr<scalar_t>();
    g.dv = dv.mutable_data_ptr<scalar_t>();
    g.dy = dy.mutable_data_ptr<scalar_t>();
    g.dbias = dbias_acc.defined() ? dbias_acc.mutable_data_ptr<acc_t>() : nullptr;
    g.dln_weight = dln_weight_acc.defined() ? dln_weight_acc.mutable_data_ptr<acc_t>() : nullptr;
    g.dln_bias = dln_bias_acc.defined() ? dln_bias_acc.mutable_data_ptr<acc_t>() : nullptr;
    g.workspace = workspace.mutable_data_ptr<acc_t>();
    for (int d = 0; d < 4; ++d) g.dbias_stride[d] = dbias_stride[d];
    _lcd_attention_bwd_kernel<scalar_t, acc_t>
        <<<p.batch, kBackwardThreads, 0, current_stream(q)>>>(p, input_views<scalar_t>(in), g);
    check_launch("lcd_attention");
  });
  // Absent inputs get distinct empty tensors (outputs must not alias each other).
  at::Tensor grad_bias = q.new_empty({0}), grad_ln_weight = q.new_empty({0}), grad_ln_bias = q.new_empty({0});
  if (p.has_bias) grad_bias = dbias_acc.to(q.scalar_type());
  if (p.has_ln) grad_ln_weight = dln_weight_acc.to(parameter_dtype(ln_weight, q));
  if (p.has_ln_bias) grad_ln_bias = dln_bias_acc.to(parameter_dtype(ln_bias, q));
  // The kernel wrote contiguous [B, H, L, D]; the op returns the layout of gradient_like (that of the fake kernel).
  auto in_input_layout = [](const at::Tensor& grad, const at::Tensor& input) {
    if (input.strides() == grad.strides()) return grad;  // gradient_like of a dense input keeps its strides
    at::Tensor out = gradient_like(input);
    if (out.strides() == grad.strides()) return grad;
    out.copy_(grad);
    return out;
  };
  return {in_input_layout(dq, q),
          in_input_layout(dk, k),
          in_input_layout(dv, v),
          grad_bias,
          dy,
          grad_ln_weight,
          grad_ln_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(helo_fast, CUDA, m) {
  m.impl("lcd_attention_fwd", &lcd_attention_fwd_cuda);
  m.impl("lcd_attention_bwd", &lcd_attention_bwd_cuda);
}

}  // namespace helo_fast::attention
