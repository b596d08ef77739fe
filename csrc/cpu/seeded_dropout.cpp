// seeded_dropout on CPU: out = x * 1/(1-p) where the counter hash keeps element i, else 0 (csrc/seeded_dropout.h).
// The mask is a pure function of (seed, i), so the backward is the same op applied to the gradient. Schema in
// csrc/schema.cpp; the CUDA kernel is csrc/cuda/seeded_dropout.cu.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include "../parallel.h"
#include <torch/library.h>

#include <bit>
#include <cstdint>

#include "cpu_math.h"
#include "../seeded_dropout.h"

namespace helo_fast::dropout {
namespace {

using cpu_math::best_simd_isa;
using cpu_math::SimdIsa;

// Unsigned integer of sizeof(T) bytes: the select below is a bitwise AND, which the vectoriser takes (a ?: on
// floating-point values stays a branch: "control flow in loop").
template <size_t kBytes>
struct BitsOf;
template <>
struct BitsOf<2> {
  using type = uint16_t;
};
template <>
struct BitsOf<4> {
  using type = uint32_t;
};
template <>
struct BitsOf<8> {
  using type = uint64_t;
};

// out[i] = dropped(i) ? 0 : x[i] * scale for i in [begin, end), as bits: (x[i] * scale) AND all-ones where kept,
// AND zero (+0.0) where dropped. The hash is 32-bit integer arithmetic (AVX2's vpmulld).
template <typename T>
HF_INLINE void dropout_range(const T* __restrict x, T* __restrict out, int64_t begin, int64_t end, uint32_t seed,
                             uint32_t threshold, at::opmath_type<T> scale) {
  using acc_t = at::opmath_type<T>;
  using U = typename BitsOf<sizeof(T)>::type;
  U* __restrict out_bits = reinterpret_cast<U*>(out);
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    const U kept = std::bit_cast<U>(T(acc_t(x[i]) * scale));
    out_bits[i] = kept & (U(0) - U(!dropped(seed, static_cast<uint32_t>(i), threshold)));
  }
}
HF_DEFINE_SIMD_VARIANT(dropout_range, _avx2, HF_TARGET_AVX2)
HF_DEFINE_SIMD_VARIANT(dropout_range, _base, )

at::Tensor seeded_dropout_fwd_cpu(const at::Tensor& x_in, const at::Tensor& seed, double p) {
  check_arguments(x_in, p);
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const uint32_t threshold = drop_threshold(p), seed32 = seed_of(seed, "seeded_dropout");
  const bool wide = best_simd_isa() != SimdIsa::kBase;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "seeded_dropout_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t scale = acc_t(1.0 / (1.0 - p));
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    helo_fast::parallel_for(0, x.numel(), 32768, [&](int64_t begin, int64_t end) {
      if (wide)
        dropout_range_avx2<scalar_t>(xp, op, begin, end, seed32, threshold, scale);
      else
        dropout_range_base<scalar_t>(xp, op, begin, end, seed32, threshold, scale);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(helo_fast, CPU, m) { m.impl("seeded_dropout_fwd", &seeded_dropout_fwd_cpu); }

}  // namespace helo_fast::dropout
