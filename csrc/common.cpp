#include "common.h"

#ifdef VT_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace vt {

int cuda_device_count() {
#ifdef VT_WITH_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

void require_cuda(const std::string& what) {
  if (!kBuiltWithCuda) {
    throw std::runtime_error(what + ": vt_core._C was built without CUDA (nvcc not found at build time)");
  }
  if (cuda_device_count() == 0) {
    throw std::runtime_error(what + ": no CUDA device is visible to vt_core._C");
  }
}

}  // namespace vt
