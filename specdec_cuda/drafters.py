"""Drafters: where the speculative tokens come from.

Every drafter proposes, each step, one tree per row whose node 0 is the row's
root (its last committed token), as a :class:`Draft`:

- :class:`ChainDrafter` — a draft model decodes K tokens (greedy, or sampled from
  the same ``sampling_probs`` transform as the target, with its probabilities
  kept for lossless verification);
- :class:`TreeDrafter` — a draft model fills a static tree (Medusa-style choice
  list; a node's token is the draft's ``rank``-th most probable token);
- :class:`DynamicTreeDrafter` — EAGLE-2 style: expand the ``topk`` nodes of best
  cumulative draft log-probability level by level, keep the best ``num_nodes``;
- :class:`StochasticTreeDrafter` — a draft model samples a tree level by level,
  each node's children drawn without replacement from the draft's
  ``sampling_probs`` (RSD drafting), verified losslessly with its probabilities;
- :class:`PromptLookupDrafter` — n-gram matching in the row's own context, no model;
- :class:`NoDrafter` — plain autoregressive decoding through the same loop.

Static-tree, dynamic-tree and prompt-lookup drafts are deterministic given the
context, so sampling verifies them with the deterministic-draft rule (no draft
probabilities); chains and stochastic trees pass their draft probabilities.

The draft length (K for chains and prompt lookup, the depth for dynamic trees)
adapts to the measured acceptance with
:class:`~specdec_cuda.length_policy.AdaptiveLength` (the rule is in its
docstring).  The interface every drafter implements (what it reads, returns and
is told) is :mod:`specdec_cuda.drafting`.
"""

from __future__ import annotations

import math

import torch

from . import ops
from ._philox import uniforms
from .drafting import Draft, DraftContext, Drafter, ModelDrafter, StepFeedback
from .length_policy import AdaptiveLength
from .tree import DEFAULT_TREE, StaticTree, chain_parents, static_tree

__all__ = [
    "NoDrafter",
    "ChainDrafter",
    "TreeDrafter",
    "DynamicTreeDrafter",
    "StochasticTreeDrafter",
    "PromptLookupDrafter",
    "sample_from_probs",
]


def sample_from_probs(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: row b's token is the first index whose cumulative
    mass exceeds ``u[b] * total``; tokens of zero mass are never picked.

    ``probs`` float ``[B, V]``, ``u`` float64 ``[B]`` in ``[0, 1)`` -> int64 ``[B]``.
    """
    cdf = probs.double().cumsum(-1)
    target = (u.double() * cdf[:, -1])[:, None]
    idx = torch.searchsorted(cdf, target, right=True).squeeze(1)
    return idx.clamp(max=probs.shape[-1] - 1)


class NoDrafter(Drafter):
    """No drafts: each step verifies the root alone, i.e. plain decoding."""

    name = "autoregressive"
    proposes_chains = True

    def max_nodes(self) -> int:
        return 1

    def propose(self, ctx: DraftContext) -> Draft:
        roots = ctx.roots()
        return Draft(roots[:, None], chain_parents(roots.shape[0], 1, roots.device))


# ---------------------------------------------------------------------------
# Draft-model drafters.
# ---------------------------------------------------------------------------


class ChainDrafter(ModelDrafter):
    """A draft model proposes a chain of ``k`` tokens per step.

    Greedy rows take the draft's argmax; sampled rows draw from the draft's
    ``sampling_probs`` (the same temperature/top-k/top-p as the target) with the
    row's Philox stream, and those probabilities go to ``rejection_sample``.  The
    draft cache is reused across steps: after verification it is cut back to the
    accepted prefix, so each step's first forward consumes just the tokens the
    draft has not seen (1 or 2).

    Args:
        model: the draft model (HF causal LM or protocol model).
        k: initial draft length.
        adaptive: adapt k with :class:`AdaptiveLength` (``k_min``, ``k_max`` passed to
            it); ``cost_ratio``: the draft/target cost it assumes: a number, None (the
            default: the two models' parameter ratio, so a seed reproduces its samples)
            or ``"measured"`` (timed online; K then follows wall-clock timing).
    """

    name = "chain"
    proposes_chains = True

    def __init__(
        self,
        model,
        k: int = 4,
        *,
        adaptive: bool = True,
        k_min: int = 1,
        k_max: int | None = None,
        cost_ratio: float | str | None = None,
    ):
        super().__init__(model)
        if k < 1:
            raise ValueError(f"ChainDrafter: k must be >= 1, got {k}")
        self.length = self._length_policy(
            k, k_min=k_min, k_max=k_max, cost_ratio=cost_ratio, adaptive=adaptive
        )

    def max_nodes(self) -> int:
        return self.length.k_max + 1

    def draft(self, ctx: DraftContext) -> Draft:
        k = self.length.k
        batch = ctx.batch_size
        dev = ctx.device
        tokens, m = self.consume_pending(ctx)
        logits = self.forward(tokens, chain_parents(batch, tokens.shape[1], dev))
        self.cache.advance(m)
        cur = logits[torch.arange(batch, device=dev), (m - 1).clamp(min=0)]  # [B, V]
        drafts, probs = [], []
        for j in range(k):
            if ctx.greedy:
                tok = cur.argmax(-1)
            else:
                q = ops.sampling_probs(cur.contiguous(), ctx.temperature, ctx.top_k, ctx.top_p)
                u = uniforms(ctx.seed, ctx.draft_offset(), torch.tensor([j], device=dev))[:, 0]
                tok = sample_from_probs(q, u)
                probs.append(q)
            drafts.append(tok)
            if j + 1 < k:
                cur = self.forward(tok[:, None], chain_parents(batch, 1, dev))[:, 0]
                self.cache.advance(1)
        out_tokens = torch.stack([ctx.roots()] + drafts, dim=1)
        draft_probs = None
        if not ctx.greedy:
            probs.append(torch.zeros_like(probs[0]))  # the leaf has no children
            draft_probs = torch.stack(probs, dim=1).contiguous()
        return Draft(out_tokens, chain_parents(batch, k + 1, dev), draft_probs)


class _TreeDrafterBase(ModelDrafter):
    """Shared machinery: per level, one forward of the pending chain plus the tree
    nodes expanded so far (each node attends to the prefix and its ancestors)."""

    def _begin(self, ctx: DraftContext) -> None:
        tokens, m = self.consume_pending(ctx)
        self._pend = tokens
        self._m = m
        self._root_idx = (m - 1).clamp(min=0)
        self._pend_parents = chain_parents(ctx.batch_size, tokens.shape[1], ctx.device)

    def _level(self, node_tokens: torch.Tensor, node_parents: torch.Tensor):
        """Forward pending + nodes; ``node_parents`` are node-local (-1: the root).
        Returns (root logits [B, V], node logits [B, T, V])."""
        big_m = self._pend.shape[1]
        par = torch.where(
            node_parents < 0, self._root_idx[:, None].to(node_parents.dtype), node_parents + big_m
        ).int()
        tokens = torch.cat([self._pend, node_tokens], dim=1)
        parents = torch.cat([self._pend_parents, par], dim=1)
        logits = self.forward(tokens, parents)
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        return logits[rows, self._root_idx], logits[:, big_m:]

    def _finish(self):
        self.cache.advance(self._m)


class TreeDrafter(_TreeDrafterBase):
    """A draft model fills a static tree given as a Medusa-style choice list
    (:func:`specdec_cuda.tree.static_tree`); one draft forward per tree level."""

    name = "tree"

    def __init__(self, model, choices=None):
        super().__init__(model)
        self.tree: StaticTree = static_tree(DEFAULT_TREE if choices is None else choices)
        if self.tree.num_nodes < 2:
            raise ValueError("TreeDrafter: the tree needs at least one node besides the root")
        self.proposes_chains = all(p == i - 1 for i, p in enumerate(self.tree.parents) if i > 0)

    @property
    def draft_length(self) -> int:
        return self.tree.max_depth

    def max_nodes(self) -> int:
        return self.tree.num_nodes

    def start(self, ctx: DraftContext) -> None:
        super().start(ctx)
        if self.tree.max_rank() > self.vocab_size:
            raise ValueError(
                f"TreeDrafter: the tree asks for rank {self.tree.max_rank() - 1} but the "
                f"vocabulary has {self.vocab_size} tokens"
            )

    def draft(self, ctx: DraftContext) -> Draft:
        tree, dev, batch = self.tree, ctx.device, ctx.batch_size
        self._begin(ctx)
        n = tree.num_nodes
        parents = torch.tensor(tree.parents, dtype=torch.int32, device=dev)
        local_par = parents[1:] - 1  # node i>0 -> local index i-1; the root -> -1
        tokens = torch.zeros(batch, n, dtype=torch.long, device=dev)
        tokens[:, 0] = ctx.roots()
        ranks = torch.tensor(tree.ranks, dtype=torch.long, device=dev)
        kmax = tree.max_rank()
        for d in range(1, tree.max_depth + 1):
            done = sum(1 for x in tree.depth if x < d)  # nodes 0..done-1 have tokens
            root_l, node_l = self._level(tokens[:, 1:done], local_par[: done - 1].expand(batch, -1))
            all_l = torch.cat([root_l[:, None], node_l], dim=1)  # [B, done, V] by node index
            top = all_l.topk(kmax, dim=-1).indices  # [B, done, kmax]
            idx = torch.tensor(tree.nodes_at(d), dtype=torch.long, device=dev)
            tokens[:, idx] = top[:, parents[idx].long(), ranks[idx]]
        self._finish()
        return Draft(tokens, parents.expand(batch, -1).contiguous(), None)


class DynamicTreeDrafter(_TreeDrafterBase):
    """EAGLE-2 style dynamic tree from a draft model.

    Level 1 takes the root's ``topk`` most probable tokens.  Each further level
    forwards the current frontier (``topk`` nodes), scores each frontier node's
    ``topk`` children by cumulative draft log-probability (the sum along the
    path), and keeps the ``topk`` best of those ``topk**2`` as the next frontier.
    After ``depth`` levels the ``num_nodes - 1`` best-scoring candidates of all
    levels (an ancestor-closed set, as scores only fall along a path) form the
    tree.  The depth adapts like a chain's length (:class:`AdaptiveLength`).
    """

    name = "dynamic_tree"

    def __init__(
        self,
        model,
        *,
        topk: int = 4,
        depth: int = 5,
        num_nodes: int = 24,
        adaptive: bool = True,
        depth_min: int = 1,
        depth_max: int | None = None,
        cost_ratio: float | str | None = None,
    ):
        super().__init__(model)
        if topk < 1 or depth < 1 or num_nodes < 2:
            raise ValueError(
                f"DynamicTreeDrafter: need topk >= 1, depth >= 1, num_nodes >= 2; got "
                f"topk={topk}, depth={depth}, num_nodes={num_nodes}"
            )
        self.topk, self.num_nodes = int(topk), int(num_nodes)
        self.length = self._length_policy(
            depth, k_min=depth_min, k_max=depth_max, cost_ratio=cost_ratio, adaptive=adaptive
        )
        if self.num_nodes - 1 > self.topk:
            need = 1 + math.ceil((self.num_nodes - 1 - self.topk) / (self.topk * self.topk))
            self.length.k_min = max(self.length.k_min, need)
            self.length.k = self.length.k_init = max(self.length.k, need)
            self.length.k_max = max(self.length.k_max, need)

    def max_nodes(self) -> int:
        return self.num_nodes

    def max_width(self) -> int:
        # the last level forwards every expanded node: (depth - 1) * topk of them
        return max(self.num_nodes, (self.length.k_max - 1) * self.topk + 1)

    def start(self, ctx: DraftContext) -> None:
        super().start(ctx)
        if self.topk > self.vocab_size:
            raise ValueError(
                f"DynamicTreeDrafter: topk={self.topk} exceeds the vocabulary ({self.vocab_size} tokens)"
            )

    def draft(self, ctx: DraftContext) -> Draft:
        dev, batch, k = ctx.device, ctx.batch_size, self.topk
        depth = self.length.k
        self._begin(ctx)
        rows = torch.arange(batch, device=dev)[:, None]
        empty_t = torch.zeros(batch, 0, dtype=torch.long, device=dev)
        root_l, _ = self._level(empty_t, empty_t.int())
        score, tok = torch.log_softmax(root_l, -1).topk(k, dim=-1)  # [B, k]
        pool_tok, pool_score = tok, score
        pool_par = torch.full((batch, k), -1, dtype=torch.long, device=dev)
        frontier = torch.arange(k, device=dev).expand(batch, k)  # pool indices
        expanded = torch.zeros(batch, 0, dtype=torch.long, device=dev)
        for _ in range(1, depth):
            expanded = torch.cat([expanded, frontier], dim=1)  # pool indices, parents first
            # pool index -> local index among the expanded nodes
            where = torch.full((batch, pool_tok.shape[1]), -1, dtype=torch.long, device=dev)
            where.scatter_(1, expanded, torch.arange(expanded.shape[1], device=dev).expand(batch, -1))
            e_par = torch.gather(pool_par, 1, expanded)
            local_par = torch.where(e_par < 0, e_par, torch.gather(where, 1, e_par.clamp(min=0)))
            _, node_l = self._level(torch.gather(pool_tok, 1, expanded), local_par.int())
            f_logits = node_l[:, -k:]  # the frontier is the last k expanded nodes
            c_score, c_tok = torch.log_softmax(f_logits, -1).topk(k, dim=-1)  # [B, k, k]
            c_score = (torch.gather(pool_score, 1, frontier)[:, :, None] + c_score).reshape(batch, -1)
            base = pool_tok.shape[1]
            pool_tok = torch.cat([pool_tok, c_tok.reshape(batch, -1)], dim=1)
            pool_score = torch.cat([pool_score, c_score], dim=1)
            pool_par = torch.cat([pool_par, frontier.repeat_interleave(k, dim=1)], dim=1)
            frontier = base + c_score.topk(k, dim=-1).indices
        self._finish()
        # The best num_nodes - 1 candidates; a stable sort keeps parents ahead of
        # equally scored children, so the set is ancestor-closed.
        keep = min(self.num_nodes - 1, pool_tok.shape[1])
        order = torch.sort(-pool_score, dim=1, stable=True).indices[:, :keep]
        chosen = torch.sort(order, dim=1).values  # pool order: parents before children
        pos = torch.full((batch, pool_tok.shape[1]), -1, dtype=torch.long, device=dev)
        pos.scatter_(1, chosen, torch.arange(1, keep + 1, device=dev).expand(batch, -1))
        c_par = torch.gather(pool_par, 1, chosen)
        tree_par = torch.where(c_par < 0, torch.zeros_like(c_par), pos[rows, c_par.clamp(min=0)])
        tokens = torch.cat([ctx.roots()[:, None], torch.gather(pool_tok, 1, chosen)], dim=1)
        parents = torch.cat([torch.full((batch, 1), -1, dtype=torch.long, device=dev), tree_par], dim=1)
        return Draft(tokens, parents.int().contiguous(), None)


def _sample_without(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse CDF over float64 weights ``w`` ``[R, V]`` (rows with mass) with uniforms
    ``u`` ``[R]``: the first token whose cumulative weight exceeds ``u * total``, never a
    token of weight 0 (``u * total`` rounded up to the total takes the last token with
    weight)."""
    cdf = w.cumsum(-1)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    vocab = w.shape[-1]
    last = torch.where(w > 0, torch.arange(vocab, device=w.device), -1).max(-1).values
    ok = idx < vocab
    ok &= w.gather(1, idx.clamp(max=vocab - 1)[:, None])[:, 0] > 0
    return torch.where(ok, idx, last)


class StochasticTreeDrafter(_TreeDrafterBase):
    """A draft model samples a tree: every node at depth d - 1 gets ``branching[d - 1]``
    children, drawn WITHOUT replacement from the draft's ``sampling_probs`` row after it
    (RSD drafting, Jeon et al. 2024).  One draft forward per level.

    Children of a node take consecutive indices and are drawn in index order: child i
    from q with the tokens of its earlier siblings zeroed (renormalised), by inverse
    CDF with the uniform of index i (its node index) in the row's draft stream
    (``ctx.seed``, ``ctx.draft_offset()``; every index is used once).  When q has no
    mass left (fewer tokens of mass than children: top-k, top-p, greedy rows), the
    remaining children are the draft's most probable tokens not drawn yet
    (deterministic fillers, which the verifier recognises).  So a greedy row (one-hot
    q) takes the draft's top tokens.  The proposal carries ``draft_probs`` (the ORIGINAL
    q rows; leaves' rows are zero) and ``siblings="without_replacement"``; all-greedy
    batches carry no probabilities.

    Args:
        model: the draft model (HF causal LM or protocol model).
        branching: children per node at each depth, e.g. ``(3, 2, 1)``: 3 + 6 + 6 = 15
            drafts, depth 3.
    """

    name = "stochastic_tree"

    def __init__(self, model, branching=(3, 2, 1)):
        super().__init__(model)
        branching = tuple(branching)
        if not branching or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in branching):
            raise ValueError(
                "StochasticTreeDrafter: branching must be a non-empty sequence of ints >= 1, "
                f"got {branching!r}"
            )
        self.branching = branching
        parents, levels = [-1], [[0]]
        for b in branching:
            level = []
            for node in levels[-1]:
                for _ in range(b):
                    level.append(len(parents))
                    parents.append(node)
            levels.append(level)
        self.parents, self.levels = parents, levels
        self.proposes_chains = all(b == 1 for b in branching)

    @property
    def draft_length(self) -> int:
        return len(self.branching)

    def max_nodes(self) -> int:
        return len(self.parents)

    def start(self, ctx: DraftContext) -> None:
        super().start(ctx)
        if max(self.branching) > self.vocab_size:
            raise ValueError(
                f"StochasticTreeDrafter: branching {max(self.branching)} exceeds the vocabulary "
                f"({self.vocab_size} tokens): siblings must be distinct"
            )

    def draft(self, ctx: DraftContext) -> Draft:
        dev, batch, n = ctx.device, ctx.batch_size, len(self.parents)
        self._begin(ctx)
        parents = torch.tensor(self.parents, dtype=torch.int32, device=dev)
        local_par = parents[1:] - 1  # node i > 0 -> local index i - 1; the root -> -1
        tokens = torch.zeros(batch, n, dtype=torch.long, device=dev)
        tokens[:, 0] = ctx.roots()
        probs = torch.zeros(batch, n, self.vocab_size, dtype=torch.float32, device=dev)
        offset = ctx.draft_offset()
        for d, b in enumerate(self.branching, start=1):
            done = self.levels[d][0]  # nodes 0..done-1 have tokens
            root_l, node_l = self._level(tokens[:, 1:done], local_par[: done - 1].expand(batch, -1))
            all_l = torch.cat([root_l[:, None], node_l], dim=1)  # [B, done, V] by node index
            heads = torch.tensor(self.levels[d - 1], dtype=torch.long, device=dev)  # this level's parents
            logits = all_l[:, heads]  # [B, H, V]
            h = heads.numel()
            flat = logits.reshape(batch * h, -1).contiguous()
            q = ops.sampling_probs(  # row b's parameters for its H nodes
                flat, *(t.repeat_interleave(h) for t in (ctx.temperature, ctx.top_k, ctx.top_p))
            )
            probs[:, heads] = q.view(batch, h, -1)
            w = q.double()
            kids = torch.tensor(self.levels[d], dtype=torch.long, device=dev).view(h, b)  # node indices
            masked = flat.clone()
            for k in range(b):
                idx = kids[:, k]  # [H]: the k-th child of every parent at this level
                u = uniforms(ctx.seed, offset, idx)  # [B, H]
                has_mass = w.sum(-1) > 0
                drawn = _sample_without(torch.where(has_mass[:, None], w, 1.0), u.reshape(-1).double())
                filler = masked.argmax(-1)  # the most probable token not drawn yet
                tok = torch.where(has_mass, drawn, filler)
                w.scatter_(1, tok[:, None], 0.0)
                masked.scatter_(1, tok[:, None], float("-inf"))
                tokens[:, idx] = tok.view(batch, h)
        self._finish()
        draft_probs = None if ctx.greedy else probs
        return Draft(
            tokens, parents.expand(batch, -1).contiguous(), draft_probs, siblings="without_replacement"
        )


# ---------------------------------------------------------------------------
# Prompt lookup.
# ---------------------------------------------------------------------------


class PromptLookupDrafter(Drafter):
    """n-gram drafting from the row's own context (no draft model).

    For n from ``max_ngram`` down to ``min_ngram``: find the most recent earlier
    occurrence of the last n committed tokens; the (up to) k tokens that followed it
    are the draft.  A step verifies as many drafts as the longest continuation found
    in the batch, not k: rows with a shorter one (or none) are padded to that width by
    repeating their last token (any token is a valid deterministic draft, just
    unlikely to be accepted), and a step where no row matches verifies no drafts at
    all.  ``k`` adapts like a chain's length, from each row's acceptance of its real
    drafts.
    """

    name = "prompt_lookup"
    proposes_chains = True

    def __init__(
        self,
        k: int = 6,
        *,
        max_ngram: int = 3,
        min_ngram: int = 1,
        adaptive: bool = True,
        k_min: int = 1,
        k_max: int | None = None,
        cost_ratio: float = 0.02,
    ):
        if k < 1 or not 1 <= min_ngram <= max_ngram:
            raise ValueError(
                f"PromptLookupDrafter: need k >= 1 and 1 <= min_ngram <= max_ngram; got "
                f"k={k}, min_ngram={min_ngram}, max_ngram={max_ngram}"
            )
        self.max_ngram, self.min_ngram = int(max_ngram), int(min_ngram)
        self.length = AdaptiveLength(k, k_min=k_min, k_max=k_max, cost_ratio=cost_ratio, enabled=adaptive)

    def max_nodes(self) -> int:
        return self.length.k_max + 1

    def _lookup(self, row: torch.Tensor, k: int) -> list[int]:
        total = row.numel()
        for n in range(min(self.max_ngram, total - 1), self.min_ngram - 1, -1):
            pattern = row[total - n :]
            windows = row[: total - 1].unfold(0, n, 1)  # windows starting before the suffix
            hits = (windows == pattern).all(dim=1).nonzero().flatten()
            if hits.numel():
                start = int(hits[-1]) + n
                return row[start : start + k].tolist()
        return []

    def propose(self, ctx: DraftContext) -> Draft:
        k = self.length.k
        seq = ctx.seq.cpu()
        lens = ctx.seq_lens.tolist()
        conts, roots = [], []
        for b in range(ctx.batch_size):
            conts.append(self._lookup(seq[b, : lens[b]], k))
            roots.append(int(seq[b, lens[b] - 1]))
        width = max((len(c) for c in conts), default=0)
        rows = [[r] + c + [(c or [r])[-1]] * (width - len(c)) for r, c in zip(roots, conts)]
        self._real = [len(c) for c in conts]  # each row's real drafts, for update()
        tokens = torch.tensor(rows, dtype=torch.long).reshape(ctx.batch_size, width + 1).to(ctx.device)
        return Draft(tokens, chain_parents(ctx.batch_size, width + 1, ctx.device), None)

    def update(self, ctx: DraftContext, feedback: StepFeedback) -> None:
        """The acceptance of each row's real drafts (padding is neither a draft nor a
        rejection) feeds the length policy."""
        active = feedback.active.cpu()
        if not bool(active.any()):
            return
        real = torch.tensor(self._real)[active]
        self.length.observe(feedback.accepted.cpu()[active], real)
