// Decode attention on a paged KV cache, CPU (fp32): paged_decode_native (kernels/attention/paged/native.py),
// the "cpp" backend of paged_decode_attention and the generation engine's decode_attention="native". There is
// no CUDA twin: on CUDA the Triton kernel in kernels/attention/paged/fused.py does this.
//
// One work item is one sequence: all its heads read its keys and values straight from the cache blocks
// named by the block table (no gather, no padding to the longest sequence, no mask), each block front to
// back, the next block prefetched. Optionally the sequence's last position is not read from the cache but
// from k_new / v_new [B, Hkv, d] (the step's own token, written to the cache by the caller afterwards), so
// the attention is a pure function of its inputs. Two passes over the context: scores
// s[h][t] = scale * q_h . k_t (k of h's kv head), then the softmax (max, exp, sum) and
// o_h = sum_t p[h][t] v_t / sum. exp is a Cephes-style polynomial (relative error ~2 ulp). On x86-64 CPUs
// with AVX2 + FMA (checked at run time) and d a multiple of 8 the loops are AVX2 intrinsics (d = 32, 64
// and 128 specialised); otherwise portable loops marked for the vectoriser. Sequences are split over
// `threads` std::threads by context length.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "common.h"

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define VT_HAVE_AVX2_PATH 1
#include <immintrin.h>
#endif

namespace py = pybind11;

namespace vt {
namespace {

struct DecodeArgs {
  const float* q;             // [B, H, d]
  const float* k_cache;       // [num_blocks, page, Hkv, d]
  const float* v_cache;       // [num_blocks, page, Hkv, d]
  const float* k_new;         // [B, Hkv, d] or null: position ctx[b] - 1 of sequence b
  const float* v_new;         // [B, Hkv, d] or null
  const std::int32_t* table;  // [B, table_stride]
  const std::int32_t* ctx;    // [B]
  float* out;                 // [B, H, d]
  std::int64_t B, H, Hkv, d, page, table_stride, num_blocks;
  float scale;
};

// Where position t of sequence b keeps its keys (or values): a row of Hkv * d floats.
inline const float* position_row(const DecodeArgs& a, const float* cache, const float* fresh, std::int64_t b,
                                 std::int64_t t, std::int64_t n) {
  const std::int64_t row = a.Hkv * a.d;
  if (fresh != nullptr && t == n - 1) return fresh + b * row;
  const std::int64_t block = a.table[b * a.table_stride + t / a.page];
  return cache + (block * a.page + t % a.page) * row;
}

// exp(x) for x <= 0, clamped below at -87 (exp(-87) ~ 1.6e-38, still a normal float): x = n ln2 + r with
// |r| <= ln2 / 2, exp(r) by Cephes' degree-6 expf polynomial, 2^n written into the exponent bits.
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const std::int32_t bits = (static_cast<std::int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(float));
  return y * two_n;
}

// Sequence b over its n positions, portable. s holds H * n scores, acc H * d sums.
void decode_seq_generic(const DecodeArgs& a, std::int64_t b, std::vector<float>& s, std::vector<float>& acc) {
  const std::int64_t H = a.H, G = a.H / a.Hkv, d = a.d, n = a.ctx[b];
  float* o = a.out + b * H * d;
  if (n <= 0) {
    std::fill(o, o + H * d, 0.0f);
    return;
  }
  const float* q = a.q + b * H * d;
  s.resize(static_cast<std::size_t>(H * n));
  acc.assign(static_cast<std::size_t>(H * d), 0.0f);
  float* sp = s.data();
  for (std::int64_t t = 0; t < n; ++t) {  // pass 1: scores
    const float* k = position_row(a, a.k_cache, a.k_new, b, t, n);
    for (std::int64_t hq = 0; hq < H; ++hq) {
      const float* kh = k + (hq / G) * d;
      const float* qh = q + hq * d;
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (std::int64_t x = 0; x < d; ++x) dot += qh[x] * kh[x];
      sp[hq * n + t] = dot * a.scale;
    }
  }
  std::vector<float> inv(static_cast<std::size_t>(H));
  for (std::int64_t hq = 0; hq < H; ++hq) {  // softmax; sp becomes the unnormalised probabilities
    float* sh = sp + hq * n;
    float m = sh[0];
    for (std::int64_t t = 1; t < n; ++t) m = sh[t] > m ? sh[t] : m;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (std::int64_t t = 0; t < n; ++t) {
      sh[t] = exp_nonpositive(sh[t] - m);
      sum += sh[t];
    }
    inv[hq] = 1.0f / sum;
  }
  float* ac = acc.data();
  for (std::int64_t t = 0; t < n; ++t) {  // pass 2: weighted sum of the values
    const float* v = position_row(a, a.v_cache, a.v_new, b, t, n);
    for (std::int64_t hq = 0; hq < H; ++hq) {
      const float* vh = v + (hq / G) * d;
      const float p = sp[hq * n + t];
      float* ah = ac + hq * d;
#pragma omp simd
      for (std::int64_t x = 0; x < d; ++x) ah[x] += p * vh[x];
    }
  }
  for (std::int64_t hq = 0; hq < H; ++hq) {
#pragma omp simd
    for (std::int64_t x = 0; x < d; ++x) o[hq * d + x] = ac[hq * d + x] * inv[hq];
  }
}

#ifdef VT_HAVE_AVX2_PATH
#include "decode_attention_avx2.inc"
#endif

void decode_range(const DecodeArgs& a, std::int64_t first, std::int64_t last) {
  std::vector<float> s, acc;
#ifdef VT_HAVE_AVX2_PATH
  if (a.d % 8 == 0 && cpu_has_avx2_fma()) {
    for (std::int64_t b = first; b < last; ++b) {
      switch (a.d) {
        case 32: decode_seq_avx2<32>(a, b, s, acc); break;
        case 64: decode_seq_avx2<64>(a, b, s, acc); break;
        case 128: decode_seq_avx2<128>(a, b, s, acc); break;
        default: decode_seq_avx2<0>(a, b, s, acc);
      }
    }
    return;
  }
#endif
  for (std::int64_t b = first; b < last; ++b) decode_seq_generic(a, b, s, acc);
}

// Every block a sequence reads must be a valid cache block: checked up front, nothing is read out of range.
void check_tables(const DecodeArgs& a, const std::string& what) {
  for (std::int64_t b = 0; b < a.B; ++b) {
    const std::int64_t n = a.ctx[b], cached = a.k_new != nullptr ? n - 1 : n;
    check_arg(n >= 0 && cached <= a.table_stride * a.page, what,
              "context_lens[" + std::to_string(b) + "] = " + std::to_string(n) + " does not fit its block table (" +
                  std::to_string(a.table_stride) + " blocks of " + std::to_string(a.page) + ")");
    for (std::int64_t j = 0; j * a.page < cached; ++j) {
      const std::int64_t blk = a.table[b * a.table_stride + j];
      check_arg(blk >= 0 && blk < a.num_blocks, what,
                "block_table[" + std::to_string(b) + ", " + std::to_string(j) + "] = " + std::to_string(blk) +
                    " is not a cache block (num_blocks " + std::to_string(a.num_blocks) + ")");
    }
  }
}

void paged_decode_attention_cpu(const DecodeArgs& a, int threads) {
  if (threads <= 1 || a.B < 2) {
    decode_range(a, 0, a.B);
    return;
  }
  // Contiguous ranges of sequences with about equal total context (a sequence costs its context length).
  std::int64_t total = 0;
  for (std::int64_t b = 0; b < a.B; ++b) total += std::max<std::int64_t>(a.ctx[b], 1);
  const std::int64_t parts = std::min<std::int64_t>(threads, a.B);
  std::vector<std::thread> pool;
  std::int64_t first = 0, done = 0;
  for (std::int64_t p = 0; p + 1 < parts && first < a.B; ++p) {
    const std::int64_t goal = total * (p + 1) / parts;
    std::int64_t last = first;
    while (last < a.B && (done < goal || last == first)) done += std::max<std::int64_t>(a.ctx[last++], 1);
    pool.emplace_back(decode_range, std::cref(a), first, last);
    first = last;
  }
  decode_range(a, first, a.B);  // the calling thread takes the last range
  for (auto& t : pool) t.join();
}

}  // namespace

void register_decode_attention(py::module_& m) {
  m.def(
      "paged_decode_attention_cpu",
      [](std::uintptr_t q, std::uintptr_t k_cache, std::uintptr_t v_cache, std::uintptr_t k_new, std::uintptr_t v_new,
         std::uintptr_t block_table, std::uintptr_t context_lens, std::uintptr_t out, std::int64_t B, std::int64_t H,
         std::int64_t Hkv, std::int64_t d, std::int64_t num_blocks, std::int64_t page, std::int64_t table_stride,
         float scale, int threads) {
        const std::string what = "paged_decode_attention_cpu";
        check_arg(B >= 0 && H > 0 && Hkv > 0 && d > 0 && page > 0 && num_blocks > 0 && table_stride >= 0, what,
                  "sizes must be positive (B >= 0), got B=" + std::to_string(B) + " H=" + std::to_string(H) +
                      " Hkv=" + std::to_string(Hkv) + " d=" + std::to_string(d) + " page=" + std::to_string(page) +
                      " num_blocks=" + std::to_string(num_blocks));
        check_arg(H % Hkv == 0, what, "H=" + std::to_string(H) + " is not a multiple of Hkv=" + std::to_string(Hkv));
        check_arg((k_new == 0) == (v_new == 0), what, "give both k_new and v_new, or neither");
        check_ptr(q, B * H * d, what, "q");
        check_ptr(out, B * H * d, what, "out");
        check_ptr(block_table, B * table_stride, what, "block_table");
        check_ptr(context_lens, B, what, "context_lens");
        check_ptr(k_cache, num_blocks, what, "k_cache");
        check_ptr(v_cache, num_blocks, what, "v_cache");
        DecodeArgs a{as_ptr<const float>(q), as_ptr<const float>(k_cache), as_ptr<const float>(v_cache),
                     as_ptr<const float>(k_new), as_ptr<const float>(v_new), as_ptr<const std::int32_t>(block_table),
                     as_ptr<const std::int32_t>(context_lens), as_ptr<float>(out), B, H, Hkv, d, page, table_stride,
                     num_blocks, scale};
        check_tables(a, what);
        py::gil_scoped_release release;
        paged_decode_attention_cpu(a, threads);
      },
      py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("k_new"), py::arg("v_new"), py::arg("block_table"),
      py::arg("context_lens"), py::arg("out"), py::arg("B"), py::arg("H"), py::arg("Hkv"), py::arg("d"),
      py::arg("num_blocks"), py::arg("page"), py::arg("table_stride"), py::arg("scale"), py::arg("threads") = 1,
      "CPU decode attention, fp32. Pointers (data_ptr) to contiguous host tensors: q and out [B, H, d], "
      "k_cache and v_cache [num_blocks, page, Hkv, d] (one layer), k_new and v_new [B, Hkv, d] or 0 (then "
      "position context_lens[b] - 1 is read from them instead of the cache), block_table int32 "
      "[B, table_stride], context_lens int32 [B]. Sequences with context 0 get zeros. ValueError on bad sizes, "
      "a context longer than its block table or a block index outside the cache.");
}

}  // namespace vt
