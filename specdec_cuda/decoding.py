"""The speculative decoding loop: :class:`SpeculativeDecoder`.

One step, for a batch of rows that each accept a different number of tokens:

1. the drafter proposes a tree per row (node 0: the row's last committed token);
2. the target runs once over all nodes: their K/V go into the target's cache at
   ``lens .. lens + N - 1`` and each node attends to the prefix and its
   ancestors (``tree_attention``);
3. verification: ``verify_greedy`` (temperature 0) or ``sampling_probs`` +
   ``rejection_sample`` (lossless; with the draft's probabilities for sampled
   chains and stochastic trees, the deterministic rule for static and dynamic
   trees and prompt lookup; ``verification`` picks the rule: token-wise, block
   verification of chains or traversal verification of trees);
4. ``kv_compact_`` keeps the accepted path's K/V (root included) in place;
5. the accepted drafts and the corrected/bonus token are emitted; the bonus
   token is the next root.

The target's cache always holds every committed token but the root.  Drafters
see the loop only through :mod:`specdec_cuda.drafting` (a context they read, a
feedback they are given).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from . import _forward, ops
from ._forward import forward_tree, prefill
from .cache import KVCache, PagedKVCache
from .drafters import ChainDrafter, NoDrafter
from .drafting import DraftContext, Drafter, StepFeedback, parameter_count
from .models import as_model

__all__ = ["SpeculativeDecoder", "GenerationOutput", "GenerationStats", "StepOutput"]

_PHASES = ("prefill", "draft", "target", "verify", "commit", "other")


@dataclass
class GenerationStats:
    """Statistics of one generation.

    ``tau``: mean tokens per target verification call and row (accepted drafts +
    1, counted before a stop token or the budget cuts the step's output), over
    rows still generating.  ``draft_lengths[s]``: the draft length (K, or the
    dynamic tree's depth) step s used.  ``acceptance_by_position[j]``: of the
    row-steps that proposed a draft at depth j+1, the fraction whose accepted path
    reached it.  ``phase_s``: wall time by phase (prefill, draft, target,
    verify, commit, other).
    """

    drafter: str = ""
    batch_size: int = 0
    steps: int = 0
    target_calls: int = 0
    draft_calls: int = 0
    new_tokens: list[int] = field(default_factory=list)
    tau: float = 0.0
    acceptance_by_position: list[float] = field(default_factory=list)
    proposed_by_position: list[int] = field(default_factory=list)
    accepted_by_position: list[int] = field(default_factory=list)
    row_steps: int = 0
    emitted_per_call_sum: int = 0
    draft_lengths: list[int] = field(default_factory=list)
    wall_s: float = 0.0
    phase_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_PHASES, 0.0))

    @property
    def total_new_tokens(self) -> int:
        return int(sum(self.new_tokens))

    @property
    def tokens_per_s(self) -> float:
        return self.total_new_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        decode = self.wall_s - self.phase_s.get("prefill", 0.0)
        return self.total_new_tokens / decode if decode > 0 else 0.0

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d.update(
            total_new_tokens=self.total_new_tokens,
            tokens_per_s=self.tokens_per_s,
            decode_tokens_per_s=self.decode_tokens_per_s,
        )
        return d

    def summary(self) -> str:
        acc = " ".join(f"{a:.2f}" for a in self.acceptance_by_position[:8])
        return (
            f"{self.drafter}: {self.total_new_tokens} tokens in {self.wall_s:.3f} s "
            f"({self.tokens_per_s:.1f} tok/s), {self.steps} target steps, tau {self.tau:.2f}, "
            f"{self.draft_calls} draft calls, acceptance by position [{acc}]"
        )

    def record_step(self, depth: list[int], accepted: list[int], active: list[bool]) -> None:
        """Count one step: ``depth[b]`` the deepest draft row b proposed, ``accepted[b]``
        its accepted drafts, ``active[b]`` whether it took part."""
        rows = [b for b, a in enumerate(active) if a]
        if not rows:
            return
        self.row_steps += len(rows)
        self.emitted_per_call_sum += sum(accepted[b] + 1 for b in rows)
        self.tau = self.emitted_per_call_sum / self.row_steps
        grow = max(depth) - len(self.proposed_by_position)
        if grow > 0:
            self.proposed_by_position += [0] * grow
            self.accepted_by_position += [0] * grow
        for b in rows:
            for j in range(depth[b]):
                self.proposed_by_position[j] += 1
                self.accepted_by_position[j] += int(accepted[b] > j)
        self.acceptance_by_position = [
            a / p if p else 0.0 for a, p in zip(self.accepted_by_position, self.proposed_by_position)
        ]


@dataclass
class GenerationOutput:
    """``sequences[b]``: prompt + generated ids (int64, 1-D, CPU); ``new_tokens[b]``:
    just the generated ids; ``stats``: :class:`GenerationStats`."""

    sequences: list[torch.Tensor]
    new_tokens: list[torch.Tensor]
    stats: GenerationStats


@dataclass
class StepOutput:
    """What one step emitted: ``tokens[b]`` the new ids of row b (possibly none),
    ``finished[b]`` whether row b is done."""

    step: int
    tokens: list[list[int]]
    finished: list[bool]


@dataclass
class _Request:
    """A validated generate/stream call."""

    prompts: list[torch.Tensor]  # int64, 1-D, CPU
    max_new: int
    temperature: torch.Tensor  # float32 [B] on the model device
    top_k: torch.Tensor  # int32 [B]
    top_p: torch.Tensor  # float32 [B]
    seed: torch.Tensor  # int64 [B]
    stops: set[int]


class _Rows:
    """Per-row bookkeeping of a generation: budgets, stop tokens, what is finished."""

    def __init__(self, prompt_lens: list[int], max_new: int, stops: set[int]):
        self.max_new, self.stops = max_new, stops
        self.generated = [0] * len(prompt_lens)
        self.finished = [len(prompt_lens) == 0] * len(prompt_lens)
        self.lens = list(prompt_lens)  # committed tokens per row, on the host

    def active(self) -> list[bool]:
        return [not f for f in self.finished]

    def emit(
        self, path_tokens: list[list[int]], num_accepted: list[int], next_token: list[int]
    ) -> tuple[list[list[int]], list[int]]:
        """The tokens each row emits this step (accepted drafts then the corrected or
        bonus token, cut at a stop token or the budget) and its accepted drafts."""
        emitted, accepted = [], []
        for b, done in enumerate(self.finished):
            if done:
                emitted.append([])
                accepted.append(0)
                continue
            toks = path_tokens[b][1 : num_accepted[b]] + [next_token[b]]
            accepted.append(num_accepted[b] - 1)
            toks = toks[: self.max_new - self.generated[b]]
            for j, tok in enumerate(toks):
                if tok in self.stops:
                    toks = toks[: j + 1]
                    break
            self.generated[b] += len(toks)
            if self.generated[b] >= self.max_new or (toks and toks[-1] in self.stops):
                self.finished[b] = True
            emitted.append(toks)
        return emitted, accepted

    def append(self, seq: torch.Tensor, emitted: list[list[int]]) -> None:
        """Write the emitted tokens after each row's committed tokens in ``seq``."""
        rows = [b for b, e in enumerate(emitted) for _ in e]
        cols = [self.lens[b] + j for b, e in enumerate(emitted) for j in range(len(e))]
        if rows:
            dev = seq.device
            seq[torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)] = torch.tensor(
                [x for e in emitted for x in e], device=dev
            )
        self.lens = [n + len(e) for n, e in zip(self.lens, emitted)]


class _PhaseClock:
    """Wall time by phase: ``tick(name)`` charges the time since the last tick to
    ``name`` (after a device synchronisation on CUDA) and returns it."""

    def __init__(self, phases: dict[str, float], device: torch.device):
        self.phases = phases
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.t = time.perf_counter()

    def tick(self, name: str) -> float:
        self.sync()
        now = time.perf_counter()
        spent, self.t = now - self.t, now
        self.phases[name] += spent
        return spent


def _row_param(name: str, value, batch: int, dtype, device) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=dtype)
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(
            f"SpeculativeDecoder.generate: {name} must be a scalar or one value per "
            f"row ({batch}), got shape {tuple(t.shape)}"
        )
    return t.contiguous().to(device)


class SpeculativeDecoder:
    """Speculative decoding for a target causal LM and a drafter.

    Args:
        target: a transformers causal LM (wrapped in
            :class:`~specdec_cuda.models.HFModel`) or a protocol model.
        drafter: a :class:`~specdec_cuda.drafting.Drafter`; a model (HF or protocol)
            means ``ChainDrafter(model)``; ``None`` means plain autoregressive decoding
            through the same loop.
        paged: use paged KV caches (``kv_compact_paged_`` / ``tree_attention_paged``).
        page_size: tokens per page for paged caches.
        tokenizer, draft_tokenizer: optional; when both are given their vocabularies
            must be identical.
        verification: the lossless rule of sampled steps (``ops.rejection_sample``'s
            ``method``): ``"tokenwise"`` (default), ``"block"`` (block verification;
            chains only: a drafter that proposes trees raises ``ValueError``, here or
            at the first step that proposes one) or ``"traversal"`` (traversal
            verification of trees; on chains the same as ``"block"``).  Each
            proposal's ``siblings`` tells the rule how its children were drawn.
            Greedy steps verify with ``verify_greedy`` whatever this says.

    Raises ``TypeError`` for models that follow neither protocol and ``ValueError``
    for mismatched vocabularies or an unknown ``verification``.
    """

    def __init__(
        self,
        target,
        drafter=None,
        *,
        paged: bool = False,
        page_size: int = 16,
        tokenizer=None,
        draft_tokenizer=None,
        verification: str = "tokenwise",
    ):
        if verification not in ops.METHODS:
            raise ValueError(
                f"SpeculativeDecoder: verification must be 'tokenwise', 'block' or 'traversal', "
                f"got {verification!r}"
            )
        self.target = as_model(target, role="target")
        if drafter is None:
            drafter = NoDrafter()
        elif not isinstance(drafter, Drafter):
            drafter = ChainDrafter(drafter)
        self.drafter = drafter
        self.verification = verification
        if verification == "block" and drafter.proposes_chains is False:
            raise ValueError(
                f"SpeculativeDecoder: verification='block' verifies chains only, but the "
                f"{type(drafter).__name__} proposes trees; use verification='traversal'"
            )
        self.vocab_size = int(self.target.vocab_size)
        dv = getattr(drafter, "vocab_size", None)
        if dv is not None and dv != self.vocab_size:
            raise ValueError(
                f"SpeculativeDecoder: the draft model's vocabulary ({dv}) differs from "
                f"the target's ({self.vocab_size}); both must share a tokenizer"
            )
        if tokenizer is not None and draft_tokenizer is not None:
            if tokenizer.get_vocab() != draft_tokenizer.get_vocab():
                raise ValueError(
                    "SpeculativeDecoder: the target and draft tokenizers have different "
                    "vocabularies; speculative decoding needs one shared tokenizer"
                )
        if page_size < 1:
            raise ValueError(f"SpeculativeDecoder: page_size must be >= 1, got {page_size}")
        self.paged, self.page_size = bool(paged), int(page_size)
        self._target_params = parameter_count(self.target)
        self.stats: GenerationStats | None = None
        self.target_cache: KVCache | PagedKVCache | None = None

    @property
    def device(self) -> torch.device:
        return self.target.device

    # -- inputs ---------------------------------------------------------------
    def _prompts(self, input_ids, attention_mask) -> list[torch.Tensor]:
        where = "SpeculativeDecoder.generate"
        if isinstance(input_ids, torch.Tensor):
            if input_ids.dim() == 1:
                input_ids = input_ids[None]
            if input_ids.dim() != 2:
                raise ValueError(
                    f"{where}: input_ids must be [B, L] or a list of 1-D prompts, got "
                    f"shape {tuple(input_ids.shape)}"
                )
            if input_ids.dtype not in (torch.int64, torch.int32):
                raise TypeError(f"{where}: input_ids must hold integer token ids, got {input_ids.dtype}")
            if attention_mask is not None:
                if attention_mask.shape != input_ids.shape:
                    raise ValueError(
                        f"{where}: attention_mask shape {tuple(attention_mask.shape)} != "
                        f"input_ids shape {tuple(input_ids.shape)}"
                    )
                prompts = [row[m.bool()] for row, m in zip(input_ids.cpu(), attention_mask.cpu())]
            else:
                prompts = list(input_ids.cpu())
        elif isinstance(input_ids, Sequence) and not isinstance(input_ids, (str, bytes)):
            if attention_mask is not None:
                raise ValueError(f"{where}: attention_mask is only for a padded [B, L] tensor")
            prompts = []
            for i, p in enumerate(input_ids):
                t = torch.as_tensor(p)
                if t.dim() != 1 or (t.numel() and t.is_floating_point()):
                    raise ValueError(f"{where}: prompt {i} must be a 1-D sequence of token ids")
                prompts.append(t)
        else:
            raise TypeError(
                f"{where}: input_ids must be a tensor or a list of prompts, got {type(input_ids).__name__}"
            )
        for i, p in enumerate(prompts):
            if p.numel() == 0:
                raise ValueError(f"{where}: prompt {i} is empty; every row needs at least one token")
            lo, hi = int(p.min()), int(p.max())
            if lo < 0 or hi >= self.vocab_size:
                raise ValueError(
                    f"{where}: prompt {i} has token id {lo if lo < 0 else hi} outside [0, {self.vocab_size})"
                )
        return [p.long() for p in prompts]

    def _request(
        self, input_ids, max_new_tokens, temperature, top_k, top_p, seed, stop_tokens, attention_mask
    ) -> _Request:
        where = "SpeculativeDecoder.generate"
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"{where}: max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        prompts = self._prompts(input_ids, attention_mask)
        batch, dev = len(prompts), self.device
        temperature = _row_param("temperature", temperature, batch, torch.float32, dev)
        top_k = _row_param("top_k", top_k, batch, torch.int32, dev)
        top_p = _row_param("top_p", top_p, batch, torch.float32, dev)
        if seed is None:  # distinct rows, reproducible under torch.manual_seed
            seed = int(torch.randint(0, 2**62, (1,))) + torch.arange(batch)
        seed = _row_param("seed", seed, batch, torch.int64, dev)
        if bool(torch.isnan(temperature).any()) or bool((temperature < 0).any()):
            raise ValueError(f"{where}: temperature must be >= 0")
        if bool((top_k < 0).any()):
            raise ValueError(f"{where}: top_k must be >= 0")
        if bool(((top_p <= 0) | (top_p > 1) | torch.isnan(top_p)).any()):
            raise ValueError(f"{where}: top_p must be in (0, 1]")
        stops = set(int(s) for s in (stop_tokens or []))
        if any(s < 0 or s >= self.vocab_size for s in stops):
            raise ValueError(f"{where}: stop_tokens must be ids in [0, {self.vocab_size})")
        return _Request(prompts, max_new_tokens, temperature, top_k, top_p, seed, stops)

    # -- the loop -------------------------------------------------------------
    def generate(
        self,
        input_ids,
        *,
        max_new_tokens: int = 64,
        temperature=0.0,
        top_k=0,
        top_p=1.0,
        seed=None,
        stop_tokens: Sequence[int] | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> GenerationOutput:
        """Generate up to ``max_new_tokens`` per row.

        Args:
            input_ids: int ``[B, L]`` (every row full, or padded with
                ``attention_mask``), or a list of 1-D prompts of different lengths.
            max_new_tokens: >= 1.
            temperature: float or one per row; 0 (default) is greedy.  Rows with
                temperature 0 are greedy inside a sampled batch too.
            top_k: int or per row, 0 disables.  top_p: float or per row in (0, 1].
            seed: int (every row the same stream) or one per row: the rows' Philox
                streams.  Default: drawn from torch's generator (so
                ``torch.manual_seed`` makes it reproducible), a different one per row.
            stop_tokens: ids that end a row (the stop token is kept).
            attention_mask: 0/1 ``[B, L]`` marking the real tokens of a padded batch.

        Returns a :class:`GenerationOutput`; the statistics are also in ``self.stats``.
        """
        request = self._request(
            input_ids, max_new_tokens, temperature, top_k, top_p, seed, stop_tokens, attention_mask
        )
        new = [[] for _ in request.prompts]
        for out in self._run(request):
            for b, toks in enumerate(out.tokens):
                new[b].extend(toks)
        new_t = [torch.tensor(n, dtype=torch.long) for n in new]
        seqs = [torch.cat([p, n]) for p, n in zip(request.prompts, new_t)]
        return GenerationOutput(seqs, new_t, self.stats)

    def stream(
        self,
        input_ids,
        *,
        max_new_tokens: int = 64,
        temperature=0.0,
        top_k=0,
        top_p=1.0,
        seed=None,
        stop_tokens: Sequence[int] | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> Iterator[StepOutput]:
        """Like :meth:`generate` (the same arguments, validated before the first
        step), but yields a :class:`StepOutput` after every step with the tokens each
        row accepted (streaming); ``self.stats`` is complete when the iterator ends."""
        return self._run(
            self._request(
                input_ids, max_new_tokens, temperature, top_k, top_p, seed, stop_tokens, attention_mask
            )
        )

    def _cache_len(self, prompts: list[torch.Tensor], capacity: int) -> int:
        # Every row of a forward writes all N slots past its length (short rows
        # write padding), so a row may write past its own end by the widest
        # forward: a prompt chunk, or a draft tree plus the pending tokens before
        # it (at most the tree's depth + 1).
        max_prompt = max((p.numel() for p in prompts), default=1)
        widest = max(min(max_prompt, _forward.PREFILL_CHUNK), 2 * self.drafter.max_width() + 1)
        return capacity + widest

    def _check_chain(self, draft) -> None:
        n = draft.parents.shape[1]
        chain = torch.arange(-1, n - 1, device=draft.parents.device, dtype=draft.parents.dtype)
        if not bool((draft.parents == chain).all()):
            raise ValueError(
                f"SpeculativeDecoder: verification='block' verifies chains only, but the "
                f"{type(self.drafter).__name__} proposed a tree; use verification='traversal'"
            )

    def _run(self, req: _Request) -> Iterator[StepOutput]:
        t_start = time.perf_counter()
        batch, dev = len(req.prompts), self.device
        stats = GenerationStats(drafter=self.drafter.name, batch_size=batch, new_tokens=[0] * batch)
        self.stats = stats
        lens = torch.tensor([p.numel() for p in req.prompts], dtype=torch.long)
        capacity = int(lens.max()) + req.max_new + 1 if batch else 1
        seq = torch.zeros(batch, capacity, dtype=torch.long)
        for b, p in enumerate(req.prompts):
            seq[b, : p.numel()] = p
        seq, seq_lens = seq.to(dev), lens.to(dev)
        ctx = DraftContext(
            seq=seq,
            seq_lens=seq_lens,
            vocab_size=self.vocab_size,
            temperature=req.temperature,
            top_k=req.top_k,
            top_p=req.top_p,
            seed=req.seed,
            greedy=bool((req.temperature == 0).all()),
            paged=self.paged,
            page_size=self.page_size,
            cache_len=self._cache_len(req.prompts, capacity),
            target_params=self._target_params,
        )
        rows = _Rows(lens.tolist(), req.max_new, req.stops)

        with torch.inference_mode():
            clock = _PhaseClock(stats.phase_s, dev)
            self.drafter.start(ctx)
            tcache = ctx.new_cache(self.target)
            self.target_cache = tcache
            stats.target_calls += prefill(self.target, tcache, seq, seq_lens - 1, role="target")
            clock.tick("prefill")
            while not all(rows.finished):
                active = rows.active()
                stats.draft_lengths.append(self.drafter.draft_length)  # the length this step uses
                draft = self.drafter.propose(ctx)
                if self.verification == "block" and self.drafter.proposes_chains is not True:
                    self._check_chain(draft)
                stats.draft_calls += draft.draft_calls
                draft_s = clock.tick("draft")
                logits, depth = forward_tree(
                    self.target, tcache, draft.tokens, draft.parents, role="target", with_depth=True
                )
                stats.target_calls += 1
                target_s = clock.tick("target")
                if ctx.greedy:
                    acc_nodes, n_acc, nxt = ops.verify_greedy(draft.tokens, draft.parents, logits.argmax(-1))
                else:
                    probs = ops.sampling_probs(logits, req.temperature, req.top_k, req.top_p)
                    offset = torch.full((batch,), 2 * ctx.step, dtype=torch.long, device=dev)
                    rule = {}  # the defaults are not passed: the call stays today's call
                    if self.verification != "tokenwise":
                        rule["method"] = self.verification
                    if draft.siblings != "iid":
                        rule["siblings"] = draft.siblings
                    acc_nodes, n_acc, nxt = ops.rejection_sample(
                        draft.tokens, draft.parents, draft.draft_probs, probs, req.seed, offset, **rule
                    )
                path_tokens = torch.gather(draft.tokens, 1, acc_nodes.clamp(min=0).long())
                path_tokens, n_list = path_tokens.cpu().tolist(), n_acc.cpu().tolist()
                nxt_list = nxt.cpu().tolist()
                clock.tick("verify")
                emitted, accepted = rows.emit(path_tokens, n_list, nxt_list)
                counts = torch.tensor([len(e) for e in emitted], dtype=torch.long)
                # The cache keeps the root and the emitted drafts (all but the last
                # emitted token, the next root): len(emitted) path nodes; none for
                # finished rows.  So it always holds exactly seq[:-1].
                tcache.commit(acc_nodes, counts.to(device=dev, dtype=torch.int32))
                clock.tick("commit")
                stats.record_step(depth.max(1).values.tolist(), accepted, active)
                rows.append(seq, emitted)
                seq_lens += counts.to(dev)
                feedback = StepFeedback(
                    accepted=torch.tensor(accepted, device=dev),
                    active=torch.tensor(active, device=dev),
                    draft_s=draft_s,
                    draft_calls=draft.draft_calls,
                    target_s=target_s,
                )
                self.drafter.update(ctx, feedback)
                ctx.step += 1
                stats.steps += 1
                clock.tick("other")
                stats.new_tokens = list(rows.generated)
                stats.wall_s = time.perf_counter() - t_start
                yield StepOutput(ctx.step, emitted, list(rows.finished))
        stats.wall_s = time.perf_counter() - t_start
