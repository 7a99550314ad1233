// 8-lane (AVX2 + FMA) helpers for CPUs without AVX-512: most laptops and desktops (Intel client cores since Alder
// Lake, AMD before Zen 4), the devices an on-device agent runs on. The kernels keep their AVX-512 paths where the
// build has them (vec.h); these serve the same loops on 256-bit registers. Build them on any x86-64 machine with
// DUOMEM_PORTABLE=1 (setup.py), which compiles the AVX-512 paths out, to test them there.
#pragma once

#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
#define DUOMEM_AVX2 1
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

// Keeps a loaded vector in its register: without it GCC folds the load into each FMA that uses it as a memory
// operand, one load per FMA (vec.h's DUOMEM_PIN, for ymm).
#define DUOMEM_PIN8(v) asm("" : "+x"(v))

namespace duomem {
namespace vec8 {

// lanes [0, n) of 8 set, n in [0, 8]
inline __m256i mask8(int64_t n) {
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::min<int64_t>(n, 8))), iota);
}

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

inline float hmax8(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

// 4 sources -> [sum a, sum b, sum c, sum d]
inline __m128 reduce4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));  // per 128-bit lane
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

// 8 sources -> lane k = sum of v[k]
inline __m256 reduce8(const __m256* v) {
  const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
  // a = [s0 s1 s2 s3 | s0' s1' s2' s3'] (low / high 128-bit halves of the sources), b likewise for 4..7
  return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

// s[i * lds + j] = q_i · k_j for R query rows (ldq apart) and 4 keys (ldk apart), D % 8 == 0: R x 4 accumulators,
// each key vector loaded once for the R rows, one transpose-add tree per row.
template <int R>
inline void dots4(const float* q, int64_t ldq, const float* k, int64_t ldk, int64_t D, float* s, int64_t lds) {
  __m256 acc[R][4];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < 4; ++j) acc[i][j] = _mm256_setzero_ps();
  for (int64_t d = 0; d < D; d += 8) {
    __m256 kv[4];
    for (int j = 0; j < 4; ++j) {
      kv[j] = _mm256_loadu_ps(k + j * ldk + d);
      DUOMEM_PIN8(kv[j]);
    }
    for (int i = 0; i < R; ++i) {
      __m256 qv = _mm256_loadu_ps(q + i * ldq + d);
      DUOMEM_PIN8(qv);
      for (int j = 0; j < 4; ++j) acc[i][j] = _mm256_fmadd_ps(kv[j], qv, acc[i][j]);
    }
  }
  for (int i = 0; i < R; ++i) _mm_storeu_ps(s + i * lds, reduce4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]));
}

// A later stretch of memory (two regions a and b, a line of each in turn; b may be null) asked for into L2 a line at a
// time, the lines spread evenly over the steps of the work that runs before it is read (step() is called `steps`
// times), each line once (the block GEMV's one prefetch per block and row asked for most lines twice: blocks.h). Asking
// for a whole block in a burst stalls on the core's miss buffers and overlaps nothing; a steady trickle keeps a few in
// flight (decode attention, cold, on Zen 3: 30 layers' KV of 2,420 keys 31 -> 18-25 ms by the median against the
// burst-per-row prefetch before it). Evenly, not one line per step: a 64-key block of 3 heads has 1,536 lines and 1,344
// steps, and one line per step left the last eighth of V unasked (medians 10.4-12.4 -> 9.6-11.7 ms, 5-8% less in each
// of six alternated runs); faster than even (all lines by 75% or 90% of the steps) measured slower, and so did asking
// in the order the heads use them. The two regions are asked for a line each in turn (a then b, K then V of the next
// key block), not all of a first: 30 layers' KV of 2,400 keys cold, one thread, min ms against a plain torch sum of the
// same bytes in the same run, two alternated rounds: a-then-b 9.6-10.0 (1.33-1.36x the sum's median), in turn 8.0-9.2
// (1.15-1.16x); the default engine's decode, 7 alternated pairs, median 19.7 -> 19.1 ms a token.
struct Ahead {
  const char* a = nullptr;
  const char* b = nullptr;
  int64_t a_left = 0, b_left = 0;  // bytes
  int64_t lines = 0, steps = 1, credit = 0;
  bool b_turn = false;  // the next line from b (while both have lines left)
  Ahead() = default;
  Ahead(const void* pa, const void* pb, int64_t bytes, int64_t nsteps)
      : a(static_cast<const char*>(pa)), b(static_cast<const char*>(pb)), a_left(bytes), b_left(pb ? bytes : 0),
        lines((pb ? 2 : 1) * ((bytes + 63) / 64)), steps(std::max<int64_t>(1, nsteps)) {}
  inline __attribute__((always_inline)) void line() {
    if (b_left > 0 && (b_turn || a_left <= 0)) {
      _mm_prefetch(b, _MM_HINT_T1);
      b += 64, b_left -= 64;
      b_turn = false;
    } else if (a_left > 0) {
      _mm_prefetch(a, _MM_HINT_T1);
      a += 64, a_left -= 64;
      b_turn = b_left > 0;
    }
  }
  inline __attribute__((always_inline)) void step() {
    credit += lines;
    while (credit >= steps) credit -= steps, line();
  }
};

// o_i += sum_j p[i * ldp + j] v_j for NG rows (o rows ldo apart) over nb keys (v rows ldv apart), D % 16 == 0:
// NG x 2 accumulators over a 16-dim slice (up to 6 rows fit the 16 registers with the V vectors and a broadcast),
// each V vector loaded once for the NG rows. ahead: one step per key per 16-dim slice, or none. alpha: o_i is first
// scaled by alpha[i] (an online softmax's rescale, as it is loaded), or not.
template <int NG>
inline void pv_rows(float* o, int64_t ldo, const float* p, int64_t ldp, const float* v, int64_t ldv, int64_t nb,
                    int64_t D, Ahead* ahead = nullptr, const float* alpha = nullptr) {
  for (int64_t d0 = 0; d0 < D; d0 += 16) {
    __m256 acc[NG][2];
    for (int i = 0; i < NG; ++i)
      for (int c = 0; c < 2; ++c) {
        acc[i][c] = _mm256_loadu_ps(o + i * ldo + d0 + 8 * c);
        if (alpha) acc[i][c] = _mm256_mul_ps(acc[i][c], _mm256_broadcast_ss(alpha + i));
      }
    for (int64_t j = 0; j < nb; ++j) {
      if (ahead) ahead->step();
      __m256 v0 = _mm256_loadu_ps(v + j * ldv + d0), v1 = _mm256_loadu_ps(v + j * ldv + d0 + 8);
      DUOMEM_PIN8(v0);
      DUOMEM_PIN8(v1);
      for (int i = 0; i < NG; ++i) {
        const __m256 pi = _mm256_broadcast_ss(p + i * ldp + j);
        acc[i][0] = _mm256_fmadd_ps(pi, v0, acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(pi, v1, acc[i][1]);
      }
    }
    for (int i = 0; i < NG; ++i)
      for (int c = 0; c < 2; ++c) _mm256_storeu_ps(o + i * ldo + d0 + 8 * c, acc[i][c]);
  }
}

// pv_rows for any number of rows n, 4 at a time
inline void pv_rows_any(float* o, int64_t ldo, const float* p, int64_t ldp, const float* v, int64_t ldv, int64_t nb,
                        int64_t D, int64_t n, Ahead* ahead = nullptr) {
  for (int64_t i0 = 0; i0 < n; i0 += 4) {
    float* oi = o + i0 * ldo;
    const float* pi = p + i0 * ldp;
    switch (std::min<int64_t>(4, n - i0)) {
      case 4: pv_rows<4>(oi, ldo, pi, ldp, v, ldv, nb, D, ahead); break;
      case 3: pv_rows<3>(oi, ldo, pi, ldp, v, ldv, nb, D, ahead); break;
      case 2: pv_rows<2>(oi, ldo, pi, ldp, v, ldv, nb, D, ahead); break;
      default: pv_rows<1>(oi, ldo, pi, ldp, v, ldv, nb, D, ahead); break;
    }
  }
}

// e^x for x <= 0 as vec.h's exp16 (same reduction, same polynomial, exactly 0 below kExpFloor); 2^n is built in the
// exponent bits, since AVX2 has no scalef (n >= -116 there, so the result stays normal).
constexpr float kExpFloor8 = -80.f;
inline __m256 exp8(__m256 x) {
  const __m256 live = _mm256_cmp_ps(x, _mm256_set1_ps(kExpFloor8), _CMP_GE_OQ);
  x = _mm256_max_ps(x, _mm256_set1_ps(kExpFloor8));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
  __m256 p = _mm256_set1_ps(1.f / 720.f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), live);
}

// max over s[0, n) * scale
inline float scaled_max(const float* s, int64_t n, float scale, float init) {
  __m256 m = _mm256_set1_ps(init);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) m = _mm256_max_ps(m, _mm256_mul_ps(_mm256_loadu_ps(s + j), _mm256_set1_ps(scale)));
  float mx = hmax8(m);
  for (; j < n; ++j) mx = std::max(mx, s[j] * scale);
  return mx;
}

// s[j] = exp(s[j]*scale - mx) in place for j < n; returns the sum.
inline float exp_sum(float* s, int64_t n, float scale, float mx) {
  const __m256 vs = _mm256_set1_ps(scale), vm = _mm256_set1_ps(mx);
  __m256 acc = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {  // masked loads and stores are slow on AMD cores: the tail only
    const __m256 e = exp8(_mm256_fmsub_ps(_mm256_loadu_ps(s + j), vs, vm));
    _mm256_storeu_ps(s + j, e);
    acc = _mm256_add_ps(acc, e);
  }
  if (j < n) {
    const __m256i k = mask8(n - j);
    const __m256 e = _mm256_and_ps(exp8(_mm256_fmsub_ps(_mm256_maskload_ps(s + j, k), vs, vm)), _mm256_castsi256_ps(k));
    _mm256_maskstore_ps(s + j, k, e);
    acc = _mm256_add_ps(acc, e);
  }
  return hsum8(acc);
}

}  // namespace vec8
}  // namespace duomem
#endif
