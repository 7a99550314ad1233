// y = x Wᵀ + s·(x Aᵀ) Bᵀ (+ bias) over GGUF blocks on 8-lane FMAs (block_gemm_avx2.h), for appends and prefills on CPUs
// without AVX-512.
//
// x is packed once per call into panels of 16 rows, k-major: xp[k][16], two ymm per k; the LoRA shrink t = s·x Aᵀ
// of each panel is computed by the same register block and lands as r more rows of the panel. W is taken 6 rows at a time: the rows are widened exactly (blocks::widen8, the values
// dequantize_blocks gives) into a buffer that stays in L1, with their r LoRA expand weights after them, so the LoRA
// delta is r more steps of the same sum. Each 16-row panel then runs a 6 x 16 register block: per k, 2 loads of x,
// 6 broadcasts of w, 12 FMAs into 12 accumulators; the sums come out W-row-major and are stored transposed. Work
// units are 64 rows of x (4 panels, in L2) x 48 rows of W, so W is widened once per 64 rows of x.
//
// Against widening the whole matrix into fp32 scratch and oneDNN's fp32 GEMM (the path before, and still the one
// for AVX-512 builds without AMX): M = 60, r = 16, the default model's four shapes, one thread, hot, Zen 3: 66-81
// GFLOP/s against 40-62 (1.27-1.67x; the widening's pass over memory included); the register block itself runs at
// about 90% of the core's FMA peak on the padded rows.
#include "block_gemm_avx2.h"

#include <torch/extension.h>

#include <algorithm>
#include <vector>

#include "parallel.h"

namespace duomem {

#ifdef DUOMEM_AVX2
namespace {

using blocks::Format;
constexpr int kNR = 6;           // W rows per register block (12 accumulators: 6 rows x 2 ymm of x rows)
constexpr int kPanel = 16;       // x rows per panel
constexpr int kUnitPanels = 4;   // panels per work unit: 64 rows of x
constexpr int64_t kChunk = 48;   // W rows per work unit

// Panel p of x at xpp: xpp[k * 16 + l] = x[16p + l][k] for k < K (0 past M).
void pack_panel(const float* x, int64_t M, int64_t K, int64_t p, float* xpp) {
  for (int l = 0; l < kPanel; ++l) {
    const int64_t m = p * kPanel + l;
    for (int64_t k = 0; k < K; ++k) xpp[k * kPanel + l] = m < M ? x[m * K + k] : 0.f;
  }
}

// nr W rows from n0, widened, each followed by its r expand weights: wb[i * ldb + k].
template <Format F>
void widen_group(const uint8_t* w, int64_t ldw, int64_t K, const float* b, int64_t r, int64_t n0, int nr, float* wb,
                 int64_t ldb) {
  constexpr int S = blocks::bytes(F);
  for (int i = 0; i < nr; ++i) {
    const uint8_t* row = w + (n0 + i) * ldw;
    float* o = wb + i * ldb;
    for (int64_t k = 0; k < K / blocks::kBlock; ++k) {
      __m256 v[4];
      blocks::widen8<F>(row + k * S, v);
      for (int c = 0; c < 4; ++c) _mm256_storeu_ps(o + k * blocks::kBlock + 8 * c, v[c]);
    }
    for (int64_t j = 0; j < r; ++j) o[K + j] = b[(n0 + i) * r + j];
  }
}

// out[i * 16 + l] = Σ_k wb[i * ldb + k] · xp[k * 16 + l] for NR W rows and V ymm (8 V rows) of a panel.
template <int NR, int V>
DUOMEM_INLINE void block(const float* wb, int64_t ldb, const float* xp, int64_t Kt, float* out) {
  // The loops over NR unrolled by pragma: left to -O3, GCC 12 kept acc on the stack and stored every accumulator
  // after each FMA (3x slower).
  __m256 acc[NR][2];
#pragma GCC unroll 8
  for (int i = 0; i < NR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < Kt; ++k) {
    const __m256 x0 = _mm256_loadu_ps(xp + k * kPanel);
    const __m256 x1 = V == 2 ? _mm256_loadu_ps(xp + k * kPanel + 8) : x0;
#pragma GCC unroll 8
    for (int i = 0; i < NR; ++i) {
      const __m256 wv = _mm256_broadcast_ss(wb + i * ldb + k);
      acc[i][0] = _mm256_fmadd_ps(wv, x0, acc[i][0]);
      if constexpr (V == 2) acc[i][1] = _mm256_fmadd_ps(wv, x1, acc[i][1]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < NR; ++i) {
    _mm256_storeu_ps(out + i * kPanel, acc[i][0]);
    if constexpr (V == 2) _mm256_storeu_ps(out + i * kPanel + 8, acc[i][1]);
  }
}

template <int NR>
void block_rows(const float* wb, int64_t ldb, const float* xp, int64_t Kt, int rows, float* out) {
  if (rows > 8) return block<NR, 2>(wb, ldb, xp, Kt, out);
  block<NR, 1>(wb, ldb, xp, Kt, out);
}

// block() for nr (1-6) W rows and the panel's first `rows` x rows.
void block_any(int nr, const float* wb, int64_t ldb, const float* xp, int64_t Kt, int rows, float* out) {
  switch (nr) {
    case 6: return block_rows<6>(wb, ldb, xp, Kt, rows, out);
    case 5: return block_rows<5>(wb, ldb, xp, Kt, rows, out);
    case 4: return block_rows<4>(wb, ldb, xp, Kt, rows, out);
    case 3: return block_rows<3>(wb, ldb, xp, Kt, rows, out);
    case 2: return block_rows<2>(wb, ldb, xp, Kt, rows, out);
    default: return block_rows<1>(wb, ldb, xp, Kt, rows, out);
  }
}

// The LoRA shrink of a packed panel, into its rows [K, K + r): t = s·x Aᵀ, A (r, K) fp32. block() writes its sums
// W-row-major, 16 x rows a W row: for A's rows that is the panel's own layout, so they land in place.
void shrink_panel(const float* a, int64_t r, int64_t K, float s, float* xpp) {
  for (int64_t j = 0; j < r; j += kNR)
    block_any(static_cast<int>(std::min<int64_t>(kNR, r - j)), a + j * K, K, xpp, K, kPanel, xpp + (K + j) * kPanel);
  for (int64_t i = K * kPanel; i < (K + r) * kPanel; ++i) xpp[i] *= s;
}

struct Call {
  const uint8_t* w;
  int64_t ldw, N, K, M, r;
  const float* b;
  const float* xp;  // the packed panels
  const float* bias;
  float* y;
};

// y rows [16 p0, 16 p0 + 64) x W rows [n0, n1).
template <Format F>
void unit(const Call& c, int64_t n0, int64_t n1, int64_t p0) {
  const int64_t Kt = c.K + c.r, P = std::min<int64_t>((c.M + kPanel - 1) / kPanel, p0 + kUnitPanels);
  thread_local std::vector<float> wbuf;  // this thread's: a helper's own when a helper runs the unit
  wbuf.resize(std::max<size_t>(wbuf.size(), kNR * Kt));
  float* wb = wbuf.data();
  alignas(32) float out[kNR * kPanel];
  for (int64_t n = n0; n < n1; n += kNR) {
    const int nr = static_cast<int>(std::min<int64_t>(kNR, n1 - n));
    widen_group<F>(c.w, c.ldw, c.K, c.b, c.r, n, nr, wb, Kt);
    for (int64_t p = p0; p < P; ++p) {
      const float* xp = c.xp + p * Kt * kPanel;
      const int rows = static_cast<int>(std::min<int64_t>(kPanel, c.M - p * kPanel));
      block_any(nr, wb, Kt, xp, Kt, rows, out);
      for (int l = 0; l < rows; ++l) {
        float* yr = c.y + (p * kPanel + l) * c.N + n;
        for (int i = 0; i < nr; ++i) yr[i] = out[i * kPanel + l] + (c.bias ? c.bias[n + i] : 0.f);
      }
    }
  }
}

}  // namespace

bool block_gemm_avx2_available() { return true; }

void block_gemm_avx2(const uint8_t* w, int64_t ldw, blocks::Format f, int64_t N, int64_t K, const float* x, int64_t M,
                     const float* a, const float* b, int64_t r, float scale, const float* bias, float* y) {
  const int64_t P = (M + kPanel - 1) / kPanel, Kt = K + r;
  thread_local std::vector<float> xbuf;  // the caller's, reused by its next call
  xbuf.resize(std::max<size_t>(xbuf.size(), P * Kt * kPanel));
  float* xp = xbuf.data();
  // Between ATen's ops (the eager layer loop of an append): ATen's own threads (parallel.h).
  parallel_items(P, [&](int64_t p) {
    pack_panel(x, M, K, p, xp + p * Kt * kPanel);
    if (r > 0) shrink_panel(a, r, K, scale, xp + p * Kt * kPanel);
  });
  const Call c{w, ldw, N, K, M, r, b, xp, bias, y};
  const int64_t nchunks = (N + kChunk - 1) / kChunk, units = (P + kUnitPanels - 1) / kUnitPanels;
  parallel_items(nchunks * units, [&](int64_t i) {  // consecutive items share their x panels
    const int64_t n0 = (i % nchunks) * kChunk, n1 = std::min(N, n0 + kChunk), p0 = (i / nchunks) * kUnitPanels;
    if (f == Format::q4_1) unit<Format::q4_1>(c, n0, n1, p0);
    else unit<Format::q8_0>(c, n0, n1, p0);
  });
}

#else  // AVX-512 builds (AMX or oneDNN over widened blocks there) and portable builds

bool block_gemm_avx2_available() { return false; }

void block_gemm_avx2(const uint8_t*, int64_t, blocks::Format, int64_t, int64_t, const float*, int64_t, const float*,
                     const float*, int64_t, float, const float*, float*) {
  TORCH_CHECK(false, "block_gemm_avx2: this build has no AVX2 path (built with AVX-512, or portable)");
}

#endif

}  // namespace duomem
