// The passes of the CPU lcd_attention kernels, one (batch, head) tile at a time on the tiles of tile_math.h: the
// forward of a range of batch entries and the backward of one (logits, DropKey, softmax, dropout, A·V, residual,
// LayerNorm). No include guard on purpose: lcd_attention.cpp includes this file once per instruction set (default,
// AVX2+FMA, AVX-512) inside its own namespace and target region, with HF_VEC_BYTES set to that instruction set's
// register width, and picks one at run time; the types it uses (Params, InputViews, ChunkScratch, Grads) are
// defined there before.
#include "tile_math.h"

// out[j] = 0 where dropout drops logit (row, j), else in[j] * keep_scale (out may be in); a copy without dropout.
template <typename acc_t>
inline void apply_dropout(const Params& p, const bool* explicit_mask, uint64_t mask_base, acc_t* out, const acc_t* in,
                          acc_t keep_scale, int64_t Lk) {
  if (p.dropout_mode == kSeededMask) {
    // The integer form of the mask test (mask_threshold) and the weight times 0 or keep_scale, as the reference
    // multiplies by the mask: as `hash_dropped(...) ? 0 : in[j] * keep_scale` (a float compare, a select after a
    // multiply) GCC 12 vectorized the loop only with AVX-512's masks; the AVX2 and SSE2 copies ran scalar (~5 ns an
    // element, 40% of a transformer-shape forward+backward at p = 0.5). The index is taken mod 2^32, as the hash does.
    const uint32_t seed = p.seed, base = static_cast<uint32_t>(mask_base), threshold = mask_threshold(p.dropout_p);
#pragma omp simd
    for (int64_t j = 0; j < Lk; ++j)
      out[j] = in[j] *
               (hash_below(seed, base + static_cast<uint32_t>(j), kStreamDropout, threshold) ? acc_t(0) : keep_scale);
  } else if (p.dropout_mode == kExplicitMask) {
    for (int64_t j = 0; j < Lk; ++j) out[j] = explicit_mask[mask_base + j] ? acc_t(0) : in[j] * keep_scale;
  } else {
    for (int64_t j = 0; j < Lk; ++j) out[j] = in[j];
  }
}

// Row 0 of head h of batch entry b of a [B, H, L, D] input with strides (batch, head, row) and unit columns.
template <typename scalar_t>
inline const scalar_t* head_rows(const scalar_t* base, const int64_t (&stride)[3], int64_t b, int64_t h) {
  return base + b * stride[0] + h * stride[1];
}

// Whether products A Bᵀ over D (Q Kᵀ, dO Vᵀ) go through row dot products (gemm_nt) rather than a transposed copy
// of B and gemm: measured faster at HeLo's three shapes (D = 32 with Lk = 18, 36; D = 128 with Lk = 10) on each
// tier (AVX-512, AVX2, SSE2; float32 fwd+bwd, B=128: 1.03-1.07x at ca / transformer, 1.21-1.23x at lcd_ca); the
// transposed path is kept for short rows against many keys. (All products stay on these tiles: MKL per tile or as
// whole-batch bmm was measured slower at equal vector width; docs/performance.md, "Tiles or the vendor BLAS".)
inline bool use_row_dots(int64_t D, int64_t Lk_padded) { return 2 * D >= Lk_padded; }

// Forward of batch entries [begin, end), one (b, h) tile at a time: S = Q Kᵀ, the row-wise bias, scale, DropKey,
// softmax and dropout, O = W V into the heads' columns of y, then the residual and LayerNorm per query row.
template <typename scalar_t, typename acc_t>
void forward_batches(const Params& p, const InputViews<scalar_t>& x, scalar_t* out, acc_t* mean_out, acc_t* rstd_out,
                     acc_t* prob_out, acc_t* y_out, int64_t begin, int64_t end, ChunkScratch<acc_t>& s) {
  const int64_t H = p.heads, Lq = p.lq, Lk = p.lk, D = p.dim, HD = H * D, Dp = s.dim_padded, Lkp = s.lk_padded;
  const acc_t scale = acc_t(p.scale), dropkey_value = acc_t(p.dropkey_value), keep_scale = acc_t(p.dropout_scale);
  const bool long_rows = use_row_dots(D, Lkp);
  for (int64_t b = begin; b < end; ++b) {
    acc_t* y = s.y.data();  // [Lq, H*D]
    for (int64_t h = 0; h < H; ++h) {
      const int64_t bh = b * H + h;
      const scalar_t* k_rows = head_rows(x.k, p.k_stride, b, h);
      const acc_t* q = tile_rows(s.q.data(), Dp, head_rows(x.q, p.q_stride, b, h), p.q_stride[2], Lq, D);
      const acc_t* v = tile_rows(s.v.data(), Dp, head_rows(x.v, p.v_stride, b, h), p.v_stride[2], Lk, D);
      acc_t* S = s.s.data();  // [Lq, Lkp]
      if (long_rows) {
        gemm_nt(Lq, Lk, Dp, q, Dp, tile_rows(s.k.data(), Dp, k_rows, p.k_stride[2], Lk, D), Dp, S, Lkp);
      } else {
        pack_transposed(s.kt.data(), Lkp, k_rows, p.k_stride[2], Lk, D);
        gemm(Lq, Lkp, D, q, Dp, 1, s.kt.data(), Lkp, S, Lkp);
      }
      for (int64_t i = 0; i < Lq; ++i) {
        acc_t* sr = S + i * Lkp;
        const uint64_t mask_base = static_cast<uint64_t>((bh * Lq + i) * Lk);
        if (p.has_bias) {
          const scalar_t* bias = x.bias + b * p.bias_stride[0] + h * p.bias_stride[1] + i * p.bias_stride[2];
          const int64_t bs = p.bias_stride[3];
          if (p.bias_before_scale) {
            for (int64_t j = 0; j < Lk; ++j) sr[j] = (sr[j] + acc_t(bias[j * bs])) * scale;
          } else {
            for (int64_t j = 0; j < Lk; ++j) sr[j] = sr[j] * scale + acc_t(bias[j * bs]);
          }
        } else {
#pragma omp simd
          for (int64_t j = 0; j < Lk; ++j) sr[j] *= scale;
        }
        // DropKey replaces the logit (a fully dropped row: uniform weights in every dtype); the backward still routes
        // the logit's gradient to q, k and the bias, as the release's additive -1e12 does in float32.
        if (p.dropkey_mode == kSeededMask) {  // (the integer mask test, as in apply_dropout)
          const uint32_t seed = p.seed, base = static_cast<uint32_t>(mask_base);
          const uint32_t threshold = mask_threshold(p.dropkey_p);
#pragma omp simd
          for (int64_t j = 0; j < Lk; ++j) {
            const bool drop = hash_below(seed, base + static_cast<uint32_t>(j), kStreamDropKey, threshold);
            sr[j] = drop ? dropkey_value : sr[j];
          }
        } else if (p.dropkey_mode == kExplicitMask) {
          for (int64_t j = 0; j < Lk; ++j) sr[j] = x.dropkey_mask[mask_base + j] ? dropkey_value : sr[j];
        }
      }
      softmax_rows(S, Lq, Lk, Lkp);
      for (int64_t i = 0; i < Lq; ++i) {
        const uint64_t mask_base = static_cast<uint64_t>((bh * Lq + i) * Lk);
        if (prob_out != nullptr) std::copy_n(S + i * Lkp, Lk, prob_out + mask_base);  // saved for the backward
        if (p.dropout_mode != kNoMask)
          apply_dropout(p, x.dropout_mask, mask_base, s.w.data() + i * Lkp, S + i * Lkp, keep_scale, Lk);
      }
      const acc_t* W = p.dropout_mode == kNoMask ? S : s.w.data();  // the weights after dropout
      if (D == Dp) {                                                // O = W V straight into the head's columns of y
        gemm(Lq, Dp, Lk, W, Lkp, 1, v, Dp, y + h * D, HD);
      } else {
        acc_t* O = s.dq.data();  // [Lq, Dp]
        gemm(Lq, Dp, Lk, W, Lkp, 1, v, Dp, O, Dp);
        for (int64_t i = 0; i < Lq; ++i) std::copy_n(O + i * Dp, D, y + i * HD + h * D);
      }
    }
    for (int64_t i = 0; i < Lq; ++i) {
      const int64_t row = b * Lq + i;
      acc_t* yr = y + i * HD;
      if (p.has_residual) {
        const scalar_t* r = x.residual + row * HD;
#pragma omp simd
        for (int64_t e = 0; e < HD; ++e) yr[e] += acc_t(r[e]);
      }
      if (y_out != nullptr) std::copy_n(yr, HD, y_out + row * HD);  // the LayerNorm input, saved for the backward
      scalar_t* o = out + row * HD;
      if (!p.has_ln) {
        store_converted(o, yr, HD);
        mean_out[row] = 0;
        rstd_out[row] = 1;
        continue;
      }
      acc_t mean = 0;
#pragma omp simd reduction(+ : mean)
      for (int64_t e = 0; e < HD; ++e) mean += yr[e];
      mean /= acc_t(HD);
      acc_t var = 0;
#pragma omp simd reduction(+ : var)
      for (int64_t e = 0; e < HD; ++e) var += (yr[e] - mean) * (yr[e] - mean);
      var /= acc_t(HD);
      const acc_t rstd = acc_t(1) / std::sqrt(var + acc_t(p.ln_eps));
      const acc_t* __restrict lw = x.ln_weight;
      const acc_t* __restrict lb = x.ln_bias;
      // In place (the LayerNorm input was saved above), then stored in the output dtype.
      if (p.has_ln_bias) {
#pragma omp simd
        for (int64_t e = 0; e < HD; ++e) yr[e] = (yr[e] - mean) * rstd * lw[e] + lb[e];
      } else {
#pragma omp simd
        for (int64_t e = 0; e < HD; ++e) yr[e] = (yr[e] - mean) * rstd * lw[e];
      }
      store_converted(o, yr, HD);
      mean_out[row] = mean;
      rstd_out[row] = rstd;
    }
  }
}

// Backward of batch entry b: LayerNorm backward for its query rows, then per head the tile GEMMs
// dP = dO Vᵀ, dV = Wᵀ dO, dS = softmax backward of dP (through dropout), dQ = dS K, dK = dSᵀ Q.
template <typename scalar_t, typename acc_t>
void backward_one_batch(const Params& p, const InputViews<scalar_t>& x, const scalar_t* grad_out, const acc_t* mean_in,
                        const acc_t* rstd_in, const acc_t* prob_in, const acc_t* y_in, int64_t b, int64_t chunk,
                        const Grads<scalar_t, acc_t>& g, ChunkScratch<acc_t>& s) {
  const int64_t H = p.heads, Lq = p.lq, Lk = p.lk, D = p.dim, HD = H * D, Dp = s.dim_padded, Lkp = s.lk_padded;
  const acc_t scale = acc_t(p.scale), keep_scale = acc_t(p.dropout_scale);
  const bool long_rows = use_row_dots(D, Lkp);
  acc_t* dbias = g.dbias == nullptr ? nullptr : g.dbias + (g.bias_shared_over_batch ? chunk * g.dbias_numel : 0);
  acc_t* dln_weight = g.dln_weight == nullptr ? nullptr : g.dln_weight + chunk * HD;
  acc_t* dln_bias = g.dln_bias == nullptr ? nullptr : g.dln_bias + chunk * HD;
  acc_t* dy_all = s.dy.data();  // [Lq, H*D]: d loss / d (LayerNorm input)
  for (int64_t i = 0; i < Lq; ++i) {
    const int64_t row = b * Lq + i;
    const scalar_t* go = grad_out + row * HD;
    acc_t* dy = dy_all + i * HD;
    if (p.has_ln) {
      // LayerNorm backward: dy = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = grad_out * ln_weight.
      const acc_t mean = mean_in[row], rstd = rstd_in[row];
      acc_t sum_g = 0, sum_gx = 0;
      const acc_t* __restrict yr = y_in + row * HD;
      const acc_t* __restrict lw = x.ln_weight;
      if (dln_bias != nullptr) {
#pragma omp simd
        for (int64_t e = 0; e < HD; ++e) dln_bias[e] += acc_t(go[e]);
      }
#pragma omp simd reduction(+ : sum_g, sum_gx)
      for (int64_t e = 0; e < HD; ++e) {
        const acc_t xhat = (yr[e] - mean) * rstd, gout = acc_t(go[e]);
        dln_weight[e] += gout * xhat;
        dy[e] = gout * lw[e];
        sum_g += dy[e];
        sum_gx += dy[e] * xhat;
      }
      sum_g /= acc_t(HD);
      sum_gx /= acc_t(HD);
#pragma omp simd
      for (int64_t e = 0; e < HD; ++e) dy[e] = rstd * (dy[e] - sum_g - (yr[e] - mean) * rstd * sum_gx);
    } else {
#pragma omp simd
      for (int64_t e = 0; e < HD; ++e) dy[e] = acc_t(go[e]);
    }
    scalar_t* dy_out = g.dy + row * HD;
    store_converted(dy_out, dy, HD);
  }
  for (int64_t h = 0; h < H; ++h) {
    const int64_t bh = b * H + h;
    const scalar_t* v_rows = head_rows(x.v, p.v_stride, b, h);
    const acc_t* q = tile_rows(s.q.data(), Dp, head_rows(x.q, p.q_stride, b, h), p.q_stride[2], Lq, D);
    // (s.v is free in the backward)
    const acc_t* k = tile_rows(s.v.data(), Dp, head_rows(x.k, p.k_stride, b, h), p.k_stride[2], Lk, D);
    const acc_t* dO = dy_all + h * D;  // [Lq, D] rows HD apart, or a padded copy
    int64_t ld_dO = HD;
    if (D != Dp) {
      for (int64_t i = 0; i < Lq; ++i) std::copy_n(dy_all + i * HD + h * D, D, s.dout.data() + i * Dp);
      dO = s.dout.data();
      ld_dO = Dp;
    }
    // The forward's softmax weights, and the dropout weights from the regenerated mask.
    acc_t *P = s.s.data(), *dP = s.dp.data();  // [Lq, Lkp]
    const acc_t* W = p.dropout_mode == kNoMask ? P : s.w.data();
    for (int64_t i = 0; i < Lq; ++i) {
      const int64_t offset = (bh * Lq + i) * Lk;
      std::copy_n(prob_in + offset, Lk, P + i * Lkp);
      if (p.dropout_mode != kNoMask)
        apply_dropout(p, x.dropout_mask, static_cast<uint64_t>(offset), s.w.data() + i * Lkp, P + i * Lkp, keep_scale,
                      Lk);
    }
    if (long_rows) {
      gemm_nt(Lq, Lk, Dp, dO, ld_dO, tile_rows(s.k.data(), Dp, v_rows, p.v_stride[2], Lk, D), Dp, dP, Lkp);
    } else {
      pack_transposed(s.kt.data(), Lkp, v_rows, p.v_stride[2], Lk, D);  // Vᵀ
      gemm(Lq, Lkp, D, dO, ld_dO, 1, s.kt.data(), Lkp, dP, Lkp);
    }
    scalar_t* dv_out = g.dv + b * g.dv_stride[0] + h * g.dv_stride[1];
    acc_t* dV = result_tile(s.dv.data(), Dp, dv_out, g.dv_stride[2], D);  // [Lk, Dp]
    gemm(Lk, Dp, Lq, W, 1, Lkp, dO, ld_dO, dV, Dp);
    store_rows(dv_out, g.dv_stride[2], dV, Dp, Lk, D);
    for (int64_t i = 0; i < Lq; ++i) {
      const uint64_t mask_base = static_cast<uint64_t>((bh * Lq + i) * Lk);
      const acc_t* prob = P + i * Lkp;
      acc_t* dp = dP + i * Lkp;
      if (p.dropout_mode != kNoMask) apply_dropout(p, x.dropout_mask, mask_base, dp, dp, keep_scale, Lk);
      // sum_j p_j dp_j over whole vectors: the padding columns of P and dP are zero.
      Vec<acc_t> t = load_vec(prob) * load_vec(dp);
      for (int64_t c = lanes<acc_t>(); c < Lkp; c += lanes<acc_t>()) t += load_vec(prob + c) * load_vec(dp + c);
      const acc_t pdp = reduce_lanes(t, VecSum());
      if (dbias != nullptr) {
        acc_t* db = dbias + b * g.dbias_stride[0] + h * g.dbias_stride[1] + i * g.dbias_stride[2];
        for (int64_t j = 0; j < Lk; ++j) {
          const acc_t dlogit = prob[j] * (dp[j] - pdp);  // d loss / d (scaled logit incl. bias)
          db[j * g.dbias_stride[3]] += p.bias_before_scale ? dlogit * scale : dlogit;
        }
      }
#pragma omp simd
      for (int64_t j = 0; j < Lk; ++j) dp[j] = prob[j] * (dp[j] - pdp) * scale;  // d loss / d (q_i · k_j)
    }
    scalar_t* dq_out = g.dq + b * g.dq_stride[0] + h * g.dq_stride[1];
    scalar_t* dk_out = g.dk + b * g.dk_stride[0] + h * g.dk_stride[1];
    acc_t* dQ = result_tile(s.dq.data(), Dp, dq_out, g.dq_stride[2], D);
    acc_t* dK = result_tile(s.dk.data(), Dp, dk_out, g.dk_stride[2], D);
    gemm(Lq, Dp, Lk, dP, Lkp, 1, k, Dp, dQ, Dp);
    gemm(Lk, Dp, Lq, dP, 1, Lkp, q, Dp, dK, Dp);
    store_rows(dq_out, g.dq_stride[2], dQ, Dp, Lq, D);
    store_rows(dk_out, g.dk_stride[2], dK, Dp, Lk, D);
  }
}

template <typename scalar_t, typename acc_t>
void backward_batches(const Params& p, const InputViews<scalar_t>& x, const scalar_t* grad_out, const acc_t* mean_in,
                      const acc_t* rstd_in, const acc_t* prob_in, const acc_t* y_in, int64_t begin, int64_t end,
                      int64_t chunk, const Grads<scalar_t, acc_t>& g, ChunkScratch<acc_t>& scratch) {
  for (int64_t b = begin; b < end; ++b)
    backward_one_batch<scalar_t, acc_t>(p, x, grad_out, mean_in, rstd_in, prob_in, y_in, b, chunk, g, scratch);
}
