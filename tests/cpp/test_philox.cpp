// specdec/philox.h: Philox4x32-10 known answers, and the uniform() stream.
#include <gtest/gtest.h>

#include <cstdint>
#include <set>

#include "specdec/philox.h"

namespace {

using specdec::philox::U32x2;
using specdec::philox::U32x4;

struct Kat {
  U32x4 ctr;
  U32x2 key;
  U32x4 expected;
};

// The "philox4x32 10" known-answer vectors of Random123's tests/kat_vectors
// (columns: CTR[4] KEY[2] EXPECTED[4]), as cut and pasted from that file into
// DEShawResearch/Random123-Boost, libs/random/test/test_philox.cpp
// (test_kat_philox4x32, commit 916db91ae4c6fd8324ef054a518851321ab41f91):
//
//   00000000 00000000 00000000 00000000 00000000 00000000   6627e8d5 e169c58d bc57ac4c 9b00dbd8
//   ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff   408f276d 41c83b0e a20bc7c6 6d5451fd
//   243f6a88 85a308d3 13198a2e 03707344 a4093822 299f31d0   d16cfe09 94fdcceb 5001e420 24126ea1
const Kat kKats[] = {
    {{{0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u}},
     {{0x00000000u, 0x00000000u}},
     {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}}},
    {{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}},
     {{0xffffffffu, 0xffffffffu}},
     {{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}}},
    {{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
     {{0xa4093822u, 0x299f31d0u}},
     {{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}}},
};

TEST(Philox, KnownAnswerVectors) {
  for (const Kat& k : kKats) {
    const U32x4 out = specdec::philox::philox4x32_10(k.ctr, k.key);
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(out.v[i], k.expected.v[i]) << "word " << i << " of ctr " << std::hex << k.ctr.v[0];
    }
  }
}

TEST(Philox, UniformIsTheStreamDefinition) {
  // uniform(seed, offset, index) = to_unit_double of the first two output words
  // of Philox4x32-10 at key (seed lo, seed hi), counter (index lo, hi, offset lo, hi).
  const uint64_t seed = 0x299f31d0a4093822ull;
  const uint64_t offset = 0x0370734413198a2eull;
  const uint64_t index = 0x85a308d3243f6a88ull;
  const Kat& k = kKats[2];  // exactly this counter and key
  EXPECT_EQ(specdec::philox::uniform(seed, offset, index),
            specdec::philox::to_unit_double(k.expected.v[0], k.expected.v[1]));
}

TEST(Philox, ToUnitDoubleRange) {
  EXPECT_EQ(specdec::philox::to_unit_double(0u, 0u), 0.0);
  const double top = specdec::philox::to_unit_double(0xffffffffu, 0xffffffffu);
  EXPECT_LT(top, 1.0);
  EXPECT_EQ(top, 1.0 - 1.0 / 9007199254740992.0);  // 1 - 2^-53
  // 2^-53 resolution: the lowest kept bit of b (bit 6) is one ulp of the grid.
  EXPECT_EQ(specdec::philox::to_unit_double(0u, 1u << 6), 1.0 / 9007199254740992.0);
  EXPECT_EQ(specdec::philox::to_unit_double(0u, (1u << 6) - 1), 0.0);
  EXPECT_EQ(specdec::philox::to_unit_double(1u << 31, 0u), 0.5);
}

TEST(Philox, UniformInUnitIntervalAndDeterministic) {
  const uint64_t seeds[] = {0ull, 1ull, 0xffffffffull, 0x100000000ull, ~0ull, 0x8000000000000000ull};
  for (uint64_t seed : seeds) {
    for (uint64_t offset : {0ull, 7ull, ~0ull}) {
      for (uint64_t index = 0; index < 1000; ++index) {
        const double u = specdec::philox::uniform(seed, offset, index);
        ASSERT_GE(u, 0.0);
        ASSERT_LT(u, 1.0);
        ASSERT_EQ(u, specdec::philox::uniform(seed, offset, index));
      }
    }
  }
}

TEST(Philox, DiffersAcrossSeedsOffsetsAndIndices) {
  // Every coordinate, low and high word, changes the value.  With 53 random bits
  // a collision among these few hundred values would be a bug, not bad luck.
  std::set<double> seen;
  int count = 0;
  for (uint64_t s : {0ull, 1ull, 2ull, 1ull << 32, 1ull << 63}) {
    for (uint64_t o : {0ull, 1ull, 2ull, 1ull << 32, 1ull << 63}) {
      for (uint64_t i : {0ull, 1ull, 2ull, 1ull << 32, 1ull << 63}) {
        seen.insert(specdec::philox::uniform(s, o, i));
        ++count;
      }
    }
  }
  EXPECT_EQ(static_cast<int>(seen.size()), count);
  EXPECT_NE(specdec::philox::uniform(1, 0, 0), specdec::philox::uniform(2, 0, 0));
  EXPECT_NE(specdec::philox::uniform(1, 0, 0), specdec::philox::uniform(1, 1, 0));
  EXPECT_NE(specdec::philox::uniform(1, 0, 0), specdec::philox::uniform(1, 0, 1));
}

TEST(Philox, MeanAndVariance) {
  // Crude moments over 1e6 uniforms of one stream: the standard errors are
  // about 2.9e-4 (mean) and 2.7e-4 (variance), so 0.002 is about 7 sigma.
  constexpr int kN = 1000000;
  double sum = 0.0;
  double sum_sq = 0.0;
  for (int i = 0; i < kN; ++i) {
    const double u = specdec::philox::uniform(20240601ull, 3ull, static_cast<uint64_t>(i));
    sum += u;
    sum_sq += u * u;
  }
  const double mean = sum / kN;
  const double var = sum_sq / kN - mean * mean;
  EXPECT_NEAR(mean, 0.5, 0.002);
  EXPECT_NEAR(var, 1.0 / 12.0, 0.002);
}

}  // namespace
