// Fused sampling step (temperature, top-k, top-p, min-p, seeded inverse-CDF draw) for one row of logits.
// The semantics are those of vt_core/kernels/sampling.py (its module docstring); the C++ CPU twin and the
// CUDA kernel share the per-element arithmetic below, so they make the same float decisions.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define VT_HD __host__ __device__ __forceinline__
#else
#define VT_HD inline
#endif

namespace vt {

// Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3").
struct Philox4 {
  std::uint32_t v[4];
};

VT_HD Philox4 philox4x32_10(std::uint32_t c0, std::uint32_t c1, std::uint32_t c2, std::uint32_t c3,
                            std::uint32_t k0, std::uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    if (r) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const std::uint64_t p0 = static_cast<std::uint64_t>(c0) * 0xD2511F53u;
    const std::uint64_t p1 = static_cast<std::uint64_t>(c2) * 0xCD9E8D57u;
    const std::uint32_t hi0 = static_cast<std::uint32_t>(p0 >> 32), lo0 = static_cast<std::uint32_t>(p0);
    const std::uint32_t hi1 = static_cast<std::uint32_t>(p1 >> 32), lo1 = static_cast<std::uint32_t>(p1);
    const std::uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// The row's uniform in [0, 1): key = the 64-bit seed, counter = (offset, 0), 53 bits of words 0 and 1.
VT_HD double philox_uniform(std::int64_t seed, std::int64_t offset) {
  const std::uint64_t s = static_cast<std::uint64_t>(seed), o = static_cast<std::uint64_t>(offset);
  const Philox4 x = philox4x32_10(static_cast<std::uint32_t>(o), static_cast<std::uint32_t>(o >> 32), 0u, 0u,
                                  static_cast<std::uint32_t>(s), static_cast<std::uint32_t>(s >> 32));
  const std::uint64_t bits = (static_cast<std::uint64_t>(x.v[0] >> 5) << 26) | (x.v[1] >> 6);
  return static_cast<double>(bits) * (1.0 / 9007199254740992.0);
}

// Order-preserving map of a float to uint32 (a < b  <=>  key(a) < key(b)); -0 and +0 share a key.
VT_HD std::uint32_t float_key(float f) {
#ifdef __CUDA_ARCH__
  std::uint32_t u = __float_as_uint(f);
#else
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
#endif
  if (f == 0.0f) u = 0u;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

VT_HD float key_float(std::uint32_t key) {
  const std::uint32_t u = (key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key;
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

// Per-row parameters after normalisation (see sample_row_params).
struct RowParams {
  bool greedy;
  float temperature;  // 1 when greedy
  std::int64_t top_k;  // 0: off
  float top_p;         // >= 1: off
  float min_p;         // <= 0: off
  double u;            // the Philox uniform
};

VT_HD RowParams sample_row_params(float temperature, std::int64_t top_k, float top_p, float min_p,
                                  std::int64_t seed, std::int64_t offset, std::int64_t vocab) {
  RowParams r;
  r.greedy = !(temperature > 0.0f);
  r.temperature = r.greedy ? 1.0f : temperature;
  r.top_k = (top_k <= 0 || top_k >= vocab) ? 0 : top_k;
  r.top_p = top_p;
  r.min_p = min_p;
  r.u = philox_uniform(seed, offset);
  return r;
}

// Probability of a token with scaled logit s under a softmax with maximum m and 1 / sum = inv (fp32,
// as torch.softmax computes it).
VT_HD float softmax_prob(float s, float m, float inv) { return expf(s - m) * inv; }

// Thresholds found for a row; a token is kept when every active test passes.
struct Thresholds {
  float kth;       // top-k: scaled >= kth
  float inv_k;     // 1 / sum over the top-k survivors (for the top-p probabilities)
  float p_cut;     // top-p: softmax_prob(s, m, inv_k) >= p_cut
  float inv_p;     // 1 / sum over the top-p survivors (for the min-p probabilities)
  float minp_cut;  // min-p: softmax_prob(s, m, inv_p) >= minp_cut
  bool use_k, use_p, use_minp;
};

VT_HD bool keep_topk(const Thresholds& t, float s) { return !t.use_k || s >= t.kth; }
VT_HD bool keep_topp(const Thresholds& t, float s, float m) {
  return keep_topk(t, s) && (!t.use_p || softmax_prob(s, m, t.inv_k) >= t.p_cut);
}
VT_HD bool keep_all(const Thresholds& t, float s, float m) {
  return keep_topp(t, s, m) && (!t.use_minp || softmax_prob(s, m, t.inv_p) >= t.minp_cut);
}

// C++ CPU twin. logits: fp32 [batch, vocab] row-major; per-row parameters [batch]: temperature fp32,
// top_k int64, top_p fp32, min_p fp32, seeds int64, offsets int64. Writes tokens int64 [batch],
// raw_logprobs fp32 [batch], processed_logprobs fp32 [batch].
void sample_cpu(const float* logits, std::int64_t batch, std::int64_t vocab, const float* temperature,
                const std::int64_t* top_k, const float* top_p, const float* min_p, const std::int64_t* seeds,
                const std::int64_t* offsets, std::int64_t* tokens, float* raw_logprobs, float* processed_logprobs);

#ifdef VT_WITH_CUDA
// CUDA kernel: one thread block per row, same pointers (device memory), queued on `stream` of `device`.
void sample_cuda(const float* logits, std::int64_t batch, std::int64_t vocab, const float* temperature,
                 const std::int64_t* top_k, const float* top_p, const float* min_p, const std::int64_t* seeds,
                 const std::int64_t* offsets, std::int64_t* tokens, float* raw_logprobs, float* processed_logprobs,
                 int device, std::uintptr_t stream);
#endif

}  // namespace vt
