"""Philox4x32-10: the C++ header (through specdec_cuda._C) and its PyTorch twin.

specdec_cuda._philox must equal csrc/include/specdec/philox.h bit for bit: the
reference implementations use it to reproduce the kernels' random draws.
"""

from __future__ import annotations

import pytest
import torch

from specdec_cuda import _C, _philox

from conftest import ALL_DEVICES

# The "philox4x32 10" known-answer vectors of Random123's tests/kat_vectors
# (CTR[4], KEY[2], EXPECTED[4]), as cut and pasted from that file into
# DEShawResearch/Random123-Boost, libs/random/test/test_philox.cpp
# (test_kat_philox4x32, commit 916db91ae4c6fd8324ef054a518851321ab41f91).
KATS = [
    (
        (0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x00000000, 0x00000000),
        (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8),
    ),
    (
        (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF),
        (0xFFFFFFFF, 0xFFFFFFFF),
        (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD),
    ),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


@pytest.mark.parametrize("ctr,key,expected", KATS)
def test_kat_cpp(ctr, key, expected):
    assert _C.philox4x32_10(list(ctr), list(key)) == expected
    assert _C.philox4x32_10(ctr, key) == expected


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_kat_torch(device):
    ctr = torch.tensor([k[0] for k in KATS], dtype=torch.int64, device=device)
    key = torch.tensor([k[1] for k in KATS], dtype=torch.int64, device=device)
    out = _philox.philox4x32_10(ctr, key)
    assert out.dtype == torch.int64 and out.shape == (len(KATS), 4) and out.device == ctr.device
    assert [tuple(r) for r in out.cpu().tolist()] == [k[2] for k in KATS]


def test_kat_torch_broadcast():
    # One key against several counters; a leading batch dimension of 1 on the key.
    ctr = torch.tensor([[k[0] for k in KATS]], dtype=torch.int64)  # [1, 3, 4]
    key = torch.tensor([[[0xA4093822, 0x299F31D0]]], dtype=torch.int64)  # [1, 1, 2]
    out = _philox.philox4x32_10(ctr, key)
    assert out.shape == (1, 3, 4)
    assert tuple(out[0, 2].tolist()) == KATS[2][2]
    for j in range(3):
        assert tuple(out[0, j].tolist()) == _C.philox4x32_10(KATS[j][0], (0xA4093822, 0x299F31D0))


def test_cpp_rejects_out_of_range_words():
    with pytest.raises(TypeError):
        _C.philox4x32_10([0, 0, 0, 2**32], [0, 0])
    with pytest.raises(TypeError):
        _C.philox4x32_10([0, 0, 0, -1], [0, 0])
    with pytest.raises(TypeError):
        _C.philox4x32_10([0, 0, 0], [0, 0])


def random_int64(gen: torch.Generator, n: int) -> torch.Tensor:
    """n int64 values over the whole range, plus magnitudes of every size."""
    full = torch.randint(INT64_MIN, INT64_MAX, (n,), generator=gen, dtype=torch.int64)
    bits = torch.randint(0, 64, (n,), generator=gen)
    return torch.where(torch.rand(n, generator=gen) < 0.5, full, full >> bits)


def random_triples(gen: torch.Generator, n: int):
    seeds = random_int64(gen, n)
    offsets = random_int64(gen, n)
    indices = random_int64(gen, n)
    edges = torch.tensor([0, 1, -1, INT64_MIN, INT64_MAX, 2**32 - 1, 2**32, -(2**32)], dtype=torch.int64)
    e = len(edges)
    seeds[:e] = edges
    offsets[:e] = edges.roll(3)
    indices[:e] = edges.roll(5)
    return seeds, offsets, indices


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_uniforms_match_cpp_bitwise(device, gen):
    n = 2000
    seeds, offsets, indices = random_triples(gen, n)
    assert (seeds < 0).any() and (indices.abs() > 2**40).any()
    # One stream per triple: the diagonal of the [n, n] matrix is uniform(seed[t], offset[t], index[t]).
    got = _philox.uniforms(seeds.to(device), offsets.to(device), indices.to(device))
    assert got.dtype == torch.float64 and got.shape == (n, n) and got.device.type == device
    diag = got.diagonal().cpu().tolist()
    want = [_C.philox_uniform(int(s), int(o), int(i)) for s, o, i in zip(seeds, offsets, indices)]
    mismatches = [(t, diag[t], want[t]) for t in range(n) if diag[t] != want[t]]
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:3]}"
    # Off-diagonal entries too: row b, column m is uniform(seed[b], offset[b], index[m]).
    for b, m in [(0, 1), (3, 7), (n - 1, 0), (17, n - 2)]:
        assert got[b, m].item() == _C.philox_uniform(int(seeds[b]), int(offsets[b]), int(indices[m]))
    assert bool(((got >= 0) & (got < 1)).all())


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_uniforms_one_stream(device):
    # A long run of consecutive indices of one stream, against the C++ header.
    seed = torch.tensor([-1234567890123], dtype=torch.int64, device=device)
    offset = torch.tensor([2**40 + 5], dtype=torch.int64, device=device)
    index = torch.arange(
        2**32 - 100, 2**32 + 100, dtype=torch.int64, device=device
    )  # crosses the word boundary
    got = _philox.uniforms(seed, offset, index)[0].cpu().tolist()
    want = [_C.philox_uniform(-1234567890123, 2**40 + 5, int(i)) for i in index.cpu()]
    assert got == want


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_uniforms_range_and_moments(device):
    seed = torch.tensor([7, -7], dtype=torch.int64, device=device)
    offset = torch.tensor([0, 0], dtype=torch.int64, device=device)
    index = torch.arange(500_000, dtype=torch.int64, device=device)
    u = _philox.uniforms(seed, offset, index)
    assert bool(((u >= 0) & (u < 1)).all())
    assert abs(u.mean().item() - 0.5) < 0.002
    assert abs(u.var().item() - 1 / 12) < 0.002
    # Different seeds give different streams.
    assert not torch.equal(u[0], u[1])


def test_uniforms_empty_and_bad_input():
    e = torch.empty(0, dtype=torch.int64)
    assert _philox.uniforms(e, e, torch.arange(3)).shape == (0, 3)
    assert _philox.uniforms(
        torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64), e
    ).shape == (2, 0)
    with pytest.raises(TypeError, match="int64"):
        _philox.uniforms(torch.zeros(2, dtype=torch.int32), torch.zeros(2, dtype=torch.int64), e)
    with pytest.raises(ValueError, match="same shape"):
        _philox.uniforms(torch.zeros(2, dtype=torch.int64), torch.zeros(3, dtype=torch.int64), e)
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        _philox.philox4x32_10(torch.zeros(3, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))
