// The counter-based mask hash of helo_fast/_rng.py (its Triton twin: kernels/mask_hash.py), shared by the
// lcd_attention and seeded_dropout kernels on CPU and CUDA: bit-identical masks on every backend.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define HELO_HD __host__ __device__ __forceinline__
#else
#define HELO_HD inline
#endif

namespace helo_fast {

constexpr uint32_t kStreamDropKey = 0;  // _rng.STREAM_DROPKEY
constexpr uint32_t kStreamDropout = 1;  // _rng.STREAM_DROPOUT

// _rng.hash_uniform's integer hash; `index` is the row-major element index (taken mod 2^32, which is what the
// int64 arithmetic followed by `& 0xFFFFFFFF` in Python computes).
HELO_HD uint32_t mask_hash(uint32_t seed, uint64_t index, uint32_t stream) {
  uint32_t x = static_cast<uint32_t>(index) * 0x9E3779B1u + seed * 0x85EBCA77u + stream * 0xC2B2AE3Du;
  x ^= x >> 16;
  x *= 0x85EBCA6Bu;
  x ^= x >> 13;
  x *= 0xC2B2AE35u;
  x ^= x >> 16;
  return x;
}

// True (= dropped) when the float32 uniform (x >> 8) * 2^-24 is below float32(p), as _rng.bernoulli_mask.
HELO_HD bool hash_dropped(uint32_t seed, uint64_t index, uint32_t stream, float p) {
  const float u = static_cast<float>(mask_hash(seed, index, stream) >> 8) * 5.9604644775390625e-08f;
  return u < p;
}

// ceil(float(p) * 2^24): for the 24-bit h = hash >> 8, h * 2^-24 < float(p) exactly when h < this (the scaling by
// 2^24 is exact in double), so hash_below(..., mask_threshold(p)) is hash_dropped(..., p) as an integer test. 0 for
// p = 0 (nothing dropped); at most 2^24 for p < 1. (The integer test vectorizes on every x86 tier: GCC keeps the
// float compare, which may trap, out of if-converted loops unless AVX-512's masks hide it.)
inline uint32_t mask_threshold(double p) {
  return static_cast<uint32_t>(std::ceil(static_cast<double>(static_cast<float>(p)) * 16777216.0));
}

HELO_HD bool hash_below(uint32_t seed, uint32_t index, uint32_t stream, uint32_t threshold) {
  return (mask_hash(seed, index, stream) >> 8) < threshold;
}

// A mask seed, passed as an int64 CPU tensor of one element (a tensor, so that torch.compile does not specialise,
// and recompile, on its value); `op` names the op in the error. Its low 32 bits, as the mask hash takes them.
inline uint32_t seed_of(const at::Tensor& seed, const char* op) {
  TORCH_CHECK(seed.numel() == 1 && seed.scalar_type() == at::kLong && seed.device().is_cpu(), op,
              ": seed must be an int64 CPU tensor of one element");
  return static_cast<uint32_t>(seed.item<int64_t>() & 0xFFFFFFFF);
}

}  // namespace helo_fast
