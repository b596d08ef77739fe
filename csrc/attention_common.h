// Pieces of lcd_attention shared by the CPU and CUDA kernels: the counter-based mask hash of
// helo_fast/_rng.py (bit-identical masks on every backend) and the kernel parameters.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define HELO_ATTN_HD __host__ __device__ __forceinline__
#else
#define HELO_ATTN_HD inline
#endif

namespace helo_fast::attention {

constexpr uint32_t kStreamDropKey = 0;  // _rng.STREAM_DROPKEY
constexpr uint32_t kStreamDropout = 1;  // _rng.STREAM_DROPOUT

// Mask modes: no mask, the seeded hash mask, or an explicit bool tensor [B, H, Lq, Lk].
enum MaskMode : int { kNoMask = 0, kSeededMask = 1, kExplicitMask = 2 };

// _rng.hash_uniform's integer hash; `index` is the row-major index into [B, H, Lq, Lk] (taken mod 2^32,
// which is what the int64 arithmetic followed by `& 0xFFFFFFFF` in Python computes).
HELO_ATTN_HD uint32_t mask_hash(uint32_t seed, uint64_t index, uint32_t stream) {
  uint32_t x = static_cast<uint32_t>(index) * 0x9E3779B1u + seed * 0x85EBCA77u + stream * 0xC2B2AE3Du;
  x ^= x >> 16;
  x *= 0x85EBCA6Bu;
  x ^= x >> 13;
  x *= 0xC2B2AE35u;
  x ^= x >> 16;
  return x;
}

// True (= dropped) when the float32 uniform (x >> 8) * 2^-24 is below float32(p), as _rng.bernoulli_mask.
HELO_ATTN_HD bool hash_dropped(uint32_t seed, uint64_t index, uint32_t stream, float p) {
  const float u = static_cast<float>(mask_hash(seed, index, stream) >> 8) * 5.9604644775390625e-08f;
  return u < p;
}

// Everything a kernel needs besides the tensors. Strides are in elements; bias strides are those of
// bias expanded to [B, H, Lq, Lk] (0 along broadcast dimensions).
struct Params {
  int64_t batch, heads, lq, lk, dim;
  double scale;
  double dropkey_value;  // reference.attention.dropkey_value(dtype)
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

}  // namespace helo_fast::attention
