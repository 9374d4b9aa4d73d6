// Helpers shared by the C++ tests.
#pragma once

#include <ATen/Context.h>
#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <functional>
#include <string>

namespace specdec::testing {

// The message of the c10::Error `f` throws, or "" if it throws none.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

}  // namespace specdec::testing

// CUDA cases: skipped with the reason when there is nothing to run them on.
#define SPECDEC_SKIP_WITHOUT_CUDA()                                                       \
  if (!SPECDEC_WITH_CUDA) {                                                               \
    GTEST_SKIP() << "built without CUDA kernels (SPECDEC_CUDA=OFF or CPU-only torch)";    \
  } else if (!at::hasCUDA()) {                                                            \
    GTEST_SKIP() << "no CUDA device here (the CUDA kernels are compiled and registered)"; \
  }
