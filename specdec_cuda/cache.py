"""Preallocated KV caches with per-sequence lengths, rolled back by the ops.

Both caches hold every layer's keys and values for a batch of sequences and one
length per sequence (``lens``, int32 ``[B]``).  A model forward over N new tokens
(a chain or a draft tree) writes their K/V at slots ``lens[b] .. lens[b] + N - 1``
with :meth:`write` and attends with :meth:`attend` (our ``tree_attention`` ops);
it never changes ``lens``.  The caller then either keeps a prefix of the new
slots (:meth:`advance`, for chains) or the accepted path of a tree
(:meth:`commit`, ``kv_compact_`` / ``kv_compact_paged_``: one launch for all
layers), or forgets slots (:meth:`truncate`).

Layer tensors are allocated on the first :meth:`write` of each layer, from the
shapes the model produces (``[B, Hkv, N, D]``), so a cache needs no model config.
"""

from __future__ import annotations

import torch

from . import ops

__all__ = ["KVCache", "PagedKVCache", "CacheFullError"]


def _features(window: int, softcap: float, sinks: torch.Tensor | None) -> dict:
    """The attention features a layer uses, as keyword arguments of the op (only the
    ones it uses: plain layers call the op exactly as before)."""
    out: dict = {}
    if window:
        out["window"] = int(window)
    if softcap:
        out["softcap"] = float(softcap)
    if sinks is not None:
        out["sinks"] = sinks
    return out


def _by_shape(items: list, key=lambda t: tuple(t.shape)) -> list[list]:
    """``items`` grouped by ``key`` (a tensor's shape), in first-seen order: the KV ops
    take tensors of one shape per call."""
    groups: dict = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return list(groups.values())


class CacheFullError(RuntimeError):
    """A forward would write past the cache's capacity (``max_len``)."""


class _CacheBase:
    def __init__(
        self, batch_size: int, max_len: int, *, dtype: torch.dtype | None, device: torch.device | str
    ):
        if batch_size < 0:
            raise ValueError(f"{type(self).__name__}: batch_size must be >= 0, got {batch_size}")
        if max_len < 1:
            raise ValueError(f"{type(self).__name__}: max_len must be >= 1, got {max_len}")
        self.batch_size = int(batch_size)
        self.max_len = int(max_len)
        self.dtype = dtype
        self.device = torch.device(device)
        self.lens = torch.zeros(self.batch_size, dtype=torch.int32, device=self.device)
        self._room = 0  # slots past lens the last reserve() checked
        self._slots: dict = {}  # write indices of the current forward (all layers share them)
        self._head_dims: dict[int, tuple[int, int]] = {}  # layer -> (Dk, Dv) as written

    # -- length bookkeeping ------------------------------------------------
    def reserve(self, new_tokens: int) -> None:
        """Check (and for paged caches, map pages) for ``new_tokens`` slots past ``lens``.

        Every forward reserves its N before writing (``forward_tree`` does);
        :meth:`write` then checks against that host-side number, so writes never
        read ``lens`` back from the device."""
        self._room = int(new_tokens)
        self._slots = {}
        if self.batch_size == 0:
            return
        need = int(self.lens.max()) + int(new_tokens)
        if need > self.max_len:
            raise CacheFullError(
                f"{type(self).__name__}: a forward of {new_tokens} tokens needs {need} slots "
                f"but the cache holds max_len={self.max_len}; create it with a larger max_len "
                f"(prompt length + max_new_tokens + draft tree size)"
            )
        self._map(need)

    def _map(self, need: int) -> None:  # paged caches map pages here
        pass

    def advance(self, n: torch.Tensor | int) -> None:
        """Keep the first ``n[b]`` of the slots written since the last commit: ``lens += n``."""
        self.lens += torch.as_tensor(n, dtype=torch.int32, device=self.device)
        self._room = 0  # lens grew: the next forward reserves again
        self._slots = {}

    def truncate(self, new_lens: torch.Tensor) -> None:
        """Forget slots: ``lens = new_lens`` (must not grow ``lens``)."""
        new_lens = new_lens.to(device=self.device, dtype=torch.int32)
        if bool((new_lens > self.lens).any()) or bool((new_lens < 0).any()):
            raise ValueError(f"{type(self).__name__}.truncate: new_lens must be in [0, lens]")
        self.lens.copy_(new_lens)
        self._slots = {}

    def _check_write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        name = type(self).__name__
        if k.dim() != 4 or v.dim() != 4 or k.shape[:3] != v.shape[:3]:
            raise ValueError(
                f"{name}.write: k and v must be [B, Hkv, N, Dk] and [B, Hkv, N, Dv], got "
                f"{tuple(k.shape)} and {tuple(v.shape)}"
            )
        if k.shape[0] != self.batch_size:
            raise ValueError(f"{name}.write: batch {k.shape[0]} != cache batch {self.batch_size}")
        if layer < 0:
            raise ValueError(f"{name}.write: layer must be >= 0, got {layer}")
        if k.shape[2] > self._room:
            raise CacheFullError(
                f"{name}.write: {k.shape[2]} new tokens but only {self._room} "
                "slots were reserved; call reserve(N) before a forward"
            )

    # K and V of a layer may have different head sizes (multi-head latent attention
    # as shipped: Dk 192, Dv 128).  Both are stored at D = max(Dk, Dv), the shorter one
    # zero-padded: a zero-padded key (with a zero-padded query) leaves every dot
    # product unchanged, and zero-padded value columns give output columns that
    # attend() cuts off, so the result is exact; kv_compact then moves one shape.
    def _dims(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> int:
        dk, dv = k.shape[3], v.shape[3]
        known = self._head_dims.setdefault(layer, (dk, dv))
        if known != (dk, dv):
            raise ValueError(
                f"{type(self).__name__}.write: layer {layer} holds Dk={known[0]}, Dv={known[1]} "
                f"but got K/V with Dk={dk}, Dv={dv}"
            )
        return max(dk, dv)

    @staticmethod
    def _pad(t: torch.Tensor, d: int) -> torch.Tensor:
        return t if t.shape[-1] == d else torch.nn.functional.pad(t, (0, d - t.shape[-1]))

    def _attend_dims(self, layer: int, q: torch.Tensor, d: int) -> tuple[torch.Tensor, int]:
        """The query padded to the stored head size, and the value head size to return."""
        dk, dv = self._head_dims[layer]
        if q.shape[-1] != dk:
            raise ValueError(
                f"{type(self).__name__}.attend: q head size {q.shape[-1]} != layer {layer}'s Dk {dk}"
            )
        return self._pad(q, d), dv


class KVCache(_CacheBase):
    """A contiguous cache: per layer ``k[l], v[l]`` of shape ``[B, Hkv, max_len, D]``.

    Args:
        batch_size: B (may be 0).
        max_len: slots per sequence: prompt + generated tokens + the largest
            draft tree a step writes.
        dtype: the cache dtype (float32/float16/bfloat16); ``None`` takes the
            dtype of the first K/V written.
        device: where the cache lives (the model's device).
    """

    def __init__(
        self,
        batch_size: int,
        max_len: int,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
    ):
        super().__init__(batch_size, max_len, dtype=dtype, device=device)
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []

    @property
    def num_layers(self) -> int:
        return len(self.k)

    def tensors(self) -> list[torch.Tensor]:
        """Every layer's keys and values (what ``kv_compact_`` moves)."""
        return self.k + self.v

    def _layer(self, layer: int, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # k is already padded to the layer's stored head size
        while len(self.k) <= layer:
            dtype = self.dtype or k.dtype
            shape = (self.batch_size, k.shape[1], self.max_len, k.shape[3])
            self.k.append(torch.zeros(shape, dtype=dtype, device=self.device))
            self.v.append(torch.zeros(shape, dtype=dtype, device=self.device))
        kc = self.k[layer]
        if kc.shape[1] != k.shape[1] or kc.shape[3] != k.shape[3]:
            raise ValueError(
                f"KVCache.write: layer {layer} holds Hkv={kc.shape[1]}, D={kc.shape[3]} "
                f"but got K/V with Hkv={k.shape[1]}, D={k.shape[3]}"
            )
        return kc, self.v[layer]

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write N new tokens' K ``[B, Hkv, N, Dk]`` and V ``[B, Hkv, N, Dv]`` at slots ``lens[b] + i``."""
        self._check_write(layer, k, v)
        d = self._dims(layer, k, v)
        k, v = self._pad(k, d), self._pad(v, d)
        kc, vc = self._layer(layer, k)
        n = k.shape[2]
        if self.batch_size == 0 or n == 0:
            return
        heads, d = k.shape[1], k.shape[3]
        key = (n, heads)
        idx = self._slots.get(key)
        if idx is None:  # rows of the [B * Hkv * max_len, D] view: (b * Hkv + h) * max_len + lens[b] + i
            slots = self.lens.long()[:, None] + torch.arange(n, device=self.device)  # [B, N]
            base = torch.arange(self.batch_size * heads, device=self.device).view(-1, heads, 1) * self.max_len
            idx = self._slots[key] = (base + slots[:, None, :]).reshape(-1)
        kc.view(-1, d).index_copy_(0, idx, k.to(kc.dtype).reshape(-1, d))
        vc.view(-1, d).index_copy_(0, idx, v.to(vc.dtype).reshape(-1, d))

    def attend(
        self,
        layer: int,
        q: torch.Tensor,
        mask: torch.Tensor,
        scale: float,
        *,
        window: int = 0,
        softcap: float = 0.0,
        sinks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Tree attention of ``q`` ``[B, N, Hq, Dk]`` over layer ``layer`` -> ``[B, N, Hq, Dv]``
        (``window``, ``softcap``, ``sinks``: as in :func:`specdec_cuda.ops.tree_attention`)."""
        q, dv = self._attend_dims(layer, q, self.k[layer].shape[3])
        q = q.to(self.k[layer].dtype).contiguous()
        out, _ = ops.tree_attention(
            q,
            self.k[layer],
            self.v[layer],
            self.lens,
            mask,
            scale,
            **_features(window, softcap, sinks),
        )
        return out[..., :dv]

    def commit(self, accept_nodes: torch.Tensor, num_accepted: torch.Tensor) -> None:
        """Keep the accepted path of the last tree (``kv_compact_`` over all layers: one
        launch, or one per distinct layer shape when layers differ in KV heads)."""
        groups = _by_shape(self.tensors())
        for i, group in enumerate(groups):
            # every call advances the lengths it is given: all but the last get a copy
            lens = self.lens if i == len(groups) - 1 else self.lens.clone()
            ops.kv_compact_(group, lens, accept_nodes, num_accepted)
        self._room = 0
        self._slots = {}

    def row(self, b: int) -> KVCache:
        """A one-row cache over row ``b`` of this one: its K/V and its length are views
        (writes, ``advance`` and ``truncate`` go to this cache), so a forward can run
        one row alone.  Only once every layer exists (after a first forward): a row
        view cannot allocate layers for the whole batch."""
        if not 0 <= b < self.batch_size:
            raise IndexError(f"KVCache.row: row {b} out of range for batch {self.batch_size}")
        if not self.k:
            raise RuntimeError("KVCache.row: the layers are allocated by the first forward; run one first")
        view = KVCache(0, self.max_len, dtype=self.dtype, device=self.device)
        view.batch_size = 1
        view.lens = self.lens[b : b + 1]
        view._head_dims = self._head_dims
        view.k = [t[b : b + 1] for t in self.k]
        view.v = [t[b : b + 1] for t in self.v]
        return view

    def layer_kv(self, layer: int, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The committed K/V of one row and layer, ``[Hkv, lens[row], Dk]`` and
        ``[Hkv, lens[row], Dv]`` (for tests)."""
        n = int(self.lens[row])
        dk, dv = self._head_dims[layer]
        return self.k[layer][row, :, :n, :dk], self.v[layer][row, :, :n, :dv]


class PagedKVCache(_CacheBase):
    """A paged cache: per layer pages ``[num_pages, page_size, Hkv, D]`` and one block table.

    Slot s of row b lives in page ``block_tables[b, s // page_size]`` at offset
    ``s % page_size``.  Pages are taken from a free list as rows grow (so a row's
    pages are not contiguous in memory); ``num_pages`` defaults to enough for every
    row to reach ``max_len``.
    """

    def __init__(
        self,
        batch_size: int,
        max_len: int,
        *,
        page_size: int = 16,
        num_pages: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        shuffle_seed: int | None = 0,
    ):
        super().__init__(batch_size, max_len, dtype=dtype, device=device)
        if page_size < 1:
            raise ValueError(f"PagedKVCache: page_size must be >= 1, got {page_size}")
        self.page_size = int(page_size)
        self.max_blocks = -(-self.max_len // self.page_size)
        self.num_pages = int(
            num_pages if num_pages is not None else max(1, self.batch_size * self.max_blocks)
        )
        order = list(range(self.num_pages))
        if shuffle_seed is not None:  # hand pages out in a scrambled order
            g = torch.Generator().manual_seed(shuffle_seed)
            order = torch.randperm(self.num_pages, generator=g).tolist()
        self._free = order[::-1]
        # Unmapped entries point at page 0: never read (beyond lens + N).
        self.block_tables = torch.zeros(
            self.batch_size, self.max_blocks, dtype=torch.int32, device=self.device
        )
        self._mapped = [0] * self.batch_size
        self.k_pages: list[torch.Tensor] = []
        self.v_pages: list[torch.Tensor] = []

    @property
    def num_layers(self) -> int:
        return len(self.k_pages)

    def _map(self, need: int) -> None:
        blocks = -(-need // self.page_size)
        changed = False
        table = self.block_tables.cpu()
        for b in range(self.batch_size):
            while self._mapped[b] < blocks:
                if not self._free:
                    raise CacheFullError(f"PagedKVCache: out of pages ({self.num_pages} in all)")
                table[b, self._mapped[b]] = self._free.pop()
                self._mapped[b] += 1
                changed = True
        if changed:
            self.block_tables.copy_(table)

    def _layer(self, layer: int, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        while len(self.k_pages) <= layer:
            dtype = self.dtype or k.dtype
            shape = (self.num_pages, self.page_size, k.shape[1], k.shape[3])
            self.k_pages.append(torch.zeros(shape, dtype=dtype, device=self.device))
            self.v_pages.append(torch.zeros(shape, dtype=dtype, device=self.device))
        kp = self.k_pages[layer]
        if kp.shape[2] != k.shape[1] or kp.shape[3] != k.shape[3]:
            raise ValueError(
                f"PagedKVCache.write: layer {layer} holds Hkv={kp.shape[2]}, "
                f"D={kp.shape[3]} but got K/V with Hkv={k.shape[1]}, D={k.shape[3]}"
            )
        return kp, self.v_pages[layer]

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write N new tokens' K ``[B, Hkv, N, Dk]`` and V ``[B, Hkv, N, Dv]`` at slots ``lens[b] + i``."""
        self._check_write(layer, k, v)
        d = self._dims(layer, k, v)
        k, v = self._pad(k, d), self._pad(v, d)
        kp, vp = self._layer(layer, k)
        n = k.shape[2]
        if self.batch_size == 0 or n == 0:
            return
        flat = self._slots.get(n)
        if flat is None:
            slots = self.lens.long()[:, None] + torch.arange(n, device=self.device)  # [B, N]
            pages = torch.gather(self.block_tables.long(), 1, slots // self.page_size)
            flat = self._slots[n] = (pages * self.page_size + slots % self.page_size).reshape(-1)
        hkv, d = k.shape[1], k.shape[3]
        kp.view(-1, hkv, d).index_copy_(0, flat, k.transpose(1, 2).reshape(-1, hkv, d).to(kp.dtype))
        vp.view(-1, hkv, d).index_copy_(0, flat, v.transpose(1, 2).reshape(-1, hkv, d).to(vp.dtype))

    def attend(
        self,
        layer: int,
        q: torch.Tensor,
        mask: torch.Tensor,
        scale: float,
        *,
        window: int = 0,
        softcap: float = 0.0,
        sinks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Tree attention of ``q`` ``[B, N, Hq, Dk]`` over layer ``layer`` -> ``[B, N, Hq, Dv]``
        (``window``, ``softcap``, ``sinks``: as in :func:`specdec_cuda.ops.tree_attention`)."""
        q, dv = self._attend_dims(layer, q, self.k_pages[layer].shape[3])
        q = q.to(self.k_pages[layer].dtype).contiguous()
        out, _ = ops.tree_attention_paged(
            q,
            self.k_pages[layer],
            self.v_pages[layer],
            self.block_tables,
            self.lens,
            mask,
            scale,
            **_features(window, softcap, sinks),
        )
        return out[..., :dv]

    def commit(self, accept_nodes: torch.Tensor, num_accepted: torch.Tensor) -> None:
        """Keep the accepted path of the last tree (``kv_compact_paged_`` over all layers)."""
        groups = _by_shape(list(range(len(self.k_pages))), key=lambda i: tuple(self.k_pages[i].shape))
        for i, layers in enumerate(groups):
            lens = self.lens if i == len(groups) - 1 else self.lens.clone()
            ops.kv_compact_paged_(
                [self.k_pages[j] for j in layers],
                [self.v_pages[j] for j in layers],
                self.block_tables,
                lens,
                accept_nodes,
                num_accepted,
            )
        self._room = 0
        self._slots = {}

    def layer_kv(self, layer: int, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The committed K/V of one row and layer, ``[Hkv, lens[row], D]`` each (for tests)."""
        n = int(self.lens[row])
        slots = torch.arange(n, device=self.device)
        pages = self.block_tables[row].long()[slots // self.page_size]
        offs = slots % self.page_size
        dk, dv = self._head_dims[layer]
        k = self.k_pages[layer][pages, offs][..., :dk]  # [n, Hkv, Dk]
        v = self.v_pages[layer][pages, offs][..., :dv]
        return k.transpose(0, 1), v.transpose(0, 1)
