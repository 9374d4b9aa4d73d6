// KV rollback, CPU kernels.
//
// Validation runs over every row before the first byte moves, so a bad input
// raises and leaves caches and cache_lens untouched.  The copy is parallel
// over (tensor, sequence, row); within one row the accepted slots are copied in
// ascending order, which equals the sequential definition (see
// specdec/kv_compact_rules.h for why).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "ops/checks.h"
#include "ops/kv_compact.h"
#include "specdec/kv_compact_rules.h"

namespace specdec {
namespace {

void validate_all_rows(const char* op, const KvCompactPlan& plan, const int32_t* lens, const int32_t* accept,
                       const int32_t* num, const int32_t* tables) {
  std::vector<ErrorRecord> errors(plan.batch);
  for (int64_t b = 0; b < plan.batch; ++b) errors[b] = check_row_values(plan, b, lens, accept, num, tables);
  raise_first_error(errors, [&](const ErrorRecord& e) { raise_kv_compact_error(op, plan, e); });
}

// Moves the accepted slots of every tensor.  `slot_offset(b, row, slot)` gives
// the byte offset of a slot inside one tensor.
template <typename SlotOffset>
void copy_accepted(const KvCompactPlan& plan, const int32_t* lens, const int32_t* accept, const int32_t* num,
                   SlotOffset slot_offset) {
  const int64_t rows = plan.rows_per_seq;
  const int64_t items = static_cast<int64_t>(plan.tensors.size()) * plan.batch * rows;
  const int64_t row_bytes = plan.row_bytes;
  // Aim for >= 64 KiB of copying per task so thread start-up is amortised.
  const int64_t bytes_per_item = std::max<int64_t>(1, row_bytes * std::max<int64_t>(plan.width, 1));
  const int64_t grain = std::max<int64_t>(1, (64 << 10) / bytes_per_item);
  std::vector<char*> bases(plan.tensors.size());
  for (size_t t = 0; t < bases.size(); ++t) {
    bases[t] = static_cast<char*>(plan.tensors[t].data_ptr());
  }
  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t row = item % rows;
      const int64_t b = (item / rows) % plan.batch;
      const int64_t t = item / (rows * plan.batch);
      const int64_t n = num[b];
      const int64_t len = lens[b];
      const int32_t* a = accept + b * plan.width;
      char* base = bases[t];
      for (int64_t j = 0; j < n; ++j) {
        if (a[j] == j) continue;  // already in place
        std::memcpy(base + slot_offset(b, row, len + j), base + slot_offset(b, row, len + a[j]), row_bytes);
      }
    }
  });
}

void advance_lens(int32_t* lens, const int32_t* num, int64_t batch) {
  for (int64_t b = 0; b < batch; ++b) lens[b] += num[b];
}

void kv_compact_cpu(at::TensorList caches, const at::Tensor& cache_lens, const at::Tensor& accept_nodes,
                    const at::Tensor& num_accepted) {
  constexpr const char* op = "specdec::kv_compact_";
  const KvCompactPlan plan = check_kv_compact(op, caches, cache_lens, accept_nodes, num_accepted);
  int32_t* lens = cache_lens.data_ptr<int32_t>();
  const int32_t* accept = accept_nodes.data_ptr<int32_t>();
  const int32_t* num = num_accepted.data_ptr<int32_t>();
  validate_all_rows(op, plan, lens, accept, num, nullptr);
  if (!plan.tensors.empty() && plan.row_bytes > 0) {
    const int64_t rows = plan.rows_per_seq, slots = plan.slots, rb = plan.row_bytes;
    copy_accepted(plan, lens, accept, num,
                  [=](int64_t b, int64_t row, int64_t slot) { return ((b * rows + row) * slots + slot) * rb; });
  }
  advance_lens(lens, num, plan.batch);
}

void kv_compact_paged_cpu(at::TensorList k_pages, at::TensorList v_pages, const at::Tensor& block_tables,
                          const at::Tensor& cache_lens, const at::Tensor& accept_nodes,
                          const at::Tensor& num_accepted) {
  constexpr const char* op = "specdec::kv_compact_paged_";
  const KvCompactPlan plan =
      check_kv_compact_paged(op, k_pages, v_pages, block_tables, cache_lens, accept_nodes, num_accepted);
  int32_t* lens = cache_lens.data_ptr<int32_t>();
  const int32_t* accept = accept_nodes.data_ptr<int32_t>();
  const int32_t* num = num_accepted.data_ptr<int32_t>();
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  validate_all_rows(op, plan, lens, accept, num, tables);
  if (!plan.tensors.empty() && plan.row_bytes > 0) {
    const int64_t ps = plan.page_size, rb = plan.row_bytes, mb = plan.max_blocks;
    copy_accepted(plan, lens, accept, num,
                  [=](int64_t b, int64_t, int64_t slot) { return kv::paged_offset(tables + b * mb, slot, ps, rb); });
  }
  advance_lens(lens, num, plan.batch);
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) {
  m.impl("kv_compact_", &kv_compact_cpu);
  m.impl("kv_compact_paged_", &kv_compact_paged_cpu);
}

}  // namespace specdec
