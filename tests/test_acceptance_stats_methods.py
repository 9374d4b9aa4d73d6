"""rejection_sample's methods are lossless, statistically: block verification, traversal
verification (siblings drawn iid and without replacement) and RSD's token-wise rule.

The harness is test_acceptance_stats.py's (imported from there): Markov-chain
"models" over V = 6 tokens whose target and draft rows go through sampling_probs
(T1, and temperature 0.7 with top-k 4 and top-p 0.9), 200 000 rows with distinct
Philox seeds each running speculative steps from a random root, and three grouped
chi-square goodness-of-fit tests of the emitted stream against the target chain:
the first token, the first pair, and the transitions at positions 1..4.  Every
assertion "p > ALPHA" uses ALPHA = 1e-6; this file makes 30 of them on CPU (10
cases x 3), so a correct implementation raises a false alarm with probability below
3e-5 (60 with a GPU: 6e-5).

Cases (the drafts are drawn exactly as the rule's `siblings` says):

  block      chain of K = 3, drafts iid from q
  traversal  the same chain; and the tree [-1, 0, 0, 0, 1, 1, 2, 2, 3, 3] with iid
             siblings, and with siblings drawn without replacement
  RSD        tokenwise with siblings="without_replacement" on that tree

Power, at the same sample size: deliberately wrong variants must fail the same
test (some statistic with p < ALPHA), and torch implementations of the correct
block and traversal rules (the controls) pass it:

  block, stop test h_i = P_i (the residual-mass correction dropped)    torch
  traversal, P_u kept after a deletion (not renormalised)              torch
  traversal and RSD: siblings drawn without replacement, verified with
  the iid rule (the op with siblings="iid")                           op
  RSD's rule on iid siblings (the op with siblings="without_replacement") op

Run with -s to see every statistic.
"""

from __future__ import annotations

import pytest
import torch
from test_acceptance_stats import (
    ALPHA,
    CONFIGS,
    TREE_PARENTS,
    V,
    build_tree,
    collect,
    emitted_of,
    make_model,
    report,
    sample_rows,
    statistics,
)

from specdec_cuda import ops

from conftest import ALL_DEVICES

TREE = "stochastic_tree"  # [-1, 0, 0, 0, 1, 1, 2, 2, 3, 3]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def children(parents: list[int]) -> list[list[int]]:
    return [[c for c in range(len(parents)) if parents[c] == u] for u in range(len(parents))]


def build_tree_wor(kind: str, model, roots: torch.Tensor, gen) -> torch.Tensor:
    """Each node's children drawn WITHOUT replacement, in index order, from Q[its token]
    (earlier siblings' tokens zeroed); once Q has no mass left the rest are the smallest
    unused tokens (deterministic fillers)."""
    parents = TREE_PARENTS[kind]
    rows = roots.shape[0]
    tokens = torch.empty(rows, len(parents), dtype=torch.int64)
    tokens[:, 0] = roots
    for u, kids in enumerate(children(parents)):
        if not kids:
            continue
        w = model.Q64[tokens[:, u]].clone()
        used = torch.zeros(rows, V, dtype=torch.bool)
        for c in kids:
            mass = w.sum(-1) > 0
            drawn = sample_rows(torch.where(mass[:, None], w, torch.ones_like(w)), gen)
            filler = (~used).double().argmax(-1)  # the smallest unused token
            tok = torch.where(mass, drawn, filler)
            tokens[:, c] = tok
            w.scatter_(1, tok[:, None], 0.0)
            used.scatter_(1, tok[:, None], True)
    return tokens


def drafts(kind: str, model, roots, gen, drafting: str) -> torch.Tensor:
    return (
        build_tree(kind, model, roots, gen) if drafting == "iid" else build_tree_wor(kind, model, roots, gen)
    )


def op_step(kind: str, model, device: str, method: str, siblings: str, drafting: str):
    parents_row = torch.tensor(TREE_PARENTS[kind], dtype=torch.int32)
    P, Q = model.P.to(device), model.Q.to(device)

    def step(roots, seeds, offsets, gen):
        tokens = drafts(kind, model, roots, gen, drafting)
        t = tokens.to(device)
        parents = parents_row.expand(tokens.shape[0], -1).contiguous().to(device)
        verdict = ops.rejection_sample(
            t,
            parents,
            Q[t].contiguous(),
            P[t].contiguous(),
            seeds.to(device),
            offsets.to(device),
            method=method,
            siblings=siblings,
        )
        return emitted_of(tokens, verdict)

    return step, len(TREE_PARENTS[kind])


# (kind, drafting, method, siblings)
CASES = {
    "block chain": ("chain", "iid", "block", "iid"),
    "traversal chain": ("chain", "iid", "traversal", "iid"),
    "traversal tree iid": (TREE, "iid", "traversal", "iid"),
    "traversal tree without replacement": (TREE, "wor", "traversal", "without_replacement"),
    "RSD tree without replacement": (TREE, "wor", "tokenwise", "without_replacement"),
}


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("case", list(CASES))
def test_method_is_lossless(device, case, config, seed):
    kind, drafting, method, siblings = CASES[case]
    model = make_model(config)
    step, nodes = op_step(kind, model, device, method, siblings, drafting)
    stats = statistics(collect(step, nodes, seed), model.P64)
    text = report(f"{case} ({method}, siblings {siblings}) {config} on {device}", stats)
    for name, s in stats.items():
        assert s.forbidden == 0, text
        assert s.p > ALPHA, f"{name}: {text}"


# ---------------------------------------------------------------------------
# Power: torch implementations of the rules (correct = control, and wrong variants).
# ---------------------------------------------------------------------------


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, (num / den.clamp_min(1e-300)).clamp_max(1.0), (num > 0).double())


def _emit(tokens, paths, accepted, nxt):
    """Emitted tokens [R, N] and counts for rows accepting node `accepted` (paths[c]: the
    nodes below the root on c's path)."""
    rows, nodes = tokens.shape
    em = torch.full((rows, nodes), -1, dtype=torch.int64)
    length = torch.ones(rows, dtype=torch.int64)
    for c, path in enumerate(paths):
        sel = accepted == c
        if not bool(sel.any()):
            continue
        for j, v in enumerate(path):
            em[sel, j] = tokens[sel, v]
        em[sel, len(path)] = nxt[sel]
        length[sel] = len(path) + 1
    return em, length


def torch_block_step(model, variant: str | None = None):
    """Block verification of the K = 3 chain in torch, vectorised over rows (torch.rand).
    variant "h_is_p": the stop test of node i < K is u < P_i."""
    P64, Q64 = model.P64, model.Q64
    kind = "chain"
    k = len(TREE_PARENTS[kind]) - 1
    paths = [list(range(1, c + 1)) for c in range(k + 1)]

    def step(roots, seeds, offsets, gen):
        rows = roots.shape[0]
        tokens = build_tree(kind, model, roots, gen)
        p, q = P64[tokens], Q64[tokens]  # [R, K+1, V]
        weight = [torch.ones(rows, dtype=torch.float64)]
        for i in range(1, k + 1):
            x = tokens[:, i : i + 1]
            weight.append(_ratio(weight[-1] * p[:, i - 1].gather(1, x)[:, 0], q[:, i - 1].gather(1, x)[:, 0]))
        tau = torch.zeros(rows, dtype=torch.int64)
        done = torch.zeros(rows, dtype=torch.bool)
        for i in range(k, 0, -1):
            if i == k or variant == "h_is_p":
                h = weight[i]
            else:
                rho = (weight[i][:, None] * p[:, i] - q[:, i]).clamp_min(0.0).sum(-1)
                h = torch.where(rho > 0, rho / ((1.0 - weight[i]) + rho), (weight[i] >= 1).double())
            ok = ~done & (torch.rand(rows, generator=gen, dtype=torch.float64) < h)
            tau[ok], done = i, done | ok
        r = torch.arange(rows)
        wt = torch.stack(weight, 1)[r, tau]
        w = (wt[:, None] * p[r, tau] - q[r, tau]).clamp_min(0.0)
        w = torch.where(((tau == k) | ~(w.sum(-1) > 0))[:, None], p[r, tau], w)
        return _emit(tokens, paths, tau, sample_rows(w, gen))

    return step, k + 1


def torch_traversal_step(model, kind: str, drafting: str, variant: str | None = None):
    """Traversal verification in torch (vector form), vectorised over rows: the tree is
    fixed, so every row follows the same post-order schedule until it accepts.
    variant "keep_weight": P_u is not renormalised after a deletion."""
    P64, Q64 = model.P64, model.Q64
    parents = TREE_PARENTS[kind]
    n, kids = len(parents), children(parents)
    paths = [[]]
    for c in range(1, n):
        paths.append(paths[parents[c]] + [c])

    def step(roots, seeds, offsets, gen):
        rows = roots.shape[0]
        tokens = drafts(kind, model, roots, gen, drafting)
        W = P64[tokens].clone()  # [R, N, V]
        S = Q64[tokens].clone()
        P = torch.zeros(rows, n, dtype=torch.float64)
        P[:, 0] = 1.0
        accepted = torch.full((rows,), -1, dtype=torch.int64)
        alive = torch.ones(rows, dtype=torch.bool)

        def proposal(u, x):
            if drafting == "iid":
                return S[:, u].clone()
            m = S[:, u].sum(-1, keepdim=True)
            onehot = torch.nn.functional.one_hot(x, V).double()
            return torch.where(m > 0, S[:, u] / m.clamp_min(1e-300), onehot)

        def visit(u):
            nonlocal alive
            for c in kids[u]:
                x = tokens[:, c]
                s = proposal(u, x)
                P[:, c] = _ratio(P[:, u] * W[:, u].gather(1, x[:, None])[:, 0], s.gather(1, x[:, None])[:, 0])
                visit(c)
                ok = alive & (torch.rand(rows, generator=gen, dtype=torch.float64) < P[:, c])
                accepted[ok] = c
                alive = alive & ~ok
                r = (P[:, u, None] * W[:, u] - s).clamp_min(0.0)
                rho = r.sum(-1)
                if drafting == "wor":
                    S[:, u].scatter_(1, x[:, None], 0.0)
                pos = rho > 0
                new_p = P[:, u] if variant == "keep_weight" else rho / ((1.0 - P[:, u]) + rho)
                W[:, u] = torch.where(pos[:, None], r / rho.clamp_min(1e-300)[:, None], W[:, u])
                P[:, u] = torch.where(pos, new_p, (P[:, u] >= 1).double())

        visit(0)
        accepted[alive] = 0
        nxt = sample_rows(W[torch.arange(rows), accepted], gen)
        return _emit(tokens, paths, accepted, nxt)

    return step, n


CONTROLS = {
    "torch block": lambda m: torch_block_step(m),
    "torch traversal iid": lambda m: torch_traversal_step(m, TREE, "iid"),
    "torch traversal without replacement": lambda m: torch_traversal_step(m, TREE, "wor"),
}
WRONG = {
    "block with h_i = P_i": lambda m: torch_block_step(m, "h_is_p"),
    "traversal keeping P_u after a deletion": lambda m: torch_traversal_step(m, TREE, "iid", "keep_weight"),
    "traversal: drafts without replacement, iid rule": lambda m: op_step(
        TREE, m, "cpu", "traversal", "iid", "wor"
    ),
    "RSD: drafts without replacement, iid rule": lambda m: op_step(TREE, m, "cpu", "tokenwise", "iid", "wor"),
    "RSD rule on iid drafts": lambda m: op_step(TREE, m, "cpu", "tokenwise", "without_replacement", "iid"),
}


@pytest.mark.parametrize("control", list(CONTROLS))
def test_torch_correct_rule_passes(control, seed):
    model = make_model("T0.7-k4-p0.9")
    step, nodes = CONTROLS[control](model)
    stats = statistics(collect(step, nodes, seed), model.P64)
    text = report(f"control {control}, T0.7-k4-p0.9", stats)
    for name, s in stats.items():
        assert s.p > ALPHA, f"{name}: {text}"


@pytest.mark.parametrize("rule", list(WRONG))
def test_wrong_rule_is_detected(rule, seed):
    model = make_model("T0.7-k4-p0.9")
    step, nodes = WRONG[rule](model)
    stats = statistics(collect(step, nodes, seed), model.P64)
    text = report(f"WRONG rule '{rule}', T0.7-k4-p0.9", stats)
    assert min(s.p for s in stats.values()) < ALPHA, text
