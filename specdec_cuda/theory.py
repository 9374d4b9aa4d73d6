"""The theory of speculative decoding, measured: per-position total-variation
distances between the target and the draft, the acceptance and tokens per target
call they predict, and the check against the real loop (``python -m specdec_cuda
analyze``).

Notation.  A text is a prompt followed by a continuation ``y_1 .. y_M``.  Position
``t`` (``0 <= t < M``) is the context "prompt + y_1 .. y_t", whose next token is
``y_{t+1}``.  ``p_t`` and ``q_t`` are the target's and the draft's next-token
distributions there, both after the one ``ops.sampling_probs`` transform (the
temperature T, top-k, top-p of the run); at T = 0 both are one-hot at their first
argmax.  The continuations are the target's own (greedy at T = 0, sampled from
``p`` with seeds at T > 0, by the loop without drafts), and every position is
measured teacher-forced (one forward of each model over the whole text).  That is
the right population of contexts: decoding is lossless, so the text the loop
emits has exactly the law of the target's own continuations.

Per-position quantities (:func:`position_stats`):

* ``tv_t = 1/2 sum_x |p_t(x) - q_t(x)|`` and ``beta_t = 1 - tv_t = sum_x min(p_t, q_t)``:
  the probability that a draft token sampled from ``q_t`` is accepted by the
  rule of Leviathan et al. (accept x with probability ``min(1, p/q)``).  At T = 0
  ``beta_t`` is 1 when the argmaxes agree and 0 otherwise.
* ``r_t = min(1, q_t(y)/p_t(y))`` with ``y = y_{t+1}``: the probability that
  position t was an accepted draft *given the text*.  Derivation: a draft position
  emits y accepted with probability ``q(y) min(1, p(y)/q(y)) = min(p, q)(y)`` and
  rejected-then-corrected with probability ``(p - q)^+(y)``; the two add up to
  ``p(y)``, so given y it was accepted with probability ``min(p, q)(y) / p(y)``.
  Each position's draw is independent given the text, and ``E[r_t | context] =
  beta_t``.
* ``rho_t``: the rank of ``y_{t+1}`` in the draft's logits (0: the draft's argmax;
  the number of tokens with a strictly larger logit, so ties favour the token), and
  ``p_t(d_t^(r))``: the target's probability of the draft's r-th most likely token.

Chains of K drafts (:class:`~specdec_cuda.drafters.ChainDrafter`, sampled drafts,
the Leviathan rule).  A step accepts ``A`` drafts (``0 <= A <= K``) and emits
``A + 1`` tokens; tau is the mean of ``A + 1`` over steps and the loop's
``acceptance_by_position[j-1]`` is the fraction of steps with ``A >= j``.

1. *i.i.d.* (Leviathan et al. 2023): every draft is accepted independently with
   the same probability ``alpha = E_t[1 - tv_t]`` (the mean over all measured
   positions).  Then ``P(A >= j) = alpha^j`` and
   ``tau(K) = sum_{j=0..K} alpha^j = (1 - alpha^(K+1)) / (1 - alpha)``
   (:func:`tau_iid`).  It ignores that acceptance varies from position to position
   and is correlated along the text (runs of easy and hard tokens).
2. *positional* (:func:`renewal`): a step starting at position t accepts its j-th
   draft with the probability of position ``t + j - 1``, so ``P(A >= j | t) =
   prod_{i<j} a_{t+i}`` (:func:`chain_reach`), and steps start where the previous
   one ended: ``pi(0) = 1``, ``pi(t + a + 1) += pi(t) P(A = a | t)`` for the starts
   ``t < N`` (N: the new tokens per prompt).  Then ``tau = sum_t pi(t) E[A + 1 | t]
   / sum_t pi(t)`` and ``acceptance_by_position[j-1] = sum_t pi(t) P(A >= j | t) /
   sum_t pi(t)``, i.e. expected tokens over expected steps (renewal-reward), pooled
   over texts.  The start weights matter: averaging ``E[A + 1 | t]`` uniformly over
   t would over-count easy stretches, which a step crosses in one go.  With
   ``a_t = r_t`` this is the *exact* expected number of tokens and steps of the
   loop given the text (the derivation above), so, averaged over texts drawn from
   the target, an unbiased prediction; with ``a_t = beta_t`` ("positional 1-TV")
   it replaces each factor by its expectation given its own context, which is
   exact only for the first draft of a step (it ignores that accepting ``y``
   correlates with how easy the next position is).  At T = 0 the two coincide
   (``r_t = beta_t`` in {0, 1}) and the greedy prediction on the target's greedy
   text is exact up to near-ties of the draft's argmax.

Static trees (:class:`~specdec_cuda.drafters.TreeDrafter`, a choice list; node
tokens are the draft's ranked tokens; verification by the deterministic-draft rule,
or ``verify_greedy`` at T = 0).  At a node whose context is s, with children of
distinct tokens ``c_1, c_2, ...``, the rule accepts child i with probability exactly
``p_s(c_i)`` (child 1 with ``p(c_1)``; after a rejection p loses ``c_1``'s mass and
is renormalised, so child 2 is reached with ``1 - p(c_1)`` and accepted with
``p(c_2) / (1 - p(c_1))``; and so on), and the emitted token has the law ``p_s``.
So given the emitted token y, the child with token y, if any, was accepted with
probability 1: the accepted path is the deepest tree path whose ranks match
``rho_t, rho_{t+1}, ...`` (:func:`tree_reach`, deterministic given the text), and
its expectation is ``P(node v accepted) = prod over the path's nodes u of
p_{parent(u)}(token_u)``.

3. *tree i.i.d.* (:func:`predict_tree_iid`, the rank profile): the probability that
   a node of rank r is accepted given its parent is ``a_r = E_t[p_t(d_t^(r))]``
   (the mean over positions of the target's probability of the draft's r-th
   token), the same at every depth and independent along the path, so
   ``E[A] = sum_{v != root} prod_{u in path(v)} a_{rank(u)}``, ``tau = 1 + E[A]``
   and ``P(A >= d) = sum_{v at depth d} prod a`` (siblings' events are disjoint).
4. *tree positional*: :func:`renewal` over :func:`tree_reach` (exact given the text,
   like chain positional with ``r_t``).

Cost and speedup.  With ``c`` = one draft forward / one target forward and a
verification of K + 1 tokens costing one target forward (Leviathan et al.'s model),
a step costs ``K c + 1`` target forwards, so the speedup over plain decoding is
``S(K) = tau(K) / (K c + 1)`` (:func:`speedup`) and the best K for c maximises it
over ``1..k_max`` (:func:`best_k`).  Trees pay ``D c + 1`` (one draft forward per
level, D levels).  With measured per-forward costs (``t_1``: the target per plain
step, ``t_d``: the draft per forward, ``t_v(K)``: the target per verification of
K + 1 tokens, all from the loop's ``phase_s``) the prediction is
``tau(K) t_1 / (K t_d + t_v(K))``; the loop's own overhead (verification,
bookkeeping) is in the measured wall-clock speedup only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import ops
from .tree import DEFAULT_TREE, StaticTree, static_tree

__all__ = [
    "tv_distance",
    "acceptance_probability",
    "tau_iid",
    "acceptance_iid",
    "speedup",
    "best_k",
    "Positions",
    "position_stats",
    "Prediction",
    "RenewalSums",
    "chain_reach",
    "tree_reach",
    "renewal",
    "predict_tree_iid",
    "measure_positions",
    "MeasuredRun",
    "Analysis",
    "analyze",
]


# ---------------------------------------------------------------------------
# Formulas (pure functions of distributions and numbers).
# ---------------------------------------------------------------------------


def tv_distance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``1/2 sum |p - q|`` over the last dimension, in float64."""
    if p.shape != q.shape:
        raise ValueError(f"tv_distance: p {tuple(p.shape)} and q {tuple(q.shape)} differ in shape")
    return 0.5 * (p.double() - q.double()).abs().sum(-1)


def acceptance_probability(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``sum min(p, q)`` over the last dimension (float64): the probability that a
    token drawn from q is accepted by the Leviathan rule against p; equals
    ``1 - tv_distance(p, q)`` for normalised p and q."""
    if p.shape != q.shape:
        raise ValueError(f"acceptance_probability: p {tuple(p.shape)} and q {tuple(q.shape)} differ")
    return torch.minimum(p.double(), q.double()).sum(-1)


def tau_iid(alpha: float, k: int) -> float:
    """Expected tokens per target call of a K-chain whose drafts are each accepted
    independently with probability alpha: ``(1 - alpha^(K+1)) / (1 - alpha)``
    (``K + 1`` at alpha = 1)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"tau_iid: alpha must be in [0, 1], got {alpha}")
    if k < 0:
        raise ValueError(f"tau_iid: k must be >= 0, got {k}")
    if alpha == 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def acceptance_iid(alpha: float, k: int) -> list[float]:
    """``P(A >= j) = alpha^j`` for ``j = 1..K`` (the loop's ``acceptance_by_position``)."""
    return [alpha**j for j in range(1, k + 1)]


def speedup(tau: float, k: int, c: float, verify_cost: float = 1.0) -> float:
    """``tau / (K c + verify_cost)``: tokens per unit of target-forward time, over
    plain decoding's one token per target forward."""
    return tau / (k * c + verify_cost)


def best_k(taus: dict[int, float], c: float) -> int:
    """The K of ``taus`` (K -> tau(K)) with the largest ``tau / (K c + 1)``; the
    smaller K on a tie."""
    return max(sorted(taus), key=lambda k: (speedup(taus[k], k, c), -k))


# ---------------------------------------------------------------------------
# Per-position quantities and the renewal over a text.
# ---------------------------------------------------------------------------


@dataclass
class Positions:
    """Per-position quantities of one text (see the module docstring).

    ``tv``, ``realized`` float64 ``[M]``; ``ranks`` int64 ``[M]``; ``rank_probs``
    float64 ``[M, R]``; ``n_starts``: positions where a step may start (the new
    tokens N; ``M - N`` extra positions let the last steps' drafts be judged).
    """

    tv: torch.Tensor
    realized: torch.Tensor
    ranks: torch.Tensor
    rank_probs: torch.Tensor
    n_starts: int

    @property
    def beta(self) -> torch.Tensor:
        return 1.0 - self.tv


def position_stats(
    p: torch.Tensor,
    q: torch.Tensor,
    draft_logits: torch.Tensor,
    next_tokens: torch.Tensor,
    *,
    max_rank: int,
    n_starts: int,
) -> Positions:
    """:class:`Positions` from the target's and draft's distributions ``p``, ``q``
    ``[M, V]`` (after ``sampling_probs``), the draft's raw logits ``[M, V]`` (the
    tree drafter ranks them) and the text's next tokens ``[M]``.

    ``realized[t] = min(1, q_t(y)/p_t(y))``; where ``p_t(y) = 0`` (only possible
    when the text did not come from p) it is 1 if ``q_t(y) > 0`` else 0.
    """
    m = next_tokens.shape[0]
    if p.shape != q.shape or p.dim() != 2 or p.shape[0] != m or draft_logits.shape != p.shape:
        raise ValueError(
            f"position_stats: p {tuple(p.shape)}, q {tuple(q.shape)}, draft_logits "
            f"{tuple(draft_logits.shape)} must all be [M, V] with M = {m} next tokens"
        )
    if not 1 <= n_starts <= m:
        raise ValueError(f"position_stats: n_starts must be in [1, {m}], got {n_starts}")
    if not 1 <= max_rank <= p.shape[1]:
        raise ValueError(f"position_stats: max_rank must be in [1, {p.shape[1]}], got {max_rank}")
    y = next_tokens.long().to(p.device)[:, None]
    py = p.double().gather(1, y)[:, 0]
    qy = q.double().gather(1, y)[:, 0]
    realized = torch.where(py > 0, torch.clamp(qy / py.clamp(min=1e-300), max=1.0), (qy > 0).double())
    logits = draft_logits.float()
    ranks = (logits > logits.gather(1, y)).sum(1)
    top = logits.topk(max_rank, dim=1).indices
    rank_probs = p.double().gather(1, top)
    return Positions(
        tv=tv_distance(p, q).cpu(),
        realized=realized.cpu(),
        ranks=ranks.cpu(),
        rank_probs=rank_probs.cpu(),
        n_starts=int(n_starts),
    )


@dataclass
class RenewalSums:
    """Expected totals of the steps that start before ``n_starts`` on one text (or
    several, added up): ``steps``, ``tokens`` (accepted drafts + 1 per step) and
    ``reached[j-1]`` (steps whose accepted path reaches depth j)."""

    steps: float = 0.0
    tokens: float = 0.0
    reached: list[float] = field(default_factory=list)

    def __add__(self, other: RenewalSums) -> RenewalSums:
        n = max(len(self.reached), len(other.reached))
        a = self.reached + [0.0] * (n - len(self.reached))
        b = other.reached + [0.0] * (n - len(other.reached))
        return RenewalSums(
            self.steps + other.steps, self.tokens + other.tokens, [x + y for x, y in zip(a, b)]
        )

    @property
    def tau(self) -> float:
        return self.tokens / self.steps if self.steps else 0.0

    @property
    def acceptance_by_position(self) -> list[float]:
        return [r / self.steps if self.steps else 0.0 for r in self.reached]


def chain_reach(acc: torch.Tensor, k: int, n_starts: int) -> torch.Tensor:
    """``reach[t, j] = prod_{i<j} acc[t + i]`` (``reach[t, 0] = 1``): float64
    ``[n_starts, K + 1]``, the probability that a K-chain starting at t accepts at
    least j drafts when position i's draft is accepted with probability ``acc[i]``."""
    acc = acc.double().cpu()
    if k < 1 or n_starts < 1 or n_starts + k - 1 > acc.numel():
        raise ValueError(
            f"chain_reach: need k >= 1, n_starts >= 1 and n_starts + k - 1 <= {acc.numel()} "
            f"positions, got k={k}, n_starts={n_starts}"
        )
    windows = acc[: n_starts + k - 1].unfold(0, k, 1)  # [n_starts, k]
    return torch.cat([torch.ones(n_starts, 1, dtype=torch.float64), windows.cumprod(1)], dim=1)


def tree_reach(ranks: torch.Tensor, tree: StaticTree, n_starts: int) -> torch.Tensor:
    """``reach[t, d]`` = 1 when the tree has a path of depth d whose ranks are
    ``ranks[t], ..., ranks[t + d - 1]`` (the accepted path of a step starting at t,
    given the text), else 0: float64 ``[n_starts, D + 1]``."""
    depth = tree.max_depth
    ranks = ranks.long().cpu().tolist()
    if n_starts < 1 or n_starts + depth - 1 > len(ranks):
        raise ValueError(
            f"tree_reach: need 1 <= n_starts and n_starts + depth - 1 <= {len(ranks)} positions, "
            f"got n_starts={n_starts}, depth={depth}"
        )
    child = {(tree.parents[i], tree.ranks[i]): i for i in range(1, tree.num_nodes)}
    reach = torch.zeros(n_starts, depth + 1, dtype=torch.float64)
    for t in range(n_starts):
        node, d = 0, 0
        reach[t, 0] = 1.0
        while d < depth and (node, ranks[t + d]) in child:
            node = child[(node, ranks[t + d])]
            d += 1
            reach[t, d] = 1.0
    return reach


def renewal(reach: torch.Tensor, n_starts: int | None = None) -> RenewalSums:
    """Expected steps, tokens and depths reached of the steps that start at
    ``t < n_starts`` on one text, given ``reach[t, j] = P(A >= j | a step starts at
    t)`` (``[T, K + 1]``, column 0 all ones, non-increasing along j).  The first step
    starts at 0 and a step that accepts a drafts makes the next start at t + a + 1."""
    reach = reach.double().cpu()
    n_starts = reach.shape[0] if n_starts is None else n_starts
    if reach.dim() != 2 or reach.shape[1] < 2 or not 1 <= n_starts <= reach.shape[0]:
        raise ValueError(
            f"renewal: reach must be [T, K + 1] with K >= 1 and n_starts <= T, got {reach.shape}"
        )
    if not torch.all(reach[:, 0] == 1.0) or bool((reach[:, 1:] > reach[:, :-1] + 1e-12).any()):
        raise ValueError("renewal: reach[:, 0] must be 1 and reach must not increase along j")
    k = reach.shape[1] - 1
    rows = reach.tolist()
    start = [0.0] * (n_starts + k + 2)
    start[0] = 1.0
    out = RenewalSums(reached=[0.0] * k)
    for t in range(n_starts):
        w = start[t]
        if w == 0.0:
            continue
        row = rows[t]
        out.steps += w
        out.tokens += w * sum(row)
        for j in range(1, k + 1):
            out.reached[j - 1] += w * row[j]
        for a in range(k + 1):
            pa = row[a] - (row[a + 1] if a < k else 0.0)
            start[t + a + 1] += w * pa
    return out


@dataclass
class Prediction:
    """A predicted tau and acceptance by draft position (``[j-1]``: P(A >= j))."""

    tau: float
    acceptance_by_position: list[float]
    #: standard error of ``tau`` over the texts it was pooled from (0: not estimated)
    tau_se: float = 0.0


def ratio_se(num: Sequence[float], den: Sequence[float]) -> float:
    """Standard error of the pooled ratio ``sum num / sum den`` over independent
    units (texts or runs), by the delta method:
    ``sqrt(n / (n - 1) sum_i (num_i - R den_i)^2) / sum den`` (0 for n < 2)."""
    n, total = len(num), float(sum(den))
    if n != len(den):
        raise ValueError(f"ratio_se: {n} numerators but {len(den)} denominators")
    if n < 2 or total <= 0:
        return 0.0
    r = float(sum(num)) / total
    return math.sqrt(n / (n - 1) * sum((a - r * b) ** 2 for a, b in zip(num, den))) / total


def predict_tree_iid(tree: StaticTree, rank_acceptance: Sequence[float]) -> Prediction:
    """The rank-profile model of a static tree: node v is accepted with probability
    ``prod_{u in path(v)} rank_acceptance[rank(u)]``; tau = 1 + the sum over nodes,
    ``P(A >= d)`` = the sum over the nodes at depth d."""
    if len(rank_acceptance) < tree.max_rank():
        raise ValueError(
            f"predict_tree_iid: the tree uses rank {tree.max_rank() - 1} but only "
            f"{len(rank_acceptance)} rank acceptances were given"
        )
    prob = [1.0] * tree.num_nodes
    by_depth = [0.0] * tree.max_depth
    for i in range(1, tree.num_nodes):
        prob[i] = prob[tree.parents[i]] * float(rank_acceptance[tree.ranks[i]])
        by_depth[tree.depth[i] - 1] += prob[i]
    return Prediction(tau=1.0 + sum(prob[1:]), acceptance_by_position=by_depth)


# ---------------------------------------------------------------------------
# Measurement on models: teacher-forced positions and real loop runs.
# ---------------------------------------------------------------------------


def sequence_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """float32 logits ``[L, V]`` of a model (HF causal LM or protocol model) over one
    1-D token sequence, position i predicting token i + 1: one causal forward through
    the loop's own model path (``forward_tree`` over chunks of a fresh cache)."""
    from ._forward import PREFILL_CHUNK, forward_tree
    from .cache import KVCache
    from .models import as_model
    from .tree import chain_parents

    m = as_model(model)
    ids = ids.long().to(m.device)
    length = ids.numel()
    cache = KVCache(1, length, dtype=m.dtype, device=m.device)
    out = []
    with torch.inference_mode():
        for s in range(0, length, PREFILL_CHUNK):
            chunk = ids[s : s + PREFILL_CHUNK][None]
            n = chunk.shape[1]
            out.append(forward_tree(m, cache, chunk, chain_parents(1, n, m.device))[0])
            cache.advance(n)
    return torch.cat(out, dim=0)


def _row_params(n: int, temperature: float, top_k: int, top_p: float, device) -> tuple:
    return (
        torch.full((n,), float(temperature), dtype=torch.float32, device=device),
        torch.full((n,), int(top_k), dtype=torch.int32, device=device),
        torch.full((n,), float(top_p), dtype=torch.float32, device=device),
    )


def measure_positions(
    target,
    draft,
    prompt: torch.Tensor,
    continuation: torch.Tensor,
    *,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    max_rank: int = 1,
    n_starts: int,
) -> Positions:
    """Teacher-forced :class:`Positions` of "prompt + continuation": one forward of
    each model over the whole text, both distributions through ``sampling_probs``
    with the run's temperature / top-k / top-p, at the ``M = len(continuation)``
    positions that predict the continuation's tokens."""
    ids = torch.cat([prompt.long().cpu(), continuation.long().cpu()])
    lp, m = prompt.numel(), continuation.numel()
    lt = sequence_logits(target, ids)[lp - 1 : lp - 1 + m].contiguous()
    ld = sequence_logits(draft, ids)[lp - 1 : lp - 1 + m].contiguous()
    params = _row_params(m, temperature, top_k, top_p, lt.device)
    p = ops.sampling_probs(lt, *params)
    q = ops.sampling_probs(ld.to(lt.device), *params)
    return position_stats(p, q, ld.to(lt.device), continuation, max_rank=max_rank, n_starts=n_starts)


@dataclass
class MeasuredRun:
    """One drafter's loop runs (batch 1, every prompt and seed), pooled.

    ``tau`` = emitted tokens per target call (accepted drafts + 1, before the budget
    cut, like ``GenerationStats.tau``); ``acceptance_by_position`` pooled the same way
    from ``proposed_by_position`` / ``accepted_by_position``; ``wall_s`` the sum of
    the ``generate`` calls' wall times (prefill included); ``phase_s`` summed.
    """

    name: str
    draft_length: int
    steps: int = 0
    emitted: int = 0
    new_tokens: int = 0
    draft_calls: int = 0
    proposed_by_position: list[int] = field(default_factory=list)
    accepted_by_position: list[int] = field(default_factory=list)
    wall_s: float = 0.0
    phase_s: dict[str, float] = field(default_factory=dict)
    runs: list[tuple[int, int]] = field(default_factory=list)  # (steps, emitted) per generate call

    @property
    def tau(self) -> float:
        return self.emitted / self.steps if self.steps else 0.0

    @property
    def acceptance_by_position(self) -> list[float]:
        return [a / p if p else 0.0 for a, p in zip(self.accepted_by_position, self.proposed_by_position)]

    @property
    def tau_se(self) -> float:
        """Standard error of ``tau`` over the runs (:func:`ratio_se`)."""
        return ratio_se([e for _, e in self.runs], [s for s, _ in self.runs])

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def add(self, stats, wall_s: float) -> None:
        self.steps += stats.row_steps
        self.emitted += stats.emitted_per_call_sum
        self.new_tokens += stats.total_new_tokens
        self.draft_calls += stats.draft_calls
        n = len(stats.proposed_by_position)
        grow = n - len(self.proposed_by_position)
        if grow > 0:
            self.proposed_by_position += [0] * grow
            self.accepted_by_position += [0] * grow
        for j in range(n):
            self.proposed_by_position[j] += stats.proposed_by_position[j]
            self.accepted_by_position[j] += stats.accepted_by_position[j]
        self.wall_s += wall_s
        self.runs.append((stats.row_steps, stats.emitted_per_call_sum))
        for k, v in stats.phase_s.items():
            self.phase_s[k] = self.phase_s.get(k, 0.0) + v

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(tau=self.tau, tau_se=self.tau_se, acceptance_by_position=self.acceptance_by_position)
        d.update(tokens_per_s=self.tokens_per_s)
        return d


def _run_loop(decoder, name: str, draft_length: int, jobs, max_new: int, sampling: dict) -> MeasuredRun:
    """``decoder.generate`` on each (prompt, seed) of ``jobs`` alone, after one warm-up call."""
    run = MeasuredRun(name, draft_length)
    decoder.generate([jobs[0][0]], max_new_tokens=4, seed=0, **sampling)  # warm-up
    for prompt, seed in jobs:
        t0 = time.perf_counter()
        out = decoder.generate([prompt], max_new_tokens=max_new, seed=seed, **sampling)
        run.add(out.stats, time.perf_counter() - t0)
    return run


@dataclass
class Analysis:
    """Everything :func:`analyze` measured and predicted (``as_dict`` for JSON,
    ``table`` for text).  ``chain[K]`` holds, for each K, ``measured`` (a
    :class:`MeasuredRun`) and the predictions ``iid``, ``positional_tv`` (a_t =
    1 - TV) and ``positional`` (a_t = r_t, exact given the text) as
    :class:`Prediction`; ``tree`` the same with ``iid`` (rank profile) and
    ``positional``."""

    temperature: float
    top_k: int
    top_p: float
    max_new_tokens: int
    prompts: int
    seeds: list[list[int]]
    text_seeds: list[list[int]]
    positions: int
    alpha: float
    mean_tv: float
    mean_realized: float
    rank_acceptance: list[float]
    chain: dict[int, dict]
    tree_choices: list | None
    tree: dict | None
    plain: MeasuredRun
    cost: dict
    header: str = ""
    #: the per-text :class:`Positions` the predictions came from (not in ``as_dict``)
    texts: list[Positions] = field(default_factory=list, repr=False)

    # -- derived ------------------------------------------------------------
    def relative_errors(self, predictor: str) -> dict[int, float]:
        """``(predicted - measured) / measured`` tau of each K for one predictor."""
        return {k: (v[predictor].tau - v["measured"].tau) / v["measured"].tau for k, v in self.chain.items()}

    def z_scores(self) -> dict[int, float]:
        """``(positional - measured) / sqrt(se_meas^2 + se_pos^2)`` tau of each K (0
        where neither standard error could be estimated, e.g. one run at T = 0)."""
        out = {}
        for k, v in self.chain.items():
            se = math.hypot(v["measured"].tau_se, v["positional"].tau_se)
            out[k] = (v["positional"].tau - v["measured"].tau) / se if se > 0 else 0.0
        return out

    def speedups(self) -> dict[int, dict[str, float]]:
        c, t1, td = self.cost["c"], self.cost["target_s_per_plain_step"], self.cost["draft_s_per_forward"]
        base = self.plain.tokens_per_s
        out = {}
        for k, v in self.chain.items():
            tv = self.cost["target_s_per_verification"][k]
            out[k] = dict(
                iid=speedup(v["iid"].tau, k, c),
                positional=speedup(v["positional"].tau, k, c),
                measured_costs=v["positional"].tau * t1 / (k * td + tv) if td and tv else 0.0,
                measured=v["measured"].tokens_per_s / base if base else 0.0,
            )
        return out

    def best_ks(self) -> dict[str, int]:
        sp = self.speedups()
        return {name: max(sorted(sp), key=lambda k: (sp[k][name], -k)) for name in next(iter(sp.values()))}

    def as_dict(self) -> dict:
        return dict(
            header=self.header,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            prompts=self.prompts,
            seeds=self.seeds,
            text_seeds=self.text_seeds,
            positions=self.positions,
            alpha=self.alpha,
            mean_tv=self.mean_tv,
            mean_realized=self.mean_realized,
            rank_acceptance=self.rank_acceptance,
            chain={
                str(k): {n: (x.as_dict() if isinstance(x, MeasuredRun) else asdict(x)) for n, x in v.items()}
                for k, v in self.chain.items()
            },
            relative_error={p: self.relative_errors(p) for p in ("iid", "positional_tv", "positional")},
            z_positional=self.z_scores(),
            tree_choices=self.tree_choices,
            tree=None
            if self.tree is None
            else {
                n: (x.as_dict() if isinstance(x, MeasuredRun) else asdict(x)) for n, x in self.tree.items()
            },
            plain=self.plain.as_dict(),
            cost=self.cost,
            speedup=self.speedups(),
            best_k=self.best_ks(),
        )

    def table(self) -> str:
        def err(pred: float, meas: float) -> str:
            return f"{100 * (pred - meas) / meas:+6.1f}%" if meas else "    n/a"

        def accs(xs: Sequence[float]) -> str:
            return " ".join(f"{x:.2f}" for x in xs)

        ranks = ", ".join(f"a_{r} {a:.3f}" for r, a in enumerate(self.rank_acceptance))
        cost = self.cost
        c_note = "given" if cost["given"] else "measured"
        lines = [
            self.header,
            "",
            f"TV(p_t, q_t) per position, teacher-forced on the target's own continuations "
            f"({'greedy' if self.temperature == 0 else f'sampled at T={self.temperature:g}'}): "
            f"mean TV {self.mean_tv:.3f} over {self.positions} positions, "
            f"alpha = E[1 - TV] = {self.alpha:.3f} (E[r_t] = {self.mean_realized:.3f})",
            f"rank acceptance a_r = E[p_t(draft's r-th token)]: {ranks}",
            f"costs (loop phase_s): target {1e3 * cost['target_s_per_plain_step']:.2f} ms per plain step, "
            f"draft {1e3 * cost['draft_s_per_forward']:.2f} ms per forward -> measured c = "
            f"{cost['c_measured']:.3f}; c used = {cost['c']:.3f} ({c_note})",
            "",
            "tokens per target call (tau): measured in the loop vs predicted; err = (pred - meas) / meas;",
            "se: standard error over runs (measured) and over texts (positional); "
            "z = (positional - measured) / sqrt(se_meas^2 + se_pos^2)",
            f"{'drafter':<12} {'measured':>8} {'se':>5} {'iid':>7} {'err':>7} {'pos 1-TV':>9} {'err':>7} "
            f"{'positional':>10} {'se':>5} {'err':>7} {'z':>5}",
            "-" * 92,
        ]

        def row(name: str, meas: MeasuredRun, preds: dict) -> str:
            m = meas.tau
            cols = [f"{name:<12} {m:>8.3f} {meas.tau_se:>5.3f}"]
            for key, width in (("iid", 7), ("positional_tv", 9)):
                pred = preds.get(key)
                cols.append(
                    f"{pred.tau:>{width}.3f} {err(pred.tau, m)}" if pred else f"{'':>{width}} {'':>7}"
                )
            pos = preds["positional"]
            se = math.hypot(meas.tau_se, pos.tau_se)
            z = f"{(pos.tau - m) / se:+5.1f}" if se > 0 else f"{'n/a':>5}"
            cols.append(f"{pos.tau:>10.3f} {pos.tau_se:>5.3f} {err(pos.tau, m)} {z}")
            return " ".join(cols)

        for k, v in self.chain.items():
            lines.append(row(f"chain K={k}", v["measured"], v))
        if self.tree is not None:
            lines.append(row(f"tree ({len(self.tree_choices) + 1})", self.tree["measured"], self.tree))
        worst = {p: max(abs(e) for e in self.relative_errors(p).values()) for p in ("iid", "positional")}
        zs = self.z_scores()
        lines += [
            f"largest |err| over K: iid {100 * worst['iid']:.1f}%, "
            f"positional {100 * worst['positional']:.1f}%; largest |z| (positional) "
            f"{max(abs(z) for z in zs.values()):.1f} (tree row: iid = rank profile)",
            "",
        ]
        k_last = max(self.chain)
        v = self.chain[k_last]
        lines += [
            f"acceptance by draft position, chain K={k_last} (P(A >= j), j = 1..{k_last})",
            f"  measured    {accs(v['measured'].acceptance_by_position)}",
            f"  iid         {accs(v['iid'].acceptance_by_position)}",
            f"  positional  {accs(v['positional'].acceptance_by_position)}",
        ]
        if self.tree is not None:
            lines += [
                "acceptance by depth, static tree",
                f"  measured    {accs(self.tree['measured'].acceptance_by_position)}",
                f"  iid         {accs(self.tree['iid'].acceptance_by_position)}",
                f"  positional  {accs(self.tree['positional'].acceptance_by_position)}",
            ]
        sp = self.speedups()
        lines += [
            "",
            f"speedup over plain decoding: tau / (K c + 1) with c = {cost['c']:.3f} "
            "(iid and positional tau); "
            "with the measured forward costs tau t_1 / (K t_d + t_v(K)) (positional tau); "
            "measured: wall-clock tokens/s over the loop without drafts",
            f"{'K':>3} {'iid':>7} {'positional':>10} {'fwd costs':>10} {'measured':>9}  t_v(K)/t_1",
        ]
        t1 = cost["target_s_per_plain_step"]
        for k, s in sp.items():
            tv = cost["target_s_per_verification"][k]
            lines.append(
                f"{k:>3} {s['iid']:>7.2f} {s['positional']:>10.2f} {s['measured_costs']:>10.2f} "
                f"{s['measured']:>9.2f}  {tv / t1 if t1 else 0.0:.2f}"
            )
        best = self.best_ks()
        lines.append(
            f"best K: iid {best['iid']}, positional {best['positional']}, with forward costs "
            f"{best['measured_costs']}, measured {best['measured']}"
        )
        if self.tree is not None:
            tr = self.tree
            tree_sp = tr["measured"].tokens_per_s / self.plain.tokens_per_s if self.plain.tokens_per_s else 0
            depth = len(tr["positional"].acceptance_by_position)
            lines.append(
                f"tree: iid {speedup(tr['iid'].tau, depth, cost['c']):.2f}, positional "
                f"{speedup(tr['positional'].tau, depth, cost['c']):.2f} (D = {depth} draft forwards), "
                f"measured {tree_sp:.2f}"
            )
        return "\n".join(lines)


def analyze(
    target,
    draft,
    prompts: Sequence[torch.Tensor],
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    ks: Sequence[int] = tuple(range(1, 9)),
    tree_choices: Sequence[Sequence[int]] | None = DEFAULT_TREE,
    max_new_tokens: int = 96,
    samples: int = 2,
    seed: int = 0,
    cost_ratio: float | None = None,
    progress=None,
) -> Analysis:
    """Measure and predict, on ``prompts`` (1-D token tensors), at one temperature.

    1. The target's own continuations of ``max_new_tokens + max(K, tree depth)``
       tokens (the loop without drafts: greedy at T = 0, else sampled with seeds
       ``seed + 1000 i + s`` for prompt i and sample s < ``samples``).
    2. :func:`measure_positions` on each, and the predictions of the module
       docstring (steps start at the first ``max_new_tokens`` positions).
    3. The loop itself, batch 1 per (prompt, seed), seeds ``seed + 1000 i + 500 + s``:
       plain decoding, ``ChainDrafter(draft, k=K, adaptive=False)`` for each K, and
       ``TreeDrafter(draft, tree_choices)`` (skipped when None).
    4. Costs from the runs' ``phase_s``; ``cost_ratio`` overrides the measured c.

    ``progress(stage)`` is called as each stage starts.  At T = 0 ``samples`` is 1.
    """
    from .decoding import SpeculativeDecoder
    from .drafters import ChainDrafter, NoDrafter, TreeDrafter

    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"analyze: ks must be K >= 1, got {ks}")
    if max_new_tokens < 1 or samples < 1 or not prompts:
        raise ValueError("analyze: need max_new_tokens >= 1, samples >= 1 and at least one prompt")
    if cost_ratio is not None and cost_ratio < 0:
        raise ValueError(f"analyze: cost_ratio must be >= 0, got {cost_ratio}")
    tree = static_tree(tree_choices) if tree_choices is not None else None
    greedy = temperature == 0
    samples = 1 if greedy else samples
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    say = progress or (lambda stage: None)
    extra = max([ks[-1]] + ([tree.max_depth] if tree else []))
    n_new = max_new_tokens
    text_seeds = [[seed + 1000 * i + s for s in range(samples)] for i in range(len(prompts))]
    run_seeds = [[seed + 1000 * i + 500 + s for s in range(samples)] for i in range(len(prompts))]

    say("continuations")
    plain_decoder = SpeculativeDecoder(target, NoDrafter())
    texts = []  # (prompt, continuation)
    for i, p in enumerate(prompts):
        out = plain_decoder.generate(
            [p] * samples, max_new_tokens=n_new + extra, seed=text_seeds[i], **sampling
        )
        texts += [(p, c) for c in out.new_tokens]
    max_rank = tree.max_rank() if tree else 1
    pos = [
        measure_positions(target, draft, p, c, max_rank=max_rank, n_starts=n_new, **sampling)
        for p, c in texts
    ]
    all_beta = torch.cat([x.beta for x in pos])
    alpha = float(all_beta.mean())
    rank_acc = torch.cat([x.rank_probs for x in pos]).mean(0).tolist()

    def pooled(reaches) -> Prediction:
        per_text = [renewal(reach, x.n_starts) for reach, x in zip(reaches, pos)]
        total = sum(per_text, RenewalSums())
        se = ratio_se([r.tokens for r in per_text], [r.steps for r in per_text])
        return Prediction(total.tau, total.acceptance_by_position, se)

    chain: dict[int, dict] = {}
    for k in ks:
        chain[k] = dict(
            iid=Prediction(tau_iid(alpha, k), acceptance_iid(alpha, k)),
            positional_tv=pooled([chain_reach(x.beta, k, x.n_starts) for x in pos]),
            positional=pooled([chain_reach(x.realized, k, x.n_starts) for x in pos]),
        )
    tree_out = None
    if tree is not None:
        tree_out = dict(
            iid=predict_tree_iid(tree, rank_acc),
            positional=pooled([tree_reach(x.ranks, tree, x.n_starts) for x in pos]),
        )

    jobs = [(p, s) for i, p in enumerate(prompts) for s in run_seeds[i]]
    say("plain decoding")
    plain = _run_loop(plain_decoder, "plain", 0, jobs, n_new, sampling)
    for k in ks:
        say(f"chain K={k}")
        dec = SpeculativeDecoder(target, ChainDrafter(draft, k=k, adaptive=False))
        chain[k]["measured"] = _run_loop(dec, f"chain K={k}", k, jobs, n_new, sampling)
    if tree is not None:
        say("static tree")
        dec = SpeculativeDecoder(target, TreeDrafter(draft, tree_choices))
        tree_out["measured"] = _run_loop(dec, "tree", tree.max_depth, jobs, n_new, sampling)

    t1 = plain.phase_s.get("target", 0.0) / plain.steps if plain.steps else 0.0
    draft_s = sum(v["measured"].phase_s.get("draft", 0.0) for v in chain.values())
    draft_calls = sum(v["measured"].draft_calls for v in chain.values())
    td = draft_s / draft_calls if draft_calls else 0.0
    c_measured = td / t1 if t1 else 0.0
    cost = dict(
        target_s_per_plain_step=t1,
        draft_s_per_forward=td,
        target_s_per_verification={
            k: v["measured"].phase_s.get("target", 0.0) / v["measured"].steps for k, v in chain.items()
        },
        c_measured=c_measured,
        c=c_measured if cost_ratio is None else float(cost_ratio),
        given=cost_ratio is not None,
    )
    return Analysis(
        temperature=float(temperature),
        top_k=int(top_k),
        top_p=float(top_p),
        max_new_tokens=n_new,
        prompts=len(prompts),
        seeds=run_seeds,
        text_seeds=text_seeds,
        positions=int(all_beta.numel()),
        alpha=alpha,
        mean_tv=float(torch.cat([x.tv for x in pos]).mean()),
        mean_realized=float(torch.cat([x.realized for x in pos]).mean()),
        rank_acceptance=rank_acc,
        chain=chain,
        tree_choices=[list(c) for c in tree_choices] if tree_choices is not None else None,
        tree=tree_out,
        plain=plain,
        cost=cost,
        texts=pos,
    )


# ---------------------------------------------------------------------------
# The analyze command.
# ---------------------------------------------------------------------------


def add_analyze_args(p) -> None:
    from .demo import ASSETS, DTYPES

    p.description = (
        "The theory of speculative decoding, checked against the loop: measure the total-variation "
        "distance TV(p_t, q_t) between the target's and the draft's next-token distributions (after "
        "the same temperature/top-k/top-p transform) at every position of the target's own "
        "continuations of held-out prompts, predict the per-token acceptance alpha = E[1 - TV], the "
        "tokens per target call tau(K) of chains (i.i.d. geometric and positional) and of a static "
        "tree, and the speedup for a cost ratio; then run the loop (fixed-K chains, the tree) and "
        "print predicted against measured, with a plot."
    )
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    p.add_argument(
        "--target", default=str(ASSETS / "target"), metavar="DIR", help="target model directory (HF format)"
    )
    p.add_argument(
        "--draft", default=str(ASSETS / "draft"), metavar="DIR", help="draft model directory (same tokenizer)"
    )
    p.add_argument(
        "--prompts-file",
        default=str(ASSETS / "prompts.json"),
        metavar="JSON",
        help="a JSON list of held-out prompt strings",
    )
    p.add_argument("--prompts", type=int, default=6, help="how many prompts of the file to use")
    p.add_argument("--max-new-tokens", type=int, default=96, help="new tokens per prompt and run")
    p.add_argument(
        "--temperature", type=float, default=1.0, help="temperature of the TVs and the runs; 0 = greedy"
    )
    p.add_argument("--top-k", type=int, default=0, help="top-k of the transform; 0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="top-p of the transform; 1 = off")
    p.add_argument("--k-max", type=int, default=8, help="chains of K = 1..k-max are predicted and run")
    p.add_argument(
        "--tree",
        default="default",
        metavar="JSON",
        help='static tree as a JSON choice list, e.g. "[[0],[1],[0,0]]"; "default": the 16-node '
        'default tree; "none": skip the tree',
    )
    p.add_argument(
        "--cost-ratio",
        type=float,
        default=None,
        help="draft forward / target forward cost c for the speedup; default: measured from the "
        "timed forwards of the runs",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=2,
        help="sampled continuations per prompt for the theory, and seeds per prompt for each run "
        "(1 at temperature 0)",
    )
    p.add_argument("--seed", type=int, default=0, help="base seed of the continuations and runs")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op CPU threads (1 keeps the timings steady on a shared machine; "
        "0: torch's default)",
    )
    p.add_argument("--out", default="results/analyze", help="results folder (table, JSON and plot)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (a GPU when there is one)")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", *DTYPES],
        help="weights and KV cache dtype; auto: float32 on the CPU, bfloat16 on a GPU",
    )


def run_analyze(args) -> int:
    import os
    import platform

    from .demo import CLIError, _device, _dtype, check_tokenizers, load_checkpoint
    from .models import UnsupportedModelError, as_model

    if args.max_new_tokens < 1:
        raise CLIError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.prompts < 1:
        raise CLIError(f"--prompts must be >= 1, got {args.prompts}")
    if args.k_max < 1:
        raise CLIError(f"--k-max must be >= 1, got {args.k_max}")
    if args.samples < 1:
        raise CLIError(f"--samples must be >= 1, got {args.samples}")
    if not args.temperature >= 0 or math.isinf(args.temperature):
        raise CLIError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if args.top_k < 0:
        raise CLIError(f"--top-k must be >= 0, got {args.top_k}")
    if not 0 < args.top_p <= 1:
        raise CLIError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.cost_ratio is not None and not (0 <= args.cost_ratio < math.inf):
        raise CLIError(f"--cost-ratio must be a finite number >= 0, got {args.cost_ratio}")
    if args.threads < 0:
        raise CLIError(f"--threads must be >= 0, got {args.threads}")
    choices = None
    if args.tree == "default":
        choices = DEFAULT_TREE
    elif args.tree != "none":
        try:
            choices = json.loads(args.tree)
        except json.JSONDecodeError as exc:
            raise CLIError(f"--tree: not a JSON choice list ({exc.msg})") from None
        try:
            static_tree(choices)
        except (ValueError, TypeError) as exc:
            raise CLIError(f"--tree: {exc}") from None
    prompts_file = Path(args.prompts_file)
    if not prompts_file.is_file():
        raise CLIError(f"--prompts-file {prompts_file}: no such file")
    try:
        texts = json.loads(prompts_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CLIError(f"--prompts-file {prompts_file}: not JSON ({exc})") from None
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise CLIError(f"--prompts-file {prompts_file}: must be a non-empty JSON list of non-empty strings")
    device = _device(args.device)
    dtype = _dtype(args.dtype, device)
    if args.threads:
        torch.set_num_threads(args.threads)
    target, tok = load_checkpoint(args.target, "target", device, dtype)
    draft, tok_d = load_checkpoint(args.draft, "draft", device, dtype)
    check_tokenizers(tok, tok_d)
    try:
        target_m = as_model(target, role="target")
        draft_m = as_model(draft, role="draft model")
    except UnsupportedModelError as exc:
        raise CLIError(f"{exc}; this architecture is not supported") from None
    if choices is not None and static_tree(choices).max_rank() > target_m.vocab_size:
        raise CLIError(f"--tree asks for ranks beyond the vocabulary ({target_m.vocab_size} tokens)")
    prompts = [tok(t, return_tensors="pt").input_ids[0] for t in texts[: args.prompts]]
    if any(p.numel() == 0 for p in prompts):
        raise CLIError(f"--prompts-file {prompts_file}: a prompt encodes to no tokens")

    from tqdm import tqdm

    ks = list(range(1, args.k_max + 1))
    stages = 2 + len(ks) + (choices is not None)
    t_start = time.perf_counter()
    with tqdm(total=stages, desc="analyze", unit="stage", file=sys.stderr) as bar:
        seen = []

        def progress(stage: str) -> None:
            if seen:
                bar.update(1)
            seen.append(stage)
            bar.set_postfix_str(stage)

        try:
            result = analyze(
                target_m,
                draft_m,
                prompts,
                temperature=args.temperature,
                top_k=args.top_k,
                top_p=args.top_p,
                ks=ks,
                tree_choices=choices,
                max_new_tokens=args.max_new_tokens,
                samples=args.samples,
                seed=args.seed,
                cost_ratio=args.cost_ratio,
                progress=progress,
            )
        except (TypeError, ValueError) as exc:
            raise CLIError(str(exc)) from None
        bar.update(1)
    machine = (
        f"{platform.machine()} {os.cpu_count()} CPU threads, torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads, device {device}, {str(dtype).replace('torch.', '')}"
    )
    runs = 1 if args.temperature == 0 else args.samples
    result.header = (
        f"analyze: target {args.target}, draft {args.draft}; "
        f"{'greedy (T=0)' if args.temperature == 0 else f'T={args.temperature:g}'}, top-k {args.top_k}, "
        f"top-p {args.top_p:g}; {len(prompts)} prompts x {args.max_new_tokens} new tokens x {runs} "
        f"seed(s), batch 1; {machine}; {time.perf_counter() - t_start:.0f} s"
    )
    table = result.table()
    print(table)
    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "analyze.txt").write_text(table + "\n")
    (out_dir / "analyze.json").write_text(json.dumps(result.as_dict(), indent=1))
    try:
        plot(out_dir / "analyze.png", result)
        written = "analyze.txt, analyze.json, analyze.png"
    except ImportError:
        written = "analyze.txt, analyze.json; no plot: matplotlib is not installed"
    print(f"\nresults: {out_dir} ({written})")
    return 0


def plot(path: Path, result: Analysis) -> None:
    """Three panels: tau against K (measured, i.i.d., positional; the tree at its
    depth), acceptance by draft position for the longest chain and the tree, and the
    speedup against K (predicted with c, with the measured forward costs, measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = list(result.chain)
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4.2))
    a1.plot(ks, [result.chain[k]["measured"].tau for k in ks], "ko", label="measured (loop)")
    a1.plot(ks, [result.chain[k]["iid"].tau for k in ks], "-", label="i.i.d. (1-a^(K+1))/(1-a)")
    a1.plot(ks, [result.chain[k]["positional_tv"].tau for k in ks], ":", label="positional, 1-TV")
    a1.plot(ks, [result.chain[k]["positional"].tau for k in ks], "--", label="positional, exact")
    if result.tree is not None:
        d = len(result.tree["positional"].acceptance_by_position)
        a1.plot([d], [result.tree["measured"].tau], "k*", ms=11, label="tree measured")
        a1.plot([d], [result.tree["iid"].tau], "c^", label="tree i.i.d. (rank profile)")
        a1.plot([d], [result.tree["positional"].tau], "mv", label="tree positional")
    a1.set_xlabel("draft length K (tree: depth)")
    a1.set_ylabel("tokens per target call (tau)")
    a1.set_title(f"tau, T={result.temperature:g}")
    a1.legend(fontsize=7)
    k = ks[-1]
    j = range(1, k + 1)
    a2.plot(j, result.chain[k]["measured"].acceptance_by_position, "ko", label=f"chain K={k} measured")
    a2.plot(j, result.chain[k]["iid"].acceptance_by_position, "-", label="i.i.d. a^j")
    a2.plot(j, result.chain[k]["positional"].acceptance_by_position, "--", label="positional")
    if result.tree is not None:
        d = range(1, len(result.tree["measured"].acceptance_by_position) + 1)
        a2.plot(d, result.tree["measured"].acceptance_by_position, "k*", label="tree measured")
        a2.plot(d, result.tree["iid"].acceptance_by_position, "c^-", lw=0.8, label="tree i.i.d.")
        a2.plot(d, result.tree["positional"].acceptance_by_position, "mv--", lw=0.8, label="tree positional")
    a2.set_xlabel("draft position j (depth)")
    a2.set_ylabel("P(accepted path reaches j)")
    a2.set_ylim(0, 1.02)
    a2.set_title("acceptance by position")
    a2.legend(fontsize=7)
    sp = result.speedups()
    a3.plot(ks, [sp[k]["iid"] for k in ks], "-", label=f"i.i.d. tau/(Kc+1), c={result.cost['c']:.2f}")
    a3.plot(ks, [sp[k]["positional"] for k in ks], "--", label="positional tau/(Kc+1)")
    a3.plot(ks, [sp[k]["measured_costs"] for k in ks], "-.", label="positional, measured forward costs")
    a3.plot(ks, [sp[k]["measured"] for k in ks], "ko", label="measured (wall clock)")
    a3.axhline(1.0, color="gray", lw=0.8, ls="--")
    a3.set_xlabel("draft length K (chain, fixed)")
    a3.set_ylabel("speedup over plain decoding")
    a3.set_title("speedup")
    a3.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
