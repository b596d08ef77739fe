// The seeded dropout mask of helo_fast/_rng.py for the seeded_dropout kernels (CPU and CUDA): element i of the
// flattened tensor is dropped when hash(seed, i, STREAM_DROPOUT) falls below p, with the float test of
// _rng.bernoulli_mask, (x >> 8) * 2^-24 < float(p), done as the equivalent integer test (x >> 8) < threshold.
#pragma once

#include <cmath>
#include <cstdint>

#include "attention_common.h"

namespace helo_fast::dropout {

// ceil(float(p) * 2^24): for an integer h, h * 2^-24 < float(p) exactly when h < this (the scaling by 2^24 is
// exact in double). 0 for p = 0 (nothing dropped); at most 2^24 for p < 1.
inline uint32_t drop_threshold(double p) {
  return static_cast<uint32_t>(std::ceil(static_cast<double>(static_cast<float>(p)) * 16777216.0));
}

HELO_ATTN_HD bool dropped(uint32_t seed, uint32_t index, uint32_t threshold) {
  return (attention::mask_hash(seed, index, attention::kStreamDropout) >> 8) < threshold;
}

}  // namespace helo_fast::dropout
