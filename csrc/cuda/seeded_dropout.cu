// seeded_dropout on CUDA, mirroring csrc/cpu/seeded_dropout.cpp: one elementwise launch, the mask from the counter
// hash of csrc/seeded_dropout.h (bit-identical to the CPU kernel and the reference), bf16/fp16 scaled in float32.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "../seeded_dropout.h"
#include "cuda_launch.cuh"

namespace helo_fast::dropout {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

template <typename scalar_t, typename acc_t>
__global__ void _seeded_dropout_fwd_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out, int64_t numel,
                                           uint32_t seed, uint32_t threshold, acc_t scale) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride)
    out[i] =
        dropped(seed, static_cast<uint32_t>(i), threshold) ? scalar_t(0) : scalar_t(static_cast<acc_t>(x[i]) * scale);
}

at::Tensor seeded_dropout_fwd_cuda(const at::Tensor& x_in, const at::Tensor& seed, double p) {
  check_arguments(x_in, p);
  const c10::DeviceGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t numel = x.numel();
  if (numel == 0) return out;
  const uint32_t threshold = drop_threshold(p), seed32 = seed_of(seed, "seeded_dropout");
  const int blocks = static_cast<int>(std::min<int64_t>((numel + kThreads - 1) / kThreads, kMaxBlocks));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "seeded_dropout_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    _seeded_dropout_fwd_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, cuda::current_stream(x)>>>(
        x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), numel, seed32, threshold,
        acc_t(1.0 / (1.0 - p)));
    cuda::check_launch("seeded_dropout");
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(helo_fast, CUDA, m) { m.impl("seeded_dropout_fwd", &seeded_dropout_fwd_cuda); }

}  // namespace helo_fast::dropout
