// y = x Wᵀ (+ bias) for a weight in GGUF blocks (blocks.h) and many rows of x (an append, a prefill), on AMX tiles:
// q (4- or 8-bit integers) is exact in bf16, x splits exactly into three bf16 parts, so every product is exact and
// sums are fp32, as in an fp32 GEMM. block_gemm_amx.cpp explains the layout.
#pragma once

#include <atomic>
#include <cstdint>

#include "blocks.h"

namespace duomem {

// Whether this build and this CPU run block_gemm_amx (AMX-BF16 compiled in, the CPU has it, the kernel granted the
// tile state).
bool block_gemm_amx_available();

// The many-row path for blocks: true = a fused path where the build and CPU have one (default: AMX tiles here, else
// block_gemm_avx2's register blocks), false = widen to fp32 and run oneDNN's fp32 GEMM (set_block_gemm, to compare).
inline std::atomic<bool>& block_gemm_fused_flag() {
  static std::atomic<bool> on{true};
  return on;
}

// y (M, N) = x (M, K) Wᵀ (+ bias (N) if not null), W (N, K/32 blocks of format f, rows ldw bytes apart). Requires
// block_gemm_amx_available().
void block_gemm_amx(const uint8_t* w, int64_t ldw, blocks::Format f, int64_t N, int64_t K, const float* x, int64_t M,
                    const float* bias, float* y);

}  // namespace duomem
