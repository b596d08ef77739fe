// The arithmetic of the CPU lcd_attention kernels: per (batch, head) tile GEMMs, softmax, LayerNorm. No include
// guard on purpose: lcd_attention.cpp includes this file once per instruction set (default, AVX2+FMA, AVX-512)
// inside its own namespace and `#pragma GCC target` region, and picks one at run time; the types it uses (Params,
// Views, ChunkScratch, Grads) are defined there before the inclusion.

// 64-byte GCC vectors (one AVX-512 register; two or four narrower ones under the other ISA variants).
// (Specialised per type: GCC drops vector_size on a dependent alias template.)
template <typename T>
struct Vec64Of;
template <>
struct Vec64Of<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct Vec64Of<double> {
  typedef double type __attribute__((vector_size(64)));
};
template <typename T>
using Vec64 = typename Vec64Of<T>::type;

template <typename T>
inline Vec64<T> load64(const T* p) {
  static_assert(sizeof(Vec64<T>) == 64);
  Vec64<T> v;
  std::memcpy(&v, p, 64);
  return v;
}

template <typename T>
inline void store64(T* p, const Vec64<T>& v) {
  std::memcpy(p, &v, 64);
}

// Lanes of a 64-byte vector of T; the padded sizes of the scratch tiles are multiples of it.
template <typename T>
constexpr int64_t lanes() {
  return 64 / sizeof(T);
}

// C[m, n] = sum_k A(m, k) * B[k * ldb + n] for m < M, n < N, where A(m, k) = A[m * a_rs + k * a_cs] (so A or its
// transpose) and N is a multiple of lanes<T>() (B and C are padded scratch tiles). Register block: 4 rows of C by
// 2 vectors, so each k step loads 2 vectors of B and broadcasts 4 scalars of A for 8 fused multiply-adds.
template <typename T>
inline void gemm(int64_t M, int64_t N, int64_t K, const T* __restrict A, int64_t a_rs, int64_t a_cs,
                 const T* __restrict B, int64_t ldb, T* __restrict C, int64_t ldc) {
  using V = Vec64<T>;
  constexpr int64_t L = lanes<T>();
  int64_t n = 0;
  for (; n + 2 * L <= N; n += 2 * L) {
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) {
      const T *a0 = A + m * a_rs, *a1 = a0 + a_rs, *a2 = a1 + a_rs, *a3 = a2 + a_rs;
      V c00{}, c01{}, c10{}, c11{}, c20{}, c21{}, c30{}, c31{};
      for (int64_t k = 0; k < K; ++k) {
        const V b0 = load64(B + k * ldb + n), b1 = load64(B + k * ldb + n + L);
        const T x0 = a0[k * a_cs], x1 = a1[k * a_cs], x2 = a2[k * a_cs], x3 = a3[k * a_cs];
        c00 += x0 * b0;
        c01 += x0 * b1;
        c10 += x1 * b0;
        c11 += x1 * b1;
        c20 += x2 * b0;
        c21 += x2 * b1;
        c30 += x3 * b0;
        c31 += x3 * b1;
      }
      T* c = C + m * ldc + n;
      store64(c, c00);
      store64(c + L, c01);
      store64(c + ldc, c10);
      store64(c + ldc + L, c11);
      store64(c + 2 * ldc, c20);
      store64(c + 2 * ldc + L, c21);
      store64(c + 3 * ldc, c30);
      store64(c + 3 * ldc + L, c31);
    }
    for (; m < M; ++m) {
      const T* a0 = A + m * a_rs;
      V c00{}, c01{};
      for (int64_t k = 0; k < K; ++k) {
        const T x0 = a0[k * a_cs];
        c00 += x0 * load64(B + k * ldb + n);
        c01 += x0 * load64(B + k * ldb + n + L);
      }
      store64(C + m * ldc + n, c00);
      store64(C + m * ldc + n + L, c01);
    }
  }
  for (; n < N; n += L) {
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) {
      const T *a0 = A + m * a_rs, *a1 = a0 + a_rs, *a2 = a1 + a_rs, *a3 = a2 + a_rs;
      V c0{}, c1{}, c2{}, c3{};
      for (int64_t k = 0; k < K; ++k) {
        const V b0 = load64(B + k * ldb + n);
        c0 += a0[k * a_cs] * b0;
        c1 += a1[k * a_cs] * b0;
        c2 += a2[k * a_cs] * b0;
        c3 += a3[k * a_cs] * b0;
      }
      store64(C + m * ldc + n, c0);
      store64(C + (m + 1) * ldc + n, c1);
      store64(C + (m + 2) * ldc + n, c2);
      store64(C + (m + 3) * ldc + n, c3);
    }
    for (; m < M; ++m) {
      const T* a0 = A + m * a_rs;
      V c0{};
      for (int64_t k = 0; k < K; ++k) c0 += a0[k * a_cs] * load64(B + k * ldb + n);
      store64(C + m * ldc + n, c0);
    }
  }
}

// dst[r * ld + c] = src[r * src_ld + c] (rows x cols, converted to acc_t); the padding columns of dst are left alone.
template <typename acc_t, typename scalar_t>
inline void pack_rows(acc_t* __restrict dst, int64_t ld, const scalar_t* __restrict src, int64_t src_ld, int64_t rows,
                      int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) dst[r * ld + c] = acc_t(src[r * src_ld + c]);
  }
}

// dst[c * ld + r] = src[r * src_ld + c]: the transpose of a rows x cols tile.
template <typename acc_t, typename scalar_t>
inline void pack_transposed(acc_t* __restrict dst, int64_t ld, const scalar_t* __restrict src, int64_t src_ld,
                            int64_t rows, int64_t cols) {
  for (int64_t c = 0; c < cols; ++c) {
#pragma omp simd
    for (int64_t r = 0; r < rows; ++r) dst[c * ld + r] = acc_t(src[r * src_ld + c]);
  }
}

// Sum and maximum of the lanes of a 64-byte vector by a shuffle tree (an omp simd reduction's epilogue goes
// through the stack lane by lane, which dominates for rows of a few dozen entries).
typedef int32_t Mask32 __attribute__((vector_size(64)));
typedef int64_t Mask64 __attribute__((vector_size(64)));

template <typename V, typename Op>
inline auto reduce_lanes(V v, Op op) {
  if constexpr (sizeof(v[0]) == 4) {
    v = op(v, __builtin_shuffle(v, Mask32{8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7}));
    v = op(v, __builtin_shuffle(v, Mask32{4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11}));
    v = op(v, __builtin_shuffle(v, Mask32{2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13}));
    v = op(v, __builtin_shuffle(v, Mask32{1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14}));
  } else {
    v = op(v, __builtin_shuffle(v, Mask64{4, 5, 6, 7, 0, 1, 2, 3}));
    v = op(v, __builtin_shuffle(v, Mask64{2, 3, 0, 1, 6, 7, 4, 5}));
    v = op(v, __builtin_shuffle(v, Mask64{1, 0, 3, 2, 5, 4, 7, 6}));
  }
  return v[0];
}

// exp with the vectorisable polynomial of cpu_math.h for float/double; std::exp otherwise.
template <typename acc_t>
inline acc_t exp_of(acc_t x) {
  if constexpr (std::is_same_v<acc_t, float> || std::is_same_v<acc_t, double>) {
    return cpu_math::fast_exp(x);
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

// A rows x cols tile of acc_t with rows ld = padded(cols) apart, from source rows src_ld apart: the input itself
// where it already is one (same type, rows contiguous and a whole number of vectors), else a packed copy in dst
// (so a head of a [B, L, H, D] layout is gathered here, in cache, rather than copied whole beforehand).
template <typename acc_t, typename scalar_t>
inline const acc_t* tile_rows(acc_t* dst, int64_t ld, const scalar_t* src, int64_t src_ld, int64_t rows,
                              int64_t cols) {
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    if (ld == cols && src_ld == cols) return src;
  }
  pack_rows(dst, ld, src, src_ld, rows, cols);
  return dst;
}

// Row 0 of head h of batch entry b of a [B, H, L, D] input with strides (batch, head, row) and unit columns.
template <typename scalar_t>
inline const scalar_t* head_rows(const scalar_t* base, const int64_t (&stride)[3], int64_t b, int64_t h) {
  return base + b * stride[0] + h * stride[1];
}

// Where a GEMM writes a result tile of rows ld wide meant for out (rows of cols entries, out_ld apart): out itself
// where the types match and the tile's rows are out's rows (ld == cols == out_ld), else the scratch tile (copied
// out by store_rows).
template <typename acc_t, typename scalar_t>
inline acc_t* result_tile(acc_t* scratch, int64_t ld, scalar_t* out, int64_t out_ld, int64_t cols) {
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    if (ld == cols && out_ld == cols) return out;
  }
  return scratch;
}

// dst[i] = scalar_t(src[i]) for i < n. float -> bfloat16 is written out with integer operations (round to nearest
// even; a NaN stays the quiet NaN 0x7FC0), the bits c10::BFloat16's constructor gives, because that constructor
// branches on NaN, which keeps GCC from vectorising the loop (the scalar stores took ~17% of a bfloat16 forward).
template <typename scalar_t, typename acc_t>
inline void store_converted(scalar_t* __restrict dst, const acc_t* __restrict src, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16> && std::is_same_v<acc_t, float>) {
    uint16_t* out = reinterpret_cast<uint16_t*>(dst);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      uint32_t u;
      std::memcpy(&u, src + i, sizeof(u));
      const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
      out[i] = static_cast<uint16_t>(src[i] != src[i] ? 0x7FC0u : rounded);
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) dst[i] = scalar_t(src[i]);
  }
}

template <typename acc_t, typename scalar_t>
inline void store_rows(scalar_t* __restrict out, int64_t out_ld, const acc_t* tile, int64_t ld, int64_t rows,
                       int64_t cols) {
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    if (tile == out) return;
  }
  for (int64_t r = 0; r < rows; ++r) store_converted(out + r * out_ld, tile + r * ld, cols);
}

// [op-reduction of s0, ..., of s3] (op associative and commutative: + or max) of four 64-byte vectors by a tree
// of lane shuffles; hsum4 for sums.
typedef float VecF __attribute__((vector_size(64)));
typedef double VecD __attribute__((vector_size(64)));
typedef int32_t MaskF __attribute__((vector_size(64)));
typedef int64_t MaskD __attribute__((vector_size(64)));

template <typename Op>
inline void reduce4(VecF s0, VecF s1, VecF s2, VecF s3, float* out, Op op) {
  const MaskF lo = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
  const MaskF hi = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
  const VecF u = op(__builtin_shuffle(s0, s1, lo), __builtin_shuffle(s0, s1, hi));  // 8 lanes of s0, 8 of s1
  const VecF w = op(__builtin_shuffle(s2, s3, lo), __builtin_shuffle(s2, s3, hi));
  const MaskF q0 = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
  const MaskF q1 = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
  const VecF x = op(__builtin_shuffle(u, w, q0), __builtin_shuffle(u, w, q1));  // 4 lanes each of s0..s3
  const MaskF p2 = {2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13};
  const VecF y = op(x, __builtin_shuffle(x, p2));
  const MaskF p1 = {1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14};
  const VecF z = op(y, __builtin_shuffle(y, p1));
  out[0] = z[0];
  out[1] = z[4];
  out[2] = z[8];
  out[3] = z[12];
}

template <typename Op>
inline void reduce4(VecD s0, VecD s1, VecD s2, VecD s3, double* out, Op op) {
  const MaskD lo = {0, 1, 2, 3, 8, 9, 10, 11};
  const MaskD hi = {4, 5, 6, 7, 12, 13, 14, 15};
  const VecD u = op(__builtin_shuffle(s0, s1, lo), __builtin_shuffle(s0, s1, hi));  // 4 lanes of s0, 4 of s1
  const VecD w = op(__builtin_shuffle(s2, s3, lo), __builtin_shuffle(s2, s3, hi));
  const MaskD q0 = {0, 1, 4, 5, 8, 9, 12, 13};
  const MaskD q1 = {2, 3, 6, 7, 10, 11, 14, 15};
  const VecD x = op(__builtin_shuffle(u, w, q0), __builtin_shuffle(u, w, q1));  // 2 lanes each of s0..s3
  const MaskD p1 = {1, 0, 3, 2, 5, 4, 7, 6};
  const VecD z = op(x, __builtin_shuffle(x, p1));
  out[0] = z[0];
  out[1] = z[2];
  out[2] = z[4];
  out[3] = z[6];
}

template <typename V, typename T>
inline void hsum4(V s0, V s1, V s2, V s3, T* out) {
  reduce4(s0, s1, s2, s3, out, [](V a, V b) { return a + b; });
}

// C[m, n] = A[m * lda, :K] · B[n * ldb, :K] for m < M, n < N, K a multiple of lanes<T>() (rows zero-padded): the
// form of Q Kᵀ for long rows (D large against Lk), where transposing B would cost more than the horizontal sums.
// Register block: 2 rows of A by 4 rows of B.
template <typename T>
inline void gemm_nt(int64_t M, int64_t N, int64_t K, const T* __restrict A, int64_t lda, const T* __restrict B,
                    int64_t ldb, T* __restrict C, int64_t ldc) {
  using V = Vec64<T>;
  constexpr int64_t L = lanes<T>();
  for (int64_t m = 0; m < M; m += 2) {
    const bool two = m + 1 < M;
    const T* a0 = A + m * lda;
    const T* a1 = two ? a0 + lda : a0;
    int64_t n = 0;
    for (; n + 4 <= N; n += 4) {
      const T *b0 = B + n * ldb, *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb;
      V s00{}, s01{}, s02{}, s03{}, s10{}, s11{}, s12{}, s13{};
      for (int64_t k = 0; k < K; k += L) {
        const V x0 = load64(a0 + k), x1 = load64(a1 + k);
        const V y0 = load64(b0 + k), y1 = load64(b1 + k), y2 = load64(b2 + k), y3 = load64(b3 + k);
        s00 += x0 * y0;
        s01 += x0 * y1;
        s02 += x0 * y2;
        s03 += x0 * y3;
        s10 += x1 * y0;
        s11 += x1 * y1;
        s12 += x1 * y2;
        s13 += x1 * y3;
      }
      hsum4(s00, s01, s02, s03, C + m * ldc + n);
      if (two) hsum4(s10, s11, s12, s13, C + (m + 1) * ldc + n);
    }
    for (; n < N; ++n) {
      const T* b0 = B + n * ldb;
      V s0{}, s1{};
      for (int64_t k = 0; k < K; k += L) {
        const V y0 = load64(b0 + k);
        s0 += load64(a0 + k) * y0;
        s1 += load64(a1 + k) * y0;
      }
      C[m * ldc + n] = reduce_lanes(s0, [](V a, V b) { return a + b; });
      if (two) C[(m + 1) * ldc + n] = reduce_lanes(s1, [](V a, V b) { return a + b; });
    }
  }
}

// Whether products A Bᵀ over D (Q Kᵀ, dO Vᵀ) go through row dot products (gemm_nt) rather than a transposed copy
// of B and gemm: measured faster at HeLo's three shapes (D = 32 with Lk = 18, 36; D = 128 with Lk = 10); the
// transposed path is kept for short rows against many keys.
inline bool use_row_dots(int64_t D, int64_t Lk_padded) { return 2 * D >= Lk_padded; }

// Softmax of row[0, Lk) in place, computed over whole vectors of the padded row [0, Lkp) with the padding set
// to -inf (so it becomes 0).
template <typename acc_t>
inline void softmax_row(acc_t* __restrict row, int64_t Lk, int64_t Lkp) {
  using V = Vec64<acc_t>;
  constexpr int64_t L = lanes<acc_t>();
  for (int64_t j = Lk; j < Lkp; ++j) row[j] = -INFINITY;
  V m = load64(row);
  for (int64_t c = L; c < Lkp; c += L) {
    const V x = load64(row + c);
    m = x > m ? x : m;
  }
  const acc_t row_max = reduce_lanes(m, [](V a, V b) { return a > b ? a : b; });
#pragma omp simd
  for (int64_t j = 0; j < Lkp; ++j) row[j] = exp_of(row[j] - row_max);
  V t = load64(row);
  for (int64_t c = L; c < Lkp; c += L) t += load64(row + c);
  const acc_t inv_total = acc_t(1) / reduce_lanes(t, [](V a, V b) { return a + b; });
#pragma omp simd
  for (int64_t j = 0; j < Lkp; ++j) row[j] *= inv_total;
}

// softmax_row for each row of S [rows, Lkp], four rows at a time so that one shuffle tree (reduce4) folds the
// four row maxima and one the four row sums.
template <typename acc_t>
inline void softmax_rows(acc_t* __restrict S, int64_t rows, int64_t Lk, int64_t Lkp) {
  using V = Vec64<acc_t>;
  constexpr int64_t L = lanes<acc_t>();
  const auto vmax = [](V a, V b) { return a > b ? a : b; };
  int64_t i = 0;
  for (; i + 4 <= rows; i += 4) {
    acc_t *r0 = S + i * Lkp, *r1 = r0 + Lkp, *r2 = r1 + Lkp, *r3 = r2 + Lkp;
    for (int64_t j = Lk; j < Lkp; ++j) r0[j] = r1[j] = r2[j] = r3[j] = -INFINITY;
    V m0 = load64(r0), m1 = load64(r1), m2 = load64(r2), m3 = load64(r3);
    for (int64_t c = L; c < Lkp; c += L) {
      m0 = vmax(m0, load64(r0 + c));
      m1 = vmax(m1, load64(r1 + c));
      m2 = vmax(m2, load64(r2 + c));
      m3 = vmax(m3, load64(r3 + c));
    }
    acc_t row_max[4], total[4];
    reduce4(m0, m1, m2, m3, row_max, vmax);
    acc_t* r[4] = {r0, r1, r2, r3};
    for (int k = 0; k < 4; ++k) {
      acc_t* __restrict row = r[k];
      const acc_t mk = row_max[k];
#pragma omp simd
      for (int64_t j = 0; j < Lkp; ++j) row[j] = exp_of(row[j] - mk);
    }
    V t0 = load64(r0), t1 = load64(r1), t2 = load64(r2), t3 = load64(r3);
    for (int64_t c = L; c < Lkp; c += L) {
      t0 += load64(r0 + c);
      t1 += load64(r1 + c);
      t2 += load64(r2 + c);
      t3 += load64(r3 + c);
    }
    hsum4(t0, t1, t2, t3, total);
    for (int k = 0; k < 4; ++k) {
      acc_t* __restrict row = r[k];
      const acc_t inv_total = acc_t(1) / total[k];
#pragma omp simd
      for (int64_t j = 0; j < Lkp; ++j) row[j] *= inv_total;
    }
  }
  for (; i < rows; ++i) softmax_row(S + i * Lkp, Lk, Lkp);
}

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
        if (p.dropkey_mode == kSeededMask) {
#pragma omp simd
          for (int64_t j = 0; j < Lk; ++j)
            sr[j] = hash_dropped(p.seed, mask_base + j, kStreamDropKey, p.dropkey_p) ? dropkey_value : sr[j];
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
      if (D == Dp) {  // O = W V straight into the head's columns of y
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
        apply_dropout(p, x.dropout_mask, static_cast<uint64_t>(offset), s.w.data() + i * Lkp, P + i * Lkp,
                      keep_scale, Lk);
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
      Vec64<acc_t> t = load64(prob) * load64(dp);
      for (int64_t c = lanes<acc_t>(); c < Lkp; c += lanes<acc_t>()) t += load64(prob + c) * load64(dp + c);
      const acc_t pdp = reduce_lanes(t, [](Vec64<acc_t> a, Vec64<acc_t> b) { return a + b; });
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
