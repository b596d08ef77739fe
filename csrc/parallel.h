// at::parallel_for for the extension's kernels, with the OpenMP team they run on sized by torch's thread count.
// ATen's at::parallel_for is inline: its `omp parallel` runs on the OpenMP runtime this extension links. Built with
// clang that is LLVM's libomp, while torch's Linux wheel runs on GNU libgomp, whose thread count alone
// torch.set_num_threads sets: without this, the kernels' team would be libomp's default (every core) whatever the
// user asked for. With one runtime (GCC) the call below only repeats what torch already set.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace helo_fast {

template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain_size, const F& f) {
#ifdef _OPENMP
  omp_set_num_threads(at::get_num_threads());
#endif
  at::parallel_for(begin, end, grain_size, f);
}

}  // namespace helo_fast
