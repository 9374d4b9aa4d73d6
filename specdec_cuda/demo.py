"""The ``generate`` and ``demo`` commands of ``python -m specdec_cuda``.

``generate`` runs speculative decoding on any local Hugging Face checkpoints and
streams the text as it is accepted; ``demo`` runs the bundled tiny model pair
(``specdec_cuda/assets/tiny``) over held-out prompts with plain and speculative
decoding, prints a table and writes a plot.  Expected problems (missing
directories, mismatched tokenizers, bad flags) end in one ``error:`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ASSETS = Path(__file__).resolve().parent / "assets" / "tiny"


class CLIError(Exception):
    """An expected problem: printed as one line, exit status 2."""


# ---------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: no CUDA device is available here")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise CLIError(f"--device {name}: {exc}") from None


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":  # float32 on the CPU (half matmuls are slow there), bfloat16 on a GPU
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def load_checkpoint(
    path: str | os.PathLike, role: str, device: torch.device, dtype: torch.dtype = torch.float32
):
    """(model, tokenizer) from a local Hugging Face directory, or CLIError."""
    path = Path(path)
    if not path.is_dir():
        raise CLIError(f"--{role} {path}: no such directory")
    if not (path / "config.json").is_file():
        raise CLIError(f"--{role} {path}: not a Hugging Face checkpoint (no config.json)")
    import logging

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - any loader failure is one line
        raise CLIError(f"--{role} {path}: cannot load its tokenizer ({type(exc).__name__}: {exc})") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    except Exception as exc:  # noqa: BLE001
        raise CLIError(f"--{role} {path}: cannot load the model ({type(exc).__name__}: {exc})") from None
    return model, tok


def check_tokenizers(tok_t, tok_d) -> None:
    if tok_t.get_vocab() != tok_d.get_vocab():
        raise CLIError(
            "the target and draft tokenizers differ (different vocabularies); "
            "speculative decoding needs one shared tokenizer"
        )


def make_drafter(kind: str, draft_model, *, k: int, tree: str | None, adaptive: bool):
    from . import drafters
    from .tree import DEFAULT_TREE

    if kind in ("chain", "tree", "dynamic") and draft_model is None:
        raise CLIError(f"--drafter {kind} needs --draft DIR")
    try:
        if kind == "none":
            return drafters.NoDrafter()
        if kind == "chain":
            return drafters.ChainDrafter(draft_model, k=k, adaptive=adaptive)
        if kind == "tree":
            choices = DEFAULT_TREE
            if tree not in (None, "default"):
                try:
                    choices = json.loads(tree)
                except json.JSONDecodeError as exc:
                    raise CLIError(f"--tree: not a JSON choice list ({exc.msg})") from None
            return drafters.TreeDrafter(draft_model, choices)
        if kind == "dynamic":
            return drafters.DynamicTreeDrafter(draft_model, depth=k, adaptive=adaptive)
        if kind == "lookup":
            return drafters.PromptLookupDrafter(k=k, adaptive=adaptive)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    raise CLIError(f"--drafter {kind}: unknown drafter")


# ---------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------


def add_generate_args(p) -> None:
    p.description = (
        "Speculative decoding on local Hugging Face checkpoints that share a tokenizer: the text is "
        "streamed as the target accepts it, then the statistics are printed. Greedy by default "
        "(identical to the target's own greedy generate); with --temperature the output is sampled "
        "losslessly from the target's distribution. Architectures the loop cannot run exactly are "
        "refused with one error line."
    )
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    p.add_argument(
        "--target", required=True, metavar="DIR", help="target model directory (Hugging Face format)"
    )
    p.add_argument("--draft", metavar="DIR", help="draft model directory (same tokenizer as the target)")
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument(
        "--drafter",
        choices=["chain", "tree", "dynamic", "lookup", "none"],
        help="where drafts come from: a draft-model chain, a static tree, an EAGLE-2 style dynamic tree, "
        "prompt lookup (n-grams, no draft model) or none (plain decoding); default: chain with --draft, "
        "lookup without, tree when --tree is given",
    )
    p.add_argument(
        "--tree",
        metavar="JSON",
        help='static tree as a JSON choice list, e.g. "[[0],[1],[0,0]]", or "default"',
    )
    p.add_argument("--k", type=int, default=4, help="draft length (chain, lookup) or depth (dynamic)")
    p.add_argument("--fixed", action="store_true", help="keep the draft length fixed instead of adapting it")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate at most")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most probable tokens; 0 = off")
    p.add_argument(
        "--top-p", type=float, default=1.0, help="keep the most probable tokens of this mass; 1 = off"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="the sampling seed (the same seed gives the same text)"
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (a GPU when there is one)")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", *DTYPES],
        help="weights and KV cache dtype; auto: float32 on the CPU, bfloat16 on a GPU",
    )
    p.add_argument("--paged", action="store_true", help="paged KV caches instead of contiguous ones")


def run_generate(args) -> int:
    from .decoding import SpeculativeDecoder

    if args.max_new_tokens < 1:
        raise CLIError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise CLIError(f"--temperature must be >= 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise CLIError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.top_k < 0:
        raise CLIError(f"--top-k must be >= 0, got {args.top_k}")
    if args.k < 1:
        raise CLIError(f"--k must be >= 1, got {args.k}")
    if not args.prompt:
        raise CLIError("--prompt is empty")
    device = _device(args.device)
    dtype = _dtype(args.dtype, device)
    target, tok = load_checkpoint(args.target, "target", device, dtype)
    draft = None
    if args.draft:
        draft, tok_d = load_checkpoint(args.draft, "draft", device, dtype)
        check_tokenizers(tok, tok_d)
    kind = args.drafter or ("tree" if args.tree else ("chain" if draft is not None else "lookup"))
    from .models import UnsupportedModelError, as_model

    try:
        target = as_model(target, role="target")  # unsupported architectures are refused here
        drafter = make_drafter(kind, draft, k=args.k, tree=args.tree, adaptive=not args.fixed)
        decoder = SpeculativeDecoder(target, drafter, paged=args.paged)
    except UnsupportedModelError as exc:
        raise CLIError(f"{exc}; this architecture is not supported") from None
    except (TypeError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    ids = tok(args.prompt, return_tensors="pt").input_ids[0]
    if ids.numel() == 0:
        raise CLIError("--prompt encodes to no tokens")
    stops = [tok.eos_token_id] if tok.eos_token_id is not None else []
    out = sys.stdout
    out.write(args.prompt)
    out.flush()
    new: list[int] = []
    shown = ""
    for step in decoder.stream(
        [ids],
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_tokens=stops,
    ):
        new.extend(step.tokens[0])
        text = tok.decode(new, skip_special_tokens=True)
        if text.startswith(shown):  # print what is new (BPE may rewrite the tail)
            out.write(text[len(shown) :])
            shown = text
        out.flush()
    s = decoder.stats
    out.write("\n\n")
    out.write(
        f"[{kind}] {s.total_new_tokens} tokens in {s.wall_s:.2f} s ({s.tokens_per_s:.1f} tok/s); "
        f"{s.steps} target calls, tau {s.tau:.2f}, {s.draft_calls} draft calls\n"
    )
    if s.acceptance_by_position:
        acc = ", ".join(f"{a:.2f}" for a in s.acceptance_by_position[:10])
        out.write(f"acceptance by draft position: {acc}\n")
    phases = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in s.phase_s.items())
    out.write(f"time by phase: {phases}\n")
    return 0


# ---------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------


def add_demo_args(p) -> None:
    p.description = (
        "Run the bundled tiny model pair (specdec_cuda/assets/tiny: a Llama-architecture target and "
        "draft trained on the Python standard library) over held-out prompts with plain and "
        "speculative decoding; print tau, tokens/s and speedup per mode, check that every mode's "
        "greedy output equals plain greedy decoding, and write a plot."
    )
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    p.add_argument("--prompts", type=int, default=6, help="held-out prompts to use")
    p.add_argument("--max-new-tokens", type=int, default=96, help="tokens to generate per prompt")
    p.add_argument("--out", default="results/demo", help="results folder (table JSON + plot)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (a GPU when there is one)")
    p.add_argument("--max-k", type=int, default=8, help="longest chain in the speedup sweep")
    p.add_argument("--assets", default=str(ASSETS), help=argparse.SUPPRESS)


def _timed(decoder, prompts, max_new, rounds: int = 2):
    """Generate for each prompt (batch 1) after a warm-up call, ``rounds`` times;
    returns (outputs, total tokens, seconds of the fastest round, stats list)."""
    decoder.generate([prompts[0]], max_new_tokens=8)  # warm-up
    best = None
    for _ in range(rounds):
        outs, stats, tokens, secs = [], [], 0, 0.0
        for p in prompts:
            t0 = time.perf_counter()
            o = decoder.generate([p], max_new_tokens=max_new)
            secs += time.perf_counter() - t0
            outs.append(o.new_tokens[0])
            stats.append(o.stats)
            tokens += o.stats.total_new_tokens
        if best is None or secs < best[2]:
            best = (outs, tokens, secs, stats)
    return best


def _merge_acceptance(stats) -> list[float]:
    prop, acc = [], []
    for s in stats:
        for j, (p, a) in enumerate(zip(s.proposed_by_position, s.accepted_by_position)):
            if j >= len(prop):
                prop.append(0)
                acc.append(0)
            prop[j] += p
            acc[j] += a
    return [a / p if p else 0.0 for a, p in zip(acc, prop)]


def run_demo(args) -> int:
    from tqdm import tqdm

    from . import drafters
    from .decoding import SpeculativeDecoder

    assets = Path(args.assets)
    if not (assets / "target" / "config.json").is_file() or not (assets / "draft" / "config.json").is_file():
        raise CLIError(
            f"the bundled models are missing under {assets}; train them with "
            "`python python/train_tiny_models.py`"
        )
    if args.max_new_tokens < 1 or args.prompts < 1 or args.max_k < 1:
        raise CLIError("--max-new-tokens, --prompts and --max-k must be >= 1")
    device = _device(args.device)
    target, tok = load_checkpoint(assets / "target", "target", device)
    draft, tok_d = load_checkpoint(assets / "draft", "draft", device)
    check_tokenizers(tok, tok_d)
    texts = json.loads((assets / "prompts.json").read_text())[: args.prompts]
    prompts = [tok(t, return_tensors="pt").input_ids[0] for t in texts]
    n_new = args.max_new_tokens
    eos = tok.eos_token_id

    modes = [
        ("plain decoding (specdec loop)", lambda: drafters.NoDrafter()),
        ("chain K=4", lambda: drafters.ChainDrafter(draft, k=4, adaptive=False)),
        ("chain adaptive", lambda: drafters.ChainDrafter(draft, k=4)),
        ("static tree (16 nodes)", lambda: drafters.TreeDrafter(draft)),
        ("dynamic tree (EAGLE-2)", lambda: drafters.DynamicTreeDrafter(draft, topk=4, depth=5, num_nodes=24)),
        ("prompt lookup", lambda: drafters.PromptLookupDrafter(k=6)),
    ]
    sweep = list(range(1, args.max_k + 1))
    total = 1 + len(modes) + len(sweep)
    rows, results = [], {}
    with tqdm(total=total, desc="demo", unit="run", file=sys.stderr) as bar:
        # Plain decoding with transformers, the reference output.
        bar.set_postfix_str("transformers generate")
        ref, secs_hf, tokens_hf = [], 0.0, 0
        with torch.inference_mode():
            target.generate(
                prompts[0][None].to(device), max_new_tokens=4, do_sample=False, pad_token_id=eos
            )  # warm-up
            for _ in range(2):  # the faster of two rounds, like the other modes
                ref, secs, tokens_hf = [], 0.0, 0
                for p in prompts:
                    t0 = time.perf_counter()
                    o = target.generate(
                        p[None].to(device),
                        max_new_tokens=n_new,
                        do_sample=False,
                        pad_token_id=eos,
                        eos_token_id=None,
                    )
                    secs += time.perf_counter() - t0
                    ref.append(o[0, p.numel() :].cpu())
                    tokens_hf += ref[-1].numel()
                secs_hf = secs if secs_hf == 0.0 else min(secs_hf, secs)
        bar.update(1)
        for name, make in modes:
            bar.set_postfix_str(name)
            decoder = SpeculativeDecoder(target, make())
            outs, tokens, secs, stats = _timed(decoder, prompts, n_new)
            same = all(torch.equal(a, b) for a, b in zip(outs, ref))
            steps = sum(s.steps for s in stats)
            results[name] = dict(
                tau=tokens / steps,
                tokens_per_s=tokens / secs,
                identical=same,
                acceptance=_merge_acceptance(stats),
                seconds=secs,
                tokens=tokens,
            )
            bar.update(1)
        sweep_speed = []
        for k in sweep:
            bar.set_postfix_str(f"chain K={k}")
            decoder = SpeculativeDecoder(target, drafters.ChainDrafter(draft, k=k, adaptive=False))
            _, tokens, secs, stats = _timed(decoder, prompts, n_new)
            sweep_speed.append(tokens / secs)
            if k == args.max_k:
                results["_sweep_acceptance"] = _merge_acceptance(stats)
            bar.update(1)

    base = results["plain decoding (specdec loop)"]["tokens_per_s"]
    hf_speed = tokens_hf / secs_hf
    rows.append(("plain decoding (transformers generate)", 1.0, hf_speed, hf_speed / base, True))
    for name, _ in modes:
        r = results[name]
        rows.append((name, r["tau"], r["tokens_per_s"], r["tokens_per_s"] / base, r["identical"]))
    sweep_speedup = [s / base for s in sweep_speed]

    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    import platform

    machine = (
        f"{platform.machine()} {os.cpu_count()} CPU threads, torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads, device {device}"
    )
    header = (
        f"{len(prompts)} held-out prompts x {n_new} new tokens, greedy, batch 1, "
        f"fastest of 2 rounds; "
        f"target {sum(p.numel() for p in target.parameters()) / 1e6:.1f}M params, "
        f"draft {sum(p.numel() for p in draft.parameters()) / 1e6:.2f}M; {machine}"
    )
    lines = [
        header,
        "",
        f"{'mode':<40} {'tau':>6} {'tok/s':>9} {'speedup':>8}  identical to plain greedy",
        "-" * 86,
    ]
    for name, tau, speed, sp, same in rows:
        lines.append(f"{name:<40} {tau:>6.2f} {speed:>9.1f} {sp:>7.2f}x  {'yes' if same else 'NO'}")
    lines += [
        "",
        "speedup is over plain decoding through the same loop (first row for transformers' own);",
        "chain sweep (fixed K): " + ", ".join(f"K={k} {s:.2f}x" for k, s in zip(sweep, sweep_speedup)),
    ]
    table = "\n".join(lines)
    print(table)
    plot = out_dir / "demo.png"
    _plot(plot, results, sweep, sweep_speedup)
    (out_dir / "demo.json").write_text(
        json.dumps(
            dict(
                header=header,
                rows=[
                    dict(mode=r[0], tau=r[1], tokens_per_s=r[2], speedup=r[3], identical=r[4]) for r in rows
                ],
                sweep=dict(k=sweep, speedup=sweep_speedup),
                acceptance={k: v["acceptance"] for k, v in results.items() if not k.startswith("_")},
            ),
            indent=1,
        )
    )
    (out_dir / "demo.txt").write_text(table + "\n")
    print(f"\nresults: {out_dir} (demo.txt, demo.json, demo.png)")
    best = max(r[3] for r in rows[2:])
    return 0 if all(r[4] for r in rows) and best > 0 else 1


def _plot(path: Path, results: dict, sweep: list[int], sweep_speedup: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for name in ("chain adaptive", "dynamic tree (EAGLE-2)", "prompt lookup"):
        acc = results[name]["acceptance"]
        if acc:
            a1.plot(range(1, len(acc) + 1), acc, marker="o", label=name)
    acc = results.get("_sweep_acceptance", [])
    if acc:
        a1.plot(range(1, len(acc) + 1), acc, marker="s", label=f"chain K={len(acc)}")
    a1.set_xlabel("draft position (depth)")
    a1.set_ylabel("acceptance rate")
    a1.set_ylim(0, 1.02)
    a1.set_title("acceptance by draft position")
    a1.legend(fontsize=8)
    a2.plot(sweep, sweep_speedup, marker="o")
    a2.axhline(1.0, color="gray", lw=0.8, ls="--")
    a2.set_xlabel("draft length K (chain, fixed)")
    a2.set_ylabel("speedup over plain decoding")
    a2.set_title("speedup against draft length")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
