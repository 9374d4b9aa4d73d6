// The CUDA KV-rollback kernel bodies (specdec/kv_compact_kernels.h), run on the
// host through the CUDA emulator (cuda_emulator.h), against the sequential
// definition: slot L + j receives old slot L + accept[j] for j < n, in that
// order, then cache_lens += n; a bad row changes nothing and is reported.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "cuda_emulator.h"
#include "specdec/kv_compact_kernels.h"

namespace {

namespace dev = specdec::kv::device;
namespace kv = specdec::kv;
using specdec::testing::EmuCtx;
using specdec::testing::EmulatedGrid;

template <int kBytes>
struct alignas(kBytes) Vec {
  unsigned char b[kBytes];
};

struct Problem {
  int64_t batch = 5, heads = 2, slots = 40, width = 6;
  int64_t row_bytes = 64;  // contiguous: one head's D * elem; paged: all heads
  int64_t tensors = 3;
  bool paged = false;
  int64_t page_size = 8;
};

struct State {
  std::vector<std::vector<unsigned char>> data;  // one buffer per tensor
  std::vector<int32_t> lens, accept, num, tables;
  int64_t max_blocks = 0, num_pages = 0, rows_per_seq = 0;
};

State make_state(const Problem& pb, std::mt19937& rng) {
  State st;
  st.rows_per_seq = pb.paged ? 1 : pb.heads;
  int64_t bytes;
  if (pb.paged) {
    st.max_blocks = pb.slots / pb.page_size;
    st.num_pages = pb.batch * st.max_blocks + 2;
    std::vector<int32_t> perm(st.num_pages);
    for (int64_t i = 0; i < st.num_pages; ++i) perm[i] = static_cast<int32_t>(i);
    std::shuffle(perm.begin(), perm.end(), rng);
    st.tables.assign(perm.begin(), perm.begin() + pb.batch * st.max_blocks);
    bytes = st.num_pages * pb.page_size * pb.row_bytes;
  } else {
    bytes = pb.batch * pb.heads * pb.slots * pb.row_bytes;
  }
  std::uniform_int_distribution<int> byte(0, 255);
  st.data.resize(pb.tensors);
  for (auto& d : st.data) {
    d.resize(bytes);
    for (auto& x : d) x = static_cast<unsigned char>(byte(rng));
  }
  // Valid rows: L + accept[n-1] < slots, accept strictly increasing from 0.
  st.accept.assign(pb.batch * pb.width, -7);  // entries past n are never read
  for (int64_t b = 0; b < pb.batch; ++b) {
    const int64_t n = rng() % (pb.width + 1);
    std::vector<int32_t> pick(pb.width);
    for (int64_t i = 0; i < pb.width; ++i) pick[i] = static_cast<int32_t>(i);
    std::shuffle(pick.begin() + 1, pick.end(), rng);  // node 0 (the root) always first
    std::sort(pick.begin(), pick.begin() + n);
    for (int64_t j = 0; j < n; ++j) st.accept[b * pb.width + j] = pick[j];
    st.num.push_back(static_cast<int32_t>(n));
    st.lens.push_back(static_cast<int32_t>(rng() % (pb.slots - pb.width + 1)));
  }
  return st;
}

// Byte offset of (tensor row r of sequence b, slot s).
int64_t offset(const Problem& pb, const State& st, int64_t b, int64_t r, int64_t s) {
  if (pb.paged) return kv::paged_offset(st.tables.data() + b * st.max_blocks, s, pb.page_size, pb.row_bytes);
  return ((b * pb.heads + r) * pb.slots + s) * pb.row_bytes;
}

void reference(const Problem& pb, State& st) {
  for (auto& d : st.data)
    for (int64_t b = 0; b < pb.batch; ++b)
      for (int64_t r = 0; r < st.rows_per_seq; ++r)
        for (int64_t j = 0; j < st.num[b]; ++j) {
          const int64_t L = st.lens[b];
          std::memmove(&d[offset(pb, st, b, r, L + j)], &d[offset(pb, st, b, r, L + st.accept[b * pb.width + j])],
                       pb.row_bytes);
        }
  for (int64_t b = 0; b < pb.batch; ++b) st.lens[b] += st.num[b];
}

// Both kernels as the CUDA launcher runs them; returns the status record.
template <int kVec>
specdec::ErrorRecord run(const Problem& pb, State& st, int copy_blocks, int copy_threads) {
  std::vector<int32_t> base(pb.batch, -1);
  specdec::ErrorRecord status = specdec::make_error(-1, -1, -1, -1);
  const int64_t capacity = pb.paged ? st.max_blocks * pb.page_size : pb.slots;
  dev::ValidateArgs va{st.lens.data(), st.accept.data(), st.num.data(), pb.paged ? st.tables.data() : nullptr,
                       pb.batch,       pb.width,         capacity,      pb.paged,
                       true,           pb.page_size,     st.num_pages,  st.max_blocks,
                       base.data(),    &status};
  EmulatedGrid one(dev::kThreads, dev::kValidateSmem);
  one.launch(1, 1, 1, [&](const EmuCtx& ctx) { dev::validate_and_advance(ctx, va); });
  dev::TensorPtrs ptrs{};
  for (int64_t t = 0; t < pb.tensors; ++t) ptrs.ptr[t] = reinterpret_cast<char*>(st.data[t].data());
  const dev::RowArgs args{
      st.accept.data(), st.num.data(),   base.data(),  &status,  pb.batch,
      pb.width,         st.rows_per_seq, pb.row_bytes, pb.slots, pb.paged ? st.tables.data() : nullptr,
      st.max_blocks,    pb.page_size};
  EmulatedGrid grid(copy_threads, 0);
  grid.launch(copy_blocks, 1, 1, [&](const EmuCtx& ctx) {
    if (pb.paged) {
      dev::copy_accepted<EmuCtx, Vec<kVec>, true>(ctx, ptrs, pb.tensors, args);
    } else {
      dev::copy_accepted<EmuCtx, Vec<kVec>, false>(ctx, ptrs, pb.tensors, args);
    }
  });
  return status;
}

template <int kVec>
void expect_matches(const Problem& pb, uint32_t seed, int copy_blocks = 3, int copy_threads = 64) {
  std::mt19937 rng(seed);
  State got = make_state(pb, rng), want = got;
  reference(pb, want);
  const specdec::ErrorRecord status = run<kVec>(pb, got, copy_blocks, copy_threads);
  EXPECT_EQ(status.code, specdec::kOk);
  EXPECT_EQ(got.lens, want.lens);
  for (int64_t t = 0; t < pb.tensors; ++t) EXPECT_TRUE(got.data[t] == want.data[t]) << "tensor " << t;
}

TEST(KvCompactEmulated, ContiguousEveryVectorWidth) {
  Problem pb;
  pb.row_bytes = 64;
  expect_matches<16>(pb, 1);
  pb.row_bytes = 24;
  expect_matches<8>(pb, 2);
  pb.row_bytes = 12;
  expect_matches<4>(pb, 3);
  pb.row_bytes = 6;
  expect_matches<2>(pb, 4);
}

TEST(KvCompactEmulated, PagedShuffledPages) {
  Problem pb;
  pb.paged = true;
  pb.row_bytes = 2 * 32;  // two heads of 16 fp16 values per token
  pb.page_size = 8;
  expect_matches<16>(pb, 5);
  pb.page_size = 1;
  expect_matches<16>(pb, 6);
}

TEST(KvCompactEmulated, WideTreesAndGridStride) {
  Problem pb;
  pb.batch = 300;  // more rows than the validating block has threads
  pb.width = 17;   // groups of 4 with a remainder
  pb.slots = 64;
  pb.tensors = 2;
  pb.row_bytes = 32;
  expect_matches<16>(pb, 7, /*copy_blocks=*/2, /*copy_threads=*/32);  // far fewer threads than items
}

TEST(KvCompactEmulated, BadRowChangesNothingAndReportsTheFirst) {
  Problem pb;
  std::mt19937 rng(8);
  State st = make_state(pb, rng);
  // Row 3: num 3 with accept [0, 2, 2] (not increasing at j 2); row 4: cache_lens past the cache.
  st.num[3] = 3;
  st.accept[3 * pb.width + 0] = 0;
  st.accept[3 * pb.width + 1] = 2;
  st.accept[3 * pb.width + 2] = 2;
  st.lens[4] = static_cast<int32_t>(pb.slots + 1);
  const State before = st;
  const specdec::ErrorRecord status = run<16>(pb, st, 3, 64);
  EXPECT_EQ(status.code, kv::kAcceptNotIncreasing);
  EXPECT_EQ(status.row, 3);
  EXPECT_EQ(status.where, 2);
  EXPECT_EQ(status.value, 2);
  EXPECT_EQ(st.lens, before.lens);
  for (int64_t t = 0; t < pb.tensors; ++t) EXPECT_TRUE(st.data[t] == before.data[t]);
}

TEST(KvCompactEmulated, PagedRepeatedPageIsRejected) {
  Problem pb;
  pb.paged = true;
  pb.page_size = 4;
  std::mt19937 rng(9);
  State st = make_state(pb, rng);
  // Row 0 writes slots [L, L + accept[n-1]] across two blocks that share a page.
  st.lens[0] = 2;
  st.num[0] = 2;
  st.accept[0] = 0;
  st.accept[1] = 5;
  st.tables[1] = st.tables[0];
  const State before = st;
  const specdec::ErrorRecord status = run<16>(pb, st, 3, 64);
  EXPECT_EQ(status.code, kv::kBlockRepeated);
  EXPECT_EQ(status.row, 0);
  EXPECT_EQ(st.lens, before.lens);
  for (int64_t t = 0; t < pb.tensors; ++t) EXPECT_TRUE(st.data[t] == before.data[t]);
}

}  // namespace

namespace {

TEST(KvCompactEmulated, PagedPageSharedAcrossRowsIsRejected) {
  Problem pb;
  pb.paged = true;
  pb.page_size = 4;
  std::mt19937 rng(10);
  State st = make_state(pb, rng);
  // Rows 0 and 1 each touch their first block; row 1's is row 0's page.
  for (int64_t b : {0, 1}) {
    st.lens[b] = 0;
    st.num[b] = 1;
    st.accept[b * pb.width] = 0;
  }
  st.tables[1 * st.max_blocks] = st.tables[0];
  const State before = st;
  const specdec::ErrorRecord status = run<16>(pb, st, 3, 64);
  EXPECT_EQ(status.code, kv::kPageShared);
  EXPECT_EQ(status.row, 1);
  EXPECT_EQ(status.where, 0);
  EXPECT_EQ(st.lens, before.lens);
  for (int64_t t = 0; t < pb.tensors; ++t) EXPECT_TRUE(st.data[t] == before.data[t]);
}

}  // namespace
