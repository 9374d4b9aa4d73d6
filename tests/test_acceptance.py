"""Acceptance ops (verify_greedy, rejection_sample, typical_accept); sampling_probs is in
test_sampling.py.

The verifiers must reproduce specdec_cuda.reference bit for bit (the three
outputs compared with torch.equal, the reference run on CPU).  Then the op
contract (opcheck, torch.compile, empty batches) and a table of bad inputs,
each raising a typed error that names the op and the argument.
"""

from __future__ import annotations

import pytest
import torch

from specdec_cuda import ops, reference

from conftest import ALL_DEVICES, INF, NAN, noncontig, on, poke_arg, random_parents, set_arg

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

TREES = ["chain", "star", "random"]
NODES = [1, 2, 9, 33]
VOCABS = [7, 50, 1000]
BATCHES = [1, 5]
TYPICAL_PARAMS = [(0.09, 0.3), (0.3, 0.5), (0.0, 0.0), (2.0, 0.9)]


# ---------------------------------------------------------------------------
# Random inputs.
# ---------------------------------------------------------------------------


def random_probs(
    gen: torch.Generator, batch: int, nodes: int, vocab: int, like: torch.Tensor | None = None
) -> torch.Tensor:
    """float32 [B, N, V] rows: softmax(randn * scale), scale ~ U[0.3, 3] per row; some rows
    one-hot, some with exact zeros; when `like` is given, some rows are copied from it
    (draft == target: the residual has no mass and the kernels fall back to the target)."""
    scale = torch.empty(batch, nodes, 1, dtype=torch.float64).uniform_(0.3, 3.0, generator=gen)
    p = torch.softmax(torch.randn(batch, nodes, vocab, generator=gen, dtype=torch.float64) * scale, -1)
    kind = torch.randint(0, 8, (batch, nodes), generator=gen)
    onehot = torch.zeros_like(p)
    onehot.scatter_(-1, torch.randint(0, vocab, (batch, nodes, 1), generator=gen), 1.0)
    keep = torch.rand(batch, nodes, vocab, generator=gen) < 0.4
    keep.scatter_(-1, p.argmax(-1, keepdim=True), True)  # at least one token keeps its mass
    sparse = p * keep
    sparse = sparse / sparse.sum(-1, keepdim=True)
    p = torch.where((kind == 0)[..., None], onehot, p)
    p = torch.where((kind == 1)[..., None], sparse, p)
    p = p.float()
    if like is not None:
        p = torch.where((kind == 2)[..., None], like, p)
    return p.contiguous()


def random_tokens(gen, parents: torch.Tensor, draft: torch.Tensor) -> torch.Tensor:
    """Node i's token: mostly drawn from its parent's draft row, else uniform."""
    batch, nodes, vocab = draft.shape
    tokens = torch.randint(0, vocab, (batch, nodes), generator=gen)
    for b in range(batch):
        for i in range(1, nodes):
            if torch.rand((), generator=gen) < 0.75:
                row = draft[b, int(parents[b, i])].double()
                tokens[b, i] = int(torch.multinomial(row, 1, generator=gen))
    return tokens


def random_seeds(gen, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-range int64 seeds and offsets, with the extremes in the first rows."""
    seed = torch.randint(INT64_MIN, INT64_MAX, (batch,), generator=gen, dtype=torch.int64)
    offset = torch.randint(INT64_MIN, INT64_MAX, (batch,), generator=gen, dtype=torch.int64)
    extremes = torch.tensor([INT64_MIN, -1, INT64_MAX, 0, 1], dtype=torch.int64)
    k = min(batch, 5)
    seed[:k] = extremes[:k]
    offset[:k] = extremes.flip(0)[:k]
    return seed, offset


def random_case(gen, batch: int, nodes: int, vocab: int, shape: str):
    parents = torch.tensor([random_parents(gen, nodes, shape) for _ in range(batch)], dtype=torch.int32).view(
        batch, nodes
    )
    target = random_probs(gen, batch, nodes, vocab)
    draft = random_probs(gen, batch, nodes, vocab, like=target)
    tokens = random_tokens(gen, parents, draft)
    seed, offset = random_seeds(gen, batch)
    return dict(
        tokens=tokens, parents=parents, draft_probs=draft, target_probs=target, seed=seed, offset=offset
    )


def greedy_argmax(gen, tokens: torch.Tensor, parents: torch.Tensor, vocab: int) -> torch.Tensor:
    """target_argmax agreeing with some child of most nodes (of every node in row 0, whose
    path therefore runs to a leaf), so paths of all lengths occur."""
    batch, nodes = tokens.shape
    arg = torch.randint(0, vocab, (batch, nodes), generator=gen)
    for b in range(batch):
        for u in range(nodes):
            kids = [c for c in range(u + 1, nodes) if int(parents[b, c]) == u]
            if kids and (b == 0 or torch.rand((), generator=gen) < 0.7):
                arg[b, u] = tokens[b, kids[int(torch.randint(0, len(kids), (1,), generator=gen))]]
    return arg


def assert_verdict_equal(got, expected):
    names = ("accept_nodes", "num_accepted", "next_token")
    for name, g, e in zip(names, got, expected):
        g, e = g.cpu(), e.cpu()
        assert g.dtype == e.dtype and g.shape == e.shape, (name, g.dtype, g.shape, e.dtype, e.shape)
        assert torch.equal(g, e), f"{name} differs:\n op:  {g.tolist()}\n ref: {e.tolist()}"


def check_invariants(verdict, parents, vocab, target=None, tokens=None):
    """accept_nodes[:, 0] = 0, a root-to-node path, -1 padding, next_token in [0, V); with
    target/tokens: every accepted draft and next_token have target mass at their parent."""
    accept, num, nxt = (t.cpu() for t in verdict)
    batch, nodes = parents.shape
    assert accept.shape == (batch, nodes) and accept.dtype == torch.int32
    assert num.shape == (batch,) and num.dtype == torch.int32
    assert nxt.shape == (batch,) and nxt.dtype == torch.int64
    for b in range(batch):
        n = int(num[b])
        assert 1 <= n <= nodes, (b, n)
        path = accept[b, :n].tolist()
        assert path[0] == 0
        for j in range(1, n):
            assert int(parents[b, path[j]]) == path[j - 1], (b, path)
        assert (accept[b, n:] == -1).all(), (b, accept[b].tolist())
        assert 0 <= int(nxt[b]) < vocab
        if target is not None:
            for j in range(1, n):
                assert float(target[b, path[j - 1], int(tokens[b, path[j]])]) > 0.0, (b, path)
            assert float(target[b, path[-1], int(nxt[b])]) > 0.0, (b, path, int(nxt[b]))


# ---------------------------------------------------------------------------
# Verifiers against the reference.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("nodes", NODES)
@pytest.mark.parametrize("tree", TREES)
def test_rejection_sample_matches_reference(device, tree, nodes, vocab, gen):
    for batch in BATCHES:
        case = random_case(gen, batch, nodes, vocab, tree)
        for with_draft in (True, False):
            args = dict(case)
            if not with_draft:
                args["draft_probs"] = None
            expected = reference.rejection_sample(**args)
            got = ops.rejection_sample(**on(device, **args))
            assert_verdict_equal(got, expected)
            check_invariants(got, case["parents"], vocab, case["target_probs"], case["tokens"])


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("nodes", NODES)
@pytest.mark.parametrize("tree", TREES)
def test_typical_accept_matches_reference(device, tree, nodes, vocab, gen):
    for batch in BATCHES:
        case = random_case(gen, batch, nodes, vocab, tree)
        del case["draft_probs"]
        for threshold, alpha in TYPICAL_PARAMS:
            args = dict(case, posterior_threshold=threshold, posterior_alpha=alpha)
            expected = reference.typical_accept(**args)
            got = ops.typical_accept(**on(device, **args))
            assert_verdict_equal(got, expected)
            check_invariants(got, case["parents"], vocab, case["target_probs"], case["tokens"])


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("nodes", NODES)
@pytest.mark.parametrize("tree", TREES)
def test_verify_greedy_matches_reference(device, tree, nodes, vocab, gen):
    lengths = set()
    for batch in BATCHES:
        case = random_case(gen, batch, nodes, vocab, tree)
        arg = greedy_argmax(gen, case["tokens"], case["parents"], vocab)
        args = dict(tokens=case["tokens"], parents=case["parents"], target_argmax=arg)
        expected = reference.verify_greedy(**args)
        got = ops.verify_greedy(**on(device, **args))
        assert_verdict_equal(got, expected)
        check_invariants(got, case["parents"], vocab)
        lengths.update(got[1].tolist())
        # next_token is the argmax after the last accepted node.
        last = got[0].cpu().long().gather(1, got[1].cpu().long()[:, None] - 1)
        assert torch.equal(got[2].cpu(), arg.gather(1, last)[:, 0])
    if nodes >= 2:
        assert max(lengths) >= 2, lengths  # row 0 always follows a child
    if tree == "chain":
        assert nodes in lengths  # ... down to the end of the chain: no -1 padding at all


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_verify_greedy_first_matching_child_wins(device):
    """Two children with the argmax token: the lower index is followed, down a chain."""
    tokens = torch.tensor([[9, 4, 4, 2, 2]], dtype=torch.int64)
    parents = torch.tensor([[-1, 0, 0, 2, 1]], dtype=torch.int32)
    arg = torch.tensor([[4, 2, 2, 0, 3]], dtype=torch.int64)
    expected = reference.verify_greedy(tokens, parents, arg)
    got = ops.verify_greedy(*on(device, t=tokens, p=parents, a=arg).values())
    assert_verdict_equal(got, expected)
    assert got[0].cpu().tolist() == [[0, 1, 4, -1, -1]]
    assert got[1].cpu().tolist() == [3] and got[2].cpu().tolist() == [3]


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_typical_threshold_is_not_rounded_to_float32(device):
    """posterior_threshold/alpha are doubles in the schema; the reference compares
    p > min(threshold, alpha * exp(-H)) in float64.  p = float32(0.3) = 0.30000001192...
    is > 0.3, so the child is accepted; an op that narrows the threshold to float32
    compares 0.30000001192 > 0.30000001192 and rejects it."""
    p3 = float(torch.tensor(0.3, dtype=torch.float32))
    assert p3 > 0.3
    target = torch.tensor([[[p3, 1.0 - p3], [0.5, 0.5]]], dtype=torch.float32)
    tokens = torch.tensor([[1, 0]], dtype=torch.int64)
    parents = torch.tensor([[-1, 0]], dtype=torch.int32)
    seed, offset = torch.tensor([3], dtype=torch.int64), torch.tensor([4], dtype=torch.int64)
    args = dict(
        tokens=tokens,
        parents=parents,
        target_probs=target,
        posterior_threshold=0.3,
        posterior_alpha=10.0,
        seed=seed,
        offset=offset,
    )
    expected = reference.typical_accept(**args)
    assert expected[1].tolist() == [2]  # the reference accepts node 1
    got = ops.typical_accept(**on(device, **args))
    assert_verdict_equal(got, expected)


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_rejection_zero_residual_falls_back_to_target(device):
    """p = q = one-hot(2) at the root: child 1 (token 1, p = 0) is rejected and leaves a
    residual max(p - q, 0) of no mass, so the walk goes back to p; child 2 (token 2) is
    then accepted for every uniform.  Without the fallback it could never be accepted."""
    onehot = torch.zeros(1, 3, 5)
    onehot[0, :, 2] = 1.0
    tokens = torch.tensor([[0, 1, 2]], dtype=torch.int64)
    parents = torch.tensor([[-1, 0, 0]], dtype=torch.int32)
    for s in range(-20, 20):
        seed, offset = torch.tensor([s * 1000003], dtype=torch.int64), torch.tensor([s], dtype=torch.int64)
        args = dict(
            tokens=tokens, parents=parents, draft_probs=onehot, target_probs=onehot, seed=seed, offset=offset
        )
        expected = reference.rejection_sample(**args)
        assert expected[0].tolist() == [[0, 2, -1]] and expected[2].tolist() == [2]
        assert_verdict_equal(ops.rejection_sample(**on(device, **args)), expected)


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_zero_mass_residual_restarts_at_the_targets_real_mass(device, gen):
    """Regression (fuzzing): unnormalised target rows p = 0.4 * softmax with q = softmax:
    every rejection leaves no residual mass, so the walk restarts at p, and its tests and
    final draw must use p's real mass (0.4), not 1, exactly as the reference does."""
    batch, vocab = 64, 40
    p = torch.softmax(torch.randn(batch, 2, vocab, generator=gen), -1)
    target = (0.4 * p).contiguous()
    tokens = torch.multinomial(p[:, 0], 1, generator=gen).expand(batch, 2).contiguous()
    parents = torch.tensor([[-1, 0]] * batch, dtype=torch.int32)  # one draft: rejected w.p. 0.6
    seed = torch.arange(batch, dtype=torch.int64) * 7919
    offset = torch.zeros(batch, dtype=torch.int64)
    args = dict(tokens=tokens, parents=parents, draft_probs=p, target_probs=target, seed=seed, offset=offset)
    expected = reference.rejection_sample(**args)
    assert_verdict_equal(ops.rejection_sample(**on(device, **args)), expected)
    assert int((expected[1] == 1).sum()) > batch // 4  # the restart path is exercised


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_same_seed_same_result_different_offset_differs(device, gen):
    batch, nodes, vocab = 64, 9, 50
    case = random_case(gen, batch, nodes, vocab, "star")
    seed = torch.arange(batch, dtype=torch.int64) * 7919 - 12345
    case["seed"], case["offset"] = seed, torch.full((batch,), 77, dtype=torch.int64)
    d = on(device, **case)
    other = d["offset"] + 1
    for name, call in {
        "rejection_sample+draft": lambda off: ops.rejection_sample(
            d["tokens"], d["parents"], d["draft_probs"], d["target_probs"], d["seed"], off
        ),
        "rejection_sample": lambda off: ops.rejection_sample(
            d["tokens"], d["parents"], None, d["target_probs"], d["seed"], off
        ),
        "typical_accept": lambda off: ops.typical_accept(
            d["tokens"], d["parents"], d["target_probs"], 0.09, 0.3, d["seed"], off
        ),
    }.items():
        first, again, shifted = call(d["offset"]), call(d["offset"]), call(other)
        assert_verdict_equal(first, again)
        differs = (first[2] != shifted[2]) | (first[1] != shifted[1])
        assert int(differs.sum()) > 0, f"{name}: a new offset changed no row"
        # Row b depends on its own (seed, offset) only: a batch of one gives the same row.
        b = 5
        sub = {k: (v[b : b + 1] if isinstance(v, torch.Tensor) else v) for k, v in d.items()}
        if name == "typical_accept":
            one = ops.typical_accept(
                sub["tokens"], sub["parents"], sub["target_probs"], 0.09, 0.3, sub["seed"], sub["offset"]
            )
        else:
            one = ops.rejection_sample(
                sub["tokens"],
                sub["parents"],
                sub["draft_probs"] if "draft" in name else None,
                sub["target_probs"],
                sub["seed"],
                sub["offset"],
            )
        assert_verdict_equal(one, tuple(t[b : b + 1] for t in first))


# ---------------------------------------------------------------------------
# rejection_sample's methods (block, traversal) and siblings drawn without
# replacement, against the reference.
# ---------------------------------------------------------------------------

METHODS = ("tokenwise", "block", "traversal")
SIBLINGS = ("iid", "without_replacement")


def wor_tokens(gen, parents: torch.Tensor, draft: torch.Tensor, repeats: float = 0.05) -> torch.Tensor:
    """Siblings drawn without replacement, in index order, from their parent's draft row
    (the earlier siblings' tokens zeroed); once that row has no mass left, the smallest
    unused token (a deterministic filler).  A fraction `repeats` of siblings repeat an
    earlier one's token (off-model input, which the rule must still handle)."""
    batch, nodes, vocab = draft.shape
    tokens = torch.zeros(batch, nodes, dtype=torch.int64)
    for b in range(batch):
        drawn: dict[int, list[int]] = {}
        for i in range(1, nodes):
            u = int(parents[b, i])
            used = drawn.setdefault(u, [])
            w = draft[b, u].double().clone()
            w[used] = 0.0
            if used and torch.rand((), generator=gen) < repeats:
                x = used[0]
            elif float(w.sum()) > 0:
                x = int(torch.multinomial(w, 1, generator=gen))
            else:
                x = next(y for y in range(vocab) if y not in used) if len(used) < vocab else 0
            used.append(x)
            tokens[b, i] = x
    return tokens


def is_chain(parents: torch.Tensor) -> bool:
    nodes = parents.shape[1]
    return bool((parents == torch.arange(-1, nodes - 1, dtype=parents.dtype)).all())


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("nodes", NODES)
@pytest.mark.parametrize("tree", TREES)
def test_rejection_methods_match_reference(device, tree, nodes, vocab, gen):
    """Every method x siblings, with and without draft probabilities, bit for bit; drafts
    drawn as the siblings rule says.  On chains traversal equals block."""
    for batch in BATCHES:
        case = random_case(gen, batch, nodes, vocab, tree)
        cases = {"iid": case, "without_replacement": dict(case)}
        cases["without_replacement"]["tokens"] = wor_tokens(gen, case["parents"], case["draft_probs"])
        chain = is_chain(case["parents"])
        for siblings in SIBLINGS:
            for with_draft in (True, False):
                args = dict(cases[siblings])
                if not with_draft:
                    args["draft_probs"] = None
                verdicts = {}
                for method in METHODS:
                    if method == "block" and not chain:
                        continue
                    rule = dict(method=method, siblings=siblings)
                    expected = reference.rejection_sample(**args, **rule)
                    got = ops.rejection_sample(**on(device, **args), **rule)
                    assert_verdict_equal(got, expected)
                    check_invariants(got, case["parents"], vocab, case["target_probs"], args["tokens"])
                    verdicts[method] = got
                if chain:
                    assert_verdict_equal(verdicts["traversal"], verdicts["block"])
                if not with_draft:  # deterministic drafts: one rule for every method
                    for method in verdicts:
                        assert_verdict_equal(verdicts[method], verdicts["tokenwise"])


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_rejection_methods_default_is_todays_call(device, gen):
    """method="tokenwise", siblings="iid" spelled out is the call without them."""
    case = on(device, **random_case(gen, 4, 9, 50, "random"))
    for draft in (case["draft_probs"], None):
        args = dict(case, draft_probs=draft)
        assert_verdict_equal(
            ops.rejection_sample(**args, method="tokenwise", siblings="iid"), ops.rejection_sample(**args)
        )
        assert_verdict_equal(torch.ops.specdec.rejection_sample(*args.values()), ops.rejection_sample(**args))


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_rejection_methods_accept_more_on_average(device, gen):
    """Same drafts and uniforms, many rows: block / traversal accept at least as many
    drafts per row as tokenwise on average (the exact statement is in
    test_acceptance_exact.py; here through the op)."""
    batch, vocab = 4000, 12
    for tree, siblings in (("chain", "iid"), ("star", "iid"), ("random", "without_replacement")):
        case = random_case(gen, batch, 6, vocab, tree)
        # Drafts drawn exactly as `siblings` says (the guarantee is an average over them).
        if siblings == "without_replacement":
            case["tokens"] = wor_tokens(gen, case["parents"], case["draft_probs"], repeats=0.0)
        else:
            rows = case["draft_probs"][torch.arange(batch)[:, None], case["parents"].long().clamp(min=0)]
            drawn = torch.multinomial(rows.reshape(-1, vocab).double(), 1, generator=gen).view(batch, -1)
            case["tokens"] = torch.cat([case["tokens"][:, :1], drawn[:, 1:]], 1).contiguous()
        d = on(device, **case)
        base = ops.rejection_sample(**d, siblings=siblings)[1].double().mean()
        better = ops.rejection_sample(
            **d, method="block" if tree == "chain" else "traversal", siblings=siblings
        )
        gain = float(better[1].double().mean() - base)
        print(f"\n{tree}/{siblings}: mean accepted path {float(base):.4f} -> {float(base) + gain:.4f}")
        # 4000 rows: the standard error of the difference is below 0.02 here.
        assert gain > -0.03, (tree, siblings, gain)


def test_block_on_a_tree_is_refused_by_reference_too():
    case = random_case(torch.Generator().manual_seed(1), 2, 5, 7, "star")
    with pytest.raises(ValueError, match="chains only"):
        reference.rejection_sample(**case, method="block")


# ---------------------------------------------------------------------------
# The op contract: empty batches, opcheck, torch.compile.
# ---------------------------------------------------------------------------


def _small_case(device, seed=0, batch=3, nodes=6, vocab=11):
    g = torch.Generator().manual_seed(seed)
    case = random_case(g, batch, nodes, vocab, "random")
    case["target_argmax"] = greedy_argmax(g, case["tokens"], case["parents"], vocab)
    case["logits"] = torch.randn(batch, nodes, vocab, generator=g)
    case["temperature"] = torch.tensor([0.0, 0.7, 1.0][:batch] + [1.0] * max(0, batch - 3))
    case["top_k"] = torch.tensor(([0, 3, 20] * batch)[:batch], dtype=torch.int32)
    case["top_p"] = torch.tensor(([1.0, 0.9, 0.5] * batch)[:batch])
    return on(device, **case)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize(
    "op", ["verify_greedy", "rejection_sample", "rejection_sample_no_draft", "typical_accept"]
)
def test_empty_batch(device, op):
    nodes, vocab = 4, 9
    i64 = dict(dtype=torch.int64, device=device)
    tokens = torch.zeros(0, nodes, **i64)
    parents = torch.zeros(0, nodes, dtype=torch.int32, device=device)
    probs = torch.zeros(0, nodes, vocab, device=device)
    seed, offset = torch.zeros(0, **i64), torch.zeros(0, **i64)
    if op == "verify_greedy":
        out = ops.verify_greedy(tokens, parents, torch.zeros(0, nodes, **i64))
    elif op == "typical_accept":
        out = ops.typical_accept(tokens, parents, probs, 0.09, 0.3, seed, offset)
    else:
        out = ops.rejection_sample(
            tokens, parents, probs if op == "rejection_sample" else None, probs, seed, offset
        )
    accept, num, nxt = out
    assert accept.shape == (0, nodes) and accept.dtype == torch.int32
    assert num.shape == (0,) and num.dtype == torch.int32
    assert nxt.shape == (0,) and nxt.dtype == torch.int64
    assert all(t.device == tokens.device for t in out)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize(
    "op", ["verify_greedy", "rejection_sample", "rejection_sample_no_draft", "typical_accept"]
)
def test_opcheck(device, op):
    c = _small_case(device)
    if op == "verify_greedy":
        name, args = "verify_greedy", (c["tokens"], c["parents"], c["target_argmax"])
    elif op == "typical_accept":
        name, args = (
            "typical_accept",
            (c["tokens"], c["parents"], c["target_probs"], 0.09, 0.3, c["seed"], c["offset"]),
        )
    else:
        draft = c["draft_probs"] if op == "rejection_sample" else None
        name, args = (
            "rejection_sample",
            (c["tokens"], c["parents"], draft, c["target_probs"], c["seed"], c["offset"]),
        )
    torch.library.opcheck(getattr(torch.ops.specdec, name).default, args)


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_torch_compile_fullgraph(device):
    """One decode step: logits -> sampling_probs -> rejection_sample, compiled whole."""
    c = _small_case(device)

    def step(logits, temperature, top_k, top_p, tokens, parents, draft, seed, offset):
        target = ops.sampling_probs(logits, temperature, top_k, top_p)
        return ops.rejection_sample(tokens, parents, draft, target, seed, offset), target

    args = (
        c["logits"],
        c["temperature"],
        c["top_k"],
        c["top_p"],
        c["tokens"],
        c["parents"],
        c["draft_probs"],
        c["seed"],
        c["offset"],
    )
    eager = step(*args)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(*args)
    assert_verdict_equal(compiled[0], eager[0])
    assert torch.equal(compiled[1], eager[1])


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_torch_compile_fullgraph_verifiers(device):
    """The three verifiers in one compiled graph (independent of sampling_probs)."""
    c = _small_case(device)

    def step(tokens, parents, draft, target, argmax, seed, offset):
        return (
            ops.verify_greedy(tokens, parents, argmax),
            ops.rejection_sample(tokens, parents, draft, target, seed, offset),
            ops.rejection_sample(tokens, parents, None, target, seed, offset + 1),
            ops.typical_accept(tokens, parents, target, 0.09, 0.3, seed, offset),
        )

    args = (
        c["tokens"],
        c["parents"],
        c["draft_probs"],
        c["target_probs"],
        c["target_argmax"],
        c["seed"],
        c["offset"],
    )
    eager = step(*args)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(*args)
    for e, g in zip(eager, compiled):
        assert_verdict_equal(g, e)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("siblings", SIBLINGS)
@pytest.mark.parametrize("method", METHODS)
def test_opcheck_methods(device, method, siblings):
    c = _small_case(device)
    parents = c["parents"]
    if method == "block":
        parents = torch.arange(-1, 5, dtype=torch.int32, device=device).repeat(3, 1)
    for draft in (c["draft_probs"], None):
        args = (c["tokens"], parents, draft, c["target_probs"], c["seed"], c["offset"])
        torch.library.opcheck(
            torch.ops.specdec.rejection_sample.default, args, dict(method=method, siblings=siblings)
        )


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_torch_compile_fullgraph_methods(device):
    """Every method and siblings rule in one compiled graph, after sampling_probs."""
    c = _small_case(device)
    chain = torch.arange(-1, 5, dtype=torch.int32, device=device).repeat(3, 1)

    def step(logits, temperature, top_k, top_p, tokens, parents, chain, draft, seed, offset):
        target = ops.sampling_probs(logits, temperature, top_k, top_p)
        out = [ops.rejection_sample(tokens, chain, draft, target, seed, offset, method="block")]
        for siblings in SIBLINGS:
            out.append(ops.rejection_sample(tokens, parents, draft, target, seed, offset, siblings=siblings))
            out.append(
                ops.rejection_sample(
                    tokens, parents, draft, target, seed, offset, method="traversal", siblings=siblings
                )
            )
        return out

    args = (
        c["logits"],
        c["temperature"],
        c["top_k"],
        c["top_p"],
        c["tokens"],
        c["parents"],
        chain,
        c["draft_probs"],
        c["seed"],
        c["offset"],
    )
    eager = step(*args)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(*args)
    for e, g in zip(eager, compiled):
        assert_verdict_equal(g, e)


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_fake_kernel_checks_method_and_siblings(device):
    """The fake refuses what the real kernel refuses (torch.compile never runs the latter)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    c = _small_case(device)
    args = (c["tokens"], c["parents"], c["draft_probs"], c["target_probs"], c["seed"], c["offset"])
    for kwargs, fragment in (
        (dict(method="greedy"), "method must be 'tokenwise', 'block' or 'traversal', got 'greedy'"),
        (dict(siblings="wor"), "siblings must be 'iid' or 'without_replacement', got 'wor'"),
    ):
        for mode in ("real", "fake"):
            with pytest.raises(ValueError) as info:
                if mode == "real":
                    torch.ops.specdec.rejection_sample(*args, **kwargs)
                else:
                    with FakeTensorMode(allow_non_fake_inputs=True) as fm:
                        torch.ops.specdec.rejection_sample(*(fm.from_tensor(a) for a in args), **kwargs)
            assert f"specdec::rejection_sample: {fragment}" in str(info.value), (mode, str(info.value))


# ---------------------------------------------------------------------------
# Bad input: a typed exception naming the op and the argument.
# ---------------------------------------------------------------------------


def _good_tree(device):
    """B = 2, N = 4, V = 7: row 0 a chain-and-branch, row 1 a small tree."""
    tokens = torch.tensor([[3, 1, 4, 1], [5, 2, 6, 0]], dtype=torch.int64, device=device)
    parents = torch.tensor([[-1, 0, 1, 1], [-1, 0, 0, 2]], dtype=torch.int32, device=device)
    g = torch.Generator().manual_seed(2)
    target = torch.softmax(torch.randn(2, 4, 7, generator=g), -1).to(device)
    draft = torch.softmax(torch.randn(2, 4, 7, generator=g), -1).to(device)
    seed = torch.tensor([11, -12], dtype=torch.int64, device=device)
    offset = torch.tensor([0, 99], dtype=torch.int64, device=device)
    return tokens, parents, target, draft, seed, offset


def _good_args(op, device):
    tokens, parents, target, draft, seed, offset = _good_tree(device)
    if op == "verify_greedy":
        arg = torch.tensor([[1, 4, 0, 0], [2, 5, 0, 3]], dtype=torch.int64, device=device)
        return dict(tokens=tokens, parents=parents, target_argmax=arg)
    if op == "rejection_sample":
        return dict(
            tokens=tokens, parents=parents, draft_probs=draft, target_probs=target, seed=seed, offset=offset
        )
    if op == "typical_accept":
        return dict(
            tokens=tokens,
            parents=parents,
            target_probs=target,
            posterior_threshold=0.09,
            posterior_alpha=0.3,
            seed=seed,
            offset=offset,
        )
    raise AssertionError(f"no good arguments for {op}")


# Tree and seed checks shared by the three verifiers: (mutation, exception, fragment).
TREE_CASES = {
    "tokens int32": (
        set_arg("tokens", lambda t: t.int()),
        TypeError,
        "tokens must have dtype int64, got int32",
    ),
    "parents int64": (
        set_arg("parents", lambda t: t.long()),
        TypeError,
        "parents must have dtype int32, got int64",
    ),
    "tokens 1-D": (set_arg("tokens", lambda t: t[0]), ValueError, "tokens must be a 2-D tensor"),
    "parents shape": (
        set_arg("parents", lambda t: t[:, :3].contiguous()),
        ValueError,
        "parents must have the shape of tokens",
    ),
    "no nodes": (
        lambda a: a.update(
            tokens=a["tokens"][:, :0].contiguous(),
            parents=a["parents"][:, :0].contiguous(),
            **({"target_argmax": a["target_argmax"][:, :0].contiguous()} if "target_argmax" in a else {}),
            **({"target_probs": a["target_probs"][:, :0].contiguous()} if "target_probs" in a else {}),
            **({"draft_probs": a["draft_probs"][:, :0].contiguous()} if "draft_probs" in a else {}),
        ),
        ValueError,
        "tokens must hold at least the root node",
    ),
    "root parent not -1": (
        poke_arg("parents", (1, 0), 0),
        ValueError,
        "parents[1, 0] = 0: node 0 is the root",
    ),
    "root parent not -1 row 0": (poke_arg("parents", (0, 0), 2), ValueError, "parents[0, 0] = 2"),
    "parent not before node": (
        poke_arg("parents", (0, 2), 2),
        ValueError,
        "parents[0, 2] = 2 is outside [0, 2)",
    ),
    "parent negative": (poke_arg("parents", (1, 3), -1), ValueError, "parents[1, 3] = -1 is outside [0, 3)"),
    "tokens non-contiguous": (
        set_arg("tokens", lambda t: torch.stack([t, t], -1)[..., 0]),
        ValueError,
        "tokens must be contiguous",
    ),
}

PROB_TREE_CASES = {  # verifiers that know V (rejection_sample, typical_accept)
    "token >= V": (
        poke_arg("tokens", (1, 2), 7),
        IndexError,
        "tokens[1, 2] = 7 is outside the vocabulary [0, V)",
    ),
    "token negative": (
        poke_arg("tokens", (0, 3), -1),
        IndexError,
        "tokens[0, 3] = -1 is outside the vocabulary",
    ),
    "target_probs wrong N": (
        set_arg("target_probs", lambda t: t[:, :3].contiguous()),
        ValueError,
        "target_probs.size(1) must equal N (tokens.size(1)) = 4",
    ),
    "target_probs wrong B": (
        set_arg("target_probs", lambda t: t[:1].contiguous()),
        ValueError,
        "target_probs.size(0) must equal B (tokens.size(0)) = 2",
    ),
    "target_probs 2-D": (
        set_arg("target_probs", lambda t: t[:, 0].contiguous()),
        ValueError,
        "target_probs must be a 3-D tensor [B, N, V]",
    ),
    "target_probs float64": (
        set_arg("target_probs", lambda t: t.double()),
        TypeError,
        "target_probs must have dtype float32, got float64",
    ),
    "target_probs float16": (
        set_arg("target_probs", lambda t: t.half()),
        TypeError,
        "target_probs must have dtype float32, got float16",
    ),
    "target_probs non-contiguous": (
        set_arg("target_probs", noncontig),
        ValueError,
        "target_probs must be contiguous",
    ),
    "seed int32": (set_arg("seed", lambda t: t.int()), TypeError, "seed must have dtype int64, got int32"),
    "seed wrong length": (
        set_arg("seed", lambda t: t[:1].contiguous()),
        ValueError,
        "seed.size(0) must equal B (tokens.size(0)) = 2",
    ),
    "seed 2-D": (set_arg("seed", lambda t: t[:, None]), ValueError, "seed must be a 1-D tensor"),
    "offset int32": (
        set_arg("offset", lambda t: t.int()),
        TypeError,
        "offset must have dtype int64, got int32",
    ),
    "offset wrong length": (
        set_arg("offset", lambda t: torch.cat([t, t])),
        ValueError,
        "offset.size(0) must equal B",
    ),
    # Root rows are always read: the first child's test reads p(root, its token) = (1, 0, 2).
    "target_probs NaN in root row": (
        poke_arg("target_probs", (1, 0, 2), NAN),
        ValueError,
        "target_probs[1, 0, 2]",
    ),
    "target_probs negative in root row": (
        poke_arg("target_probs", (0, 0, 1), -0.25),
        ValueError,
        "target_probs[0, 0, 1]",
    ),
    # Nothing to draw from: the root row has no mass (its children all have p = 0).
    "target_probs root row all zero": (
        poke_arg("target_probs", (1, 0), 0.0),
        ValueError,
        "target_probs[1, 0] has no probability mass",
    ),
    "target_probs inf in root row": (
        poke_arg("target_probs", (1, 0, 2), INF),
        ValueError,
        "target_probs[1, 0, 2]",
    ),
}

BAD_CASES = {}
for _op in ("verify_greedy", "rejection_sample", "typical_accept"):
    for _name, _case in TREE_CASES.items():
        BAD_CASES[f"{_op}: {_name}"] = _case
for _op in ("rejection_sample", "typical_accept"):
    for _name, _case in PROB_TREE_CASES.items():
        BAD_CASES[f"{_op}: {_name}"] = _case
BAD_CASES.update(
    {
        # verify_greedy
        "verify_greedy: target_argmax negative": (
            poke_arg("target_argmax", (1, 3), -2),
            IndexError,
            "target_argmax[1, 3] = -2 is negative",
        ),
        "verify_greedy: target_argmax int32": (
            set_arg("target_argmax", lambda t: t.int()),
            TypeError,
            "target_argmax must have dtype int64, got int32",
        ),
        "verify_greedy: target_argmax shape": (
            set_arg("target_argmax", lambda t: t[:, :2].contiguous()),
            ValueError,
            "target_argmax must have the shape of tokens",
        ),
        "verify_greedy: token negative": (poke_arg("tokens", (0, 3), -1), IndexError, "tokens[0, 3] = -1"),
        # rejection_sample with draft probabilities
        "rejection_sample: draft_probs wrong V": (
            set_arg("draft_probs", lambda t: t[..., :6].contiguous()),
            ValueError,
            "draft_probs.size(2) must equal V (target_probs.size(2)) = 7",
        ),
        "rejection_sample: draft_probs wrong N": (
            set_arg("draft_probs", lambda t: t[:, :2].contiguous()),
            ValueError,
            "draft_probs.size(1) must equal N",
        ),
        "rejection_sample: draft_probs float64": (
            set_arg("draft_probs", lambda t: t.double()),
            TypeError,
            "draft_probs must have dtype float32, got float64",
        ),
        "rejection_sample: draft_probs non-contiguous": (
            set_arg("draft_probs", noncontig),
            ValueError,
            "draft_probs must be contiguous",
        ),
        "rejection_sample: draft_probs NaN in root row": (
            poke_arg("draft_probs", (1, 0, 2), NAN),
            ValueError,
            "draft_probs[1, 0, 2] is NaN",
        ),
        "rejection_sample: draft_probs negative in root row": (
            poke_arg("draft_probs", (0, 0, 1), -0.5),
            ValueError,
            "draft_probs[0, 0, 1] is NaN",
        ),
        # rejection_sample's method and siblings
        "rejection_sample: method unknown": (
            lambda a: a.update(method="greedy"),
            ValueError,
            "method must be 'tokenwise', 'block' or 'traversal', got 'greedy'",
        ),
        "rejection_sample: method not a str": (
            lambda a: a.update(method=1),
            TypeError,
            "method must be a str, got int",
        ),
        "rejection_sample: siblings unknown": (
            lambda a: a.update(siblings="wor"),
            ValueError,
            "siblings must be 'iid' or 'without_replacement', got 'wor'",
        ),
        "rejection_sample: siblings unknown with traversal": (
            lambda a: a.update(method="traversal", siblings="without replacement"),
            ValueError,
            "siblings must be 'iid' or 'without_replacement'",
        ),
        "rejection_sample: block on a tree": (
            lambda a: a.update(method="block"),
            ValueError,
            "parents[0, 3] = 1: method='block' verifies chains only",
        ),
        "rejection_sample: block on a tree, no draft_probs": (
            lambda a: a.update(method="block", draft_probs=None, siblings="without_replacement"),
            ValueError,
            "parents[0, 3] = 1: method='block' verifies chains only",
        ),
        "rejection_sample: block, row 1 not a chain": (
            lambda a: a.update(
                method="block",
                parents=torch.tensor(
                    [[-1, 0, 1, 2], [-1, 0, 1, 1]], dtype=torch.int32, device=a["parents"].device
                ),
            ),
            ValueError,
            "parents[1, 3] = 1: method='block' verifies chains only",
        ),
        "rejection_sample: traversal draft_probs NaN": (
            lambda a: (a.update(method="traversal"), poke_arg("draft_probs", (1, 0, 2), NAN)(a)),
            ValueError,
            "draft_probs[1, 0, 2] is NaN",
        ),
        # typical_accept parameters
        "typical_accept: threshold NaN": (
            lambda a: a.update(posterior_threshold=NAN),
            ValueError,
            "posterior_threshold must be finite and >= 0, got nan",
        ),
        "typical_accept: threshold negative": (
            lambda a: a.update(posterior_threshold=-0.1),
            ValueError,
            "posterior_threshold must be finite and >= 0",
        ),
        "typical_accept: threshold inf": (
            lambda a: a.update(posterior_threshold=INF),
            ValueError,
            "posterior_threshold",
        ),
        "typical_accept: alpha NaN": (
            lambda a: a.update(posterior_alpha=NAN),
            ValueError,
            "posterior_alpha must be finite and >= 0",
        ),
        "typical_accept: alpha negative": (
            lambda a: a.update(posterior_alpha=-1.0),
            ValueError,
            "posterior_alpha",
        ),
    }
)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input(device, case):
    op = case.split(":")[0]
    fn = getattr(ops, op)
    fn(**_good_args(op, device))  # the unmutated arguments are valid
    args = _good_args(op, device)
    mutate, exc, fragment = BAD_CASES[case]
    mutate(args)
    with pytest.raises(exc) as info:
        fn(**args)
    message = str(info.value)
    assert f"specdec::{op}" in message and fragment in message, message


def test_bad_input_table_names_arguments():
    """Every fragment of the table names an argument of its op (a typo guard)."""
    import inspect

    for case, (_, _, fragment) in BAD_CASES.items():
        op = case.split(":")[0]
        params = inspect.signature(getattr(ops, op)).parameters
        assert any(p in fragment for p in params), (case, fragment)


def test_device_mismatch_is_reported():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device to put one argument on another device")
    args = _good_args("rejection_sample", "cuda")
    args["seed"] = args["seed"].cpu()
    with pytest.raises(ValueError, match=r"specdec::rejection_sample: seed must be on cuda"):
        ops.rejection_sample(**args)
