"""The theory of speculative decoding (:mod:`specdec_cuda.theory`).

1. Formulas on synthetic distributions whose answers are known exactly: TV
   distances, the geometric tau, speedups and the best K.
2. The renewal predictions against an exact enumeration of the algorithms
   themselves: a vocabulary of 3 and Markov target/draft models (the next-token
   distributions depend on the last token), every draft, accept/reject and
   corrected token enumerated with its probability, for chains (Leviathan et al.'s
   rule) and a static tree (the deterministic-draft rule, written out step by step
   as docs/ops.md states it).  The prediction from per-position quantities of the
   texts (sum over all texts of P(text) x the renewal on that text) must equal the
   enumeration to float precision.  The same one-step expectations are checked
   against the real ``rejection_sample`` op by Monte Carlo.
3. The bundled pair: at T = 0 the prediction equals the loop's count (1e-9); at
   T = 1 it is within 4 combined standard errors of the loop's tau; deliberately
   wrong predictors fail both (``test_bundled_pair_*``).
4. The ``analyze`` command: help, errors (one line, exit 2), a small end-to-end run.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from specdec_cuda import ops, theory
from specdec_cuda.tree import chain, static_tree

ASSETS = Path(__file__).resolve().parents[1] / "specdec_cuda" / "assets" / "tiny"

# ---------------------------------------------------------------------------
# 1. Formulas.
# ---------------------------------------------------------------------------


def test_tv_of_known_distributions():
    p = torch.tensor([0.5, 0.5, 0.0])
    q = torch.tensor([0.25, 0.25, 0.5])
    assert theory.tv_distance(p, q).item() == pytest.approx(0.5)
    assert theory.acceptance_probability(p, q).item() == pytest.approx(0.5)
    assert theory.tv_distance(p, p).item() == 0.0
    assert theory.tv_distance(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])).item() == 1.0
    # batched: 1 - TV = sum min(p, q) for normalised rows
    g = torch.Generator().manual_seed(0)
    a = torch.rand(5, 7, generator=g).softmax(-1)
    b = torch.rand(5, 7, generator=g).softmax(-1)
    tv = theory.tv_distance(a, b)
    assert tv.shape == (5,) and tv.dtype == torch.float64
    torch.testing.assert_close(1 - tv, theory.acceptance_probability(a, b))
    with pytest.raises(ValueError, match="differ"):
        theory.tv_distance(a, b[:, :3])


def test_greedy_transform_makes_acceptance_the_argmax_agreement():
    """At T = 0 sampling_probs is one-hot at the first argmax, so 1 - TV is 1 exactly
    when the argmaxes agree."""
    logits_p = torch.tensor([[0.1, 2.0, 0.3], [1.0, 0.0, 0.5], [0.0, 0.0, 3.0]])
    logits_q = torch.tensor([[0.0, 1.0, 0.9], [0.0, 2.0, 0.1], [0.2, 0.1, 1.0]])
    params = (torch.zeros(3), torch.zeros(3, dtype=torch.int32), torch.ones(3))
    p, q = ops.sampling_probs(logits_p, *params), ops.sampling_probs(logits_q, *params)
    beta = theory.acceptance_probability(p, q)
    assert beta.tolist() == [1.0, 0.0, 1.0]


def test_tau_iid_is_the_geometric_sum():
    for alpha in (0.0, 0.3, 0.5, 0.9, 1.0):
        for k in range(0, 7):
            assert theory.tau_iid(alpha, k) == pytest.approx(sum(alpha**j for j in range(k + 1)))
    assert theory.tau_iid(0.5, 2) == pytest.approx(1.75)
    assert theory.tau_iid(1.0, 4) == 5.0
    assert theory.acceptance_iid(0.5, 3) == [0.5, 0.25, 0.125]
    with pytest.raises(ValueError, match="alpha"):
        theory.tau_iid(1.5, 2)


def test_speedup_and_best_k():
    alpha = 0.8
    taus = {k: theory.tau_iid(alpha, k) for k in range(1, 9)}
    # by hand: tau(K) / (K c + 1)
    assert theory.speedup(taus[4], 4, 0.25) == pytest.approx((1 - 0.8**5) / 0.2 / 2.0)
    assert theory.best_k(taus, 0.0) == 8  # free drafts: the longest chain
    assert theory.best_k(taus, 10.0) == 1  # drafts dearer than the target: the shortest
    for c in (0.05, 0.1, 0.25, 0.5):
        brute = max(range(1, 9), key=lambda k: taus[k] / (k * c + 1))
        assert theory.best_k(taus, c) == brute
    assert theory.best_k(taus, 0.1) == 6  # S(5) = 2.460, S(6) = 2.470, S(7) = 2.448
    assert theory.speedup(taus[6], 6, 0.1) > theory.speedup(taus[5], 5, 0.1)
    assert theory.speedup(taus[6], 6, 0.1) > theory.speedup(taus[7], 7, 0.1)


def test_renewal_with_constant_acceptance_is_the_geometric_sum():
    for alpha in (0.0, 0.4, 0.75, 1.0):
        acc = torch.full((40,), alpha, dtype=torch.float64)
        for k in (1, 3, 5):
            sums = theory.renewal(theory.chain_reach(acc, k, 30), 30)
            assert sums.tau == pytest.approx(theory.tau_iid(alpha, k), abs=1e-12)
            assert sums.acceptance_by_position == pytest.approx(theory.acceptance_iid(alpha, k), abs=1e-12)


def test_renewal_by_hand():
    """Greedy agreement 1 1 0 1 0 1 1 1 with K = 2 and 6 start positions: steps start
    at 0 (accepts 2), 3 (accepts 1), 5 (accepts 2); three steps, 2+1 + 1+1 + 2+1 = 8
    tokens; all three reach depth 1, two reach depth 2."""
    acc = torch.tensor([1, 1, 0, 1, 0, 1, 1, 1], dtype=torch.float64)
    sums = theory.renewal(theory.chain_reach(acc, 2, 6), 6)
    assert (sums.steps, sums.tokens, sums.reached) == (3.0, 8.0, [3.0, 2.0])
    # uniform weighting of the start positions would give a different tau
    uniform = theory.chain_reach(acc, 2, 6).sum(1).mean().item()
    assert uniform != pytest.approx(sums.tau)
    with pytest.raises(ValueError, match="non|increase"):
        theory.renewal(torch.tensor([[1.0, 0.2, 0.5]]))


def test_tree_reach_follows_the_ranks():
    tree = static_tree([[0], [1], [0, 0], [1, 0], [0, 0, 0]])
    ranks = torch.tensor([0, 0, 0, 1, 0, 2, 0, 0, 0, 0])
    reach = theory.tree_reach(ranks, tree, 6)
    assert reach[:, 1:].sum(1).tolist() == [3, 2, 1, 2, 1, 0]
    # a chain tree on 0/1 ranks is the chain on the agreement indicator
    agree = (ranks == 0).double()
    torch.testing.assert_close(
        theory.tree_reach(ranks, chain(3), 6), theory.chain_reach(agree, 3, 6), rtol=0, atol=0
    )


def test_tree_iid_of_a_chain_is_the_geometric_sum_and_of_a_tree_by_hand():
    assert theory.predict_tree_iid(chain(4), [0.7]).tau == pytest.approx(theory.tau_iid(0.7, 4))
    tree = static_tree([[0], [1], [0, 0]])
    pred = theory.predict_tree_iid(tree, [0.5, 0.2])
    # nodes: [0] 0.5, [1] 0.2, [0, 0] 0.25 -> tau 1.95; depth 1: 0.7, depth 2: 0.25
    assert pred.tau == pytest.approx(1.95)
    assert pred.acceptance_by_position == pytest.approx([0.7, 0.25])


def test_position_stats():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    q = torch.tensor([[0.25, 0.6, 0.15], [0.0, 0.5, 0.5]])
    logits = torch.tensor([[0.0, 2.0, -1.0], [-5.0, 1.0, 1.5]])
    y = torch.tensor([1, 0])
    pos = theory.position_stats(p, q, logits, y, max_rank=2, n_starts=1)
    exact = dict(dtype=torch.float64)
    torch.testing.assert_close(pos.tv, torch.tensor([0.3, 0.4], **exact), atol=1e-6, rtol=0)
    torch.testing.assert_close(pos.realized, torch.tensor([1.0, 0.0], **exact))
    assert pos.ranks.tolist() == [0, 2]
    torch.testing.assert_close(pos.rank_probs, torch.tensor([[0.3, 0.5], [0.8, 0.1]], **exact))


# ---------------------------------------------------------------------------
# 2. Exact enumeration of the algorithms on Markov models (V = 3).
# ---------------------------------------------------------------------------

V = 3
START = 0
# Target and draft next-token distributions given the last token (rows: last token).
P_TABLE = [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.45, 0.1, 0.45]]
Q_TABLE = [[0.5, 0.1, 0.4], [0.05, 0.8, 0.15], [0.3, 0.25, 0.45]]


class Totals:
    def __init__(self, k: int):
        self.steps, self.tokens, self.reached = 0.0, 0.0, [0.0] * k

    def end_step(self, w: float, accepted: int) -> None:
        self.tokens += w * (accepted + 1)
        for j in range(accepted):
            self.reached[j] += w


def enumerate_chain(p, q, k: int, n: int) -> Totals:
    """The Leviathan chain written out: K drafts sampled from q, each accepted with
    min(1, p/q); the first rejection draws the corrected token from normalise((p - q)+)
    and ends the step; K acceptances draw the bonus token from p.  Steps start while
    fewer than n tokens were emitted."""
    out = Totals(k)

    def step(last: int, emitted: int, w: float) -> None:
        if emitted >= n or w == 0.0:
            return
        out.steps += w
        walk(last, 0, w, emitted)

    def walk(ctx: int, accepted: int, w: float, emitted: int) -> None:
        if w == 0.0:
            return
        if accepted == k:
            out.end_step(w, k)
            for z in range(V):
                step(z, emitted + k + 1, w * p[ctx][z])
            return
        resid = [max(p[ctx][x] - q[ctx][x], 0.0) for x in range(V)]
        mass = sum(resid)
        for d in range(V):
            if q[ctx][d] == 0.0:
                continue
            a = min(1.0, p[ctx][d] / q[ctx][d])
            walk(d, accepted + 1, w * q[ctx][d] * a, emitted)
            w_rej = w * q[ctx][d] * (1.0 - a)
            if w_rej > 0.0:
                out.end_step(w_rej, accepted)
                for z in range(V):
                    step(z, emitted + accepted + 1, w_rej * resid[z] / mass)

    step(START, 0, 1.0)
    return out


def enumerate_tree(p, q, tree, n: int) -> Totals:
    """The deterministic-draft rule as docs/ops.md states it: node tokens are the
    draft's ranked tokens after their parent; at node u, child c with token x is
    accepted iff u_c Z < w(x), w = p with the rejected siblings' tokens zeroed, Z = 1 -
    their mass; all rejected (or a leaf): the next token from w / Z."""
    out = Totals(tree.max_depth)
    kids = {i: [c for c in range(tree.num_nodes) if tree.parents[c] == i] for i in range(tree.num_nodes)}

    def ranked(ctx: int) -> list[int]:
        return sorted(range(V), key=lambda x: -q[ctx][x])

    def step(last: int, emitted: int, w: float) -> None:
        if emitted >= n or w == 0.0:
            return
        out.steps += w
        walk(0, last, 0, w, emitted)

    def walk(node: int, ctx: int, depth: int, w: float, emitted: int) -> None:
        if w == 0.0:
            return
        wv, z = list(p[ctx]), 1.0
        for c in kids[node]:
            x = ranked(ctx)[tree.ranks[c]]
            a = wv[x] / z
            walk(c, x, depth + 1, w * a, emitted)
            w *= 1.0 - a
            z -= wv[x]
            wv[x] = 0.0
        out.end_step(w, depth)
        for y in range(V):
            step(y, emitted + depth + 1, w * wv[y] / z)

    step(START, 0, 1.0)
    return out


def texts_and_positions(p, q, length: int, n_starts: int, max_rank: int):
    """Every text of ``length`` tokens after START with its probability under the
    target, and its :class:`theory.Positions` (draft logits = log q)."""
    for text in itertools.product(range(V), repeat=length):
        ctx = [START, *text[:-1]]
        prob = math.prod(p[c][y] for c, y in zip(ctx, text))
        pt = torch.tensor([p[c] for c in ctx], dtype=torch.float64)
        qt = torch.tensor([q[c] for c in ctx], dtype=torch.float64)
        pos = theory.position_stats(
            pt, qt, qt.log(), torch.tensor(text), max_rank=max_rank, n_starts=n_starts
        )
        yield prob, pos


def expected(sums_list) -> theory.RenewalSums:
    total = theory.RenewalSums()
    for w, s in sums_list:
        total = total + theory.RenewalSums(w * s.steps, w * s.tokens, [w * r for r in s.reached])
    return total


@pytest.mark.parametrize("k,n", [(1, 3), (2, 3), (3, 2)])
def test_chain_positional_prediction_equals_enumeration(k, n):
    """Sum over texts of P(text) x renewal(prod of r_t) = the exact expected steps,
    tokens and depths reached of the chain algorithm."""
    exact = enumerate_chain(P_TABLE, Q_TABLE, k, n)
    pred = expected(
        (w, theory.renewal(theory.chain_reach(pos.realized, k, n), n))
        for w, pos in texts_and_positions(P_TABLE, Q_TABLE, n + k, n, 1)
    )
    assert pred.steps == pytest.approx(exact.steps, abs=1e-12)
    assert pred.tokens == pytest.approx(exact.tokens, abs=1e-12)
    assert pred.reached == pytest.approx(exact.reached, abs=1e-12)
    assert exact.steps >= 1.0 and exact.tokens / exact.steps > 1.0  # the case is not trivial
    # The 1 - TV version is only an approximation here (the next position's
    # acceptance depends on the accepted token), as the module docstring says.
    approx = expected(
        (w, theory.renewal(theory.chain_reach(pos.beta, k, n), n))
        for w, pos in texts_and_positions(P_TABLE, Q_TABLE, n + k, n, 1)
    )
    if k >= 2:
        assert abs(approx.tokens - exact.tokens) > 1e-4


def test_two_level_chain_with_per_position_alphas():
    """One step of a 2-chain: E[A] = beta_1 + sum_x min(p_1, q_1)(x) beta_2(x) by
    enumeration; with position-independent distributions this is the per-position
    product beta_1 + beta_1 beta_2 (and the 1 - TV renewal is then exact)."""
    exact = enumerate_chain(P_TABLE, Q_TABLE, 2, 1)
    b = [sum(min(pp, qq) for pp, qq in zip(P_TABLE[c], Q_TABLE[c])) for c in range(V)]
    m1 = [min(P_TABLE[START][x], Q_TABLE[START][x]) for x in range(V)]
    assert exact.tokens - exact.steps == pytest.approx(b[START] + sum(m1[x] * b[x] for x in range(V)))
    # position-independent: every row the same -> the product of the two alphas
    p_row, q_row = P_TABLE[0], Q_TABLE[0]
    flat_p, flat_q = [p_row] * V, [q_row] * V
    beta = sum(min(a, c) for a, c in zip(p_row, q_row))
    exact = enumerate_chain(flat_p, flat_q, 2, 1)
    assert exact.tokens - exact.steps == pytest.approx(beta + beta * beta)
    pred = expected(
        (w, theory.renewal(theory.chain_reach(pos.beta, 2, 1), 1))
        for w, pos in texts_and_positions(flat_p, flat_q, 2, 1, 1)
    )
    assert pred.tokens - pred.steps == pytest.approx(beta + beta * beta)


@pytest.mark.parametrize("choices", [[[0], [1], [0, 0]], [[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0]]])
@pytest.mark.parametrize("n", [1, 3])
def test_tree_positional_prediction_equals_enumeration(choices, n):
    tree = static_tree(choices)
    exact = enumerate_tree(P_TABLE, Q_TABLE, tree, n)
    pred = expected(
        (w, theory.renewal(theory.tree_reach(pos.ranks, tree, n), n))
        for w, pos in texts_and_positions(P_TABLE, Q_TABLE, n + tree.max_depth, n, tree.max_rank())
    )
    assert pred.steps == pytest.approx(exact.steps, abs=1e-12)
    assert pred.tokens == pytest.approx(exact.tokens, abs=1e-12)
    assert pred.reached == pytest.approx(exact.reached, abs=1e-12)
    if n == 1:  # one step: E[A] = sum over nodes of the product of p along the path
        ranked = {c: sorted(range(V), key=lambda x: -Q_TABLE[c][x]) for c in range(V)}
        tok, prob = {0: START}, {0: 1.0}
        for i in range(1, tree.num_nodes):
            par = tree.parents[i]
            tok[i] = ranked[tok[par]][tree.ranks[i]]
            prob[i] = prob[par] * P_TABLE[tok[par]][tok[i]]
        assert exact.tokens - 1.0 == pytest.approx(sum(prob[i] for i in range(1, tree.num_nodes)))


def test_one_step_expectations_match_rejection_sample():
    """Monte Carlo with the real op: 40 000 rows of one step (a 2-chain with draft
    probabilities; the 3-node tree with the deterministic rule), mean accepted drafts
    within 6 standard errors of the enumerated expectation."""
    rows = 40_000
    g = torch.Generator().manual_seed(1234)
    p_t, q_t = torch.tensor(P_TABLE), torch.tensor(Q_TABLE)
    seeds = torch.arange(rows, dtype=torch.int64) * 7919 + 11
    offset = torch.zeros(rows, dtype=torch.int64)

    d1 = torch.multinomial(q_t[START].expand(rows, V), 1, generator=g)[:, 0]
    d2 = torch.multinomial(q_t[d1], 1, generator=g)[:, 0]
    tokens = torch.stack([torch.full((rows,), START), d1, d2], 1)
    parents = torch.tensor([-1, 0, 1], dtype=torch.int32).expand(rows, 3).contiguous()
    draft_probs = torch.stack([q_t[START].expand(rows, V), q_t[d1], torch.zeros(rows, V)], 1).contiguous()
    target_probs = torch.stack([p_t[START].expand(rows, V), p_t[d1], p_t[d2]], 1).contiguous()
    _, n_acc, _ = ops.rejection_sample(tokens, parents, draft_probs, target_probs, seeds, offset)
    got = (n_acc - 1).double()
    exact = enumerate_chain(P_TABLE, Q_TABLE, 2, 1)
    se = got.std().item() / math.sqrt(rows)
    assert abs(got.mean().item() - (exact.tokens - 1)) < 6 * se

    tree = static_tree([[0], [1], [0, 0]])
    ranked = {c: sorted(range(V), key=lambda x: -Q_TABLE[c][x]) for c in range(V)}
    t1, t2 = ranked[START][0], ranked[START][1]
    t3 = ranked[t1][0]
    tokens = torch.tensor([START, t1, t2, t3]).expand(rows, 4).contiguous()
    parents = torch.tensor(tree.parents, dtype=torch.int32).expand(rows, 4).contiguous()
    target_probs = torch.stack([p_t[START], p_t[t1], p_t[t2], p_t[t3]]).expand(rows, 4, V).contiguous()
    _, n_acc, _ = ops.rejection_sample(tokens, parents, None, target_probs, seeds, offset)
    got = (n_acc - 1).double()
    exact = enumerate_tree(P_TABLE, Q_TABLE, tree, 1)
    se = got.std().item() / math.sqrt(rows)
    assert abs(got.mean().item() - (exact.tokens - 1)) < 6 * se


# ---------------------------------------------------------------------------
# 4. The analyze command.
# ---------------------------------------------------------------------------


def test_analyze_help_describes_every_flag_with_its_default():
    import argparse

    from specdec_cuda import cli

    from conftest import run_cli, shows_default

    proc = run_cli("analyze", "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "total-variation" in text and "speculative" in text.lower()
    p = cli._Parser(prog="x").add_subparsers().add_parser("analyze")
    theory.add_analyze_args(p)
    flags = [a for a in p._actions if a.option_strings and a.dest != "help"]
    for want in ("temperature", "k_max", "cost_ratio", "prompts", "max_new_tokens", "out", "device", "dtype"):
        assert any(a.dest == want for a in flags), want
    for action in flags:
        assert action.help and action.help != argparse.SUPPRESS, f"--{action.dest} has no help"
        assert f"--{action.dest.replace('_', '-')}" in text
        if action.default is not None:
            assert shows_default(text, action.default), (action.dest, action.default)
    assert "default: measured" in text  # --cost-ratio's default is described in words


@pytest.fixture(scope="module")
def hf_pairs(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from test_cli import make_tokenizer, save_pair

    root = tmp_path_factory.mktemp("analyze")
    target, draft = save_pair(root / "a", make_tokenizer(300))
    _, other = save_pair(root / "b", make_tokenizer(280, extra="zzzz qqqq wwww"))
    return target, draft, other


@pytest.mark.parametrize(
    "args,message",
    [
        (["--target", "{missing}"], "no such directory"),
        (["--target", "{target}", "--draft", "{other}"], "tokenizers differ"),
        (["--k-max", "0"], "--k-max must be >= 1"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
        (["--prompts", "0"], "--prompts must be >= 1"),
        (["--samples", "0"], "--samples must be >= 1"),
        (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
        (["--temperature", "nan"], "--temperature must be a finite number >= 0"),
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--top-k", "-2"], "--top-k must be >= 0"),
        (["--cost-ratio", "-0.5"], "--cost-ratio must be a finite number >= 0"),
        (["--tree", "[[0]"], "not a JSON choice list"),
        (["--tree", "[[1, 0]]"], "needs its parent"),
        (["--prompts-file", "{missing}"], "no such file"),
        (["--prompts-file", "{bad_json}"], "not JSON"),
        (["--prompts-file", "{not_list}"], "must be a non-empty JSON list"),
    ],
)
def test_analyze_errors_are_one_line(hf_pairs, tmp_path, args, message, capsys):
    from specdec_cuda import cli

    target, draft, other = hf_pairs
    (tmp_path / "bad.json").write_text("[1, 2")
    (tmp_path / "dict.json").write_text('{"a": "b"}')
    fill = dict(
        missing=str(tmp_path / "nope"),
        target=str(target),
        other=str(other),
        bad_json=str(tmp_path / "bad.json"),
        not_list=str(tmp_path / "dict.json"),
    )
    base = ["analyze", "--target", str(target), "--draft", str(draft), "--device", "cpu"]
    rc = cli.main([*base, *[a.format(**fill) for a in args]])
    assert rc == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0]


def test_analyze_usage_errors_exit_2_without_traceback():
    from conftest import run_cli

    for args in (["analyze", "--k-max", "two"], ["analyze", "--dtype", "float64"]):
        proc = run_cli(*args)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


def test_analyze_writes_table_json_and_plot(tmp_path, capsys):
    pytest.importorskip("transformers")
    pytest.importorskip("matplotlib")
    from specdec_cuda import cli

    out = tmp_path / "res"
    rc = cli.main(
        [
            "analyze",
            "--prompts",
            "1",
            "--max-new-tokens",
            "12",
            "--k-max",
            "2",
            "--samples",
            "1",
            "--tree",
            "[[0], [1], [0, 0]]",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    for needle in ("alpha = E[1 - TV]", "chain K=1", "chain K=2", "tree (4)", "best K", "measured"):
        assert needle in text, needle
    data = json.loads((out / "analyze.json").read_text())
    assert set(data["chain"]) == {"1", "2"}
    for k in ("1", "2"):
        row = data["chain"][k]
        assert row["measured"]["steps"] > 0 and 1.0 <= row["measured"]["tau"] <= int(k) + 1
        for pred in ("iid", "positional_tv", "positional"):
            assert 1.0 <= row[pred]["tau"] <= int(k) + 1
    assert 0.0 <= data["alpha"] <= 1.0 and data["cost"]["c_measured"] > 0
    assert (out / "analyze.png").stat().st_size > 1000
    assert (out / "analyze.txt").read_text().strip() == text.split("\nresults:")[0].strip()


# ---------------------------------------------------------------------------
# 3. The bundled pair: the prediction's error against the real loop.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled():
    """The bundled target/draft pair (float32, CPU) and 2 prompts of its held-out file."""
    pytest.importorskip("transformers")
    assert (ASSETS / "target" / "config.json").is_file(), "the bundled models are part of the repository"
    from specdec_cuda.demo import load_checkpoint
    from specdec_cuda.models import as_model

    cpu = torch.device("cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steady on a shared machine
    target, tok = load_checkpoint(ASSETS / "target", "target", cpu, torch.float32)
    draft, _ = load_checkpoint(ASSETS / "draft", "draft", cpu, torch.float32)
    texts = json.loads((ASSETS / "prompts.json").read_text())[:2]
    prompts = [tok(t, return_tensors="pt").input_ids[0] for t in texts]
    yield as_model(target, role="target"), as_model(draft, role="draft model"), prompts
    torch.set_num_threads(threads)


def _pooled(texts, reach) -> theory.RenewalSums:
    total = theory.RenewalSums()
    for x in texts:
        total = total + theory.renewal(reach(x), x.n_starts)
    return total


def test_bundled_pair_greedy_prediction_is_exact(bundled):
    """At T = 0 the positional prediction on the target's greedy text is the loop's
    own count: tau(K) and the acceptance by position of every chain and of a tree
    agree with the loop to 1e-9 (they are the same steps, barring argmax near-ties
    between the teacher-forced and the cached forwards, which these prompts do not
    hit).  Power: two deliberately wrong predictions from the same positions, an
    off-by-one (the j-th draft judged at position t + j instead of t + j - 1) and
    start positions weighted uniformly instead of by the renewal, miss the loop by
    more than 1e-3."""
    target, draft, prompts = bundled
    res = theory.analyze(
        target,
        draft,
        prompts,
        temperature=0.0,
        ks=(1, 4),
        tree_choices=[[0], [1], [0, 0]],
        max_new_tokens=32,
        samples=1,
    )
    for k, v in res.chain.items():
        meas = v["measured"]
        assert meas.steps > 0
        assert v["positional"].tau == pytest.approx(meas.tau, abs=1e-9), k
        assert v["positional"].acceptance_by_position == pytest.approx(meas.acceptance_by_position, abs=1e-9)
        assert v["positional_tv"].tau == pytest.approx(meas.tau, abs=1e-9)  # r_t = 1 - TV_t at T = 0
        shifted = _pooled(res.texts, lambda x, k=k: theory.chain_reach(x.realized[1:], k, x.n_starts))
        assert abs(shifted.tau - meas.tau) > 1e-3, k
        if k > 1:
            uniform = torch.cat([theory.chain_reach(x.realized, k, x.n_starts).sum(1) for x in res.texts])
            assert abs(uniform.mean().item() - meas.tau) > 1e-3
    tree = res.tree
    assert tree["positional"].tau == pytest.approx(tree["measured"].tau, abs=1e-9)
    assert tree["positional"].acceptance_by_position == pytest.approx(
        tree["measured"].acceptance_by_position, abs=1e-9
    )


def test_ratio_se_against_simulation():
    """The delta-method standard error of a pooled ratio against the spread of the
    ratio over many simulated repetitions (within 15 %), and 0 for fewer than 2 units."""
    g = torch.Generator().manual_seed(7)
    reps, n = 2000, 40
    den = torch.randint(5, 30, (reps, n), generator=g).double()
    num = den * 2.5 + torch.randn(reps, n, generator=g, dtype=torch.float64) * 3.0
    ratios = num.sum(1) / den.sum(1)
    se = torch.tensor([theory.ratio_se(a.tolist(), b.tolist()) for a, b in zip(num[:200], den[:200])])
    assert se.mean().item() == pytest.approx(ratios.std().item(), rel=0.15)
    assert theory.ratio_se([3.0], [2.0]) == 0.0
    with pytest.raises(ValueError, match="ratio_se"):
        theory.ratio_se([1.0, 2.0], [1.0])


def test_bundled_pair_sampled_prediction_within_its_error(bundled):
    """At T = 1 the positional prediction (exact in expectation, see the module
    docstring) and the loop's tau are two independent estimates of one number, from
    different seeds: their difference must be within 4 combined standard errors
    (z, :meth:`theory.Analysis.z_scores`; about 6e-5 two-sided under normality; the
    errors also share the prompts, so the bound is conservative), and within 15 %
    relative.  Power: a deliberately wrong theory, the i.i.d. sum with the
    acceptance of the draft's argmax token E[p_t(d_t^(0))] (right for argmax drafts,
    wrong for the sampled drafts the chain verifies), is more than 4 standard errors
    away."""
    target, draft, prompts = bundled
    res = theory.analyze(
        target, draft, prompts, temperature=1.0, ks=(2, 4), tree_choices=None, max_new_tokens=32, samples=3
    )
    for k, z in res.z_scores().items():
        v = res.chain[k]
        se = math.hypot(v["measured"].tau_se, v["positional"].tau_se)
        assert se > 0 and len(v["measured"].runs) == 6
        assert abs(z) < 4.0, (k, z, v["positional"].tau, v["measured"].tau)
        assert abs(res.relative_errors("positional")[k]) < 0.15
        wrong = theory.tau_iid(res.rank_acceptance[0], k)
        assert abs(wrong - v["measured"].tau) > 4.0 * se, (k, wrong, v["measured"].tau, se)
