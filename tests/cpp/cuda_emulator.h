// A host emulator for the CUDA kernels written against specdec/kernel_ctx.h
// (the tree-attention kernels), so that the tensor-core kernel's own source runs
// (and is checked) on machines without a GPU.
//
// Each CUDA thread of a block is a std::thread running the kernel body; the
// blocks of a grid run one after another on the same threads.  sync() is a
// barrier over the block, shfl_xor() and mma() are barriers over the warp with
// an exchange through memory, so a missing or divergent barrier shows up as a
// deadlock, which the barrier reports (abort with a message) after a timeout.
// Shared memory is refilled with a NaN pattern before each block: a read of a
// shared element nobody wrote turns into NaN in the outputs.  cp.async
// destinations are poisoned at issue and filled when cp_async_wait retires
// their group (see cp_async16).
//
// mma() implements mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16} from the
// fragment tables of the PTX ISA ("Matrix Fragments for mma.m16n8k16 with
// floating point type"), with lane = 4 * groupID + threadID_in_group:
//   A: a_i (i = 0..7, two per 32-bit register, low half first)
//        row = groupID (+8 for i in {2,3,6,7}), col = 2 * tig + (i & 1) (+8 for i >= 4)
//   B: b_i (i = 0..3)  row = 2 * tig + (i & 1) (+8 for i >= 2), col = groupID
//   C/D: c_i (i = 0..3) row = groupID (+8 for i >= 2), col = 2 * tig + (i & 1)
// Products are exact (in double) and summed before one rounding to float; the
// hardware's internal accumulation order may differ in the last bits.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "specdec/kernel_ctx.h"

namespace specdec::testing {

// A reusable barrier that aborts (with `what`) instead of hanging forever.
class Barrier {
 public:
  Barrier(int count, const char* what) : count_(count), what_(what) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t gen = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    if (!cv_.wait_for(lock, std::chrono::seconds(120), [&] { return generation_ != gen; })) {
      std::fprintf(stderr, "mma emulator: %s barrier deadlocked (divergent sync/shuffle/mma?)\n", what_);
      std::abort();
    }
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int count_, arrived_ = 0;
  uint64_t generation_ = 0;
  const char* what_;
};

class EmulatedGrid;

// The context the kernel body sees: one per emulated thread.
struct EmuCtx {
  EmulatedGrid* grid;
  int tid;
  int64_t bx = 0, by = 0, bz = 0;
  int thread() const { return tid; }
  int64_t block_x() const { return bx; }
  int64_t block_y() const { return by; }
  int64_t block_z() const { return bz; }
  int block_dim() const;
  int64_t grid_dim_x() const;
  void atomic_min(long long* addr, long long v) const;
  unsigned char* shared() const;
  void sync() const;
  void cp_async16(void* dst, const void* src, bool valid) const;
  void cp_async_commit() const;
  template <int kPending>
  void cp_async_wait() const;
  template <typename T>
  T shfl_xor(T x, int lane_mask) const;
  template <typename T>
  T shfl_up(T x, unsigned delta) const;
  unsigned long long atomic_cas(unsigned long long* addr, unsigned long long expected,
                                unsigned long long desired) const;
  template <bool kBf16>
  void mma(float d[4], const uint32_t a[4], const uint32_t b[2]) const;
};

class EmulatedGrid {
 public:
  EmulatedGrid(int threads, size_t smem_bytes) : threads_(threads), smem_(smem_bytes + 16), block_(threads, "block") {
    for (int w = 0; w < (threads + 31) / 32; ++w) warps_.emplace_back(std::make_unique<Barrier>(32, "warp"));
    exchange_.resize(static_cast<size_t>(threads));
    async_.resize(static_cast<size_t>(threads));
  }

  // Runs body(ctx) for every block of a grid_x x grid_y x grid_z grid.
  void launch(int64_t grid_x, int64_t grid_y, int64_t grid_z, const std::function<void(const EmuCtx&)>& body) {
    grid_x_ = grid_x;
    std::vector<std::thread> pool;
    for (int t = 0; t < threads_; ++t) {
      pool.emplace_back([&, t] {
        EmuCtx ctx{this, t};
        for (int64_t z = 0; z < grid_z; ++z) {
          for (int64_t y = 0; y < grid_y; ++y) {
            for (int64_t x = 0; x < grid_x; ++x) {
              if (t == 0) poison_shared();
              block_.wait();  // the poison is in place before anyone starts
              ctx.bx = x;
              ctx.by = y;
              ctx.bz = z;
              body(ctx);
              async_[t] = AsyncQueue{};  // groups still in flight at exit are dropped
              block_.wait();             // everyone is done before the next block's poison
            }
          }
        }
      });
    }
    for (auto& th : pool) th.join();
  }

 private:
  friend struct EmuCtx;
  struct Lane {
    unsigned char value[8] = {};  // a shuffled float, double or int64
    uint32_t a[4] = {}, b[2] = {};
  };
  struct Copy {
    void* dst;
    const void* src;
    bool valid;
  };
  struct AsyncQueue {
    std::vector<Copy> open;                 // issued since the last commit
    std::vector<std::vector<Copy>> groups;  // committed, oldest first
  };

  void poison_shared() {
    const uint16_t nan_bits = 0x7e7e;  // a NaN in fp16, bf16 and (as 0x7e7e7e7e) fp32
    for (size_t i = 0; i + 1 < smem_.size(); i += 2) std::memcpy(&smem_[i], &nan_bits, 2);
  }
  unsigned char* shared_base() {  // 16-byte aligned, as extern __shared__ is
    const auto addr = reinterpret_cast<uintptr_t>(smem_.data());
    return smem_.data() + ((16 - addr % 16) % 16);
  }

  int threads_;
  std::vector<unsigned char> smem_;
  Barrier block_;
  std::vector<std::unique_ptr<Barrier>> warps_;
  std::vector<Lane> exchange_;
  std::vector<AsyncQueue> async_;
  int64_t grid_x_ = 1;
  std::mutex atomics_;
};

inline unsigned char* EmuCtx::shared() const { return grid->shared_base(); }
inline void EmuCtx::sync() const { grid->block_.wait(); }
inline int EmuCtx::block_dim() const { return grid->threads_; }
inline int64_t EmuCtx::grid_dim_x() const { return grid->grid_x_; }
inline void EmuCtx::atomic_min(long long* addr, long long v) const {
  std::lock_guard<std::mutex> lock(grid->atomics_);
  if (v < *addr) *addr = v;
}

// From issue to the wait that retires it, a cp.async destination is undefined:
// the hardware may write it at any moment.  The emulator poisons it at issue
// (a thread still reading the old contents without a barrier in between sees
// NaN, and ThreadSanitizer sees the write) and lands the data at the wait (a
// thread reading before its wait and barrier sees NaN).
inline void EmuCtx::cp_async16(void* dst, const void* src, bool valid) const {
  std::memset(dst, 0x7e, 16);
  grid->async_[tid].open.push_back({dst, src, valid});
}
inline void EmuCtx::cp_async_commit() const {
  auto& q = grid->async_[tid];
  q.groups.push_back(std::move(q.open));
  q.open.clear();
}
template <int kPending>
void EmuCtx::cp_async_wait() const {
  auto& q = grid->async_[tid];
  while (q.groups.size() > static_cast<size_t>(kPending)) {
    for (const auto& c : q.groups.front()) {
      if (c.valid) {
        std::memcpy(c.dst, c.src, 16);
      } else {
        std::memset(c.dst, 0, 16);
      }
    }
    q.groups.erase(q.groups.begin());
  }
}

template <typename T>
T EmuCtx::shfl_xor(T x, int lane_mask) const {
  static_assert(sizeof(T) <= 8, "shuffles move 4 or 8 bytes");
  Barrier& warp = *grid->warps_[tid / 32];
  const int base = tid - tid % 32;
  std::memcpy(grid->exchange_[tid].value, &x, sizeof(T));
  warp.wait();
  T r;
  std::memcpy(&r, grid->exchange_[base + ((tid % 32) ^ lane_mask)].value, sizeof(T));
  warp.wait();
  return r;
}

// Lanes below `delta` keep their own value, as __shfl_up_sync does.
template <typename T>
T EmuCtx::shfl_up(T x, unsigned delta) const {
  static_assert(sizeof(T) <= 8, "shuffles move 4 or 8 bytes");
  Barrier& warp = *grid->warps_[tid / 32];
  const int base = tid - tid % 32, lane = tid % 32;
  std::memcpy(grid->exchange_[tid].value, &x, sizeof(T));
  warp.wait();
  T r = x;
  if (lane >= static_cast<int>(delta)) std::memcpy(&r, grid->exchange_[base + lane - delta].value, sizeof(T));
  warp.wait();
  return r;
}

inline unsigned long long EmuCtx::atomic_cas(unsigned long long* addr, unsigned long long expected,
                                             unsigned long long desired) const {
  std::lock_guard<std::mutex> lock(grid->atomics_);
  const unsigned long long old = *addr;
  if (old == expected) *addr = desired;
  return old;
}

template <bool kBf16>
void EmuCtx::mma(float d[4], const uint32_t a[4], const uint32_t b[2]) const {
  using specdec::kernel::to_float;
  Barrier& warp = *grid->warps_[tid / 32];
  const int base = tid - tid % 32;
  std::memcpy(grid->exchange_[tid].a, a, sizeof(uint32_t) * 4);
  std::memcpy(grid->exchange_[tid].b, b, sizeof(uint32_t) * 2);
  warp.wait();
  // Rebuild A (16 x 16) and B (16 x 8) from the 32 lanes' fragments.
  double A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const int gid = lane / 4, tig = lane % 4;
    const auto& x = grid->exchange_[base + lane];
    for (int i = 0; i < 8; ++i) {
      const uint16_t bits = static_cast<uint16_t>(x.a[i / 2] >> (16 * (i & 1)));
      const int r = gid + ((i == 2 || i == 3 || i == 6 || i == 7) ? 8 : 0);
      const int col = 2 * tig + (i & 1) + (i >= 4 ? 8 : 0);
      A[r][col] = to_float<kBf16>(bits);
    }
    for (int i = 0; i < 4; ++i) {
      const uint16_t bits = static_cast<uint16_t>(x.b[i / 2] >> (16 * (i & 1)));
      B[2 * tig + (i & 1) + (i >= 2 ? 8 : 0)][gid] = to_float<kBf16>(bits);
    }
  }
  warp.wait();  // every lane has read the exchange before it is reused
  const int gid = (tid % 32) / 4, tig = tid % 4;
  for (int i = 0; i < 4; ++i) {
    const int r = gid + (i >= 2 ? 8 : 0), col = 2 * tig + (i & 1);
    double acc = d[i];
    for (int kk = 0; kk < 16; ++kk) acc += A[r][kk] * B[kk][col];
    d[i] = static_cast<float>(acc);
  }
}

}  // namespace specdec::testing
