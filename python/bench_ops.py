"""Benchmark the specdec_cuda custom ops against their pure-PyTorch references.

Usage:
    python python/bench_ops.py --op NAME|all [--json] [--device cpu|cuda] [--quick]

``--op`` names an entry of ``OPS`` (or ``all``); each op prints its own table
(``--json``: one object per row).  Every case first checks ours against its
baseline and raises SystemExit on a mismatch; rows name the baseline.

kv_compact
    times both ``kv_compact_`` (caches ``[B, H, S, D]``) and ``kv_compact_paged_``
    (pages ``[num_pages, page_size, H, D]``, shuffled block tables) against
    ``specdec_cuda.reference``.  The main case is 32 layers (64 cache tensors: K
    and V), B=8, H=8, S=4096, D=128, a 64-node random tree per row and a random
    root-to-node accepted path of 1..8 nodes; fp16 on CUDA, fp32 on CPU.  Caches
    are ``torch.empty``; only each row's tree window (T=64 slots from
    ``cache_lens[b]``) is filled, so on CPU the untouched pages are never
    committed.  Each case checks the touched window of two tensors and
    ``cache_lens``, then restores ``cache_lens`` before every iteration outside
    the timed region; median of N runs after 3 warm-ups (N = 20 on CPU, 100 on
    CUDA; ``--quick``: 5 / 10 and the main shape only).

rejection_sample
    float32 probabilities ``softmax(2 * randn)``: draft logits d, target logits
    ``d + 0.5 * randn`` (similar models, so drafts get accepted), ``[B, N, V]``
    contiguous; node i's token is drawn (``torch.multinomial``) from the draft row
    of its parent; full-range random int64 seeds and offsets.  Cases: a chain of
    K=8 drafts (N=9, parents ``[-1, 0, ..., 7]``) at B=64, V=131072, with draft
    probabilities (``q``) and without (``no-q``: deterministic drafts, the same
    tokens; on these flat 128k-token distributions p(x) ~ 1e-4, so almost every
    row rejects its first draft and draws from the residual: tau ~ 1), baseline
    ``reference.rejection_sample_chain`` (vectorised, engine style); and a
    top-k-style tree of N=64 nodes at B=8, V=32768, with ``q``: nodes in BFS
    order, the root has 4 children, each of them 2, each of those 2, then one
    child per node (``br4-2-2-1``), cut at 64 nodes, depth 6; baseline the loop
    oracle ``reference.rejection_sample`` (there is no vectorised tree version).
verify_greedy
    the K=8 chain at B=64 (baseline ``reference.verify_greedy_chain``) and the
    N=64 tree at B=8 (baseline the loop oracle ``reference.verify_greedy``).
    Tokens are random ids (V=131072 / 32768); ``target_argmax`` at a node with
    children is, with probability 0.8, the token of one of them (uniform),
    otherwise a random id.
typical_accept
    the N=64 tree at B=8, V=32768 (probabilities as for rejection_sample),
    posterior_threshold 0.09, posterior_alpha 0.3; baseline the loop oracle
    ``reference.typical_accept``.
sampling_probs
    target-like fp32 logits ``[64, 5, V]`` (a chain step's B x (K + 1) rows; V
    32768 and 131072) at temperature 0.8 with, per row, nothing else
    (temperature only), top_k 50, top_p 0.9, or min_p 0.1; then fp32 logits ``2 *
    randn`` ``[64, 131072]`` with temperature 0.7 and (top_k 50, top_p 0.9),
    (top_k 50 only), (top_p 0.9 only) per row, and ``[8, 64, 32768]`` (the tree's
    target logits) with all three; baseline ``reference.sampling_probs_vectorized``
    (float32, sort based), and ``softmax_ms``: ``torch.softmax(logits / T, -1)`` on
    the same tensor (``vs_softmax`` = ours_ms / softmax_ms).  Each case first checks
    ours against the float64 oracle ``reference.sampling_probs`` on 3 rows (same
    support, rtol 1e-5, atol 1e-7); against the baseline the check is
    ``allclose(atol=1e-5)`` per row, and rows where the float32 baseline's
    top-p / min-p boundary differs are counted in ``rows_differ`` (and a note line)
    instead of failing, after checking ours against the oracle on up to 4 of them.
ragged_chain
    a chain verification step on a ragged batch: B=64 chains of K=4 drafts (T = 320
    rows, cu_nodes 0, 5, 10, ...), V 32768 and 131072, temperature 0.8, top_p 0.9:
    ``sampling_probs_ragged`` on the target logits (draft + 0.5 randn) and
    ``rejection_sample_ragged`` with the draft's own probabilities (its
    ``sampling_probs_ragged``, computed once outside the timing) and tokens drawn from
    them.  Baseline: the engine-style torch step, ``sampling_probs_vectorized`` on
    ``[B, K + 1, V]`` + ``reference.rejection_sample_chain``; also ``softmax_ms``
    (``torch.softmax(logits / T, -1)`` alone).  Checked first: our target rows
    against the float64 oracle on 3 rows, our verdict equal to
    ``rejection_sample_chain`` on our target probabilities.
tree_attention
    ``tree_attention`` (caches ``[B, Hkv, S, D]``) against the path engines use
    today, timed whole as an engine runs it per step (``sdpa_tree_attention``):
    unpack the packed tree mask (``reference.unpack_tree_mask``), build a dense
    bool mask ``[B, 1, N, Smax]``, expand K/V for GQA (``repeat_interleave`` over
    heads) and call ``torch.nn.functional.scaled_dot_product_attention`` on q
    transposed to ``[B, Hq, N, D]``.  Smax = max(cache_lens) + N (known on the
    host) is one key length for the whole batch; the mask shows row b the prefix
    ``[0, cache_lens[b])`` and its tree bits at ``cache_lens[b] + j`` and hides the
    slots beyond ``cache_lens[b] + N``.  Hq=32, Hkv=8, D=128, scale D**-0.5; q, K,
    V ``randn``; a different random tree per row (``parents[i]`` uniform in
    ``[0, i)``, ``ops.build_tree``).  Each case first checks ``out`` against SDPA
    and ``lse`` against a float32 logsumexp of the scores over the same dense mask
    (allclose, atol = rtol = 2e-3 for fp32, 3e-2 for fp16/bf16).  CPU (fp32):
    batch 1/4 x prefix 512/2048 x tree 16/64, every row's cache_lens = prefix
    (the key case: B4 L2048 N64); a ragged case (B4 N64, cache_lens spread
    evenly over 256..2048); and ``tree_attention_paged`` at the key case with
    page size 16 and a shuffled block table (``P16``), against the same SDPA
    baseline on the contiguous cache (the page gather is not in the baseline).
    CUDA (fp16): batch 1/4/16 x prefix 512/4096/32768 x tree 16/64/128, skipping
    (a note line) any case whose baseline would need more than 20 GB (expanded
    K/V + the dense mask + one fp32 score matrix ``[B, Hq, N, Smax]``), and the
    paged case at B4 L4096 N64 P16.  Median of 5 calls after 1 warm-up on CPU,
    20 after 3 on CUDA; ``--quick``: 3 / 10 and the key case only (B4 L2048 N64
    on CPU, B4 L4096 N64 on CUDA).

Iterations for the acceptance and sampling ops: median of N eager calls after
W warm-ups; CPU: W=1, N=10 (``--quick``: 3) for ours, N=3 for the baselines
(the loop oracles and, on CPU, the vectorised baselines take seconds per call);
CUDA: W=3, N=100 (``--quick``: 10), the loop oracles N=3 after 1 warm-up.
``--quick`` runs one case per op: the main kv shapes, the chain with ``q``, the
chain for verify_greedy, the tree for typical_accept, top-k + top-p at
``[64, 131072]``, the tree_attention key case.

Columns: op, shape, device, dtype, ours_ms / ref_ms (median ms per eager call;
on CUDA ours includes the eager error/status read-back, a stream
synchronisation), speedup = ref_ms / ours_ms, and on CUDA graph_ms (ours
captured in a CUDA graph, timed by replays: no status read), GBps (bytes /
graph_ms) and pct_of_copy_bw (vs. a measured ~1 GiB device-to-device
``copy_``, printed once as a header line).  Per op:

* kv_compact: moved_MB = read + write bytes the op must move (for every tensor,
  row, head and accepted j with accept_nodes[b, j] != j: 2 * D * elem); GBps
  counts those bytes.
* rejection_sample / verify_greedy / typical_accept: baseline (the reference
  function), tau = mean num_accepted (accepted drafts + 1).  rejection_sample's
  GBps counts reading target_probs (+ draft_probs) once, all N rows: a
  normalisation, since the op reads only the rows on the accepted path (and
  their draft rows), so with small tau it can exceed the copy bandwidth.  On
  CUDA with flashinfer installed, the chain-with-q rows add flashinfer_ms:
  eager ``flashinfer.sampling.chain_speculative_sampling`` on the same tensors
  (its own RNG, so not compared; its signature is checked at run time and the
  column skipped with a note line when it is not one this script knows; its
  first call may JIT-compile, which the warm-ups absorb).
* sampling_probs: baseline, rows_differ (see above); GBps counts reading the
  logits and writing the probabilities once.
* tree_attention / tree_attention_paged: baseline (SDPA, see above); GBps counts
  K and V of every row's prefix + tree read once per KV head (sum_b
  (cache_lens[b] + N) * Hkv * D * 2 * elem).  On CUDA with flashinfer
  installed, the contiguous rows add flashinfer_ms: eager
  ``flashinfer.prefill.single_prefill_with_kv_cache`` with ``custom_mask`` (the
  same dense mask, bool ``[N, L+N]``; kv_layout ``HND``; one call per sequence,
  so B calls per step), checked against SDPA first; its signature is checked at
  run time, and any mismatch or failure skips the column with a note line (its
  first call may JIT-compile, outside the timed calls).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # in-place build
from specdec_cuda import ops, reference  # noqa: E402
from specdec_cuda._graphs import capture as capture_graph  # noqa: E402

TREE_NODES = 64
MAX_ACCEPT = 8
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class KVCase:
    layers: int = 32
    batch: int = 8
    heads: int = 8
    slots: int = 4096
    head_dim: int = 128
    dtype: torch.dtype | None = None  # None: fp16 on CUDA, fp32 on CPU
    page_size: int = 0  # 0: contiguous kv_compact_, else kv_compact_paged_

    def shape(self) -> str:
        s = f"L{self.layers} B{self.batch} H{self.heads} S{self.slots} D{self.head_dim} T{TREE_NODES}"
        return s + (f" P{self.page_size}" if self.page_size else "")


def random_path(rng: random.Random, length: int) -> list[int]:
    """First ``length`` nodes of a root-to-node chain in a random 64-node tree."""
    parents = [-1] + [rng.randrange(i) for i in range(1, TREE_NODES)]
    depth = [0] * TREE_NODES
    for i in range(1, TREE_NODES):
        depth[i] = depth[parents[i]] + 1
    deep = [i for i in range(TREE_NODES) if depth[i] >= length - 1]
    node = rng.choice(deep) if deep else max(range(TREE_NODES), key=depth.__getitem__)
    chain = [node]
    while parents[chain[-1]] >= 0:
        chain.append(parents[chain[-1]])
    return chain[::-1][:length]


def make_meta(case: KVCase, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """cache_lens, accept_nodes (-1 padded), num_accepted: int32 on ``device``."""
    rng = random.Random(seed)
    nodes = torch.full((case.batch, MAX_ACCEPT), -1, dtype=torch.int32)
    for b in range(case.batch):
        path = random_path(rng, rng.randint(1, MAX_ACCEPT))
        nodes[b, : len(path)] = torch.tensor(path, dtype=torch.int32)
    meta = {
        "cache_lens": torch.tensor(
            [rng.randint(0, case.slots - TREE_NODES) for _ in range(case.batch)], dtype=torch.int32
        ),
        "accept_nodes": nodes,
        "num_accepted": (nodes >= 0).sum(1).to(torch.int32),
    }
    return {k: v.to(device) for k, v in meta.items()}


def window_index(case: KVCase, meta: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [B, 1], slots [B, T]) of every row's tree window, int64."""
    lens = meta["cache_lens"].long()
    rows = torch.arange(case.batch, device=lens.device)[:, None]
    return rows, lens[:, None] + torch.arange(TREE_NODES, device=lens.device)


def make_accessors(
    case: KVCase, meta: dict[str, torch.Tensor], tables: torch.Tensor | None
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor, torch.Tensor], None]]:
    """get(t) -> copy of the tree windows [B, T, H, D]; put(t, values) writes them."""
    rows, slots = window_index(case, meta)
    if tables is None:
        index: tuple = (rows, slice(None), slots)
    else:
        index = (tables.long()[rows, slots // case.page_size], slots % case.page_size)

    def get(t: torch.Tensor) -> torch.Tensor:
        return t[index].clone()

    def put(t: torch.Tensor, values: torch.Tensor) -> None:
        t[index] = values

    return get, put


def make_tensors(
    case: KVCase, device: torch.device, dtype: torch.dtype
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """2 * layers empty cache tensors (contiguous or paged) and the block table, if paged."""
    if not case.page_size:
        shape = (case.batch, case.heads, case.slots, case.head_dim)
        return [torch.empty(shape, dtype=dtype, device=device) for _ in range(2 * case.layers)], None
    blocks = -(-case.slots // case.page_size)
    tables = torch.randperm(case.batch * blocks).view(case.batch, blocks).to(device, torch.int32)
    shape = (case.batch * blocks, case.page_size, case.heads, case.head_dim)
    return [torch.empty(shape, dtype=dtype, device=device) for _ in range(2 * case.layers)], tables


def moved_bytes(case: KVCase, meta: dict[str, torch.Tensor], elem: int, tensors: int) -> int:
    """Read + write bytes: accepted entries whose node is not already in place."""
    nodes = meta["accept_nodes"].cpu()
    j = torch.arange(MAX_ACCEPT)
    moving = (j[None] < meta["num_accepted"].cpu()[:, None]) & (nodes != j[None])
    return int(moving.sum()) * tensors * case.heads * case.head_dim * elem * 2


def time_ms(
    fn: Callable[[], object], reset: Callable[[], None], iters: int, cuda: bool, warmup: int = 3
) -> float:
    """Median ms of ``fn`` over ``iters`` runs after ``warmup`` runs; ``reset`` runs untimed first."""
    for _ in range(warmup):
        reset()
        fn()
    times = []
    for _ in range(iters):
        reset()
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_kv_case(case: KVCase, device: torch.device, iters: int) -> dict:
    """Build one case, check ours == reference, time both; one result row."""
    torch.manual_seed(0)
    dtype = case.dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    meta = make_meta(case, device)
    tensors, tables = make_tensors(case, device, dtype)
    get, put = make_accessors(case, meta, tables)
    for t in tensors:
        put(t, torch.randn(case.batch, TREE_NODES, case.heads, case.head_dim, device=device).to(dtype))
    lens, saved = meta["cache_lens"], meta["cache_lens"].clone()
    if tables is None:
        args = (tensors, lens, meta["accept_nodes"], meta["num_accepted"])
        ours, ref = (lambda a=args: ops.kv_compact_(*a)), (lambda a=args: reference.kv_compact_(*a))
    else:
        half = case.layers
        args = (tensors[:half], tensors[half:], tables, lens, meta["accept_nodes"], meta["num_accepted"])
        ours, ref = (
            (lambda a=args: ops.kv_compact_paged_(*a)),
            (lambda a=args: reference.kv_compact_paged_(*a)),
        )
    check_outputs(tensors, [0, len(tensors) - 1], get, put, lens, saved, ours, ref, case)
    reset = lambda: lens.copy_(saved)  # noqa: E731
    cuda = device.type == "cuda"
    ours_ms, ref_ms = time_ms(ours, reset, iters, cuda), time_ms(ref, reset, iters, cuda)
    moved = moved_bytes(case, meta, tensors[0].element_size(), len(tensors))
    row = {
        "op": "kv_compact_paged_" if case.page_size else "kv_compact_",
        "shape": case.shape(),
        "device": device.type,
        "dtype": DTYPE_NAMES[dtype],
        "ours_ms": round(ours_ms, 4),
        "ref_ms": round(ref_ms, 4),
        "speedup": round(ref_ms / ours_ms, 2),
        "moved_MB": round(moved / 1e6, 3),
        "_moved_bytes": moved,
    }
    if cuda:
        row["graph_ms"] = round(time_ms(captured(ours), reset, iters, cuda), 4)
    del tensors, args
    return row


def captured(fn: Callable[[], object]) -> Callable[[], None]:
    """``fn`` captured into a CUDA graph; the result replays it.

    Eager calls of the ops end with a status read (a stream synchronisation)
    so that bad input raises; engines run them inside CUDA graphs, where that
    read is skipped, so graph replays time the kernels themselves.
    """
    graph, _ = capture_graph(fn)
    return graph.replay


def check_outputs(
    tensors: list[torch.Tensor],
    which: list[int],
    get: Callable,
    put: Callable,
    lens: torch.Tensor,
    saved: torch.Tensor,
    ours: Callable,
    ref: Callable,
    case: KVCase,
) -> None:
    """Run ours and the reference from the same state; raise unless the windows and lens match."""
    before = {i: get(tensors[i]) for i in which}
    ours()
    got = {i: get(tensors[i]) for i in which}
    got_lens = lens.clone()
    for i in which:
        put(tensors[i], before[i])
    lens.copy_(saved)
    ref()
    bad = [i for i in which if not torch.equal(got[i], get(tensors[i]))]
    if bad or not torch.equal(got_lens, lens):
        raise SystemExit(
            f"MISMATCH vs reference: {case.shape()} tensors {bad} "
            f"lens ours={got_lens.tolist()} ref={lens.tolist()}"
        )
    lens.copy_(saved)


def kv_cases(quick: bool) -> list[KVCase]:
    main = [KVCase(), KVCase(page_size=16)]
    if quick:
        return main
    return main + [
        KVCase(batch=1),
        KVCase(batch=32),
        KVCase(head_dim=64),
        KVCase(head_dim=256),
        KVCase(dtype=torch.bfloat16),
        KVCase(page_size=1),
    ]


def bench_kv_compact(device: torch.device, quick: bool) -> list[dict]:
    iters = (10 if quick else 100) if device.type == "cuda" else (5 if quick else 20)
    return [bench_kv_case(case, device, iters) for case in kv_cases(quick)]


# ---------------------------------------------------------------------------
# Acceptance sampling (rejection_sample, verify_greedy, typical_accept) and
# sampling_probs.
# ---------------------------------------------------------------------------

CHAIN_K = 8
CHAIN_BATCH, CHAIN_VOCAB = 64, 131072
TREE_BATCH, TREE_VOCAB = 8, 32768
TREE_BRANCHING = (4, 2, 2, 1)  # children per node at depth 0, 1, 2 and deeper
GREEDY_MATCH = 0.8  # chance that target_argmax at a node is one of its children's tokens
VERDICT = ("accept_nodes", "num_accepted", "next_token")
NOTES: list[str] = []  # printed after the tables


@dataclass(frozen=True)
class Counts:
    """Warm-ups and timed calls for ours, a vectorised baseline and a loop oracle."""

    warmup: int
    ours: int
    ref: int
    loop: int = 3  # loop oracles: after 1 warm-up


def counts(device: torch.device, quick: bool) -> Counts:
    if device.type == "cuda":
        n = 10 if quick else 100
        return Counts(warmup=3, ours=n, ref=n)
    return Counts(warmup=1, ours=3 if quick else 10, ref=3)


def note(text: str) -> None:
    if text not in NOTES:
        NOTES.append(text)


def no_reset() -> None:
    """The acceptance and sampling ops write no input: nothing to restore between calls."""


def topk_tree(nodes: int, branching: tuple[int, ...] = TREE_BRANCHING) -> list[int]:
    """Parents of a top-k-style tree in BFS order, cut at ``nodes`` nodes.

    A node at depth d has ``branching[min(d, len(branching) - 1)]`` children.
    """
    parents, frontier, depth = [-1], [0], 0
    while len(parents) < nodes and frontier:
        width, grown = branching[min(depth, len(branching) - 1)], []
        for u in frontier:
            for _ in range(width):
                if len(parents) < nodes:
                    grown.append(len(parents))
                    parents.append(u)
        frontier, depth = grown, depth + 1
    return parents


TREE_PARENTS = topk_tree(TREE_NODES)
CHAIN_PARENTS = list(range(-1, CHAIN_K))


def tree_label(parents: list[int], batch: int, vocab: int) -> str:
    if parents == CHAIN_PARENTS:
        return f"chain K{CHAIN_K} B{batch} V{vocab}"
    depth = [0] * len(parents)
    for i in range(1, len(parents)):
        depth[i] = depth[parents[i]] + 1
    branching = "-".join(map(str, TREE_BRANCHING))
    return f"tree N{len(parents)} br{branching} d{max(depth)} B{batch} V{vocab}"


def parents_tensor(parents: list[int], batch: int, device: torch.device) -> torch.Tensor:
    """int32 [B, N], the same tree in every row."""
    return torch.tensor(parents, dtype=torch.int32, device=device).expand(batch, -1).contiguous()


def random_seeds(batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-range int64 seeds and offsets [B]."""
    lo, hi = -(2**63), 2**63 - 1
    return tuple(torch.randint(lo, hi, (batch,), dtype=torch.int64, device=device) for _ in range(2))


def similar_logits(shape: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(draft, target) float32 logits: d = 2 * randn and d + 0.5 * randn (two similar models)."""
    draft = torch.randn(shape, device=device).mul_(2)
    return draft, draft + torch.randn(shape, device=device).mul_(0.5)


def draft_tokens(draft_probs: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
    """int64 [B, N]: node i > 0 drawn from its parent's draft row; the root's token is 0."""
    batch, nodes, vocab = draft_probs.shape
    rows = torch.arange(batch, device=draft_probs.device)[:, None]
    drawn = torch.multinomial(draft_probs[rows, parents[:, 1:].long()].view(-1, vocab), 1)
    tokens = torch.zeros(batch, nodes, dtype=torch.int64, device=draft_probs.device)
    tokens[:, 1:] = drawn.view(batch, nodes - 1)
    return tokens


def sampled_inputs(
    parents: list[int], batch: int, vocab: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Arguments of rejection_sample / typical_accept: tokens, parents, draft_probs,
    target_probs, seed, offset.

    Probabilities are float32 ``[B, N, V]`` softmaxes of :func:`similar_logits`;
    tokens are drawn from the draft, so acceptance rates are realistic.
    """
    par = parents_tensor(parents, batch, device)
    draft, target = similar_logits((batch, len(parents), vocab), device)
    draft_probs = torch.softmax(draft, -1)
    del draft
    target_probs = torch.softmax(target, -1)
    del target
    seed, offset = random_seeds(batch, device)
    return {
        "tokens": draft_tokens(draft_probs, par),
        "parents": par,
        "draft_probs": draft_probs,
        "target_probs": target_probs,
        "seed": seed,
        "offset": offset,
    }


def greedy_inputs(
    parents: list[int], batch: int, vocab: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """verify_greedy arguments: random tokens; target_argmax[b, u] is one of u's children's
    tokens with probability GREEDY_MATCH (else a random id)."""
    rng = random.Random(0)
    nodes = len(parents)
    kids = [[c for c in range(nodes) if parents[c] == u] for u in range(nodes)]
    pick = torch.tensor(
        [
            [rng.choice(kids[u]) if kids[u] and rng.random() < GREEDY_MATCH else -1 for u in range(nodes)]
            for _ in range(batch)
        ]
    )
    tokens = torch.randint(vocab, (batch, nodes))
    other = torch.randint(vocab, (batch, nodes))
    argmax = torch.where(pick >= 0, tokens.gather(1, pick.clamp(min=0)), other)
    return {
        "tokens": tokens.to(device),
        "parents": parents_tensor(parents, batch, device),
        "target_argmax": argmax.to(device),
    }


def check_verdict(op: str, shape: str, got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> None:
    bad = [name for name, a, b in zip(VERDICT, got, want) if not torch.equal(a, b)]
    if bad:
        raise SystemExit(f"MISMATCH vs reference: {op} {shape}: {', '.join(bad)} differ")


def tau(verdict: tuple[torch.Tensor, ...]) -> float:
    """Mean num_accepted: accepted drafts + 1 tokens emitted per step."""
    return round(float(verdict[1].float().mean()), 3)


def timed_row(
    op: str,
    shape: str,
    dtype: str,
    device: torch.device,
    quick: bool,
    ours: Callable[[], object],
    ref: Callable[[], object],
    baseline: str,
    loop_ref: bool,
    extra: dict,
    moved: int | None = None,
) -> dict:
    """Time ours and the baseline (and on CUDA ours in a graph); one result row."""
    n, cuda = counts(device, quick), device.type == "cuda"
    ours_ms = time_ms(ours, no_reset, n.ours, cuda, n.warmup)
    if loop_ref:
        ref_ms = time_ms(ref, no_reset, n.loop, cuda, 1)
    else:
        ref_ms = time_ms(ref, no_reset, n.ref, cuda, n.warmup)
    row = {
        "op": op,
        "shape": shape,
        "device": device.type,
        "dtype": dtype,
        "ours_ms": round(ours_ms, 4),
        "ref_ms": round(ref_ms, 4),
        "speedup": round(ref_ms / ours_ms, 2),
        "baseline": baseline,
        **extra,
    }
    if cuda:
        row["graph_ms"] = round(time_ms(captured(ours), no_reset, n.ours, cuda, n.warmup), 4)
        if moved is not None:
            row["_moved_bytes"] = moved
    return row


def flashinfer_chain(d: dict[str, torch.Tensor]) -> Callable[[], object] | str:
    """flashinfer's chain verifier on the chain-with-q tensors, or why there is none.

    Two public signatures are known: ``(draft_probs, draft_token_ids,
    target_probs, ...)`` (its own RNG) and the older ``(draft_probs,
    draft_token_ids, uniform_samples, target_probs, ...)``.  draft_probs is
    ``[B, K, V]`` (our rows 0..K-1), target_probs ``[B, K + 1, V]``.
    """
    try:
        from flashinfer import sampling as fi_sampling
    except ImportError as e:
        return f"flashinfer not importable ({e}): no flashinfer_ms column"
    fn = getattr(fi_sampling, "chain_speculative_sampling", None)
    if fn is None:
        return "flashinfer.sampling has no chain_speculative_sampling: no flashinfer_ms column"
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return "flashinfer chain_speculative_sampling: no readable signature, no flashinfer_ms column"
    params = list(signature.parameters)
    tokens = d["tokens"]
    batch, k = tokens.shape[0], tokens.shape[1] - 1
    kwargs = {
        "draft_probs": d["draft_probs"][:, :k].contiguous(),
        "draft_token_ids": tokens[:, 1:].to(torch.int32).contiguous(),
        "target_probs": d["target_probs"],
    }
    if params[:4] == ["draft_probs", "draft_token_ids", "uniform_samples", "target_probs"]:
        kwargs["uniform_samples"] = torch.rand(batch, k + 1, device=tokens.device)
    elif params[:3] != ["draft_probs", "draft_token_ids", "target_probs"]:
        return (
            f"flashinfer.sampling.chain_speculative_sampling{signature}: unknown signature, "
            "no flashinfer_ms column"
        )
    return lambda: fn(**kwargs)


def add_flashinfer(row: dict, d: dict[str, torch.Tensor], device: torch.device, quick: bool) -> None:
    call = flashinfer_chain(d)
    if isinstance(call, str):
        note(call)
        return
    n = counts(device, quick)
    try:
        row["flashinfer_ms"] = round(time_ms(call, no_reset, n.ours, True, n.warmup), 4)
    except Exception as e:  # an optional comparison must not end the benchmark
        note(f"flashinfer.sampling.chain_speculative_sampling failed: {type(e).__name__}: {e}")


def bench_rejection_chain(
    d: dict[str, torch.Tensor], with_q: bool, device: torch.device, quick: bool
) -> dict:
    """One chain case, with or without draft_probs; baseline reference.rejection_sample_chain."""
    q = d["draft_probs"] if with_q else None
    args = (d["tokens"], d["parents"], q, d["target_probs"], d["seed"], d["offset"])
    ref_args = (d["tokens"], q, d["target_probs"], d["seed"], d["offset"])
    shape = f"{tree_label(CHAIN_PARENTS, CHAIN_BATCH, CHAIN_VOCAB)} {'q' if with_q else 'no-q'}"
    got = ops.rejection_sample(*args)
    check_verdict("rejection_sample", shape, got, reference.rejection_sample_chain(*ref_args))
    moved = d["target_probs"].nbytes + (q.nbytes if q is not None else 0)
    row = timed_row(
        "rejection_sample",
        shape,
        "fp32",
        device,
        quick,
        lambda: ops.rejection_sample(*args),
        lambda: reference.rejection_sample_chain(*ref_args),
        "reference.rejection_sample_chain (vectorised)",
        False,
        {"tau": tau(got)},
        moved,
    )
    if with_q and device.type == "cuda":
        add_flashinfer(row, d, device, quick)
    return row


def bench_rejection_tree(device: torch.device, quick: bool) -> dict:
    """The N=64 tree with draft_probs; baseline the loop oracle reference.rejection_sample."""
    torch.manual_seed(0)
    d = sampled_inputs(TREE_PARENTS, TREE_BATCH, TREE_VOCAB, device)
    args = (d["tokens"], d["parents"], d["draft_probs"], d["target_probs"], d["seed"], d["offset"])
    shape = f"{tree_label(TREE_PARENTS, TREE_BATCH, TREE_VOCAB)} q"
    got = ops.rejection_sample(*args)
    check_verdict("rejection_sample", shape, got, reference.rejection_sample(*args))
    moved = d["target_probs"].nbytes + d["draft_probs"].nbytes
    return timed_row(
        "rejection_sample",
        shape,
        "fp32",
        device,
        quick,
        lambda: ops.rejection_sample(*args),
        lambda: reference.rejection_sample(*args),
        "reference.rejection_sample (loop oracle; no vectorised tree version)",
        True,
        {"tau": tau(got)},
        moved,
    )


def bench_rejection_sample(device: torch.device, quick: bool) -> list[dict]:
    torch.manual_seed(0)
    chain = sampled_inputs(CHAIN_PARENTS, CHAIN_BATCH, CHAIN_VOCAB, device)
    rows = [
        bench_rejection_chain(chain, with_q, device, quick)
        for with_q in ((True,) if quick else (True, False))
    ]
    del chain
    return rows if quick else rows + [bench_rejection_tree(device, quick)]


def bench_verify_case(parents: list[int], batch: int, vocab: int, device: torch.device, quick: bool) -> dict:
    """One verify_greedy case; baseline verify_greedy_chain for the chain, else the loop oracle."""
    torch.manual_seed(0)
    d = greedy_inputs(parents, batch, vocab, device)
    args = (d["tokens"], d["parents"], d["target_argmax"])
    shape = tree_label(parents, batch, vocab)
    chain = parents == CHAIN_PARENTS
    if chain:
        ref, baseline = (lambda: reference.verify_greedy_chain(args[0], args[2])), "verify_greedy_chain"
    else:
        ref, baseline = (lambda: reference.verify_greedy(*args)), "verify_greedy"
    got = ops.verify_greedy(*args)
    check_verdict("verify_greedy", shape, got, ref())
    label = f"reference.{baseline} ({'vectorised' if chain else 'loop oracle'})"
    return timed_row(
        "verify_greedy",
        shape,
        "int64",
        device,
        quick,
        lambda: ops.verify_greedy(*args),
        ref,
        label,
        not chain,
        {"tau": tau(got)},
    )


def bench_verify_greedy(device: torch.device, quick: bool) -> list[dict]:
    """The K=8 chain at B=64 and, unless quick, the N=64 tree at B=8."""
    cases = [(CHAIN_PARENTS, CHAIN_BATCH, CHAIN_VOCAB), (TREE_PARENTS, TREE_BATCH, TREE_VOCAB)]
    return [bench_verify_case(*case, device, quick) for case in cases[: 1 if quick else 2]]


def bench_typical_accept(device: torch.device, quick: bool) -> list[dict]:
    """The N=64 tree at B=8, V=32768, threshold 0.09, alpha 0.3; baseline the loop oracle."""
    torch.manual_seed(0)
    d = sampled_inputs(TREE_PARENTS, TREE_BATCH, TREE_VOCAB, device)
    args = (d["tokens"], d["parents"], d["target_probs"], 0.09, 0.3, d["seed"], d["offset"])
    shape = f"{tree_label(TREE_PARENTS, TREE_BATCH, TREE_VOCAB)} thr0.09 a0.3"
    got = ops.typical_accept(*args)
    check_verdict("typical_accept", shape, got, reference.typical_accept(*args))
    return [
        timed_row(
            "typical_accept",
            shape,
            "fp32",
            device,
            quick,
            lambda: ops.typical_accept(*args),
            lambda: reference.typical_accept(*args),
            "reference.typical_accept (loop oracle)",
            True,
            {"tau": tau(got)},
        )
    ]


@dataclass(frozen=True)
class SamplingCase:
    shape: tuple[int, ...]  # [B, V] or [B, N, V]
    top_k: int
    top_p: float
    temperature: float = 0.7
    min_p: float = 0.0

    def label(self) -> str:
        dims = " ".join(f"{n}{v}" for n, v in zip("BNV" if len(self.shape) == 3 else "BV", self.shape))
        mp = f" m{self.min_p}" if self.min_p > 0 else ""
        return f"{dims} T{self.temperature} k{self.top_k} p{self.top_p}{mp}"


SAMPLING_ROWS = (64, 5)  # B x (K + 1) positions: a chain step's target logits
SAMPLING_VOCABS = (32768, 131072)
# (top_k, top_p, min_p): temperature only, top-k, top-p, min-p
SAMPLING_KINDS = ((0, 1.0, 0.0), (50, 1.0, 0.0), (0, 0.9, 0.0), (0, 1.0, 0.1))


def sampling_cases(quick: bool) -> list[SamplingCase]:
    main = SamplingCase((CHAIN_BATCH, CHAIN_VOCAB), 50, 0.9)
    if quick:
        return [main]
    rows = [
        SamplingCase((*SAMPLING_ROWS, vocab), k, p, 0.8, m)
        for vocab in SAMPLING_VOCABS
        for k, p, m in SAMPLING_KINDS
    ]
    return [
        *rows,
        main,
        SamplingCase(main.shape, 50, 1.0),
        SamplingCase(main.shape, 0, 0.9),
        SamplingCase((TREE_BATCH, TREE_NODES, TREE_VOCAB), 50, 0.9),
    ]


def sampling_rows_differ(
    case: SamplingCase,
    args: tuple[torch.Tensor, ...],
    got: torch.Tensor,
    want: torch.Tensor,
    oracle_rows: int = 4,
) -> int:
    """Rows where ours and the float32 baseline are not allclose(atol=1e-5).

    Ours must then equal the float64 loop oracle on the first ``oracle_rows`` of them.
    """
    logits, temperature, top_k, top_p, min_p = args
    vocab = logits.shape[-1]
    bad = (~torch.isclose(got, want, atol=1e-5).view(-1, vocab).all(1)).nonzero()[:, 0]
    if not bad.numel():
        return 0
    idx = bad[:oracle_rows]
    b = idx // (logits[0].numel() // vocab)
    oracle = reference.sampling_probs(
        logits.view(-1, vocab)[idx],
        temperature[b],
        top_k[b],
        top_p[b],
        min_p[b] if min_p is not None else None,
    )
    mine = got.view(-1, vocab)[idx]
    if not (torch.equal(mine > 0, oracle > 0) and torch.allclose(mine, oracle, atol=1e-6, rtol=0)):
        raise SystemExit(
            f"MISMATCH vs reference: sampling_probs {case.label()}: rows {idx.tolist()} "
            "differ from both sampling_probs_vectorized and the float64 oracle"
        )
    note(
        f"sampling_probs {case.label()}: {bad.numel()}/{got.numel() // vocab} rows differ from "
        "sampling_probs_vectorized beyond atol 1e-5 (its float32 top-p / min-p boundary); "
        f"on the {idx.numel()} checked, ours matches the float64 oracle (same support, atol 1e-6)"
    )
    return int(bad.numel())


def check_against_oracle(name: str, got: torch.Tensor, args: tuple, rows: int = 3) -> None:
    """Ours against the float64 oracle (reference.sampling_probs) on a few rows: same
    support and allclose(rtol 1e-5, atol 1e-7), else SystemExit."""
    logits, temperature, top_k, top_p, min_p = args
    vocab = logits.shape[-1]
    per = logits[0].numel() // vocab
    idx = torch.linspace(0, logits.numel() // vocab - 1, rows).long()
    b = idx // per
    oracle = reference.sampling_probs(
        logits.view(-1, vocab)[idx].cpu(),
        temperature[b].cpu(),
        top_k[b].cpu(),
        top_p[b].cpu(),
        min_p[b].cpu() if min_p is not None else None,
    )
    mine = got.view(-1, vocab)[idx].cpu()
    if not (torch.equal(mine > 0, oracle > 0) and torch.allclose(mine, oracle, rtol=1e-5, atol=1e-7)):
        raise SystemExit(f"MISMATCH vs reference: {name}: rows {idx.tolist()} differ from the float64 oracle")


def bench_sampling_case(case: SamplingCase, device: torch.device, quick: bool) -> dict:
    torch.manual_seed(0)
    batch = case.shape[0]
    if len(case.shape) == 3:
        logits = similar_logits(case.shape, device)[1]  # the tree's / chain's target logits
    else:
        logits = torch.randn(case.shape, device=device).mul_(2)
    min_p = torch.full((batch,), case.min_p, device=device) if case.min_p > 0 else None
    args = (
        logits,
        torch.full((batch,), case.temperature, device=device),
        torch.full((batch,), case.top_k, dtype=torch.int32, device=device),
        torch.full((batch,), case.top_p, device=device),
        min_p,
    )
    got, want = ops.sampling_probs(*args), reference.sampling_probs_vectorized(*args)
    check_against_oracle(f"sampling_probs {case.label()}", got, args)
    differ = sampling_rows_differ(case, args, got, want)
    del got, want
    moved = logits.nbytes + 4 * logits.numel()  # read the logits, write float32 probabilities
    n, cuda = counts(device, quick), device.type == "cuda"
    temperature = args[1].view(batch, *([1] * (logits.dim() - 1)))
    softmax_ms = time_ms(lambda: torch.softmax(logits / temperature, -1), no_reset, n.ours, cuda, n.warmup)
    row = timed_row(
        "sampling_probs",
        case.label(),
        "fp32",
        device,
        quick,
        lambda: ops.sampling_probs(*args),
        lambda: reference.sampling_probs_vectorized(*args),
        "reference.sampling_probs_vectorized (fp32 sort)",
        False,
        {"rows_differ": differ},
        moved,
    )
    row["softmax_ms"] = round(softmax_ms, 4)
    row["vs_softmax"] = round(row["ours_ms"] / softmax_ms, 2)
    return row


def bench_sampling_probs(device: torch.device, quick: bool) -> list[dict]:
    return [bench_sampling_case(case, device, quick) for case in sampling_cases(quick)]


# ---------------------------------------------------------------------------
# A ragged chain verification step: sampling_probs_ragged on every row's K + 1
# target logits, then rejection_sample_ragged with the draft probabilities.
# ---------------------------------------------------------------------------

RAGGED_BATCH, RAGGED_K = 64, 4
RAGGED_VOCABS = (32768, 131072)
RAGGED_T, RAGGED_P = 0.8, 0.9


def ragged_chain_inputs(batch: int, k: int, vocab: int, device: torch.device) -> dict[str, torch.Tensor]:
    """B chains of K drafts, flat: target logits [B (K + 1), V], draft probabilities (the
    draft's own sampling_probs), tokens drawn from them, cu_nodes = 0, K + 1, ..."""
    nodes = k + 1
    draft_logits, target_logits = similar_logits((batch * nodes, vocab), device)
    temperature = torch.full((batch,), RAGGED_T, device=device)
    top_k = torch.zeros(batch, dtype=torch.int32, device=device)
    top_p = torch.full((batch,), RAGGED_P, device=device)
    cu = torch.arange(0, batch * nodes + 1, nodes, dtype=torch.int32, device=device)
    draft_probs = ops.sampling_probs_ragged(draft_logits, cu, temperature, top_k, top_p)
    parents = torch.arange(-1, k, dtype=torch.int32, device=device).repeat(batch)
    tokens = draft_tokens(
        draft_probs.view(batch, nodes, vocab), parents.view(batch, nodes).contiguous()
    ).view(-1)
    seed, offset = random_seeds(batch, device)
    return dict(
        logits=target_logits,
        cu_nodes=cu,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        tokens=tokens,
        parents=parents,
        draft_probs=draft_probs,
        seed=seed,
        offset=offset,
    )


def bench_ragged_chain_case(vocab: int, device: torch.device, quick: bool) -> dict:
    torch.manual_seed(0)
    d = ragged_chain_inputs(RAGGED_BATCH, RAGGED_K, vocab, device)
    batch, nodes = RAGGED_BATCH, RAGGED_K + 1

    def ours():
        target = ops.sampling_probs_ragged(
            d["logits"], d["cu_nodes"], d["temperature"], d["top_k"], d["top_p"]
        )
        return ops.rejection_sample_ragged(
            d["tokens"], d["parents"], d["cu_nodes"], d["draft_probs"], target, d["seed"], d["offset"]
        )

    def chain(target: torch.Tensor):
        return reference.rejection_sample_chain(
            d["tokens"].view(batch, nodes),
            d["draft_probs"].view(batch, nodes, vocab),
            target.view(batch, nodes, vocab),
            d["seed"],
            d["offset"],
        )

    def engine():
        logits3 = d["logits"].view(batch, nodes, vocab)
        return chain(reference.sampling_probs_vectorized(logits3, d["temperature"], d["top_k"], d["top_p"]))

    # Checks: our target rows against the float64 oracle; our verdict equal to the
    # vectorised chain reference's on our target probabilities.
    target = ops.sampling_probs_ragged(d["logits"], d["cu_nodes"], d["temperature"], d["top_k"], d["top_p"])
    per_row = tuple(d[k].repeat_interleave(nodes) for k in ("temperature", "top_k", "top_p"))
    check_against_oracle(
        f"sampling_probs_ragged B{batch} K{RAGGED_K} V{vocab}", target, (d["logits"], *per_row, None)
    )
    got = ours()
    shape = f"chain B{batch} K{RAGGED_K} V{vocab} T{RAGGED_T} p{RAGGED_P} q"
    check_verdict("ragged chain", shape, (got[0].view(batch, nodes), got[1], got[2]), chain(target))
    n, cuda = counts(device, quick), device.type == "cuda"
    temperature = per_row[0][:, None]
    softmax_ms = time_ms(
        lambda: torch.softmax(d["logits"] / temperature, -1), no_reset, n.ours, cuda, n.warmup
    )
    row = timed_row(
        "sampling_probs_ragged + rejection_sample_ragged",
        shape,
        "fp32",
        device,
        quick,
        ours,
        engine,
        "sampling_probs_vectorized + rejection_sample_chain (fp32 sort, vectorised)",
        False,
        {"tau": tau(got)},
    )
    row["softmax_ms"] = round(softmax_ms, 4)
    row["vs_softmax"] = round(row["ours_ms"] / softmax_ms, 2)
    return row


def bench_ragged_chain(device: torch.device, quick: bool) -> list[dict]:
    return [bench_ragged_chain_case(vocab, device, quick) for vocab in RAGGED_VOCABS[: 1 if quick else 2]]


# ---------------------------------------------------------------------------
# tree_attention (and tree_attention_paged) against the engines' SDPA path.
# ---------------------------------------------------------------------------

ATTN_HQ, ATTN_HKV, ATTN_DIM = 32, 8, 128
ATTN_PAGE = 16
ATTN_BASELINE_LIMIT = 20e9  # CUDA: skip cases whose SDPA baseline would need more (bytes)
ATTN_SDPA = "F.sdpa (dense bool mask [B,1,N,Smax], repeat_interleave GQA)"
ATTN_SDPA_PAGED = "F.sdpa on the contiguous cache (no gather; same mask + GQA expansion)"


@dataclass(frozen=True)
class AttnCase:
    batch: int
    prefix: int  # every row's cache_lens; ragged: the largest
    nodes: int
    dtype: torch.dtype
    ragged_from: int = 0  # > 0: cache_lens spread evenly over [ragged_from, prefix]
    page_size: int = 0  # 0: tree_attention, else tree_attention_paged

    def lens(self) -> list[int]:
        if not self.ragged_from or self.batch == 1:
            return [self.prefix] * self.batch
        step = (self.prefix - self.ragged_from) / (self.batch - 1)
        return [round(self.ragged_from + b * step) for b in range(self.batch)]

    def shape(self) -> str:
        pre = f"L{self.ragged_from}..{self.prefix}" if self.ragged_from else f"L{self.prefix}"
        s = f"B{self.batch} {pre} N{self.nodes} Hq{ATTN_HQ} Hkv{ATTN_HKV} D{ATTN_DIM}"
        return s + (f" P{self.page_size}" if self.page_size else "")

    def baseline_bytes(self) -> int:
        """Expanded K/V + the dense mask + one fp32 score matrix [B, Hq, N, Smax] (the
        math backend's; the fused ones need less)."""
        keys, elem = self.prefix + self.nodes, torch.finfo(self.dtype).bits // 8
        expanded = 2 * self.batch * ATTN_HQ * keys * ATTN_DIM * elem
        return expanded + self.batch * self.nodes * keys * (1 + 4 * ATTN_HQ)


def attn_cases(device: torch.device, quick: bool) -> list[AttnCase]:
    if device.type == "cuda":
        key = AttnCase(4, 4096, 64, torch.float16)
        if quick:
            return [key]
        grid = [
            AttnCase(b, p, n, torch.float16)
            for b in (1, 4, 16)
            for p in (512, 4096, 32768)
            for n in (16, 64, 128)
        ]
        return grid + [AttnCase(4, 4096, 64, torch.float16, page_size=ATTN_PAGE)]
    key = AttnCase(4, 2048, 64, torch.float32)
    if quick:
        return [key]
    grid = [AttnCase(b, p, n, torch.float32) for b in (1, 4) for p in (512, 2048) for n in (16, 64)]
    return grid + [
        AttnCase(4, 2048, 64, torch.float32, ragged_from=256),
        AttnCase(4, 2048, 64, torch.float32, page_size=ATTN_PAGE),
    ]


def random_tree_parents(rng: random.Random, batch: int, nodes: int, device: torch.device) -> torch.Tensor:
    """int32 [B, N]: a different random tree per row, parents[i] uniform in [0, i)."""
    rows = [[-1] + [rng.randrange(i) for i in range(1, nodes)] for _ in range(batch)]
    return torch.tensor(rows, dtype=torch.int32, device=device)


def sdpa_dense_mask(cache_lens: torch.Tensor, mask: torch.Tensor, nodes: int, keys: int) -> torch.Tensor:
    """bool [B, N, keys]: query i sees slots [0, cache_lens[b]) and the tree slots
    cache_lens[b] + j with bit j of mask[b, i]; slots past cache_lens[b] + N stay hidden."""
    lens = cache_lens.long()[:, None, None]  # [B, 1, 1]
    slot = torch.arange(keys, device=mask.device)
    dense = (slot < lens).expand(-1, nodes, -1).clone()
    cols = (lens + torch.arange(nodes, device=mask.device)).expand(-1, nodes, -1)
    return dense.scatter_(2, cols, reference.unpack_tree_mask(mask, nodes))


def sdpa_tree_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_lens: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
    keys: int,
) -> torch.Tensor:
    """The path engines use today, whole: dense mask, GQA expansion, SDPA.

    ``keys`` = max(cache_lens) + N, known on the host (no device read); returns out
    ``[B, N, Hq, D]`` (a transposed view of SDPA's ``[B, Hq, N, D]``).
    """
    nodes, group = q.shape[1], q.shape[2] // k_cache.shape[1]
    dense = sdpa_dense_mask(cache_lens, mask, nodes, keys)
    k = k_cache[:, :, :keys].repeat_interleave(group, 1)
    v = v_cache[:, :, :keys].repeat_interleave(group, 1)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k, v, attn_mask=dense[:, None], scale=scale
    )
    return out.transpose(1, 2)


def masked_lse(q: torch.Tensor, k_cache: torch.Tensor, dense: torch.Tensor, scale: float) -> torch.Tensor:
    """float32 [B, N, Hq] logsumexp of the scores over the dense mask, one row at a time."""
    group, keys = q.shape[2] // k_cache.shape[1], dense.shape[-1]
    rows = []
    for b in range(q.shape[0]):
        k = k_cache[b, :, :keys].float().repeat_interleave(group, 0)  # [Hq, keys, D]
        s = torch.matmul(q[b].float().transpose(0, 1), k.transpose(1, 2)) * scale  # [Hq, N, keys]
        rows.append(s.masked_fill_(~dense[b], float("-inf")).logsumexp(-1).transpose(0, 1))
        del k, s
    return torch.stack(rows)


def to_pages(cache: torch.Tensor, tables: torch.Tensor, page_size: int) -> torch.Tensor:
    """[B, Hkv, S, D] cache -> [B * blocks, page_size, Hkv, D] pages laid out by ``tables``."""
    batch, heads, slots, dim = cache.shape
    blocks = tables.shape[1]
    padded = cache.new_zeros(batch, blocks * page_size, heads, dim)
    padded[:, :slots] = cache.transpose(1, 2)
    pages = cache.new_empty(batch * blocks, page_size, heads, dim)
    pages[tables.long()] = padded.view(batch, blocks, page_size, heads, dim)
    return pages


def attn_tolerance(dtype: torch.dtype) -> float:
    return 2e-3 if dtype == torch.float32 else 3e-2


def check_attention(
    case: AttnCase, got: tuple[torch.Tensor, torch.Tensor], want_out: torch.Tensor, want_lse: torch.Tensor
) -> None:
    tol = attn_tolerance(case.dtype)
    for name, a, b in (("out", got[0], want_out), ("lse", got[1], want_lse)):
        if not torch.allclose(a.float(), b.float(), atol=tol, rtol=tol):
            err = float((a.float() - b.float()).abs().max())
            raise SystemExit(
                f"MISMATCH vs SDPA baseline: tree_attention {case.shape()} "
                f"{DTYPE_NAMES[case.dtype]}: {name} max abs diff {err:.3g} (tol {tol})"
            )


def flashinfer_tree(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    lens: list[int],
    dense: torch.Tensor,
    scale: float,
) -> Callable[[], object] | str:
    """flashinfer's custom-mask prefill, one call per sequence, or why there is none.

    ``single_prefill_with_kv_cache(q [N, Hq, D], k/v [Hkv, L+N, D] (kv_layout "HND"),
    custom_mask=bool [N, L+N], sm_scale=...)``; the signature is checked first.
    """
    try:
        from flashinfer import prefill as fi_prefill
    except Exception as e:  # ImportError, or a broken install
        return f"flashinfer not importable ({type(e).__name__}: {e}): no flashinfer_ms column"
    fn = getattr(fi_prefill, "single_prefill_with_kv_cache", None)
    if fn is None:
        return "flashinfer.prefill has no single_prefill_with_kv_cache: no flashinfer_ms column"
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return "flashinfer single_prefill_with_kv_cache: no readable signature, no flashinfer_ms column"
    params = list(signature.parameters)
    if params[:3] != ["q", "k", "v"] or not {"custom_mask", "kv_layout", "sm_scale"} <= set(params):
        return (
            f"flashinfer.prefill.single_prefill_with_kv_cache{signature}: unknown signature, "
            "no flashinfer_ms column"
        )
    nodes, calls = q.shape[1], []
    for b, length in enumerate(lens):
        keys = length + nodes
        args = (q[b], k_cache[b, :, :keys].contiguous(), v_cache[b, :, :keys].contiguous())
        calls.append((args, dense[b, :, :keys].contiguous()))
    return lambda: [fn(*args, custom_mask=m, kv_layout="HND", sm_scale=scale) for args, m in calls]


def add_flashinfer_tree(
    row: dict,
    case: AttnCase,
    inputs: tuple,
    dense: torch.Tensor,
    want_out: torch.Tensor,
    iters: int,
    warmup: int,
) -> None:
    q, k_cache, v_cache, lens, scale = inputs
    try:
        call = flashinfer_tree(q, k_cache, v_cache, lens, dense, scale)
        if isinstance(call, str):
            note(call)
            return
        got = torch.stack(call())  # [B, N, Hq, D]; the first call may JIT-compile
        tol = attn_tolerance(case.dtype)
        if not torch.allclose(got.float(), want_out.float(), atol=tol, rtol=tol):
            err = float((got.float() - want_out.float()).abs().max())
            note(
                f"flashinfer single_prefill_with_kv_cache {case.shape()}: differs from SDPA "
                f"(max abs diff {err:.3g}): no flashinfer_ms"
            )
            return
        del got
        row["flashinfer_ms"] = round(time_ms(call, no_reset, iters, True, warmup), 4)
    except Exception as e:  # an optional comparison must not end the benchmark
        note(f"flashinfer.prefill.single_prefill_with_kv_cache failed: {type(e).__name__}: {e}")


def bench_attn_case(case: AttnCase, device: torch.device, quick: bool) -> dict | None:
    """Build one case, check ours against SDPA (out) and a masked logsumexp (lse), time both."""
    cuda = device.type == "cuda"
    if cuda and case.baseline_bytes() > ATTN_BASELINE_LIMIT:
        note(
            f"tree_attention {case.shape()}: skipped, the SDPA baseline would need "
            f"~{case.baseline_bytes() / 1e9:.1f} GB (> {ATTN_BASELINE_LIMIT / 1e9:.0f} GB)"
        )
        return None
    torch.manual_seed(0)
    rng = random.Random(0)
    lens = case.lens()
    keys = max(lens) + case.nodes  # Smax; also the cache's S
    q = torch.randn(case.batch, case.nodes, ATTN_HQ, ATTN_DIM, device=device, dtype=case.dtype)
    kv_shape = (case.batch, ATTN_HKV, keys, ATTN_DIM)
    k_cache = torch.randn(kv_shape, device=device, dtype=case.dtype)
    v_cache = torch.randn(kv_shape, device=device, dtype=case.dtype)
    cache_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    mask, _ = ops.build_tree(random_tree_parents(rng, case.batch, case.nodes, device))
    scale = ATTN_DIM**-0.5
    if case.page_size:
        blocks = -(-keys // case.page_size)
        tables = torch.randperm(case.batch * blocks).view(case.batch, blocks).to(device, torch.int32)
        paged = (to_pages(k_cache, tables, case.page_size), to_pages(v_cache, tables, case.page_size), tables)

        def ours() -> tuple[torch.Tensor, torch.Tensor]:
            return ops.tree_attention_paged(q, *paged, cache_lens, mask, scale)
    else:

        def ours() -> tuple[torch.Tensor, torch.Tensor]:
            return ops.tree_attention(q, k_cache, v_cache, cache_lens, mask, scale)

    def ref() -> torch.Tensor:
        return sdpa_tree_attention(q, k_cache, v_cache, cache_lens, mask, scale, keys)

    dense = sdpa_dense_mask(cache_lens, mask, case.nodes, keys)
    want_out = ref()
    check_attention(case, ours(), want_out, masked_lse(q, k_cache, dense, scale))
    warmup, iters = (3, 10 if quick else 20) if cuda else (1, 3 if quick else 5)
    ours_ms = time_ms(ours, no_reset, iters, cuda, warmup)
    ref_ms = time_ms(ref, no_reset, iters, cuda, warmup)
    row = {
        "op": "tree_attention_paged" if case.page_size else "tree_attention",
        "shape": case.shape(),
        "device": device.type,
        "dtype": DTYPE_NAMES[case.dtype],
        "ours_ms": round(ours_ms, 4),
        "ref_ms": round(ref_ms, 4),
        "speedup": round(ref_ms / ours_ms, 2),
        "baseline": ATTN_SDPA_PAGED if case.page_size else ATTN_SDPA,
    }
    if cuda:
        row["graph_ms"] = round(time_ms(captured(ours), no_reset, iters, cuda, warmup), 4)
        if not case.page_size:
            add_flashinfer_tree(row, case, (q, k_cache, v_cache, lens, scale), dense, want_out, iters, warmup)
        row["_moved_bytes"] = (
            (sum(lens) + case.batch * case.nodes) * ATTN_HKV * ATTN_DIM * 2 * q.element_size()
        )
    return row


def bench_tree_attention(device: torch.device, quick: bool) -> list[dict]:
    rows = []
    for case in attn_cases(device, quick):
        row = bench_attn_case(case, device, quick)
        if row is not None:
            rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # cases range from MBs to ~17 GB of baseline temporaries
    return rows


OPS: dict[str, Callable[[torch.device, bool], list[dict]]] = {
    "kv_compact": bench_kv_compact,
    "rejection_sample": bench_rejection_sample,
    "verify_greedy": bench_verify_greedy,
    "typical_accept": bench_typical_accept,
    "sampling_probs": bench_sampling_probs,
    "ragged_chain": bench_ragged_chain,
    "tree_attention": bench_tree_attention,
}


def copy_bandwidth_GBps(device: torch.device, nbytes: int = 1 << 30, iters: int = 10) -> float:
    """Device-to-device ``dst.copy_(src)`` bandwidth, counting read + write bytes."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        dst.copy_(src)
    end.record()
    end.synchronize()
    return 2 * nbytes * iters / (start.elapsed_time(end) * 1e-3) / 1e9


def add_bandwidth(row: dict, copy_bw: float | None) -> dict:
    moved = row.pop("_moved_bytes", None)
    if copy_bw is not None and moved is not None:
        row["GBps"] = round(moved / (row["graph_ms"] * 1e-3) / 1e9, 1)
        row["pct_of_copy_bw"] = round(100 * row["GBps"] / copy_bw, 1)
    return row


def machine_note(device: torch.device) -> str:
    cpu_name = platform.processor() or platform.machine()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return (
        f"# torch {torch.__version__} | device {name} | cpu_count {os.cpu_count()} | "
        f"torch threads {torch.get_num_threads()} | peak RSS {rss_gb:.2f} GB"
    )


def print_table(rows: list[dict]) -> None:
    """One aligned table; the columns are the union of the rows' keys (blank where a row lacks one)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys).rstrip())
    for r in rows:
        print("  ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys).rstrip(), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--op", required=True, choices=[*OPS, "all"])
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="fewer iterations, one case per op (kv_compact: its two main shapes)",
    )
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device available")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    copy_bw = copy_bandwidth_GBps(device) if device.type == "cuda" else None
    if copy_bw is not None:
        line = {"copy_bw_GBps": round(copy_bw, 1)}
        print(json.dumps(line) if args.json else f"# device-to-device copy bandwidth: {copy_bw:.1f} GB/s")
    names = list(OPS) if args.op == "all" else [args.op]
    for i, name in enumerate(names):  # one table per op, printed as it finishes
        rows = [add_bandwidth(r, copy_bw) for r in OPS[name](device, args.quick)]
        if args.json:
            for r in rows:
                print(json.dumps(r), flush=True)
        else:
            print_table(rows)
            if i + 1 < len(names):
                print()
    for text in [*NOTES, machine_note(device)[2:]]:
        print(json.dumps({"note": text}) if args.json else f"# {text}")


if __name__ == "__main__":
    main()
