"""sampling_probs: the one transform of draft and target logits.

It must match its float64 reference (specdec_cuda.reference.sampling_probs) to
rtol 1e-5 / atol 1e-7 on every combination of temperature, top-k and top-p,
with ties kept; then the op contract (opcheck, empty batches) and a table of bad
inputs, each raising a typed error that names the op and the argument.
"""

from __future__ import annotations

import pytest
import torch

from specdec_cuda import ops, reference

from conftest import ALL_DEVICES, INF, NAN, noncontig, on, poke_arg, set_arg

# ---------------------------------------------------------------------------
# Against the reference.
# ---------------------------------------------------------------------------

SAMPLING_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def sampling_grid(vocab: int):
    """Every combination of temperature, top_k and top_p the brief names, one row each."""
    rows = [
        (t, k, p)
        for t in (0.0, 0.5, 1.0, 2.0)
        for k in (0, 1, 5, vocab, vocab + 7)
        for p in (1.0, 0.9, 0.5, 1e-6)
    ]
    temperature = torch.tensor([r[0] for r in rows], dtype=torch.float32)
    top_k = torch.tensor([r[1] for r in rows], dtype=torch.int32)
    top_p = torch.tensor([r[2] for r in rows], dtype=torch.float32)
    return temperature, top_k, top_p


def random_logits(gen, shape, dtype):
    """randn * 3, with every third row integer-valued (ties for top-k/top-p/argmax) and a few
    -inf entries (masked tokens; never a whole row)."""
    x = torch.randn(shape, generator=gen) * 3
    ints = torch.randint(-3, 4, shape, generator=gen).float()
    x[::3] = ints[::3]
    mask = torch.rand(shape, generator=gen) < 0.05
    mask[..., 0] = False
    x = x.masked_fill(mask, float("-inf"))
    return x.to(dtype).contiguous()


def assert_probs_close(got, expected, logits):
    assert got.dtype == torch.float32 and got.shape == logits.shape, (got.dtype, got.shape)
    got, expected = got.cpu(), expected.cpu()
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7), (
        f"max abs diff {float((got - expected).abs().max())}"
    )
    sums = got.double().sum(-1)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5), sums


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype", SAMPLING_DTYPES, ids=str)
@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("vocab", [7, 50, 1000])
def test_sampling_probs_matches_reference(device, dtype, rank, vocab, gen):
    temperature, top_k, top_p = sampling_grid(vocab)
    batch = temperature.numel()
    shape = (batch, vocab) if rank == 2 else (batch, 3, vocab)
    logits = random_logits(gen, shape, dtype)
    expected = reference.sampling_probs(logits, temperature, top_k, top_p)
    got = ops.sampling_probs(*on(device, l=logits, t=temperature, k=top_k, p=top_p).values())
    assert_probs_close(got, expected, logits)
    # Temperature 0: one-hot at the first maximum.
    flat_logits = logits.float().view(batch, -1, vocab)
    first_max = flat_logits.argmax(-1)
    g = got.cpu().view(batch, -1, vocab)
    for b in torch.nonzero(temperature == 0)[:, 0].tolist():
        onehot = torch.zeros(flat_logits.shape[1], vocab)
        onehot.scatter_(-1, first_max[b][:, None], 1.0)
        assert torch.equal(g[b], onehot), b


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_sampling_probs_ties(device):
    """Ties at the maximum (temperature 0: the first one), at the k-th logit and at the
    top-p boundary are kept."""
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0, 2.0, 2.0]] * 4)
    temperature = torch.tensor([0.0, 1.0, 1.0, 1.0])
    top_k = torch.tensor([0, 2, 3, 0], dtype=torch.int32)
    top_p = torch.tensor([1.0, 1.0, 1.0, 1e-6])
    expected = reference.sampling_probs(logits, temperature, top_k, top_p)
    got = ops.sampling_probs(*on(device, l=logits, t=temperature, k=top_k, p=top_p).values())
    assert_probs_close(got, expected, logits)
    nz = (got.cpu() > 0).int().tolist()
    assert nz[0] == [0, 1, 0, 0, 0, 0]
    assert nz[1] == [0, 1, 1, 0, 0, 0]
    assert nz[2] == [0, 1, 1, 0, 1, 1]  # k = 3 keeps both 2.0s
    assert nz[3] == [0, 1, 1, 0, 0, 0]


SAMPLING_EDGES = {
    # name: (logits, temperature, top_k, top_p)
    "top_p just below 1": (
        lambda g: torch.randn(3, 5000, generator=g) * 2,
        [1.0, 0.5, 2.0],
        [0, 100, 4999],
        [float(torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)))] * 3,
    ),
    "extreme temperatures": (
        lambda g: torch.randn(3, 300, generator=g),
        [1e-40, 1e-30, 3e38],
        [0, 0, 0],
        [1.0, 0.9, 0.5],
    ),
    # every finite temperature is valid, up to float32's maximum (regression: > 3e38 was rejected)
    "temperatures up to float max": (
        lambda g: torch.randn(3, 300, generator=g) * 1e3,
        [torch.finfo(torch.float32).max, 3.3e38, 3.1e38],
        [0, 5, 0],
        [1.0, 1.0, 0.5],
    ),
    "vocabulary of one": (
        lambda g: torch.randn(3, 1, generator=g),
        [0.0, 1.0, 1.0],
        [0, 1, 5],
        [1.0, 0.5, 1e-6],
    ),
    "mostly -inf": (
        lambda g: torch.full((2, 8), float("-inf")).index_fill_(1, torch.tensor([3, 5]), 1.0),
        [1.0, 0.0],
        [4, 2],
        [0.9, 0.9],
    ),
    "bf16 large logits": (
        lambda g: (torch.randn(4, 300, generator=g) * 50).bfloat16(),
        [1.0, 0.3, 7.0, 0.01],
        [0, 10, 3, 1],
        [0.9, 0.5, 1.0, 0.2],
    ),
    "all logits equal": (lambda g: torch.zeros(3, 10), [1.0, 0.0, 1.0], [0, 0, 3], [0.5, 0.5, 0.1]),
    "signed zeros tie": (lambda g: torch.tensor([[-0.0, 0.0, -1.0]] * 2), [0.0, 1.0], [0, 1], [1.0, 1.0]),
}


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("case", list(SAMPLING_EDGES))
def test_sampling_probs_edge_cases(device, case, gen):
    make, t, k, p = SAMPLING_EDGES[case]
    logits = make(gen).contiguous()
    temperature = torch.tensor(t, dtype=torch.float32)
    top_k = torch.tensor(k, dtype=torch.int32)
    top_p = torch.tensor(p, dtype=torch.float32)
    expected = reference.sampling_probs(logits, temperature, top_k, top_p)
    got = ops.sampling_probs(*on(device, l=logits, t=temperature, k=top_k, p=top_p).values())
    assert_probs_close(got, expected, logits)


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_sampling_probs_large_vocab(device, gen):
    vocab = 256 * 1024
    logits = torch.randn(2, vocab, generator=gen) * 4
    temperature = torch.tensor([1.0, 0.8])
    top_k = torch.tensor([0, 50], dtype=torch.int32)
    top_p = torch.tensor([0.9, 0.95])
    expected = reference.sampling_probs(logits, temperature, top_k, top_p)
    got = ops.sampling_probs(*on(device, l=logits, t=temperature, k=top_k, p=top_p).values())
    assert_probs_close(got, expected, logits)


# ---------------------------------------------------------------------------
# min-p: keeps {exp(z - max z) >= min_p}, with top-k, before top-p.
# ---------------------------------------------------------------------------


def min_p_grid(vocab: int):
    """Every combination of temperature, top_k, top_p and min_p, one row each."""
    rows = [
        (t, k, p, m)
        for t in (0.0, 0.5, 1.0, 2.0)
        for k in (0, 5, vocab)
        for p in (1.0, 0.9, 1e-6)
        for m in (0.0, 1e-4, 0.05, 0.3, 1.0)
    ]
    cols = list(zip(*rows))
    return (
        torch.tensor(cols[0], dtype=torch.float32),
        torch.tensor(cols[1], dtype=torch.int32),
        torch.tensor(cols[2], dtype=torch.float32),
        torch.tensor(cols[3], dtype=torch.float32),
    )


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype", SAMPLING_DTYPES, ids=str)
@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("vocab", [7, 50, 1000])
def test_min_p_matches_reference(device, dtype, rank, vocab, gen):
    temperature, top_k, top_p, min_p = min_p_grid(vocab)
    batch = temperature.numel()
    shape = (batch, vocab) if rank == 2 else (batch, 2, vocab)
    logits = random_logits(gen, shape, dtype)
    expected = reference.sampling_probs(logits, temperature, top_k, top_p, min_p)
    d = on(device, l=logits, t=temperature, k=top_k, p=top_p, m=min_p)
    got = ops.sampling_probs(d["l"], d["t"], d["k"], d["p"], min_p=d["m"])
    assert_probs_close(got, expected, logits)
    # The kept set is exactly {exp(z - max z) >= min_p} within top-k (top-p off, T > 0).
    x = logits.double().cpu().view(batch, -1, vocab)
    g = got.cpu().view(batch, -1, vocab)
    for b in range(batch):
        t, k, tp, m = float(temperature[b]), int(top_k[b]), float(top_p[b]), float(min_p[b])
        if t == 0.0 or tp < 1.0 or not (0 < k < vocab) and m == 0.0:
            continue
        z = x[b] / t
        # -inf logits are masked tokens: never kept (with m = 0 the first test holds for them,
        # and a k-th largest of -inf, a row with fewer than k finite logits, keeps them too)
        keep = (torch.exp(z - z.max(-1, keepdim=True).values) >= m) & (z > float("-inf"))
        if 0 < k < vocab:
            keep &= z >= torch.topk(z, k, -1).values[:, -1:]
        assert torch.equal(g[b] > 0, keep), (b, t, k, m)


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_min_p_default_is_off(device, gen):
    """min_p=None, min_p of zeros and the four-argument call give the same bits."""
    logits = random_logits(gen, (12, 3, 500), torch.float32)
    temperature = torch.tensor([0.0, 0.7, 1.0, 1.5] * 3)
    top_k = torch.tensor([0, 0, 5, 40] * 3, dtype=torch.int32)
    top_p = torch.tensor([1.0, 0.9, 0.5, 1.0] * 3)
    d = on(device, l=logits, t=temperature, k=top_k, p=top_p)
    plain = ops.sampling_probs(d["l"], d["t"], d["k"], d["p"])
    assert torch.equal(plain, ops.sampling_probs(d["l"], d["t"], d["k"], d["p"], min_p=None))
    assert torch.equal(
        plain, ops.sampling_probs(d["l"], d["t"], d["k"], d["p"], torch.zeros(12, device=device))
    )
    assert torch.equal(plain, torch.ops.specdec.sampling_probs(d["l"], d["t"], d["k"], d["p"]))


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_min_p_ties_and_edges(device):
    """min_p = 1 keeps exactly the maxima (ties kept); a tiny min_p keeps every finite
    logit; min_p is ignored at temperature 0; a row of -inf entries keeps them at 0."""
    logits = torch.tensor(
        [
            [1.0, 3.0, 3.0, 0.0, 2.0, 2.0],
            [1.0, 3.0, 3.0, 0.0, 2.0, 2.0],
            [1.0, 3.0, 3.0, 0.0, 2.0, 2.0],
            [1.0, 3.0, float("-inf"), 0.0, 2.0, float("-inf")],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )
    temperature = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])
    top_k = torch.tensor([0, 0, 0, 0, 2], dtype=torch.int32)
    top_p = torch.ones(5)
    min_p = torch.tensor([1.0, 1e-30, 1.0, 0.1, 1.0])
    expected = reference.sampling_probs(logits, temperature, top_k, top_p, min_p)
    d = on(device, l=logits, t=temperature, k=top_k, p=top_p, m=min_p)
    got = ops.sampling_probs(d["l"], d["t"], d["k"], d["p"], d["m"])
    assert_probs_close(got, expected, logits)
    nz = (got.cpu() > 0).int().tolist()
    assert nz[0] == [0, 1, 1, 0, 0, 0]  # the two maxima, each 1/2
    assert nz[1] == [1, 1, 1, 1, 1, 1]
    assert nz[2] == [0, 1, 0, 0, 0, 0]  # greedy: the first maximum
    assert nz[3] == [1, 1, 0, 0, 1, 0]  # exp(-1), exp(-2) >= 0.1 > exp(-3)
    assert nz[4] == [1, 1, 1, 1, 1, 1]  # all tied with the maximum


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_min_p_large_vocab(device, gen):
    vocab = 128 * 1024
    logits = torch.randn(4, vocab, generator=gen) * 3
    temperature = torch.tensor([1.0, 0.8, 0.7, 1.2])
    top_k = torch.tensor([0, 0, 100, 0], dtype=torch.int32)
    top_p = torch.tensor([1.0, 0.9, 0.95, 0.5])
    min_p = torch.tensor([0.01, 0.001, 0.05, 1e-6])
    expected = reference.sampling_probs(logits, temperature, top_k, top_p, min_p)
    d = on(device, l=logits, t=temperature, k=top_k, p=top_p, m=min_p)
    assert_probs_close(ops.sampling_probs(d["l"], d["t"], d["k"], d["p"], d["m"]), expected, logits)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("vocab", [1, 3, 8, 9, 15, 16, 17, 4096 + 5])
def test_vocab_sizes_around_the_vector_width(device, vocab, gen):
    """Every remainder of the kernels' 4- and 8-wide loops, with top-k / top-p / min-p."""
    temperature, top_k, top_p = sampling_grid(vocab)
    batch = temperature.numel()
    min_p = torch.tensor([0.0, 0.01, 0.2, 0.0] * (batch // 4), dtype=torch.float32)
    logits = random_logits(gen, (batch, vocab), torch.float32)
    expected = reference.sampling_probs(logits, temperature, top_k, top_p, min_p)
    d = on(device, l=logits, t=temperature, k=top_k, p=top_p, m=min_p)
    assert_probs_close(ops.sampling_probs(d["l"], d["t"], d["k"], d["p"], d["m"]), expected, logits)


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_top_p_boundary_is_the_float64_decision(device, gen):
    """Rows whose top-p boundary sits where a float32 cumulative sum would move it: many
    tokens of nearly equal mass (flat rows of 128k tokens, logits 0.01 * randn) and
    top_p values across the range.  The kept set must be the float64 oracle's exactly."""
    vocab = 128 * 1024
    logits = torch.randn(6, vocab, generator=gen) * 0.01
    temperature = torch.ones(6)
    top_k = torch.zeros(6, dtype=torch.int32)
    top_p = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9, 0.999])
    expected = reference.sampling_probs(logits, temperature, top_k, top_p)
    got = ops.sampling_probs(*on(device, l=logits, t=temperature, k=top_k, p=top_p).values()).cpu()
    assert torch.equal(got > 0, expected > 0)
    assert_probs_close(got, expected, logits)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_top_p_at_the_histogram_bucket_edges(device, temperature, gen):
    """The CPU kernel gathers only the histogram bucket(s) of z - z_max (width 1/4) where
    the cumulative mass crosses top_p.  Logits exactly on bucket edges (z - z_max = -j/4,
    several tokens each, j up to 90, i.e. past the catch-all bucket at -16), and top_p
    set to the float32 nearest each edge's cumulative mass (within ~1e-8 of it, inside
    the kernel's rounding margin) or just off it: the kept set must be the oracle's."""
    vocab = 91 * 5
    j = torch.arange(vocab) // 5
    x = (10.0 - j.double() / 4 * temperature).float()
    x = x[torch.randperm(vocab, generator=gen)]
    p = torch.softmax(x.double() / temperature, -1)
    z = x.double() / temperature
    edges = torch.stack([p[z >= z.max() - e / 4 - 1e-12].sum() for e in range(0, 91, 7)])
    tops = torch.cat([edges, edges * (1 - 3e-7), edges * (1 + 3e-7)]).clamp(max=0.999).float()
    rows = tops.numel()
    logits = x.expand(rows, vocab).contiguous()
    t = torch.full((rows,), temperature)
    k = torch.zeros(rows, dtype=torch.int32)
    expected = reference.sampling_probs(logits, t, k, tops)
    got = ops.sampling_probs(*on(device, l=logits, t=t, k=k, p=tops).values()).cpu()
    assert torch.equal(got > 0, expected > 0)
    assert_probs_close(got, expected, logits)


# ---------------------------------------------------------------------------
# The op contract: empty batches, opcheck.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_empty_batch(device):
    vocab, nodes = 9, 4
    for shape in [(0, vocab), (0, nodes, vocab)]:
        logits = torch.zeros(shape, device=device)
        out = ops.sampling_probs(
            logits,
            torch.zeros(0, device=device),
            torch.zeros(0, dtype=torch.int32, device=device),
            torch.ones(0, device=device),
        )
        assert out.shape == shape and out.dtype == torch.float32 and out.device == logits.device


def _good_args(device):
    g = torch.Generator().manual_seed(3)
    return dict(
        logits=torch.randn(2, 3, 7, generator=g).to(device),
        temperature=torch.tensor([0.7, 1.0], device=device),
        top_k=torch.tensor([0, 3], dtype=torch.int32, device=device),
        top_p=torch.tensor([0.9, 1.0], device=device),
    )


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_opcheck(device):
    g = torch.Generator().manual_seed(0)
    batch, nodes, vocab = 3, 6, 11
    args = (
        torch.randn(batch, nodes, vocab, generator=g).to(device),
        torch.tensor([0.0, 0.7, 1.0], device=device),
        torch.tensor([0, 3, 20], dtype=torch.int32, device=device),
        torch.tensor([1.0, 0.9, 0.5], device=device),
    )
    torch.library.opcheck(torch.ops.specdec.sampling_probs.default, args)
    torch.library.opcheck(
        torch.ops.specdec.sampling_probs.default,
        args,
        {"min_p": torch.tensor([0.0, 0.1, 1.0], device=device)},
    )


# ---------------------------------------------------------------------------
# Bad input: a typed exception naming the op and the argument.
# ---------------------------------------------------------------------------


def _logits_2d_nan(a):
    t = a["logits"][:, 0].clone()
    t[1, 4] = NAN
    a["logits"] = t


BAD_CASES = {
    "temperature negative": (
        poke_arg("temperature", 1, -0.5),
        ValueError,
        "temperature[1] = -0.5 must be finite and >= 0",
    ),
    "temperature NaN": (
        poke_arg("temperature", 0, NAN),
        ValueError,
        "temperature[0] = nan must be finite and >= 0",
    ),
    "temperature inf": (poke_arg("temperature", 0, INF), ValueError, "temperature[0] = inf"),
    "logits 2-D row NaN": (_logits_2d_nan, ValueError, "logits row 0 of sequence 1 holds a NaN"),
    "top_p zero": (poke_arg("top_p", 1, 0.0), ValueError, "top_p[1] = 0 must be in (0, 1]"),
    "top_p 1.5": (poke_arg("top_p", 0, 1.5), ValueError, "top_p[0] = 1.5 must be in (0, 1]"),
    "top_p NaN": (poke_arg("top_p", 0, NAN), ValueError, "top_p[0] = nan"),
    "top_k negative": (poke_arg("top_k", 1, -1), ValueError, "top_k[1] = -1 must be >= 0"),
    "logits NaN": (
        poke_arg("logits", (1, 2, 3), NAN),
        ValueError,
        "logits row 2 of sequence 1 holds a NaN or +inf logit",
    ),
    "logits +inf": (
        poke_arg("logits", (0, 0, 0), INF),
        ValueError,
        "logits row 0 of sequence 0 holds a NaN or +inf logit",
    ),
    "logits row all -inf": (
        poke_arg("logits", (1, 1), float("-inf")),
        ValueError,
        "logits row 1 of sequence 1 is -inf everywhere",
    ),
    "logits float64": (
        set_arg("logits", lambda t: t.double()),
        TypeError,
        "logits must have dtype float32, float16 or bfloat16",
    ),
    "logits 1-D": (
        set_arg("logits", lambda t: t[0, 0]),
        ValueError,
        "logits must be a 2-D [B, V] or 3-D [B, N, V] tensor",
    ),
    "logits non-contiguous": (set_arg("logits", noncontig), ValueError, "logits must be contiguous"),
    "temperature float64": (
        set_arg("temperature", lambda t: t.double()),
        TypeError,
        "temperature must have dtype float32, got float64",
    ),
    "temperature wrong length": (
        set_arg("temperature", lambda t: t[:1].contiguous()),
        ValueError,
        "temperature.size(0) must equal B",
    ),
    "top_k int64": (
        set_arg("top_k", lambda t: t.long()),
        TypeError,
        "top_k must have dtype int32, got int64",
    ),
    "top_k float": (
        set_arg("top_k", lambda t: t.float()),
        TypeError,
        "top_k must have dtype int32, got float32",
    ),
    "top_p float64": (
        set_arg("top_p", lambda t: t.double()),
        TypeError,
        "top_p must have dtype float32, got float64",
    ),
    "top_p 2-D": (set_arg("top_p", lambda t: t[:, None]), ValueError, "top_p must be a 1-D tensor"),
}


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input(device, case):
    ops.sampling_probs(**_good_args(device))  # the unmutated arguments are valid
    args = _good_args(device)
    mutate, exc, fragment = BAD_CASES[case]
    mutate(args)
    with pytest.raises(exc) as info:
        ops.sampling_probs(**args)
    message = str(info.value)
    assert "specdec::sampling_probs" in message and fragment in message, message


def test_bad_input_table_names_arguments():
    """Every fragment of the table names an argument of the op (a typo guard)."""
    import inspect

    params = inspect.signature(ops.sampling_probs).parameters
    for case, (_, _, fragment) in BAD_CASES.items():
        assert any(p in fragment for p in params), (case, fragment)


def _good_min_p_args(device):
    a = _good_args(device)
    a["min_p"] = torch.tensor([0.05, 0.0], device=device)
    return a


MIN_P_BAD_CASES = {
    "min_p negative": (poke_arg("min_p", 1, -0.1), ValueError, "min_p[1] = -0.1 must be in [0, 1]"),
    "min_p above 1": (poke_arg("min_p", 0, 1.5), ValueError, "min_p[0] = 1.5 must be in [0, 1]"),
    "min_p NaN": (poke_arg("min_p", 0, NAN), ValueError, "min_p[0] = nan must be in [0, 1]"),
    "min_p inf": (poke_arg("min_p", 1, INF), ValueError, "min_p[1] = inf must be in [0, 1]"),
    "min_p float64": (
        set_arg("min_p", lambda t: t.double()),
        TypeError,
        "min_p must have dtype float32, got float64",
    ),
    "min_p int32": (
        set_arg("min_p", lambda t: t.int()),
        TypeError,
        "min_p must have dtype float32, got int32",
    ),
    "min_p wrong length": (
        set_arg("min_p", lambda t: t[:1].contiguous()),
        ValueError,
        "min_p.size(0) must equal B (logits.size(0)) = 2",
    ),
    "min_p 2-D": (set_arg("min_p", lambda t: t[:, None]), ValueError, "min_p must be a 1-D tensor [B]"),
    "min_p non-contiguous": (
        set_arg("min_p", lambda t: torch.stack([t, t], -1)[:, 0]),
        ValueError,
        "min_p must be contiguous",
    ),
    "min_p a number": (lambda a: a.update(min_p=0.1), TypeError, "min_p must be a tensor, got float"),
}


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("case", sorted(MIN_P_BAD_CASES))
def test_bad_min_p(device, case):
    ops.sampling_probs(**_good_min_p_args(device))
    args = _good_min_p_args(device)
    mutate, exc, fragment = MIN_P_BAD_CASES[case]
    mutate(args)
    with pytest.raises(exc) as info:
        ops.sampling_probs(**args)
    message = str(info.value)
    assert "specdec::sampling_probs:" in message and fragment in message, message


def test_min_p_on_another_device_is_reported():
    """min_p on the CPU beside meta logits (the fake kernel: no CUDA needed), and beside
    CUDA logits (the CUDA kernel) where a device is present."""
    args = _good_min_p_args("meta")
    args["min_p"] = torch.tensor([0.05, 0.0])
    with pytest.raises(ValueError, match=r"specdec::sampling_probs: min_p must be on meta"):
        ops.sampling_probs(**args)
    if torch.cuda.is_available():
        args = _good_min_p_args("cuda")
        args["min_p"] = args["min_p"].cpu()
        with pytest.raises(ValueError, match=r"specdec::sampling_probs: min_p must be on cuda"):
            ops.sampling_probs(**args)


def test_device_mismatch_is_reported():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device to put one argument on another device")
    args = _good_args("cuda")
    args["top_k"] = args["top_k"].cpu()
    with pytest.raises(ValueError, match=r"specdec::sampling_probs: top_k must be on cuda"):
        ops.sampling_probs(**args)
