// Input checks at the op boundary.  Every message starts with the op's
// qualified name and names the argument and what was expected, e.g.
//   specdec::kv_compact_: accept_nodes must have dtype int32, got Long
// Dtype problems raise TypeError, everything else ValueError (IndexError for
// index values out of range), through torch's TORCH_CHECK_* families.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "specdec/errors.h"

namespace specdec {

template <typename... Args>
std::string msg(const char* op, const char* arg, const Args&... rest) {
  std::ostringstream s;
  s << op << ": " << arg;
  ((s << rest), ...);
  return s.str();
}

inline std::string shape_str(c10::IntArrayRef sizes) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < sizes.size(); ++i) s << (i ? ", " : "") << sizes[i];
  s << "]";
  return s.str();
}

// Python's spelling of a dtype (torch.int32 -> "int32"), as users write it.
inline const char* dtype_name(at::ScalarType s) {
  switch (s) {
    case at::kFloat:
      return "float32";
    case at::kDouble:
      return "float64";
    case at::kHalf:
      return "float16";
    case at::kBFloat16:
      return "bfloat16";
    case at::kInt:
      return "int32";
    case at::kLong:
      return "int64";
    case at::kShort:
      return "int16";
    case at::kChar:
      return "int8";
    case at::kByte:
      return "uint8";
    case at::kBool:
      return "bool";
    default:
      return c10::toString(s);
  }
}

// Every tensor argument must be a tensor: a None passed for a Tensor through
// torch.ops reaches the kernel as an undefined tensor.  Checked before anything
// else reads the arguments.
inline void check_defined(const char* op, std::initializer_list<std::pair<const char*, const at::Tensor*>> args) {
  for (const auto& [name, t] : args) {
    TORCH_CHECK_TYPE(t->defined(), msg(op, name, " must be a tensor, got None"));
  }
}

inline void check_dtype(const char* op, const char* arg, const at::Tensor& t, at::ScalarType expected) {
  TORCH_CHECK_TYPE(t.scalar_type() == expected,
                   msg(op, arg, " must have dtype ", dtype_name(expected), ", got ", dtype_name(t.scalar_type())));
}

inline void check_dim(const char* op, const char* arg, const at::Tensor& t, int64_t dim, const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == dim,
                    msg(op, arg, " must be a ", dim, "-D tensor ", layout, ", got shape ", shape_str(t.sizes())));
}

inline void check_size(const char* op, const char* arg, const at::Tensor& t, int64_t dim, int64_t expected,
                       const char* what) {
  TORCH_CHECK_VALUE(t.size(dim) == expected, msg(op, arg, ".size(", dim, ") must equal ", what, " = ", expected,
                                                 ", got shape ", shape_str(t.sizes())));
}

inline void check_device(const char* op, const char* arg, const at::Tensor& t, const c10::Device& device) {
  TORCH_CHECK_VALUE(t.device() == device,
                    msg(op, arg, " must be on ", device.str(), " like the other arguments, got ", t.device().str()));
}

inline void check_contiguous(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.is_contiguous(), msg(op, arg, " must be contiguous"));
}

inline void check_float_kv(const char* op, const char* arg, const at::Tensor& t) {
  const auto s = t.scalar_type();
  TORCH_CHECK_TYPE(s == at::kFloat || s == at::kHalf || s == at::kBFloat16,
                   msg(op, arg, " must have dtype float32, float16 or bfloat16, got ", dtype_name(s)));
}

// The one host decoder of error records (CPU kernels and, after the eager
// read-back, CUDA kernels): raise the first record whose code is not kOk with
// `raise`, the family's raise_<family>_error bound to its context.
template <class Raise>
void raise_first_error(const ErrorRecord* records, int64_t count, Raise raise) {
  if (const ErrorRecord* e = first_error(records, count)) raise(*e);
}
template <class Raise>
void raise_first_error(const std::vector<ErrorRecord>& records, Raise raise) {
  raise_first_error(records.data(), static_cast<int64_t>(records.size()), raise);
}

}  // namespace specdec
