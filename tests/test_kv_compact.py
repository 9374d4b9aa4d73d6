"""kv_compact_ and kv_compact_paged_ against the pure-PyTorch reference."""

from __future__ import annotations

import pytest
import torch

from specdec_cuda import ops, reference

from conftest import ALL_DEVICES, random_parents

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


# ---------------------------------------------------------------------------
# Random inputs: trees, accepted paths, caches, block tables.
# ---------------------------------------------------------------------------


def accepted_path(gen: torch.Generator, parents: list[int], max_len: int | None) -> list[int]:
    """The root-to-node path of a random node (strictly increasing, starts at 0)."""
    node = int(torch.randint(0, len(parents), (1,), generator=gen))
    path = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    path.reverse()
    return path[:max_len] if max_len else path


def random_accept(
    gen, batch: int, nodes: int, capacity: int, shape: str = "random", max_len: int | None = None
):
    """cache_lens, accept_nodes (-1 padded), num_accepted for `batch` random trees.

    Roughly one row in eight accepts nothing at all (num_accepted = 0).
    """
    paths = []
    for _ in range(batch):
        if torch.rand((), generator=gen) < 0.125:
            paths.append([])
        else:
            paths.append(accepted_path(gen, random_parents(gen, nodes, shape), max_len))
    width = max([len(p) for p in paths] + [1])
    accept = torch.full((batch, width), -1, dtype=torch.int32)
    for b, p in enumerate(paths):
        accept[b, : len(p)] = torch.tensor(p, dtype=torch.int32)
    num = torch.tensor([len(p) for p in paths], dtype=torch.int32)
    lens = torch.randint(0, capacity - nodes + 1, (batch,), generator=gen, dtype=torch.int32)
    return lens, accept, num


def random_caches(gen, n: int, shape, dtype, device) -> list[torch.Tensor]:
    return [torch.randn(shape, generator=gen).to(dtype=dtype, device=device) for _ in range(n)]


def random_block_tables(gen, batch: int, max_blocks: int, spare: int) -> tuple[torch.Tensor, int]:
    """Distinct, shuffled pages for every row; `spare` extra pages nobody uses."""
    num_pages = batch * max_blocks + spare
    perm = torch.randperm(num_pages, generator=gen, dtype=torch.int32)
    return perm[: batch * max_blocks].view(batch, max_blocks).clone(), num_pages


def clones(ts):
    return [t.clone() for t in ts]


def assert_all_equal(got, expected):
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert torch.equal(g.cpu(), e.cpu()), f"tensor {i} differs"


# ---------------------------------------------------------------------------
# Correctness against the reference.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [8, 64, 128, 256, 5])
def test_matches_reference(device, dtype, head_dim, gen):
    batch = int(torch.randint(1, 7, (1,), generator=gen))
    heads = int(torch.randint(1, 5, (1,), generator=gen))
    nodes, slots = 33, 96
    caches = random_caches(gen, 4, (batch, heads, slots, head_dim), dtype, device)
    lens, accept, num = random_accept(gen, batch, nodes, slots)
    expected = clones(caches)
    exp_lens = lens.clone().to(device)
    reference.kv_compact_(expected, exp_lens, accept.to(device), num.to(device))
    got_lens = lens.clone().to(device)
    ops.kv_compact_(
        caches=caches, cache_lens=got_lens, accept_nodes=accept.to(device), num_accepted=num.to(device)
    )
    assert_all_equal(caches, expected)
    assert torch.equal(got_lens.cpu(), lens + num)
    assert torch.equal(exp_lens.cpu(), lens + num)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("tree", ["chain", "star", "random"])
def test_tree_shapes(device, tree, gen):
    """Chains (every node in place: nothing moves), stars (one move), random trees."""
    batch, nodes, slots = 8, 64, 160
    caches = random_caches(gen, 3, (batch, 2, slots, 16), torch.float16, device)
    lens, accept, num = random_accept(gen, batch, nodes, slots, shape=tree, max_len=8)
    expected = clones(caches)
    reference.kv_compact_(expected, lens.clone(), accept, num)
    got_lens = lens.clone().to(device)
    ops.kv_compact_(caches, got_lens, accept.to(device), num.to(device))
    assert_all_equal(caches, expected)
    assert torch.equal(got_lens.cpu(), lens + num)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("page_size", [1, 16, 64])
@pytest.mark.parametrize("dtype", DTYPES)
def test_paged_matches_reference(device, page_size, dtype, gen):
    batch, heads, head_dim, nodes = 5, 2, 64, 40
    max_blocks = -(-200 // page_size)
    tables, num_pages = random_block_tables(gen, batch, max_blocks, spare=3)
    lens, accept, num = random_accept(gen, batch, nodes, max_blocks * page_size)
    shape = (num_pages, page_size, heads, head_dim)
    k, v = random_caches(gen, 3, shape, dtype, device), random_caches(gen, 3, shape, dtype, device)
    ek, ev = clones(k), clones(v)
    reference.kv_compact_paged_(ek, ev, tables, lens.clone(), accept, num)
    got_lens = lens.clone().to(device)
    ops.kv_compact_paged_(
        k_pages=k,
        v_pages=v,
        block_tables=tables.to(device),
        cache_lens=got_lens,
        accept_nodes=accept.to(device),
        num_accepted=num.to(device),
    )
    assert_all_equal(k, ek)
    assert_all_equal(v, ev)
    assert torch.equal(got_lens.cpu(), lens + num)


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_paged_ignores_untouched_block_entries(device, gen):
    """Entries past the touched blocks may be -1 (unallocated), as engines leave them."""
    page_size = 4
    k = random_caches(gen, 1, (8, page_size, 1, 8), torch.float32, device)
    v = random_caches(gen, 1, (8, page_size, 1, 8), torch.float32, device)
    tables = torch.tensor([[3, 5, -1, -1, -1, -1]], dtype=torch.int32)
    lens = torch.tensor([2], dtype=torch.int32)
    accept = torch.tensor([[0, 2, 5]], dtype=torch.int32)  # touches slots 2..7: blocks 0, 1
    num = torch.tensor([3], dtype=torch.int32)
    ek, ev = clones(k), clones(v)
    reference.kv_compact_paged_(ek, ev, tables, lens.clone(), accept, num)
    got = lens.clone().to(device)
    ops.kv_compact_paged_(k, v, tables.to(device), got, accept.to(device), num.to(device))
    assert_all_equal(k + v, ek + ev)
    assert got.item() == 5


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_overlapping_sources_and_destinations(device):
    """Node 2 moves to slot L+1 while node 3 moves to slot L+2: read before write."""
    cache = torch.arange(2 * 10 * 3, dtype=torch.float32).view(1, 2, 10, 3).to(device)
    old = cache.clone()
    lens = torch.tensor([4], dtype=torch.int32, device=device)
    accept = torch.tensor([[0, 2, 3, 5, -1]], dtype=torch.int32, device=device)
    num = torch.tensor([4], dtype=torch.int32, device=device)
    ops.kv_compact_([cache], lens, accept, num)
    expected = old.clone()
    expected[:, :, 5] = old[:, :, 6]
    expected[:, :, 6] = old[:, :, 7]
    expected[:, :, 7] = old[:, :, 9]
    assert torch.equal(cache, expected)
    assert lens.item() == 8


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_single_tensor_and_empty_inputs(device, gen):
    cache = torch.randn(2, 1, 12, 4, generator=gen).to(device)
    lens = torch.tensor([0, 3], dtype=torch.int32, device=device)
    accept = torch.tensor([[0, 4], [0, 1]], dtype=torch.int32, device=device)
    num = torch.tensor([2, 2], dtype=torch.int32, device=device)
    expected = cache.clone()
    reference.kv_compact_([expected], lens.clone(), accept, num)
    ops.kv_compact_(cache, lens, accept, num)  # a bare tensor is a one-element list
    assert torch.equal(cache, expected)
    # No cache tensors: only the lengths advance.
    ops.kv_compact_([], lens, accept, num)
    assert lens.tolist() == [4, 7]
    # Batch of zero.
    empty_lens = torch.zeros(0, dtype=torch.int32, device=device)
    ops.kv_compact_(
        [torch.randn(0, 2, 8, 4, device=device)],
        empty_lens,
        torch.zeros(0, 3, dtype=torch.int32, device=device),
        torch.zeros(0, dtype=torch.int32, device=device),
    )
    ops.kv_compact_paged_(
        [torch.randn(4, 2, 1, 4, device=device)],
        [torch.randn(4, 2, 1, 4, device=device)],
        torch.zeros(0, 2, dtype=torch.int32, device=device),
        empty_lens,
        torch.zeros(0, 3, dtype=torch.int32, device=device),
        torch.zeros(0, dtype=torch.int32, device=device),
    )
    assert empty_lens.numel() == 0


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_many_tensors_in_one_call(device, gen):
    """More tensors than one CUDA launch carries (128): chunked, still correct."""
    caches = random_caches(gen, 150, (2, 1, 20, 8), torch.float16, device)
    lens, accept, num = random_accept(gen, 2, 10, 20)
    expected = clones(caches)
    reference.kv_compact_(expected, lens.clone(), accept, num)
    ops.kv_compact_(caches, lens.clone().to(device), accept.to(device), num.to(device))
    assert_all_equal(caches, expected)


# ---------------------------------------------------------------------------
# The op contract: opcheck, torch.compile.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_opcheck(device, gen):
    caches = random_caches(gen, 2, (3, 2, 40, 16), torch.float16, device)
    lens, accept, num = random_accept(gen, 3, 12, 40)
    args = (caches, lens.to(device), accept.to(device), num.to(device))
    torch.library.opcheck(torch.ops.specdec.kv_compact_.default, args)
    tables, num_pages = random_block_tables(gen, 3, 5, spare=1)
    k = random_caches(gen, 2, (num_pages, 8, 2, 16), torch.bfloat16, device)
    v = random_caches(gen, 2, (num_pages, 8, 2, 16), torch.bfloat16, device)
    args = (k, v, tables.to(device), lens.to(device), accept.to(device), num.to(device))
    torch.library.opcheck(torch.ops.specdec.kv_compact_paged_.default, args)


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_torch_compile_fullgraph(device, gen):
    caches = random_caches(gen, 2, (3, 2, 40, 16), torch.float32, device)
    lens, accept, num = random_accept(gen, 3, 12, 40)
    expected = clones(caches)
    reference.kv_compact_(expected, lens.clone(), accept, num)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(caches, lens, accept, num):
        ops.kv_compact_(caches, lens, accept, num)
        return lens * 1

    out = step(caches, lens.clone().to(device), accept.to(device), num.to(device))
    assert_all_equal(caches, expected)
    assert torch.equal(out.cpu(), lens + num)


# ---------------------------------------------------------------------------
# Bad input: a clear exception naming op and argument, and nothing written.
# ---------------------------------------------------------------------------


def _good_args(device):
    g = torch.Generator().manual_seed(0)
    caches = [torch.randn(2, 2, 16, 8, generator=g).to(device) for _ in range(2)]
    lens = torch.tensor([3, 4], dtype=torch.int32, device=device)
    accept = torch.tensor([[0, 1, -1], [0, 2, 5]], dtype=torch.int32, device=device)
    num = torch.tensor([2, 3], dtype=torch.int32, device=device)
    return dict(caches=caches, cache_lens=lens, accept_nodes=accept, num_accepted=num)


def _i32(rows, device):
    return torch.tensor(rows, dtype=torch.int32, device=device)


BAD_CONTIGUOUS = {
    "accept not increasing": (
        lambda a, d: a.update(accept_nodes=_i32([[0, 1, -1], [0, 2, 2]], d)),
        ValueError,
        "accept_nodes[1, 2] = 2 is not greater",
    ),
    "accept negative": (
        lambda a, d: a.update(accept_nodes=_i32([[-1, 1, -1], [0, 2, 5]], d)),
        IndexError,
        "accept_nodes[0, 0] = -1 is negative",
    ),
    "slot beyond cache": (
        lambda a, d: a.update(accept_nodes=_i32([[0, 1, -1], [0, 2, 12]], d)),
        IndexError,
        "accept_nodes[1, 2] = 12 puts its slot",
    ),
    "num_accepted too large": (
        lambda a, d: a.update(num_accepted=_i32([2, 4], d)),
        IndexError,
        "num_accepted[1] = 4 is outside [0, 3]",
    ),
    "num_accepted negative": (
        lambda a, d: a.update(num_accepted=_i32([-1, 3], d)),
        IndexError,
        "num_accepted[0] = -1",
    ),
    "cache_lens negative": (
        lambda a, d: a.update(cache_lens=_i32([-2, 4], d)),
        IndexError,
        "cache_lens[0] = -2 is outside [0, 16]",
    ),
    "cache_lens beyond": (
        lambda a, d: a.update(cache_lens=_i32([3, 17], d)),
        IndexError,
        "cache_lens[1] = 17",
    ),
    "accept int64": (
        lambda a, d: a.update(accept_nodes=a["accept_nodes"].long()),
        TypeError,
        "accept_nodes must have dtype int32, got int64",
    ),
    "cache_lens int64": (
        lambda a, d: a.update(cache_lens=a["cache_lens"].long()),
        TypeError,
        "cache_lens must have dtype int32",
    ),
    "cache float64": (
        lambda a, d: a.update(caches=[c.double() for c in a["caches"]]),
        TypeError,
        "caches[0] must have dtype float32, float16 or bfloat16",
    ),
    "mixed dtypes": (
        lambda a, d: a.update(caches=[a["caches"][0], a["caches"][1].half()]),
        TypeError,
        "caches[1] must have the dtype of the first",
    ),
    "mismatched shapes": (
        lambda a, d: a.update(caches=[a["caches"][0], a["caches"][1][:, :, :8]]),
        ValueError,
        "caches[1] must have the shape",
    ),
    "cache 3-D": (
        lambda a, d: a.update(caches=[c[0] for c in a["caches"]]),
        ValueError,
        "caches[0] must be a 4-D tensor [B, H, S, D]",
    ),
    "cache batch mismatch": (
        lambda a, d: a.update(caches=[c[:1] for c in a["caches"]]),
        ValueError,
        "caches[0].size(0) must equal B",
    ),
    "non-contiguous cache": (
        lambda a, d: a.update(caches=[c.transpose(1, 2).contiguous().transpose(1, 2) for c in a["caches"]]),
        ValueError,
        "caches[0] must be contiguous",
    ),
    "same tensor twice": (
        lambda a, d: a.update(caches=[a["caches"][0], a["caches"][0]]),
        ValueError,
        "caches[1] shares its memory",
    ),
    "partly overlapping caches": (
        lambda a, d: a.update(caches=_overlapping_views(a["caches"][0])),
        ValueError,
        "shares its memory with caches[",
    ),
    "advanced length beyond int32": (
        # zero-width caches can address 2**31 slots; the advanced length cannot be stored
        lambda a, d: a.update(
            caches=[torch.empty(2, 2, 2**31, 0, device=d) for _ in range(2)],
            cache_lens=_i32([2**31 - 2, 0], d),
            accept_nodes=_i32([[0, 1, -1], [0, 2, 5]], d),
        ),
        ValueError,
        "cache_lens[0] + num_accepted[0] = 2147483648 does not fit cache_lens' int32",
    ),
    "accept 1-D": (
        lambda a, d: a.update(accept_nodes=a["accept_nodes"][0]),
        ValueError,
        "accept_nodes must be a 2-D tensor",
    ),
    "num_accepted wrong batch": (
        lambda a, d: a.update(num_accepted=_i32([2], d)),
        ValueError,
        "num_accepted.size(0) must equal B",
    ),
    "caches not a list": (
        lambda a, d: a.update(caches=42),
        TypeError,
        "caches must be a tensor or a list of tensors",
    ),
    "caches element not a tensor": (
        lambda a, d: a.update(caches=[a["caches"][0], "x"]),
        TypeError,
        "caches[1] must be a tensor",
    ),
}


def _overlapping_views(cache):
    """Two [B, H, S, D] views of one buffer, the second starting one slot later."""
    flat = torch.randn(cache.numel() + cache.shape[-1], dtype=cache.dtype).to(cache.device)
    a = flat[: cache.numel()].view(cache.shape)
    b = flat[cache.shape[-1] :].view(cache.shape)
    return [a, b]


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("case", sorted(BAD_CONTIGUOUS))
def test_bad_input_contiguous(device, case):
    args = _good_args(device)
    ops.kv_compact_(**_good_args(device))  # the unmutated arguments are valid
    mutate, exc, fragment = BAD_CONTIGUOUS[case]
    mutate(args, device)
    tensors = (
        [t for t in args["caches"] if isinstance(t, torch.Tensor)] if isinstance(args["caches"], list) else []
    )
    before = [t.clone() for t in tensors]
    lens_before = args["cache_lens"].clone()
    with pytest.raises(exc) as info:
        ops.kv_compact_(**args)
    message = str(info.value)
    assert "kv_compact_" in message and fragment in message, message
    assert torch.equal(args["cache_lens"], lens_before), "cache_lens changed on bad input"
    assert_all_equal(tensors, before)


def _good_paged(device):
    g = torch.Generator().manual_seed(1)
    k = [torch.randn(6, 4, 2, 8, generator=g).to(device) for _ in range(2)]
    v = [torch.randn(6, 4, 2, 8, generator=g).to(device) for _ in range(2)]
    tables = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32, device=device)
    lens = torch.tensor([1, 2], dtype=torch.int32, device=device)
    accept = torch.tensor([[0, 3, 4], [0, 2, 9]], dtype=torch.int32, device=device)
    num = torch.tensor([3, 3], dtype=torch.int32, device=device)
    return dict(
        k_pages=k, v_pages=v, block_tables=tables, cache_lens=lens, accept_nodes=accept, num_accepted=num
    )


BAD_PAGED = {
    "block out of range": (
        lambda a, d: a["block_tables"].__setitem__((1, 2), 6),
        IndexError,
        "block_tables[1, 2] = 6 is outside [0, 6)",
    ),
    "block negative": (
        lambda a, d: a["block_tables"].__setitem__((0, 1), -1),
        IndexError,
        "block_tables[0, 1] = -1",
    ),
    "page shared across rows": (
        lambda a, d: a["block_tables"].__setitem__((1, 0), 1),
        ValueError,
        "block_tables[1, 0] = 1 is also touched by an earlier row",
    ),
    "block repeated": (
        lambda a, d: a["block_tables"].__setitem__((1, 1), 3),
        ValueError,
        "block_tables[1, 1] = 3 repeats a page",
    ),
    "slot beyond table": (
        lambda a, d: a["accept_nodes"].__setitem__((1, 2), 10),
        IndexError,
        "beyond the cache of 12 slots",
    ),
    "k/v count differ": (
        lambda a, d: a.update(v_pages=a["v_pages"][:1]),
        ValueError,
        "v_pages must hold as many tensors as k_pages",
    ),
    "v shape differs": (
        lambda a, d: a.update(v_pages=[t[:, :2].contiguous() for t in a["v_pages"]]),
        ValueError,
        "v_pages[0] must have the shape",
    ),
    "tables int64": (
        lambda a, d: a.update(block_tables=a["block_tables"].long()),
        TypeError,
        "block_tables must have dtype int32",
    ),
    "tables wrong batch": (
        lambda a, d: a.update(block_tables=a["block_tables"][:1]),
        ValueError,
        "block_tables.size(0) must equal B",
    ),
}


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("case", sorted(BAD_PAGED))
def test_bad_input_paged(device, case):
    args = _good_paged(device)
    # The good arguments themselves pass against the reference.
    ok = _good_paged(device)
    ops.kv_compact_paged_(**ok)
    mutate, exc, fragment = BAD_PAGED[case]
    mutate(args, device)
    before = [t.clone() for t in args["k_pages"] + args["v_pages"]]
    lens_before = args["cache_lens"].clone()
    with pytest.raises(exc) as info:
        ops.kv_compact_paged_(**args)
    message = str(info.value)
    assert "kv_compact_paged_" in message and fragment in message, message
    assert torch.equal(args["cache_lens"], lens_before)
    assert_all_equal(args["k_pages"] + args["v_pages"], before)


def test_device_mismatch_is_reported():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device to put one argument on another device")
    args = _good_args("cuda")
    args["num_accepted"] = args["num_accepted"].cpu()
    with pytest.raises(ValueError, match=r"kv_compact_: num_accepted must be on cuda"):
        ops.kv_compact_(**args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_graph_capture_and_replay():
    """Captured into a CUDA graph (no host sync inside), replays give the reference result."""
    gen = torch.Generator().manual_seed(5)
    caches = random_caches(gen, 4, (4, 2, 64, 32), torch.float16, "cuda")
    lens, accept, num = random_accept(gen, 4, 16, 64)
    lens_d, accept_d, num_d = lens.cuda(), accept.cuda(), num.cuda()
    originals = clones(caches)
    expected = clones(caches)
    reference.kv_compact_(expected, lens.clone(), accept, num)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # warm up on a side stream, as capture requires
        ops.kv_compact_(caches, lens_d, accept_d, num_d)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.kv_compact_(caches, lens_d, accept_d, num_d)
    for _ in range(2):
        for c, o in zip(caches, originals):
            c.copy_(o)
        lens_d.copy_(lens)
        graph.replay()
        torch.cuda.synchronize()
        assert_all_equal(caches, expected)
        assert torch.equal(lens_d.cpu(), lens + num)
