// Whether this build of the library contains the CUDA kernels (set by setup.py / CMake).
bool helo_fast_cuda_built() {
#ifdef HELO_FAST_WITH_CUDA
  return true;
#else
  return false;
#endif
}
