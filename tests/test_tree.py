"""build_tree against the reference and an independent ancestor check."""

from __future__ import annotations

import pytest
import torch

from specdec_cuda import ops, reference

from conftest import ALL_DEVICES, random_parents


def random_batch(gen, batch: int, nodes: int, shape: str) -> torch.Tensor:
    return torch.tensor([random_parents(gen, nodes, shape) for _ in range(batch)], dtype=torch.int32).view(
        batch, nodes
    )


def unpack(mask: torch.Tensor, nodes: int) -> torch.Tensor:
    """int32 [B, N, W] -> bool [B, N, N]."""
    bits = (mask.long()[..., None] >> torch.arange(32)) & 1  # [B, N, W, 32]
    return bits.flatten(-2)[..., :nodes].bool()


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("shape", ["chain", "star", "random"])
@pytest.mark.parametrize("nodes", [1, 2, 31, 32, 33, 64, 100, 256])
def test_matches_reference_and_ancestry(device, shape, nodes, gen):
    parents = random_batch(gen, 3, nodes, shape)
    mask, depth = ops.build_tree(parents.to(device))
    ref_mask, ref_depth = reference.build_tree(parents)
    assert mask.shape == (3, nodes, (nodes + 31) // 32) and mask.dtype == torch.int32
    assert torch.equal(mask.cpu(), ref_mask) and torch.equal(depth.cpu(), ref_depth)
    # Independent check: j is set in row i iff walking up from i reaches j.
    dense = unpack(mask.cpu(), nodes)
    for b in range(3):
        pars = parents[b].tolist()
        for i in range(nodes):
            up, node = set(), i
            while node >= 0:
                up.add(node)
                node = pars[node]
            assert set(torch.nonzero(dense[b, i])[:, 0].tolist()) == up
            assert int(depth[b, i]) == len(up) - 1


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_bit_31_and_word_boundaries(device):
    """A chain of 64: node 31's bit is the sign bit of word 0; node 32 starts word 1."""
    parents = torch.arange(-1, 63, dtype=torch.int32)[None].to(device)
    mask, depth = ops.build_tree(parents)
    mask = mask.cpu()
    assert mask[0, 31, 0].item() == -1  # bits 0..31 all set
    assert mask[0, 31, 1].item() == 0
    assert mask[0, 32, 1].item() == 1
    assert mask[0, 63, 1].item() == -1
    assert depth[0, 63].item() == 63


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_empty_batch_opcheck_and_compile(device, gen):
    mask, depth = ops.build_tree(torch.zeros(0, 5, dtype=torch.int32, device=device))
    assert mask.shape == (0, 5, 1) and depth.shape == (0, 5)
    parents = random_batch(gen, 4, 40, "random").to(device)
    torch.library.opcheck(torch.ops.specdec.build_tree.default, (parents,))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(p):
        m, d = ops.build_tree(p)
        return m, d + 1

    m, d = f(parents)
    ref_m, ref_d = reference.build_tree(parents.cpu())
    assert torch.equal(m.cpu(), ref_m) and torch.equal(d.cpu(), ref_d + 1)


BAD = {
    "root parent not -1": (
        lambda p: p.__setitem__((1, 0), 0),
        ValueError,
        "specdec::build_tree: parents[1, 0] = 0: node 0 is the root",
    ),
    "parent after the node": (
        lambda p: p.__setitem__((0, 3), 5),
        ValueError,
        "specdec::build_tree: parents[0, 3] = 5 is outside [0, 3)",
    ),
    "parent is the node": (lambda p: p.__setitem__((0, 2), 2), ValueError, "parents[0, 2] = 2"),
    "negative parent": (lambda p: p.__setitem__((1, 4), -1), ValueError, "parents[1, 4] = -1"),
}


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("case", sorted(BAD))
def test_broken_tree_raises(device, case):
    parents = torch.tensor([[-1, 0, 0, 1, 1, 2], [-1, 0, 1, 2, 3, 4]], dtype=torch.int32)
    mutate, exc, fragment = BAD[case]
    mutate(parents)
    with pytest.raises(exc) as info:
        ops.build_tree(parents.to(device))
    assert fragment in str(info.value), str(info.value)


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_bad_arguments(device):
    with pytest.raises(TypeError, match=r"specdec::build_tree: parents must have dtype int32, got int64"):
        ops.build_tree(torch.zeros(2, 3, dtype=torch.int64, device=device))
    with pytest.raises(ValueError, match=r"specdec::build_tree: parents must be a 2-D tensor"):
        ops.build_tree(torch.zeros(3, dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match=r"at least the root node"):
        ops.build_tree(torch.zeros(2, 0, dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match=r"must be contiguous"):
        ops.build_tree(torch.zeros(3, 2, dtype=torch.int32, device=device).t())
