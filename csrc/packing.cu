// Packing metadata on CUDA: a one-block scan of the lengths, then one thread per token.
#include <cub/block/block_scan.cuh>

#include "cuda_utils.cuh"
#include "launch_config.h"
#include "packing.h"

namespace vt {
namespace {

// cu_seqlens[0] = 0, cu_seqlens[b + 1] = lengths[0] + ... + lengths[b]. Each thread scans a contiguous
// chunk serially; a block scan of the chunk sums gives each chunk its offset.
__global__ void __launch_bounds__(kPackingScanThreads)
    cu_seqlens_kernel(const std::int64_t* __restrict__ lengths, std::int64_t batch,
                      std::int32_t* __restrict__ cu_seqlens) {
  using BlockScan = cub::BlockScan<std::int64_t, kPackingScanThreads>;
  __shared__ typename BlockScan::TempStorage scan_storage;
  const std::int64_t chunk = (batch + kPackingScanThreads - 1) / kPackingScanThreads;
  const std::int64_t o_start = static_cast<std::int64_t>(threadIdx.x) * chunk;
  const std::int64_t o_end = o_start + chunk < batch ? o_start + chunk : batch;
  std::int64_t b_sum = 0;
  for (std::int64_t i = o_start; i < o_end; ++i) b_sum += lengths[i];
  std::int64_t b_offset = 0;
  BlockScan(scan_storage).ExclusiveSum(b_sum, b_offset);
  if (threadIdx.x == 0) cu_seqlens[0] = 0;
  for (std::int64_t i = o_start; i < o_end; ++i) {
    b_offset += lengths[i];
    cu_seqlens[i + 1] = static_cast<std::int32_t>(b_offset);
  }
}

// Token t belongs to the document b with cu_seqlens[b] <= t < cu_seqlens[b + 1] (the last b with
// cu_seqlens[b] <= t, which skips empty documents); binary search over the B + 1 offsets.
__global__ void __launch_bounds__(kPackingTokenThreads)
    token_ids_kernel(const std::int32_t* __restrict__ cu_seqlens, std::int64_t batch, std::int64_t total,
                     std::int64_t* __restrict__ position_ids, std::int32_t* __restrict__ seq_ids) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t t = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += stride) {
    std::int64_t lo = 0, hi = batch;  // invariant: cu_seqlens[lo] <= t < cu_seqlens[hi]
    while (hi - lo > 1) {
      const std::int64_t mid = (lo + hi) / 2;
      if (cu_seqlens[mid] <= t) lo = mid; else hi = mid;
    }
    position_ids[t] = t - cu_seqlens[lo];
    seq_ids[t] = static_cast<std::int32_t>(lo);
  }
}

}  // namespace

void packing_metadata_cuda(const std::int64_t* lengths, std::int64_t batch, std::int64_t total,
                           std::int32_t* cu_seqlens, std::int64_t* position_ids, std::int32_t* seq_ids,
                           int device, std::uintptr_t stream) {
  const std::string what = "packing_metadata_cuda";
  cudaStream_t s = prepare_launch(device, stream, what);
  cu_seqlens_kernel<<<1, kPackingScanThreads, 0, s>>>(lengths, batch, cu_seqlens);
  check_launch(what);
  if (total == 0) return;
  const std::int64_t blocks = (total + kPackingTokenThreads - 1) / kPackingTokenThreads;
  const int grid = static_cast<int>(blocks < 65535 ? blocks : 65535);
  token_ids_kernel<<<grid, kPackingTokenThreads, 0, s>>>(cu_seqlens, batch, total, position_ids, seq_ids);
  check_launch(what);
}

}  // namespace vt
