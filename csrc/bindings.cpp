// The extension module vt_core._C. Each feature file (packing.cpp, ...) defines a register_*() function
// that adds its entries; they are called here. See common.h for the pointer-passing convention.
#include <pybind11/pybind11.h>

#include "common.h"

namespace py = pybind11;

namespace vt {
void register_packing(py::module_& m);
void register_sampling(py::module_& m);
void register_decode_attention(py::module_& m);
}  // namespace vt

PYBIND11_MODULE(_C, m) {
  m.doc() = "vt_core native kernels (C++ CPU twins and, where built, CUDA kernels)";
  m.def("built_with_cuda", []() { return vt::kBuiltWithCuda; },
        "True when the CUDA sources were compiled into this module");
  m.def("cuda_device_count", &vt::cuda_device_count,
        "Number of visible CUDA devices (0 without a driver or GPU, or without a CUDA build)");
  vt::register_packing(m);
  vt::register_sampling(m);
  vt::register_decode_attention(m);
}
