// Facts about how libspecdec_ops was built, for `python -m specdec_cuda info`
// and for the C++ tests.
#pragma once

#include <string>
#include <vector>

namespace specdec {

struct BuildInfo {
  std::string version;                  // the package version (CMakeLists.txt project())
  std::string torch_version;            // the torch the library was compiled against
  bool cuda_compiled = false;           // whether the CUDA kernels are in the library
  std::string cuda_version;             // nvcc version used, empty without CUDA
  std::vector<std::string> cuda_archs;  // e.g. {"8.0", "9.0a"}
};

const BuildInfo& build_info();

// Names of every op in the specdec namespace ("kv_compact_", ...).
std::vector<std::string> op_names();

// The backends ("CPU", "CUDA") that have a kernel registered for `op`.
std::vector<std::string> op_backends(const std::string& op);

}  // namespace specdec
