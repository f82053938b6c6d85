// Fused sampling step on CUDA: one thread block per row, the same algorithm and per-element arithmetic as
// the C++ twin (sampling.cpp / sampling.h). Each phase is a strided pass over the row (coalesced reads;
// the row stays in L2 between passes): max/argmax and logsumexp; the top-k radix select (shared-memory
// histograms of 8-bit digits); the top-p radix descent weighted by float64 mass; min-p; the inverse-CDF
// draw over tiles in vocabulary order (a block-wide float64 exclusive scan per tile, stopping at the tile
// where the cumulative mass first exceeds u * total).
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <cstdint>

#include "common.h"
#include "cuda_utils.cuh"
#include "launch_config.h"
#include "sampling.h"

namespace vt {
namespace {

constexpr int kThreads = kSampleThreads;
constexpr int kItems = 4;  // consecutive tokens per thread in a CDF tile
constexpr unsigned long long kNone = ~0ull;

struct MaxIndex {
  float value;
  std::int64_t index;
};

struct MaxIndexOp {
  __device__ MaxIndex operator()(const MaxIndex& a, const MaxIndex& b) const {
    return (b.value > a.value || (b.value == a.value && b.index < a.index)) ? b : a;
  }
};

struct LastIndexOp {
  __device__ MaxIndex operator()(const MaxIndex& a, const MaxIndex& b) const { return b.index > a.index ? b : a; }
};

struct Shared {
  union {
    cub::BlockReduce<double, kThreads>::TempStorage sum;
    cub::BlockReduce<MaxIndex, kThreads>::TempStorage max_index;
    cub::BlockScan<double, kThreads>::TempStorage scan;
  } cub;
  unsigned int count[256];
  double mass[256];
  double broadcast_double;
  float broadcast_float;
  std::int64_t broadcast_index;
  std::uint32_t prefix;
  std::int64_t k;
  double above;
  bool done;
  unsigned long long found;
};

// Block-wide float64 sum, returned to every thread.
__device__ double block_sum(Shared& sh, double v) {
  const double total = cub::BlockReduce<double, kThreads>(sh.cub.sum).Sum(v);
  if (threadIdx.x == 0) sh.broadcast_double = total;
  __syncthreads();
  const double out = sh.broadcast_double;
  __syncthreads();
  return out;
}

__device__ void clear_histograms(Shared& sh) {
  for (int d = threadIdx.x; d < 256; d += kThreads) {
    sh.count[d] = 0;
    sh.mass[d] = 0.0;
  }
  __syncthreads();
}

__global__ void __launch_bounds__(kSampleThreads, kSampleMinBlocksPerSM) sample_kernel(
    const float* __restrict__ logits, std::int64_t vocab, const float* __restrict__ temperature,
    const std::int64_t* __restrict__ top_k, const float* __restrict__ top_p, const float* __restrict__ min_p,
    const std::int64_t* __restrict__ seeds, const std::int64_t* __restrict__ offsets, std::int64_t* __restrict__ tokens,
    float* __restrict__ raw_logprobs, float* __restrict__ processed_logprobs) {
  __shared__ Shared sh;
  const std::int64_t i_b = blockIdx.x;
  const int tid = threadIdx.x;
  const float* p_x = logits + i_b * vocab;
  const RowParams rp =
      sample_row_params(temperature[i_b], top_k[i_b], top_p[i_b], min_p[i_b], seeds[i_b], offsets[i_b], vocab);

  // 1. max / first argmax and logsumexp of the raw logits.
  MaxIndex b_best{p_x[0], 0};
  for (std::int64_t i = tid; i < vocab; i += kThreads) b_best = MaxIndexOp()(b_best, MaxIndex{p_x[i], i});
  b_best = cub::BlockReduce<MaxIndex, kThreads>(sh.cub.max_index).Reduce(b_best, MaxIndexOp());
  if (tid == 0) {
    sh.broadcast_float = b_best.value;
    sh.broadcast_index = b_best.index;
  }
  __syncthreads();
  const float m1 = sh.broadcast_float;
  const std::int64_t argmax = sh.broadcast_index;
  __syncthreads();
  double b_sum = 0.0;
  for (std::int64_t i = tid; i < vocab; i += kThreads) b_sum += expf(p_x[i] - m1);
  const float log_sum1 = logf(static_cast<float>(block_sum(sh, b_sum)));
  if (rp.greedy) {
    if (tid == 0) {
      tokens[i_b] = argmax;
      raw_logprobs[i_b] = (p_x[argmax] - m1) - log_sum1;
      processed_logprobs[i_b] = 0.0f;
    }
    return;
  }
  const float temp = rp.temperature;  // divided, not multiplied by a reciprocal: the twin divides too
  const float m = p_x[argmax] / temp;
  Thresholds t{};

  // 2. top-k: the key of the k-th largest scaled logit, 8 bits per pass.
  if (rp.top_k > 0) {
    if (tid == 0) {
      sh.prefix = 0;
      sh.k = rp.top_k;
    }
    std::uint32_t mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
      clear_histograms(sh);
      const std::uint32_t prefix = sh.prefix;
      for (std::int64_t i = tid; i < vocab; i += kThreads) {
        const std::uint32_t key = float_key(p_x[i] / temp);
        if ((key & mask) == prefix) atomicAdd(&sh.count[(key >> shift) & 0xFFu], 1u);
      }
      __syncthreads();
      if (tid == 0) {
        std::int64_t k = sh.k;
        int digit = 255;
        for (; digit > 0 && sh.count[digit] < k; --digit) k -= sh.count[digit];
        sh.k = k;
        sh.prefix = prefix | (static_cast<std::uint32_t>(digit) << shift);
      }
      mask |= 0xFFu << shift;
      __syncthreads();
    }
    t.kth = key_float(sh.prefix);
    t.use_k = true;
  }

  // 3. top-p: the largest probability t with mass(p >= t) >= top_p, by a mass-weighted radix descent.
  if (rp.top_p < 1.0f) {
    b_sum = 0.0;
    for (std::int64_t i = tid; i < vocab; i += kThreads) {
      const float s = p_x[i] / temp;
      if (keep_topk(t, s)) b_sum += expf(s - m);
    }
    t.inv_k = 1.0f / static_cast<float>(block_sum(sh, b_sum));
    const double target = static_cast<double>(rp.top_p);
    if (tid == 0) {
      sh.prefix = 0;
      sh.above = 0.0;
      sh.done = false;
    }
    std::uint32_t mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
      clear_histograms(sh);
      const std::uint32_t prefix = sh.prefix;
      for (std::int64_t i = tid; i < vocab; i += kThreads) {
        const float s = p_x[i] / temp;
        if (!keep_topk(t, s)) continue;
        const float p = softmax_prob(s, m, t.inv_k);
        const std::uint32_t key = float_key(p);
        if ((key & mask) != prefix) continue;
        atomicAdd(&sh.count[(key >> shift) & 0xFFu], 1u);
        atomicAdd(&sh.mass[(key >> shift) & 0xFFu], static_cast<double>(p));
      }
      __syncthreads();
      if (tid == 0) {
        double above = sh.above;
        int digit = -1, lowest = -1;
        for (int d = 255; d >= 0; --d) {
          if (!sh.count[d]) continue;
          if (above + sh.mass[d] >= target) {
            digit = d;
            break;
          }
          above += sh.mass[d];
          lowest = d;
        }
        if (digit < 0 && shift == 24) {
          sh.done = true;  // rounding left the whole mass below top_p: keep the largest probability
          sh.prefix = float_key(t.inv_k);
        } else {
          if (digit < 0) {
            digit = lowest;
            above -= sh.mass[lowest];
          }
          sh.above = above;
          sh.prefix = prefix | (static_cast<std::uint32_t>(digit) << shift);
        }
      }
      mask |= 0xFFu << shift;
      __syncthreads();
      if (sh.done) break;
    }
    t.p_cut = key_float(sh.prefix);
    t.use_p = true;
  }

  // 4. min-p: min_p times the largest probability after top-p.
  if (rp.min_p > 0.0f) {
    b_sum = 0.0;
    for (std::int64_t i = tid; i < vocab; i += kThreads) {
      const float s = p_x[i] / temp;
      if (keep_topp(t, s, m)) b_sum += expf(s - m);
    }
    t.inv_p = 1.0f / static_cast<float>(block_sum(sh, b_sum));
    t.minp_cut = rp.min_p * t.inv_p;
    t.use_minp = true;
  }

  // 5. processed logprobs of the kept tokens, their total mass and the last kept token.
  b_sum = 0.0;
  MaxIndex b_last{0.0f, 0};
  for (std::int64_t i = tid; i < vocab; i += kThreads) {
    const float s = p_x[i] / temp;
    if (!keep_all(t, s, m)) continue;
    b_sum += expf(s - m);
    b_last.index = i;
  }
  const float log_sum = logf(static_cast<float>(block_sum(sh, b_sum)));
  b_sum = 0.0;
  for (std::int64_t i = tid; i < vocab; i += kThreads) {
    const float s = p_x[i] / temp;
    if (keep_all(t, s, m)) b_sum += static_cast<double>(expf((s - m) - log_sum));
  }
  const double total = block_sum(sh, b_sum);
  const double target = rp.u * total;
  const std::int64_t last_kept =
      cub::BlockReduce<MaxIndex, kThreads>(sh.cub.max_index).Reduce(b_last, LastIndexOp()).index;
  if (tid == 0) {
    sh.broadcast_index = last_kept;
    sh.found = kNone;
  }
  __syncthreads();

  // 6. inverse CDF in vocabulary order: tiles of kThreads * kItems tokens, kItems consecutive per thread.
  double carry = 0.0;
  for (std::int64_t o_tile = 0; o_tile < vocab; o_tile += static_cast<std::int64_t>(kThreads) * kItems) {
    const std::int64_t o_start = o_tile + static_cast<std::int64_t>(tid) * kItems;
    float b_q[kItems];
    double b_local = 0.0;
    for (int j = 0; j < kItems; ++j) {
      const std::int64_t i = o_start + j;
      b_q[j] = 0.0f;
      if (i < vocab) {
        const float s = p_x[i] / temp;
        if (keep_all(t, s, m)) b_q[j] = expf((s - m) - log_sum);
      }
      b_local += static_cast<double>(b_q[j]);
    }
    double b_excl = 0.0, tile_total = 0.0;
    cub::BlockScan<double, kThreads>(sh.cub.scan).ExclusiveSum(b_local, b_excl, tile_total);
    double cdf = carry + b_excl;
    for (int j = 0; j < kItems; ++j) {
      if (b_q[j] <= 0.0f) continue;
      cdf += static_cast<double>(b_q[j]);
      if (cdf > target) {
        atomicMin(&sh.found, static_cast<unsigned long long>(o_start + j));
        break;
      }
    }
    __syncthreads();
    if (sh.found != kNone) break;
    carry += tile_total;
  }
  if (tid == 0) {
    const std::int64_t drawn = sh.found != kNone ? static_cast<std::int64_t>(sh.found) : sh.broadcast_index;
    tokens[i_b] = drawn;
    raw_logprobs[i_b] = (p_x[drawn] - m1) - log_sum1;
    processed_logprobs[i_b] = (p_x[drawn] / temp - m) - log_sum;
  }
}

}  // namespace

void sample_cuda(const float* logits, std::int64_t batch, std::int64_t vocab, const float* temperature,
                 const std::int64_t* top_k, const float* top_p, const float* min_p, const std::int64_t* seeds,
                 const std::int64_t* offsets, std::int64_t* tokens, float* raw_logprobs, float* processed_logprobs,
                 int device, std::uintptr_t stream) {
  const std::string what = "sample_cuda";
  cudaStream_t s = prepare_launch(device, stream, what);
  if (batch == 0) return;
  check_arg(batch <= 0x7FFFFFFF, what, "batch must be < 2^31, got " + std::to_string(batch));
  sample_kernel<<<static_cast<unsigned int>(batch), kSampleThreads, 0, s>>>(
      logits, vocab, temperature, top_k, top_p, min_p, seeds, offsets, tokens, raw_logprobs, processed_logprobs);
  check_launch(what);
}

}  // namespace vt
