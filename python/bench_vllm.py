"""vLLM side by side with specdec_cuda: end to end and the verification op.

Usage (in the vLLM environment, which ``scripts/_vllm_env.sh`` creates):
    .venv-vllm/bin/python python/bench_vllm.py [--json] [--quick] [--rounds N]
        [--new-tokens N] [--threads N] [--vllm-prefix-caching] [--no-e2e] [--no-ops]
        [--out FILE]

End to end, on the bundled tiny pair (``specdec_cuda/assets/tiny``), the same token
ids for every system (the prompts tokenised once, passed to vLLM as token ids):

vllm plain
    vLLM's ``LLM`` without speculative decoding: the baseline of every ``speedup``.
vllm ngram K=4 (vLLM's verifier / ours)
    ``speculative_config={"method": "ngram", "num_speculative_tokens": 4,
    "prompt_lookup_min": 1, "prompt_lookup_max": 3}``; "ours" is the same engine
    with the specdec_cuda plug-in's verifier switched on (``set_enabled``).
vllm draft_model K=4 (vLLM's verifier / ours)
    the bundled draft as vLLM's ``draft_model``, 4 tokens per step.
ours plain / prompt lookup K=4 / chain K=4
    our own loop: ``NoDrafter``, ``PromptLookupDrafter(k=4, adaptive=False)``,
    ``ChainDrafter(draft, k=4, adaptive=False)`` (fixed K = 4, as vLLM's); the
    models run through ``HFModel``'s lean forward (``HFModel.path == "lean"``).

Each system lives in its own worker process (vLLM engines are started once, with
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` so the plug-in can be switched in the same
process), and the parent interleaves them: every round runs every system on every
configuration once (greedy and T=0.8 / top-p 0.95 with a seed per request;
batch 1 = the first 6 held-out prompts one call each, batch 8 = the first 8 in one
call; 96 new tokens, EOS ignored), so the machine's drift hits all alike. One
warm-up round, then ``--rounds`` timed rounds (default 2); tokens/s is all new
tokens over the fastest round's time, and every round's figure is printed.
``identical`` compares a system's greedy token ids with vLLM plain's (sampled rows:
``-``). Threads: every worker uses ``--threads`` torch threads (default 1, what vLLM's
CPU worker uses on a 2-core machine). vLLM's prefix cache (on by default for these
models) is switched off unless ``--vllm-prefix-caching``: every round decodes the same
prompts, so with it on vLLM's timed rounds skip the prefill that every other system
(and a first request) pays; at batch 8 that prefill is about a quarter of the time.

The op row: vLLM's CPU verification (``apply_sampling_constraints`` then
``rejection_sample``) against ours (``sampling_probs_ragged`` then
``rejection_sample_ragged``) on the same synthetic tensors: B 64 requests x K 4
drafts, V 32k and 128k, T 0.8, top-p 0.9, draft probabilities given; median of 5
after a warm-up, interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "specdec_cuda" / "assets" / "tiny"
K = 4

SYSTEMS = {
    "vllm plain": ("vllm", "plain", False),
    "vllm ngram K=4, vLLM verifier": ("vllm", "ngram", False),
    "vllm ngram K=4, our verifier": ("vllm", "ngram", True),
    "vllm draft K=4, vLLM verifier": ("vllm", "draft", False),
    "vllm draft K=4, our verifier": ("vllm", "draft", True),
    "ours plain": ("ours", "plain", False),
    "ours prompt lookup K=4": ("ours", "lookup", False),
    "ours chain K=4": ("ours", "chain", False),
}


# ---------------------------------------------------------------------------
# Workers: one engine (or our loop) each, commands on stdin, results on stdout.
# ---------------------------------------------------------------------------


def _prompts(n: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TINY / "target"))
    texts = json.loads((TINY / "prompts.json").read_text())[:n]
    return [tok(t).input_ids for t in texts]


def _vllm_worker(mode: str, threads: int, prefix_caching: bool = False):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process: the plug-in switch reaches it
    os.environ.setdefault("VLLM_PLUGINS", "specdec_cuda")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    spec = {
        "plain": None,
        "ngram": {
            "method": "ngram",
            "num_speculative_tokens": K,
            "prompt_lookup_min": 1,
            "prompt_lookup_max": 3,
        },
        "draft": {"method": "draft_model", "model": str(TINY / "draft"), "num_speculative_tokens": K},
    }[mode]
    kwargs = {"speculative_config": spec} if spec else {}
    llm = LLM(
        model=str(TINY / "target"),
        dtype="float32",
        max_model_len=1024,
        seed=0,
        enable_prefix_caching=prefix_caching,
        **kwargs,
    )
    plugin = None
    if spec is not None:
        from specdec_cuda.integrations import vllm as plugin

    def run(cmd):
        if plugin is not None:
            plugin.set_enabled(cmd["plugin"])
            plugin.reset_stats()
        prompts = [TokensPrompt(prompt_token_ids=p) for p in cmd["prompts"]]
        params = [
            SamplingParams(
                temperature=cmd["temperature"],
                top_p=cmd["top_p"],
                max_tokens=cmd["new_tokens"],
                ignore_eos=True,
                seed=None if cmd["temperature"] == 0 else 1000 + i,
            )
            for i in range(len(prompts))
        ]
        t0 = time.perf_counter()
        tokens = []
        if cmd["batch"] == 1:
            for p, sp in zip(prompts, params):
                tokens += [list(o.outputs[0].token_ids) for o in llm.generate([p], sp, use_tqdm=False)]
        else:
            tokens = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]
        seconds = time.perf_counter() - t0
        verified = plugin.stats()["verified_batches"] if plugin is not None else 0
        return {"seconds": seconds, "tokens": tokens, "our_verified_batches": verified}

    return run


def our_drafter(mode: str, draft):
    """Our loop's drafter for ``mode`` (plain, lookup, chain), K = 4, as benchmarked."""
    import specdec_cuda as sd

    if mode == "plain":
        return sd.NoDrafter()
    if mode == "lookup":  # fixed K, as vLLM's ngram proposer (the adaptive default grows K)
        return sd.PromptLookupDrafter(k=K, adaptive=False)
    if mode == "chain":
        return sd.ChainDrafter(draft, k=K, adaptive=False)
    raise ValueError(f"bench_vllm: unknown mode {mode!r}")


def _ours_worker(mode: str, threads: int, prefix_caching: bool = False):
    import torch
    from transformers import AutoModelForCausalLM

    import specdec_cuda as sd

    target = AutoModelForCausalLM.from_pretrained(str(TINY / "target"), dtype=torch.float32).eval()
    draft = AutoModelForCausalLM.from_pretrained(str(TINY / "draft"), dtype=torch.float32).eval()
    decoder = sd.SpeculativeDecoder(target, our_drafter(mode, draft))

    def run(cmd):
        prompts = [torch.tensor(p) for p in cmd["prompts"]]
        sampled = cmd["temperature"] > 0
        kw = dict(max_new_tokens=cmd["new_tokens"], temperature=cmd["temperature"], top_p=cmd["top_p"])
        t0 = time.perf_counter()
        tokens = []
        if cmd["batch"] == 1:
            for i, p in enumerate(prompts):
                out = decoder.generate([p], seed=1000 + i if sampled else None, **kw)
                tokens.append(out.new_tokens[0].tolist())
        else:
            seeds = [1000 + i for i in range(len(prompts))] if sampled else None
            out = decoder.generate(prompts, seed=seeds, **kw)
            tokens = [t.tolist() for t in out.new_tokens]
        return {"seconds": time.perf_counter() - t0, "tokens": tokens, "our_verified_batches": 0}

    return run


def worker_main(kind: str, mode: str, threads: int, prefix_caching: bool = False) -> None:
    # The protocol channel is a private copy of stdout; file descriptor 1 itself goes
    # to stderr, so whatever the engines print (vLLM logs to stdout) stays off it.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import torch

    torch.set_num_threads(threads)
    run = (_vllm_worker if kind == "vllm" else _ours_worker)(mode, threads, prefix_caching)
    out.write("READY\n")
    out.flush()
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("quit"):
            break
        out.write(json.dumps(run(cmd)) + "\n")
        out.flush()


class Worker:
    def __init__(
        self, kind: str, mode: str, threads: int, prefix_caching: bool = False, python: str | None = None
    ):
        env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        self.proc = subprocess.Popen(
            [python or sys.executable, __file__, "--worker", kind, mode, "--threads", str(threads)]
            + (["--vllm-prefix-caching"] if prefix_caching else []),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if not os.environ.get("BENCH_VLLM_VERBOSE") else None,
            text=True,
            env=env,
        )
        self.name = f"{kind}:{mode}"

    def ready(self) -> None:
        line = self.proc.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"bench_vllm: worker {self.name} did not start (exit {self.proc.poll()})")

    def __call__(self, cmd: dict) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench_vllm: worker {self.name} died (exit {self.proc.poll()})")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        except Exception:  # noqa: BLE001 - a worker that does not quit is killed
            self.proc.kill()


def bench_e2e(args) -> list[dict]:
    prompts = _prompts(8)
    configs = []
    for temperature, top_p in ((0.0, 1.0), (0.8, 0.95)):
        for batch in (1, 8):
            ps = prompts[:6] if batch == 1 else prompts[:8]
            configs.append(
                dict(
                    batch=batch, temperature=temperature, top_p=top_p, prompts=ps, new_tokens=args.new_tokens
                )
            )
    workers = {}
    try:
        for key in sorted({(k, m) for k, m, _ in SYSTEMS.values()}):
            workers[key] = Worker(*key, args.threads, args.vllm_prefix_caching)
        for w in workers.values():  # started together, waited for in turn
            w.ready()
        times: dict = {}
        tokens: dict = {}
        verified: dict = {}
        for rnd in range(args.rounds + 1):  # round 0 is the warm-up
            for ci, cfg in enumerate(configs):
                for name, (kind, mode, plugin) in SYSTEMS.items():
                    res = workers[(kind, mode)](dict(cfg, plugin=plugin))
                    if rnd == 0:
                        tokens[(name, ci)] = res["tokens"]
                        continue
                    times.setdefault((name, ci), []).append(res["seconds"])
                    verified[(name, ci)] = verified.get((name, ci), 0) + res["our_verified_batches"]
                    if cfg["temperature"] == 0 and res["tokens"] != tokens[(name, ci)]:
                        raise RuntimeError(f"bench_vllm: {name} gave different greedy tokens across rounds")
            print(f"[bench_vllm] round {rnd} done", file=sys.stderr, flush=True)
    finally:
        for w in workers.values():
            w.close()
    rows = []
    for ci, cfg in enumerate(configs):
        n_tok = cfg["new_tokens"] * len(cfg["prompts"])
        base = n_tok / min(times[("vllm plain", ci)])
        for name in SYSTEMS:
            ts = times[(name, ci)]
            tps = n_tok / min(ts)
            greedy = cfg["temperature"] == 0
            rows.append(
                dict(
                    system=name,
                    batch=cfg["batch"],
                    temperature=cfg["temperature"],
                    top_p=cfg["top_p"],
                    tokens_per_s=round(tps, 1),
                    tokens_per_s_each_round=[round(n_tok / t, 1) for t in ts],
                    speedup_vs_vllm_plain=round(tps / base, 3),
                    identical_to_vllm_plain=(tokens[(name, ci)] == tokens[("vllm plain", ci)])
                    if greedy
                    else None,
                    our_verified_batches=verified[(name, ci)],
                )
            )
    return rows


# ---------------------------------------------------------------------------
# The op row.
# ---------------------------------------------------------------------------


def bench_ops(args) -> list[dict]:
    import torch
    from vllm.platforms import current_platform
    from vllm.v1.sample import rejection_sampler as rs
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata
    from vllm.v1.spec_decode.metadata import SpecDecodeMetadata

    import specdec_cuda as sd

    torch.set_num_threads(args.threads)
    if hasattr(current_platform, "register_triton_kernel_overrides"):
        current_platform.register_triton_kernel_overrides()  # vLLM's CPU fallbacks
    B, T, P = 64, 0.8, 0.9
    rows = []

    def one(V: int) -> dict:  # one vocabulary size (a function, so the closures bind its tensors)
        g = torch.Generator().manual_seed(0)
        n = B * K
        target_logits = torch.randn(B * (K + 1), V, generator=g) * 4  # per request: K draft rows, then bonus
        draft_logits = torch.randn(n, V, generator=g) * 4
        draft_probs = torch.softmax(draft_logits / T, -1).contiguous()
        draft_ids = torch.multinomial(draft_probs, 1, generator=g).view(-1).to(torch.int32).contiguous()
        rows_draft = torch.arange(B * (K + 1)).view(B, K + 1)[:, :K].reshape(-1)
        meta = SpecDecodeMetadata.make_dummy(draft_ids.view(B, K).tolist(), torch.device("cpu"))
        smeta = SamplingMetadata(
            temperature=torch.full((B,), T),
            all_greedy=False,
            all_random=True,
            top_p=torch.full((B,), P),
            top_k=None,
            generators={},
            max_num_logprobs=None,
            no_penalties=True,
            prompt_token_ids=None,
            frequency_penalties=torch.zeros(B),
            presence_penalties=torch.zeros(B),
            repetition_penalties=torch.ones(B),
            output_token_ids=[[] for _ in range(B)],
            allowed_token_ids_mask=None,
            bad_words_token_ids={},
            logitsprocs=LogitsProcessors(),
        )
        bonus = torch.randint(0, V, (B, 1), generator=g)

        def vllm_once():
            x = target_logits[rows_draft].clone()
            x = rs.apply_sampling_constraints(x, meta.cu_num_draft_tokens, smeta)
            return rs.rejection_sample(
                meta.draft_token_ids,
                meta.num_draft_tokens,
                meta.max_spec_len,
                meta.cu_num_draft_tokens,
                draft_probs,
                x,
                bonus,
                smeta,
            )

        # ours: the ragged rows as vLLM lays them out (node 0 = root, then the K drafts)
        cu = torch.arange(0, B * (K + 1) + 1, K + 1, dtype=torch.int32)
        tokens = torch.cat([torch.zeros(B, 1, dtype=torch.int64), draft_ids.view(B, K).long()], 1).view(-1)
        parents = (torch.arange(K + 1, dtype=torch.int32) - 1).repeat(B)
        dprobs = torch.zeros(B, K + 1, V)
        dprobs[:, 1:] = draft_probs.view(B, K, V)
        dprobs = dprobs.view(-1, V)
        temp = torch.full((B,), T)
        top_k = torch.zeros(B, dtype=torch.int32)
        top_p = torch.full((B,), P)
        seed = torch.arange(B, dtype=torch.int64)
        offset = torch.zeros(B, dtype=torch.int64)

        def ours_once():
            probs = sd.ops.sampling_probs_ragged(target_logits, cu, temp, top_k, top_p)
            return sd.ops.rejection_sample_ragged(tokens, parents, cu, dprobs, probs, seed, offset)

        t_v, t_o = [], []
        for it in range(6):
            t0 = time.perf_counter()
            vllm_once()
            t1 = time.perf_counter()
            ours_once()
            t2 = time.perf_counter()
            if it:
                t_v.append((t1 - t0) * 1e3)
                t_o.append((t2 - t1) * 1e3)
        mv, mo = statistics.median(t_v), statistics.median(t_o)
        return dict(
            B=B,
            K=K,
            V=V,
            temperature=T,
            top_p=P,
            threads=args.threads,
            vllm_ms=round(mv, 1),
            ours_ms=round(mo, 1),
            ratio_vllm_over_ours=round(mv / mo, 2),
            vllm_ms_each=[round(t, 1) for t in t_v],
            ours_ms_each=[round(t, 1) for t in t_o],
        )

    for V in (32000,) if args.quick else (32000, 128000):
        rows.append(one(V))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--quick", action="store_true", help="1 round, 32 new tokens, V 32k only")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds after the warm-up (default 2)")
    ap.add_argument("--new-tokens", type=int, default=96, help="new tokens per prompt (default 96)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    ap.add_argument(
        "--vllm-prefix-caching",
        action="store_true",
        help="leave vLLM's prefix cache on (its timed rounds then skip the repeated prompts' prefill)",
    )
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end table")
    ap.add_argument("--no-ops", action="store_true", help="skip the op row")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker_main(*args.worker, args.threads, args.vllm_prefix_caching)
        return
    if args.quick:
        args.rounds, args.new_tokens = 1, 32
    result = {"e2e": [], "ops": [], "vllm_prefix_caching": args.vllm_prefix_caching}
    if not args.no_ops:
        result["ops"] = bench_ops(args)
    if not args.no_e2e:
        result["e2e"] = bench_e2e(args)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for r in result["ops"]:
        print(
            f"verify B={r['B']} K={r['K']} V={r['V']} T={r['temperature']} top-p={r['top_p']}: "
            f"vLLM {r['vllm_ms']} ms, ours {r['ours_ms']} ms, {r['ratio_vllm_over_ours']}x "
            f"(each: vLLM {r['vllm_ms_each']}, ours {r['ours_ms_each']})"
        )
    if result["e2e"]:
        print(f"\nvLLM prefix caching: {'on' if args.vllm_prefix_caching else 'off'}")
        print(f"{'system':34} {'batch':>5} {'T':>4} {'tok/s':>8} {'vs vLLM plain':>13}  identical  rounds")
        for r in result["e2e"]:
            ident = (
                "-"
                if r["identical_to_vllm_plain"] is None
                else ("yes" if r["identical_to_vllm_plain"] else "NO")
            )
            print(
                f"{r['system']:34} {r['batch']:>5} {r['temperature']:>4} {r['tokens_per_s']:>8} "
                f"{r['speedup_vs_vllm_plain']:>12}x  {ident:9}  {r['tokens_per_s_each_round']}"
            )


if __name__ == "__main__":
    main()
