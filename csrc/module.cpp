// Python module entry point of helo_fast._C. The ops register through TORCH_LIBRARY (csrc/schema.cpp) and
// TORCH_LIBRARY_IMPL (csrc/cpu/<op>.cpp, csrc/cuda/<op>.cu); importing the module loads them.
#include <torch/extension.h>

bool helo_fast_cuda_built();
namespace helo_fast {
void install_python_interrupt_poll();
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "helo_fast fused kernels (ops live under torch.ops.helo_fast)";
  helo_fast::install_python_interrupt_poll();
  m.def("cuda_built", &helo_fast_cuda_built, "True when the CUDA kernels were compiled into this build");
}
