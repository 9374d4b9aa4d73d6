"""specdec_cuda as vLLM's speculative-decoding verifier (vLLM v1, 0.32).

A vLLM general plug-in (entry point group ``vllm.general_plugins``, name
``specdec_cuda``).  Select it explicitly with ``VLLM_PLUGINS=specdec_cuda`` (vLLM
loads every installed plug-in when the variable is unset).  In every vLLM process
:func:`register` replaces the verification step of vLLM's ``RejectionSampler``:

- vLLM's own logits processors still run first (penalties, bad words, allowed
  token ids on the draft rows; the sampler's processors on the bonus rows);
- the rows are laid end to end as our ragged layout (request b: its n_b draft rows
  then its bonus row, exactly vLLM's logits order), and one call of
  ``sampling_probs_ragged`` applies each request's temperature, top-k, top-p and
  min-p to all of them, then ``rejection_sample_ragged`` verifies (with vLLM's draft
  probabilities when it drafts by sampling, the deterministic-draft rule for
  greedy / n-gram drafts) and draws the correction or bonus token; all-greedy
  batches take ``verify_greedy_ragged`` on the argmax;
- seeds: a request with a seed draws each step's Philox seed from its own
  ``torch.Generator`` (so it reproduces exactly); the others from torch's global
  generator, which vLLM seeds alike on every tensor-parallel rank.

min-p works under speculative decoding (vLLM 0.32 refuses it there): the plug-in
lets ``SamplingParams`` through with ``min_p`` and keeps vLLM's per-request min-p
state, which it passes to ``sampling_probs_ragged``; the verification stays
lossless for the min-p-transformed target distribution.

Calls the plug-in cannot serve exactly (logprobs requested, synthetic acceptance
mode) go to vLLM's original verifier and are counted as ``fallbacks``; a batch
with min-p in such a call is refused rather than verified without it.

The counter: :func:`stats` in the process that verifies (the worker, or the
user's process with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``), and
``llm.collective_rpc("specdec_stats")`` from the user process (one dict per
rank).  ``SPECDEC_VLLM_DISABLE=1`` makes :func:`register` a no-op.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import torch

from .. import ops

__all__ = ["register", "stats", "reset_stats", "set_enabled", "verify"]

_LOCK = threading.Lock()
_STATS: dict[str, Any] = {}
_STATE = {"registered": False, "enabled": True}
PLACEHOLDER = -1  # vLLM's PLACEHOLDER_TOKEN_ID


def reset_stats() -> None:
    with _LOCK:
        _STATS.clear()
        _STATS.update(
            verified_batches=0,
            dummy_batches=0,
            requests=0,
            draft_tokens=0,
            emitted_tokens=0,
            greedy_batches=0,
            draft_probs_batches=0,
            min_p_batches=0,
            fallbacks=0,
            pid=os.getpid(),
        )


reset_stats()


def stats() -> dict[str, Any]:
    """The counters of this process (verified_batches counts the batches our ops
    verified; dummy_batches vLLM's warm-up calls among them)."""
    with _LOCK:
        return dict(_STATS)


def set_enabled(enabled: bool) -> None:
    """Switch the replacement on or off at run time (off: vLLM's own verifier)."""
    _STATE["enabled"] = bool(enabled)


def _count(**deltas) -> None:
    with _LOCK:
        for k, v in deltas.items():
            _STATS[k] = _STATS.get(k, 0) + v


# ---------------------------------------------------------------------------
# The verification (vLLM-independent: tensors in, tensors out).
# ---------------------------------------------------------------------------


class _Layout:
    """The index tensors of one ragged chain batch (request b: its root then its
    n_b drafts, nodes ``cu_nodes[b] .. cu_nodes[b+1]-1``), built once per
    (num_draft_tokens, max_spec_len, device) and reused: vLLM repeats few shapes.

    - ``batch`` (B), ``total`` (T nodes), ``num_tokens`` (vLLM's draft tokens, T - B);
    - ``cu_nodes`` int32 ``[B+1]``; ``parents`` int32 ``[T]`` (chains: -1, 0, 1, ...);
    - ``draft_rows`` int64 ``[num_tokens]``: the node of each of vLLM's draft tokens;
    - ``target_rows`` = ``draft_rows - 1``: the node whose row holds each of vLLM's
      target rows (the distribution that draft was checked against);
    - ``bonus_rows`` int64 ``[B]``: each request's last node (vLLM's bonus row);
    - ``col`` ``[1, W]`` and ``src`` ``[B, W]`` (W = max_spec_len + 1): the output
      columns and, per column, the index into ``draft_token_ids`` it copies from;
    - ``draft_starts``: request b's first index in ``draft_token_ids``, on the host.
    """

    def __init__(self, num_draft_tokens: tuple[int, ...], max_spec_len: int, device: torch.device):
        self.batch = batch = len(num_draft_tokens)
        n = torch.tensor(num_draft_tokens, dtype=torch.int64)
        sizes = n + 1
        cu = torch.zeros(batch + 1, dtype=torch.int64)
        cu[1:] = torch.cumsum(sizes, 0)
        self.total = int(cu[-1])
        self.num_tokens = self.total - batch
        node = torch.arange(self.total) - torch.repeat_interleave(cu[:-1], sizes)
        draft_rows = torch.nonzero(node > 0).squeeze(1)
        col = torch.arange(max_spec_len + 1)
        draft_start = cu[:-1] - torch.arange(batch)  # request b's first index in draft_token_ids
        self.cu_nodes = cu.to(device=device, dtype=torch.int32)
        self.parents = (node - 1).to(device=device, dtype=torch.int32)
        self.draft_rows = draft_rows.to(device)
        self.target_rows = (draft_rows - 1).to(device)
        self.bonus_rows = (cu[1:] - 1).to(device)
        self.col = col[None, :].to(device)
        self.src = (draft_start[:, None] + col).clamp(max=max(self.num_tokens - 1, 0)).to(device)
        self.draft_starts = draft_start.tolist()


_LAYOUTS: dict[tuple, _Layout] = {}
_MAX_LAYOUTS = 512


def _layout(num_draft_tokens, max_spec_len: int, device: torch.device) -> _Layout:
    key = (tuple(int(x) for x in num_draft_tokens), int(max_spec_len), device)
    hit = _LAYOUTS.get(key)
    if hit is None:
        if len(_LAYOUTS) >= _MAX_LAYOUTS:
            _LAYOUTS.clear()
        hit = _LAYOUTS[key] = _Layout(*key)
    return hit


def _tokens(lay: _Layout, draft_token_ids: torch.Tensor) -> torch.Tensor:
    """Our per-node tokens: draft i of request b at node i; roots 0 (never read)."""
    tokens = torch.zeros(lay.total, dtype=torch.int64, device=lay.cu_nodes.device)
    tokens[lay.draft_rows] = draft_token_ids.to(device=tokens.device, dtype=torch.int64)
    return tokens


# On the host, up to this many requests build the output as Python lists (a few µs)
# rather than through five small tensor ops (about 40 µs).
_LIST_OUTPUT_MAX_BATCH = 16


def _output(
    lay: _Layout, draft_token_ids: torch.Tensor, num: torch.Tensor, nxt: torch.Tensor
) -> torch.Tensor:
    """vLLM's SamplerOutput layout: per request its accepted drafts (chains: the first
    num-1), then the correction or bonus token, then -1."""
    width = lay.col.shape[1]
    on_host = num.device.type == "cpu" and draft_token_ids.device.type == "cpu"
    if on_host and lay.batch <= _LIST_OUTPUT_MAX_BATCH:
        drafts = draft_token_ids.tolist()
        rows = []
        for start, n, last in zip(lay.draft_starts, num.tolist(), nxt.tolist()):
            row = drafts[start : start + n - 1]
            row.append(last)
            row.extend([PLACEHOLDER] * (width - n))
            rows.append(row)
        return torch.tensor(rows, dtype=torch.int32).reshape(len(rows), width)
    num = num.long()
    dev = lay.col.device
    out = torch.full((num.shape[0], width), PLACEHOLDER, dtype=torch.int32, device=dev)
    if lay.num_tokens:
        take = lay.col < (num - 1)[:, None]
        out = torch.where(take, draft_token_ids.to(device=dev, dtype=torch.int32)[lay.src], out)
    out.scatter_(1, (num - 1)[:, None], nxt.to(torch.int32)[:, None])
    return out


def _node_argmax(lay: _Layout, target: torch.Tensor, bonus: torch.Tensor) -> torch.Tensor:
    """The argmax of vLLM's target rows ``[num_tokens, V]`` and bonus rows ``[B, V]``,
    each placed at its node (int64 ``[T]``), without gathering the rows themselves."""
    best = torch.empty(lay.total, dtype=torch.int64, device=lay.cu_nodes.device)
    best.index_copy_(0, lay.target_rows, target.argmax(-1))
    best.index_copy_(0, lay.bonus_rows, bonus.argmax(-1))
    return best


def _verify_greedy(lay: _Layout, best: torch.Tensor, draft_token_ids: torch.Tensor):
    """All-greedy batch: ``best`` is the target's argmax at each node."""
    return ops.verify_greedy_ragged(_tokens(lay, draft_token_ids), lay.parents, lay.cu_nodes, best)


def _verify_sampled(
    lay: _Layout,
    rows: torch.Tensor,
    draft_token_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    temperature: torch.Tensor,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None,
    min_p: torch.Tensor | None,
    seed: torch.Tensor,
):
    """``rows``: float32 ``[T, V]`` in our node order (after vLLM's processors)."""
    dev, batch = rows.device, lay.batch
    probs = ops.sampling_probs_ragged(
        rows,
        lay.cu_nodes,
        temperature.to(device=dev, dtype=torch.float32).contiguous(),
        (
            top_k.to(device=dev, dtype=torch.int32).contiguous()
            if top_k is not None
            else torch.zeros(batch, dtype=torch.int32, device=dev)
        ),
        (
            top_p.to(device=dev, dtype=torch.float32).contiguous()
            if top_p is not None
            else torch.ones(batch, dtype=torch.float32, device=dev)
        ),
        min_p=(
            min_p.to(device=dev, dtype=torch.float32).contiguous()
            if min_p is not None
            else torch.zeros(batch, dtype=torch.float32, device=dev)
        ),
    )
    q = None
    if draft_probs is not None:
        # The draft row of node i (i >= 1) is the distribution node i was drawn
        # from; it sits on node i - 1 (a target row); leaves keep a zero row.
        q = torch.zeros_like(probs)
        q.index_copy_(0, lay.target_rows, draft_probs.to(torch.float32))
    offset = torch.zeros(batch, dtype=torch.int64, device=dev)
    return ops.rejection_sample_ragged(
        _tokens(lay, draft_token_ids), lay.parents, lay.cu_nodes, q, probs, seed.to(dev), offset
    )


def _is_greedy(temperature: torch.Tensor | None) -> bool:
    return temperature is None or bool((temperature == 0).all())


def verify(
    logits: torch.Tensor,
    draft_token_ids: torch.Tensor,
    num_draft_tokens: list[int],
    draft_probs: torch.Tensor | None,
    temperature: torch.Tensor | None,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None,
    min_p: torch.Tensor | None,
    seed: torch.Tensor,
    max_spec_len: int,
) -> torch.Tensor:
    """Verify vLLM's ragged batch with our ops.

    Args:
        logits: ``[num_tokens + B, V]``: request b's n_b draft rows then its bonus row
            (vLLM's order), after vLLM's logits processors.
        draft_token_ids: int ``[num_tokens]``; ``num_draft_tokens``: n_b per request.
        draft_probs: ``[num_tokens, V]`` float32 (the distributions the drafts were
            sampled from), or None for greedy / n-gram drafts.
        temperature, top_p, min_p: float32 ``[B]`` or None; top_k int ``[B]`` or None.
        seed: int64 ``[B]``: this step's Philox seed per request.
        max_spec_len: the output's width is ``max_spec_len + 1``.

    Returns int32 ``[B, max_spec_len + 1]``: per request its accepted drafts, then the
    correction or bonus token, then -1 padding (vLLM's SamplerOutput layout).
    """
    lay = _layout(num_draft_tokens, max_spec_len, logits.device)
    if _is_greedy(temperature):
        # logits are already in node order: one argmax, no gather
        _, num, nxt = _verify_greedy(lay, logits.argmax(-1), draft_token_ids)
    else:
        _, num, nxt = _verify_sampled(
            lay,
            logits.float().contiguous(),
            draft_token_ids,
            draft_probs,
            temperature,
            top_k,
            top_p,
            min_p,
            seed,
        )
    return _output(lay, draft_token_ids, num, nxt)


# ---------------------------------------------------------------------------
# The vLLM side.
# ---------------------------------------------------------------------------


def _min_p_of(sampling_metadata, batch: int) -> torch.Tensor | None:
    """Per-request min-p from vLLM's min-p logits processor state (kept alive by
    the plug-in under speculative decoding), or None when no request uses it."""
    procs = getattr(sampling_metadata, "logitsprocs", None)
    for proc in getattr(procs, "all", ()) if procs is not None else ():
        if type(proc).__name__ == "MinPLogitsProcessor":
            if not getattr(proc, "min_p_count", 0):
                return None
            return torch.from_numpy(proc.min_p_cpu[:batch].copy())
    return None


def _seeds(sampling_metadata, batch: int) -> torch.Tensor:
    seeds = torch.randint(0, 2**62, (batch,), dtype=torch.int64)
    for row, gen in sampling_metadata.generators.items():
        if row < batch:
            seeds[row] = int(
                torch.randint(0, 2**62, (1,), generator=gen, dtype=torch.int64, device=gen.device)
            )
    return seeds


def _make_forward(original):
    from vllm.v1.outputs import SamplerOutput

    def forward(self, metadata, draft_probs, logits, sampling_metadata):
        sm = sampling_metadata
        batch = len(metadata.num_draft_tokens)
        min_p = _min_p_of(sm, batch)
        unsupported = (
            not _STATE["enabled"]
            or sm.max_num_logprobs is not None
            or bool(getattr(sm, "logprob_token_ids", None))
            or getattr(self, "synthetic_mode", False)
        )
        if unsupported:
            if _STATE["enabled"]:
                if min_p is not None and bool((min_p > 0).any()):
                    raise RuntimeError(
                        "specdec_cuda vLLM plug-in: min_p with logprobs (or synthetic acceptance) under "
                        "speculative decoding is not supported; remove one of them"
                    )
                _count(fallbacks=1)
            return original(self, metadata, draft_probs, logits, sampling_metadata)
        target = logits[metadata.target_logits_indices].to(torch.float32)
        target = self.apply_logits_processors(target, sm, metadata)
        bonus = self.sampler.apply_logits_processors(
            logits[metadata.bonus_logits_indices].to(torch.float32), sm, True
        )
        lay = _layout(metadata.num_draft_tokens, metadata.max_spec_len, logits.device)
        greedy = _is_greedy(sm.temperature)
        if greedy:
            _, num, nxt = _verify_greedy(lay, _node_argmax(lay, target, bonus), metadata.draft_token_ids)
        else:
            # request b's rows in our order: its n_b draft rows, then its bonus row
            rows = torch.empty(lay.total, logits.shape[-1], dtype=torch.float32, device=logits.device)
            rows.index_copy_(0, lay.target_rows, target)
            rows.index_copy_(0, lay.bonus_rows, bonus)
            _, num, nxt = _verify_sampled(
                lay,
                rows,
                metadata.draft_token_ids,
                draft_probs,
                sm.temperature,
                sm.top_k,
                sm.top_p,
                min_p,
                _seeds(sm, batch),
            )
        out = _output(lay, metadata.draft_token_ids, num, nxt)
        dummy = not bool(metadata.target_logits_indices.any()) and batch > 1
        _count(
            verified_batches=1,
            dummy_batches=int(dummy),
            requests=batch,
            draft_tokens=lay.num_tokens,
            emitted_tokens=int(num.sum()),
            greedy_batches=int(greedy),
            draft_probs_batches=int(draft_probs is not None),
            min_p_batches=int(min_p is not None),
        )
        return SamplerOutput(sampled_token_ids=out, logprobs_tensors=None)

    forward._specdec_cuda = True
    return forward


def _allow_min_p() -> None:
    """vLLM 0.32 refuses min_p under speculative decoding and drops its logits
    processor there; with the plug-in both are restored (min-p goes to our ops)."""
    from vllm import sampling_params as sp

    if not getattr(sp.SamplingParams._validate_spec_decode, "_specdec_cuda", False):
        original = sp.SamplingParams._validate_spec_decode

        def _validate_spec_decode(self, speculative_config):
            if speculative_config is None or not _STATE["enabled"]:
                return original(self, speculative_config)
            saved, self.min_p = self.min_p, 0.0
            try:
                return original(self, speculative_config)
            finally:
                self.min_p = saved

        _validate_spec_decode._specdec_cuda = True
        sp.SamplingParams._validate_spec_decode = _validate_spec_decode

    import vllm.v1.sample.logits_processor as lp

    if not getattr(lp.build_logitsprocs, "_specdec_cuda", False):
        original_build = lp.build_logitsprocs

        def build_logitsprocs(vllm_config, device, is_pin_memory, is_pooling_model, custom_logitsprocs=()):
            procs = original_build(vllm_config, device, is_pin_memory, is_pooling_model, custom_logitsprocs)
            if vllm_config.speculative_config and not is_pooling_model:
                from vllm.v1.sample.logits_processor.builtin import MinPLogitsProcessor

                # Kept for its per-request state only: our verifier applies min-p
                # (it is argmax-invariant, so greedy rows are unaffected).
                procs = lp.LogitsProcessors(
                    [*procs.all, MinPLogitsProcessor(vllm_config, device, is_pin_memory)]
                )
            return procs

        build_logitsprocs._specdec_cuda = True
        lp.build_logitsprocs = build_logitsprocs
        # Modules that imported the name before us (normally none: plug-ins load
        # before the model runner is imported) get the patched one too.
        import sys

        # Only vLLM's modules, and through __dict__: getattr on a lazy module
        # (transformers') would import its members (some need torchvision).
        for name, mod in list(sys.modules.items()):
            if name.startswith("vllm") and vars(mod).get("build_logitsprocs") is original_build:
                mod.build_logitsprocs = build_logitsprocs


def _add_rpc_methods() -> None:
    from vllm.v1.worker.worker_base import WorkerBase

    WorkerBase.specdec_stats = lambda self: stats()
    WorkerBase.specdec_reset_stats = lambda self: reset_stats()
    WorkerBase.specdec_set_enabled = lambda self, enabled: set_enabled(enabled)


def register() -> None:
    """The vLLM general plug-in entry point: idempotent, cheap, no device work."""
    if _STATE["registered"] or os.environ.get("SPECDEC_VLLM_DISABLE"):
        return
    from vllm.v1.sample import rejection_sampler as rs

    if not getattr(rs.RejectionSampler.forward, "_specdec_cuda", False):
        rs.RejectionSampler.forward = _make_forward(rs.RejectionSampler.forward)
    _allow_min_p()
    _add_rpc_methods()
    _STATE["registered"] = True
