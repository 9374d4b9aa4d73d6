"""The lean forward (specdec_cuda._lean.LeanDecoder) against the transformers route.

HFModel runs Llama-family models through LeanDecoder when lean_refusal accepts them and
the probe agrees; these tests check, on small random models of each family (float32 and
bfloat16, contiguous and paged caches, chains and trees) and on the bundled pair, that
it gives the transformers route's logits, that HFModel really takes it, that greedy
decoding through it equals the model's own generate, and that everything it does not
implement (sliding windows, other architectures, subclasses) stays on the transformers
route.  A lean forward the probe rejects falls back with a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import specdec_cuda as sd  # noqa: E402
from specdec_cuda import _lean  # noqa: E402
from specdec_cuda._forward import forward_tree  # noqa: E402
from specdec_cuda.cache import KVCache, PagedKVCache  # noqa: E402
from specdec_cuda.models import HFModel  # noqa: E402

ASSETS = Path(sd.__file__).resolve().parent / "assets" / "tiny"

SMALL = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    tie_word_embeddings=False,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=None,  # decode every token: no early stop on either side
)
# family -> (config class, causal LM class, extra config)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "llama-rope-llama3": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 10000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            }
        },
    ),
    "llama-tied-mha": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {"tie_word_embeddings": True, "num_key_value_heads": 4},
    ),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"use_sliding_window": False}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"use_sliding_window": False}),
}


def build(family: str, dtype=torch.float32, **extra):
    cfg_name, lm_name, over = FAMILIES[family]
    config = getattr(transformers, cfg_name)(**{**SMALL, **over, **extra})
    torch.manual_seed(0)
    model = getattr(transformers, lm_name)(config).eval()
    if family == "qwen2":  # its q/k/v biases start at zero: make them matter
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    return model.to(dtype)


def make_cache(kind: str, batch: int, dtype):
    if kind == "paged":
        return PagedKVCache(batch, 64, page_size=4, dtype=dtype)
    return KVCache(batch, 64, dtype=dtype)


def run_both(m: HFModel, cache_kind: str, gen):
    """The same prompt chain and tree through the lean forward and the transformers
    route, each into its own cache: (lean logits, transformers logits)."""
    batch, vocab = 2, m.vocab_size
    prompt = torch.randint(0, vocab, (batch, 9), generator=gen)
    parents = torch.tensor([[-1, 0, 0, 1, 1, 2, 3]] * batch, dtype=torch.int32)
    tree = torch.randint(0, vocab, (batch, 7), generator=gen)
    chain = torch.arange(-1, 8, dtype=torch.int32).repeat(batch, 1)
    outs = []
    for force in (False, True):
        cache = make_cache(cache_kind, batch, m.dtype)
        sd.models._ACTIVE.force_transformers = force
        try:
            with torch.inference_mode():
                a = forward_tree(m, cache, prompt, chain)
                cache.advance(torch.tensor([9, 6]))  # ragged: row 1 keeps 6 of its 9
                b = forward_tree(m, cache, tree, parents)
        finally:
            sd.models._ACTIVE.force_transformers = False
        outs.append(torch.cat([a, b], 1))
    return outs


@pytest.mark.parametrize("cache_kind", ["contiguous", "paged"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_lean_matches_the_transformers_route(family, dtype, cache_kind):
    gen = torch.Generator().manual_seed(1)
    m = HFModel(build(family, dtype))
    assert m.path == "lean", m.lean_refusal
    lean, ref = run_both(m, cache_kind, gen)
    scale = float(ref.abs().max())
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    assert float((lean - ref).abs().max()) <= tol * max(scale, 1.0)
    # the two routes are different code: they agree, they are not the same call
    assert not torch.equal(lean, ref) or dtype == torch.bfloat16


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_lean_greedy_equals_generate(family):
    model = build(family)
    prompts = [torch.randint(3, 96, (n,), generator=torch.Generator().manual_seed(n)) for n in (5, 11, 8)]
    decoder = sd.SpeculativeDecoder(model, sd.ChainDrafter(build(family, num_hidden_layers=1), k=3))
    assert decoder.target.path == "lean"
    out = decoder.generate(prompts, max_new_tokens=24)
    for p, got in zip(prompts, out.new_tokens):
        want = model.generate(
            p[None],
            attention_mask=torch.ones(1, p.numel(), dtype=torch.long),
            do_sample=False,
            max_new_tokens=24,
            pad_token_id=0,
            eos_token_id=None,
        )[0, p.numel() :]
        assert got.tolist() == want.tolist()


def test_bundled_pair_runs_lean_and_matches():
    gen = torch.Generator().manual_seed(2)
    for name in ("target", "draft"):
        model = transformers.AutoModelForCausalLM.from_pretrained(str(ASSETS / name), dtype=torch.float32)
        m = HFModel(model)
        assert m.path == "lean", m.lean_refusal
        lean, ref = run_both(m, "contiguous", gen)
        assert float((lean - ref).abs().max()) <= 2e-5 * float(ref.abs().max())


def test_sliding_window_models_stay_on_the_transformers_route():
    m = HFModel(build("mistral", sliding_window=4))
    assert m.path == "transformers"
    assert "sliding window" in m.lean_refusal
    q = HFModel(build("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=1))
    assert q.path == "transformers"
    assert "sliding" in q.lean_refusal


def test_lean_false_and_other_families_use_the_transformers_route():
    assert HFModel(build("llama"), lean=False).path == "transformers"
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=64)
    gpt2 = HFModel(transformers.GPT2LMHeadModel(config).eval())
    assert gpt2.path == "transformers"
    assert "gpt2" in gpt2.lean_refusal


def test_subclasses_are_not_taken():
    class Custom(transformers.LlamaForCausalLM):
        pass

    model = Custom(transformers.LlamaConfig(**SMALL)).eval()
    assert _lean.lean_refusal(model) is not None
    assert HFModel(model).path == "transformers"


def test_a_lean_forward_the_probe_rejects_falls_back_with_a_warning(monkeypatch):
    real = _lean.LeanDecoder.forward

    def off_by_a_little(self, *args):
        return real(self, *args) * 1.01

    monkeypatch.setattr(_lean.LeanDecoder, "forward", off_by_a_little)
    with pytest.warns(RuntimeWarning, match="lean forward gives different logits"):
        m = HFModel(build("llama"))
    assert m.path == "transformers"
    assert m.lean_refusal.startswith("the probe refused it")


def test_no_warning_on_the_lean_path():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert HFModel(build("qwen3")).path == "lean"


def test_the_transposed_weight_layout_matches_too(monkeypatch):
    """Without oneDNN (CUDA, or a CPU build without it) the weights are held transposed for
    mm / addmm: the same logits."""
    monkeypatch.setattr(_lean, "_onednn", lambda: False)
    gen = torch.Generator().manual_seed(3)
    m = HFModel(build("qwen2"))
    assert m.path == "lean" and not m._lean.layers[0].qkv.packed
    lean, ref = run_both(m, "paged", gen)
    assert float((lean - ref).abs().max()) <= 2e-5 * float(ref.abs().max())


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_single_row_forwards_match(family):
    """One row, one token (the matmul path of single-row products) after a prompt."""
    m = HFModel(build(family))
    gen = torch.Generator().manual_seed(4)
    prompt = torch.randint(0, m.vocab_size, (1, 6), generator=gen)
    steps = torch.randint(0, m.vocab_size, (1, 3), generator=gen)
    outs = []
    for force in (False, True):
        cache = KVCache(1, 32)
        sd.models._ACTIVE.force_transformers = force
        try:
            with torch.inference_mode():
                forward_tree(m, cache, prompt, torch.arange(-1, 5, dtype=torch.int32)[None])
                cache.advance(6)
                got = []
                for i in range(3):
                    got.append(
                        forward_tree(m, cache, steps[:, i : i + 1], torch.tensor([[-1]], dtype=torch.int32))
                    )
                    cache.advance(1)
        finally:
            sd.models._ACTIVE.force_transformers = False
        outs.append(torch.cat(got, 1))
    assert float((outs[0] - outs[1]).abs().max()) <= 2e-5 * float(outs[1].abs().max())
