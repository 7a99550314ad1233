// Fused LoRA linear on CPU: y = x Wᵀ + s·(x Aᵀ) Bᵀ (+ bias), fp32 accumulation.
//
// Decode is GEMV-bound: every call streams W (N, K) from DRAM once, so the kernel is built around that stream.
//  - Rows of W are taken 4 at a time and each 4-row block meets every row of x while it is hot: x is at most a few
//    KiB (K=1536 fp32 = 6 KiB per row) and stays in L1, the 4 W rows (24 KiB at K=1536) stay in L1/L2 across the
//    M-loop, so DRAM sees W once whatever M is (stock GEMV re-reads W per row: ~3.5x for M=4).
//  - The shrink t = x Aᵀ runs through the same row-dot kernel as W (A's r rows are just more rows) just before the W
//    pass; the expand s·t Bᵀ and the bias are applied in the epilogue of each W block while its outputs are in L1,
//    so the delta never makes its own pass over y.
//  - Threads split W's rows in chunks through parallel.h (no OpenMP barrier: robust on a loaded 2-core machine).
//  - Weights fp32, bf16 (AVX-512: widened by a 16-bit shift, exact) or fp16 (F16C), converted in registers.
//  - Multi-adapter: stacked A (n, r, K) / B (n, N, r), per-row adapter id, -1 = base only.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "parallel.h"
#include "vec.h"

#include <algorithm>
#include <cstdint>
#include <vector>


namespace duomem {
namespace {

using namespace vec;

struct LoraArgs {
  const float* x;        // (M, K) fp32 contiguous
  int64_t M, K, N, r, n_adapters;
  const float* bias;     // (N,) or null
  const int64_t* ids;    // (M,) or null (single adapter: every row uses adapter 0)
  const float* scales;   // (n_adapters,)
  float* t;              // (M, r) shrink result
  float* y;              // (M, N) fp32 out
};

// Shrink: t[m, j] = x[m] · A[id_m, j], through the same row-dot kernel as W (A's rows are just more rows). Run by
// the caller before the W pass: r x K is small (64 x 1536 fp32 = 384 KiB, ~3 us), and the expand needs all of t.
template <typename LT>
void shrink(const LoraArgs& a, const LT* A) {
  for (int64_t ad = 0; ad < a.n_adapters; ++ad) {
    const LT* Aad = A + ad * a.r * a.K;
    for (int64_t m = 0; m < a.M; ++m) {
      if (a.ids && a.ids[m] != ad) continue;
      int64_t j = 0;  // 4 rank rows per register block: t[m, j..j+3]
      for (; j + kRowBlock <= a.r; j += kRowBlock)
        dot_rows<kRowBlock>(Aad + j * a.K, a.K, a.x + m * a.K, a.K, a.K, 1, a.t + m * a.r + j, a.r);
      for (; j < a.r; ++j) dot_rows<1>(Aad + j * a.K, a.K, a.x + m * a.K, a.K, a.K, 1, a.t + m * a.r + j, a.r);
    }
  }
}

// Epilogue for W rows [n0, n0+nb): y[m, n] += bias[n] + s_id · t[m] · B[id_m, n]; the 4 B rows of a block are
// dotted with t[m] by the same register-blocked kernel (vectorised over r).
template <typename LT>
inline void epilogue(const LoraArgs& a, const LT* B, int64_t n0, int64_t nb) {
  float d[kRowBlock];
  for (int64_t m = 0; m < a.M; ++m) {
    float* yrow = a.y + m * a.N + n0;
    const int64_t ad = a.ids ? a.ids[m] : 0;
    const bool lora = B && ad >= 0 && a.r > 0;
    if (lora) {
      const LT* bblk = B + (ad * a.N + n0) * a.r;
      if (nb == kRowBlock) {
        dot_rows<kRowBlock>(bblk, a.r, a.t + m * a.r, a.r, a.r, 1, d, kRowBlock);
      } else {
        for (int64_t i = 0; i < nb; ++i) dot_rows<1>(bblk + i * a.r, a.r, a.t + m * a.r, a.r, a.r, 1, d + i, 1);
      }
      for (int64_t i = 0; i < nb; ++i) yrow[i] += a.scales[ad] * d[i];
    }
    if (a.bias)
      for (int64_t i = 0; i < nb; ++i) yrow[i] += a.bias[n0 + i];
  }
}

// Rows of W per chunk of work: 32 rows = 8 blocks; 576 rows -> 18 chunks, enough for 2 threads to balance.
constexpr int64_t kChunkRows = 32;

template <typename WT, typename LT>
void lora_linear_impl(const LoraArgs& a, const WT* W, int64_t ldw, const LT* A, const LT* B) {
  if (A) shrink(a, A);
  const int64_t chunks = (a.N + kChunkRows - 1) / kChunkRows;
  auto chunk = [&](int64_t c) {
    const int64_t end = std::min(a.N, (c + 1) * kChunkRows);
    for (int64_t n0 = c * kChunkRows; n0 < end; n0 += kRowBlock) {
      const int64_t nb = std::min<int64_t>(kRowBlock, end - n0);
      if (nb == kRowBlock) {  // dots land straight in y (row stride N): no scratch, one store per output
        dot_rows<kRowBlock>(W + n0 * ldw, ldw, a.x, a.K, a.K, a.M, a.y + n0, a.N);
      } else {
        for (int64_t i = 0; i < nb; ++i) dot_rows<1>(W + (n0 + i) * ldw, ldw, a.x, a.K, a.K, a.M, a.y + n0 + i, a.N);
      }
      epilogue(a, B, n0, nb);
    }
  };
  // Below ~256K MACs (576->192 at M=1 is 110K: 8.4 us alone, 9.5 us with a helper) handing out chunks costs more
  // than a second core returns.
  if (a.M * a.N * a.K < (int64_t(1) << 18)) {
    for (int64_t c = 0; c < chunks; ++c) chunk(c);
  } else {
    parallel_chunks(chunks, chunk);
  }
}

template <typename WT>
void dispatch_lora(const LoraArgs& a, const WT* W, int64_t ldw, const at::Tensor& A, const at::Tensor& B) {
  if (!A.defined()) return lora_linear_impl<WT, float>(a, W, ldw, nullptr, nullptr);
  switch (A.scalar_type()) {
    case at::kFloat: return lora_linear_impl(a, W, ldw, A.data_ptr<float>(), B.data_ptr<float>());
    case at::kBFloat16:
      return lora_linear_impl(a, W, ldw, A.data_ptr<c10::BFloat16>(), B.data_ptr<c10::BFloat16>());
    case at::kHalf: return lora_linear_impl(a, W, ldw, A.data_ptr<c10::Half>(), B.data_ptr<c10::Half>());
    default: TORCH_CHECK(false, "lora_a dtype ", A.scalar_type(), " not supported (float32, bfloat16, float16)");
  }
}

// Above this many rows the product is compute-bound and MKL's blocked GEMM wins (1 thread, 576x1536: M=8 ours 251 us
// vs 236 us, M=16 486 vs 372), so prefill goes through ATen: base GEMM, then the LoRA delta as two thin GEMMs.
constexpr int64_t kGemvMaxRows = 8;

at::Tensor gemm_path(const at::Tensor& xf, const at::Tensor& w, const at::Tensor& A, const at::Tensor& B,
                     const at::Tensor& scales, const at::Tensor& bias, const at::Tensor& ids, bool multi) {
  at::Tensor y = bias.defined() ? at::addmm(bias, xf, w.to(at::kFloat).t()) : at::mm(xf, w.to(at::kFloat).t());
  if (!A.defined()) return y;
  at::Tensor af = A.to(at::kFloat), bf = B.to(at::kFloat);
  if (!multi) return y.addmm_(at::mm(xf, af.t()), bf.t(), 1.0, scales[0].item<float>());
  for (int64_t ad = 0; ad < af.size(0); ++ad) {
    at::Tensor rows = (ids == ad).nonzero().reshape({-1});
    if (rows.numel() == 0) continue;
    at::Tensor t = at::mm(xf.index_select(0, rows), af[ad].t());
    y.index_add_(0, rows, at::mm(t, bf[ad].t()), scales[ad].item<float>());
  }
  return y;
}

bool floating_ok(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; }

}  // namespace

// x (..., K); weight (N, K); lora_a (r, K) | (n, r, K); lora_b (N, r) | (n, N, r); scale a float, or scales (n,)
// per adapter when given; bias (N,); adapter_ids (M,) int with -1 = base only. Returns (..., N) in x.dtype.
at::Tensor lora_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& lora_a,
                           const c10::optional<at::Tensor>& lora_b, double scale,
                           const c10::optional<at::Tensor>& scales_opt, const c10::optional<at::Tensor>& bias,
                           const c10::optional<at::Tensor>& adapter_ids) {
  // Decode calls this ~200 times per token on the default model: every ATen allocation or op here is ~0.5 us of a
  // 10-30 us call, so scratch lives in std::vector and fp32 inputs pass through without copies.
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "lora_linear_cpu: tensors must be on CPU");
  TORCH_CHECK(weight.dim() == 2, "weight must be (N, K), got ", weight.sizes());
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), "x last dim ", x.size(-1), " != weight K ", weight.size(1));
  TORCH_CHECK(floating_ok(x.scalar_type()) && floating_ok(weight.scalar_type()), "x/weight must be fp32/bf16/fp16");
  const int64_t K = weight.size(1), N = weight.size(0);
  at::Tensor xf = x.reshape({-1, K}).to(at::kFloat).contiguous();
  const int64_t M = xf.size(0);
  at::Tensor w = weight.stride(1) == 1 ? weight : weight.contiguous();
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end() - 1);
  out_shape.push_back(N);
  at::Tensor y = at::empty(out_shape, xf.options());
  LoraArgs a{xf.data_ptr<float>(), M, K, N, 0, 1, nullptr, nullptr, nullptr, nullptr, y.data_ptr<float>()};
  at::Tensor bf, A, B, ids, scales;
  std::vector<float> scale_buf, t_buf;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == N, "bias must have N=", N, " elements, got ", bias->numel());
    bf = bias->to(at::kFloat).contiguous();
    a.bias = bf.data_ptr<float>();
  }
  const bool multi = adapter_ids.has_value() && adapter_ids->defined();
  if (lora_a.has_value() && lora_a->defined()) {
    TORCH_CHECK(lora_b.has_value() && lora_b->defined(), "lora_b is required with lora_a");
    A = lora_a->contiguous();
    B = lora_b->to(A.scalar_type()).contiguous();
    TORCH_CHECK(floating_ok(A.scalar_type()), "lora_a must be fp32/bf16/fp16");
    TORCH_CHECK(A.dim() == (multi ? 3 : 2) && B.dim() == A.dim(), "lora_a/lora_b must be ", multi ? "3-D" : "2-D",
                " (stacked per adapter iff adapter_ids is given), got ", A.sizes(), " and ", B.sizes());
    a.n_adapters = multi ? A.size(0) : 1;
    a.r = A.size(-2);
    TORCH_CHECK(A.size(-1) == K && B.size(-2) == N && B.size(-1) == a.r && (!multi || B.size(0) == a.n_adapters),
                "lora shapes: lora_a ", A.sizes(), ", lora_b ", B.sizes(), " do not fit K=", K, " N=", N);
    if (scales_opt.has_value() && scales_opt->defined()) {
      TORCH_CHECK(scales_opt->numel() == a.n_adapters || scales_opt->numel() == 1,
                  "scales must have one value per adapter (", a.n_adapters, "), got ", scales_opt->numel());
      scales = scales_opt->to(at::kFloat).reshape({-1}).expand({a.n_adapters}).contiguous();
      scale_buf.assign(scales.data_ptr<float>(), scales.data_ptr<float>() + a.n_adapters);
    } else {
      scale_buf.assign(a.n_adapters, static_cast<float>(scale));
    }
    a.scales = scale_buf.data();
    t_buf.assign(M * std::max<int64_t>(a.r, 1), 0.f);
    a.t = t_buf.data();
    if (multi) {
      ids = adapter_ids->to(at::kLong).reshape({-1}).contiguous();
      TORCH_CHECK(ids.numel() == M, "adapter_ids must have one id per row of x (", M, "), got ", ids.numel());
      a.ids = ids.data_ptr<int64_t>();
      for (int64_t m = 0; m < M; ++m)
        TORCH_CHECK(a.ids[m] >= -1 && a.ids[m] < a.n_adapters, "adapter_ids[", m, "]=", a.ids[m],
                    " must lie in [-1, ", a.n_adapters, ")");
    }
  }
  if (M > kGemvMaxRows) {
    scales = at::tensor(scale_buf.empty() ? std::vector<float>{1.f} : scale_buf);
    y.view({M, N}).copy_(gemm_path(xf, w, A, B, scales, bf, ids, multi));
  } else if (M > 0 && N > 0) {
    switch (w.scalar_type()) {
      case at::kFloat: dispatch_lora(a, w.data_ptr<float>(), w.stride(0), A, B); break;
      case at::kBFloat16: dispatch_lora(a, w.data_ptr<c10::BFloat16>(), w.stride(0), A, B); break;
      default: dispatch_lora(a, w.data_ptr<c10::Half>(), w.stride(0), A, B); break;
    }
  }
  return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}

}  // namespace duomem
