#include "ops/build_info.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <sstream>

namespace specdec {

const BuildInfo& build_info() {
  static const BuildInfo info = [] {
    BuildInfo i;
    i.version = SPECDEC_VERSION;
    i.torch_version = SPECDEC_TORCH_VERSION;
    i.cuda_compiled = SPECDEC_WITH_CUDA != 0;
    i.cuda_version = SPECDEC_CUDA_VERSION_STR;
    std::stringstream archs(SPECDEC_CUDA_ARCHS_STR);
    for (std::string a; std::getline(archs, a, ',');) {
      if (!a.empty()) i.cuda_archs.push_back(a);
    }
    return i;
  }();
  return info;
}

std::vector<std::string> op_names() {
  std::vector<std::string> names;
  for (const c10::OperatorName& op : c10::Dispatcher::singleton().getAllOpNames()) {
    if (op.name.rfind("specdec::", 0) == 0 && op.overload_name.empty()) {
      names.push_back(op.name.substr(9));
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<std::string> op_backends(const std::string& op) {
  std::vector<std::string> out;
  auto handle = c10::Dispatcher::singleton().findSchema({"specdec::" + op, ""});
  if (!handle) return out;
  for (auto [key, name] : {std::pair{c10::DispatchKey::CPU, "CPU"}, std::pair{c10::DispatchKey::CUDA, "CUDA"}}) {
    if (handle->hasKernelForDispatchKey(key)) out.emplace_back(name);
  }
  return out;
}

}  // namespace specdec
