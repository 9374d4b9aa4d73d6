"""rejection_sample is lossless: emitted tokens follow the target model, statistically.

The "models" are Markov chains over a vocabulary of V = 6 tokens: the target's
next-token distribution P[prev] and a different draft distribution Q[prev],
each from fixed logits through the one transform both sides use
(sampling_probs: temperature, top-k, top-p).  Many independent rows (distinct
Philox seeds) each run speculative steps from a random root token; the emitted
sequences are compared with P by chi-square goodness-of-fit tests:

  (a) first token      x1 ~ P[root]                       groups: root
  (b) first two tokens (x1, x2) ~ P[root](x1) P[x1](x2)   groups: root
  (c) transitions      x_j ~ P[x_{j-1}], j = 1..4         groups: (j, x_{j-1})

Cells with an expected count below 5 are merged (within a group); a token in a
cell of expected probability exactly 0 fails outright.  The p-value is the
chi-square survival function, computed as the regularised upper incomplete gamma
function Q(df/2, x/2) (torch.special.gammaincc; scipy is not a dependency).

False-alarm rate: every assertion "p-value > ALPHA" uses ALPHA = 1e-6, so a
correct implementation fails one such assertion with probability 1e-6 (the
chi-square approximation aside; counts are large).  Each rejection_sample case
and each control makes three (a, b, c): 24 assertions on CPU (42 with CUDA), so
a full run of this file raises a false alarm with probability below 5e-5.

Power: the same statistic (c) with the same number of rows must reject
(p < ALPHA) deliberately wrong rules, implemented below in plain torch for the
chain case; a torch implementation of the correct rule is the control that
must pass, so that the harness itself is tested too.

Run with -s to see every statistic.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from specdec_cuda import ops

from conftest import ALL_DEVICES

ALPHA = 1e-6
V = 6
ROWS_PER_CALL = 50_000
CALLS = 4  # 200_000 rows per test
M = 4  # emitted tokens examined per row (continuing with further steps where needed)
K_CHAIN = 3

CONFIGS = {
    "T1": dict(temperature=1.0, top_k=0, top_p=1.0),
    "T0.7-k4-p0.9": dict(temperature=0.7, top_k=4, top_p=0.9),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Single-threaded CPU work: these are many small ops, and on a 2-core machine shared
    with other jobs, OpenMP's multi-threaded regions run twice as slow as one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------
# Chi-square goodness of fit.
# ---------------------------------------------------------------------------


def chi2_sf(stat: float, df: int) -> float:
    """P(chi2_df >= stat) = Q(df / 2, stat / 2), the regularised upper incomplete gamma."""
    if df <= 0:
        return 1.0 if stat == 0.0 else 0.0
    if stat == float("inf"):
        return 0.0
    return float(
        torch.special.gammaincc(
            torch.tensor(df / 2.0, dtype=torch.float64), torch.tensor(stat / 2.0, dtype=torch.float64)
        )
    )


@dataclasses.dataclass
class Chi2:
    stat: float
    df: int
    p: float
    n: int
    forbidden: int  # observations in cells of probability 0

    def __str__(self) -> str:
        extra = f", {self.forbidden} in zero-probability cells" if self.forbidden else ""
        return f"chi2 = {self.stat:.1f}, df = {self.df}, p = {self.p:.3g} (n = {self.n}{extra})"


def grouped_chi2(observed: torch.Tensor, probs: torch.Tensor) -> Chi2:
    """Independent multinomials: group g has counts observed[g] and cell probabilities probs[g].

    Within each group the cells are sorted by expected count and the smallest are
    pooled until every pooled cell expects >= 5; df = sum over groups of (cells - 1).
    """
    observed = observed.double()
    probs = probs.double()
    probs = probs / probs.sum(-1, keepdim=True).clamp_min(1e-300)
    stat, df, n_total, forbidden = 0.0, 0, 0, 0
    for o, pr in zip(observed, probs):
        n = float(o.sum())
        n_total += int(n)
        if n == 0:
            continue
        zero = pr == 0
        forbidden += int(o[zero].sum())
        e = (n * pr[~zero]).tolist()
        oo = o[~zero].tolist()
        cells, acc_o, acc_e = [], 0.0, 0.0
        for ei, oi in sorted(zip(e, oo)):
            acc_o, acc_e = acc_o + oi, acc_e + ei
            if acc_e >= 5.0:
                cells.append([acc_o, acc_e])
                acc_o, acc_e = 0.0, 0.0
        if acc_e > 0.0:
            if cells:
                cells[-1][0] += acc_o
                cells[-1][1] += acc_e
            else:
                cells.append([acc_o, acc_e])
        stat += sum((co - ce) ** 2 / ce for co, ce in cells)
        df += len(cells) - 1
    if forbidden:
        stat = float("inf")
    return Chi2(stat, df, chi2_sf(stat, df), n_total, forbidden)


def test_chi2_sf_known_values():
    """Spot values of the chi-square survival function (closed forms for even df)."""
    import math

    for x in (0.5, 3.0, 10.0, 40.0):
        assert abs(chi2_sf(x, 2) - math.exp(-x / 2)) < 1e-12
        assert abs(chi2_sf(x, 4) - math.exp(-x / 2) * (1 + x / 2)) < 1e-12
    # The 1e-6 critical value of chi2 with 1 df is 23.9284 (P(|Z| > 4.8916) = 1e-6).
    assert abs(chi2_sf(23.9284, 1) - 1e-6) < 1e-9
    assert chi2_sf(0.0, 5) == 1.0 and chi2_sf(float("inf"), 5) == 0.0


# ---------------------------------------------------------------------------
# The models.
# ---------------------------------------------------------------------------


def transform(logits: torch.Tensor, cfg: dict, name: str) -> torch.Tensor:
    """The sampling_probs op over the V x V table: both models go through it."""
    t = torch.full((V,), cfg["temperature"], dtype=torch.float32)
    k = torch.full((V,), cfg["top_k"], dtype=torch.int32)
    p = torch.full((V,), cfg["top_p"], dtype=torch.float32)
    return ops.sampling_probs(logits, t, k, p).float().contiguous()


@dataclasses.dataclass
class Model:
    P: torch.Tensor  # float32 [V, V]: target next-token distribution after token `prev`
    Q: torch.Tensor  # float32 [V, V]: draft
    P64: torch.Tensor
    Q64: torch.Tensor


def make_model(config: str) -> Model:
    g = torch.Generator().manual_seed(20240611)  # one fixed pair of models
    lp = torch.randn(V, V, generator=g) * 1.5
    lq = lp + torch.randn(V, V, generator=g) * 1.2  # related to the target, but different
    P = transform(lp, CONFIGS[config], config)
    Q = transform(lq, CONFIGS[config], config)
    norm = lambda x: x.double() / x.double().sum(-1, keepdim=True)  # noqa: E731
    return Model(P, Q, norm(P), norm(Q))


def sample_rows(w: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One token per row of the float64 weights w [R, V] (inverse CDF, never a zero weight)."""
    cdf = w.double().cumsum(-1)
    u = torch.rand(w.shape[0], 1, generator=gen, dtype=torch.float64)
    return (cdf <= u * cdf[:, -1:]).sum(-1).clamp_max(w.shape[-1] - 1)


# ---------------------------------------------------------------------------
# Trees (tokens [R, N] int64, parents [N] int32) and their probabilities.
# ---------------------------------------------------------------------------

TREE_PARENTS = {
    "chain": [-1, 0, 1, 2],  # K = 3 drafts
    "stochastic_tree": [-1, 0, 0, 0, 1, 1, 2, 2, 3, 3],  # 3 children, 2 grandchildren each
    "deterministic_tree": [-1, 0, 0, 0, 1, 1, 2, 2, 3, 3],
}


def build_tree(kind: str, model: Model, roots: torch.Tensor, gen) -> torch.Tensor:
    parents = TREE_PARENTS[kind]
    tokens = torch.empty(roots.shape[0], len(parents), dtype=torch.int64)
    tokens[:, 0] = roots
    if kind == "deterministic_tree":
        # Distinct top tokens of the draft: top-3 after the root, top-2 after each child.
        tokens[:, 1:4] = torch.topk(model.Q64[roots], 3, dim=-1).indices
        for c in (1, 2, 3):
            tokens[:, 2 * c + 2 : 2 * c + 4] = torch.topk(model.Q64[tokens[:, c]], 2, dim=-1).indices
        return tokens
    # Drafts drawn independently from Q[token of the parent] (siblings are iid).
    for i in range(1, len(parents)):
        tokens[:, i] = sample_rows(model.Q64[tokens[:, parents[i]]], gen)
    return tokens


def emitted_of(tokens: torch.Tensor, verdict) -> tuple[torch.Tensor, torch.Tensor]:
    """Emitted tokens [R, N] (-1 padded) and their count: the accepted drafts
    (accept_nodes[1:num]) followed by next_token."""
    accept, num, nxt = (t.cpu() for t in verdict)
    rows, nodes = tokens.shape
    num = num.long()
    at = tokens.gather(1, accept.long().clamp_min(0))
    em = torch.full((rows, nodes), -1, dtype=torch.int64)
    em[:, : nodes - 1] = at[:, 1:]
    em[torch.arange(nodes)[None, :] >= num[:, None] - 1] = -1
    em[torch.arange(rows), num - 1] = nxt
    return em, num


def op_step(kind: str, model: Model, device: str):
    use_draft = kind != "deterministic_tree"
    parents_row = torch.tensor(TREE_PARENTS[kind], dtype=torch.int32)
    P, Q = model.P.to(device), model.Q.to(device)

    def step(roots, seeds, offsets, gen):
        tokens = build_tree(kind, model, roots, gen)
        t = tokens.to(device)
        parents = parents_row.expand(tokens.shape[0], -1).contiguous().to(device)
        verdict = ops.rejection_sample(
            t,
            parents,
            Q[t].contiguous() if use_draft else None,
            P[t].contiguous(),
            seeds.to(device),
            offsets.to(device),
        )
        return emitted_of(tokens, verdict)

    return step, len(TREE_PARENTS[kind])


def run_sequences(
    step, nodes: int, roots: torch.Tensor, seeds: torch.Tensor, base_offset: int, gen
) -> torch.Tensor:
    """The first M emitted tokens of every row, [R, M].

    A step emits between 1 and depth + 1 tokens.  Rows that have fewer than M
    continue with a fresh step whose root is their last emitted token (a newly
    drawn tree, the offset advanced by N + 1), exactly as a decoder would.  This
    is what makes the pair (b) and transition (c) tests unbiased: keeping only
    rows whose first step emitted two tokens would condition on acceptance (and
    the accepted x1 are skewed towards tokens the draft likes).  Losslessness
    says the whole emitted stream is a sample of the target chain, so the
    concatenation over steps must follow P at every position.
    """
    rows = roots.shape[0]
    out = torch.full((rows, M), -1, dtype=torch.int64)
    count = torch.zeros(rows, dtype=torch.int64)
    last = roots.clone()
    step_index = 0
    while True:
        need = torch.nonzero(count < M)[:, 0]
        if need.numel() == 0:
            return out
        offsets = torch.full((need.numel(),), base_offset + step_index * (nodes + 1), dtype=torch.int64)
        em, length = step(last[need], seeds[need], offsets, gen)
        for j in range(em.shape[1]):
            pos = count[need] + j
            ok = (j < length) & (pos < M)
            out[need[ok], pos[ok]] = em[ok, j]
        last[need] = em[torch.arange(need.numel()), length - 1]
        count[need] += length
        step_index += 1


@dataclasses.dataclass
class Counts:
    first: torch.Tensor  # [V roots, V]
    pair: torch.Tensor  # [V roots, V * V]
    trans: torch.Tensor  # [M * V (position, previous token), V]

    @classmethod
    def zeros(cls):
        z = lambda *s: torch.zeros(s, dtype=torch.int64)  # noqa: E731
        return cls(z(V, V), z(V, V * V), z(M * V, V))

    def add(self, roots: torch.Tensor, seq: torch.Tensor):
        assert (seq >= 0).all() and (seq < V).all()
        ones = torch.ones(roots.shape[0], dtype=torch.int64)
        self.first.view(-1).index_add_(0, roots * V + seq[:, 0], ones)
        self.pair.view(-1).index_add_(0, roots * V * V + seq[:, 0] * V + seq[:, 1], ones)
        prev = torch.cat([roots[:, None], seq[:, :-1]], 1)
        j = torch.arange(M)[None, :]
        self.trans.view(-1).index_add_(
            0, ((j * V + prev) * V + seq).view(-1), torch.ones(seq.numel(), dtype=torch.int64)
        )


def statistics(counts: Counts, P64: torch.Tensor) -> dict[str, Chi2]:
    pair_probs = (P64[:, :, None] * P64[None, :, :]).reshape(V, V * V)  # P[r](x1) P[x1](x2)
    return {
        "first": grouped_chi2(counts.first, P64),
        "pair": grouped_chi2(counts.pair, pair_probs),
        "transitions": grouped_chi2(counts.trans, P64.repeat(M, 1)),
    }


def collect(step, nodes: int, seed: int) -> Counts:
    """CALLS x ROWS_PER_CALL rows with distinct Philox seeds and uniform random roots."""
    gen = torch.Generator().manual_seed(seed)
    counts = Counts.zeros()
    seed_base = int(torch.randint(-(2**62), 2**62, (1,), generator=gen))
    base_offset = int(torch.randint(0, 2**40, (1,), generator=gen))
    for call in range(CALLS):
        roots = torch.randint(0, V, (ROWS_PER_CALL,), generator=gen)
        seeds = seed_base + call * ROWS_PER_CALL + torch.arange(ROWS_PER_CALL, dtype=torch.int64)
        seq = run_sequences(step, nodes, roots, seeds, base_offset, gen)
        counts.add(roots, seq)
    return counts


def report(label: str, stats: dict[str, Chi2]) -> str:
    lines = [f"{label}:"] + [f"    {name:12s} {s}" for name, s in stats.items()]
    text = "\n".join(lines)
    print("\n" + text)
    return text


# ---------------------------------------------------------------------------
# The op.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("kind", ["chain", "stochastic_tree", "deterministic_tree"])
def test_rejection_sample_is_lossless(device, kind, config, seed):
    model = make_model(config)
    step, nodes = op_step(kind, model, device)
    counts = collect(step, nodes, seed)
    stats = statistics(counts, model.P64)
    text = report(f"rejection_sample {kind} {config} on {device} (sampling_probs: the op)", stats)
    for name, s in stats.items():
        assert s.forbidden == 0, text
        assert s.p > ALPHA, f"{name}: {text}"


# ---------------------------------------------------------------------------
# Power: wrong rules, in plain torch, for the chain; the correct rule as control.
# ---------------------------------------------------------------------------

WRONG_RULES = {
    # p - q sums to zero, so "renormalised by its signed sum" is undefined; the unclipped
    # residual that is a distribution counts the negative part as mass: |p - q|.
    "residual |p - q| (no clipping)": dict(residual="abs"),
    # The correction drawn from the target itself (the residual forgotten altogether).
    "residual = target p": dict(residual="target"),
    "bonus from the draft": dict(bonus="draft"),
    "accept with min(1, q/p)": dict(accept="q/p"),
}


def torch_chain_step(model: Model, rule: dict):
    """One speculative step on a K_CHAIN chain, vectorised over rows, with torch.rand."""
    P64, Q64 = model.P64, model.Q64

    def step(roots, seeds, offsets, gen):
        rows = roots.shape[0]
        tokens = build_tree("chain", model, roots, gen)
        em = torch.full((rows, K_CHAIN + 1), -1, dtype=torch.int64)
        length = torch.zeros(rows, dtype=torch.int64)
        alive = torch.ones(rows, dtype=torch.bool)
        for i in range(1, K_CHAIN + 1):
            prev, x = tokens[:, i - 1], tokens[:, i]
            p, q = P64[prev], Q64[prev]
            px, qx = p.gather(1, x[:, None])[:, 0], q.gather(1, x[:, None])[:, 0]
            if rule.get("accept") == "q/p":
                ratio = torch.where(px > 0, qx / px.clamp_min(1e-300), torch.ones_like(px))
            else:
                ratio = px / qx  # qx > 0: x was drawn from q
            accepted = torch.rand(rows, generator=gen, dtype=torch.float64) < ratio.clamp_max(1.0)
            rejected = alive & ~accepted
            if rejected.any():
                pr, qr = p[rejected], q[rejected]
                if rule.get("residual") == "abs":
                    w = (pr - qr).abs()
                elif rule.get("residual") == "target":
                    w = pr
                else:
                    w = (pr - qr).clamp_min(0.0)
                w = torch.where(w.sum(-1, keepdim=True) > 0, w, pr)
                em[rejected, i - 1] = sample_rows(w, gen)
                length[rejected] = i
            keep = alive & accepted
            em[keep, i - 1] = x[keep]
            alive = keep
        bonus = Q64 if rule.get("bonus") == "draft" else P64
        em[alive, K_CHAIN] = sample_rows(bonus[tokens[alive, K_CHAIN]], gen)
        length[alive] = K_CHAIN + 1
        return em, length

    return step, K_CHAIN + 1


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_torch_correct_rule_passes(config, seed):
    """The control: the same harness around a torch implementation of the right rule."""
    model = make_model(config)
    step, nodes = torch_chain_step(model, {})
    stats = statistics(collect(step, nodes, seed), model.P64)
    text = report(f"torch correct rule, chain {config}", stats)
    for name, s in stats.items():
        assert s.p > ALPHA, f"{name}: {text}"


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("rule", list(WRONG_RULES))
def test_wrong_rule_is_detected(rule, config, seed):
    model = make_model(config)
    step, nodes = torch_chain_step(model, WRONG_RULES[rule])
    stats = statistics(collect(step, nodes, seed), model.P64)
    text = report(f"WRONG rule '{rule}', chain {config}", stats)
    assert stats["transitions"].p < ALPHA, text


def test_models_differ():
    """Sanity of the setup: the draft differs from the target, and the top-k/top-p
    configuration has zero-probability tokens on both sides."""
    for config in CONFIGS:
        m = make_model(config)
        tv = 0.5 * (m.P64 - m.Q64).abs().sum(-1)
        print(f"\n{config}: total variation P vs Q per previous token: {[round(float(x), 3) for x in tv]}")
        assert float(tv.min()) > 0.05
        if config != "T1":
            assert bool((m.P == 0).any()) and bool((m.Q == 0).any())
            assert bool(((m.P > 0) & (m.Q == 0)).any())  # target tokens the draft never proposes
            assert bool(((m.P == 0) & (m.Q > 0)).any())  # drafts the target forbids
