// Shared-prefix (cascade) attention for CUDA: one warp per query row, a block of kRows rows shares every K/V tile
// it stages in shared memory. For the prefix pass the rows of a block come from different sequences (B·T·G rows of
// one KV head), so each prefix tile is read from DRAM once per kRows rows, not once per sequence (Hydragen). The
// suffix pass runs per sequence, causal. merge_attention combines the two exactly through their log-sum-exp.
// Plain CUDA (no torch headers): compiles with `nvcc -arch=sm_80|sm_90 -c`.
#include <cuda_runtime.h>

#include <cstdint>

namespace {

constexpr int kRows = 8;       // warps (query rows) per block
constexpr int kTile = 16;      // keys per shared-memory tile: K+V at kMaxD fp32 = 32 KiB of the 48 KiB static limit
constexpr int kMaxD = 256;     // head dim bound: kMaxD / 32 values per lane
constexpr int kPerLane = kMaxD / 32;

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

struct AttnArgs {
  const float *q, *k, *v;
  const int64_t* lens;         // (B,) suffix lengths, null for the prefix pass
  float *o, *lse;              // (B, T, Hq, D), (B, T, Hq)
  int T, G, D, L, rows_per_group;
  int64_t sqb, sqt, sqh;       // q strides (elements); D is unit-stride
  int64_t skb, skn, skh;       // k/v strides; skb = 0 for the shared prefix
  float scale;
};

__global__ void prefix_attention_kernel(AttnArgs p) {
  __shared__ float ks[kTile][kMaxD], vs[kTile][kMaxD];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int h = blockIdx.y, grp = blockIdx.z;
  const int loc = blockIdx.x * kRows + warp;
  const bool live = loc < p.rows_per_group;
  const int r = grp * p.rows_per_group + (live ? loc : 0);
  const int b = r / (p.T * p.G), t = (r / p.G) % p.T, g = r % p.G, hq = h * p.G + g;
  float q[kPerLane], acc[kPerLane];
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + 32 * i;
    q[i] = (live && d < p.D) ? p.q[b * p.sqb + t * p.sqt + hq * p.sqh + d] : 0.f;
    acc[i] = 0.f;
  }
  const int limit = p.lens ? static_cast<int>(p.lens[b]) - p.T + t + 1 : p.L;
  const int64_t base = grp * p.skb + h * p.skh;
  float m = -1e30f, l = 0.f;
  for (int n0 = 0; n0 < p.L; n0 += kTile) {
    for (int e = threadIdx.x; e < kTile * p.D; e += blockDim.x) {  // the whole block stages one K/V tile
      const int j = e / p.D, d = e % p.D;
      const bool ok = n0 + j < p.L;
      ks[j][d] = ok ? p.k[base + (n0 + j) * p.skn + d] : 0.f;
      vs[j][d] = ok ? p.v[base + (n0 + j) * p.skn + d] : 0.f;
    }
    __syncthreads();
    for (int j = 0; j < kTile && n0 + j < min(limit, p.L); ++j) {
      float s = 0.f;
      for (int i = 0; i < kPerLane; ++i)
        if (lane + 32 * i < p.D) s += q[i] * ks[j][lane + 32 * i];
      s = warp_sum(s) * p.scale;
      const float m_new = fmaxf(m, s), alpha = __expf(m - m_new), pj = __expf(s - m_new);
      l = l * alpha + pj;
      for (int i = 0; i < kPerLane; ++i)
        if (lane + 32 * i < p.D) acc[i] = acc[i] * alpha + pj * vs[j][lane + 32 * i];
      m = m_new;
    }
    __syncthreads();
  }
  if (!live) return;
  const int64_t orow = ((int64_t)b * p.T + t) * (p.G * gridDim.y) + hq;
  for (int i = 0; i < kPerLane; ++i)
    if (lane + 32 * i < p.D) p.o[orow * p.D + lane + 32 * i] = l > 0.f ? acc[i] / l : 0.f;
  if (lane == 0) p.lse[orow] = l > 0.f ? m + logf(l) : -INFINITY;
}

__global__ void merge_attention_kernel(const float* oa, const float* la, const float* ob, const float* lb,
                                       float* o, float* lse, int64_t R, int D) {
  const int64_t r = blockIdx.x * (int64_t)blockDim.y + threadIdx.y;
  if (r >= R) return;
  float m = fmaxf(la[r], lb[r]);
  if (isinf(m)) m = 0.f;
  const float wa = __expf(la[r] - m), wb = __expf(lb[r] - m), den = wa + wb, inv = 1.f / fmaxf(den, 1e-30f);
  for (int d = threadIdx.x; d < D; d += blockDim.x) o[r * D + d] = (wa * oa[r * D + d] + wb * ob[r * D + d]) * inv;
  if (threadIdx.x == 0) lse[r] = den > 0.f ? m + logf(den) : -INFINITY;
}

}  // namespace

// One pass of attention over a KV segment. q (B, T, Hq, D) with strides sq*; k/v (B or 1, L, Hkv, D) with strides
// sk*; lens (B,) for a causal suffix or null for the fully visible shared prefix (then pass skb = 0). o, lse
// contiguous fp32 outputs. Returns the launch status.
extern "C" cudaError_t duomem_prefix_attention_f32(const float* q, const float* k, const float* v, const int64_t* lens,
                                                   float* o, float* lse, int B, int T, int Hq, int Hkv, int D, int L,
                                                   int64_t sqb, int64_t sqt, int64_t sqh, int64_t skb, int64_t skn,
                                                   int64_t skh, float scale, cudaStream_t stream) {
  if (D > kMaxD || Hkv <= 0 || Hq % Hkv != 0) return cudaErrorInvalidValue;
  const int G = Hq / Hkv;
  const bool shared = lens == nullptr;
  const int rows = shared ? B * T * G : T * G;
  AttnArgs p{q, k, v, lens, o, lse, T, G, D, L, rows, sqb, sqt, sqh, shared ? 0 : skb, skn, skh, scale};
  const dim3 grid((rows + kRows - 1) / kRows, Hkv, shared ? 1 : B), block(kRows * 32);
  prefix_attention_kernel<<<grid, block, 0, stream>>>(p);
  return cudaGetLastError();
}

// o_* (R, D), lse_* (R,) contiguous fp32. Returns the launch status.
extern "C" cudaError_t duomem_merge_attention_f32(const float* oa, const float* la, const float* ob, const float* lb,
                                                  float* o, float* lse, int64_t R, int D, cudaStream_t stream) {
  const dim3 block(32, 8), grid(static_cast<unsigned>((R + 7) / 8));
  merge_attention_kernel<<<grid, block, 0, stream>>>(oa, la, ob, lb, o, lse, R, D);
  return cudaGetLastError();
}
