// Fused LoRA linear on CPU: y = x Wᵀ + s·(x Aᵀ) Bᵀ (+ bias), fp32 accumulation.
//
// Decode is GEMV-bound: every call streams W (N, K) from memory once, so the kernel is built around that stream.
//  - One x row (every decode GEMV) reads W row after row (vec.h stream_rows): one forward stream the hardware
//    prefetcher follows (with a software look-ahead on AVX-512 builds; on AVX2 builds the hardware alone does
//    better); 8 rows side by side (below) stream ~25% slower. 2-4 rows (a
//    decode step of a few sessions) stream the same way, 3 W rows at a time so each x load feeds 3 FMAs (streams();
//    3-4 on AVX2 builds, where x too long for L1 streams in K slices: slice_rows).
//  - 2-16 rows otherwise: rows of W are taken 8 at a time and each block meets every row of x while it is hot, in 4x4 register
//    blocks (4 W rows x 4 x rows = 16 accumulators: each W vector loaded feeds 4 FMAs), so memory sees W once
//    whatever M is (stock GEMV re-reads W per row: ~3.5x for M=4). Each block prefetches the next one into L2 unless
//    W is likely cached already (weight_reuse.h: prefetch gains 1.6-2.8x cold, costs 10-15% hot);
//    long K is split so a block's x and W slices share L1 (k_chunk).
//  - The shrink t = s·x Aᵀ runs through the same kernel as W (A's r rows are just more rows) before the W pass; the
//    expand is r more steps of the W block's own dot products ([W | B] · [x | s·t]), so it needs no separate
//    reduction, and the bias joins at the store: the delta never makes its own pass over y.
//  - Unmerged engines store B as the continuation of W's rows (extends_rows): then the call is one GEMV or GEMM over
//    [x | s·x Aᵀ] and [W | B], with no thin B stream and no separate expand.
//  - Threads split W's rows in chunks through parallel.h (no OpenMP barrier: robust on a loaded 2-core machine).
//  - Weights fp32, bf16 or fp16, widened exactly in registers; bf16 weights with bf16 x use AVX512-BF16 vdpbf16ps.
//  - Multi-adapter: stacked A (n, r, K) / B (n, N, r), per-row adapter id, -1 = base only.
#include <torch/extension.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "decode_cpu.h"
#include "parallel.h"
#include "vec.h"
#include "weight_reuse.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>


namespace duomem {
namespace {

using namespace vec;

// One GEMV-like pass: out[m, n] = w_n · x_m (+ B[id_m, n] · st_m) (+ bias[n]) for rows n of w, every row m of x.
// The W pass and the shrink (w = A, out = t) are both this.
struct Gemv {
  const float* x;            // (M, K) fp32 contiguous
  const c10::BFloat16* xb;   // the same x in bf16 when it arrived in bf16 (exact), else null
  int64_t M, K;
  float* out;                // (M, ldo)
  int64_t ldo;
  const float* bias;         // (N,) or null
  const int64_t* ids;        // (M,) or null (every row uses adapter 0)
  const float* st;           // (M, r): s_id · x Aᵀ, the expand's input; null = no LoRA extension
  int64_t r, N;              // rank, rows of B per adapter
  bool prefetch = true;      // prefetch the next W block (weights likely not cached: weight_reuse.h)
  bool stream = false;       // 1-4 x rows: W row after row (stream_rows) instead of 8-row blocks (streams())
  bool slices = false;       // 2-4 x rows too long for L1: the same streams in K slices (slice_rows)
};

// out rows [m0, m0+MB), columns [n0, n0+NB), over K range [k0, k1); the LoRA extension and bias join on the last range.
// pf: the next W block at k0, prefetched during this one (first x block only: later ones find W in L1).
template <int NB, int MB, typename WT, typename LT>
inline void block(const Gemv& g, const WT* w, int64_t ldw, const LT* B, int64_t n0, int64_t m0, int64_t k0,
                  int64_t k1, const WT* pf) {
  const bool last = k1 == g.K;
  const LT* b[MB];
  for (int j = 0; j < MB; ++j) {
    const int64_t ad = g.ids ? g.ids[m0 + j] : 0;
    b[j] = last && B && ad >= 0 ? B + (ad * g.N + n0) * g.r : nullptr;
  }
  const float* bias = last && g.bias ? g.bias + n0 : nullptr;
  float* out = g.out + m0 * g.ldo + n0;
  const float* st = g.st ? g.st + m0 * g.r : nullptr;
#ifdef __AVX512BF16__
  if constexpr (std::is_same_v<WT, c10::BFloat16>) {
    if (g.xb) {
      return lora_dot_bf16<NB, MB>(w + n0 * ldw + k0, ldw, g.xb + m0 * g.K + k0, g.K, k1 - k0, pf, b, g.r, st, g.r,
                                   bias, out, g.ldo, k0 > 0);
    }
  }
#endif
  lora_dot<NB, MB>(w + n0 * ldw + k0, ldw, g.x + m0 * g.K + k0, g.K, k1 - k0, pf, b, g.r, st, g.r, bias, out, g.ldo,
                   k0 > 0);
}

// NB rows of w against every row of x: 4 x rows per block (4x4 = 16 accumulators, each w vector feeds 4 FMAs), then
// the 1-3 row remainder with all NB rows at once (8x3 = 24 accumulators). The NB rows' K range stays in L1 across
// the x blocks (k_chunk keeps x's slice small beside it), so W is read from memory once whatever M is.
template <int NB, typename WT, typename LT>
inline void row_block(const Gemv& g, const WT* w, int64_t ldw, const LT* B, int64_t n0, int64_t k0, int64_t k1,
                      int64_t rows_end) {
  // the next block's rows, if w has NB more rows after this block's
  const WT* pf = g.prefetch && n0 + 2 * NB <= rows_end ? w + (n0 + NB) * ldw + k0 : nullptr;
  int64_t m0 = 0;
  for (; m0 + 4 <= g.M; m0 += 4) {
    if constexpr (NB % 4 == 0) {
      for (int i = 0; i < NB; i += 4)
        block<4, 4>(g, w, ldw, B, n0 + i, m0, k0, k1, m0 == 0 && pf ? pf + i * ldw : nullptr);
    } else {
      block<NB, 4>(g, w, ldw, B, n0, m0, k0, k1, m0 == 0 ? pf : nullptr);
    }
  }
  const WT* pfr = m0 == 0 ? pf : nullptr;
  switch (g.M - m0) {
    case 3: block<NB, 3>(g, w, ldw, B, n0, m0, k0, k1, pfr); break;
    case 2: block<NB, 2>(g, w, ldw, B, n0, m0, k0, k1, pfr); break;
    case 1: block<NB, 1>(g, w, ldw, B, n0, m0, k0, k1, pfr); break;
    default: break;
  }
}

// K range per pass. A 4x4 block's x rows and W rows must fit L1 (32 KiB) together, or x comes back from L2 for
// every block. Same-process A/B, 1 thread, cold, p10 us unsplit -> 512-wide ranges: 1536->576 M=4 224 -> 182,
// M=16 433 -> 408; 9728->256 M=4 598 -> 534. Hence ranges for K > 1024 and M >= 4 only (the 8x2 / 8x3 blocks of M=2, 3
// got 5-20% slower), 512 wide whatever M (ranges shrunk with M, 128 wide at M=16, were 10-25% slower than unsplit).
inline int64_t k_chunk(int64_t M, int64_t K) {
  if (M < 4 || K <= 1024) return K;
  const int64_t parts = (K + 511) / 512;
  return ((K + parts - 1) / parts + 31) / 32 * 32;  // multiple of 32: bf16 pairs and whole vectors
}

// 2-4 x rows too long to stay in L1 beside the stream (streams()): W streamed row after row as for shorter x, in K
// slices of at most kSliceXBytes of x, each slice over every row of the range before the next (the x slice stays in
// L1 across them), the slices' sums added on and the LoRA expand and bias joined on the last. Cold, one thread, M=4,
// p10 us, alternated process pairs, against the 8-row blocks: 2560->2560 1,880-1,973 / 2,167-2,456, 9728->2560
// 7,378-7,658 / 7,988-9,592 (Qwen3-4B's shapes; 16 and 28 KiB slices measured alike).
constexpr int64_t kSliceXBytes = 16 << 10;

template <typename WT, typename LT>
void slice_rows(const Gemv& g, const WT* w, int64_t ldw, const LT* B, int64_t r0, int64_t r1) {
  const int64_t parts = (g.M * g.K * int64_t(sizeof(float)) + kSliceXBytes - 1) / kSliceXBytes;
  const int64_t kp = ((g.K + parts - 1) / parts + 15) / 16 * 16;
  constexpr int64_t kRows = 32;
  float part[4 * kRows];
  for (int64_t s0 = r0; s0 < r1; s0 += kRows) {
    const int64_t n = std::min(kRows, r1 - s0);
    for (int64_t k0 = 0; k0 < g.K; k0 += kp) {
      const int64_t kl = std::min(kp, g.K - k0);
      const bool first = k0 == 0, last = k0 + kl >= g.K;
      float* out = first ? g.out + s0 : part;
      const int64_t ldo = first ? g.ldo : n;
      const LT* b = last && B ? B + s0 * g.r : nullptr;
      const float* bias = last && g.bias ? g.bias + s0 : nullptr;
      auto run = [&](auto mb) {
        stream_rows<decltype(mb)::value, 3>(w + s0 * ldw + k0, ldw, n, g.x + k0, g.K, kl, b, g.r, g.st, g.r, bias,
                                            out, ldo, g.prefetch, stream_ahead());
      };
      switch (g.M) {
        case 2: run(std::integral_constant<int, 2>{}); break;
        case 3: run(std::integral_constant<int, 3>{}); break;
        default: run(std::integral_constant<int, 4>{}); break;
      }
      if (!first)
        for (int64_t j = 0; j < g.M; ++j)
          for (int64_t i = 0; i < n; ++i) g.out[j * g.ldo + s0 + i] += part[j * n + i];
    }
  }
}

// Rows [r0, r1) of w (n_rows rows in all): 8-row blocks, then 4, then singles.
template <typename WT, typename LT>
void rows(const Gemv& g, const WT* w, int64_t ldw, int64_t n_rows, const LT* B, int64_t r0, int64_t r1) {
  if (g.stream) {  // decode: W row after row, one memory stream (vec.h stream_rows)
    const int64_t ad = g.ids ? g.ids[0] : 0;  // several rows stream only under one adapter (streams())
    const LT* b = B && ad >= 0 ? B + (ad * g.N + r0) * g.r : nullptr;
    const float* bias = g.bias ? g.bias + r0 : nullptr;
    auto run = [&](auto mb, auto side) {
      stream_rows<decltype(mb)::value, decltype(side)::value>(w + r0 * ldw, ldw, r1 - r0, g.x, g.K, g.K, b, g.r, g.st,
                                                              g.r, bias, g.out + r0, g.ldo, g.prefetch, stream_ahead());
    };
    using Three = std::integral_constant<int, 3>;
    switch (g.M) {
      case 1:
        if (stream_row_group(g.K * static_cast<int64_t>(sizeof(WT))) == 4) return run(std::integral_constant<int, 1>{}, std::integral_constant<int, 4>{});
        return run(std::integral_constant<int, 1>{}, std::integral_constant<int, 1>{});
      case 2: return run(std::integral_constant<int, 2>{}, Three{});
      case 3: return run(std::integral_constant<int, 3>{}, Three{});
      default: return run(std::integral_constant<int, 4>{}, Three{});
    }
  }
  if (g.slices) return slice_rows(g, w, ldw, B, r0, r1);
  const int64_t kc = k_chunk(g.M, g.K);
  for (int64_t k0 = 0; k0 < g.K; k0 += kc) {
    const int64_t k1 = std::min(g.K, k0 + kc);
    int64_t n0 = r0;
    for (; n0 + 8 <= r1; n0 += 8) row_block<8>(g, w, ldw, B, n0, k0, k1, n_rows);
    for (; n0 + 4 <= r1; n0 += 4) row_block<4>(g, w, ldw, B, n0, k0, k1, n_rows);
    for (; n0 < r1; ++n0) row_block<1>(g, w, ldw, B, n0, k0, k1, n_rows);
  }
}

// Shrink: t[m] = s_id · x[m] Aᵀ[id_m], before the W pass (the expand needs all of t; r x K is small,
// 16 x 1536 fp32 = 96 KiB). One adapter: all rows in one pass; several: row by row.
template <typename LT>
void shrink(const Gemv& g, const LT* A, const float* scales, float* t) {
  Gemv s = g;
  s.out = t, s.ldo = g.r, s.bias = nullptr, s.ids = nullptr, s.st = nullptr;
  s.stream = s.slices = false;  // A is short (r rows): its next-block prefetch covers the cold start a lone stream would stall on
  if (!g.ids) {
    rows<LT, float>(s, A, g.K, g.r, nullptr, 0, g.r);
  } else {
    s.M = 1;
    for (int64_t m = 0; m < g.M; ++m) {
      if (g.ids[m] < 0) continue;
      s.x = g.x + m * g.K, s.xb = g.xb ? g.xb + m * g.K : nullptr, s.out = t + m * g.r;
      rows<LT, float>(s, A + g.ids[m] * g.r * g.K, g.K, g.r, nullptr, 0, g.r);
    }
  }
  for (int64_t m = 0; m < g.M; ++m) {
    const int64_t ad = g.ids ? g.ids[m] : 0;
    for (int64_t j = 0; j < g.r; ++j) t[m * g.r + j] *= ad >= 0 ? scales[ad] : 0.f;
  }
}

// Rows of W per chunk of work: 32 rows = 4 blocks; 576 rows -> 18 chunks, enough for 2 threads to balance.
constexpr int64_t kChunkRows = 32;

template <typename WT, typename LT>
void lora_linear_impl(const Gemv& g, const WT* W, int64_t ldw, const LT* A, const LT* B, const float* scales,
                      float* t) {
  if (A) shrink(g, A, scales, t);
  const int64_t chunks = (g.N + kChunkRows - 1) / kChunkRows;
  auto chunk = [&](int64_t c) {
    rows(g, W, ldw, g.N, A ? B : nullptr, c * kChunkRows, std::min(g.N, (c + 1) * kChunkRows));
  };
  // Below ~256K MACs (576->192 at M=1 is 110K: 8.4 us alone, 9.5 us with a helper) handing out chunks costs more
  // than a second core returns, while W is cached; from memory (g.prefetch: likely cold) a second core's stream
  // pays: 576->192 M=1, 2 threads, cold, p10 38 us alone against 22 for a bare read of the bytes on both (stop 31).
  if (g.M * g.N * g.K < (int64_t(1) << 18) && !g.prefetch) {
    for (int64_t c = 0; c < chunks; ++c) chunk(c);
  } else {
    parallel_chunks(chunks, chunk);
  }
}

template <typename WT>
void dispatch_lora(const Gemv& g, const WT* W, int64_t ldw, const at::Tensor& A, const at::Tensor& B,
                   const float* scales, float* t) {
  if (!A.defined()) return lora_linear_impl<WT, float>(g, W, ldw, nullptr, nullptr, scales, t);
  switch (A.scalar_type()) {
    case at::kFloat: return lora_linear_impl(g, W, ldw, A.data_ptr<float>(), B.data_ptr<float>(), scales, t);
    case at::kBFloat16:
      return lora_linear_impl(g, W, ldw, A.data_ptr<c10::BFloat16>(), B.data_ptr<c10::BFloat16>(), scales, t);
    case at::kHalf: return lora_linear_impl(g, W, ldw, A.data_ptr<c10::Half>(), B.data_ptr<c10::Half>(), scales, t);
    default: TORCH_CHECK(false, "lora_a dtype ", A.scalar_type(), " not supported (float32, bfloat16, float16)");
  }
}

// dispatch_lora on W's dtype.
void gemv_any(const Gemv& g, const at::Tensor& w, const at::Tensor& A, const at::Tensor& B, const float* scales,
              float* t) {
  switch (w.scalar_type()) {
    case at::kFloat: return dispatch_lora(g, w.data_ptr<float>(), w.stride(0), A, B, scales, t);
    case at::kBFloat16: return dispatch_lora(g, w.data_ptr<c10::BFloat16>(), w.stride(0), A, B, scales, t);
    default: return dispatch_lora(g, w.data_ptr<c10::Half>(), w.stride(0), A, B, scales, t);
  }
}

// shrink on A's dtype.
void shrink_any(const Gemv& g, const at::Tensor& A, const float* scales, float* t) {
  switch (A.scalar_type()) {
    case at::kFloat: return shrink(g, A.data_ptr<float>(), scales, t);
    case at::kBFloat16: return shrink(g, A.data_ptr<c10::BFloat16>(), scales, t);
    default: return shrink(g, A.data_ptr<c10::Half>(), scales, t);
  }
}

// Above this many rows the blocked GEMM wins, so prefill goes through oneDNN (fp32_linear) or ATen's bf16 mm: base
// GEMM, then the LoRA delta as two thin GEMMs. 1 thread, no LoRA, p10 us ours / oneDNN: 576x1536 M=16 154/205,
// M=17 215/214; 1536x576 M=16 156/210, M=17 214/212 (torch's MKL mm: 365 and 426 at M=16 and 17).
constexpr int64_t kGemvMaxRows = 16;

// fp32 x Wᵀ (+ bias) through oneDNN when torch has it: torch's fp32 mm goes to MKL, whose sgemm takes a non-AVX-512
// path on this AMD CPU (1 thread, M=60: 576x3072 78-91 GFLOP/s against oneDNN's 165-192, same fp32 arithmetic).
at::Tensor fp32_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  static const c10::optional<c10::OperatorHandle> op =
      at::hasMKLDNN() ? c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""}) : c10::nullopt;
  // a row-strided W (a column slice: extends_rows below) goes to BLAS as is rather than copied per call
  if (!op.has_value() || !w.is_contiguous()) return bias.defined() ? at::addmm(bias, x, w.t()) : at::mm(x, w.t());
  torch::jit::Stack stack{x, w, bias.defined() ? c10::IValue(bias) : c10::IValue(), std::string("none"),
                          c10::List<c10::optional<at::Scalar>>(), c10::IValue(std::string(""))};
  op->callBoxed(&stack);
  return stack[0].toTensor();
}

// bf16 weights stay bf16: x is rounded to bf16 (as every bf16 GEMM does: oneDNN, llama.cpp, tl.dot) and oneDNN's
// bf16 GEMM (AVX512-BF16) runs ~4x the fp32 FLOPs here (M=69, 576x1536: 313 us vs 1287 us fp32 on one thread);
// each product comes back in fp32 to be summed, and y is fp32 before the final cast to x's dtype.
at::Tensor gemm_path(const at::Tensor& xf, const at::Tensor& w, const at::Tensor& A, const at::Tensor& B,
                     const at::Tensor& scales, const at::Tensor& bias, const at::Tensor& ids, bool multi) {
  const bool lowp = w.scalar_type() == at::kBFloat16;
  const at::Tensor xg = lowp ? xf.to(at::kBFloat16) : xf;
  at::Tensor y;
  if (lowp) {
#ifdef __AVX512BF16__
    y = at::mm(xg, w.t()).to(at::kFloat);
    if (bias.defined()) y.add_(bias);
#else  // no bf16 arithmetic on this CPU (torch emulates it, 3x slower than fp32 here): the same bf16 values widened,
       // their products exact in fp32, through the fp32 GEMM (a 60-token append, merged bf16: 1.7 -> 0.6 s, Zen 3)
    y = fp32_linear(xg.to(at::kFloat), w.to(at::kFloat), bias);
#endif
  } else {
    y = fp32_linear(xf, w.scalar_type() == at::kFloat ? w : w.to(at::kFloat), bias);
  }
  if (!A.defined()) return y;
  // The LoRA delta in fp32 from fp32 x whatever the factors' dtype: with bf16 factors, a bf16 x·Aᵀ (x and t rounded
  // to bf16) changed greedy tokens on 3 of bench_agent_step's 20 steps (random r=16 adapter).
  at::Tensor af = A.to(at::kFloat).contiguous(), bf = B.to(at::kFloat).contiguous();
  if (!multi) return y.add_(fp32_linear(fp32_linear(xf, af, at::Tensor()).mul_(scales[0].item<float>()), bf, at::Tensor()));
  for (int64_t ad = 0; ad < af.size(0); ++ad) {
    at::Tensor rows = (ids == ad).nonzero().reshape({-1});
    if (rows.numel() == 0) continue;
    at::Tensor t = at::mm(xf.index_select(0, rows), af[ad].t());
    y.index_add_(0, rows, at::mm(t, bf[ad].t()), scales[ad].item<float>());
  }
  return y;
}

// B stored as the continuation of W's rows (lora.py extend_lora_rows): W (N, K) and B (N, r) are the column slices
// [:, :K] and [:, K:] of one (N, K + r) tensor, so y = [x | s·x Aᵀ] · [W | B]ᵀ is one GEMV (one memory stream, B
// no longer a second, thin one) or one GEMM (instead of base GEMM, expand GEMM and an add).
bool extends_rows(const at::Tensor& w, const at::Tensor& b) {
  const char* w_end = static_cast<const char*>(w.data_ptr()) + w.size(1) * w.element_size();  // end of W's row 0
  return b.dim() == 2 && b.scalar_type() == w.scalar_type() && b.size(0) == w.size(0) && w.stride(1) == 1 &&
         b.stride(1) == 1 && w.stride(0) == w.size(1) + b.size(1) && b.stride(0) == w.stride(0) &&
         static_cast<const char*>(b.data_ptr()) == w_end;
}

// [x | t] row by row: M rows of K + r floats.
std::vector<float> extend_x(const float* x, int64_t M, int64_t K, const float* t, int64_t r) {
  std::vector<float> xe(M * (K + r));
  for (int64_t m = 0; m < M; ++m) {
    std::copy_n(x + m * K, K, xe.data() + m * (K + r));
    std::copy_n(t + m * r, r, xe.data() + m * (K + r) + K);
  }
  return xe;
}

// Whether the W pass reads W row after row (vec.h stream_rows) rather than in 8-row blocks: one x row (the single
// memory stream; set_lora_single_row_stream switches it off to compare) and 2-4 rows under one adapter. Cold, 1
// thread, the 120 layer matrices in decode order: 4 rows streamed cost about what one does (vec.h), in the 4x4 blocks
// 1.3-2x. Only while the x rows stay in L1 beside the stream (32 KiB here): 4 rows of K=2560 (40 KiB) streamed cost
// 2.0-2.2x one row, the blocks (whose k_chunk keeps x's slice in L1) 1.5-1.7x. By shape only, never by cache state,
// so a call's result does not depend on what ran before it. bf16 x keeps the blocks (vdpbf16ps).
constexpr int64_t kStreamMaxRows = 4, kStreamMaxXBytes = 28 << 10;
bool streams(const Gemv& g) {
  if (g.xb) return false;
  if (g.M == 1) return stream_single_row();
  return g.M <= kStreamMaxRows && !g.ids && g.M * (g.K + g.r) * int64_t(sizeof(float)) <= kStreamMaxXBytes;
}

// Longer x rows stream in K slices (slice_rows) on AVX2 builds, where it was measured; elsewhere the 8-row blocks.
bool slices(const Gemv& g) {
#ifdef DUOMEM_AVX2
  return !g.xb && g.M > 1 && g.M <= kStreamMaxRows && !g.ids && !streams(g);
#else
  (void)g;
  return false;
#endif
}

bool floating_ok(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; }

}  // namespace

// x (..., K); weight (N, K), or uint8 GGUF blocks (N, K/32, 24 | 36) (block_linear_cpu.cpp); lora_a (r, K) | (n, r, K); lora_b (N, r) | (n, N, r); scale a float, or scales (n,)
// per adapter when given; bias (N,); adapter_ids (M,) int with -1 = base only. Returns (..., N) in x.dtype.
at::Tensor lora_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& lora_a,
                           const c10::optional<at::Tensor>& lora_b, double scale,
                           const c10::optional<at::Tensor>& scales_opt, const c10::optional<at::Tensor>& bias,
                           const c10::optional<at::Tensor>& adapter_ids) {
  // Decode calls this ~200 times per token on the default model: every ATen allocation or op here is ~0.5 us of a
  // 10-30 us call, so scratch lives in std::vector and fp32 inputs pass through without copies.
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "lora_linear_cpu: tensors must be on CPU");
  if (weight.scalar_type() == at::kByte)  // GGUF blocks (blocks.h)
    return block_lora_linear_cpu(x, weight, lora_a, lora_b, scale, scales_opt, bias, adapter_ids);
  TORCH_CHECK(weight.dim() == 2, "weight must be (N, K), got ", weight.sizes());
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), "x last dim ", x.size(-1), " != weight K ", weight.size(1));
  TORCH_CHECK(floating_ok(x.scalar_type()) && floating_ok(weight.scalar_type()), "x/weight must be fp32/bf16/fp16");
  const int64_t K = weight.size(1), N = weight.size(0);
  at::Tensor xf = x.reshape({-1, K}).to(at::kFloat).contiguous();
  const int64_t M = xf.size(0);
  at::Tensor w = weight.stride(1) == 1 ? weight : weight.contiguous();
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end() - 1);
  out_shape.push_back(N);
  at::Tensor y = at::empty(out_shape, xf.options());
  // bf16 x is kept as is (exact) for the bf16-weight dot-product path
  at::Tensor xb = x.scalar_type() == at::kBFloat16 ? x.reshape({-1, K}).contiguous() : at::Tensor();
  Gemv g{xf.data_ptr<float>(), xb.defined() ? xb.data_ptr<c10::BFloat16>() : nullptr, M, K, y.data_ptr<float>(), N,
         nullptr, nullptr, nullptr, 0, N};
  int64_t n_adapters = 1;
  at::Tensor bf, A, B, ids, scales;
  std::vector<float> scale_buf, t_buf;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == N, "bias must have N=", N, " elements, got ", bias->numel());
    bf = bias->to(at::kFloat).contiguous();
    g.bias = bf.data_ptr<float>();
  }
  const bool multi = adapter_ids.has_value() && adapter_ids->defined();
  bool ext = false;  // B continues W's rows (extends_rows)
  if (lora_a.has_value() && lora_a->defined()) {
    TORCH_CHECK(lora_b.has_value() && lora_b->defined(), "lora_b is required with lora_a");
    A = lora_a->contiguous();
    ext = !multi && !xb.defined() && extends_rows(w, *lora_b) &&
          (M <= kGemvMaxRows || w.scalar_type() == at::kFloat);
    B = ext ? *lora_b : lora_b->to(A.scalar_type()).contiguous();
    TORCH_CHECK(floating_ok(A.scalar_type()), "lora_a must be fp32/bf16/fp16");
    TORCH_CHECK(A.dim() == (multi ? 3 : 2) && B.dim() == A.dim(), "lora_a/lora_b must be ", multi ? "3-D" : "2-D",
                " (stacked per adapter iff adapter_ids is given), got ", A.sizes(), " and ", B.sizes());
    n_adapters = multi ? A.size(0) : 1;
    g.r = A.size(-2);
    TORCH_CHECK(A.size(-1) == K && B.size(-2) == N && B.size(-1) == g.r && (!multi || B.size(0) == n_adapters),
                "lora shapes: lora_a ", A.sizes(), ", lora_b ", B.sizes(), " do not fit K=", K, " N=", N);
    if (scales_opt.has_value() && scales_opt->defined()) {
      TORCH_CHECK(scales_opt->numel() == n_adapters || scales_opt->numel() == 1,
                  "scales must have one value per adapter (", n_adapters, "), got ", scales_opt->numel());
      scales = scales_opt->to(at::kFloat).reshape({-1}).expand({n_adapters}).contiguous();
      scale_buf.assign(scales.data_ptr<float>(), scales.data_ptr<float>() + n_adapters);
    } else {
      scale_buf.assign(n_adapters, static_cast<float>(scale));
    }
    t_buf.assign(M * std::max<int64_t>(g.r, 1), 0.f);
    g.st = t_buf.data();
    if (multi) {
      ids = adapter_ids->to(at::kLong).reshape({-1}).contiguous();
      TORCH_CHECK(ids.numel() == M, "adapter_ids must have one id per row of x (", M, "), got ", ids.numel());
      g.ids = ids.data_ptr<int64_t>();
      for (int64_t m = 0; m < M; ++m)
        TORCH_CHECK(g.ids[m] >= -1 && g.ids[m] < n_adapters, "adapter_ids[", m, "]=", g.ids[m],
                    " must lie in [-1, ", n_adapters, ")");
    }
  }
  if (ext && M > kGemvMaxRows) {  // fp32: shrink, then one GEMM over [x | s·t] and [W | B]
    at::Tensor t = fp32_linear(xf, A.to(at::kFloat).contiguous(), at::Tensor()).mul_(scale_buf[0]);
    at::Tensor we = w.as_strided({N, K + g.r}, {K + g.r, 1});
    y.view({M, N}).copy_(fp32_linear(at::cat({xf, t}, 1), we, bf));
  } else if (M > kGemvMaxRows) {
    scales = at::tensor(scale_buf.empty() ? std::vector<float>{1.f} : scale_buf);
    y.view({M, N}).copy_(gemm_path(xf, w, A, B, scales, bf, ids, multi));
  } else if (M > 0 && N > 0) {
    const float* sc = scale_buf.data();
    const int64_t nbytes = ext ? N * (K + g.r) * w.element_size() + A.nbytes()
                               : w.nbytes() + (A.defined() ? A.nbytes() + B.nbytes() : 0);
    g.prefetch = weight_reuse().should_prefetch(w.data_ptr(), nbytes);
    g.stream = streams(g);
    g.slices = slices(g);
    if (ext) {  // shrink into t_buf, then one GEMV over [x | s·t] and W's extended rows
      shrink_any(g, A, sc, t_buf.data());
      std::vector<float> xe = extend_x(g.x, M, K, t_buf.data(), g.r);
      Gemv ge = g;
      ge.x = xe.data(), ge.K = K + g.r, ge.st = nullptr, ge.r = 0;
      gemv_any(ge, w, at::Tensor(), at::Tensor(), sc, nullptr);
    } else {
      gemv_any(g, w, A, B, sc, t_buf.data());
    }
  }
  return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}

}  // namespace duomem
