// What the CUDA kernels written as host/device templates share: fp16 / bf16
// bit conversions that round the same way on both sides, a 16-byte chunk, and
// the device context (thread and block indices, shared memory, barriers,
// shuffles, mma, cp.async) through which a kernel body reaches the hardware.
// tests/cpp/cuda_emulator.h supplies the host context with the same members, so
// the same kernel source runs on machines without a GPU.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "specdec/macros.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

#if defined(__CUDA_ARCH__)  // the device pass only: the host compiler does not know it
#define SPECDEC_UNROLL _Pragma("unroll")
#else
#define SPECDEC_UNROLL
#endif

namespace specdec::kernel {

// ---------------------------------------------------------------------------
// fp16 / bf16 bits <-> float, round to nearest even, the same on both sides.
// ---------------------------------------------------------------------------
#if defined(__CUDA_ARCH__)
template <bool kBf16>
__device__ __forceinline__ float to_float(uint16_t h) {
  if constexpr (kBf16) {
    return __uint_as_float(static_cast<uint32_t>(h) << 16);
  } else {
    return __half2float(__ushort_as_half(h));
  }
}
template <bool kBf16>
__device__ __forceinline__ uint16_t from_float(float x) {
  if constexpr (kBf16) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(x));
  } else {
    return __half_as_ushort(__float2half_rn(x));
  }
}
#else
template <bool kBf16>
inline float to_float(uint16_t h) {
  uint32_t bits;
  if constexpr (kBf16) {
    bits = static_cast<uint32_t>(h) << 16;
  } else {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0) {
      const float f = std::ldexp(static_cast<float>(man), -24);  // zero or subnormal
      return sign ? -f : f;
    }
    bits = sign | (exp == 31 ? 0x7f800000u | (man << 13) : ((exp + 112u) << 23) | (man << 13));
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
template <bool kBf16>
inline uint16_t from_float(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  if constexpr (kBf16) {
    if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);  // quiet NaN
    return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
  } else {
    const uint32_t sign = (bits >> 16) & 0x8000u, mag = bits & 0x7fffffffu;
    if (mag > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);
    if (mag >= 0x47800000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 2^16: inf
    if (mag < 0x38800000u) {                                               // below 2^-14: subnormal
      float a;
      std::memcpy(&a, &mag, 4);
      return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(a * 16777216.0f)));
    }
    uint32_t h = ((mag >> 23) - 112u) << 10 | ((mag >> 13) & 0x3ffu);
    const uint32_t rest = mag & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry rounds into the exponent
    return static_cast<uint16_t>(sign | h);
  }
}
#endif

template <bool kBf16>
SPECDEC_HOST_DEVICE SPECDEC_INLINE uint32_t pack2(float lo, float hi) {
  return static_cast<uint32_t>(from_float<kBf16>(lo)) | (static_cast<uint32_t>(from_float<kBf16>(hi)) << 16);
}

// Element kinds of the kernels' float inputs, and loads / stores by kind.
enum Kind : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

template <int kKind>
SPECDEC_HOST_DEVICE SPECDEC_INLINE float load(const void* base, int64_t i) {
  if constexpr (kKind == kF32) {
    return static_cast<const float*>(base)[i];
  } else {
    return to_float<kKind == kBF16>(static_cast<const uint16_t*>(base)[i]);
  }
}

template <int kKind>
SPECDEC_HOST_DEVICE SPECDEC_INLINE void store(void* base, int64_t i, float x) {
  if constexpr (kKind == kF32) {
    static_cast<float*>(base)[i] = x;
  } else {
    static_cast<uint16_t*>(base)[i] = from_float<kKind == kBF16>(x);
  }
}

struct alignas(16) Chunk16 {
  uint32_t w[4];
};

#if defined(__CUDACC__)
// The hardware context.  mma.m16n8k16 and cp.async need sm_80.
struct DeviceCtx {
  __device__ __forceinline__ int thread() const { return static_cast<int>(threadIdx.x); }
  __device__ __forceinline__ int64_t block_x() const { return blockIdx.x; }
  __device__ __forceinline__ int64_t block_y() const { return blockIdx.y; }
  __device__ __forceinline__ int64_t block_z() const { return blockIdx.z; }
  __device__ __forceinline__ int block_dim() const { return static_cast<int>(blockDim.x); }
  __device__ __forceinline__ int64_t grid_dim_x() const { return gridDim.x; }
  __device__ __forceinline__ void atomic_min(long long* addr, long long v) const { atomicMin(addr, v); }
  __device__ __forceinline__ unsigned char* shared() const {
    extern __shared__ __align__(16) unsigned char specdec_dynamic_smem[];
    return specdec_dynamic_smem;
  }
  __device__ __forceinline__ void sync() const { __syncthreads(); }
  // Whole-warp shuffles of 4- or 8-byte values (float, double, int64_t).
  template <typename T>
  __device__ __forceinline__ T shfl_xor(T x, int lane_mask) const {
    return __shfl_xor_sync(0xffffffffu, x, lane_mask);
  }
  template <typename T>
  __device__ __forceinline__ T shfl_up(T x, unsigned delta) const {
    return __shfl_up_sync(0xffffffffu, x, delta);
  }
  __device__ __forceinline__ unsigned long long atomic_cas(unsigned long long* addr, unsigned long long expected,
                                                           unsigned long long desired) const {
    return atomicCAS(addr, expected, desired);
  }
  // 16 bytes global -> shared, asynchronous; zeros when !valid (src is not read).
  __device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(src), "r"(valid ? 16 : 0));
#else
    __trap();
#endif
  }
  __device__ __forceinline__ void cp_async_commit() const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
  }
  // Waits until at most `kPending` of this thread's committed groups are in flight.
  template <int kPending>
  __device__ __forceinline__ void cp_async_wait() const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
#endif
  }
  template <bool kBf16>
  __device__ __forceinline__ void mma(float d[4], const uint32_t a[4], const uint32_t b[2]) const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if constexpr (kBf16) {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
          "{%0,%1,%2,%3};\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
          "{%0,%1,%2,%3};\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
#else
    __trap();  // the launcher only selects this kernel on sm_80 and newer
#endif
  }
};
#endif

}  // namespace specdec::kernel
