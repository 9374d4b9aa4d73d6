"""The vLLM plug-in's tensor adapter (``specdec_cuda.integrations.vllm.verify``),
without vLLM: its ragged layout and output format on random batches.

- greedy: every request's output is the longest prefix of its drafts that follows
  the argmax chain, then the argmax after it, then -1 (a pure-Python reference);
- sampled with top-k 1: the target is one-hot at the argmax, so the lossless rule
  must give exactly the greedy answer, with deterministic drafts and with draft
  probabilities (any q: the residual of a one-hot p is that one-hot);
- the layout cache returns one object per (num_draft_tokens, max_spec_len, device).
"""

from __future__ import annotations

import pytest
import torch

from specdec_cuda.integrations import vllm as plugin


def _batch(seed: int, batch: int, max_spec: int, V: int):
    g = torch.Generator().manual_seed(seed)
    num = torch.randint(0, max_spec + 1, (batch,), generator=g).tolist()
    logits = torch.randn(sum(num) + batch, V, generator=g)
    # vLLM's order: request b's n_b target rows, then its bonus row.
    arg = logits.argmax(-1)
    drafts, row = [], 0
    for n in num:
        for i in range(n):
            # follow the argmax with probability 0.7, so chains stop at every depth
            hit = bool(torch.rand((), generator=g) < 0.7)
            drafts.append(int(arg[row + i]) if hit else int((arg[row + i] + 1) % V))
        row += n + 1
    return num, logits, torch.tensor(drafts, dtype=torch.int32)


def _greedy_reference(num, logits, drafts, max_spec):
    arg = logits.argmax(-1).tolist()
    out, row, d = [], 0, 0
    for n in num:
        toks = []
        for i in range(n):
            if drafts[d + i] != arg[row + i]:
                break
            toks.append(int(drafts[d + i]))
        toks.append(arg[row + len(toks)])
        out.append(toks + [-1] * (max_spec + 1 - len(toks)))
        row += n + 1
        d += n
    return out


@pytest.mark.parametrize("seed", range(12))
def test_greedy_follows_the_argmax_chain(seed):
    max_spec = 1 + seed % 5
    # up to 16 requests the output is built as lists, above it by tensor ops
    num, logits, drafts = _batch(seed, 1 + seed % 9 if seed < 9 else 8 + 4 * seed, max_spec, 50)
    seeds = torch.zeros(len(num), dtype=torch.int64)
    out = plugin.verify(logits, drafts, num, None, None, None, None, None, seeds, max_spec)
    assert out.dtype == torch.int32 and out.shape == (len(num), max_spec + 1)
    assert out.tolist() == _greedy_reference(num, logits, drafts, max_spec)
    zero_t = torch.zeros(len(num))
    out_t0 = plugin.verify(logits, drafts, num, None, zero_t, None, None, None, seeds, max_spec)
    assert torch.equal(out, out_t0)


@pytest.mark.parametrize("with_q", [False, True])
@pytest.mark.parametrize("seed", range(8))
def test_sampled_with_top_k_one_is_greedy(seed, with_q):
    max_spec = 4
    B, V = (1 + seed % 8 if seed < 6 else 20 + seed), 64
    num, logits, drafts = _batch(100 + seed, B, max_spec, V)
    g = torch.Generator().manual_seed(seed)
    q = torch.softmax(torch.randn(drafts.numel(), V, generator=g), -1) if with_q else None
    out = plugin.verify(
        logits,
        drafts,
        num,
        q,
        torch.full((B,), 0.7),
        torch.ones(B, dtype=torch.int64),
        torch.full((B,), 0.9),
        None,
        torch.randint(0, 2**62, (B,), generator=g),
        max_spec,
    )
    assert out.tolist() == _greedy_reference(num, logits, drafts, max_spec)


def test_layouts_are_cached_per_shape():
    a = plugin._layout([2, 0, 4], 4, torch.device("cpu"))
    assert plugin._layout((2, 0, 4), 4, torch.device("cpu")) is a
    assert plugin._layout([2, 0, 4], 5, torch.device("cpu")) is not a
    assert a.cu_nodes.tolist() == [0, 3, 4, 9]
    assert a.parents.tolist() == [-1, 0, 1, -1, -1, 0, 1, 2, 3]
    assert a.draft_rows.tolist() == [1, 2, 5, 6, 7, 8]
    assert a.target_rows.tolist() == [0, 1, 4, 5, 6, 7]
    assert a.bonus_rows.tolist() == [2, 3, 8]
