// Many query rows against one KV head's keys (a prefill or a long append over the shared prefix), as register tiles.
//
// The row-block kernel of prefix_attention_cpu.cpp computes each score as a dot product of a query row with a key
// row and reduces horizontally (4 keys x 4 rows per transpose-add tree): right for decode's 3-48 rows, but with
// hundreds of rows (T=60 appended tokens x G=3 heads = 180 per KV head) the reductions and the reloads of each key
// row per 4 rows dominate. Here a block of 64 keys is transposed once (Kt: D x 64, in L1) and serves every row of
// the item: scores are 6 rows x 64 keys = 24 zmm accumulators, one broadcast q element and 4 Kt vectors per D step
// (24 FMAs per 10 loads, no reductions); P·V is 6 rows x 64 dims, one V row (4 vectors) and 6 broadcast p per key.
// Online softmax between the two, with the rows' running max / sum / output in memory across key blocks.
// 1 thread, one layer of the default model (9 query / 3 KV heads, D=64), ms through model.attention.attend against
// torch's flash kernel: 60 appended tokens over 2,000 + 70 keys 1.87 vs 3.87; 16 sequences x 1 token over a 2,048
// prefix 0.55 vs 1.06 (the row-block kernel before: 1.84).
#include "attention_tiles.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "vec.h"

namespace duomem {
namespace {

constexpr int64_t kTileRows = 6;   // rows per register tile
constexpr int64_t kTileKeys = 64;  // keys per block: 4 zmm of scores per row

#ifdef __AVX512F__
// Kt[d * 64 + j] = k[(n0 + j) * ld + d] for j < nk, zero beyond: 16 x 16 register transposes (D a multiple of 16).
// Element by element it cost ~a quarter of the tiles' time in an append (a block serves only ~16 tiles).
void transpose_block(const float* k, int64_t ld, int64_t nk, int64_t D, float* kt) {
  for (int64_t j0 = 0; j0 < kTileKeys; j0 += 16)
    for (int64_t d0 = 0; d0 < D; d0 += 16) {
      __m512i r[16];
      for (int64_t j = 0; j < 16; ++j)
        r[j] = j0 + j < nk ? _mm512_loadu_si512(k + (j0 + j) * ld + d0) : _mm512_setzero_si512();
      vec::transpose16(r);
      for (int64_t d = 0; d < 16; ++d) _mm512_storeu_si512(kt + (d0 + d) * kTileKeys + j0, r[d]);
    }
}

// One 6-row tile against one key block: scores, online-softmax update of (m, l, o), P·V. Row i sees the block's
// first vis[i] keys (nk for all, fewer at a causal edge, at least one).
void tile_step(const float* q, int64_t D, const float* kt, const float* v, int64_t ld, int64_t nk, const int64_t* vis,
               float* m, float* l, float* o, float* p) {
  __m512 s[kTileRows][4];
  for (int i = 0; i < kTileRows; ++i)
    for (int c = 0; c < 4; ++c) s[i][c] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; ++d) {
    __m512 kv[4];
    for (int c = 0; c < 4; ++c) kv[c] = _mm512_loadu_ps(kt + d * kTileKeys + 16 * c);
    for (int i = 0; i < kTileRows; ++i) {
      const __m512 qb = _mm512_set1_ps(q[i * D + d]);
      for (int c = 0; c < 4; ++c) s[i][c] = _mm512_fmadd_ps(qb, kv[c], s[i][c]);
    }
  }
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  float alpha[kTileRows];
  for (int i = 0; i < kTileRows; ++i) {
    for (int c = 0; c < 4; ++c) {
      const int64_t left = std::max<int64_t>(0, std::min<int64_t>(16, vis[i] - 16 * c));
      s[i][c] = _mm512_mask_mov_ps(ninf, static_cast<__mmask16>((1u << left) - 1u), s[i][c]);
    }
    const __m512 mx4 = _mm512_max_ps(_mm512_max_ps(s[i][0], s[i][1]), _mm512_max_ps(s[i][2], s[i][3]));
    const float mx = std::max(m[i], _mm512_reduce_max_ps(mx4));
    alpha[i] = std::exp(m[i] - mx);
    const __m512 vm = _mm512_set1_ps(mx);
    __m512 sum = _mm512_setzero_ps();
    for (int c = 0; c < 4; ++c) {
      const __m512 e = vec::exp16(_mm512_sub_ps(s[i][c], vm));  // -inf -> exactly 0
      _mm512_storeu_ps(p + i * kTileKeys + 16 * c, e);
      sum = _mm512_add_ps(sum, e);
    }
    l[i] = l[i] * alpha[i] + _mm512_reduce_add_ps(sum);
    m[i] = mx;
  }
  for (int64_t d0 = 0; d0 < D; d0 += 64) {
    __m512 acc[kTileRows][4];
    for (int i = 0; i < kTileRows; ++i) {
      const __m512 a = _mm512_set1_ps(alpha[i]);
      for (int c = 0; c < 4; ++c) acc[i][c] = _mm512_mul_ps(a, _mm512_loadu_ps(o + i * D + d0 + 16 * c));
    }
    for (int64_t j = 0; j < nk; ++j) {
      __m512 vv[4];
      for (int c = 0; c < 4; ++c) vv[c] = _mm512_loadu_ps(v + j * ld + d0 + 16 * c);
      for (int i = 0; i < kTileRows; ++i) {
        const __m512 pb = _mm512_set1_ps(p[i * kTileKeys + j]);
        for (int c = 0; c < 4; ++c) acc[i][c] = _mm512_fmadd_ps(pb, vv[c], acc[i][c]);
      }
    }
    for (int i = 0; i < kTileRows; ++i)
      for (int c = 0; c < 4; ++c) _mm512_storeu_ps(o + i * D + d0 + 16 * c, acc[i][c]);
  }
}

#elif defined(DUOMEM_AVX2)
// The same tiles on 8-lane registers: scores 6 rows x 16 keys (12 ymm accumulators, 2 Kt vectors and 6 broadcast
// q elements per D step) in 4 passes over the 64-key block, softmax over the scores in L1, P·V by vec8::pv_rows
// (6 rows x 16 dims a pass, the rows' outputs rescaled first).
inline void transpose8(__m256 r[8]) {
  __m256 t[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  __m256 u[8];
  for (int h = 0; h < 2; ++h) {
    u[4 * h + 0] = _mm256_shuffle_ps(t[4 * h + 0], t[4 * h + 2], 0x44);
    u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h + 0], t[4 * h + 2], 0xEE);
    u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
    u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
    r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
  }
}

// Kt[d * 64 + j] = k[(n0 + j) * ld + d] for j < nk, zero beyond: 8 x 8 register transposes (D a multiple of 8).
void transpose_block(const float* k, int64_t ld, int64_t nk, int64_t D, float* kt) {
  for (int64_t j0 = 0; j0 < kTileKeys; j0 += 8)
    for (int64_t d0 = 0; d0 < D; d0 += 8) {
      __m256 r[8];
      for (int64_t j = 0; j < 8; ++j) r[j] = j0 + j < nk ? _mm256_loadu_ps(k + (j0 + j) * ld + d0) : _mm256_setzero_ps();
      transpose8(r);
      for (int64_t d = 0; d < 8; ++d) _mm256_storeu_ps(kt + (d0 + d) * kTileKeys + j0, r[d]);
    }
}

void tile_step(const float* q, int64_t D, const float* kt, const float* v, int64_t ld, int64_t nk, const int64_t* vis,
               float* m, float* l, float* o, float* p) {
  bool full = nk == kTileKeys;  // every row sees the whole block (all but a causal edge): no mask, max taken as
  for (int i = 0; i < kTileRows; ++i) full = full && vis[i] == nk;  // the scores leave their registers
  const __m256 ninf = _mm256_set1_ps(-INFINITY), iota = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
  __m256 mx8[kTileRows];
  for (int i = 0; i < kTileRows; ++i) mx8[i] = ninf;
  for (int64_t c0 = 0; c0 < kTileKeys; c0 += 16) {
    __m256 s[kTileRows][2];
    for (int i = 0; i < kTileRows; ++i) s[i][0] = s[i][1] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; ++d) {
      __m256 k0 = _mm256_loadu_ps(kt + d * kTileKeys + c0), k1 = _mm256_loadu_ps(kt + d * kTileKeys + c0 + 8);
      DUOMEM_PIN8(k0);
      DUOMEM_PIN8(k1);
      for (int i = 0; i < kTileRows; ++i) {
        const __m256 qb = _mm256_broadcast_ss(q + i * D + d);
        s[i][0] = _mm256_fmadd_ps(qb, k0, s[i][0]);
        s[i][1] = _mm256_fmadd_ps(qb, k1, s[i][1]);
      }
    }
    for (int i = 0; i < kTileRows; ++i) {
      for (int c = 0; c < 2; ++c) _mm256_storeu_ps(p + i * kTileKeys + c0 + 8 * c, s[i][c]);
      if (full) mx8[i] = _mm256_max_ps(mx8[i], _mm256_max_ps(s[i][0], s[i][1]));
    }
  }
  float alpha[kTileRows];
  for (int i = 0; i < kTileRows; ++i) {
    float* pi = p + i * kTileKeys;
    if (!full) {
      const __m256 vi = _mm256_set1_ps(static_cast<float>(vis[i]));
      for (int c = 0; c < kTileKeys / 8; ++c) {  // keys at or past vis[i] -> -inf
        const __m256 seen = _mm256_cmp_ps(_mm256_add_ps(iota, _mm256_set1_ps(8.f * c)), vi, _CMP_LT_OQ);
        const __m256 sc = _mm256_blendv_ps(ninf, _mm256_loadu_ps(pi + 8 * c), seen);
        _mm256_storeu_ps(pi + 8 * c, sc);
        mx8[i] = _mm256_max_ps(mx8[i], sc);
      }
    }
    const float mx = std::max(m[i], vec8::hmax8(mx8[i]));
    alpha[i] = std::exp(m[i] - mx);
    const __m256 vm = _mm256_set1_ps(mx);
    __m256 sum = _mm256_setzero_ps();
    for (int c = 0; c < kTileKeys / 8; ++c) {
      const __m256 e = vec8::exp8(_mm256_sub_ps(_mm256_loadu_ps(pi + 8 * c), vm));  // -inf -> exactly 0
      _mm256_storeu_ps(pi + 8 * c, e);
      sum = _mm256_add_ps(sum, e);
    }
    l[i] = l[i] * alpha[i] + vec8::hsum8(sum);
    m[i] = mx;
  }
  vec8::pv_rows<kTileRows>(o, D, p, kTileKeys, v, ld, nk, D, nullptr, alpha);  // o rescaled by alpha as loaded
}
#endif

#if defined(__AVX512F__) || defined(DUOMEM_AVX2)
// Rows [j0, j1) of the next key block, K and V (D floats each), into L2: each tile asks for its share, so the block
// arrives while this one's tiles compute (in an append the prefix KV is cold: the weights streamed through the
// caches since it was last read).
void prefetch_rows(const float* k, const float* v, int64_t ld, int64_t D, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; ++j)
    for (int64_t d = 0; d < D; d += 16) {
      _mm_prefetch(reinterpret_cast<const char*>(k + j * ld + d), _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(v + j * ld + d), _MM_HINT_T1);
    }
}
#endif

}  // namespace

// AVX2 (Zen 3, stop 26): a forward of T own tokens of one session after 2,000 prefix + 420 own keys, the default
// model (G = 3), one thread, ms, tiles from 6 rows against from 48 (rows kernel below): T = 4 51.7 vs 55.6, T = 8
// 78.4 vs 88.9, T = 12 112.8 vs 129.2, T = 15 116.3 vs 143.6; at T = 2 and 3 even (38.2 vs 38.6, 50.8 vs 50.3).
std::atomic<int64_t>& tiled_min_rows_flag() {
  static std::atomic<int64_t> rows{0};
  return rows;
}

int64_t tiled_min_rows() {
  const int64_t set = tiled_min_rows_flag().load();
#ifdef __AVX512F__
  return set > 0 ? set : 48;
#else
  return set > 0 ? set : 12;
#endif
}

bool tiled_attention_fits(int64_t rows, int64_t D) {
#ifdef __AVX512F__
  return rows >= tiled_min_rows() && D % 64 == 0 && D <= 256;
#elif defined(DUOMEM_AVX2)
  return rows >= tiled_min_rows() && D % 16 == 0 && D <= 256;
#else
  (void)rows, (void)D;
  return false;
#endif
}

void attend_tiled(const float* const* q_rows, int64_t n, int64_t D, const float* k, const float* v, int64_t ld,
                  int64_t L, float scale, float* const* o_rows, float* const* lse_rows, const int64_t* limits,
                  bool merge) {
  if (attend_amx(q_rows, n, D, k, v, ld, L, scale, o_rows, lse_rows, limits, merge)) return;
#if defined(__AVX512F__) || defined(DUOMEM_AVX2)
  const int64_t npad = (n + kTileRows - 1) / kTileRows * kTileRows;
  std::vector<float> q(npad * D, 0.f), o(npad * D, 0.f), m(npad, -1e30f), l(npad, 0.f);
  std::vector<float> kt(D * kTileKeys), p(kTileRows * kTileKeys);
  std::vector<int64_t> lim(npad, 0);  // padding rows see nothing (their tiles' real rows decide what runs)
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t d = 0; d < D; ++d) q[i * D + d] = q_rows[i][d] * scale;
    lim[i] = limits ? std::min(limits[i], L) : L;
  }
  const int64_t lmax = n ? *std::max_element(lim.begin(), lim.end()) : 0, tiles = npad / kTileRows;
  for (int64_t n0 = 0; n0 < lmax; n0 += kTileKeys) {
    const int64_t nk = std::min(kTileKeys, lmax - n0);
    transpose_block(k + n0 * ld, ld, nk, D, kt.data());
    const int64_t next = std::min(kTileKeys, lmax - n0 - nk), share = (next + tiles - 1) / tiles;
    for (int64_t r0 = 0; r0 < npad; r0 += kTileRows) {
      const int64_t j0 = r0 / kTileRows * share;
      if (j0 < next) prefetch_rows(k + (n0 + nk) * ld, v + (n0 + nk) * ld, ld, D, j0, std::min(next, j0 + share));
      int64_t vis[kTileRows], any = 0;
      for (int64_t i = 0; i < kTileRows; ++i) {
        vis[i] = std::clamp<int64_t>(lim[r0 + i] - n0, 0, nk);
        any = std::max(any, vis[i]);
      }
      if (any == 0) continue;  // no row of the tile sees this block (causal): nothing to add, not even e^-100
      tile_step(q.data() + r0 * D, D, kt.data(), v + n0 * ld, ld, nk, vis, m.data() + r0, l.data() + r0,
                o.data() + r0 * D, p.data());
    }
  }
  finish_rows(n, D, o.data(), m.data(), l.data(), o_rows, lse_rows, merge);
#else
  (void)q_rows, (void)n, (void)D, (void)k, (void)v, (void)ld, (void)L, (void)scale, (void)o_rows, (void)lse_rows,
      (void)limits, (void)merge;
#endif
}

void finish_rows(int64_t n, int64_t D, const float* o, const float* m, const float* l, float* const* o_rows,
                 float* const* lse_rows, bool merge) {
  for (int64_t i = 0; i < n; ++i) {
    const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;
    const float lb = l[i] > 0.f ? m[i] + std::log(l[i]) : -INFINITY;
    if (!merge) {
      for (int64_t d = 0; d < D; ++d) o_rows[i][d] = o[i * D + d] * inv;
      *lse_rows[i] = lb;
      continue;
    }
    // exact merge with the partial attention already in o_rows / lse_rows (the prefix pass)
    float mx = std::max(*lse_rows[i], lb);
    if (!std::isfinite(mx)) mx = 0.f;
    const float wa = std::exp(*lse_rows[i] - mx), wb = std::exp(lb - mx), den = wa + wb;
    const float ca = wa / std::max(den, 1e-30f), cb = wb * inv / std::max(den, 1e-30f);
    for (int64_t d = 0; d < D; ++d) o_rows[i][d] = ca * o_rows[i][d] + cb * o[i * D + d];
    *lse_rows[i] = den > 0.f ? mx + std::log(den) : -INFINITY;
  }
}

}  // namespace duomem
