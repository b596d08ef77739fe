// The seeded dropout mask of helo_fast/_rng.py for the seeded_dropout kernels (CPU and CUDA): element i of the
// flattened tensor is dropped when hash(seed, i, STREAM_DROPOUT) falls below p, with the float test of
// _rng.bernoulli_mask, (x >> 8) * 2^-24 < float(p), done as the equivalent integer test (x >> 8) < threshold.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

#include "mask_hash.h"

namespace helo_fast::dropout {

// The integer mask threshold of float(p) (mask_hash.h's mask_threshold; this op's launchers call it by this name).
inline uint32_t drop_threshold(double p) { return mask_threshold(p); }

HELO_HD bool dropped(uint32_t seed, uint32_t index, uint32_t threshold) {
  return hash_below(seed, index, kStreamDropout, threshold);
}

// The op's argument checks (messages name the argument), shared by the CPU and CUDA launchers.
inline void check_arguments(const at::Tensor& x, double p) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "seeded_dropout: p must be in [0, 1), got ", p);
  TORCH_CHECK(x.numel() <= (int64_t{1} << 32),
              "seeded_dropout: x has more than 2^32 elements, where the 32-bit mask index would repeat");
}

}  // namespace helo_fast::dropout
