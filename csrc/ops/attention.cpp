#include "ops/attention.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>

#include "ops/checks.h"
#include "specdec/attention_rules.h"

#include <cmath>
#include <limits>

namespace specdec {

AttentionShape check_tree_attention(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor* block_tables, const at::Tensor& cache_lens,
                                    const at::Tensor& mask, double scale, int64_t window, double softcap,
                                    const std::optional<at::Tensor>& sinks) {
  const bool paged = block_tables != nullptr;
  const char* kname = paged ? "k_pages" : "k_cache";
  const char* vname = paged ? "v_pages" : "v_cache";
  check_defined(op, {{"q", &q}, {kname, &k}, {vname, &v}, {"cache_lens", &cache_lens}, {"mask", &mask}});
  if (paged) check_defined(op, {{"block_tables", block_tables}});
  check_dim(op, "q", q, 4, "[B, N, Hq, D]");
  check_float_kv(op, "q", q);
  check_contiguous(op, "q", q);
  const c10::Device device = q.device();
  AttentionShape s;
  s.batch = q.size(0);
  s.nodes = q.size(1);
  s.q_heads = q.size(2);
  s.dim = q.size(3);
  TORCH_CHECK_VALUE(s.nodes >= 1, msg(op, "q", " must hold at least the root node (N >= 1)"));
  TORCH_CHECK_VALUE(s.dim >= 1 && s.dim <= attention::kMaxHeadDim,
                    msg(op, "q", " head dim must be in [1, ", attention::kMaxHeadDim, "], got ", s.dim));
  check_dim(op, kname, k, 4, paged ? "[P, page_size, Hkv, D]" : "[B, Hkv, S, D]");
  check_dim(op, vname, v, 4, paged ? "[P, page_size, Hkv, Dv]" : "[B, Hkv, S, Dv]");
  TORCH_CHECK_VALUE(v.sizes().slice(0, 3).equals(k.sizes().slice(0, 3)),
                    msg(op, vname, " must have the shape of ", kname, " ", shape_str(k.sizes()),
                        " except in its last dim (the value head size), got ", shape_str(v.sizes())));
  s.v_dim = v.size(3);
  TORCH_CHECK_VALUE(s.v_dim >= 1 && s.v_dim <= attention::kMaxHeadDim,
                    msg(op, vname, " head dim must be in [1, ", attention::kMaxHeadDim, "], got ", s.v_dim));
  for (auto [name, t] :
       {std::pair<const char*, const at::Tensor*>{kname, &k}, std::pair<const char*, const at::Tensor*>{vname, &v}}) {
    TORCH_CHECK_TYPE(t->scalar_type() == q.scalar_type(),
                     msg(op, name, " must have the dtype of q (", dtype_name(q.scalar_type()), "), got ",
                         dtype_name(t->scalar_type())));
    check_device(op, name, *t, device);
    check_contiguous(op, name, *t);
  }
  s.kv_heads = paged ? k.size(2) : k.size(1);
  TORCH_CHECK_VALUE(k.size(3) == s.dim, msg(op, kname, " head dim (", k.size(3), ") must equal q's (", s.dim, ")"));
  TORCH_CHECK_VALUE(
      s.kv_heads >= 1 && s.q_heads % s.kv_heads == 0,
      msg(op, kname, " has ", s.kv_heads, " KV heads; q's ", s.q_heads, " heads must be a multiple of them (GQA/MQA)"));
  if (paged) {
    check_dim(op, "block_tables", *block_tables, 2, "[B, max_blocks]");
    check_size(op, "block_tables", *block_tables, 0, s.batch, "B (q.size(0))");
    check_dtype(op, "block_tables", *block_tables, at::kInt);
    check_device(op, "block_tables", *block_tables, device);
    check_contiguous(op, "block_tables", *block_tables);
    TORCH_CHECK_VALUE(k.size(1) >= 1, msg(op, kname, " must have page_size >= 1"));
    s.num_pages = k.size(0);
    s.page_size = k.size(1);
    s.max_blocks = block_tables->size(1);
    s.capacity = s.max_blocks * s.page_size;
  } else {
    check_size(op, kname, k, 0, s.batch, "B (q.size(0))");
    s.capacity = k.size(2);
  }
  check_dim(op, "cache_lens", cache_lens, 1, "[B]");
  check_size(op, "cache_lens", cache_lens, 0, s.batch, "B (q.size(0))");
  check_dtype(op, "cache_lens", cache_lens, at::kInt);
  check_device(op, "cache_lens", cache_lens, device);
  check_contiguous(op, "cache_lens", cache_lens);
  s.words = (s.nodes + 31) / 32;
  check_dim(op, "mask", mask, 3, "[B, N, ceil(N / 32)] (build_tree's mask)");
  TORCH_CHECK_VALUE(mask.size(0) == s.batch && mask.size(1) == s.nodes && mask.size(2) == s.words,
                    msg(op, "mask", " must have shape [", s.batch, ", ", s.nodes, ", ", s.words, "] for N = ", s.nodes,
                        ", got ", shape_str(mask.sizes())));
  check_dtype(op, "mask", mask, at::kInt);
  check_device(op, "mask", mask, device);
  check_contiguous(op, "mask", mask);
  constexpr double kFloatMax = std::numeric_limits<float>::max(), kFloatMin = std::numeric_limits<float>::min();
  TORCH_CHECK_VALUE(std::isfinite(scale), msg(op, "scale", " must be finite, got ", scale));
  // The kernels compute in float32: a larger scale would become +-inf there.
  TORCH_CHECK_VALUE(std::abs(scale) <= kFloatMax,
                    msg(op, "scale", " = ", scale, " is outside the float32 range (|scale| <= ", kFloatMax,
                        "; the kernels compute in float32)"));
  TORCH_CHECK_VALUE(window >= 0, msg(op, "window", " must be >= 0 (0 disables it), got ", window));
  s.window = window;
  TORCH_CHECK_VALUE(std::isfinite(softcap) && softcap >= 0.0,
                    msg(op, "softcap", " must be finite and >= 0 (0 disables it), got ", softcap));
  // 0 or a normal float32: a cap that rounds to 0 (or to a subnormal) in float32
  // would silently switch capping off, one beyond float32 would become inf.
  TORCH_CHECK_VALUE(softcap == 0.0 || (softcap >= kFloatMin && softcap <= kFloatMax),
                    msg(op, "softcap", " = ", softcap, " is outside the float32 range [", kFloatMin, ", ", kFloatMax,
                        "] (0 disables it; the kernels compute in float32)"));
  s.softcap = static_cast<float>(softcap);
  if (sinks.has_value()) {
    const at::Tensor& t = *sinks;
    check_dtype(op, "sinks", t, at::kFloat);
    check_dim(op, "sinks", t, 1, "[Hq]");
    check_size(op, "sinks", t, 0, s.q_heads, "Hq (q.size(2))");
    check_device(op, "sinks", t, device);
    check_contiguous(op, "sinks", t);
    s.has_sinks = true;
  }
  return s;
}

ErrorRecord check_attention_row(const AttentionShape& s, int64_t b, const int32_t* cache_lens,
                                const int32_t* block_tables) {
  return attention::check_row(b, cache_lens[b], s.nodes, s.capacity,
                              block_tables ? block_tables + b * s.max_blocks : nullptr, s.page_size, s.num_pages);
}

void raise_attention_error(const char* op, const AttentionShape& s, const ErrorRecord& e) {
  switch (e.code) {
    case attention::kCacheLen:
      TORCH_CHECK_INDEX(false, msg(op, "cache_lens", "[", e.row, "] = ", e.value, ": cache_lens + N (N = ", s.nodes,
                                   ") must be within [0, ", s.capacity, "], the slots the cache holds"));
    case attention::kBlock:
      TORCH_CHECK_INDEX(false, msg(op, "block_tables", "[", e.row, ", ", e.where, "] = ", e.value, " is outside [0, ",
                                   s.num_pages, ") (the number of pages)"));
    case attention::kSink:
      TORCH_CHECK_VALUE(false, msg(op, "sinks", "[", e.where, "] = ", bits_double(e.value), " must be finite"));
    default:
      TORCH_CHECK(false, msg(op, "internal", ": unknown validation code ", e.code));
  }
}

std::tuple<at::Tensor, at::Tensor> tree_attention(const at::Tensor& q, const at::Tensor& k_cache,
                                                  const at::Tensor& v_cache, const at::Tensor& cache_lens,
                                                  const at::Tensor& mask, double scale, int64_t window, double softcap,
                                                  const std::optional<at::Tensor>& sinks) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("specdec::tree_attention", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, double, int64_t, double, const std::optional<at::Tensor>&)>();
  return op.call(q, k_cache, v_cache, cache_lens, mask, scale, window, softcap, sinks);
}

std::tuple<at::Tensor, at::Tensor> tree_attention_paged(const at::Tensor& q, const at::Tensor& k_pages,
                                                        const at::Tensor& v_pages, const at::Tensor& block_tables,
                                                        const at::Tensor& cache_lens, const at::Tensor& mask,
                                                        double scale, int64_t window, double softcap,
                                                        const std::optional<at::Tensor>& sinks) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("specdec::tree_attention_paged", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                                                    int64_t, double, const std::optional<at::Tensor>&)>();
  return op.call(q, k_pages, v_pages, block_tables, cache_lens, mask, scale, window, softcap, sinks);
}

}  // namespace specdec
