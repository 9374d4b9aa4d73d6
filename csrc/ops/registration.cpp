// The one schema block of the specdec namespace.  Kernels are registered per
// backend in csrc/cpu and csrc/cuda (one file per family); the exact meaning of
// every op is docs/ops.md, and the Python wrappers (specdec_cuda/ops.py) carry
// it in their docstrings.
#include <torch/library.h>

TORCH_LIBRARY(specdec, m) {
  m.def(
      "kv_compact_(Tensor(a!)[] caches, Tensor(b!) cache_lens, Tensor accept_nodes, "
      "Tensor num_accepted) -> ()");
  m.def(
      "kv_compact_paged_(Tensor(a!)[] k_pages, Tensor(b!)[] v_pages, Tensor block_tables, "
      "Tensor(c!) cache_lens, Tensor accept_nodes, Tensor num_accepted) -> ()");
  m.def("build_tree(Tensor parents) -> (Tensor mask, Tensor depth)");
  m.def(
      "tree_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor cache_lens, Tensor mask, "
      "float scale, *, int window=0, float softcap=0.0, Tensor? sinks=None) -> (Tensor out, Tensor lse)");
  m.def(
      "tree_attention_paged(Tensor q, Tensor k_pages, Tensor v_pages, Tensor block_tables, "
      "Tensor cache_lens, Tensor mask, float scale, *, int window=0, float softcap=0.0, Tensor? sinks=None) "
      "-> (Tensor out, Tensor lse)");
  m.def(
      "sampling_probs(Tensor logits, Tensor temperature, Tensor top_k, Tensor top_p, Tensor? min_p=None) "
      "-> Tensor");
  m.def(
      "sampling_probs_ragged(Tensor logits, Tensor cu_nodes, Tensor temperature, Tensor top_k, Tensor top_p, "
      "Tensor? min_p=None) -> Tensor");
  m.def(
      "verify_greedy(Tensor tokens, Tensor parents, Tensor target_argmax) "
      "-> (Tensor accept_nodes, Tensor num_accepted, Tensor next_token)");
  m.def(
      "rejection_sample(Tensor tokens, Tensor parents, Tensor? draft_probs, Tensor target_probs, "
      "Tensor seed, Tensor offset, *, str method=\"tokenwise\", str siblings=\"iid\") "
      "-> (Tensor accept_nodes, Tensor num_accepted, Tensor next_token)");
  m.def(
      "typical_accept(Tensor tokens, Tensor parents, Tensor target_probs, float posterior_threshold, "
      "float posterior_alpha, Tensor seed, Tensor offset) "
      "-> (Tensor accept_nodes, Tensor num_accepted, Tensor next_token)");
  // Ragged batches: rows of different sizes end to end, row b = entries
  // cu_nodes[b] .. cu_nodes[b + 1] - 1 (docs/ops.md, "Ragged batches").
  m.def(
      "verify_greedy_ragged(Tensor tokens, Tensor parents, Tensor cu_nodes, Tensor target_argmax) "
      "-> (Tensor accept_nodes, Tensor num_accepted, Tensor next_token)");
  m.def(
      "rejection_sample_ragged(Tensor tokens, Tensor parents, Tensor cu_nodes, Tensor? draft_probs, "
      "Tensor target_probs, Tensor seed, Tensor offset) "
      "-> (Tensor accept_nodes, Tensor num_accepted, Tensor next_token)");
  m.def(
      "typical_accept_ragged(Tensor tokens, Tensor parents, Tensor cu_nodes, Tensor target_probs, "
      "float posterior_threshold, float posterior_alpha, Tensor seed, Tensor offset) "
      "-> (Tensor accept_nodes, Tensor num_accepted, Tensor next_token)");
}
