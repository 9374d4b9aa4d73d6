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
    from .. import ops

    dev = logits.device
    batch = len(num_draft_tokens)
    sizes = torch.tensor(num_draft_tokens, dtype=torch.int64) + 1  # nodes per request: root + drafts
    cu_nodes = torch.zeros(batch + 1, dtype=torch.int32)
    cu_nodes[1:] = torch.cumsum(sizes, 0)
    total = int(cu_nodes[-1])
    cu_dev = cu_nodes.to(dev)
    starts = cu_nodes[:-1].long()
    node = torch.arange(total) - torch.repeat_interleave(starts, sizes)  # local index of each row
    # Tokens: the root's is never read (0); draft i of request b is node i + 1.
    tokens = torch.zeros(total, dtype=torch.int64, device=dev)
    is_draft = (node > 0).to(dev)
    tokens[is_draft] = draft_token_ids.to(device=dev, dtype=torch.int64)
    parents = (node - 1).to(device=dev, dtype=torch.int32)  # chains: root -1, then 0, 1, ...
    greedy_all = temperature is None or bool((temperature == 0).all())
    if greedy_all:
        accept, num, nxt = ops.verify_greedy_ragged(tokens, parents, cu_dev, logits.argmax(-1))
    else:
        zeros_f = torch.zeros(batch, dtype=torch.float32, device=dev)
        probs = ops.sampling_probs_ragged(
            logits.float().contiguous(),
            cu_dev,
            temperature.float().contiguous(),
            (
                top_k.to(torch.int32)
                if top_k is not None
                else torch.zeros(batch, dtype=torch.int32, device=dev)
            ),
            top_p.float().contiguous() if top_p is not None else torch.ones(batch, device=dev),
            min_p=min_p.float().contiguous() if min_p is not None else zeros_f,
        )
        q = None
        if draft_probs is not None:
            # draft row of node i (i >= 1) = the distribution node i was drawn from,
            # i.e. the row of node i - 1 in our layout; leaves get a zero row.
            q = torch.zeros_like(probs)
            q_rows = torch.nonzero(is_draft).squeeze(1) - 1
            q[q_rows] = draft_probs.float()
        offset = torch.zeros(batch, dtype=torch.int64, device=dev)
        accept, num, nxt = ops.rejection_sample_ragged(
            tokens, parents, cu_dev, q, probs, seed.to(dev), offset
        )
    # Chains: the accepted path is nodes 0 .. num-1, i.e. the first num-1 drafts.
    out = torch.full((batch, max_spec_len + 1), PLACEHOLDER, dtype=torch.int32, device=dev)
    col = torch.arange(max_spec_len + 1, device=dev)[None, :]
    num = num.long()
    cu_draft = torch.zeros(batch, dtype=torch.int64)
    cu_draft[1:] = torch.cumsum(torch.tensor(num_draft_tokens[:-1], dtype=torch.int64), 0) if batch > 1 else 0
    src = cu_draft.to(dev)[:, None] + col
    take = col < (num - 1)[:, None]
    if draft_token_ids.numel():
        gathered = draft_token_ids.to(dev)[src.clamp(max=draft_token_ids.numel() - 1)]
        out = torch.where(take, gathered.to(torch.int32), out)
    out.scatter_(1, (num - 1)[:, None], nxt.to(torch.int32)[:, None])
    return out


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
        # request b's rows in our order: its n_b draft rows, then its bonus row
        rows = torch.empty(
            target.shape[0] + batch, logits.shape[-1], dtype=torch.float32, device=logits.device
        )
        sizes = torch.tensor(metadata.num_draft_tokens, dtype=torch.int64) + 1
        ends = torch.cumsum(sizes, 0) - 1
        bonus_pos = ends.to(logits.device)
        mask = torch.ones(rows.shape[0], dtype=torch.bool, device=logits.device)
        mask[bonus_pos] = False
        rows[mask] = target
        rows[bonus_pos] = bonus
        out = verify(
            rows,
            metadata.draft_token_ids,
            list(metadata.num_draft_tokens),
            draft_probs,
            sm.temperature,
            sm.top_k,
            sm.top_p,
            min_p.to(logits.device) if min_p is not None else None,
            _seeds(sm, batch),
            metadata.max_spec_len,
        )
        dummy = not bool(metadata.target_logits_indices.any()) and batch > 1
        _count(
            verified_batches=1,
            dummy_batches=int(dummy),
            requests=batch,
            draft_tokens=int(sizes.sum()) - batch,
            emitted_tokens=int((out != PLACEHOLDER).sum()),
            greedy_batches=int(sm.temperature is None or bool((sm.temperature == 0).all())),
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
