// The one idiom for turning a runtime value into a compile-time constant in the
// CUDA launchers: a macro takes the runtime value, the constant's name, the
// cases, and a lambda that uses the constant; it calls the lambda with the
// constant bound to the matching case, e.g.
//
//   SPECDEC_KIND_SWITCH(q.scalar_type(), kKind, [&] {
//     SPECDEC_HEAD_DIM_SWITCH(s.dim, kMaxD, [&] {
//       SPECDEC_BOOL_SWITCH(paged, kPaged, [&] { launch<kKind, kMaxD, kPaged>(...); });
//     });
//   });
//
// The caller's checks have already rejected every value outside the cases, so
// the last case also takes what matches no other.
#pragma once

#include <ATen/core/ScalarType.h>

#include "specdec/attention_rules.h"
#include "specdec/kernel_ctx.h"

#define SPECDEC_BOOL_SWITCH(COND, NAME, ...) \
  [&] {                                      \
    if (COND) {                              \
      static constexpr bool NAME = true;     \
      return __VA_ARGS__();                  \
    } else {                                 \
      static constexpr bool NAME = false;    \
      return __VA_ARGS__();                  \
    }                                        \
  }()

#define SPECDEC_SWITCH3(VALUE, NAME, C0, C1, C2, ...) \
  [&] {                                               \
    const auto specdec_value_ = (VALUE);              \
    if (specdec_value_ == (C0)) {                     \
      static constexpr auto NAME = (C0);              \
      return __VA_ARGS__();                           \
    } else if (specdec_value_ == (C1)) {              \
      static constexpr auto NAME = (C1);              \
      return __VA_ARGS__();                           \
    } else {                                          \
      static constexpr auto NAME = (C2);              \
      return __VA_ARGS__();                           \
    }                                                 \
  }()

#define SPECDEC_SWITCH4(VALUE, NAME, C0, C1, C2, C3, ...) \
  [&] {                                                   \
    const auto specdec_value_ = (VALUE);                  \
    if (specdec_value_ == (C0)) {                         \
      static constexpr auto NAME = (C0);                  \
      return __VA_ARGS__();                               \
    } else if (specdec_value_ == (C1)) {                  \
      static constexpr auto NAME = (C1);                  \
      return __VA_ARGS__();                               \
    } else if (specdec_value_ == (C2)) {                  \
      static constexpr auto NAME = (C2);                  \
      return __VA_ARGS__();                               \
    } else {                                              \
      static constexpr auto NAME = (C3);                  \
      return __VA_ARGS__();                               \
    }                                                     \
  }()

namespace specdec::kernel {
// float32 / float16 / bfloat16 -> the kernels' element kind.
inline int kind_of(at::ScalarType t) { return t == at::kFloat ? kF32 : t == at::kHalf ? kF16 : kBF16; }
}  // namespace specdec::kernel

// A float dtype -> its kernel::Kind (kF32, kF16, kBF16).
#define SPECDEC_KIND_SWITCH(DTYPE, NAME, ...)                                                                          \
  SPECDEC_SWITCH3(::specdec::kernel::kind_of(DTYPE), NAME, int{::specdec::kernel::kF32}, int{::specdec::kernel::kF16}, \
                  int{::specdec::kernel::kBF16}, __VA_ARGS__)

// A head dimension -> its kernel bucket 64 / 128 / 256 (attention::head_dim_bucket).
#define SPECDEC_HEAD_DIM_SWITCH(DIM, NAME, ...) \
  SPECDEC_SWITCH3(::specdec::attention::head_dim_bucket(DIM), NAME, 64, 128, 256, __VA_ARGS__)
