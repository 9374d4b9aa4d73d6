"""The ragged ops: rows of different sizes stored end to end, row b = entries
cu_nodes[b] .. cu_nodes[b + 1] - 1 of the flat tensors.

By definition (docs/ops.md, "Ragged batches") a ragged op equals the padded op on
each row alone, with the row's own node count N_b (so its final draw uses
uniform index N_b).  That is tested exactly (torch.equal) on random ragged
batches with 1-node rows, chains, stars and random trees; then against the
references, the op contract (opcheck, torch.compile, the empty batch) and a
table of bad inputs, each naming the op and the entry.
"""

from __future__ import annotations

import pytest
import torch
from test_acceptance import (
    assert_verdict_equal,
    greedy_argmax,
    random_probs,
    random_seeds,
    random_tokens,
)
from test_sampling import assert_probs_close, random_logits

from specdec_cuda import ops, reference

from conftest import ALL_DEVICES, INF, NAN, noncontig, on, poke_arg, random_parents, set_arg

VOCABS = [7, 50, 1000]
SHAPES = ["chain", "star", "random", "mixed"]


# ---------------------------------------------------------------------------
# Random ragged batches.
# ---------------------------------------------------------------------------


def random_sizes(gen, batch: int, largest: int = 9) -> list[int]:
    """Row sizes in [1, largest], the first row (when there are several) a 1-node row."""
    sizes = torch.randint(1, largest + 1, (batch,), generator=gen).tolist()
    if batch > 1:
        sizes[0] = 1
    return sizes


def cu_of(sizes: list[int]) -> torch.Tensor:
    cu = [0]
    for n in sizes:
        cu.append(cu[-1] + n)
    return torch.tensor(cu, dtype=torch.int32)


def random_ragged_case(gen, sizes: list[int], vocab: int, shape: str) -> dict:
    """Flat tokens / parents / draft / target / argmax of rows with the given sizes, plus
    per-row seeds and offsets.  Every row is built on its own, as the padded tests build
    a batch of one."""
    kinds = ["chain", "star", "random"]
    rows = []
    for b, n in enumerate(sizes):
        tree = kinds[b % 3] if shape == "mixed" else shape
        parents = torch.tensor([random_parents(gen, n, tree)], dtype=torch.int32)
        target = random_probs(gen, 1, n, vocab)
        draft = random_probs(gen, 1, n, vocab, like=target)
        tokens = random_tokens(gen, parents, draft)
        argmax = greedy_argmax(gen, tokens, parents, vocab)
        rows.append((tokens[0], parents[0], draft[0], target[0], argmax[0]))
    seed, offset = random_seeds(gen, len(sizes))
    cat = lambda i, like: torch.cat([r[i] for r in rows]) if rows else like  # noqa: E731
    return dict(
        tokens=cat(0, torch.zeros(0, dtype=torch.int64)),
        parents=cat(1, torch.zeros(0, dtype=torch.int32)),
        cu_nodes=cu_of(sizes),
        draft_probs=cat(2, torch.zeros(0, vocab)).contiguous(),
        target_probs=cat(3, torch.zeros(0, vocab)).contiguous(),
        target_argmax=cat(4, torch.zeros(0, dtype=torch.int64)),
        seed=seed,
        offset=offset,
    )


def call(op: str, c: dict, **extra):
    """The ragged op on case c (tensors already on the device)."""
    if op == "verify_greedy":
        return ops.verify_greedy_ragged(c["tokens"], c["parents"], c["cu_nodes"], c["target_argmax"])
    if op == "typical_accept":
        return ops.typical_accept_ragged(
            c["tokens"],
            c["parents"],
            c["cu_nodes"],
            c["target_probs"],
            *extra["typical"],
            c["seed"],
            c["offset"],
        )
    draft = c["draft_probs"] if op == "rejection_sample" else None
    return ops.rejection_sample_ragged(
        c["tokens"], c["parents"], c["cu_nodes"], draft, c["target_probs"], c["seed"], c["offset"]
    )


def call_padded_row(op: str, c: dict, b: int, **extra):
    """The padded op on row b alone: B = 1, N = N_b."""
    lo, hi = int(c["cu_nodes"][b]), int(c["cu_nodes"][b + 1])
    row = lambda k: c[k][lo:hi][None].contiguous()  # noqa: E731
    one = lambda k: c[k][b : b + 1].contiguous()  # noqa: E731
    if op == "verify_greedy":
        return ops.verify_greedy(row("tokens"), row("parents"), row("target_argmax"))
    if op == "typical_accept":
        return ops.typical_accept(
            row("tokens"), row("parents"), row("target_probs"), *extra["typical"], one("seed"), one("offset")
        )
    draft = row("draft_probs") if op == "rejection_sample" else None
    return ops.rejection_sample(
        row("tokens"), row("parents"), draft, row("target_probs"), one("seed"), one("offset")
    )


def reference_call(op: str, c: dict, **extra):
    c = {k: v.cpu() for k, v in c.items()}
    if op == "verify_greedy":
        return reference.verify_greedy_ragged(c["tokens"], c["parents"], c["cu_nodes"], c["target_argmax"])
    if op == "typical_accept":
        return reference.typical_accept_ragged(
            c["tokens"],
            c["parents"],
            c["cu_nodes"],
            c["target_probs"],
            *extra["typical"],
            c["seed"],
            c["offset"],
        )
    draft = c["draft_probs"] if op == "rejection_sample" else None
    return reference.rejection_sample_ragged(
        c["tokens"], c["parents"], c["cu_nodes"], draft, c["target_probs"], c["seed"], c["offset"]
    )


VERIFIERS = ["verify_greedy", "rejection_sample", "rejection_sample_no_draft", "typical_accept"]
TYPICAL = (0.09, 0.3)


def assert_ragged_is_padded(op, c, got, **extra):
    """got (the ragged verdict) equals the padded op row by row, and is shaped as documented."""
    accept, num, nxt = (t.cpu() for t in got)
    cu = c["cu_nodes"].cpu().tolist()
    batch, total = len(cu) - 1, cu[-1]
    assert accept.shape == (total,) and accept.dtype == torch.int32
    assert num.shape == (batch,) and num.dtype == torch.int32
    assert nxt.shape == (batch,) and nxt.dtype == torch.int64
    for b in range(batch):
        a1, n1, x1 = (t.cpu() for t in call_padded_row(op, c, b, **extra))
        lo, hi = cu[b], cu[b + 1]
        assert torch.equal(accept[lo:hi], a1[0]), (op, b, accept[lo:hi].tolist(), a1[0].tolist())
        assert int(num[b]) == int(n1[0]) and int(nxt[b]) == int(x1[0]), (op, b)
        assert int(accept[lo]) == 0 and int(num[b]) >= 1


# ---------------------------------------------------------------------------
# Ragged == padded, row by row; and the references.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("op", VERIFIERS)
def test_ragged_verifiers_equal_padded_row_by_row(device, op, shape, vocab, gen):
    lengths = set()
    for batch in (1, 2, 9):
        sizes = random_sizes(gen, batch)
        c = on(device, **random_ragged_case(gen, sizes, vocab, shape))
        got = call(op, c, typical=TYPICAL)
        assert_ragged_is_padded(op, c, got, typical=TYPICAL)
        assert_verdict_equal(got, reference_call(op, c, typical=TYPICAL))
        lengths.update(got[1].cpu().tolist())
    if shape == "chain" and op == "verify_greedy":
        assert max(lengths) >= 3, lengths  # paths of several nodes occur


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("op", VERIFIERS)
def test_equal_rows_equal_the_padded_batch(device, op, gen):
    """Rows all of one size N: the ragged call equals the padded call on [B, N] (same
    streams, same uniform indices)."""
    batch, nodes, vocab = 6, 5, 50
    c = on(device, **random_ragged_case(gen, [nodes] * batch, 50, "mixed"))
    got = call(op, c, typical=TYPICAL)
    two = lambda k: c[k].view(batch, nodes, *c[k].shape[1:])  # noqa: E731
    if op == "verify_greedy":
        want = ops.verify_greedy(two("tokens"), two("parents"), two("target_argmax"))
    elif op == "typical_accept":
        want = ops.typical_accept(
            two("tokens"), two("parents"), two("target_probs"), *TYPICAL, c["seed"], c["offset"]
        )
    else:
        draft = two("draft_probs") if op == "rejection_sample" else None
        want = ops.rejection_sample(
            two("tokens"), two("parents"), draft, two("target_probs"), c["seed"], c["offset"]
        )
    assert vocab == c["target_probs"].shape[1]
    assert torch.equal(got[0].cpu(), want[0].cpu().flatten())
    assert torch.equal(got[1].cpu(), want[1].cpu()) and torch.equal(got[2].cpu(), want[2].cpu())


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_one_node_rows(device, gen):
    """Rows of only a root: the bonus token is drawn from the root's distribution with
    uniform index 1 (N_b = 1), path [0]."""
    sizes = [1, 1, 1, 1]
    c = on(device, **random_ragged_case(gen, sizes, 40, "chain"))
    for op in VERIFIERS:
        got = call(op, c, typical=TYPICAL)
        assert got[0].cpu().tolist() == [0, 0, 0, 0] and got[1].cpu().tolist() == [1, 1, 1, 1], op
        assert_ragged_is_padded(op, c, got, typical=TYPICAL)
    # verify_greedy: next_token is the argmax after the root.
    got = call("verify_greedy", c)
    assert torch.equal(got[2].cpu(), c["target_argmax"].cpu())


SAMPLING_PARAMS = [
    # (temperature, top_k, top_p, min_p)
    (0.0, 0, 1.0, 0.0),
    (1.0, 0, 1.0, 0.0),
    (0.7, 5, 1.0, 0.0),
    (0.7, 0, 0.9, 0.0),
    (1.3, 0, 1.0, 0.1),
    (0.8, 20, 0.9, 0.05),
    (2.0, 3, 0.5, 0.5),
    (1.0, 0, 1e-6, 1.0),
]


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("with_min_p", [True, False])
def test_sampling_probs_ragged_equals_padded_row_by_row(device, dtype, vocab, with_min_p, gen):
    batch = 2 * len(SAMPLING_PARAMS)
    sizes = random_sizes(gen, batch, largest=5)
    params = [SAMPLING_PARAMS[b % len(SAMPLING_PARAMS)] for b in range(batch)]
    temperature = torch.tensor([p[0] for p in params], dtype=torch.float32)
    top_k = torch.tensor([p[1] for p in params], dtype=torch.int32)
    top_p = torch.tensor([p[2] for p in params], dtype=torch.float32)
    min_p = torch.tensor([p[3] for p in params], dtype=torch.float32) if with_min_p else None
    logits = random_logits(gen, (sum(sizes), vocab), dtype)
    cu = cu_of(sizes)
    d = on(device, l=logits, c=cu, t=temperature, k=top_k, p=top_p)
    mp = min_p.to(device) if min_p is not None else None
    got = ops.sampling_probs_ragged(d["l"], d["c"], d["t"], d["k"], d["p"], mp)
    assert got.shape == logits.shape and got.dtype == torch.float32 and got.device == d["l"].device
    for b in range(batch):
        lo, hi = int(cu[b]), int(cu[b + 1])
        one = slice(b, b + 1)
        row = ops.sampling_probs(
            d["l"][lo:hi][None].contiguous(),
            d["t"][one],
            d["k"][one],
            d["p"][one],
            mp[one] if mp is not None else None,
        )
        assert torch.equal(got[lo:hi].cpu(), row[0].cpu()), b  # the same kernel on the same row
    expected = reference.sampling_probs_ragged(logits, cu, temperature, top_k, top_p, min_p)
    assert_probs_close(got, expected, logits)


# ---------------------------------------------------------------------------
# The op contract: empty batch, opcheck, torch.compile.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_empty_batch(device):
    vocab = 9
    i64 = dict(dtype=torch.int64, device=device)
    tokens = torch.zeros(0, **i64)
    parents = torch.zeros(0, dtype=torch.int32, device=device)
    cu = torch.zeros(1, dtype=torch.int32, device=device)
    probs = torch.zeros(0, vocab, device=device)
    seed = offset = torch.zeros(0, **i64)
    outs = [
        ops.verify_greedy_ragged(tokens, parents, cu, torch.zeros(0, **i64)),
        ops.rejection_sample_ragged(tokens, parents, cu, probs, probs, seed, offset),
        ops.rejection_sample_ragged(tokens, parents, cu, None, probs, seed, offset),
        ops.typical_accept_ragged(tokens, parents, cu, probs, 0.09, 0.3, seed, offset),
    ]
    for accept, num, nxt in outs:
        assert accept.shape == (0,) and accept.dtype == torch.int32 and accept.device == tokens.device
        assert num.shape == (0,) and num.dtype == torch.int32
        assert nxt.shape == (0,) and nxt.dtype == torch.int64
    empty = torch.zeros(0, device=device)
    out = ops.sampling_probs_ragged(
        torch.zeros(0, vocab, device=device),
        cu,
        empty,
        torch.zeros(0, dtype=torch.int32, device=device),
        empty,
    )
    assert out.shape == (0, vocab) and out.dtype == torch.float32 and out.device == tokens.device


def _small(device, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = random_ragged_case(g, [3, 1, 4], 11, "mixed")
    c["logits"] = torch.randn(8, 11, generator=g)
    c["temperature"] = torch.tensor([0.0, 0.7, 1.0])
    c["top_k"] = torch.tensor([0, 3, 20], dtype=torch.int32)
    c["top_p"] = torch.tensor([1.0, 0.9, 0.5])
    c["min_p"] = torch.tensor([0.0, 0.05, 0.2])
    return on(device, **c)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("op", [*VERIFIERS, "sampling_probs", "sampling_probs_min_p"])
def test_opcheck(device, op):
    c = _small(device)
    if op == "verify_greedy":
        name, args = "verify_greedy_ragged", (c["tokens"], c["parents"], c["cu_nodes"], c["target_argmax"])
    elif op == "typical_accept":
        name = "typical_accept_ragged"
        args = (
            c["tokens"],
            c["parents"],
            c["cu_nodes"],
            c["target_probs"],
            0.09,
            0.3,
            c["seed"],
            c["offset"],
        )
    elif op.startswith("sampling_probs"):
        name = "sampling_probs_ragged"
        args = (c["logits"], c["cu_nodes"], c["temperature"], c["top_k"], c["top_p"])
        if op == "sampling_probs_min_p":
            args = (*args, c["min_p"])
    else:
        name = "rejection_sample_ragged"
        draft = c["draft_probs"] if op == "rejection_sample" else None
        args = (c["tokens"], c["parents"], c["cu_nodes"], draft, c["target_probs"], c["seed"], c["offset"])
    torch.library.opcheck(getattr(torch.ops.specdec, name).default, args)


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_torch_compile_fullgraph(device):
    """One ragged step: logits -> sampling_probs_ragged -> the three ragged verifiers, compiled whole."""
    c = _small(device)

    def step(logits, cu, temperature, top_k, top_p, min_p, tokens, parents, draft, argmax, seed, offset):
        target = ops.sampling_probs_ragged(logits, cu, temperature, top_k, top_p, min_p)
        return (
            target,
            ops.rejection_sample_ragged(tokens, parents, cu, draft, target, seed, offset),
            ops.rejection_sample_ragged(tokens, parents, cu, None, target, seed, offset + 1),
            ops.typical_accept_ragged(tokens, parents, cu, target, 0.09, 0.3, seed, offset),
            ops.verify_greedy_ragged(tokens, parents, cu, argmax),
        )

    args = (
        c["logits"],
        c["cu_nodes"],
        c["temperature"],
        c["top_k"],
        c["top_p"],
        c["min_p"],
        c["tokens"],
        c["parents"],
        c["draft_probs"],
        c["target_argmax"],
        c["seed"],
        c["offset"],
    )
    eager = step(*args)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(*args)
    assert torch.equal(compiled[0], eager[0])
    for e, g in zip(eager[1:], compiled[1:]):
        assert_verdict_equal(g, e)


# ---------------------------------------------------------------------------
# Bad input: a typed exception naming the op and the entry.
# ---------------------------------------------------------------------------


def _good(op, device):
    """B = 3 rows of 3, 1 and 4 nodes (T = 8), V = 7."""
    tokens = torch.tensor([3, 1, 4, 5, 2, 6, 0, 1], dtype=torch.int64)
    parents = torch.tensor([-1, 0, 1, -1, -1, 0, 0, 2], dtype=torch.int32)
    cu = torch.tensor([0, 3, 4, 8], dtype=torch.int32)
    g = torch.Generator().manual_seed(2)
    target = torch.softmax(torch.randn(8, 7, generator=g), -1)
    draft = torch.softmax(torch.randn(8, 7, generator=g), -1)
    seed = torch.tensor([11, -12, 5], dtype=torch.int64)
    offset = torch.tensor([0, 99, 3], dtype=torch.int64)
    if op == "verify_greedy_ragged":
        arg = torch.tensor([1, 4, 0, 2, 6, 0, 1, 3], dtype=torch.int64)
        a = dict(tokens=tokens, parents=parents, cu_nodes=cu, target_argmax=arg)
    elif op == "rejection_sample_ragged":
        a = dict(
            tokens=tokens,
            parents=parents,
            cu_nodes=cu,
            draft_probs=draft,
            target_probs=target,
            seed=seed,
            offset=offset,
        )
    elif op == "typical_accept_ragged":
        a = dict(
            tokens=tokens,
            parents=parents,
            cu_nodes=cu,
            target_probs=target,
            posterior_threshold=0.09,
            posterior_alpha=0.3,
            seed=seed,
            offset=offset,
        )
    else:
        a = dict(
            logits=torch.randn(8, 7, generator=g),
            cu_nodes=cu,
            temperature=torch.tensor([0.7, 1.0, 0.0]),
            top_k=torch.tensor([0, 3, 0], dtype=torch.int32),
            top_p=torch.tensor([0.9, 1.0, 1.0]),
            min_p=torch.tensor([0.0, 0.1, 0.0]),
        )
    return on(device, **a)


def _cu(values):
    return set_arg("cu_nodes", lambda t: torch.tensor(values, dtype=torch.int32, device=t.device))


CU_CASES = {  # every ragged op: (mutation, exception, fragment)
    "cu_nodes not starting at 0": (_cu([1, 3, 4, 8]), ValueError, "cu_nodes[0] = 1 must be 0"),
    "cu_nodes decreasing": (_cu([0, 5, 4, 8]), ValueError, "cu_nodes[2] = 4 is not greater than cu_nodes[1]"),
    "cu_nodes empty row": (_cu([0, 3, 3, 8]), ValueError, "cu_nodes[2] = 3 is not greater than cu_nodes[1]"),
    "cu_nodes negative": (_cu([0, -2, 4, 8]), ValueError, "cu_nodes[1] = -2 is not greater than cu_nodes[0]"),
    "cu_nodes end short of T": (_cu([0, 3, 4, 7]), ValueError, "cu_nodes[3] = 7 must equal T = 8"),
    "cu_nodes end beyond T": (_cu([0, 3, 4, 9]), ValueError, "cu_nodes[3] = 9 must equal T = 8"),
    "cu_nodes beyond T inside": (_cu([0, 9, 10, 11]), ValueError, "cu_nodes[3] = 11 must equal T = 8"),
    "cu_nodes int64": (set_arg("cu_nodes", lambda t: t.long()), TypeError, "cu_nodes must have dtype int32"),
    "cu_nodes 2-D": (
        set_arg("cu_nodes", lambda t: t[None]),
        ValueError,
        "cu_nodes must be a 1-D tensor [B + 1]",
    ),
    "cu_nodes empty": (
        set_arg("cu_nodes", lambda t: t[:0]),
        ValueError,
        "cu_nodes must hold B + 1 >= 1 offsets",
    ),
    "cu_nodes non-contiguous": (
        set_arg("cu_nodes", lambda t: torch.stack([t, t], -1)[:, 0]),
        ValueError,
        "cu_nodes must be contiguous",
    ),
    "more rows than entries": (
        _cu([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ValueError,
        "cu_nodes describes B = 9 rows but",
    ),
}


def _cu_and_rows(values):
    """cu_nodes with one row more or less: the per-row arguments must follow."""

    def mutate(a):
        a["cu_nodes"] = torch.tensor(values, dtype=torch.int32, device=a["cu_nodes"].device)

    return mutate


TREE_CASES = {  # the three verifiers
    "root parent not -1": (
        poke_arg("parents", 4, 0),
        ValueError,
        "parents[4] = 0: entry 4 is the root (node 0) of row 2",
    ),
    "root parent not -1 row 0": (poke_arg("parents", 0, 2), ValueError, "parents[0] = 2"),
    "local parent out of range": (
        poke_arg("parents", 7, 3),
        ValueError,
        "parents[7] = 3 is outside [0, 3): node 3 of row 2",
    ),
    "parent given as a global index": (
        poke_arg("parents", 6, 4),
        ValueError,
        "parents[6] = 4 is outside [0, 2): node 2 of row 2",
    ),
    "parent negative": (poke_arg("parents", 2, -1), ValueError, "parents[2] = -1 is outside [0, 2)"),
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
    "tokens 2-D": (set_arg("tokens", lambda t: t[None]), ValueError, "tokens must be a 1-D tensor [T]"),
    "parents shape": (
        set_arg("parents", lambda t: t[:7]),
        ValueError,
        "parents must have the shape of tokens",
    ),
    "tokens non-contiguous": (
        set_arg("tokens", lambda t: torch.stack([t, t], -1)[:, 0]),
        ValueError,
        "tokens must be contiguous",
    ),
}

PROB_CASES = {  # rejection_sample_ragged, typical_accept_ragged
    "token >= V": (poke_arg("tokens", 6, 7), IndexError, "tokens[6] = 7 is outside the vocabulary [0, V)"),
    "token negative": (poke_arg("tokens", 1, -1), IndexError, "tokens[1] = -1 is outside the vocabulary"),
    "target_probs wrong T": (
        set_arg("target_probs", lambda t: t[:7].contiguous()),
        ValueError,
        "target_probs.size(0) must equal T (tokens.size(0)) = 8",
    ),
    "target_probs 3-D": (
        set_arg("target_probs", lambda t: t[None]),
        ValueError,
        "target_probs must be a 2-D tensor [T, V]",
    ),
    "target_probs float64": (
        set_arg("target_probs", lambda t: t.double()),
        TypeError,
        "target_probs must have dtype float32, got float64",
    ),
    "target_probs non-contiguous": (
        set_arg("target_probs", noncontig),
        ValueError,
        "target_probs must be contiguous",
    ),
    "seed wrong length": (
        set_arg("seed", lambda t: t[:2].contiguous()),
        ValueError,
        "seed.size(0) must equal B (cu_nodes.size(0) - 1) = 3",
    ),
    "cu_nodes one row short": (
        _cu_and_rows([0, 3, 8]),
        ValueError,
        "seed.size(0) must equal B (cu_nodes.size(0) - 1) = 2",
    ),
    "offset int32": (
        set_arg("offset", lambda t: t.int()),
        TypeError,
        "offset must have dtype int64, got int32",
    ),
    # Rows' root distributions are always read: the first child's test reads p(root, its token).
    "target_probs NaN in row 2's root": (
        poke_arg("target_probs", (4, 6), NAN),
        ValueError,
        "target_probs[4, 6] is NaN, infinite or negative",
    ),
    "target_probs negative in row 0's root": (
        poke_arg("target_probs", (0, 1), -0.25),
        ValueError,
        "target_probs[0, 1]",
    ),
    "target_probs inf in a 1-node row": (
        poke_arg("target_probs", (3, 0), INF),
        ValueError,
        "target_probs[3, 0]",
    ),
    "target_probs 1-node row without mass": (
        poke_arg("target_probs", 3, 0.0),
        ValueError,
        "target_probs[3] has no probability mass",
    ),
}

SAMPLING_CASES = {
    "temperature wrong length": (
        set_arg("temperature", lambda t: t[:2].contiguous()),
        ValueError,
        "temperature.size(0) must equal B (cu_nodes.size(0) - 1) = 3",
    ),
    "temperature negative": (
        poke_arg("temperature", 1, -1.0),
        ValueError,
        "temperature[1] = -1 must be finite",
    ),
    "top_k negative": (poke_arg("top_k", 2, -1), ValueError, "top_k[2] = -1 must be >= 0"),
    "top_p zero": (poke_arg("top_p", 0, 0.0), ValueError, "top_p[0] = 0 must be in (0, 1]"),
    "min_p above 1": (poke_arg("min_p", 1, 1.5), ValueError, "min_p[1] = 1.5 must be in [0, 1]"),
    "min_p NaN": (poke_arg("min_p", 2, NAN), ValueError, "min_p[2] = nan must be in [0, 1]"),
    "min_p float64": (set_arg("min_p", lambda t: t.double()), TypeError, "min_p must have dtype float32"),
    "min_p wrong length": (
        set_arg("min_p", lambda t: t[:1].contiguous()),
        ValueError,
        "min_p.size(0) must equal B (cu_nodes.size(0) - 1) = 3",
    ),
    "logits NaN in row 2": (
        poke_arg("logits", (6, 3), NAN),
        ValueError,
        "logits[6] (a row of sequence 2) holds a NaN or +inf logit",
    ),
    "logits row all -inf": (
        poke_arg("logits", 3, float("-inf")),
        ValueError,
        "logits[3] (a row of sequence 1) is -inf everywhere",
    ),
    "logits 3-D": (set_arg("logits", lambda t: t[None]), ValueError, "logits must be a 2-D tensor [T, V]"),
    "logits float64": (
        set_arg("logits", lambda t: t.double()),
        TypeError,
        "logits must have dtype float32, float16 or bfloat16",
    ),
    "logits wrong T": (
        set_arg("logits", lambda t: t[:7].contiguous()),
        ValueError,
        "cu_nodes[3] = 8 must equal T = 7",
    ),
}

BAD_CASES = {}
for _op in (
    "verify_greedy_ragged",
    "rejection_sample_ragged",
    "typical_accept_ragged",
    "sampling_probs_ragged",
):
    for _name, _case in CU_CASES.items():
        BAD_CASES[f"{_op}: {_name}"] = _case
for _op in ("verify_greedy_ragged", "rejection_sample_ragged", "typical_accept_ragged"):
    for _name, _case in TREE_CASES.items():
        BAD_CASES[f"{_op}: {_name}"] = _case
for _op in ("rejection_sample_ragged", "typical_accept_ragged"):
    for _name, _case in PROB_CASES.items():
        BAD_CASES[f"{_op}: {_name}"] = _case
for _name, _case in SAMPLING_CASES.items():
    BAD_CASES[f"sampling_probs_ragged: {_name}"] = _case
BAD_CASES.update(
    {
        "verify_greedy_ragged: target_argmax negative": (
            poke_arg("target_argmax", 5, -2),
            IndexError,
            "target_argmax[5] = -2 is negative",
        ),
        "verify_greedy_ragged: target_argmax shape": (
            set_arg("target_argmax", lambda t: t[:5]),
            ValueError,
            "target_argmax must have the shape of tokens",
        ),
        "verify_greedy_ragged: token negative": (poke_arg("tokens", 7, -1), IndexError, "tokens[7] = -1"),
        "rejection_sample_ragged: draft_probs wrong V": (
            set_arg("draft_probs", lambda t: t[:, :6].contiguous()),
            ValueError,
            "draft_probs.size(1) must equal V (target_probs.size(1)) = 7",
        ),
        "rejection_sample_ragged: draft_probs NaN in row 2's root": (
            # read by the test of row 2's first child (entry 5, token 6)
            poke_arg("draft_probs", (4, 6), NAN),
            ValueError,
            "draft_probs[4, 6] is NaN",
        ),
        "typical_accept_ragged: threshold NaN": (
            lambda a: a.update(posterior_threshold=NAN),
            ValueError,
            "posterior_threshold must be finite and >= 0, got nan",
        ),
    }
)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input(device, case):
    op = case.split(":")[0]
    fn = getattr(ops, op)
    fn(**_good(op, device))  # the unmutated arguments are valid
    args = _good(op, device)
    mutate, exc, fragment = BAD_CASES[case]
    mutate(args)
    with pytest.raises(exc) as info:
        fn(**args)
    message = str(info.value)
    assert f"specdec::{op}:" in message and fragment in message, message


def test_bad_input_table_names_arguments():
    import inspect

    for case, (_, _, fragment) in BAD_CASES.items():
        op = case.split(":")[0]
        params = inspect.signature(getattr(ops, op)).parameters
        assert any(p in fragment for p in params), (case, fragment)


def test_row_errors_name_the_lowest_row():
    """Two bad rows: the lower row's error is raised (row 0's parent, before row 2's NaN)."""
    a = _good("rejection_sample_ragged", "cpu")
    a["parents"] = a["parents"].clone()
    a["parents"][2] = 2
    a["target_probs"] = a["target_probs"].clone()
    a["target_probs"][4, 6] = NAN
    with pytest.raises(ValueError, match=r"parents\[2\] = 2 is outside \[0, 2\)"):
        ops.rejection_sample_ragged(**a)
    a["cu_nodes"] = torch.tensor([0, 3, 3, 8], dtype=torch.int32)  # cu_nodes comes first
    with pytest.raises(ValueError, match=r"cu_nodes\[2\] = 3"):
        ops.rejection_sample_ragged(**a)


def test_device_mismatch_is_reported():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device to put one argument on another device")
    args = _good("rejection_sample_ragged", "cuda")
    args["cu_nodes"] = args["cu_nodes"].cpu()
    with pytest.raises(ValueError, match=r"specdec::rejection_sample_ragged: cu_nodes must be on cuda"):
        ops.rejection_sample_ragged(**args)
