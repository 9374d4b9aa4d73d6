"""A tiny causal LM that speaks the decoding loop's model protocol, without transformers.

This is the worked example of the protocol of :mod:`specdec_cuda.models`: any
object with

- ``vocab_size: int``, ``device: torch.device``, ``dtype: torch.dtype``;
- ``forward(tokens, positions, cache, tree_mask) -> logits [B, N, vocab_size]``

can be a target or a draft model of :class:`specdec_cuda.SpeculativeDecoder`.
Inside ``forward`` every attention layer ``l``

1. computes the new tokens' keys and values, RoPE applied at ``positions``
   (tree siblings share a position), shaped ``[B, Hkv, N, D]``, and hands them to
   ``cache.write(l, k, v)`` (the cache stores them at slots ``cache.lens[b] + i``);
2. calls ``cache.attend(l, q, tree_mask, scale)`` with ``q`` ``[B, N, Hq, D]``:
   the tree-attention op attends every new token to the whole committed prefix
   and to its ancestors in the tree (itself included), per ``tree_mask``.

``forward`` never changes ``cache.lens``; the loop advances or commits.

:meth:`ToyLM.full_logits` and :meth:`ToyLM.full_kv` compute the same network
over whole sequences with plain torch (causal softmax attention, no cache, no
custom ops): the references the decoding tests compare against.

The architecture: token embedding, ``layers`` pre-norm blocks (RMSNorm, grouped
query attention with ``heads`` query heads sharing ``kv_heads`` key/value
heads, RoPE; RMSNorm, SiLU MLP), final RMSNorm, LM head.  The weights are drawn
from ``torch.Generator().manual_seed(seed)``, so a (config, seed) pair is
always the same model.  ``logit_scale`` multiplies the LM head, to make the
next-token distributions more or less peaked.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ToyLM"]


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rope_tables(positions: torch.Tensor, dim: int, dtype: torch.dtype, base: float = 10000.0):
    """cos and sin ``[B, N, 1, dim]`` of the rotary embedding at ``positions`` int ``[B, N]``."""
    inv = 1.0 / base ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)
    ang = positions.to(torch.float32)[..., None] * inv  # [B, N, dim/2]
    ang = torch.cat([ang, ang], -1)[:, :, None, :]
    return ang.cos().to(dtype), ang.sin().to(dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` ``[B, N, H, D]`` (half-split convention)."""
    d = x.shape[-1]
    rot = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)
    return x * cos + rot * sin


class ToyLM(nn.Module):
    """A protocol model (see the module docstring).

    Args:
        vocab_size: V.
        hidden: model width (``heads * head_dim``).
        layers: number of transformer blocks.
        heads, kv_heads: query and key/value heads (GQA: ``heads % kv_heads == 0``).
        seed: the weights' seed.
        logit_scale: multiplies the logits.
    """

    def __init__(
        self,
        vocab_size: int = 64,
        hidden: int = 32,
        layers: int = 2,
        *,
        heads: int = 4,
        kv_heads: int = 2,
        seed: int = 0,
        logit_scale: float = 1.0,
    ):
        super().__init__()
        if hidden % heads or heads % kv_heads:
            raise ValueError("ToyLM: need hidden % heads == 0 and heads % kv_heads == 0")
        self.vocab_size = int(vocab_size)
        self.hidden, self.num_layers = int(hidden), int(layers)
        self.heads, self.kv_heads, self.head_dim = int(heads), int(kv_heads), hidden // heads
        self.logit_scale = float(logit_scale)
        g = torch.Generator().manual_seed(seed)

        def w(*shape, std):
            return nn.Parameter(torch.randn(*shape, generator=g) * std)

        h, d = self.hidden, self.head_dim
        self.embed = w(vocab_size, h, std=1.0)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            blk = nn.Module()
            blk.norm1 = nn.Parameter(torch.ones(h))
            blk.wq = w(h, heads * d, std=h**-0.5)
            blk.wk = w(h, kv_heads * d, std=h**-0.5)
            blk.wv = w(h, kv_heads * d, std=h**-0.5)
            blk.wo = w(heads * d, h, std=(heads * d) ** -0.5)
            blk.norm2 = nn.Parameter(torch.ones(h))
            blk.w1 = w(h, 2 * h, std=h**-0.5)
            blk.w2 = w(2 * h, h, std=(2 * h) ** -0.5)
            self.blocks.append(blk)
        self.norm = nn.Parameter(torch.ones(h))
        self.head = w(h, vocab_size, std=h**-0.5)

    # -- the protocol ---------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    def forward(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache, tree_mask: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[B, N, V]`` of N new tokens per row; their K/V go into ``cache``."""
        return self._run(
            tokens, positions, lambda layer, q, k, v: self._cached_attention(cache, layer, q, k, v, tree_mask)
        )

    def _cached_attention(self, cache, layer, q, k, v, tree_mask):
        # q [B, N, Hq, D]; k, v [B, N, Hkv, D] -> the cache wants [B, Hkv, N, D]
        cache.write(layer, k.transpose(1, 2), v.transpose(1, 2))
        return cache.attend(layer, q.contiguous(), tree_mask, self.head_dim**-0.5)

    # -- plain-torch references -----------------------------------------------
    def full_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, L, V]`` for whole sequences ``ids`` ``[B, L]`` (positions 0..L-1),
        causal attention in plain torch: the reference for the cached forwards."""
        return self._full(ids)[0]

    def full_kv(self, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the keys and values ``[B, Hkv, L, D]`` a causal forward over ``ids``
        computes (RoPE applied): what a correct cache holds for those tokens."""
        return self._full(ids)[1]

    def _full(self, ids: torch.Tensor):
        ids = ids.to(self.device)
        b, n = ids.shape
        positions = torch.arange(n, device=self.device).expand(b, n)
        causal = torch.ones(n, n, dtype=torch.bool, device=self.device).tril()
        kvs = []

        def attention(layer, q, k, v):
            kvs.append((k.transpose(1, 2), v.transpose(1, 2)))
            rep = self.heads // self.kv_heads
            qh = q.transpose(1, 2)  # [B, Hq, N, D]
            kh = k.transpose(1, 2).repeat_interleave(rep, dim=1)
            vh = v.transpose(1, 2).repeat_interleave(rep, dim=1)
            s = (qh @ kh.transpose(-1, -2)) * self.head_dim**-0.5
            s = s.masked_fill(~causal, float("-inf"))
            return (s.softmax(-1) @ vh).transpose(1, 2)  # [B, N, Hq, D]

        logits = self._run(ids, positions, attention)
        return logits, kvs

    # -- the network ------------------------------------------------------------
    def _run(self, tokens, positions, attention):
        b, n = tokens.shape
        x = self.embed[tokens]
        cos, sin = _rope_tables(positions, self.head_dim, x.dtype)
        for layer, blk in enumerate(self.blocks):
            h = _rms_norm(x, blk.norm1)
            q = _rope((h @ blk.wq).view(b, n, self.heads, self.head_dim), cos, sin)
            k = _rope((h @ blk.wk).view(b, n, self.kv_heads, self.head_dim), cos, sin)
            v = (h @ blk.wv).view(b, n, self.kv_heads, self.head_dim)
            a = attention(layer, q, k, v).reshape(b, n, self.heads * self.head_dim)
            x = x + a @ blk.wo
            h = _rms_norm(x, blk.norm2)
            x = x + torch.nn.functional.silu(h @ blk.w1) @ blk.w2
        return (_rms_norm(x, self.norm) @ self.head) * self.logit_scale

    def truncated(self, layers: int) -> ToyLM:
        """A shallower copy: the first ``layers`` blocks, embedding, final norm and LM
        head shared by value (a draft that agrees with this model often)."""
        m = ToyLM(
            self.vocab_size,
            self.hidden,
            layers,
            heads=self.heads,
            kv_heads=self.kv_heads,
            logit_scale=self.logit_scale,
        )
        m.load_state_dict(
            {
                k: v
                for k, v in self.state_dict().items()
                if not k.startswith("blocks.") or int(k.split(".")[1]) < layers
            }
        )
        return m.to(self.device)

    @torch.no_grad()
    def greedy(self, prompt: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy continuation of a 1-D prompt by :meth:`full_logits` (the reference
        decoder): int64 ``[max_new_tokens]``."""
        seq = prompt.to(self.device).long()[None]
        out = []
        for _ in range(max_new_tokens):
            nxt = self.full_logits(seq)[0, -1].argmax()
            out.append(int(nxt))
            seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
        return torch.tensor(out, dtype=torch.long)
