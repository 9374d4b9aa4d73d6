"""Shared pytest fixtures.

Random inputs are fresh on every run: the base seed comes from
SPECDEC_TEST_SEED when set, else from the OS, and is printed in the report
header so that a failing run can be replayed exactly
(SPECDEC_TEST_SEED=<seed> pytest ...).  Each test derives its own seed from the
base seed and its node id.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib

import pytest
import torch

import specdec_cuda  # noqa: F401  (registers the ops)
from specdec_cuda._graphs import capture as cuda_graph_capture  # noqa: F401  (used by tests)

BASE_SEED = int(os.environ.get("SPECDEC_TEST_SEED", int.from_bytes(os.urandom(4), "little")))

# CUDA cases are always collected, and skip (with the reason) on a machine without a GPU.
ALL_DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here"),
    ),
]


def pytest_report_header(config):
    return f"specdec_cuda test seed: SPECDEC_TEST_SEED={BASE_SEED}"


@pytest.fixture
def seed(request) -> int:
    """This test's seed (base seed mixed with the test id); also seeds torch."""
    s = (BASE_SEED + zlib.crc32(request.node.nodeid.encode())) % (2**31)
    torch.manual_seed(s)
    return s


@pytest.fixture
def gen(seed) -> torch.Generator:
    """A CPU generator seeded with this test's seed."""
    return torch.Generator().manual_seed(seed)


def random_parents(gen: torch.Generator, nodes: int, shape: str) -> list[int]:
    """parents[0] = -1 and parents[i] < i: a chain, a star or a uniform random tree."""
    if shape == "chain":
        return [-1] + list(range(nodes - 1))
    if shape == "star":
        return [-1] + [0] * (nodes - 1)
    return [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, nodes)]


def on(device, **tensors):
    """The keyword arguments with every tensor moved to ``device``."""
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in tensors.items()}


# Mutations for the bad-input tables: each takes the dict of an op's (valid)
# keyword arguments and changes one of them.
NAN, INF = float("nan"), float("inf")


def set_arg(name, fn):
    """A mutation replacing argument `name` by fn(old value)."""
    return lambda a: a.update({name: fn(a[name])})


def poke_arg(name, index, value):
    """A mutation writing one element of a (cloned) tensor argument."""

    def mutate(a):
        t = a[name].clone()
        t[index] = value
        a[name] = t

    return mutate


def noncontig(t):
    """The same values in a non-contiguous layout (last two dims transposed in memory)."""
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


# The command line, run as a user runs it (fixed terminal width: argparse wraps help).


def shows_default(help_text: str, default) -> bool:
    """Whether ``--help`` output states ``(default: <default>)``; argparse may wrap a long
    default (an absolute path) mid-word, so the comparison ignores whitespace."""
    return "".join(f"(default: {default})".split()) in "".join(help_text.split())


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "specdec_cuda", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "100"},
    )
