// Vector helpers shared by the CPU kernels: widening loads (fp32 / bf16 / fp16 -> fp32 zmm) and a register-blocked
// row-dot kernel, out[j][i] = w_i · x_j, that streams NB rows of w once for MB rows of x (fp32 accumulation).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include "vec_avx2.h"

// Forced: an out-of-line callee taking acc by reference makes GCC keep the accumulators in memory (a store per FMA).
#define DUOMEM_INLINE inline __attribute__((always_inline))

namespace duomem {
namespace vec {

// Look-ahead bytes of the one-to-four-row W stream (stream_rows): fp32 W, 16-bit W, several x rows (measured below).
constexpr int64_t kStreamAhead = 2048, kStreamAheadHalf = 8192, kStreamAheadRows = 16384;

constexpr int kRowBlock = 4;  // W rows per block: 4 W x 4 x rows = 16 zmm accumulators, 8 zmm for operands
constexpr int kMBlock = 4;

inline float to_f(float v) { return v; }
inline float to_f(c10::BFloat16 v) { return static_cast<float>(v); }
inline float to_f(c10::Half v) { return static_cast<float>(v); }

#ifdef __AVX512F__
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const c10::BFloat16* p) {
  __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline __m512 load16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512 load16m(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load16m(const c10::BFloat16* p, __mmask16 m) {
  __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline __m512 load16m(const c10::Half* p, __mmask16 m) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

// a + b in exactly this order: -ffast-math lets GCC reassociate plain vector adds, differently in each inlined
// copy, so the same sum written once came out with different bits in stream_rows' R = 1 and R = 4 copies. An add
// with explicit rounding is a builtin the optimiser leaves alone (same instruction, same speed).
inline __m512 add_fixed(__m512 a, __m512 b) {
  return _mm512_add_round_ps(a, b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// Horizontal sums of several vectors at once. Pair step: unpack lo/hi and add, so each 128-bit lane holds partial
// sums of two (then four) sources; lane step: shuffle 128-bit lanes and add.
inline __m512 pair_ps(__m512 a, __m512 b) {  // per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3]
  return _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
}
inline __m512 quad_ps(__m512 ab, __m512 cd) {  // per 128-bit lane: partial sums of [a, b, c, d]
  const __m512d x = _mm512_castps_pd(ab), y = _mm512_castps_pd(cd);
  return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
}
// 4 sources -> [sum a, sum b, sum c, sum d]
inline __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m512 q = quad_ps(pair_ps(a, b), pair_ps(c, d));
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(q), _mm512_extractf32x8_ps(q, 1));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}
// 16 sources -> lane k = sum of v[k]
inline __m512 reduce16(const __m512* v) {
  __m512 q[4];
  for (int g = 0; g < 4; ++g)
    q[g] = quad_ps(pair_ps(v[4 * g], v[4 * g + 1]), pair_ps(v[4 * g + 2], v[4 * g + 3]));
  // q[g] lane L (128-bit) holds partials of sources 4g..4g+3; fold lanes: [L0+L1, L2+L3] then across
  __m512 w0 = _mm512_add_ps(_mm512_shuffle_f32x4(q[0], q[1], 0x88), _mm512_shuffle_f32x4(q[0], q[1], 0xdd));
  __m512 w1 = _mm512_add_ps(_mm512_shuffle_f32x4(q[2], q[3], 0x88), _mm512_shuffle_f32x4(q[2], q[3], 0xdd));
  return _mm512_add_ps(_mm512_shuffle_f32x4(w0, w1, 0x88), _mm512_shuffle_f32x4(w0, w1, 0xdd));
}

// acc[i][j] = dot(w_i, x_j) for NB weight rows and MB x rows; K tail handled by a masked step.
template <int NB, int MB, typename WT>
inline void dot_block(const WT* w, int64_t ldw, const float* x, int64_t ldx, int64_t K, float* out, int64_t ldo) {
  __m512 acc[NB][MB];
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < MB; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 xv[MB];
    for (int j = 0; j < MB; ++j) xv[j] = _mm512_loadu_ps(x + j * ldx + k);
    for (int i = 0; i < NB; ++i) {
      __m512 wv = load16(w + i * ldw + k);
      for (int j = 0; j < MB; ++j) acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);
    }
  }
  if (k < K) {
    __mmask16 m = static_cast<__mmask16>((1u << (K - k)) - 1u);
    __m512 xv[MB];
    for (int j = 0; j < MB; ++j) xv[j] = _mm512_maskz_loadu_ps(m, x + j * ldx + k);
    for (int i = 0; i < NB; ++i) {
      __m512 wv = load16m(w + i * ldw + k, m);
      for (int j = 0; j < MB; ++j) acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);
    }
  }
  if constexpr (NB == 4 && MB == 4) {  // 16 horizontal sums in one transpose-add tree (45 ops instead of ~160)
    __m512 v[16];
    for (int j = 0; j < 4; ++j)
      for (int i = 0; i < 4; ++i) v[j * 4 + i] = acc[i][j];
    const __m512 r = reduce16(v);  // lane 4j + i = dot(w_i, x_j)
    for (int j = 0; j < 4; ++j) _mm_storeu_ps(out + j * ldo, _mm512_extractf32x4_ps(r, j));
  } else if constexpr (NB == 4 && MB == 1) {
    _mm_storeu_ps(out, reduce4(acc[0][0], acc[1][0], acc[2][0], acc[3][0]));
  } else {
    for (int i = 0; i < NB; ++i)
      for (int j = 0; j < MB; ++j) out[j * ldo + i] = _mm512_reduce_add_ps(acc[i][j]);
  }
}
#else
template <int NB, int MB, typename WT>
inline void dot_block(const WT* w, int64_t ldw, const float* x, int64_t ldx, int64_t K, float* out, int64_t ldo) {
  float acc[NB][MB] = {};
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < MB; ++j) {
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t k = 0; k < K; ++k) s += to_f(w[i * ldw + k]) * x[j * ldx + k];
      acc[i][j] = s;
    }
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < MB; ++j) out[j * ldo + i] = acc[i][j];
}
#endif

// out (MB rows, stride ldo) gets the dots of NB weight rows with rows [m0, m0+mb) of x, for any mb.
template <int NB, typename WT>
inline void dot_rows(const WT* w, int64_t ldw, const float* x, int64_t ldx, int64_t K, int64_t mb, float* out,
                     int64_t ldo) {
  int64_t j = 0;
  for (; j + kMBlock <= mb; j += kMBlock) dot_block<NB, kMBlock>(w, ldw, x + j * ldx, ldx, K, out + j * ldo, ldo);
  switch (mb - j) {
    case 3: dot_block<NB, 3>(w, ldw, x + j * ldx, ldx, K, out + j * ldo, ldo); break;
    case 2: dot_block<NB, 2>(w, ldw, x + j * ldx, ldx, K, out + j * ldo, ldo); break;
    case 1: dot_block<NB, 1>(w, ldw, x + j * ldx, ldx, K, out + j * ldo, ldo); break;
    default: break;
  }
}

// Fused LoRA dot, out[j*ldo + i] (+)= w_i · x_j + b_j[i] · st_j (+ bias[i]): NB weight rows, MB x rows, then the
// rank-r extension (b_j = B rows of row j's adapter at this W block, null = base only; st_j = s·t_j) through the
// same accumulators, so the expand needs no separate reduction or pass over y.
#ifdef __AVX512F__
// Keeps a loaded operand in a register: without it GCC folds the loads into the FMAs as memory operands, re-loading
// each x (or w) vector once per FMA; on this Zen 4 that halves the 4x4 block (576x576 M=4: 57 us -> 27 us).
#define DUOMEM_PIN(v) asm("" : "+v"(v))

template <int NB, int MB, typename LT>
DUOMEM_INLINE void lora_finish(__m512 (&acc)[NB][MB], const LT* const* b, int64_t r, const float* st, int64_t ldt,
                               const float* bias, float* out, int64_t ldo, bool add_out) {
  bool shared = b[0] != nullptr;  // one adapter for the whole block (the common case): each B vector loaded once
  for (int j = 1; j < MB; ++j) shared = shared && b[j] == b[0];
  for (int64_t k = 0; k < r; k += 16) {
    const __mmask16 m = r - k >= 16 ? 0xffff : static_cast<__mmask16>((1u << (r - k)) - 1u);
    if (shared) {
      __m512 sv[MB];
#pragma GCC unroll 8
      for (int j = 0; j < MB; ++j) sv[j] = _mm512_maskz_loadu_ps(m, st + j * ldt + k);
#pragma GCC unroll 8
      for (int i = 0; i < NB; ++i) {
        const __m512 bv = load16m(b[0] + i * r + k, m);
#pragma GCC unroll 8
        for (int j = 0; j < MB; ++j) acc[i][j] = _mm512_fmadd_ps(bv, sv[j], acc[i][j]);
      }
      continue;
    }
#pragma GCC unroll 8
    for (int j = 0; j < MB; ++j) {
      if (!b[j]) continue;
      const __m512 sv = _mm512_maskz_loadu_ps(m, st + j * ldt + k);
#pragma GCC unroll 8
      for (int i = 0; i < NB; ++i) acc[i][j] = _mm512_fmadd_ps(load16m(b[j] + i * r + k, m), sv, acc[i][j]);
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < MB; ++j) {
    if constexpr (NB % 4 == 0) {
#pragma GCC unroll 8
      for (int g = 0; g < NB / 4; ++g) {
        __m128 v = reduce4(acc[4 * g][j], acc[4 * g + 1][j], acc[4 * g + 2][j], acc[4 * g + 3][j]);
        if (bias) v = _mm_add_ps(v, _mm_loadu_ps(bias + 4 * g));
        if (add_out) v = _mm_add_ps(v, _mm_loadu_ps(out + j * ldo + 4 * g));
        _mm_storeu_ps(out + j * ldo + 4 * g, v);
      }
    } else {
      for (int i = 0; i < NB; ++i) {
        const float prev = add_out ? out[j * ldo + i] : 0.f;
        out[j * ldo + i] = _mm512_reduce_add_ps(acc[i][j]) + (bias ? bias[i] : 0.f) + prev;
      }
    }
  }
}

// Cold weights (decode: each layer's W comes from DRAM once per token) stall on short rows (576 floats = 36 lines per
// row) that the hardware prefetcher barely ramps up on; so each K step also prefetches the same K offset of the next
// W block (pf, null = none) into L2: one line per row per step, a whole block (8 rows x 2.3 KiB at K=576) ahead.
// Measured on this Zen 4, 1 thread, weights rotated over 64 MiB: 576x576 M=1 84 -> 46 us, M=4 121 -> 43 us; hot
// (L3-resident) M=1 costs 10-15% more (16.6 -> 18.2 us), M=4 ~2%. T0/NTA hints (into L1) gained little cold and cost
// 40% hot; prefetching every other line lost most of the cold gain. Whether a call prefetches is decided per call by
// weight_reuse.h (reuse distance), so cached weights skip it.
template <int NB>
DUOMEM_INLINE void prefetch_rows(const void* pf, int64_t ld_bytes) {
  if (!pf) return;
#pragma GCC unroll 8
  for (int i = 0; i < NB; ++i) _mm_prefetch(static_cast<const char*>(pf) + i * ld_bytes, _MM_HINT_T2);
}

// One K step of the fp32 block: MB x vectors and NB w vectors (masked to the K tail), NB x MB FMAs.
template <int NB, int MB, typename WT>
DUOMEM_INLINE void fma_step(__m512 (&acc)[NB][MB], const WT* w, int64_t ldw, const float* x, int64_t ldx,
                            __mmask16 m) {
  __m512 xv[MB];
#pragma GCC unroll 8
  for (int j = 0; j < MB; ++j) {
    xv[j] = _mm512_maskz_loadu_ps(m, x + j * ldx);
    DUOMEM_PIN(xv[j]);
  }
#pragma GCC unroll 8
  for (int i = 0; i < NB; ++i) {
    __m512 wv = load16m(w + i * ldw, m);
    DUOMEM_PIN(wv);
#pragma GCC unroll 8
    for (int j = 0; j < MB; ++j) acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);
  }
}

// fp32 FMAs; W fp32, or bf16/fp16 widened exactly in registers. 4x4 block: 8 loads per 16 FMAs.
template <int NB, int MB, typename WT, typename LT>
inline void lora_dot(const WT* w, int64_t ldw, const float* x, int64_t ldx, int64_t K, const WT* pf,
                     const LT* const* b, int64_t r, const float* st, int64_t ldt, const float* bias, float* out,
                     int64_t ldo, bool add_out) {
  __m512 acc[NB][MB];
#pragma GCC unroll 8
  for (int i = 0; i < NB; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < MB; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    prefetch_rows<NB>(pf ? pf + k : nullptr, ldw * sizeof(WT));
    fma_step<NB, MB>(acc, w + k, ldw, x + k, ldx, 0xffff);
  }
  if (k < K) fma_step<NB, MB>(acc, w + k, ldw, x + k, ldx, static_cast<__mmask16>((1u << (K - k)) - 1u));
  lora_finish<NB, MB>(acc, b, r, st, ldt, bias, out, ldo, add_out);
}

// 1-4 x rows (decode: one row per session): W's rows one after another, so memory sees a single forward stream
// (plus B's, r floats per row) that the hardware prefetcher follows across rows and across calls, helped by a
// look-ahead below. The 8-row block (lora_dot) reads 8 rows side by side, 8 streams 2.3 KiB apart at K=576, which the
// prefetcher follows worse: standalone, 1 thread, the default model's 120 layer matrices (425 MB fp32) in decode
// order, GB/s median of 12 passes over 4 runs: 8-row blocks with next-block prefetch 22.5-23.5, row after row
// 28.9-30.7, a plain sum of the same bytes 29.4-32.0. Each W vector feeds MB FMAs (one per x row, x from L1); each
// row keeps 4 / MB accumulators per x row over K (independent FMA chains, 4 then 2 vectors per step), and 16 rows'
// sums go through one transpose-add tree per x row.
// out[j*ldo + i] = w_i · x_j + b_i · st_j (+ bias[i]) for i < n, j < MB (b = B's rows for these W rows, or null).
// prefetch (W likely not cached: weight_reuse.h): each step's W bytes are also asked for kStreamAhead further on,
// into L2. Standalone on a host with slower DRAM than the one the stream was tuned on (20-28 GB/s probe; 2.6 GHz),
// the 120 layer matrices in decode order, 1 thread, interleaved. One x row: no look-ahead 27.4-29.1 ms, 1 KiB
// 19.5-22.6, 2 KiB 18.8-22.5, 3 KiB 20.6-24.2, 4-16 KiB 25-28; into L1 (T0) 28.7-34.7 (weights in one arena on 2 MiB
// pages, model/arena.py; on separate 4 KiB-page tensors 2 KiB gives 24.4-24.7 against 28.9-29.3). Four x rows (a
// step of 4 sessions: 5 loads per 4 FMAs, so the core runs behind the memory stream unless it is asked far ahead):
// no look-ahead 47-49 ms, 2 KiB 36-38, 8 KiB 20-36, 16 KiB 18-23, 32 KiB 20-24, against 21-24 for one row at
// 2 KiB; 4x4 register blocks (lora_dot) with the same look-ahead 27-45.
// 16-bit weights: twice the FMAs per byte, so the same holds for one x row over bf16 W (merged engine, whole decode
// token at ~2,700 context: 2 KiB 31-32 ms, 1 KiB 29.6, 8 KiB 26.3, 16 KiB 28.1; fp32 W in the same run: 1-2 KiB
// 35.4-36.3, 8-16 KiB 39.3-39.6).
// (kStreamAhead, kStreamAheadHalf, kStreamAheadRows: above the ISA branches; the AVX2 stream uses the last.)
// R adjacent W rows (R = 1-4) against MB x rows: sums[j][i0 + i] = the 16 partial lanes of w_{i0+i} · x_j (+ b · st_j).
// Each (W row, x row) pair keeps its own accumulators and K order whatever R is, so the result is bitwise the same
// for every R: R only decides how many W vectors share each x load (MB = 4: 10 loads per 8 FMAs at R = 1, 14 per 24
// at R = 3). Standalone, 1 thread, 2.0 GHz host, 576x576 + r=16, 4 x rows hot in L2, p10 us over one row's time:
// R = 1 67-85 us (2.1-2.3x), R = 2 46-58 (1.5x), R = 3 44-59 (1.43-1.46x); cold (240 matrices, 400 MB, in order)
// all three 9.3-10.0 GB/s, as one row's stream.
template <int MB, int R, typename WT, typename LT>
DUOMEM_INLINE void stream_dots(const WT* w, int64_t ldw, const float* x, int64_t ldx, int64_t K, const LT* b, int64_t r,
                               const float* st, int64_t ldt, int64_t ahead, bool prefetch, int64_t left,
                               __m512 (&sums)[MB][16], int64_t i0) {
  constexpr int U = MB == 1 ? 4 : 2;  // vectors per K step (accumulators per x row)
  constexpr int64_t kStep = 16 * U, kStepBytes = kStep * static_cast<int64_t>(sizeof(WT));
  __m512 acc[R][MB][U];
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < MB; ++j)
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u) acc[i][j][u] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + kStep <= K; k += kStep) {
    if (prefetch) {
      // Each of the R streams looks ahead along its own row and, past the row's end, into its row of the next group
      // (row i + R): rows i+1..i+R-1 are this group's, being read now, so asking for them again would be wasted.
      constexpr int64_t sz = sizeof(WT);
      const int64_t off = k * sz + ahead, row_bytes = ldw * sz;
      const int64_t skip = off < row_bytes ? 0 : (R - 1) * row_bytes;
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        const char* p = reinterpret_cast<const char*>(w + i * ldw) + off + skip;
#pragma GCC unroll 4
        for (int64_t l = 0; l < kStepBytes; l += 64) _mm_prefetch(p + l, _MM_HINT_T1);
      }
    }
    __m512 wv[R][U];
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u) {
        wv[i][u] = load16(w + i * ldw + k + 16 * u);
        if constexpr (MB > 1) DUOMEM_PIN(wv[i][u]);
      }
#pragma GCC unroll 8
    for (int j = 0; j < MB; ++j)
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u) {
        const __m512 xv = _mm512_loadu_ps(x + j * ldx + k + 16 * u);
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i) acc[i][j][u] = _mm512_fmadd_ps(wv[i][u], xv, acc[i][j][u]);
      }
  }
  for (; k < K; k += 16) {
    const __mmask16 m = K - k >= 16 ? 0xffff : static_cast<__mmask16>((1u << (K - k)) - 1u);
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      const __m512 wv = load16m(w + i * ldw + k, m);
#pragma GCC unroll 8
      for (int j = 0; j < MB; ++j)
        acc[i][j][0] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x + j * ldx + k), acc[i][j][0]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i) {
    if (b) {
      const LT* bi = b + i * r;
      if (i + 16 < left)  // B's rows are a second, thin stream (r floats a row) the prefetcher does not follow
        for (int64_t l = 0; l < r * static_cast<int64_t>(sizeof(LT)); l += 64)
          _mm_prefetch(reinterpret_cast<const char*>(bi + 16 * r) + l, _MM_HINT_T0);
      for (int64_t l = 0; l < r; l += 16) {
        const __mmask16 m = r - l >= 16 ? 0xffff : static_cast<__mmask16>((1u << (r - l)) - 1u);
        const __m512 bv = load16m(bi + l, m);
#pragma GCC unroll 8
        for (int j = 0; j < MB; ++j)
          acc[i][j][1] = _mm512_fmadd_ps(bv, _mm512_maskz_loadu_ps(m, st + j * ldt + l), acc[i][j][1]);
      }
    }
#pragma GCC unroll 8
    for (int j = 0; j < MB; ++j) {
      __m512 t = add_fixed(acc[i][j][0], acc[i][j][1]);
      if constexpr (U == 4) t = add_fixed(t, add_fixed(acc[i][j][2], acc[i][j][3]));
      sums[j][i0 + i] = t;
    }
  }
}

// R: W rows side by side (stream_dots; any R gives the same bits). Several x rows: 3, each x load feeding 3 FMAs.
// One x row: 1 on AMD cores, 4 on Intel ones (lora_linear_cpu.cpp stream_row_group): one row's stream alone left
// the Intel host's memory under-used (the default model's 120 decode matrices, standalone, interleaved: 8.3-10.3
// GB/s row by row, 7.9-11.3 for 4 side by side), while on the AMD hosts 8 side by side streamed ~25% slower.
template <int MB, int R, typename WT, typename LT>
inline void stream_rows(const WT* w, int64_t ldw, int64_t n, const float* x, int64_t ldx, int64_t K, const LT* b,
                        int64_t r, const float* st, int64_t ldt, const float* bias, float* out, int64_t ldo,
                        bool prefetch, int64_t ahead = 0) {  // ahead: look-ahead bytes, 0 = the tuned default
  if (ahead <= 0) ahead = MB > 1 ? kStreamAheadRows : sizeof(WT) == 4 ? kStreamAhead : kStreamAheadHalf;
  for (int64_t i0 = 0; i0 < n; i0 += 16) {
    const int64_t rows = std::min<int64_t>(16, n - i0);
    __m512 sums[MB][16];
    int64_t i = 0;
    for (; i + R <= rows; i += R)
      stream_dots<MB, R>(w + (i0 + i) * ldw, ldw, x, ldx, K, b ? b + (i0 + i) * r : b, r, st, ldt, ahead, prefetch,
                         n - i0 - i, sums, i);
    for (; i < rows; ++i)
      stream_dots<MB, 1>(w + (i0 + i) * ldw, ldw, x, ldx, K, b ? b + (i0 + i) * r : b, r, st, ldt, ahead, prefetch,
                         n - i0 - i, sums, i);
    for (; i < 16; ++i)
      for (int j = 0; j < MB; ++j) sums[j][i] = _mm512_setzero_ps();
    const __mmask16 m = static_cast<__mmask16>((1u << rows) - 1u);
    for (int j = 0; j < MB; ++j) {
      __m512 y = reduce16(sums[j]);
      if (bias) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, bias + i0));
      _mm512_mask_storeu_ps(out + j * ldo + i0, m, y);
    }
  }
}

#ifdef __AVX512BF16__
// One K step of the bf16 block: 32 bf16 per vector, vdpbf16ps accumulates pairs into fp32 lanes.
template <int NB, int MB>
DUOMEM_INLINE void dp_step(__m512 (&acc)[NB][MB], const c10::BFloat16* w, int64_t ldw, const c10::BFloat16* x,
                           int64_t ldx, __mmask32 m) {
  __m512i xv[MB];
#pragma GCC unroll 8
  for (int j = 0; j < MB; ++j) {
    xv[j] = _mm512_maskz_loadu_epi16(m, x + j * ldx);
    DUOMEM_PIN(xv[j]);
  }
#pragma GCC unroll 8
  for (int i = 0; i < NB; ++i) {
    __m512i wv = _mm512_maskz_loadu_epi16(m, w + i * ldw);
    DUOMEM_PIN(wv);
#pragma GCC unroll 8
    for (int j = 0; j < MB; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)wv, (__m512bh)xv[j]);
  }
}

// bf16 W and bf16 x (exact: x arrived in bf16): vdpbf16ps does 32 multiply-adds per instruction into fp32 lanes (the
// bf16 products are exact in fp32), twice the fp32 FMA's 16, and W needs no widening.
template <int NB, int MB, typename LT>
inline void lora_dot_bf16(const c10::BFloat16* w, int64_t ldw, const c10::BFloat16* x, int64_t ldx, int64_t K,
                          const c10::BFloat16* pf, const LT* const* b, int64_t r, const float* st, int64_t ldt,
                          const float* bias, float* out, int64_t ldo, bool add_out) {
  __m512 acc[NB][MB];
#pragma GCC unroll 8
  for (int i = 0; i < NB; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < MB; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    prefetch_rows<NB>(pf ? pf + k : nullptr, ldw * 2);
    dp_step<NB, MB>(acc, w + k, ldw, x + k, ldx, 0xffffffffu);
  }
  if (k < K) dp_step<NB, MB>(acc, w + k, ldw, x + k, ldx, static_cast<__mmask32>((1u << (K - k)) - 1u));
  lora_finish<NB, MB>(acc, b, r, st, ldt, bias, out, ldo, add_out);
}
#endif
#elif defined(DUOMEM_AVX2)
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const c10::BFloat16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline __m256 load8(const c10::Half* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

// stream_rows on 8-lane registers: one x row (decode) takes R W rows side by side (weight_reuse.h stream_row_group),
// 2 accumulators each (independent FMA chains; 16-bit W needs a widening per vector); 2-4 x rows take 3-4 W rows
// side by side (below). The K and r tails (not a multiple of 8) are added in scalar.
// One x row has no software look-ahead: on Zen 3, cold, r = 16, one thread, the two alternated in one process (p10
// us, medians of 3 rounds), none and the weight_reuse.h row group against 4 rows with 2 KiB per row ahead: 576->576
// 92 / 110, 1536->576 206 / 251, 576->1536 232 / 280, 576->49152 7,245 / 8,969, 2560->2560 1,349 / 1,750,
// 9728->2560 4,312 / 5,273 (a plain torch sum of the same W: 72, 196, 194, 6,874 at 576 wide). bf16 W: even.
template <int MB, int R, typename WT, typename LT>
inline void stream_rows(const WT* w, int64_t ldw, int64_t n, const float* x, int64_t ldx, int64_t K, const LT* b,
                        int64_t r, const float* st, int64_t ldt, const float* bias, float* out, int64_t ldo,
                        bool prefetch, int64_t ahead = 0) {
  // One x row looks ahead only when asked (ahead > 0, to compare): on Zen 3 the hardware's prefetchers alone stream
  // it faster (below). Several rows look ahead kStreamAheadRows unless asked otherwise.
  const bool look = prefetch && (MB > 1 || ahead > 0);
  if (ahead <= 0) ahead = kStreamAheadRows;
  // Several x rows: RR W rows side by side, RR x MB accumulators (8-16 independent FMA chains), each W vector
  // feeding MB FMAs (x comes from L1 as each FMA's memory operand). 4 rows at M = 4 (16 accumulators, one spilled)
  // rather than 2: cold, one thread, alternated process pairs, 2560->2560 1,764-1,979 / 2,246-2,289 us, 1536->576
  // 258-261 / 310-320 (hot 1536->576 147-150 / 122-130: more streams, fewer registers).
  constexpr int RR = MB == 1 ? R : MB == 3 ? 3 : 4, U = MB == 1 ? 2 : 1;
  const int64_t K8 = K / (8 * U) * (8 * U), r8 = r / 8 * 8;
  // rows ahead: K may be a slice of ldw, so `ahead` bytes of stream are counted in slices
  const int64_t d = std::max<int64_t>(1, ahead / std::max<int64_t>(1, K * static_cast<int64_t>(sizeof(WT))));
  auto group = [&](auto rows_c, int64_t i0) {
    constexpr int NR = decltype(rows_c)::value;
    __m256 acc[NR][MB][U];
#pragma GCC unroll 4
    for (int i = 0; i < NR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < MB; ++j)
#pragma GCC unroll 2
        for (int u = 0; u < U; ++u) acc[i][j][u] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K8; k += 8 * U) {
      if constexpr (MB == 1) {
#pragma GCC unroll 4
        for (int i = 0; i < NR; ++i)
#pragma GCC unroll 2
          for (int u = 0; u < U; ++u) {
            if (look && u == 0)  // each row asks for the same K offset `d` rows further on (into L2), a line a step
              _mm_prefetch(reinterpret_cast<const char*>(w + (i0 + i + d) * ldw + k), _MM_HINT_T1);
            acc[i][0][u] = _mm256_fmadd_ps(load8(w + (i0 + i) * ldw + k + 8 * u), _mm256_loadu_ps(x + k + 8 * u),
                                           acc[i][0][u]);
          }
      } else {
        __m256 xv[MB];  // not pinned: a pin (asm on an array element) kept xv and acc on the stack
#pragma GCC unroll 4
        for (int j = 0; j < MB; ++j) xv[j] = _mm256_loadu_ps(x + j * ldx + k);
#pragma GCC unroll 4
        for (int i = 0; i < NR; ++i) {
          if (look) _mm_prefetch(reinterpret_cast<const char*>(w + (i0 + i + d) * ldw + k), _MM_HINT_T1);
          __m256 wv = load8(w + (i0 + i) * ldw + k);
          DUOMEM_PIN8(wv);
#pragma GCC unroll 4
          for (int j = 0; j < MB; ++j) acc[i][j][0] = _mm256_fmadd_ps(wv, xv[j], acc[i][j][0]);
        }
      }
    }
    for (int i = 0; i < NR; ++i)
      for (int j = 0; j < MB; ++j) {
        __m256 a = acc[i][j][0];
        for (int u = 1; u < U; ++u) a = _mm256_add_ps(a, acc[i][j][u]);
        const LT* bi = b ? b + (i0 + i) * r : nullptr;
        if (bi)
          for (int64_t l = 0; l < r8; l += 8) a = _mm256_fmadd_ps(load8(bi + l), _mm256_loadu_ps(st + j * ldt + l), a);
        float y = vec8::hsum8(a) + (bias ? bias[i0 + i] : 0.f);
        for (int64_t k = K8; k < K; ++k) y += to_f(w[(i0 + i) * ldw + k]) * x[j * ldx + k];
        if (bi)
          for (int64_t l = r8; l < r; ++l) y += to_f(bi[l]) * st[j * ldt + l];
        out[j * ldo + i0 + i] = y;
      }
  };
  int64_t i = 0;
  for (; i + RR <= n; i += RR) group(std::integral_constant<int, RR>{}, i);
  for (; i < n; ++i) group(std::integral_constant<int, 1>{}, i);
}
#else
template <int MB, int R, typename WT, typename LT>
inline void stream_rows(const WT* w, int64_t ldw, int64_t n, const float* x, int64_t ldx, int64_t K, const LT* b,
                        int64_t r, const float* st, int64_t ldt, const float* bias, float* out, int64_t ldo,
                        bool /*prefetch*/, int64_t /*ahead*/ = 0) {
  for (int j = 0; j < MB; ++j)
    for (int64_t i = 0; i < n; ++i) {
      float s = bias ? bias[i] : 0.f;
      for (int64_t k = 0; k < K; ++k) s += to_f(w[i * ldw + k]) * x[j * ldx + k];
      if (b)
        for (int64_t l = 0; l < r; ++l) s += to_f(b[i * r + l]) * st[j * ldt + l];
      out[j * ldo + i] = s;
    }
}
#endif
#ifdef DUOMEM_AVX2
// lora_dot on 8-lane registers for NR W rows: NR x MB accumulators (at most 12) beside the MB x vectors and one W
// vector, each W vector feeding MB FMAs, each x vector NR; the K and r tails (not a multiple of 8) in scalar. pf: the
// same K offsets of later W rows, asked for into L2 a line per row per 16 floats.
template <int NR, int MB, typename WT, typename LT>
DUOMEM_INLINE void lora_dot8(const WT* w, int64_t ldw, const float* x, int64_t ldx, int64_t K, const WT* pf,
                             const LT* const* b, int64_t r, const float* st, int64_t ldt, const float* bias,
                             float* out, int64_t ldo, bool add_out) {
  __m256 acc[NR][MB];
#pragma GCC unroll 8
  for (int i = 0; i < NR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < MB; ++j) acc[i][j] = _mm256_setzero_ps();
  const int64_t K8 = K / 8 * 8, r8 = r / 8 * 8;
  for (int64_t k = 0; k < K8; k += 8) {
    if (pf && k % 16 == 0)
#pragma GCC unroll 8
      for (int i = 0; i < NR; ++i) _mm_prefetch(reinterpret_cast<const char*>(pf + i * ldw + k), _MM_HINT_T1);
    __m256 xv[MB];
#pragma GCC unroll 8
    for (int j = 0; j < MB; ++j) xv[j] = _mm256_loadu_ps(x + j * ldx + k);
#pragma GCC unroll 8
    for (int i = 0; i < NR; ++i) {
      __m256 wv = load8(w + i * ldw + k);
      DUOMEM_PIN8(wv);
#pragma GCC unroll 8
      for (int j = 0; j < MB; ++j) acc[i][j] = _mm256_fmadd_ps(wv, xv[j], acc[i][j]);
    }
  }
  for (int j = 0; j < MB; ++j) {  // the LoRA expand: r more products of each dot
    if (!b[j]) continue;
    for (int64_t l = 0; l < r8; l += 8) {
      const __m256 sv = _mm256_loadu_ps(st + j * ldt + l);
      for (int i = 0; i < NR; ++i) acc[i][j] = _mm256_fmadd_ps(load8(b[j] + i * r + l), sv, acc[i][j]);
    }
  }
  for (int j = 0; j < MB; ++j)
    for (int i = 0; i < NR; ++i) {
      float y = vec8::hsum8(acc[i][j]);
      for (int64_t k = K8; k < K; ++k) y += to_f(w[i * ldw + k]) * x[j * ldx + k];
      if (b[j])
        for (int64_t l = r8; l < r; ++l) y += to_f(b[j][i * r + l]) * st[j * ldt + l];
      if (bias) y += bias[i];
      out[j * ldo + i] = add_out ? out[j * ldo + i] + y : y;
    }
}

// NB W rows in groups of NR: 8 for one x row (8 independent FMA chains), 4 for two or three, 2 for four.
template <int NB, int MB, typename WT, typename LT>
inline void lora_dot(const WT* w, int64_t ldw, const float* x, int64_t ldx, int64_t K, const WT* pf,
                     const LT* const* b, int64_t r, const float* st, int64_t ldt, const float* bias, float* out,
                     int64_t ldo, bool add_out) {
  constexpr int NR = std::min(NB, MB == 1 ? 8 : MB <= 3 ? 4 : 2);
  static_assert(NB % NR == 0, "W rows come in whole groups");
  for (int i0 = 0; i0 < NB; i0 += NR) {
    const LT* bi[MB];
    for (int j = 0; j < MB; ++j) bi[j] = b[j] ? b[j] + i0 * r : nullptr;
    lora_dot8<NR, MB>(w + i0 * ldw, ldw, x, ldx, K, pf ? pf + i0 * ldw : nullptr, bi, r, st, ldt,
                      bias ? bias + i0 : nullptr, out + i0, ldo, add_out);
  }
}
#elif !defined(__AVX512F__)
template <int NB, int MB, typename WT, typename LT>
inline void lora_dot(const WT* w, int64_t ldw, const float* x, int64_t ldx, int64_t K, const WT* /*pf*/,
                     const LT* const* b, int64_t r, const float* st, int64_t ldt, const float* bias, float* out,
                     int64_t ldo, bool add_out) {
  for (int j = 0; j < MB; ++j)
    for (int i = 0; i < NB; ++i) {
      float s = (bias ? bias[i] : 0.f) + (add_out ? out[j * ldo + i] : 0.f);
      for (int64_t k = 0; k < K; ++k) s += to_f(w[i * ldw + k]) * x[j * ldx + k];
      if (b[j])
        for (int64_t k = 0; k < r; ++k) s += to_f(b[j][i * r + k]) * st[j * ldt + k];
      out[j * ldo + i] = s;
    }
}
#endif

#ifdef __AVX512F__
// 16 x 16 transpose of 32-bit lanes in registers.
inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i + 0], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i + 0], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int i = 0; i < 2; ++i)
    for (int c = 0; c < 4; ++c) {
      t[8 * i + c] = _mm512_shuffle_i32x4(r[8 * i + c], r[8 * i + 4 + c], 0x88);
      t[8 * i + 4 + c] = _mm512_shuffle_i32x4(r[8 * i + c], r[8 * i + 4 + c], 0xDD);
    }
  for (int c = 0; c < 8; ++c) {
    r[c] = _mm512_shuffle_i32x4(t[c], t[8 + c], 0x88);
    r[8 + c] = _mm512_shuffle_i32x4(t[c], t[8 + c], 0xDD);
  }
}

// e^x for x <= 0 (softmax after max subtraction), |rel err| ~ 2e-7: x = n ln2 + r, |r| <= ln2/2, degree-6 Taylor
// for e^r, 2^n applied by scalef. Scalar expf was the whole cost of CPU attention (295K exps = 6 ms at B=16).
// Exactly 0 below x = -80 (e^-80 = 1.8e-35: nothing next to the max term's 1 in fp32): a masked key (-inf) or a far
// one must not come out subnormal (e^-100 did), since on Intel cores every FMA that meets a subnormal operand takes a
// microcode assist unless FTZ/DAZ is set, and Python leaves them clear. 60 appended tokens over a 130-key causal
// suffix, 9 heads: 2.7 ms with e^-100 subnormals, 0.27 ms without (the same as with FTZ/DAZ set); on AMD cores
// subnormals cost nothing, which is why earlier hosts never showed it.
constexpr float kExpFloor = -80.f;
inline __m512 exp16(__m512 x) {
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExpFloor), _CMP_GE_OQ);
  x = _mm512_max_ps(x, _mm512_set1_ps(kExpFloor));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.f / 720.f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_maskz_scalef_ps(live, p, n);
}

// max over s[0, n) * scale
inline float scaled_max(const float* s, int64_t n, float scale, float init) {
  __m512 m = _mm512_set1_ps(init);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) m = _mm512_max_ps(m, _mm512_mul_ps(_mm512_loadu_ps(s + j), _mm512_set1_ps(scale)));
  float mx = _mm512_reduce_max_ps(m);
  for (; j < n; ++j) mx = std::max(mx, s[j] * scale);
  return mx;
}

// s[j] = exp(s[j]*scale - mx) in place for j < n; returns the sum.
inline float exp_sum(float* s, int64_t n, float scale, float mx) {
  const __m512 vs = _mm512_set1_ps(scale), vm = _mm512_set1_ps(mx);
  __m512 acc = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j < n; j += 16) {
    const __mmask16 k = n - j >= 16 ? 0xffff : static_cast<__mmask16>((1u << (n - j)) - 1u);
    __m512 e = exp16(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(k, s + j), vs, vm));
    e = _mm512_maskz_mov_ps(k, e);
    _mm512_mask_storeu_ps(s + j, k, e);
    acc = _mm512_add_ps(acc, e);
  }
  return _mm512_reduce_add_ps(acc);
}
#elif defined(DUOMEM_AVX2)
using vec8::exp_sum;
using vec8::scaled_max;
#else
inline float scaled_max(const float* s, int64_t n, float scale, float init) {
  float mx = init;
  for (int64_t j = 0; j < n; ++j) mx = std::max(mx, s[j] * scale);
  return mx;
}
inline float exp_sum(float* s, int64_t n, float scale, float mx) {
  float sum = 0.f;
  for (int64_t j = 0; j < n; ++j) sum += (s[j] = std::exp(s[j] * scale - mx));
  return sum;
}
#endif

}  // namespace vec
}  // namespace duomem
