#include "common.h"

#ifdef VT_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace vt {

namespace {

// Device count and, when the runtime reports an error (no driver, driver too old, ...), its text.
int query_devices(std::string* error) {
#ifdef VT_WITH_CUDA
  int n = 0;
  const cudaError_t status = cudaGetDeviceCount(&n);
  if (status != cudaSuccess) {
    if (error) *error = cudaGetErrorString(status);
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
#else
  (void)error;
  return 0;
#endif
}

}  // namespace

int cuda_device_count() { return query_devices(nullptr); }

void require_cuda(const std::string& what) {
  if (!kBuiltWithCuda) {
    throw std::runtime_error(what + ": vt_core._C was built without CUDA (nvcc not found at build time)");
  }
  std::string error;
  if (query_devices(&error) == 0) {
    throw std::runtime_error(what + ": no CUDA device is visible to vt_core._C" +
                             (error.empty() ? std::string() : " (CUDA runtime: " + error + ")"));
  }
}

}  // namespace vt
