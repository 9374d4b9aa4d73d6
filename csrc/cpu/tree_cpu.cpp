// Tree ops, CPU kernels.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "ops/acceptance.h"
#include "ops/tree.h"
#include "specdec/acceptance.h"

namespace specdec {
namespace {

std::tuple<at::Tensor, at::Tensor> build_tree_cpu(const at::Tensor& parents) {
  constexpr const char* op = "specdec::build_tree";
  const int64_t words = check_build_tree_args(op, parents);
  const int64_t batch = parents.size(0), nodes = parents.size(1);
  const int32_t* par = parents.data_ptr<int32_t>();
  for (int64_t b = 0; b < batch; ++b) {
    int64_t where = 0, value = 0;
    const int32_t code = accept::check_parents(par + b * nodes, nodes, &where, &value);
    if (code != accept::kOk) throw_accept_error(op, b, code, where, value);
  }
  auto [mask, depth] = build_tree_outputs(parents, words);
  int32_t* m = mask.data_ptr<int32_t>();
  int32_t* d = depth.data_ptr<int32_t>();
  at::parallel_for(0, batch, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int32_t* row = par + b * nodes;
      for (int64_t w = 0; w < words; ++w) accept::tree_mask_column(row, nodes, words, w, m + b * nodes * words);
      accept::tree_depths(row, nodes, d + b * nodes);
    }
  });
  return {mask, depth};
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) { m.impl("build_tree", &build_tree_cpu); }

}  // namespace specdec
