"""tree_attention and tree_attention_paged against the float64 reference.

The reference (specdec_cuda.reference.tree_attention) runs in float64 on the
SAME inputs the op sees, upcast: for float16/bfloat16 the comparison measures
only the kernel's own rounding (float32 accumulation, the output rounded to
q's dtype), not the rounding of the inputs.  ``out`` must be within a relative
(Frobenius) error of 1e-5 for float32 and 2e-2 for float16/bfloat16; ``lse``
within 1e-5 (float32) / 1e-3 (half types), relative plus the same absolute.
Then the features of docs/ops.md (sliding window, logit soft-capping,
attention sinks, a value head size other than the key's) on both CPU paths
and both layouts, the op contract (every output written, empty batches,
opcheck, torch.compile, CUDA graphs) and a table of bad inputs, each raising a
typed error that names the op and the argument.
"""

from __future__ import annotations

import pytest
import torch

from specdec_cuda import ops, reference

from conftest import ALL_DEVICES, cuda_graph_capture, random_parents

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
OUT_RTOL = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 2e-2}
LSE_TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-3}

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


# ---------------------------------------------------------------------------
# Random inputs: trees, ragged prefixes, caches, block tables.
# ---------------------------------------------------------------------------


def tree_parents(gen: torch.Generator, nodes: int, shape: str) -> list[int]:
    """chain / star / random (conftest), or "deep" (chain-like, short side branches)
    and "wide" (star-like: every node hangs off one of the first three nodes)."""
    if shape in ("chain", "star", "random"):
        return random_parents(gen, nodes, shape)
    parents = [-1]
    for i in range(1, nodes):
        if shape == "deep":
            if float(torch.rand((), generator=gen)) < 0.85:
                parents.append(i - 1)
            else:
                parents.append(int(torch.randint(max(0, i - 4), i, (1,), generator=gen)))
        elif shape == "wide":
            parents.append(int(torch.randint(0, min(i, 3), (1,), generator=gen)))
        else:
            raise ValueError(shape)
    return parents


def tree_batch(gen, batch: int, nodes: int, shape: str) -> torch.Tensor:
    """int32 [B, N] parents, a different tree in every row."""
    rows = [tree_parents(gen, nodes, shape) for _ in range(batch)]
    return torch.tensor(rows, dtype=torch.int32).view(batch, nodes)


def ragged_lens(gen, batch: int, nodes: int, slots: int) -> torch.Tensor:
    """int32 [B] prefix lengths with cache_lens[b] + N <= S; with two or more rows the
    first is 0 (no prefix at all) and the last fills the cache exactly."""
    lens = torch.randint(0, slots - nodes + 1, (batch,), generator=gen, dtype=torch.int32)
    if batch >= 2:
        lens[0] = 0
        lens[-1] = slots - nodes
    return lens


def randn(gen, shape, dtype, device, std: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=gen) * std).to(dtype=dtype, device=device)


def make_inputs(gen, *, batch, nodes, hq, hkv, dim, slots, shape, dtype, device):
    parents = tree_batch(gen, batch, nodes, shape)
    mask, _ = ops.build_tree(parents.to(device))
    q = randn(gen, (batch, nodes, hq, dim), dtype, device)
    k = randn(gen, (batch, hkv, slots, dim), dtype, device)
    v = randn(gen, (batch, hkv, slots, dim), dtype, device)
    lens = ragged_lens(gen, batch, nodes, slots).to(device)
    return q, k, v, lens, mask


def block_tables_for(
    gen, lens: torch.Tensor, nodes: int, page_size: int, max_blocks: int, spare: int = 2
) -> tuple[torch.Tensor, int]:
    """Shuffled distinct pages for the blocks each row needs (slots [0, lens[b] + N)),
    -1 in every entry past them; `spare` pages nobody uses."""
    needed = [-(-(int(n) + nodes) // page_size) for n in lens.cpu()]
    num_pages = sum(needed) + spare
    perm = torch.randperm(num_pages, generator=gen, dtype=torch.int32)
    tables = torch.full((len(needed), max_blocks), -1, dtype=torch.int32)
    used = 0
    for b, n in enumerate(needed):
        tables[b, :n] = perm[used : used + n]
        used += n
    return tables, num_pages


def paged_to_contiguous(pages: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """[P, page_size, H, D] + [B, max_blocks] -> [B, H, max_blocks * page_size, D]."""
    page_size = pages.shape[1]
    s = torch.arange(tables.shape[1] * page_size, device=tables.device)
    idx = tables.long()[:, s // page_size].clamp(min=0)
    return pages[idx, s % page_size].permute(0, 2, 1, 3)


# ---------------------------------------------------------------------------
# Comparison against the float64 reference.
# ---------------------------------------------------------------------------


def reference64(q, k, v, lens, mask, scale, **features):
    """The reference on the op's inputs upcast to float64, on the CPU (features: window,
    softcap, sinks)."""
    if features.get("sinks") is not None:
        features = dict(features, sinks=features["sinks"].cpu())
    return reference.tree_attention(
        q.cpu().double(), k.cpu().double(), v.cpu().double(), lens.cpu(), mask.cpu(), scale, **features
    )


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.cpu().double(), want.cpu().double()
    denom = float(want.norm())
    return float((got - want).norm()) / (denom if denom > 0 else 1.0)


def check_lse(got: torch.Tensor, want: torch.Tensor, tol: float) -> float:
    """Same -inf pattern; finite entries within tol * (1 + |want|).  Returns the worst
    error relative to that scale."""
    got, want = got.cpu().double(), want.cpu().double()
    assert got.shape == want.shape
    assert not torch.isnan(got).any(), "lse holds NaN"
    assert torch.equal(torch.isinf(got), torch.isinf(want)), "lse -inf pattern differs"
    assert torch.equal(got[torch.isinf(got)], want[torch.isinf(want)])
    fin = torch.isfinite(want)
    if not fin.any():
        return 0.0
    err = float(((got[fin] - want[fin]).abs() / (1.0 + want[fin].abs())).max())
    assert err <= tol, f"lse error {err:.3e} > {tol:.0e}"
    return err


def check_against_reference(out, lse, q, k, v, lens, mask, scale, record=None, lse_scale=1.0, **features):
    batch, nodes, hq, dim = q.shape
    assert out.shape == (batch, nodes, hq, v.shape[-1])
    assert out.dtype == q.dtype and out.device == q.device
    assert lse.shape == (batch, nodes, hq) and lse.dtype == torch.float32
    assert lse.device == q.device
    assert not torch.isnan(out).any(), "out holds NaN"
    ref_out, ref_lse = reference64(q, k, v, lens, mask, scale, **features)
    err = rel_err(out, ref_out)
    lse_err = check_lse(lse, ref_lse, LSE_TOL[q.dtype] * lse_scale)
    if record is not None:
        record("out_rel_err", f"{err:.3e}")
        record("lse_err", f"{lse_err:.3e}")
        record("dtype", str(q.dtype).removeprefix("torch."))
    assert err < OUT_RTOL[q.dtype], f"out relative error {err:.3e} >= {OUT_RTOL[q.dtype]:.0e}"
    return err


# (batch, nodes, hq, hkv, dim, slots, tree shape, scale: None means dim ** -0.5)
CASES = [
    pytest.param(3, 5, 4, 4, 64, 60, "chain", None, id="chain-n5-mha-d64"),
    pytest.param(3, 33, 8, 2, 128, 120, "star", None, id="star-n33-gqa4-d128"),
    pytest.param(3, 64, 8, 1, 64, 200, "random", None, id="random-n64-gqa8-d64"),
    pytest.param(1, 64, 4, 1, 256, 150, "deep", None, id="deep-n64-gqa4-d256-b1"),
    pytest.param(3, 33, 4, 4, 80, 100, "wide", None, id="wide-n33-mha-d80"),
    pytest.param(3, 1, 8, 1, 128, 50, "chain", None, id="n1-gqa8-d128"),
    pytest.param(3, 32, 8, 8, 64, 90, "chain", None, id="chain-n32-bit31"),
    pytest.param(3, 17, 4, 1, 64, 80, "random", 0.37, id="random-n17-scale0.37"),
    pytest.param(2, 256, 4, 1, 64, 300, "random", None, id="random-n256"),
    pytest.param(1, 33, 4, 1, 128, 2048, "deep", None, id="deep-s2048"),
    # Small problems take the CPU kernel's direct loop instead of its GEMM path.
    pytest.param(4, 4, 8, 2, 32, 40, "random", None, id="small-direct-gqa4-d32"),
    pytest.param(2, 9, 4, 1, 64, 30, "deep", None, id="small-direct-deep-d64"),
    # The float32 direct kernels: head sizes that are not a multiple of 8 (the
    # one-slot-at-a-time scores) or past one 64-column chunk, slot counts that are
    # not a multiple of 8 (the last partial vector of the softmax).
    pytest.param(3, 7, 4, 2, 20, 37, "random", None, id="direct-d20"),
    pytest.param(2, 3, 4, 1, 256, 45, "random", None, id="direct-d256"),
    pytest.param(3, 11, 6, 3, 72, 61, "deep", None, id="direct-d72"),
]


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("batch,nodes,hq,hkv,dim,slots,shape,scale", CASES)
def test_matches_reference(
    device, dtype, batch, nodes, hq, hkv, dim, slots, shape, scale, gen, record_property
):
    q, k, v, lens, mask = make_inputs(
        gen,
        batch=batch,
        nodes=nodes,
        hq=hq,
        hkv=hkv,
        dim=dim,
        slots=slots,
        shape=shape,
        dtype=dtype,
        device=device,
    )
    scale = dim**-0.5 if scale is None else scale
    before = [t.clone() for t in (q, k, v, lens, mask)]
    out, lse = ops.tree_attention(q=q, k_cache=k, v_cache=v, cache_lens=lens, mask=mask, scale=scale)
    for t, b in zip((q, k, v, lens, mask), before):
        assert torch.equal(t, b), "an input was modified"
    check_against_reference(out, lse, q, k, v, lens, mask, scale, record_property)


# On CUDA, fp16/bf16 with D a multiple of 8 from 16-byte aligned storage run the
# tensor-core kernel (mma.m16n8k16, two-stage cp.async K/V pipeline, splits
# merged by lse); anything else the SIMT kernel.  Both are checked here.
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize(
    "batch,nodes,hq,hkv,dim,slots,shape",
    [
        pytest.param(2, 64, 32, 8, 128, 6000, "random", id="b2-n64-gqa4-d128-s6000"),
        pytest.param(1, 16, 32, 8, 128, 40000, "chain", id="b1-n16-gqa4-d128-s40000"),
        pytest.param(4, 128, 8, 1, 64, 3000, "wide", id="b4-n128-gqa8-d64-tiles"),
        pytest.param(2, 24, 16, 2, 256, 5000, "deep", id="b2-n24-gqa8-d256"),
    ],
)
def test_cuda_tensor_core_long_prefix(dtype, batch, nodes, hq, hkv, dim, slots, shape, gen, record_property):
    q, k, v, lens, mask = make_inputs(
        gen,
        batch=batch,
        nodes=nodes,
        hq=hq,
        hkv=hkv,
        dim=dim,
        slots=slots,
        shape=shape,
        dtype=dtype,
        device="cuda",
    )
    out, lse = ops.tree_attention(q, k, v, lens, mask, dim**-0.5)
    check_against_reference(out, lse, q, k, v, lens, mask, dim**-0.5, record_property)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("dim,misaligned", [(36, False), (64, True)], ids=["d36", "misaligned-q"])
def test_cuda_half_inputs_the_tensor_cores_cannot_take(dtype, dim, misaligned, gen, record_property):
    """D not a multiple of 8, or q starting 2 bytes past a 16-byte boundary: the SIMT kernel."""
    batch, nodes, hq, hkv, slots = 3, 20, 8, 2, 300
    q, k, v, lens, mask = make_inputs(
        gen,
        batch=batch,
        nodes=nodes,
        hq=hq,
        hkv=hkv,
        dim=dim,
        slots=slots,
        shape="random",
        dtype=dtype,
        device="cuda",
    )
    if misaligned:
        storage = torch.empty(q.numel() + 1, dtype=dtype, device="cuda")
        shifted = storage[1:].view(q.shape)
        shifted.copy_(q)
        assert shifted.data_ptr() % 16 != 0 and shifted.is_contiguous()
        q = shifted
    out, lse = ops.tree_attention(q, k, v, lens, mask, dim**-0.5)
    check_against_reference(out, lse, q, k, v, lens, mask, dim**-0.5, record_property)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_large_scores_are_stable(device, dtype, gen, record_property):
    """Scores of tens to hundreds (scale 1, q scaled by 8): the softmax must subtract its running
    maximum; nothing overflows to inf/NaN, and lse is large and finite."""
    q, k, v, lens, mask = make_inputs(
        gen,
        batch=3,
        nodes=20,
        hq=4,
        hkv=2,
        dim=64,
        slots=150,
        shape="random",
        dtype=torch.float32,
        device=device,
    )
    q = (q * 8).to(dtype)
    k, v = k.to(dtype), v.to(dtype)
    out, lse = ops.tree_attention(q, k, v, lens, mask, 1.0)
    assert torch.isfinite(lse).all() and float(lse.abs().max()) > 50
    # Scores are 8x larger, so is float32's rounding of them: a score near 0 made of
    # terms of size ~8 * sqrt(D) cancels (seen: 1.2e-5 at lse = -0.86 with the 1e-5
    # bound, in 1 of 400 draws).  The lse bound scales with the scores.
    check_against_reference(out, lse, q, k, v, lens, mask, 1.0, record_property, lse_scale=8.0)


def pack_mask(bits: torch.Tensor) -> torch.Tensor:
    """bool [B, N, N] -> int32 [B, N, ceil(N/32)] (bit j % 32 of word j // 32)."""
    batch, nodes, _ = bits.shape
    words = (nodes + 31) // 32
    padded = torch.zeros(batch, nodes, words * 32, dtype=torch.int64)
    padded[..., :nodes] = bits.long()
    packed = (padded.view(batch, nodes, words, 32) << torch.arange(32)).sum(-1)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)
    out = packed.to(torch.int32)
    assert torch.equal(reference.unpack_tree_mask(out, nodes), bits)
    return out


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_arbitrary_masks(device, dtype, gen, record_property):
    """Any packed mask is honoured bit by bit (not only ancestor masks), across word
    boundaries; a row with no prefix and no bit set sees nothing: zeros and lse = -inf."""
    batch, nodes, hq, hkv, dim, slots = 3, 70, 4, 2, 32, 160
    q, k, v, lens, _ = make_inputs(
        gen,
        batch=batch,
        nodes=nodes,
        hq=hq,
        hkv=hkv,
        dim=dim,
        slots=slots,
        shape="chain",
        dtype=dtype,
        device=device,
    )
    bits = torch.rand(batch, nodes, nodes, generator=gen) < 0.4
    bits[1, 5] = False  # cache_lens[1] > 0 (set below): row 5 sees only the prefix
    bits[0, 7] = False  # cache_lens[0] == 0: rows 7 and 69 see nothing at all
    bits[0, 69] = False
    bits[0, 8] = False
    bits[0, 8, 8] = True  # row 8 sees only itself
    mask = pack_mask(bits).to(device)
    lens = torch.tensor([0, 40, slots - nodes], dtype=torch.int32, device=device)
    out, lse = ops.tree_attention(q, k, v, lens, mask, dim**-0.5)
    check_against_reference(out, lse, q, k, v, lens, mask, dim**-0.5, record_property)
    for row in (7, 69):
        assert torch.equal(out[0, row].cpu(), torch.zeros(hq, dim, dtype=dtype))
        assert bool((lse[0, row] == float("-inf")).all())
    assert bool(torch.isfinite(lse[1, 5]).all())


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("window", [0, 2])
def test_mask_padding_bits_past_n(device, window, gen):
    """Bits j >= N of the last mask word name no node.  The reference ignores them; the op
    must either ignore them too or reject the mask -- never attend slots past the tree, nor
    count them in a node's depth (the window's positions)."""
    nodes, slots = 5, 40
    q, k, v, lens, mask = make_inputs(
        gen,
        batch=2,
        nodes=nodes,
        hq=2,
        hkv=1,
        dim=16,
        slots=slots,
        shape="random",
        dtype=torch.float32,
        device=device,
    )
    dirty = mask | torch.tensor(-(1 << nodes), dtype=torch.int32, device=device)  # bits N..31
    try:
        out, lse = ops.tree_attention(q, k, v, lens, dirty, 0.25, window=window)
    except ValueError as e:
        assert "specdec::tree_attention" in str(e) and "mask" in str(e), str(e)
        return
    ref_out, ref_lse = reference64(q, k, v, lens, mask, 0.25, window=window)
    assert rel_err(out, ref_out) < 1e-5
    check_lse(lse, ref_lse, 1e-5)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_slots_past_the_tree_are_never_read(device, dtype, gen):
    """K/V slots at or past cache_lens[b] + N hold NaN (as uninitialised cache memory may):
    the output must not see them."""
    batch, nodes, slots = 3, 37, 128
    q, k, v, lens, mask = make_inputs(
        gen,
        batch=batch,
        nodes=nodes,
        hq=4,
        hkv=2,
        dim=64,
        slots=slots,
        shape="random",
        dtype=dtype,
        device=device,
    )
    lens = torch.tensor([0, 19, 50], dtype=torch.int32, device=device)
    for b in range(batch):
        end = int(lens[b]) + nodes
        k[b, :, end:] = float("nan")
        v[b, :, end:] = float("nan")
    out, lse = ops.tree_attention(q, k, v, lens, mask, 0.125)
    check_against_reference(out, lse, q, k, v, lens, mask, 0.125)


# ---------------------------------------------------------------------------
# Paged.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("page_size", [1, 16, 64])
@pytest.mark.parametrize(
    "path,batch,nodes,hq,hkv,dim,slots",
    [("gemm", 3, 33, 8, 2, 64, 200), ("direct", 3, 6, 4, 2, 32, 40)],
    ids=["gemm-path", "direct-path"],
)
def test_paged_matches_reference(
    device, dtype, page_size, path, batch, nodes, hq, hkv, dim, slots, gen, record_property
):
    if path == "gemm":
        slots = gemm_slots(nodes, hq, hkv, dim, dim, dtype, slots)
    max_blocks = -(-slots // page_size)
    parents = tree_batch(gen, batch, nodes, "random")
    mask, _ = ops.build_tree(parents.to(device))
    lens = ragged_lens(gen, batch, nodes, slots)
    tables, num_pages = block_tables_for(gen, lens, nodes, page_size, max_blocks)
    q = randn(gen, (batch, nodes, hq, dim), dtype, device)
    kp = randn(gen, (num_pages, page_size, hkv, dim), dtype, device)
    vp = randn(gen, (num_pages, page_size, hkv, dim), dtype, device)
    tables, lens = tables.to(device), lens.to(device)
    out, lse = ops.tree_attention_paged(
        q=q, k_pages=kp, v_pages=vp, block_tables=tables, cache_lens=lens, mask=mask, scale=dim**-0.5
    )
    k = paged_to_contiguous(kp, tables)
    v = paged_to_contiguous(vp, tables)
    check_against_reference(out, lse, q, k, v, lens, mask, dim**-0.5, record_property)
    # The reference's own paged path agrees.
    ref_out, _ = reference.tree_attention_paged(
        q.cpu().double(),
        kp.cpu().double(),
        vp.cpu().double(),
        tables.cpu(),
        lens.cpu(),
        mask.cpu(),
        dim**-0.5,
    )
    assert rel_err(out, ref_out) < OUT_RTOL[dtype]


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("page_size", [1, 16, 64])
@pytest.mark.parametrize("hq,dim,slots", [(8, 128, 130), (2, 32, 40)], ids=["gemm-path", "direct-path"])
def test_paged_unused_pages_never_read(device, page_size, hq, dim, slots, gen):
    """Pages nobody's table points at, and slots past cache_lens[b] + N in a row's last page,
    hold NaN; -1 fills the table past the needed blocks.  Deep trees, MQA."""
    batch, nodes, hkv = 3, 5, 1
    dtype = torch.bfloat16
    max_blocks = -(-slots // page_size)
    parents = tree_batch(gen, batch, nodes, "deep")
    mask, _ = ops.build_tree(parents.to(device))
    lens = ragged_lens(gen, batch, nodes, slots)
    tables, num_pages = block_tables_for(gen, lens, nodes, page_size, max_blocks, spare=3)
    q = randn(gen, (batch, nodes, hq, dim), dtype, device)
    kp = torch.full((num_pages, page_size, hkv, dim), float("nan"), dtype=dtype)
    vp = torch.full((num_pages, page_size, hkv, dim), float("nan"), dtype=dtype)
    for b in range(batch):
        for s in range(int(lens[b]) + nodes):
            page, off = int(tables[b, s // page_size]), s % page_size
            kp[page, off] = torch.randn(hkv, dim, generator=gen).to(dtype)
            vp[page, off] = torch.randn(hkv, dim, generator=gen).to(dtype)
    kp, vp, tables, lens = kp.to(device), vp.to(device), tables.to(device), lens.to(device)
    out, lse = ops.tree_attention_paged(q, kp, vp, tables, lens, mask, dim**-0.5)
    k, v = paged_to_contiguous(kp, tables), paged_to_contiguous(vp, tables)
    check_against_reference(out, lse, q, k, v, lens, mask, dim**-0.5)


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_paged_equals_contiguous_layout(device, gen):
    """The same cache in both layouts gives the same result (to float32 rounding)."""
    batch, nodes, hq, hkv, dim, slots, page_size = 3, 40, 4, 4, 64, 96, 16
    q, k, v, lens, mask = make_inputs(
        gen,
        batch=batch,
        nodes=nodes,
        hq=hq,
        hkv=hkv,
        dim=dim,
        slots=slots,
        shape="wide",
        dtype=torch.float32,
        device=device,
    )
    tables, num_pages = block_tables_for(gen, lens, nodes, page_size, slots // page_size)
    tables = tables.to(device)
    kp = torch.zeros(num_pages, page_size, hkv, dim, device=device)
    vp = torch.zeros(num_pages, page_size, hkv, dim, device=device)
    for b in range(batch):
        for blk in range(slots // page_size):
            page = int(tables[b, blk])
            if page >= 0:
                kp[page] = k[b, :, blk * page_size : (blk + 1) * page_size].transpose(0, 1)
                vp[page] = v[b, :, blk * page_size : (blk + 1) * page_size].transpose(0, 1)
    out_c, lse_c = ops.tree_attention(q, k, v, lens, mask, 0.2)
    out_p, lse_p = ops.tree_attention_paged(q, kp, vp, tables, lens, mask, 0.2)
    assert rel_err(out_p, out_c) < 1e-5
    check_lse(lse_p, lse_c, 1e-5)


# ---------------------------------------------------------------------------
# Every output element written; rows that see nothing; empty batches.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_outputs_fully_written_and_deterministic(device, dtype, gen):
    """No NaN anywhere, and two calls agree bit for bit (an unwritten element would
    hold whatever the allocator handed out).  Freed NaN-filled blocks of the outputs'
    sizes are left behind first, so that stale memory shows."""
    batch, nodes, hq, hkv, dim, slots = 3, 45, 8, 2, 64, 120
    q, k, v, lens, mask = make_inputs(
        gen,
        batch=batch,
        nodes=nodes,
        hq=hq,
        hkv=hkv,
        dim=dim,
        slots=slots,
        shape="random",
        dtype=dtype,
        device=device,
    )
    results = []
    for _ in range(2):
        junk = [
            torch.full_like(q, float("nan")),
            torch.full(q.shape[:3], float("nan"), dtype=torch.float32, device=device),
        ]
        del junk
        results.append(ops.tree_attention(q, k, v, lens, mask, dim**-0.5))
    (o1, l1), (o2, l2) = results
    assert not torch.isnan(o1).any() and not torch.isnan(l1).any()
    assert torch.equal(o1, o2) and torch.equal(l1, l2)
    tables, num_pages = block_tables_for(gen, lens, nodes, 16, -(-slots // 16))
    kp = randn(gen, (num_pages, 16, hkv, dim), dtype, device)
    vp = randn(gen, (num_pages, 16, hkv, dim), dtype, device)
    tables = tables.to(device)
    p1 = ops.tree_attention_paged(q, kp, vp, tables, lens, mask, dim**-0.5)
    p2 = ops.tree_attention_paged(q, kp, vp, tables, lens, mask, dim**-0.5)
    assert not torch.isnan(p1[0]).any() and not torch.isnan(p1[1]).any()
    assert torch.equal(p1[0], p2[0]) and torch.equal(p1[1], p2[1])


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_row_that_sees_nothing(device, dtype, gen):
    """cache_lens 0 and a mask row without its own bit: zeros and lse = -inf, in both
    layouts; the other rows of the batch are unaffected."""
    nodes, hq, hkv, dim, slots = 6, 4, 2, 32, 24
    parents = torch.tensor([[-1, 0, 0, 1, 2, 4], [-1, 0, 1, 2, 3, 4]], dtype=torch.int32)
    mask = reference.build_tree(parents)[0]
    mask[0, 3, 0] = 0  # row 3 of sequence 0: nothing in the tree...
    mask[1, 2, 0] = 0  # ...but sequence 1 has a prefix: row 2 sees only the prefix
    mask[0, 4, 0] &= ~(1 << 4)  # row 4 sees its ancestors 0 and 2, not itself
    mask = mask.to(device)
    q = randn(gen, (2, nodes, hq, dim), dtype, device)
    k = randn(gen, (2, hkv, slots, dim), dtype, device)
    v = randn(gen, (2, hkv, slots, dim), dtype, device)
    lens = torch.tensor([0, 10], dtype=torch.int32, device=device)
    out, lse = ops.tree_attention(q, k, v, lens, mask, 0.3)
    check_against_reference(out, lse, q, k, v, lens, mask, 0.3)
    assert torch.equal(out[0, 3].cpu(), torch.zeros(hq, dim, dtype=dtype))
    assert bool((lse[0, 3] == float("-inf")).all())
    assert bool(torch.isfinite(lse[0, [0, 1, 2, 4, 5]]).all()) and bool(torch.isfinite(lse[1]).all())
    # Paged, page size 4: sequence 0 needs blocks 0..1, sequence 1 blocks 0..3.
    tables = torch.tensor([[6, 2, -1, -1, -1, -1], [0, 5, 1, 4, -1, -1]], dtype=torch.int32)
    kp = torch.zeros(7, 4, hkv, dim, dtype=dtype, device=device)
    vp = torch.zeros(7, 4, hkv, dim, dtype=dtype, device=device)
    for b, row in enumerate(tables.tolist()):
        for blk, page in enumerate(row):
            if page >= 0:
                kp[page] = k[b, :, 4 * blk : 4 * blk + 4].transpose(0, 1)
                vp[page] = v[b, :, 4 * blk : 4 * blk + 4].transpose(0, 1)
    pout, plse = ops.tree_attention_paged(q, kp, vp, tables.to(device), lens, mask, 0.3)
    check_against_reference(pout, plse, q, k, v, lens, mask, 0.3)
    assert torch.equal(pout[0, 3].cpu(), torch.zeros(hq, dim, dtype=dtype))
    assert bool((plse[0, 3] == float("-inf")).all())


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_empty_batch(device):
    for dtype in DTYPES:
        q = torch.randn(0, 7, 4, 16, device=device).to(dtype)
        k = torch.randn(0, 2, 20, 16, device=device).to(dtype)
        lens = torch.zeros(0, dtype=torch.int32, device=device)
        mask = torch.zeros(0, 7, 1, dtype=torch.int32, device=device)
        out, lse = ops.tree_attention(q, k, k.clone(), lens, mask, 0.25)
        assert out.shape == (0, 7, 4, 16) and out.dtype == dtype and out.device == q.device
        assert lse.shape == (0, 7, 4) and lse.dtype == torch.float32
        kp = torch.randn(3, 8, 2, 16, device=device).to(dtype)
        tables = torch.zeros(0, 4, dtype=torch.int32, device=device)
        out, lse = ops.tree_attention_paged(q, kp, kp.clone(), tables, lens, mask, 0.25)
        assert out.shape == (0, 7, 4, 16) and out.dtype == dtype
        assert lse.shape == (0, 7, 4) and lse.dtype == torch.float32


# ---------------------------------------------------------------------------
# The op contract: opcheck, torch.compile.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_opcheck(device, gen):
    q, k, v, lens, mask = make_inputs(
        gen,
        batch=3,
        nodes=12,
        hq=4,
        hkv=2,
        dim=32,
        slots=40,
        shape="random",
        dtype=torch.float16,
        device=device,
    )
    torch.library.opcheck(torch.ops.specdec.tree_attention.default, (q, k, v, lens, mask, 32**-0.5))
    tables, num_pages = block_tables_for(gen, lens, 12, 8, 5)
    kp = randn(gen, (num_pages, 8, 2, 32), torch.bfloat16, device)
    vp = randn(gen, (num_pages, 8, 2, 32), torch.bfloat16, device)
    torch.library.opcheck(
        torch.ops.specdec.tree_attention_paged.default,
        (q.to(torch.bfloat16), kp, vp, tables.to(device), lens, mask, 0.5),
    )


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_opcheck_features(device, gen):
    """opcheck with window, softcap, sinks and a value head size other than the key's."""
    q, k, _, lens, mask = make_inputs(
        gen,
        batch=3,
        nodes=12,
        hq=4,
        hkv=2,
        dim=32,
        slots=40,
        shape="deep",
        dtype=torch.float16,
        device=device,
    )
    v = randn(gen, (3, 2, 40, 24), torch.float16, device)
    sinks = random_sinks(gen, 4, device)
    kwargs = dict(window=5, softcap=4.0, sinks=sinks)
    torch.library.opcheck(torch.ops.specdec.tree_attention.default, (q, k, v, lens, mask, 32**-0.5), kwargs)
    tables, num_pages = block_tables_for(gen, lens, 12, 8, 5)
    kp = randn(gen, (num_pages, 8, 2, 32), torch.float32, device)
    vp = randn(gen, (num_pages, 8, 2, 48), torch.float32, device)
    torch.library.opcheck(
        torch.ops.specdec.tree_attention_paged.default,
        (q.float(), kp, vp, tables.to(device), lens, mask, 0.5),
        dict(window=2, sinks=sinks),
    )


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_torch_compile_fullgraph(device, gen):
    batch, nodes, dim = 3, 20, 64
    parents = tree_batch(gen, batch, nodes, "random").to(device)
    q, k, v, lens, _ = make_inputs(
        gen,
        batch=batch,
        nodes=nodes,
        hq=8,
        hkv=2,
        dim=dim,
        slots=64,
        shape="chain",
        dtype=torch.float32,
        device=device,
    )
    tables, num_pages = block_tables_for(gen, lens, nodes, 16, 4)
    tables = tables.to(device)
    kp = randn(gen, (num_pages, 16, 2, dim), torch.float32, device)
    vp = randn(gen, (num_pages, 16, 2, dim), torch.float32, device)

    sinks = random_sinks(gen, 8, device)
    v_narrow = v[..., :24].contiguous()  # Dv 24 != Dk 64

    def step(parents, q, k, v, lens, kp, vp, tables, v_narrow, sinks):
        mask, depth = ops.build_tree(parents)
        out, lse = ops.tree_attention(q, k, v, lens, mask, dim**-0.5)
        pout, plse = ops.tree_attention_paged(q, kp, vp, tables, lens, mask, dim**-0.5)
        fout, flse = ops.tree_attention(
            q, k, v_narrow, lens, mask, dim**-0.5, window=6, softcap=2.0, sinks=sinks
        )
        pfout, pflse = ops.tree_attention_paged(
            q, kp, vp, tables, lens, mask, dim**-0.5, window=3, sinks=sinks
        )
        return out * 2, lse + depth[..., None], pout, plse, fout, flse, pfout, pflse

    args = (parents, q, k, v, lens, kp, vp, tables, v_narrow, sinks)
    eager = step(*args)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(*args)
    for got, want in zip(compiled, eager):
        assert torch.equal(got, want)
    mask, depth = reference.build_tree(parents.cpu())
    check_against_reference(
        eager[0] / 2, eager[1] - depth[..., None].to(device), q, k, v, lens, mask, dim**-0.5
    )
    features = dict(window=6, softcap=2.0, sinks=sinks)
    check_against_reference(eager[4], eager[5], q, k, v_narrow, lens, mask, dim**-0.5, **features)
    k_p, v_p = paged_to_contiguous(kp, tables), paged_to_contiguous(vp, tables)
    check_against_reference(eager[6], eager[7], q, k_p, v_p, lens, mask, dim**-0.5, window=3, sinks=sinks)


# ---------------------------------------------------------------------------
# Features: sliding window, softcap, sinks, Dv != Dk (docs/ops.md), on both CPU
# paths (the direct loop for small problems, the GEMM path for large ones) and
# both layouts.
# ---------------------------------------------------------------------------

# Mirrors kDirectFlops / kDirectFlopsF32 and the per-task count of
# csrc/cpu/attention_cpu.cpp: the tests assert which CPU path each case takes.
DIRECT_FLOPS = 1 << 20
DIRECT_FLOPS_F32 = 1 << 24


def direct_limit(dtype) -> int:
    return DIRECT_FLOPS_F32 if dtype == torch.float32 else DIRECT_FLOPS


def takes_direct_path(nodes, hq, hkv, dk, dv, lens, dtype) -> bool:
    return 2 * nodes * (hq // hkv) * (dk + dv) * (int(lens.max()) + nodes) < direct_limit(dtype)


def gemm_slots(nodes, hq, hkv, dk, dv, dtype, at_least: int) -> int:
    """Cache slots S >= at_least that put a case whose longest row fills the cache
    (lens.max() + N = S) on the CPU's GEMM path for dtype."""
    per_slot = 2 * nodes * (hq // hkv) * (dk + dv)
    return max(at_least, -(-direct_limit(dtype) // per_slot) + 1)


def to_paged(gen, k, v, lens, nodes, page_size):
    """The contiguous caches cut into shuffled pages through a block table (the needed
    blocks only; -1 past them): (k_pages, v_pages, block_tables)."""
    batch, hkv, slots, _ = k.shape
    max_blocks = -(-slots // page_size)
    tables, num_pages = block_tables_for(gen, lens.cpu(), nodes, page_size, max_blocks)
    kp = k.new_zeros(num_pages, page_size, hkv, k.shape[-1])
    vp = v.new_zeros(num_pages, page_size, hkv, v.shape[-1])
    for b in range(batch):
        for blk in range(max_blocks):
            page = int(tables[b, blk])
            if page >= 0:
                n = min(page_size, slots - blk * page_size)
                kp[page, :n] = k[b, :, blk * page_size : blk * page_size + n].transpose(0, 1)
                vp[page, :n] = v[b, :, blk * page_size : blk * page_size + n].transpose(0, 1)
    return kp, vp, tables.to(k.device)


def run_op(layout, gen, q, k, v, lens, mask, scale, page_size=16, **features):
    """The op on the contiguous caches, or on the same caches paged."""
    if layout == "contiguous":
        return ops.tree_attention(q, k, v, lens, mask, scale, **features)
    kp, vp, tables = to_paged(gen, k, v, lens, q.shape[1], page_size)
    return ops.tree_attention_paged(q, kp, vp, tables, lens, mask, scale, **features)


def random_sinks(gen, hq, device):
    """float32 [Hq] in [-2, 6]: around the rows' lse (log of 10 to 200 keys), so they matter."""
    return (torch.rand(hq, generator=gen) * 8 - 2).to(device)


# name -> (window, softcap, sinks, Dk, Dv); Dk None: the path's own D, Dv None: Dv = Dk.
FEATURES = {
    "window1": (1, 0.0, False, None, None),
    "window3": (3, 0.0, False, None, None),
    "window7": (7, 0.0, False, None, None),
    "window-beyond-sequence": (100_000, 0.0, False, None, None),
    "softcap": (0, 1.0, False, None, None),
    "sinks": (0, 0.0, True, None, None),
    "dk24-dv16": (0, 0.0, False, 24, 16),
    "dk192-dv128": (0, 0.0, False, 192, 128),
    "dk16-dv40": (0, 0.0, False, 16, 40),
    "dk20-dv12": (0, 0.0, False, 20, 12),
    "window5-softcap-sinks": (5, 2.0, True, None, None),
    "window2-sinks-dk40-dv24": (2, 0.0, True, 40, 24),
    "all-dk24-dv16": (6, 1.5, True, 24, 16),
}

# path -> (batch, nodes, hq, hkv, D, slots, tree shape); "deep" trees reach depths past
# the small windows, so they cross the prefix/tree boundary.
PATHS = {
    "direct": (3, 9, 4, 2, 32, 40, "deep"),
    "gemm": (3, 24, 8, 2, 64, 160, "deep"),
}


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", ["contiguous", "paged"])
@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("feature", list(FEATURES))
def test_features_match_reference(device, dtype, layout, path, feature, gen, record_property):
    window, softcap, with_sinks, dk, dv = FEATURES[feature]
    batch, nodes, hq, hkv, dim, slots, shape = PATHS[path]
    dk = dim if dk is None else dk
    dv = dk if dv is None else dv
    if path == "gemm" and dk + dv < 80:  # keep the GEMM cases above the direct-loop threshold
        nodes, slots = 33, 240
    if path == "gemm":
        slots = gemm_slots(nodes, hq, hkv, dk, dv, dtype, slots)
    q, k, _, lens, mask = make_inputs(
        gen,
        batch=batch,
        nodes=nodes,
        hq=hq,
        hkv=hkv,
        dim=dk,
        slots=slots,
        shape=shape,
        dtype=dtype,
        device=device,
    )
    v = randn(gen, (batch, hkv, slots, dv), dtype, device)
    assert takes_direct_path(nodes, hq, hkv, dk, dv, lens, dtype) == (path == "direct")
    features = dict(
        window=window, softcap=softcap, sinks=random_sinks(gen, hq, device) if with_sinks else None
    )
    scale = dk**-0.5
    out, lse = run_op(layout, gen, q, k, v, lens, mask, scale, **features)
    check_against_reference(out, lse, q, k, v, lens, mask, scale, record_property, **features)
    if (0 < window < slots - nodes) or softcap or with_sinks:  # the feature changes the result
        plain_out, _ = reference64(q, k, v, lens, mask, scale)
        assert rel_err(out, plain_out) > 5 * OUT_RTOL[dtype]


def poison_before_window(k, v, lens, window):
    """Copies of k, v with NaN in the prefix slots s <= cache_lens[b] - window, outside every
    query's window (the root, at depth 0, has the earliest one)."""
    k, v = k.clone(), v.clone()
    for b in range(k.shape[0]):
        first = max(0, int(lens[b]) - window + 1)
        k[b, :, :first] = float("nan")
        v[b, :, :first] = float("nan")
    return k, v


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", ["contiguous", "paged"])
@pytest.mark.parametrize("window", [1, 7, 700, 1500, 5000])
def test_window_long_prefix_skips_blocks(device, dtype, layout, window, gen, record_property):
    """Prefixes over 2000 slots (the GEMM path's 1024-key blocks): windows that skip whole
    blocks, start inside one, or cover everything.  The K/V slots before every row's window
    (s <= L - window, the root's) hold NaN: reading one would show in the output."""
    batch, nodes, hq, hkv, dim, slots = 3, 17, 4, 1, 32, 2600
    q, k, v, lens, mask = make_inputs(
        gen,
        batch=batch,
        nodes=nodes,
        hq=hq,
        hkv=hkv,
        dim=dim,
        slots=slots,
        shape="deep",
        dtype=dtype,
        device=device,
    )
    lens = torch.tensor([0, 1300, slots - nodes], dtype=torch.int32, device=device)
    assert not takes_direct_path(nodes, hq, hkv, dim, dim, lens, dtype)
    k_nan, v_nan = poison_before_window(k, v, lens, window)
    features = dict(window=window, softcap=3.0, sinks=random_sinks(gen, hq, device))
    out, lse = run_op(layout, gen, q, k_nan, v_nan, lens, mask, dim**-0.5, page_size=64, **features)
    # The reference (on the clean caches) multiplies every slot, seen or not.
    check_against_reference(out, lse, q, k, v, lens, mask, dim**-0.5, record_property, **features)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", ["contiguous", "paged"])
@pytest.mark.parametrize("path", sorted(PATHS))
def test_window_slots_before_the_window_are_never_read(device, dtype, layout, path, gen):
    """The direct loop and the GEMM path on short prefixes: NaN in the slots before every
    row's window (windows 2 and 6 on deep trees, ragged prefixes) never reaches the output."""
    batch, nodes, hq, hkv, dim, slots, _ = PATHS[path]
    if path == "gemm":
        slots = gemm_slots(nodes, hq, hkv, dim, dim, dtype, slots)
    for window in (2, 6):
        q, k, v, lens, mask = make_inputs(
            gen,
            batch=batch,
            nodes=nodes,
            hq=hq,
            hkv=hkv,
            dim=dim,
            slots=slots,
            shape="deep",
            dtype=dtype,
            device=device,
        )
        lens[0] = 3  # a prefix shorter than the window's reach for some rows
        k_nan, v_nan = poison_before_window(k, v, lens, window)
        out, lse = run_op(layout, gen, q, k_nan, v_nan, lens, mask, dim**-0.5, window=window)
        check_against_reference(out, lse, q, k, v, lens, mask, dim**-0.5, window=window)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("slots", [24, 400], ids=["direct-path", "gemm-path"])
def test_sinks_row_that_sees_nothing(device, dtype, slots, gen):
    """With sinks, a row that sees no key gets zeros and lse = sinks[h] exactly; a huge sink
    takes (almost) all the mass, a very negative one none."""
    batch, nodes, hq, hkv, dim = 2, 40, 4, 2, 32
    if slots != 24:
        slots = gemm_slots(nodes, hq, hkv, dim, dim, dtype, slots + nodes) - nodes
    q, k, v, _, _ = make_inputs(
        gen,
        batch=batch,
        nodes=nodes,
        hq=hq,
        hkv=hkv,
        dim=dim,
        slots=slots + nodes,
        shape="chain",
        dtype=dtype,
        device=device,
    )
    parents = tree_batch(gen, batch, nodes, "random")
    mask = reference.build_tree(parents)[0]
    mask[0, 3] = 0  # row 3 of sequence 0 (no prefix): nothing at all
    mask = mask.to(device)
    lens = torch.tensor([0, slots], dtype=torch.int32, device=device)
    assert takes_direct_path(nodes, hq, hkv, dim, dim, lens, dtype) == (slots == 24)
    sinks = torch.tensor([0.5, -3.0, 30.0, -1e30], device=device)
    out, lse = ops.tree_attention(q, k, v, lens, mask, dim**-0.5, sinks=sinks)
    check_against_reference(out, lse, q, k, v, lens, mask, dim**-0.5, sinks=sinks)
    assert torch.equal(out[0, 3].cpu(), torch.zeros(hq, dim, dtype=dtype))
    assert torch.equal(lse[0, 3], sinks)
    # Head 2's sink (30) dwarfs every row's keys; head 3's (-1e30) changes nothing.
    assert float(out[:, :, 2].abs().max()) < 1e-6
    plain_out, plain_lse = ops.tree_attention(q, k, v, lens, mask, dim**-0.5)
    assert rel_err(out[:, :, 3], plain_out[:, :, 3]) < OUT_RTOL[dtype]
    check_lse(lse[1, :, 3], plain_lse[1, :, 3], LSE_TOL[dtype])


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("window", [0, 3])
def test_features_with_arbitrary_masks(device, dtype, window, gen):
    """Masks that are not ancestor masks (random bits, a row with none): depths come from
    the popcount of each row as stated, the window may see keys at later positions."""
    batch, nodes, hq, hkv, dim, slots = 2, 37, 4, 2, 16, 90
    q, k, v, lens, _ = make_inputs(
        gen,
        batch=batch,
        nodes=nodes,
        hq=hq,
        hkv=hkv,
        dim=dim,
        slots=slots,
        shape="chain",
        dtype=dtype,
        device=device,
    )
    bits = torch.rand(batch, nodes, nodes, generator=gen) < 0.3
    bits[1, 4] = False  # depth -1: its position is L - 1
    mask = pack_mask(bits).to(device)
    features = dict(window=window, softcap=2.5, sinks=random_sinks(gen, hq, device))
    out, lse = ops.tree_attention(q, k, v, lens, mask, dim**-0.5, **features)
    check_against_reference(out, lse, q, k, v, lens, mask, dim**-0.5, **features)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("slots", [40, 400], ids=["direct-path", "gemm-path"])
def test_defaults_are_plain_attention(device, slots, gen):
    """window=0, softcap=0.0, sinks=None (and a window longer than every sequence) give
    exactly the result of a call without them."""
    if slots != 40:
        slots = gemm_slots(12, 8, 2, 32, 32, torch.float32, slots)
    q, k, v, lens, mask = make_inputs(
        gen,
        batch=3,
        nodes=12,
        hq=8,
        hkv=2,
        dim=32,
        slots=slots,
        shape="random",
        dtype=torch.float32,
        device=device,
    )
    plain = ops.tree_attention(q, k, v, lens, mask, 0.3)
    for features in (dict(window=0, softcap=0.0, sinks=None), dict(window=slots)):
        got = ops.tree_attention(q, k, v, lens, mask, 0.3, **features)
        assert torch.equal(got[0], plain[0]) and torch.equal(got[1], plain[1])
    schema = str(torch.ops.specdec.tree_attention.default._schema)
    assert "float scale, *, int window=0, float softcap=0., Tensor? sinks=None" in schema, schema


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("longest", [3, 14000], ids=["direct-path", "gemm-path"])
def test_paged_huge_block_table_short_sequences(device, longest, gen):
    """Regression: a block table of 2**20 blocks of 2**14 slots (capacity 2**34, a 4 MiB
    table) holding short sequences.  The direct loop sized its scratch by the capacity
    (64 GiB: std::bad_alloc); every kernel must size work and memory by
    max(cache_lens) + N.  The result equals the same call on the table cut to the blocks
    in use."""
    batch, nodes, hq, hkv, dim, page_size, max_blocks = 2, 5, 4, 1, 16, 2**14, 2**20
    lens = torch.tensor([longest // 2, longest], dtype=torch.int32)
    assert takes_direct_path(nodes, hq, hkv, dim, dim, lens, torch.float32) == (longest == 3)
    small, num_pages = block_tables_for(gen, lens, nodes, page_size, 1)
    tables = torch.full((batch, max_blocks), -1, dtype=torch.int32)
    tables[:, :1] = small
    parents = tree_batch(gen, batch, nodes, "random")
    mask = reference.build_tree(parents)[0].to(device)
    q = randn(gen, (batch, nodes, hq, dim), torch.float32, device)
    kp = randn(gen, (num_pages, page_size, hkv, dim), torch.float32, device)
    vp = randn(gen, (num_pages, page_size, hkv, dim), torch.float32, device)
    lens, tables, small = lens.to(device), tables.to(device), small.to(device)
    features = dict(window=4, sinks=random_sinks(gen, hq, device))
    out, lse = ops.tree_attention_paged(q, kp, vp, tables, lens, mask, 0.25, **features)
    want_out, want_lse = ops.tree_attention_paged(q, kp, vp, small, lens, mask, 0.25, **features)
    if device == "cpu":
        assert torch.equal(out, want_out) and torch.equal(lse, want_lse)
    k, v = paged_to_contiguous(kp, small), paged_to_contiguous(vp, small)
    check_against_reference(out, lse, q, k, v, lens, mask, 0.25, **features)
    # The reference's paged path gathers only the slots in use too.
    ref_out, _ = reference.tree_attention_paged(
        q.cpu(),
        kp.cpu(),
        vp.cpu(),
        tables.cpu(),
        lens.cpu(),
        mask.cpu(),
        0.25,
        window=4,
        sinks=features["sinks"].cpu(),
    )
    assert rel_err(out, ref_out) < 1e-5


# ---------------------------------------------------------------------------
# Bad input: a typed exception naming the op and the argument.
# ---------------------------------------------------------------------------


def _good_args(device):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 5, 4, 16, generator=g).to(device)
    k = torch.randn(2, 2, 12, 16, generator=g).to(device)
    v = torch.randn(2, 2, 12, 16, generator=g).to(device)
    lens = torch.tensor([3, 7], dtype=torch.int32, device=device)  # 7 + 5 == S: full
    parents = torch.tensor([[-1, 0, 0, 1, 2], [-1, 0, 1, 2, 3]], dtype=torch.int32)
    mask = reference.build_tree(parents)[0].to(device)
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0], device=device)
    return dict(
        q=q, k_cache=k, v_cache=v, cache_lens=lens, mask=mask, scale=0.25, window=3, softcap=5.0, sinks=sinks
    )


def _i32(rows, device):
    return torch.tensor(rows, dtype=torch.int32, device=device)


def _noncontig(t):
    return t.transpose(1, 2).contiguous().transpose(1, 2)


BAD = {
    "heads not a multiple": (
        lambda a, d: a.update(q=a["q"][:, :, :3].contiguous()),
        ValueError,
        "k_cache has 2 KV heads; q's 3 heads must be a multiple",
    ),
    "q head dim differs": (
        lambda a, d: a.update(q=a["q"][..., :8].contiguous()),
        ValueError,
        "k_cache head dim (16) must equal q's (8)",
    ),
    "v shape differs": (
        lambda a, d: a.update(v_cache=a["v_cache"][:, :, :10].contiguous()),
        ValueError,
        "v_cache must have the shape of k_cache [2, 2, 12, 16] except in its last dim (the value head size), "
        "got [2, 2, 10, 16]",
    ),
    "v heads differ": (
        lambda a, d: a.update(v_cache=a["v_cache"][:, :1].contiguous()),
        ValueError,
        "v_cache must have the shape of k_cache [2, 2, 12, 16] except in its last dim",
    ),
    "v 3-D": (
        lambda a, d: a.update(v_cache=a["v_cache"][0]),
        ValueError,
        "v_cache must be a 4-D tensor [B, Hkv, S, Dv]",
    ),
    "v head dim too large": (
        lambda a, d: a.update(v_cache=a["v_cache"].repeat(1, 1, 1, 17)),
        ValueError,
        "v_cache head dim must be in [1, 256], got 272",
    ),
    "v head dim zero": (
        lambda a, d: a.update(v_cache=a["v_cache"][..., :0].contiguous()),
        ValueError,
        "v_cache head dim must be in [1, 256], got 0",
    ),
    "k batch differs": (
        lambda a, d: a.update(k_cache=a["k_cache"][:1].contiguous(), v_cache=a["v_cache"][:1].contiguous()),
        ValueError,
        "k_cache.size(0) must equal B",
    ),
    "q 3-D": (lambda a, d: a.update(q=a["q"][0]), ValueError, "q must be a 4-D tensor"),
    "k dtype differs from q": (
        lambda a, d: a.update(k_cache=a["k_cache"].half()),
        TypeError,
        "k_cache must have the dtype of q (float32), got float16",
    ),
    "v float64": (
        lambda a, d: a.update(v_cache=a["v_cache"].double()),
        TypeError,
        "v_cache must have the dtype of q (float32), got float64",
    ),
    "all float64": (
        lambda a, d: a.update(
            q=a["q"].double(), k_cache=a["k_cache"].double(), v_cache=a["v_cache"].double()
        ),
        TypeError,
        "q must have dtype float32, float16 or bfloat16, got float64",
    ),
    "mask wrong W": (
        lambda a, d: a.update(mask=torch.cat([a["mask"], a["mask"]], 2)),
        ValueError,
        "mask must have shape [2, 5, 1] for N = 5, got [2, 5, 2]",
    ),
    "mask wrong N": (
        lambda a, d: a.update(mask=a["mask"][:, :4].contiguous()),
        ValueError,
        "mask must have shape [2, 5, 1] for N = 5, got [2, 4, 1]",
    ),
    "mask int64": (
        lambda a, d: a.update(mask=a["mask"].long()),
        TypeError,
        "mask must have dtype int32, got int64",
    ),
    "cache_lens int64": (
        lambda a, d: a.update(cache_lens=a["cache_lens"].long()),
        TypeError,
        "cache_lens must have dtype int32, got int64",
    ),
    "cache_lens wrong length": (
        lambda a, d: a.update(cache_lens=_i32([3], d)),
        ValueError,
        "cache_lens.size(0) must equal B",
    ),
    "cache_lens + N > S": (
        lambda a, d: a.update(cache_lens=_i32([3, 8], d)),
        IndexError,
        "cache_lens[1] = 8: cache_lens + N (N = 5) must be within [0, 12]",
    ),
    "cache_lens negative": (
        lambda a, d: a.update(cache_lens=_i32([-1, 7], d)),
        IndexError,
        "cache_lens[0] = -1",
    ),
    "q non-contiguous": (lambda a, d: a.update(q=_noncontig(a["q"])), ValueError, "q must be contiguous"),
    "k non-contiguous": (
        lambda a, d: a.update(k_cache=_noncontig(a["k_cache"])),
        ValueError,
        "k_cache must be contiguous",
    ),
    "scale NaN": (lambda a, d: a.update(scale=float("nan")), ValueError, "scale must be finite"),
    "scale inf": (lambda a, d: a.update(scale=float("inf")), ValueError, "scale must be finite"),
    # Regression: finite in float64 but +-inf in float32 (the kernels' type).
    "scale beyond float32": (
        lambda a, d: a.update(scale=1e39),
        ValueError,
        "scale = 1e+39 is outside the float32 range",
    ),
    "scale beyond float32 negative": (
        lambda a, d: a.update(scale=-3.5e38),
        ValueError,
        "scale = -3.5e+38 is outside the float32 range",
    ),
    "window negative": (
        lambda a, d: a.update(window=-1),
        ValueError,
        "window must be >= 0 (0 disables it), got -1",
    ),
    "softcap NaN": (
        lambda a, d: a.update(softcap=float("nan")),
        ValueError,
        "softcap must be finite and >= 0 (0 disables it), got nan",
    ),
    "softcap inf": (
        lambda a, d: a.update(softcap=float("inf")),
        ValueError,
        "softcap must be finite and >= 0 (0 disables it), got inf",
    ),
    "softcap negative": (
        lambda a, d: a.update(softcap=-2.0),
        ValueError,
        "softcap must be finite and >= 0 (0 disables it), got -2",
    ),
    "softcap beyond float32": (
        lambda a, d: a.update(softcap=1e39),
        ValueError,
        "softcap = 1e+39 is outside the float32 range",
    ),
    "softcap below float32 normal": (  # would round to a subnormal (or 0: capping silently off)
        lambda a, d: a.update(softcap=1e-39),
        ValueError,
        "softcap = 1e-39 is outside the float32 range",
    ),
    "sinks float64": (
        lambda a, d: a.update(sinks=a["sinks"].double()),
        TypeError,
        "sinks must have dtype float32, got float64",
    ),
    "sinks wrong length": (
        lambda a, d: a.update(sinks=a["sinks"][:3].contiguous()),
        ValueError,
        "sinks.size(0) must equal Hq (q.size(2)) = 4",
    ),
    "sinks 2-D": (
        lambda a, d: a.update(sinks=a["sinks"][None]),
        ValueError,
        "sinks must be a 1-D tensor [Hq]",
    ),
    "sinks non-contiguous": (
        lambda a, d: a.update(sinks=a["sinks"].repeat(2)[::2]),
        ValueError,
        "sinks must be contiguous",
    ),
    "sinks NaN": (
        lambda a, d: a["sinks"].__setitem__(3, float("nan")),
        ValueError,
        "sinks[3] = nan must be finite",
    ),
    "sinks inf": (
        lambda a, d: a["sinks"].__setitem__(0, float("inf")),
        ValueError,
        "sinks[0] = inf must be finite",
    ),
    "sinks -inf": (
        lambda a, d: a["sinks"].__setitem__(2, float("-inf")),
        ValueError,
        "sinks[2] = -inf must be finite",
    ),
    "sinks NaN reported before cache_lens": (
        lambda a, d: (a["sinks"].__setitem__(1, float("nan")), a.update(cache_lens=_i32([3, 8], d))),
        ValueError,
        "sinks[1] = nan must be finite",
    ),
    "head dim too large": (
        lambda a, d: a.update(
            q=a["q"].repeat(1, 1, 1, 20),
            k_cache=a["k_cache"].repeat(1, 1, 1, 20),
            v_cache=a["v_cache"].repeat(1, 1, 1, 20),
        ),
        ValueError,
        "q head dim must be in [1, 256], got 320",
    ),
    "no nodes": (
        lambda a, d: a.update(q=a["q"][:, :0].contiguous(), mask=a["mask"][:, :0, :0].contiguous()),
        ValueError,
        "q must hold at least the root node",
    ),
}


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input(device, case):
    ops.tree_attention(**_good_args(device))  # the unmutated arguments are valid
    args = _good_args(device)
    mutate, exc, fragment = BAD[case]
    mutate(args, device)
    with pytest.raises(exc) as info:
        ops.tree_attention(**args)
    message = str(info.value)
    assert "specdec::tree_attention:" in message and fragment in message, message


def _good_paged(device):
    g = torch.Generator().manual_seed(1)
    a = _good_args(device)
    kp = torch.randn(8, 4, 2, 16, generator=g).to(device)
    vp = torch.randn(8, 4, 2, 16, generator=g).to(device)
    # Sequence 0 needs slots [0, 8): blocks 0-1; sequence 1 slots [0, 12): blocks 0-2.
    tables = torch.tensor([[5, 2, -1, -1], [0, 7, 3, -1]], dtype=torch.int32, device=device)
    return dict(
        q=a["q"],
        k_pages=kp,
        v_pages=vp,
        block_tables=tables,
        cache_lens=a["cache_lens"],
        mask=a["mask"],
        scale=0.25,
        window=a["window"],
        softcap=a["softcap"],
        sinks=a["sinks"],
    )


BAD_PAGED = {
    "needed block out of range": (
        lambda a, d: a["block_tables"].__setitem__((1, 2), 8),
        IndexError,
        "block_tables[1, 2] = 8 is outside [0, 8)",
    ),
    "needed block negative": (
        lambda a, d: a["block_tables"].__setitem__((0, 1), -1),
        IndexError,
        "block_tables[0, 1] = -1 is outside [0, 8)",
    ),
    "tables int64": (
        lambda a, d: a.update(block_tables=a["block_tables"].long()),
        TypeError,
        "block_tables must have dtype int32, got int64",
    ),
    "tables wrong batch": (
        lambda a, d: a.update(block_tables=a["block_tables"][:1].contiguous()),
        ValueError,
        "block_tables.size(0) must equal B",
    ),
    "v_pages shape differs": (
        lambda a, d: a.update(v_pages=a["v_pages"][:, :2].contiguous()),
        ValueError,
        "v_pages must have the shape of k_pages",
    ),
    "k_pages dtype differs": (
        lambda a, d: a.update(k_pages=a["k_pages"].half(), v_pages=a["v_pages"].half()),
        TypeError,
        "k_pages must have the dtype of q (float32), got float16",
    ),
    "pages heads not dividing": (
        lambda a, d: a.update(
            k_pages=a["k_pages"][:, :, :1].repeat(1, 1, 3, 1),
            v_pages=a["v_pages"][:, :, :1].repeat(1, 1, 3, 1),
        ),
        ValueError,
        "k_pages has 3 KV heads; q's 4 heads must be a multiple",
    ),
    "capacity too small": (
        lambda a, d: a.update(block_tables=a["block_tables"][:, :2].contiguous()),
        IndexError,
        "cache_lens[1] = 7: cache_lens + N (N = 5) must be within [0, 8]",
    ),
    "mask int64": (
        lambda a, d: a.update(mask=a["mask"].long()),
        TypeError,
        "mask must have dtype int32, got int64",
    ),
    "q non-contiguous": (lambda a, d: a.update(q=_noncontig(a["q"])), ValueError, "q must be contiguous"),
    "scale NaN": (lambda a, d: a.update(scale=float("nan")), ValueError, "scale must be finite"),
    "scale beyond float32": (
        lambda a, d: a.update(scale=5e38),
        ValueError,
        "scale = 5e+38 is outside the float32 range",
    ),
    "v_pages heads differ": (
        lambda a, d: a.update(v_pages=a["v_pages"][:, :, :1].contiguous()),
        ValueError,
        "v_pages must have the shape of k_pages [8, 4, 2, 16] except in its last dim",
    ),
    "v_pages head dim too large": (
        lambda a, d: a.update(v_pages=a["v_pages"].repeat(1, 1, 1, 20)),
        ValueError,
        "v_pages head dim must be in [1, 256], got 320",
    ),
    "window negative": (
        lambda a, d: a.update(window=-5),
        ValueError,
        "window must be >= 0 (0 disables it), got -5",
    ),
    "softcap negative": (lambda a, d: a.update(softcap=-0.5), ValueError, "softcap must be finite and >= 0"),
    "sinks wrong length": (
        lambda a, d: a.update(sinks=torch.zeros(5, device=d)),
        ValueError,
        "sinks.size(0) must equal Hq (q.size(2)) = 4",
    ),
    "sinks int32": (
        lambda a, d: a.update(sinks=torch.zeros(4, dtype=torch.int32, device=d)),
        TypeError,
        "sinks must have dtype float32, got int32",
    ),
    "sinks NaN": (
        lambda a, d: a["sinks"].__setitem__(3, float("nan")),
        ValueError,
        "sinks[3] = nan must be finite",
    ),
}


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("case", sorted(BAD_PAGED))
def test_bad_input_paged(device, case):
    ops.tree_attention_paged(**_good_paged(device))  # the unmutated arguments are valid
    args = _good_paged(device)
    mutate, exc, fragment = BAD_PAGED[case]
    mutate(args, device)
    with pytest.raises(exc) as info:
        ops.tree_attention_paged(**args)
    message = str(info.value)
    assert "specdec::tree_attention_paged:" in message and fragment in message, message


@needs_cuda
def test_device_mismatch_is_reported():
    args = _good_args("cuda")
    args["cache_lens"] = args["cache_lens"].cpu()
    with pytest.raises(ValueError, match=r"specdec::tree_attention: cache_lens must be on cuda"):
        ops.tree_attention(**args)
    args = _good_args("cuda")
    args["sinks"] = args["sinks"].cpu()
    with pytest.raises(ValueError, match=r"specdec::tree_attention: sinks must be on cuda"):
        ops.tree_attention(**args)
    args = _good_paged("cuda")
    args["block_tables"] = args["block_tables"].cpu()
    with pytest.raises(ValueError, match=r"specdec::tree_attention_paged: block_tables must be on cuda"):
        ops.tree_attention_paged(**args)


# ---------------------------------------------------------------------------
# CUDA: agreement with the CPU kernels, CUDA-graph capture.
# ---------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "nodes,hq,hkv,dim", [(5, 4, 4, 64), (33, 8, 1, 128), (64, 8, 2, 256), (17, 4, 1, 80)]
)
def test_cpu_and_cuda_agree(dtype, nodes, hq, hkv, dim, gen):
    q, k, v, lens, mask = make_inputs(
        gen,
        batch=3,
        nodes=nodes,
        hq=hq,
        hkv=hkv,
        dim=dim,
        slots=300,
        shape="random",
        dtype=dtype,
        device="cpu",
    )
    cpu_out, cpu_lse = ops.tree_attention(q, k, v, lens, mask, dim**-0.5)
    gpu_out, gpu_lse = ops.tree_attention(q.cuda(), k.cuda(), v.cuda(), lens.cuda(), mask.cuda(), dim**-0.5)
    assert rel_err(gpu_out, cpu_out) < OUT_RTOL[dtype]
    check_lse(gpu_lse, cpu_lse, LSE_TOL[dtype])
    tables, num_pages = block_tables_for(gen, lens, nodes, 16, -(-300 // 16))
    kp = randn(gen, (num_pages, 16, hkv, dim), dtype, "cpu")
    vp = randn(gen, (num_pages, 16, hkv, dim), dtype, "cpu")
    cpu_p = ops.tree_attention_paged(q, kp, vp, tables, lens, mask, dim**-0.5)
    gpu_p = ops.tree_attention_paged(
        q.cuda(), kp.cuda(), vp.cuda(), tables.cuda(), lens.cuda(), mask.cuda(), dim**-0.5
    )
    assert rel_err(gpu_p[0], cpu_p[0]) < OUT_RTOL[dtype]
    check_lse(gpu_p[1], cpu_p[1], LSE_TOL[dtype])


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES[1:], ids=DTYPE_IDS[1:])
def test_cuda_graph_capture_and_replay(dtype):
    """Captured tree_attention (and the paged variant) replays equal eager, also after the
    inputs -- queries, prefix lengths, mask -- change in place between replays."""
    gen = torch.Generator().manual_seed(31)
    batch, nodes, hq, hkv, dim, slots, page_size = 4, 33, 8, 2, 128, 256, 16
    q, k, v, lens, mask = make_inputs(
        gen,
        batch=batch,
        nodes=nodes,
        hq=hq,
        hkv=hkv,
        dim=dim,
        slots=slots,
        shape="random",
        dtype=dtype,
        device="cuda",
    )
    max_blocks = slots // page_size
    tables = torch.randperm(batch * max_blocks, generator=gen, dtype=torch.int32)
    tables = tables.view(batch, max_blocks).cuda()
    kp = randn(gen, (batch * max_blocks, page_size, hkv, dim), dtype, "cuda")
    vp = randn(gen, (batch * max_blocks, page_size, hkv, dim), dtype, "cuda")
    scale = dim**-0.5

    def step():
        return (
            ops.tree_attention(q, k, v, lens, mask, scale),
            ops.tree_attention_paged(q, kp, vp, tables, lens, mask, scale),
        )

    graph, ((out, lse), (pout, plse)) = cuda_graph_capture(step)
    for it in range(3):
        if it:
            q.copy_(randn(gen, q.shape, dtype, "cuda"))
            lens.copy_(ragged_lens(gen, batch, nodes, slots).roll(it))
            mask.copy_(ops.build_tree(tree_batch(gen, batch, nodes, "deep").cuda())[0])
        graph.replay()
        torch.cuda.synchronize()
        (want, want_lse), (pwant, pwant_lse) = step()
        assert torch.equal(out, want) and torch.equal(lse, want_lse)
        assert torch.equal(pout, pwant) and torch.equal(plse, pwant_lse)
        check_against_reference(out, lse, q, k, v, lens, mask, scale)


@pytest.mark.parametrize("slots", [64, 61], ids=["full-vectors", "partial-vector"])
def test_cpu_float32_softmax_exp_is_accurate(slots, gen):
    """The float32 direct kernels compute exp with their own polynomial: on scores spread
    over [-30, 0] (every range-reduction interval the softmax meets, down to weights of
    1e-13), lse and the output must match float64 to 1e-6, ten times tighter than the
    general tolerance (an exp off by 2e-5 somewhere in its range fails here)."""
    nodes, dim = 1, 8
    scores = -torch.rand(slots, generator=gen, dtype=torch.float64) * 30
    scores[int(torch.randint(0, slots, (1,), generator=gen))] = 0.0
    scores = scores.float()
    q = torch.zeros(1, nodes, 1, dim)
    q[0, 0, 0, 0] = 1.0
    k = torch.zeros(1, 1, slots, dim)
    k[0, 0, :, 0] = scores  # q . k_j = scores[j] exactly
    v = torch.randn(1, 1, slots, dim, generator=gen)
    lens = torch.tensor([slots - nodes], dtype=torch.int32)
    mask, _ = ops.build_tree(torch.tensor([[-1]], dtype=torch.int32))
    assert takes_direct_path(nodes, 1, 1, dim, dim, lens, torch.float32)
    out, lse = ops.tree_attention(q, k, v, lens, mask, 1.0)
    s64 = scores.double()
    want_lse = torch.logsumexp(s64, 0)
    want_out = (torch.softmax(s64, 0)[:, None] * v[0, 0].double()).sum(0)
    assert abs(float(lse) - float(want_lse)) < 1e-6
    assert float((out[0, 0, 0].double() - want_out).abs().max()) < 1e-6 * float(want_out.abs().max() + 1)
