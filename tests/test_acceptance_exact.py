"""rejection_sample's rules, checked exactly by enumeration (no sampling).

The rules are those of ``specdec_cuda.reference.verify_row``, which the op matches bit
for bit (test_acceptance.py).  Here its randomness is an enumerator: every test
"u * den < num" branches into pass / fail with probabilities ratio(num, den) and
1 - that, every final draw into each token with its normalised weight, and the rule is
re-run along every branch.  The draft trees are enumerated too, under the drafting
scheme (children drawn independently from q, or without replacement in index order,
fillers once q has no mass left, or fixed deterministic tokens).  So every probability
below is exact up to float64 rounding.

1. Lossless: the first m emitted tokens (accepted drafts, then next_token, then the
   target's own continuation for rows that emitted fewer) have exactly the target's
   distribution, for m = 1, 2 and depth + 1, for every method x siblings rule with its
   drafting scheme, on chains and trees, for target/draft "language models" whose
   conditionals depend on the whole prefix (dense, with zeros and one-hots, draft =
   target at some prefixes, sparse drafts that siblings drawn without replacement
   exhaust).  Tolerance 1e-12 (the worst error is printed; it is ~1e-15).
   Power: the mismatched pairs (siblings drawn without replacement verified as iid
   and the reverse) are lossy by far more than the tolerance.
2. Forms: the closed form the op keeps per node (A, B, Z, P, M and excluded tokens)
   has the same output distribution as the vector form of the rule written here
   independently (residual vectors, draft vectors); block equals traversal on
   chains; with deterministic drafts, traversal's rule (S = one-hot of each child's
   token) has exactly the distribution of the deterministic rule every method runs.
3. Gain: the expected number of accepted drafts per call of block (chains) and
   traversal (trees) is never below tokenwise's (RSD's for siblings drawn without
   replacement) on random instances; chains also against the closed forms
   E_block = sum_i sum_{x^i} q(x^i) P_i(x^i),
   E_tokenwise = sum_i sum_{x^i} prod_j min(q_{j-1}(x_j), p_{j-1}(x_j)).
   The mean gain is printed (run with -s).
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict

import pytest

from specdec_cuda import reference

TOL = 1e-12

CHAINS = {"chain K=2": [-1, 0, 1], "chain K=3": [-1, 0, 1, 2]}
TREES = {  # exact checks cost |V|^(N-1) draft trees: small trees, V = 3
    "root:2, each:1": [-1, 0, 0, 1, 2],
    "root:2, first:2": [-1, 0, 0, 1, 1],
    "root:3": [-1, 0, 0, 0],
    "DFS-numbered": [-1, 0, 1, 0, 3],
}


# ---------------------------------------------------------------------------
# Enumerating the rule's randomness.
# ---------------------------------------------------------------------------


def _ratio(num: float, den: float) -> float:
    if den > 0.0:
        return min(1.0, max(0.0, num / den))
    return 1.0 if num > 0.0 else 0.0


class Enumerator:
    """verify_row's randomness following a list of forced choices (and recording new
    ones); also checks that every uniform index is used at most once, in [1, N]."""

    def __init__(self, stack: list, nodes: int):
        self.stack, self.pos, self.prob, self.nodes = stack, 0, 1.0, nodes
        self.used: set[int] = set()

    def _use(self, index: int) -> None:
        assert 1 <= index <= self.nodes and index not in self.used, (index, self.used)
        self.used.add(index)

    def _choose(self, options):
        if self.pos < len(self.stack):
            k, n = self.stack[self.pos]
            assert n == len(options), "the rule is not a function of its uniforms"
        else:
            self.stack.append([0, len(options)])
            k = 0
        self.pos += 1
        self.prob *= options[k][1]
        return options[k][0]

    def test(self, index: int, num: float, den: float) -> bool:
        self._use(index)
        pr = _ratio(num, den)
        return self._choose([(v, w) for v, w in ((True, pr), (False, 1.0 - pr)) if w > 0.0])

    def draw(self, index: int, weights, fallback) -> int:
        assert index == self.nodes
        self._use(index)
        w = weights if sum(weights) > 0.0 else fallback
        total = sum(w)
        return self._choose([(x, wx / total) for x, wx in enumerate(w) if wx > 0.0])


def outcomes(run, nodes: int):
    """[(probability, run(source))] over every branch of the rule's randomness."""
    out, stack = [], []
    while True:
        src = Enumerator(stack, nodes)
        result = run(src)
        out.append((src.prob, result))
        del stack[src.pos :]
        while stack and stack[-1][0] + 1 >= stack[-1][1]:
            stack.pop()
        if not stack:
            return out
        stack[-1][0] += 1


def distribution(run, nodes: int) -> dict:
    d = defaultdict(float)
    for pr, (path, nxt) in outcomes(run, nodes):
        d[(tuple(path), nxt)] += pr
    return d


def max_diff(a: dict, b: dict) -> float:
    return max(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


# ---------------------------------------------------------------------------
# Tiny language models: a target and a draft conditional for every prefix.
# ---------------------------------------------------------------------------


def rand_dist(rng: random.Random, vocab: int, kind: str) -> list[float]:
    if kind == "onehot":
        r = [0.0] * vocab
        r[rng.randrange(vocab)] = 1.0
        return r
    w = [rng.gammavariate(rng.choice([0.3, 0.8, 2.0]), 1.0) + 1e-3 for _ in range(vocab)]
    if kind == "sparse":
        keep = rng.sample(range(vocab), rng.randint(1, vocab - 1))
        w = [x if i in keep else 0.0 for i, x in enumerate(w)]
    t = sum(w)
    return [x / t for x in w]


class LM:
    """Lazily drawn conditionals target(prefix), draft(prefix) (prefix: a tuple of tokens)."""

    def __init__(self, vocab: int, seed: int, style: str):
        self.vocab, self.rng, self.style = vocab, random.Random(seed), style
        self.t: dict = {}
        self.d: dict = {}

    def _kind(self) -> str:
        if self.style == "dense":
            return "dense"
        return self.rng.choice(["dense", "dense", "sparse", "onehot"])

    def target(self, prefix: tuple) -> list[float]:
        if prefix not in self.t:
            self.t[prefix] = rand_dist(self.rng, self.vocab, self._kind())
        return self.t[prefix]

    def draft(self, prefix: tuple) -> list[float]:
        if prefix not in self.d:
            if self.style == "equal" and self.rng.random() < 0.5:
                self.d[prefix] = list(self.target(prefix))
            elif self.style == "sparse-draft":
                self.d[prefix] = rand_dist(self.rng, self.vocab, self.rng.choice(["sparse", "onehot"]))
            else:
                self.d[prefix] = rand_dist(self.rng, self.vocab, self._kind())
        return self.d[prefix]

    def joint(self, seq: tuple) -> float:
        pr = 1.0
        for j, z in enumerate(seq):
            pr *= self.target(seq[:j])[z]
        return pr


STYLES = ("dense", "mixed", "equal", "sparse-draft")


def models(vocab: int, seeds=(1, 2)):
    return [LM(vocab, 1000 * s + i, style) for s in seeds for i, style in enumerate(STYLES)]


def prefixes(parents: list[int], tokens: list[int]) -> list[tuple]:
    """Node i's prefix: the tokens on its path below the root."""
    out = [()]
    for i in range(1, len(parents)):
        out.append(out[parents[i]] + (tokens[i],))
    return out


def draft_trees(parents: list[int], lm: LM, scheme: str):
    """[(probability, tokens)] of every draft tree under the scheme ("iid", "wor");
    tokens[0] = 0 is the root (context)."""
    n, vocab = len(parents), lm.vocab
    out = []

    def rec(i: int, tokens: list[int], pr: float):
        if i == n:
            out.append((pr, list(tokens)))
            return
        pre = prefixes(parents[:i], tokens[:i])[parents[i]]
        q = list(lm.draft(pre))
        if scheme == "wor":
            earlier = [tokens[j] for j in range(1, i) if parents[j] == parents[i]]
            for x in earlier:
                q[x] = 0.0
            mass = sum(q)
            if not mass > 0.0:  # fillers: the smallest unused token
                rec(i + 1, tokens + [next(y for y in range(vocab) if y not in earlier)], pr)
                return
            q = [x / mass for x in q]
        for x in range(vocab):
            if q[x] > 0.0:
                rec(i + 1, tokens + [x], pr * q[x])

    rec(1, [0], 1.0)
    return out


def rows(parents: list[int], tokens: list[int], lm: LM):
    pre = prefixes(parents, tokens)
    return [list(lm.target(x)) for x in pre], [list(lm.draft(x)) for x in pre]


def depth(parents: list[int]) -> int:
    d = [0] * len(parents)
    for i in range(1, len(parents)):
        d[i] = d[parents[i]] + 1
    return max(d)


def lossless_error(parents, lm: LM, scheme: str, method: str, siblings: str, lengths) -> float:
    """max over m in `lengths` and z in V^m of |P(first m emitted = z) - target(z)|."""
    n, vocab = len(parents), lm.vocab
    emitted = defaultdict(float)  # emitted token tuples -> probability
    if scheme == "det":
        trees = [(1.0, [0] + [random.Random(7 * n + i).randrange(vocab) for i in range(1, n)])]
    else:
        trees = draft_trees(parents, lm, scheme)
    for pt, tokens in trees:
        p, q = rows(parents, tokens, lm)
        q = None if scheme == "det" else q

        def run(src, tokens=tokens, p=p, q=q):
            return reference.verify_row(tokens, parents, p, q, src, method=method, siblings=siblings)

        for pr, (path, nxt) in outcomes(run, n):
            emitted[tuple(tokens[c] for c in path[1:]) + (nxt,)] += pt * pr
    worst = 0.0
    for m in lengths:
        got = defaultdict(float)
        for e, pr in emitted.items():
            if len(e) >= m:
                got[e[:m]] += pr
            else:  # the rest comes from later steps, lossless by induction: the target
                for tail in itertools.product(range(vocab), repeat=m - len(e)):
                    full = e + tail
                    cont = 1.0
                    for j in range(len(e), m):
                        cont *= lm.target(full[:j])[full[j]]
                    got[full] += pr * cont
        for z in itertools.product(range(vocab), repeat=m):
            worst = max(worst, abs(got.get(z, 0.0) - lm.joint(z)))
    return worst


# ---------------------------------------------------------------------------
# 1. Lossless.
# ---------------------------------------------------------------------------

LOSSLESS = []  # (shape name, parents, drafting scheme, method, siblings)
for _name, _par in CHAINS.items():
    LOSSLESS += [
        (_name, _par, "iid", "tokenwise", "iid"),
        (_name, _par, "iid", "block", "iid"),
        (_name, _par, "iid", "traversal", "iid"),
        (_name, _par, "wor", "block", "without_replacement"),
        (_name, _par, "det", "block", "iid"),
    ]
for _name, _par in TREES.items():
    LOSSLESS += [
        (_name, _par, "iid", "tokenwise", "iid"),
        (_name, _par, "iid", "traversal", "iid"),
        (_name, _par, "wor", "tokenwise", "without_replacement"),
        (_name, _par, "wor", "traversal", "without_replacement"),
        (_name, _par, "det", "traversal", "without_replacement"),
    ]


@pytest.mark.parametrize("name, parents, scheme, method, siblings", LOSSLESS)
def test_lossless_exactly(name, parents, scheme, method, siblings):
    vocab = 3
    lengths = sorted({1, 2, depth(parents) + 1})
    worst = max(lossless_error(parents, lm, scheme, method, siblings, lengths) for lm in models(vocab))
    print(f"\n{name}, drafts {scheme}, {method}/{siblings}: worst |P - target| = {worst:.2e}")
    assert worst < TOL


MISMATCHED = [  # drafted one way, verified as the other: lossy
    ("root:2, first:2", "wor", "tokenwise", "iid"),
    ("root:2, first:2", "wor", "traversal", "iid"),
    ("root:3", "iid", "tokenwise", "without_replacement"),
    ("root:3", "iid", "traversal", "without_replacement"),
]


@pytest.mark.parametrize("name, scheme, method, siblings", MISMATCHED)
def test_mismatched_siblings_rule_is_lossy(name, scheme, method, siblings):
    """The power of (1): the same check finds the wrong sibling rule."""
    parents = TREES[name]
    worst = max(lossless_error(parents, lm, scheme, method, siblings, [1, 2]) for lm in models(3))
    print(f"\n{name}, drafts {scheme} verified as {method}/{siblings}: worst |P - target| = {worst:.3f}")
    assert worst > 1e-3


# ---------------------------------------------------------------------------
# 2. The closed form against the vector form; deterministic drafts.
# ---------------------------------------------------------------------------


def traversal_vector(tokens, parents, p, q, src, mode: str):
    """Traversal verification with residual and draft vectors (mode "iid", "wor" or
    "det": S = one-hot of each child's token).  Node u holds W_u (a distribution), the
    draft numerators S_u and the weight P_u; entering child c (token x) sets
    P_c = min(1, P_u W_u(x) / S_u(x)); rejecting it replaces (P_u W_u, 1 - P_u) by its
    recursive-rejection residual against S_u: W_u <- normalise(max(P_u W_u - S_u, 0)),
    P_u <- rho / (rho + 1 - P_u); without replacement x then leaves S_u."""
    n, vocab = len(tokens), len(p[0])
    kids = [[c for c in range(n) if parents[c] == u] for u in range(n)]
    W, S, P = [None] * n, [None] * n, [0.0] * n

    def proposal(u: int, x: int) -> list[float]:
        m = sum(S[u]) if mode != "det" else 0.0
        if mode == "det" or not m > 0.0:
            return [1.0 if y == x else 0.0 for y in range(vocab)]
        return list(S[u]) if mode == "iid" else [s / m for s in S[u]]

    def visit(u: int):
        for c in kids[u]:
            x = tokens[c]
            s = proposal(u, x)
            W[c], S[c], P[c] = (
                list(p[c]),
                (list(q[c]) if q is not None else None),
                _ratio(P[u] * W[u][x], s[x]),
            )
            hit = visit(c)
            if hit is not None:
                return hit
            r = [max(P[u] * W[u][y] - s[y], 0.0) for y in range(vocab)]
            rho = sum(r)
            if mode == "wor":
                S[u][x] = 0.0
            if rho > 0.0:
                P[u], W[u] = rho / ((1.0 - P[u]) + rho), [v / rho for v in r]
            elif P[u] >= 1.0:
                W[u] = list(p[u])
            else:
                P[u] = 0.0
        if u == 0:
            return 0
        return u if src.test(u, P[u], 1.0) else None

    W[0], S[0], P[0] = list(p[0]), (list(q[0]) if q is not None else None), 1.0
    acc = visit(0)
    path = [acc]
    while parents[path[-1]] >= 0:
        path.append(parents[path[-1]])
    path.reverse()
    return path, src.draw(n, W[acc] if kids[acc] else p[acc], p[acc])


def _random_instances(count: int, vocab: int, shapes: dict, scheme: str, seed: int):
    """(parents, tokens drawn under the scheme, p, q) with random rows (dense, sparse,
    one-hot; q equal to p in some rows)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        parents = list(shapes.values())[i % len(shapes)]
        lm = LM(vocab, rng.randrange(10**9), rng.choice(STYLES))
        trees = [t for _, t in draft_trees(parents, lm, "wor" if scheme == "det" else scheme)]
        tokens = rng.choice(trees)
        if scheme == "det" and len(parents) > 2:  # repeated sibling tokens too
            tokens[2] = tokens[1] if rng.random() < 0.5 else tokens[2]
        p, q = rows(parents, tokens, lm)
        out.append((parents, tokens, p, q))
    return out


def reference_distribution(tokens, parents, p, q, **rule) -> dict:
    return distribution(lambda s: reference.verify_row(tokens, parents, p, q, s, **rule), len(parents))


def vector_distribution(tokens, parents, p, q, mode: str) -> dict:
    return distribution(lambda s: traversal_vector(tokens, parents, p, q, s, mode), len(parents))


@pytest.mark.parametrize("siblings", ["iid", "without_replacement"])
def test_closed_form_equals_vector_form(siblings):
    mode = "iid" if siblings == "iid" else "wor"
    worst = 0.0
    for parents, tokens, p, q in _random_instances(300, 4, {**TREES, **CHAINS}, mode, seed=11):
        ref = reference_distribution(tokens, parents, p, q, method="traversal", siblings=siblings)
        worst = max(worst, max_diff(ref, vector_distribution(tokens, parents, p, q, mode)))
    print(f"\ntraversal {siblings}: closed form vs vector form, worst difference {worst:.2e}")
    assert worst < TOL


def test_block_equals_traversal_on_chains():
    worst = 0.0
    for parents, tokens, p, q in _random_instances(300, 4, CHAINS, "iid", seed=12):
        block = reference_distribution(tokens, parents, p, q, method="block")
        worst = max(worst, max_diff(block, vector_distribution(tokens, parents, p, q, "iid")))
    assert worst < TOL


def test_deterministic_drafts_traversal_is_the_deterministic_rule():
    """With draft_probs=None every method runs the deterministic rule; traversal's own
    rule for deterministic drafts gives exactly the same distribution of (path, next)."""
    worst = 0.0
    for parents, tokens, p, _ in _random_instances(300, 4, {**TREES, **CHAINS}, "det", seed=13):
        det = reference_distribution(tokens, parents, p, None, method="traversal")
        worst = max(worst, max_diff(det, vector_distribution(tokens, parents, p, None, "det")))
    print(f"\ndeterministic drafts: traversal (S = one-hot) vs the deterministic rule, worst {worst:.2e}")
    assert worst < TOL


# ---------------------------------------------------------------------------
# 3. The gain: expected accepted drafts per call.
# ---------------------------------------------------------------------------


def expected_accepted(parents, lm: LM, scheme: str, method: str, siblings: str) -> float:
    n, total = len(parents), 0.0
    for pt, tokens in draft_trees(parents, lm, scheme):
        p, q = rows(parents, tokens, lm)

        def run(src, tokens=tokens, p=p, q=q):
            return reference.verify_row(tokens, parents, p, q, src, method=method, siblings=siblings)

        total += pt * sum(pr * (len(path) - 1) for pr, (path, _) in outcomes(run, n))
    return total


def chain_closed_forms(k: int, lm: LM) -> tuple[float, float]:
    """(E_tokenwise, E_block) of a chain of k drafts (RULES: the closed forms)."""
    e_tok = e_block = 0.0
    for i in range(1, k + 1):
        for xs in itertools.product(range(lm.vocab), repeat=i):
            qx, tok, weight = 1.0, 1.0, 1.0
            for j in range(1, i + 1):
                pj, qj = lm.target(xs[: j - 1])[xs[j - 1]], lm.draft(xs[: j - 1])[xs[j - 1]]
                qx *= qj
                tok *= min(qj, pj)
                weight = _ratio(weight * pj, qj)
            e_tok += tok
            e_block += qx * weight
    return e_tok, e_block


def _gain_report(label: str, pairs: list[tuple[float, float]]) -> str:
    gains = [b - a for a, b in pairs]
    rel = [g / a for (a, _), g in zip(pairs, gains) if a > 0]
    base = sum(a for a, _ in pairs) / len(pairs)
    mean_gain = sum(gains) / len(gains)
    text = (
        f"{label}: {len(pairs)} instances, mean E[accepted] {base:.4f} -> {base + mean_gain:.4f}; "
        f"gain mean {sum(gains) / len(gains):.4f} (relative {100 * sum(rel) / max(len(rel), 1):.1f}%), "
        f"min {min(gains):.2e}, max {max(gains):.4f}"
    )
    print("\n" + text)
    return text


@pytest.mark.parametrize("k, vocab, count", [(3, 4, 200), (4, 3, 100)])
def test_block_gain_on_chains(k, vocab, count, record_property):
    pairs, worst_formula = [], 0.0
    rng = random.Random(100 * k + vocab)
    for i in range(count):
        lm = LM(vocab, rng.randrange(10**9), STYLES[i % len(STYLES)])
        e_tok, e_block = chain_closed_forms(k, lm)
        assert e_block >= e_tok - TOL, (i, e_tok, e_block)
        pairs.append((e_tok, e_block))
        if i < 20:  # the reference's rules against the closed forms, by enumeration
            parents = list(range(-1, k))
            worst_formula = max(
                worst_formula,
                abs(expected_accepted(parents, lm, "iid", "tokenwise", "iid") - e_tok),
                abs(expected_accepted(parents, lm, "iid", "block", "iid") - e_block),
            )
    record_property("gain", _gain_report(f"block vs tokenwise, chain K={k}, V={vocab}", pairs))
    assert worst_formula < TOL
    assert sum(b - a for a, b in pairs) > 0.01 * count  # a real gain, not equality


GAIN_TREES = {**TREES, "root:2, each:2": [-1, 0, 0, 1, 1, 2, 2]}


@pytest.mark.parametrize("scheme", ["iid", "wor"])
@pytest.mark.parametrize("name", ["root:2, first:2", "DFS-numbered", "root:2, each:2", "root:3"])
def test_traversal_gain_on_trees(name, scheme, record_property):
    """Never below tokenwise; a real gain on trees deeper than one level (on a star,
    depth 1, the two are equal in expectation)."""
    parents, vocab = GAIN_TREES[name], 3
    siblings = "iid" if scheme == "iid" else "without_replacement"
    rng = random.Random(sum(map(ord, name + scheme)))
    pairs = []
    for i in range(20 if len(parents) > 5 else 60):
        lm = LM(vocab, rng.randrange(10**9), STYLES[i % len(STYLES)])
        e_tok = expected_accepted(parents, lm, scheme, "tokenwise", siblings)
        e_trav = expected_accepted(parents, lm, scheme, "traversal", siblings)
        assert e_trav >= e_tok - TOL, (i, e_tok, e_trav)
        pairs.append((e_tok, e_trav))
    base = "tokenwise" if scheme == "iid" else "RSD (tokenwise, without replacement)"
    record_property("gain", _gain_report(f"traversal vs {base}, tree {name}, drafts {scheme}", pairs))
    if depth(parents) == 1:
        assert max(abs(b - a) for a, b in pairs) < TOL
    else:
        assert sum(b - a for a, b in pairs) > 0.001 * len(pairs)
