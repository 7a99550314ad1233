// Shared-prefix attention on CPU (cascade / Hydragen): B sequences share one prefix KV, each has its own suffix.
//
// Prefix part: for each KV head, the queries of all B sequences, T tokens and G grouped heads form one matrix
// (B·T·G, D), so the prefix is a GEMM per KV head (each K/V row read once per 16 query rows from all sequences;
// B=16 T=1 G=3: 48 rows), instead of B GEMVs that each stream the whole prefix. Suffix part: a small causal
// attention per sequence. The two are merged exactly through their log-sum-exp. One fused flash-style kernel
// (scores, online softmax, P·V in L1-sized key blocks) rather than ATen ops: each ATen op is a parallel region, and
// on the loaded 2-core box those barriers cost more than the math (measured 9.9 ms for B=16, P=2048 via bmm/exp);
// here one region per pass.
// With tiled_min_rows() or more query rows per KV head (48 on AVX-512 builds, 12 on AVX2 ones) the prefix pass runs
// as register tiles (attention_tiles_cpu.cpp), and so does the suffix pass with as many rows per sequence and KV
// head (causal limits per row).
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "attention_tiles.h"
#include "parallel.h"
#include "vec.h"

namespace duomem {
namespace {

using namespace vec;

constexpr int64_t kRowsPerItem = 16;  // query rows per work item: each K/V row loaded serves 16 rows (L1-hot)
constexpr int64_t kKeyBlock = 256;     // keys per online-softmax step: scores 16 x 256 fp32 = 16 KiB in L1

// Rows of one work item: fp32 queries gathered contiguous, running max / sum / output (flash-attention state).
struct RowBlock {
  int64_t n = 0, D = 0;
  float q[kRowsPerItem * 256];  // D <= 256
  float o[kRowsPerItem * 256];
  float m[kRowsPerItem], l[kRowsPerItem];
  int64_t limit[kRowsPerItem];  // keys [0, limit) visible to the row (causal suffix) or all L
};

#ifdef __AVX512F__
// o[i] += sum_j p[i][j] v_j for the block's rows: 4 rows x 64 dims = 16 zmm accumulators held across all keys of
// the block, each V row loaded once per 4 rows (a load-store per FMA otherwise: measured 2x slower).
void pv_accumulate(RowBlock& rb, const float* p, const float* v, int64_t ld, int64_t nb) {
  const int64_t D = rb.D;
  for (int64_t i0 = 0; i0 < rb.n; i0 += 4) {
    const int64_t ni = std::min<int64_t>(4, rb.n - i0);
    for (int64_t d0 = 0; d0 < D; d0 += 64) {
      __mmask16 mk[4];
      for (int c = 0; c < 4; ++c) {
        const int64_t left = std::max<int64_t>(0, std::min<int64_t>(16, D - d0 - 16 * c));
        mk[c] = static_cast<__mmask16>((1u << left) - 1u);
      }
      __m512 acc[4][4];
      for (int i = 0; i < 4; ++i)
        for (int c = 0; c < 4; ++c)
          acc[i][c] = i < ni ? _mm512_maskz_loadu_ps(mk[c], rb.o + (i0 + i) * D + d0 + 16 * c) : _mm512_setzero_ps();
      for (int64_t j = 0; j < nb; ++j) {
        __m512 vv[4];
        for (int c = 0; c < 4; ++c) vv[c] = _mm512_maskz_loadu_ps(mk[c], v + j * ld + d0 + 16 * c);
        for (int i = 0; i < 4; ++i) {
          const __m512 pi = _mm512_set1_ps(i < ni ? p[(i0 + i) * kKeyBlock + j] : 0.f);
          for (int c = 0; c < 4; ++c) acc[i][c] = _mm512_fmadd_ps(pi, vv[c], acc[i][c]);
        }
      }
      for (int i = 0; i < ni; ++i)
        for (int c = 0; c < 4; ++c) _mm512_mask_storeu_ps(rb.o + (i0 + i) * D + d0 + 16 * c, mk[c], acc[i][c]);
    }
  }
}
#else
void pv_accumulate(RowBlock& rb, const float* p, const float* v, int64_t ld, int64_t nb) {
#ifdef DUOMEM_AVX2
  if (rb.D % 16 == 0) return vec8::pv_rows_any(rb.o, rb.D, p, kKeyBlock, v, ld, nb, rb.D, rb.n);
#endif
  for (int64_t j = 0; j < nb; ++j)
    for (int64_t i = 0; i < rb.n; ++i) {
      const float pij = p[i * kKeyBlock + j];
      for (int64_t d = 0; d < rb.D; ++d) rb.o[i * rb.D + d] += pij * v[j * ld + d];
    }
}
#endif

// Online softmax over keys [0, L) of one KV head: k/v rows at kv + n*ld (D contiguous, fp32).
void attend_rows(RowBlock& rb, const float* k, const float* v, int64_t ld, int64_t L, float scale) {
  static thread_local float s[kRowsPerItem * kKeyBlock];
  const int64_t D = rb.D, R = rb.n;
  const int64_t R4 = (R + 3) / 4 * 4;  // padded to the 4x4 register block (zero rows, scores ignored): decode has
                                       // G=3 rows per head, and 4x4 blocks reduce 16 sums at once
  int64_t lmax = 0;
  for (int64_t i = 0; i < R; ++i) lmax = std::max(lmax, std::min(rb.limit[i], L));
  for (int64_t n0 = 0; n0 < lmax; n0 += kKeyBlock) {
    const int64_t nb = std::min(kKeyBlock, lmax - n0);
    int64_t n = 0;
#ifdef DUOMEM_AVX2
    if (D % 8 == 0)  // scores: 4 keys x 2 rows per register block
      for (; n + 4 <= nb; n += 4)
        for (int64_t i = 0; i < R; i += 2) {
          const float* kn = k + (n0 + n) * ld;
          if (R - i >= 2) vec8::dots4<2>(rb.q + i * D, D, kn, ld, D, s + i * kKeyBlock + n, kKeyBlock);
          else vec8::dots4<1>(rb.q + i * D, D, kn, ld, D, s + i * kKeyBlock + n, kKeyBlock);
        }
#endif
    for (; n + kRowBlock <= nb; n += kRowBlock)  // scores: 4 keys x 4 rows per register block
      dot_rows<kRowBlock>(k + (n0 + n) * ld, ld, rb.q, D, D, R4, s + n, kKeyBlock);
    for (; n < nb; ++n) dot_rows<1>(k + (n0 + n) * ld, ld, rb.q, D, D, R4, s + n, kKeyBlock);
    for (int64_t i = 0; i < R; ++i) {
      float* si = s + i * kKeyBlock;
      const int64_t vis = std::max<int64_t>(0, std::min(nb, rb.limit[i] - n0));
      if (vis == 0) {  // no key of this block is visible to the row: its P row is zero (P·V runs for all rows)
        std::fill_n(si, nb, 0.f);
        continue;
      }
      const float mx = scaled_max(si, vis, scale, rb.m[i]);
      const float alpha = std::exp(rb.m[i] - mx);
      const float sum = exp_sum(si, vis, scale, mx);
      for (int64_t j = vis; j < nb; ++j) si[j] = 0.f;
      rb.l[i] = rb.l[i] * alpha + sum;
      rb.m[i] = mx;
      float* oi = rb.o + i * D;
      for (int64_t d = 0; d < D; ++d) oi[d] *= alpha;
    }
    pv_accumulate(rb, s, v + n0 * ld, ld, nb);
  }
}

struct Geometry {
  int64_t B, T, Hq, Hkv, G, D;
  const float* q;  // (B, T, Hq, D) contiguous fp32
  float* o;        // (B, T, Hq, D) fp32
  float* lse;      // (B, T, Hq)
  // Row r of KV head h is (b, t, g) with r = (b*T + t)*G + g; its query head is h*G + g.
  int64_t qoff(int64_t h, int64_t r) const {
    const int64_t bt = r / G, g = r % G;
    return (bt * Hq + h * G + g) * D;
  }
};

void load_rows(RowBlock& rb, const Geometry& geo, int64_t h, int64_t r0, int64_t n) {
  rb.n = n;
  rb.D = geo.D;
  for (int64_t i = 0; i < n; ++i) {
    std::copy_n(geo.q + geo.qoff(h, r0 + i), geo.D, rb.q + i * geo.D);
    std::fill_n(rb.o + i * geo.D, geo.D, 0.f);
    rb.m[i] = -1e30f;
    rb.l[i] = 0.f;
  }
  std::fill(rb.q + n * geo.D, rb.q + std::min<int64_t>(kRowsPerItem, (n + 3) / 4 * 4) * geo.D, 0.f);
}

// Finish a row block: normalise, and either store or merge (through lse) with what the prefix pass stored.
void store_rows(const RowBlock& rb, const Geometry& geo, int64_t h, int64_t r0, bool merge) {
  for (int64_t i = 0; i < rb.n; ++i) {
    const int64_t off = geo.qoff(h, r0 + i);
    float* out = geo.o + off;
    float* lse = geo.lse + off / geo.D;
    const float lb = rb.l[i] > 0.f ? rb.m[i] + std::log(rb.l[i]) : -INFINITY;
    const float inv = rb.l[i] > 0.f ? 1.f / rb.l[i] : 0.f;
    if (!merge) {
      for (int64_t d = 0; d < geo.D; ++d) out[d] = rb.o[i * geo.D + d] * inv;
      *lse = lb;
      continue;
    }
    float mx = std::max(*lse, lb);
    if (!std::isfinite(mx)) mx = 0.f;
    const float wa = std::exp(*lse - mx), wb = std::exp(lb - mx), den = wa + wb;
    const float ca = wa / std::max(den, 1e-30f), cb = wb * inv / std::max(den, 1e-30f);
    for (int64_t d = 0; d < geo.D; ++d) out[d] = ca * out[d] + cb * rb.o[i * geo.D + d];
    *lse = den > 0.f ? mx + std::log(den) : -INFINITY;
  }
}

}  // namespace

// Exact merge of two partial attentions: o_* (..., H, D), lse_* (..., H). Returns (o in o_a.dtype, lse fp32).
std::tuple<at::Tensor, at::Tensor> merge_attention_cpu(const at::Tensor& o_a, const at::Tensor& lse_a,
                                                       const at::Tensor& o_b, const at::Tensor& lse_b) {
  TORCH_CHECK(o_a.sizes() == o_b.sizes(), "o_a ", o_a.sizes(), " and o_b ", o_b.sizes(), " differ");
  TORCH_CHECK(lse_a.sizes() == lse_b.sizes() && lse_a.numel() * o_a.size(-1) == o_a.numel(),
              "lse shapes ", lse_a.sizes(), "/", lse_b.sizes(), " do not fit o ", o_a.sizes());
  const int64_t D = o_a.size(-1), R = lse_a.numel();
  at::Tensor oa = o_a.to(at::kFloat).contiguous(), ob = o_b.to(at::kFloat).contiguous();
  at::Tensor la = lse_a.to(at::kFloat).contiguous(), lb = lse_b.to(at::kFloat).contiguous();
  at::Tensor o = at::empty({R, D}, oa.options()), lse = at::empty({R}, oa.options());
  const float *pa = oa.data_ptr<float>(), *pb = ob.data_ptr<float>(), *pla = la.data_ptr<float>(),
              *plb = lb.data_ptr<float>();
  float *po = o.data_ptr<float>(), *pl = lse.data_ptr<float>();
  const int64_t rows_per_chunk = 256;
  parallel_items((R + rows_per_chunk - 1) / rows_per_chunk, [&](int64_t c) {
    for (int64_t r = c * rows_per_chunk; r < std::min(R, (c + 1) * rows_per_chunk); ++r) {
      float m = std::max(pla[r], plb[r]);
      if (!std::isfinite(m)) m = 0.f;
      const float wa = std::exp(pla[r] - m), wb = std::exp(plb[r] - m), den = wa + wb;
      const float ca = wa / std::max(den, 1e-30f), cb = wb / std::max(den, 1e-30f);
      for (int64_t d = 0; d < D; ++d) po[r * D + d] = ca * pa[r * D + d] + cb * pb[r * D + d];
      pl[r] = m + std::log(den);
    }
  });
  return {o.view(o_a.sizes()).to(o_a.scalar_type()), lse.view(lse_a.sizes())};
}

// q (B, T, Hq, D); k/v_prefix (P, Hkv, D) or undefined; k/v_suffix (B, S, Hkv, D) or undefined; suffix_lens (B,).
// Returns (o (B, T, Hq, D) in q.dtype, lse (B, T, Hq) fp32).
// Pass 1, prefix: work items are (KV head, 16 query rows) over all B·T·G rows of that head, so every prefix K/V row
// is read once per 16 rows from every sequence (B=16, T=1, G=3: 3 items per head). Pass 2, suffix: items are
// (sequence, KV head), causal, merged into pass 1's rows through the lse. Items go to ATen's own threads, which the
// eager layer loop's GEMMs have just used (parallel_items in parallel.h: a pool of our own would share a core with them).
std::tuple<at::Tensor, at::Tensor> prefix_attention_cpu(
    const at::Tensor& q, const c10::optional<at::Tensor>& k_prefix, const c10::optional<at::Tensor>& v_prefix,
    const c10::optional<at::Tensor>& k_suffix, const c10::optional<at::Tensor>& v_suffix,
    const c10::optional<at::Tensor>& suffix_lens, double scale) {
  TORCH_CHECK(q.dim() == 4, "q must be (B, T, Hq, D), got ", q.sizes());
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3);
  TORCH_CHECK(D <= 256, "head dim ", D, " > 256 not supported");
  const bool has_p = k_prefix.has_value() && k_prefix->defined() && k_prefix->size(0) > 0;
  const bool has_s = k_suffix.has_value() && k_suffix->defined();
  TORCH_CHECK(has_p || has_s, "prefix_attention needs a prefix or a suffix");
  const int64_t Hkv = has_p ? k_prefix->size(1) : k_suffix->size(2);
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, "Hq=", Hq, " must be a multiple of Hkv=", Hkv);
  at::Tensor qf = q.to(at::kFloat).contiguous();
  at::Tensor o = at::zeros({B, T, Hq, D}, qf.options());
  at::Tensor lse = at::full({B, T, Hq}, -INFINITY, qf.options());
  Geometry geo{B, T, Hq, Hkv, Hq / Hkv, D, qf.data_ptr<float>(), o.data_ptr<float>(), lse.data_ptr<float>()};
  const float sc = static_cast<float>(scale);
  const int64_t R = B * T * geo.G;  // query rows per KV head
  if (has_p) {
    TORCH_CHECK(v_prefix.has_value() && v_prefix->sizes() == k_prefix->sizes() && k_prefix->dim() == 3 &&
                    k_prefix->size(2) == D, "k_prefix/v_prefix must both be (P, Hkv, D=", D, ")");
    at::Tensor kp = k_prefix->to(at::kFloat).contiguous(), vp = v_prefix->to(at::kFloat).contiguous();
    const int64_t P = kp.size(0), blocks = (R + kRowsPerItem - 1) / kRowsPerItem;
    const float *pk = kp.data_ptr<float>(), *pv = vp.data_ptr<float>();
    if (tiled_attention_fits(R, D)) {
      const int64_t item_rows = tiled_item_rows(D), chunks = (R + item_rows - 1) / item_rows;
      parallel_items(Hkv * chunks, [&](int64_t item) {
        const int64_t h = item / chunks, r0 = (item % chunks) * item_rows, n = std::min(item_rows, R - r0);
        std::vector<const float*> qr(n);
        std::vector<float*> orow(n), lrow(n);
        for (int64_t i = 0; i < n; ++i) {
          const int64_t off = geo.qoff(h, r0 + i);
          qr[i] = geo.q + off, orow[i] = geo.o + off, lrow[i] = geo.lse + off / D;
        }
        attend_tiled(qr.data(), n, D, pk + h * D, pv + h * D, Hkv * D, P, sc, orow.data(), lrow.data());
      });
    } else {
      parallel_items(Hkv * blocks, [&](int64_t item) {
        const int64_t h = item / blocks, r0 = (item % blocks) * kRowsPerItem;
        std::unique_ptr<RowBlock> rb(new RowBlock);  // default-init: load_rows fills what is read
        load_rows(*rb, geo, h, r0, std::min(kRowsPerItem, R - r0));
        std::fill_n(rb->limit, kRowsPerItem, P);
        attend_rows(*rb, pk + h * D, pv + h * D, Hkv * D, P, sc);
        store_rows(*rb, geo, h, r0, false);
      });
    }
  }
  if (has_s) {
    TORCH_CHECK(v_suffix.has_value() && k_suffix->dim() == 4 && v_suffix->sizes() == k_suffix->sizes() &&
                    k_suffix->size(0) == B && k_suffix->size(2) == Hkv && k_suffix->size(3) == D,
                "k_suffix/v_suffix must both be (B=", B, ", S, Hkv=", Hkv, ", D=", D, ")");
    const int64_t S = k_suffix->size(1);
    at::Tensor lens = (suffix_lens.has_value() && suffix_lens->defined())
                          ? suffix_lens->to(at::kLong).reshape({-1}).contiguous()
                          : at::full({B}, S, at::TensorOptions().dtype(at::kLong));
    TORCH_CHECK(lens.numel() == B, "suffix_lens must have B=", B, " entries");
    const int64_t* pl = lens.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) TORCH_CHECK(pl[b] >= T && pl[b] <= S, "suffix_lens[", b, "]=", pl[b],
                                                " must lie in [T=", T, ", S=", S, "]");
    at::Tensor ks = k_suffix->to(at::kFloat).contiguous(), vs = v_suffix->to(at::kFloat).contiguous();
    const float *pk = ks.data_ptr<float>(), *pv = vs.data_ptr<float>();
    const int64_t rows = T * geo.G, blocks = (rows + kRowsPerItem - 1) / kRowsPerItem;
    if (tiled_attention_fits(rows, D)) {  // a long append: its own history and causal part as register tiles too
      const int64_t item_rows = tiled_item_rows(D), chunks = (rows + item_rows - 1) / item_rows;
      parallel_items(B * Hkv * chunks, [&](int64_t item) {
        const int64_t b = item / (Hkv * chunks), h = (item / chunks) % Hkv, r0 = (item % chunks) * item_rows;
        const int64_t n = std::min(item_rows, rows - r0);
        std::vector<const float*> qr(n);
        std::vector<float*> orow(n), lrow(n);
        std::vector<int64_t> limit(n);
        for (int64_t i = 0; i < n; ++i) {
          const int64_t off = geo.qoff(h, b * rows + r0 + i);
          qr[i] = geo.q + off, orow[i] = geo.o + off, lrow[i] = geo.lse + off / D;
          limit[i] = pl[b] - T + (r0 + i) / geo.G + 1;
        }
        const int64_t kv0 = b * S * Hkv * D + h * D;
        attend_tiled(qr.data(), n, D, pk + kv0, pv + kv0, Hkv * D, S, sc, orow.data(), lrow.data(), limit.data(),
                     has_p);
      });
      return {o.to(q.scalar_type()), lse};
    }
    parallel_items(B * Hkv * blocks, [&](int64_t item) {
      const int64_t b = item / (Hkv * blocks), h = (item / blocks) % Hkv, r0 = (item % blocks) * kRowsPerItem;
      std::unique_ptr<RowBlock> rb(new RowBlock);  // default-init: load_rows fills what is read
      load_rows(*rb, geo, h, b * rows + r0, std::min(kRowsPerItem, rows - r0));
      for (int64_t i = 0; i < rb->n; ++i) rb->limit[i] = pl[b] - T + (r0 + i) / geo.G + 1;
      const int64_t kv0 = b * S * Hkv * D + h * D;
      attend_rows(*rb, pk + kv0, pv + kv0, Hkv * D, S, sc);
      store_rows(*rb, geo, h, b * rows + r0, has_p);
    });
  }
  return {o.to(q.scalar_type()), lse};
}

}  // namespace duomem
