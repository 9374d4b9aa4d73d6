// The one error record of every kernel, CPU and CUDA (torch-free).
//
// Value checks that need the data (index ranges, parent arrays, NaN
// probabilities) run inside the kernels.  A kernel that finds an invalid row
// writes one ErrorRecord for it; the host then raises the first record whose
// code is not kOk (first_error), through the family's raise_<family>_error in
// csrc/ops/<family>.cpp, which knows what code, where and value mean.  On CUDA
// the records live in an int64 tensor [R, 4] (csrc/cuda/device_errors.h) that
// the launcher reads back in eager mode only.
#pragma once

#include <cstdint>
#include <cstring>

#include "specdec/macros.h"

namespace specdec {

// Every family numbers its error codes from 1; 0 means valid.
constexpr int64_t kOk = 0;

struct ErrorRecord {
  int64_t code;   // the family's error code (an enum of its *_rules.h), kOk if valid
  int64_t row;    // the batch row (sequence) the error is in
  int64_t where;  // the entry within the row: node, column, block or position
  int64_t value;  // the offending value (an integer, or a double's bits: double_bits)
};
static_assert(sizeof(ErrorRecord) == 4 * sizeof(int64_t), "ErrorRecord is four int64 words");

SPECDEC_HOST_DEVICE SPECDEC_INLINE bool operator==(const ErrorRecord& a, const ErrorRecord& b) {
  return a.code == b.code && a.row == b.row && a.where == b.where && a.value == b.value;
}

// int64 words per record in a device tensor of records.
constexpr int64_t kErrorRecordWords = 4;

SPECDEC_HOST_DEVICE SPECDEC_INLINE ErrorRecord make_error(int64_t code, int64_t row, int64_t where, int64_t value) {
  ErrorRecord e;
  e.code = code;
  e.row = row;
  e.where = where;
  e.value = value;
  return e;
}

SPECDEC_HOST_DEVICE SPECDEC_INLINE ErrorRecord no_error(int64_t row) { return make_error(kOk, row, 0, 0); }

// A floating-point offending value (a temperature, a top_p) carried in `value`.
SPECDEC_HOST_DEVICE SPECDEC_INLINE int64_t double_bits(double v) {
  int64_t bits;
  memcpy(&bits, &v, sizeof(bits));
  return bits;
}
inline double bits_double(int64_t bits) {
  double v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

// The one decoder: the first record (lowest index) whose code is not kOk, or nullptr.
inline const ErrorRecord* first_error(const ErrorRecord* records, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    if (records[i].code != kOk) return records + i;
  }
  return nullptr;
}

}  // namespace specdec
