// GGUF blocks widened exactly to fp32 in registers, and the GEMV over them (reference: dequantize_blocks_ref).
//
// A block holds 32 consecutive weights of a row, with GGUF's fp16 scales widened to fp32. Q4_1 (24 bytes): fp32 d,
// fp32 m, 16 bytes of 4-bit q (weight j in the low nibble of byte j, weight j + 16 in its high nibble), w = d·q + m.
// Q8_0 (36 bytes): fp32 d, 32 int8 q, w = d·q. d is fp16-exact (duomem_fast/model/blocks.py packs nothing else), so
// d·q is exact in fp32 (11 bits times 4 or 8) and a fused multiply-add gives the same fp32 weight as gguf-py's
// separate multiply and add: the GEMV computes x·w on the very values an fp32 matrix holds.
//
// AVX-512 widening: 512-bit work issues on two ports only (p0, p5), and those are the limit here, not memory. Q4_1
// looks its 16 values up in a one-register table (lut[i] = d·i + m, one FMA on d and m broadcast from memory, which
// costs load ports only): the low nibbles index it directly (vpermps reads an index's low 4 bits), the high ones after
// a shift. Per block and W row: widen q to 32-bit lanes, a shift, the table FMA, two lookups, two dot FMAs.
#pragma once

#include <cstdint>
#include <cstring>

#include "vec.h"

namespace duomem {
namespace blocks {

constexpr int kBlock = 32;
enum class Format { q4_1 = 24, q8_0 = 36 };  // value: bytes per block
constexpr int bytes(Format f) { return static_cast<int>(f); }

inline float f32_at(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, 4);
  return v;
}

// Scalar widening of one block into 32 floats (the portable path and the M > 16 de-quantisation).
template <Format F>
inline void widen(const uint8_t* blk, float* out) {
  const float d = f32_at(blk);
  if constexpr (F == Format::q4_1) {
    const float m = f32_at(blk + 4);
    for (int j = 0; j < 16; ++j) {
      out[j] = d * static_cast<float>(blk[8 + j] & 15) + m;
      out[j + 16] = d * static_cast<float>(blk[8 + j] >> 4) + m;
    }
  } else {
    for (int j = 0; j < kBlock; ++j) out[j] = d * static_cast<float>(static_cast<int8_t>(blk[4 + j]));
  }
}

#ifdef __AVX512F__
// One block -> weights 0..15 in lo, 16..31 in hi.
template <Format F>
DUOMEM_INLINE void widen16(const uint8_t* blk, __m512& lo, __m512& hi) {
  const __m512 d = _mm512_set1_ps(f32_at(blk));
  if constexpr (F == Format::q4_1) {
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 lut = _mm512_fmadd_ps(iota, d, _mm512_set1_ps(f32_at(blk + 4)));
    const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 8)));
    lo = _mm512_permutexvar_ps(q, lut);
    hi = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), lut);
  } else {
    const __m128i* q = reinterpret_cast<const __m128i*>(blk + 4);
    lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q))), d);
    hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q + 1))), d);
  }
}

// out[j, i] = w_i · x_j (+ b_i · t_j) (+ bias_i) for NB rows of blocks (ldw bytes apart) and MB rows of x. Each block
// is widened once for all MB x rows. pf: the bytes to ask for while this group runs (the next group, same layout),
// or null; b: NB rows of r LoRA expand weights (or null) against t (MB rows, ldt apart).
template <Format F, int NB, int MB>
inline void block_dots(const uint8_t* w, int64_t ldw, int64_t nblk, const float* x, int64_t ldx, const uint8_t* pf,
                       const float* b, int64_t r, const float* t, int64_t ldt, const float* bias, float* out,
                       int64_t ldo) {
  constexpr int S = bytes(F);
  __m512 acc[MB][NB];
  for (int j = 0; j < MB; ++j)
    for (int i = 0; i < NB; ++i) acc[j][i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < nblk; ++k) {
    if (pf) {  // the group's NB rows advance S bytes each per block: NB * S bytes of the next group per step
      const char* p = reinterpret_cast<const char*>(pf) + k * NB * S;
      for (int l = 0; l < NB * S; l += 64) _mm_prefetch(p + l, _MM_HINT_T1);
    }
    __m512 lo[NB], hi[NB];
    for (int i = 0; i < NB; ++i) widen16<F>(w + i * ldw + k * S, lo[i], hi[i]);
    for (int j = 0; j < MB; ++j) {
      const __m512 xl = _mm512_loadu_ps(x + j * ldx + k * kBlock), xh = _mm512_loadu_ps(x + j * ldx + k * kBlock + 16);
      for (int i = 0; i < NB; ++i) acc[j][i] = _mm512_fmadd_ps(hi[i], xh, _mm512_fmadd_ps(lo[i], xl, acc[j][i]));
    }
  }
  for (int j = 0; j < MB; ++j) {
    for (int i = 0; i < NB; ++i) {
      if (b) {  // the LoRA expand: r more products of the row's dot
        const float* bi = b + i * r;
        const float* tj = t + j * ldt;
        int64_t c = 0;
        for (; c + 16 <= r; c += 16)
          acc[j][i] = _mm512_fmadd_ps(_mm512_loadu_ps(bi + c), _mm512_loadu_ps(tj + c), acc[j][i]);
        if (c < r) {
          const __mmask16 mask = static_cast<__mmask16>((1u << (r - c)) - 1);
          acc[j][i] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, bi + c), _mm512_maskz_loadu_ps(mask, tj + c),
                                      acc[j][i]);
        }
      }
      float y = _mm512_reduce_add_ps(acc[j][i]);
      if (bias) y += bias[i];
      out[j * ldo + i] = y;
    }
  }
}
#elif defined(DUOMEM_AVX2)
// One block -> its 32 weights in 4 vectors of 8 (0..7, 8..15, 16..23, 24..31), the values widen() gives (an FMA
// rounds d·q + m once, as there). Q4_1's bytes are zero-extended straight from memory into 32-bit lanes and split
// into nibbles there (one shuffle per 8 bytes, both nibbles): a standalone 1536 x 576 GEMV, hot, 4.1 -> 3.0 ns a block
// against splitting the nibbles in bytes first (one shuffle per 8 weights) on this Zen 3.
template <Format F>
DUOMEM_INLINE void widen8(const uint8_t* blk, __m256 (&w)[4]) {
  const __m256 d = _mm256_broadcast_ss(reinterpret_cast<const float*>(blk));
  if constexpr (F == Format::q4_1) {
    const __m256 m = _mm256_broadcast_ss(reinterpret_cast<const float*>(blk + 4));
    const __m256i a = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 8)));
    const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 16)));
    const __m256i low4 = _mm256_set1_epi32(15);
    w[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(a, low4)), d, m);
    w[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b, low4)), d, m);
    w[2] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(a, 4)), d, m);
    w[3] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4)), d, m);
  } else {
    for (int c = 0; c < 4; ++c) {
      const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 4 + 8 * c));
      w[c] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d);
    }
  }
}

// One block of a W row against x's 32 values at xk, into two accumulators. xk is made opaque first, so x is read
// from L1 for each W row rather than kept: 4 rows x 2 accumulators, the widening's 7 registers and 4 x vectors do
// not fit 16, and GCC then kept the accumulators on the stack (a store, and for some a reload, per block).
template <Format F>
DUOMEM_INLINE void dot_block8(const uint8_t* blk, const float* xk, __m256& a0, __m256& a1) {
  asm volatile("" : "+r"(xk));
  __m256 wv[4];
  widen8<F>(blk, wv);
  a0 = _mm256_fmadd_ps(wv[0], _mm256_loadu_ps(xk), a0);
  a1 = _mm256_fmadd_ps(wv[1], _mm256_loadu_ps(xk + 8), a1);
  a0 = _mm256_fmadd_ps(wv[2], _mm256_loadu_ps(xk + 16), a0);
  a1 = _mm256_fmadd_ps(wv[3], _mm256_loadu_ps(xk + 24), a1);
}

// Decode's GEMV: 4 W rows side by side against one x row, 2 named accumulators each; s[i] = row i's sums. pf: the
// group's 4 rows of bytes further on, asked for a line at a time, spread evenly over the blocks (vec8::Ahead): one
// prefetch per block and row asked for most lines twice or more, and those extra instructions kept fewer lines in
// flight. Cold lm_head (Q8_0, 49152 x 576), standalone, one thread, GB/s: per block and row 8.1-10.1, per line
// 11.2-14.2, against a plain read's 14.9-16.2 (the same bytes ahead, 2.5-20 KiB).
template <Format F>
inline void dots_4rows(const uint8_t* w, int64_t ldw, int64_t nblk, const float* x, const uint8_t* pf, __m256* s) {
  constexpr int S = bytes(F);
  const __m256 z = _mm256_setzero_ps();
  __m256 a00 = z, a01 = z, a10 = z, a11 = z, a20 = z, a21 = z, a30 = z, a31 = z;
  vec8::Ahead ahead(pf, nullptr, pf ? 4 * ldw : 0, nblk);
  for (int64_t k = 0; k < nblk; ++k) {
    ahead.step();
    const float* xk = x + k * kBlock;
    dot_block8<F>(w + k * S, xk, a00, a01);
    dot_block8<F>(w + ldw + k * S, xk, a10, a11);
    dot_block8<F>(w + 2 * ldw + k * S, xk, a20, a21);
    dot_block8<F>(w + 3 * ldw + k * S, xk, a30, a31);
  }
  s[0] = _mm256_add_ps(a00, a01);
  s[1] = _mm256_add_ps(a10, a11);
  s[2] = _mm256_add_ps(a20, a21);
  s[3] = _mm256_add_ps(a30, a31);
}

// out[j, i] from row i's sums a against x row j: the LoRA expand's r more products (b rows, t rows), the bias.
DUOMEM_INLINE void finish_dot(__m256 a, const float* bi, int64_t r, const float* tj, const float* bias, float* out) {
  if (bi) {  // the LoRA expand: r more products of the row's dot
    int64_t c = 0;
    for (; c + 8 <= r; c += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(bi + c), _mm256_loadu_ps(tj + c), a);
    if (c < r) {  // a masked load is slow on AMD cores: the tail only
      const __m256i m = vec8::mask8(r - c);
      a = _mm256_fmadd_ps(_mm256_maskload_ps(bi + c, m), _mm256_maskload_ps(tj + c, m), a);
    }
  }
  *out = vec8::hsum8(a) + (bias ? *bias : 0.f);
}

// block_dots on 8-lane registers. One x row (decode): 4 W rows side by side (dots_4rows; a 1536 x 576 GEMV, hot:
// 3.0 -> 2.3-2.8 ns a block against one row at a time, stop 22). More x rows: one W row at a time (16 registers do
// not hold NB x MB accumulators), each widened block feeding the MB x rows.
template <Format F, int NB, int MB>
inline void block_dots(const uint8_t* w, int64_t ldw, int64_t nblk, const float* x, int64_t ldx, const uint8_t* pf,
                       const float* b, int64_t r, const float* t, int64_t ldt, const float* bias, float* out,
                       int64_t ldo) {
  if constexpr (MB == 1 && NB == 4) {
    __m256 s[4];
    dots_4rows<F>(w, ldw, nblk, x, pf, s);
    for (int i = 0; i < 4; ++i) finish_dot(s[i], b ? b + i * r : nullptr, r, t, bias ? bias + i : nullptr, out + i);
    return;
  }
  constexpr int S = bytes(F), U = MB == 1 ? 4 : MB <= 5 ? 2 : 1;
  // Up to 5 x rows, two accumulators a row (10, with the 4 widened vectors, fit the 16 registers): one chain of 4
  // dependent FMAs a block was the limit at M = 3-5. The loops over MB, U and the 4 vectors are unrolled by pragma:
  // left to -O3, GCC 12 kept acc on the stack, one store per accumulator per block.
  for (int i = 0; i < NB; ++i) {
    __m256 acc[MB][U];
#pragma GCC unroll 8
    for (int j = 0; j < MB; ++j)
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u) acc[j][u] = _mm256_setzero_ps();
    vec8::Ahead ahead(pf ? pf + i * ldw : nullptr, nullptr, pf ? ldw : 0, nblk);  // row i's bytes further on
    for (int64_t k = 0; k < nblk; ++k) {
      ahead.step();
      __m256 wv[4];
      widen8<F>(w + i * ldw + k * S, wv);
#pragma GCC unroll 8
      for (int j = 0; j < MB; ++j) {
        const float* xk = x + j * ldx + k * kBlock;
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) acc[j][c % U] = _mm256_fmadd_ps(wv[c], _mm256_loadu_ps(xk + 8 * c), acc[j][c % U]);
      }
    }
#pragma GCC unroll 8
    for (int j = 0; j < MB; ++j) {
      __m256 a = acc[j][0];
#pragma GCC unroll 4
      for (int u = 1; u < U; ++u) a = _mm256_add_ps(a, acc[j][u]);
      const float* tj = b ? t + j * ldt : nullptr;
      finish_dot(a, b ? b + i * r : nullptr, r, tj, bias ? bias + i : nullptr, out + j * ldo + i);
    }
  }
}
#else
template <Format F, int NB, int MB>
inline void block_dots(const uint8_t* w, int64_t ldw, int64_t nblk, const float* x, int64_t ldx, const uint8_t*,
                       const float* b, int64_t r, const float* t, int64_t ldt, const float* bias, float* out,
                       int64_t ldo) {
  float wv[kBlock];
  for (int i = 0; i < NB; ++i) {
    for (int j = 0; j < MB; ++j) {
      float y = 0.f;
      for (int64_t k = 0; k < nblk; ++k) {
        widen<F>(w + i * ldw + k * bytes(F), wv);
        for (int c = 0; c < kBlock; ++c) y += wv[c] * x[j * ldx + k * kBlock + c];
      }
      if (b)
        for (int64_t c = 0; c < r; ++c) y += b[i * r + c] * t[j * ldt + c];
      if (bias) y += bias[i];
      out[j * ldo + i] = y;
    }
  }
}
#endif

}  // namespace blocks
}  // namespace duomem
