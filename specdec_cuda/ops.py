"""Typed wrappers around ``torch.ops.specdec.*``, and their fake kernels.

Every function here is keyword-callable with the argument names of the op's
schema and calls the dispatcher, so CPU and CUDA tensors reach their own
kernels.  The exact semantics of every op are in the repository's docs/ops.md.
Errors name the op (``specdec::<op>``) and the argument.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _validate

__all__ = [
    "kv_compact_",
    "kv_compact_paged_",
    "build_tree",
    "tree_attention",
    "tree_attention_paged",
    "sampling_probs",
    "sampling_probs_ragged",
    "verify_greedy",
    "rejection_sample",
    "typical_accept",
    "verify_greedy_ragged",
    "rejection_sample_ragged",
    "typical_accept_ragged",
]

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
# Trees.
# ---------------------------------------------------------------------------


def build_tree(parents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed ancestor masks and depths of a batch of draft trees.

    Args:
        parents: int32 ``[B, N]``, ``parents[b, 0] = -1`` (node 0 is the root) and
            ``0 <= parents[b, i] < i``.

    Returns:
        ``mask``: int32 ``[B, N, W]`` with ``W = ceil(N / 32)``: bit ``j % 32`` (least
        significant first) of word ``j // 32`` of row i is set iff node j is i
        itself or an ancestor of i — the tree part of the attention mask.
        ``depth``: int32 ``[B, N]``, the root at 0 (the RoPE position offset).

    Raises ``ValueError`` naming ``specdec::build_tree`` and the entry for a broken
    parent array (e.g. ``parents[0, 3] = 5 is outside [0, 3)``).
    """
    return torch.ops.specdec.build_tree(_validate.tensor("specdec::build_tree", "parents", parents))


def tree_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_lens: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
    *,
    window: int = 0,
    softcap: float = 0.0,
    sinks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of a tree of draft tokens over the prefix KV cache and its own ancestors.

    Args:
        q: ``[B, N, Hq, D]`` float32/float16/bfloat16, contiguous: the tree's queries.
        k_cache: ``[B, Hkv, S, D]``, q's dtype, contiguous; ``Hq`` a multiple of ``Hkv``
            (GQA/MQA: K/V are never repeated in memory).
        v_cache: ``[B, Hkv, S, Dv]``, as ``k_cache`` except the value head size ``Dv``
            (``1 <= Dv <= 256``), which may differ from ``D``.  The tree's own K/V is
            already written at slots ``cache_lens[b] .. cache_lens[b] + N - 1``.
        cache_lens: int32 ``[B]``, the committed prefix length; ``cache_lens[b] + N <= S``.
        mask: int32 ``[B, N, ceil(N/32)]`` packed ancestor mask (:func:`build_tree`):
            query i sees tree slot j iff bit j of ``mask[b, i]`` is set.
        scale: the softmax scale (typically ``D ** -0.5``); finite, ``|scale|`` within
            the float32 range.
        window: sliding window (keyword only; 0 disables it).  Prefix slot s has position
            s, tree node j position ``cache_lens[b] + depth_j`` with ``depth_j =
            popcount(mask[b, j]) - 1``; query i (position ``P_i``) sees a key at position
            p only if ``P_i - p < window`` (the last ``window`` positions, itself included,
            as Hugging Face's ``sliding_window``).
        softcap: logit soft-capping (keyword only; 0 disables it): the score
            ``s = scale * q . k`` becomes ``softcap * tanh(s / softcap)`` before the mask
            and the softmax (Gemma 2).  Finite, ``>= 0``.
        sinks: float32 ``[Hq]`` or None (keyword only): one finite logit per query head, in
            score units, that joins only the softmax denominator (GPT-OSS); never capped.

    Returns:
        ``out`` ``[B, N, Hq, Dv]`` in q's dtype (float32 accumulation) and ``lse`` float32
        ``[B, N, Hq]``, the natural log of the softmax denominator
        ``log(sum_j exp(s_j) [+ exp(sinks[h])])`` over the visible keys' (capped) scores,
        for merging with other attention kernels.  Query i sees the prefix slots
        ``[0, cache_lens[b])`` inside its window; a query that sees no key at all gets
        zeros and ``lse = -inf`` (``lse = sinks[h]`` with sinks).
    """
    op, t = "specdec::tree_attention", _validate.tensor
    return torch.ops.specdec.tree_attention(
        t(op, "q", q),
        t(op, "k_cache", k_cache),
        t(op, "v_cache", v_cache),
        t(op, "cache_lens", cache_lens),
        t(op, "mask", mask),
        _validate.number(op, "scale", scale),
        window=window,
        softcap=_validate.number(op, "softcap", softcap),
        sinks=_validate.optional_tensor(op, "sinks", sinks),
    )


def tree_attention_paged(
    q: torch.Tensor,
    k_pages: torch.Tensor,
    v_pages: torch.Tensor,
    block_tables: torch.Tensor,
    cache_lens: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
    *,
    window: int = 0,
    softcap: float = 0.0,
    sinks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`tree_attention` over a paged cache.

    ``k_pages``: ``[P, page_size, Hkv, D]``, ``v_pages``: ``[P, page_size, Hkv, Dv]``; slot
    s of sequence b lives in page ``block_tables[b, s // page_size]`` (int32
    ``[B, max_blocks]``) at offset ``s % page_size``.  The blocks holding slots
    ``[0, cache_lens[b] + N)`` must be valid pages; ``cache_lens[b] + N <= max_blocks *
    page_size``.  ``window``, ``softcap`` and ``sinks`` as in :func:`tree_attention`.
    """
    op, t = "specdec::tree_attention_paged", _validate.tensor
    return torch.ops.specdec.tree_attention_paged(
        t(op, "q", q),
        t(op, "k_pages", k_pages),
        t(op, "v_pages", v_pages),
        t(op, "block_tables", block_tables),
        t(op, "cache_lens", cache_lens),
        t(op, "mask", mask),
        _validate.number(op, "scale", scale),
        window=window,
        softcap=_validate.number(op, "softcap", softcap),
        sinks=_validate.optional_tensor(op, "sinks", sinks),
    )


# ---------------------------------------------------------------------------
# Acceptance sampling.
# ---------------------------------------------------------------------------

Verdict = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

_TREE_DOC = """
    Trees: ``tokens`` int64 ``[B, N]`` (node i's token; node 0 is the root, the
    last committed token) and ``parents`` int32 ``[B, N]`` with ``parents[b, 0] = -1``
    and ``0 <= parents[b, i] < i``; a chain of K drafts is ``[-1, 0, 1, ..., K-1]``.
    Children are tried in increasing index order.  Pad a batch of smaller trees
    with nodes nobody reaches (e.g. children of the last node with zero draft mass).

    Returns ``(accept_nodes, num_accepted, next_token)``: ``accept_nodes`` int32
    ``[B, N]``, the accepted path's node indices from the root (``accept_nodes[b, 0]
    = 0``), -1 padded (N columns, the deepest possible path, so that the shape is
    static for CUDA graphs and torch.compile); ``num_accepted`` int32 ``[B]``, the
    path length including the root; ``next_token`` int64 ``[B]``, the corrected or
    bonus token.  A step commits the path's K/V (see :func:`kv_compact_`) and emits
    ``num_accepted - 1`` drafts plus ``next_token``.
"""


def sampling_probs(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor | None = None,
) -> torch.Tensor:
    """The one transform both draft and target logits go through: temperature, top-k, min-p, top-p.

    Args:
        logits: ``[B, V]`` or ``[B, N, V]``, float32/float16/bfloat16, contiguous.
        temperature: float32 ``[B]``, ``>= 0``; 0 means greedy (one-hot at the first maximum).
        top_k: int32 ``[B]``; ``0`` (or ``>= V``) disables it.  Ties with the k-th
            largest logit are kept.
        top_p: float32 ``[B]`` in ``(0, 1]``; ``1`` disables it.  Keeps the most
            probable tokens whose mass first reaches ``top_p`` (ties kept).
        min_p: float32 ``[B]`` in ``[0, 1]``, or None (off); ``0`` disables it for a row.
            Keeps the tokens whose probability is at least ``min_p`` times the row's
            largest (after temperature: ``exp(z - max z) >= min_p``).

    Returns:
        float32 probabilities of the shape of ``logits``; row b's parameters apply
        to all N positions of ``[B, N, V]`` logits.  Computed in float64: z =
        logits / T; top-k and min-p keep upper sets of z; softmax over both;
        top-p on that distribution; renormalise.

    Raises (naming ``specdec::sampling_probs``) on bad shapes/dtypes/devices, a
    negative or NaN temperature, a negative top_k, top_p outside ``(0, 1]``, min_p
    outside ``[0, 1]``, a NaN or +inf logit, or a row whose logits are all -inf.
    """
    op = "specdec::sampling_probs"
    t = _validate.tensor
    return torch.ops.specdec.sampling_probs(
        t(op, "logits", logits),
        t(op, "temperature", temperature),
        t(op, "top_k", top_k),
        t(op, "top_p", top_p),
        min_p=_validate.optional_tensor(op, "min_p", min_p),
    )


def sampling_probs_ragged(
    logits: torch.Tensor,
    cu_nodes: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`sampling_probs` over a ragged batch: rows of different lengths end to end.

    Args:
        logits: ``[T, V]``, float32/float16/bfloat16, contiguous: row b's positions are
            the entries ``cu_nodes[b] .. cu_nodes[b + 1] - 1`` (never padded or copied).
        cu_nodes: int32 ``[B + 1]``: ``cu_nodes[0] = 0``, strictly increasing (every row
            has at least one position), ``cu_nodes[B] = T``.
        temperature, top_k, top_p, min_p: ``[B]`` each, as in :func:`sampling_probs`;
            row b's parameters apply to its slice.

    Returns float32 ``[T, V]``: entry t equals :func:`sampling_probs` of that row alone.
    Raises as :func:`sampling_probs`, naming ``specdec::sampling_probs_ragged``, and on a
    bad ``cu_nodes`` (naming the entry).
    """
    op = "specdec::sampling_probs_ragged"
    t = _validate.tensor
    return torch.ops.specdec.sampling_probs_ragged(
        t(op, "logits", logits),
        t(op, "cu_nodes", cu_nodes),
        t(op, "temperature", temperature),
        t(op, "top_k", top_k),
        t(op, "top_p", top_p),
        min_p=_validate.optional_tensor(op, "min_p", min_p),
    )


def verify_greedy(tokens: torch.Tensor, parents: torch.Tensor, target_argmax: torch.Tensor) -> Verdict:
    """Greedy verification: follow children whose token is the target's argmax.

    ``target_argmax`` int64 ``[B, N]``: the target model's argmax after each node.
    From the root, accept the first child whose token equals
    ``target_argmax[b, node]``; stop when none does; ``next_token`` is the argmax
    after the last accepted node.
    """
    op = "specdec::verify_greedy"
    t = _validate.tensor
    return torch.ops.specdec.verify_greedy(
        t(op, "tokens", tokens), t(op, "parents", parents), t(op, "target_argmax", target_argmax)
    )


METHODS = ("tokenwise", "block", "traversal")
SIBLINGS = ("iid", "without_replacement")


def rejection_sample(
    tokens: torch.Tensor,
    parents: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    *,
    method: str = "tokenwise",
    siblings: str = "iid",
) -> Verdict:
    """Lossless verification: the emitted tokens follow the target distribution exactly.

    ``target_probs`` float32 ``[B, N, V]``: the target's next-token distribution after
    each node (rows taken as normalised, e.g. from :func:`sampling_probs`).
    ``draft_probs`` float32 ``[B, N, V]`` or ``None``: the (original) draft distribution
    node i's children were drawn from.  docs/ops.md states every rule exactly.

    ``method`` (keyword only):

    * ``"tokenwise"`` (default): walk from the root, test each child in index order.
      With ``siblings="iid"`` (children drawn independently): accept x with probability
      ``min(1, p(x)/q(x))``; on rejection ``p <- normalise(max(p - q, 0))`` and try the
      next sibling.  With ``siblings="without_replacement"`` (children drawn without
      replacement, in index order: RSD) the draft side follows the drafting: the next
      sibling's draft distribution is q without the earlier siblings' tokens,
      renormalised, and rejected tokens leave the residual.
    * ``"block"``: block verification of a chain (Sun et al. 2024): every draft gets a
      weight ``P_i = min(1, P_{i-1} p(x_i)/q(x_i))``; the accepted length is the deepest
      i whose test passes (stop probability ``rho_i / (1 - P_i + rho_i)``, ``P_K`` for
      the last), the correction comes from ``max(P_i p_i - q_i, 0)``.  Never accepts
      fewer tokens in expectation than tokenwise.  A tree that is not a chain raises
      ``ValueError`` (naming ``parents``).
    * ``"traversal"``: traversal verification of a tree (Weng et al. 2025): depth first,
      each node tested after its subtree was rejected, leaves first; on a chain it
      returns exactly what ``"block"`` returns from the same uniforms.  ``siblings``
      selects the draft-side update as for tokenwise.

    ``siblings`` (keyword only): ``"iid"`` or ``"without_replacement"``: how each node's
    children were drafted from its ``draft_probs`` row; a mismatch is not lossless.

    Without draft probabilities (deterministic drafts: top-k, n-gram) every method
    runs the deterministic rule: accept x with probability ``p(x)``; on rejection zero
    ``p(x)`` and renormalise (``siblings`` is then ignored; ``"block"`` still needs a
    chain).  Block's and traversal's rules for deterministic drafts give the very same
    distribution of outputs.  When all children are rejected the next token is drawn
    from the residual; at a leaf, from its target distribution (bonus).  A residual
    with no mass falls back to the node's target distribution.

    ``seed``, ``offset`` int64 ``[B]``: the row's Philox4x32-10 stream (uniform index c
    for node c's test, N for the final draw); advance ``offset`` every step (e.g. by
    N + 1) and give rows different seeds.  Same seed and offset give the same
    result on CPU and CUDA.

    Raises ``ValueError`` naming ``method`` or ``siblings`` for any other string.
    """
    op = "specdec::rejection_sample"
    t = _validate.tensor
    args = (
        t(op, "tokens", tokens),
        t(op, "parents", parents),
        _validate.optional_tensor(op, "draft_probs", draft_probs),
        t(op, "target_probs", target_probs),
        t(op, "seed", seed),
        t(op, "offset", offset),
    )
    _check_rule(op, method, siblings)
    return torch.ops.specdec.rejection_sample(*args, method=method, siblings=siblings)


def _check_rule(op: str, method, siblings) -> None:
    """rejection_sample's method and siblings, with the native kernels' messages."""
    for arg, value, allowed in (("method", method, METHODS), ("siblings", siblings, SIBLINGS)):
        if not isinstance(value, str):
            raise TypeError(f"{op}: {arg} must be a str, got {type(value).__name__}")
        if value not in allowed:
            names = ", ".join(f"'{a}'" for a in allowed[:-1]) + f" or '{allowed[-1]}'"
            raise ValueError(f"{op}: {arg} must be {names}, got '{value}'")


def typical_accept(
    tokens: torch.Tensor,
    parents: torch.Tensor,
    target_probs: torch.Tensor,
    posterior_threshold: float,
    posterior_alpha: float,
    seed: torch.Tensor,
    offset: torch.Tensor,
) -> Verdict:
    """Medusa's typical acceptance (lossy by design).

    Child c of an accepted node u is accepted iff ``p_u(tokens[c]) >
    min(posterior_threshold, posterior_alpha * exp(-H(p_u)))`` (H: entropy in nats).
    The path ends at the deepest node whose whole path is accepted (lowest index
    among equals); ``next_token`` is drawn from its target distribution (uniform
    index N of the row's stream).
    """
    op = "specdec::typical_accept"
    t = _validate.tensor
    return torch.ops.specdec.typical_accept(
        t(op, "tokens", tokens),
        t(op, "parents", parents),
        t(op, "target_probs", target_probs),
        _validate.number(op, "posterior_threshold", posterior_threshold),
        _validate.number(op, "posterior_alpha", posterior_alpha),
        t(op, "seed", seed),
        t(op, "offset", offset),
    )


for _f in (verify_greedy, rejection_sample, typical_accept):
    if _f.__doc__ is not None:  # None under python -OO
        _f.__doc__ += _TREE_DOC

_RAGGED_DOC = """
    Ragged trees: B rows of different sizes stored end to end.  ``tokens`` int64
    ``[T]`` and ``parents`` int32 ``[T]``; row b's nodes are the entries
    ``cu_nodes[b] .. cu_nodes[b + 1] - 1`` (``cu_nodes`` int32 ``[B + 1]``, ``cu_nodes[0]
    = 0``, strictly increasing, ``cu_nodes[B] = T``), its parents local to the row (-1
    for its root, node i's parent in ``[0, i)``).  Probabilities are ``[T, V]`` (one
    row per node, never padded), ``seed``/``offset`` ``[B]``.  Row b with ``N_b`` nodes
    draws uniform c for its local node c and ``N_b`` for the final draw, so row b's
    verdict equals the padded op's on that row alone.

    Returns ``(accept_nodes, num_accepted, next_token)``: ``accept_nodes`` int32 ``[T]``,
    row b's accepted path as node indices local to the row, in its own slice
    (``accept_nodes[cu_nodes[b]] = 0``), -1 padded; ``num_accepted`` int32 ``[B]``;
    ``next_token`` int64 ``[B]``.
"""


def verify_greedy_ragged(
    tokens: torch.Tensor, parents: torch.Tensor, cu_nodes: torch.Tensor, target_argmax: torch.Tensor
) -> Verdict:
    """:func:`verify_greedy` over a ragged batch; ``target_argmax`` int64 ``[T]``."""
    op = "specdec::verify_greedy_ragged"
    t = _validate.tensor
    return torch.ops.specdec.verify_greedy_ragged(
        t(op, "tokens", tokens),
        t(op, "parents", parents),
        t(op, "cu_nodes", cu_nodes),
        t(op, "target_argmax", target_argmax),
    )


def rejection_sample_ragged(
    tokens: torch.Tensor,
    parents: torch.Tensor,
    cu_nodes: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
) -> Verdict:
    """:func:`rejection_sample` over a ragged batch; ``draft_probs`` (or None) and
    ``target_probs`` float32 ``[T, V]``."""
    op = "specdec::rejection_sample_ragged"
    t = _validate.tensor
    return torch.ops.specdec.rejection_sample_ragged(
        t(op, "tokens", tokens),
        t(op, "parents", parents),
        t(op, "cu_nodes", cu_nodes),
        _validate.optional_tensor(op, "draft_probs", draft_probs),
        t(op, "target_probs", target_probs),
        t(op, "seed", seed),
        t(op, "offset", offset),
    )


def typical_accept_ragged(
    tokens: torch.Tensor,
    parents: torch.Tensor,
    cu_nodes: torch.Tensor,
    target_probs: torch.Tensor,
    posterior_threshold: float,
    posterior_alpha: float,
    seed: torch.Tensor,
    offset: torch.Tensor,
) -> Verdict:
    """:func:`typical_accept` over a ragged batch; ``target_probs`` float32 ``[T, V]``."""
    op = "specdec::typical_accept_ragged"
    t = _validate.tensor
    return torch.ops.specdec.typical_accept_ragged(
        t(op, "tokens", tokens),
        t(op, "parents", parents),
        t(op, "cu_nodes", cu_nodes),
        t(op, "target_probs", target_probs),
        _validate.number(op, "posterior_threshold", posterior_threshold),
        _validate.number(op, "posterior_alpha", posterior_alpha),
        t(op, "seed", seed),
        t(op, "offset", offset),
    )


for _f in (verify_greedy_ragged, rejection_sample_ragged, typical_accept_ragged):
    if _f.__doc__ is not None:
        _f.__doc__ += _RAGGED_DOC

# ---------------------------------------------------------------------------
# Fake kernels (for torch.compile / FakeTensor tracing and meta tensors).  Each
# runs the checks of its real kernel that need no data (ranks, matching sizes,
# dtypes, one device) with the same messages, then allocates the outputs; the
# value checks run in the real kernels when the compiled graph executes.
# ---------------------------------------------------------------------------

_v = _validate
_I32, _I64, _F32 = torch.int32, torch.int64, torch.float32


def _check_index_args(op, cache_lens, accept_nodes, num_accepted):
    device = cache_lens.device
    _v.check_tensors(
        op,
        device,
        [
            ("cache_lens", cache_lens, 1, "[B]", _I32),
            ("accept_nodes", accept_nodes, 2, "[B, max_depth + 1]", _I32),
            ("num_accepted", num_accepted, 1, "[B]", _I32),
        ],
    )
    batch = cache_lens.shape[0]
    _v.check_size(op, "accept_nodes", accept_nodes, 0, batch, "B (cache_lens.size(0))")
    _v.check_size(op, "num_accepted", num_accepted, 0, batch, "B (cache_lens.size(0))")
    return device, batch


def _check_cache_list(op, arg, tensors, like, device):
    for i, t in enumerate(tensors):
        name = f"{arg}[{i}]"
        _v.check_dtype(op, name, t, _v.FLOATS)
        if t.dtype != like.dtype:
            raise TypeError(
                f"{op}: {name} must have the dtype of the first cache tensor ({_v._dtype_name(like.dtype)}), "
                f"got {_v._dtype_name(t.dtype)}"
            )
        if tuple(t.shape) != tuple(like.shape):
            raise ValueError(
                f"{op}: {name} must have the shape of the first cache tensor {_v._shape(like)}, "
                f"got {_v._shape(t)}"
            )
        _v.check_device(op, name, t, device)


@torch.library.register_fake("specdec::kv_compact_")
def _kv_compact_fake(caches, cache_lens, accept_nodes, num_accepted) -> None:
    op = "specdec::kv_compact_"
    device, batch = _check_index_args(op, cache_lens, accept_nodes, num_accepted)
    if caches:
        _v.check_dim(op, "caches[0]", caches[0], 4, "[B, H, S, D]")
        _v.check_size(op, "caches[0]", caches[0], 0, batch, "B (cache_lens.size(0))")
        _check_cache_list(op, "caches", caches, caches[0], device)
    return None


@torch.library.register_fake("specdec::kv_compact_paged_")
def _kv_compact_paged_fake(k_pages, v_pages, block_tables, cache_lens, accept_nodes, num_accepted) -> None:
    op = "specdec::kv_compact_paged_"
    device, batch = _check_index_args(op, cache_lens, accept_nodes, num_accepted)
    _v.check_tensors(op, device, [("block_tables", block_tables, 2, "[B, max_blocks]", _I32)])
    _v.check_size(op, "block_tables", block_tables, 0, batch, "B (cache_lens.size(0))")
    if len(k_pages) != len(v_pages):
        raise ValueError(
            f"{op}: v_pages must hold as many tensors as k_pages ({len(k_pages)}), got {len(v_pages)}"
        )
    if k_pages:
        _v.check_dim(op, "k_pages[0]", k_pages[0], 4, "[num_pages, page_size, H, D]")
        _check_cache_list(op, "k_pages", k_pages, k_pages[0], device)
        _check_cache_list(op, "v_pages", v_pages, k_pages[0], device)
    return None


@torch.library.register_fake("specdec::build_tree")
def _build_tree_fake(parents):
    op = "specdec::build_tree"
    _v.check_dim(op, "parents", parents, 2, "[B, N]")
    if parents.shape[1] < 1:
        raise ValueError(f"{op}: parents must hold at least the root node (N >= 1)")
    _v.check_dtype(op, "parents", parents, _I32)
    batch, nodes = parents.shape
    words = (nodes + 31) // 32
    return (
        parents.new_empty((batch, nodes, words), dtype=torch.int32),
        parents.new_empty((batch, nodes), dtype=torch.int32),
    )


def _tree_attention_outputs(q, v):
    """out [B, N, Hq, Dv] (Dv: v's last dim) in q's dtype, lse float32 [B, N, Hq]."""
    return q.new_empty((*q.shape[:3], v.shape[-1])), q.new_empty(q.shape[:3], dtype=torch.float32)


def _check_attention(op, q, k, v, block_tables, cache_lens, mask, sinks):
    paged = block_tables is not None
    kname, vname = ("k_pages", "v_pages") if paged else ("k_cache", "v_cache")
    _v.check_dim(op, "q", q, 4, "[B, N, Hq, D]")
    _v.check_dtype(op, "q", q, _v.FLOATS)
    device, batch, nodes = q.device, q.shape[0], q.shape[1]
    _v.check_dim(op, kname, k, 4, "[P, page_size, Hkv, D]" if paged else "[B, Hkv, S, D]")
    _v.check_dim(op, vname, v, 4, "[P, page_size, Hkv, Dv]" if paged else "[B, Hkv, S, Dv]")
    for name, t in ((kname, k), (vname, v)):
        if t.dtype != q.dtype:
            raise TypeError(
                f"{op}: {name} must have the dtype of q ({_v._dtype_name(q.dtype)}), got "
                f"{_v._dtype_name(t.dtype)}"
            )
        _v.check_device(op, name, t, device)
    specs = [
        ("cache_lens", cache_lens, 1, "[B]", _I32),
        ("mask", mask, 3, "[B, N, ceil(N / 32)] (build_tree's mask)", _I32),
    ]
    if paged:
        specs.append(("block_tables", block_tables, 2, "[B, max_blocks]", _I32))
    if sinks is not None:
        specs.append(("sinks", sinks, 1, "[Hq]", _F32))
    _v.check_tensors(op, device, specs)
    _v.check_size(op, "cache_lens", cache_lens, 0, batch, "B (q.size(0))")
    if not paged:
        _v.check_size(op, kname, k, 0, batch, "B (q.size(0))")
    words = (nodes + 31) // 32
    if tuple(mask.shape) != (batch, nodes, words):
        raise ValueError(
            f"{op}: mask must have shape [{batch}, {nodes}, {words}] for N = {nodes}, got {_v._shape(mask)}"
        )


@torch.library.register_fake("specdec::tree_attention")
def _tree_attention_fake(q, k_cache, v_cache, cache_lens, mask, scale, *, window=0, softcap=0.0, sinks=None):
    _check_attention("specdec::tree_attention", q, k_cache, v_cache, None, cache_lens, mask, sinks)
    return _tree_attention_outputs(q, v_cache)


@torch.library.register_fake("specdec::tree_attention_paged")
def _tree_attention_paged_fake(
    q, k_pages, v_pages, block_tables, cache_lens, mask, scale, *, window=0, softcap=0.0, sinks=None
):
    _check_attention(
        "specdec::tree_attention_paged", q, k_pages, v_pages, block_tables, cache_lens, mask, sinks
    )
    return _tree_attention_outputs(q, v_pages)


def _check_sampling_params(op, device, batch, what, temperature, top_k, top_p, min_p):
    for name, t, dtype in (
        ("temperature", temperature, _F32),
        ("top_k", top_k, _I32),
        ("top_p", top_p, _F32),
        ("min_p", min_p, _F32),
    ):
        if t is None:
            continue
        _v.check_tensors(op, device, [(name, t, 1, "[B]", dtype)])
        _v.check_size(op, name, t, 0, batch, what)


@torch.library.register_fake("specdec::sampling_probs")
def _sampling_probs_fake(logits, temperature, top_k, top_p, min_p=None):
    op = "specdec::sampling_probs"
    if logits.dim() not in (2, 3):
        raise ValueError(
            f"{op}: logits must be a 2-D [B, V] or 3-D [B, N, V] tensor, got shape {_v._shape(logits)}"
        )
    _v.check_dtype(op, "logits", logits, _v.FLOATS)
    batch = logits.shape[0]
    _check_sampling_params(op, logits.device, batch, "B (logits.size(0))", temperature, top_k, top_p, min_p)
    return torch.empty(logits.shape, dtype=torch.float32, device=logits.device)


def _check_cu_nodes(op, cu_nodes, total, total_name, device):
    """check_cu_nodes_arg of csrc/ops/tree.cpp: returns B."""
    _v.check_dim(op, "cu_nodes", cu_nodes, 1, "[B + 1]")
    if cu_nodes.shape[0] < 1:
        raise ValueError(f"{op}: cu_nodes must hold B + 1 >= 1 offsets (cu_nodes[0] = 0), got shape [0]")
    _v.check_dtype(op, "cu_nodes", cu_nodes, _I32)
    _v.check_device(op, "cu_nodes", cu_nodes, device)
    batch = cu_nodes.shape[0] - 1
    if batch == 0 and total != 0:
        raise ValueError(
            f"{op}: cu_nodes has shape [1] (B = 0 rows), so {total_name} must hold T = 0 entries, "
            f"got T = {total}"
        )
    if total < batch:
        raise ValueError(
            f"{op}: cu_nodes describes B = {batch} rows but {total_name} holds T = {total} entries: "
            "every row needs at least one (T >= B)"
        )
    if total > 2**31 - 1:
        raise ValueError(
            f"{op}: {total_name} holds T = {total} entries: int32 offsets allow at most 2^31 - 1"
        )
    return batch


@torch.library.register_fake("specdec::sampling_probs_ragged")
def _sampling_probs_ragged_fake(logits, cu_nodes, temperature, top_k, top_p, min_p=None):
    op = "specdec::sampling_probs_ragged"
    _v.check_dim(op, "logits", logits, 2, "[T, V]")
    _v.check_dtype(op, "logits", logits, _v.FLOATS)
    if logits.shape[1] < 1:
        raise ValueError(f"{op}: logits must have a vocabulary of at least 1")
    batch = _check_cu_nodes(op, cu_nodes, logits.shape[0], "logits", logits.device)
    _check_sampling_params(
        op, logits.device, batch, "B (cu_nodes.size(0) - 1)", temperature, top_k, top_p, min_p
    )
    return torch.empty(logits.shape, dtype=torch.float32, device=logits.device)


def _check_tree_args(op, tokens, parents):
    _v.check_dim(op, "tokens", tokens, 2, "[B, N]")
    _v.check_dim(op, "parents", parents, 2, "[B, N]")
    if tuple(parents.shape) != tuple(tokens.shape):
        raise ValueError(
            f"{op}: parents must have the shape of tokens {_v._shape(tokens)}, got {_v._shape(parents)}"
        )
    if tokens.shape[1] < 1:
        raise ValueError(f"{op}: tokens must hold at least the root node (N >= 1)")
    _v.check_dtype(op, "tokens", tokens, _I64)
    _v.check_dtype(op, "parents", parents, _I32)
    _v.check_device(op, "parents", parents, tokens.device)


def _check_probs(op, arg, probs, tokens, vocab=None):
    _v.check_tensors(op, tokens.device, [(arg, probs, 3, "[B, N, V]", _F32)])
    _v.check_size(op, arg, probs, 0, tokens.shape[0], "B (tokens.size(0))")
    _v.check_size(op, arg, probs, 1, tokens.shape[1], "N (tokens.size(1))")
    if vocab is not None:
        _v.check_size(op, arg, probs, 2, vocab, "V (target_probs.size(2))")


def _check_seed_offset(op, seed, offset, tokens):
    for name, t in (("seed", seed), ("offset", offset)):
        _v.check_tensors(op, tokens.device, [(name, t, 1, "[B]", _I64)])
        _v.check_size(op, name, t, 0, tokens.shape[0], "B (tokens.size(0))")


def _verdict_fake(tokens):
    batch, nodes = tokens.shape
    return (
        tokens.new_empty((batch, nodes), dtype=torch.int32),
        tokens.new_empty((batch,), dtype=torch.int32),
        tokens.new_empty((batch,), dtype=torch.int64),
    )


@torch.library.register_fake("specdec::verify_greedy")
def _verify_greedy_fake(tokens, parents, target_argmax):
    op = "specdec::verify_greedy"
    _check_tree_args(op, tokens, parents)
    if tuple(target_argmax.shape) != tuple(tokens.shape):
        raise ValueError(
            f"{op}: target_argmax must have the shape of tokens {_v._shape(tokens)}, got "
            f"{_v._shape(target_argmax)}"
        )
    _v.check_dtype(op, "target_argmax", target_argmax, _I64)
    _v.check_device(op, "target_argmax", target_argmax, tokens.device)
    return _verdict_fake(tokens)


@torch.library.register_fake("specdec::rejection_sample")
def _rejection_sample_fake(
    tokens, parents, draft_probs, target_probs, seed, offset, *, method="tokenwise", siblings="iid"
):
    op = "specdec::rejection_sample"
    _check_rule(op, method, siblings)
    _check_tree_args(op, tokens, parents)
    _check_probs(op, "target_probs", target_probs, tokens)
    if draft_probs is not None:
        _check_probs(op, "draft_probs", draft_probs, tokens, target_probs.shape[2])
    _check_seed_offset(op, seed, offset, tokens)
    return _verdict_fake(tokens)


@torch.library.register_fake("specdec::typical_accept")
def _typical_accept_fake(tokens, parents, target_probs, posterior_threshold, posterior_alpha, seed, offset):
    op = "specdec::typical_accept"
    _check_tree_args(op, tokens, parents)
    _check_probs(op, "target_probs", target_probs, tokens)
    _check_seed_offset(op, seed, offset, tokens)
    return _verdict_fake(tokens)


# Ragged verifiers.


def _check_ragged_tree_args(op, tokens, parents, cu_nodes):
    _v.check_dim(op, "tokens", tokens, 1, "[T]")
    _v.check_dim(op, "parents", parents, 1, "[T]")
    if tuple(parents.shape) != tuple(tokens.shape):
        raise ValueError(
            f"{op}: parents must have the shape of tokens {_v._shape(tokens)}, got {_v._shape(parents)}"
        )
    _v.check_dtype(op, "tokens", tokens, _I64)
    _v.check_dtype(op, "parents", parents, _I32)
    _v.check_device(op, "parents", parents, tokens.device)
    return _check_cu_nodes(op, cu_nodes, tokens.shape[0], "tokens", tokens.device)


def _check_ragged_probs(op, arg, probs, tokens, vocab=None):
    _v.check_tensors(op, tokens.device, [(arg, probs, 2, "[T, V]", _F32)])
    _v.check_size(op, arg, probs, 0, tokens.shape[0], "T (tokens.size(0))")
    if vocab is None:
        if probs.shape[1] < 1:
            raise ValueError(f"{op}: {arg} must have a vocabulary of at least 1")
    else:
        _v.check_size(op, arg, probs, 1, vocab, "V (target_probs.size(1))")


def _check_ragged_seed_offset(op, seed, offset, tokens, batch):
    for name, t in (("seed", seed), ("offset", offset)):
        _v.check_tensors(op, tokens.device, [(name, t, 1, "[B]", _I64)])
        _v.check_size(op, name, t, 0, batch, "B (cu_nodes.size(0) - 1)")


def _ragged_verdict_fake(tokens, batch):
    return (
        tokens.new_empty((tokens.shape[0],), dtype=torch.int32),
        tokens.new_empty((batch,), dtype=torch.int32),
        tokens.new_empty((batch,), dtype=torch.int64),
    )


@torch.library.register_fake("specdec::verify_greedy_ragged")
def _verify_greedy_ragged_fake(tokens, parents, cu_nodes, target_argmax):
    op = "specdec::verify_greedy_ragged"
    batch = _check_ragged_tree_args(op, tokens, parents, cu_nodes)
    if tuple(target_argmax.shape) != tuple(tokens.shape):
        raise ValueError(
            f"{op}: target_argmax must have the shape of tokens {_v._shape(tokens)}, got "
            f"{_v._shape(target_argmax)}"
        )
    _v.check_dtype(op, "target_argmax", target_argmax, _I64)
    _v.check_device(op, "target_argmax", target_argmax, tokens.device)
    return _ragged_verdict_fake(tokens, batch)


@torch.library.register_fake("specdec::rejection_sample_ragged")
def _rejection_sample_ragged_fake(tokens, parents, cu_nodes, draft_probs, target_probs, seed, offset):
    op = "specdec::rejection_sample_ragged"
    batch = _check_ragged_tree_args(op, tokens, parents, cu_nodes)
    _check_ragged_probs(op, "target_probs", target_probs, tokens)
    if draft_probs is not None:
        _check_ragged_probs(op, "draft_probs", draft_probs, tokens, target_probs.shape[1])
    _check_ragged_seed_offset(op, seed, offset, tokens, batch)
    return _ragged_verdict_fake(tokens, batch)


@torch.library.register_fake("specdec::typical_accept_ragged")
def _typical_accept_ragged_fake(
    tokens, parents, cu_nodes, target_probs, posterior_threshold, posterior_alpha, seed, offset
):
    op = "specdec::typical_accept_ragged"
    batch = _check_ragged_tree_args(op, tokens, parents, cu_nodes)
    _check_ragged_probs(op, "target_probs", target_probs, tokens)
    _check_ragged_seed_offset(op, seed, offset, tokens, batch)
    return _ragged_verdict_fake(tokens, batch)
