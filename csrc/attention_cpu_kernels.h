// The per-row arithmetic of the CPU lcd_attention kernels. No include guard on purpose: attention_cpu.cpp
// includes this file once per instruction set (default, AVX2+FMA, AVX-512) inside its own namespace and
// `#pragma GCC target` region, and picks one at run time; the types it uses (Params, Views, ChunkScratch,
// Grads) are defined there before the inclusion.

// sum_d a[d] * b[d]; `omp simd reduction` lets GCC reorder the sum into vector lanes without -ffast-math.
template <typename acc_t, typename A, typename B>
inline acc_t dot(const A* a, const B* b, int64_t n) {
  acc_t s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t d = 0; d < n; ++d) s += acc_t(a[d]) * acc_t(b[d]);
  return s;
}

// y[d] += alpha * x[d]
template <typename acc_t, typename X>
inline void axpy(acc_t* __restrict y, acc_t alpha, const X* __restrict x, int64_t n) {
#pragma omp simd
  for (int64_t d = 0; d < n; ++d) y[d] += alpha * acc_t(x[d]);
}

// [sum(s0), sum(s1), sum(s2), sum(s3)] of four 64-byte vectors by a tree of lane shuffles.
typedef float VecF __attribute__((vector_size(64)));
typedef double VecD __attribute__((vector_size(64)));
typedef int32_t MaskF __attribute__((vector_size(64)));
typedef int64_t MaskD __attribute__((vector_size(64)));

inline void hsum4(VecF s0, VecF s1, VecF s2, VecF s3, float* out) {
  const MaskF lo = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
  const MaskF hi = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
  const VecF u = __builtin_shuffle(s0, s1, lo) + __builtin_shuffle(s0, s1, hi);  // 8 lanes of s0, 8 of s1
  const VecF w = __builtin_shuffle(s2, s3, lo) + __builtin_shuffle(s2, s3, hi);
  const MaskF q0 = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
  const MaskF q1 = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
  const VecF x = __builtin_shuffle(u, w, q0) + __builtin_shuffle(u, w, q1);  // 4 lanes each of s0..s3
  const MaskF p2 = {2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13};
  const VecF y = x + __builtin_shuffle(x, p2);
  const MaskF p1 = {1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14};
  const VecF z = y + __builtin_shuffle(y, p1);
  out[0] = z[0];
  out[1] = z[4];
  out[2] = z[8];
  out[3] = z[12];
}

inline void hsum4(VecD s0, VecD s1, VecD s2, VecD s3, double* out) {
  const MaskD lo = {0, 1, 2, 3, 8, 9, 10, 11};
  const MaskD hi = {4, 5, 6, 7, 12, 13, 14, 15};
  const VecD u = __builtin_shuffle(s0, s1, lo) + __builtin_shuffle(s0, s1, hi);  // 4 lanes of s0, 4 of s1
  const VecD w = __builtin_shuffle(s2, s3, lo) + __builtin_shuffle(s2, s3, hi);
  const MaskD q0 = {0, 1, 4, 5, 8, 9, 12, 13};
  const MaskD q1 = {2, 3, 6, 7, 10, 11, 14, 15};
  const VecD x = __builtin_shuffle(u, w, q0) + __builtin_shuffle(u, w, q1);  // 2 lanes each of s0..s3
  const MaskD p1 = {1, 0, 3, 2, 5, 4, 7, 6};
  const VecD z = x + __builtin_shuffle(x, p1);
  out[0] = z[0];
  out[1] = z[2];
  out[2] = z[4];
  out[3] = z[6];
}

// out[j] = a · mat[j, :] for the rows of mat [rows, n]; four rows at a time so the sums run in parallel.
template <typename acc_t, typename A, typename M>
inline void dots(acc_t* __restrict out, const A* __restrict a, const M* __restrict mat, int64_t rows, int64_t n) {
  int64_t j = 0;
  if constexpr (std::is_same_v<acc_t, A> && std::is_same_v<acc_t, M> &&
                (std::is_same_v<acc_t, float> || std::is_same_v<acc_t, double>)) {
    // 64-byte vector partial sums in registers, folded by the shuffle tree hsum4 (omp simd's reduction
    // epilogue goes through the stack lane by lane, which dominates at D = 32).
    typedef acc_t V __attribute__((vector_size(64)));
    constexpr int64_t kLanes = 64 / sizeof(acc_t);
    if (n >= kLanes) {
      for (; j + 4 <= rows; j += 4) {
        const acc_t *m0 = mat + j * n, *m1 = m0 + n, *m2 = m1 + n, *m3 = m2 + n;
        V s0{}, s1{}, s2{}, s3{};
        int64_t d = 0;
        for (; d + kLanes <= n; d += kLanes) {
          V x, r0, r1, r2, r3;
          std::memcpy(&x, a + d, 64);
          std::memcpy(&r0, m0 + d, 64);
          std::memcpy(&r1, m1 + d, 64);
          std::memcpy(&r2, m2 + d, 64);
          std::memcpy(&r3, m3 + d, 64);
          s0 += x * r0;
          s1 += x * r1;
          s2 += x * r2;
          s3 += x * r3;
        }
        acc_t t0 = 0, t1 = 0, t2 = 0, t3 = 0;
        for (; d < n; ++d) {
          t0 += a[d] * m0[d];
          t1 += a[d] * m1[d];
          t2 += a[d] * m2[d];
          t3 += a[d] * m3[d];
        }
        acc_t sums[4];
        hsum4(s0, s1, s2, s3, sums);
        out[j] = sums[0] + t0;
        out[j + 1] = sums[1] + t1;
        out[j + 2] = sums[2] + t2;
        out[j + 3] = sums[3] + t3;
      }
    }
  }
  for (; j + 4 <= rows; j += 4) {
    const M *m0 = mat + j * n, *m1 = m0 + n, *m2 = m1 + n, *m3 = m2 + n;
    acc_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t d = 0; d < n; ++d) {
      const acc_t x = acc_t(a[d]);
      s0 += x * acc_t(m0[d]);
      s1 += x * acc_t(m1[d]);
      s2 += x * acc_t(m2[d]);
      s3 += x * acc_t(m3[d]);
    }
    out[j] = s0;
    out[j + 1] = s1;
    out[j + 2] = s2;
    out[j + 3] = s3;
  }
  for (; j < rows; ++j) out[j] = dot<acc_t>(a, mat + j * n, n);
}

// y[d] += sum_j w[j] * mat[j, d] (mat [rows, n]). For float/double, two 64-byte GCC vector accumulators per
// column block stay in registers across j (an array accumulator would be kept in memory by GCC).
template <typename acc_t, typename M>
inline void combine(acc_t* __restrict y, const acc_t* __restrict w, const M* __restrict mat, int64_t rows, int64_t n) {
  int64_t d0 = 0;
  if constexpr (std::is_same_v<acc_t, M> && (std::is_same_v<acc_t, float> || std::is_same_v<acc_t, double>)) {
    typedef acc_t V __attribute__((vector_size(64)));
    constexpr int64_t kLanes = 64 / sizeof(acc_t);
    for (; d0 + 2 * kLanes <= n; d0 += 2 * kLanes) {
      V a0, a1;
      std::memcpy(&a0, y + d0, 64);
      std::memcpy(&a1, y + d0 + kLanes, 64);
      for (int64_t j = 0; j < rows; ++j) {
        V r0, r1;
        std::memcpy(&r0, mat + j * n + d0, 64);
        std::memcpy(&r1, mat + j * n + d0 + kLanes, 64);
        const acc_t wj = w[j];
        a0 += wj * r0;
        a1 += wj * r1;
      }
      std::memcpy(y + d0, &a0, 64);
      std::memcpy(y + d0 + kLanes, &a1, 64);
    }
    for (; d0 + kLanes <= n; d0 += kLanes) {
      V a0;
      std::memcpy(&a0, y + d0, 64);
      for (int64_t j = 0; j < rows; ++j) {
        V r0;
        std::memcpy(&r0, mat + j * n + d0, 64);
        a0 += w[j] * r0;
      }
      std::memcpy(y + d0, &a0, 64);
    }
  }
  for (int64_t j = 0; j < rows; ++j) axpy(y + d0, w[j], mat + j * n + d0, n - d0);
}

// exp with the vectorisable polynomial of ot_cpu_math.h for float/double; std::exp otherwise.
template <typename acc_t>
inline acc_t exp_of(acc_t x) {
  if constexpr (std::is_same_v<acc_t, float> || std::is_same_v<acc_t, double>) {
    return ot_cpu::fast_exp(x);
  } else {
    return std::exp(x);
  }
}

// out[j] = 0 where dropout drops logit (row, j), else in[j] * keep_scale (out may be in); a copy without dropout.
template <typename acc_t>
inline void apply_dropout(const Params& p, const bool* explicit_mask, uint64_t mask_base, acc_t* out, const acc_t* in,
                          acc_t keep_scale, int64_t Lk) {
  if (p.dropout_mode == kSeededMask) {
#pragma omp simd
    for (int64_t j = 0; j < Lk; ++j)
      out[j] = hash_dropped(p.seed, mask_base + j, kStreamDropout, p.dropout_p) ? acc_t(0) : in[j] * keep_scale;
  } else if (p.dropout_mode == kExplicitMask) {
    for (int64_t j = 0; j < Lk; ++j) out[j] = explicit_mask[mask_base + j] ? acc_t(0) : in[j] * keep_scale;
  } else {
    for (int64_t j = 0; j < Lk; ++j) out[j] = in[j];
  }
}

// Forward of query row (b, i), all heads: prob[h*Lk + j] = softmax weights, weight[h*Lk + j] = after dropout,
// y[h*D + d] = (A·V) concatenated over heads, plus the residual (i.e. the LayerNorm input).
template <typename scalar_t, typename acc_t>
void row_forward(const Params& p, const Views<scalar_t>& x, int64_t b, int64_t i, acc_t* prob, acc_t* weight,
                 acc_t* y) {
  const int64_t H = p.heads, Lq = p.lq, Lk = p.lk, D = p.dim;
  const acc_t scale = acc_t(p.scale), dropkey_value = acc_t(p.dropkey_value), keep_scale = acc_t(p.dropout_scale);
  std::fill(y, y + H * D, acc_t(0));
  for (int64_t h = 0; h < H; ++h) {
    const int64_t bh = b * H + h;
    const scalar_t* qrow = x.q + (bh * Lq + i) * D;
    const scalar_t* kb = x.k + bh * Lk * D;
    const uint64_t mask_base = static_cast<uint64_t>((bh * Lq + i) * Lk);
    acc_t* s = prob + h * Lk;
    acc_t row_max = -INFINITY;
    dots(s, qrow, kb, Lk, D);
    for (int64_t j = 0; j < Lk; ++j) {
      acc_t logit = s[j];
      if (p.has_bias) {
        const acc_t bias = acc_t(x.bias[b * p.bias_stride[0] + h * p.bias_stride[1] + i * p.bias_stride[2] +
                                        j * p.bias_stride[3]]);
        logit = p.bias_before_scale ? (logit + bias) * scale : logit * scale + bias;
      } else {
        logit *= scale;
      }
      s[j] = logit;
    }
    if (p.dropkey_mode == kSeededMask) {
#pragma omp simd
      for (int64_t j = 0; j < Lk; ++j)
        s[j] += hash_dropped(p.seed, mask_base + j, kStreamDropKey, p.dropkey_p) ? dropkey_value : acc_t(0);
    } else if (p.dropkey_mode == kExplicitMask) {
      for (int64_t j = 0; j < Lk; ++j) s[j] += x.dropkey_mask[mask_base + j] ? dropkey_value : acc_t(0);
    }
#pragma omp simd reduction(max : row_max)
    for (int64_t j = 0; j < Lk; ++j) row_max = s[j] > row_max ? s[j] : row_max;
    acc_t total = 0;
#pragma omp simd reduction(+ : total)
    for (int64_t j = 0; j < Lk; ++j) {
      s[j] = exp_of(s[j] - row_max);
      total += s[j];
    }
    const acc_t inv_total = acc_t(1) / total;
    acc_t* w = weight + h * Lk;
    const scalar_t* vb = x.v + bh * Lk * D;
    acc_t* yh = y + h * D;
    for (int64_t j = 0; j < Lk; ++j) s[j] *= inv_total;
    apply_dropout(p, x.dropout_mask, mask_base, w, s, keep_scale, Lk);
    combine(yh, w, vb, Lk, D);
  }
  if (p.has_residual) {
    const scalar_t* r = x.residual + (b * Lq + i) * H * D;
#pragma omp simd
    for (int64_t e = 0; e < H * D; ++e) y[e] += acc_t(r[e]);
  }
}

template <typename scalar_t, typename acc_t>
void forward_rows(const Params& p, const Views<scalar_t>& x, scalar_t* out, acc_t* mean_out, acc_t* rstd_out,
                  acc_t* prob_out, acc_t* y_out, int64_t begin, int64_t end, ChunkScratch<acc_t>& scratch) {
    const int64_t HD = p.heads * p.dim;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / p.lq, i = row % p.lq;
      acc_t* y = scratch.y.data();
      row_forward<scalar_t, acc_t>(p, x, b, i, scratch.prob.data(), scratch.weight.data(), y);
      if (prob_out != nullptr) {  // saved for the backward: softmax weights [B, H, Lq, Lk], LayerNorm input
        for (int64_t h = 0; h < p.heads; ++h)
          std::copy_n(scratch.prob.data() + h * p.lk, p.lk, prob_out + ((b * p.heads + h) * p.lq + i) * p.lk);
        std::copy_n(y, HD, y_out + row * HD);
      }
      scalar_t* o = out + row * HD;
      if (!p.has_ln) {
#pragma omp simd
        for (int64_t e = 0; e < HD; ++e) o[e] = scalar_t(y[e]);
        mean_out[row] = 0;
        rstd_out[row] = 1;
        continue;
      }
      acc_t mean = 0;
#pragma omp simd reduction(+ : mean)
      for (int64_t e = 0; e < HD; ++e) mean += y[e];
      mean /= acc_t(HD);
      acc_t var = 0;
#pragma omp simd reduction(+ : var)
      for (int64_t e = 0; e < HD; ++e) var += (y[e] - mean) * (y[e] - mean);
      var /= acc_t(HD);
      const acc_t rstd = acc_t(1) / std::sqrt(var + acc_t(p.ln_eps));
      const scalar_t* __restrict lw = x.ln_weight;
      const scalar_t* __restrict lb = x.ln_bias;
      if (p.has_ln_bias) {
#pragma omp simd
        for (int64_t e = 0; e < HD; ++e) o[e] = scalar_t((y[e] - mean) * rstd * acc_t(lw[e]) + acc_t(lb[e]));
      } else {
#pragma omp simd
        for (int64_t e = 0; e < HD; ++e) o[e] = scalar_t((y[e] - mean) * rstd * acc_t(lw[e]));
      }
      mean_out[row] = mean;
      rstd_out[row] = rstd;
    }
}

template <typename scalar_t, typename acc_t>
void backward_one_batch(const Params& p, const Views<scalar_t>& x, const scalar_t* grad_out, const acc_t* mean_in,
                        const acc_t* rstd_in, const acc_t* prob_in, const acc_t* y_in, int64_t b, int64_t chunk, const Grads<scalar_t, acc_t>& g,
                        ChunkScratch<acc_t>& s) {
  const int64_t H = p.heads, Lq = p.lq, Lk = p.lk, D = p.dim, HD = H * D;
  const acc_t scale = acc_t(p.scale), keep_scale = acc_t(p.dropout_scale);
  acc_t* dbias = g.dbias == nullptr ? nullptr : g.dbias + (g.bias_shared_over_batch ? chunk * g.dbias_numel : 0);
  acc_t* dln_weight = g.dln_weight == nullptr ? nullptr : g.dln_weight + chunk * HD;
  acc_t* dln_bias = g.dln_bias == nullptr ? nullptr : g.dln_bias + chunk * HD;
  std::fill(s.dk.begin(), s.dk.end(), acc_t(0));
  std::fill(s.dv.begin(), s.dv.end(), acc_t(0));
  for (int64_t i = 0; i < Lq; ++i) {
    const int64_t row = b * Lq + i;
    // The forward's softmax weights and LayerNorm input; dropout weights from the regenerated mask.
    for (int64_t h = 0; h < H; ++h) {
      const int64_t offset = ((b * H + h) * Lq + i) * Lk;
      std::copy_n(prob_in + offset, Lk, s.prob.data() + h * Lk);
      apply_dropout(p, x.dropout_mask, static_cast<uint64_t>(offset), s.weight.data() + h * Lk, s.prob.data() + h * Lk,
                    keep_scale, Lk);
    }
    std::copy_n(y_in + row * HD, HD, s.y.data());
    const scalar_t* go = grad_out + row * HD;
    acc_t* dy = s.dy.data();
    if (p.has_ln) {
      // LayerNorm backward: dy = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = grad_out * ln_weight.
      const acc_t mean = mean_in[row], rstd = rstd_in[row];
      acc_t sum_g = 0, sum_gx = 0;
      const acc_t* __restrict yr = s.y.data();
      const scalar_t* __restrict lw = x.ln_weight;
      if (dln_bias != nullptr) {
#pragma omp simd
        for (int64_t e = 0; e < HD; ++e) dln_bias[e] += acc_t(go[e]);
      }
#pragma omp simd reduction(+ : sum_g, sum_gx)
      for (int64_t e = 0; e < HD; ++e) {
        const acc_t xhat = (yr[e] - mean) * rstd, gout = acc_t(go[e]);
        dln_weight[e] += gout * xhat;
        dy[e] = gout * acc_t(lw[e]);
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
#pragma omp simd
    for (int64_t e = 0; e < HD; ++e) g.dy[row * HD + e] = scalar_t(dy[e]);
    for (int64_t h = 0; h < H; ++h) {
      const int64_t bh = b * H + h;
      const acc_t* prob = s.prob.data() + h * Lk;
      const acc_t* weight = s.weight.data() + h * Lk;
      const acc_t* dout = dy + h * D;
      const scalar_t* qrow = x.q + (bh * Lq + i) * D;
      const scalar_t* kb = x.k + bh * Lk * D;
      const scalar_t* vb = x.v + bh * Lk * D;
      const uint64_t mask_base = static_cast<uint64_t>((bh * Lq + i) * Lk);
      acc_t* dk = s.dk.data() + h * Lk * D;
      acc_t* dv = s.dv.data() + h * Lk * D;
      // d(softmax weight) through dropout, and sum_j p_j dp_j for the softmax backward.
      acc_t* dp = s.dp.data();
      dots(dp, dout, vb, Lk, D);
      acc_t pdp = 0;
      apply_dropout(p, x.dropout_mask, mask_base, dp, dp, keep_scale, Lk);
      for (int64_t j = 0; j < Lk; ++j) {
        if (weight[j] != acc_t(0)) axpy(dv + j * D, weight[j], dout, D);
        pdp += prob[j] * dp[j];
      }
      for (int64_t j = 0; j < Lk; ++j) {
        const acc_t dlogit = prob[j] * (dp[j] - pdp);  // d loss / d (scaled logit incl. bias)
        const acc_t dqk = dlogit * scale;
        if (dbias != nullptr)
          dbias[b * g.dbias_stride[0] + h * g.dbias_stride[1] + i * g.dbias_stride[2] + j * g.dbias_stride[3]] +=
              p.bias_before_scale ? dqk : dlogit;
        dp[j] = dqk;  // from here on dp holds d loss / d (q · k_j)
        if (dqk != acc_t(0)) axpy(dk + j * D, dqk, qrow, D);
      }
      std::fill(s.dq.begin(), s.dq.end(), acc_t(0));
      combine(s.dq.data(), dp, kb, Lk, D);
      scalar_t* dq_out = g.dq + (bh * Lq + i) * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) dq_out[d] = scalar_t(s.dq[d]);
    }
  }
  const int64_t kv_numel = H * Lk * D;
#pragma omp simd
  for (int64_t e = 0; e < kv_numel; ++e) {
    g.dk[b * kv_numel + e] = scalar_t(s.dk[e]);
    g.dv[b * kv_numel + e] = scalar_t(s.dv[e]);
  }
}

template <typename scalar_t, typename acc_t>
void backward_batches(const Params& p, const Views<scalar_t>& x, const scalar_t* grad_out, const acc_t* mean_in,
                      const acc_t* rstd_in, const acc_t* prob_in, const acc_t* y_in, int64_t begin, int64_t end, int64_t chunk, const Grads<scalar_t, acc_t>& g,
                      ChunkScratch<acc_t>& scratch) {
  for (int64_t b = begin; b < end; ++b)
    backward_one_batch<scalar_t, acc_t>(p, x, grad_out, mean_in, rstd_in, prob_in, y_in, b, chunk, g, scratch);
}
