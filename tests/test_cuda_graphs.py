"""The acceptance ops captured in a CUDA graph: no host sync inside, replays match eager."""

from __future__ import annotations

import pytest
import torch

from specdec_cuda import ops

from conftest import cuda_graph_capture

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


def test_sampling_and_rejection_in_one_graph():
    gen = torch.Generator().manual_seed(21)
    batch, nodes, vocab = 8, 5, 1000
    logits_t = (torch.randn(batch, nodes, vocab, generator=gen) * 2).cuda()
    logits_d = (logits_t.cpu() + torch.randn(batch, nodes, vocab, generator=gen)).cuda()
    temperature = torch.full((batch,), 0.8, device="cuda")
    top_k = torch.full((batch,), 40, dtype=torch.int32, device="cuda")
    top_p = torch.full((batch,), 0.95, device="cuda")
    parents = torch.arange(-1, nodes - 1, dtype=torch.int32).repeat(batch, 1).cuda()
    seed = torch.randint(0, 2**40, (batch,), generator=gen).cuda()
    offset = torch.zeros(batch, dtype=torch.int64, device="cuda")

    def step():
        p = ops.sampling_probs(logits_t, temperature, top_k, top_p)
        q = ops.sampling_probs(logits_d, temperature, top_k, top_p)
        tokens = torch.multinomial(q.view(-1, vocab), 1, generator=None).view(batch, nodes)
        return tokens, ops.rejection_sample(tokens, parents, q, p, seed, offset)

    graph, (tokens, out) = cuda_graph_capture(step)
    for _ in range(3):
        offset.add_(nodes + 1)
        graph.replay()
        torch.cuda.synchronize()
        expected = ops.rejection_sample(
            tokens,
            parents,
            ops.sampling_probs(logits_d, temperature, top_k, top_p),
            ops.sampling_probs(logits_t, temperature, top_k, top_p),
            seed,
            offset,
        )
        for got, want in zip(out, expected):
            assert torch.equal(got, want)
        assert bool(((out[2] >= 0) & (out[2] < vocab)).all())


def test_greedy_and_typical_capture():
    gen = torch.Generator().manual_seed(22)
    batch, nodes, vocab = 4, 7, 300
    parents = torch.tensor([-1, 0, 0, 1, 1, 2, 2], dtype=torch.int32).repeat(batch, 1).cuda()
    probs = torch.softmax(torch.randn(batch, nodes, vocab, generator=gen) * 3, -1).cuda()
    tokens = torch.randint(0, vocab, (batch, nodes), generator=gen).cuda()
    seed = torch.arange(batch, dtype=torch.int64, device="cuda")
    offset = torch.zeros(batch, dtype=torch.int64, device="cuda")

    def step():
        return (
            ops.verify_greedy(tokens, parents, probs.argmax(-1)),
            ops.typical_accept(tokens, parents, probs, 0.09, 0.3, seed, offset),
        )

    graph, (greedy, typical) = cuda_graph_capture(step)
    graph.replay()
    torch.cuda.synchronize()
    want_g = ops.verify_greedy(tokens, parents, probs.argmax(-1))
    want_t = ops.typical_accept(tokens, parents, probs, 0.09, 0.3, seed, offset)
    for got, want in zip(greedy + typical, want_g + want_t):
        assert torch.equal(got, want)
