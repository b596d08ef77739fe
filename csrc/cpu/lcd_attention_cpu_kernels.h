// The arithmetic of the CPU lcd_attention kernels: per (batch, head) tile GEMMs, softmax, LayerNorm. No include
// guard on purpose: lcd_attention.cpp includes this file once per instruction set (default, AVX2+FMA, AVX-512)
// inside its own namespace and target region, with HF_VEC_BYTES set to that instruction set's register width, and
// picks one at run time; the types it uses (Params, Views, ChunkScratch, Grads) are defined there before.

// GCC vectors of HF_VEC_BYTES bytes: one register of the region's instruction set (16: SSE2 / NEON, 32: AVX2, 64:
// AVX-512). A wider vector than the registers is split into pieces kept on the stack (measured: the AVX2 copy of
// the tile GEMM's inner loop was 285 instructions, 240 of them stack operands, with 64-byte vectors); the includer
// turns -Wvector-operation-performance into an error so that such a mismatch cannot come back.
// (Specialised per type: GCC drops vector_size on a dependent alias template.)
static_assert(HF_VEC_BYTES == 16 || HF_VEC_BYTES == 32 || HF_VEC_BYTES == 64);
template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(HF_VEC_BYTES)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(HF_VEC_BYTES)));
};
template <typename T>
using Vec = typename VecOf<T>::type;

template <typename T>
HF_INLINE Vec<T> load_vec(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
HF_INLINE void store_vec(T* p, const Vec<T>& v) {
  std::memcpy(p, &v, sizeof(v));
}

// Lanes of a vector of T; the padded sizes of the scratch tiles are multiples of it.
template <typename T>
constexpr int64_t lanes() {
  return HF_VEC_BYTES / sizeof(T);
}

// C[m, n] = sum_k A(m, k) * B[k * ldb + n] for m < M, n < N, where A(m, k) = A[m * a_rs + k * a_cs] (so A or its
// transpose) and N is a multiple of lanes<T>() (B and C are padded scratch tiles). Register block: 4 rows of C by
// 2 vectors, so each k step loads 2 vectors of B and broadcasts 4 scalars of A for 8 fused multiply-adds.
template <typename T>
inline void gemm(int64_t M, int64_t N, int64_t K, const T* __restrict A, int64_t a_rs, int64_t a_cs,
                 const T* __restrict B, int64_t ldb, T* __restrict C, int64_t ldc) {
  using V = Vec<T>;
  constexpr int64_t L = lanes<T>();
  int64_t n = 0;
  for (; n + 2 * L <= N; n += 2 * L) {
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) {
      const T *a0 = A + m * a_rs, *a1 = a0 + a_rs, *a2 = a1 + a_rs, *a3 = a2 + a_rs;
      V c00{}, c01{}, c10{}, c11{}, c20{}, c21{}, c30{}, c31{};
      for (int64_t k = 0; k < K; ++k) {
        const V b0 = load_vec(B + k * ldb + n), b1 = load_vec(B + k * ldb + n + L);
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
      store_vec(c, c00);
      store_vec(c + L, c01);
      store_vec(c + ldc, c10);
      store_vec(c + ldc + L, c11);
      store_vec(c + 2 * ldc, c20);
      store_vec(c + 2 * ldc + L, c21);
      store_vec(c + 3 * ldc, c30);
      store_vec(c + 3 * ldc + L, c31);
    }
    for (; m < M; ++m) {
      const T* a0 = A + m * a_rs;
      V c00{}, c01{};
      for (int64_t k = 0; k < K; ++k) {
        const T x0 = a0[k * a_cs];
        c00 += x0 * load_vec(B + k * ldb + n);
        c01 += x0 * load_vec(B + k * ldb + n + L);
      }
      store_vec(C + m * ldc + n, c00);
      store_vec(C + m * ldc + n + L, c01);
    }
  }
  for (; n < N; n += L) {
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) {
      const T *a0 = A + m * a_rs, *a1 = a0 + a_rs, *a2 = a1 + a_rs, *a3 = a2 + a_rs;
      V c0{}, c1{}, c2{}, c3{};
      for (int64_t k = 0; k < K; ++k) {
        const V b0 = load_vec(B + k * ldb + n);
        c0 += a0[k * a_cs] * b0;
        c1 += a1[k * a_cs] * b0;
        c2 += a2[k * a_cs] * b0;
        c3 += a3[k * a_cs] * b0;
      }
      store_vec(C + m * ldc + n, c0);
      store_vec(C + (m + 1) * ldc + n, c1);
      store_vec(C + (m + 2) * ldc + n, c2);
      store_vec(C + (m + 3) * ldc + n, c3);
    }
    for (; m < M; ++m) {
      const T* a0 = A + m * a_rs;
      V c0{};
      for (int64_t k = 0; k < K; ++k) c0 += a0[k * a_cs] * load_vec(B + k * ldb + n);
      store_vec(C + m * ldc + n, c0);
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

// Shuffle trees over the lanes of a vector (an omp simd reduction's epilogue goes through the stack lane by lane,
// which dominates for rows of a few dozen entries). Each shuffle has constant indices: one instruction.
template <typename V>
constexpr std::size_t lane_count() {
  return sizeof(V) / sizeof(std::remove_cvref_t<decltype(std::declval<V>()[0])>);
}

// v with lane i replaced by lane i ^ Dist (Dist a power of two): adjacent blocks of Dist lanes swapped.
template <std::size_t Dist, typename V, std::size_t... I>
HF_INLINE V swap_lane_blocks(V v, std::index_sequence<I...>) {
  return __builtin_shufflevector(v, v, static_cast<int>(I ^ Dist)...);
}

// Lane i of the result is lane lane_of(i) of the concatenation of a and b (lanes [0, N) of a, [N, 2N) of b).
template <typename V, typename LaneOf, std::size_t... I>
HF_INLINE V shuffle_pair(V a, V b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, static_cast<int>(LaneOf::of(I))...);
}

// The two reductions, as named function objects rather than lambdas: a lambda in a function template gets its
// closure type when the template is instantiated, after the target region has closed, so it would be compiled (and
// return its vector) for the baseline ISA.
struct VecSum {
  template <typename V>
  HF_INLINE V operator()(V a, V b) const {
    return a + b;
  }
};
struct VecMax {
  template <typename V>
  HF_INLINE V operator()(V a, V b) const {
    return a > b ? a : b;
  }
};

// op over all lanes of v: halves, then quarters, ... (with 16 float lanes: lanes 8-15 onto 0-7, 4-7 onto 0-3, ...).
template <typename V, typename Op, std::size_t Dist = lane_count<V>() / 2>
HF_INLINE auto reduce_lanes(V v, Op op) {
  if constexpr (Dist == 0) {
    return v[0];
  } else {
    return reduce_lanes<V, Op, Dist / 2>(op(v, swap_lane_blocks<Dist>(v, std::make_index_sequence<lane_count<V>()>())),
                                         op);
  }
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
inline void apply_dropout(const Params& p, const bool* explicit_mask, uint64_t mask_base, acc_t* out,
                          const acc_t* in, acc_t keep_scale, int64_t Lk) {
  if (p.dropout_mode == kSeededMask) {
    // The integer form of the mask test (mask_threshold) and the weight times 0 or keep_scale, as the reference
    // multiplies by the mask: as `hash_dropped(...) ? 0 : in[j] * keep_scale` (a float compare, a select after a
    // multiply) GCC 12 vectorized the loop only with AVX-512's masks; the AVX2 and SSE2 copies ran scalar (~5 ns an
    // element, 40% of a transformer-shape forward+backward at p = 0.5). The index is taken mod 2^32, as the hash does.
    const uint32_t seed = p.seed, base = static_cast<uint32_t>(mask_base), threshold = mask_threshold(p.dropout_p);
#pragma omp simd
    for (int64_t j = 0; j < Lk; ++j)
      out[j] = in[j] * (hash_below(seed, base + static_cast<uint32_t>(j), kStreamDropout, threshold) ? acc_t(0)
                                                                                                    : keep_scale);
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

// [op-reduction of s0, ..., of s3] (op associative and commutative: + or max) of four vectors of N lanes by a tree
// of shuffles: fold each vector's halves while pairing s0 with s1 and s2 with s3 (u, w: N/2 lanes of each), then the
// quarters of u and w into one vector (N/4 lanes of each of s0..s3), then within each quarter; hsum4 for sums.
template <std::size_t N, bool High>
struct HalvesOf {  // lanes [0, N/2) (High: [N/2, N)) of a, then the same of b
  static constexpr std::size_t of(std::size_t i) { return (i < N / 2 ? i : N + i - N / 2) + (High ? N / 2 : 0); }
};
template <std::size_t N, bool High>
struct QuartersOf {  // quarters 0 and 2 (High: 1 and 3) of a, then of b
  static constexpr std::size_t of(std::size_t i) {
    const std::size_t quarter = i / (N / 4), offset = i % (N / 4);
    return (quarter / 2) * N + (quarter % 2) * (N / 2) + offset + (High ? N / 4 : 0);
  }
};

template <typename V, typename T, typename Op>
HF_INLINE void reduce4(V s0, V s1, V s2, V s3, T* out, Op op) {
  constexpr std::size_t N = lane_count<V>();
  const auto lanes_seq = std::make_index_sequence<N>();
  const V u = op(shuffle_pair<V, HalvesOf<N, false>>(s0, s1, lanes_seq),
                 shuffle_pair<V, HalvesOf<N, true>>(s0, s1, lanes_seq));
  const V w = op(shuffle_pair<V, HalvesOf<N, false>>(s2, s3, lanes_seq),
                 shuffle_pair<V, HalvesOf<N, true>>(s2, s3, lanes_seq));
  if constexpr (N == 2) {
    out[0] = u[0];
    out[1] = u[1];
    out[2] = w[0];
    out[3] = w[1];
  } else {
    V x = op(shuffle_pair<V, QuartersOf<N, false>>(u, w, lanes_seq),
             shuffle_pair<V, QuartersOf<N, true>>(u, w, lanes_seq));
    if constexpr (N / 8 >= 1) x = op(x, swap_lane_blocks<N / 8>(x, lanes_seq));
    if constexpr (N / 16 >= 1) x = op(x, swap_lane_blocks<N / 16>(x, lanes_seq));
    for (int k = 0; k < 4; ++k) out[k] = x[k * (N / 4)];
  }
}

template <typename V, typename T>
HF_INLINE void hsum4(V s0, V s1, V s2, V s3, T* out) {
  reduce4(s0, s1, s2, s3, out, VecSum());
}

// C[m, n] = A[m * lda, :K] · B[n * ldb, :K] for m < M, n < N, K a multiple of lanes<T>() (rows zero-padded): the
// form of Q Kᵀ for long rows (D large against Lk), where transposing B would cost more than the horizontal sums.
// Register block: 2 rows of A by 4 rows of B.
template <typename T>
inline void gemm_nt(int64_t M, int64_t N, int64_t K, const T* __restrict A, int64_t lda, const T* __restrict B,
                    int64_t ldb, T* __restrict C, int64_t ldc) {
  using V = Vec<T>;
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
        const V x0 = load_vec(a0 + k), x1 = load_vec(a1 + k);
        const V y0 = load_vec(b0 + k), y1 = load_vec(b1 + k), y2 = load_vec(b2 + k), y3 = load_vec(b3 + k);
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
        const V y0 = load_vec(b0 + k);
        s0 += load_vec(a0 + k) * y0;
        s1 += load_vec(a1 + k) * y0;
      }
      C[m * ldc + n] = reduce_lanes(s0, VecSum());
      if (two) C[(m + 1) * ldc + n] = reduce_lanes(s1, VecSum());
    }
  }
}

// Whether products A Bᵀ over D (Q Kᵀ, dO Vᵀ) go through row dot products (gemm_nt) rather than a transposed copy
// of B and gemm: measured faster at HeLo's three shapes (D = 32 with Lk = 18, 36; D = 128 with Lk = 10) on each
// tier (AVX-512, AVX2, SSE2; float32 fwd+bwd, B=128: 1.03-1.07x at ca / transformer, 1.21-1.23x at lcd_ca); the
// transposed path is kept for short rows against many keys. (All products stay on these tiles: MKL per tile or as
// whole-batch bmm was measured slower at equal vector width; docs/performance.md, "Tiles or the vendor BLAS".)
inline bool use_row_dots(int64_t D, int64_t Lk_padded) { return 2 * D >= Lk_padded; }

// Softmax of row[0, Lk) in place, computed over whole vectors of the padded row [0, Lkp) with the padding set
// to -inf (so it becomes 0).
template <typename acc_t>
inline void softmax_row(acc_t* __restrict row, int64_t Lk, int64_t Lkp) {
  using V = Vec<acc_t>;
  constexpr int64_t L = lanes<acc_t>();
  for (int64_t j = Lk; j < Lkp; ++j) row[j] = -INFINITY;
  V m = load_vec(row);
  for (int64_t c = L; c < Lkp; c += L) {
    const V x = load_vec(row + c);
    m = x > m ? x : m;
  }
  const acc_t row_max = reduce_lanes(m, VecMax());
#pragma omp simd
  for (int64_t j = 0; j < Lkp; ++j) row[j] = exp_of(row[j] - row_max);
  V t = load_vec(row);
  for (int64_t c = L; c < Lkp; c += L) t += load_vec(row + c);
  const acc_t inv_total = acc_t(1) / reduce_lanes(t, VecSum());
#pragma omp simd
  for (int64_t j = 0; j < Lkp; ++j) row[j] *= inv_total;
}

// softmax_row for each row of S [rows, Lkp], four rows at a time so that one shuffle tree (reduce4) folds the
// four row maxima and one the four row sums.
template <typename acc_t>
inline void softmax_rows(acc_t* __restrict S, int64_t rows, int64_t Lk, int64_t Lkp) {
  using V = Vec<acc_t>;
  constexpr int64_t L = lanes<acc_t>();
  constexpr VecMax vmax{};
  int64_t i = 0;
  for (; i + 4 <= rows; i += 4) {
    acc_t *r0 = S + i * Lkp, *r1 = r0 + Lkp, *r2 = r1 + Lkp, *r3 = r2 + Lkp;
    for (int64_t j = Lk; j < Lkp; ++j) r0[j] = r1[j] = r2[j] = r3[j] = -INFINITY;
    V m0 = load_vec(r0), m1 = load_vec(r1), m2 = load_vec(r2), m3 = load_vec(r3);
    for (int64_t c = L; c < Lkp; c += L) {
      m0 = vmax(m0, load_vec(r0 + c));
      m1 = vmax(m1, load_vec(r1 + c));
      m2 = vmax(m2, load_vec(r2 + c));
      m3 = vmax(m3, load_vec(r3 + c));
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
    V t0 = load_vec(r0), t1 = load_vec(r1), t2 = load_vec(r2), t3 = load_vec(r3);
    for (int64_t c = L; c < Lkp; c += L) {
      t0 += load_vec(r0 + c);
      t1 += load_vec(r1 + c);
      t2 += load_vec(r2 + c);
      t3 += load_vec(r3 + c);
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
