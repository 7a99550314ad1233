// Shared-prefix attention on CPU (cascade / Hydragen): B sequences share one prefix KV, each has its own suffix.
//
// Prefix part: for each KV head, the queries of all B sequences, T tokens and G grouped heads form one matrix
// (B·T·G, D), so the prefix is one GEMM per KV head (K read once for everyone, B=16 T=1 G=3: 48 rows), instead of B
// GEMVs that each stream the whole prefix. Suffix part: a small causal batched attention per sequence. The two are
// merged exactly through their log-sum-exp (merge_attention_cpu below).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>

namespace duomem {
namespace {

// Rows of the score matrix computed at once: bounds the (Hkv, rows, P) fp32 scratch to ~16 MiB.
constexpr int64_t kScoreBudget = int64_t(1) << 22;

struct Partial {
  at::Tensor o;    // (..., D) fp32
  at::Tensor lse;  // (...) fp32
};

// Softmax-weighted values and lse of scores s (..., L) over values v (..., L, D); fully masked rows give o=0, lse=-inf.
Partial attend(at::Tensor s, const at::Tensor& v) {
  at::Tensor lse = at::logsumexp(s, -1);
  at::Tensor lse_safe = at::where(at::isfinite(lse), lse, at::zeros_like(lse));
  s.sub_(lse_safe.unsqueeze(-1)).exp_();
  return {at::matmul(s, v), lse};
}

// q: (Hkv, R, D) fp32; k, v: (Hkv, P, D) fp32. Row-chunked so the score scratch stays bounded.
Partial prefix_part(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  const int64_t H = q.size(0), R = q.size(1), P = k.size(1);
  const int64_t chunk = std::max<int64_t>(1, kScoreBudget / std::max<int64_t>(1, H * P));
  at::Tensor kt = k.transpose(1, 2);
  if (chunk >= R) return attend(at::matmul(q, kt).mul_(scale), v);
  at::Tensor o = at::empty({H, R, q.size(2)}, q.options()), lse = at::empty({H, R}, q.options());
  for (int64_t r0 = 0; r0 < R; r0 += chunk) {
    const int64_t r1 = std::min(R, r0 + chunk);
    Partial p = attend(at::matmul(q.slice(1, r0, r1), kt).mul_(scale), v);
    o.slice(1, r0, r1).copy_(p.o);
    lse.slice(1, r0, r1).copy_(p.lse);
  }
  return {o, lse};
}

// q: (B, Hkv, T*G, D); ks, vs: (B, Hkv, S, D); query row t*G+g sits at suffix position lens[b]-T+t (causal).
Partial suffix_part(const at::Tensor& q, const at::Tensor& ks, const at::Tensor& vs, const at::Tensor& lens,
                    int64_t T, int64_t G, double scale) {
  const int64_t S = ks.size(2);
  auto lopt = at::TensorOptions().dtype(at::kLong);
  at::Tensor t = at::arange(T * G, lopt).div(G, "floor");                       // (TG,)
  at::Tensor qpos = lens.view({-1, 1}) - T + t.view({1, -1});                    // (B, TG)
  at::Tensor mask = at::arange(S, lopt).view({1, 1, S}) > qpos.unsqueeze(-1);   // (B, TG, S) true = hidden
  at::Tensor s = at::matmul(q, ks.transpose(-1, -2)).mul_(scale);
  s.masked_fill_(mask.unsqueeze(1), -std::numeric_limits<float>::infinity());
  return attend(s, vs);
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
  at::parallel_for(0, R, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
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
std::tuple<at::Tensor, at::Tensor> prefix_attention_cpu(
    const at::Tensor& q, const c10::optional<at::Tensor>& k_prefix, const c10::optional<at::Tensor>& v_prefix,
    const c10::optional<at::Tensor>& k_suffix, const c10::optional<at::Tensor>& v_suffix,
    const c10::optional<at::Tensor>& suffix_lens, double scale) {
  TORCH_CHECK(q.dim() == 4, "q must be (B, T, Hq, D), got ", q.sizes());
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3);
  const bool has_p = k_prefix.has_value() && k_prefix->defined() && k_prefix->size(0) > 0;
  const bool has_s = k_suffix.has_value() && k_suffix->defined();
  TORCH_CHECK(has_p || has_s, "prefix_attention needs a prefix or a suffix");
  const int64_t Hkv = has_p ? k_prefix->size(1) : k_suffix->size(2);
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, "Hq=", Hq, " must be a multiple of Hkv=", Hkv);
  const int64_t G = Hq / Hkv;
  // (B, T, Hkv, G, D) -> (B, Hkv, T*G, D): every KV head's query rows in one block.
  at::Tensor qh = q.to(at::kFloat).view({B, T, Hkv, G, D}).permute({0, 2, 1, 3, 4}).reshape({B, Hkv, T * G, D});
  Partial out;
  if (has_p) {
    TORCH_CHECK(v_prefix.has_value() && v_prefix->sizes() == k_prefix->sizes() && k_prefix->size(2) == D,
                "k_prefix/v_prefix must both be (P, Hkv, D=", D, ")");
    at::Tensor kp = k_prefix->to(at::kFloat).transpose(0, 1), vp = v_prefix->to(at::kFloat).transpose(0, 1);
    Partial p = prefix_part(qh.transpose(0, 1).reshape({Hkv, B * T * G, D}), kp, vp, scale);
    out = {p.o.view({Hkv, B, T * G, D}).transpose(0, 1), p.lse.view({Hkv, B, T * G}).transpose(0, 1)};
  }
  if (has_s) {
    TORCH_CHECK(v_suffix.has_value() && k_suffix->dim() == 4 && v_suffix->sizes() == k_suffix->sizes() &&
                    k_suffix->size(0) == B && k_suffix->size(2) == Hkv && k_suffix->size(3) == D,
                "k_suffix/v_suffix must both be (B=", B, ", S, Hkv=", Hkv, ", D=", D, ")");
    const int64_t S = k_suffix->size(1);
    at::Tensor lens = (suffix_lens.has_value() && suffix_lens->defined())
                          ? suffix_lens->to(at::kLong).reshape({-1})
                          : at::full({B}, S, at::TensorOptions().dtype(at::kLong));
    TORCH_CHECK(lens.numel() == B, "suffix_lens must have B=", B, " entries");
    TORCH_CHECK(B == 0 || (lens.min().item<int64_t>() >= T && lens.max().item<int64_t>() <= S),
                "suffix_lens must lie in [T=", T, ", S=", S, "]");
    at::Tensor ks = k_suffix->to(at::kFloat).transpose(1, 2), vs = v_suffix->to(at::kFloat).transpose(1, 2);
    Partial s = suffix_part(qh, ks, vs, lens, T, G, scale);
    if (has_p) {
      auto merged = merge_attention_cpu(out.o, out.lse, s.o, s.lse);
      out = {std::get<0>(merged), std::get<1>(merged)};
    } else {
      out = s;
    }
  }
  at::Tensor o = out.o.reshape({B, Hkv, T, G, D}).permute({0, 2, 1, 3, 4}).reshape({B, T, Hq, D});
  at::Tensor lse = out.lse.reshape({B, Hkv, T, G}).permute({0, 2, 1, 3}).reshape({B, T, Hq});
  return {o.to(q.scalar_type()).contiguous(), lse.contiguous()};
}

}  // namespace duomem
