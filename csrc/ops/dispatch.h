// Dtype dispatch in one place: the float types the K/V and attention kernels
// accept (float32, float16, bfloat16) and nothing else, so no kernel is
// compiled for a dtype the argument checks reject.
#pragma once

#include <ATen/Dispatch.h>

#define SPECDEC_DISPATCH_KV_TYPES(TYPE, NAME, ...)                                                      \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                                                        \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) \
                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))
