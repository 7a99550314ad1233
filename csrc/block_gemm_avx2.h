// y = x Wᵀ + s·(x Aᵀ) Bᵀ (+ bias) for a weight in GGUF blocks (blocks.h) and many rows of x (an append, a prefill), on
// 8-lane FMAs for CPUs without AVX-512 (no AMX there either): the blocks are widened exactly (blocks::widen8) into
// an L1 buffer a few W rows at a time and multiplied there, instead of widening the whole matrix for oneDNN.
// block_gemm_avx2.cpp explains the register block.
#pragma once

#include <cstdint>

#include "blocks.h"

namespace duomem {

// Whether this build has block_gemm_avx2 (AVX2 + FMA, no AVX-512: vec_avx2.h's DUOMEM_AVX2).
bool block_gemm_avx2_available();

// y (M, N) = x (M, K) Wᵀ + s·(x aᵀ) bᵀ (+ bias (N) if not null), W (N, K/32 blocks of format f, rows ldw bytes
// apart), a (r, K) and b (N, r) the LoRA factors, fp32, contiguous (null when r = 0). Requires
// block_gemm_avx2_available().
void block_gemm_avx2(const uint8_t* w, int64_t ldw, blocks::Format f, int64_t N, int64_t K, const float* x, int64_t M,
                     const float* a, const float* b, int64_t r, float scale, const float* bias, float* y);

}  // namespace duomem
