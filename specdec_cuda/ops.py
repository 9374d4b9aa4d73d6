"""Typed wrappers around ``torch.ops.specdec.*``, and their fake kernels.

Every function here is keyword-callable with the argument names of
ARCHITECTURE.md and calls the dispatcher, so CPU and CUDA tensors reach their
own kernels.  Errors name the op (``specdec::<op>``) and the argument.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _validate

__all__ = ["kv_compact_", "kv_compact_paged_"]

TensorOrList = torch.Tensor | Sequence[torch.Tensor]


def kv_compact_(
    caches: TensorOrList,
    cache_lens: torch.Tensor,
    accept_nodes: torch.Tensor,
    num_accepted: torch.Tensor,
) -> None:
    """Commit the accepted path's K/V into contiguous slots, in place, for all layers.

    For every tensor in ``caches`` and every row ``b`` with ``n = num_accepted[b]``
    and ``L = cache_lens[b]``: slot ``L + j`` receives the old slot
    ``L + accept_nodes[b, j]`` for ``j < n``; then ``cache_lens[b] += n``.
    Sources may overlap destinations (node 3 to slot 2 while node 2 goes to
    slot 1); the result equals copying in ascending ``j``.

    Args:
        caches: one tensor or a list of tensors ``[B, H, S, D]`` (typically every
            layer's keys and values), all of one shape and dtype (float32,
            float16 or bfloat16), contiguous, on one device, no two sharing memory.
            One launch handles the whole list.
        cache_lens: int32 ``[B]``, the committed length of each sequence; the tree's
            K/V sits at slots ``cache_lens[b] .. cache_lens[b] + N - 1``. Updated in place.
        accept_nodes: int32 ``[B, M]``, the accepted node indices (strictly
            increasing, ``>= 0``) in the first ``num_accepted[b]`` entries; the rest
            is ignored (verifiers pad it with -1).
        num_accepted: int32 ``[B]``, in ``[0, M]``.

    Raises:
        TypeError / ValueError / IndexError naming ``specdec::kv_compact_`` and the
        argument, on bad shapes, dtypes, devices, contiguity, or index values
        (``cache_lens[b] + accept_nodes[b, j]`` beyond ``S``, non-increasing nodes,
        ``num_accepted`` out of range).  Nothing is written when it raises.

    On CUDA the op validates on the device; in eager mode it then reads back one
    status word (a stream synchronisation) to raise.  Inside CUDA-graph capture
    it skips that read: invalid rows still write nothing, but cannot raise.
    """
    op = "specdec::kv_compact_"
    torch.ops.specdec.kv_compact_(
        _validate.tensor_list(op, "caches", caches),
        _validate.tensor(op, "cache_lens", cache_lens),
        _validate.tensor(op, "accept_nodes", accept_nodes),
        _validate.tensor(op, "num_accepted", num_accepted),
    )


def kv_compact_paged_(
    k_pages: TensorOrList,
    v_pages: TensorOrList,
    block_tables: torch.Tensor,
    cache_lens: torch.Tensor,
    accept_nodes: torch.Tensor,
    num_accepted: torch.Tensor,
) -> None:
    """:func:`kv_compact_` for a paged cache, addressed through a block table.

    Slot ``s`` of sequence ``b`` lives in page ``block_tables[b, s // page_size]``
    at offset ``s % page_size``.

    Args:
        k_pages, v_pages: one tensor or equally long lists of tensors
            ``[num_pages, page_size, H, D]`` (typically one per layer), all of one
            shape and dtype (float32, float16, bfloat16), contiguous, one device.
        block_tables: int32 ``[B, max_blocks]``; entries for the blocks a row
            touches (slots ``cache_lens[b]`` to ``cache_lens[b] + accept_nodes[b, n-1]``)
            must be distinct pages in ``[0, num_pages)``; other entries are ignored.
            Rows must not share the pages they write.
        cache_lens, accept_nodes, num_accepted: as in :func:`kv_compact_`, with
            ``max_blocks * page_size`` as the capacity of a sequence.

    Raises:
        as :func:`kv_compact_`, naming ``specdec::kv_compact_paged_``; also for a
        block-table entry out of range or repeated within a row.
    """
    op = "specdec::kv_compact_paged_"
    torch.ops.specdec.kv_compact_paged_(
        _validate.tensor_list(op, "k_pages", k_pages),
        _validate.tensor_list(op, "v_pages", v_pages),
        _validate.tensor(op, "block_tables", block_tables),
        _validate.tensor(op, "cache_lens", cache_lens),
        _validate.tensor(op, "accept_nodes", accept_nodes),
        _validate.tensor(op, "num_accepted", num_accepted),
    )


# ---------------------------------------------------------------------------
# Fake kernels (for torch.compile / FakeTensor tracing).  The KV ops only
# mutate their inputs, so the fake has nothing to allocate; shape and value
# checks run in the real kernels when the compiled graph executes.
# ---------------------------------------------------------------------------


@torch.library.register_fake("specdec::kv_compact_")
def _kv_compact_fake(caches, cache_lens, accept_nodes, num_accepted) -> None:
    return None


@torch.library.register_fake("specdec::kv_compact_paged_")
def _kv_compact_paged_fake(
    k_pages, v_pages, block_tables, cache_lens, accept_nodes, num_accepted
) -> None:
    return None
