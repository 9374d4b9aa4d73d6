// Philox4x32-10: the counter-based random number generator of the project.
//
// No torch here and no std:: containers: plain integers only, so the CPU
// kernels, the CUDA kernels and the C++ tests draw the very same numbers.
//
// Philox4x32-10 is the generator of Salmon, Moraes, Dror and Shaw, "Parallel
// Random Numbers: As Easy as 1, 2, 3" (SC'11), as in Random123: a 128-bit
// counter (4 x uint32) and a 64-bit key (2 x uint32) map to 128 random bits
// through 10 rounds of
//
//   (hi0, lo0) = mulhilo(0xD2511F53, ctr[0])
//   (hi1, lo1) = mulhilo(0xCD9E8D57, ctr[2])
//   ctr        = {hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0}
//
// with the key bumped by the Weyl increments (0x9E3779B9, 0xBB67AE85), mod
// 2^32, between consecutive rounds (the first round uses the key as given).
// mulhilo(a, b) is the high and low 32-bit word of the 64-bit product a * b.
//
// The project's stream definition:
//
//   double uniform(uint64_t seed, uint64_t offset, uint64_t index)
//     = Philox4x32-10 with key     = (seed low 32 bits, seed high 32 bits)
//                     and counter = (index low, index high, offset low, offset high);
//       result = to_unit_double(out[0], out[1]).
//
// Each (seed, offset) pair is one stream; `index` enumerates the uniforms inside
// it.  Different rows use different seeds (or offsets), so they never share a
// stream.  specdec_cuda/_philox.py is a pure-PyTorch twin that produces
// bit-identical results.
#pragma once

#include <cstdint>

#include "specdec/macros.h"

namespace specdec::philox {

struct U32x4 {
  uint32_t v[4];
};

struct U32x2 {
  uint32_t v[2];
};

constexpr uint32_t kMul0 = 0xD2511F53u;
constexpr uint32_t kMul1 = 0xCD9E8D57u;
constexpr uint32_t kWeyl0 = 0x9E3779B9u;
constexpr uint32_t kWeyl1 = 0xBB67AE85u;

// High and low 32-bit words of the 64-bit product a * b.
SPECDEC_HOST_DEVICE SPECDEC_INLINE uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
#ifdef __CUDA_ARCH__
  *hi = __umulhi(a, b);
  return a * b;
#else
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
#endif
}

// One Philox4x32 round with the round key `key`.
SPECDEC_HOST_DEVICE SPECDEC_INLINE U32x4 philox4x32_round(U32x4 ctr, U32x2 key) {
  uint32_t hi0;
  uint32_t hi1;
  const uint32_t lo0 = mulhilo(kMul0, ctr.v[0], &hi0);
  const uint32_t lo1 = mulhilo(kMul1, ctr.v[2], &hi1);
  U32x4 out;
  out.v[0] = hi1 ^ ctr.v[1] ^ key.v[0];
  out.v[1] = lo1;
  out.v[2] = hi0 ^ ctr.v[3] ^ key.v[1];
  out.v[3] = lo0;
  return out;
}

// Philox4x32 with 10 rounds: 128 random bits for (ctr, key).
SPECDEC_HOST_DEVICE SPECDEC_INLINE U32x4 philox4x32_10(U32x4 ctr, U32x2 key) {
  ctr = philox4x32_round(ctr, key);
  for (int r = 1; r < 10; ++r) {
    key.v[0] += kWeyl0;  // unsigned: wraps mod 2^32
    key.v[1] += kWeyl1;
    ctr = philox4x32_round(ctr, key);
  }
  return ctr;
}

// A uniform double in [0, 1) with 53 random bits: the top 27 bits of `a` and
// the top 26 bits of `b`.  Every step is exact in double precision.
SPECDEC_HOST_DEVICE SPECDEC_INLINE double to_unit_double(uint32_t a, uint32_t b) {
  return (static_cast<double>(a >> 5) * 67108864.0 + static_cast<double>(b >> 6)) * (1.0 / 9007199254740992.0);
}

// The uniform number `index` of the stream (seed, offset); see the header comment.
SPECDEC_HOST_DEVICE SPECDEC_INLINE double uniform(uint64_t seed, uint64_t offset, uint64_t index) {
  U32x4 ctr;
  ctr.v[0] = static_cast<uint32_t>(index);
  ctr.v[1] = static_cast<uint32_t>(index >> 32);
  ctr.v[2] = static_cast<uint32_t>(offset);
  ctr.v[3] = static_cast<uint32_t>(offset >> 32);
  U32x2 key;
  key.v[0] = static_cast<uint32_t>(seed);
  key.v[1] = static_cast<uint32_t>(seed >> 32);
  const U32x4 out = philox4x32_10(ctr, key);
  return to_unit_double(out.v[0], out.v[1]);
}

}  // namespace specdec::philox
