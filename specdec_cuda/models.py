"""Model adapters: the one small protocol the decoding loop speaks.

A model for :class:`specdec_cuda.SpeculativeDecoder` (target or draft) is any
object with

- ``vocab_size: int`` — the size of the logits' last dimension;
- ``device: torch.device`` and ``dtype: torch.dtype`` — where its caches live;
- ``forward(tokens, positions, cache, tree_mask) -> logits``:

  - ``tokens`` int64 ``[B, N]``: N new tokens per row (a chain or a draft tree);
  - ``positions`` int64 ``[B, N]``: their absolute positions (``cache.lens[b] +
    depth``; tree siblings share a position);
  - ``cache``: a :class:`~specdec_cuda.cache.KVCache` or
    :class:`~specdec_cuda.cache.PagedKVCache`; every attention layer ``l`` calls
    ``cache.write(l, k, v)`` with the new tokens' K/V ``[B, Hkv, N, D]`` and then
    ``cache.attend(l, q, tree_mask, scale)`` with ``q`` ``[B, N, Hq, D]``, which
    runs our tree-attention op (prefix + ancestors);
  - ``tree_mask`` int32 ``[B, N, ceil(N/32)]``: the packed ancestor mask
    (:func:`specdec_cuda.ops.build_tree`);
  - returns float logits ``[B, N, vocab_size]``; it never changes ``cache.lens``.

:func:`as_model` wraps Hugging Face causal LMs (:class:`HFModel`) and passes
through objects that already follow the protocol.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol, runtime_checkable

import torch

from .cache import KVCache, PagedKVCache

__all__ = ["SpecModel", "HFModel", "as_model", "ATTN_IMPLEMENTATION"]

# The name our attention function is registered under in transformers.
ATTN_IMPLEMENTATION = "specdec"


@runtime_checkable
class SpecModel(Protocol):
    """The protocol of target and draft models (see the module docstring)."""

    vocab_size: int
    device: torch.device
    dtype: torch.dtype

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache | PagedKVCache,
        tree_mask: torch.Tensor,
    ) -> torch.Tensor: ...


# ---------------------------------------------------------------------------
# Hugging Face adapter.
# ---------------------------------------------------------------------------


class _Active(threading.local):
    """The cache and mask of the HF forward running on this thread, if any."""

    cache: KVCache | PagedKVCache | None = None
    mask: torch.Tensor | None = None


_ACTIVE = _Active()
_REGISTERED = False


def _specdec_attention(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None, **kwargs
):
    """transformers attention function: our cache + tree attention inside an
    :class:`HFModel` forward, transformers' SDPA outside one (so the wrapped model
    still works with ``generate``)."""
    cache = _ACTIVE.cache
    if cache is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    layer = getattr(module, "layer_idx", None)
    if layer is None:
        raise TypeError(
            f"specdec_cuda.HFModel: attention module {type(module).__name__} has no "
            "layer_idx; this architecture is not supported"
        )
    if kwargs.get("softcap") is not None or kwargs.get("sliding_window") is not None:
        raise NotImplementedError(
            "specdec_cuda.HFModel: attention with softcap or a sliding "
            "window is not supported by tree_attention"
        )
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    cache.write(layer, key, value)  # [B, Hkv, N, D]
    out = cache.attend(layer, query.transpose(1, 2), _ACTIVE.mask, scale)  # [B, N, Hq, D]
    return out.to(query.dtype), None


def _specdec_mask(*args, **kwargs):
    """transformers mask function: none inside our forward (the tree mask is ours)."""
    if _ACTIVE.cache is not None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, **kwargs)


def _register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, _specdec_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _specdec_mask)
    _REGISTERED = True


def _is_hf_model(obj: Any) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # transformers is optional for protocol models
        return False
    return isinstance(obj, PreTrainedModel)


class HFModel:
    """A Hugging Face causal LM behind the protocol.

    Attention runs through transformers' ``AttentionInterface``: the model's
    attention implementation is switched to ``"specdec"`` (registered by this
    module), which inside :meth:`forward` writes the new K/V into our cache and
    calls ``tree_attention`` / ``tree_attention_paged``; outside it falls back to
    transformers' SDPA, so ``model.generate`` keeps working.  Supports decoder-only
    models whose attention layers call the interface with a ``layer_idx`` and use
    full (not sliding-window) attention: Llama, Qwen2, Mistral without sliding
    window, GPT-2 and most others in transformers 5.
    """

    def __init__(self, model: Any):
        if not _is_hf_model(model):
            raise TypeError(f"HFModel: expected a transformers PreTrainedModel, got {type(model).__name__}")
        if model.get_output_embeddings() is None:
            raise TypeError(
                f"HFModel: {type(model).__name__} has no LM head; pass a causal LM (AutoModelForCausalLM)"
            )
        config = model.config
        if getattr(config, "is_encoder_decoder", False):
            raise TypeError("HFModel: encoder-decoder models are not supported")
        layer_types = getattr(config, "layer_types", None)
        if layer_types is not None and any(t != "full_attention" for t in layer_types):
            raise NotImplementedError(
                f"HFModel: layer types {sorted(set(layer_types))} include attention other than full attention"
            )
        if getattr(config, "attn_logit_softcapping", None) is not None:
            raise NotImplementedError("HFModel: attention logit softcapping is not supported")
        _register()
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
        self.model = model.eval()
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        param = next(model.parameters())
        self.device = param.device
        self.dtype = param.dtype
        self._ones = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=self.device)

    @property
    def config(self):
        return self.model.config

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache | PagedKVCache,
        tree_mask: torch.Tensor,
    ) -> torch.Tensor:
        if _ACTIVE.cache is not None:
            raise RuntimeError("HFModel.forward: nested forwards on one thread are not supported")
        _ACTIVE.cache, _ACTIVE.mask = cache, tree_mask
        # A 4-D attention_mask makes transformers skip building its own mask (and
        # its packed-sequence scan of position_ids); our attention ignores it.
        batch, nodes = tokens.shape
        dummy = self._ones.expand(batch, 1, nodes, nodes)
        try:
            out = self.model(
                input_ids=tokens,
                position_ids=positions,
                attention_mask=dummy,
                use_cache=False,
                return_dict=True,
            )
        finally:
            _ACTIVE.cache, _ACTIVE.mask = None, None
        return out.logits

    __call__ = forward


def as_model(obj: Any, *, role: str = "model") -> Any:
    """``obj`` as a protocol model: HF causal LMs are wrapped in :class:`HFModel`,
    objects that follow the protocol pass through; anything else raises ``TypeError``
    saying what is missing."""
    if isinstance(obj, HFModel):
        return obj
    if _is_hf_model(obj):
        return HFModel(obj)
    missing = [a for a in ("vocab_size", "device", "dtype", "forward") if not hasattr(obj, a)]
    if missing or not callable(getattr(obj, "forward", None)):
        raise TypeError(
            f"SpeculativeDecoder: the {role} ({type(obj).__name__}) is neither a transformers "
            f"causal LM nor follows the protocol (missing: {', '.join(missing) or 'callable forward'}); "
            "see specdec_cuda.models for forward(tokens, positions, cache, tree_mask) -> logits"
        )
    return obj
