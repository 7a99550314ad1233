// Decode-step kernels on CPU (one new token per sequence): the attention of those rows over KV segments, and the
// whole decoder-layer stack in one call for decode rows or one session's appended tokens (decode_step_cpu.cpp).
// fp32 throughout.
#pragma once

#include <torch/extension.h>

#include <cstdint>

namespace duomem {

// A run of n keys/values of one sequence: row j of KV head h starts at k + j * ld + h * D (likewise v).
struct KVSegment {
  const float* k;
  const float* v;
  int64_t ld;
  int64_t n;
};

// The threads a kernel shares its work over (parallel.h): the barrier-free pool inside the fused decode step, ATen's
// OpenMP team when called between ATen's ops (the eager layer loop).
enum class Team { pool, aten };

// One sequence's decode rows: q (Hq, D) -> out (Hq, D), attending to every key of segs[0..nseg). GQA: query head
// h * G + g uses KV head h (G = Hq / Hkv).
void decode_attention_rows(const float* q, int64_t Hq, int64_t Hkv, int64_t D, const KVSegment* segs, int nseg,
                           float scale, float* out, Team team = Team::pool);

// B sequences' decode rows q (B, Hq, D) -> out (B, Hq, D) over one shared prefix (read once for all B) and each
// sequence's own segment own[b]; equal to decode_attention_rows with segments [prefix, own[b]] per sequence.
void decode_attention_shared(const float* q, int64_t B, int64_t Hq, int64_t Hkv, int64_t D, const KVSegment& prefix,
                             const KVSegment* own, float scale, float* out, Team team = Team::pool);

// Ops (registered in ops.cpp).
at::Tensor decode_attention_cpu(const at::Tensor& q, const c10::optional<at::Tensor>& k_prefix,
                                const c10::optional<at::Tensor>& v_prefix, const at::Tensor& k_own,
                                const at::Tensor& v_own, at::IntArrayRef own_lens, double scale);
at::Tensor decode_step_cpu(const at::Tensor& x, at::TensorList weights, const c10::List<c10::optional<at::Tensor>>& extras,
                           const at::Tensor& cos, const at::Tensor& sin, const c10::optional<at::Tensor>& k_prefix,
                           const c10::optional<at::Tensor>& v_prefix, const at::Tensor& own_k, const at::Tensor& own_v,
                           at::IntArrayRef own_start, double eps);
at::Tensor append_step_cpu(const at::Tensor& x, at::TensorList weights, const c10::List<c10::optional<at::Tensor>>& extras,
                           const at::Tensor& cos, const at::Tensor& sin, const c10::optional<at::Tensor>& k_prefix,
                           const c10::optional<at::Tensor>& v_prefix, const at::Tensor& own_k, const at::Tensor& own_v,
                           int64_t own_start, double eps);

// From prefix_attention_cpu.cpp: (o, lse) of q (B, T, Hq, D) over a shared prefix and each sequence's causal suffix.
std::tuple<at::Tensor, at::Tensor> prefix_attention_cpu(
    const at::Tensor& q, const c10::optional<at::Tensor>& k_prefix, const c10::optional<at::Tensor>& v_prefix,
    const c10::optional<at::Tensor>& k_suffix, const c10::optional<at::Tensor>& v_suffix,
    const c10::optional<at::Tensor>& suffix_lens, double scale);

// From lora_linear_cpu.cpp.
at::Tensor lora_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& lora_a,
                           const c10::optional<at::Tensor>& lora_b, double scale,
                           const c10::optional<at::Tensor>& scales, const c10::optional<at::Tensor>& bias,
                           const c10::optional<at::Tensor>& adapter_ids);

// From block_linear_cpu.cpp: lora_linear_cpu's path for a weight in GGUF blocks (uint8 (N, K/32, 24 | 36), blocks.h),
// and the blocks widened to fp32 (N, K), exactly (dequantize_blocks_ref).
at::Tensor block_lora_linear_cpu(const at::Tensor& x, const at::Tensor& weight,
                                 const c10::optional<at::Tensor>& lora_a, const c10::optional<at::Tensor>& lora_b,
                                 double scale, const c10::optional<at::Tensor>& scales,
                                 const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& adapter_ids);
at::Tensor dequantize_blocks_cpu(const at::Tensor& blocks);
void dequantize_blocks_into(const at::Tensor& blocks, at::Tensor& out);

}  // namespace duomem
