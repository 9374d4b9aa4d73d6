"""CUDA-graph capture as the ops need it (used by the tests and the benchmarks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def capture(fn: Callable[[], Any]) -> tuple[torch.cuda.CUDAGraph, Any]:
    """Capture ``fn()`` in a CUDA graph; return the graph and the captured call's outputs.

    ``fn`` runs once first on a side stream (capture needs warmed-up kernels and
    allocations); replaying the graph re-runs the captured launches on the same
    memory.  The ops skip their eager error read-back while being captured.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out
