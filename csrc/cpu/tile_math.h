// Vector tiles for the CPU kernels: GCC vectors of one instruction set's register width, register-blocked tile
// GEMMs (gemm, gemm_nt), packing and storing tiles in the accumulation type, shuffle-tree reductions over lanes,
// and softmax over padded rows. No include guard on purpose: it is included once per instruction set, inside that
// set's namespace and target region with HF_VEC_BYTES set to its register width (by lcd_attention_kernels.h, which
// lcd_attention.cpp includes so); cpu_math.h is included before.

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

// A rows x cols tile of acc_t with rows ld = padded(cols) apart, from source rows src_ld apart: the input itself
// where it already is one (same type, rows contiguous and a whole number of vectors), else a packed copy in dst
// (so a head of a [B, L, H, D] layout is gathered here, in cache, rather than copied whole beforehand).
template <typename acc_t, typename scalar_t>
inline const acc_t* tile_rows(acc_t* dst, int64_t ld, const scalar_t* src, int64_t src_ld, int64_t rows, int64_t cols) {
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    if (ld == cols && src_ld == cols) return src;
  }
  pack_rows(dst, ld, src, src_ld, rows, cols);
  return dst;
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
  const V u =
      op(shuffle_pair<V, HalvesOf<N, false>>(s0, s1, lanes_seq), shuffle_pair<V, HalvesOf<N, true>>(s0, s1, lanes_seq));
  const V w =
      op(shuffle_pair<V, HalvesOf<N, false>>(s2, s3, lanes_seq), shuffle_pair<V, HalvesOf<N, true>>(s2, s3, lanes_seq));
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
