#include "ops/tree.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>

#include <limits>

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

RaggedShape check_cu_nodes_arg(const char* op, const at::Tensor& cu_nodes, int64_t total, const char* total_name,
                               const c10::Device& device) {
  check_defined(op, {{"cu_nodes", &cu_nodes}});
  check_dim(op, "cu_nodes", cu_nodes, 1, "[B + 1]");
  TORCH_CHECK_VALUE(cu_nodes.size(0) >= 1,
                    msg(op, "cu_nodes", " must hold B + 1 >= 1 offsets (cu_nodes[0] = 0), got shape [0]"));
  check_dtype(op, "cu_nodes", cu_nodes, at::kInt);
  check_device(op, "cu_nodes", cu_nodes, device);
  check_contiguous(op, "cu_nodes", cu_nodes);
  const int64_t batch = cu_nodes.size(0) - 1;
  TORCH_CHECK_VALUE(batch > 0 || total == 0, msg(op, "cu_nodes", " has shape [1] (B = 0 rows), so ", total_name,
                                                 " must hold T = 0 entries, got T = ", total));
  TORCH_CHECK_VALUE(total >= batch, msg(op, "cu_nodes", " describes B = ", batch, " rows but ", total_name,
                                        " holds T = ", total, " entries: every row needs at least one (T >= B)"));
  TORCH_CHECK_VALUE(total <= std::numeric_limits<int32_t>::max(),
                    msg(op, total_name, " holds T = ", total, " entries: int32 offsets allow at most 2^31 - 1"));
  return RaggedShape{batch, total};
}

void raise_cu_nodes_error(const char* op, const ErrorRecord& e, int64_t total) {
  switch (e.code) {
    case tree::kCuFirst:
      TORCH_CHECK_VALUE(false, msg(op, "cu_nodes", "[0] = ", e.value, " must be 0: row 0 starts at entry 0"));
    case tree::kCuEmptyRow:
      TORCH_CHECK_VALUE(
          false, msg(op, "cu_nodes", "[", e.where, "] = ", e.value, " is not greater than cu_nodes[", e.where - 1,
                     "]: the offsets must increase strictly (row ", e.row, " must hold at least its root)"));
    case tree::kCuLast:
      TORCH_CHECK_VALUE(false, msg(op, "cu_nodes", "[", e.where, "] = ", e.value, " must equal T = ", total,
                                   ", the number of entries (the end of the last row)"));
    default:
      TORCH_CHECK(false, msg(op, "internal", ": unknown cu_nodes validation code ", e.code));
  }
}

std::tuple<at::Tensor, at::Tensor> build_tree(const at::Tensor& parents) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("specdec::build_tree", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&)>();
  return op.call(parents);
}

}  // namespace specdec
