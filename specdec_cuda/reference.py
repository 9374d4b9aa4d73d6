"""Pure-PyTorch reference implementations: the test oracles and benchmark baselines.

Written the way engines write these steps in vectorised torch (one gather and
one scatter per cache tensor), not as Python loops over tokens, so that the
benchmarks compare against a fair baseline.  They do not validate their inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "kv_compact_",
    "kv_compact_paged_",
    "build_tree",
    "tree_attention",
    "tree_attention_paged",
    "unpack_tree_mask",
    "verify_greedy",
    "rejection_sample",
    "verify_row",
    "PhiloxUniforms",
    "typical_accept",
    "sampling_probs",
    "sampling_probs_ragged",
    "verify_greedy_ragged",
    "rejection_sample_ragged",
    "typical_accept_ragged",
    "verify_greedy_chain",
    "rejection_sample_chain",
    "sampling_probs_vectorized",
]


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


def build_tree(parents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for :func:`specdec_cuda.ops.build_tree`: ancestor masks by walking parents."""
    batch, nodes = parents.shape
    words = (nodes + 31) // 32
    pars = parents.tolist()
    mask = torch.zeros(batch, nodes, words, dtype=torch.int64)
    depth = torch.zeros(batch, nodes, dtype=torch.int32)
    for b in range(batch):
        for i in range(nodes):
            node, d = i, -1
            while node >= 0:
                mask[b, i, node // 32] |= 1 << (node % 32)
                node, d = pars[b][node], d + 1
            depth[b, i] = d
    # Reinterpret each 32-bit word as int32 (bit 31 set means negative).
    mask = torch.where(mask >= 2**31, mask - 2**32, mask).to(torch.int32)
    return mask.to(parents.device), depth.to(parents.device)


def unpack_tree_mask(mask: torch.Tensor, nodes: int) -> torch.Tensor:
    """Packed int32 ``[B, N, W]`` tree mask -> bool ``[B, N, N]`` (row i, column j)."""
    bits = (mask.long()[..., None] >> torch.arange(32, device=mask.device)) & 1
    return bits.flatten(-2)[..., :nodes].bool()


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
):
    """Reference for :func:`specdec_cuda.ops.tree_attention`, in float64 with a dense mask.

    Query i of sequence b attends to the prefix slots ``[0, cache_lens[b])`` and to the
    tree slots ``cache_lens[b] + j`` whose bit j is set in ``mask[b, i]``; query head h
    uses KV head ``h // (Hq // Hkv)``.  ``window > 0``: prefix slot s has position s,
    tree node j position ``L + depth_j`` (``depth_j`` = the bits of mask row j below N,
    minus one), and query i at ``P_i = L + depth_i`` sees only keys with
    ``P_i - p < window``.  ``softcap > 0``: scores ``s = scale * q . k`` become
    ``softcap * tanh(s / softcap)``.  ``sinks`` ``[Hq]``: ``exp(sinks[h])`` joins the
    denominator.  A row with no visible key gets zeros and ``lse = -inf`` (or
    ``sinks[h]``).  Returns ``out`` ``[B, N, Hq, Dv]`` in q's dtype and ``lse`` float32
    ``[B, N, Hq]``.
    """
    batch, nodes, hq, _ = q.shape
    hkv, dv = k_cache.shape[1], v_cache.shape[-1]
    group = hq // hkv
    out = torch.zeros(batch, nodes, hq, dv, dtype=torch.float64)
    lse = torch.full((batch, nodes, hq), float("-inf"), dtype=torch.float64)
    tree = unpack_tree_mask(mask.cpu(), nodes)  # [B, N, N], bits past N dropped
    depth = tree.sum(-1) - 1  # [B, N]
    for b in range(batch):
        length = int(cache_lens[b])
        keys = k_cache[b, :, : length + nodes].double().cpu().repeat_interleave(group, 0)
        vals = v_cache[b, :, : length + nodes].double().cpu().repeat_interleave(group, 0)
        visible = torch.cat([torch.ones(nodes, length, dtype=torch.bool), tree[b]], dim=1)
        if window > 0:
            query_pos = length + depth[b]  # [N]
            key_pos = torch.cat([torch.arange(length), length + depth[b]])  # [L + N]
            visible &= (query_pos[:, None] - key_pos[None, :]) < window
        s = torch.einsum("nhd,hsd->nhs", q[b].double().cpu(), keys) * scale
        if softcap > 0:
            s = softcap * torch.tanh(s / softcap)
        s = s.masked_fill(~visible[:, None, :], float("-inf"))
        if sinks is not None:
            # The sink is one more logit of the denominator with no value row.
            sink = sinks.double().cpu()[None, :, None].expand(nodes, hq, 1)
            row_lse = torch.logsumexp(torch.cat([s, sink], dim=-1), dim=-1)
        else:
            row_lse = torch.logsumexp(s, dim=-1)  # [N, Hq]
        p = torch.exp(s - row_lse[..., None])
        p = torch.nan_to_num(p, nan=0.0)  # rows that see nothing (without sinks)
        out[b] = torch.einsum("nhs,hsd->nhd", p, vals)
        lse[b] = row_lse
    return out.to(device=q.device, dtype=q.dtype), lse.to(device=q.device, dtype=torch.float32)


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
):
    """Reference for :func:`specdec_cuda.ops.tree_attention_paged`: gather the slots the
    rows use (up to ``max(cache_lens) + N``, not the table's whole capacity), then attend."""
    page_size = k_pages.shape[1]
    nodes = q.shape[1]
    longest = int(cache_lens.max()) if cache_lens.numel() else 0
    slots = min(block_tables.shape[1] * page_size, longest + nodes)
    s = torch.arange(slots, device=block_tables.device)
    pages = block_tables.long()[:, s // page_size].clamp(min=0)  # [B, slots]
    k = k_pages[pages, s % page_size].permute(0, 2, 1, 3)  # [B, Hkv, slots, D]
    v = v_pages[pages, s % page_size].permute(0, 2, 1, 3)  # [B, Hkv, slots, Dv]
    return tree_attention(q, k, v, cache_lens, mask, scale, window=window, softcap=softcap, sinks=sinks)


# ---------------------------------------------------------------------------
# Acceptance sampling.  Semantics shared by the CPU and CUDA kernels:
#
# * Trees: parents[b, 0] = -1, parents[b, i] < i; the children of a node are
#   visited in increasing index order.
# * Uniforms come from Philox4x32-10 (specdec_cuda._philox), one stream per row
#   keyed by (seed[b], offset[b]): the acceptance test of node c uses index c,
#   the final draw (correction or bonus token) uses index N.
# * target_probs / draft_probs rows are taken as normalised (Z = 1 at a fresh node).
# * With draft probabilities (siblings drawn independently from q = draft_probs[u]),
#   the residual after k rejections at node u is w(x) = max(p(x) A - q(x) B, 0)
#   with mass Z: it starts at A = 1, B = 0, Z = 1 and a rejection sets
#   A <- A / Z, B <- B / Z + 1, Z <- sum_x w(x): exactly normalise(max(p - q, 0))
#   applied k times.  Child token x is accepted iff u * q(x) < w(x) / Z.
# * Without draft probabilities (deterministic drafts), child token x is
#   accepted iff u * Z < w(x), where w is p with the rejected siblings' tokens
#   zeroed and Z = 1 - their mass.
# * The final token is drawn from the current residual (all children rejected)
#   or from the accepted leaf's target distribution (bonus): the smallest x with
#   cumsum(w)[x] > u * sum(w), sums in float64.  A residual with no mass falls
#   back to the node's target distribution at its real mass (Z = sum_x p(x)).
# ---------------------------------------------------------------------------


def _children(parents_row: list[int], node: int) -> list[int]:
    return [c for c in range(node + 1, len(parents_row)) if parents_row[c] == node]


def _draw(weights: torch.Tensor, fallback: torch.Tensor, u: float) -> int:
    """Inverse-CDF draw from float64 weights [V]; the fallback if they have no mass."""
    if not float(weights.sum()) > 0.0:
        weights = fallback
    cdf = torch.cumsum(weights, 0)
    hit = torch.nonzero(cdf > u * float(cdf[-1]))
    if hit.numel():
        return int(hit[0, 0])
    return int(torch.nonzero(weights > 0)[-1, 0])  # u * total rounded up to the total


def _outputs(paths: list[list[int]], nexts: list[int], nodes: int, device):
    batch = len(paths)
    accept = torch.full((batch, nodes), -1, dtype=torch.int32)
    for b, p in enumerate(paths):
        accept[b, : len(p)] = torch.tensor(p, dtype=torch.int32)
    num = torch.tensor([len(p) for p in paths], dtype=torch.int32)
    nxt = torch.tensor(nexts, dtype=torch.int64)
    return accept.to(device), num.to(device), nxt.to(device)


def verify_greedy(tokens: torch.Tensor, parents: torch.Tensor, target_argmax: torch.Tensor):
    """Reference for :func:`specdec_cuda.ops.verify_greedy`.

    From the root, repeatedly accept the first child whose token equals the
    target's argmax after the current node; stop when none does.
    """
    batch, nodes = tokens.shape
    toks, pars, arg = tokens.tolist(), parents.tolist(), target_argmax.tolist()
    paths, nexts = [], []
    for b in range(batch):
        node, path = 0, [0]
        while True:
            match = [c for c in _children(pars[b], node) if toks[b][c] == arg[b][node]]
            if not match:
                break
            node = match[0]
            path.append(node)
        paths.append(path)
        nexts.append(arg[b][node])
    return _outputs(paths, nexts, nodes, tokens.device)


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
):
    """Reference for :func:`specdec_cuda.ops.rejection_sample` (see the rules above, and
    :func:`verify_row` for the methods "block" and "traversal" and for siblings drawn
    without replacement)."""
    from . import _philox

    _check_rule(method, siblings)
    batch, nodes = tokens.shape
    toks, pars = tokens.tolist(), parents.tolist()
    if method == "block":
        for b in range(batch):
            _check_chain(pars[b], b)
    u_all = _philox.uniforms(seed.cpu(), offset.cpu(), torch.arange(nodes + 1)).tolist()
    if draft_probs is not None and (method, siblings) != ("tokenwise", "iid"):
        paths, nexts = [], []
        for b in range(batch):
            path, nxt = verify_row(
                toks[b],
                pars[b],
                target_probs[b].double().tolist(),
                draft_probs[b].double().tolist(),
                PhiloxUniforms(u_all[b]),
                method=method,
                siblings=siblings,
            )
            paths.append(path)
            nexts.append(nxt)
        return _outputs(paths, nexts, nodes, tokens.device)
    # tokenwise with iid siblings, and every method without draft probabilities
    paths, nexts = [], []
    for b in range(batch):
        node, path = 0, [0]
        while True:
            p = target_probs[b, node].double().cpu()
            q = draft_probs[b, node].double().cpu() if draft_probs is not None else None
            a, bb, z = 1.0, 0.0, 1.0
            zeroed = p.clone()
            accepted = None
            kids = _children(pars[b], node)
            for c in kids:
                x, u = toks[b][c], u_all[b][c]
                if q is not None:
                    w_x = max(float(p[x]) * a - float(q[x]) * bb, 0.0)
                    if u * float(q[x]) < w_x / z:
                        accepted = c
                        break
                    a, bb = a / z, bb / z + 1.0
                    z = float(torch.clamp(p * a - q * bb, min=0.0).sum())
                    if not z > 0.0:  # no residual mass left: back to the target, at its real mass
                        a, bb, z = 1.0, 0.0, float(p.sum())
                else:
                    if u * z < float(zeroed[x]):
                        accepted = c
                        break
                    z -= float(zeroed[x])
                    zeroed[x] = 0.0
                    if not z > 0.0:  # back to the target, at its real mass
                        zeroed, z = p.clone(), float(p.sum())
            if accepted is None:
                if not kids:
                    w = p
                elif q is not None:
                    w = torch.clamp(p * a - q * bb, min=0.0)
                else:
                    w = zeroed
                nexts.append(_draw(w, p, u_all[b][nodes]))
                break
            node = accepted
            path.append(node)
        paths.append(path)
    return _outputs(paths, nexts, nodes, tokens.device)


# ---------------------------------------------------------------------------
# rejection_sample, one row, every method (docs/ops.md states the rules; the
# uniform index of node c's test is c, of the final draw N).  Rows are lists of
# Python floats (float64).  Residuals are kept as the ops keep them:
# numerators w(y) = max(A p(y) - B q(y), 0) of mass Z, zero at excluded tokens.
# `source` is the randomness: source.test(index, num, den) is "u_index * den <
# num" and source.draw(index, weights, fallback) the inverse-CDF draw with
# u_index; PhiloxUniforms gives the op's, and a test can pass an enumerator to
# compute exact probabilities.
# ---------------------------------------------------------------------------

METHODS = ("tokenwise", "block", "traversal")
SIBLINGS = ("iid", "without_replacement")


def _check_rule(method: str, siblings: str) -> None:
    if method not in METHODS:
        raise ValueError(f"reference.rejection_sample: unknown method {method!r}")
    if siblings not in SIBLINGS:
        raise ValueError(f"reference.rejection_sample: unknown siblings {siblings!r}")


def _check_chain(parents_row: list[int], row: int) -> None:
    for i in range(1, len(parents_row)):
        if parents_row[i] != i - 1:
            raise ValueError(
                f"reference.rejection_sample: parents[{row}, {i}] = {parents_row[i]}: method='block' "
                "verifies chains only"
            )


def _draw_list(weights: list[float], fallback: list[float], u: float) -> int:
    """_draw on lists: the smallest x with w(0) + ... + w(x) > u * sum(w); the fallback if
    w has no mass."""
    if not sum(weights) > 0.0:
        weights = fallback
    cdf, c = [], 0.0
    for w in weights:
        c += w
        cdf.append(c)
    target = u * cdf[-1]
    for x, cx in enumerate(cdf):
        if cx > target:
            return x
    return max(x for x, w in enumerate(weights) if w > 0.0)  # u * total rounded up to the total


class PhiloxUniforms:
    """One row's uniforms (index -> value) as the randomness of :func:`verify_row`."""

    def __init__(self, u: list[float]):
        self.u = u

    def test(self, index: int, num: float, den: float) -> bool:
        return self.u[index] * den < num

    def draw(self, index: int, weights: list[float], fallback: list[float]) -> int:
        return _draw_list(weights, fallback, self.u[index])


def _ratio(num: float, den: float) -> float:
    """P(u * den < num), u ~ U[0, 1), den >= 0."""
    if den > 0.0:
        return min(1.0, num / den)
    return 1.0 if num > 0.0 else 0.0


def _share(w: float, z: float) -> float:
    return w / z if z > 0.0 else 0.0


def _residual(p: list[float], q: list[float] | None, a: float, b: float, excluded=()) -> list[float]:
    """max(a p - b q, 0), zero at the excluded tokens (q None: b must be 0)."""
    ex = set(excluded)
    if q is None:
        return [0.0 if y in ex else max(py * a - 0.0, 0.0) for y, py in enumerate(p)]
    return [0.0 if y in ex else max(py * a - qy * b, 0.0) for y, (py, qy) in enumerate(zip(p, q))]


def verify_row(
    tokens: list[int],
    parents: list[int],
    p: list[list[float]],
    q: list[list[float]] | None,
    source,
    *,
    method: str = "tokenwise",
    siblings: str = "iid",
) -> tuple[list[int], int]:
    """rejection_sample on one row: returns (accepted path from the root, next token).

    ``p[i]`` / ``q[i]``: the target / draft distribution after node i (lists of floats);
    ``q`` None means deterministic drafts, for which every method is the deterministic
    rule ("block" still requires a chain).  ``source`` as described above.
    """
    _check_rule(method, siblings)
    if method == "block":
        _check_chain(parents, 0)
    kids = [[] for _ in tokens]
    for c in range(1, len(tokens)):
        kids[parents[c]].append(c)
    if q is None:
        return _tokenwise_deterministic(tokens, kids, p, source)
    if method == "tokenwise":
        return _tokenwise(tokens, kids, p, q, source, siblings == "without_replacement")
    if method == "block":
        return _block(tokens, p, q, source)
    return _traversal(tokens, parents, kids, p, q, source, siblings == "without_replacement")


def _tokenwise_deterministic(tokens, kids, p, source):
    """Child x accepted iff u * Z < w(x); w is p with the rejected siblings' tokens zeroed,
    Z = 1 - their mass; Z = 0 restarts w at p, at its real mass."""
    node, path = 0, [0]
    while True:
        w, z = list(p[node]), 1.0
        for c in kids[node]:
            x = tokens[c]
            if source.test(c, w[x], z):
                node = c
                break
            z -= w[x]
            w[x] = 0.0
            if not z > 0.0:
                w, z = list(p[node]), sum(p[node])
        else:
            nxt = source.draw(len(tokens), w if kids[node] else p[node], p[node])
            return path, nxt
        path.append(node)


def _tokenwise(tokens, kids, p, q, source, wor: bool):
    """Top-down recursive rejection sampling.  iid siblings: the library's rule (S = q).
    Without replacement (RSD): the sibling after k rejections was drafted from q without
    the k rejected tokens, S = q / m there (m = their remaining q mass), and a rejected
    token leaves the residual: w <- normalise(max(w - S, 0)) with that token zeroed, kept
    as A <- A / Z, B <- B / Z + 1 / m.  Once m = 0 the rest are deterministic fillers
    (S = one-hot: B unchanged, the token zeroed)."""
    n = len(tokens)
    node, path = 0, [0]
    while True:
        pu, qu = p[node], q[node]
        a, b, z, m = 1.0, 0.0, 1.0, 1.0
        rejected: list[int] = []  # tokens, in order (all of them leave S)
        w_from = 0  # rejected[w_from:] leave w (a restart clears the rest)
        accepted = None
        for c in kids[node]:
            x = tokens[c]
            if wor:
                exhausted = not m > 0.0
                s = 1.0 if exhausted else (0.0 if x in rejected else qu[x] / m)
                wx = 0.0 if x in rejected[w_from:] else max(pu[x] * a - qu[x] * b, 0.0)
                if source.test(c, _share(wx, z), s):
                    accepted = c
                    break
                if not z > 0.0:
                    continue
                a, b = a / z, b / z + (0.0 if exhausted else 1.0 / m)
                rejected.append(x)
                if not exhausted:
                    m = sum(0.0 if y in rejected else qy for y, qy in enumerate(qu))
                z = sum(_residual(pu, qu, a, b, rejected[w_from:]))
                if not z > 0.0:  # no residual mass: back to the target, at its real mass
                    a, b, w_from, z = 1.0, 0.0, len(rejected), sum(pu)
            else:
                wx = max(pu[x] * a - qu[x] * b, 0.0)
                if source.test(c, wx / z, qu[x]):
                    accepted = c
                    break
                a, b = a / z, b / z + 1.0
                z = sum(_residual(pu, qu, a, b))
                if not z > 0.0:
                    a, b, z = 1.0, 0.0, sum(pu)
        if accepted is None:
            if not kids[node]:
                return path, source.draw(n, pu, pu)
            return path, source.draw(n, _residual(pu, qu, a, b, rejected[w_from:] if wor else ()), pu)
        node = accepted
        path.append(node)


def _block(tokens, p, q, source):
    """Block verification of a chain (Sun et al. 2024).  P_0 = 1,
    P_i = ratio(P_{i-1} p_{i-1}(x_i), q_{i-1}(x_i)); R_i = max(P_i p_i - q_i, 0) of mass
    rho_i; node i's stop test u_i < h_i with h_K = P_K, h_i = rho_i / ((1 - P_i) + rho_i)
    (rho_i = 0: 1 if P_i >= 1, else 0); tau = the largest passing i (0 if none); the next
    token from R_tau, or p_K at tau = K; R_tau without mass falls back to p_tau."""
    k = len(tokens) - 1
    weight = [1.0]
    for i in range(1, k + 1):
        x = tokens[i]
        weight.append(_ratio(weight[i - 1] * p[i - 1][x], q[i - 1][x]))

    def residual(i):
        return [max(py * weight[i] - qy * 1.0, 0.0) for py, qy in zip(p[i], q[i])]

    tau = 0
    for i in range(k, 0, -1):
        if i == k:
            h = weight[k]
        else:
            rho = sum(residual(i))
            h = rho / ((1.0 - weight[i]) + rho) if rho > 0.0 else (1.0 if weight[i] >= 1.0 else 0.0)
        if source.test(i, h, 1.0):
            tau = i
            break
    w = p[k] if tau == k else residual(tau)
    return list(range(tau + 1)), source.draw(k + 1, w, p[tau])


def _traversal(tokens, parents, kids, p, q, source, wor: bool):
    """Traversal verification (Weng et al. 2025), depth first, each node tested (u_c < P_c)
    after its subtree was rejected.  Entering child c (token x) of u:
    P_c = ratio(P_u W_u(x), S_u(x)) with W_u = w_u / Z_u and S_u(x) = q_u(x) (iid),
    q_u(x) / M_u (without replacement; 0 for a token drawn before; 1 once M_u = 0).
    Rejecting c: A_u <- P_u A_u / Z_u, B_u <- P_u B_u / Z_u + (1 | 1 / M_u | 0);
    without replacement x leaves W_u and S_u (M_u <- the q_u mass left);
    rho = sum w_u; rho > 0: P_u <- rho / ((1 - P_u) + rho), Z_u <- rho; else if
    P_u >= 1: w_u restarts at p_u (real mass, exclusions of w cleared); else P_u <- 0.
    The root is accepted when all its children are."""
    n = len(tokens)
    A, B, Z, P, M = [1.0] * n, [0.0] * n, [1.0] * n, [0.0] * n, [1.0] * n
    rejected = [[] for _ in range(n)]
    w_from = [0] * n

    def wnum(v):
        return _residual(p[v], q[v], A[v], B[v], rejected[v][w_from[v] :])

    def visit(u):
        for c in kids[u]:
            x = tokens[c]
            wx = 0.0 if x in rejected[u][w_from[u] :] else max(p[u][x] * A[u] - q[u][x] * B[u], 0.0)
            if not wor:
                s = q[u][x]
            elif not M[u] > 0.0:
                s = 1.0
            else:
                s = 0.0 if x in rejected[u] else q[u][x] / M[u]
            A[c], B[c], Z[c], P[c], M[c] = 1.0, 0.0, 1.0, _ratio(P[u] * _share(wx, Z[u]), s), 1.0
            rejected[c], w_from[c] = [], 0
            hit = visit(c)
            if hit is not None:
                return hit
            exhausted = wor and not M[u] > 0.0
            add = 1.0 if not wor else (0.0 if exhausted else 1.0 / M[u])
            if Z[u] > 0.0:
                A[u], B[u] = P[u] * A[u] / Z[u], P[u] * B[u] / Z[u] + add
            if wor:
                rejected[u].append(x)
                if not exhausted:
                    M[u] = sum(0.0 if y in rejected[u] else qy for y, qy in enumerate(q[u]))
            rho = sum(wnum(u))
            if rho > 0.0:
                P[u], Z[u] = rho / ((1.0 - P[u]) + rho), rho
            elif P[u] >= 1.0:
                A[u], B[u], w_from[u], Z[u] = 1.0, 0.0, len(rejected[u]), sum(p[u])
            else:
                P[u] = 0.0
        if u == 0:
            return 0
        return u if source.test(u, P[u], 1.0) else None

    P[0] = 1.0
    acc = visit(0)
    path = [acc]
    while parents[path[-1]] >= 0:
        path.append(parents[path[-1]])
    path.reverse()
    w = wnum(acc) if kids[acc] else p[acc]
    return path, source.draw(n, w, p[acc])


def typical_accept(
    tokens: torch.Tensor,
    parents: torch.Tensor,
    target_probs: torch.Tensor,
    posterior_threshold: float,
    posterior_alpha: float,
    seed: torch.Tensor,
    offset: torch.Tensor,
):
    """Reference for :func:`specdec_cuda.ops.typical_accept` (Medusa's typical acceptance).

    Child c of an accepted node u is accepted iff
    ``p_u(tokens[c]) > min(posterior_threshold, posterior_alpha * exp(-H(p_u)))``
    with H the entropy (nats).  The accepted path ends at the deepest node whose
    whole path is accepted (the lowest index among equally deep ones); the next
    token is drawn from that node's target distribution with uniform index N.
    """
    from . import _philox

    batch, nodes = tokens.shape
    toks, pars = tokens.tolist(), parents.tolist()
    u_all = _philox.uniforms(seed.cpu(), offset.cpu(), torch.arange(nodes + 1)).tolist()
    paths, nexts = [], []
    for b in range(batch):
        ok = [False] * nodes
        depth = [0] * nodes
        ok[0] = True
        for u in range(nodes):
            kids = _children(pars[b], u)
            if not ok[u] or not kids:
                continue
            p = target_probs[b, u].double().cpu()
            pos = p[p > 0]
            entropy = float(-(pos * torch.log(pos)).sum())
            # as the kernels compute it: exp overflows to inf, and fmin ignores a NaN (0 * inf)
            e = math.exp(-entropy) if -entropy < 709.0 else math.inf
            prod = posterior_alpha * e
            cut = posterior_threshold if math.isnan(prod) else min(posterior_threshold, prod)
            for c in kids:
                ok[c] = float(p[toks[b][c]]) > cut
                depth[c] = depth[u] + 1
        best = max((i for i in range(nodes) if ok[i]), key=lambda i: (depth[i], -i))
        path = [best]
        while pars[b][path[-1]] >= 0:
            path.append(pars[b][path[-1]])
        path.reverse()
        p = target_probs[b, best].double().cpu()
        nexts.append(_draw(p, p, u_all[b][nodes]))
        paths.append(path)
    return _outputs(paths, nexts, nodes, tokens.device)


def sampling_probs(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference for :func:`specdec_cuda.ops.sampling_probs`, in float64.

    Per row b (and every position of a [B, N, V] input): temperature 0 gives the
    one-hot of the first maximum.  Otherwise z = logits / T; top_k in (0, V)
    keeps the tokens whose z is at least the k-th largest (ties kept); min_p > 0
    keeps the tokens with exp(z - max z) >= min_p; softmax over the tokens both
    keep; top_p < 1 keeps the tokens whose probability is at least t, the
    largest value whose set {p >= t} holds mass >= top_p (ties kept);
    renormalise.
    """
    squeeze = logits.dim() == 2
    x = logits.double().cpu()
    if squeeze:
        x = x[:, None]
    batch, rows, vocab = x.shape
    out = torch.empty_like(x)
    for b in range(batch):
        t, k, tp = float(temperature[b]), int(top_k[b]), float(top_p[b])
        mp = float(min_p[b]) if min_p is not None else 0.0
        for r in range(rows):
            row = x[b, r]
            if t == 0.0:
                out[b, r] = 0.0
                out[b, r, int(torch.argmax(row))] = 1.0
                continue
            z = row / t
            ninf = torch.tensor(float("-inf"), dtype=z.dtype)
            keep = torch.ones_like(z, dtype=torch.bool)
            if 0 < k < vocab:
                keep &= z >= torch.topk(z, k).values[-1]
            if mp > 0.0:
                keep &= torch.exp(z - z.max()) >= mp
            z = torch.where(keep, z, ninf)
            p = torch.exp(z - z.max())
            p = p / p.sum()
            if tp < 1.0:
                s = torch.sort(p, descending=True).values
                m = int(torch.searchsorted(torch.cumsum(s, 0), torch.tensor([tp], dtype=s.dtype)))
                thr = s[min(m, vocab - 1)]
                p = torch.where(p >= thr, p, torch.zeros((), dtype=p.dtype))
                p = p / p.sum()
            out[b, r] = p
    out = out[:, 0] if squeeze else out
    return out.to(device=logits.device, dtype=torch.float32)


# ---------------------------------------------------------------------------
# Ragged batches: row b is the slice cu_nodes[b] .. cu_nodes[b + 1] - 1 of the
# flat tensors.  By definition (docs/ops.md) a ragged op equals the padded op
# on each row alone, so the references call the padded references row by row.
# ---------------------------------------------------------------------------


def _slices(cu_nodes: torch.Tensor) -> list[tuple[int, int]]:
    cu = cu_nodes.tolist()
    return list(zip(cu[:-1], cu[1:]))


def sampling_probs_ragged(
    logits: torch.Tensor,
    cu_nodes: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference for :func:`specdec_cuda.ops.sampling_probs_ragged`: row b's slice of the
    ``[T, V]`` logits through :func:`sampling_probs` with row b's parameters."""
    out = torch.empty(logits.shape, dtype=torch.float32)
    for b, (lo, hi) in enumerate(_slices(cu_nodes)):
        one = slice(b, b + 1)
        out[lo:hi] = sampling_probs(
            logits[lo:hi][None],
            temperature[one],
            top_k[one],
            top_p[one],
            min_p[one] if min_p is not None else None,
        )[0].cpu()
    return out.to(logits.device)


def _ragged_verdict(rows, total: int, device):
    """Per-row padded verdicts (B = 1) -> (accept_nodes [T], num [B], next [B])."""
    accept = torch.full((total,), -1, dtype=torch.int32)
    num, nxt = [], []
    for (lo, hi), (a, n, x) in rows:
        accept[lo:hi] = a[0].cpu()
        num.append(int(n[0]))
        nxt.append(int(x[0]))
    return (
        accept.to(device),
        torch.tensor(num, dtype=torch.int32).to(device),
        torch.tensor(nxt, dtype=torch.int64).to(device),
    )


def verify_greedy_ragged(
    tokens: torch.Tensor, parents: torch.Tensor, cu_nodes: torch.Tensor, target_argmax: torch.Tensor
):
    """Reference for :func:`specdec_cuda.ops.verify_greedy_ragged`: :func:`verify_greedy` row by row."""
    rows = [
        ((lo, hi), verify_greedy(tokens[None, lo:hi], parents[None, lo:hi], target_argmax[None, lo:hi]))
        for lo, hi in _slices(cu_nodes)
    ]
    return _ragged_verdict(rows, tokens.shape[0], tokens.device)


def rejection_sample_ragged(
    tokens: torch.Tensor,
    parents: torch.Tensor,
    cu_nodes: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
):
    """Reference for :func:`specdec_cuda.ops.rejection_sample_ragged`: :func:`rejection_sample`
    on each row alone (N = its node count, so its final draw uses uniform index N_b)."""
    rows = []
    for b, (lo, hi) in enumerate(_slices(cu_nodes)):
        verdict = rejection_sample(
            tokens[None, lo:hi],
            parents[None, lo:hi],
            draft_probs[None, lo:hi] if draft_probs is not None else None,
            target_probs[None, lo:hi],
            seed[b : b + 1],
            offset[b : b + 1],
        )
        rows.append(((lo, hi), verdict))
    return _ragged_verdict(rows, tokens.shape[0], tokens.device)


def typical_accept_ragged(
    tokens: torch.Tensor,
    parents: torch.Tensor,
    cu_nodes: torch.Tensor,
    target_probs: torch.Tensor,
    posterior_threshold: float,
    posterior_alpha: float,
    seed: torch.Tensor,
    offset: torch.Tensor,
):
    """Reference for :func:`specdec_cuda.ops.typical_accept_ragged`: :func:`typical_accept` row by row."""
    rows = []
    for b, (lo, hi) in enumerate(_slices(cu_nodes)):
        verdict = typical_accept(
            tokens[None, lo:hi],
            parents[None, lo:hi],
            target_probs[None, lo:hi],
            posterior_threshold,
            posterior_alpha,
            seed[b : b + 1],
            offset[b : b + 1],
        )
        rows.append(((lo, hi), verdict))
    return _ragged_verdict(rows, tokens.shape[0], tokens.device)


# ---------------------------------------------------------------------------
# Vectorised chain verifiers, written the way engines write them in torch (all
# K positions at once, no Python loop over rows): the benchmark baselines for
# chains.  They consume the same Philox uniforms, so on chains they return
# exactly what the ops return.
# ---------------------------------------------------------------------------


def verify_greedy_chain(tokens: torch.Tensor, target_argmax: torch.Tensor):
    """Vectorised :func:`verify_greedy` for chains (parents = [-1, 0, ..., K-1])."""
    batch, nodes = tokens.shape
    match = tokens[:, 1:] == target_argmax[:, :-1]
    drafted = torch.cumprod(match.long(), dim=1).sum(1)  # accepted drafts per row
    num = (drafted + 1).to(torch.int32)
    j = torch.arange(nodes, device=tokens.device)
    accept = torch.where(j[None] < num[:, None], j[None], -1).to(torch.int32)
    next_token = target_argmax.gather(1, drafted[:, None])[:, 0]
    return accept, num, next_token


def rejection_sample_chain(
    tokens: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
):
    """Vectorised :func:`rejection_sample` for chains, engine style.

    Every position's acceptance test and residual ``normalise(max(p - q, 0))`` is
    computed over ``[B, K, V]`` at once, the first rejection found with a cumulative
    product, and the next token drawn by inverse CDF (float64) from the residual at
    the first rejection or the bonus distribution after the last draft.
    """
    from . import _philox

    batch, nodes = tokens.shape
    k = nodes - 1
    device = tokens.device
    u = _philox.uniforms(seed, offset, torch.arange(nodes + 1, device=device))  # [B, N+1]
    x = tokens[:, 1:]
    p = target_probs.double()
    p_x = p[:, :k].gather(2, x[..., None])[..., 0]
    if draft_probs is not None:
        q = draft_probs.double()
        q_x = q[:, :k].gather(2, x[..., None])[..., 0]
        accepted = u[:, 1:nodes] * q_x < p_x
        residual = torch.clamp(p[:, :k] - q[:, :k], min=0.0)  # [B, K, V]
    else:
        accepted = u[:, 1:nodes] < p_x
        residual = p[:, :k].scatter(2, x[..., None], 0.0)
    drafted = torch.cumprod(accepted.long(), dim=1).sum(1)  # [B]
    rows = torch.arange(batch, device=device)
    if k > 0:
        res = residual[rows, drafted.clamp(max=k - 1)]
        weights = torch.where((drafted < k)[:, None], res, p[rows, drafted])
    else:
        weights = p[rows, drafted]
    mass = weights.sum(1, keepdim=True)
    weights = torch.where(mass > 0, weights, p[rows, drafted])  # no residual mass: the target
    cdf = torch.cumsum(weights, 1)
    target = u[:, nodes : nodes + 1] * cdf[:, -1:]
    next_token = torch.searchsorted(cdf, target, right=True)[:, 0].clamp(max=weights.shape[1] - 1)
    num = (drafted + 1).to(torch.int32)
    j = torch.arange(nodes, device=device)
    accept = torch.where(j[None] < num[:, None], j[None], -1).to(torch.int32)
    return accept, num, next_token


def sampling_probs_vectorized(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor | None = None,
) -> torch.Tensor:
    """Engine-style float32 temperature / top-k / min-p / top-p (sort based), over all rows
    at once.

    Same rule as :func:`sampling_probs` up to float32 rounding at the min-p and top-p
    boundaries; the benchmark baseline for it.
    """
    x = logits.float()
    squeeze = x.dim() == 2
    if squeeze:
        x = x[:, None]
    t = temperature.float()[:, None, None]
    greedy = t == 0
    z = x / torch.where(greedy, torch.ones_like(t), t)
    vocab = z.shape[-1]
    if min_p is not None:  # engines: softmax, then drop tokens below min_p * the row's largest
        full = torch.softmax(z, dim=-1)
        low = full < min_p.float()[:, None, None] * full.amax(-1, keepdim=True)
        z = torch.where(low, torch.full_like(z, float("-inf")), z)
    sorted_z, order = torch.sort(z, dim=-1, descending=True)
    k = top_k.long()[:, None, None]
    k = torch.where((k > 0) & (k < vocab), k, torch.full_like(k, vocab))
    kth = sorted_z.gather(-1, (k - 1).expand(*z.shape[:-1], 1))
    z = torch.where(z >= kth, z, torch.full_like(z, float("-inf")))
    p = torch.softmax(z, dim=-1)
    sorted_p = p.gather(-1, order)
    cum = torch.cumsum(sorted_p, dim=-1)
    tp = top_p.float()[:, None, None]
    m = torch.searchsorted(cum, tp.expand(*cum.shape[:-1], 1).contiguous()).clamp(max=vocab - 1)
    thr = torch.where(tp < 1.0, sorted_p.gather(-1, m), torch.zeros_like(tp))
    p = torch.where(p >= thr, p, torch.zeros_like(p))
    p = p / p.sum(-1, keepdim=True)
    one_hot = torch.zeros_like(p).scatter_(-1, x.argmax(-1, keepdim=True), 1.0)
    p = torch.where(greedy, one_hot, p)
    return p[:, 0] if squeeze else p
