// at::parallel_for for the extension's kernels, run on the OpenMP runtime torch runs on.
// ATen's at::parallel_for is inline: its `omp parallel` runs on the OpenMP runtime of the compiler that builds this
// extension. With GCC that is GNU libgomp, the runtime of torch's Linux wheel: one runtime, whose thread count
// torch.set_num_threads sets (the omp_set_num_threads below only repeats it). Clang's is LLVM's libomp, and two
// runtimes in one process busy-wait against each other: each one's idle workers spin on the cores the other's team
// is working on (measured: HeLo's transformer attention fwd+bwd at 2 threads 48-88 ms instead of ~6 ms).
// So setup.py builds with clang as `-fopenmp-simd` (the `omp simd` loops, no runtime) linked to libgomp and defines
// HELO_FAST_GOMP_TEAM: the team below is then libgomp's, started through its documented ABI (GOMP_parallel, what GCC
// emits for `omp parallel`), with at::parallel_for's chunking, thread ids and exception handling.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(HELO_FAST_GOMP_TEAM)
#if defined(_OPENMP)
#error "HELO_FAST_GOMP_TEAM is for builds without the compiler's OpenMP runtime (-fopenmp-simd)"
#endif
extern "C" {
void GOMP_parallel(void (*fn)(void*), void* data, unsigned num_threads, unsigned flags);
int omp_get_num_threads(void);
int omp_get_thread_num(void);
}
#endif

namespace helo_fast {

#if defined(HELO_FAST_GOMP_TEAM)
namespace detail {
// One call's range and body, shared by the team, and the first exception a thread caught.
template <typename F>
struct GompTask {
  int64_t begin, end, grain_size;
  const F* f;
  std::atomic_flag failed = ATOMIC_FLAG_INIT;
  std::exception_ptr error;
};

// The body of every thread of the team: at::internal::invoke_parallel's chunk of [begin, end) for this thread.
template <typename F>
void gomp_team_body(void* data) {
  auto& task = *static_cast<GompTask<F>*>(data);
  int64_t num_threads = omp_get_num_threads();
  if (task.grain_size > 0) num_threads = std::min(num_threads, at::divup(task.end - task.begin, task.grain_size));
  const int64_t tid = omp_get_thread_num();
  const int64_t chunk = at::divup(task.end - task.begin, num_threads);
  const int64_t begin = task.begin + tid * chunk;
  if (begin >= task.end) return;
  try {
    at::internal::ThreadIdGuard tid_guard(tid);
    c10::ParallelGuard guard(true);
    (*task.f)(begin, std::min(task.end, begin + chunk));
  } catch (...) {
    if (!task.failed.test_and_set()) task.error = std::current_exception();
  }
}
}  // namespace detail

// at::parallel_for (ATen/Parallel-inl.h) with the team started on libgomp.
template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain_size, const F& f) {
  if (begin >= end) return;
  at::internal::lazy_init_num_threads();
  const int64_t numiter = end - begin;
  if (numiter <= grain_size || numiter <= 1 || at::in_parallel_region() || at::get_num_threads() <= 1) {
    at::internal::ThreadIdGuard tid_guard(0);
    c10::ParallelGuard guard(true);
    f(begin, end);
    return;
  }
  detail::GompTask<F> task{begin, end, grain_size, &f};
  GOMP_parallel(&detail::gomp_team_body<F>, &task, 0, 0);  // 0 threads: the count torch set (as ATen: no clause)
  if (task.error) std::rethrow_exception(task.error);
}
#else
template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain_size, const F& f) {
#if defined(_OPENMP)
  // Another runtime than torch's (a clang build with HELO_FAST_OPENMP=compiler) takes its team size from here only.
  omp_set_num_threads(at::get_num_threads());
#endif
  at::parallel_for(begin, end, grain_size, f);
}
#endif

}  // namespace helo_fast
