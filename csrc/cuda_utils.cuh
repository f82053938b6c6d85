// Helpers for CUDA sources of vt_core._C (included only by .cu files).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace vt {

// Throws std::runtime_error (a Python RuntimeError) "<what>: <CUDA error string>" on failure.
inline void cuda_check(cudaError_t status, const std::string& what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(what + ": CUDA error: " + cudaGetErrorString(status));
  }
}

// Makes `device` current and returns the stream passed from Python (torch's cuda_stream integer).
inline cudaStream_t prepare_launch(int device, std::uintptr_t stream, const std::string& what) {
  cuda_check(cudaSetDevice(device), what + " (cudaSetDevice)");
  return reinterpret_cast<cudaStream_t>(stream);
}

// Raises the launch error of the kernel just queued, if any (asynchronous faults surface later).
inline void check_launch(const std::string& what) { cuda_check(cudaGetLastError(), what + " (kernel launch)"); }

}  // namespace vt
