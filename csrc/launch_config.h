// Threads per block of every CUDA kernel in csrc/, in one place: each kernel is declared with
// __launch_bounds__ of its constant and launched with the same constant, and tests/test_cuda_resources.py
// reads this file to check ptxas' registers x threads <= 65,536 and shared memory per block for sm_80 and
// sm_90. Figures below: ptxas of nvcc 13.0 at -O3 (sm_80 / sm_90 registers per thread, no spills).
#pragma once

namespace vt {

// packing.cu, cu_seqlens_kernel: one block scans all lengths (several per thread when B > 512).
// 1024 threads failed to launch on the H200 ("too many resources requested for launch"): without
// __launch_bounds__, sm_90 gave it 80 registers per thread (sm_80: 32) -> 81,920 per block. At 512 with
// the bound: 32 / 54 registers.
constexpr int kPackingScanThreads = 512;
// packing.cu, token_ids_kernel: one thread per token (grid-stride). 32 / 28 registers.
constexpr int kPackingTokenThreads = 256;
// sampling.cu, sample_kernel: one block per row, two blocks per SM. __launch_bounds__(1024) made ptxas
// cap it at 32 (sm_80, sized for two such blocks per SM) and 64 (sm_90) registers, and it spilled
// (52 / 164 bytes); at 512 with two blocks per SM: 62 / 64 registers, no spills, the same 1024 resident
// threads per SM.
constexpr int kSampleThreads = 512;
constexpr int kSampleMinBlocksPerSM = 2;

}  // namespace vt
