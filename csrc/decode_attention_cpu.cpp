// Decode attention on CPU: one new token per sequence attends to its whole context (shared prefix + own KV).
//
// Decode reads every K/V row once per token (2,000 tokens x 3 KV heads x 64 fp32 = 1.5 MiB of K per layer), so the
// loop is built around one forward stream over the rows: key blocks outside, KV heads inside. A block of 64 rows
// (64 x 768 B for K at Hkv=3, D=64) serves all heads while it is in L1/L2. The next block's rows are prefetched into
// L2 while this one is computed, one line per row per FMA step of the same head (scores16, pv_block): 1 thread,
// 2,100 keys, 30 layers' KV cold, 315 -> 163 us per layer (a plain torch sum streams the same bytes in 80 us; hot,
// 63 -> 77 us). Prefetching the whole next block in one burst at its start, with any hint, measured no faster than
// no prefetch at all: the burst stalls on the core's miss buffers instead of overlapping the FMAs. The G query heads
// of a KV head are the rows of a 4-row register block for the scores (G=3 padded to 4: one transpose-add tree
// reduces 4 keys x 4 rows) and exactly G rows for P·V (hot: 141 -> 100 us per layer against the padded 4-row P·V).
#include "decode_cpu.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "parallel.h"
#include "vec.h"

namespace duomem {
namespace {

using namespace vec;

constexpr int64_t kBlock = 64;     // keys per online-softmax step
constexpr int64_t kMaxD = 256;

// Flash-attention state of the G rows of one KV head.
struct HeadState {
  int64_t G = 0, R4 = 0, D = 0;
  std::vector<float> q, o, m, l;  // q (R4, D) zero-padded, o (G, D)
  void init(const float* qh, int64_t g, int64_t d) {
    G = g, D = d, R4 = (g + 3) / 4 * 4;
    q.assign(R4 * D, 0.f);
    std::copy_n(qh, G * D, q.begin());
    o.assign(G * D, 0.f);
    m.assign(G, -1e30f);
    l.assign(G, 0.f);
  }
};

inline void prefetch_rows(const float* p, int64_t ld, int64_t rows, int64_t row_bytes) {
#ifdef __AVX512F__
  for (int64_t j = 0; j < rows; ++j)
    for (int64_t b = 0; b < row_bytes; b += 64) _mm_prefetch(reinterpret_cast<const char*>(p + j * ld) + b, _MM_HINT_T0);
#endif
}

// o_g += sum_j p[g][j] v_j over nb keys (v rows at v + j*ld, D floats) for NG rows from g0: NG x 4 zmm accumulators
// (a 64-dim slice) stay in registers across the block, each V vector loaded once for the NG rows.
#ifdef __AVX512F__
template <int NG>
void pv_block(HeadState& st, int64_t g0, const float* p, const float* v, int64_t ld, int64_t nb, const float* pf,
              int64_t npf) {
  const int64_t D = st.D;
  for (int64_t d0 = 0; d0 < D; d0 += 64) {
    __mmask16 mk[4];
    for (int c = 0; c < 4; ++c) {
      const int64_t left = std::max<int64_t>(0, std::min<int64_t>(16, D - d0 - 16 * c));
      mk[c] = static_cast<__mmask16>((1u << left) - 1u);
    }
    float* o = st.o.data() + g0 * D + d0;
    __m512 acc[NG][4];
    for (int i = 0; i < NG; ++i)
      for (int c = 0; c < 4; ++c) acc[i][c] = _mm512_maskz_loadu_ps(mk[c], o + i * D + 16 * c);
    for (int64_t j = 0; j < nb; ++j) {
      if (j < npf)
        for (int c = 0; c < 4; ++c) _mm_prefetch(reinterpret_cast<const char*>(pf + j * ld + d0 + 16 * c), _MM_HINT_T1);
      __m512 vv[4];
      for (int c = 0; c < 4; ++c) vv[c] = _mm512_maskz_loadu_ps(mk[c], v + j * ld + d0 + 16 * c);
      for (int i = 0; i < NG; ++i) {
        const __m512 pi = _mm512_set1_ps(p[(g0 + i) * kBlock + j]);
        for (int c = 0; c < 4; ++c) acc[i][c] = _mm512_fmadd_ps(pi, vv[c], acc[i][c]);
      }
    }
    for (int i = 0; i < NG; ++i)
      for (int c = 0; c < 4; ++c) _mm512_mask_storeu_ps(o + i * D + 16 * c, mk[c], acc[i][c]);
  }
}
#endif

#ifdef DUOMEM_AVX2
// s[g][0..8) = q_g · k_0..7 for the G rows (D % 8 == 0): one transpose-add tree per 8 dots of one row; one ahead
// step per 8-dim step.
void scores8(const HeadState& st, const float* k, int64_t ld, vec8::Ahead& ahead, float* s) {
  const int64_t D = st.D;
  for (int64_t g = 0; g < st.G; ++g) {
    const float* q = st.q.data() + g * D;
    __m256 acc[8];
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; d += 8) {
      ahead.step();
      const __m256 qv = _mm256_loadu_ps(q + d);
      for (int j = 0; j < 8; ++j) acc[j] = _mm256_fmadd_ps(_mm256_loadu_ps(k + j * ld + d), qv, acc[j]);
    }
    _mm256_storeu_ps(s + g * kBlock, vec8::reduce8(acc));
  }
}
#endif

void pv_rows(HeadState& st, const float* p, const float* v, int64_t ld, int64_t nb, const float* pf, int64_t npf) {
#ifdef __AVX512F__
  for (int64_t g0 = 0; g0 < st.G; g0 += 4) {
    const int64_t n = g0 == 0 ? npf : 0;  // prefetch once, in the first row group
    switch (std::min<int64_t>(4, st.G - g0)) {
      case 4: pv_block<4>(st, g0, p, v, ld, nb, pf, n); break;
      case 3: pv_block<3>(st, g0, p, v, ld, nb, pf, n); break;
      case 2: pv_block<2>(st, g0, p, v, ld, nb, pf, n); break;
      default: pv_block<1>(st, g0, p, v, ld, nb, pf, n); break;
    }
  }
#else
  for (int64_t j = 0; j < nb; ++j)
    for (int64_t g = 0; g < st.G; ++g)
      for (int64_t d = 0; d < st.D; ++d) st.o[g * st.D + d] += p[g * kBlock + j] * v[j * ld + d];
#endif
}

#ifdef __AVX512F__
// s[g][0..16) = q_g · k_0..15 for the G rows (no padding): one transpose-add tree per 16 dots of one row. The 4 keys x
// 4 rows block pads G=3 to 4 rows, wasting a quarter of its FMAs and tree (hot, 3,500 keys: 184-193 -> 168 us/layer).
void scores16(const HeadState& st, const float* k, int64_t ld, const float* pf, float* s) {
  const int64_t D = st.D;
  for (int64_t g = 0; g < st.G; ++g) {
    const float* q = st.q.data() + g * D;
    __m512 acc[16];
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d += 16) {
      const __mmask16 m = D - d >= 16 ? 0xffff : static_cast<__mmask16>((1u << (D - d)) - 1u);
      const __m512 qv = _mm512_maskz_loadu_ps(m, q + d);
      if (pf && g == 0)
        for (int j = 0; j < 16; ++j) _mm_prefetch(reinterpret_cast<const char*>(pf + j * ld + d), _MM_HINT_T1);
      for (int j = 0; j < 16; ++j) acc[j] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, k + j * ld + d), qv, acc[j]);
    }
    _mm512_storeu_ps(s + g * kBlock, reduce16(acc));
  }
}

// scores16 for D = 16 * NC: one key row's NC vectors at a time through one walking pointer, the query row in
// registers (the generic loop keeps 16 row pointers, more than the registers, and spills them). The key loop stays
// a loop (GCC does not unroll it; forcing that measured hot 3%, cold no change).
template <int NC>
void scores16_fixed(const HeadState& st, const float* k, int64_t ld, const float* pf, float* s) {
  for (int64_t g = 0; g < st.G; ++g) {
    __m512 qv[NC];
    for (int c = 0; c < NC; ++c) qv[c] = _mm512_loadu_ps(st.q.data() + g * 16 * NC + 16 * c);
    __m512 acc[16];
    const float* kj = k;
    const float* pj = pf;
    for (int j = 0; j < 16; ++j, kj += ld) {
      acc[j] = _mm512_mul_ps(_mm512_loadu_ps(kj), qv[0]);
      for (int c = 1; c < NC; ++c) acc[j] = _mm512_fmadd_ps(_mm512_loadu_ps(kj + 16 * c), qv[c], acc[j]);
      if (pf && g == 0) {
        for (int c = 0; c < NC; ++c) _mm_prefetch(reinterpret_cast<const char*>(pj + 16 * c), _MM_HINT_T1);
        pj += ld;
      }
    }
    _mm512_storeu_ps(s + g * kBlock, reduce16(acc));
  }
}

// Hot (L2), 512-1,024 keys x 3 KV heads, G = 3, alternated in one process: 10-12% less time than scores16 alone;
// cold (30 layers' KV, 2,360 keys) ~5% by the median.
void scores16_any(const HeadState& st, const float* k, int64_t ld, const float* pf, float* s) {
  switch (st.D) {
    case 64: return scores16_fixed<4>(st, k, ld, pf, s);
    case 128: return scores16_fixed<8>(st, k, ld, pf, s);
    default: return scores16(st, k, ld, pf, s);
  }
}
#endif

// The online-softmax update of G rows over a block's scores s (rows kBlock apart, nb keys): exponentiated in place,
// running max and sum carried on, o rescaled.
void softmax_update(HeadState& st, float* s, int64_t nb, float scale) {
  for (int64_t g = 0; g < st.G; ++g) {
    float* sg = s + g * kBlock;
    const float mx = scaled_max(sg, nb, scale, st.m[g]);
    const float alpha = std::exp(st.m[g] - mx);
    st.l[g] = st.l[g] * alpha + exp_sum(sg, nb, scale, mx);
    st.m[g] = mx;
    if (alpha != 1.f)
      for (int64_t d = 0; d < st.D; ++d) st.o[g * st.D + d] *= alpha;
  }
}

// One key block of one KV head: scores, online-softmax update, P·V.
// npf rows of the next block (at k/v + dist * ld) are prefetched into L2 along the way, a few lines per FMA step:
// one burst of a whole block at its start stalls on the core's miss buffers and overlaps nothing.
void attend_block(HeadState& st, const float* k, const float* v, int64_t ld, int64_t nb, int64_t dist, int64_t npf,
                  float scale, float* s) {
  const int64_t D = st.D;
  int64_t n = 0;
#ifdef __AVX512F__
  if (st.G % 4 != 0)
    for (; n + 16 <= nb; n += 16) scores16_any(st, k + n * ld, ld, n + 16 <= npf ? k + (dist + n) * ld : nullptr, s + n);
#endif
  for (; n + kRowBlock <= nb; n += kRowBlock) dot_rows<kRowBlock>(k + n * ld, ld, st.q.data(), D, D, st.R4, s + n, kBlock);
  for (; n < nb; ++n) dot_rows<1>(k + n * ld, ld, st.q.data(), D, D, st.R4, s + n, kBlock);
  softmax_update(st, s, nb, scale);
  pv_rows(st, s, v, ld, nb, v + dist * ld, npf);
}

#ifdef DUOMEM_AVX2
// attend_block on 8-lane registers (D % 16 == 0), stepping ahead (the next block's K and V lines) as it goes: one
// step per 8 FMAs of the scores and per 2G of P·V.
void attend_block8(HeadState& st, const float* k, const float* v, int64_t ld, int64_t nb, float scale, float* s,
                   vec8::Ahead& ahead) {
  int64_t n = 0;
  for (; n + 8 <= nb; n += 8) scores8(st, k + n * ld, ld, ahead, s + n);
  for (; n < nb; ++n) dot_rows<1>(k + n * ld, ld, st.q.data(), st.D, st.D, st.R4, s + n, kBlock);
  softmax_update(st, s, nb, scale);
  vec8::pv_rows_any(st.o.data(), st.D, s, kBlock, v, ld, nb, st.D, st.G, &ahead);
}
#endif

}  // namespace

namespace {

// Score scratch of one attend call: R4 rows x kBlock keys, on the stack up to 16 rows.
struct Scores {
  alignas(64) float small[16 * kBlock];
  std::vector<float> big;
  float* get(int64_t R4) {
    if (R4 <= 16) return small;
    big.resize(R4 * kBlock);
    return big.data();
  }
};

// Every key of sg into the flash states of heads (one per KV head), key blocks outside, heads inside: a block of
// whole rows serves every head while in L1/L2. The next block is prefetched along the way, past sg's end into the
// `beyond` keys that follow it in memory (the rest of its segment, when one thread attends all of it).
void attend_run(std::vector<HeadState>& heads, int64_t D, const KVSegment& sg, int64_t beyond, float scale) {
  const int64_t Hkv = static_cast<int64_t>(heads.size());
  Scores s;
  float* sp = s.get(heads[0].R4);
  const int64_t row_bytes = Hkv * D * static_cast<int64_t>(sizeof(float));
  for (int64_t n0 = 0; n0 < sg.n; n0 += kBlock) {
    const int64_t nb = std::min(kBlock, sg.n - n0);
    const int64_t ahead = std::max<int64_t>(0, std::min(kBlock, sg.n + beyond - n0 - nb));
#ifdef DUOMEM_AVX2
    if (D % 16 == 0) {  // the next block's rows hold every head: one cursor over its K, then its V, for all heads
      const int64_t bytes = ahead * sg.ld * static_cast<int64_t>(sizeof(float));
      const int64_t G = heads[0].G;  // steps: scores8's per 8 keys x 8 dims x row, pv_rows' per key x 16 dims
      const int64_t steps = Hkv * (G * (nb / 8) * (D / 8) + (G + 3) / 4 * (D / 16) * nb);
      vec8::Ahead next(sg.k + (n0 + nb) * sg.ld, sg.v + (n0 + nb) * sg.ld, bytes, steps);
      for (int64_t h = 0; h < Hkv; ++h)
        attend_block8(heads[h], sg.k + n0 * sg.ld + h * D, sg.v + n0 * sg.ld + h * D, sg.ld, nb, scale, sp, next);
      continue;
    }
#endif
    if (heads[0].G % 4 == 0 && ahead > 0) prefetch_rows(sg.k + (n0 + nb) * sg.ld, sg.ld, ahead, row_bytes);
    for (int64_t h = 0; h < Hkv; ++h)
      attend_block(heads[h], sg.k + n0 * sg.ld + h * D, sg.v + n0 * sg.ld + h * D, sg.ld, nb, nb, ahead, scale, sp);
  }
}

// into (m, l, o) combined exactly with from's (both over disjoint keys; o unnormalised until finish).
void merge_state(HeadState& into, const HeadState& from) {
  for (int64_t g = 0; g < into.G; ++g) {
    const float m = std::max(into.m[g], from.m[g]);
    const float a = std::exp(into.m[g] - m), b = std::exp(from.m[g] - m);
    into.l[g] = into.l[g] * a + from.l[g] * b;
    into.m[g] = m;
    for (int64_t d = 0; d < into.D; ++d) into.o[g * into.D + d] = into.o[g * into.D + d] * a + from.o[g * into.D + d] * b;
  }
}

// Keys per chunk: a segment is attended in chunks of this many keys, each from a fresh state, merged in order. The
// chunks are fixed by the keys, not by the threads, so threads share them out (parallel.h) and every thread count
// gives the same bits. 2,000 prefix keys = 4 chunks, each thread streaming whole rows: a decode token of the default
// model on 2 threads over a 2,000-key playbook 47-57 -> 37-41 ms (the attention had run on one thread).
constexpr int64_t kChunkKeys = 512;

// Every key of segs[0..nseg) into the flash states of heads (one per KV head).
// The chunks' states live in this thread's scratch, kept from call to call: init() assigns into the capacity already
// there, so a decode token allocates nothing here after its first layer (fresh vectors were 2,000 mallocs a token).
void attend_segments(std::vector<HeadState>& heads, int64_t D, const KVSegment* segs, int nseg, float scale,
                     Team team) {
  // References: the chunk lambda runs on pool threads, where the names would be those threads' own scratch.
  thread_local std::vector<KVSegment> chunk_scratch;
  thread_local std::vector<int64_t> rest_scratch;
  thread_local std::vector<std::vector<HeadState>> part_scratch;
  std::vector<KVSegment>& chunks = chunk_scratch;
  std::vector<int64_t>& rest = rest_scratch;  // keys after each chunk in its segment
  std::vector<std::vector<HeadState>>& part = part_scratch;
  chunks.clear(), rest.clear();
  for (int i = 0; i < nseg; ++i)
    for (int64_t n0 = 0; n0 < segs[i].n; n0 += kChunkKeys) {
      const int64_t n = std::min(kChunkKeys, segs[i].n - n0);
      chunks.push_back({segs[i].k + n0 * segs[i].ld, segs[i].v + n0 * segs[i].ld, segs[i].ld, n});
      rest.push_back(segs[i].n - n0 - n);
    }
  if (chunks.size() == 1) return attend_run(heads, D, chunks[0], 0, scale);
  const bool alone = at::get_num_threads() == 1;  // then prefetch on across chunk ends: one stream, as one run
  if (part.size() < chunks.size()) part.resize(chunks.size());
  for (size_t c = 0; c < chunks.size(); ++c) part[c].resize(heads.size());
  const std::function<void(int64_t)> chunk = [&](int64_t c) {
    for (size_t h = 0; h < heads.size(); ++h) part[c][h].init(heads[h].q.data(), heads[h].G, D);
    attend_run(part[c], D, chunks[c], alone ? rest[c] : 0, scale);
  };
  const int64_t n = static_cast<int64_t>(chunks.size());
  team == Team::pool ? parallel_chunks(n, chunk) : parallel_items(n, chunk);
  for (size_t c = 0; c < chunks.size(); ++c)
    for (size_t h = 0; h < heads.size(); ++h) merge_state(heads[h], part[c][h]);
}

// out (Hq, D), row h * G + g, from rows [g0, g0 + G) of each head's state.
void finish(const std::vector<HeadState>& heads, int64_t g0, int64_t G, float* out) {
  for (size_t h = 0; h < heads.size(); ++h) {
    const HeadState& st = heads[h];
    for (int64_t g = 0; g < G; ++g) {
      const float inv = st.l[g0 + g] > 0.f ? 1.f / st.l[g0 + g] : 0.f;
      for (int64_t d = 0; d < st.D; ++d) out[(h * G + g) * st.D + d] = st.o[(g0 + g) * st.D + d] * inv;
    }
  }
}

// Rows [g0, g0 + G) of `from` as a G-row state of their own (q, running max, sum and output carried over).
HeadState split_rows(const HeadState& from, int64_t g0, int64_t G) {
  HeadState st;
  st.init(from.q.data() + g0 * from.D, G, from.D);
  std::copy_n(from.o.begin() + g0 * from.D, G * from.D, st.o.begin());
  std::copy_n(from.m.begin() + g0, G, st.m.begin());
  std::copy_n(from.l.begin() + g0, G, st.l.begin());
  return st;
}

}  // namespace

void decode_attention_rows(const float* q, int64_t Hq, int64_t Hkv, int64_t D, const KVSegment* segs, int nseg,
                           float scale, float* out, Team team) {
  const int64_t G = Hq / Hkv;
  thread_local std::vector<HeadState> heads;  // kept as attend_segments' scratch is
  heads.resize(Hkv);
  for (int64_t h = 0; h < Hkv; ++h) heads[h].init(q + h * G * D, G, D);
  attend_segments(heads, D, segs, nseg, scale, team);
  finish(heads, 0, G, out);
}

// B sessions on one prefix: the prefix is attended once for all B x G query rows of each KV head (its KV read once
// per token, not B times), then each session's own rows carry their flash state on over its own segment. Per row
// the keys meet the state in the same order as decode_attention_rows with segments [prefix, own].
void decode_attention_shared(const float* q, int64_t B, int64_t Hq, int64_t Hkv, int64_t D, const KVSegment& prefix,
                             const KVSegment* own, float scale, float* out, Team team) {
  const int64_t G = Hq / Hkv;
  std::vector<HeadState> all(Hkv);
  std::vector<float> qh(B * G * D);
  for (int64_t h = 0; h < Hkv; ++h) {
    for (int64_t b = 0; b < B; ++b) std::copy_n(q + (b * Hq + h * G) * D, G * D, qh.begin() + b * G * D);
    all[h].init(qh.data(), B * G, D);
  }
  attend_segments(all, D, &prefix, 1, scale, team);
  for (int64_t b = 0; b < B; ++b) {
    std::vector<HeadState> heads;
    for (int64_t h = 0; h < Hkv; ++h) heads.push_back(split_rows(all[h], b * G, G));
    attend_segments(heads, D, own + b, 1, scale, team);
    finish(heads, 0, G, out + b * Hq * D);
  }
}

// q (B, Hq, D); k/v_prefix (P, Hkv, D) or none; k/v_own (B, S, Hkv, D), row b attends to own rows [0, own_lens[b]).
// Returns (B, Hq, D) fp32. Equals prefix_attention with T=1 (suffix_lens = own_lens).
at::Tensor decode_attention_cpu(const at::Tensor& q, const c10::optional<at::Tensor>& k_prefix,
                                const c10::optional<at::Tensor>& v_prefix, const at::Tensor& k_own,
                                const at::Tensor& v_own, at::IntArrayRef own_lens, double scale) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kFloat, "q must be fp32 (B, Hq, D), got ", q.sizes());
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(2);
  TORCH_CHECK(D <= kMaxD, "head dim ", D, " > ", kMaxD, " not supported");
  TORCH_CHECK(k_own.dim() == 4 && k_own.size(0) == B && k_own.size(3) == D && v_own.sizes() == k_own.sizes() &&
                  k_own.scalar_type() == at::kFloat && v_own.scalar_type() == at::kFloat,
              "k_own/v_own must both be fp32 (B=", B, ", S, Hkv, D=", D, "), got ", k_own.sizes());
  const int64_t Hkv = k_own.size(2), S = k_own.size(1);
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, "Hq=", Hq, " must be a multiple of Hkv=", Hkv);
  TORCH_CHECK(static_cast<int64_t>(own_lens.size()) == B, "own_lens must have B=", B, " entries");
  // own KV may be a broadcast view (stride 0 over B: T query tokens of one sequence, each its own causal length)
  const auto rows_ok = [&](const at::Tensor& t) { return t.stride(3) == 1 && t.stride(2) == D && t.stride(1) == Hkv * D; };
  at::Tensor qc = q.contiguous(), ko = rows_ok(k_own) ? k_own : k_own.contiguous(), kp, vp;
  at::Tensor vo = rows_ok(v_own) ? v_own : v_own.contiguous();
  const bool has_p = k_prefix.has_value() && k_prefix->defined() && k_prefix->size(0) > 0;
  if (has_p) {
    TORCH_CHECK(k_prefix->dim() == 3 && k_prefix->size(1) == Hkv && k_prefix->size(2) == D &&
                    v_prefix.has_value() && v_prefix->sizes() == k_prefix->sizes() &&
                    k_prefix->scalar_type() == at::kFloat && v_prefix->scalar_type() == at::kFloat,
                "k_prefix/v_prefix must both be fp32 (P, Hkv=", Hkv, ", D=", D, ")");
    kp = k_prefix->contiguous(), vp = v_prefix->contiguous();
  }
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(own_lens[b] >= 0 && own_lens[b] <= S, "own_lens[", b, "]=", own_lens[b], " must lie in [0, ", S, "]");
  at::Tensor out = at::empty({B, Hq, D}, qc.options());
  const float sc = static_cast<float>(scale);
  std::vector<KVSegment> own(B);
  for (int64_t b = 0; b < B; ++b)
    own[b] = {ko.data_ptr<float>() + b * ko.stride(0), vo.data_ptr<float>() + b * vo.stride(0), Hkv * D, own_lens[b]};
  if (has_p && B > 1) {  // the prefix read once for all B rows; called from the eager layer loop: ATen's threads
    decode_attention_shared(qc.data_ptr<float>(), B, Hq, Hkv, D, {kp.data_ptr<float>(), vp.data_ptr<float>(), Hkv * D,
                            kp.size(0)}, own.data(), sc, out.data_ptr<float>(), Team::aten);
    return out;
  }
  parallel_items(B, [&](int64_t b) {
    KVSegment segs[2];
    int n = 0;
    if (has_p) segs[n++] = {kp.data_ptr<float>(), vp.data_ptr<float>(), Hkv * D, kp.size(0)};
    if (own_lens[b] > 0) segs[n++] = own[b];
    decode_attention_rows(qc.data_ptr<float>() + b * Hq * D, Hq, Hkv, D, segs, n, sc, out.data_ptr<float>() + b * Hq * D,
                          Team::aten);
  });
  return out;
}

}  // namespace duomem
