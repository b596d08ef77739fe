// HeLo's whole Gromov-Wasserstein step (HELO_SPEC §4.4) on CPU: cost linearisation and the inner
// IPOT / Sinkhorn solves fused per problem, forward and unrolled backward.
// Schemas in csrc/schema.cpp; the CUDA kernel is csrc/cuda/gromov_wasserstein.cu.
//   u = (cs∘cs) a, v = (ct∘ct) b, Gamma_0 = a bᵀ;  for t = 1..outer: L_t = u 1ᵀ + 1 vᵀ - 2 cs Gamma_{t-1} ctᵀ,
//   Gamma_t = solver(L_t).   The backward keeps the outer plans Gamma_{t-1} and the inner potentials.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>
#include <type_traits>
#include <vector>

#include "../interrupt.h"
#include "../ot_checks.h"
#include "ipot_solver.h"
#include "sinkhorn_solver.h"

namespace helo_fast {
namespace {

using namespace ot_cpu;

// Register tile of the 36x36 products: kRows output rows x kTileCols columns, the accumulators held in
// two vectors of kVecBytes per row (one register each: 32 bytes for AVX2, 16 for the baseline variant).
template <typename T, int kVecBytes>
struct MatmulTile {
  static constexpr int64_t kLanes = kVecBytes / sizeof(T);
  static constexpr int64_t kTileCols = 2 * kLanes;
  static constexpr int64_t kRows = 6;
  using Vec = typename ot_cpu::VecOf<T, kVecBytes>::unaligned;  // read and written in place, at any T alignment
};

// Columns of the packed right factor: whole tiles of every variant (those of the widest).
template <typename T>
HF_INLINE int64_t padded_cols(int64_t c) {
  constexpr int64_t w = MatmulTile<T, 32>::kTileCols;
  return (c + w - 1) / w * w;
}

// One tile: out rows [i, i+R) x columns [j, j + min(cols, V L)) of A @ Bp (added to out if kAdd), Bp row-major
// with stride cp; V = 2 vectors per row, or 1 for a last tile of at most L columns (n = 36 in float32: tiles of
// 16, 16 and 8 columns rather than 16, 16, 16).
template <bool kAdd, int kVecBytes, typename T, int R, int V = 2>
HF_INLINE void matmul_tile(const T* __restrict A, const T* __restrict Bp, int64_t k, int64_t cp, int64_t c, int64_t i,
                           int64_t j, T* __restrict out) {
  using Tile = MatmulTile<T, kVecBytes>;
  using Vec = typename Tile::Vec;
  constexpr int64_t L = Tile::kLanes;
  Vec acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = Vec{};
  const T* __restrict arow = A + i * k;
  for (int64_t l = 0; l < k; ++l) {
    Vec bv[V];
    for (int v = 0; v < V; ++v) bv[v] = *reinterpret_cast<const Vec*>(Bp + l * cp + j + v * L);
    for (int r = 0; r < R; ++r) {
      const T w = arow[r * k + l];
      for (int v = 0; v < V; ++v) acc[r][v] += w * bv[v];
    }
  }
  const int64_t cols = c - j < V * L ? c - j : V * L;
  for (int r = 0; r < R; ++r) {
    T* __restrict orow = out + (i + r) * c + j;
    if (cols == V * L) {
      Vec* __restrict o = reinterpret_cast<Vec*>(orow);
      for (int v = 0; v < V; ++v) {
        if constexpr (kAdd) acc[r][v] += o[v];
        o[v] = acc[r][v];
      }
    } else {
      T tmp[V * L];
      for (int v = 0; v < V; ++v) *reinterpret_cast<Vec*>(tmp + v * L) = acc[r][v];
      for (int64_t e = 0; e < cols; ++e) orow[e] = kAdd ? orow[e] + tmp[e] : tmp[e];
    }
  }
}

// out [r, c] = A [r, k] @ B [k, c] (all row-major; out += A @ B if kAdd). B is first copied into `pack`
// (k x padded_cols(c), zero-padded) so that every column tile is full; each output element is one sequential
// sum over k.
template <int kVecBytes, bool kAdd = false, typename T>
HF_INLINE void matmul(const T* __restrict A, const T* __restrict B, int64_t r, int64_t k, int64_t c, T* __restrict out,
                      T* __restrict pack) {
  const int64_t cp = padded_cols<T>(c);
  for (int64_t l = 0; l < k; ++l) {
    T* __restrict prow = pack + l * cp;
    for (int64_t j = 0; j < c; ++j) prow[j] = B[l * c + j];
    for (int64_t j = c; j < cp; ++j) prow[j] = 0;
  }
  using Tile = MatmulTile<T, kVecBytes>;
  constexpr int64_t R = Tile::kRows, L = Tile::kLanes;
  for (int64_t j = 0; j < c; j += Tile::kTileCols) {
    auto rows_of_tiles = [&](auto vectors) HF_INLINE_LAMBDA {
      constexpr int V = decltype(vectors)::value;
      int64_t i = 0;
      for (; i + R <= r; i += R) matmul_tile<kAdd, kVecBytes, T, R, V>(A, pack, k, cp, c, i, j, out);
      for (; i < r; ++i) matmul_tile<kAdd, kVecBytes, T, 1, V>(A, pack, k, cp, c, i, j, out);
    };
    if (c - j <= L)
      rows_of_tiles(std::integral_constant<int, 1>{});
    else
      rows_of_tiles(std::integral_constant<int, 2>{});
  }
}

template <typename T>
HF_INLINE void transpose(const T* __restrict A, int64_t r, int64_t c, T* __restrict out) {
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) out[j * r + i] = A[i * c + j];
}

// Per-problem buffers, allocated once per parallel task. Dcum, Scum: the running sums of the inner potentials for
// the log-domain IPOT backward (history_iterates + 1 of each; 0 for the forward, whose scratch does not grow with
// the iteration count). Qs: the inner iterates of the scaling-form IPOT backward, kept_iterates of them (0 where
// unused). The [n, m] matrices and the [m] vectors have room for rows of
// padded_row_stride<T>(m), the layout of the scaling-form IPOT (ipot_solver.h).
template <typename T>
struct GromovWassersteinScratch {
  std::vector<T> buf;
  T *pack, *ctT, *csT, *X, *M, *K, *Q, *G0, *dG, *dK, *lam, *Z, *Qs, *Dcum, *Scum;
  T *u, *loga, *inv_a, *F, *vn1, *vn2, *vn3, *vn4, *vn5;
  T *v, *logb, *inv_b, *Gv, *colmax, *vm1, *vm2, *vm3, *vm4, *vm5, *vm6;
  GromovWassersteinScratch(int64_t n, int64_t m, int64_t history_iterates, int64_t kept_iterates) {
    const int64_t big = n > m ? n : m;
    const int64_t pack_size = big * padded_cols<T>(big);
    const int64_t ld = padded_row_stride<T>(m), nq = n * ld;
    const int64_t sums = history_iterates > 0 ? history_iterates + 1 : 0;
    buf.assign(pack_size + m * m + n * n + (9 + kept_iterates) * nq + sums * (n + m) + 9 * n + 11 * ld, T(0));
    T* p = buf.data();
    auto take = [&p](int64_t count) {
      T* q = p;
      p += count;
      return q;
    };
    pack = take(pack_size);
    ctT = take(m * m), csT = take(n * n);
    X = take(nq), M = take(nq), K = take(nq), Q = take(nq), G0 = take(nq), dG = take(nq);
    dK = take(nq), lam = take(nq), Z = take(nq);
    Qs = take(kept_iterates * nq);
    Dcum = take(sums * n), Scum = take(sums * m);
    u = take(n), loga = take(n), inv_a = take(n), F = take(n), vn1 = take(n), vn2 = take(n), vn3 = take(n),
    vn4 = take(n), vn5 = take(n);
    v = take(ld), logb = take(ld), inv_b = take(ld), Gv = take(ld), colmax = take(ld), vm1 = take(ld), vm2 = take(ld),
    vm3 = take(ld);
    vm4 = take(ld), vm5 = take(ld), vm6 = take(ld);
  }
};

// K = -(u_i + v_j - 2 (cs Gamma ctᵀ)_ij) / eps; X = cs Gamma is left in s.X.
template <int kVecBytes, typename T>
HF_INLINE void gromov_wasserstein_log_kernel(const T* cs, const T* Gamma, GromovWassersteinScratch<T>& s, int64_t n,
                                             int64_t m, T eps) {
  matmul<kVecBytes>(cs, Gamma, n, n, m, s.X, s.pack);
  matmul<kVecBytes>(s.X, s.ctT, n, m, m, s.M, s.pack);
  for (int64_t i = 0; i < n; ++i) {
    const T ui = s.u[i];
    const T* __restrict mrow = s.M + i * m;
    T* __restrict krow = s.K + i * m;
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) krow[j] = -(((ui + s.v[j]) - T(2) * mrow[j]) / eps);
  }
}

template <typename T>
HF_INLINE void gromov_wasserstein_setup(const T* cs, const T* ct, const T* a, const T* b,
                                        GromovWassersteinScratch<T>& s, int64_t n, int64_t m) {
  transpose(ct, m, m, s.ctT);
  for (int64_t i = 0; i < n; ++i) {
    T acc = 0;
    for (int64_t k = 0; k < n; ++k) acc += cs[i * n + k] * cs[i * n + k] * a[k];
    s.u[i] = acc;
    s.loga[i] = std::log(a[i]);
  }
  inverse_or_zero(a, n, s.inv_a);
  inverse_or_zero(b, m, s.inv_b);
  for (int64_t j = 0; j < m; ++j) {
    T acc = 0;
    for (int64_t l = 0; l < m; ++l) acc += ct[j * m + l] * ct[j * m + l] * b[l];
    s.v[j] = acc;
    s.logb[j] = std::log(b[j]);
  }
}

// HeLo's problem size (2N = 36 tokens per modality): an instantiation of the per-problem loops where n and m are
// compile-time constants: GCC unrolls the row loops and drops their remainder loops (the float32 forward at B=128: 3.8
// -> 2.9 ms).
constexpr int64_t kHeloTokens = 36;

// body(std::integral_constant<int64_t, kFixed>{}) with kFixed = kHeloTokens for an n = m = 36 problem, else 0
// (run-time sizes): the one place that picks the instantiation, for the forward and the backward.
template <typename Body>
HF_INLINE void with_fixed_size(int64_t n, int64_t m, Body&& body) {
  if (n == kHeloTokens && m == kHeloTokens)
    body(std::integral_constant<int64_t, kHeloTokens>{});
  else
    body(std::integral_constant<int64_t, 0>{});
}

template <int64_t kFixed, int kVecBytes, typename T>
HF_INLINE void gromov_wasserstein_fwd_problems(const T* cs, const T* ct, const T* a, const T* b, T* plan, T* plans,
                                               T* hist_n, T* hist_m, int64_t n_runtime, int64_t m_runtime, T eps,
                                               int64_t outer, int64_t inner, bool use_ipot, int64_t begin,
                                               int64_t end) {
  const int64_t n = kFixed != 0 ? kFixed : n_runtime, m = kFixed != 0 ? kFixed : m_runtime;
  GromovWassersteinScratch<T> s(n, m, 0, 0);
  InterruptCountdown interrupt(n * m, inner);
  for (int64_t p = begin; p < end; ++p) {
    const T *pcs = cs + p * n * n, *pct = ct + p * m * m, *pa = a + p * n, *pb = b + p * m;
    T* gamma = plan + p * n * m;
    gromov_wasserstein_setup(pcs, pct, pa, pb, s, n, m);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < m; ++j) gamma[i * m + j] = pa[i] * pb[j];
    for (int64_t t = 0; t < outer; ++t) {
      interrupt.tick();
      if (plans != nullptr)
        for (int64_t e = 0; e < n * m; ++e) plans[(p * outer + t) * n * m + e] = gamma[e];
      gromov_wasserstein_log_kernel<kVecBytes>(pcs, gamma, s, n, m, eps);
      T* hn = hist_n ? hist_n + (p * outer + t) * inner * n : nullptr;
      T* hm = hist_m ? hist_m + (p * outer + t) * inner * m : nullptr;
      if (use_ipot) {
        if (!ipot_forward_linear<T, kVecBytes>(s.K, pa, pb, s.inv_a, s.inv_b, n, m, inner, gamma, hn, hm, s.G0, s.Q,
                                               s.F, s.Gv, s.colmax))
          ipot_forward(s.K, s.loga, s.logb, n, m, inner, gamma, hn, hm, s.Q, s.F, s.Gv, s.colmax);
      } else if (!sinkhorn_forward_linear(s.K, pa, pb, s.inv_a, s.inv_b, n, m, inner, gamma, hn, hm, s.G0, s.F, s.Gv)) {
        sinkhorn_forward(s.K, s.loga, s.logb, n, m, inner, s.F, s.Gv, hn, hm, s.colmax);
        exp_outer(s.K, s.F, s.Gv, T(1), n, m, gamma);
      }
    }
  }
}

template <typename T, int kVecBytes>
HF_INLINE void gromov_wasserstein_fwd_chunk(const T* cs, const T* ct, const T* a, const T* b, T* plan, T* plans,
                                            T* hist_n, T* hist_m, int64_t n, int64_t m, T eps, int64_t outer,
                                            int64_t inner, bool use_ipot, int64_t begin, int64_t end) {
  with_fixed_size(n, m, [&](auto fixed) HF_INLINE_LAMBDA {
    gromov_wasserstein_fwd_problems<decltype(fixed)::value, kVecBytes>(cs, ct, a, b, plan, plans, hist_n, hist_m, n, m,
                                                                       eps, outer, inner, use_ipot, begin, end);
  });
}
HF_DEFINE_SIMD_DISPATCH(gromov_wasserstein_fwd_chunk)

template <int64_t kFixed, int kVecBytes, typename T>
HF_INLINE void gromov_wasserstein_bwd_problems(const T* grad, const T* cs, const T* ct, const T* a, const T* b,
                                               const T* plans, const T* hist_n, const T* hist_m, T* g_cs, T* g_ct,
                                               T* g_a, T* g_b, int64_t n_runtime, int64_t m_runtime, T eps,
                                               int64_t outer, int64_t inner, bool use_ipot, int64_t begin,
                                               int64_t end) {
  const int64_t n = kFixed != 0 ? kFixed : n_runtime, m = kFixed != 0 ? kFixed : m_runtime;
  GromovWassersteinScratch<T> s(n, m, inner, use_ipot ? inner : 0);
  InterruptCountdown interrupt(n * m, inner);
  for (int64_t p = begin; p < end; ++p) {
    const T *pcs = cs + p * n * n, *pct = ct + p * m * m, *pa = a + p * n, *pb = b + p * m;
    T *dcs = g_cs + p * n * n, *dct = g_ct + p * m * m, *da = g_a + p * n, *db = g_b + p * m;
    gromov_wasserstein_setup(pcs, pct, pa, pb, s, n, m);
    transpose(pcs, n, n, s.csT);
    for (int64_t e = 0; e < n * n; ++e) dcs[e] = 0;
    for (int64_t e = 0; e < m * m; ++e) dct[e] = 0;
    for (int64_t i = 0; i < n; ++i) da[i] = 0, s.vn4[i] = 0;  // vn4 = dL/du
    for (int64_t j = 0; j < m; ++j) db[j] = 0, s.vm5[j] = 0;  // vm5 = dL/dv
    for (int64_t e = 0; e < n * m; ++e) s.dG[e] = grad[p * n * m + e];
    for (int64_t t = outer - 1; t >= 0; --t) {
      interrupt.tick();
      const T* gprev = plans + (p * outer + t) * n * m;
      gromov_wasserstein_log_kernel<kVecBytes>(pcs, gprev, s, n, m, eps);
      const T* hn = hist_n + (p * outer + t) * inner * n;
      const T* hm = hist_m + (p * outer + t) * inner * m;
      T *dloga = s.vn1, *dlogb = s.vm1;
      if (use_ipot) {
        if (!ipot_backward_linear<kVecBytes>(s.K, pa, pb, s.inv_a, s.inv_b, n, m, inner, s.dG, s.dK, dloga, dlogb, s.Qs,
                                             s.lam, s.Dcum, s.Scum, s.vn2, s.vm2, s.vm3, s.vm4, s.vm6))
          ipot_backward(s.K, s.loga, s.logb, n, m, inner, hn, hm, s.dG, s.dK, dloga, dlogb, s.lam, s.Dcum, s.Scum,
                        s.vn2, s.vm2, s.vm3, s.vm4, s.Gv);
      } else if (!sinkhorn_backward_linear(s.K, s.inv_a, s.inv_b, n, m, inner, hn, hm, s.dG, s.dK, dloga, dlogb, s.G0,
                                           s.lam, s.vn2, s.vn3, s.F, s.vn5, s.vm2, s.vm3, s.vm4, s.vm6))
        sinkhorn_backward(s.K, s.loga, s.logb, n, m, inner, hn, hm, s.dG, s.dK, dloga, dlogb, s.vn2, s.vm2, s.vn3,
                          s.vm3);
      for (int64_t i = 0; i < n; ++i) da[i] += ratio_or_zero(dloga[i], pa[i]);
      for (int64_t j = 0; j < m; ++j) db[j] += ratio_or_zero(dlogb[j], pb[j]);
      // dL/dcost = -dK/eps; the cost is u_i + v_j - 2 M_ij, so dM = 2 dK / eps (kept in s.dK).
      const T two_over_eps = T(2) / eps;
      for (int64_t i = 0; i < n; ++i) {
        T* __restrict drow = s.dK + i * m;
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t j = 0; j < m; ++j) {
          const T dc = -(drow[j] / eps);
          acc += dc;
          s.vm5[j] += dc;
          drow[j] *= two_over_eps;
        }
        s.vn4[i] += acc;
      }
      // M = cs Gamma_{t-1} ctᵀ with X = cs Gamma_{t-1} (left in s.X by gromov_wasserstein_log_kernel) and W = dM ct:
      // dcs += W Gamma_{t-1}ᵀ, dct += dMᵀ X, dGamma_{t-1} = csᵀ W.
      const T* dM = s.dK;
      T *W = s.Z, *gprevT = s.M, *dMT = s.Q;
      matmul<kVecBytes>(dM, pct, n, m, m, W, s.pack);
      transpose(gprev, n, m, gprevT);
      matmul<kVecBytes, true>(W, gprevT, n, m, n, dcs, s.pack);
      transpose(dM, n, m, dMT);
      matmul<kVecBytes, true>(dMT, s.X, m, n, m, dct, s.pack);
      matmul<kVecBytes>(s.csT, W, n, n, m, s.dG, s.pack);
    }
    // Gamma_0 = a bᵀ.
    for (int64_t i = 0; i < n; ++i) {
      const T* __restrict grow = s.dG + i * m;
      T acc = 0;
      for (int64_t j = 0; j < m; ++j) {
        acc += grow[j] * pb[j];
        db[j] += grow[j] * pa[i];
      }
      da[i] += acc;
    }
    // u = (cs∘cs) a, v = (ct∘ct) b.
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < n; ++k) {
        const T c = pcs[i * n + k];
        dcs[i * n + k] += T(2) * c * pa[k] * s.vn4[i];
        da[k] += c * c * s.vn4[i];
      }
    for (int64_t j = 0; j < m; ++j)
      for (int64_t l = 0; l < m; ++l) {
        const T c = pct[j * m + l];
        dct[j * m + l] += T(2) * c * pb[l] * s.vm5[j];
        db[l] += c * c * s.vm5[j];
      }
  }
}

template <typename T, int kVecBytes>
HF_INLINE void gromov_wasserstein_bwd_chunk(const T* grad, const T* cs, const T* ct, const T* a, const T* b,
                                            const T* plans, const T* hist_n, const T* hist_m, T* g_cs, T* g_ct, T* g_a,
                                            T* g_b, int64_t n, int64_t m, T eps, int64_t outer, int64_t inner,
                                            bool use_ipot, int64_t begin, int64_t end) {
  with_fixed_size(n, m, [&](auto fixed) HF_INLINE_LAMBDA {
    gromov_wasserstein_bwd_problems<decltype(fixed)::value, kVecBytes>(
        grad, cs, ct, a, b, plans, hist_n, hist_m, g_cs, g_ct, g_a, g_b, n, m, eps, outer, inner, use_ipot, begin, end);
  });
}
HF_DEFINE_SIMD_DISPATCH(gromov_wasserstein_bwd_chunk)

bool uses_ipot(const std::string& solver) {
  TORCH_CHECK(solver == "ipot" || solver == "sinkhorn",
              "gromov_wasserstein: solver must be 'ipot' or 'sinkhorn', got '", solver, "'");
  return solver == "ipot";
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gromov_wasserstein_fwd_cpu(
    const at::Tensor& cs_in, const at::Tensor& ct_in, const at::Tensor& a_in, const at::Tensor& b_in, double eps,
    int64_t outer, int64_t inner, c10::string_view solver, bool save_history) {
  check_gromov_wasserstein_problem("gromov_wasserstein_fwd", cs_in, ct_in, a_in, b_in, eps, outer, inner);
  const bool use_ipot = uses_ipot(std::string(solver));
  const auto hist_type = history_dtype(cs_in.scalar_type());
  const auto work = save_history ? hist_type : cs_in.scalar_type();
  const at::Tensor cs = cs_in.to(work).contiguous(), ct = ct_in.to(work).contiguous(), a = a_in.to(work).contiguous(),
                   b = b_in.to(work).contiguous();
  const int64_t batch = cs.size(0), n = cs.size(1), m = ct.size(1);
  const int64_t ho = save_history ? outer : 0, hi = save_history ? inner : 0;
  at::Tensor plan = at::empty({batch, n, m}, cs.options());
  at::Tensor plans = at::empty({batch, ho, n, m}, cs.options().dtype(hist_type));
  at::Tensor hist_n = at::empty({batch, ho, hi, n}, cs.options().dtype(hist_type));
  at::Tensor hist_m = at::empty({batch, ho, hi, m}, cs.options().dtype(hist_type));
  AT_DISPATCH_FLOATING_TYPES(cs.scalar_type(), "gromov_wasserstein_fwd_cpu", [&] {
    const scalar_t *pcs = cs.const_data_ptr<scalar_t>(), *pct = ct.const_data_ptr<scalar_t>();
    const scalar_t *pa = a.const_data_ptr<scalar_t>(), *pb = b.const_data_ptr<scalar_t>();
    scalar_t* out = plan.mutable_data_ptr<scalar_t>();
    scalar_t* pl = save_history ? plans.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* hn = save_history ? hist_n.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* hm = save_history ? hist_m.mutable_data_ptr<scalar_t>() : nullptr;
    interruptible_parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      gromov_wasserstein_fwd_chunk_dispatch<scalar_t>(pcs, pct, pa, pb, out, pl, hn, hm, n, m, scalar_t(eps), outer,
                                                      inner, use_ipot, begin, end);
    });
  });
  return {plan.to(cs_in.scalar_type()), plans, hist_n, hist_m};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gromov_wasserstein_bwd_cpu(
    const at::Tensor& grad_in, const at::Tensor& cs_in, const at::Tensor& ct_in, const at::Tensor& a_in,
    const at::Tensor& b_in, const at::Tensor& plans_in, const at::Tensor& hist_n_in, const at::Tensor& hist_m_in,
    double eps, c10::string_view solver) {
  const int64_t outer = plans_in.dim() == 4 ? plans_in.size(1) : 0;
  const int64_t inner = hist_n_in.dim() == 4 ? hist_n_in.size(2) : 0;
  TORCH_CHECK(outer >= 1 && inner >= 1,
              "gromov_wasserstein_bwd: the saved plans/histories are empty (run the forward with save_history=True)");
  check_gromov_wasserstein_problem("gromov_wasserstein_bwd", cs_in, ct_in, a_in, b_in, eps, outer, inner);
  const bool use_ipot = uses_ipot(std::string(solver));
  const int64_t batch = cs_in.size(0), n = cs_in.size(1), m = ct_in.size(1);
  TORCH_CHECK(grad_in.sizes() == at::IntArrayRef({batch, n, m}), "gromov_wasserstein_bwd: grad must be [B, n, m]");
  TORCH_CHECK(plans_in.sizes() == at::IntArrayRef({batch, outer, n, m}) &&
                  hist_n_in.sizes() == at::IntArrayRef({batch, outer, inner, n}) &&
                  hist_m_in.sizes() == at::IntArrayRef({batch, outer, inner, m}),
              "gromov_wasserstein_bwd: the saved plans/histories must come from the forward with save_history=True");
  const auto work = history_dtype(cs_in.scalar_type());
  TORCH_CHECK(plans_in.scalar_type() == work && hist_n_in.scalar_type() == work && hist_m_in.scalar_type() == work,
              "gromov_wasserstein_bwd: the saved plans/histories must have dtype ", work);
  const at::Tensor grad = grad_in.to(work).contiguous(), cs = cs_in.to(work).contiguous(),
                   ct = ct_in.to(work).contiguous(), a = a_in.to(work).contiguous(), b = b_in.to(work).contiguous(),
                   plans = plans_in.contiguous(), hist_n = hist_n_in.contiguous(), hist_m = hist_m_in.contiguous();
  at::Tensor g_cs = at::empty_like(cs), g_ct = at::empty_like(ct), g_a = at::empty_like(a), g_b = at::empty_like(b);
  AT_DISPATCH_FLOATING_TYPES(cs.scalar_type(), "gromov_wasserstein_bwd_cpu", [&] {
    const scalar_t *pg = grad.const_data_ptr<scalar_t>(), *pcs = cs.const_data_ptr<scalar_t>();
    const scalar_t *pct = ct.const_data_ptr<scalar_t>(), *pa = a.const_data_ptr<scalar_t>();
    const scalar_t *pb = b.const_data_ptr<scalar_t>(), *pl = plans.const_data_ptr<scalar_t>();
    const scalar_t *hn = hist_n.const_data_ptr<scalar_t>(), *hm = hist_m.const_data_ptr<scalar_t>();
    scalar_t *gcs = g_cs.mutable_data_ptr<scalar_t>(), *gct = g_ct.mutable_data_ptr<scalar_t>();
    scalar_t *ga = g_a.mutable_data_ptr<scalar_t>(), *gb = g_b.mutable_data_ptr<scalar_t>();
    interruptible_parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      gromov_wasserstein_bwd_chunk_dispatch<scalar_t>(pg, pcs, pct, pa, pb, pl, hn, hm, gcs, gct, ga, gb, n, m,
                                                      scalar_t(eps), outer, inner, use_ipot, begin, end);
    });
  });
  const auto out = cs_in.scalar_type();
  return {g_cs.to(out), g_ct.to(out), g_a.to(out), g_b.to(out)};
}

}  // namespace

TORCH_LIBRARY_IMPL(helo_fast, CPU, m) {
  m.impl("gromov_wasserstein_fwd", &gromov_wasserstein_fwd_cpu);
  m.impl("gromov_wasserstein_bwd", &gromov_wasserstein_bwd_cpu);
}

}  // namespace helo_fast
