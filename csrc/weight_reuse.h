// Is a weight still in the last-level cache? A reuse-distance estimate that decides lora_linear's prefetch.
//
// Prefetching the next W block gives 1.6-2.8x when W comes from DRAM (a decode streams each layer of a 540 MB model
// once per token) and costs 10-15% when W is already cached (the same layer called again and again). W's size cannot
// tell the two apart: 1536->576 fp32 is 3.5 MB in both. What does is the reuse distance: the weight bytes read by other
// calls since this W was last read. If W plus those bytes fit in half the LLC (16 MiB of 32 here; the other half is
// left to activations, the KV cache and the neighbours' processes), W is taken to be cached and is not prefetched.
// A W never seen (or lost to a table collision) counts as cold: every mistake falls on the prefetching side, whose
// worst case is the 10-15% above, never the 2x of a cold stream left to the hardware prefetcher.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <fstream>
#include <mutex>
#include <string>
#include <utility>

#include <unistd.h>

namespace duomem {

// Bytes of the highest-level data/unified cache of cpu0 from sysfs, else sysconf; 0 when neither reports one.
inline int64_t llc_bytes_sysfs() {
  int64_t best_level = 0, best = 0;
  for (int i = 0; i < 8; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::ifstream lf(dir + "level"), sf(dir + "size"), tf(dir + "type");
    int64_t level = 0;
    std::string size, type;
    if (!(lf >> level) || !(sf >> size) || !(tf >> type) || type == "Instruction" || size.empty()) continue;
    const char unit = size.back();
    int64_t bytes = std::stoll(size);
    bytes *= unit == 'K' ? (1 << 10) : unit == 'M' ? (1 << 20) : unit == 'G' ? (1 << 30) : 1;
    if (level > best_level) best_level = level, best = bytes;
  }
#ifdef _SC_LEVEL3_CACHE_SIZE
  if (best <= 0) best = sysconf(_SC_LEVEL3_CACHE_SIZE) > 0 ? sysconf(_SC_LEVEL3_CACHE_SIZE) : 0;
#endif
  return best;
}

enum class PrefetchMode : int { kAuto = 0, kAlways = 1, kNever = 2 };

// Single-row calls (M=1) stream W row after row (vec.h stream_rows) unless switched off; off, they take the 8-row
// blocks with next-block prefetch like M=2..16 (kept for side-by-side measurement: set_lora_single_row_stream).
inline std::atomic<bool>& single_row_stream_flag() {
  static std::atomic<bool> on{true};
  return on;
}
inline bool stream_single_row() { return single_row_stream_flag().load(std::memory_order_relaxed); }

// W rows a one-row stream reads side by side (vec.h stream_rows; the sums are the same bits for any choice): 4 on
// Intel cores; elsewhere 1, except AVX2 builds take 4 for rows of 4 KiB or more (Zen 3, cold, no software look-ahead:
// one row at a time streams 576-wide fp32 rows faster, 4 side by side 1536-wide ones). set_stream_row_group
// overrides it to compare (0: back to this default).
inline std::atomic<int>& stream_row_group_flag() {
  static std::atomic<int> group{0};
  return group;
}
inline int stream_row_group(int64_t row_bytes) {
  const int forced = stream_row_group_flag().load(std::memory_order_relaxed);
  if (forced > 0) return forced;
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool intel = __builtin_cpu_is("intel");
  if (intel) return 4;
#endif
#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)  // vec_avx2.h's DUOMEM_AVX2
  return row_bytes >= 4096 ? 4 : 1;
#else
  (void)row_bytes;
  return 1;
#endif
}


// The row streams' look-ahead in bytes (vec.h stream_rows, 1-4 x rows); 0 = the tuned defaults. set_stream_ahead,
// to compare.
inline std::atomic<int64_t>& stream_ahead_flag() {
  static std::atomic<int64_t> ahead{0};
  return ahead;
}
inline int64_t stream_ahead() { return stream_ahead_flag().load(std::memory_order_relaxed); }

class WeightReuse {
 public:
  explicit WeightReuse(int64_t llc) : budget_(llc / 2) {}

  // Whether the call reading `nbytes` of weights keyed by `key` (W's data pointer) should prefetch them; records the
  // read. ~30 ns (one uncontended lock, one table line) against the 5-5000 us of the call.
  bool should_prefetch(const void* key, int64_t nbytes) {
    const PrefetchMode mode = mode_.load(std::memory_order_relaxed);
    if (mode != PrefetchMode::kAuto) return mode == PrefetchMode::kAlways;
    // try-lock: a call that finds another thread deciding prefetches unrecorded rather than waits (and a child forked
    // while the lock was held cannot deadlock here)
    std::unique_lock<std::mutex> lock(mu_, std::try_to_lock);
    if (!lock.owns_lock()) return true;
    Entry& e = table_[slot(key)];
    // keyed by W alone: the same W with and without its adapter (or another rank) is the same W in the cache
    const bool cached = budget_ > 0 && e.key == key && clock_ - e.clock + nbytes <= budget_;
    clock_ += nbytes;
    e = Entry{key, clock_};
    ++calls_;
    prefetched_ += !cached;
    return !cached;
  }

  void set_mode(PrefetchMode m) { mode_.store(m, std::memory_order_relaxed); }
  int64_t budget() const { return budget_; }
  // (calls decided in auto mode, of which prefetched): for tests and benchmarks
  std::pair<int64_t, int64_t> counts() {
    std::lock_guard<std::mutex> lock(mu_);
    return {calls_, prefetched_};
  }

 private:
  struct Entry {
    const void* key = nullptr;
    int64_t clock = 0;  // clock_ just after this weight's last read
  };
  // 1024 slots: a 30-layer model has ~210 weight matrices, so collisions are rare (and only ever cost a prefetch)
  static constexpr int kSlots = 1024;
  static int slot(const void* key) {
    const uint64_t h = (reinterpret_cast<uintptr_t>(key) >> 6) * 0x9E3779B97F4A7C15ull;
    return static_cast<int>(h >> 54);  // top 10 bits
  }

  const int64_t budget_;
  std::atomic<PrefetchMode> mode_{PrefetchMode::kAuto};
  std::mutex mu_;
  std::array<Entry, kSlots> table_{};
  int64_t clock_ = 0;  // weight bytes read by all calls so far
  int64_t calls_ = 0, prefetched_ = 0;
};

// The process-wide tracker (one LLC, shared by every thread that calls lora_linear).
inline WeightReuse& weight_reuse() {
  static WeightReuse tracker(llc_bytes_sysfs());
  return tracker;
}

}  // namespace duomem
