"""A lean forward for Llama-family Hugging Face models, from the model's own weights.

transformers runs a decoder layer as some 40 small modules and tensor ops, with
their Python around them; at the sizes speculative decoding runs a draft (and a
small target) at, that framework cost is most of a forward.  :class:`LeanDecoder`
runs the same arithmetic as a few ops per layer:

- the q/k/v projections as one matmul (their weights concatenated once), the MLP's
  gate and up projections as one, the output and down projections with the
  residual add fused (``addmm``);
- RMSNorm as transformers computes it (in float32, the weight applied in the model
  dtype); rotary embeddings from the model's own rotary module (any rope type whose
  tables do not depend on the sequence seen), applied to q and k in one pass;
- attention through the cache's :meth:`write` / :meth:`attend`, our tree-attention
  ops, exactly as the transformers route does.

Only architectures whose layers are exactly these modules are taken (the module
classes are checked by name and origin, and the config for every feature the lean
forward does not implement); :class:`~specdec_cuda.models.HFModel` then proves the
lean forward against the model's own forward with its probe, and keeps the
transformers route for everything else.  Rounding differs from transformers'
only by the order of float operations (a fused matmul, a fused residual add).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["LeanDecoder", "lean_refusal"]

# model_type -> the class-name prefix of its modules in transformers.models.<type>.
_FAMILIES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}
# rope types whose cos/sin depend on the position only (not on the longest sequence seen).
_STATIC_ROPE = {"default", "linear", "llama3", "yarn", "longrope_static"}


def _rope_type(config) -> str:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return str(params.get("rope_type", params.get("type", "default")))


def lean_refusal(model: Any) -> str | None:
    """Why :class:`LeanDecoder` cannot run ``model`` (a transformers causal LM), or None.

    A refusal is not an error: :class:`~specdec_cuda.models.HFModel` then runs the
    model through transformers' own modules."""
    config = model.config
    model_type = getattr(config, "model_type", "")
    prefix = _FAMILIES.get(model_type)
    if prefix is None:
        return f"model type {model_type!r} has no lean forward (families: {sorted(_FAMILIES)})"
    module = f"transformers.models.{model_type}.modeling_{model_type}"
    if type(model).__name__ != f"{prefix}ForCausalLM" or type(model).__module__ != module:
        return f"{type(model).__name__} is not transformers' {prefix}ForCausalLM"
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if base is None or layers is None or len(layers) == 0:
        return "has no decoder layers where transformers puts them"
    want = {
        "layer": f"{prefix}DecoderLayer",
        "attn": f"{prefix}Attention",
        "mlp": f"{prefix}MLP",
        "norm": f"{prefix}RMSNorm",
    }
    for i, layer in enumerate(layers):
        got = {
            "layer": layer,
            "attn": getattr(layer, "self_attn", None),
            "mlp": getattr(layer, "mlp", None),
            "norm": getattr(layer, "input_layernorm", None),
        }
        for key, name in want.items():
            obj = got[key]
            if obj is None or type(obj).__name__ != name or type(obj).__module__ != module:
                return f"layer {i}'s {key} is {type(obj).__name__}, not transformers' {name}"
        post = getattr(layer, "post_attention_layernorm", None)
        if post is None or type(post).__name__ != want["norm"]:
            return f"layer {i} has no {want['norm']} after attention"
        attn = got["attn"]
        if getattr(attn, "sliding_window", None):
            return f"layer {i} uses a sliding window (the transformers route passes it to our attention)"
        if attn.o_proj.bias is not None:
            return "o_proj has a bias"
        mlp = got["mlp"]
        if any(getattr(mlp, p).bias is not None for p in ("gate_proj", "up_proj", "down_proj")):
            return "the MLP has biases"
        biases = [getattr(attn, p).bias is None for p in ("q_proj", "k_proj", "v_proj")]
        if len(set(biases)) != 1:
            return "q/k/v projections differ in having a bias"
    if getattr(config, "hidden_act", None) != "silu":
        return f"hidden_act {getattr(config, 'hidden_act', None)!r} is not silu"
    if getattr(config, "pretraining_tp", 1) != 1:
        return "pretraining_tp != 1"
    if _rope_type(config) not in _STATIC_ROPE:
        return f"rope type {_rope_type(config)!r} depends on the sequence length seen"
    if type(getattr(base, "norm", None)).__name__ != want["norm"]:
        return "the final norm is not an RMSNorm"
    if getattr(base, "rotary_emb", None) is None:
        return "has no rotary embedding module"
    if model.get_output_embeddings() is None or model.get_output_embeddings().bias is not None:
        return "the LM head is missing or has a bias"
    return None


def _onednn() -> bool:
    """Whether this torch build has oneDNN's packed linear (CPU builds with mkldnn)."""
    mk = getattr(torch.ops, "mkldnn", None)
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(mk, "_reorder_linear_weight")
    except (AttributeError, RuntimeError):
        return False


class _Linear:
    """``y = x @ W^T (+ b)`` for a weight ``W`` ``[out, in]``, held the way the device
    multiplies fastest at decoding sizes (``x`` ``[T, in]`` with T of 1 to a few dozen).

    Every weight is stored transposed, ``[in, out]`` contiguous, for ``mm`` /
    ``addmm`` (on the development CPU the fastest single-row product, 1.4x
    ``F.linear``).  On CPU with oneDNN, when ``packed`` is asked for, the weight is
    also reordered once into oneDNN's packed layout (packed for 8 rows), which takes
    every product of 2 or more rows (2x ``F.linear`` at 5-8 rows there) with the
    residual add fused.  Both are copies of the model's weight, made at construction."""

    PACK_ROWS = 8

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None = None, *, pack: bool = True):
        w = w.detach()
        self.out_features = int(w.shape[0])
        self.bias = b.detach().contiguous() if b is not None else None
        self.wt = w.t().contiguous()
        self.packed = (
            pack and w.device.type == "cpu" and w.dtype in (torch.float32, torch.bfloat16) and _onednn()
        )
        self.w = (
            torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), self.PACK_ROWS) if self.packed else None
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed and x.shape[0] > 1:
            return torch.ops.mkldnn._linear_pointwise(x, self.w, self.bias, "none", [], "")
        y = torch.mm(x, self.wt)
        return y if self.bias is None else y.add_(self.bias)

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual + x @ W^T`` (no bias: the lean families have none here)."""
        if self.packed and x.shape[0] > 1:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.w, None, "add")
        return torch.addmm(residual, x, self.wt)


# Linear weights (bytes) up to which the lean forward also keeps oneDNN's packed copy
# (a second copy of every weight); bigger models keep only the transposed one.
PACK_LIMIT_BYTES = 2 << 30


class _Layer:
    __slots__ = ("ln1", "ln2", "eps1", "eps2", "qkv", "o", "gu", "down", "qn", "kn", "qeps", "keps")


class LeanDecoder:
    """The lean forward of a model :func:`lean_refusal` accepts (see the module doc).

    ``forward(tokens, positions, cache, tree_mask)`` is the protocol's: tokens int64
    ``[B, N]``, positions int64 ``[B, N]``, returns logits ``[B, N, V]`` in the model
    dtype.  The weights are the model's own tensors (q/k/v and gate/up concatenated
    once, at construction: a model whose weights change afterwards must be wrapped
    again)."""

    def __init__(self, model: Any):
        reason = lean_refusal(model)
        if reason is not None:
            raise ValueError(f"LeanDecoder: {reason}")
        config = model.config
        base = model.model
        self.hf = model
        self.embed = base.embed_tokens.weight.detach()
        self.rotary = base.rotary_emb
        self.norm = base.norm.weight.detach()
        self.norm_eps = float(base.norm.variance_epsilon)
        attn0 = base.layers[0].self_attn
        self.head_dim = int(attn0.head_dim)
        self.hq = int(config.num_attention_heads)
        self.hkv = int(getattr(config, "num_key_value_heads", None) or self.hq)
        self.scale = float(attn0.scaling)
        self.layers: list[_Layer] = []
        linear_bytes = sum(
            p.numel() * p.element_size()
            for n, p in model.named_parameters()
            if p.dim() == 2 and "embed" not in n
        )
        #: whether the CPU's oneDNN packed copy is kept besides the transposed one
        self.pack = pack = linear_bytes <= PACK_LIMIT_BYTES
        with torch.no_grad():
            for layer in base.layers:
                a, m = layer.self_attn, layer.mlp
                L = _Layer()
                L.ln1, L.eps1 = (
                    layer.input_layernorm.weight.detach(),
                    float(layer.input_layernorm.variance_epsilon),
                )
                L.ln2 = layer.post_attention_layernorm.weight.detach()
                L.eps2 = float(layer.post_attention_layernorm.variance_epsilon)
                L.qkv = _Linear(
                    torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                    torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
                    if a.q_proj.bias is not None
                    else None,
                    pack=pack,
                )
                L.o = _Linear(a.o_proj.weight, pack=pack)
                L.gu = _Linear(torch.cat([m.gate_proj.weight, m.up_proj.weight]), pack=pack)
                L.down = _Linear(m.down_proj.weight, pack=pack)
                qn, kn = getattr(a, "q_norm", None), getattr(a, "k_norm", None)
                L.qn = qn.weight.detach() if qn is not None else None
                L.kn = kn.weight.detach() if kn is not None else None
                L.qeps = float(qn.variance_epsilon) if qn is not None else 0.0
                L.keps = float(kn.variance_epsilon) if kn is not None else 0.0
                self.layers.append(L)
        self.head = _Linear(model.get_output_embeddings().weight, pack=pack)
        self.inter = self.layers[0].gu.out_features // 2

    @staticmethod
    def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        # transformers' RMSNorm: float32 statistics, the weight applied in the model dtype
        if x.dtype == torch.float32:
            return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))).mul_(w)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True).add_(eps))
        return w * h.to(x.dtype)

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache, tree_mask: torch.Tensor):
        B, N = tokens.shape
        T = B * N
        D, hq, hkv = self.head_dim, self.hq, self.hkv
        x = F.embedding(tokens.reshape(T), self.embed)  # [T, H]
        cos, sin = self.rotary(x, positions.reshape(1, T))  # [1, T, D] each, the model's own tables
        cos = cos.view(T, 1, D)
        half = D // 2
        # rotate_half(q) * sin == roll(q, D/2) * (sin with its first half negated)
        sin = torch.cat([-sin[..., :half], sin[..., half:]], -1).view(T, 1, D)
        nq = hq * D
        nk = hkv * D
        for i, L in enumerate(self.layers):
            h = self._rms(x, L.ln1, L.eps1)
            qkv = L.qkv(h)  # [T, (hq + 2 hkv) D]
            q = qkv[:, :nq].view(T, hq, D)
            k = qkv[:, nq : nq + nk].view(T, hkv, D)
            v = qkv[:, nq + nk :].view(T, hkv, D)
            if L.qn is not None:
                q = self._rms(q, L.qn, L.qeps)
                k = self._rms(k, L.kn, L.keps)
            q = torch.addcmul(q * cos, q.roll(half, -1), sin)
            k = torch.addcmul(k * cos, k.roll(half, -1), sin)
            cache.write(i, k.view(B, N, hkv, D).transpose(1, 2), v.view(B, N, hkv, D).transpose(1, 2))
            att = cache.attend(i, q.view(B, N, hq, D), tree_mask, self.scale)  # [B, N, hq, D]
            x = L.o.add(att.reshape(T, nq).to(x.dtype), x)
            h = self._rms(x, L.ln2, L.eps2)
            gu = L.gu(h)
            a = F.silu(gu[:, : self.inter]).mul_(gu[:, self.inter :])
            x = L.down.add(a, x)
        x = self._rms(x, self.norm, self.norm_eps)
        return self.head(x).view(B, N, -1)

    __call__ = forward
