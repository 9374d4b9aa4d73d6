"""Pure-PyTorch reference implementations: the test oracles and benchmark baselines.

Written the way engines write these steps in vectorised torch (one gather and
one scatter per cache tensor), not as Python loops over tokens, so that the
benchmarks compare against a fair baseline.  They do not validate their inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["kv_compact_", "kv_compact_paged_"]


def _accepted_pairs(
    cache_lens: torch.Tensor, accept_nodes: torch.Tensor, num_accepted: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows, source slots and destination slots of every accepted entry (int64)."""
    width = accept_nodes.shape[1]
    j = torch.arange(width, device=accept_nodes.device)
    valid = j[None, :] < num_accepted[:, None].long()
    rows, cols = valid.nonzero(as_tuple=True)
    base = cache_lens.long()[rows]
    src = base + accept_nodes.long()[rows, cols]
    dst = base + cols
    return rows, src, dst


def kv_compact_(
    caches: Sequence[torch.Tensor],
    cache_lens: torch.Tensor,
    accept_nodes: torch.Tensor,
    num_accepted: torch.Tensor,
) -> None:
    """Reference for :func:`specdec_cuda.ops.kv_compact_` (same arguments, in place).

    The right-hand side of each assignment is gathered before anything is
    written, which equals the sequential definition because sources never
    precede their destinations.
    """
    if isinstance(caches, torch.Tensor):
        caches = [caches]
    rows, src, dst = _accepted_pairs(cache_lens, accept_nodes, num_accepted)
    for cache in caches:
        cache[rows, :, dst] = cache[rows, :, src]
    cache_lens += num_accepted


def kv_compact_paged_(
    k_pages: Sequence[torch.Tensor],
    v_pages: Sequence[torch.Tensor],
    block_tables: torch.Tensor,
    cache_lens: torch.Tensor,
    accept_nodes: torch.Tensor,
    num_accepted: torch.Tensor,
) -> None:
    """Reference for :func:`specdec_cuda.ops.kv_compact_paged_` (same arguments, in place)."""
    if isinstance(k_pages, torch.Tensor):
        k_pages = [k_pages]
    if isinstance(v_pages, torch.Tensor):
        v_pages = [v_pages]
    rows, src, dst = _accepted_pairs(cache_lens, accept_nodes, num_accepted)
    tables = block_tables.long()
    for pages in [*k_pages, *v_pages]:
        page_size = pages.shape[1]
        src_page, src_off = tables[rows, src // page_size], src % page_size
        dst_page, dst_off = tables[rows, dst // page_size], dst % page_size
        pages[dst_page, dst_off] = pages[src_page, src_off]
    cache_lens += num_accepted
