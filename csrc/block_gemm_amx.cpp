// y = x Wᵀ (+ bias) over GGUF blocks on AMX tiles (block_gemm_amx.h), for appends and prefills (M > 32 rows).
//
// Per block of 32 k and W row n: w = d·q + m, so x·w over the block = d·(x·q) + m·Σx. The tile unit computes
// S = x·q for 16 W rows x 16 x rows at once (TDPBF16PS: bf16 products accumulated in fp32 with RNE): q is an integer
// of 4 or 8 bits, exact in bf16; x = x1 + x2 + x3 exactly, each a bf16 (8 + 8 + 8 significant bits: x1 keeps x's top
// 16 bits, x2 the top 16 of x - x1, x3 the rest), so three tile products give every x·q product exactly, summed in
// fp32. The block's S is then scaled into fp32 accumulators: acc += d·S + m·Σx (Σx in fp32). Same class of
// arithmetic as an fp32 GEMM on the widened matrix (exact products, fp32 sums in another order; the matrix's own
// rounding of d·q + m is not reproduced), at 2-3x oneDNN's fp32 GEMM on one core, without widening the matrix.
//
// Tiles: C0-C3 = 16 W rows x 4 groups of 16 x rows, A (tmm4) = 16 W rows of one block as bf16 q (widened per block
// from the GGUF bytes, rows as stored: no transpose of W), B (tmm5-7) = x's three parts for one group, VNNI layout
// (row kk holds the pairs k = 2kk, 2kk + 1 of 16 x rows), prepared once per call. C comes out W-row-major, so
// accumulators are (W row, x row) and the result is transposed on the way out.
#include "block_gemm_amx.h"

#include <torch/extension.h>

#include <algorithm>
#include <cstring>

#include "amx.h"
#include "parallel.h"

namespace duomem {

#ifdef DUOMEM_AMX
namespace {

using blocks::Format;
constexpr int kGroups = 4;   // 16-row groups of x per pass (C0-C3)
constexpr int kChunk = 64;   // W rows per unit of work: accumulators 64 x 64 fp32 (16 KiB) stay in L1
constexpr int kAhead = 8;    // blocks of look-ahead on each W row

uint16_t bf16_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return static_cast<uint16_t>(u >> 16);
}

// x as B tiles: xb[((b * G + g) * 3 + j) * 512] = part j of x rows [16g, 16g + 16) over block b (rows past M zero);
// xs[b * Mp + m] = Σ of x row m over block b. Reused by the next call on this thread.
struct PreparedX {
  amx::Buffer<uint16_t> xbuf;
  amx::Buffer<float> xsbuf;
  uint16_t* xb = nullptr;
  float* xs = nullptr;
  int64_t G = 0, Mp = 0, nblk = 0;

  void reserve(int64_t nblk_, int64_t M) {
    nblk = nblk_;
    G = (M + 15) / 16;
    Mp = G * 16;
    xb = xbuf.get(nblk * G * 3 * 512);
    xs = xsbuf.get(nblk * Mp);
  }
};

void prepare_x(const float* x, int64_t M, int64_t K, PreparedX& p) {
  p.reserve(K / blocks::kBlock, M);
  for (int64_t g = 0; g < p.G; ++g) {
    const int rows = static_cast<int>(std::min<int64_t>(16, M - g * 16));
    for (int64_t b = 0; b < p.nblk; ++b) {
      const float* r[16];
      float* xs = p.xs + b * p.Mp + g * 16;
      for (int i = 0; i < 16; ++i) {
        r[i] = x + (g * 16 + i) * K + b * blocks::kBlock;
        xs[i] = i < rows ? _mm512_reduce_add_ps(_mm512_add_ps(_mm512_loadu_ps(r[i]), _mm512_loadu_ps(r[i] + 16))) : 0.f;
      }
      amx::vnni_parts(r, rows, p.xb + (b * p.G + g) * 3 * 512);
    }
  }
}

// One block of a W row as 32 bf16 q values (k order) into a tile row.
template <Format F>
DUOMEM_INLINE void q_row(const uint8_t* blk, uint16_t* row) {
  if constexpr (F == Format::q4_1) {
    static const __m512i table = [] {  // bf16 of 0..15, looked up by vpermw
      alignas(64) uint16_t t[32] = {};
      for (int i = 0; i < 16; ++i) t[i] = bf16_bits(static_cast<float>(i));
      return _mm512_load_si512(t);
    }();
    const __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 8)));
    const __m256i lo = _mm256_and_si256(w, _mm256_set1_epi16(15)), hi = _mm256_srli_epi16(w, 4);
    const __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    _mm512_store_si512(row, _mm512_permutexvar_epi16(q, table));
  } else {
    const __m512i q = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 4)));
    const __m512 f0 = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm512_castsi512_si256(q)));
    const __m512 f1 = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(q, 1)));
    _mm512_store_si512(row, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(f1, f0)));  // |q| <= 128: exact
  }
}

// W rows [n0, n0 + 16) (rows past N zero) against x groups [g0, g0 + G): acc[(n - n0) * 64 + 16 g + i] += the dots.
template <Format F, int G>
void tile_rows(const uint8_t* w, int64_t ldw, int64_t N, int64_t n0, const PreparedX& p, int64_t g0, float* acc) {
  constexpr int S = blocks::bytes(F);
  alignas(64) uint16_t a[16 * 32];
  alignas(64) float s[G][16 * 16];
  const int nr = static_cast<int>(std::min<int64_t>(16, N - n0));
  if (nr < 16) std::memset(a, 0, sizeof a);
  for (int64_t b = 0; b < p.nblk; ++b) {
    if (b + kAhead < p.nblk)  // 16 rows are 16 streams: more than the prefetchers follow, so ask for them
      for (int i = 0; i < nr; ++i) _mm_prefetch(reinterpret_cast<const char*>(w + (n0 + i) * ldw + (b + kAhead) * S), _MM_HINT_T0);
    for (int i = 0; i < nr; ++i) q_row<F>(w + (n0 + i) * ldw + b * S, a + i * 32);
    _tile_loadd(4, a, 64);
    const uint16_t* xb = p.xb + (b * p.G + g0) * 3 * 512;
#define DUOMEM_AMX_GROUP(g)                     \
  if constexpr (G > g) {                        \
    _tile_loadd(5, xb + (g * 3 + 0) * 512, 64); \
    _tile_loadd(6, xb + (g * 3 + 1) * 512, 64); \
    _tile_loadd(7, xb + (g * 3 + 2) * 512, 64); \
    _tile_zero(g);                              \
    _tile_dpbf16ps(g, 4, 5);                    \
    _tile_dpbf16ps(g, 4, 6);                    \
    _tile_dpbf16ps(g, 4, 7);                    \
    _tile_stored(g, s[g], 64);                  \
  }
    DUOMEM_AMX_GROUP(0)
    DUOMEM_AMX_GROUP(1)
    DUOMEM_AMX_GROUP(2)
    DUOMEM_AMX_GROUP(3)
#undef DUOMEM_AMX_GROUP
    const float* xs = p.xs + b * p.Mp + g0 * 16;
    for (int i = 0; i < nr; ++i) {
      const uint8_t* blk = w + (n0 + i) * ldw + b * S;
      const __m512 d = _mm512_set1_ps(blocks::f32_at(blk));
      float* ai = acc + i * 64;
      for (int g = 0; g < G; ++g) {
        __m512 v = _mm512_fmadd_ps(_mm512_load_ps(s[g] + i * 16), d, _mm512_load_ps(ai + g * 16));
        if constexpr (F == Format::q4_1)
          v = _mm512_fmadd_ps(_mm512_loadu_ps(xs + g * 16), _mm512_set1_ps(blocks::f32_at(blk + 4)), v);
        _mm512_store_ps(ai + g * 16, v);
      }
    }
  }
}

// y rows [m0, min(M, m0 + 64)) (m0 a multiple of 16) over W rows [n0, n1) (n1 - n0 <= 64).
template <Format F>
void unit(const uint8_t* w, int64_t ldw, int64_t N, int64_t n0, int64_t n1, const PreparedX& p, int64_t M,
          int64_t m0, const float* bias, float* y) {
  alignas(64) float acc[kChunk * 64];
  std::memset(acc, 0, sizeof acc);
  const int64_t g0 = m0 / 16;
  const int G = static_cast<int>(std::min<int64_t>(kGroups, p.G - g0));
  amx::load_tiles();
  for (int64_t n = n0; n < n1; n += 16) {
    float* a = acc + (n - n0) * 64;
    switch (G) {
      case 1: tile_rows<F, 1>(w, ldw, N, n, p, g0, a); break;
      case 2: tile_rows<F, 2>(w, ldw, N, n, p, g0, a); break;
      case 3: tile_rows<F, 3>(w, ldw, N, n, p, g0, a); break;
      default: tile_rows<F, 4>(w, ldw, N, n, p, g0, a); break;
    }
  }
  _tile_release();
  // acc is (W row, x row): out to y (x row, W row) in 16 x 16 register transposes, bias added along the way
  const int64_t me = std::min(M, m0 + 64);
  for (int64_t j = n0; j < n1; j += 16) {
    const int nn = static_cast<int>(std::min<int64_t>(16, n1 - j));
    const __mmask16 keep = static_cast<__mmask16>((1u << nn) - 1u);
    const __m512 bv = bias ? _mm512_maskz_loadu_ps(keep, bias + j) : _mm512_setzero_ps();
    for (int64_t g = m0; g < me; g += 16) {
      __m512i r[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm512_load_si512(acc + (j - n0 + i) * 64 + (g - m0));
      vec::transpose16(r);
      for (int64_t m = g; m < std::min(me, g + 16); ++m)
        _mm512_mask_storeu_ps(y + m * N + j, keep, _mm512_add_ps(_mm512_castsi512_ps(r[m - g]), bv));
    }
  }
}

}  // namespace

bool block_gemm_amx_available() { return amx::available(); }

void block_gemm_amx(const uint8_t* w, int64_t ldw, blocks::Format f, int64_t N, int64_t K, const float* x, int64_t M,
                    const float* bias, float* y) {
  thread_local PreparedX mine;
  PreparedX& p = mine;  // a lambda names a thread_local without capturing it: on a helper it would be the helper's
  prepare_x(x, M, K, p);
  const int64_t nchunks = (N + kChunk - 1) / kChunk, mchunks = (M + 63) / 64;
  // Between ATen's ops (the eager layer loop of an append): ATen's own threads (parallel.h).
  parallel_items(nchunks * mchunks, [&](int64_t i) {
    const int64_t n0 = (i % nchunks) * kChunk, m0 = (i / nchunks) * 64, n1 = std::min(N, n0 + kChunk);
    if (f == Format::q4_1) unit<Format::q4_1>(w, ldw, N, n0, n1, p, M, m0, bias, y);
    else unit<Format::q8_0>(w, ldw, N, n0, n1, p, M, m0, bias, y);
  });
}

#else  // no AMX in this build

bool block_gemm_amx_available() { return false; }

void block_gemm_amx(const uint8_t*, int64_t, blocks::Format, int64_t, int64_t, const float*, int64_t, const float*,
                    float*) {
  TORCH_CHECK(false, "block_gemm_amx: this build has no AMX (compiled without -mamx-tile -mamx-bf16)");
}

#endif

}  // namespace duomem
