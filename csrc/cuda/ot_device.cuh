// What the CUDA kernels of the OT ops (sinkhorn.cu, ipot.cu, gromov_wasserstein.cu) share: one launch per
// call, one thread block per problem, the same log-domain iterations as the CPU kernels
// (csrc/cpu/sinkhorn_solver.h, csrc/cpu/ipot_solver.h). When the problem's matrices fit in shared memory the
// whole solve runs on chip: the cost is read once and the plan written once. Larger problems keep the matrices in a
// global workspace (L2-resident at these sizes) and every log-sum-exp is an online (running max, running sum)
// reduction, so no pass needs the maximum in advance. Storage dtypes float32/float64/float16/bfloat16,
// arithmetic in float32 (float64 for float64). The *_bwd ops run the CPU kernels on a host copy of
// their (small) inputs: a native backward kernel is future work. With a tolerance (sinkhorn_fwd_tol /
// ipot_fwd_tol: ot_solve_tol_kernel) each block checks its problem every kCheckEvery iterations and stops on its own.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <array>
#include <limits>
#include <string>

#include "../ot_checks.h"
#include "cuda_launch.cuh"

namespace helo_fast {
namespace {

using cuda::check_launch;
using cuda::current_stream;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr size_t kSharedBytes = 48 * 1024;

template <typename T>
__device__ __forceinline__ T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

__device__ __forceinline__ float exp_acc(float x) { return __expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }

// Online log-sum-exp state: running maximum mx and sum of exp(x - mx).
template <typename T>
struct Lse {
  T mx, sum;
  __device__ __forceinline__ void init() { mx = neg_inf<T>(), sum = T(0); }
  __device__ __forceinline__ void add(T x) {
    if (x == neg_inf<T>()) return;  // a zero-mass row or column: exp(-inf - -inf) would be NaN
    if (x > mx) {
      sum = sum * exp_acc(mx - x) + T(1);
      mx = x;
    } else {
      sum += exp_acc(x - mx);
    }
  }
  __device__ __forceinline__ void merge(T omx, T osum) {
    if (omx == neg_inf<T>()) return;
    if (omx > mx) {
      sum = sum * exp_acc(mx - omx) + osum;
      mx = omx;
    } else {
      sum += osum * exp_acc(omx - mx);
    }
  }
  __device__ __forceinline__ T value() const { return mx == neg_inf<T>() ? mx : mx + log(sum); }
};

// lhs - lse for a log-marginal entry lhs, and -inf where it is -inf (zero mass; lse may be -inf too).
template <typename T>
__device__ __forceinline__ T log_ratio(T lhs, T lse) {
  return lhs == neg_inf<T>() ? lhs : lhs - lse;
}

template <typename T>
__device__ __forceinline__ Lse<T> warp_merge(Lse<T> s) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    const T omx = __shfl_xor_sync(0xffffffffu, s.mx, offset);
    const T osum = __shfl_xor_sync(0xffffffffu, s.sum, offset);
    s.merge(omx, osum);
  }
  return s;
}

// out_i = lhs_i - LSE_j(M_ij + v_j): one warp per row, lanes stride over j.
template <typename T>
__device__ void row_update(const T* M, const T* v, const T* lhs, T* out, int n, int m) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int i = warp; i < n; i += kWarps) {
    Lse<T> s;
    s.init();
    for (int j = lane; j < m; j += 32) s.add(M[i * m + j] + v[j]);
    s = warp_merge(s);
    if (lane == 0) out[i] = log_ratio(lhs[i], s.value());
  }
}

// out_j = lhs_j - LSE_i(M_ij + v_i): one thread per column (coalesced across j).
template <typename T>
__device__ void column_update(const T* M, const T* v, const T* lhs, T* out, int n, int m) {
  for (int j = threadIdx.x; j < m; j += blockDim.x) {
    Lse<T> s;
    s.init();
    for (int i = 0; i < n; ++i) s.add(M[i * m + j] + v[i]);
    out[j] = log_ratio(lhs[j], s.value());
  }
}

// The convergence test of a solve with a tolerance (helo_fast.sinkhorn / ipot with tol=; csrc/cpu/ot_convergence.h
// and helo_fast/_convergence.py define it): after every kCheckEvery-th iteration and the cap the block measures the
// problem's marginal violation, the L1 error of its columns (Sinkhorn) or rows (IPOT), and stops once it is <= tol.
constexpr int kCheckEvery = 10;  // helo_fast._convergence.CHECK_EVERY

template <typename T, typename W>
struct StopTest {
  T tol;
  const W* marginal;  // this problem's b (Sinkhorn) or a (IPOT), storage type
  T* scratch;         // kWarps values of shared memory for the block sum
};

// What a solve reports: the iterations run and (with a tolerance) the last check's violation.
template <typename T>
struct SolveReport {
  int iterations;
  T violation;
};

// The sum over the block of each thread's v, returned to every thread (the same order everywhere: a uniform stop).
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  T total = T(0);
  for (int w = 0; w < kWarps; ++w) total += scratch[w];
  __syncthreads();  // every thread has read scratch before its next use
  return total;
}

// sum_j |exp(G_j + LSE_i(M_ij + F_i)) - w_j|: the column-marginal violation of exp(F_i + M_ij + G_j).
template <typename T, typename W>
__device__ __forceinline__ T column_violation(const T* M, const T* F, const T* G, const W* w, int n, int m,
                                              T* scratch) {
  T part = T(0);
  for (int j = threadIdx.x; j < m; j += blockDim.x) {
    Lse<T> s;
    s.init();
    for (int i = 0; i < n; ++i) s.add(M[i * m + j] + F[i]);
    part += abs(exp(G[j] + s.value()) - static_cast<T>(w[j]));  // G_j = -inf (w_j = 0): 0
  }
  return block_sum(part, scratch);
}

// sum_i |exp(F_i + LSE_j(M_ij + G_j)) - w_i|: the row-marginal violation of exp(F_i + M_ij + G_j).
template <typename T, typename W>
__device__ __forceinline__ T row_violation(const T* M, const T* F, const T* G, const W* w, int n, int m, T* scratch) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  T part = T(0);
  for (int i = warp; i < n; i += kWarps) {
    Lse<T> s;
    s.init();
    for (int j = lane; j < m; j += 32) s.add(M[i * m + j] + G[j]);
    s = warp_merge(s);
    if (lane == 0) part += abs(exp(F[i] + s.value()) - static_cast<T>(w[i]));  // F_i = -inf (w_i = 0): 0
  }
  return block_sum(part, scratch);
}

// With kTol: whether the solve stops after iteration k (1-based), recorded in `report`.
template <bool kTol, typename T, typename W>
__device__ __forceinline__ bool stops_after(int k, int iters, bool ipot, const T* M, const T* F, const T* G, int n,
                                            int m, const StopTest<T, W>& test, SolveReport<T>& report) {
  if constexpr (!kTol) {
    return false;
  } else {
    report.iterations = k;
    if (k % kCheckEvery != 0 && k != iters) return false;
    report.violation = ipot ? row_violation(M, F, G, test.marginal, n, m, test.scratch)
                            : column_violation(M, F, G, test.marginal, n, m, test.scratch);
    return report.violation <= test.tol;
  }
}

// One Sinkhorn (POT sinkhorn_log order) or IPOT solve on the scaled log-kernel K [n, m], by the whole
// block. Vectors F/d [n], G/s [m]; Q [n, m] (IPOT only). Histories (may be null) get F_k/G_k or d_k/s_k.
// The plan goes to out (any storage type). Ends with __syncthreads(). With kTol the solve stops at the first check
// within test.tol (stops_after).
template <typename T, typename Out, bool kTol = false, typename W = Out>
__device__ SolveReport<T> block_solve(const T* K, T* Q, const T* loga, const T* logb, T* F, T* G, int n, int m,
                                      int iters, bool ipot, T* hist_n, T* hist_m, Out* out, StopTest<T, W> test = {}) {
  const int tid = threadIdx.x, nm = n * m;
  SolveReport<T> report{iters, T(0)};
  if (!ipot) {
    for (int i = tid; i < n; i += blockDim.x) F[i] = T(0);
    __syncthreads();
    for (int k = 0; k < iters; ++k) {
      column_update(K, F, logb, G, n, m);
      __syncthreads();
      row_update(K, G, loga, F, n, m);
      __syncthreads();
      if (hist_n != nullptr) {
        for (int i = tid; i < n; i += blockDim.x) hist_n[k * n + i] = F[i];
        for (int j = tid; j < m; j += blockDim.x) hist_m[k * m + j] = G[j];
      }
      if (stops_after<kTol>(k + 1, iters, false, K, F, G, n, m, test, report)) break;
    }
    for (int e = tid; e < nm; e += blockDim.x) out[e] = static_cast<Out>(exp(F[e / m] + G[e % m] + K[e]));
  } else {
    const T s0 = -log(T(m));
    for (int j = tid; j < m; j += blockDim.x) G[j] = s0;
    for (int e = tid; e < nm; e += blockDim.x) Q[e] = K[e] + T(0);
    __syncthreads();
    for (int k = 0; k < iters; ++k) {
      if (k > 0) {
        for (int e = tid; e < nm; e += blockDim.x) Q[e] = K[e] + ((F[e / m] + Q[e]) + G[e % m]);
        __syncthreads();
      }
      row_update(Q, G, loga, F, n, m);  // d_k from s_{k-1}
      __syncthreads();
      column_update(Q, F, logb, G, n, m);  // s_k from d_k
      __syncthreads();
      if (hist_n != nullptr) {
        for (int i = tid; i < n; i += blockDim.x) hist_n[k * n + i] = F[i];
        for (int j = tid; j < m; j += blockDim.x) hist_m[k * m + j] = G[j];
      }
      if (stops_after<kTol>(k + 1, iters, true, Q, F, G, n, m, test, report)) break;
    }
    for (int e = tid; e < nm; e += blockDim.x) out[e] = static_cast<Out>(exp((F[e / m] + Q[e]) + G[e % m]));
  }
  __syncthreads();
  return report;
}

// Shared (or workspace) layout of one problem: matrices first, then vectors.
template <typename T>
struct Layout {
  T *K, *Q, *loga, *logb, *F, *G;
};

template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads)
    ot_solve_kernel(const scalar_t* __restrict__ cost, const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                    scalar_t* __restrict__ plan, T* hist_n, T* hist_m, T* workspace, int n, int m, T eps_or_beta,
                    int iters, bool ipot, bool on_chip) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int p = blockIdx.x, tid = threadIdx.x, nm = n * m;
  T* vec = reinterpret_cast<T*>(smem_raw);
  Layout<T> L;
  L.loga = vec, L.logb = vec + n, L.F = vec + n + m, L.G = vec + 2 * n + m;
  T* mats = on_chip ? vec + 2 * (n + m) : workspace + static_cast<int64_t>(p) * 2 * nm;
  L.K = mats, L.Q = mats + nm;
  const scalar_t* c = cost + static_cast<int64_t>(p) * nm;
  for (int e = tid; e < nm; e += blockDim.x) L.K[e] = -(static_cast<T>(c[e]) / eps_or_beta);
  for (int i = tid; i < n; i += blockDim.x) L.loga[i] = log(static_cast<T>(a[static_cast<int64_t>(p) * n + i]));
  for (int j = tid; j < m; j += blockDim.x) L.logb[j] = log(static_cast<T>(b[static_cast<int64_t>(p) * m + j]));
  __syncthreads();
  T* hn = hist_n ? hist_n + static_cast<int64_t>(p) * iters * n : nullptr;
  T* hm = hist_m ? hist_m + static_cast<int64_t>(p) * iters * m : nullptr;
  block_solve<T, scalar_t>(L.K, L.Q, L.loga, L.logb, L.F, L.G, n, m, iters, ipot, hn, hm,
                           plan + static_cast<int64_t>(p) * nm);
}

// ot_solve_kernel with a tolerance: each block stops at its own count and writes it, the last violation and (f_out
// not null: Sinkhorn) the final potentials eps F, eps G. Shared layout: vectors, kWarps reduction scratch, matrices.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    ot_solve_tol_kernel(const T* __restrict__ cost, const T* __restrict__ a, const T* __restrict__ b,
                        T* __restrict__ plan, T* f_out, T* g_out, T* hist_n, T* hist_m,
                        int64_t* __restrict__ iterations, T* __restrict__ violation, T* workspace, int n, int m,
                        T eps_or_beta, int iters, T tol, bool ipot, bool on_chip) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int p = blockIdx.x, tid = threadIdx.x, nm = n * m;
  const int64_t pn = static_cast<int64_t>(p) * n, pm = static_cast<int64_t>(p) * m;
  T* vec = reinterpret_cast<T*>(smem_raw);
  T *loga = vec, *logb = vec + n, *F = vec + n + m, *G = vec + 2 * n + m, *scratch = vec + 2 * (n + m);
  T* mats = on_chip ? scratch + kWarps : workspace + static_cast<int64_t>(p) * 2 * nm;
  T *K = mats, *Q = mats + nm;
  const T* c = cost + static_cast<int64_t>(p) * nm;
  for (int e = tid; e < nm; e += blockDim.x) K[e] = -(c[e] / eps_or_beta);
  for (int i = tid; i < n; i += blockDim.x) loga[i] = log(a[pn + i]);
  for (int j = tid; j < m; j += blockDim.x) logb[j] = log(b[pm + j]);
  __syncthreads();
  T* hn = hist_n ? hist_n + static_cast<int64_t>(p) * iters * n : nullptr;
  T* hm = hist_m ? hist_m + static_cast<int64_t>(p) * iters * m : nullptr;
  const SolveReport<T> report =
      block_solve<T, T, true, T>(K, Q, loga, logb, F, G, n, m, iters, ipot, hn, hm, plan + static_cast<int64_t>(p) * nm,
                                 StopTest<T, T>{tol, ipot ? a + pn : b + pm, scratch});
  if (tid == 0) iterations[p] = report.iterations, violation[p] = report.violation;
  if (f_out != nullptr) {
    for (int i = tid; i < n; i += blockDim.x) f_out[pn + i] = eps_or_beta * F[i];
    for (int j = tid; j < m; j += blockDim.x) g_out[pm + j] = eps_or_beta * G[j];
  }
}

// ---- host side ----------------------------------------------------------------------------------
// Histories (and, for float32 inputs that need a gradient, the whole solve) are float64 like on CPU.
inline at::ScalarType work_dtype(const at::Tensor& t, bool save_history) {
  return save_history ? history_dtype(t.scalar_type()) : t.scalar_type();
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> ot_fwd_cuda(const char* op, const at::Tensor& cost_in,
                                                                  const at::Tensor& a_in, const at::Tensor& b_in,
                                                                  double eps_or_beta, int64_t iters, bool save_history,
                                                                  bool ipot) {
  check_ot_problem(op, cost_in, a_in, b_in, eps_or_beta, iters);
  const c10::DeviceGuard guard(cost_in.device());
  const auto work = work_dtype(cost_in, save_history);
  const at::Tensor cost = cost_in.to(work).contiguous(), a = a_in.to(work).contiguous(), b = b_in.to(work).contiguous();
  const int64_t batch = cost.size(0), n = cost.size(1), m = cost.size(2), hist = save_history ? iters : 0;
  const auto hist_type = history_dtype(cost_in.scalar_type());
  at::Tensor plan = at::empty_like(cost);
  at::Tensor hist_n = at::empty({batch, hist, n}, cost.options().dtype(hist_type));
  at::Tensor hist_m = at::empty({batch, hist, m}, cost.options().dtype(hist_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cost.scalar_type(), "ot_fwd_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    TORCH_CHECK(!save_history || hist_type == c10::CppTypeToScalarType<T>::value, op,
                ": internal error: history dtype mismatch");
    const size_t vec_bytes = 2 * (n + m) * sizeof(T), mat_bytes = 2 * n * m * sizeof(T);
    const bool on_chip = vec_bytes + mat_bytes <= kSharedBytes;
    TORCH_CHECK(vec_bytes <= kSharedBytes, op, ": n + m too large for the CUDA kernel");
    at::Tensor workspace =
        on_chip ? at::empty({0}, cost.options().dtype(c10::CppTypeToScalarType<T>::value))
                : at::empty({batch, 2 * n * m}, cost.options().dtype(c10::CppTypeToScalarType<T>::value));
    const size_t shared = on_chip ? vec_bytes + mat_bytes : vec_bytes;
    if (batch > 0)
      ot_solve_kernel<scalar_t, T><<<batch, kThreads, shared, current_stream(cost)>>>(
          cost.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
          plan.mutable_data_ptr<scalar_t>(), save_history ? hist_n.mutable_data_ptr<T>() : nullptr,
          save_history ? hist_m.mutable_data_ptr<T>() : nullptr, on_chip ? nullptr : workspace.mutable_data_ptr<T>(),
          static_cast<int>(n), static_cast<int>(m), static_cast<T>(eps_or_beta), static_cast<int>(iters), ipot,
          on_chip);
    check_launch(op);
  });
  return {plan.to(cost_in.scalar_type()), hist_n, hist_m};
}

// The forward of sinkhorn_fwd_tol / ipot_fwd_tol (schemas in csrc/schema.cpp; CPU: csrc/cpu/ot_converged.cpp):
// plan, (Sinkhorn: the final potentials f, g,) histories, iterations [B] int64, violation [B]. Like on CPU the work
// dtype is float64 for float32 problems that save histories; float32 and float64 only (autocast and the Python
// entry points run lower precisions in float32).
struct OtTolOutputs {
  at::Tensor plan, f, g, hist_n, hist_m, iterations, violation;
};

inline OtTolOutputs ot_fwd_tol_cuda(const char* op, const at::Tensor& cost_in, const at::Tensor& a_in,
                                    const at::Tensor& b_in, double eps_or_beta, int64_t iters, double tol,
                                    bool save_history, bool ipot) {
  check_ot_problem(op, cost_in, a_in, b_in, eps_or_beta, iters);
  TORCH_CHECK(tol > 0, op, ": tol must be > 0, got ", tol);
  const c10::DeviceGuard guard(cost_in.device());
  const auto work = work_dtype(cost_in, save_history);
  const at::Tensor cost = cost_in.to(work).contiguous(), a = a_in.to(work).contiguous(), b = b_in.to(work).contiguous();
  const int64_t batch = cost.size(0), n = cost.size(1), m = cost.size(2), hist = save_history ? iters : 0;
  OtTolOutputs out{at::empty_like(cost),
                   at::empty({ipot ? 0 : batch, n}, cost.options()),
                   at::empty({ipot ? 0 : batch, m}, cost.options()),
                   at::empty({batch, hist, n}, cost.options()),
                   at::empty({batch, hist, m}, cost.options()),
                   at::empty({batch}, cost.options().dtype(at::kLong)),
                   at::empty({batch}, cost.options())};
  AT_DISPATCH_FLOATING_TYPES(cost.scalar_type(), "ot_fwd_tol_cuda", [&] {
    using T = scalar_t;
    const size_t vec_bytes = (2 * (n + m) + kWarps) * sizeof(T), mat_bytes = 2 * n * m * sizeof(T);
    const bool on_chip = vec_bytes + mat_bytes <= kSharedBytes;
    TORCH_CHECK(vec_bytes <= kSharedBytes, op, ": n + m too large for the CUDA kernel");
    at::Tensor workspace = at::empty({on_chip ? 0 : batch, 2 * n * m}, cost.options());
    const size_t shared = on_chip ? vec_bytes + mat_bytes : vec_bytes;
    if (batch > 0)
      ot_solve_tol_kernel<T><<<batch, kThreads, shared, current_stream(cost)>>>(
          cost.const_data_ptr<T>(), a.const_data_ptr<T>(), b.const_data_ptr<T>(), out.plan.mutable_data_ptr<T>(),
          ipot ? nullptr : out.f.mutable_data_ptr<T>(), ipot ? nullptr : out.g.mutable_data_ptr<T>(),
          save_history ? out.hist_n.mutable_data_ptr<T>() : nullptr,
          save_history ? out.hist_m.mutable_data_ptr<T>() : nullptr, out.iterations.mutable_data_ptr<int64_t>(),
          out.violation.mutable_data_ptr<T>(), on_chip ? nullptr : workspace.mutable_data_ptr<T>(), static_cast<int>(n),
          static_cast<int>(m), static_cast<T>(eps_or_beta), static_cast<int>(iters), static_cast<T>(tol), ipot,
          on_chip);
    check_launch(op);
  });
  out.plan = out.plan.to(cost_in.scalar_type());
  return out;
}

// Backward: the CPU kernels on host copies (inputs are O(B n m); histories O(B iters (n + m))).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> ot_bwd_via_cpu(const char* op, const at::Tensor& grad,
                                                                     const at::Tensor& cost, const at::Tensor& a,
                                                                     const at::Tensor& b, const at::Tensor& hist_n,
                                                                     const at::Tensor& hist_m, double eps_or_beta) {
  static auto handle = c10::Dispatcher::singleton()
                           .findSchemaOrThrow(op, "")
                           .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                               const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const at::Tensor&, const at::Tensor&, double)>();
  auto [gc, ga, gb] = handle.call(grad.cpu(), cost.cpu(), a.cpu(), b.cpu(), hist_n.cpu(), hist_m.cpu(), eps_or_beta);
  return {gc.to(cost.device()), ga.to(cost.device()), gb.to(cost.device())};
}

}  // namespace
}  // namespace helo_fast
