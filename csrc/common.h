// Shared helpers for vt_core._C: build flags, the CUDA availability check every CUDA entry uses, and
// the raw-pointer convention of the bindings.
//
// Convention for every kernel pair (CPU twin + CUDA kernel):
// - Python allocates all tensors (torch) and passes tensor.data_ptr() values as Python ints, plus sizes;
//   CUDA entries also take the device index and the stream (torch.cuda.current_stream().cuda_stream).
//   No torch headers are needed here, so the CPU torch wheel can build the CUDA sources.
// - A CUDA entry calls require_cuda() first, so without a GPU (or without a CUDA build) it raises a
//   Python RuntimeError before touching any pointer.
// - Bad sizes or values raise std::invalid_argument (a Python ValueError) naming the argument.
#pragma once
#include <cstdint>
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

// A data pointer passed from Python as an integer (tensor.data_ptr()).
template <typename T>
T* as_ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

// Throws std::invalid_argument "<what>: <message>" unless `ok`.
inline void check_arg(bool ok, const std::string& what, const std::string& message) {
  if (!ok) throw std::invalid_argument(what + ": " + message);
}

// Throws std::invalid_argument when `address` is null although `count` elements are expected there.
inline void check_ptr(std::uintptr_t address, std::int64_t count, const std::string& what, const char* name) {
  check_arg(address != 0 || count == 0, what, std::string(name) + " is a null pointer but holds " +
                                                  std::to_string(count) + " elements");
}

}  // namespace vt
