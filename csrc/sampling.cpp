// Fused sampling step: the C++ CPU twin (one row per loop iteration) and the Python bindings of both twins.
//
// Per row: max and logsumexp of the raw logits (raw logprobs at temperature 1); scaled = logits / T;
// top-k threshold = the k-th largest scaled logit, found by a radix select over float_key bit patterns
// (4 passes of 8 bits, counting); top-p threshold = the largest probability t with mass(p >= t) >= top_p,
// found by the same radix descent weighted by probability mass (float64); min-p threshold = min_p * max p;
// then the inverse-CDF draw in vocabulary order with float64 accumulation. No sort, O(V) per pass.
#include "sampling.h"

#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "common.h"

namespace py = pybind11;

namespace vt {
namespace {

// k-th largest value of s (1 <= k <= n), ties counted: the key of the answer is found 8 bits at a time.
float kth_largest(const float* s, std::int64_t n, std::int64_t k) {
  std::uint32_t prefix = 0, mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    std::int64_t hist[256] = {0};
    for (std::int64_t i = 0; i < n; ++i) {
      const std::uint32_t key = float_key(s[i]);
      if ((key & mask) == prefix) ++hist[(key >> shift) & 0xFFu];
    }
    int digit = 255;
    for (; digit > 0 && hist[digit] < k; --digit) k -= hist[digit];
    prefix |= static_cast<std::uint32_t>(digit) << shift;
    mask |= 0xFFu << shift;
  }
  return key_float(prefix);
}

// Largest probability t among the top-k survivors with mass(p >= t) >= top_p, p = softmax_prob(s, m, inv_k).
// When rounding leaves the whole mass below top_p, t is the largest probability (as in the reference).
float top_p_cut(const float* s, std::int64_t n, const Thresholds& t, float m, float top_p) {
  const double target = static_cast<double>(top_p);
  std::uint32_t prefix = 0, mask = 0;
  double above = 0.0;  // mass of the probabilities whose key is above the current prefix range
  for (int shift = 24; shift >= 0; shift -= 8) {
    double mass[256] = {0.0};
    std::int64_t count[256] = {0};
    for (std::int64_t i = 0; i < n; ++i) {
      if (!keep_topk(t, s[i])) continue;
      const float p = softmax_prob(s[i], m, t.inv_k);
      const std::uint32_t key = float_key(p);
      if ((key & mask) != prefix) continue;
      mass[(key >> shift) & 0xFFu] += p;
      ++count[(key >> shift) & 0xFFu];
    }
    int digit = -1, lowest = -1;
    for (int d = 255; d >= 0; --d) {
      if (!count[d]) continue;
      if (above + mass[d] >= target) {
        digit = d;
        break;
      }
      above += mass[d];
      lowest = d;
    }
    if (digit < 0) {
      if (shift == 24) return t.inv_k;  // softmax_prob(m, m, inv_k): the largest probability
      digit = lowest;                   // the parent bucket reached top_p; rounding moved it here
      above -= mass[lowest];
    }
    prefix |= static_cast<std::uint32_t>(digit) << shift;
    mask |= 0xFFu << shift;
  }
  return key_float(prefix);
}

void sample_row(const float* x, std::int64_t V, const RowParams& rp, std::vector<float>& s, std::int64_t* token,
                float* raw, float* processed) {
  float m1 = x[0];
  std::int64_t argmax = 0;
  for (std::int64_t i = 1; i < V; ++i) {
    if (x[i] > m1) {
      m1 = x[i];
      argmax = i;
    }
  }
  double sum1 = 0.0;
  for (std::int64_t i = 0; i < V; ++i) sum1 += expf(x[i] - m1);
  const float log_sum1 = logf(static_cast<float>(sum1));
  if (rp.greedy) {
    *token = argmax;
    *raw = (x[argmax] - m1) - log_sum1;
    *processed = 0.0f;
    return;
  }
  for (std::int64_t i = 0; i < V; ++i) s[i] = x[i] / rp.temperature;
  const float m = s[argmax];
  const float* sp = s.data();
  Thresholds t{};
  if (rp.top_k > 0) {
    t.kth = kth_largest(sp, V, rp.top_k);
    t.use_k = true;
  }
  if (rp.top_p < 1.0f) {
    double sum = 0.0;
    for (std::int64_t i = 0; i < V; ++i)
      if (keep_topk(t, sp[i])) sum += expf(sp[i] - m);
    t.inv_k = 1.0f / static_cast<float>(sum);
    t.p_cut = top_p_cut(sp, V, t, m, rp.top_p);
    t.use_p = true;
  }
  if (rp.min_p > 0.0f) {
    double sum = 0.0;
    for (std::int64_t i = 0; i < V; ++i)
      if (keep_topp(t, sp[i], m)) sum += expf(sp[i] - m);
    t.inv_p = 1.0f / static_cast<float>(sum);
    t.minp_cut = rp.min_p * t.inv_p;  // min_p * the largest probability (expf(0) * inv_p)
    t.use_minp = true;
  }
  double sum = 0.0;
  std::int64_t last_kept = 0;
  for (std::int64_t i = 0; i < V; ++i) {
    if (!keep_all(t, sp[i], m)) continue;
    sum += expf(sp[i] - m);
    last_kept = i;
  }
  const float log_sum = logf(static_cast<float>(sum));
  double total = 0.0;
  for (std::int64_t i = 0; i < V; ++i)
    if (keep_all(t, sp[i], m)) total += static_cast<double>(expf((sp[i] - m) - log_sum));
  const double target = rp.u * total;
  std::int64_t drawn = last_kept;  // reached only when rounding puts the target at the very top
  double cdf = 0.0;
  for (std::int64_t i = 0; i < V; ++i) {
    if (!keep_all(t, sp[i], m)) continue;
    cdf += static_cast<double>(expf((sp[i] - m) - log_sum));
    if (cdf > target) {
      drawn = i;
      break;
    }
  }
  *token = drawn;
  *raw = (x[drawn] - m1) - log_sum1;
  *processed = (sp[drawn] - m) - log_sum;
}

}  // namespace

void sample_cpu(const float* logits, std::int64_t batch, std::int64_t vocab, const float* temperature,
                const std::int64_t* top_k, const float* top_p, const float* min_p, const std::int64_t* seeds,
                const std::int64_t* offsets, std::int64_t* tokens, float* raw_logprobs, float* processed_logprobs) {
  std::vector<float> scratch(static_cast<std::size_t>(vocab));
  for (std::int64_t b = 0; b < batch; ++b) {
    const RowParams rp = sample_row_params(temperature[b], top_k[b], top_p[b], min_p[b], seeds[b], offsets[b], vocab);
    sample_row(logits + b * vocab, vocab, rp, scratch, tokens + b, raw_logprobs + b, processed_logprobs + b);
  }
}

namespace {

struct SampleArgs {
  std::uintptr_t logits, temperature, top_k, top_p, min_p, seeds, offsets, tokens, raw, processed;
};

void check_sample_args(const std::string& what, std::int64_t batch, std::int64_t vocab, const SampleArgs& a) {
  check_arg(batch >= 0, what, "batch must be >= 0, got " + std::to_string(batch));
  check_arg(vocab >= 1, what, "vocab must be >= 1, got " + std::to_string(vocab));
  check_ptr(a.logits, batch * vocab, what, "logits");
  const std::pair<std::uintptr_t, const char*> rows[] = {
      {a.temperature, "temperature"}, {a.top_k, "top_k"}, {a.top_p, "top_p"}, {a.min_p, "min_p"},
      {a.seeds, "seeds"},             {a.offsets, "offsets"}, {a.tokens, "tokens"}, {a.raw, "raw_logprobs"},
      {a.processed, "processed_logprobs"}};
  for (const auto& r : rows) check_ptr(r.first, batch, what, r.second);
}

}  // namespace

void register_sampling(py::module_& m) {
  m.def(
      "philox4x32",
      [](std::uint32_t c0, std::uint32_t c1, std::uint32_t c2, std::uint32_t c3, std::uint32_t k0, std::uint32_t k1) {
        const Philox4 x = philox4x32_10(c0, c1, c2, c3, k0, k1);
        return py::make_tuple(x.v[0], x.v[1], x.v[2], x.v[3]);
      },
      py::arg("c0"), py::arg("c1"), py::arg("c2"), py::arg("c3"), py::arg("k0"), py::arg("k1"),
      "Philox-4x32-10 of one counter (c0..c3) under key (k0, k1): the sampling kernels' RNG, for tests.");
  m.def(
      "philox_uniform_cpu",
      [](std::uintptr_t seeds, std::uintptr_t offsets, std::int64_t n, std::uintptr_t out) {
        const std::string what = "philox_uniform_cpu";
        check_arg(n >= 0, what, "n must be >= 0, got " + std::to_string(n));
        check_ptr(seeds, n, what, "seeds");
        check_ptr(offsets, n, what, "offsets");
        check_ptr(out, n, what, "out");
        const auto* s = as_ptr<const std::int64_t>(seeds);
        const auto* o = as_ptr<const std::int64_t>(offsets);
        auto* u = as_ptr<double>(out);
        for (std::int64_t i = 0; i < n; ++i) u[i] = philox_uniform(s[i], o[i]);
      },
      py::arg("seeds"), py::arg("offsets"), py::arg("n"), py::arg("out"),
      "The sampling uniforms: seeds int64 [n], offsets int64 [n] -> out float64 [n] (host pointers).");
  m.def(
      "sample_cpu",
      [](std::uintptr_t logits, std::int64_t batch, std::int64_t vocab, std::uintptr_t temperature,
         std::uintptr_t top_k, std::uintptr_t top_p, std::uintptr_t min_p, std::uintptr_t seeds,
         std::uintptr_t offsets, std::uintptr_t tokens, std::uintptr_t raw, std::uintptr_t processed) {
        const SampleArgs a{logits, temperature, top_k, top_p, min_p, seeds, offsets, tokens, raw, processed};
        check_sample_args("sample_cpu", batch, vocab, a);
        py::gil_scoped_release release;
        sample_cpu(as_ptr<const float>(logits), batch, vocab, as_ptr<const float>(temperature),
                   as_ptr<const std::int64_t>(top_k), as_ptr<const float>(top_p), as_ptr<const float>(min_p),
                   as_ptr<const std::int64_t>(seeds), as_ptr<const std::int64_t>(offsets),
                   as_ptr<std::int64_t>(tokens), as_ptr<float>(raw), as_ptr<float>(processed));
      },
      py::arg("logits"), py::arg("batch"), py::arg("vocab"), py::arg("temperature"), py::arg("top_k"),
      py::arg("top_p"), py::arg("min_p"), py::arg("seeds"), py::arg("offsets"), py::arg("tokens"),
      py::arg("raw_logprobs"), py::arg("processed_logprobs"),
      "C++ CPU twin. Pointers to contiguous host tensors: logits fp32 [batch, vocab]; temperature fp32, "
      "top_k int64, top_p fp32, min_p fp32, seeds int64, offsets int64 [batch]; outputs tokens int64, "
      "raw_logprobs fp32, processed_logprobs fp32 [batch]. Values are checked by the caller.");
  m.def(
      "sample_cuda",
      [](std::uintptr_t logits, std::int64_t batch, std::int64_t vocab, std::uintptr_t temperature,
         std::uintptr_t top_k, std::uintptr_t top_p, std::uintptr_t min_p, std::uintptr_t seeds,
         std::uintptr_t offsets, std::uintptr_t tokens, std::uintptr_t raw, std::uintptr_t processed, int device,
         std::uintptr_t stream) {
        require_cuda("sample_cuda");
        const SampleArgs a{logits, temperature, top_k, top_p, min_p, seeds, offsets, tokens, raw, processed};
        check_sample_args("sample_cuda", batch, vocab, a);
#ifdef VT_WITH_CUDA
        sample_cuda(as_ptr<const float>(logits), batch, vocab, as_ptr<const float>(temperature),
                    as_ptr<const std::int64_t>(top_k), as_ptr<const float>(top_p), as_ptr<const float>(min_p),
                    as_ptr<const std::int64_t>(seeds), as_ptr<const std::int64_t>(offsets),
                    as_ptr<std::int64_t>(tokens), as_ptr<float>(raw), as_ptr<float>(processed), device, stream);
#else
        (void)device;
        (void)stream;
#endif
      },
      py::arg("logits"), py::arg("batch"), py::arg("vocab"), py::arg("temperature"), py::arg("top_k"),
      py::arg("top_p"), py::arg("min_p"), py::arg("seeds"), py::arg("offsets"), py::arg("tokens"),
      py::arg("raw_logprobs"), py::arg("processed_logprobs"), py::arg("device"), py::arg("stream"),
      "CUDA kernel (one thread block per row), queued on `stream` (torch.cuda.current_stream().cuda_stream) "
      "of `device`; same pointers and layout as sample_cpu, on that device. RuntimeError without a CUDA "
      "device or a CUDA build.");
}

}  // namespace vt
