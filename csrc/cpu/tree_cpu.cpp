// build_tree, CPU kernel: validate every parent array, then fill the masks and
// depths with the rules of specdec/tree_rules.h, parallel over trees.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "ops/checks.h"
#include "ops/tree.h"
#include "specdec/tree_rules.h"

namespace specdec {
namespace {

std::tuple<at::Tensor, at::Tensor> build_tree_cpu(const at::Tensor& parents) {
  constexpr const char* op = "specdec::build_tree";
  const int64_t words = check_build_tree_args(op, parents);
  const int64_t batch = parents.size(0), nodes = parents.size(1);
  const int32_t* par = parents.data_ptr<int32_t>();
  std::vector<ErrorRecord> errors(batch);
  for (int64_t b = 0; b < batch; ++b) errors[b] = tree::check_parents(par + b * nodes, nodes, b);
  raise_first_error(errors, [op](const ErrorRecord& e) { raise_tree_error(op, e); });
  auto [mask, depth] = build_tree_outputs(parents, words);
  int32_t* m = mask.data_ptr<int32_t>();
  int32_t* d = depth.data_ptr<int32_t>();
  at::parallel_for(0, batch, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int32_t* row = par + b * nodes;
      for (int64_t w = 0; w < words; ++w) tree::mask_column(row, nodes, words, w, m + b * nodes * words);
      tree::depths(row, nodes, d + b * nodes);
    }
  });
  return {mask, depth};
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) { m.impl("build_tree", &build_tree_cpu); }

}  // namespace specdec
