// Helpers shared by the C++ tests.
#pragma once

#include <c10/util/Exception.h>

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
