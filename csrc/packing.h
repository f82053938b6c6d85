// Packing metadata: document lengths[B] -> cu_seqlens int32 [B+1], position_ids int64 [T], seq_ids int32 [T].
#pragma once
#include <cstdint>

namespace vt {

// C++ CPU twin. lengths: int64 [batch] (>= 0, summing to total <= INT32_MAX).
void packing_metadata_cpu(const std::int64_t* lengths, std::int64_t batch, std::int64_t total,
                          std::int32_t* cu_seqlens, std::int64_t* position_ids, std::int32_t* seq_ids);

#ifdef VT_WITH_CUDA
// CUDA twin: queues the kernels on `stream` of `device` (device pointers, nothing synchronised).
// total must equal sum(lengths); the caller checks lengths >= 0.
void packing_metadata_cuda(const std::int64_t* lengths, std::int64_t batch, std::int64_t total,
                           std::int32_t* cu_seqlens, std::int64_t* position_ids, std::int32_t* seq_ids,
                           int device, std::uintptr_t stream);
#endif

}  // namespace vt
