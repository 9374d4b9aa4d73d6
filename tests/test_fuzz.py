"""Property tests of the op boundary: whatever the arguments, an op either returns a
valid result or raises TypeError / ValueError / IndexError naming itself, writes
nothing when it raises, and its fake (meta) kernel refuses what the real kernel
refuses.

The fuzz test is seeded from the test seed (conftest), bounded in calls, and mixes
valid and broken calls: random shapes, dtypes, index values at and beyond their
limits, NaN/inf probabilities, empty batches.
"""

from __future__ import annotations

import pytest
import torch

from specdec_cuda import ops, reference

from conftest import random_parents

OK_ERRORS = (TypeError, ValueError, IndexError)
I32, I64 = torch.int32, torch.int64


def _expect_op_error(fn, op: str):
    """Run fn: fine if it returns, else the error must be typed and name the op."""
    try:
        return fn(), None
    except OK_ERRORS as exc:
        assert f"specdec::{op}" in str(exc), f"{type(exc).__name__} without the op name: {exc}"
        return None, exc


# ---------------------------------------------------------------------------
# Valid arguments of every op, small.
# ---------------------------------------------------------------------------


def _args(op: str, device="cpu", g=None):
    g = g or torch.Generator().manual_seed(0)
    batch, nodes, vocab = 2, 4, 7
    parents = torch.tensor([[-1, 0, 1, 1], [-1, 0, 0, 2]], dtype=I32)
    tokens = torch.randint(0, vocab, (batch, nodes), generator=g)
    probs = torch.softmax(torch.randn(batch, nodes, vocab, generator=g), -1)
    seed, offset = torch.tensor([1, 2]), torch.tensor([0, 5])
    if op == "kv_compact_":
        a = dict(
            caches=[torch.randn(batch, 2, 16, 4, generator=g) for _ in range(2)],
            cache_lens=torch.tensor([3, 4], dtype=I32),
            accept_nodes=torch.tensor([[0, 1, -1], [0, 2, 3]], dtype=I32),
            num_accepted=torch.tensor([2, 3], dtype=I32),
        )
    elif op == "kv_compact_paged_":
        a = dict(
            k_pages=[torch.randn(6, 4, 2, 4, generator=g)],
            v_pages=[torch.randn(6, 4, 2, 4, generator=g)],
            block_tables=torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=I32),
            cache_lens=torch.tensor([1, 2], dtype=I32),
            accept_nodes=torch.tensor([[0, 3, 4], [0, 2, 9]], dtype=I32),
            num_accepted=torch.tensor([3, 3], dtype=I32),
        )
    elif op == "build_tree":
        a = dict(parents=parents)
    elif op in ("tree_attention", "tree_attention_paged"):
        mask = torch.ops.specdec.build_tree(parents)[0]
        q = torch.randn(batch, nodes, 4, 8, generator=g)
        lens = torch.tensor([3, 5], dtype=I32)
        if op == "tree_attention":
            a = dict(
                q=q,
                k_cache=torch.randn(batch, 2, 12, 8, generator=g),
                v_cache=torch.randn(batch, 2, 12, 8, generator=g),
                cache_lens=lens,
                mask=mask,
                scale=0.35,
            )
        else:
            a = dict(
                q=q,
                k_pages=torch.randn(6, 4, 2, 8, generator=g),
                v_pages=torch.randn(6, 4, 2, 8, generator=g),
                block_tables=torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=I32),
                cache_lens=lens,
                mask=mask,
                scale=0.35,
            )
    elif op == "sampling_probs":
        a = dict(
            logits=torch.randn(batch, 3, vocab, generator=g),
            temperature=torch.tensor([0.7, 1.0]),
            top_k=torch.tensor([0, 3], dtype=I32),
            top_p=torch.tensor([0.9, 1.0]),
        )
    elif op == "verify_greedy":
        a = dict(
            tokens=tokens, parents=parents, target_argmax=torch.randint(0, vocab, (batch, nodes), generator=g)
        )
    elif op == "rejection_sample":
        a = dict(
            tokens=tokens,
            parents=parents,
            draft_probs=probs,
            target_probs=probs.flip(-1).contiguous(),
            seed=seed,
            offset=offset,
        )
    elif op == "typical_accept":
        a = dict(
            tokens=tokens,
            parents=parents,
            target_probs=probs,
            posterior_threshold=0.09,
            posterior_alpha=0.3,
            seed=seed,
            offset=offset,
        )
    elif op == "sampling_probs_ragged":
        a = dict(
            logits=torch.randn(5, vocab, generator=g),
            cu_nodes=torch.tensor([0, 3, 5], dtype=I32),
            temperature=torch.tensor([0.7, 1.0]),
            top_k=torch.tensor([0, 3], dtype=I32),
            top_p=torch.tensor([0.9, 1.0]),
            min_p=torch.tensor([0.0, 0.05]),
        )
    elif op in ("verify_greedy_ragged", "rejection_sample_ragged", "typical_accept_ragged"):
        # Two rows, of 3 nodes (a chain) and 2 nodes, end to end: T = 5.
        flat = dict(
            tokens=torch.randint(0, vocab, (5,), generator=g),
            parents=torch.tensor([-1, 0, 1, -1, 0], dtype=I32),
            cu_nodes=torch.tensor([0, 3, 5], dtype=I32),
        )
        flat_probs = torch.softmax(torch.randn(5, vocab, generator=g), -1)
        if op == "verify_greedy_ragged":
            a = dict(**flat, target_argmax=torch.randint(0, vocab, (5,), generator=g))
        elif op == "rejection_sample_ragged":
            a = dict(
                **flat,
                draft_probs=flat_probs,
                target_probs=flat_probs.flip(-1).contiguous(),
                seed=seed,
                offset=offset,
            )
        else:
            a = dict(
                **flat,
                target_probs=flat_probs,
                posterior_threshold=0.09,
                posterior_alpha=0.3,
                seed=seed,
                offset=offset,
            )
    else:
        raise AssertionError(op)
    return {
        k: (
            v.to(device)
            if isinstance(v, torch.Tensor)
            else [t.to(device) for t in v]
            if isinstance(v, list)
            else v
        )
        for k, v in a.items()
    }


OPS = [
    "kv_compact_",
    "kv_compact_paged_",
    "build_tree",
    "sampling_probs",
    "verify_greedy",
    "rejection_sample",
    "typical_accept",
    "sampling_probs_ragged",
    "verify_greedy_ragged",
    "rejection_sample_ragged",
    "typical_accept_ragged",
]
RAGGED_VERIFIERS = ("verify_greedy_ragged", "rejection_sample_ragged", "typical_accept_ragged")
TENSOR_ARGS = {op: [k for k, v in _args(op).items() if isinstance(v, torch.Tensor)] for op in OPS}


def _call_raw(op, args):
    return getattr(torch.ops.specdec, op)(**args)


# ---------------------------------------------------------------------------
# None where a tensor belongs (through torch.ops and through the wrappers).
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("op,arg", [(op, arg) for op in OPS for arg in TENSOR_ARGS[op]])
def test_none_for_a_tensor_names_the_argument(op, arg):
    args = _args(op)
    if arg in ("draft_probs", "min_p"):
        pytest.skip(f"{arg} is optional: None is a valid value")
    args[arg] = None
    with pytest.raises(TypeError) as info:
        getattr(ops, op)(**args)
    assert f"specdec::{op}" in str(info.value) and arg in str(info.value), str(info.value)
    # Through torch.ops the dispatcher may refuse None before our kernel runs (with its own
    # error); when our kernel gets it (an undefined tensor), the op's check names it.
    with pytest.raises((TypeError, RuntimeError, NotImplementedError)) as info:
        _call_raw(op, args)
    if isinstance(info.value, TypeError) and f"specdec::{op}:" in str(info.value):
        assert f"{arg} must be a tensor, got None" in str(info.value), str(info.value)


def test_kv_compact_none_cache_lens_through_torch_ops():
    """Regression (fuzzing): torch.ops.specdec.kv_compact_(caches, None, ...) read the device
    of the undefined tensor before any check."""
    args = _args("kv_compact_")
    with pytest.raises(TypeError, match=r"specdec::kv_compact_: cache_lens must be a tensor, got None"):
        torch.ops.specdec.kv_compact_(args["caches"], None, args["accept_nodes"], args["num_accepted"])


# ---------------------------------------------------------------------------
# Fake kernels refuse what the real kernels refuse.
# ---------------------------------------------------------------------------


def _to_meta(args, only=None):
    out = {}
    for k, v in args.items():
        move = only is None or k == only
        if isinstance(v, torch.Tensor):
            out[k] = v.to("meta") if move else v
        elif isinstance(v, list):
            out[k] = [t.to("meta") for t in v] if move else v
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("op", OPS)
def test_fake_kernel_allocates_like_the_real_one(op):
    real = _call_raw(op, _args(op))
    fake = _call_raw(op, _to_meta(_args(op)))
    if real is None:
        assert fake is None
        return
    real = real if isinstance(real, tuple) else (real,)
    fake = fake if isinstance(fake, tuple) else (fake,)
    for r, f in zip(real, fake):
        assert f.device.type == "meta" and f.shape == r.shape and f.dtype == r.dtype


@pytest.mark.parametrize(
    "op,arg", [(op, arg) for op in OPS for arg in TENSOR_ARGS[op] if len(TENSOR_ARGS[op]) > 1]
)
def test_fake_kernel_refuses_a_meta_tensor_among_cpu_tensors(op, arg):
    """Regression (fuzzing): one meta tensor among CPU tensors ran the fake and returned
    uninitialised memory; it must raise the device error of the real op."""
    args = _to_meta(_args(op), only=arg)
    with pytest.raises(ValueError) as info:
        _call_raw(op, args)
    assert f"specdec::{op}" in str(info.value) and "must be on" in str(info.value), str(info.value)


MALFORMED = {  # op -> (argument, replacement builder, exception, fragment)
    "kv_compact_": ("accept_nodes", lambda t: t[0], ValueError, "accept_nodes must be a 2-D tensor"),
    "kv_compact_paged_": (
        "block_tables",
        lambda t: t.long(),
        TypeError,
        "block_tables must have dtype int32",
    ),
    "build_tree": ("parents", lambda t: t[0], ValueError, "parents must be a 2-D tensor"),
    "tree_attention": ("mask", lambda t: t[:, :2], ValueError, "mask must have shape [2, 4, 1]"),
    "tree_attention_paged": (
        "block_tables",
        lambda t: t.long(),
        TypeError,
        "block_tables must have dtype int32",
    ),
    "sampling_probs": ("top_k", lambda t: t.float(), TypeError, "top_k must have dtype int32"),
    "verify_greedy": (
        "target_argmax",
        lambda t: t[:, :2],
        ValueError,
        "target_argmax must have the shape of tokens",
    ),
    "rejection_sample": ("target_probs", lambda t: t[:, 0], ValueError, "target_probs must be a 3-D tensor"),
    "typical_accept": ("seed", lambda t: t[:1], ValueError, "seed.size(0) must equal B"),
    "sampling_probs_ragged": ("cu_nodes", lambda t: t.long(), TypeError, "cu_nodes must have dtype int32"),
    "verify_greedy_ragged": (
        "target_argmax",
        lambda t: t[:2],
        ValueError,
        "target_argmax must have the shape of tokens",
    ),
    "rejection_sample_ragged": (
        "target_probs",
        lambda t: t[0],
        ValueError,
        "target_probs must be a 2-D tensor",
    ),
    "typical_accept_ragged": ("seed", lambda t: t[:1], ValueError, "seed.size(0) must equal B"),
}


@pytest.mark.parametrize("op", OPS)
def test_malformed_meta_inputs_raise_the_ops_message(op):
    """Regression (fuzzing): malformed meta inputs gave Python unpack errors instead of
    the op's message.  The fake and the real kernel raise the same type and text."""
    arg, bad, exc, fragment = MALFORMED[op]
    for device in ("cpu", "meta"):
        args = _to_meta(_args(op)) if device == "meta" else _args(op)
        args[arg] = bad(args[arg])
        with pytest.raises(exc) as info:
            _call_raw(op, args)
        assert f"specdec::{op}" in str(info.value) and fragment in str(info.value), (device, str(info.value))


def test_fake_kernel_message_reaches_torch_compile():
    def step(tokens, parents, argmax):
        return ops.verify_greedy(tokens, parents, argmax)

    a = _args("verify_greedy")
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception) as info:
        compiled(a["tokens"], a["parents"], a["target_argmax"][:, :2])
    assert "specdec::verify_greedy: target_argmax must have the shape of tokens" in str(info.value)


# ---------------------------------------------------------------------------
# Partly overlapping cache tensors.
# ---------------------------------------------------------------------------


def test_partly_overlapping_caches_are_refused():
    """Regression (fuzzing): only equal start addresses were detected."""
    buf = torch.randn(2 * 2 * 16 * 4 + 4)
    a = buf[:-4].view(2, 2, 16, 4)
    b = buf[4:].view(2, 2, 16, 4)
    args = _args("kv_compact_")
    lens = args["cache_lens"].clone()
    snapshot = buf.clone()
    with pytest.raises(ValueError, match="shares its memory with caches"):
        ops.kv_compact_([a, b], args["cache_lens"], args["accept_nodes"], args["num_accepted"])
    assert torch.equal(buf, snapshot) and torch.equal(args["cache_lens"], lens)
    pages = torch.randn(13, 4, 2, 4)
    with pytest.raises(ValueError, match="shares its memory"):
        ops.kv_compact_paged_(
            [pages[:6]],
            [pages[5:11]],
            **{k: v for k, v in _args("kv_compact_paged_").items() if k not in ("k_pages", "v_pages")},
        )


# ---------------------------------------------------------------------------
# The fuzz loop.
# ---------------------------------------------------------------------------


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shapes and values, NaN equal to NaN."""
    return a.shape == b.shape and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))


def _mutations(g):
    """Random value-level mutations of the valid arguments (index values at and past
    their limits, NaN/inf/negative probabilities, huge sampling parameters)."""
    r = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))  # noqa: E731
    specials = [0, -1, 1, 2**31 - 1, -(2**31), 7, 16, 3]
    fspecials = [float("nan"), float("inf"), -float("inf"), -0.0, 1e-45, 3.4e38, -1.0, 2.0]

    def poke(t):
        t = t.clone()
        if t.numel() == 0:
            return t
        idx = tuple(r(0, s) for s in t.shape)
        if t.is_floating_point():
            t[idx] = fspecials[r(0, len(fspecials))]
        else:
            t[idx] = specials[r(0, len(specials))]
        return t

    return poke


@pytest.mark.parametrize("op", OPS)
def test_fuzz_op_boundary(op, seed):
    """300 seeded calls per op: valid results match the reference (where it has one),
    invalid calls raise typed errors naming the op and leave in-place arguments unchanged."""
    g = torch.Generator().manual_seed(seed)
    poke = _mutations(g)
    raised = 0
    for i in range(300):
        args = _args(op, g=g)
        keys = [k for k, v in args.items() if isinstance(v, torch.Tensor)]
        for _ in range(int(torch.randint(0, 3, (1,), generator=g))):
            k = keys[int(torch.randint(0, len(keys), (1,), generator=g))]
            args[k] = poke(args[k])
        if op == "build_tree" and i % 5 == 0:  # random valid trees of other sizes too
            n = int(torch.randint(1, 70, (1,), generator=g))
            args["parents"] = torch.tensor([random_parents(g, n, "random") for _ in range(3)], dtype=I32)
        before = {
            k: (v.clone() if isinstance(v, torch.Tensor) else [t.clone() for t in v])
            for k, v in args.items()
            if isinstance(v, (torch.Tensor, list))
        }
        out, exc = _expect_op_error(lambda a=args: getattr(ops, op)(**a), op)
        if exc is not None:
            raised += 1
            for k, v in before.items():
                now = args[k]
                pairs = [(now, v)] if isinstance(v, torch.Tensor) else list(zip(now, v))
                assert all(_same(a, b) for a, b in pairs), f"{k} changed although the call raised"
            continue
        if op in ("verify_greedy", "rejection_sample", "typical_accept"):
            accept, num, nxt = out
            vocab = args["target_probs"].shape[-1] if "target_probs" in args else None
            assert bool((num >= 1).all()) and bool((accept[:, 0] == 0).all())
            if vocab is not None:
                assert bool(((nxt >= 0) & (nxt < vocab)).all())
            ref = getattr(reference, op)(**args)
            for a, b in zip(out, ref):
                assert torch.equal(a, b), (op, a, b)
        elif op in ("tree_attention", "tree_attention_paged"):
            ref = getattr(reference, op)(**args)
            assert torch.allclose(out[0], ref[0], atol=1e-4, rtol=1e-4) and torch.allclose(
                out[1], ref[1], atol=1e-4
            )
        elif op == "build_tree":
            ref = reference.build_tree(args["parents"])
            assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
        elif op == "sampling_probs":
            ref = reference.sampling_probs(**args)
            assert torch.allclose(out, ref, rtol=1e-5, atol=1e-7), (args, out, ref)
        elif op == "sampling_probs_ragged":
            ref = reference.sampling_probs_ragged(**args)
            assert torch.allclose(out, ref, rtol=1e-5, atol=1e-7), (args, out, ref)
        elif op in RAGGED_VERIFIERS:
            accept, num, nxt = out
            roots = args["cu_nodes"][:-1].long()
            assert bool((num >= 1).all()) and bool((accept[roots] == 0).all())
            if "target_probs" in args:
                assert bool(((nxt >= 0) & (nxt < args["target_probs"].shape[-1])).all())
            ref = getattr(reference, op)(**args)
            for a, b in zip(out, ref):
                assert torch.equal(a, b), (op, a, b)
        else:  # the KV ops: the same result as the reference on the arguments before the call
            ref_args = {k: before.get(k, v) for k, v in args.items()}
            getattr(reference, op)(**ref_args)
            for k, v in ref_args.items():
                now = args[k]
                pairs = [(now, v)] if isinstance(v, torch.Tensor) else list(zip(now, v))
                assert all(_same(a, b) for a, b in pairs), f"{op}: {k} differs from the reference"
    assert 0 < raised < 300, f"{op}: {raised} of 300 calls raised (the mix should have both)"
