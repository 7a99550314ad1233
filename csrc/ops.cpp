// The one binding file: registers duomem::lora_linear, duomem::prefix_attention, duomem::merge_attention with
// TORCH_LIBRARY, so they are torch.ops.duomem.<op>. CPU kernels live in *_cpu.cpp; CUDA kernels (csrc/*.cu) join
// under WITH_CUDA. Fake (meta) implementations are registered in Python (duomem_fast/ops.py, register_fake) so
// torch.compile can trace through the ops.
#include <torch/extension.h>
#include <torch/library.h>

namespace duomem {
at::Tensor lora_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& lora_a,
                           const c10::optional<at::Tensor>& lora_b, double scale,
                           const c10::optional<at::Tensor>& scales, const c10::optional<at::Tensor>& bias,
                           const c10::optional<at::Tensor>& adapter_ids);
std::tuple<at::Tensor, at::Tensor> prefix_attention_cpu(
    const at::Tensor& q, const c10::optional<at::Tensor>& k_prefix, const c10::optional<at::Tensor>& v_prefix,
    const c10::optional<at::Tensor>& k_suffix, const c10::optional<at::Tensor>& v_suffix,
    const c10::optional<at::Tensor>& suffix_lens, double scale);
std::tuple<at::Tensor, at::Tensor> merge_attention_cpu(const at::Tensor& o_a, const at::Tensor& lse_a,
                                                       const at::Tensor& o_b, const at::Tensor& lse_b);
#ifdef WITH_CUDA
at::Tensor lora_linear_cuda(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& lora_a,
                            const c10::optional<at::Tensor>& lora_b, double scale,
                            const c10::optional<at::Tensor>& scales, const c10::optional<at::Tensor>& bias,
                            const c10::optional<at::Tensor>& adapter_ids);
#endif
}  // namespace duomem

TORCH_LIBRARY(duomem, m) {
  m.def("lora_linear(Tensor x, Tensor weight, Tensor? lora_a, Tensor? lora_b, float scale, Tensor? scales, "
        "Tensor? bias, Tensor? adapter_ids) -> Tensor");
  m.def("prefix_attention(Tensor q, Tensor? k_prefix, Tensor? v_prefix, Tensor? k_suffix, Tensor? v_suffix, "
        "Tensor? suffix_lens, float scale) -> (Tensor, Tensor)");
  m.def("merge_attention(Tensor o_a, Tensor lse_a, Tensor o_b, Tensor lse_b) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(duomem, CPU, m) {
  m.impl("lora_linear", &duomem::lora_linear_cpu);
  m.impl("prefix_attention", &duomem::prefix_attention_cpu);
  m.impl("merge_attention", &duomem::merge_attention_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(duomem, CUDA, m) { m.impl("lora_linear", &duomem::lora_linear_cuda); }
#endif

// An importable module (`import duomem_fast._C`) whose import runs the registrations above.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.doc() = "duomem-fast native ops: see torch.ops.duomem"; }
