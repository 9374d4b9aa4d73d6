#include "ops/tree.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>

#include "ops/checks.h"
#include "specdec/tree_rules.h"

namespace specdec {

int64_t check_build_tree_args(const char* op, const at::Tensor& parents) {
  check_defined(op, {{"parents", &parents}});
  check_dim(op, "parents", parents, 2, "[B, N]");
  TORCH_CHECK_VALUE(parents.size(1) >= 1, msg(op, "parents", " must hold at least the root node (N >= 1)"));
  check_dtype(op, "parents", parents, at::kInt);
  check_contiguous(op, "parents", parents);
  return (parents.size(1) + 31) / 32;
}

std::tuple<at::Tensor, at::Tensor> build_tree_outputs(const at::Tensor& parents, int64_t words) {
  const auto opts = parents.options().dtype(at::kInt);
  return {at::empty({parents.size(0), parents.size(1), words}, opts),
          at::empty({parents.size(0), parents.size(1)}, opts)};
}

void raise_tree_error(const char* op, const ErrorRecord& e) {
  switch (e.code) {
    case tree::kParentRoot:
      TORCH_CHECK_VALUE(false, msg(op, "parents", "[", e.row, ", ", e.where, "] = ", e.value,
                                   ": node 0 is the root and its parent must be -1"));
    case tree::kParentRange:
      TORCH_CHECK_VALUE(false, msg(op, "parents", "[", e.row, ", ", e.where, "] = ", e.value, " is outside [0, ",
                                   e.where, "): every node's parent must come before it"));
    default:
      TORCH_CHECK(false, msg(op, "internal", ": unknown validation code ", e.code));
  }
}

std::tuple<at::Tensor, at::Tensor> build_tree(const at::Tensor& parents) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("specdec::build_tree", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&)>();
  return op.call(parents);
}

}  // namespace specdec
