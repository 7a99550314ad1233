// The one binding file: registers duomem::lora_linear, duomem::prefix_attention, duomem::merge_attention,
// duomem::decode_attention, duomem::decode_step and duomem::append_step with TORCH_LIBRARY, so they are torch.ops.duomem.<op>. CPU kernels live in *_cpu.cpp; CUDA kernels (csrc/*.cu) join
// under WITH_CUDA. Fake (meta) implementations are registered in Python (duomem_fast/ops.py, register_fake) so
// torch.compile can trace through the ops.
#include <torch/extension.h>
#include <torch/library.h>

#include "amx.h"
#include "attention_tiles.h"
#include "block_gemm_amx.h"
#include "block_gemm_avx2.h"
#include "decode_cpu.h"
#include "vec_avx2.h"
#include "weight_reuse.h"

namespace duomem {
uint64_t read_bytes_cpu(const std::vector<at::Tensor>& tensors, int64_t ahead);
std::tuple<at::Tensor, at::Tensor> merge_attention_cpu(const at::Tensor& o_a, const at::Tensor& lse_a,
                                                       const at::Tensor& o_b, const at::Tensor& lse_b);
#ifdef WITH_CUDA
}  // namespace duomem
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
extern "C" cudaError_t duomem_lora_linear_f32(const float*, const float*, const float*, const float*, const float*,
                                              const int64_t*, const float*, float*, int, int, int, int, cudaStream_t);
extern "C" cudaError_t duomem_lora_linear_bf16(const float*, const __nv_bfloat16*, const __nv_bfloat16*,
                                               const __nv_bfloat16*, const float*, const int64_t*, const float*,
                                               float*, int, int, int, int, cudaStream_t);
extern "C" cudaError_t duomem_merge_attention_f32(const float*, const float*, const float*, const float*, float*,
                                                  float*, int64_t, int, cudaStream_t);
namespace duomem {

// CUDA lora_linear: the .cu kernels take contiguous fp32 x and fp32 or bf16 W/A/B (A/B follow W's dtype here).
at::Tensor lora_linear_cuda(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& lora_a,
                            const c10::optional<at::Tensor>& lora_b, double scale,
                            const c10::optional<at::Tensor>& scales, const c10::optional<at::Tensor>& bias,
                            const c10::optional<at::Tensor>& adapter_ids) {
  TORCH_CHECK(x.is_cuda() && weight.is_cuda(), "lora_linear_cuda: tensors must be on CUDA");
  const int64_t K = weight.size(1), N = weight.size(0);
  const bool bf16 = weight.scalar_type() == at::kBFloat16;
  const auto wt = bf16 ? at::kBFloat16 : at::kFloat;
  at::Tensor xf = x.reshape({-1, K}).to(at::kFloat).contiguous(), w = weight.to(wt).contiguous();
  const int64_t M = xf.size(0);
  at::Tensor y = at::empty({M, N}, xf.options());
  const bool has_lora = lora_a.has_value() && lora_a->defined();
  const bool multi = adapter_ids.has_value() && adapter_ids->defined();
  at::Tensor A, B, s, ids, bf;
  int64_t r = 0, n_ad = 1;
  if (has_lora) {
    A = lora_a->to(wt).contiguous();
    B = lora_b.value().to(wt).contiguous();
    r = A.size(-2);
    n_ad = multi ? A.size(0) : 1;
    s = (scales.has_value() && scales->defined()) ? scales->to(xf.options()).reshape({-1}).expand({n_ad}).contiguous()
                                                  : at::full({n_ad}, scale, xf.options());
  }
  if (multi) ids = adapter_ids->to(x.device(), at::kLong).reshape({-1}).contiguous();
  if (bias.has_value() && bias->defined()) bf = bias->to(xf.options()).contiguous();
  auto ptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; };
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  cudaError_t err = bf16
      ? duomem_lora_linear_bf16(xf.data_ptr<float>(), static_cast<const __nv_bfloat16*>(ptr(w)),
                                static_cast<const __nv_bfloat16*>(ptr(A)), static_cast<const __nv_bfloat16*>(ptr(B)),
                                static_cast<const float*>(ptr(bf)), static_cast<const int64_t*>(ptr(ids)),
                                static_cast<const float*>(ptr(s)), y.data_ptr<float>(), M, N, K, r, stream)
      : duomem_lora_linear_f32(xf.data_ptr<float>(), w.data_ptr<float>(), static_cast<const float*>(ptr(A)),
                               static_cast<const float*>(ptr(B)), static_cast<const float*>(ptr(bf)),
                               static_cast<const int64_t*>(ptr(ids)), static_cast<const float*>(ptr(s)),
                               y.data_ptr<float>(), M, N, K, r, stream);
  TORCH_CHECK(err == cudaSuccess, "duomem lora_linear CUDA launch failed: ", cudaGetErrorString(err));
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(N);
  return y.to(x.scalar_type()).reshape(shape);
}

std::tuple<at::Tensor, at::Tensor> merge_attention_cuda(const at::Tensor& o_a, const at::Tensor& lse_a,
                                                        const at::Tensor& o_b, const at::Tensor& lse_b) {
  TORCH_CHECK(o_a.sizes() == o_b.sizes() && lse_a.sizes() == lse_b.sizes(), "merge_attention: shapes differ");
  const int64_t D = o_a.size(-1), R = lse_a.numel();
  at::Tensor oa = o_a.to(at::kFloat).contiguous(), ob = o_b.to(at::kFloat).contiguous();
  at::Tensor la = lse_a.to(at::kFloat).contiguous(), lb = lse_b.to(at::kFloat).contiguous();
  at::Tensor o = at::empty_like(oa), lse = at::empty_like(la);
  cudaError_t err = duomem_merge_attention_f32(oa.data_ptr<float>(), la.data_ptr<float>(), ob.data_ptr<float>(),
                                               lb.data_ptr<float>(), o.data_ptr<float>(), lse.data_ptr<float>(), R,
                                               static_cast<int>(D), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "duomem merge_attention CUDA launch failed: ", cudaGetErrorString(err));
  return {o.to(o_a.scalar_type()), lse};
}
#endif
}  // namespace duomem

TORCH_LIBRARY(duomem, m) {
  m.def("lora_linear(Tensor x, Tensor weight, Tensor? lora_a, Tensor? lora_b, float scale, Tensor? scales, "
        "Tensor? bias, Tensor? adapter_ids) -> Tensor");
  m.def("prefix_attention(Tensor q, Tensor? k_prefix, Tensor? v_prefix, Tensor? k_suffix, Tensor? v_suffix, "
        "Tensor? suffix_lens, float scale) -> (Tensor, Tensor)");
  m.def("merge_attention(Tensor o_a, Tensor lse_a, Tensor o_b, Tensor lse_b) -> (Tensor, Tensor)");
  m.def("decode_attention(Tensor q, Tensor? k_prefix, Tensor? v_prefix, Tensor k_own, Tensor v_own, int[] own_lens, "
        "float scale) -> Tensor");
  m.def("decode_step(Tensor x, Tensor[] weights, Tensor?[] extras, Tensor cos, Tensor sin, Tensor? k_prefix, "
        "Tensor? v_prefix, Tensor(a!) own_k, Tensor(b!) own_v, int[] own_start, float eps) -> Tensor");
  m.def("append_step(Tensor x, Tensor[] weights, Tensor?[] extras, Tensor cos, Tensor sin, Tensor? k_prefix, "
        "Tensor? v_prefix, Tensor(a!) own_k, Tensor(b!) own_v, int own_start, float eps) -> Tensor");
  m.def("dequantize_blocks(Tensor blocks) -> Tensor");
}

TORCH_LIBRARY_IMPL(duomem, CPU, m) {
  m.impl("lora_linear", &duomem::lora_linear_cpu);
  m.impl("prefix_attention", &duomem::prefix_attention_cpu);
  m.impl("merge_attention", &duomem::merge_attention_cpu);
  m.impl("decode_attention", &duomem::decode_attention_cpu);
  m.impl("decode_step", &duomem::decode_step_cpu);
  m.impl("append_step", &duomem::append_step_cpu);
  m.impl("dequantize_blocks", &duomem::dequantize_blocks_cpu);
}

#ifdef WITH_CUDA
// CUDA prefix_attention goes through the Triton launcher in duomem_fast.ops; the .cu pass kernel
// (duomem_prefix_attention_f32) is exported for C callers.
TORCH_LIBRARY_IMPL(duomem, CUDA, m) {
  m.impl("lora_linear", &duomem::lora_linear_cuda);
  m.impl("merge_attention", &duomem::merge_attention_cuda);
}
#endif

// An importable module (`import duomem_fast._C`) whose import runs the registrations above.
// Also a direct binding of the CPU lora_linear: the torch.ops dispatcher costs ~3.6 us per call against ~1 us here,
// and at decode a 576->192 projection takes ~8 us in all (duomem_fast.ops uses it outside torch.compile).
namespace duomem {
// decode_step and append_step without the dispatcher: one call per token or append, but ~600 list entries to box
// otherwise.
using Extras = std::vector<c10::optional<at::Tensor>>;
c10::List<c10::optional<at::Tensor>> boxed(const Extras& extras) {
  c10::List<c10::optional<at::Tensor>> ex;
  ex.reserve(extras.size());
  for (const auto& t : extras) ex.push_back(t);
  return ex;
}
}  // namespace duomem

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "duomem-fast native ops: see torch.ops.duomem";
  m.def("lora_linear_cpu", &duomem::lora_linear_cpu, "lora_linear on CPU tensors, bypassing the dispatcher");
  using Opt = c10::optional<at::Tensor>;
  m.def("decode_step_cpu", [](const at::Tensor& x, const std::vector<at::Tensor>& w, const duomem::Extras& e,
                              const at::Tensor& cos, const at::Tensor& sin, const Opt& kp, const Opt& vp,
                              const at::Tensor& ok, const at::Tensor& ov, const std::vector<int64_t>& start,
                              double eps) {
    return duomem::decode_step_cpu(x, w, duomem::boxed(e), cos, sin, kp, vp, ok, ov, start, eps);
  }, "decode_step on CPU tensors, bypassing the dispatcher");
  m.def("append_step_cpu", [](const at::Tensor& x, const std::vector<at::Tensor>& w, const duomem::Extras& e,
                              const at::Tensor& cos, const at::Tensor& sin, const Opt& kp, const Opt& vp,
                              const at::Tensor& ok, const at::Tensor& ov, int64_t start, double eps) {
    return duomem::append_step_cpu(x, w, duomem::boxed(e), cos, sin, kp, vp, ok, ov, start, eps);
  }, "append_step on CPU tensors, bypassing the dispatcher");
  m.def("read_bytes", &duomem::read_bytes_cpu, py::arg("tensors"), py::arg("ahead") = 0,
        "read every byte of these contiguous CPU tensors once; the XOR of their bytes as 64-bit words (benchmark floor)");
  m.def("cpu_isa", [] {  // what -march (setup.py) let this build compile in
#if defined(__AVX512F__)
    std::string isa = "avx512";
#ifdef __AVX512BF16__
    isa += "+bf16";
#endif
#ifdef DUOMEM_AMX
    isa += "+amx";
#endif
    return isa;
#elif defined(DUOMEM_AVX2)
    return std::string("avx2");
#else
    return std::string("portable");
#endif
  }, "the vector ISA the CPU kernels were compiled for: avx512[+bf16][+amx], avx2 or portable");
  m.def("set_lora_prefetch", [](const std::string& mode) {
    using duomem::PrefetchMode;
    TORCH_CHECK(mode == "auto" || mode == "always" || mode == "never", "prefetch mode must be 'auto', 'always' or "
                "'never', got '", mode, "'");
    duomem::weight_reuse().set_mode(mode == "auto" ? PrefetchMode::kAuto
                                    : mode == "always" ? PrefetchMode::kAlways : PrefetchMode::kNever);
  }, "lora_linear's next-block prefetch: 'auto' (by reuse distance, csrc/weight_reuse.h), 'always' or 'never'");
  m.def("set_lora_single_row_stream", [](bool on) { duomem::single_row_stream_flag().store(on); },
        "lora_linear with one x row: stream W row after row (True, default) or use the 8-row blocks (False)");
  m.def("set_stream_row_group", [](int64_t n) {
    TORCH_CHECK(n == 0 || n == 1 || n == 4, "stream row group must be 1 or 4 (0: the default), got ", n);
    duomem::stream_row_group_flag().store(static_cast<int>(n));
  }, "lora_linear with one x row: W rows streamed side by side, 1 or 4 (0: the default, csrc/weight_reuse.h)");
  m.def("stream_row_group", [](int64_t row_bytes) { return duomem::stream_row_group(row_bytes); }, py::arg("row_bytes"),
        "the one-row stream group (1 or 4) for W rows of row_bytes bytes");
  m.def("set_stream_ahead", [](int64_t bytes) {
    TORCH_CHECK(bytes >= 0 && bytes <= (1 << 20), "stream look-ahead must be 0 (default) to 1 MiB, got ", bytes);
    duomem::stream_ahead_flag().store(bytes);
  }, "lora_linear's row streams: software look-ahead in bytes (0 = the tuned default), to compare");
  m.def("set_block_gemm", [](const std::string& mode) {
    TORCH_CHECK(mode == "auto" || mode == "widen", "block GEMM mode must be 'auto' or 'widen', got '", mode, "'");
    duomem::block_gemm_fused_flag().store(mode == "auto");
  }, "lora_linear over GGUF blocks with many rows: 'auto' (default: AMX tiles past 32 rows where the CPU has them, "
     "else the AVX2 register blocks past 12 rows on AVX2 builds, else widen past 32) or 'widen' (widen to fp32, then "
     "oneDNN, past 32 rows), to compare");
  m.def("block_gemm", [] {
    if (!duomem::block_gemm_fused_flag().load()) return "widen";
    if (duomem::block_gemm_amx_available()) return "amx";
    return duomem::block_gemm_avx2_available() ? "avx2" : "widen";
  }, "the path lora_linear takes over GGUF blocks with many rows: 'amx', 'avx2' or 'widen'");
  m.def("set_attention_amx", [](bool on) { duomem::attention_amx_flag().store(on); },
        "attention of 96+ query rows per KV head with head dim 64 (appends, prefills): AMX tiles where the CPU has "
        "them (True) or fp32 register tiles (False, default)");
  m.def("set_tiled_min_rows", [](int64_t rows) {
    TORCH_CHECK(rows >= 0, "tiled min rows must be >= 0 (0: the build's default), got ", rows);
    duomem::tiled_min_rows_flag().store(rows);
  }, "query rows per KV head from which attention runs on register tiles: 0 = the build's default (48 AVX-512, "
     "12 AVX2), to compare");
  m.def("tiled_min_rows", [] { return duomem::tiled_min_rows(); },
        "query rows per KV head from which prefix_attention runs on register tiles (the model routes appends by it)");
  m.def("attention_amx", [] { return duomem::tiled_item_rows(64) != duomem::kTiledItemRows; },
        "whether attention of 48+ query rows per KV head with head dim 64 runs on AMX tiles");
  m.def("lora_prefetch_counts", [] { return duomem::weight_reuse().counts(); },
        "(calls decided in 'auto' mode, of which prefetched) since import");
  m.def("lora_prefetch_budget", [] { return duomem::weight_reuse().budget(); },
        "bytes of weights (own + read since) below which a weight counts as cached: half the last-level cache");
}
