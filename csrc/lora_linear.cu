// Fused LoRA linear for CUDA, decode-shaped (small M): y = x Wᵀ + s·(x Aᵀ) Bᵀ (+ bias), fp32 accumulation.
//
// Plain CUDA (no torch headers): compiles with `nvcc -arch=sm_80|sm_90 -c`. One kernel, no separate shrink pass:
// each block first computes the shrink t = x Aᵀ for all M rows (A is r x K, at most 64 x 4096 fp32 = 1 MiB, read
// from L2 after the first block), then one warp per W row streams that row once for all M rows (M <= kMaxM per
// pass: W is the DRAM traffic, x sits in shared memory), and adds bias and the expand s·t·B[n] before the store.
// Multi-adapter: A (n, r, K), B (n, N, r), ids (M,) with -1 = base only.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace {

constexpr int kWarps = 8;    // rows of W per block
constexpr int kMaxM = 8;     // x rows per pass (registers: kMaxM accumulators per lane)
constexpr int kMaxR = 64;    // LoRA rank bound (t lives in shared memory: kMaxM x kMaxR fp32 = 2 KiB)

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename WT>
__global__ void lora_linear_kernel(const float* __restrict__ x, const WT* __restrict__ w, const WT* __restrict__ a,
                                   const WT* __restrict__ b, const float* __restrict__ bias,
                                   const int64_t* __restrict__ ids, const float* __restrict__ scales,
                                   float* __restrict__ y, int M, int N, int K, int r) {
  __shared__ float t[kMaxM][kMaxR];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int n = blockIdx.x * kWarps + warp;
  for (int m0 = 0; m0 < M; m0 += kMaxM) {
    const int mb = min(kMaxM, M - m0);
    // Shrink: warps split the (row, rank) pairs; each dot is lane-strided over K.
    for (int p = warp; p < mb * r; p += kWarps) {
      const int m = p / r, j = p % r;
      const int ad = ids ? static_cast<int>(ids[m0 + m]) : 0;
      float s = 0.f;
      if (ad >= 0) {
        const WT* arow = a + (static_cast<int64_t>(ad) * r + j) * K;
        for (int k = lane; k < K; k += 32) s += x[(int64_t)(m0 + m) * K + k] * to_f(arow[k]);
      }
      s = warp_sum(s);
      if (lane == 0) t[m][j] = s;
    }
    __syncthreads();
    if (n < N) {
      float acc[kMaxM];
#pragma unroll
      for (int m = 0; m < kMaxM; ++m) acc[m] = 0.f;
      const WT* wrow = w + static_cast<int64_t>(n) * K;
      for (int k = lane; k < K; k += 32) {
        const float wv = to_f(wrow[k]);
#pragma unroll
        for (int m = 0; m < kMaxM; ++m)
          if (m < mb) acc[m] += wv * x[(int64_t)(m0 + m) * K + k];
      }
#pragma unroll
      for (int m = 0; m < kMaxM; ++m) {
        if (m >= mb) break;
        float v = warp_sum(acc[m]);
        const int ad = ids ? static_cast<int>(ids[m0 + m]) : 0;
        float d = 0.f;
        if (b != nullptr && ad >= 0)
          for (int j = lane; j < r; j += 32) d += t[m][j] * to_f(b[(static_cast<int64_t>(ad) * N + n) * r + j]);
        d = warp_sum(d);
        if (lane == 0) {
          if (b != nullptr && ad >= 0) v += scales[ad] * d;
          if (bias) v += bias[n];
          y[(int64_t)(m0 + m) * N + n] = v;
        }
      }
    }
    __syncthreads();  // t is rewritten by the next pass
  }
}

template <typename WT>
cudaError_t launch(const float* x, const WT* w, const WT* a, const WT* b, const float* bias, const int64_t* ids,
                   const float* scales, float* y, int M, int N, int K, int r, cudaStream_t stream) {
  if (r > kMaxR || (a != nullptr && (b == nullptr || scales == nullptr))) return cudaErrorInvalidValue;
  if (a == nullptr) r = 0;
  const dim3 grid((N + kWarps - 1) / kWarps), block(kWarps * 32);
  lora_linear_kernel<WT><<<grid, block, 0, stream>>>(x, w, a, b, bias, ids, scales, y, M, N, K, r);
  return cudaGetLastError();  // launch errors surface here; execution errors at the caller's next sync
}

}  // namespace

// x (M, K) fp32, w (N, K), a (n, r, K) or null, b (n, N, r), bias (N,) or null, ids (M,) or null (single adapter),
// scales (n,), y (M, N) fp32. All contiguous device pointers. Returns the launch status.
extern "C" cudaError_t duomem_lora_linear_f32(const float* x, const float* w, const float* a, const float* b,
                                              const float* bias, const int64_t* ids, const float* scales, float* y,
                                              int M, int N, int K, int r, cudaStream_t stream) {
  return launch(x, w, a, b, bias, ids, scales, y, M, N, K, r, stream);
}

extern "C" cudaError_t duomem_lora_linear_bf16(const float* x, const __nv_bfloat16* w, const __nv_bfloat16* a,
                                               const __nv_bfloat16* b, const float* bias, const int64_t* ids,
                                               const float* scales, float* y, int M, int N, int K, int r,
                                               cudaStream_t stream) {
  return launch(x, w, a, b, bias, ids, scales, y, M, N, K, r, stream);
}
