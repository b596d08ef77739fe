// gromov_wasserstein on CUDA: HeLo's whole GW step in one launch, the inner solves by the OT block solver of
// ot_device.cuh; the backward runs the CPU kernel.
#include "ot_device.cuh"

namespace helo_fast {
namespace {

// HeLo's GW step: u = (cs∘cs) a, v = (ct∘ct) b, Gamma = a bᵀ; outer times: K = -(u + v - 2 cs Gamma ctᵀ)/eps,
// Gamma = solve(K). Matrices cs, ct, Gamma, X = cs Gamma, K, Q per problem (shared memory or workspace).
template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads)
    gromov_wasserstein_kernel(const scalar_t* __restrict__ cs_in, const scalar_t* __restrict__ ct_in,
                              const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                              scalar_t* __restrict__ plan, T* plans, T* hist_n, T* hist_m, T* workspace, int n, int m,
                              T eps, int outer, int inner, bool ipot, bool on_chip) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int p = blockIdx.x, tid = threadIdx.x, nm = n * m;
  T* vec = reinterpret_cast<T*>(smem_raw);
  T *loga = vec, *logb = vec + n, *F = vec + n + m, *G = vec + 2 * n + m, *u = vec + 2 * (n + m), *v = u + n;
  const int64_t mat_elems = static_cast<int64_t>(n) * n + static_cast<int64_t>(m) * m + 4 * nm;
  T* mats = on_chip ? v + m : workspace + static_cast<int64_t>(p) * mat_elems;
  T *cs = mats, *ct = cs + n * n, *gamma = ct + m * m, *X = gamma + nm, *K = X + nm, *Q = K + nm;
  const scalar_t *pcs = cs_in + static_cast<int64_t>(p) * n * n, *pct = ct_in + static_cast<int64_t>(p) * m * m;
  const scalar_t *pa = a + static_cast<int64_t>(p) * n, *pb = b + static_cast<int64_t>(p) * m;
  for (int e = tid; e < n * n; e += blockDim.x) cs[e] = static_cast<T>(pcs[e]);
  for (int e = tid; e < m * m; e += blockDim.x) ct[e] = static_cast<T>(pct[e]);
  for (int i = tid; i < n; i += blockDim.x) loga[i] = log(static_cast<T>(pa[i]));
  for (int j = tid; j < m; j += blockDim.x) logb[j] = log(static_cast<T>(pb[j]));
  __syncthreads();
  for (int i = tid; i < n; i += blockDim.x) {
    T acc = 0;
    for (int k = 0; k < n; ++k) acc += cs[i * n + k] * cs[i * n + k] * static_cast<T>(pa[k]);
    u[i] = acc;
  }
  for (int j = tid; j < m; j += blockDim.x) {
    T acc = 0;
    for (int l = 0; l < m; ++l) acc += ct[j * m + l] * ct[j * m + l] * static_cast<T>(pb[l]);
    v[j] = acc;
  }
  for (int e = tid; e < nm; e += blockDim.x) gamma[e] = static_cast<T>(pa[e / m]) * static_cast<T>(pb[e % m]);
  __syncthreads();
  for (int t = 0; t < outer; ++t) {
    if (plans != nullptr)
      for (int e = tid; e < nm; e += blockDim.x) plans[(static_cast<int64_t>(p) * outer + t) * nm + e] = gamma[e];
    for (int e = tid; e < nm; e += blockDim.x) {
      const int i = e / m, j = e % m;
      T acc = 0;
      for (int k = 0; k < n; ++k) acc += cs[i * n + k] * gamma[k * m + j];
      X[e] = acc;
    }
    __syncthreads();
    for (int e = tid; e < nm; e += blockDim.x) {
      const int i = e / m, j = e % m;
      T acc = 0;
      for (int l = 0; l < m; ++l) acc += X[i * m + l] * ct[j * m + l];
      K[e] = -(((u[i] + v[j]) - T(2) * acc) / eps);
    }
    __syncthreads();
    T* hn = hist_n ? hist_n + (static_cast<int64_t>(p) * outer + t) * inner * n : nullptr;
    T* hm = hist_m ? hist_m + (static_cast<int64_t>(p) * outer + t) * inner * m : nullptr;
    block_solve<T, T>(K, Q, loga, logb, F, G, n, m, inner, ipot, hn, hm, gamma);
  }
  for (int e = tid; e < nm; e += blockDim.x) plan[static_cast<int64_t>(p) * nm + e] = static_cast<scalar_t>(gamma[e]);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gromov_wasserstein_fwd_cuda(
    const at::Tensor& cs_in, const at::Tensor& ct_in, const at::Tensor& a_in, const at::Tensor& b_in, double eps,
    int64_t outer, int64_t inner, c10::string_view solver, bool save_history) {
  check_gromov_wasserstein_problem("gromov_wasserstein_fwd", cs_in, ct_in, a_in, b_in, eps, outer, inner);
  TORCH_CHECK(solver == "ipot" || solver == "sinkhorn", "gromov_wasserstein: solver must be 'ipot' or 'sinkhorn'");
  const bool ipot = solver == "ipot";
  const c10::DeviceGuard guard(cs_in.device());
  const auto work = work_dtype(cs_in, save_history);
  const at::Tensor cs = cs_in.to(work).contiguous(), ct = ct_in.to(work).contiguous(), a = a_in.to(work).contiguous(),
                   b = b_in.to(work).contiguous();
  const int64_t batch = cs.size(0), n = cs.size(1), m = ct.size(1);
  const int64_t ho = save_history ? outer : 0, hi = save_history ? inner : 0;
  const auto hist_type = history_dtype(cs_in.scalar_type());
  at::Tensor plan = at::empty({batch, n, m}, cs.options());
  at::Tensor plans = at::empty({batch, ho, n, m}, cs.options().dtype(hist_type));
  at::Tensor hist_n = at::empty({batch, ho, hi, n}, cs.options().dtype(hist_type));
  at::Tensor hist_m = at::empty({batch, ho, hi, m}, cs.options().dtype(hist_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cs.scalar_type(), "gromov_wasserstein_fwd_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const size_t vec_bytes = (3 * (n + m)) * sizeof(T);
    const size_t mat_bytes = (n * n + m * m + 4 * n * m) * sizeof(T);
    const bool on_chip = vec_bytes + mat_bytes <= kSharedBytes;
    TORCH_CHECK(vec_bytes <= kSharedBytes, "gromov_wasserstein_fwd: n + m too large for the CUDA kernel");
    const auto opts = cs.options().dtype(c10::CppTypeToScalarType<T>::value);
    at::Tensor workspace = on_chip ? at::empty({0}, opts) : at::empty({batch, n * n + m * m + 4 * n * m}, opts);
    const size_t shared = on_chip ? vec_bytes + mat_bytes : vec_bytes;
    if (batch > 0)
      gromov_wasserstein_kernel<scalar_t, T><<<batch, kThreads, shared, current_stream(cs)>>>(
          cs.const_data_ptr<scalar_t>(), ct.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(),
          b.const_data_ptr<scalar_t>(), plan.mutable_data_ptr<scalar_t>(),
          save_history ? plans.mutable_data_ptr<T>() : nullptr, save_history ? hist_n.mutable_data_ptr<T>() : nullptr,
          save_history ? hist_m.mutable_data_ptr<T>() : nullptr, on_chip ? nullptr : workspace.mutable_data_ptr<T>(),
          static_cast<int>(n), static_cast<int>(m), static_cast<T>(eps), static_cast<int>(outer),
          static_cast<int>(inner), ipot, on_chip);
    check_launch("gromov_wasserstein");
  });
  return {plan.to(cs_in.scalar_type()), plans, hist_n, hist_m};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gromov_wasserstein_bwd_cuda(
    const at::Tensor& grad, const at::Tensor& cs, const at::Tensor& ct, const at::Tensor& a, const at::Tensor& b,
    const at::Tensor& plans, const at::Tensor& hist_n, const at::Tensor& hist_m, double eps, c10::string_view solver) {
  static auto handle =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("helo_fast::gromov_wasserstein_bwd", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const at::Tensor&, const at::Tensor&, const at::Tensor&, double, c10::string_view)>();
  auto [gcs, gct, ga, gb] = handle.call(grad.cpu(), cs.cpu(), ct.cpu(), a.cpu(), b.cpu(), plans.cpu(), hist_n.cpu(),
                                        hist_m.cpu(), eps, solver);
  const auto d = cs.device();
  return {gcs.to(d), gct.to(d), ga.to(d), gb.to(d)};
}

}  // namespace

TORCH_LIBRARY_IMPL(helo_fast, CUDA, m) {
  m.impl("gromov_wasserstein_fwd", &gromov_wasserstein_fwd_cuda);
  m.impl("gromov_wasserstein_bwd", &gromov_wasserstein_bwd_cuda);
}

}  // namespace helo_fast
