// Packing metadata: the C++ CPU twin and the Python bindings of both twins.
#include "packing.h"

#include <pybind11/pybind11.h>

#include <cstdint>
#include <limits>
#include <string>

#include "common.h"

namespace py = pybind11;

namespace vt {

void packing_metadata_cpu(const std::int64_t* lengths, std::int64_t batch, std::int64_t total,
                          std::int32_t* cu_seqlens, std::int64_t* position_ids, std::int32_t* seq_ids) {
  const std::string what = "packing_metadata_cpu";
  // First pass: validate and write cu_seqlens (batch + 1 slots), so nothing past `total` is touched.
  std::int64_t running = 0;
  cu_seqlens[0] = 0;
  for (std::int64_t b = 0; b < batch; ++b) {
    check_arg(lengths[b] >= 0, what, "lengths[" + std::to_string(b) + "] = " + std::to_string(lengths[b]) +
                                         " is negative");
    running += lengths[b];
    check_arg(running <= std::numeric_limits<std::int32_t>::max(), what,
              "the total length exceeds int32 (cu_seqlens is int32)");
    cu_seqlens[b + 1] = static_cast<std::int32_t>(running);
  }
  check_arg(running == total, what,
            "total = " + std::to_string(total) + " but the lengths sum to " + std::to_string(running));
  // Second pass: one position id and one sequence id per token.
  for (std::int64_t b = 0; b < batch; ++b) {
    const std::int64_t start = cu_seqlens[b];
    for (std::int64_t i = 0; i < lengths[b]; ++i) {
      position_ids[start + i] = i;
      seq_ids[start + i] = static_cast<std::int32_t>(b);
    }
  }
}

namespace {

void check_sizes(const std::string& what, std::int64_t batch, std::int64_t total, std::uintptr_t lengths,
                 std::uintptr_t cu_seqlens, std::uintptr_t position_ids, std::uintptr_t seq_ids) {
  check_arg(batch >= 0, what, "batch must be >= 0, got " + std::to_string(batch));
  check_arg(total >= 0 && total <= std::numeric_limits<std::int32_t>::max(), what,
            "total must be in [0, 2^31 - 1], got " + std::to_string(total));
  check_ptr(lengths, batch, what, "lengths");
  check_ptr(cu_seqlens, batch + 1, what, "cu_seqlens");
  check_ptr(position_ids, total, what, "position_ids");
  check_ptr(seq_ids, total, what, "seq_ids");
}

}  // namespace

void register_packing(py::module_& m) {
  m.def(
      "packing_metadata_cpu",
      [](std::uintptr_t lengths, std::int64_t batch, std::int64_t total, std::uintptr_t cu_seqlens,
         std::uintptr_t position_ids, std::uintptr_t seq_ids) {
        check_sizes("packing_metadata_cpu", batch, total, lengths, cu_seqlens, position_ids, seq_ids);
        py::gil_scoped_release release;
        packing_metadata_cpu(as_ptr<const std::int64_t>(lengths), batch, total, as_ptr<std::int32_t>(cu_seqlens),
                             as_ptr<std::int64_t>(position_ids), as_ptr<std::int32_t>(seq_ids));
      },
      py::arg("lengths"), py::arg("batch"), py::arg("total"), py::arg("cu_seqlens"), py::arg("position_ids"),
      py::arg("seq_ids"),
      "C++ CPU twin. Pointers (data_ptr) to contiguous host tensors: lengths int64 [batch], "
      "cu_seqlens int32 [batch+1], position_ids int64 [total], seq_ids int32 [total]. "
      "ValueError on negative lengths or when they do not sum to total.");
  m.def(
      "packing_metadata_cuda",
      [](std::uintptr_t lengths, std::int64_t batch, std::int64_t total, std::uintptr_t cu_seqlens,
         std::uintptr_t position_ids, std::uintptr_t seq_ids, int device, std::uintptr_t stream) {
        require_cuda("packing_metadata_cuda");
        check_sizes("packing_metadata_cuda", batch, total, lengths, cu_seqlens, position_ids, seq_ids);
#ifdef VT_WITH_CUDA
        packing_metadata_cuda(as_ptr<const std::int64_t>(lengths), batch, total, as_ptr<std::int32_t>(cu_seqlens),
                              as_ptr<std::int64_t>(position_ids), as_ptr<std::int32_t>(seq_ids), device, stream);
#endif
      },
      py::arg("lengths"), py::arg("batch"), py::arg("total"), py::arg("cu_seqlens"), py::arg("position_ids"),
      py::arg("seq_ids"), py::arg("device"), py::arg("stream"),
      "CUDA kernels, queued on `stream` (torch.cuda.current_stream().cuda_stream) of `device`; same pointers "
      "and layout as packing_metadata_cpu, on that device. total must equal sum(lengths), lengths >= 0 "
      "(checked by the caller). RuntimeError without a CUDA device or a CUDA build.");
}

}  // namespace vt
