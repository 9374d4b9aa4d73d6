#include "ops/kv_compact.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "ops/checks.h"
#include "specdec/kv_compact_rules.h"

namespace specdec {
namespace {

// Checks common to both layouts: the three index tensors.
void check_index_args(const char* op, const at::Tensor& cache_lens, const at::Tensor& accept_nodes,
                      const at::Tensor& num_accepted, const c10::Device& device) {
  check_dim(op, "cache_lens", cache_lens, 1, "[B]");
  check_dim(op, "accept_nodes", accept_nodes, 2, "[B, max_depth + 1]");
  check_dim(op, "num_accepted", num_accepted, 1, "[B]");
  const int64_t batch = cache_lens.size(0);
  check_size(op, "accept_nodes", accept_nodes, 0, batch, "B (cache_lens.size(0))");
  check_size(op, "num_accepted", num_accepted, 0, batch, "B (cache_lens.size(0))");
  check_dtype(op, "cache_lens", cache_lens, at::kInt);
  check_dtype(op, "accept_nodes", accept_nodes, at::kInt);
  check_dtype(op, "num_accepted", num_accepted, at::kInt);
  check_device(op, "cache_lens", cache_lens, device);
  check_device(op, "accept_nodes", accept_nodes, device);
  check_device(op, "num_accepted", num_accepted, device);
  check_contiguous(op, "cache_lens", cache_lens);
  check_contiguous(op, "accept_nodes", accept_nodes);
  check_contiguous(op, "num_accepted", num_accepted);
}

void check_defined_list(const char* op, const char* arg, at::TensorList list) {
  for (size_t i = 0; i < list.size(); ++i) {
    TORCH_CHECK_TYPE(list[i].defined(), msg(op, arg, "[", i, "] must be a tensor, got None"));
  }
}

// A cache tensor's bytes, for the overlap check.
struct Span {
  uintptr_t begin, end;
  std::string name;
};

// Every cache tensor: same shape/dtype/device as the first, contiguous; its byte
// range is collected in `spans` for check_disjoint.
void check_same_tensors(const char* op, const char* arg, at::TensorList list, const at::Tensor& like,
                        const c10::Device& device, std::vector<Span>& spans) {
  for (size_t i = 0; i < list.size(); ++i) {
    const at::Tensor& t = list[i];
    const std::string name = std::string(arg) + "[" + std::to_string(i) + "]";
    check_float_kv(op, name.c_str(), t);
    TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(),
                     msg(op, name.c_str(), " must have the dtype of the first cache tensor (",
                         dtype_name(like.scalar_type()), "), got ", dtype_name(t.scalar_type())));
    TORCH_CHECK_VALUE(t.sizes().equals(like.sizes()),
                      msg(op, name.c_str(), " must have the shape of the first cache tensor ", shape_str(like.sizes()),
                          ", got ", shape_str(t.sizes())));
    check_device(op, name.c_str(), t, device);
    check_contiguous(op, name.c_str(), t);
    if (t.numel() > 0) {
      const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
      spans.push_back({begin, begin + static_cast<uintptr_t>(t.nbytes()), name});
    }
  }
}

// No two cache tensors may share a byte (equal or partly overlapping views):
// compacting one storage twice would corrupt it.
void check_disjoint(const char* op, std::vector<Span>& spans) {
  std::stable_sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < spans.size(); ++i) {
    TORCH_CHECK_VALUE(spans[i].begin >= spans[i - 1].end,
                      msg(op, spans[i].name.c_str(), " shares its memory with ", spans[i - 1].name,
                          " (the tensors overlap); each tensor must be compacted exactly once"));
  }
}

}  // namespace

KvCompactPlan check_kv_compact(const char* op, at::TensorList caches, const at::Tensor& cache_lens,
                               const at::Tensor& accept_nodes, const at::Tensor& num_accepted) {
  check_defined(op, {{"cache_lens", &cache_lens}, {"accept_nodes", &accept_nodes}, {"num_accepted", &num_accepted}});
  check_defined_list(op, "caches", caches);
  const c10::Device device = cache_lens.device();
  check_index_args(op, cache_lens, accept_nodes, num_accepted, device);
  KvCompactPlan plan;
  plan.batch = cache_lens.size(0);
  plan.width = accept_nodes.size(1);
  if (!caches.empty()) {
    const at::Tensor& first = caches[0];
    check_dim(op, "caches[0]", first, 4, "[B, H, S, D]");
    check_size(op, "caches[0]", first, 0, plan.batch, "B (cache_lens.size(0))");
    std::vector<Span> spans;
    check_same_tensors(op, "caches", caches, first, device, spans);
    check_disjoint(op, spans);
    plan.rows_per_seq = first.size(1);
    plan.slots = first.size(2);
    plan.capacity = first.size(2);
    plan.row_bytes = first.size(3) * first.element_size();
  }
  plan.tensors.assign(caches.begin(), caches.end());
  return plan;
}

KvCompactPlan check_kv_compact_paged(const char* op, at::TensorList k_pages, at::TensorList v_pages,
                                     const at::Tensor& block_tables, const at::Tensor& cache_lens,
                                     const at::Tensor& accept_nodes, const at::Tensor& num_accepted) {
  check_defined(op, {{"block_tables", &block_tables},
                     {"cache_lens", &cache_lens},
                     {"accept_nodes", &accept_nodes},
                     {"num_accepted", &num_accepted}});
  check_defined_list(op, "k_pages", k_pages);
  check_defined_list(op, "v_pages", v_pages);
  const c10::Device device = cache_lens.device();
  check_index_args(op, cache_lens, accept_nodes, num_accepted, device);
  check_dim(op, "block_tables", block_tables, 2, "[B, max_blocks]");
  check_size(op, "block_tables", block_tables, 0, cache_lens.size(0), "B (cache_lens.size(0))");
  check_dtype(op, "block_tables", block_tables, at::kInt);
  check_device(op, "block_tables", block_tables, device);
  check_contiguous(op, "block_tables", block_tables);
  TORCH_CHECK_VALUE(k_pages.size() == v_pages.size(), msg(op, "v_pages", " must hold as many tensors as k_pages (",
                                                          k_pages.size(), "), got ", v_pages.size()));
  KvCompactPlan plan;
  plan.paged = true;
  plan.batch = cache_lens.size(0);
  plan.width = accept_nodes.size(1);
  plan.max_blocks = block_tables.size(1);
  if (!k_pages.empty()) {
    const at::Tensor& first = k_pages[0];
    check_dim(op, "k_pages[0]", first, 4, "[num_pages, page_size, H, D]");
    TORCH_CHECK_VALUE(first.size(1) > 0, msg(op, "k_pages[0]", " must have page_size > 0"));
    std::vector<Span> spans;
    check_same_tensors(op, "k_pages", k_pages, first, device, spans);
    check_same_tensors(op, "v_pages", v_pages, first, device, spans);
    check_disjoint(op, spans);
    plan.num_pages = first.size(0);
    plan.page_size = first.size(1);
    plan.row_bytes = first.size(2) * first.size(3) * first.element_size();
    plan.capacity = plan.max_blocks * plan.page_size;
    plan.tensors.assign(k_pages.begin(), k_pages.end());
    plan.tensors.insert(plan.tensors.end(), v_pages.begin(), v_pages.end());
  }
  return plan;
}

ErrorRecord check_row_values(const KvCompactPlan& plan, int64_t b, const int32_t* cache_lens,
                             const int32_t* accept_nodes, const int32_t* num_accepted, const int32_t* block_tables) {
  const int32_t* accept = accept_nodes + b * plan.width;
  // Without cache tensors there is no capacity to check slots against; only
  // the index arrays themselves are validated then.
  const int64_t capacity = plan.tensors.empty() ? std::numeric_limits<int32_t>::max() : plan.capacity;
  ErrorRecord r = kv::check_row(b, cache_lens[b], num_accepted[b], accept, plan.width, capacity);
  if (r.code == kOk && plan.paged && !plan.tensors.empty() && num_accepted[b] > 0) {
    r = kv::check_blocks(b, block_tables + b * plan.max_blocks, cache_lens[b], accept[num_accepted[b] - 1],
                         plan.page_size, plan.num_pages);
    if (r.code == kOk) {
      r = kv::check_pages_private(b, block_tables, cache_lens, accept_nodes, num_accepted, plan.width, plan.max_blocks,
                                  plan.capacity, plan.page_size);
    }
  }
  return r;
}

void raise_kv_compact_error(const char* op, const KvCompactPlan& plan, const ErrorRecord& c) {
  const std::string at_b = "[" + std::to_string(c.row) + "]";
  const std::string at_bj = "[" + std::to_string(c.row) + ", " + std::to_string(c.where) + "]";
  switch (c.code) {
    case kv::kCacheLenOutOfRange:
      TORCH_CHECK_INDEX(false, msg(op, "cache_lens", at_b, " = ", c.value, " is outside [0, ", plan.capacity,
                                   "], the slots the cache holds"));
    case kv::kNumAcceptedOutOfRange:
      TORCH_CHECK_INDEX(false, msg(op, "num_accepted", at_b, " = ", c.value, " is outside [0, ", plan.width,
                                   "] (accept_nodes.size(1))"));
    case kv::kAcceptNodeNegative:
      TORCH_CHECK_INDEX(false, msg(op, "accept_nodes", at_bj, " = ", c.value, " is negative"));
    case kv::kAcceptNotIncreasing:
      TORCH_CHECK_VALUE(false, msg(op, "accept_nodes", at_bj, " = ", c.value,
                                   " is not greater than the entry before it: accepted node "
                                   "indices must be strictly increasing"));
    case kv::kSlotBeyondCache:
      TORCH_CHECK_INDEX(false, msg(op, "accept_nodes", at_bj, " = ", c.value, " puts its slot cache_lens", at_b, " + ",
                                   c.value, " beyond the cache of ", plan.capacity, " slots"));
    case kv::kBlockOutOfRange:
      TORCH_CHECK_INDEX(false, msg(op, "block_tables", at_bj, " = ", c.value, " is outside [0, ", plan.num_pages,
                                   ") (the number of pages)"));
    case kv::kBlockRepeated:
      TORCH_CHECK_VALUE(false, msg(op, "block_tables", at_bj, " = ", c.value, " repeats a page this row already uses"));
    case kv::kPageShared:
      TORCH_CHECK_VALUE(false, msg(op, "block_tables", at_bj, " = ", c.value,
                                   " is also touched by an earlier row; rows must not share the pages they write"));
    case kv::kLengthOverflow:
      TORCH_CHECK_VALUE(false, msg(op, "num_accepted", at_b, ": cache_lens", at_b, " + num_accepted", at_b, " = ",
                                   c.value, " does not fit cache_lens' int32"));
    default:
      TORCH_CHECK(false, msg(op, "internal", ": unknown validation code ", c.code));
  }
}

void kv_compact_(at::TensorList caches, const at::Tensor& cache_lens, const at::Tensor& accept_nodes,
                 const at::Tensor& num_accepted) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("specdec::kv_compact_", "")
                       .typed<void(at::TensorList, const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  op.call(caches, cache_lens, accept_nodes, num_accepted);
}

void kv_compact_paged_(at::TensorList k_pages, at::TensorList v_pages, const at::Tensor& block_tables,
                       const at::Tensor& cache_lens, const at::Tensor& accept_nodes, const at::Tensor& num_accepted) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("specdec::kv_compact_paged_", "")
                       .typed<void(at::TensorList, at::TensorList, const at::Tensor&, const at::Tensor&,
                                   const at::Tensor&, const at::Tensor&)>();
  op.call(k_pages, v_pages, block_tables, cache_lens, accept_nodes, num_accepted);
}

}  // namespace specdec
