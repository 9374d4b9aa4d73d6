// Device-side validation, host-side exceptions.
//
// The CUDA kernels validate their index and probability inputs on the device
// and record failures in a small error tensor, so that nothing is read back in
// the middle of the work.  In eager mode the launcher then copies that record
// to the host (one stream synchronisation) and raises; while the stream is
// being captured into a CUDA graph the copy is skipped (a graph cannot
// synchronise), and the kernels guarantee that an invalid input writes
// nothing harmful.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>

#include <cuda_runtime.h>

#include <optional>

namespace specdec {

// The error record on the host, or nothing while `stream` is being captured.
inline std::optional<at::Tensor> eager_errors(const at::Tensor& device_errors, cudaStream_t stream) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  if (capture != cudaStreamCaptureStatusNone) return std::nullopt;
  return device_errors.to(at::kCPU);  // synchronises with the stream
}

}  // namespace specdec
