// The one schema block of the specdec namespace.  Kernels are registered per
// backend in csrc/cpu and csrc/cuda; meanings are documented in
// ARCHITECTURE.md and in the Python wrappers (specdec_cuda/ops.py).
#include <torch/library.h>

TORCH_LIBRARY(specdec, m) {
  m.def(
      "kv_compact_(Tensor(a!)[] caches, Tensor(b!) cache_lens, Tensor accept_nodes, "
      "Tensor num_accepted) -> ()");
  m.def(
      "kv_compact_paged_(Tensor(a!)[] k_pages, Tensor(b!)[] v_pages, Tensor block_tables, "
      "Tensor(c!) cache_lens, Tensor accept_nodes, Tensor num_accepted) -> ()");
}
