// Two parallel-fors: a barrier-free pool for decode-sized kernels on a shared CPU, and ATen's own threads for work
// that sits between ATen's parallel ops.
//
// Why not OpenMP: an omp region ends in a barrier, so a 30 us GEMV waits for every thread of the team to be
// scheduled. On a loaded 2-core box (load average 8 while five engineers test) that wait is a scheduler slice:
// measured median 31 ms instead of 39 us for 576x1536 at M=1 with 2 omp threads (1 thread: 62 us).
// Here the caller claims chunks itself and helpers join only if they are awake; the caller never waits for a helper
// that has not claimed work, so the worst case is the single-thread time. Helpers spin ~100 us after a job (decode
// calls arrive back to back), then sleep on a futex (std::atomic::wait).
#pragma once

#include <ATen/Parallel.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#define DUOMEM_PAUSE() _mm_pause()
#else
#define DUOMEM_PAUSE() std::this_thread::yield()
#endif

namespace duomem {

class ChunkPool {
 public:
  explicit ChunkPool(int helpers) : pid_(getpid()) {
    for (int i = 0; i < helpers; ++i) threads_.emplace_back([this, i] { helper_loop(i); });
  }
  ~ChunkPool() {
    stop_.store(true);
    gen_.fetch_add(1);
    gen_.notify_all();
    for (auto& t : threads_) t.join();
  }
  int helpers() const { return static_cast<int>(threads_.size()); }
  pid_t pid() const { return pid_; }

  // Runs fn(i) for i in [0, n) on the caller and up to `active` helpers; returns when every chunk is done.
  void run(int64_t n, const std::function<void(int64_t)>& fn, int active) {
    std::unique_lock<std::mutex> lock(busy_, std::try_to_lock);
    if (!lock.owns_lock() || n <= 1 || threads_.empty()) {  // another caller holds the pool: run serially
      for (int64_t i = 0; i < n; ++i) fn(i);
      return;
    }
    fn_ = &fn;
    n_ = n;
    active_.store(active);
    done_.store(0);
    if (next_gen_ == 0) next_gen_ = 1;  // 0 is the idle tag
    const uint32_t g = next_gen_++;
    claim_.store(static_cast<uint64_t>(g) << 32);
    gen_.store(g);
    gen_.notify_all();
    work(g);
    while (done_.load() < n) DUOMEM_PAUSE();  // only chunks a running helper already claimed remain
    claim_.store(0);                          // generation 0 = idle: stale helpers cannot claim from here on
  }

 private:
  bool work(uint32_t g) {
    bool any = false;
    for (;;) {
      uint64_t c = claim_.load();
      if ((c >> 32) != g) return any;
      const int64_t idx = static_cast<int64_t>(c & 0xffffffffu);
      if (idx >= n_) return any;  // n_ is this job's: the caller rewrites it only after resetting claim_
      if (claim_.compare_exchange_weak(c, c + 1)) {
        (*fn_)(idx);
        done_.fetch_add(1);
        any = true;
      }
    }
  }

  void helper_loop(int index) {
    uint32_t seen = gen_.load();
    while (!stop_.load()) {
      auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(100);
      while (gen_.load() == seen) {
        for (int i = 0; i < 64 && gen_.load() == seen; ++i) DUOMEM_PAUSE();
        if (std::chrono::steady_clock::now() > until) {
          gen_.wait(seen);
          break;
        }
      }
      seen = gen_.load();
      if (!stop_.load() && index < active_.load()) work(seen);
    }
  }

  std::vector<std::thread> threads_;
  std::mutex busy_;
  std::atomic<uint32_t> gen_{0};
  std::atomic<uint64_t> claim_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<bool> stop_{false};
  std::atomic<int> active_{0};
  uint32_t next_gen_ = 1;
  int64_t n_ = 0;
  const std::function<void(int64_t)>* fn_ = nullptr;
  pid_t pid_;
};

// fn(i) for i in [0, n) over at::get_num_threads() threads (the caller plus helpers). The pool grows to the
// largest thread count asked for; a forked child (threads do not survive fork) gets a fresh pool.
inline void parallel_chunks(int64_t n, const std::function<void(int64_t)>& fn) {
  static ChunkPool* pool = nullptr;
  static std::mutex make;
  const int want = std::max(1, at::get_num_threads()) - 1;
  if (want == 0 || n <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  ChunkPool* p;
  {
    std::lock_guard<std::mutex> lock(make);
    // Grow or fork: a new pool; the old one is leaked (its helpers sleep), since another caller may still hold it.
    if (pool == nullptr || pool->pid() != getpid() || pool->helpers() < want) pool = new ChunkPool(want);
    p = pool;
  }
  p->run(n, fn, want);
}

// fn(i) for i in [0, n) on ATen's own (OpenMP) threads, each claiming items one by one. For kernels called between
// ATen's parallel ops, as our attention is in the eager layer loop of a prefill or an append (oneDNN GEMMs around
// it): libgomp's workers spin on after each region (GOMP_SPINCOUNT, ~300k pauses: milliseconds), so a pool of our
// own there shares the second core with a spinning worker. 2 threads, 60 tokens over 2,000 keys, 9/3 heads, D=64:
// the pool 4.1-4.6 ms, as on one thread (5.4); with OMP_WAIT_POLICY=PASSIVE the pool 2.7; here ~2.7 whatever the
// policy. Inside another parallel region it runs serially.
inline void parallel_items(int64_t n, const std::function<void(int64_t)>& fn) {
  const int64_t teams = std::min<int64_t>(n, std::max(1, at::get_num_threads()));
  if (teams <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, teams, 1, [&](int64_t, int64_t) {
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i);
  });
}

}  // namespace duomem
