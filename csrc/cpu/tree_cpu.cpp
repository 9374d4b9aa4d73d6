// Tree ops, CPU kernels.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "ops/acceptance.h"
#include "ops/dispatch.h"
#include "ops/tree.h"
#include "specdec/acceptance.h"
#include "specdec/attention.h"

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

// Tree attention for one (sequence, KV head) per task: the whole GQA group's
// N * G query rows at once against blocks of kBlock keys (at::mm for QK^T and
// PV, float32), online softmax across blocks; the mask is consulted only in
// blocks that reach the tree slots.  `kv(b, h, slot, which)` returns a
// pointer to the D values of K (which = 0) or V (1) of that slot.
constexpr int64_t kBlock = 256;

template <typename scalar_t, class KvRow>
void attend(const AttentionShape& s, const scalar_t* q, const int32_t* lens, const int32_t* mask,
            float scale, KvRow kv, scalar_t* out, float* lse) {
  const int64_t G = s.group(), rows = s.nodes * G, D = s.dim, N = s.nodes;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  at::parallel_for(0, s.batch * s.kv_heads, 1, [&](int64_t begin, int64_t end) {
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    at::Tensor Q = at::empty({rows, D}, f32);
    at::Tensor K = at::empty({kBlock, D}, f32), V = at::empty({kBlock, D}, f32);
    at::Tensor acc = at::empty({rows, D}, f32);
    std::vector<float> m(rows), l(rows);
    float* qp = Q.data_ptr<float>();
    float* kp = K.data_ptr<float>();
    float* vp = V.data_ptr<float>();
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / s.kv_heads, h = task % s.kv_heads;
      const int64_t length = lens[b], total = length + N;
      for (int64_t i = 0; i < N; ++i) {
        for (int64_t g = 0; g < G; ++g) {
          const scalar_t* src = q + ((b * N + i) * s.q_heads + h * G + g) * D;
          float* dst = qp + (i * G + g) * D;
          for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<float>(src[d]) * scale;
        }
      }
      acc.zero_();
      float* ap = acc.data_ptr<float>();
      std::fill(m.begin(), m.end(), neg_inf);
      std::fill(l.begin(), l.end(), 0.0f);
      for (int64_t s0 = 0; s0 < total; s0 += kBlock) {
        const int64_t bk = std::min(kBlock, total - s0);
        for (int64_t c = 0; c < bk; ++c) {
          const scalar_t* ks = kv(b, h, s0 + c, 0);
          const scalar_t* vs = kv(b, h, s0 + c, 1);
          for (int64_t d = 0; d < D; ++d) {
            kp[c * D + d] = static_cast<float>(ks[d]);
            vp[c * D + d] = static_cast<float>(vs[d]);
          }
        }
        at::Tensor S = at::mm(Q, K.narrow(0, 0, bk).t());  // [rows, bk], scaled
        float* sp = S.data_ptr<float>();
        const bool has_tree = s0 + bk > length;
        for (int64_t r = 0; r < rows; ++r) {
          float* row = sp + r * bk;
          if (has_tree) {
            const int32_t* mrow = mask + (b * N + r / G) * s.words;
            for (int64_t c = std::max<int64_t>(0, length - s0); c < bk; ++c) {
              if (!attention::visible(s0 + c, length, mrow)) row[c] = neg_inf;
            }
          }
          float block_max = neg_inf;
          for (int64_t c = 0; c < bk; ++c) block_max = std::max(block_max, row[c]);
          const float m_new = std::max(m[r], block_max);
          if (m_new == neg_inf) {  // nothing visible yet
            std::fill(row, row + bk, 0.0f);
            continue;
          }
          const float alpha = std::exp(m[r] - m_new);  // 0 when m[r] = -inf
          float sum = 0.0f;
          for (int64_t c = 0; c < bk; ++c) {
            row[c] = std::exp(row[c] - m_new);
            sum += row[c];
          }
          l[r] = l[r] * alpha + sum;
          m[r] = m_new;
          if (alpha != 1.0f) {
            for (int64_t d = 0; d < D; ++d) ap[r * D + d] *= alpha;
          }
        }
        acc.addmm_(S, V.narrow(0, 0, bk));
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = r / G, head = h * G + r % G;
        scalar_t* o = out + ((b * N + i) * s.q_heads + head) * D;
        const bool seen = l[r] > 0.0f;
        const float inv = seen ? 1.0f / l[r] : 0.0f;
        for (int64_t d = 0; d < D; ++d) o[d] = static_cast<scalar_t>(ap[r * D + d] * inv);
        lse[(b * N + i) * s.q_heads + head] = seen ? m[r] + std::log(l[r]) : neg_inf;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> attention_cpu(const char* op, const at::Tensor& q,
                                                 const at::Tensor& k, const at::Tensor& v,
                                                 const at::Tensor* block_tables,
                                                 const at::Tensor& cache_lens,
                                                 const at::Tensor& mask, double scale) {
  const AttentionShape s = check_tree_attention(op, q, k, v, block_tables, cache_lens, mask, scale);
  const int32_t* lens = cache_lens.data_ptr<int32_t>();
  const int32_t* tables = block_tables ? block_tables->data_ptr<int32_t>() : nullptr;
  for (int64_t b = 0; b < s.batch; ++b) {
    int64_t where = 0, value = 0;
    const int32_t code = check_attention_row(s, b, lens, tables, &where, &value);
    if (code != attention::kOk) throw_attention_row_error(op, s, b, code, where, value);
  }
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({s.batch, s.nodes, s.q_heads}, q.options().dtype(at::kFloat));
  SPECDEC_DISPATCH_KV_TYPES(q.scalar_type(), "tree_attention", [&] {
    const scalar_t* kp = k.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    const int64_t D = s.dim, Hkv = s.kv_heads;
    if (tables == nullptr) {
      const int64_t S = s.capacity;
      auto kv = [=](int64_t b, int64_t h, int64_t slot, int which) {
        return (which ? vp : kp) + ((b * Hkv + h) * S + slot) * D;
      };
      attend<scalar_t>(s, q.data_ptr<scalar_t>(), lens, mask.data_ptr<int32_t>(),
                       static_cast<float>(scale), kv, out.data_ptr<scalar_t>(), lse.data_ptr<float>());
    } else {
      const int64_t ps = s.page_size, mb = s.max_blocks;
      auto kv = [=](int64_t b, int64_t h, int64_t slot, int which) {
        const int64_t page = tables[b * mb + slot / ps];
        return (which ? vp : kp) + ((page * ps + slot % ps) * Hkv + h) * D;
      };
      attend<scalar_t>(s, q.data_ptr<scalar_t>(), lens, mask.data_ptr<int32_t>(),
                       static_cast<float>(scale), kv, out.data_ptr<scalar_t>(), lse.data_ptr<float>());
    }
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> tree_attention_cpu(const at::Tensor& q, const at::Tensor& k_cache,
                                                      const at::Tensor& v_cache,
                                                      const at::Tensor& cache_lens,
                                                      const at::Tensor& mask, double scale) {
  return attention_cpu("specdec::tree_attention", q, k_cache, v_cache, nullptr, cache_lens, mask,
                       scale);
}

std::tuple<at::Tensor, at::Tensor> tree_attention_paged_cpu(
    const at::Tensor& q, const at::Tensor& k_pages, const at::Tensor& v_pages,
    const at::Tensor& block_tables, const at::Tensor& cache_lens, const at::Tensor& mask,
    double scale) {
  return attention_cpu("specdec::tree_attention_paged", q, k_pages, v_pages, &block_tables,
                       cache_lens, mask, scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) {
  m.impl("build_tree", &build_tree_cpu);
  m.impl("tree_attention", &tree_attention_cpu);
  m.impl("tree_attention_paged", &tree_attention_paged_cpu);
}

}  // namespace specdec
