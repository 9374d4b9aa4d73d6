"""Benchmark the specdec_cuda custom ops against their pure-PyTorch references.

Usage:
    python python/bench_ops.py --op kv_compact [--json] [--device cpu|cuda] [--quick]

``--op`` names an entry of ``OPS`` (or ``all``); ``kv_compact`` times both
``kv_compact_`` (caches ``[B, H, S, D]``) and ``kv_compact_paged_`` (pages
``[num_pages, page_size, H, D]``, shuffled block tables) against
``specdec_cuda.reference``.  The main case is 32 layers (64 cache tensors: K and
V), B=8, H=8, S=4096, D=128, a 64-node random tree per row and a random
root-to-node accepted path of 1..8 nodes; fp16 on CUDA, fp32 on CPU.  Caches
are ``torch.empty``; only each row's tree window (T=64 slots from
``cache_lens[b]``) is filled, so on CPU the untouched pages are never committed.

Each case checks ours against the reference once (touched window of two tensors
and ``cache_lens``), then restores ``cache_lens`` before every iteration outside
the timed region and reports the median of N runs after 3 warm-ups (N = 20 on
CPU, 100 on CUDA; ``--quick``: 5 / 10 and the main shape only).

Columns: op, shape (L layers, B, H, S, D, T tree nodes, P page size), device,
dtype, ours_ms / ref_ms (median ms per eager call), speedup = ref_ms / ours_ms,
moved_MB = read + write bytes the op must move (for every tensor, row, head and
accepted j with accept_nodes[b, j] != j: 2 * D * elem), and on CUDA graph_ms
(the op captured in a CUDA graph, timed by replays: no eager status read), GBps
(moved bytes / graph_ms) and pct_of_copy_bw (vs. a measured ~1 GiB
device-to-device ``copy_``, printed once as a header line).
"""

from __future__ import annotations

import argparse
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
        "cache_lens": torch.tensor([rng.randint(0, case.slots - TREE_NODES) for _ in range(case.batch)],
                                   dtype=torch.int32),
        "accept_nodes": nodes,
        "num_accepted": (nodes >= 0).sum(1).to(torch.int32),
    }
    return {k: v.to(device) for k, v in meta.items()}


def window_index(case: KVCase, meta: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [B, 1], slots [B, T]) of every row's tree window, int64."""
    lens = meta["cache_lens"].long()
    rows = torch.arange(case.batch, device=lens.device)[:, None]
    return rows, lens[:, None] + torch.arange(TREE_NODES, device=lens.device)


def make_accessors(case: KVCase, meta: dict[str, torch.Tensor], tables: torch.Tensor | None
                   ) -> tuple[Callable[[torch.Tensor], torch.Tensor],
                              Callable[[torch.Tensor, torch.Tensor], None]]:
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


def make_tensors(case: KVCase, device: torch.device, dtype: torch.dtype
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


def time_ms(fn: Callable[[], None], reset: Callable[[], None], iters: int, cuda: bool) -> float:
    """Median ms of ``fn`` over ``iters`` runs after 3 warm-ups; ``reset`` runs untimed first."""
    for _ in range(3):
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
        ours, ref = (lambda: ops.kv_compact_(*args)), (lambda: reference.kv_compact_(*args))
    else:
        half = case.layers
        args = (tensors[:half], tensors[half:], tables, lens, meta["accept_nodes"], meta["num_accepted"])
        ours, ref = (lambda: ops.kv_compact_paged_(*args)), (lambda: reference.kv_compact_paged_(*args))
    check_outputs(tensors, [0, len(tensors) - 1], get, put, lens, saved, ours, ref, case)
    reset = lambda: lens.copy_(saved)  # noqa: E731
    cuda = device.type == "cuda"
    ours_ms, ref_ms = time_ms(ours, reset, iters, cuda), time_ms(ref, reset, iters, cuda)
    moved = moved_bytes(case, meta, tensors[0].element_size(), len(tensors))
    row = {"op": "kv_compact_paged_" if case.page_size else "kv_compact_", "shape": case.shape(),
           "device": device.type, "dtype": DTYPE_NAMES[dtype], "ours_ms": round(ours_ms, 4),
           "ref_ms": round(ref_ms, 4), "speedup": round(ref_ms / ours_ms, 2),
           "moved_MB": round(moved / 1e6, 3), "_moved_bytes": moved}
    if cuda:
        row["graph_ms"] = round(time_ms(captured(ours), reset, iters, cuda), 4)
    del tensors, args
    return row


def captured(fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` captured into a CUDA graph; the result replays it.

    Eager calls of the KV ops end with a status read (a stream synchronisation)
    so that bad input raises; engines run them inside CUDA graphs, where that
    read is skipped, so graph replays time the kernels themselves.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def check_outputs(tensors: list[torch.Tensor], which: list[int], get: Callable, put: Callable,
                  lens: torch.Tensor, saved: torch.Tensor, ours: Callable, ref: Callable,
                  case: KVCase) -> None:
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
        raise SystemExit(f"MISMATCH vs reference: {case.shape()} tensors {bad} "
                         f"lens ours={got_lens.tolist()} ref={lens.tolist()}")
    lens.copy_(saved)


def kv_cases(quick: bool) -> list[KVCase]:
    main = [KVCase(), KVCase(page_size=16)]
    if quick:
        return main
    return main + [KVCase(batch=1), KVCase(batch=32), KVCase(head_dim=64), KVCase(head_dim=256),
                   KVCase(dtype=torch.bfloat16), KVCase(page_size=1)]


def bench_kv_compact(device: torch.device, quick: bool) -> list[dict]:
    iters = (10 if quick else 100) if device.type == "cuda" else (5 if quick else 20)
    return [bench_kv_case(case, device, iters) for case in kv_cases(quick)]


OPS: dict[str, Callable[[torch.device, bool], list[dict]]] = {"kv_compact": bench_kv_compact}


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
    moved = row.pop("_moved_bytes")
    if copy_bw is not None:
        row["GBps"] = round(moved / (row["graph_ms"] * 1e-3) / 1e9, 1)
        row["pct_of_copy_bw"] = round(100 * row["GBps"] / copy_bw, 1)
    return row


def machine_note(device: torch.device) -> str:
    cpu_name = platform.processor() or platform.machine()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return (f"# torch {torch.__version__} | device {name} | cpu_count {os.cpu_count()} | "
            f"torch threads {torch.get_num_threads()} | peak RSS {rss_gb:.2f} GB")


def print_table(rows: list[dict]) -> None:
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r[k]).ljust(widths[k]) for k in keys))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--op", required=True, choices=[*OPS, "all"])
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--device", choices=["cpu", "cuda"],
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="fewer iterations, main shape only")
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
    rows = [add_bandwidth(r, copy_bw) for name in names for r in OPS[name](device, args.quick)]
    if args.json:
        for r in rows:
            print(json.dumps(r), flush=True)
    else:
        print_table(rows)
    note = machine_note(device)
    print(json.dumps({"note": note[2:]}) if args.json else note)


if __name__ == "__main__":
    main()
