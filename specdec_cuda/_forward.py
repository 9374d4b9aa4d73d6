"""Forwards over chains and trees with ragged rows, shared by the drafters and the loop."""

from __future__ import annotations

import torch

from . import ops
from .cache import KVCache
from .tree import chain_parents

# The longest chain one forward processes (prompts are consumed in chunks).
PREFILL_CHUNK = 512


def forward_tree(
    model,
    cache,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    *,
    role: str = "model",
    with_depth: bool = False,
):
    """Run ``model`` over a batch of trees (chains included) written at ``cache.lens``.

    ``tokens`` int64 ``[B, N]``, ``parents`` int32 ``[B, N]``.  Positions are
    ``cache.lens + depth``.  Returns float32 logits ``[B, N, V]``; ``cache.lens`` is
    unchanged (the caller advances or commits).  ``with_depth=True`` also returns
    the nodes' depths (int32 ``[B, N]``, from ``build_tree``).
    """
    mask, depth = ops.build_tree(parents)
    positions = cache.lens.long()[:, None] + depth.long()
    cache.reserve(tokens.shape[1])
    logits = model.forward(tokens, positions, cache, mask)
    want = (tokens.shape[0], tokens.shape[1], model.vocab_size)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != want:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise RuntimeError(
            f"SpeculativeDecoder: the {role}'s forward returned logits of shape "
            f"{got}, expected [B, N, vocab_size] = {list(want)}"
        )
    return (logits.float(), depth) if with_depth else logits.float()


def gather_rows(seq: torch.Tensor, start: torch.Tensor, count: torch.Tensor, width: int) -> torch.Tensor:
    """``out[b, i] = seq[b, start[b] + min(i, count[b] - 1)]`` for ``i < width``
    (rows shorter than ``width`` repeat their last token; a row with count 0 repeats
    ``seq[b, start[b]]``)."""
    i = torch.arange(width, device=seq.device)
    last = (count.long() - 1).clamp(min=0)[:, None]
    idx = start.long()[:, None] + torch.minimum(i[None, :], last)
    idx = idx.clamp(max=seq.shape[1] - 1)
    return torch.gather(seq, 1, idx)


def prefill(
    model, cache, seq: torch.Tensor, upto: torch.Tensor, *, role: str = "model", chunk: int | None = None
) -> int:
    """Consume ``seq[b, cache.lens[b] : upto[b]]`` into the cache as chains, in chunks.

    Returns the number of forwards run.  While every row has tokens left, the rows go
    together, as many tokens each as the shortest has left (no padding).  Then, on a
    contiguous cache, each row with tokens left goes alone (a one-row view), so ragged
    prompts cost their own length, not the longest's; on a paged cache the rest go
    together, padded (rows with nothing left ride along: their writes land past their
    length and are overwritten later).
    """
    chunk = chunk or PREFILL_CHUNK
    calls = 0
    while True:
        remaining = (upto.to(cache.lens.device).int() - cache.lens).clamp(min=0)
        most = int(remaining.max()) if remaining.numel() else 0
        if most == 0:
            return calls
        least = int(remaining.min())
        if least == 0 and type(cache) is KVCache and cache.num_layers > 0:
            for b in (remaining > 0).nonzero().flatten().tolist():
                calls += prefill(model, cache.row(b), seq[b : b + 1], upto[b : b + 1], role=role, chunk=chunk)
            return calls
        n = min(least if least > 0 else most, chunk)
        take = remaining.clamp(max=n)
        tokens = gather_rows(seq, cache.lens, take, n)
        forward_tree(model, cache, tokens, chain_parents(seq.shape[0], n, seq.device), role=role)
        cache.advance(take)
        calls += 1
