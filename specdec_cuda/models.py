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
    ``cache.write(l, k, v)`` with the new tokens' K ``[B, Hkv, N, Dk]`` and V
    ``[B, Hkv, N, Dv]`` and then ``cache.attend(l, q, tree_mask, scale)`` (optionally
    ``window=``, ``softcap=``, ``sinks=``) with ``q`` ``[B, N, Hq, Dk]``, which runs our
    tree-attention op (prefix + ancestors) and returns ``[B, N, Hq, Dv]``;
  - ``tree_mask`` int32 ``[B, N, ceil(N/32)]``: the packed ancestor mask
    (:func:`specdec_cuda.ops.build_tree`);
  - returns float logits ``[B, N, vocab_size]``; it never changes ``cache.lens``.

:func:`as_model` wraps Hugging Face causal LMs (:class:`HFModel`) and passes
through objects that already follow the protocol.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any, Protocol, runtime_checkable

import torch

from ._lean import LeanDecoder, lean_refusal
from .cache import KVCache, PagedKVCache

__all__ = [
    "SpecModel",
    "HFModel",
    "UnsupportedModelError",
    "as_model",
    "static_refusal",
    "ATTN_IMPLEMENTATION",
]

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


class UnsupportedModelError(TypeError):
    """A transformers model that :class:`HFModel` cannot run exactly; the message
    names the architecture and the reason.  Raised at construction, before any
    decoding, never as wrong output later."""


class _Active(threading.local):
    """The cache and mask of the HF forward running on this thread, if any, and a
    count of the attention calls per layer index (the routing proof)."""

    cache: KVCache | PagedKVCache | None = None
    mask: torch.Tensor | None = None
    calls: dict[int, int] | None = None
    kwargs_seen: dict[int, set[str]] | None = None
    force_transformers: bool = False  # the probe of the transformers route


_ACTIVE = _Active()
_REGISTERED = False

# Model types whose layers are (partly) recurrent or state-space: no KV cache to
# roll back, so speculative decoding through our ops cannot be exact.
_RECURRENT = {
    "rwkv",
    "mamba",
    "mamba2",
    "falcon_mamba",
    "jamba",
    "falcon_h1",
    "qwen3_next",
    "bamba",
    "zamba",
    "zamba2",
    "granitemoehybrid",
    "lfm2",
    "lfm2_moe",
    "nemotron_h",
    "recurrent_gemma",
    "xlstm",
    "minimax",
    "plamo2",
    "kimi_linear",
    "bailing_hybrid",
    "hunyuan_v1_moe_hybrid",
    "olmo_hybrid",
    "jetmoe_hybrid",
}
# Layer types our tree attention runs exactly (config.layer_types).
_ATTENTION_LAYERS = {"full_attention", "sliding_attention"}


def _specdec_attention(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None, **kwargs
):
    """transformers attention function, active only inside an :class:`HFModel`
    forward: writes the new K/V into our cache and runs tree attention.  Outside one
    the model keeps its own implementation (HFModel switches it per forward), so
    this is never reached there."""
    cache = _ACTIVE.cache
    if cache is None:
        raise RuntimeError(
            "specdec_cuda: the 'specdec' attention implementation only runs inside HFModel.forward; "
            "the model's own attention implementation is used elsewhere"
        )
    layer = getattr(module, "layer_idx", None)
    if layer is None:
        raise UnsupportedModelError(
            f"specdec_cuda.HFModel: attention module {type(module).__name__} has no layer_idx; "
            "this architecture is not supported"
        )
    if _ACTIVE.calls is not None:
        _ACTIVE.calls[layer] = _ACTIVE.calls.get(layer, 0) + 1
        _ACTIVE.kwargs_seen.setdefault(layer, set()).update(k for k, v in kwargs.items() if v is not None)
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    window = kwargs.get("sliding_window")
    softcap = kwargs.get("softcap")
    sinks = kwargs.get("s_aux")
    cache.write(layer, key, value)  # [B, Hkv, N, Dk], [B, Hkv, N, Dv]
    out = cache.attend(  # [B, N, Hq, Dv]
        layer,
        query.transpose(1, 2),
        _ACTIVE.mask,
        scale,
        window=int(window) if window is not None else 0,
        softcap=float(softcap) if softcap is not None else 0.0,
        sinks=sinks.detach().float().contiguous() if sinks is not None else None,
    )
    return out.to(query.dtype), None


def _specdec_mask(*args, **kwargs):
    """transformers mask function, active only inside our forward: no mask (the
    tree mask is ours, passed to the attention function through _ACTIVE)."""
    return None


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


def _configs(model) -> list:
    """Every distinct config object the model's modules read their attention
    implementation from (usually just one, shared)."""
    seen, out = set(), []
    for m in [model, *model.modules()]:
        c = getattr(m, "config", None)
        if c is not None and hasattr(c, "_attn_implementation_internal") and id(c) not in seen:
            seen.add(id(c))
            out.append(c)
    return out


def static_refusal(model) -> str | None:
    """Why :class:`HFModel` cannot run ``model`` exactly, judged from its class and
    config alone (no forward), or None."""
    config = model.config
    arch = f"{getattr(config, 'model_type', '?')} ({type(model).__name__})"
    if getattr(config, "is_encoder_decoder", False):
        return f"{arch} is an encoder-decoder model; only decoder-only causal LMs are supported"
    if model.get_output_embeddings() is None:
        return f"{arch} has no LM head; pass a causal LM (AutoModelForCausalLM)"
    model_type = getattr(config, "model_type", "")
    if getattr(config, "alibi", False) or model_type in ("bloom", "mpt"):
        return f"{arch} uses ALiBi position biases, which tree_attention does not implement"
    if model_type in _RECURRENT:
        return (
            f"{arch} has recurrent or state-space layers, whose state cannot be rolled back with the KV ops"
        )
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        other = sorted(set(layer_types) - _ATTENTION_LAYERS)
        if other:
            return f"{arch} has layers of type {other}; supported: full and sliding-window attention"
    if not getattr(type(model), "_supports_attention_backend", False):
        return (
            f"{arch} does not route its attention through transformers' AttentionInterface, so its "
            "K/V cannot go to our cache (its forwards would see only the new tokens)"
        )
    return None


class HFModel:
    """A Hugging Face causal LM behind the protocol, run exactly or refused.

    Attention runs through transformers' ``AttentionInterface``: during
    :meth:`forward` (and only then) the model's attention implementation is
    ``"specdec"`` (registered by this module), which writes the new K/V into our
    cache and calls ``tree_attention`` / ``tree_attention_paged`` with the layer's
    sliding window, logit soft-cap and attention sinks; the model's own
    implementation is restored after every forward, so wrapping a model never
    changes what its own ``generate`` returns.

    Construction proves that the model routes every attention layer through our
    cache exactly once per forward and gives the model's own logits: a probe runs a
    short prompt and a small draft tree through our path and the same sequences
    through the model's own forward, counting the attention calls per layer.
    Architectures that fail (attention outside the interface, layers that attend
    twice, recurrent layers, ALiBi, ...) raise :class:`UnsupportedModelError` naming
    the architecture and the reason.  ``verify=False`` skips the probe (the static
    checks still run): only for architectures already proven.
    """

    def __init__(self, model: Any, *, verify: bool = True, lean: bool = True):
        if not _is_hf_model(model):
            raise TypeError(f"HFModel: expected a transformers PreTrainedModel, got {type(model).__name__}")
        reason = static_refusal(model)
        if reason is not None:
            raise UnsupportedModelError(f"HFModel: {reason}")
        _register()
        self.model = model.eval()
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        param = next(model.parameters())
        self.device = param.device
        self.dtype = param.dtype
        self._ones = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=self.device)
        self._configs = _configs(model)
        self._lean = None
        #: why the lean forward does not run this model (None while it does; see :attr:`path`)
        self.lean_refusal = lean_refusal(model) if lean else "lean=False was passed"
        if self.lean_refusal is None and any(
            _expected_kwargs(model.config, i) for i in range(max(_attention_layers(model.config), 0))
        ):  # the layers the probe checks for a window / soft-cap: the transformers route passes them
            self.lean_refusal = "uses a sliding window or a logit soft-cap (the transformers route passes it)"
        if self.lean_refusal is None:
            self._lean = LeanDecoder(model)
            if verify:  # the lean forward must give the model's own logits, or it is not used
                why = _probe(self)
                if why is not None:
                    self._lean, self.lean_refusal = None, f"the probe refused it: {why}"
                    warnings.warn(
                        f"HFModel: {_arch(model)}: the lean forward {why}; running the model's "
                        "own modules instead (exact, slower)",
                        RuntimeWarning,
                        stacklevel=2,
                    )
        if verify and not getattr(model, "_specdec_proven", False):
            reason = _probe(self, transformers_route=True)
            if reason is not None:
                raise UnsupportedModelError(f"HFModel: {_arch(model)} {reason}")
            model._specdec_proven = True  # the probe's verdict, kept with the model

    @property
    def path(self) -> str:
        """``"lean"`` (:class:`~specdec_cuda._lean.LeanDecoder`: the model's weights in a
        few fused ops per layer) or ``"transformers"`` (the model's own modules, with
        attention routed to our cache); :attr:`lean_refusal` says why not lean."""
        return "lean" if self._lean is not None else "transformers"

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
        if self._lean is not None and not _ACTIVE.force_transformers:
            return self._lean.forward(tokens, positions, cache, tree_mask)
        if _ACTIVE.cache is not None:
            raise RuntimeError("HFModel.forward: nested forwards on one thread are not supported")
        _ACTIVE.cache, _ACTIVE.mask = cache, tree_mask
        saved = [c._attn_implementation_internal for c in self._configs]
        for c in self._configs:
            c._attn_implementation_internal = ATTN_IMPLEMENTATION
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
            for c, impl in zip(self._configs, saved):
                c._attn_implementation_internal = impl
            _ACTIVE.cache, _ACTIVE.mask = None, None
        return out.logits

    __call__ = forward


def _arch(model) -> str:
    return f"{getattr(model.config, 'model_type', '?')} ({type(model).__name__})"


def _attention_layers(config) -> int:
    n = getattr(config, "num_hidden_layers", None)
    if n is None and hasattr(config, "get_text_config"):
        n = getattr(config.get_text_config(), "num_hidden_layers", None)
    return int(n) if n is not None else -1


def _expected_kwargs(config, layer: int) -> set[str]:
    """The attention arguments the config says layer ``layer`` must pass (a sliding
    window, a soft-cap), so that a model that declares one but does not pass it to
    the attention function is caught."""
    want = set()
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        if layer_types[layer] == "sliding_attention" and getattr(config, "sliding_window", None):
            want.add("sliding_window")
    elif getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        want.add("sliding_window")
    if getattr(config, "attn_logit_softcapping", None):
        want.add("softcap")
    return want


def _probe(m: HFModel, transformers_route: bool = False) -> str | None:
    """Run a prompt and a small tree through our path and the same sequences through
    the model's own forward; the reason the model cannot be run exactly, or None.

    The lean forward is probed for its logits; the transformers route
    (``transformers_route=True``, or a model with no lean forward) also for calling
    attention through our cache once per layer."""
    routed = transformers_route or m._lean is None
    saved_force = _ACTIVE.force_transformers
    _ACTIVE.force_transformers = transformers_route
    try:
        return _probe_run(m, routed)
    finally:
        _ACTIVE.force_transformers = saved_force


def _probe_run(m: HFModel, routed: bool) -> str | None:
    from ._forward import forward_tree
    from .cache import KVCache

    config = m.model.config
    g = torch.Generator().manual_seed(0)
    vocab = m.vocab_size
    prompt = torch.randint(0, vocab, (7,), generator=g)
    t1, t2, t3 = (int(x) for x in torch.randint(0, vocab, (3,), generator=g))
    dev = m.device
    layers = _attention_layers(config)
    tree_tokens = torch.tensor([[int(prompt[-1]), t1, t2, t3]], device=dev)
    tree_parents = torch.tensor([[-1, 0, 0, 1]], dtype=torch.int32, device=dev)
    cache = KVCache(1, 16, dtype=m.dtype, device=dev)
    ours = []
    _ACTIVE.kwargs_seen = {}
    try:
        for tokens, parents in (
            (prompt[:-1][None].to(dev), torch.arange(-1, 5, dtype=torch.int32, device=dev)[None]),
            (tree_tokens, tree_parents),
        ):
            _ACTIVE.calls = {}
            try:
                with torch.inference_mode():
                    ours.append(forward_tree(m, cache, tokens, parents, role="probe")[0])
            except UnsupportedModelError as exc:
                return str(exc).removeprefix("specdec_cuda.HFModel: ")
            except (TypeError, ValueError, IndexError, RuntimeError, NotImplementedError) as exc:
                return f"fails in our attention path: {type(exc).__name__}: {exc}"
            calls = _ACTIVE.calls
            if not routed:
                cache.advance(tokens.shape[1])
                continue
            if not calls:
                return "ran no attention layer through our attention function (no K/V reached the cache)"
            twice = sorted(k for k, v in calls.items() if v != 1)
            if twice:
                return (
                    f"called attention {calls[twice[0]]} times in layer {twice[0]} of one forward; our "
                    "cache holds one K/V per layer"
                )
            if layers >= 0 and sorted(calls) != list(range(layers)):
                return (
                    f"routed {len(calls)} attention layers through our cache, but the config has "
                    f"{layers} layers"
                )
            cache.advance(tokens.shape[1])
        seen = _ACTIVE.kwargs_seen
    finally:
        _ACTIVE.calls, _ACTIVE.kwargs_seen = None, None
    for layer in range(max(layers, 0) if routed else 0):
        missing = _expected_kwargs(config, layer) - seen.get(layer, set())
        if missing:
            return (
                f"declares {sorted(missing)} in its config but layer {layer} does not pass it to the "
                "attention function"
            )
    # The model's own forward on the same sequences (its own attention and masks).
    try:
        with torch.inference_mode():
            seq_a = torch.cat([prompt, torch.tensor([t1, t3])])[None].to(dev)
            seq_b = torch.cat([prompt, torch.tensor([t2])])[None].to(dev)
            a = m.model(input_ids=seq_a, use_cache=False).logits[0]
            b = m.model(input_ids=seq_b, use_cache=False).logits[0]
    except Exception as exc:  # noqa: BLE001 - the model's own forward, whatever it raises
        return f"fails in its own forward, so the probe cannot compare ({type(exc).__name__}: {exc})"
    got = torch.cat(ours).float()
    # the prefix (positions 0-5), then the tree in node order: root (6), t1 (7), t2 (7), t3 (8)
    want = torch.cat([a[:6], a[6:7], a[7:8], b[7:8], a[8:9]]).float()
    tol = (1e-3 if m.dtype == torch.float32 else 3e-2) * max(1.0, float(want.abs().max()))
    diff = float((got - want).abs().max())
    if not diff <= tol:
        hint = ""
        if getattr(config, "is_decoder", None) is False and hasattr(config, "add_cross_attention"):
            hint = " (config.is_decoder is False: it attends bidirectionally, as an encoder does)"
        return (
            f"gives different logits through our attention than through its own (max |difference| "
            f"{diff:.3g} > {tol:.3g}); its attention does something tree_attention does not{hint}"
        )
    return None


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
