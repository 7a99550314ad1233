// AMX tiles for fp32 work: the tile configuration, the process's permission, and fp32 split exactly into bf16 parts.
//
// An fp32 value v is the exact sum of three bf16: v1 = v's top 16 bits, v2 = the top 16 bits of v - v1 (exact), v3 =
// the rest (its last 8 significant bits: exact in bf16). TDPBF16PS multiplies bf16 exactly and sums in fp32 (RNE),
// so tile products of the parts are fp32 products, summed in fp32 (block_gemm_amx.cpp, attention_amx.cpp).
#pragma once

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
#define DUOMEM_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <memory>

#include "vec.h"

namespace duomem {
namespace amx {

// A grow-only 64-byte-aligned buffer (tile loads and stores want aligned rows), reused call after call per thread.
template <class T>
struct Buffer {
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  std::unique_ptr<T[], Free> data;
  size_t cap = 0;
  T* get(int64_t n) {
    if (static_cast<size_t>(n) > cap) {
      data.reset(static_cast<T*>(std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64)));
      cap = n;
    }
    return data.get();
  }
};

struct alignas(64) TileConfig {
  uint8_t palette = 1, start = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Every tile 16 rows of 64 bytes. Load before a unit of work on each thread (oneDNN's AMX kernels, the bf16 GEMMs,
// configure their own) and release after.
inline void load_tiles() {
  TileConfig c;
  for (int i = 0; i < 8; ++i) {
    c.rows[i] = 16;
    c.colsb[i] = 64;
  }
  _tile_loadconfig(&c);
}

// Whether the CPU has AMX-BF16 and Linux granted this process the tile state (ARCH_REQ_XCOMP_PERM for
// XFEATURE_XTILEDATA: process-wide, asked once).
inline bool available() {
  static const bool ok = [] {
    if (!__builtin_cpu_supports("amx-bf16") || !__builtin_cpu_supports("amx-tile")) return false;
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  }();
  return ok;
}

inline __m512 top16(__m512 v) {
  return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}

// v = p[0] + p[1] + p[2] exactly, each p[j] a bf16 held in an fp32 lane (low 16 bits zero).
inline void split3(__m512 v, __m512 (&p)[3]) {
  p[0] = top16(v);
  const __m512 r = _mm512_sub_ps(v, p[0]);
  p[1] = top16(r);
  p[2] = _mm512_sub_ps(r, p[1]);
}

// The bf16 words of 32 floats (a's 16, then b's), in order: word 2i + 1 of the pair (a, b).
inline __m512i bf16_words(__m512 a, __m512 b) {
  static const __m512i odd = [] {
    alignas(64) uint16_t t[32];
    for (int i = 0; i < 32; ++i) t[i] = static_cast<uint16_t>(2 * i + 1);
    return _mm512_load_si512(t);
  }();
  return _mm512_permutex2var_epi16(_mm512_castps_si512(a), odd, _mm512_castps_si512(b));
}

// 16 rows of 32 floats (row i at rows[i], rows past `n` zero) as the three parts' B tiles in VNNI layout: tile j row
// kk holds, for each row i, the pair (2kk, 2kk + 1) of its part j (out + j * 512 words). The rows are the tile's
// columns: x rows of a GEMM, keys of attention scores.
inline void vnni_parts(const float* const* rows, int n, uint16_t* out) {
  __m512i u[3][16];
  for (int i = 0; i < 16; ++i) {
    if (i >= n) {
      u[0][i] = u[1][i] = u[2][i] = _mm512_setzero_si512();
      continue;
    }
    __m512 a[3], b[3];
    split3(_mm512_loadu_ps(rows[i]), a);
    split3(_mm512_loadu_ps(rows[i] + 16), b);
    for (int j = 0; j < 3; ++j) u[j][i] = bf16_words(a[j], b[j]);
  }
  for (int j = 0; j < 3; ++j) {
    vec::transpose16(u[j]);
    for (int kk = 0; kk < 16; ++kk) _mm512_store_si512(out + j * 512 + kk * 32, u[j][kk]);
  }
}

}  // namespace amx
}  // namespace duomem
#endif
