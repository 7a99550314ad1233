// One decode step through the whole decoder-layer stack in one call: for each layer, rmsnorm -> qkv lora_linear ->
// (q/k rmsnorm) -> RoPE -> KV append -> attention over prefix + own KV -> o -> residual -> rmsnorm -> gate_up ->
// silu*mul -> down -> residual, without returning to Python.
//
// Why: at decode the GEMVs of SmolLM2-135M take ~20 ms per token, and the eager layer around them (~15 small ATen
// ops and a Python frame per layer, 30 layers) cost another ~10 ms before attention. Here the small ops are loops
// over a few hundred floats in L1; the linears are lora_linear_cpu calls (the fused LoRA GEMV).
#include "decode_cpu.h"

#include <cmath>
#include <vector>

#include "vec.h"

namespace duomem {
namespace {

constexpr int kWeights = 6;   // ln_attn, qkv, o, ln_mlp, gate_up, down
constexpr int kExtras = 14;   // qkv/o/gate_up/down bias, q_norm, k_norm, (a, b) for qkv, o, gate_up, down

using Opt = c10::optional<at::Tensor>;

struct Layer {
  at::Tensor ln_attn, qkv, o, ln_mlp, gate_up, down;
  Opt bias[4], q_norm, k_norm, lora_a[4], lora_b[4];
};

// out = w * x / sqrt(mean(x^2) + eps), n floats (HF's LlamaRMSNorm in fp32).
void rms_norm(const float* x, const float* w, int64_t n, float eps, float* out) {
  float ss = 0.f;
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const float inv = 1.f / std::sqrt(ss / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * inv);
}

// x (D) rotated in place, HF rotate-half convention: x·cos + rotate_half(x)·sin.
void rope(float* x, const float* cos, const float* sin, int64_t D) {
  const int64_t half = D / 2;
  for (int64_t d = 0; d < half; ++d) {
    const float a = x[d], b = x[d + half];
    x[d] = a * cos[d] - b * sin[d];
    x[d + half] = b * cos[d + half] + a * sin[d + half];
  }
}

// out[i] = silu(gate[i]) * up[i]
void silu_mul(const float* gate, const float* up, int64_t n, float* out) {
  int64_t i = 0;
#ifdef __AVX512F__
  for (; i + 16 <= n; i += 16) {
    const __m512 g = _mm512_loadu_ps(gate + i);
    const __m512 e = vec::exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));  // e^-g (inf for g < -88: silu -> -0; 0 for g > 80)
    const __m512 s = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.f), e));
    _mm512_storeu_ps(out + i, _mm512_mul_ps(s, _mm512_loadu_ps(up + i)));
  }
#endif
  for (; i < n; ++i) out[i] = gate[i] / (1.f + std::exp(-gate[i])) * up[i];
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const Opt& bias, const Opt& a, const Opt& b) {
  return lora_linear_cpu(x, w, a, b, 1.0, c10::nullopt, bias, c10::nullopt);
}

struct Geometry {
  int64_t B, H, Hq, Hkv, D;
  float eps;
};

// Attention half of a layer, in place on the rows' qkv (B, (Hq + 2 Hkv) D); writes own KV, returns a (B, Hq D).
at::Tensor attention(const Geometry& g, const Layer& L, at::Tensor& qkv, const float* cos, const float* sin,
                     const float* kp, const float* vp, int64_t ldp, int64_t P, float* ok, float* ov,
                     int64_t ld_b, at::IntArrayRef start) {
  const int64_t D = g.D, width = (g.Hq + 2 * g.Hkv) * D;
  at::Tensor a = at::empty({g.B, g.Hq * D}, qkv.options());
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  std::vector<KVSegment> own(g.B);
  for (int64_t b = 0; b < g.B; ++b) {
    float* row = qkv.data_ptr<float>() + b * width;
    float* k = row + g.Hq * D;
    for (int64_t h = 0; h < g.Hq + g.Hkv; ++h) {
      float* x = row + h * D;
      if (L.q_norm.has_value()) rms_norm(x, (h < g.Hq ? *L.q_norm : *L.k_norm).data_ptr<float>(), D, g.eps, x);
      rope(x, cos + b * D, sin + b * D, D);
    }
    float* kdst = ok + b * ld_b + start[b] * g.Hkv * D;
    std::copy_n(k, g.Hkv * D, kdst);
    std::copy_n(k + g.Hkv * D, g.Hkv * D, ov + b * ld_b + start[b] * g.Hkv * D);
    own[b] = {ok + b * ld_b, ov + b * ld_b, g.Hkv * D, start[b] + 1};
  }
  // the rows' q, now normed and rotated in qkv: row b's heads at qkv + b * width
  if (P > 0 && g.B > 1) {  // several sessions on one prefix: its KV read once for all of them
    at::Tensor q = qkv.narrow(1, 0, g.Hq * D).contiguous();
    decode_attention_shared(q.data_ptr<float>(), g.B, g.Hq, g.Hkv, D, {kp, vp, ldp, P}, own.data(), scale,
                            a.data_ptr<float>());
    return a;
  }
  for (int64_t b = 0; b < g.B; ++b) {
    KVSegment segs[2];
    int n = 0;
    if (P > 0) segs[n++] = {kp, vp, ldp, P};
    segs[n++] = own[b];
    decode_attention_rows(qkv.data_ptr<float>() + b * width, g.Hq, g.Hkv, D, segs, n, scale,
                          a.data_ptr<float>() + b * g.Hq * D);
  }
  return a;
}

// y += x, both fp32 contiguous of the same size (the residual adds: an ATen add is a TensorIterator and, for the
// first, an allocation, ~2-4 us each on rows of a few hundred floats).
void add_into(at::Tensor& y, const at::Tensor& x) {
  TORCH_CHECK(y.numel() == x.numel() && y.is_contiguous() && x.is_contiguous(), "residual add: shapes ", y.sizes(),
              " and ", x.sizes());
  float* p = y.data_ptr<float>();
  const float* q = x.data_ptr<float>();
  for (int64_t i = 0, n = y.numel(); i < n; ++i) p[i] += q[i];
}

// MLP half with both residuals: x + o(a) -> + down(silu(gate) * up).
at::Tensor mlp(const Geometry& g, const Layer& L, const at::Tensor& x, const at::Tensor& a) {
  at::Tensor x2 = linear(a, L.o, L.bias[1], L.lora_a[1], L.lora_b[1]);
  add_into(x2, x);
  at::Tensor h = at::empty_like(x2);
  for (int64_t b = 0; b < g.B; ++b)
    rms_norm(x2.data_ptr<float>() + b * g.H, L.ln_mlp.data_ptr<float>(), g.H, g.eps, h.data_ptr<float>() + b * g.H);
  at::Tensor gu = linear(h, L.gate_up, L.bias[2], L.lora_a[2], L.lora_b[2]);
  const int64_t I = gu.size(1) / 2;
  at::Tensor act = at::empty({g.B, I}, gu.options());
  for (int64_t b = 0; b < g.B; ++b) {
    const float* row = gu.data_ptr<float>() + b * 2 * I;
    silu_mul(row, row + I, I, act.data_ptr<float>() + b * I);
  }
  add_into(x2, linear(act, L.down, L.bias[3], L.lora_a[3], L.lora_b[3]));
  return x2;
}

Layer unpack(at::TensorList w, const c10::List<Opt>& e, int64_t i) {
  Layer L;
  const at::Tensor* p = w.data() + i * kWeights;
  L.ln_attn = p[0], L.qkv = p[1], L.o = p[2], L.ln_mlp = p[3], L.gate_up = p[4], L.down = p[5];
  const int64_t o = i * kExtras;
  for (int j = 0; j < 4; ++j) {
    L.bias[j] = e.get(o + j);
    L.lora_a[j] = e.get(o + 6 + 2 * j);
    L.lora_b[j] = e.get(o + 7 + 2 * j);
  }
  L.q_norm = e.get(o + 4), L.k_norm = e.get(o + 5);
  for (const at::Tensor* t : {&L.ln_attn, &L.ln_mlp})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous(), "layer ", i, ": norm weights must be fp32");
  for (const Opt* t : {&L.q_norm, &L.k_norm})
    TORCH_CHECK(!t->has_value() || ((*t)->scalar_type() == at::kFloat && (*t)->is_contiguous()),
                "layer ", i, ": q/k norm weights must be fp32");
  return L;
}

// Attention half of an append, in place on one session's qkv (T, (Hq + 2 Hkv) D): token t sits at own position
// start + t of own_k/own_v (1, cap, Hkv, D); writes its KV there and attends to the prefix (P, Hkv, D; undefined:
// none) and own rows [0, start + t] (prefix_attention_cpu, on register or AMX tiles from tiled_min_rows() rows per KV
// head). Returns a (T, Hq D).
at::Tensor append_attention(const Geometry& g, const Layer& L, at::Tensor& qkv, const float* cos, const float* sin,
                            const at::Tensor& kp, const at::Tensor& vp, const at::Tensor& own_k,
                            const at::Tensor& own_v, int64_t start) {
  const int64_t T = g.B, D = g.D, width = (g.Hq + 2 * g.Hkv) * D, kv = g.Hkv * D;
  float *ok = own_k.data_ptr<float>() + start * kv, *ov = own_v.data_ptr<float>() + start * kv;
  for (int64_t t = 0; t < T; ++t) {
    float* row = qkv.data_ptr<float>() + t * width;
    for (int64_t h = 0; h < g.Hq + g.Hkv; ++h) {
      float* x = row + h * D;
      if (L.q_norm.has_value()) rms_norm(x, (h < g.Hq ? *L.q_norm : *L.k_norm).data_ptr<float>(), D, g.eps, x);
      rope(x, cos + t * D, sin + t * D, D);
    }
    std::copy_n(row + g.Hq * D, kv, ok + t * kv);
    std::copy_n(row + g.Hq * D + kv, kv, ov + t * kv);
  }
  const at::Tensor q = qkv.narrow(1, 0, g.Hq * D).reshape({1, T, g.Hq, D});
  const Opt none;
  auto [a, lse] = prefix_attention_cpu(q, kp.defined() ? Opt(kp) : none, vp.defined() ? Opt(vp) : none,
                                       own_k.narrow(1, 0, start + T), own_v.narrow(1, 0, start + T), none,
                                       1.0 / std::sqrt(static_cast<double>(D)));
  return a.view({T, g.Hq * D});
}

// What decode_step and append_step share: the layer count, geometry, the prefix KV laid out (L, P, Hkv, D).
struct Stack {
  int64_t nl;
  Geometry g;
  at::Tensor kp, vp;  // undefined without a prefix
  int64_t P;
};

Stack check_stack(const char* op, const at::Tensor& x, at::TensorList weights, const c10::List<Opt>& extras,
                  const at::Tensor& cos, const at::Tensor& sin, const Opt& k_prefix, const Opt& v_prefix,
                  const at::Tensor& own_k, const at::Tensor& own_v, int64_t sessions, double eps) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "x must be fp32 (rows, H), got ", x.sizes());
  const int64_t nl = static_cast<int64_t>(weights.size()) / kWeights;
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == nl * kWeights && static_cast<int64_t>(extras.size()) == nl * kExtras,
              op, " needs 6 weights and 14 extras per layer, got ", weights.size(), " and ", extras.size());
  TORCH_CHECK(own_k.dim() == 5 && own_k.size(0) == nl && own_k.size(1) == sessions && own_v.sizes() == own_k.sizes()
                  && own_k.scalar_type() == at::kFloat && own_v.scalar_type() == at::kFloat,
              "own_k/own_v must be fp32 (L=", nl, ", B=", sessions, ", cap, Hkv, D), got ", own_k.sizes());
  TORCH_CHECK(own_k.is_contiguous() && own_v.is_contiguous(), "own_k/own_v must be contiguous");
  const int64_t rows = x.size(0), Hkv = own_k.size(3), D = own_k.size(4);
  const int64_t Hq = nl ? (weights[1].size(0) / D - 2 * Hkv) : 0;
  TORCH_CHECK(cos.sizes() == at::IntArrayRef({rows, D}) && sin.sizes() == cos.sizes() && cos.scalar_type() == at::kFloat,
              "cos/sin must be fp32 (rows=", rows, ", D=", D, "), got ", cos.sizes());
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous(), "cos/sin must be contiguous");
  Stack s{nl, Geometry{rows, x.size(1), Hq, Hkv, D, static_cast<float>(eps)}, {}, {}, 0};
  if (k_prefix.has_value() && k_prefix->defined() && k_prefix->size(1) > 0) {
    const auto packed = [&](const at::Tensor& t) {
      return t.stride(3) == 1 && t.stride(2) == D && t.stride(1) == Hkv * D ? t : t.contiguous();
    };
    s.kp = packed(*k_prefix), s.vp = packed(*v_prefix);
    TORCH_CHECK(s.kp.dim() == 4 && s.kp.size(0) == nl && s.kp.size(2) == Hkv && s.kp.size(3) == D &&
                    s.vp.sizes() == s.kp.sizes() && s.kp.scalar_type() == at::kFloat && s.vp.scalar_type() == at::kFloat,
                "k/v_prefix must be fp32 (L=", nl, ", P, Hkv=", Hkv, ", D=", D, "), got ", k_prefix->sizes());
    s.P = s.kp.size(1);
  }
  return s;
}

// h = rmsnorm(x) with the layer's ln_attn weight, row by row; h is reused layer after layer.
const at::Tensor& ln_attn(const Geometry& g, const Layer& L, const at::Tensor& x, const at::Tensor& h) {
  for (int64_t b = 0; b < g.B; ++b)
    rms_norm(x.data_ptr<float>() + b * g.H, L.ln_attn.data_ptr<float>(), g.H, g.eps, h.data_ptr<float>() + b * g.H);
  return h;
}

}  // namespace

// x (B, H) fp32, one new token per row. weights: 6 per layer (ln_attn, qkv (q+2kv, H), o, ln_mlp, gate_up (2I, H),
// down); extras: 14 per layer (biases of qkv/o/gate_up/down, q_norm, k_norm, LoRA (a, b) of qkv/o/gate_up/down),
// None where absent. cos/sin (B, D) at each row's position. k/v_prefix (L, P, Hkv, D) shared, or none;
// own_k/own_v (L, B, cap, Hkv, D): row b's new KV goes to own_start[b], and it attends to own rows
// [0, own_start[b]]. Returns the hidden state after the last layer (B, H), before the final norm.
at::Tensor decode_step_cpu(const at::Tensor& x, at::TensorList weights, const c10::List<Opt>& extras,
                           const at::Tensor& cos, const at::Tensor& sin, const Opt& k_prefix, const Opt& v_prefix,
                           const at::Tensor& own_k, const at::Tensor& own_v, at::IntArrayRef own_start, double eps) {
  const Stack s = check_stack("decode_step", x, weights, extras, cos, sin, k_prefix, v_prefix, own_k, own_v,
                              x.dim() == 2 ? x.size(0) : -1, eps);
  const Geometry& g = s.g;
  const int64_t B = g.B, cap = own_k.size(2), ld_b = cap * g.Hkv * g.D;
  TORCH_CHECK(static_cast<int64_t>(own_start.size()) == B, "own_start must have B=", B, " entries");
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(own_start[b] >= 0 && own_start[b] < cap, "own_start[", b, "]=", own_start[b], " outside [0, ", cap, ")");
  at::Tensor cur = x.contiguous(), h = at::empty_like(cur);
  for (int64_t i = 0; i < s.nl; ++i) {
    const Layer L = unpack(weights, extras, i);
    at::Tensor qkv = linear(ln_attn(g, L, cur, h), L.qkv, L.bias[0], L.lora_a[0], L.lora_b[0]);
    const float* kpi = s.P ? s.kp.data_ptr<float>() + i * s.kp.stride(0) : nullptr;
    const float* vpi = s.P ? s.vp.data_ptr<float>() + i * s.vp.stride(0) : nullptr;
    at::Tensor a = attention(g, L, qkv, cos.data_ptr<float>(), sin.data_ptr<float>(), kpi, vpi, g.Hkv * g.D, s.P,
                             own_k.data_ptr<float>() + i * B * ld_b, own_v.data_ptr<float>() + i * B * ld_b, ld_b,
                             own_start);
    cur = mlp(g, L, cur, a);
  }
  return cur;
}

// One session's T new tokens (an append or a prefill chunk) through every layer: x (T, H) fp32; weights, extras,
// k/v_prefix as decode_step; cos/sin (T, D) at positions; own_k/own_v (L, 1, cap, Hkv, D): token t's KV goes to own
// row own_start + t and it attends to the prefix and own rows [0, own_start + t]. Returns (T, H) before the final
// norm. The reference is the eager layer loop of duomem_fast.model.decoder.Decoder.
at::Tensor append_step_cpu(const at::Tensor& x, at::TensorList weights, const c10::List<Opt>& extras,
                           const at::Tensor& cos, const at::Tensor& sin, const Opt& k_prefix, const Opt& v_prefix,
                           const at::Tensor& own_k, const at::Tensor& own_v, int64_t own_start, double eps) {
  const Stack s = check_stack("append_step", x, weights, extras, cos, sin, k_prefix, v_prefix, own_k, own_v, 1, eps);
  const Geometry& g = s.g;
  const int64_t cap = own_k.size(2);
  TORCH_CHECK(own_start >= 0 && own_start + g.B <= cap, "own rows [", own_start, ", ", own_start + g.B,
              ") outside the buffer's ", cap);
  at::Tensor cur = x.contiguous(), h = at::empty_like(cur);
  for (int64_t i = 0; i < s.nl; ++i) {
    const Layer L = unpack(weights, extras, i);
    at::Tensor qkv = linear(ln_attn(g, L, cur, h), L.qkv, L.bias[0], L.lora_a[0], L.lora_b[0]);
    at::Tensor a = append_attention(g, L, qkv, cos.data_ptr<float>(), sin.data_ptr<float>(),
                                    s.P ? s.kp[i] : at::Tensor(), s.P ? s.vp[i] : at::Tensor(), own_k[i], own_v[i],
                                    own_start);
    cur = mlp(g, L, cur, a);
  }
  return cur;
}

}  // namespace duomem
