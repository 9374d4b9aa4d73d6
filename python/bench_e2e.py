"""End-to-end decoding benchmark: our loop (plain and speculative) vs transformers.

Usage:
    python python/bench_e2e.py [--json] [--quick] [--device cpu|cuda] [--threads N]
        [--target DIR --draft DIR | --random] [--max-new-tokens N] [--prompts N]
        [--repeats N] [--k K] [--batch B] [--eos] [--out FILE]
    python python/bench_e2e.py --verification [--temperatures 1.0,0.7] [--prompts N]
        [--max-new-tokens N] [--repeats N] [--verification-rows R] [--threads N] [--json]
        [--out FILE]

One run, one target and one draft, greedy decoding (temperature 0), and these
methods:

hf_generate
    transformers' ``target.generate(input_ids, do_sample=False)``: the baseline of
    every ``speedup``.
ours_autoregressive
    our loop with ``NoDrafter`` (plain decoding through our ops and caches).
chain_K / chain_adaptive
    ``ChainDrafter(draft, k=K, adaptive=False)`` and ``adaptive=True`` (starts at K,
    K in [1, 2K], chosen online from the measured acceptance and cost).
tree
    ``TreeDrafter(draft)`` with the default 16-node static tree.
dynamic_tree
    ``DynamicTreeDrafter(draft)`` (EAGLE-2 style; topk 4, depth 5, 24 nodes).
prompt_lookup
    ``PromptLookupDrafter()`` (n-gram drafts from the context, no draft model).
hf_assisted_K_constant
    transformers' assisted generation ``target.generate(input_ids,
    assistant_model=draft, do_sample=False)`` with the draft's generation config
    set to ``num_assistant_tokens=K``, ``num_assistant_tokens_schedule="constant"``
    and ``assistant_confidence_threshold=0`` (no early stop): exactly K drafts per
    step, like chain_K.  (transformers reads these three from
    ``assistant_model.generation_config``, not from ``generate``'s kwargs.)
hf_assisted_heuristic
    the same with ``num_assistant_tokens_schedule="heuristic"`` starting at K (+2
    after a step that accepts every draft, -1 otherwise) and no confidence stop;
    the draft config is reset before every call (transformers keeps the adapted
    value across calls).
hf_assisted_default
    the draft's generation config as loaded, i.e. transformers' defaults where it
    sets none; in transformers 5.x: 20 assistant tokens, schedule "constant" (not
    "heuristic", the default of older releases), and drafting stops early when the
    draft's probability of its token is below ``assistant_confidence_threshold``
    0.4 (which adapts only when scikit-learn is installed).  A note line says
    which values were used.
ours_autoregressive / chain_K with batch B
    our loop with B prompts per call (``--batch``, default 4; 0 or 1: skip).
vllm_plain / vllm_ngram_K / vllm_draft_K (and vllm_plain / vllm_draft_K with batch B)
    vLLM's ``LLM`` on the same token ids, when the vLLM environment exists
    (``.venv-vllm``, made by ``scripts/_vllm_env.sh``; ``--vllm PYTHON`` names another
    interpreter, ``--no-vllm`` skips them) and the models are the bundled pair on the
    CPU: plain decoding, ``ngram`` speculation (K drafts, n-grams of 1-3) and the
    bundled draft as ``draft_model`` (K drafts).  Each runs in its own worker process
    (``python/bench_vllm.py``'s), with the same torch thread count, prefix caching off
    (every round repeats the prompts) and EOS ignored (not with ``--eos``).  Their
    time is the wall clock of ``LLM.generate`` for the prompt (or the batch).

Measurement.  Defaults: 4 prompts, 128 new tokens, 3 rounds, K=4.  Batch 1: each
prompt alone.  One warm-up call per method (first
prompt), then ``--repeats`` rounds; every round runs every method on every prompt
(interleaved, so that load drift on a shared machine hits all methods alike).
Time = wall clock of the whole call (prefill included; CUDA synchronised), the
median over rounds per prompt; ``tokens_per_s`` = all new tokens / the sum of the
prompts' median times; ``speedup`` = tokens_per_s / hf_generate's.  Generation is
fixed-length: ``max_new_tokens`` per prompt, EOS ignored by every method (``--eos``:
every method stops at the EOS token instead).

Columns:

* ``tau``: new tokens per target forward that produced tokens (our loop: new tokens
  / ``GenerationStats.row_steps``, i.e. ``GenerationStats.tau`` without the drafts
  of the last step that the token budget cut off; transformers: new tokens / target
  forward calls, counted with a forward hook: the prompt's forward yields the first
  token there, while our prefill yields none and is not counted; both are 1.0 for
  plain decoding).
* ``alpha`` (chain rows): per-token acceptance, the truncated-geometric MLE
  ``A / (A + R)`` over all steps: A = accepted drafts, R = steps that accepted
  fewer drafts than they proposed.  Our loop: per step from ``decoder.stream``
  (``GenerationStats.proposed_by_position`` / ``accepted_by_position`` deltas);
  transformers: per step from the target's forward calls (tokens fed and the KV
  cache length before each call, which grows by accepted + 1 per step).
* ``c`` (chain rows): draft cost per drafted token / target single-token forward.
  Our rows: (the row's ``phase_s['draft']`` / ``draft_calls``) / (ours_autoregressive's
  ``phase_s['target']`` / ``steps``); the draft phase is everything the drafter
  does per step, the target phase of plain decoding is one single-token forward
  per step.  prompt_lookup: draft phase / drafted tokens (no model).
  transformers rows: mean time of the draft model's forwards in that run (each
  drafts one token; a step's first one also consumes the tokens the draft has not
  seen) / mean time of the target's single-token forwards in hf_generate (forward
  hooks around the HF modules: the forwards alone, without generate's per-step
  work).  Batch rows: relative to ours_autoregressive at the same batch.
* ``ideal_speedup``: Leviathan et al. ``(1 - a^(g+1)) / ((1 - a) (g c + 1))`` with
  a = alpha, g = K (the mean proposed length for adaptive rows).  It assumes a
  verification of g+1 tokens costs one single-token target forward and no other
  overhead (note lines give the measured cost of a K+1-token verification in
  single-token forwards).  ``efficiency`` = speedup / ideal_speedup.  Batch 1 only.
* ``same_output``: greedy new tokens equal hf_generate's token for token on every
  prompt ("no (m/n)": m of n prompts equal).

Text mode also prints where our loop's time goes: ms per step by phase of
``GenerationStats.phase_s`` (prefill per call; ``loop_overhead_%``: verify + commit
+ other, i.e. everything but the forwards, as a share of a step).  JSON rows carry
it as ``phase_ms_per_step``, plus ``speedup_vs_ours_ar``, ``draft_len`` (K, or the
mean proposed length), ``same_output_prompts`` and ``first_divergence`` (the first
new-token index that differs from hf_generate, per prompt).

Verification mode (``--verification``): sampled decoding, batch 1 (``--verification-rows
R``: R copies of each prompt with row seeds ``seed * R + i``, for a tau over many more
steps; tokens/s is then the batch's), the lossless
verification rules of ``rejection_sample`` on the same drafters:

chain_K4/tokenwise, chain_K4/block
    ``ChainDrafter(draft, k=K, adaptive=False)`` verified token-wise (standard
    speculative sampling) or by block verification (Sun et al. 2024).
stochastic_tree/tokenwise, stochastic_tree/traversal
    ``StochasticTreeDrafter(draft, branching=(3, 2, 1))`` (siblings drawn without
    replacement, 15 drafts) verified with RSD's recursive rule (token-wise,
    siblings without replacement) or by traversal verification (Weng et al. 2025).

at each temperature of ``--temperatures`` (default 1.0 and 0.7; top-k and top-p
off).  Defaults here: 6 prompts, 96 new tokens, 3 rounds.  One warm-up call per
system, then every round runs every (prompt, temperature) with every system in turn
(the order rotated each round), with the same row seed for all systems (seed =
``--seed`` + 1000 * round + prompt), so the systems see the same prompts and
streams.  Per run (round x temperature x system): ``tau`` = new tokens / verification
steps over the prompts, ``tokens_per_s`` = new tokens / wall seconds (prefill
included).  The table lists every run, then per temperature and system the pooled
tau, the median tokens/s over rounds and the ratio of each rule to its token-wise
baseline.

Models.  ``--target DIR --draft DIR``: any local HF checkpoints
(``AutoModelForCausalLM.from_pretrained(dir, dtype=...)``, tokenizer from the target
dir).  Otherwise the bundled pair ``specdec_cuda/assets/tiny/{target,draft}`` when
present (not with ``--random``), with the held-out prompts of its ``prompts.json``.
Otherwise (or ``--random``) a random Llama pair built here (seeded): the target's
layers after the first have their residual branches (``o_proj``, ``down_proj``)
scaled by ``--random-residual-scale`` (0.03) and the draft is the target truncated
to its first layer (shared embeddings, final norm, head), so the draft is a
cheap approximation of the target and acceptance is meaningful (~0.7 at the
default scale); prompts are random token ids.

Output: the table (or ``--json``: one object per row, then ``{"note": ...}``
lines) to stdout, or to ``--out FILE``; progress goes to stderr.  Nothing else is
written.  ``--quick``: 2 prompts, 32 new tokens, 1 round (a smoke test, < 60 s).
Use ``OMP_NUM_THREADS=1`` / ``--threads 1`` on a busy machine; numbers for
reporting belong to a quiet one.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # in-place build
from specdec_cuda import (  # noqa: E402
    ChainDrafter,
    DynamicTreeDrafter,
    HFModel,
    NoDrafter,
    PromptLookupDrafter,
    SpeculativeDecoder,
    StochasticTreeDrafter,
    TreeDrafter,
)

ASSETS = REPO / "specdec_cuda" / "assets" / "tiny"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NOTES: list[str] = []
# The random fallback's target; its draft is the first layer of it.
RANDOM_CONFIG = dict(
    vocab_size=4096,
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=10,
    num_attention_heads=8,
    num_key_value_heads=4,
)


def note(text: str) -> None:
    if text not in NOTES:
        NOTES.append(text)


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Models and prompts.
# ---------------------------------------------------------------------------


@dataclass
class Setup:
    target: torch.nn.Module
    draft: torch.nn.Module
    prompts: list[torch.Tensor]  # 1-D int64, CPU
    models: str  # description
    eos: int | None = None
    pad: int = 0


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(model) -> str:
    c = model.config
    layers = getattr(c, "num_hidden_layers", "?")
    hidden = getattr(c, "hidden_size", "?")
    return f"{type(model).__name__} {layers}L h{hidden} {n_params(model) / 1e6:.1f}M params"


def random_pair(args, device, dtype) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    """A random Llama target and its first-layer truncation as the draft."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    cfg = dict(
        RANDOM_CONFIG,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    target = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    with torch.no_grad():
        for layer in target.model.layers[1:]:
            layer.self_attn.o_proj.weight.mul_(args.random_residual_scale)
            layer.mlp.down_proj.weight.mul_(args.random_residual_scale)
    draft = LlamaForCausalLM(LlamaConfig(**{**cfg, "num_hidden_layers": 1})).eval()
    keep = {
        k: v
        for k, v in target.state_dict().items()
        if not k.startswith("model.layers.") or int(k.split(".")[2]) < 1
    }
    draft.load_state_dict(keep, strict=True)
    target, draft = target.to(device, dtype), draft.to(device, dtype)
    c = RANDOM_CONFIG
    desc = (
        f"random Llama (seed {args.seed}): target {describe(target)} (vocab {c['vocab_size']}, "
        f"{c['num_attention_heads']} heads, {c['num_key_value_heads']} KV heads), layers "
        f"2-{c['num_hidden_layers']} with residual branches scaled by {args.random_residual_scale}; "
        f"draft = the target truncated to its first layer ({describe(draft)}, shared "
        "embeddings/norm/head)"
    )
    return target, draft, desc


def random_prompts(n: int, vocab: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    lens = torch.randint(24, 65, (n,), generator=g).tolist()
    return [torch.randint(0, vocab, (ln,), generator=g) for ln in lens]


def text_prompts(path: Path, tokenizer, n: int) -> list[torch.Tensor]:
    texts = json.loads(path.read_text())
    if not isinstance(texts, list) or not texts:
        raise SystemExit(f"{path}: expected a non-empty JSON list of prompt strings")
    texts = [t if isinstance(t, str) else t.get("prompt", "") for t in texts]
    if n > len(texts):
        note(f"--prompts {n}: {path} holds {len(texts)} prompts; using all of them")
    return [torch.tensor(tokenizer(t)["input_ids"], dtype=torch.long) for t in texts[:n]]


def load_setup(args, device, dtype) -> Setup:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.target or args.draft:
        if not (args.target and args.draft):
            raise SystemExit("--target and --draft go together")
        tdir, ddir, kind = Path(args.target), Path(args.draft), "local checkpoints"
    elif (
        not args.random
        and (ASSETS / "target" / "config.json").is_file()
        and (ASSETS / "draft" / "config.json").is_file()
    ):
        tdir, ddir, kind = ASSETS / "target", ASSETS / "draft", "bundled tiny pair"
    else:
        if not args.random:
            note(f"no bundled models at {ASSETS.relative_to(REPO)}/{{target,draft}}: random fallback")
        target, draft, desc = random_pair(args, device, dtype)
        prompts = random_prompts(args.prompts, RANDOM_CONFIG["vocab_size"], args.seed)
        return Setup(target, draft, prompts, desc)

    load = AutoModelForCausalLM.from_pretrained
    target = load(tdir, dtype=dtype).to(device).eval()
    draft = load(ddir, dtype=dtype).to(device).eval()
    tok = None
    try:
        tok = AutoTokenizer.from_pretrained(tdir)
    except Exception as e:  # a checkpoint without tokenizer files
        note(f"no tokenizer in {tdir} ({type(e).__name__}): random token prompts")
    pfile = Path(args.prompts_file) if args.prompts_file else None
    if pfile is None:
        for cand in (tdir.parent / "prompts.json", ASSETS / "prompts.json"):
            if cand.is_file():
                pfile = cand
                break
    if tok is not None and pfile is not None:
        prompts = text_prompts(pfile, tok, args.prompts)
        psrc = f"prompts from {_rel(pfile)}"
    else:
        prompts = random_prompts(args.prompts, int(target.get_output_embeddings().weight.shape[0]), args.seed)
        psrc = "random token prompts"
    eos = tok.eos_token_id if tok is not None else target.generation_config.eos_token_id
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    pad = tok.pad_token_id if tok is not None else None
    pad = pad if pad is not None else (eos if eos is not None else 0)
    desc = f"{kind}: target {_rel(tdir)} ({describe(target)}), draft {_rel(ddir)} ({describe(draft)}); {psrc}"
    return Setup(target, draft, prompts, desc, eos=eos, pad=pad)


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(REPO))
    except ValueError:
        return str(p)


# ---------------------------------------------------------------------------
# Forward log for transformers' runs (hooks on the HF modules).
# ---------------------------------------------------------------------------


class ForwardLog:
    """Records (tokens fed, KV length before, seconds) of every forward of a module
    while ``active``; our loop's forwards (HFModel) happen while it is inactive."""

    def __init__(self, model, cuda: bool):
        self.active = False
        self.calls: list[tuple[int, int, float]] = []
        self._cuda = cuda
        self._cur: tuple[int, int, float] | None = None
        model.register_forward_pre_hook(self._pre, with_kwargs=True)
        model.register_forward_hook(self._post, with_kwargs=True)

    def _pre(self, module, args, kwargs):
        if not self.active:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        pkv = kwargs.get("past_key_values")
        past = int(pkv.get_seq_length()) if pkv is not None else 0
        if self._cuda:
            torch.cuda.synchronize()
        self._cur = (int(ids.shape[1]) if ids is not None else 0, past, time.perf_counter())

    def _post(self, module, args, kwargs, output):
        if not self.active or self._cur is None:
            return
        if self._cuda:
            torch.cuda.synchronize()
        n, past, t0 = self._cur
        self.calls.append((n, past, time.perf_counter() - t0))
        self._cur = None

    def take(self) -> list[tuple[int, int, float]]:
        calls, self.calls = self.calls, []
        return calls


# ---------------------------------------------------------------------------
# Methods.
# ---------------------------------------------------------------------------


@dataclass
class Result:
    """One call's outcome."""

    seconds: float
    new_tokens: list[list[int]]
    target_calls: int = 0  # tau's denominator
    accepted: int = 0  # alpha's A
    rejections: int = 0  # alpha's R
    proposed: int = 0  # drafts proposed (sum of per-step lengths)
    steps: int = 0
    draft_s: float = 0.0  # c's numerator time
    draft_n: int = 0  # ... and count
    target1_s: float = 0.0  # single-token target forward time (AR rows)
    target1_n: int = 0
    phase_s: dict = field(default_factory=dict)
    emitted: int = 0  # new tokens (all rows)
    row_steps: int = 0
    verify_s: list = field(default_factory=list)  # (tokens, seconds) of HF target forwards
    prefill_s: float = 0.0  # HF: the prompt's forward


@dataclass
class Method:
    name: str
    kind: str  # "hf", "hf_assisted", "ours", "vllm"
    batch: int = 1
    chain: bool = False  # alpha / c / ideal columns
    draft_len: int | None = None  # K for fixed chains
    decoder: SpeculativeDecoder | None = None
    assistant: dict | None = None  # the draft's generation-config fields (hf_assisted)
    worker: object | None = None  # the vLLM worker (bench_vllm.Worker) of a "vllm" method
    results: dict = field(default_factory=dict)  # group index -> list[Result]


class Bench:
    def __init__(self, args, setup: Setup, device: torch.device):
        self.args, self.setup, self.device = args, setup, device
        self.cuda = device.type == "cuda"
        target, draft = setup.target, setup.draft
        # Our wrappers switch the models' attention to "specdec", which falls back
        # to transformers' SDPA outside our forwards, so the same module objects
        # serve both loops.
        self.t_model, self.d_model = HFModel(target), HFModel(draft)
        self.tlog, self.dlog = ForwardLog(target, self.cuda), ForwardLog(draft, self.cuda)
        self.stops = [setup.eos] if (args.eos and setup.eos is not None) else None
        gc = copy.deepcopy(target.generation_config)
        gc.do_sample, gc.num_beams = False, 1
        gc.temperature, gc.top_k, gc.top_p = None, None, None
        gc.max_new_tokens, gc.min_new_tokens, gc.max_length = args.max_new_tokens, None, None
        gc.eos_token_id = setup.eos if args.eos else None
        gc.pad_token_id = setup.pad
        self.gen_config = gc
        self.draft_gc0 = copy.deepcopy(draft.generation_config)
        try:
            from transformers.utils import is_sklearn_available

            self.sklearn = bool(is_sklearn_available())
        except ImportError:
            self.sklearn = False

    def assistant_defaults(self) -> str:
        """The assisted-generation settings transformers takes when we set none."""
        keys = ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")
        try:
            defaults = self.draft_gc0._get_default_generation_params()
        except AttributeError:  # older transformers: the config's own values are the defaults
            defaults = {}
        parts = []
        for k in keys:
            v = getattr(self.draft_gc0, k, None)
            src = "draft generation_config"
            if v is None:
                v, src = defaults.get(k), "transformers default"
            parts.append(f"{k}={v!r} ({src})")
        return ", ".join(parts)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    # -- transformers ---------------------------------------------------------
    def run_hf(self, m: Method, prompt: torch.Tensor) -> Result:
        target, draft = self.setup.target, self.setup.draft
        ids = prompt[None].to(self.device)
        kwargs = dict(attention_mask=torch.ones_like(ids), generation_config=self.gen_config)
        if m.kind == "hf_assisted":
            dg = copy.deepcopy(self.draft_gc0)
            for k, v in m.assistant.items():
                setattr(dg, k, v)
            draft.generation_config = dg
            kwargs["assistant_model"] = draft
        self.tlog.take(), self.dlog.take()
        self.tlog.active = self.dlog.active = True
        try:
            self.sync()
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = target.generate(ids, **kwargs)
            self.sync()
            seconds = time.perf_counter() - t0
        finally:
            self.tlog.active = self.dlog.active = False
        new = out[0, ids.shape[1] :].tolist()
        tcalls, dcalls = self.tlog.take(), self.dlog.take()
        r = Result(seconds, [new], target_calls=len(tcalls), steps=len(tcalls))
        one = [s for n, _, s in tcalls if n == 1]
        r.target1_s, r.target1_n = sum(one), len(one)
        # every draft forward drafts one token (the first of a step also consumes
        # the tokens the draft has not seen: the prompt, or 1-2 tokens)
        r.draft_s, r.draft_n = sum(s for _, _, s in dcalls), len(dcalls)
        r.verify_s = [(n, s) for n, _, s in tcalls[1:]]
        r.prefill_s = tcalls[0][2] if tcalls else 0.0
        if m.kind == "hf_assisted":
            self._hf_acceptance(r, tcalls, prompt.numel(), len(new))
        return r

    @staticmethod
    def _hf_acceptance(r: Result, calls, prompt_len: int, n_new: int) -> None:
        """Per step: K_i drafts fed, a_i accepted (from the KV growth), one
        rejection when a_i < K_i."""
        emitted = 0
        for i, (n, past, _) in enumerate(calls):
            k = n - (prompt_len - past) if i == 0 else n - 1
            if i + 1 < len(calls):
                a = calls[i + 1][1] - past - n + k
            else:
                a = n_new - emitted - 1
            a = max(0, min(a, k))
            emitted += a + 1
            r.accepted += a
            r.rejections += int(a < k)
            r.proposed += k

    # -- ours -------------------------------------------------------------------
    def run_ours(self, m: Method, prompts: list[torch.Tensor]) -> Result:
        dec = m.decoder
        new = [[] for _ in prompts]
        per_step = len(prompts) == 1
        acc = rej = prop = 0
        prev_p = prev_a = 0
        self.sync()
        t0 = time.perf_counter()
        for out in dec.stream(
            prompts if len(prompts) > 1 else prompts[0],
            max_new_tokens=self.args.max_new_tokens,
            stop_tokens=self.stops,
        ):
            for b, toks in enumerate(out.tokens):
                new[b].extend(toks)
            if per_step:
                st = dec.stats
                p, a = sum(st.proposed_by_position), sum(st.accepted_by_position)
                k, got = p - prev_p, a - prev_a
                prop, acc, rej = prop + k, acc + got, rej + int(got < k)
                prev_p, prev_a = p, a
        self.sync()
        seconds = time.perf_counter() - t0
        st = dec.stats
        if not per_step and m.draft_len:
            # fixed-K chain: every row-step proposed K; it rejected unless all K were taken
            kk = m.draft_len
            acc = sum(st.accepted_by_position)
            full = st.accepted_by_position[kk - 1] if len(st.accepted_by_position) >= kk else 0
            rej = st.row_steps - full
            prop = st.row_steps * kk
        r = Result(
            seconds,
            new,
            target_calls=st.steps,
            accepted=acc,
            rejections=rej,
            proposed=prop,
            steps=st.steps,
            phase_s=dict(st.phase_s),
            emitted=sum(len(x) for x in new),
            row_steps=st.row_steps,
        )
        r.draft_s, r.draft_n = st.phase_s["draft"], st.draft_calls
        r.target1_s, r.target1_n = st.phase_s["target"], st.steps
        return r

    # -- vLLM (a worker process of its own environment) ------------------------
    def run_vllm(self, m: Method, prompts: list[torch.Tensor]) -> Result:
        cmd = dict(
            prompts=[p.tolist() for p in prompts],
            batch=len(prompts),
            temperature=0.0,
            top_p=1.0,
            new_tokens=self.args.max_new_tokens,
            plugin=False,
        )
        res = m.worker(cmd)
        return Result(res["seconds"], res["tokens"])

    def run(self, m: Method, group: list[torch.Tensor]) -> Result:
        if m.kind == "vllm":
            return self.run_vllm(m, group)
        if m.kind.startswith("hf"):
            return self.run_hf(m, group[0])
        return self.run_ours(m, group)


def vllm_python(args, setup: Setup, device: torch.device) -> str | None:
    """The vLLM environment's interpreter when vLLM rows can run here, else None (a note
    says why, unless the environment simply does not exist)."""
    if args.no_vllm:
        return None
    python = Path(args.vllm) if args.vllm else REPO / ".venv-vllm" / "bin" / "python"
    if not python.exists():
        if args.vllm:
            note(f"--vllm {args.vllm}: no such interpreter; no vLLM rows")
        return None
    why = None
    if device.type != "cpu" or args.dtype != "fp32":
        why = "vLLM rows run on the CPU in float32 only"
    elif not setup.models.startswith("bundled"):
        why = "vLLM rows run the bundled pair only"
    elif args.eos:
        why = "vLLM rows ignore EOS, so they are left out with --eos"
    if why:
        note(f"{why}; no vLLM rows")
        return None
    return str(python)


def vllm_methods(args, python: str, k: int) -> list[Method]:
    """vLLM's plain, ngram and draft_model modes (and plain / draft at the batch size),
    each with its own started worker."""
    from bench_vllm import K as VLLM_K
    from bench_vllm import Worker

    if k != VLLM_K:
        note(f"vLLM rows use K={VLLM_K} (bench_vllm's), not --k {k}")
    threads = args.threads or torch.get_num_threads()
    workers = {mode: Worker("vllm", mode, threads, python=python) for mode in ("plain", "ngram", "draft")}
    for w in workers.values():  # started together, waited for in turn
        w.ready()
    ms = [
        Method("vllm_plain", "vllm", worker=workers["plain"]),
        Method(f"vllm_ngram_K{VLLM_K}", "vllm", worker=workers["ngram"]),
        Method(f"vllm_draft_K{VLLM_K}", "vllm", worker=workers["draft"]),
    ]
    if args.batch > 1:
        ms += [
            Method("vllm_plain", "vllm", batch=args.batch, worker=workers["plain"]),
            Method(f"vllm_draft_K{VLLM_K}", "vllm", batch=args.batch, worker=workers["draft"]),
        ]
    return ms


def close_workers(methods: list[Method]) -> None:
    for w in {id(m.worker): m.worker for m in methods if m.worker is not None}.values():
        w.close()


def build_methods(bench: Bench, args) -> list[Method]:
    t, d, k = bench.t_model, bench.d_model, args.k
    ms = [
        Method("hf_generate", "hf"),
        Method("ours_autoregressive", "ours", decoder=SpeculativeDecoder(t, NoDrafter())),
        Method(
            f"chain_K{k}",
            "ours",
            chain=True,
            draft_len=k,
            decoder=SpeculativeDecoder(t, ChainDrafter(d, k=k, adaptive=False)),
        ),
        Method(
            "chain_adaptive",
            "ours",
            chain=True,
            decoder=SpeculativeDecoder(t, ChainDrafter(d, k=k, adaptive=True)),
        ),
        Method("tree", "ours", decoder=SpeculativeDecoder(t, TreeDrafter(d))),
        Method("dynamic_tree", "ours", decoder=SpeculativeDecoder(t, DynamicTreeDrafter(d))),
        Method("prompt_lookup", "ours", chain=True, decoder=SpeculativeDecoder(t, PromptLookupDrafter())),
        Method(
            f"hf_assisted_K{k}_constant",
            "hf_assisted",
            chain=True,
            draft_len=k,
            assistant=dict(
                num_assistant_tokens=k,
                num_assistant_tokens_schedule="constant",
                assistant_confidence_threshold=0.0,
            ),
        ),
        Method(
            "hf_assisted_heuristic",
            "hf_assisted",
            chain=True,
            assistant=dict(
                num_assistant_tokens=k,
                num_assistant_tokens_schedule="heuristic",
                assistant_confidence_threshold=0.0,
            ),
        ),
        Method("hf_assisted_default", "hf_assisted", chain=True, assistant={}),
    ]
    b = min(args.batch, len(bench.setup.prompts))
    if b > 1:
        ms += [
            Method("ours_autoregressive", "ours", batch=b, decoder=SpeculativeDecoder(t, NoDrafter())),
            Method(
                f"chain_K{k}",
                "ours",
                batch=b,
                draft_len=k,
                chain=True,
                decoder=SpeculativeDecoder(t, ChainDrafter(d, k=k, adaptive=False)),
            ),
        ]
    return ms


# ---------------------------------------------------------------------------
# The measurement and the table.
# ---------------------------------------------------------------------------


def groups_of(prompts: list[torch.Tensor], batch: int) -> list[list[torch.Tensor]]:
    return [prompts[i : i + batch] for i in range(0, len(prompts), batch)]


def measure(bench: Bench, methods: list[Method], repeats: int) -> None:
    prompts = bench.setup.prompts
    t0 = time.perf_counter()
    for m in methods:  # warm-up: one call per method, untimed
        r = bench.run(m, groups_of(prompts, m.batch)[0])
        progress(f"warm-up  {m.name:<26} b{m.batch}  {r.seconds:7.3f} s")
    for rnd in range(repeats):
        for m in methods:
            t = 0.0
            for gi, group in enumerate(groups_of(prompts, m.batch)):
                r = bench.run(m, group)
                m.results.setdefault(gi, []).append(r)
                t += r.seconds
            progress(
                f"round {rnd + 1}/{repeats} {m.name:<26} b{m.batch}  {t:7.3f} s "
                f"({time.perf_counter() - t0:6.1f} s elapsed)"
            )


def ideal_speedup(a: float, g: float, c: float) -> float:
    if a >= 1.0:
        return (g + 1) / (g * c + 1)
    return (1 - a ** (g + 1)) / ((1 - a) * (g * c + 1))


def summarise(bench: Bench, methods: list[Method], args, device: torch.device) -> list[dict]:
    """One row per method: per-prompt medians for time, counts pooled over all runs."""
    hf = next(m for m in methods if m.name == "hf_generate")
    ref = [rs[0].new_tokens[0] for _, rs in sorted(hf.results.items())]  # per prompt

    def pooled(m: Method, attr: str) -> float:
        return sum(getattr(r, attr) for runs in m.results.values() for r in runs)

    # single-token target forward: ours from our plain loop (per batch), HF from hf_generate
    t1 = {
        m.batch: pooled(m, "target1_s") / max(pooled(m, "target1_n"), 1)
        for m in methods
        if m.name == "ours_autoregressive"
    }
    t1_hf = pooled(hf, "target1_s") / max(pooled(hf, "target1_n"), 1)
    runs_hf = [hf.results[g] for g in sorted(hf.results)]
    hf_tps = sum(len(rs[0].new_tokens[0]) for rs in runs_hf) / sum(
        statistics.median(r.seconds for r in rs) for rs in runs_hf
    )
    rows = []
    for m in methods:
        runs = [m.results[g] for g in sorted(m.results)]
        all_runs = [r for rs in runs for r in rs]
        tokens = sum(sum(len(x) for x in rs[0].new_tokens) for rs in runs)
        seconds = sum(statistics.median(r.seconds for r in rs) for rs in runs)
        tps = tokens / seconds
        outs = [toks for rs in runs for toks in rs[0].new_tokens]
        same = sum(o == w for o, w in zip(outs, ref))
        diverge = [
            next((i for i, (x, y) in enumerate(zip(o, w)) if x != y), min(len(o), len(w))) if o != w else None
            for o, w in zip(outs, ref)
        ]
        if m.kind == "ours":  # new tokens per row and verification step
            tau = pooled(m, "emitted") / max(pooled(m, "row_steps"), 1)
        elif m.kind == "vllm":  # vLLM's forwards are not counted here
            tau = None
        else:  # new tokens per target forward
            tau = sum(len(x) for r in all_runs for x in r.new_tokens) / max(pooled(m, "target_calls"), 1)
        row = {
            "method": m.name,
            "batch": m.batch,
            "tau": None if tau is None else round(tau, 2),
            "tokens_per_s": round(tps, 1),
            "speedup": round(tps / hf_tps, 2),
            "alpha": None,
            "c": None,
            "ideal_speedup": None,
            "efficiency": None,
            "same_output": "yes" if same == len(ref) else f"no ({same}/{len(ref)})",
        }
        if m.chain:
            A, R = pooled(m, "accepted"), pooled(m, "rejections")
            alpha = A / (A + R) if A + R else 0.0
            steps = pooled(m, "row_steps") if m.kind == "ours" else pooled(m, "target_calls")
            g = m.draft_len or pooled(m, "proposed") / max(steps, 1)
            if m.kind == "ours":
                per = "proposed" if m.name.startswith("prompt_lookup") else "draft_n"
                c = pooled(m, "draft_s") / max(pooled(m, per), 1) / t1[m.batch]
            else:
                c = pooled(m, "draft_s") / max(pooled(m, "draft_n"), 1) / t1_hf
            row.update(alpha=round(alpha, 3), c=round(c, 3), draft_len=round(g, 2))
            if m.batch == 1:  # the formula is for one sequence
                ideal = ideal_speedup(alpha, g, c)
                row.update(ideal_speedup=round(ideal, 2), efficiency=round(tps / hf_tps / ideal, 2))
                if m.kind == "ours":
                    # The formula prices a verification like a one-token forward; on
                    # small models on a CPU a (g+1)-token forward costs r > 1 times
                    # that.  With the measured r: E[tokens] / (g c + r).
                    steps_n = max(pooled(m, "steps"), 1)
                    r_ver = sum(x.phase_s["target"] for x in all_runs) / steps_n / t1[1]
                    ideal_v = ideal_speedup(alpha, g, c) * (g * c + 1) / (g * c + r_ver)
                    row.update(
                        verify_cost=round(r_ver, 2),
                        ideal_verify=round(ideal_v, 2),
                        efficiency_verify=round(tps / hf_tps / ideal_v, 2),
                    )
        row.update(
            same_output_prompts=f"{same}/{len(ref)}",
            first_divergence=diverge,
            device=device.type,
            dtype=args.dtype,
            threads=torch.get_num_threads(),
            max_new_tokens=args.max_new_tokens,
            prompts=len(bench.setup.prompts),
            repeats=args.repeats,
            tokens=tokens,
            seconds=round(seconds, 4),
            models=bench.setup.models,
        )
        if m.kind == "ours":
            nsteps = max(pooled(m, "steps"), 1)
            ncalls = len(all_runs)
            row["phase_ms_per_step"] = {
                k: round(
                    1e3
                    * sum(r.phase_s.get(k, 0.0) for r in all_runs)
                    / (ncalls if k == "prefill" else nsteps),
                    3,
                )
                for k in all_runs[0].phase_s
            }
            row["speedup_vs_ours_ar"] = None  # filled below
        if m.kind == "hf_assisted" and m.draft_len:
            ver = [s for r in all_runs for n, s in r.verify_s if n == m.draft_len + 1]
            if ver:
                note(
                    f"transformers' target forward over K+1={m.draft_len + 1} tokens costs "
                    f"{statistics.fmean(ver) / t1_hf:.2f}x a single-token one ({m.name})"
                )
        rows.append(row)
    ar = {r["batch"]: r["tokens_per_s"] for r in rows if r["method"] == "ours_autoregressive"}
    for r in rows:
        if "speedup_vs_ours_ar" in r:
            r["speedup_vs_ours_ar"] = round(r["tokens_per_s"] / ar[r["batch"]], 2)
    ours_ar = [
        r
        for rs in next(
            m for m in methods if m.name == "ours_autoregressive" and m.batch == 1
        ).results.values()
        for r in rs
    ]
    pre_ours = sum(r.phase_s["prefill"] for r in ours_ar) / len(ours_ar)
    pre_hf = pooled(hf, "prefill_s") / sum(len(rs) for rs in runs_hf)
    note(
        f"prompt prefill per call: ours {1e3 * pre_ours:.2f} ms (ours_autoregressive "
        f"phase_s['prefill']), transformers {1e3 * pre_hf:.2f} ms (hf_generate's first target "
        "forward, which also yields the first token)"
    )
    note(
        f"single-token target forward (c's denominator): ours {1e3 * t1[1]:.2f} ms "
        f"(ours_autoregressive phase_s['target'] / steps), transformers {1e3 * t1_hf:.2f} ms "
        "(hf_generate, forward hooks)"
    )
    return rows


TABLE_KEYS = [
    "method",
    "batch",
    "tau",
    "tokens_per_s",
    "speedup",
    "alpha",
    "c",
    "ideal_speedup",
    "efficiency",
    "verify_cost",
    "ideal_verify",
    "efficiency_verify",
    "same_output",
]
JSON_KEYS = [
    "method",
    "batch",
    "tau",
    "tokens_per_s",
    "speedup",
    "alpha",
    "c",
    "ideal_speedup",
    "efficiency",
    "verify_cost",
    "ideal_verify",
    "efficiency_verify",
    "same_output",
    "same_output_prompts",
    "first_divergence",
    "device",
    "dtype",
    "threads",
    "max_new_tokens",
    "models",
    "draft_len",
    "speedup_vs_ours_ar",
    "prompts",
    "repeats",
    "tokens",
    "seconds",
    "phase_ms_per_step",
]


def format_table(rows: list[dict], keys: list[str]) -> list[str]:
    """One aligned table (blank where a row has no value)."""

    def cell(r: dict, k: str) -> str:
        v = r.get(k)
        return "" if v is None else str(v)

    widths = {k: max(len(k), *(len(cell(r, k)) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys).rstrip()]
    for r in rows:
        lines.append("  ".join(cell(r, k).ljust(widths[k]) for k in keys).rstrip())
    return lines


def phase_table(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        ph = r.get("phase_ms_per_step")
        if not ph:
            continue
        step = sum(v for k, v in ph.items() if k != "prefill")
        d = {"method": r["method"], "batch": r["batch"], "prefill_ms/call": ph.get("prefill", 0.0)}
        for k in ("draft", "target", "verify", "commit", "other"):
            d[f"{k}_ms"] = ph.get(k, 0.0)
        d["step_ms"] = round(step, 3)
        d["loop_overhead_%"] = (
            round(100 * (ph.get("verify", 0) + ph.get("commit", 0) + ph.get("other", 0)) / step, 1)
            if step
            else ""
        )
        out.append(d)
    return format_table(out, list(out[0])) if out else []


def machine_note(device: torch.device) -> str:
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (platform.processor() or platform.machine())
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return (
        f"torch {torch.__version__} | device {name} | cpu_count {os.cpu_count()} | "
        f"torch threads {torch.get_num_threads()} | OMP_NUM_THREADS "
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')} | peak RSS {rss:.2f} GB"
    )


# ---------------------------------------------------------------------------
# --verification: the lossless rules on the same drafters, sampled.
# ---------------------------------------------------------------------------

VERIFICATION_SYSTEMS = (
    ("chain_K{k}", "tokenwise"),
    ("chain_K{k}", "block"),
    ("stochastic_tree", "tokenwise"),
    ("stochastic_tree", "traversal"),
)


def run_verification(args, setup: Setup, device: torch.device) -> list[str]:
    t_model, d_model = HFModel(setup.target), HFModel(setup.draft)
    temps = [float(t) for t in args.temperatures.split(",")]
    systems = []
    for drafter, rule in VERIFICATION_SYSTEMS:
        name = drafter.format(k=args.k)
        build = (
            (lambda: ChainDrafter(d_model, k=args.k, adaptive=False))
            if drafter.startswith("chain")
            else (lambda: StochasticTreeDrafter(d_model, branching=(3, 2, 1)))
        )
        systems.append((f"{name}/{rule}", SpeculativeDecoder(t_model, build(), verification=rule)))
    prompts = setup.prompts
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    copies = max(args.verification_rows, 1)

    def call(dec, prompt, temperature, seed):
        # `copies` rows of the prompt, row seeds seed * copies + i (one row: the seed itself)
        seeds = seed if copies == 1 else seed * copies + torch.arange(copies, dtype=torch.int64)
        sync()
        t0 = time.perf_counter()
        out = dec.generate(
            [prompt] * copies, max_new_tokens=args.max_new_tokens, temperature=temperature, seed=seeds
        )
        sync()
        return time.perf_counter() - t0, sum(t.numel() for t in out.new_tokens), out.stats.row_steps

    for _, dec in systems:  # warm-up, untimed
        call(dec, prompts[0], temps[0], args.seed)
    runs = []  # (round, temperature, system, tokens, seconds, steps)
    t_start = time.perf_counter()
    for rnd in range(args.repeats):
        order = systems[rnd % len(systems) :] + systems[: rnd % len(systems)]
        acc = {(t, n): [0, 0.0, 0] for t in temps for n, _ in systems}
        for i, prompt in enumerate(prompts):
            for t in temps:
                for name, dec in order:
                    secs, tokens, steps = call(dec, prompt, t, args.seed + 1000 * rnd + i)
                    a = acc[(t, name)]
                    a[0], a[1], a[2] = a[0] + tokens, a[1] + secs, a[2] + steps
        for (t, name), (tokens, secs, steps) in acc.items():
            runs.append((rnd + 1, t, name, tokens, secs, steps))
        progress(f"round {rnd + 1}/{args.repeats} done ({time.perf_counter() - t_start:.1f} s elapsed)")
    rows = [
        {
            "round": r,
            "T": t,
            "system": n,
            "tau": round(tok / max(st, 1), 3),
            "tokens_per_s": round(tok / sec, 1),
            "tokens": tok,
            "seconds": round(sec, 3),
        }
        for r, t, n, tok, sec, st in runs
    ]
    summary = []
    for t in temps:
        base = {}
        for name, _ in systems:
            mine = [x for x in runs if x[1] == t and x[2] == name]
            tau = sum(x[3] for x in mine) / max(sum(x[5] for x in mine), 1)
            tps = statistics.median(x[3] / x[4] for x in mine)
            kind = name.split("/")[0]
            if name.endswith("/tokenwise"):
                base[kind] = (tau, tps)
            b_tau, b_tps = base.get(kind, (tau, tps))
            summary.append(
                {
                    "T": t,
                    "system": name,
                    "tau": round(tau, 3),
                    "tau_vs_tokenwise": round(tau / b_tau, 3),
                    "tokens_per_s_median": round(tps, 1),
                    "tokens_per_s_vs_tokenwise": round(tps / b_tps, 3),
                    "tokens_per_s_runs": [round(x[3] / x[4], 1) for x in mine],
                }
            )
    note(
        f"verification: batch {copies} (copies of one prompt, row seeds seed * {copies} + i), "
        f"{len(prompts)} prompts x {args.max_new_tokens} new tokens, sampled "
        f"(top-k/top-p off), {args.repeats} round(s) after 1 warm-up call per system; tau = new tokens / "
        "verification steps; tokens/s = new tokens / wall time (prefill included)"
    )
    note(f"models: {setup.models}")
    note(machine_note(device))
    if args.json:
        return [json.dumps(r) for r in rows + summary] + [json.dumps({"note": n}) for n in NOTES]
    lines = ["# every run (per round: all prompts of one temperature)"]
    lines += format_table(rows, list(rows[0]))
    lines += ["", "# per temperature and system (tau pooled over runs; tokens/s median over runs)"]
    lines += format_table(summary, list(summary[0]))
    lines += [f"# {n}" for n in NOTES]
    return lines


# ---------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 2 prompts, 32 new tokens, 1 round (defaults; explicit flags win)",
    )
    p.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)"
    )
    p.add_argument("--target", help="target checkpoint dir (with --draft)")
    p.add_argument("--draft", help="draft checkpoint dir (with --target)")
    p.add_argument(
        "--random", action="store_true", help="use the random Llama pair even if the bundled models exist"
    )
    p.add_argument(
        "--random-residual-scale",
        type=float,
        default=0.03,
        help="random pair: scale of the target's residual branches after layer 1",
    )
    p.add_argument("--prompts-file", help="JSON list of prompt strings (needs a tokenizer)")
    p.add_argument("--prompts", type=int, default=None, help="prompts (default 4; quick 2)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 128; quick 32")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3; quick 1)")
    p.add_argument("--k", type=int, default=4, help="draft length of the fixed chains (default 4)")
    p.add_argument("--batch", type=int, default=4, help="batch of the batched rows (0/1: none)")
    p.add_argument("--eos", action="store_true", help="stop at EOS (default: fixed length)")
    p.add_argument("--vllm", help="the vLLM environment's python (default: .venv-vllm/bin/python if present)")
    p.add_argument("--no-vllm", action="store_true", help="no vLLM rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the table / JSON lines here instead of stdout")
    p.add_argument(
        "--verification",
        action="store_true",
        help="sampled: tokenwise vs block (chain K) and RSD vs traversal (stochastic tree), batch 1",
    )
    p.add_argument("--temperatures", default="1.0,0.7", help="--verification: comma-separated temperatures")
    p.add_argument(
        "--verification-rows",
        type=int,
        default=1,
        help="--verification: rows per call (copies of the prompt with distinct seeds; tau over all rows)",
    )
    args = p.parse_args(argv)
    q = args.quick
    v = args.verification
    args.prompts = args.prompts or (2 if q else 6 if v else 4)
    args.max_new_tokens = args.max_new_tokens or (32 if q else 96 if v else 128)
    args.repeats = args.repeats or (1 if q else 3)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device available")
    if min(args.prompts, args.max_new_tokens, args.repeats, args.k) < 1:
        p.error("--prompts, --max-new-tokens, --repeats and --k must be >= 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    device = torch.device(args.device)
    setup = load_setup(args, device, DTYPES[args.dtype])
    progress(f"models: {setup.models}")
    if args.verification:
        lines = run_verification(args, setup, device)
        text = "\n".join(
            lines + ([] if args.json else [f"# total runtime {time.perf_counter() - t_start:.1f} s"])
        )
        text += "\n"
        if args.out:
            Path(args.out).write_text(text)
            progress(f"wrote {args.out}")
        else:
            sys.stdout.write(text)
        return
    bench = Bench(args, setup, device)
    methods = build_methods(bench, args)
    python = vllm_python(args, setup, device)
    try:
        if python:
            methods += vllm_methods(args, python, args.k)
        measure(bench, methods, args.repeats)
    finally:
        close_workers(methods)
    rows = summarise(bench, methods, args, device)
    if args.eos and setup.eos is None:
        note("--eos: these models define no EOS token; generation is fixed-length")
    if any(r["same_output"] != "yes" for r in rows):
        note(
            "same_output 'no': greedy outputs diverge from hf_generate's (JSON first_divergence: "
            "the first differing new-token index per prompt); float rounding differs between "
            "attention kernels and batch shapes, which can flip near-tied argmaxes"
        )
    note(
        "hf_assisted_default uses "
        + bench.assistant_defaults()
        + ("" if bench.sklearn else "; scikit-learn is not installed, so the threshold does not adapt")
    )
    note(
        "alpha = A / (A + R) (A accepted drafts, R steps with fewer accepted than proposed); "
        "c = draft time per drafted token / single-token target forward (ours: phase_s, "
        "transformers: forward hooks); ideal = (1 - a^(g+1)) / ((1 - a)(g c + 1)), g = K or the "
        "mean proposed length; efficiency = speedup / ideal; verify_cost r = our target time per "
        "verification / single-token forward, ideal_verify = ideal * (g c + 1) / (g c + r), "
        "efficiency_verify = speedup / ideal_verify (the loop's own efficiency once the "
        "verification's real cost is priced in)"
    )
    chain_k = next((r for r in rows if r["method"] == f"chain_K{args.k}" and r["batch"] == 1), None)
    ours_ar = next(r for r in rows if r["method"] == "ours_autoregressive" and r["batch"] == 1)
    if chain_k:
        ratio = chain_k["phase_ms_per_step"]["target"] / ours_ar["phase_ms_per_step"]["target"]
        note(
            f"our target forward over K+1={args.k + 1} tokens costs {ratio:.2f}x a single-token "
            "one (the ideal assumes 1x)"
        )
    note(f"models: {setup.models}")
    note(
        f"batch 1: {len(setup.prompts)} prompts x {args.max_new_tokens} new tokens "
        f"({'stop at EOS' if args.eos else 'EOS ignored'}), greedy; median of {args.repeats} "
        "round(s) after 1 warm-up call per method; speedup vs hf_generate tokens/s"
    )
    note(machine_note(device))
    note(f"total runtime {time.perf_counter() - t_start:.1f} s")
    if args.json:
        lines = [
            json.dumps({k: (r[k] == "yes" if k == "same_output" else r[k]) for k in JSON_KEYS if k in r})
            for r in rows
        ]
        lines += [json.dumps({"note": n}) for n in NOTES]
    else:
        lines = format_table(rows, TABLE_KEYS)
        lines += ["", "# where our loop's time goes (ms per step; prefill ms per call):"]
        lines += phase_table(rows)
        lines += [f"# {n}" for n in NOTES]
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        progress(f"wrote {args.out}")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
