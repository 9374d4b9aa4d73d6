"""Where the decoding loop's time goes, per step, on the bundled tiny pair.

Usage:
    python python/profile_loop.py [--modes plain,lookup,chain] [--batches 1,8]
        [--threads N] [--new-tokens N] [--linears]

For each mode (``NoDrafter``, ``PromptLookupDrafter(k=4, adaptive=False)``,
``ChainDrafter(draft, k=4, adaptive=False)``) and batch size, greedy, on the six
held-out prompts as ``python/bench_vllm.py`` runs them (batch 1: the first six, one
call each; batch 8: the first eight in one call), it prints tokens/s and
the loop's ``stats.phase_s`` per verification step in ms: prefill (amortised), draft,
target, verify, commit, other.  ``--linears`` also times every linear layer of the
target back to back at batch 1: the floor that streaming the weights from memory sets
on one forward.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from bench_vllm import TINY, _prompts, our_drafter  # this folder: the bench's prompts and drafters
from transformers import AutoModelForCausalLM

import specdec_cuda as sd


def linears_ms(model, repeats: int = 50) -> float:
    weights = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n]
    weights.append(model.get_output_embeddings().weight)
    xs = {w.shape[1]: torch.randn(1, w.shape[1]) for w in weights}
    for _ in range(5):
        for w in weights:
            F.linear(xs[w.shape[1]], w)
    t0 = time.perf_counter()
    for _ in range(repeats):
        for w in weights:
            F.linear(xs[w.shape[1]], w)
    mib = sum(w.numel() * w.element_size() for w in weights) / 2**20
    print(f"{len(weights)} linears ({mib:.1f} MiB of weights), back to back at batch 1:", end=" ")
    return (time.perf_counter() - t0) / repeats * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="plain,lookup,chain")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as bench_vllm)")
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--linears", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    target = AutoModelForCausalLM.from_pretrained(str(TINY / "target"), dtype=torch.float32).eval()
    draft = AutoModelForCausalLM.from_pretrained(str(TINY / "draft"), dtype=torch.float32).eval()
    prompts = [torch.tensor(p) for p in _prompts(8)]
    if args.linears:
        print(f"{linears_ms(target):.2f} ms")
    for mode in args.modes.split(","):
        decoder = sd.SpeculativeDecoder(target, our_drafter(mode, draft))
        for batch in (int(b) for b in args.batches.split(",")):
            decoder.generate([prompts[0]], max_new_tokens=8)  # warm-up
            phases: dict[str, float] = {}
            steps = tokens = 0
            t0 = time.perf_counter()
            for group in [[p] for p in prompts[:6]] if batch == 1 else [prompts[:batch]]:
                decoder.generate(group, max_new_tokens=args.new_tokens)
                for k, v in decoder.stats.phase_s.items():
                    phases[k] = phases.get(k, 0.0) + v
                steps += decoder.stats.steps
                tokens += sum(decoder.stats.new_tokens)
            wall = time.perf_counter() - t0
            per_step = "  ".join(f"{k} {v * 1e3 / steps:.2f}" for k, v in phases.items())
            print(
                f"{mode:7s} b{batch}: {tokens / wall:6.1f} tok/s  steps {steps}  ms/step: {per_step}",
                flush=True,
            )


if __name__ == "__main__":
    main()
