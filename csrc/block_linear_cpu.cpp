// lora_linear over a weight kept in GGUF blocks (blocks.h): y = x Wᵀ + s·(x Aᵀ) Bᵀ (+ bias) with W widened exactly
// in registers. Up to 32 rows of x (decode, a few sessions, verification tokens, scored candidates): a GEMV that
// reads the blocks once, 6 (Q4_1) or 9 (Q8_0) bits a weight instead of fp32's 32 (up to 12 rows on AVX2 builds).
// More rows (prefill, an appended observation) are compute-bound: AMX tiles over the blocks where the CPU has them
// (block_gemm_amx.cpp), fp32 register blocks over a few widened W rows at a time on AVX2 builds
// (block_gemm_avx2.cpp), else W is widened into fp32 scratch and the fp32 path (oneDNN) runs as for fp32 W.
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "block_gemm_amx.h"
#include "block_gemm_avx2.h"
#include "blocks.h"
#include "decode_cpu.h"
#include "parallel.h"
#include "weight_reuse.h"

namespace duomem {
namespace {

using blocks::Format;
// Rows up to which the GEMV (each block widened once per 8 x rows) beats widening the whole matrix for the fp32
// GEMM: 30 of the model's matrices, 1 thread, min of 5, three alternations, ms GEMV / widen+GEMM: M=24 15-26 /
// 27-29, M=32 20-37 / 28-35, M=48 31-47 / 31-42, M=60 40-54 / 38-44, M=96 67-90 / 52-68.
constexpr int64_t kMaxGemvRows = 32;
// The same against block_gemm_avx2's register blocks (AVX2 builds), 576 -> 576 / 192 / 1536, 1536 -> 576 and
// 576 -> 49152, r = 16, 1 thread, W cold, p25 of 15, us GEMV / blocks: M=8 109/141, 44/65, 253/310, 336/309,
// 7839/9604; M=12 176/182, 69/72, 422/414, 491/447, 13164/12954; M=16 194/163, 79/67, 490/412, 663/400,
// 15340/12573; M=32 415/292, 176/113, 995/733, 1374/731, 30864/22699.
constexpr int64_t kMaxGemvRowsAvx2 = 12;
// Rows of W per unit of work. The default model's 121 matrices in decode order (111 MB of blocks), 2 threads, p25 of
// 8 passes: 32 rows (the fp32 kernel's) 10.7 ms, as slow as one thread; 128 rows 7.2-7.5; 288 rows 7.9-8.2.
constexpr int64_t kChunkRows = 128;

struct Call {
  const uint8_t* w;
  int64_t ldw, nblk, N;
  const float* x;
  int64_t M, K;
  const float* b;  // (N, r) or null
  const float* t;  // (M, r): s·x Aᵀ
  int64_t r;
  const float* bias;
  float* y;  // (M, N)
  int64_t ahead;  // bytes of W asked for ahead of the group being read
};

// Look-ahead of the W stream when set_stream_ahead has not set one. Same 121 matrices, 1 thread, p25 of 8 passes,
// by bytes ahead: 256 14.4 ms, 1 KiB 13.4, 2 KiB 11.8, 4 KiB 10.3, 8 KiB 10.5, 16 KiB 11.1, 32 KiB 11.7 (a prefetch
// per block and row, Intel AVX-512 host). Asked a line at a time (blocks.h dots_4rows), Zen 3 AVX2: 2 KiB 10.5,
// 4 KiB 9.9, 6 KiB 9.9, 8 KiB 9.9, 16 KiB 10.0 (11.0-11.1 per block and row, 4 and 8 KiB, alternated).
constexpr int64_t kBlockAhead = 4096;

template <Format F, int NB, int MB>
void group(const Call& c, int64_t n0, int64_t m0, bool prefetch) {
  const int64_t at = n0 * c.ldw + c.ahead;  // the group's bytes, `ahead` further on, while it runs
  const uint8_t* pf = prefetch && at + NB * c.ldw <= c.N * c.ldw ? c.w + at : nullptr;
  blocks::block_dots<F, NB, MB>(c.w + n0 * c.ldw, c.ldw, c.nblk, c.x + m0 * c.K, c.K, pf, c.b ? c.b + n0 * c.r : nullptr,
                                c.r, c.t ? c.t + m0 * c.r : nullptr, c.r, c.bias ? c.bias + n0 : nullptr,
                                c.y + m0 * c.N + n0, c.N);
}

// MB x rows from m0 against rows [n0, n1) of W, NB rows at a time.
template <Format F, int NB, int MB>
void rows(const Call& c, int64_t n0, int64_t n1, int64_t m0) {
  int64_t n = n0;
  for (; n + NB <= n1; n += NB) group<F, NB, MB>(c, n, m0, true);
  for (; n < n1; ++n) group<F, 1, MB>(c, n, m0, false);
}

// 1-4 x rows: 4 W rows a group (4 x MB accumulators, each widened block feeds MB x rows); 5-16: one W row a
// group against 8 x rows at a time, so each block is widened once per 8 rows.
template <Format F>
void chunk(const Call& c, int64_t n0, int64_t n1) {
  switch (c.M) {
    case 1: return rows<F, 4, 1>(c, n0, n1, 0);
    case 2: return rows<F, 4, 2>(c, n0, n1, 0);
    case 3: return rows<F, 4, 3>(c, n0, n1, 0);
    case 4: return rows<F, 4, 4>(c, n0, n1, 0);
    default: break;
  }
  int64_t m = 0;
  for (; m + 8 <= c.M; m += 8) rows<F, 1, 8>(c, n0, n1, m);
  switch (c.M - m) {
    case 7: return rows<F, 1, 7>(c, n0, n1, m);
    case 6: return rows<F, 1, 6>(c, n0, n1, m);
    case 5: return rows<F, 1, 5>(c, n0, n1, m);
    case 4: return rows<F, 1, 4>(c, n0, n1, m);
    case 3: return rows<F, 1, 3>(c, n0, n1, m);
    case 2: return rows<F, 1, 2>(c, n0, n1, m);
    case 1: return rows<F, 1, 1>(c, n0, n1, m);
    default: return;
  }
}

template <Format F>
void gemv(const Call& c) {
  const int64_t chunks = (c.N + kChunkRows - 1) / kChunkRows;
  auto one = [&](int64_t i) { chunk<F>(c, i * kChunkRows, std::min(c.N, (i + 1) * kChunkRows)); };
  if (c.M * c.N * c.K < (int64_t(1) << 18)) {  // too small to pay for handing out chunks (lora_linear_cpu.cpp)
    for (int64_t i = 0; i < chunks; ++i) one(i);
  } else {
    parallel_chunks(chunks, one);
  }
}

template <Format F>
void widen_rows(const uint8_t* w, int64_t ldw, int64_t nblk, int64_t n0, int64_t n1, float* out) {
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t k = 0; k < nblk; ++k) {
      float* o = out + (n * nblk + k) * blocks::kBlock;
#ifdef __AVX512F__
      __m512 lo, hi;
      blocks::widen16<F>(w + n * ldw + k * blocks::bytes(F), lo, hi);
      _mm512_storeu_ps(o, lo);
      _mm512_storeu_ps(o + 16, hi);
#elif defined(DUOMEM_AVX2)
      __m256 v[4];
      blocks::widen8<F>(w + n * ldw + k * blocks::bytes(F), v);
      for (int c = 0; c < 4; ++c) _mm256_storeu_ps(o + 8 * c, v[c]);
#else
      blocks::widen<F>(w + n * ldw + k * blocks::bytes(F), o);
#endif
    }
  }
}

Format format_of(const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 3 && (w.size(2) == blocks::bytes(Format::q4_1) || w.size(2) == blocks::bytes(Format::q8_0)),
              "uint8 weight must be GGUF blocks (N, K/32, 24 or 36), got ", w.sizes());
  return w.size(2) == blocks::bytes(Format::q4_1) ? Format::q4_1 : Format::q8_0;
}

// The fp32 matrix of the blocks, in a buffer reused by the next call on this thread (the lm_head's is 113 MB: a
// fresh allocation per call would fault its pages in each time).
at::Tensor widen_scratch(const at::Tensor& w) {
  thread_local std::vector<float> buf;
  const int64_t N = w.size(0), nblk = w.size(1);
  buf.resize(std::max<size_t>(buf.size(), N * nblk * blocks::kBlock));
  at::Tensor out = at::from_blob(buf.data(), {N, nblk * blocks::kBlock}, at::kFloat);
  dequantize_blocks_into(w, out);
  return out;
}

// t (M, r) = s·x Aᵀ for the GEMV's few x rows, in this thread's scratch (read by the pool's threads while this one
// waits for them): plain loops the compiler vectorises, 4 rows of A at a time so 4 sums are in flight. Through
// lora_linear_cpu and an ATen Scalar mul_ (dispatch, checks, two allocations), the LoRA's cost over the bare GEMV at
// one x row, r = 16, hot: qkv 7.9-8.6 -> 5.2-6.0 us, o 3.1-3.4 -> 1.4-1.5, gate_up 9.4-10.4 -> 7.5-7.7 (4 calls a
// layer at decode).
const float* shrink(const float* x, int64_t M, int64_t K, const float* A, int64_t r, float s) {
  thread_local std::vector<float> t;
  t.resize(M * r);
  for (int64_t j = 0; j < M; ++j) {
    const float* xj = x + j * K;
    int64_t c = 0;
    for (; c + 4 <= r; c += 4) {
      const float *a0 = A + c * K, *a1 = a0 + K, *a2 = a1 + K, *a3 = a2 + K;
      float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
      for (int64_t k = 0; k < K; ++k) {
        s0 += a0[k] * xj[k], s1 += a1[k] * xj[k];
        s2 += a2[k] * xj[k], s3 += a3[k] * xj[k];
      }
      t[j * r + c] = s0 * s, t[j * r + c + 1] = s1 * s, t[j * r + c + 2] = s2 * s, t[j * r + c + 3] = s3 * s;
    }
    for (; c < r; ++c) {
      const float* a = A + c * K;
      float acc = 0.f;
      for (int64_t k = 0; k < K; ++k) acc += a[k] * xj[k];
      t[j * r + c] = acc * s;
    }
  }
  return t.data();
}

}  // namespace

void dequantize_blocks_into(const at::Tensor& w, at::Tensor& out) {
  const Format f = format_of(w);
  const at::Tensor wc = w.contiguous();
  const int64_t N = w.size(0), nblk = w.size(1);
  const uint8_t* p = wc.data_ptr<uint8_t>();
  float* o = out.data_ptr<float>();
  const int64_t chunks = (N + kChunkRows - 1) / kChunkRows;
  parallel_items(chunks, [&](int64_t i) {
    const int64_t n0 = i * kChunkRows, n1 = std::min(N, n0 + kChunkRows);
    if (f == Format::q4_1) return widen_rows<Format::q4_1>(p, wc.stride(0), nblk, n0, n1, o);
    widen_rows<Format::q8_0>(p, wc.stride(0), nblk, n0, n1, o);
  });
}

at::Tensor dequantize_blocks_cpu(const at::Tensor& w) {
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == at::kByte, "dequantize_blocks: uint8 CPU blocks expected");
  format_of(w);
  at::Tensor out = at::empty({w.size(0), w.size(1) * blocks::kBlock}, w.options().dtype(at::kFloat));
  dequantize_blocks_into(w, out);
  return out;
}

at::Tensor block_lora_linear_cpu(const at::Tensor& x, const at::Tensor& weight,
                                 const c10::optional<at::Tensor>& lora_a, const c10::optional<at::Tensor>& lora_b,
                                 double scale, const c10::optional<at::Tensor>& scales,
                                 const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& adapter_ids) {
  const Format f = format_of(weight);
  const int64_t N = weight.size(0), nblk = weight.size(1), K = nblk * blocks::kBlock;
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == K, "x last dim ", x.size(-1), " != weight K ", K, " (", nblk,
              " blocks of 32)");
  const bool lora = lora_a.has_value() && lora_a->defined();
  const bool multi = adapter_ids.has_value() && adapter_ids->defined();
  const int64_t M = x.numel() / std::max<int64_t>(K, 1);
  const bool fp32_lora = !lora || (lora_a->scalar_type() == at::kFloat && lora_b.has_value() &&
                                   lora_b->defined() && lora_b->scalar_type() == at::kFloat && lora_a->dim() == 2);
  const bool plain = !multi && fp32_lora && !(scales.has_value() && scales->defined()) && M > 0;
  const bool fused = block_gemm_fused_flag().load();
  const bool amx = fused && M > kMaxGemvRows && block_gemm_amx_available();
  const bool avx2 = fused && M > kMaxGemvRowsAvx2 && !block_gemm_amx_available() && block_gemm_avx2_available();
  if ((M > kMaxGemvRows && !amx && !avx2) || !plain)
    return lora_linear_cpu(x, widen_scratch(weight), lora_a, lora_b, scale, scales, bias, adapter_ids);
  at::Tensor w = weight.stride(2) == 1 && weight.stride(1) == weight.size(2) ? weight : weight.contiguous();
  at::Tensor xf = x.reshape({M, K}).to(at::kFloat).contiguous();
  if (lora) {
    TORCH_CHECK(lora_b.has_value() && lora_b->defined(), "lora_b is required with lora_a");
    TORCH_CHECK(lora_a->size(1) == K && lora_b->dim() == 2 && lora_b->size(0) == N &&
                    lora_b->size(1) == lora_a->size(0),
                "lora shapes: lora_a ", lora_a->sizes(), ", lora_b ", lora_b->sizes(), " do not fit K=", K, " N=", N);
  }
  at::Tensor bf;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == N, "bias must have N=", N, " elements, got ", bias->numel());
    bf = bias->to(at::kFloat).contiguous();
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(N);
  at::Tensor y = at::empty(shape, xf.options());
  if (amx) {  // many rows on AMX tiles over the blocks, the LoRA delta as two thin GEMMs on top
    block_gemm_amx(w.data_ptr<uint8_t>(), w.stride(0), f, N, K, xf.data_ptr<float>(), M,
                   bf.defined() ? bf.data_ptr<float>() : nullptr, y.data_ptr<float>());
    if (lora) y.view({M, N}).addmm_(at::mm(xf, lora_a->t()), lora_b->t(), 1.0, scale);
    return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
  }
  if (avx2) {  // the LoRA shrink and expand inside the register blocks
    at::Tensor A = lora ? lora_a->contiguous() : at::Tensor(), B = lora ? lora_b->contiguous() : at::Tensor();
    block_gemm_avx2(w.data_ptr<uint8_t>(), w.stride(0), f, N, K, xf.data_ptr<float>(), M,
                    lora ? A.data_ptr<float>() : nullptr, lora ? B.data_ptr<float>() : nullptr, lora ? B.size(1) : 0,
                    static_cast<float>(scale), bf.defined() ? bf.data_ptr<float>() : nullptr, y.data_ptr<float>());
    return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
  }
  at::Tensor A, B;
  const float* t = nullptr;
  if (lora) {
    A = lora_a->contiguous(), B = lora_b->contiguous();
    t = shrink(xf.data_ptr<float>(), M, K, A.data_ptr<float>(), A.size(0), static_cast<float>(scale));
  }
  const Call c{w.data_ptr<uint8_t>(), w.stride(0), nblk, N, xf.data_ptr<float>(), M, K,
               lora ? B.data_ptr<float>() : nullptr, t,
               lora ? B.size(1) : 0, bf.defined() ? bf.data_ptr<float>() : nullptr, y.data_ptr<float>(),
               stream_ahead() > 0 ? stream_ahead() : kBlockAhead};
  if (f == Format::q4_1) gemv<Format::q4_1>(c); else gemv<Format::q8_0>(c);
  return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}

}  // namespace duomem
