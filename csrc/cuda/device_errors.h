// Device-side validation, host-side exceptions.
//
// The CUDA kernels validate their index and probability inputs on the device
// and write ErrorRecords (specdec/errors.h) into a small int64 tensor [R, 4], so
// that nothing is read back in the middle of the work.  In eager mode the
// launcher then copies the records to the host (one stream synchronisation) and
// raises the first one with the family's raise_<family>_error, exactly as the
// CPU kernel does; while the stream is being captured into a CUDA graph the copy
// is skipped (a graph cannot synchronise), and the kernels guarantee that an
// invalid input writes nothing harmful.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>

#include <cuda_runtime.h>

#include <optional>

#include "ops/checks.h"
#include "specdec/errors.h"

namespace specdec {

// `count` zeroed records (code kOk) on the device of `like`.
inline at::Tensor device_error_records(int64_t count, const at::TensorOptions& like) {
  return at::zeros({count, kErrorRecordWords}, like.dtype(at::kLong));
}

inline ErrorRecord* record_ptr(const at::Tensor& records) {
  return reinterpret_cast<ErrorRecord*>(records.data_ptr<int64_t>());
}

// In eager mode, read the records back and raise the first error with `raise`;
// nothing while `stream` is being captured.
template <class Raise>
void raise_device_errors(const at::Tensor& records, cudaStream_t stream, Raise raise) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  if (capture != cudaStreamCaptureStatusNone) return;
  const at::Tensor host = records.to(at::kCPU);  // synchronises with the stream
  raise_first_error(reinterpret_cast<const ErrorRecord*>(host.data_ptr<int64_t>()), host.size(0), raise);
}

}  // namespace specdec
