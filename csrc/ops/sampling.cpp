#include "ops/sampling.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <tuple>

#include "ops/checks.h"
#include "specdec/sampling_rules.h"

namespace specdec {

namespace {

// temperature, top_k, top_p (and min_p) [B] each, on `device`.
void check_row_params(const char* op, int64_t batch, const char* batch_name, const c10::Device& device,
                      const at::Tensor& temperature, const at::Tensor& top_k, const at::Tensor& top_p,
                      const std::optional<at::Tensor>& min_p) {
  for (auto [name, t, dtype] :
       {std::tuple<const char*, const at::Tensor*, at::ScalarType>{"temperature", &temperature, at::kFloat},
        std::tuple<const char*, const at::Tensor*, at::ScalarType>{"top_k", &top_k, at::kInt},
        std::tuple<const char*, const at::Tensor*, at::ScalarType>{"top_p", &top_p, at::kFloat},
        std::tuple<const char*, const at::Tensor*, at::ScalarType>{"min_p", min_p ? &*min_p : nullptr, at::kFloat}}) {
    if (t == nullptr) continue;
    check_dim(op, name, *t, 1, "[B]");
    check_size(op, name, *t, 0, batch, batch_name);
    check_dtype(op, name, *t, dtype);
    check_device(op, name, *t, device);
    check_contiguous(op, name, *t);
  }
}

}  // namespace

void check_sampling_args(const char* op, const at::Tensor& logits, const at::Tensor& temperature,
                         const at::Tensor& top_k, const at::Tensor& top_p, const std::optional<at::Tensor>& min_p) {
  check_defined(op, {{"logits", &logits}, {"temperature", &temperature}, {"top_k", &top_k}, {"top_p", &top_p}});
  TORCH_CHECK_VALUE(
      logits.dim() == 2 || logits.dim() == 3,
      msg(op, "logits", " must be a 2-D [B, V] or 3-D [B, N, V] tensor, got shape ", shape_str(logits.sizes())));
  check_float_kv(op, "logits", logits);
  check_contiguous(op, "logits", logits);
  TORCH_CHECK_VALUE(logits.size(-1) >= 1, msg(op, "logits", " must have a vocabulary of at least 1"));
  check_row_params(op, logits.size(0), "B (logits.size(0))", logits.device(), temperature, top_k, top_p, min_p);
}

RaggedShape check_sampling_ragged_args(const char* op, const at::Tensor& logits, const at::Tensor& cu_nodes,
                                       const at::Tensor& temperature, const at::Tensor& top_k, const at::Tensor& top_p,
                                       const std::optional<at::Tensor>& min_p) {
  check_defined(op, {{"logits", &logits},
                     {"cu_nodes", &cu_nodes},
                     {"temperature", &temperature},
                     {"top_k", &top_k},
                     {"top_p", &top_p}});
  check_dim(op, "logits", logits, 2, "[T, V]");
  check_float_kv(op, "logits", logits);
  check_contiguous(op, "logits", logits);
  TORCH_CHECK_VALUE(logits.size(1) >= 1, msg(op, "logits", " must have a vocabulary of at least 1"));
  const RaggedShape shape = check_cu_nodes_arg(op, cu_nodes, logits.size(0), "logits", logits.device());
  check_row_params(op, shape.batch, "B (cu_nodes.size(0) - 1)", logits.device(), temperature, top_k, top_p, min_p);
  return shape;
}

void raise_sampling_error(const char* op, const ErrorRecord& e) {
  const int64_t b = e.row, row = e.where;
  const double value = bits_double(e.value);
  switch (e.code) {
    case sampling::kTemperature:
      TORCH_CHECK_VALUE(false, msg(op, "temperature", "[", b, "] = ", value, " must be finite and >= 0"));
    case sampling::kTopK:
      TORCH_CHECK_VALUE(false, msg(op, "top_k", "[", b, "] = ", value, " must be >= 0 (0 disables it)"));
    case sampling::kTopP:
      TORCH_CHECK_VALUE(false, msg(op, "top_p", "[", b, "] = ", value, " must be in (0, 1]"));
    case sampling::kLogitInvalid:
      TORCH_CHECK_VALUE(false, msg(op, "logits", " row ", row, " of sequence ", b, " holds a NaN or +inf logit"));
    case sampling::kAllMasked:
      TORCH_CHECK_VALUE(
          false, msg(op, "logits", " row ", row, " of sequence ", b, " is -inf everywhere: nothing can be sampled"));
    case sampling::kMinP:
      TORCH_CHECK_VALUE(false, msg(op, "min_p", "[", b, "] = ", value, " must be in [0, 1] (0 disables it)"));
    default:
      TORCH_CHECK(false, msg(op, "internal", ": unknown validation code ", e.code));
  }
}

void raise_sampling_ragged_error(const char* op, const ErrorRecord& e) {
  switch (e.code) {
    case sampling::kLogitInvalid:
      TORCH_CHECK_VALUE(false,
                        msg(op, "logits", "[", e.where, "] (a row of sequence ", e.row, ") holds a NaN or +inf logit"));
    case sampling::kAllMasked:
      TORCH_CHECK_VALUE(false, msg(op, "logits", "[", e.where, "] (a row of sequence ", e.row,
                                   ") is -inf everywhere: nothing can be sampled"));
    default:
      raise_sampling_error(op, e);
  }
}

at::Tensor sampling_probs(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                          const at::Tensor& top_p, const std::optional<at::Tensor>& min_p) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("specdec::sampling_probs", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&)>();
  return op.call(logits, temperature, top_k, top_p, min_p);
}

at::Tensor sampling_probs_ragged(const at::Tensor& logits, const at::Tensor& cu_nodes, const at::Tensor& temperature,
                                 const at::Tensor& top_k, const at::Tensor& top_p,
                                 const std::optional<at::Tensor>& min_p) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("specdec::sampling_probs_ragged", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const std::optional<at::Tensor>&)>();
  return op.call(logits, cu_nodes, temperature, top_k, top_p, min_p);
}

}  // namespace specdec
