"""Every Hugging Face architecture the README lists: exact, or refused with a clear error.

Each supported architecture is built from a small random config (hidden 64, 4 layers,
sliding windows of 8 where the architecture has them, so windows bite inside the test);
its draft is a 1-layer copy sharing the target's embeddings, first layer, norm and head.
For chain, static tree, dynamic tree and prompt lookup, contiguous and paged caches,
batch 3 with ragged prompts, the greedy output must equal the target's own
``model.generate(do_sample=False)`` token for token.  Every refused architecture must
raise :class:`specdec_cuda.models.UnsupportedModelError` at construction with the
documented reason.  The README's supported list is checked against SUPPORTED.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import specdec_cuda as sd  # noqa: E402
from specdec_cuda.models import UnsupportedModelError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SMALL = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    sliding_window=8,
    n_embd=64,
    n_layer=4,
    n_head=4,
    n_positions=256,
    n_inner=128,
    moe_intermediate_size=64,
    num_experts=4,
    num_local_experts=4,
    num_experts_per_tok=2,
    tie_word_embeddings=False,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
# Multi-head latent attention (K/V head sizes 24/16, as in DeepSeek-V3's failing case).
MLA = dict(
    q_lora_rank=None,
    kv_lora_rank=32,
    qk_rope_head_dim=8,
    qk_nope_head_dim=16,
    v_head_dim=16,
    qk_head_dim=24,
    head_dim=8,
    n_routed_experts=4,
    first_k_dense_replace=1,
    n_group=1,
    topk_group=1,
    num_key_value_heads=4,
)
# model_type -> extra config overrides for the small random model (every one of them
# exact with every drafter, contiguous and paged).
SUPPORTED: dict[str, dict] = {
    "afmoe": {},
    "apertus": {},
    "arcee": {},
    "aria_text": {},
    "bitnet": {},
    "cohere": {},
    "cohere2": {},
    "cohere2_moe": {},
    "ctrl": {},
    "cwm": {},
    "deepseek_v2": MLA,
    "deepseek_v3": MLA,
    "ernie4_5": {},
    "ernie4_5_moe": {},
    "exaone4": {},
    "exaone_moe": {},
    "flex_olmo": {},
    "flint": {},
    "gemma": {},
    "gemma2": {},
    "gemma3_text": {},
    "glm": {},
    "glm4": {},
    "glm4_moe": {},
    "glm4_moe_lite": MLA,
    "gpt-sw3": {},
    "gpt2": {},
    "gpt_bigcode": {},
    "gpt_neox": {},
    "gpt_oss": {},
    "granite": {},
    "granite_swa": {},
    "granitemoe": {},
    "granitemoe_swa": {},
    "granitemoeshared": {},
    "helium": {},
    "hunyuan_v1_dense": {},
    "hunyuan_v1_moe": {},
    "hy_v3": {},
    "hyperclovax": {},
    "internlm3": {},
    "iquestcoder": {},
    "jais2": {},
    "jetmoe": {},
    "kolibri1": {},
    "laguna": {},
    "llama": {},
    "mellum": {},
    "mimo_v2_flash": {},
    "minicpm3": MLA,
    "minimax_m2": {},
    "minimax_m3_vl_text": {},
    "ministral": {},
    "ministral3": {},
    "mistral": {},
    "mixtral": {},
    "modernbert-decoder": {},
    "nanochat": {},
    "nemotron": {},
    "olmo": {},
    "olmo2": {},
    "olmo3": {},
    "olmoe": {},
    "opt": {},
    "persimmon": {},
    "phi": {},
    "phi3": {},
    "qwen2": {},
    "qwen2_moe": {},
    "qwen3": {},
    "qwen3_moe": {},
    "seed_oss": {},
    "smollm3": {},
    "solar_open": {},
    "starcoder2": {},
    "vaultgemma": {},
    "youtu": MLA,
}
# model_type -> a fragment of the refusal message (raised at construction).
REFUSED: dict[str, str] = {
    "bert": "config.is_decoder is False",
    "bloom": "uses ALiBi position biases",
    "codegen": "does not route its attention",
    "deepseek_v32": "has layers of type ['indexed_attention']",
    "diffllama": "called attention 2 times in layer 0",
    "falcon": "does not route its attention",
    "falcon_h1": "has recurrent or state-space layers",
    "gpt_neo": "does not route its attention",
    "gptj": "does not route its attention through transformers' AttentionInterface",
    "jamba": "has recurrent or state-space layers",
    "llama4_text": "has layers of type ['chunked_attention']",
    "mamba": "has recurrent or state-space layers",
    "mpt": "uses ALiBi position biases",
    "phimoe": "declares ['sliding_window'] in its config but layer 0 does not pass it",
    "qwen3_next": "has recurrent or state-space layers",
    "rwkv": "has recurrent or state-space layers",
    "xglm": "does not route its attention",
}

# Config fields some refused architectures need for a small model to build at all.
REFUSED_CONFIG: dict[str, dict] = {
    "gpt_neo": dict(num_layers=4, attention_types=[[["global", "local"], 2]]),
}

PROMPT_LENS = (5, 1, 9)
MAX_NEW = 12


def small_config(model_type: str, extra: dict | None = None):
    """The architecture's config with the small sizes above (only the fields it has),
    built through its constructor so that derived fields (layer types) follow."""
    from transformers import AutoConfig

    default = AutoConfig.for_model(model_type)

    def settable(key):
        prop = getattr(type(default), key, None)  # a derived read-only property (Falcon's head_dim)
        return hasattr(default, key) and not (isinstance(prop, property) and prop.fset is None)

    values = {k: v for k, v in {**SMALL, **(extra or {})}.items() if settable(k)}
    return AutoConfig.for_model(model_type, **values)


def build(model_type: str, layers: int | None = None, extra: dict | None = None):
    from transformers import AutoModelForCausalLM

    cfg = small_config(model_type, {**(extra or {}), **({"num_hidden_layers": layers} if layers else {})})
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(cfg).eval()


_PAIRS: dict = {}


def pair(model_type: str):
    if model_type not in _PAIRS:
        _PAIRS.clear()  # the tests run grouped by architecture: keep one pair in memory
        target = build(model_type, extra=SUPPORTED[model_type])
        draft = build(model_type, layers=1, extra=SUPPORTED[model_type])
        draft.load_state_dict(target.state_dict(), strict=False)  # shares embeddings, layer 0, norm, head
        g = torch.Generator().manual_seed(1)
        vocab = target.get_output_embeddings().weight.shape[0]
        prompts = [torch.randint(3, vocab, (n,), generator=g) for n in PROMPT_LENS]
        refs = []
        for p in prompts:
            out = target.generate(
                p[None],
                attention_mask=torch.ones(1, p.numel(), dtype=torch.long),
                do_sample=False,
                max_new_tokens=MAX_NEW,
                min_new_tokens=MAX_NEW,
                pad_token_id=0,
                eos_token_id=None,
            )
            refs.append(out[0, p.numel() :])
        _PAIRS[model_type] = (target, draft, prompts, refs)
    return _PAIRS[model_type]


DRAFTERS = {
    "chain": lambda d: sd.ChainDrafter(d, k=3),
    "static-tree": lambda d: sd.TreeDrafter(d, [[0], [1], [0, 0], [0, 1], [0, 0, 0]]),
    "dynamic-tree": lambda d: sd.DynamicTreeDrafter(d, topk=2, depth=3, num_nodes=6),
    "prompt-lookup": lambda d: sd.PromptLookupDrafter(k=3),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("paged", [False, True], ids=["contig", "paged"])
@pytest.mark.parametrize("drafter", list(DRAFTERS))
@pytest.mark.parametrize("model_type", sorted(SUPPORTED))
def test_supported_architecture_is_exact(model_type, drafter, paged):
    target, draft, prompts, refs = pair(model_type)
    dec = sd.SpeculativeDecoder(target, DRAFTERS[drafter](draft), paged=paged, page_size=4)
    out = dec.generate(prompts, max_new_tokens=MAX_NEW)
    for b, (got, want) in enumerate(zip(out.new_tokens, refs)):
        assert torch.equal(got, want), (
            f"{model_type}/{drafter}/paged={paged} row {b}: {got.tolist()} != {want.tolist()}"
        )
    # Wrapping never changes the model's own generate.
    p = prompts[0]
    again = target.generate(
        p[None],
        attention_mask=torch.ones(1, p.numel(), dtype=torch.long),
        do_sample=False,
        max_new_tokens=MAX_NEW,
        min_new_tokens=MAX_NEW,
        pad_token_id=0,
        eos_token_id=None,
    )
    assert torch.equal(again[0, p.numel() :], refs[0])


@pytest.mark.parametrize("model_type", sorted(REFUSED))
def test_refused_architecture_raises_the_documented_error(model_type):
    model = build(model_type, extra=REFUSED_CONFIG.get(model_type))
    with pytest.raises(UnsupportedModelError) as info:
        sd.HFModel(model)
    message = str(info.value)
    assert message.startswith(f"HFModel: {model_type} (") and REFUSED[model_type] in message, message
    with pytest.raises(UnsupportedModelError):
        sd.SpeculativeDecoder(model, sd.PromptLookupDrafter())


def test_readme_lists_exactly_the_supported_architectures():
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- supported-architectures -->(.*?)<!-- /supported-architectures -->", text, re.S)
    assert block, "README.md has no supported-architectures block"
    exact, refused_part = block.group(1).split("Refused")
    listed = re.findall(r"`([a-z0-9_-]+)`", exact.rsplit("transformers", 1)[1])  # the list after the prose
    assert sorted(listed) == sorted(SUPPORTED), sorted(set(listed) ^ set(SUPPORTED))
    refused = re.findall(r"^\| `([a-z0-9_-]+)`", refused_part, re.M)  # the table's first column
    assert sorted(refused) == sorted(REFUSED), sorted(set(refused) ^ set(REFUSED))
