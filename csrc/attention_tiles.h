// Register-tiled attention of many query rows over one KV head's keys (attention_tiles_cpu.cpp), used by
// prefix_attention_cpu for its prefix pass when a KV head has at least tiled_min_rows() query rows.
#pragma once

#include <atomic>
#include <cstdint>

namespace duomem {

constexpr int64_t kTiledItemRows = 96;  // query rows per work item (each item transposes the key blocks it reads)

// Query rows of a KV head from which the tiles run; below it the row kernels' transpose-free dots win (AVX-512
// builds 48; AVX2 builds 12, attention_tiles_cpu.cpp gives the measurements). The model's routing asks for it too.
int64_t tiled_min_rows();
// 0 (the default above) or the rows to use instead (set_tiled_min_rows, to compare).
std::atomic<int64_t>& tiled_min_rows_flag();

// True when attend_tiled handles `rows` rows of head dim D (AVX-512 or AVX2 build, D a multiple of 64 or 16 up to
// 256, at least tiled_min_rows() rows).
bool tiled_attention_fits(int64_t rows, int64_t D);

// n query rows (q_rows[i]: D fp32) attend to keys [0, L) (row j at k + j*ld, D fp32; likewise v): all of them, or
// row i to keys [0, limits[i]) when limits is given (a causal suffix; limits[i] >= 1). Writes each row's normalised
// output to o_rows[i] (D fp32) and its log-sum-exp of scale·q·k to *lse_rows[i], or with merge combines them
// exactly (through the log-sum-exps) with the partial attention already there.
void attend_tiled(const float* const* q_rows, int64_t n, int64_t D, const float* k, const float* v, int64_t ld,
                  int64_t L, float scale, float* const* o_rows, float* const* lse_rows,
                  const int64_t* limits = nullptr, bool merge = false);

// Rows per call of attend_tiled that prefix_attention_cpu hands out: the AMX path splits K and V once per call, so
// it takes a KV head's rows of an append in one call.
int64_t tiled_item_rows(int64_t D);

// attend_tiled on AMX tiles (attention_amx.cpp): true if it ran (AMX-BF16 here, D = 64, enabled), else false and
// nothing written.
bool attend_amx(const float* const* q_rows, int64_t n, int64_t D, const float* k, const float* v, int64_t ld,
                int64_t L, float scale, float* const* o_rows, float* const* lse_rows, const int64_t* limits, bool merge);
// The AMX attention path on or off (set_attention_amx); off by default (attention_amx.cpp says why).
std::atomic<bool>& attention_amx_flag();

// The end of attend_tiled: rows' running (o, m, l) normalised into o_rows / lse_rows, or merged exactly with the
// partial attention already there.
void finish_rows(int64_t n, int64_t D, const float* o, const float* m, const float* l, float* const* o_rows,
                 float* const* lse_rows, bool merge);

}  // namespace duomem
