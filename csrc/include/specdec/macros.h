// Portability macros for the torch-free headers shared by CPU and CUDA code.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SPECDEC_HOST_DEVICE __host__ __device__
#define SPECDEC_INLINE __forceinline__
#else
#define SPECDEC_HOST_DEVICE
#define SPECDEC_INLINE inline
#endif
