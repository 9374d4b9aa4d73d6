"""The drafter interface: what a drafter reads, what it returns, what it is told.

Everything a newcomer writing a drafter needs is in this module.  A drafter
proposes, each step, one tree per row whose node 0 is the row's root (its last
committed token).  The loop (:class:`specdec_cuda.SpeculativeDecoder`) drives it:

.. code-block:: text

    drafter.start(ctx)                       once per generation, before the first step
    every step:
        draft = drafter.propose(ctx)         -> Draft (tokens, parents, draft_probs)
        ... the target verifies, the loop commits and emits ...
        drafter.update(ctx, feedback)        StepFeedback: what was accepted, what it cost

Data flows one way.  The loop owns the :class:`DraftContext` and is the only one
that writes it (committed tokens, step number); drafters read it, return a
:class:`Draft`, and learn how the step went from the :class:`StepFeedback` argument.
A drafter never reaches back into the decoder, and the loop never writes fields
of a drafter.

Rules a drafter must keep:

- ``tokens[:, 0]`` are the roots (``ctx.roots()``); ``parents`` is a valid tree
  (``parents[:, 0] = -1``, ``parents[:, i] < i``) with at most ``max_nodes()`` nodes.
- ``draft_probs`` (``[B, N, V]`` float32, row i: the distribution node i's children
  were sampled from, the same ``sampling_probs`` transform as the target) only
  when the children were sampled from it, and ``siblings`` says how: ``"iid"``
  (independently, the default) or ``"without_replacement"`` (in index order, each
  from the row without the tokens drawn before it; ``draft_probs`` still holds the
  original row).  ``None`` for deterministic drafts (top-k, n-grams), which the
  verifier then treats with the deterministic-draft rule.  Greedy outputs never
  depend on it.
- ``proposes_chains``: True for a drafter whose trees are always chains, False
  when they never are, None (the default) when it depends; the decoder's
  ``verification="block"`` verifies chains only and checks this.
- Random numbers come from the rows' Philox streams (``ctx.seed``,
  ``ctx.draft_offset()``), never from a global generator, so a seed reproduces.
- A drafter with a model keeps its own KV cache (``ctx.new_cache(model)``); see
  :class:`ModelDrafter`, which does that bookkeeping once for all model drafters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import _forward
from ._forward import forward_tree, gather_rows, prefill
from .cache import KVCache, PagedKVCache
from .length_policy import AdaptiveLength
from .models import as_model

__all__ = ["DraftContext", "Draft", "StepFeedback", "Drafter", "ModelDrafter", "parameter_count"]


def parameter_count(model) -> int | None:
    """Parameters of a protocol model (an HFModel's wrapped model, or the model itself
    when it is a torch module), or None when it has none to count."""
    module = getattr(model, "model", model)
    params = getattr(module, "parameters", None)
    if not callable(params):
        return None
    total = sum(p.numel() for p in params())
    return total or None


@dataclass
class DraftContext:
    """The state a drafter may read during one generation (the loop writes it).

    Attributes:
        seq: int64 ``[B, capacity]`` on the model device: every row's committed
            tokens (prompt, then emitted tokens) in ``seq[b, :seq_lens[b]]``.
        seq_lens: int64 ``[B]``: committed tokens per row, the root included.
        vocab_size: the shared vocabulary size V.
        temperature, top_k, top_p: the rows' sampling parameters (float32, int32,
            float32 ``[B]``), applied to draft logits with ``ops.sampling_probs``.
        seed: int64 ``[B]``: the rows' Philox seeds.
        greedy: every row has temperature 0.
        paged, page_size: which cache layout the decoder uses.
        cache_len: slots per row a drafter's KV cache needs (``new_cache`` uses it).
        target_params: the target model's parameter count (None if unknown), from
            which model drafters estimate their relative cost.
        step: the number of steps finished so far.
    """

    seq: torch.Tensor
    seq_lens: torch.Tensor
    vocab_size: int
    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    seed: torch.Tensor
    greedy: bool
    paged: bool
    page_size: int
    cache_len: int
    target_params: int | None = None
    step: int = 0

    @property
    def batch_size(self) -> int:
        return self.seq.shape[0]

    @property
    def device(self) -> torch.device:
        return self.seq.device

    def roots(self) -> torch.Tensor:
        """int64 ``[B]``: each row's last committed token (node 0 of its tree)."""
        return torch.gather(self.seq, 1, (self.seq_lens - 1)[:, None])[:, 0]

    def draft_offset(self) -> torch.Tensor:
        """int64 ``[B]``: the Philox offset for this step's draft sampling.  The loop
        verifies with offset ``2 * step`` and drafters sample with ``2 * step + 1``, so
        the two never share a stream."""
        return torch.full((self.batch_size,), 2 * self.step + 1, dtype=torch.long, device=self.device)

    def new_cache(self, model) -> KVCache | PagedKVCache:
        """An empty KV cache for ``model`` with the decoder's layout and ``cache_len`` slots."""
        if self.paged:
            return PagedKVCache(
                self.batch_size,
                self.cache_len,
                page_size=self.page_size,
                dtype=model.dtype,
                device=model.device,
            )
        return KVCache(self.batch_size, self.cache_len, dtype=model.dtype, device=model.device)


@dataclass
class Draft:
    """One step's proposal for a batch.

    ``tokens`` int64 ``[B, N]`` (column 0: the roots), ``parents`` int32 ``[B, N]``,
    ``draft_probs`` float32 ``[B, N, V]`` (row i: the distribution node i's children
    were sampled from) or ``None`` for deterministic drafts, ``draft_calls`` the
    draft-model forwards this proposal cost, ``siblings`` how each node's children
    were sampled from its row: ``"iid"`` (independently) or ``"without_replacement"``
    (in index order, each from the row without the earlier siblings' tokens,
    renormalised); it selects the verifier's rule (``ops.rejection_sample``) and is
    ignored without ``draft_probs``.
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    draft_probs: torch.Tensor | None = None
    draft_calls: int = 0
    siblings: str = "iid"


@dataclass(frozen=True)
class StepFeedback:
    """How the last step went, given to :meth:`Drafter.update`.

    Attributes:
        accepted: int64 ``[B]``: drafts accepted per row (0 for inactive rows).
        active: bool ``[B]``: rows that took part in the step.
        draft_s: wall time of this step's :meth:`Drafter.propose`, seconds.
        draft_calls: the draft-model forwards that proposal cost.
        target_s: wall time of the target's verification forward, seconds.
    """

    accepted: torch.Tensor
    active: torch.Tensor
    draft_s: float
    draft_calls: int
    target_s: float


class Drafter:
    """Base class of every drafter; subclasses override :meth:`max_nodes` and
    :meth:`propose`, and may override :meth:`start`, :meth:`update` and
    :meth:`max_width`.

    A drafter with an adaptive draft length sets ``length`` to an
    :class:`~specdec_cuda.length_policy.AdaptiveLength`; the base class then resets it
    in :meth:`start` and feeds it the step's acceptance (and, with
    ``uses_model``, the measured draft/target cost) in :meth:`update`.
    """

    #: a short name for statistics and tables
    name: str = "drafter"
    #: whether proposals cost draft-model forwards (their cost feeds ``length``)
    uses_model: bool = False
    #: the adaptive draft length, for drafters that have one
    length: AdaptiveLength | None = None
    #: the draft model's vocabulary, checked against the target's (None: no model)
    vocab_size: int | None = None
    #: True: every proposal is a chain; False: never; None: it depends (the decoder
    #: checks each proposal when it verifies with ``verification="block"``)
    proposes_chains: bool | None = None

    def start(self, ctx: DraftContext) -> None:
        """Called once per generation before the first step; resets the adaptive
        draft length so that every generation starts alike."""
        if self.length is not None:
            self.length.reset()

    def max_nodes(self) -> int:
        """The most tree nodes one proposal can have (root included)."""
        raise NotImplementedError

    def max_width(self) -> int:
        """The most tokens one of this drafter's forwards (or the target's
        verification) writes past a row's committed length, pending tokens aside."""
        return self.max_nodes()

    def propose(self, ctx: DraftContext) -> Draft:
        """This step's trees, one per row."""
        raise NotImplementedError

    def update(self, ctx: DraftContext, feedback: StepFeedback) -> None:
        """After verification; ``ctx.seq`` / ``ctx.seq_lens`` already hold the newly
        committed tokens."""
        if self.length is None or not bool(feedback.active.any()):
            return
        if self.uses_model:
            self.length.observe_cost(feedback.draft_s / max(feedback.draft_calls, 1), feedback.target_s)
        self.length.observe(feedback.accepted[feedback.active], self.length.k)

    @property
    def draft_length(self) -> int:
        """The current draft length (K, or a dynamic tree's depth; 0 without drafts)."""
        return self.length.k if self.length is not None else 0


class ModelDrafter(Drafter):
    """A drafter backed by a draft model (HF causal LM or protocol model), with its
    own KV cache kept across steps.

    Subclasses implement :meth:`draft`; :meth:`propose` wraps it and counts the
    forwards.  Inside :meth:`draft`, call :meth:`consume_pending` first (it brings
    the cache up to the roots and returns the pending chain to forward), then
    :meth:`forward` for every draft-model forward.  After verification the cache
    is cut back to the committed prefix the draft agrees with.
    """

    uses_model = True
    #: the cost ratio used when a subclass's ``cost_ratio`` argument is None: draft
    #: parameters over target parameters, else this fallback
    DEFAULT_COST_RATIO = 0.1

    def __init__(self, model):
        self.model = as_model(model, role="draft model")
        self.vocab_size = int(self.model.vocab_size)
        self.cache: KVCache | PagedKVCache | None = None
        self._calls = 0
        self._estimate_cost = False

    def _length_policy(
        self, k: int, *, k_min: int, k_max: int | None, cost_ratio, adaptive: bool
    ) -> AdaptiveLength:
        """The adaptive length of a model drafter.  ``cost_ratio``: a number (fixed),
        ``"measured"`` (timed online: K then follows wall-clock timing), or None
        (estimated at the start of each generation from the parameter counts, so a
        seed reproduces its samples)."""
        measured = isinstance(cost_ratio, str)
        if measured and cost_ratio != "measured":
            raise ValueError(
                f"{type(self).__name__}: cost_ratio must be a number, 'measured' or None, got {cost_ratio!r}"
            )
        self._estimate_cost = cost_ratio is None
        return AdaptiveLength(
            k,
            k_min=k_min,
            k_max=k_max,
            cost_ratio=None if measured else cost_ratio,
            measure_cost=measured,
            enabled=adaptive,
        )

    def start(self, ctx: DraftContext) -> None:
        super().start(ctx)  # (the vocabulary check is SpeculativeDecoder's)
        self.cache = ctx.new_cache(self.model)
        if self._estimate_cost and self.length is not None:
            mine = parameter_count(self.model)
            ratio = mine / ctx.target_params if mine and ctx.target_params else self.DEFAULT_COST_RATIO
            self.length.cost_ratio = min(max(ratio, 1e-3), 1.0)

    def propose(self, ctx: DraftContext) -> Draft:
        self._calls = 0
        draft = self.draft(ctx)
        draft.draft_calls = self._calls
        return draft

    def draft(self, ctx: DraftContext) -> Draft:
        """This step's trees (``draft_calls`` is filled in by :meth:`propose`)."""
        raise NotImplementedError

    def consume_pending(self, ctx: DraftContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Bring the draft cache up to the roots: returns ``(tokens [B, M], m [B])``, the
        pending chain ``seq[cache.lens : seq_lens]`` (root last; shorter rows repeat
        their last token) that the next forward must consume.  Pending chains longer
        than a prefill chunk are prefilled first."""
        cache = self.cache
        m = ctx.seq_lens - cache.lens.long()
        if m.numel() and int(m.max()) > _forward.PREFILL_CHUNK:
            self._calls += prefill(self.model, cache, ctx.seq, ctx.seq_lens - 1, role="draft model")
            m = ctx.seq_lens - cache.lens.long()
        width = int(m.max()) if m.numel() else 1
        return gather_rows(ctx.seq, cache.lens, m, max(width, 1)), m

    def forward(self, tokens: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
        """One draft-model forward over trees written at ``cache.lens``: float32
        logits ``[B, N, V]`` (the cache's lengths are not advanced)."""
        self._calls += 1
        return forward_tree(self.model, self.cache, tokens, parents, role="draft model")

    def update(self, ctx: DraftContext, feedback: StepFeedback) -> None:
        # The draft cache stays valid up to the committed prefix it agrees with;
        # at most seq_lens - 1 so that the new root is pending.
        self.cache.truncate(torch.minimum(self.cache.lens, (ctx.seq_lens - 1).int()))
        super().update(ctx, feedback)
