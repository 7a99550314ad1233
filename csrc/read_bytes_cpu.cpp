// read_bytes: every byte of some tensors read once, in order, with AVX-512 loads (elsewhere a loop of 64-bit words
// the compiler vectorizes), folded by XOR into one 64-bit word. The benchmarks' floor: no op that reads the same bytes once (a GEMV over W, A and B) can
// take less time than this read of them under the same cache regime, so it bounds the ratio any implementation could
// reach against a baseline (bench_lora_linear.py's floor columns). The XOR makes the loads observable (nothing to
// elide) and the result checkable: the XOR of each tensor's bytes, zero-padded to 8, as little-endian 64-bit words.
// Plain loads, or with a look-ahead (`ahead` bytes, into L2); which is faster depends on the memory: 1 thread, cold,
// p10 (stop 31's Xeon): standalone over one 1.3 MB buffer at a time, none 15.2 GB/s, 1-32 KiB 13.7-14.9; in torch
// tensors (W, A, B of 1536->576, r=16) none 253 us, 2 KiB 216. A benchmark takes the faster of the two.
#include <torch/extension.h>

#include "parallel.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace duomem {
namespace {

// XOR of n bytes from p as 64-bit words (n a multiple of 64); ahead > 0: each 256 bytes also asked for `ahead`
// bytes further on, into L2 (as the GEMV streams do, vec.h stream_dots).
uint64_t xor_blocks(const char* p, int64_t n, int64_t ahead = 0) {
#if defined(__AVX512F__)
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 256 <= n; i += 256) {
    if (ahead > 0)
      for (int l = 0; l < 256; l += 64) _mm_prefetch(p + i + ahead + l, _MM_HINT_T1);
    a0 = _mm512_xor_si512(a0, _mm512_loadu_si512(p + i));
    a1 = _mm512_xor_si512(a1, _mm512_loadu_si512(p + i + 64));
    a2 = _mm512_xor_si512(a2, _mm512_loadu_si512(p + i + 128));
    a3 = _mm512_xor_si512(a3, _mm512_loadu_si512(p + i + 192));
  }
  for (; i < n; i += 64) a0 = _mm512_xor_si512(a0, _mm512_loadu_si512(p + i));
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3)));
#else
  (void)ahead;
  uint64_t lanes[8] = {};
  for (int64_t i = 0; i < n; i += 64)
    for (int j = 0; j < 8; ++j) {
      uint64_t v;
      std::memcpy(&v, p + i + 8 * j, 8);
      lanes[j] ^= v;
    }
#endif
  uint64_t x = 0;
  for (uint64_t v : lanes) x ^= v;
  return x;
}

// The last n < 64 bytes, zero-padded.
uint64_t xor_tail(const char* p, int64_t n) {
  alignas(64) char buf[64] = {};
  std::memcpy(buf, p, n);
  return xor_blocks(buf, 64);
}

constexpr int64_t kChunkBytes = 64 << 10;  // work unit for threads (parallel.h), a multiple of 64

}  // namespace

// XOR of every tensor's bytes (contiguous CPU tensors), read once; threads split them in 64 KiB chunks.
uint64_t read_bytes_cpu(const std::vector<at::Tensor>& tensors, int64_t ahead) {
  struct Part { const char* p; int64_t n; };
  std::vector<Part> parts;
  for (size_t t = 0; t < tensors.size(); ++t) {
    const at::Tensor& x = tensors[t];
    TORCH_CHECK(x.device().is_cpu(), "read_bytes: tensor ", t, " is on ", x.device(), ", not the CPU");
    TORCH_CHECK(x.is_contiguous(), "read_bytes: tensor ", t, " is not contiguous (strides ", x.strides(), ")");
    const char* p = static_cast<const char*>(x.data_ptr());
    for (int64_t off = 0; off < static_cast<int64_t>(x.nbytes()); off += kChunkBytes)
      parts.push_back({p + off, std::min<int64_t>(kChunkBytes, x.nbytes() - off)});
  }
  std::atomic<uint64_t> acc{0};
  auto one = [&](int64_t i) {
    const Part& c = parts[i];
    const int64_t body = c.n / 64 * 64;
    uint64_t x = xor_blocks(c.p, body, ahead);
    if (body < c.n) x ^= xor_tail(c.p + body, c.n - body);
    acc.fetch_xor(x, std::memory_order_relaxed);
  };
  parallel_chunks(static_cast<int64_t>(parts.size()), one);
  return acc.load();
}

}  // namespace duomem
