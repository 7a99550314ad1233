// Many query rows against one KV head's keys on AMX tiles (attend_tiled's work, attention_tiles.h): a long append
// or a prefill over the shared prefix, in fp32 arithmetic.
//
// q (pre-scaled), k, p and v are split exactly into three bf16 parts each (amx.h). Scores take all nine part
// products (every q·k product exact), q1k1 summed apart from the eight smaller ones, then added in fp32. P·V takes
// the six products down to 2^-16 of the product (p1v1, p1v2, p2v1, p1v3, p2v2, p3v1): the three dropped are below
// 2^-24 of it, and p·v, a probability times a value, carries no cancellation. Measured against float64
// (tests/kernels/test_prefix_attention.py): on ordinary scores as accurate as the fp32 tiles; the difference of
// two keys' scores more accurate (2.2e-6 against 6.9e-6 at |s| = 38); over 64 keys of sharp heads the probabilities
// lose ~3.6e-7 x max|s| relatively (2e-5 at |s| = 53, where the fp32 tiles stay at 3e-7), within the fp32
// tolerance; where that last gap comes from is not established.
//
// Everything runs transposed, keys (or dims) as tile rows and a group's 16 query rows as columns: scores come out
// as 64 keys x 16 rows, so the online softmax is vertical (one zmm per key holds it for all 16 rows: no horizontal
// reductions, no scalar exp) and its probabilities pair up keys for the P·V tile directly; the output accumulates
// as Oᵀ (64 dims x 16 rows), rescaled by a row vector. The running max is lazy (FlashAttention-3): it moves only
// when a row's scores pass it by more than 8, so probabilities stay below e^8 and Oᵀ is rarely rescaled; the sum
// and the output carry the same max, so the result is exact in the math, the log-sum-exp the usual m + log l.
// Tiles per group of 16 query rows and half-block of 32 keys: scores C0-C1 (big) and C2-C3 (small), 16 keys x 16
// rows, from A = k's parts (tmm7, one at a time) and B = q's parts (tmm4-6, VNNI pairs of dims); Oᵀ in C0-C3 (16
// dims x 16 rows) from A = vᵀ's parts (tmm7) and B = p's parts (tmm4-6, VNNI pairs of keys). K and V are split once
// per call for every row group of the item; a call takes up to 256 rows, so that happens once per KV head in an
// append.
#include "amx.h"
#include "attention_tiles.h"
#include "vec.h"

#include <algorithm>
#include <atomic>
#include <cmath>

namespace duomem {

// Off by default: in the engine's appends it saved 0-17% of the attention from run to run on this shared host, and
// its fp32-level differences flip bf16 roundings in bf16-weight engines (bench_agent_step's merged bf16-weight rows
// matched transformers on 1/20 steps with it, 18-20/20 without), so it is opt-in (set_attention_amx(True)).
std::atomic<bool>& attention_amx_flag() {
  static std::atomic<bool> on{false};
  return on;
}

#ifdef DUOMEM_AMX
int64_t tiled_item_rows(int64_t D) {
  // 256 rows = 16 groups: an append's 60 tokens x 3 grouped heads in one call (O: 64 KiB)
  return attention_amx_flag().load(std::memory_order_relaxed) && D == 64 && amx::available() ? 256 : kTiledItemRows;
}

namespace {

constexpr int64_t kD = 64;     // head dim of this kernel (SmolLM2, Llama-3.2-1B, Qwen2-0.5B: 64)
constexpr int64_t kKeys = 64;  // keys per block: four score tiles, two tile depths of P·V
constexpr float kLazy = 8.f;   // the running max moves when a score passes it by more than this
// Fewer rows leave the fp32 tiles: K and V's split costs the same for any row count. 1 thread, p10 of 30 alternated,
// ms AMX / fp32 tiles: 48 rows (16 sequences' decode over 2,048 prefix keys; 16 tokens over 2,200) 1.47 / 1.39 and
// 1.49 / 1.40; 180 rows (60 tokens over 2,500) 4.13 / 4.82.
constexpr int64_t kMinRows = 96;

struct Scratch {
  amx::Buffer<uint16_t> q, k, v, p;
  amx::Buffer<float> qs, o, m, l, s;
  amx::Buffer<int32_t> lim;
  amx::Buffer<bool> live;
};

// K as score A tiles: ka[(g * 3 + j) * 1024 + i * 64 + d] = part j of key 16g + i (keys past L zero), groups
// [0, groups); the tile for dims [32h, 32h + 32) starts at + 32h, rows 128 bytes apart.
void prepare_k(const float* k, int64_t ld, int64_t L, int64_t groups, uint16_t* ka) {
  for (int64_t g = 0; g < groups; ++g) {
    for (int i = 0; i < 16; ++i) {
      const int64_t key = g * 16 + i;
      for (int c = 0; c < 2; ++c) {
        __m512 a[3], b[3];
        amx::split3(key < L ? _mm512_loadu_ps(k + key * ld + 32 * c) : _mm512_setzero_ps(), a);
        amx::split3(key < L ? _mm512_loadu_ps(k + key * ld + 32 * c + 16) : _mm512_setzero_ps(), b);
        for (int j = 0; j < 3; ++j)
          _mm512_store_si512(ka + (g * 3 + j) * 1024 + i * 64 + 32 * c, amx::bf16_words(a[j], b[j]));
      }
    }
  }
}

// Vᵀ as P·V A tiles: va[((b * 4 + t) * 3 + j) * 512 + d * 32 + key] = part j of v[32b + key][16t + d], halves of
// key blocks [0, halves) (keys past L zero).
void prepare_vt(const float* v, int64_t ld, int64_t L, int64_t halves, uint16_t* va) {
  for (int64_t b = 0; b < halves; ++b) {
    for (int t = 0; t < 4; ++t) {
      __m512i u[3][16];  // u[j][kk] lane d: keys (2kk, 2kk + 1) of dim 16t + d, one 32-bit pair
      for (int kk = 0; kk < 16; ++kk) {
        const int64_t ka = b * 32 + 2 * kk, kb = ka + 1;
        __m512 pa[3], pb[3];
        amx::split3(ka < L ? _mm512_loadu_ps(v + ka * ld + 16 * t) : _mm512_setzero_ps(), pa);
        amx::split3(kb < L ? _mm512_loadu_ps(v + kb * ld + 16 * t) : _mm512_setzero_ps(), pb);
        for (int j = 0; j < 3; ++j)
          u[j][kk] = _mm512_or_si512(_mm512_castps_si512(pb[j]), _mm512_srli_epi32(_mm512_castps_si512(pa[j]), 16));
      }
      for (int j = 0; j < 3; ++j) {
        vec::transpose16(u[j]);  // row d: the 16 key pairs of dim 16t + d
        for (int d = 0; d < 16; ++d) _mm512_store_si512(va + ((b * 4 + t) * 3 + j) * 512 + d * 32, u[j][d]);
      }
    }
  }
}

// _tile_* take tile numbers as literals (pasted into the asm), so the tile steps are macros.
// Scores of keys [16 kg, +16) against the group's rows (q's parts of dims [32h, +32) in tmm4-6): all nine part
// products, so every q·k product is exact; q1k1 sums into C_T, the eight smaller ones (2^-8 of it and less) into
// C_S, so their roundings stay off the big sum.
#define DUOMEM_SCORE_TILE(T, S, ka, kg, h)                      \
  do {                                                          \
    const uint16_t* a_ = (ka) + (kg) * 3 * 1024 + 32 * (h);     \
    _tile_loadd(7, a_, 128);                                    \
    _tile_dpbf16ps(T, 7, 4);                                    \
    _tile_dpbf16ps(S, 7, 5);                                    \
    _tile_dpbf16ps(S, 7, 6);                                    \
    _tile_loadd(7, a_ + 1024, 128);                             \
    _tile_dpbf16ps(S, 7, 4);                                    \
    _tile_dpbf16ps(S, 7, 5);                                    \
    _tile_dpbf16ps(S, 7, 6);                                    \
    _tile_loadd(7, a_ + 2048, 128);                             \
    _tile_dpbf16ps(S, 7, 4);                                    \
    _tile_dpbf16ps(S, 7, 5);                                    \
    _tile_dpbf16ps(S, 7, 6);                                    \
  } while (0)

// Oᵀ dims [16 T, +16) in C_T += Vᵀ P over the 32 keys of half-block hb (p's parts in tmm4-6).
#define DUOMEM_PV_TILE(T, va, hb)                               \
  do {                                                          \
    const uint16_t* a_ = (va) + ((hb) * 4 + T) * 3 * 512;       \
    _tile_loadd(7, a_, 64);                                     \
    _tile_dpbf16ps(T, 7, 4);                                    \
    _tile_dpbf16ps(T, 7, 5);                                    \
    _tile_dpbf16ps(T, 7, 6);                                    \
    _tile_loadd(7, a_ + 512, 64);                               \
    _tile_dpbf16ps(T, 7, 4);                                    \
    _tile_dpbf16ps(T, 7, 5);                                    \
    _tile_loadd(7, a_ + 1024, 64);                              \
    _tile_dpbf16ps(T, 7, 4);                                    \
  } while (0)

// The online softmax of one group's block, vertically: st[key * 16 + row] + st[(64 + key) * 16 + row] the scores
// big and small sums (row sees keys below vis), m / l
// the rows' running max and sum, ot the group's Oᵀ (rescaled if a max moves); p's parts into pb as B tiles (VNNI
// pairs of keys: pb[(half * 3 + j) * 512 + kk * 32 + 2 row + e] = part j of p[key 32 half + 2kk + e][row]).
void softmax_block(const float* st, __m512i vis, int nk, float* m, float* l, float* ot, uint16_t* pb) {
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  auto score = [&](int j) {  // masked: keys a row does not see are -inf
    const __m512 s = _mm512_add_ps(_mm512_load_ps(st + j * 16), _mm512_load_ps(st + (kKeys + j) * 16));
    return _mm512_mask_mov_ps(ninf, _mm512_cmpgt_epi32_mask(vis, _mm512_set1_epi32(j)), s);
  };
  __m512 mx = ninf;
  for (int j = 0; j < nk; ++j) mx = _mm512_max_ps(mx, score(j));
  const __m512 mold = _mm512_load_ps(m);
  const __mmask16 moved = _mm512_cmp_ps_mask(mx, _mm512_add_ps(mold, _mm512_set1_ps(kLazy)), _CMP_GT_OQ);
  const __m512 mu = _mm512_mask_mov_ps(mold, moved, mx);
  __m512 lsum = _mm512_load_ps(l);
  if (moved) {
    const __m512 alpha = vec::exp16(_mm512_sub_ps(mold, mu));  // 1 where the max stayed
    lsum = _mm512_mul_ps(lsum, alpha);
    for (int d = 0; d < kD; ++d) _mm512_store_ps(ot + d * 16, _mm512_mul_ps(alpha, _mm512_load_ps(ot + d * 16)));
    _mm512_store_ps(m, mu);
  }
  // e^(s - mu) for s - mu in [-60, 8] (exp16 is exact to ~2e-7 there; scalef covers 2^12), else 0: above e^-60
  // the split's last part stays a normal number (a subnormal costs a microcode assist per vector op on Intel cores).
  auto prob = [&](int j) {
    if (j >= nk) return _mm512_setzero_ps();
    const __m512 z = _mm512_sub_ps(score(j), mu);
    return vec::exp16(_mm512_mask_mov_ps(z, _mm512_cmp_ps_mask(z, _mm512_set1_ps(-60.f), _CMP_LT_OQ), ninf));
  };
  for (int kk = 0; kk < kKeys / 2; ++kk) {
    const __m512 p0 = prob(2 * kk), p1 = prob(2 * kk + 1);
    lsum = _mm512_add_ps(lsum, _mm512_add_ps(p0, p1));
    __m512 a[3], b[3];
    amx::split3(p0, a);
    amx::split3(p1, b);
    for (int j = 0; j < 3; ++j)
      _mm512_store_si512(pb + ((kk / 16) * 3 + j) * 512 + (kk % 16) * 32,
                         _mm512_or_si512(_mm512_castps_si512(b[j]), _mm512_srli_epi32(_mm512_castps_si512(a[j]), 16)));
  }
  _mm512_store_ps(l, lsum);
}

}  // namespace

bool attend_amx(const float* const* q_rows, int64_t n, int64_t D, const float* k, const float* v, int64_t ld,
                int64_t L, float scale, float* const* o_rows, float* const* lse_rows, const int64_t* limits,
                bool merge) {
  if (D != kD || n < kMinRows || !attention_amx_flag().load(std::memory_order_relaxed) || !amx::available())
    return false;
  thread_local Scratch sc;
  const int64_t G = (n + 15) / 16, npad = G * 16;
  int32_t* lim = sc.lim.get(npad);
  for (int64_t i = 0; i < npad; ++i) lim[i] = static_cast<int32_t>(i < n ? (limits ? std::min(limits[i], L) : L) : 0);
  const int64_t lmax = *std::max_element(lim, lim + npad), nkb = (lmax + kKeys - 1) / kKeys;
  float* qs = sc.qs.get(npad * kD);
  uint16_t* qb = sc.q.get(G * 2 * 3 * 512);
  uint16_t* ka = sc.k.get(std::max<int64_t>(1, nkb * 4 * 3 * 1024));
  uint16_t* va = sc.v.get(std::max<int64_t>(1, nkb * 2 * 4 * 3 * 512));
  float* ot = sc.o.get(npad * kD);
  float* m = sc.m.get(npad);
  float* l = sc.l.get(npad);
  std::fill_n(ot, npad * kD, 0.f);
  std::fill_n(m, npad, -1e30f);
  std::fill_n(l, npad, 0.f);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t d = 0; d < kD; ++d) qs[i * kD + d] = q_rows[i][d] * scale;
  for (int64_t g = 0; g < G; ++g) {  // q as score B tiles: ((g * 2 + h) * 3 + j) * 512, VNNI pairs of dims
    const int rows = static_cast<int>(std::min<int64_t>(16, n - g * 16));
    for (int h = 0; h < 2; ++h) {
      const float* r[16];
      for (int i = 0; i < rows; ++i) r[i] = qs + (g * 16 + i) * kD + 32 * h;
      amx::vnni_parts(r, rows, qb + (g * 2 + h) * 3 * 512);
    }
  }
  prepare_k(k, ld, lmax, 4 * nkb, ka);
  prepare_vt(v, ld, lmax, 2 * nkb, va);
  // Per block, three passes over the groups (scores, softmax, P·V) rather than one group at a time: each buffer a
  // tile stores is read by vector loads a pass later, and each the vectors store is tile-loaded a pass later (there
  // is no store forwarding between tiles and vectors: back to back, each waits for the other's stores to land).
  float* st = sc.s.get(G * 2 * kKeys * 16);
  uint16_t* pb = sc.p.get(G * 2 * 3 * 512);
  bool* live = sc.live.get(G);
  amx::load_tiles();
  for (int64_t blk = 0; blk < nkb; ++blk) {
    const int64_t n0 = blk * kKeys;
    const int nk = static_cast<int>(std::min(kKeys, lmax - n0));
    const __m512i base = _mm512_set1_epi32(static_cast<int>(n0));
    for (int64_t g = 0; g < G; ++g) {
      live[g] = _mm512_reduce_max_epi32(_mm512_sub_epi32(_mm512_load_si512(lim + g * 16), base)) > 0;
      if (!live[g]) continue;  // no row of the group sees this block (causal)
      float* sg = st + g * 2 * kKeys * 16;  // big parts of the 64 keys, then the small parts
      for (int half = 0; half < (nk > 32 ? 2 : 1); ++half) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int h = 0; h < 2; ++h) {
          const uint16_t* q = qb + (g * 2 + h) * 3 * 512;
          _tile_loadd(4, q, 64);
          _tile_loadd(5, q + 512, 64);
          _tile_loadd(6, q + 1024, 64);
          DUOMEM_SCORE_TILE(0, 2, ka, 4 * blk + 2 * half, h);
          DUOMEM_SCORE_TILE(1, 3, ka, 4 * blk + 2 * half + 1, h);
        }
        _tile_stored(0, sg + half * 512, 64);
        _tile_stored(1, sg + half * 512 + 256, 64);
        _tile_stored(2, sg + kKeys * 16 + half * 512, 64);
        _tile_stored(3, sg + kKeys * 16 + half * 512 + 256, 64);
      }
    }
    for (int64_t g = 0; g < G; ++g) {
      if (!live[g]) continue;
      const __m512i vis = _mm512_sub_epi32(_mm512_load_si512(lim + g * 16), base);
      softmax_block(st + g * 2 * kKeys * 16, vis, nk, m + g * 16, l + g * 16, ot + g * 16 * kD, pb + g * 2 * 3 * 512);
    }
    for (int64_t g = 0; g < G; ++g) {
      if (!live[g]) continue;
      float* og = ot + g * 16 * kD;  // Oᵀ: 64 dims x 16 rows
      const uint16_t* pg = pb + g * 2 * 3 * 512;
      _tile_loadd(0, og, 64);
      _tile_loadd(1, og + 256, 64);
      _tile_loadd(2, og + 512, 64);
      _tile_loadd(3, og + 768, 64);
      for (int hb = 0; hb < (nk > 32 ? 2 : 1); ++hb) {
        _tile_loadd(4, pg + hb * 3 * 512, 64);
        _tile_loadd(5, pg + hb * 3 * 512 + 512, 64);
        _tile_loadd(6, pg + hb * 3 * 512 + 1024, 64);
        DUOMEM_PV_TILE(0, va, 2 * blk + hb);
        DUOMEM_PV_TILE(1, va, 2 * blk + hb);
        DUOMEM_PV_TILE(2, va, 2 * blk + hb);
        DUOMEM_PV_TILE(3, va, 2 * blk + hb);
      }
      _tile_stored(0, og, 64);
      _tile_stored(1, og + 256, 64);
      _tile_stored(2, og + 512, 64);
      _tile_stored(3, og + 768, 64);
    }
  }
  _tile_release();
  float* o = qs;  // q is in the tiles' layout now: its fp32 rows hold O, rows x dims
  for (int64_t g = 0; g < G; ++g) {
    for (int t = 0; t < 4; ++t) {
      __m512i r[16];
      for (int d = 0; d < 16; ++d) r[d] = _mm512_load_si512(ot + g * 16 * kD + (16 * t + d) * 16);
      vec::transpose16(r);
      for (int i = 0; i < 16; ++i) _mm512_storeu_si512(o + (g * 16 + i) * kD + 16 * t, r[i]);
    }
  }
  finish_rows(n, kD, o, m, l, o_rows, lse_rows, merge);
  return true;
}

#undef DUOMEM_SCORE_TILE
#undef DUOMEM_PV_TILE

#else

int64_t tiled_item_rows(int64_t) { return kTiledItemRows; }

bool attend_amx(const float* const*, int64_t, int64_t, const float*, const float*, int64_t, int64_t, float,
                float* const*, float* const*, const int64_t*, bool) {
  return false;
}

#endif

}  // namespace duomem
