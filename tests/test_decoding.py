"""End-to-end tests of the decoding loop (:class:`specdec_cuda.SpeculativeDecoder`).

What is claimed, and how it is checked:

1. Greedy speculative decoding is exact: for every drafter (none, chain with
   adaptive and fixed k, static trees, dynamic trees, prompt lookup), contiguous
   and paged caches, batch 1 and ragged batches, the output equals the target's
   own greedy decoding token for token -- ``model.generate(do_sample=False)`` for
   Hugging Face models (Llama, GPT-2), a plain-torch full-sequence loop for the
   protocol model of ``tests/toy_model.py``.  Drafts are a truncation of the
   target (its first layer, sharing embeddings, norm and head: acceptance is
   high, so multi-token commits are exercised) and an independent random model.
2. The target's KV cache always holds exactly the K/V of the committed tokens
   but the last one, compared after every streamed step with a from-scratch
   forward (greedy and sampled, chains and trees, contiguous and paged).
3. Sampling is lossless: with a vocabulary of 8, the empirical distribution of
   the first two generated tokens over 20 000 rows (one batched call, per-row
   seeds) is compared with the exact target distribution
   P(x1) P(x2 | x1) (same temperature / top-k / top-p transform) by a chi-square
   test at a false-alarm rate of ALPHA = 1e-6 per assertion.  The test has
   teeth: deliberately wrong verification rules (monkeypatched into the loop)
   and the draft's own distribution are rejected, while a plain-torch
   implementation of the correct rule passes through the same harness.
4. Streaming, statistics, the adaptive draft length, input validation and
   determinism (same seeds -> same outputs; contiguous == paged).

Seeds: the weights and prompts come from the fixed seeds in ``SEEDS`` (printed
with ``-s``); sampling seeds derive from conftest's per-test seed (printed in the
report header; replay with SPECDEC_TEST_SEED=<seed>).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import specdec_cuda as sd
from specdec_cuda import _forward, ops, reference
from specdec_cuda.cache import CacheFullError, KVCache, PagedKVCache
from specdec_cuda.drafters import (
    ChainDrafter,
    DynamicTreeDrafter,
    NoDrafter,
    PromptLookupDrafter,
    StochasticTreeDrafter,
    TreeDrafter,
)
from specdec_cuda.length_policy import AdaptiveLength
from specdec_cuda.tree import static_tree

from conftest import ALL_DEVICES
from toy_model import ToyLM

try:
    import transformers  # noqa: F401
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
except ImportError:  # pragma: no cover - transformers is optional for the protocol-model tests
    transformers = None

needs_hf = pytest.mark.skipif(transformers is None, reason="transformers is not installed")

# Fixed seeds of the models' weights and of the prompts (the tests' conditions, e.g.
# "the truncated draft is accepted often", are properties of these models).
SEEDS = dict(
    llama_target=1001,
    llama_indep_draft=1002,
    gpt2_target=2001,
    gpt2_indep_draft=2002,
    toy_target=3001,
    toy_indep_draft=3002,
    stat_target=5,
    stat_indep_draft=5002,
    prompts=7,
)
HF_VOCAB = 96
TOY_VOCAB = 64
PROMPT_LENS = (5, 1, 12, 3)  # a ragged batch, one single-token prompt included
MAX_NEW = 24


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Single-threaded CPU work (many small ops on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    print(f"\ntest_decoding model/prompt seeds: {SEEDS}")
    yield
    torch.set_num_threads(threads)


def _prompts(lens, vocab, seed=SEEDS["prompts"]):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g) for n in lens]


def _first_mismatch(a: torch.Tensor, b: torch.Tensor) -> str:
    a, b = a.tolist(), b.tolist()
    i = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"first difference at {i}: got {a[i : i + 6]}, want {b[i : i + 6]} (lengths {len(a)}, {len(b)})"


def assert_rows_equal(got: list[torch.Tensor], want: list[torch.Tensor], what: str = "") -> None:
    assert len(got) == len(want)
    for b, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g.cpu(), w.cpu()), f"{what} row {b}: {_first_mismatch(g, w)}"


# ---------------------------------------------------------------------------
# Models.
# ---------------------------------------------------------------------------

_MODELS: dict = {}


def _cached(key, build):
    if key not in _MODELS:
        _MODELS[key] = build()
    return _MODELS[key]


def _llama(layers: int, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cfg = LlamaConfig(
            vocab_size=HF_VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
            tie_word_embeddings=False,
        )
        return LlamaForCausalLM(cfg).eval()


def _gpt2(layers: int, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cfg = GPT2Config(
            vocab_size=HF_VOCAB,
            n_embd=32,
            n_layer=layers,
            n_head=4,
            n_positions=256,
            bos_token_id=None,
            eos_token_id=None,
            initializer_range=0.05,
        )
        return GPT2LMHeadModel(cfg).eval()


def _truncate(target, build, block_prefix: str, layers: int = 1):
    """A ``layers``-block copy of ``target``: its first blocks, embeddings, final norm
    and LM head (a draft that often agrees with the target)."""
    draft = build(layers, 0)
    state = {
        k: v
        for k, v in target.state_dict().items()
        if not k.startswith(block_prefix) or int(k[len(block_prefix) :].split(".")[0]) < layers
    }
    draft.load_state_dict(state)
    return draft


class HFSetup:
    """A target, a truncated draft and an independent draft on one device, with
    pristine copies (never wrapped by the decoder) for the references."""

    def __init__(self, arch: str, device: str):
        if arch == "llama":
            build, prefix = _llama, "model.layers."
            target = build(3, SEEDS["llama_target"])
            indep = build(1, SEEDS["llama_indep_draft"])
        else:
            build, prefix = _gpt2, "transformer.h."
            target = build(2, SEEDS["gpt2_target"])
            indep = build(1, SEEDS["gpt2_indep_draft"])
        trunc = _truncate(target, build, prefix)
        self.device = torch.device(device)
        self.pristine = copy.deepcopy(target).to(self.device)
        self.pristine_draft = copy.deepcopy(trunc).to(self.device)
        self.target, self.trunc, self.indep = (m.to(self.device) for m in (target, trunc, indep))
        self.num_layers = target.config.num_hidden_layers
        self._refs: dict = {}

    def ref(self, prompt: torch.Tensor, n: int) -> torch.Tensor:
        """The target's greedy continuation by ``model.generate`` (n tokens, CPU)."""
        key = tuple(prompt.tolist())
        have = self._refs.get(key)
        if have is None or have.numel() < n:
            ids = prompt[None].to(self.device)
            # An explicit all-ones attention mask: with a pad_token_id set, generate
            # would otherwise mask out prompt tokens equal to it.
            out = self.pristine.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max(n, MAX_NEW)
            )
            have = out[0, prompt.numel() :].cpu()
            assert have.numel() == max(n, MAX_NEW)
            self._refs[key] = have
        return have[:n]

    def refs(self, prompts, n):
        return [self.ref(p, n) for p in prompts]

    @torch.no_grad()
    def kv(self, ids: torch.Tensor, draft: bool = False):
        """Per layer (keys, values) ``[Hkv, L, D]`` of a from-scratch forward over ``ids``."""
        model = self.pristine_draft if draft else self.pristine
        pkv = model(ids[None].to(self.device), use_cache=True).past_key_values
        return [(layer.keys[0], layer.values[0]) for layer in pkv.layers]


def hf_setup(arch: str, device: str) -> HFSetup:
    if transformers is None:
        pytest.skip("transformers is not installed")
    return _cached(("hf", arch, device), lambda: HFSetup(arch, device))


class ToySetup:
    """The protocol model as target, its 1-layer truncation and an independent draft."""

    def __init__(self, device: str):
        self.device = torch.device(device)
        self.target = ToyLM(TOY_VOCAB, 32, 3, seed=SEEDS["toy_target"]).to(self.device)
        self.trunc = self.target.truncated(1)
        self.indep = ToyLM(TOY_VOCAB, 32, 1, seed=SEEDS["toy_indep_draft"]).to(self.device)
        self._refs: dict = {}

    def ref(self, prompt, n):
        key = tuple(prompt.tolist())
        if key not in self._refs or self._refs[key].numel() < n:
            self._refs[key] = self.target.greedy(prompt, max(n, MAX_NEW))
        return self._refs[key][:n]

    def refs(self, prompts, n):
        return [self.ref(p, n) for p in prompts]


def toy_setup(device: str) -> ToySetup:
    return _cached(("toy", device), lambda: ToySetup(device))


DRAFTERS = {
    "none": lambda d: None,
    "chain-adaptive": lambda d: ChainDrafter(d, k=3),
    "chain-fixed": lambda d: ChainDrafter(d, k=4, adaptive=False),
    "tree-default": lambda d: TreeDrafter(d),
    "tree-custom": lambda d: TreeDrafter(d, [[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 0, 0]]),
    "dynamic": lambda d: DynamicTreeDrafter(d, topk=3, depth=4, num_nodes=12),
    "prompt-lookup": lambda d: PromptLookupDrafter(k=4),
}
CACHES = {
    "contig": dict(paged=False),
    "paged1": dict(paged=True, page_size=1),
    "paged16": dict(paged=True, page_size=16),
}


# ---------------------------------------------------------------------------
# 1. Greedy exactness.
# ---------------------------------------------------------------------------


@needs_hf
@pytest.mark.parametrize("cache", list(CACHES))
@pytest.mark.parametrize("drafter", list(DRAFTERS))
@pytest.mark.parametrize("device", ALL_DEVICES)
def test_greedy_equals_hf_generate_llama(device, drafter, cache):
    """Batch of 4 ragged prompts, truncated draft: token-for-token equal to generate()."""
    s = hf_setup("llama", device)
    prompts = _prompts(PROMPT_LENS, HF_VOCAB)
    dec = sd.SpeculativeDecoder(s.target, DRAFTERS[drafter](s.trunc), **CACHES[cache])
    out = dec.generate(prompts, max_new_tokens=MAX_NEW)
    assert_rows_equal(out.new_tokens, s.refs(prompts, MAX_NEW), f"{drafter}/{cache}")
    for b, p in enumerate(prompts):
        assert torch.equal(out.sequences[b], torch.cat([p, out.new_tokens[b]]))
    assert out.stats.new_tokens == [MAX_NEW] * len(prompts)
    if drafter != "none":
        # The truncated draft is often right: steps commit several tokens, so the
        # compaction of accepted paths is what is being tested here.
        assert out.stats.tau > 1.2, out.stats.summary()


@needs_hf
@pytest.mark.parametrize("cache", ["contig", "paged16"])
@pytest.mark.parametrize("drafter", ["chain-adaptive", "tree-default", "dynamic"])
def test_greedy_equals_hf_generate_independent_draft(drafter, cache):
    """An unrelated random draft (mostly rejected) changes nothing."""
    s = hf_setup("llama", "cpu")
    prompts = _prompts(PROMPT_LENS, HF_VOCAB)
    out = sd.SpeculativeDecoder(s.target, DRAFTERS[drafter](s.indep), **CACHES[cache]).generate(
        prompts, max_new_tokens=MAX_NEW
    )
    assert_rows_equal(out.new_tokens, s.refs(prompts, MAX_NEW), drafter)


@needs_hf
@pytest.mark.parametrize("drafter", list(DRAFTERS))
def test_greedy_equals_hf_generate_batch1(drafter):
    s = hf_setup("llama", "cpu")
    prompt = _prompts((9,), HF_VOCAB, seed=11)[0]
    dec = sd.SpeculativeDecoder(s.target, DRAFTERS[drafter](s.trunc), paged=True, page_size=4)
    out = dec.generate(prompt, max_new_tokens=MAX_NEW)  # a 1-D tensor is one row
    assert len(out.new_tokens) == 1
    assert_rows_equal(out.new_tokens, [s.ref(prompt, MAX_NEW)], drafter)


@needs_hf
@pytest.mark.parametrize("cache", ["contig", "paged1"])
@pytest.mark.parametrize("drafter", ["none", "chain-fixed", "tree-default", "dynamic"])
def test_greedy_equals_hf_generate_gpt2(drafter, cache):
    """A non-Llama architecture (learned absolute positions, fused QKV, LayerNorm)."""
    s = hf_setup("gpt2", "cpu")
    prompts = _prompts(PROMPT_LENS, HF_VOCAB)
    for draft in (s.trunc, s.indep):
        out = sd.SpeculativeDecoder(s.target, DRAFTERS[drafter](draft), **CACHES[cache]).generate(
            prompts, max_new_tokens=MAX_NEW
        )
        assert_rows_equal(out.new_tokens, s.refs(prompts, MAX_NEW), f"gpt2 {drafter}")


@needs_hf
def test_wrapped_hf_model_still_generates():
    """Wrapping a model never changes what its own generate returns: its attention
    implementation is switched to "specdec" only during our forwards."""
    s = hf_setup("llama", "cpu")
    before = s.target.config._attn_implementation
    dec = sd.SpeculativeDecoder(s.target, ChainDrafter(s.trunc))
    dec.generate(_prompts((5,), HF_VOCAB, seed=4), max_new_tokens=4)
    assert s.target.config._attn_implementation == before != "specdec"
    p = _prompts((7,), HF_VOCAB, seed=3)[0]
    out = s.target.generate(
        p[None], attention_mask=torch.ones(1, 7, dtype=torch.long), do_sample=False, max_new_tokens=10
    )
    assert torch.equal(out[0, 7:], s.ref(p, 10))


@pytest.mark.parametrize("cache", ["contig", "paged1", "paged16"])
@pytest.mark.parametrize("drafter", list(DRAFTERS))
@pytest.mark.parametrize("device", ALL_DEVICES)
def test_greedy_equals_reference_toy_protocol_model(device, drafter, cache):
    """The protocol model of tests/toy_model.py (no transformers) as target and draft;
    the reference is a greedy loop over full-sequence plain-torch forwards."""
    s = toy_setup(device)
    prompts = _prompts(PROMPT_LENS, TOY_VOCAB)
    out = sd.SpeculativeDecoder(s.target, DRAFTERS[drafter](s.trunc), **CACHES[cache]).generate(
        prompts, max_new_tokens=MAX_NEW
    )
    assert_rows_equal(out.new_tokens, s.refs(prompts, MAX_NEW), f"toy {drafter}/{cache}")
    if drafter != "none":
        assert out.stats.tau > 1.2, out.stats.summary()


class _RepeatRootDrafter(sd.Drafter):
    """A drafter written only against specdec_cuda.drafting: it proposes the root
    token repeated k times, and counts what the loop tells it."""

    name = "repeat_root"

    def __init__(self, k: int):
        self.k = k
        self.started = 0
        self.feedback: list[sd.StepFeedback] = []

    def start(self, ctx: sd.DraftContext) -> None:
        super().start(ctx)
        self.started += 1

    def max_nodes(self) -> int:
        return self.k + 1

    def propose(self, ctx: sd.DraftContext) -> sd.Draft:
        roots = ctx.roots()
        tokens = roots[:, None].expand(-1, self.k + 1).contiguous()
        parents = torch.arange(-1, self.k, dtype=torch.int32, device=ctx.device).expand(ctx.batch_size, -1)
        return sd.Draft(tokens, parents.contiguous())

    def update(self, ctx: sd.DraftContext, feedback: sd.StepFeedback) -> None:
        super().update(ctx, feedback)
        self.feedback.append(feedback)


@pytest.mark.parametrize("cache", ["contig", "paged16"])
def test_custom_drafter_through_the_public_interface(cache):
    """A newcomer's drafter (only drafting.py's interface) is exact, and the loop tells
    it each step's acceptance and costs through StepFeedback."""
    s = toy_setup("cpu")
    prompts = _prompts(PROMPT_LENS, TOY_VOCAB)
    drafter = _RepeatRootDrafter(3)
    out = sd.SpeculativeDecoder(s.target, drafter, **CACHES[cache]).generate(prompts, max_new_tokens=MAX_NEW)
    assert_rows_equal(out.new_tokens, s.refs(prompts, MAX_NEW), f"custom/{cache}")
    assert drafter.started == 1
    assert len(drafter.feedback) == out.stats.steps
    for fb in drafter.feedback:
        assert fb.accepted.shape == (len(prompts),) and fb.active.dtype == torch.bool
        assert bool((fb.accepted[~fb.active] == 0).all()) and bool((fb.accepted <= 3).all())
        assert fb.draft_calls == 0 and fb.draft_s >= 0 and fb.target_s > 0
    accepted = sum(int(fb.accepted.sum()) for fb in drafter.feedback)
    assert out.stats.emitted_per_call_sum == accepted + out.stats.row_steps


@pytest.mark.parametrize("drafter", ["chain-adaptive", "tree-custom", "dynamic"])
def test_greedy_toy_independent_draft_and_bare_model_drafter(drafter):
    s = toy_setup("cpu")
    prompts = _prompts(PROMPT_LENS, TOY_VOCAB)
    out = sd.SpeculativeDecoder(s.target, DRAFTERS[drafter](s.indep)).generate(
        prompts, max_new_tokens=MAX_NEW
    )
    assert_rows_equal(out.new_tokens, s.refs(prompts, MAX_NEW), drafter)
    if drafter == "chain-adaptive":
        # a bare model as the drafter means ChainDrafter(model)
        dec = sd.SpeculativeDecoder(s.target, s.trunc)
        assert isinstance(dec.drafter, ChainDrafter)
        assert_rows_equal(
            dec.generate(prompts, max_new_tokens=MAX_NEW).new_tokens,
            s.refs(prompts, MAX_NEW),
            "bare draft model",
        )


@pytest.mark.parametrize(
    "drafter, mode",
    [
        ("chain-fixed", "greedy"),
        ("chain-fixed", "sampled"),
        ("tree-default", "greedy"),
        ("dynamic", "greedy"),
    ],
)  # (top-k tree drafts are not samples of p: no claim when sampling)
def test_target_as_its_own_draft_is_always_accepted(drafter, mode, seed):
    """Self-speculation: with the target as the draft, every draft is the target's
    own choice (greedy) or is drawn from p itself, so min(1, p/q) = 1 (sampled).  This
    checks that the draft forwards see the same context as the target's, and that
    each draft's probabilities are the ones it was drawn from."""
    s = toy_setup("cpu")
    prompts = _prompts(PROMPT_LENS, TOY_VOCAB)
    kw = dict(max_new_tokens=20)
    if mode == "sampled":
        kw.update(SAMPLED, seed=[seed + b for b in range(4)])
    out = sd.SpeculativeDecoder(s.target, DRAFTERS[drafter](s.target)).generate(prompts, **kw)
    acc = out.stats.acceptance_by_position
    assert acc and min(acc) >= (1.0 if mode == "greedy" else 0.99), out.stats.summary()
    if mode == "greedy":
        assert_rows_equal(out.new_tokens, s.refs(prompts, 20), "self draft")


def test_rows_are_independent_streams(seed):
    """Per-row seeds: two identical rows with one seed give identical samples, a third
    with another seed does not; a row's samples do not depend on its batch mates
    (fixed draft length)."""
    s = toy_setup("cpu")
    p = _prompts((6,), TOY_VOCAB, seed=19)[0]
    other = _prompts((9,), TOY_VOCAB, seed=23)[0]
    kw = dict(max_new_tokens=20, temperature=1.0)
    dec = sd.SpeculativeDecoder(s.target, ChainDrafter(s.trunc, k=3, adaptive=False))
    out = dec.generate([p, p, p, other], seed=[seed, seed, seed + 1, seed + 2], **kw)
    assert torch.equal(out.new_tokens[0], out.new_tokens[1])
    assert not torch.equal(out.new_tokens[0], out.new_tokens[2])
    alone = dec.generate([p], seed=seed, **kw)
    assert torch.equal(alone.new_tokens[0], out.new_tokens[0])


def test_empty_batch():
    s = toy_setup("cpu")
    out = sd.SpeculativeDecoder(s.target, ChainDrafter(s.trunc)).generate([], max_new_tokens=3)
    assert out.sequences == [] and out.new_tokens == [] and out.stats.steps == 0


def test_output_types():
    s = toy_setup("cpu")
    prompts = _prompts(PROMPT_LENS, TOY_VOCAB)
    out = sd.SpeculativeDecoder(s.target, ChainDrafter(s.trunc)).generate(prompts, max_new_tokens=5)
    assert isinstance(out, sd.GenerationOutput) and isinstance(out.stats, sd.GenerationStats)
    for seq, new in zip(out.sequences, out.new_tokens):
        assert seq.dtype == new.dtype == torch.int64 and seq.device.type == "cpu" and seq.dim() == 1


def _small_prefill_chunk(monkeypatch, chunk: int) -> None:
    """Make prompts longer than ``chunk`` go through chunked prefill (target and draft;
    the loop reads ``_forward.PREFILL_CHUNK`` at call time).  The tests check the
    number of prefill forwards, so a patch that stopped working would show."""
    monkeypatch.setattr(_forward, "PREFILL_CHUNK", chunk)


@needs_hf
@pytest.mark.parametrize("cache", ["contig", "paged16"])
@pytest.mark.parametrize("drafter", ["none", "chain-fixed", "tree-custom", "dynamic", "prompt-lookup"])
def test_greedy_chunked_prefill(monkeypatch, drafter, cache):
    """Prompts longer than the prefill chunk (patched down to 7) are prefilled in
    chunks, in a batch with short rows that ride along."""
    chunk = 7
    _small_prefill_chunk(monkeypatch, chunk)
    s = hf_setup("llama", "cpu")
    prompts = _prompts((40, 5, 23, 16), HF_VOCAB, seed=13)
    dec = sd.SpeculativeDecoder(s.target, DRAFTERS[drafter](s.trunc), **CACHES[cache])
    out = dec.generate(prompts, max_new_tokens=16)
    assert_rows_equal(out.new_tokens, s.refs(prompts, 16), f"chunked {drafter}")
    st = out.stats
    # the target prefilled the prompts minus their roots (39, 4, 22, 15 tokens) by the
    # rule of _forward.prefill
    want = prefill_forwards([39, 4, 22, 15], chunk, contiguous=cache == "contig")
    assert want == (11 if cache == "contig" else math.ceil(39 / chunk))
    assert st.target_calls - st.steps == want
    if drafter == "chain-fixed":
        # the draft's first step prefills the same way, then k forwards per step
        assert st.draft_calls == want + st.steps * 4


def prefill_forwards(remaining: list[int], chunk: int, contiguous: bool) -> int:
    """The forwards _forward.prefill runs: all rows together for as many tokens as the
    shortest has left; then, on a contiguous cache (layers allocated), each row alone;
    on a paged one, the rest together, padded."""
    rem, calls = list(remaining), 0
    while max(rem) > 0:
        least = min(rem)
        if least == 0 and contiguous and calls > 0:
            return calls + sum(math.ceil(r / chunk) for r in rem if r)
        n = min(least if least > 0 else max(rem), chunk)
        rem = [max(0, r - n) for r in rem]
        calls += 1
    return calls


@needs_hf
def test_greedy_prompt_longer_than_default_prefill_chunk():
    """A 530-token prompt with the real PREFILL_CHUNK (512), batched with a 6-token one:
    both rows' first 5 tokens together, then the long row alone in two chunks (524 tokens)."""
    assert _forward.PREFILL_CHUNK == 512
    s = hf_setup("llama", "cpu")
    prompts = _prompts((530, 6), HF_VOCAB, seed=17)
    out = sd.SpeculativeDecoder(s.target, ChainDrafter(s.trunc, k=3, adaptive=False)).generate(
        prompts, max_new_tokens=12
    )
    assert_rows_equal(out.new_tokens, s.refs(prompts, 12), "long prompt")
    assert out.stats.target_calls - out.stats.steps == prefill_forwards([529, 5], 512, contiguous=True) == 3


@needs_hf
@pytest.mark.parametrize("drafter", ["none", "chain-fixed", "tree-default", "dynamic", "prompt-lookup"])
def test_stop_tokens(drafter):
    """Each row stops at its first stop token (kept); other rows run to max_new_tokens."""
    s = hf_setup("llama", "cpu")
    prompts = _prompts(PROMPT_LENS, HF_VOCAB)
    refs = s.refs(prompts, MAX_NEW)
    stops = {int(refs[0][5]), int(refs[2][9])}
    want = []
    for r in refs:
        hit = [i for i, t in enumerate(r.tolist()) if t in stops]
        want.append(r[: hit[0] + 1] if hit else r)
    assert len(want[0]) <= 6 and len(want[2]) <= 10  # the stops do cut rows short
    dec = sd.SpeculativeDecoder(s.target, DRAFTERS[drafter](s.trunc))
    out = dec.generate(prompts, max_new_tokens=MAX_NEW, stop_tokens=sorted(stops))
    assert_rows_equal(out.new_tokens, want, f"stop {drafter}")
    assert out.stats.new_tokens == [len(w) for w in want]
    lens = dec.target_cache.lens.tolist()
    assert lens == [p.numel() + len(w) - 1 for p, w in zip(prompts, want)]


@needs_hf
@pytest.mark.parametrize("max_new", [1, 2, 7])
@pytest.mark.parametrize("drafter", ["chain-fixed", "tree-default", "prompt-lookup"])
def test_max_new_tokens_exact(drafter, max_new):
    """Steps that accept more than the budget left are cut to exactly max_new_tokens."""
    s = hf_setup("llama", "cpu")
    prompts = _prompts(PROMPT_LENS, HF_VOCAB)
    dec = sd.SpeculativeDecoder(s.target, DRAFTERS[drafter](s.trunc))
    out = dec.generate(prompts, max_new_tokens=max_new)
    assert [t.numel() for t in out.new_tokens] == [max_new] * len(prompts)
    assert_rows_equal(out.new_tokens, s.refs(prompts, max_new), f"max_new={max_new}")
    assert dec.target_cache.lens.tolist() == [p.numel() + max_new - 1 for p in prompts]


# ---------------------------------------------------------------------------
# 2. The KV cache holds exactly the committed tokens' K/V.
# ---------------------------------------------------------------------------

SAMPLED = dict(temperature=[1.0, 0.8, 0.0, 1.3], top_k=[0, 10, 0, 5], top_p=[1.0, 0.9, 1.0, 0.95])


def _stream_with_snapshots(dec, prompts, **kw):
    """Run dec.stream; after every step check the length invariant and snapshot the
    committed K/V of the target cache (and of the draft cache, if any)."""
    committed = [p.tolist() for p in prompts]
    snaps = []
    for step in dec.stream(prompts, **kw):
        for b, toks in enumerate(step.tokens):
            committed[b] += toks
        tc = dec.target_cache
        for b, c in enumerate(committed):
            assert int(tc.lens[b]) == len(c) - 1, (step.step, b)
        snap = {
            "target": [
                [tuple(x.clone() for x in tc.layer_kv(layer, b)) for layer in range(tc.num_layers)]
                for b in range(len(prompts))
            ]
        }
        dc = getattr(dec.drafter, "cache", None)
        if dc is not None:
            for b, c in enumerate(committed):
                assert int(dc.lens[b]) <= len(c) - 1
            snap["draft"] = [
                [tuple(x.clone() for x in dc.layer_kv(layer, b)) for layer in range(dc.num_layers)]
                for b in range(len(prompts))
            ]
        snaps.append(snap)
    return committed, snaps


def _compare_snapshots(snaps, refs_by_row, key, num_layers, atol=1e-4):
    assert snaps, "no steps"
    checked = 0
    for t, snap in enumerate(snaps):
        for b, layers in enumerate(snap[key]):
            assert len(layers) == num_layers
            for layer, (k, v) in enumerate(layers):
                n = k.shape[1]
                k_ref, v_ref = refs_by_row[b][layer]
                assert k.shape == k_ref[:, :n].shape, (key, t, b, layer)
                torch.testing.assert_close(
                    k,
                    k_ref[:, :n],
                    atol=atol,
                    rtol=1e-4,
                    msg=lambda m, t=t, b=b, layer=layer: f"{key} K step {t} row {b} layer {layer}: {m}",
                )
                torch.testing.assert_close(
                    v,
                    v_ref[:, :n],
                    atol=atol,
                    rtol=1e-4,
                    msg=lambda m, t=t, b=b, layer=layer: f"{key} V step {t} row {b} layer {layer}: {m}",
                )
                checked += n
    return checked


@needs_hf
@pytest.mark.parametrize("mode", ["greedy", "sampled"])
@pytest.mark.parametrize("cache", ["contig", "paged4"])
@pytest.mark.parametrize("drafter", ["chain-fixed", "tree-default"])
@pytest.mark.parametrize("device", ALL_DEVICES)
def test_kv_cache_equals_fresh_forward_llama(device, drafter, cache, mode, seed, record_property):
    s = hf_setup("llama", device)
    prompts = _prompts(PROMPT_LENS, HF_VOCAB)
    caches = dict(CACHES, paged4=dict(paged=True, page_size=4))
    dec = sd.SpeculativeDecoder(s.target, DRAFTERS[drafter](s.trunc), **caches[cache])
    kw = dict(max_new_tokens=20)
    if mode == "sampled":
        kw.update(SAMPLED, seed=[seed + b for b in range(len(prompts))])
        record_property("seed", seed)
    committed, snaps = _stream_with_snapshots(dec, prompts, **kw)
    assert len(snaps) > 1
    # K/V at position i depend on tokens 0..i only, so one forward over the final
    # committed sequence gives the reference for every step's prefix.
    final = [torch.tensor(c[:-1]) for c in committed]
    checked = _compare_snapshots(snaps, [s.kv(ids) for ids in final], "target", s.num_layers)
    assert checked > 0
    _compare_snapshots(snaps, [s.kv(ids, draft=True) for ids in final], "draft", 1)


@pytest.mark.parametrize("mode", ["greedy", "sampled"])
@pytest.mark.parametrize("cache", ["contig", "paged1"])
@pytest.mark.parametrize("drafter", ["dynamic", "prompt-lookup", "chain-adaptive"])
@pytest.mark.parametrize("device", ALL_DEVICES)
def test_kv_cache_equals_full_forward_toy(device, drafter, cache, mode, seed):
    s = toy_setup(device)
    prompts = _prompts(PROMPT_LENS, TOY_VOCAB)
    dec = sd.SpeculativeDecoder(s.target, DRAFTERS[drafter](s.trunc), **CACHES[cache])
    kw = dict(max_new_tokens=20)
    if mode == "sampled":
        kw.update(SAMPLED, seed=[seed + b for b in range(len(prompts))])
    committed, snaps = _stream_with_snapshots(dec, prompts, **kw)

    def kv(model, ids):
        with torch.no_grad():
            return [(k[0], v[0]) for k, v in model.full_kv(torch.tensor(ids)[None])]

    final = [c[:-1] for c in committed]
    _compare_snapshots(snaps, [kv(s.target, ids) for ids in final], "target", s.target.num_layers)
    if "draft" in snaps[0]:
        _compare_snapshots(snaps, [kv(s.trunc, ids) for ids in final], "draft", 1)


# ---------------------------------------------------------------------------
# 3. Sampling is lossless (chi-square goodness of fit).
# ---------------------------------------------------------------------------

ALPHA = 1e-6
STAT_V = 8
STAT_ROWS = 20_000
STAT_PROMPT = torch.tensor([5, 1, 4, 1])  # a repeat: prompt lookup finds an n-gram
T1 = dict(temperature=1.0, top_k=0, top_p=1.0)
T07 = dict(temperature=0.7, top_k=6, top_p=0.9)
STAT_DRAFTERS = {
    "chain": lambda d: ChainDrafter(d, k=3, adaptive=False),
    "tree": lambda d: TreeDrafter(d, [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0]]),
    "dynamic": lambda d: DynamicTreeDrafter(d, topk=2, depth=3, num_nodes=6, adaptive=False),
    "prompt-lookup": lambda d: PromptLookupDrafter(k=3, adaptive=False),
}
STAT_CASES = {
    "chain-T1": ("chain", T1),
    "tree-T1": ("tree", T1),
    "dynamic-T1": ("dynamic", T1),
    "prompt-lookup-T1": ("prompt-lookup", T1),
    "chain-T0.7-k6-p0.9": ("chain", T07),
}


def chi2_sf(stat: float, df: int) -> float:
    """P(chi2_df >= stat) = Q(df/2, stat/2), the regularised upper incomplete gamma."""
    if df <= 0:
        return 1.0 if stat == 0.0 else 0.0
    if math.isinf(stat):
        return 0.0
    return float(
        torch.special.gammaincc(
            torch.tensor(df / 2.0, dtype=torch.float64), torch.tensor(stat / 2.0, dtype=torch.float64)
        )
    )


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int, float]:
    """Goodness of fit of ``counts`` to ``probs`` (same shape): (statistic, df, p-value).
    Cells of expected count below 5 are pooled; a count in a cell of probability 0
    gives p = 0."""
    counts, probs = counts.flatten().double(), probs.flatten().double()
    rows = float(counts.sum())
    expected = probs / probs.sum() * rows
    zero = expected == 0
    if counts[zero].sum() > 0:
        return math.inf, 0, 0.0
    o, e = counts[~zero], expected[~zero]
    small = e < 5
    if bool(small.any()):
        o = torch.cat([o[~small], o[small].sum()[None]])
        e = torch.cat([e[~small], e[small].sum()[None]])
    stat = float(((o - e) ** 2 / e).sum())
    df = o.numel() - 1
    return stat, df, chi2_sf(stat, df)


def _params(n: int, cfg: dict):
    return (
        torch.full((n,), float(cfg["temperature"])),
        torch.full((n,), int(cfg["top_k"]), dtype=torch.int32),
        torch.full((n,), float(cfg["top_p"])),
    )


def exact_two_token_probs(model: ToyLM, prompt: torch.Tensor, cfg: dict) -> torch.Tensor:
    """P(x1, x2) = P(x1) P(x2 | x1) under the sampling transform, float64 ``[V, V]``."""
    v = model.vocab_size
    with torch.no_grad():
        l1 = model.full_logits(prompt[None])[:, -1]
        seqs = torch.cat([prompt.expand(v, -1), torch.arange(v)[:, None]], dim=1)
        l2 = model.full_logits(seqs)[:, -1]
    _check_top_p_margin(torch.cat([l1, l2]), cfg)
    p1 = reference.sampling_probs(l1, *_params(1, cfg))[0].double()
    p2 = reference.sampling_probs(l2, *_params(v, cfg)).double()
    joint = p1[:, None] * (p2 / p2.sum(-1, keepdim=True))
    return joint / joint.sum()


def _check_top_p_margin(logits: torch.Tensor, cfg: dict) -> None:
    """The case is well posed: no cumulative mass sits within 1e-4 of top_p, so float
    rounding in the cached forward cannot change which tokens top-p keeps."""
    if cfg["top_p"] >= 1.0:
        return
    z = logits.double() / cfg["temperature"]
    if 0 < cfg["top_k"] < z.shape[-1]:
        kth = z.topk(cfg["top_k"], dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    cum = z.softmax(-1).sort(-1, descending=True).values.cumsum(-1)
    assert float((cum - cfg["top_p"]).abs().min()) > 1e-4


@pytest.fixture(scope="module")
def stat_models():
    target = ToyLM(STAT_V, 16, 2, seed=SEEDS["stat_target"])
    return target, target.truncated(1)


@pytest.fixture(scope="module")
def stat_models_far():
    """The statistical target with an independent one-layer draft: drafts are rejected
    often enough that the verification rules' residual updates matter."""
    target = ToyLM(STAT_V, 16, 2, seed=SEEDS["stat_target"])
    return target, ToyLM(STAT_V, 16, 1, seed=SEEDS["stat_indep_draft"])


_STAT_RUNS: dict = {}


def _two_token_counts(decoder, cfg, base_seed, rows=STAT_ROWS, prompt=STAT_PROMPT):
    """One batched call: ``rows`` copies of the prompt, row seeds base_seed + i,
    two new tokens each -> counts ``[V, V]`` of (x1, x2)."""
    row_seeds = base_seed * rows + torch.arange(rows, dtype=torch.int64)
    out = decoder.generate([prompt] * rows, max_new_tokens=2, seed=row_seeds, **cfg)
    new = torch.stack(out.new_tokens)
    assert new.shape == (rows, 2)
    v = decoder.vocab_size
    return torch.bincount(new[:, 0] * v + new[:, 1], minlength=v * v).reshape(v, v), out.stats


def _stat_run(case, stat_models, seed):
    if case not in _STAT_RUNS:
        kind, cfg = STAT_CASES[case]
        target, draft = stat_models
        dec = sd.SpeculativeDecoder(target, STAT_DRAFTERS[kind](draft))
        _STAT_RUNS[case] = _two_token_counts(dec, cfg, seed)
    return _STAT_RUNS[case]


@pytest.mark.parametrize("case", list(STAT_CASES))
def test_sampling_is_lossless(case, stat_models, seed, record_property):
    kind, cfg = STAT_CASES[case]
    target, _ = stat_models
    counts, stats = _stat_run(case, stat_models, seed)
    want = exact_two_token_probs(target, STAT_PROMPT, cfg)
    stat, df, p = chi_square(counts, want)
    print(
        f"\nlossless {case}: chi2 = {stat:.1f}, df = {df}, p = {p:.3g} (alpha {ALPHA:g}); "
        f"{stats.summary()}; row seeds {seed * STAT_ROWS}+i"
    )
    record_property("p_value", p)
    record_property("chi2", stat)
    record_property("row_seed_base", seed * STAT_ROWS)
    # The drafts do get accepted (otherwise only the bonus-token path is tested).
    assert stats.acceptance_by_position[0] > 0.02, stats.summary()
    assert p > ALPHA, f"{case}: chi2 {stat:.1f} df {df} p {p:.3g}"


def test_lossless_check_rejects_the_draft_distribution(stat_models, seed, record_property):
    """Power, 1: the chain's samples, tested against the DRAFT model's exact
    distribution (a sampler that ignored the target), are rejected."""
    _, draft = stat_models
    counts, _ = _stat_run("chain-T1", stat_models, seed)
    stat, df, p = chi_square(counts, exact_two_token_probs(draft, STAT_PROMPT, T1))
    print(f"\nagainst the draft distribution: chi2 = {stat:.1f}, df = {df}, p = {p:.3g}")
    record_property("p_value", p)
    assert p < ALPHA


def _python_chain_verifier(rule: str):
    """A plain-torch replacement for ops.rejection_sample on sampled chains.

    ``correct``: accept x with probability min(1, p(x)/q(x)); at the first
    rejection draw from normalise(max(p - q, 0)); after the last draft, from p.
    ``always_accept``: accept every draft (emits the draft's distribution).
    ``resample_from_target``: the classic slip of drawing a rejected position's
    token from p instead of the residual max(p - q, 0).
    """

    def verify(tokens, parents, draft_probs, target_probs, seed, offset):
        assert draft_probs is not None
        batch, nodes = tokens.shape
        assert torch.equal(parents[0].long(), torch.arange(-1, nodes - 1)), "chains only"
        g = torch.Generator().manual_seed((int(seed[0]) * 1_000_003 + int(offset[0])) % 2**62)
        u = torch.rand(batch, nodes, generator=g, dtype=torch.float64)
        p, q = target_probs.double(), draft_probs.double()
        alive = torch.ones(batch, dtype=torch.bool)
        n = torch.ones(batch, dtype=torch.long)
        for i in range(1, nodes):
            x = tokens[:, i : i + 1]
            px, qx = p[:, i - 1].gather(1, x)[:, 0], q[:, i - 1].gather(1, x)[:, 0]
            ok = alive if rule == "always_accept" else alive & (u[:, i] * qx < px)
            n += ok.long()
            alive = ok
        rows = torch.arange(batch)
        p_last, q_last = p[rows, n - 1], q[rows, n - 1]
        w = p_last
        if rule == "correct":
            resid = (p_last - q_last).clamp(min=0)
            use = (n < nodes) & (resid.sum(-1) > 0)
            w = torch.where(use[:, None], resid, p_last)
        nxt = torch.multinomial(w.float(), 1, generator=g)[:, 0]
        idx = torch.arange(nodes).expand(batch, nodes)
        acc = torch.where(idx < n[:, None], idx, -1).int()
        return acc, n.int(), nxt

    return verify


@pytest.mark.parametrize(
    "rule, should_pass", [("correct", True), ("always_accept", False), ("resample_from_target", False)]
)
def test_lossless_check_has_teeth(rule, should_pass, stat_models, seed, monkeypatch, record_property):
    """Power, 2: the same harness with the verification step replaced (in the loop)
    by a plain-torch rule: the correct rule passes, the wrong ones are rejected."""
    target, draft = stat_models
    monkeypatch.setattr(ops, "rejection_sample", _python_chain_verifier(rule))
    dec = sd.SpeculativeDecoder(target, ChainDrafter(draft, k=2, adaptive=False))
    counts, stats = _two_token_counts(dec, T1, seed)
    stat, df, p = chi_square(counts, exact_two_token_probs(target, STAT_PROMPT, T1))
    print(f"\nrule {rule}: chi2 = {stat:.1f}, df = {df}, p = {p:.3g}; {stats.summary()}")
    record_property("p_value", p)
    if should_pass:
        assert p > ALPHA
    else:
        assert p < ALPHA


# ---------------------------------------------------------------------------
# 4. Streaming and statistics.
# ---------------------------------------------------------------------------

STREAM_DRAFTERS = {
    "none": (lambda d: NoDrafter(), 0),
    "chain-fixed": (lambda d: ChainDrafter(d, k=3, adaptive=False), 3),
    "chain-adaptive": (lambda d: ChainDrafter(d, k=2, k_max=5, cost_ratio=0.1), None),
    "tree-custom": (DRAFTERS["tree-custom"], 4),
    "dynamic-fixed": (lambda d: DynamicTreeDrafter(d, topk=3, depth=3, num_nodes=8, adaptive=False), 3),
    "prompt-lookup": (lambda d: PromptLookupDrafter(k=3, adaptive=False), 0),
}


@pytest.mark.parametrize("mode", ["greedy", "sampled"])
@pytest.mark.parametrize("drafter", list(STREAM_DRAFTERS))
def test_stream_and_stats(drafter, mode, seed):
    s = toy_setup("cpu")
    build, calls_per_step = STREAM_DRAFTERS[drafter]
    prompts = _prompts(PROMPT_LENS, TOY_VOCAB)
    kw = dict(max_new_tokens=20, stop_tokens=[int(s.ref(prompts[1], 20)[12])])
    if mode == "sampled":
        kw.update(SAMPLED, seed=[seed + b for b in range(len(prompts))])
    dec = sd.SpeculativeDecoder(s.target, build(s.trunc))
    d = dec.drafter
    # the deepest draft any step can propose
    k_max = {"none": 0, "tree-custom": 4}[drafter] if drafter in ("none", "tree-custom") else d.length.k_max
    steps, got = [], [[] for _ in prompts]
    finished_before = [False] * len(prompts)
    active_row_steps = 0
    it = dec.stream(prompts, **kw)
    while True:
        depth_now = d.draft_length  # what the next proposal uses
        try:
            out = next(it)
        except StopIteration:
            break
        steps.append(out)
        assert out.step == len(steps)
        for b, toks in enumerate(out.tokens):
            if finished_before[b]:  # finished rows emit nothing and stay finished
                assert toks == [] and out.finished[b]
            else:  # an active row emits the corrected/bonus token at least
                active_row_steps += 1
                assert 1 <= len(toks) <= depth_now + 1, (out.step, b, toks, depth_now)
            got[b] += toks
        finished_before = list(out.finished)
    assert all(steps[-1].finished)
    # generate() with the same arguments gives the same tokens (deterministic: fixed
    # draft lengths or a fixed cost ratio)
    ref = sd.SpeculativeDecoder(s.target, build(s.trunc)).generate(prompts, **kw)
    assert_rows_equal([torch.tensor(g, dtype=torch.long) for g in got], ref.new_tokens, "stream")
    if mode == "greedy":
        for b, p in enumerate(prompts):  # greedy with stops: the reference, cut
            r = s.ref(p, 20).tolist()
            cut = next((i + 1 for i, t in enumerate(r) if t in kw["stop_tokens"]), 20)
            assert got[b] == r[:cut]

    st = dec.stats
    assert st.steps == len(steps)
    assert st.batch_size == len(prompts)
    assert st.new_tokens == [len(g) for g in got]
    assert st.total_new_tokens == sum(len(g) for g in got)
    assert st.target_calls == st.steps + 1  # one prefill chunk
    assert st.row_steps == active_row_steps
    assert st.tau >= 1.0
    assert st.tau == pytest.approx(st.emitted_per_call_sum / st.row_steps)
    # tau counts accepted drafts + 1; emission can only be shorter (budget/stop cuts,
    # at most one cut per row)
    assert st.total_new_tokens <= st.emitted_per_call_sum <= st.total_new_tokens + len(prompts) * k_max
    assert sum(st.accepted_by_position) == st.emitted_per_call_sum - st.row_steps
    assert all(0.0 <= a <= 1.0 for a in st.acceptance_by_position)
    assert all(a <= p for a, p in zip(st.accepted_by_position, st.proposed_by_position))
    assert len(st.draft_lengths) == st.steps
    assert st.tokens_per_s > 0 and st.decode_tokens_per_s > 0 and st.wall_s > 0
    assert set(st.phase_s) == {"prefill", "draft", "target", "verify", "commit", "other"}
    assert all(v >= 0 for v in st.phase_s.values())
    assert sum(st.phase_s.values()) <= st.wall_s * 1.01 + 1e-3
    assert st.drafter == dec.drafter.name and st.drafter in st.summary()
    as_dict = st.as_dict()
    assert as_dict["total_new_tokens"] == st.total_new_tokens and as_dict["steps"] == st.steps
    if drafter == "none":
        assert st.tau == 1.0 and st.acceptance_by_position == [] and st.draft_calls == 0
        assert st.total_new_tokens == st.row_steps
    elif drafter == "prompt-lookup":
        assert st.draft_calls == 0
    else:
        assert st.draft_calls > 0
        if calls_per_step is not None:  # fixed draft lengths: exact forward counts
            assert st.draft_calls == st.steps * calls_per_step
    if drafter == "chain-fixed":
        # every active row-step proposed 3 drafts; acceptance can only fall with depth
        assert st.proposed_by_position == [st.row_steps] * 3
        acc = st.acceptance_by_position
        assert all(acc[j + 1] <= acc[j] for j in range(len(acc) - 1)), acc
        assert st.draft_lengths == [3] * st.steps
        assert st.acceptance_by_position[0] > 0  # non-trivial
    if drafter == "tree-custom":
        assert len(st.acceptance_by_position) == 4
        assert st.proposed_by_position == [st.row_steps] * 4


def test_stats_draft_lengths_are_the_lengths_each_step_used():
    """``GenerationStats.draft_lengths[i]`` should be the draft length step i proposed.
    For a chain that is also the number of draft forwards of the step, so
    sum(draft_lengths) == draft_calls.  The loop appends ``drafter.draft_length``
    after ``drafter.update`` (decoding.py, ``stats.draft_lengths.append``), i.e. the
    length of the NEXT step: the first step's length is missing and the last entry
    was never used."""
    s = toy_setup("cpu")
    p = _prompts((5,), TOY_VOCAB, seed=29)[0]
    drafter = ChainDrafter(s.trunc, k=2, k_max=6, cost_ratio=0.05)
    dec = sd.SpeculativeDecoder(s.target, drafter)
    used = []
    it = dec.stream([p], max_new_tokens=30)
    while True:
        k = drafter.draft_length  # what the coming proposal uses
        try:
            next(it)
        except StopIteration:
            break
        used.append(k)
    assert dec.stats.draft_calls == sum(used)  # the harness: one forward per chain token
    assert len(set(used)) > 1  # k did adapt, so an off-by-one shows
    assert dec.stats.draft_lengths == used


# ---------------------------------------------------------------------------
# 5. The adaptive draft length.
# ---------------------------------------------------------------------------


def _speedup(alpha, k, c):
    return (1 - alpha ** (k + 1)) / ((1 - alpha) * (k * c + 1))


def test_adaptive_all_accepted_rises_to_k_max():
    al = AdaptiveLength(3, k_min=1, k_max=9, cost_ratio=0.05)
    for _ in range(5):
        al.observe(torch.full((4,), al.k), al.k)
    assert al.k == 9 and al.alpha == 1.0


def test_adaptive_none_accepted_falls_to_k_min():
    al = AdaptiveLength(6, k_min=2, k_max=9, cost_ratio=0.05)
    al.observe(torch.zeros(4, dtype=torch.long), al.k)
    assert al.k == 2 and al.alpha == 0.0


def test_adaptive_fixed_cost_ratio_is_deterministic_and_optimal():
    pattern = [[3, 0, 1, 2], [2, 2, 0, 0], [1, 0, 3, 1], [3, 3, 2, 0]]
    runs = []
    for _ in range(2):
        al = AdaptiveLength(3, k_min=1, k_max=8, cost_ratio=0.3, decay=0.9)
        ks = []
        acc = rej = 0.0
        for accepted in pattern:
            k = al.k
            accepted = [min(a, k) for a in accepted]
            al.observe_cost(5.0, 1.0)  # ignored: the cost ratio is fixed
            al.observe(torch.tensor(accepted), k)
            acc = 0.9 * acc + sum(accepted)
            rej = 0.9 * rej + sum(a < k for a in accepted)
            alpha = min(max(acc / (acc + rej), 1e-3), 0.995)
            best = max(range(1, 9), key=lambda j: (_speedup(alpha, j, 0.3), -j))
            assert al.alpha == pytest.approx(acc / (acc + rej))
            assert al.k == best, (al.k, best, alpha)
            ks.append(al.k)
        assert al.cost == 0.3
        runs.append(ks)
    assert runs[0] == runs[1]
    assert runs[0] != [3] * len(pattern)  # the pattern does move k


def test_adaptive_measured_cost():
    al = AdaptiveLength(4, k_min=1, k_max=8, measure_cost=True)
    assert al.cost is None
    al.observe_cost(1.0, 2.0)
    assert al.cost == pytest.approx(0.5)
    al.observe_cost(0.0, 1.0)
    assert al.cost == pytest.approx(0.4)  # exponential average 0.8 / 0.2
    al.observe_cost(1.0, 0.0)  # no target timing: ignored
    assert al.cost == pytest.approx(0.4)


def test_adaptive_ignores_timing_unless_asked():
    """Same seed, same output by default: without measure_cost the timings are ignored."""
    al = AdaptiveLength(4, k_min=1, k_max=8)
    al.observe_cost(1.0, 2.0)
    assert al.cost is None


def test_model_drafter_cost_ratio_modes():
    s = toy_setup("cpu")
    prompts = _prompts(PROMPT_LENS, TOY_VOCAB)
    default = ChainDrafter(s.trunc, k=3)
    sd.SpeculativeDecoder(s.target, default).generate(prompts, max_new_tokens=4)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert default.length.cost_ratio == pytest.approx(params(s.trunc) / params(s.target))
    assert not default.length.measure_cost
    measured = ChainDrafter(s.trunc, k=3, cost_ratio="measured")
    sd.SpeculativeDecoder(s.target, measured).generate(prompts, max_new_tokens=8)
    assert measured.length.measure_cost and measured.length.cost is not None
    assert ChainDrafter(s.trunc, cost_ratio=0.3).length.cost == 0.3
    with pytest.raises(ValueError, match="cost_ratio must be a number, 'measured' or None"):
        ChainDrafter(s.trunc, cost_ratio="fast")


@pytest.mark.parametrize("drafter", ["chain-adaptive", "dynamic"])
def test_default_adaptive_drafters_reproduce_a_seed(drafter, seed):
    """Regression: the default adaptive K followed wall-clock timing, so the same seed
    gave different samples; now the default is deterministic."""
    s = toy_setup("cpu")
    prompts = _prompts(PROMPT_LENS, TOY_VOCAB)
    kw = dict(max_new_tokens=20, **SAMPLED, seed=[seed + b for b in range(4)])
    runs = [
        sd.SpeculativeDecoder(s.target, DRAFTERS[drafter](s.trunc)).generate(prompts, **kw) for _ in range(3)
    ]
    for r in runs[1:]:
        assert_rows_equal(r.new_tokens, runs[0].new_tokens, drafter)
        assert r.stats.draft_lengths == runs[0].stats.draft_lengths


def test_adaptive_disabled_keeps_k_and_reset_restores():
    al = AdaptiveLength(4, k_min=1, k_max=8, cost_ratio=0.1, enabled=False)
    al.observe(torch.zeros(3, dtype=torch.long), 4)
    al.observe(torch.zeros(3, dtype=torch.long), 4)
    assert al.k == 4 and al.alpha == 0.0
    al2 = AdaptiveLength(4, k_min=1, k_max=8, cost_ratio=0.1)
    al2.observe(torch.zeros(3, dtype=torch.long), 4)
    assert al2.k == 1
    al2.reset()
    assert al2.k == 4 and al2.alpha is None and al2.k_init == 4
    assert AdaptiveLength(3).k_max == 6  # default k_max: twice k


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k=0), "k_min <= k <= k_max"),
        (dict(k=3, k_min=4, k_max=8), "k_min <= k <= k_max"),
        (dict(k=5, k_max=4), "k_min <= k <= k_max"),
        (dict(k=3, cost_ratio=-0.1), "cost_ratio"),
    ],
)
def test_adaptive_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveLength(**kwargs)


def test_adaptive_length_resets_between_generations(seed):
    """A drafter's k adapts during a generation and starts from k_init in the next,
    so repeated calls with the same seeds give the same output."""
    s = toy_setup("cpu")
    prompts = _prompts(PROMPT_LENS, TOY_VOCAB)
    dec = sd.SpeculativeDecoder(s.target, ChainDrafter(s.trunc, k=2, k_max=6, cost_ratio=0.05))
    kw = dict(max_new_tokens=20, **SAMPLED, seed=[seed + b for b in range(4)])
    a = dec.generate(prompts, **kw)
    assert len(set(a.stats.draft_lengths)) > 1 or a.stats.draft_lengths[0] != 2  # k moved
    b = dec.generate(prompts, **kw)
    assert_rows_equal(a.new_tokens, b.new_tokens, "second generation")
    assert a.stats.draft_lengths == b.stats.draft_lengths


# ---------------------------------------------------------------------------
# 6. Bad input.
# ---------------------------------------------------------------------------


class _Tok:
    def __init__(self, vocab):
        self._vocab = vocab

    def get_vocab(self):
        return dict(self._vocab)


class _WrongShapeLM(ToyLM):
    def forward(self, tokens, positions, cache, tree_mask):
        return super().forward(tokens, positions, cache, tree_mask)[..., :-1]


class _TupleLM(ToyLM):
    def forward(self, tokens, positions, cache, tree_mask):
        return (super().forward(tokens, positions, cache, tree_mask),)


@pytest.fixture(scope="module")
def toy():
    return ToyLM(16, 16, 1, seed=1), ToyLM(16, 16, 1, seed=2)


def test_bad_vocab_and_tokenizers(toy):
    target, draft = toy
    other = ToyLM(17, 16, 1, seed=3)
    for d in (other, ChainDrafter(other), TreeDrafter(other), DynamicTreeDrafter(other)):
        with pytest.raises(ValueError, match="vocabulary"):
            sd.SpeculativeDecoder(target, d)
    with pytest.raises(ValueError, match="tokenizers have different vocabularies"):
        sd.SpeculativeDecoder(
            target, draft, tokenizer=_Tok({"a": 0, "b": 1}), draft_tokenizer=_Tok({"a": 0, "c": 1})
        )
    sd.SpeculativeDecoder(target, draft, tokenizer=_Tok({"a": 0}), draft_tokenizer=_Tok({"a": 0}))
    with pytest.raises(ValueError, match="page_size"):
        sd.SpeculativeDecoder(target, draft, paged=True, page_size=0)


def test_bad_models(toy):
    target, draft = toy
    with pytest.raises(TypeError, match="neither a transformers causal LM nor follows the protocol"):
        sd.SpeculativeDecoder(object())
    with pytest.raises(TypeError, match="vocab_size"):
        sd.SpeculativeDecoder(torch.nn.Linear(3, 3))
    with pytest.raises(TypeError, match="draft model"):
        sd.SpeculativeDecoder(target, ChainDrafter(object()))
    with pytest.raises(TypeError, match="protocol"):
        sd.SpeculativeDecoder(target, object())
    prompt = [torch.tensor([1, 2, 3])]
    for bad in (_WrongShapeLM(16, 16, 1), _TupleLM(16, 16, 1)):
        with pytest.raises(RuntimeError, match="target's forward returned logits of shape"):
            sd.SpeculativeDecoder(bad).generate(prompt, max_new_tokens=2)
        with pytest.raises(RuntimeError, match="draft model's forward returned logits"):
            sd.SpeculativeDecoder(target, ChainDrafter(bad)).generate(prompt, max_new_tokens=2)


@needs_hf
def test_bad_hf_models():
    with pytest.raises(TypeError, match="PreTrainedModel"):
        sd.HFModel(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="LM head"):
        sd.HFModel(_llama(1, 0).model)  # the bare LlamaModel has no LM head


@pytest.mark.parametrize(
    "inputs, kwargs, exc, match",
    [
        ([torch.tensor([], dtype=torch.long)], {}, ValueError, "empty"),
        ([[1, 2], []], {}, ValueError, "prompt 1 is empty"),
        (torch.zeros(2, 0, dtype=torch.long), {}, ValueError, "empty"),
        ([[1, 2, 3]], dict(max_new_tokens=0), ValueError, "max_new_tokens"),
        ([[1, 2, 3]], dict(max_new_tokens=-3), ValueError, "max_new_tokens"),
        ([[1, 2, 3]], dict(max_new_tokens=2.0), ValueError, "max_new_tokens"),
        ([[1, -1, 3]], {}, ValueError, r"token id -1 outside \[0, 16\)"),
        ([[1, 16, 3]], {}, ValueError, r"token id 16 outside \[0, 16\)"),
        (torch.tensor([[1, 2], [3, 99]]), {}, ValueError, "prompt 1 has token id 99"),
        ([[1, 2, 3]], dict(temperature=-0.5), ValueError, "temperature"),
        ([[1, 2, 3]], dict(temperature=float("nan")), ValueError, "temperature"),
        ([[1, 2, 3]], dict(temperature=1.0, top_p=0.0), ValueError, "top_p"),
        ([[1, 2, 3]], dict(temperature=1.0, top_p=1.5), ValueError, "top_p"),
        ([[1, 2, 3]], dict(temperature=1.0, top_p=float("nan")), ValueError, "top_p"),
        ([[1, 2, 3]], dict(temperature=1.0, top_k=-1), ValueError, "top_k"),
        (
            [[1, 2], [3, 4], [5]],
            dict(temperature=[1.0, 0.5]),
            ValueError,
            r"temperature must be a scalar or one value per row \(3\)",
        ),
        ([[1, 2], [3, 4]], dict(seed=[1, 2, 3]), ValueError, "seed must be a scalar or one value per row"),
        ([[1, 2], [3, 4]], dict(top_k=[[1, 2]]), ValueError, "top_k must be a scalar or one value per row"),
        ([[1, 2, 3]], dict(stop_tokens=[16]), ValueError, "stop_tokens"),
        ([[1, 2, 3]], dict(stop_tokens=[-1]), ValueError, "stop_tokens"),
        (torch.zeros(2, 3, 4, dtype=torch.long), {}, ValueError, r"\[B, L\]"),
        (torch.zeros(2, 3), {}, TypeError, "integer token ids"),
        ("hello", {}, TypeError, "input_ids must be a tensor or a list"),
        ([[1.5, 2.0]], {}, ValueError, "1-D sequence of token ids"),
        ([[[1, 2]]], {}, ValueError, "1-D sequence of token ids"),
        (
            torch.ones(2, 3, dtype=torch.long),
            dict(attention_mask=torch.ones(2, 4)),
            ValueError,
            "attention_mask shape",
        ),
        (
            torch.ones(2, 3, dtype=torch.long),
            dict(attention_mask=torch.ones(3)),
            ValueError,
            "attention_mask shape",
        ),
        ([[1, 2, 3]], dict(attention_mask=torch.ones(1, 3)), ValueError, "attention_mask is only for"),
    ],
)
def test_bad_generate_arguments(toy, inputs, kwargs, exc, match):
    target, draft = toy
    dec = sd.SpeculativeDecoder(target, ChainDrafter(draft, k=2))
    with pytest.raises(exc, match=match):
        dec.generate(inputs, **{"max_new_tokens": 2, **kwargs})
    with pytest.raises(exc, match=match):  # stream() checks eagerly, before iteration
        dec.stream(inputs, **{"max_new_tokens": 2, **kwargs})


@pytest.mark.parametrize(
    "choices, match",
    [
        ([[0, 0]], r"needs its parent \[0\]"),
        ([[0], [1], [1, 0, 0]], r"needs its parent \[1, 0\]"),
        ([[0], [-1]], "ranks must be >= 0"),
        ([[0], [0, -2]], "ranks must be >= 0"),
        ([[0], [1], [0]], "duplicate"),
        ([[0], []], "non-empty"),
        (["ab"], "non-empty list of ranks"),
        ([0, 1], "non-empty list of ranks"),
    ],
)
def test_bad_static_trees(toy, choices, match):
    with pytest.raises(ValueError, match=match):
        static_tree(choices)
    with pytest.raises(ValueError, match=match):
        TreeDrafter(toy[1], choices)


def test_bad_drafter_arguments(toy):
    target, draft = toy
    with pytest.raises(ValueError, match="at least one node"):
        TreeDrafter(draft, [])
    # a rank the vocabulary cannot provide: caught when generation starts
    dec = sd.SpeculativeDecoder(target, TreeDrafter(draft, [[0], [16]]))
    with pytest.raises(ValueError, match="rank 16 but the vocabulary has 16 tokens"):
        dec.generate([[1, 2]], max_new_tokens=2)
    for kw in (dict(topk=0), dict(depth=0), dict(num_nodes=1), dict(topk=-2)):
        with pytest.raises(ValueError, match="DynamicTreeDrafter"):
            DynamicTreeDrafter(draft, **kw)
    with pytest.raises(ValueError, match="ChainDrafter: k must be >= 1"):
        ChainDrafter(draft, k=0)
    with pytest.raises(ValueError, match="ChainDrafter: k must be >= 1"):
        ChainDrafter(draft, k=-1)
    with pytest.raises(ValueError, match="k_min <= k <= k_max"):
        ChainDrafter(draft, k=4, k_max=2)
    for kw in (dict(k=0), dict(min_ngram=0), dict(min_ngram=3, max_ngram=2)):
        with pytest.raises(ValueError, match="PromptLookupDrafter"):
            PromptLookupDrafter(**kw)


def test_dynamic_tree_topk_larger_than_vocab_is_rejected_clearly(toy):
    """topk > vocabulary: TreeDrafter checks its ranks against the vocabulary with a
    clear ValueError; DynamicTreeDrafter should do the same (not fail inside topk)."""
    target, draft = toy
    dec = sd.SpeculativeDecoder(target, DynamicTreeDrafter(draft, topk=17, depth=2, num_nodes=8))
    with pytest.raises(ValueError, match="topk|vocabulary"):
        dec.generate([[1, 2, 3]], max_new_tokens=3)


@pytest.mark.parametrize("cache", ["contig", "paged16"])
@pytest.mark.parametrize("case", ["topk8-depth6-nodes16", "topk4-depth14-nodes24"])
def test_dynamic_tree_draft_forwards_fit_in_the_caches(case, cache):
    """The decoder sizes its caches from ``drafter.max_nodes()`` (= num_nodes for a
    dynamic tree): capacity + max(prompt chunk, 2 * max_nodes + 1).  But
    DynamicTreeDrafter's draft forwards (``_level``) write the pending tokens plus
    every node expanded so far, (depth - 1) * topk of them at the last level, which
    is more than 2 * num_nodes + 2 for wide or deep trees (the default topk=4,
    num_nodes=24 with depth >= 14, e.g. an adaptive depth with depth_max >= 14).
    Near the end of the token budget that forward overflows the draft cache
    (CacheFullError) instead of generating."""
    s = toy_setup("cpu")
    prompts = _prompts(PROMPT_LENS, TOY_VOCAB)
    if case == "topk8-depth6-nodes16":  # 5 * 8 = 40 expanded nodes > 2 * 16 + 2
        drafter = DynamicTreeDrafter(s.trunc, topk=8, depth=6, num_nodes=16, adaptive=False)
    else:  # 13 * 4 = 52 > 2 * 24 + 2
        drafter = DynamicTreeDrafter(s.trunc, depth=14, adaptive=False)
    out = sd.SpeculativeDecoder(s.target, drafter, **CACHES[cache]).generate(prompts, max_new_tokens=40)
    assert_rows_equal(out.new_tokens, s.refs(prompts, 40), case)


def test_cache_capacity_overflow(toy):
    target, _ = toy
    k = torch.zeros(2, 1, 5, 4)
    cache = KVCache(2, 4)
    with pytest.raises(CacheFullError, match="only 0 slots were reserved"):
        cache.write(0, k, k)  # writes must be reserved first (a host-side check, no sync)
    with pytest.raises(CacheFullError, match="max_len=4"):
        cache.reserve(5)
    cache.reserve(4)  # exactly full is fine
    cache.write(0, k[:, :, :4], k[:, :, :4])
    cache.advance(1)  # lens grew: the reservation is gone
    with pytest.raises(CacheFullError, match="reserved"):
        cache.write(0, k[:, :, :1], k[:, :, :1])
    assert issubclass(CacheFullError, RuntimeError)
    paged = PagedKVCache(2, 8, page_size=4)
    with pytest.raises(CacheFullError, match="max_len=8"):
        paged.reserve(9)
    small = PagedKVCache(2, 16, page_size=4, num_pages=3)  # two rows need 2 pages each
    small.reserve(4)
    with pytest.raises(CacheFullError, match="out of pages"):
        small.reserve(8)
    # a protocol forward past the capacity raises before writing
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    parents = sd.tree.chain_parents(1, 5)
    for c in (KVCache(1, 4), PagedKVCache(1, 4, page_size=2)):
        with pytest.raises(CacheFullError):
            _forward.forward_tree(target, c, tokens, parents)
        assert int(c.lens[0]) == 0
    with pytest.raises(ValueError, match="max_len"):
        KVCache(1, 0)
    with pytest.raises(ValueError, match="page_size"):
        PagedKVCache(1, 4, page_size=0)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("mode", ["greedy", "sampled"])
@pytest.mark.parametrize("drafter", ["chain-fixed", "tree-custom", "prompt-lookup"])
def test_padded_batch_equals_prompt_list(drafter, mode, side, seed):
    """A padded [B, L] tensor with attention_mask gives what the list of prompts gives."""
    s = toy_setup("cpu")
    prompts = _prompts(PROMPT_LENS, TOY_VOCAB)
    width = max(p.numel() for p in prompts)
    ids = torch.full((len(prompts), width), 7, dtype=torch.int32)  # int32 ids are accepted
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for b, p in enumerate(prompts):
        cols = slice(width - p.numel(), width) if side == "left" else slice(0, p.numel())
        ids[b, cols] = p.int()
        mask[b, cols] = 1
    kw = dict(max_new_tokens=16)
    if mode == "sampled":
        kw.update(SAMPLED, seed=[seed + b for b in range(len(prompts))])
    a = sd.SpeculativeDecoder(s.target, DRAFTERS[drafter](s.trunc)).generate(prompts, **kw)
    b = sd.SpeculativeDecoder(s.target, DRAFTERS[drafter](s.trunc)).generate(ids, attention_mask=mask, **kw)
    assert_rows_equal(b.new_tokens, a.new_tokens, "padded")
    assert_rows_equal(b.sequences, a.sequences, "padded sequences")
    if mode == "greedy":
        assert_rows_equal(a.new_tokens, s.refs(prompts, 16), "padded greedy")
    # an unmasked full [B, L] tensor is B prompts of length L
    full = sd.SpeculativeDecoder(s.target, DRAFTERS[drafter](s.trunc)).generate(
        ids[:2, -3:], max_new_tokens=4
    )
    assert_rows_equal(full.sequences[:1], [torch.cat([ids[0, -3:].long(), full.new_tokens[0]])])


# ---------------------------------------------------------------------------
# 7. Determinism.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "drafter", ["none", "chain-fixed", "chain-fixed-cost", "tree-custom", "dynamic-fixed", "prompt-lookup"]
)
def test_same_seeds_same_samples(drafter, seed, record_property):
    s = toy_setup("cpu")
    build = {
        "chain-fixed-cost": lambda d: ChainDrafter(d, k=3, cost_ratio=0.1),
        "dynamic-fixed": STREAM_DRAFTERS["dynamic-fixed"][0],
        "prompt-lookup": STREAM_DRAFTERS["prompt-lookup"][0],
    }.get(drafter, DRAFTERS.get(drafter))
    prompts = _prompts(PROMPT_LENS, TOY_VOCAB)
    record_property("seed", seed)
    kw = dict(max_new_tokens=20, **SAMPLED)
    seeds = [seed + b for b in range(4)]
    a = sd.SpeculativeDecoder(s.target, build(s.trunc)).generate(prompts, seed=seeds, **kw)
    b = sd.SpeculativeDecoder(s.target, build(s.trunc)).generate(prompts, seed=seeds, **kw)
    assert_rows_equal(a.new_tokens, b.new_tokens, "same seeds")
    c = sd.SpeculativeDecoder(s.target, build(s.trunc)).generate(
        prompts, seed=[x + 1000 for x in seeds], **kw
    )
    # rows 0, 1, 3 sample; with 20 tokens each, other seeds change something
    assert any(not torch.equal(a.new_tokens[r], c.new_tokens[r]) for r in (0, 1, 3))
    # row 2 has temperature 0: greedy inside a sampled batch
    assert torch.equal(a.new_tokens[2], s.ref(prompts[2], 20))
    assert torch.equal(c.new_tokens[2], s.ref(prompts[2], 20))


@pytest.mark.parametrize("mode", ["greedy", "sampled"])
@pytest.mark.parametrize("drafter", ["none", "chain-fixed", "tree-default", "dynamic-fixed", "prompt-lookup"])
def test_contiguous_and_paged_give_identical_outputs(drafter, mode, seed):
    s = toy_setup("cpu")
    build = STREAM_DRAFTERS.get(drafter, (DRAFTERS.get(drafter),))[0]
    prompts = _prompts(PROMPT_LENS, TOY_VOCAB)
    kw = dict(max_new_tokens=20)
    if mode == "sampled":
        kw.update(SAMPLED, seed=[seed + b for b in range(4)])
    outs = {
        name: sd.SpeculativeDecoder(s.target, build(s.trunc), **cfg).generate(prompts, **kw)
        for name, cfg in (
            ("contig", {}),
            ("paged1", dict(paged=True, page_size=1)),
            ("paged5", dict(paged=True, page_size=5)),
        )
    }
    for name in ("paged1", "paged5"):
        assert_rows_equal(outs[name].new_tokens, outs["contig"].new_tokens, name)
        assert outs[name].stats.steps == outs["contig"].stats.steps


@pytest.mark.parametrize(
    "params",
    [
        dict(temperature=1.0, top_k=1),
        dict(temperature=0.5, top_p=1e-6),
        dict(temperature=[0.0, 2.0, 1.0, 0.3], top_k=[0, 1, 1, 1]),
    ],
    ids=["top_k=1", "top_p=1e-6", "mixed"],
)
@pytest.mark.parametrize("drafter", ["chain-fixed", "tree-default", "prompt-lookup"])
def test_degenerate_sampling_equals_greedy(drafter, params, seed):
    """Sampling whose transform keeps one token (top_k = 1, a tiny top_p) is greedy:
    the sampled path (sampling_probs + rejection_sample) must give the greedy output."""
    s = toy_setup("cpu")
    prompts = _prompts(PROMPT_LENS, TOY_VOCAB)
    out = sd.SpeculativeDecoder(s.target, DRAFTERS[drafter](s.trunc)).generate(
        prompts, max_new_tokens=20, seed=[seed + b for b in range(4)], **params
    )
    assert_rows_equal(out.new_tokens, s.refs(prompts, 20), f"{params}")


def test_decoder_reuse_across_batches():
    """One decoder, several generations of different batch sizes: no state leaks."""
    s = toy_setup("cpu")
    prompts = _prompts(PROMPT_LENS, TOY_VOCAB)
    for drafter in ("chain-adaptive", "dynamic", "prompt-lookup"):
        dec = sd.SpeculativeDecoder(s.target, DRAFTERS[drafter](s.trunc), paged=True, page_size=3)
        for batch in (prompts, prompts[2:], prompts[:1], prompts):
            out = dec.generate(batch, max_new_tokens=12)
            assert_rows_equal(out.new_tokens, s.refs(batch, 12), f"{drafter} reuse")
            assert dec.target_cache.batch_size == len(batch)


# ---------------------------------------------------------------------------
# 8. Verification methods (SpeculativeDecoder(verification=...)) and the
#    stochastic tree drafter (siblings drawn without replacement).
# ---------------------------------------------------------------------------

STOCHASTIC = lambda d: StochasticTreeDrafter(d, branching=(3, 2, 1))  # noqa: E731


@needs_hf
@pytest.mark.parametrize("cache", ["contig", "paged16"])
@pytest.mark.parametrize("device", ALL_DEVICES)
def test_stochastic_tree_greedy_equals_hf_generate_llama(device, cache):
    s = hf_setup("llama", device)
    prompts = _prompts(PROMPT_LENS, HF_VOCAB)
    for verification in ("tokenwise", "traversal"):  # greedy steps use verify_greedy either way
        dec = sd.SpeculativeDecoder(s.target, STOCHASTIC(s.trunc), verification=verification, **CACHES[cache])
        out = dec.generate(prompts, max_new_tokens=MAX_NEW)
        assert_rows_equal(out.new_tokens, s.refs(prompts, MAX_NEW), f"stochastic/{cache}")
        assert out.stats.tau > 1.2, out.stats.summary()
    indep = sd.SpeculativeDecoder(s.target, STOCHASTIC(s.indep), **CACHES[cache])
    assert_rows_equal(indep.generate(prompts, max_new_tokens=MAX_NEW).new_tokens, s.refs(prompts, MAX_NEW))
    one = _prompts((9,), HF_VOCAB, seed=11)[0]
    single = sd.SpeculativeDecoder(s.target, STOCHASTIC(s.trunc), **CACHES[cache]).generate(
        one, max_new_tokens=20
    )
    assert_rows_equal(single.new_tokens, [s.ref(one, 20)], "batch 1")


@pytest.mark.parametrize("cache", ["contig", "paged1", "paged16"])
@pytest.mark.parametrize("device", ALL_DEVICES)
def test_stochastic_tree_greedy_equals_reference_toy(device, cache):
    s = toy_setup(device)
    prompts = _prompts(PROMPT_LENS, TOY_VOCAB)
    for branching in ((3, 2, 1), (2, 2, 2, 1), (1, 1)):
        out = sd.SpeculativeDecoder(
            s.target, StochasticTreeDrafter(s.trunc, branching=branching), **CACHES[cache]
        ).generate(prompts, max_new_tokens=MAX_NEW)
        assert_rows_equal(out.new_tokens, s.refs(prompts, MAX_NEW), f"toy stochastic {branching}/{cache}")
        assert out.stats.tau > 1.2, out.stats.summary()


@needs_hf
@pytest.mark.parametrize("verification", ["tokenwise", "traversal"])
@pytest.mark.parametrize("mode", ["greedy", "sampled"])
@pytest.mark.parametrize("cache", ["contig", "paged4"])
def test_stochastic_tree_kv_cache_equals_fresh_forward_llama(cache, mode, verification, seed):
    s = hf_setup("llama", "cpu")
    prompts = _prompts(PROMPT_LENS, HF_VOCAB)
    caches = dict(CACHES, paged4=dict(paged=True, page_size=4))
    dec = sd.SpeculativeDecoder(s.target, STOCHASTIC(s.trunc), verification=verification, **caches[cache])
    kw = dict(max_new_tokens=20)
    if mode == "sampled":
        kw.update(SAMPLED, seed=[seed + b for b in range(len(prompts))])
    committed, snaps = _stream_with_snapshots(dec, prompts, **kw)
    assert len(snaps) > 1
    final = [torch.tensor(c[:-1]) for c in committed]
    assert _compare_snapshots(snaps, [s.kv(ids) for ids in final], "target", s.num_layers) > 0
    _compare_snapshots(snaps, [s.kv(ids, draft=True) for ids in final], "draft", 1)


@pytest.mark.parametrize("verification", ["tokenwise", "block", "traversal"])
@pytest.mark.parametrize("mode", ["greedy", "sampled"])
def test_verification_methods_kv_cache_equals_full_forward_toy(mode, verification, seed):
    s = toy_setup("cpu")
    prompts = _prompts(PROMPT_LENS, TOY_VOCAB)
    build = STOCHASTIC if verification != "block" else (lambda d: ChainDrafter(d, k=3, adaptive=False))
    dec = sd.SpeculativeDecoder(s.target, build(s.trunc), verification=verification, paged=True, page_size=1)
    kw = dict(max_new_tokens=20)
    if mode == "sampled":
        kw.update(SAMPLED, seed=[seed + b for b in range(len(prompts))])
    committed, snaps = _stream_with_snapshots(dec, prompts, **kw)

    def kv(model, ids):
        with torch.no_grad():
            return [(k[0], v[0]) for k, v in model.full_kv(torch.tensor(ids)[None])]

    final = [c[:-1] for c in committed]
    _compare_snapshots(snaps, [kv(s.target, ids) for ids in final], "target", s.target.num_layers)
    _compare_snapshots(snaps, [kv(s.trunc, ids) for ids in final], "draft", 1)


def test_stochastic_tree_draft_contract():
    """Each proposal: siblings distinct, drawn from the draft's sampling_probs row of their
    parent (tokens of probability 0 only as fillers, once the row has no mass left for
    them); draft_probs holds those ORIGINAL rows (leaves: zero); siblings is
    "without_replacement"."""
    s = toy_setup("cpu")
    drafter = STOCHASTIC(s.trunc)
    seen = []
    orig = drafter.propose

    def recording(ctx):
        d = orig(ctx)
        seen.append((ctx.seq.clone(), ctx.seq_lens.clone(), ctx.temperature, ctx.top_k, ctx.top_p, d))
        return d

    drafter.propose = recording
    prompts = _prompts(PROMPT_LENS, TOY_VOCAB)
    sd.SpeculativeDecoder(s.target, drafter).generate(
        prompts, max_new_tokens=12, seed=[5, 6, 7, 8], **SAMPLED
    )
    parents = drafter.parents
    kids = [[c for c in range(len(parents)) if parents[c] == u] for u in range(len(parents))]
    fillers = 0
    for seq, lens, t, k, p, d in seen[:4]:
        assert d.siblings == "without_replacement" and d.draft_probs is not None
        assert d.draft_probs.shape == (len(prompts), len(parents), TOY_VOCAB)
        for b in range(len(prompts)):
            ctx_ids = seq[b, : int(lens[b])]
            for u, ch in enumerate(kids):
                row = d.draft_probs[b, u]
                if not ch:
                    assert bool((row == 0).all())
                    continue
                path = []
                v = u
                while v > 0:
                    path.append(int(d.tokens[b, v]))
                    v = parents[v]
                ids = torch.cat([ctx_ids, torch.tensor(path[::-1], dtype=torch.long)])
                with torch.no_grad():
                    logits = s.trunc.full_logits(ids[None])[:, -1]
                want = reference.sampling_probs(logits, t[b : b + 1], k[b : b + 1], p[b : b + 1])[0]
                torch.testing.assert_close(row, want, atol=1e-5, rtol=1e-4)
                toks = [int(d.tokens[b, c]) for c in ch]
                assert len(set(toks)) == len(toks), (b, u, toks)
                support = int((row > 0).sum())
                for j, x in enumerate(toks):
                    if j < support:
                        assert float(row[x]) > 0, (b, u, toks)  # a draw
                    else:
                        fillers += 1
    assert fillers > 0  # the greedy row (temperature 0) and top-k rows exercise the fillers


@pytest.mark.parametrize("verification", ["tokenwise", "traversal"])
def test_stochastic_tree_target_as_its_own_draft_is_always_accepted(verification, seed):
    """q = p: every drawn child is the target's own sample, so it is accepted (RSD and
    traversal alike) down to the leaves."""
    s = toy_setup("cpu")
    prompts = _prompts(PROMPT_LENS, TOY_VOCAB)
    kw = dict(max_new_tokens=20, seed=[seed + b for b in range(4)], temperature=1.0)
    out = sd.SpeculativeDecoder(s.target, STOCHASTIC(s.target), verification=verification).generate(
        prompts, **kw
    )
    acc = out.stats.acceptance_by_position
    assert len(acc) == 3 and min(acc) >= 0.99, out.stats.summary()


def test_block_equals_traversal_on_chains_in_the_loop(seed):
    """On chains the op returns the same verdicts for block and traversal: whole sampled
    generations agree."""
    s = toy_setup("cpu")
    prompts = _prompts(PROMPT_LENS, TOY_VOCAB)
    kw = dict(max_new_tokens=24, seed=[seed + b for b in range(4)], **SAMPLED)
    outs = {
        v: sd.SpeculativeDecoder(
            s.target, ChainDrafter(s.trunc, k=4, adaptive=False), verification=v
        ).generate(prompts, **kw)
        for v in ("block", "traversal", "tokenwise")
    }
    assert_rows_equal(outs["block"].new_tokens, outs["traversal"].new_tokens, "block vs traversal")
    assert outs["block"].stats.steps == outs["traversal"].stats.steps
    assert any(not torch.equal(a, b) for a, b in zip(outs["block"].new_tokens, outs["tokenwise"].new_tokens))


@pytest.mark.parametrize("verification", ["tokenwise", "block", "traversal"])
def test_verification_same_seeds_same_samples_and_greedy_rows(verification, seed):
    s = toy_setup("cpu")
    build = (lambda d: ChainDrafter(d, k=3, adaptive=False)) if verification == "block" else STOCHASTIC
    prompts = _prompts(PROMPT_LENS, TOY_VOCAB)
    kw = dict(max_new_tokens=20, **SAMPLED)
    seeds = [seed + b for b in range(4)]
    run = lambda sd_seeds: sd.SpeculativeDecoder(
        s.target, build(s.trunc), verification=verification
    ).generate(  # noqa: E731
        prompts, seed=sd_seeds, **kw
    )
    a, b, c = run(seeds), run(seeds), run([x + 1000 for x in seeds])
    assert_rows_equal(a.new_tokens, b.new_tokens, "same seeds")
    assert any(not torch.equal(a.new_tokens[r], c.new_tokens[r]) for r in (0, 1, 3))
    # row 2 has temperature 0: greedy inside a sampled batch (its drafts: the top tokens)
    assert torch.equal(a.new_tokens[2], s.ref(prompts[2], 20))


@pytest.mark.parametrize("verification", ["tokenwise", "traversal"])
@pytest.mark.parametrize(
    "params",
    [dict(temperature=1.0, top_k=1), dict(temperature=[0.0, 2.0, 1.0, 0.3], top_k=[0, 1, 1, 1])],
    ids=["top_k=1", "mixed"],
)
def test_stochastic_tree_degenerate_sampling_equals_greedy(params, verification, seed):
    s = toy_setup("cpu")
    prompts = _prompts(PROMPT_LENS, TOY_VOCAB)
    out = sd.SpeculativeDecoder(s.target, STOCHASTIC(s.trunc), verification=verification).generate(
        prompts, max_new_tokens=20, seed=[seed + b for b in range(4)], **params
    )
    assert_rows_equal(out.new_tokens, s.refs(prompts, 20), f"{params}")


class _TreeOnceDrafter(_RepeatRootDrafter):
    """A custom drafter (proposes_chains unknown) whose proposals are stars."""

    def propose(self, ctx):
        d = super().propose(ctx)
        return sd.Draft(d.tokens, torch.zeros_like(d.parents).index_fill_(1, torch.tensor([0]), -1))


def test_verification_argument_errors(toy):
    target, draft = toy
    with pytest.raises(
        ValueError, match="verification must be 'tokenwise', 'block' or 'traversal', got 'greedy'"
    ):
        sd.SpeculativeDecoder(target, ChainDrafter(draft), verification="greedy")
    for drafter in (TreeDrafter(draft), StochasticTreeDrafter(draft, branching=(2, 1))):
        with pytest.raises(
            ValueError, match="verification='block' verifies chains only, but the .* proposes trees"
        ):
            sd.SpeculativeDecoder(target, drafter, verification="block")
    # chains are fine: a chain-shaped static tree, a (1, 1) stochastic tree, prompt lookup
    for drafter in (
        TreeDrafter(draft, [[0], [0, 0]]),
        StochasticTreeDrafter(draft, (1, 1)),
        PromptLookupDrafter(),
    ):
        out = sd.SpeculativeDecoder(target, drafter, verification="block").generate(
            [[1, 2, 3]], max_new_tokens=6, temperature=1.0, seed=3
        )
        assert out.new_tokens[0].numel() == 6
    # drafters whose shape is only known per proposal: refused at the first step that is a tree
    for drafter in (DynamicTreeDrafter(draft, topk=2, depth=2, num_nodes=4), _TreeOnceDrafter(2)):
        dec = sd.SpeculativeDecoder(target, drafter, verification="block")
        with pytest.raises(
            ValueError, match="verification='block' verifies chains only, but the .* proposed a tree"
        ):
            dec.generate([[1, 2, 3]], max_new_tokens=4, temperature=1.0, seed=1)
    for kw in (dict(branching=()), dict(branching=(0,)), dict(branching=(2, 1.5)), dict(branching=(True,))):
        with pytest.raises(ValueError, match="StochasticTreeDrafter: branching"):
            StochasticTreeDrafter(draft, **kw)
    dec = sd.SpeculativeDecoder(target, StochasticTreeDrafter(draft, branching=(17,)))
    with pytest.raises(ValueError, match="branching 17 exceeds the vocabulary"):
        dec.generate([[1, 2]], max_new_tokens=2)


# Loop losslessness of every verification method (the harness of section 3).
VERIFY_DRAFTERS = {
    "chain": lambda d: ChainDrafter(d, k=3, adaptive=False),
    "stochastic": lambda d: StochasticTreeDrafter(d, branching=(4, 2)),
}
VERIFY_CASES = {
    "chain-block-T1": ("chain", "block", T1),
    "chain-block-T0.7-k6-p0.9": ("chain", "block", T07),
    "chain-traversal-T1": ("chain", "traversal", T1),
    "stochastic-rsd-T1": ("stochastic", "tokenwise", T1),
    "stochastic-rsd-T0.7-k6-p0.9": ("stochastic", "tokenwise", T07),
    "stochastic-traversal-T1": ("stochastic", "traversal", T1),
    "stochastic-traversal-T0.7-k6-p0.9": ("stochastic", "traversal", T07),
}


@pytest.mark.parametrize("case", list(VERIFY_CASES))
def test_sampling_is_lossless_with_each_verification(case, stat_models_far, seed, record_property):
    kind, verification, cfg = VERIFY_CASES[case]
    target, draft = stat_models_far
    dec = sd.SpeculativeDecoder(target, VERIFY_DRAFTERS[kind](draft), verification=verification)
    counts, stats = _two_token_counts(dec, cfg, seed)
    stat, df, p = chi_square(counts, exact_two_token_probs(target, STAT_PROMPT, cfg))
    print(
        f"\nlossless {case}: chi2 = {stat:.1f}, df = {df}, p = {p:.3g} (alpha {ALPHA:g}); "
        f"{stats.summary()}; row seeds {seed * STAT_ROWS}+i"
    )
    record_property("p_value", p)
    record_property("chi2", stat)
    assert stats.acceptance_by_position[0] > 0.02, stats.summary()
    assert p > ALPHA, f"{case}: chi2 {stat:.1f} df {df} p {p:.3g}"


class _SiblingsReportedIid(StochasticTreeDrafter):
    """Drafts without replacement but reports iid siblings: the verifier's rule no longer
    matches the drafting."""

    def draft(self, ctx):
        d = super().draft(ctx)
        d.siblings = "iid"
        return d


@pytest.mark.parametrize("verification", ["tokenwise", "traversal"])
def test_lossless_check_rejects_a_siblings_mismatch(verification, stat_models_far, seed, record_property):
    """Power: the same harness (models, tree, rows), with the stochastic tree's siblings
    declared iid."""
    target, draft = stat_models_far
    dec = sd.SpeculativeDecoder(
        target, _SiblingsReportedIid(draft, branching=(4, 2)), verification=verification
    )
    counts, stats = _two_token_counts(dec, T1, seed)
    stat, df, p = chi_square(counts, exact_two_token_probs(target, STAT_PROMPT, T1))
    print(
        f"\nsiblings mismatch ({verification}): chi2 = {stat:.1f}, df = {df}, p = {p:.3g}; {stats.summary()}"
    )
    record_property("p_value", p)
    assert p < ALPHA


def test_kv_cache_row_view_writes_into_the_batch():
    """KVCache.row(b): a one-row cache whose writes, advance and truncate land in row b."""
    from specdec_cuda.cache import KVCache

    cache = KVCache(3, 10)
    with pytest.raises(RuntimeError, match="first forward"):
        cache.row(0)
    cache.reserve(2)
    k = torch.randn(3, 2, 2, 4)
    cache.write(0, k, k + 1)
    cache.advance(torch.tensor([2, 1, 0]))
    with pytest.raises(IndexError, match="out of range"):
        cache.row(3)
    row = cache.row(1)
    assert row.batch_size == 1 and int(row.lens[0]) == 1
    row.reserve(3)
    k1 = torch.randn(1, 2, 3, 4)
    row.write(0, k1, k1 * 2)
    row.advance(3)
    assert cache.lens.tolist() == [2, 4, 0]
    assert torch.equal(cache.k[0][1, :, 1:4], k1[0]) and torch.equal(cache.v[0][1, :, 1:4], 2 * k1[0])
    assert torch.equal(cache.k[0][0, :, :2], k[0])  # other rows untouched
    row.truncate(torch.tensor([2], dtype=torch.int32))
    assert cache.lens.tolist() == [2, 2, 0]
