// Launch helpers shared by the CUDA kernels: the stream to launch on and the post-launch error check.
// A CPU-only torch (the nvcc compile check in tests/repo/test_cuda_compile.py) lacks the c10/cuda headers;
// there launches use the default stream. Real CUDA builds use torch's current stream.
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime.h>

#if __has_include(<c10/cuda/impl/cuda_cmake_macros.h>)
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#define HELO_FAST_HAVE_C10_CUDA 1
#endif

namespace helo_fast::cuda {

// torch's current stream on the device of `t`.
inline cudaStream_t current_stream(const at::Tensor& t) {
#ifdef HELO_FAST_HAVE_C10_CUDA
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
#else
  (void)t;
  return nullptr;
#endif
}

// Raises (naming `op`) if the last kernel launch failed.
inline void check_launch(const char* op) {
#ifdef HELO_FAST_HAVE_C10_CUDA
  (void)op;
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#else
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, op, " (cuda): kernel launch failed: ", cudaGetErrorString(err));
#endif
}

}  // namespace helo_fast::cuda
