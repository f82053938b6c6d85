// Shared helpers for vt_core._C: build flags and the CUDA availability check every CUDA entry uses.
#pragma once
#include <stdexcept>
#include <string>

namespace vt {

#ifdef VT_WITH_CUDA
constexpr bool kBuiltWithCuda = true;
#else
constexpr bool kBuiltWithCuda = false;
#endif

// Number of CUDA devices the runtime sees; 0 when there is no driver, no GPU, or no CUDA build.
int cuda_device_count();

// Throws std::runtime_error (a Python RuntimeError) naming `what` when no CUDA device can run it.
void require_cuda(const std::string& what);

}  // namespace vt
