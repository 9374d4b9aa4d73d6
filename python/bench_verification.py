"""The gain of block and traversal verification over token-wise verification:
expected accepted drafts per target call on the same random distributions.

Usage:
    python python/bench_verification.py [--quick] [--json] [--device cpu|cuda]
        [--instances N] [--rows R] [--seed S] [--out FILE]

Two parts, both on random "language models" whose target and draft next-token
rows go through ``ops.sampling_probs`` (the loop's transform) at each sampling
configuration: T=1; T=0.7; T=0.7 with top-k 8 and top-p 0.9.  Target logits are
``2 * randn``, draft logits the target's plus ``sigma * randn`` with sigma drawn
per instance from [0.5, 3] (from close to far drafts).

exact (chains, no sampling)
    Conditionals depend on the whole prefix (a fresh row for every prefix),
    V = 6, K = 2, 3, 4.  The expected accepted drafts per call, in closed form
    (docs/ops.md; summed over all V^i prefixes in float64):
    E_tokenwise = sum_i sum_{x^i} prod_j min(q_{j-1}(x_j), p_{j-1}(x_j)) and
    E_block = sum_i sum_{x^i} q(x^i) P_i(x^i), P_i = min(1, P_{i-1} p(x_i)/q(x_i)).
    Per instance the gain E_block - E_tokenwise; the table gives the means, the
    mean gain (absolute and relative), the smallest gain (never below 0 up to
    rounding: the script raises SystemExit if any is below -1e-12) and the
    share of instances with a gain above 1e-12.

ops (chains and trees, Monte Carlo through ``rejection_sample``)
    First-order Markov models over V = 64 tokens (target row P[prev], draft row
    Q[prev]).  Per instance R rows with random roots; drafts drawn from the draft
    rows (chains K = 4; trees with branching (3, 2, 1): 15 drafts, N = 16, siblings
    drawn independently or without replacement); every method verifies the very
    same drafts with the very same Philox streams, so the difference is paired.
    Methods: chains tokenwise vs block (and traversal, which must equal block
    exactly on a chain: checked, the script raises SystemExit otherwise); trees with
    iid siblings tokenwise vs traversal; trees with siblings drawn without
    replacement tokenwise (RSD) vs traversal.  The table gives per (shape, drafting,
    config) the mean accepted drafts per call of both rules, the mean gain, its
    standard error over all rows of all instances (paired), the relative gain, and
    the smallest per-instance gain in units of its own standard error (a value
    below -4 would suggest a rule losing in expectation).

Defaults: 200 exact instances per (K, config), 12 Monte Carlo instances of 20 000
rows per (shape, config) (``--quick``: 40, 4 and 5 000).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specdec_cuda import ops  # noqa: E402

CONFIGS = {  # name -> (temperature, top_k, top_p)
    "T1": (1.0, 0, 1.0),
    "T0.7": (0.7, 0, 1.0),
    "T0.7-k8-p0.9": (0.7, 8, 0.9),
}


def transform(logits: torch.Tensor, cfg: str) -> torch.Tensor:
    """sampling_probs of float32 logits [R, V] under config cfg, as float64."""
    t, k, p = CONFIGS[cfg]
    rows = logits.shape[0]
    return ops.sampling_probs(
        logits.float().contiguous(),
        torch.full((rows,), t, dtype=torch.float32),
        torch.full((rows,), k, dtype=torch.int32),
        torch.full((rows,), p, dtype=torch.float32),
    ).double()


def model_rows(count: int, vocab: int, sigma: float, cfg: str, gen: torch.Generator):
    """count (target, draft) rows: target logits 2 randn, draft = target + sigma randn."""
    t = 2.0 * torch.randn(count, vocab, generator=gen)
    d = t + sigma * torch.randn(count, vocab, generator=gen)
    return transform(t, cfg), transform(d, cfg)


# ---------------------------------------------------------------------------
# exact: closed forms on chains with prefix-dependent conditionals
# ---------------------------------------------------------------------------


def exact_chain(k: int, vocab: int, sigma: float, cfg: str, gen: torch.Generator) -> tuple[float, float]:
    """(E_tokenwise, E_block) for one random prefix-dependent model, chain of k drafts."""
    e_tok = e_block = 0.0
    q_prefix = torch.ones(1, dtype=torch.float64)  # q(x^i) over the V^i prefixes
    weight = torch.ones(1, dtype=torch.float64)  # P_i(x^i)
    tok_prod = torch.ones(1, dtype=torch.float64)  # prod_j min(q, p)
    for _ in range(k):
        p, q = model_rows(q_prefix.numel(), vocab, sigma, cfg, gen)  # the rows after each prefix
        num = weight[:, None] * p  # ratio(P_{i-1} p(x), q(x)), as the kernels compute it
        new_weight = torch.where(q > 0, (num / q.clamp_min(1e-300)).clamp(max=1.0), (num > 0).double())
        # a draft with q(x) = 0 is never drawn: its prefix has q mass 0 and adds nothing
        q_prefix = (q_prefix[:, None] * q).reshape(-1)
        weight = new_weight.reshape(-1)
        tok_prod = (tok_prod[:, None] * torch.minimum(p, q)).reshape(-1)
        e_tok += float(tok_prod.sum())
        e_block += float((q_prefix * weight).sum())
    return e_tok, e_block


def run_exact(args, gen) -> list[dict]:
    rows = []
    for cfg in CONFIGS:
        for k in (2, 3, 4):
            toks, blocks, gains = [], [], []
            for _ in range(args.exact_instances):
                sigma = 0.5 + 2.5 * float(torch.rand(1, generator=gen))
                e_tok, e_block = exact_chain(k, args.exact_vocab, sigma, cfg, gen)
                toks.append(e_tok)
                blocks.append(e_block)
                gains.append(e_block - e_tok)
            worst = min(gains)
            if worst < -1e-12:
                raise SystemExit(f"exact K={k} {cfg}: block below tokenwise by {-worst:.3e}")
            n = len(gains)
            mt, mb = sum(toks) / n, sum(blocks) / n
            rows.append(
                {
                    "part": "exact",
                    "shape": f"chain K={k}",
                    "V": args.exact_vocab,
                    "config": cfg,
                    "instances": n,
                    "tokenwise": round(mt, 4),
                    "block": round(mb, 4),
                    "mean_gain": round(mb - mt, 4),
                    "rel_gain_pct": round(100.0 * (mb - mt) / mt, 2),
                    "min_gain": float(f"{worst:.3g}"),
                    "max_gain": round(max(gains), 4),
                    "share_gain_pos": round(sum(g > 1e-12 for g in gains) / n, 3),
                }
            )
            progress(f"exact chain K={k} {cfg} done")
    return rows


# ---------------------------------------------------------------------------
# ops: Monte Carlo through rejection_sample, the same drafts and streams
# ---------------------------------------------------------------------------


def tree_parents(branching) -> list[int]:
    parents, level = [-1], [0]
    for b in branching:
        nxt = []
        for node in level:
            for _ in range(b):
                nxt.append(len(parents))
                parents.append(node)
        level = nxt
    return parents


def draw_rows(w: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One token per row of float64 weights w [R, V] (every row with mass)."""
    cdf = w.cumsum(-1)
    u = torch.rand(w.shape[0], 1, generator=gen, dtype=torch.float64) * cdf[:, -1:]
    idx = torch.searchsorted(cdf, u, right=True)[:, 0].clamp(max=w.shape[1] - 1)
    return idx


def draft_tokens(parents: list[int], Q: torch.Tensor, roots: torch.Tensor, wor: bool, gen) -> torch.Tensor:
    """Each node's children drawn from Q[its token]: independently, or without
    replacement in index order (earlier siblings' tokens zeroed; once no mass is left,
    the smallest unused tokens: deterministic fillers)."""
    rows, n, vocab = roots.shape[0], len(parents), Q.shape[1]
    tokens = torch.empty(rows, n, dtype=torch.int64)
    tokens[:, 0] = roots
    kids = [[c for c in range(n) if parents[c] == u] for u in range(n)]
    for u in range(n):
        if not kids[u]:
            continue
        w = Q[tokens[:, u]].clone()
        used = torch.zeros(rows, vocab, dtype=torch.bool)
        for c in kids[u]:
            if not wor:
                tokens[:, c] = draw_rows(w, gen)
                continue
            mass = w.sum(-1) > 0
            drawn = draw_rows(torch.where(mass[:, None], w, torch.ones_like(w)), gen)
            tok = torch.where(mass, drawn, (~used).double().argmax(-1))
            tokens[:, c] = tok
            w.scatter_(1, tok[:, None], 0.0)
            used.scatter_(1, tok[:, None], True)
    return tokens


def accepted(tokens, parents, P, Q, seeds, device, method, siblings) -> torch.Tensor:
    rows, n = tokens.shape
    t = tokens.to(device)
    par = torch.tensor(parents, dtype=torch.int32).expand(rows, n).contiguous().to(device)
    _, num, _ = ops.rejection_sample(
        t,
        par,
        Q[tokens].float().contiguous().to(device),
        P[tokens].float().contiguous().to(device),
        seeds.to(device),
        torch.zeros(rows, dtype=torch.int64, device=device),
        method=method,
        siblings=siblings,
    )
    return (num.cpu() - 1).double()  # accepted drafts (the root not counted)


MC_CASES = (  # (shape, parents, drafting, baseline (method, siblings), new (method, siblings))
    ("chain K=4", tree_parents((1, 1, 1, 1)), "iid", ("tokenwise", "iid"), ("block", "iid")),
    ("tree (3,2,1)", tree_parents((3, 2, 1)), "iid", ("tokenwise", "iid"), ("traversal", "iid")),
    (
        "tree (3,2,1)",
        tree_parents((3, 2, 1)),
        "without replacement",
        ("tokenwise", "without_replacement"),
        ("traversal", "without_replacement"),
    ),
)


def run_ops(args, gen) -> list[dict]:
    out = []
    vocab, rows = args.vocab, args.rows
    for shape, parents, drafting, base_rule, new_rule in MC_CASES:
        for cfg in CONFIGS:
            base_all, new_all, worst_z = [], [], math.inf
            for _ in range(args.instances):
                sigma = 0.5 + 2.5 * float(torch.rand(1, generator=gen))
                P, Q = model_rows(vocab, vocab, sigma, cfg, gen)
                roots = torch.randint(0, vocab, (rows,), generator=gen)
                tokens = draft_tokens(parents, Q, roots, drafting != "iid", gen)
                seeds = torch.randint(0, 2**62, (rows,), generator=gen)
                base = accepted(tokens, parents, P, Q, seeds, args.device, *base_rule)
                new = accepted(tokens, parents, P, Q, seeds, args.device, *new_rule)
                if new_rule[0] == "block":  # traversal must be block, bit for bit, on a chain
                    trav = accepted(tokens, parents, P, Q, seeds, args.device, "traversal", "iid")
                    if not torch.equal(trav, new):
                        raise SystemExit(f"{shape} {cfg}: traversal differs from block on a chain")
                diff = new - base
                se = float(diff.std()) / math.sqrt(rows)
                if se > 0:
                    worst_z = min(worst_z, float(diff.mean()) / se)
                base_all.append(base)
                new_all.append(new)
            b, nw = torch.cat(base_all), torch.cat(new_all)
            d = nw - b
            out.append(
                {
                    "part": "ops",
                    "shape": shape,
                    "drafting": drafting,
                    "V": vocab,
                    "config": cfg,
                    "baseline": f"{base_rule[0]}/{base_rule[1]}",
                    "method": f"{new_rule[0]}/{new_rule[1]}",
                    "instances": args.instances,
                    "rows": int(b.numel()),
                    "E_baseline": round(float(b.mean()), 4),
                    "E_method": round(float(nw.mean()), 4),
                    "mean_gain": round(float(d.mean()), 4),
                    "gain_se": round(float(d.std()) / math.sqrt(d.numel()), 4),
                    "rel_gain_pct": round(100.0 * float(d.mean()) / float(b.mean()), 2),
                    "min_instance_z": round(worst_z, 2),
                }
            )
            progress(f"ops {shape} {drafting} {cfg} done")
    return out


# ---------------------------------------------------------------------------


def progress(msg: str) -> None:
    print(f"[bench_verification] {msg}", file=sys.stderr, flush=True)


def format_table(rows: list[dict], keys: list[str]) -> list[str]:
    cells = [[str(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return [line(keys), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(c) for c in cells]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--instances", type=int, help="Monte Carlo instances per (shape, config)")
    p.add_argument("--rows", type=int, help="Monte Carlo rows per instance")
    p.add_argument("--exact-instances", type=int, help="exact instances per (K, config)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the tables here instead of stdout")
    args = p.parse_args(argv)
    args.instances = args.instances or (4 if args.quick else 12)
    args.rows = args.rows or (5_000 if args.quick else 20_000)
    args.exact_instances = args.exact_instances or (40 if args.quick else 200)
    args.exact_vocab, args.vocab = 6, 64
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device available")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed)
    exact = run_exact(args, gen)
    mc = run_ops(args, gen)
    if args.json:
        text = "\n".join(json.dumps(r) for r in exact + mc)
    else:
        lines = ["# exact: expected accepted drafts per call, chains, block vs tokenwise (closed forms)"]
        lines += format_table(exact, [k for k in exact[0] if k != "part"])
        lines += ["", "# ops: accepted drafts per call through rejection_sample, same drafts and streams"]
        lines += format_table(mc, [k for k in mc[0] if k != "part"])
        lines += [f"# device {args.device}, seed {args.seed}, total {time.perf_counter() - t0:.1f} s"]
        text = "\n".join(lines)
    text += "\n"
    if args.out:
        Path(args.out).write_text(text)
        progress(f"wrote {args.out}")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
