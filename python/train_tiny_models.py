#!/usr/bin/env python
"""Train a tiny Llama target + draft pair for the speculative-decoding demo.

Everything is offline and reproducible: the corpus is the running Python's own
standard library (``.py`` files under ``sysconfig.get_paths()["stdlib"]``, sorted,
without ``test``/``tests`` directories and ``site-packages``).  One byte-level BPE
tokenizer is trained on the training split and shared by both models.

* target: ``LlamaForCausalLM`` (default 8 layers, hidden 256), trained on the corpus.
* draft:  ``LlamaForCausalLM`` (default 2 layers, hidden 128), trained on the same
  data with a mix of the usual next-token loss and a distillation loss towards the
  target's next-token distribution (improves greedy agreement with the target).

Held-out split: every ``--holdout-every``-th file in sorted order (default 20th).
The script reports held-out loss of both models, simulates greedy chain
speculative decoding on held-out prompts (mean accepted tokens + 1 per target call,
"tau", for K=4 and K=6) and writes everything to ``--out``
(default ``specdec_cuda/assets/tiny``): ``target/``, ``draft/`` (HF format, fp16
weights, tokenizer copied into both), ``prompts.json``, ``loss_curve.json`` and
``metrics.json``.

Example (the bundled models)::

    python python/train_tiny_models.py --threads 1 --minutes 36
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "specdec_cuda" / "assets" / "tiny"

BOS, EOS, PAD = "<s>", "</s>", "<pad>"


# ----------------------------------------------------------------------------- corpus
def stdlib_files(max_chars: int) -> list[tuple[str, str]]:
    """Sorted (relative path, text) list of the stdlib's .py files, capped at max_chars."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "site-packages", "__pycache__", "idle_test"}
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        for fn in filenames:
            if fn.endswith(".py"):
                paths.append(Path(dirpath) / fn)
    paths.sort(key=lambda p: p.relative_to(root).as_posix())
    out, total = [], 0
    for p in paths:
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip():
            continue
        if total + len(text) > max_chars:
            break
        out.append((p.relative_to(root).as_posix(), text))
        total += len(text)
    return out


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # encode() prepends <s>, like the training documents start with it.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )


def make_prompts(held: list[tuple[str, str]], n: int) -> list[str]:
    """Deterministic prompts: a function header + a few lines from held-out files."""
    prompts = []
    cands, firsts = [], set()
    for _, text in held:
        lines = text.split("\n")
        for i, line in enumerate(lines):
            s = line.lstrip()
            if s.startswith("def ") and line.rstrip().endswith(":") and i > 0:
                chunk = "\n".join(lines[i : i + 6]) + "\n"
                if 120 <= len(chunk) <= 320 and line.strip() not in firsts:
                    firsts.add(line.strip())
                    cands.append(chunk)
                    break
    if not cands:
        return [t[:200] for _, t in held[:n]]
    step = max(1, len(cands) // n)
    prompts = cands[::step][:n]
    return prompts


# ----------------------------------------------------------------------------- models
def llama_config(tokenizer, layers, hidden, inter, heads, max_pos=1024):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_pos,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attention_dropout=0.0,
        use_cache=True,
    )


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights counted once


class Batches:
    """Random fixed-length windows from the packed token stream (seeded)."""

    def __init__(self, data: torch.Tensor, seq: int, batch: int, seed: int):
        self.data, self.seq, self.batch = data, seq, batch
        self.g = torch.Generator().manual_seed(seed)

    def next(self) -> torch.Tensor:
        starts = torch.randint(0, len(self.data) - self.seq - 1, (self.batch,), generator=self.g)
        return torch.stack([self.data[s : s + self.seq + 1] for s in starts.tolist()])


@torch.no_grad()
def eval_loss(model, chunks: torch.Tensor, device, bs=16) -> float:
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, len(chunks), bs):
        x = chunks[i : i + bs].to(device)
        logits = model(x[:, :-1]).logits.float()
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="sum")
        tot += loss.item()
        n += x[:, 1:].numel()
    model.train()
    return tot / n


def train(name, model, batches, eval_chunks, device, args, budget_s, max_steps, teacher=None):
    """Time- or step-budgeted AdamW training with warmup + cosine decay to budget end."""
    model.to(device).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    nodecay = [p for n, p in model.named_parameters() if p.dim() < 2]
    lr = args.lr if teacher is None else args.draft_lr
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": nodecay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    curve = []
    t0 = time.time()
    step = 0
    ema = None
    bar = tqdm(
        total=max_steps if max_steps else int(budget_s),
        desc=f"train {name}",
        unit="step" if max_steps else "s",
        dynamic_ncols=True,
        mininterval=2.0,
    )
    last_t = 0.0
    while True:
        el = time.time() - t0
        frac = step / max_steps if max_steps else el / budget_s
        if frac >= 1.0:
            break
        warm = min(1.0, (step + 1) / args.warmup)
        cur_lr = (
            lr * warm * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))
        )
        for g in opt.param_groups:
            g["lr"] = cur_lr
        x = batches.next().to(device)
        inp, tgt = x[:, :-1], x[:, 1:]
        logits = model(inp).logits
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1))
        loss = ce
        if teacher is not None and args.distill_alpha > 0:
            with torch.no_grad():
                t_logp = F.log_softmax(teacher(inp).logits.float(), dim=-1)
            s_logp = F.log_softmax(logits, dim=-1)
            kl = F.kl_div(
                s_logp.reshape(-1, s_logp.size(-1)),
                t_logp.reshape(-1, t_logp.size(-1)),
                log_target=True,
                reduction="batchmean",
            )
            loss = (1 - args.distill_alpha) * ce + args.distill_alpha * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        ce_v = ce.item()
        ema = ce_v if ema is None else 0.95 * ema + 0.05 * ce_v
        el = time.time() - t0
        if max_steps:
            bar.update(1)
        else:
            bar.update(int(el) - int(last_t))
            last_t = el
        bar.set_postfix(loss=f"{ema:.3f}", lr=f"{cur_lr:.2e}", step=step)
        if step % args.log_every == 0 or step == 1:
            rec = {
                "step": step,
                "tokens": step * inp.numel(),
                "time_s": round(el, 1),
                "train_loss": round(ce_v, 4),
                "train_loss_ema": round(ema, 4),
                "lr": cur_lr,
            }
            if teacher is not None and args.distill_alpha > 0:
                rec["kl"] = round(kl.item(), 4)
            if step % (args.log_every * args.eval_every_logs) == 0:
                rec["heldout_loss"] = round(
                    eval_loss(model, eval_chunks[: args.eval_chunks_during], device), 4
                )
            curve.append(rec)
            tqdm.write(
                f"[{name}] step {step:5d}  tok {rec['tokens']:>9,d}  t {el:7.1f}s  "
                f"loss {ce_v:.4f} (ema {ema:.4f})  lr {cur_lr:.2e}"
                + (f"  kl {rec['kl']:.3f}" if "kl" in rec else "")
                + (f"  heldout {rec['heldout_loss']:.4f}" if "heldout_loss" in rec else "")
            )
    bar.close()
    el = time.time() - t0
    final = {
        "step": step,
        "tokens": step * batches.batch * batches.seq,
        "time_s": round(el, 1),
        "train_loss_ema": round(ema, 4) if ema is not None else None,
    }
    curve.append(final)
    return curve, {"steps": step, "tokens": step * batches.batch * batches.seq, "time_s": round(el, 1)}


# ----------------------------------------------------------------------------- tau
@torch.no_grad()
def greedy_generate(model, ids: list[int], n: int, device) -> list[int]:
    """Plain greedy decoding with KV cache (no EOS stop): returns n new token ids."""
    x = torch.tensor([ids], device=device)
    out = model(x, use_cache=True)
    past = out.past_key_values
    nxt = out.logits[0, -1].argmax().item()
    new = [nxt]
    while len(new) < n:
        out = model(torch.tensor([[nxt]], device=device), past_key_values=past, use_cache=True)
        past = out.past_key_values
        nxt = out.logits[0, -1].argmax().item()
        new.append(nxt)
    return new


@torch.no_grad()
def simulate_tau(target, draft, tokenizer, prompts, device, n_new=64, ks=(4, 6)):
    target.eval()
    draft.eval()
    kmax = max(ks)
    res = {k: {"calls": 0, "tokens": 0} for k in ks}
    for p in prompts:
        ids = tokenizer(p)["input_ids"]
        gen = greedy_generate(target, ids, n_new + kmax + 1, device)
        for k in ks:
            pos = 0
            while pos < n_new:
                ctx = ids + gen[:pos]
                prop = greedy_generate(draft, ctx, k, device)
                a = 0
                while a < k and prop[a] == gen[pos + a]:
                    a += 1
                res[k]["calls"] += 1
                res[k]["tokens"] += a + 1
                pos += a + 1
    return {k: res[k]["tokens"] / res[k]["calls"] for k in ks}


# ----------------------------------------------------------------------------- model card
def write_card(out: Path, m: dict) -> None:
    c, t, d, a = m["corpus"], m["target"], m["draft"], m["args"]
    tau = m["tau"]

    def arch(x):
        return (
            f"`LlamaForCausalLM`, {x['layers']} layers, hidden {x['hidden']}, MLP {x['intermediate']}, "
            f"{x['heads']} heads (MHA), tied input/output embeddings, vocab {m['vocab_size']}, "
            f"RoPE, max positions 1024; **{x['params']:,} parameters**"
        )

    def trained(x):
        return (
            f"{x['steps']:,} steps x {a['batch_size']} x {a['seq_len']} tokens = {x['tokens']:,} tokens "
            f"in {x['time_s'] / 60:.1f} min"
        )

    lines = (
        [
            "# Tiny Llama target + draft pair for the speculative-decoding demo",
            "",
            "Two small causal LMs sharing one tokenizer, trained from scratch on Python code "
            "so that speculative decoding can be demonstrated offline on a CPU. They are toys: "
            "the text they write looks like Python but is not meant to be useful.",
            "",
            "| dir | model |",
            "| --- | --- |",
            f"| `target/` | {arch(t)} |",
            f"| `draft/` | {arch(d)} ({t['params'] / d['params']:.1f}x fewer) |",
            "",
            "Both directories hold ordinary Hugging Face files (`config.json`, `model.safetensors` with "
            "float16 weights, `generation_config.json`, `tokenizer.json`, `tokenizer_config.json`); load with "
            "`AutoModelForCausalLM.from_pretrained(dir, dtype=torch.float32)` and "
            "`AutoTokenizer.from_pretrained(dir)`. `prompts.json` holds held-out prompts for the demo, "
            "`loss_curve.json` the training curves, `metrics.json` all numbers below in machine-readable form.",
            "",
            "## How it was made",
            "",
            "```",
            m["command"],
            "```",
            "",
            f"- seed: **{m['seed']}** (`--seed`; data order, initialisation)",
            f"- machine: {m['machine_desc']}",
            f"- software: Python {m['python']}, torch {m['torch']}, transformers {m.get('transformers', '?')}, "
            f"tokenizers {m.get('tokenizers', '?')}",
            f"- total wall time {m['total_time_s'] / 60:.1f} min (tokenizer, training both models, evaluation)",
            "",
            "### Corpus",
            "",
            f'The `.py` files of the Python {m["python"]} standard library (`sysconfig.get_paths()["stdlib"]`), '
            "paths sorted, directories `test`, `tests`, `idle_test`, `site-packages` skipped, empty files "
            f"skipped, capped at {a['max_chars']:,} characters (files taken in sorted order until the cap): "
            f"{c['files']} files, {c['chars']:,} characters. Split: every {a['holdout_every']}th file in sorted "
            f"order (index % {a['holdout_every']} == {a['holdout_every'] - 1}) is held out: "
            f"train {c['train_files']} files / {c['train_chars']:,} chars / {c['train_tokens']:,} tokens; "
            f"held-out {c['heldout_files']} files / {c['heldout_chars']:,} chars / {c['heldout_tokens']:,} tokens. "
            "Each file is encoded as `<s> text </s>` and the files are concatenated.",
            "",
            "### Tokenizer",
            "",
            f"Byte-level BPE (`tokenizers`), vocab **{m['vocab_size']}** incl. specials `<s>` (bos, id 0), "
            "`</s>` (eos, id 1), `<pad>` (id 2), trained on the training split only; ByteLevel pre-tokenizer "
            "(no prefix space) and decoder, so `decode(encode(text), skip_special_tokens=True) == text` for any "
            "text, whitespace included. Encoding prepends `<s>`. The same files are in `target/` and `draft/`.",
            "",
            "### Training",
            "",
            f"fp32, AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), grad clip 1.0, {a['warmup']} warmup "
            f"steps then cosine decay to {a['min_lr_frac']} x peak at the end of the budget; random "
            f"{a['seq_len']}-token windows of the training stream, batch {a['batch_size']}.",
            "",
            f"- target: peak LR {a['lr']}, {trained(t)}.",
            f"- draft: peak LR {a['draft_lr']}, {trained(d)}; trained after the target with loss "
            f"{1 - a['distill_alpha']:.2f} x cross-entropy on the data + {a['distill_alpha']:.2f} x KL(target || draft) "
            "(distillation from the frozen target's next-token distribution, to raise greedy agreement).",
            "",
            "## Results",
            "",
            f"Held-out loss: mean next-token cross-entropy (nats) over {m['eval_windows']} windows of "
            f"{a['seq_len'] + 1} tokens spread evenly over the held-out stream, measured on the saved float16 "
            "weights loaded as float32.",
            "",
            "| model | held-out loss | perplexity |",
            "| --- | --- | --- |",
            f"| target | {t['heldout_loss']:.4f} | {t['heldout_ppl']:.2f} |",
            f"| draft | {d['heldout_loss']:.4f} | {d['heldout_ppl']:.2f} |",
            "",
            f"(uniform over the vocab would be ln {m['vocab_size']} = {math.log(m['vocab_size']):.3f}).",
            "",
        ]
        + (
            [
                f"**Caveat:** the target is under-trained for its size ({t['tokens']:,} tokens): its held-out loss "
                "is not better than the draft's (the draft was distilled from it and saw as many tokens), so the "
                "pair shows the mechanics and the cost gap of speculative decoding, not a quality gap. "
                "A longer budget for the target (more `--minutes`, more `--threads`, or `--device cuda`) fixes that.",
                "",
            ]
            if d["heldout_loss"] <= t["heldout_loss"]
            else []
        )
        + [
            "Greedy chain speculation, simulated: for each of the first "
            f"{m['tau_prompts']} prompts of `prompts.json` the target greedily generates 64 tokens; then, "
            "from each position reached, the draft greedily proposes K tokens continuing the target's own "
            "output, a = number of leading proposals equal to the target's greedy tokens, one target call "
            "yields a + 1 tokens (tau), and decoding moves on by a + 1. Mean tau = tokens / target calls:",
            "",
            "| K | mean tau (tokens per target call) |",
            "| --- | --- |",
        ]
        + [f"| {k} | {v:.3f} |" for k, v in tau.items()]
        + [
            "",
            "Greedy output of models this small is often repetitive (see the sample), and repeated text is "
            "easy for the draft to predict, so these tau values are higher than they would be on natural text "
            "or with sampling.",
            "",
            "Sample (prompt, then the target's 64 greedy tokens):",
            "",
            "```python",
            m["sample_prompt"] + m["sample_target_greedy"],
            "```",
            "",
        ]
    )
    (out / "README.md").write_text("\n".join(lines))


# ----------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument(
        "--minutes",
        type=float,
        default=36.0,
        help="total training time budget for both models (split by --target-frac)",
    )
    ap.add_argument(
        "--target-frac",
        type=float,
        default=0.62,
        help="fraction of --minutes given to the target (rest to the draft)",
    )
    ap.add_argument(
        "--steps",
        type=int,
        default=0,
        help="if > 0: train each model for exactly this many steps (ignores --minutes)",
    )
    ap.add_argument("--max-chars", type=int, default=12_000_000, help="corpus cap (characters)")
    ap.add_argument("--holdout-every", type=int, default=20)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--draft-lr", type=float, default=3e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument(
        "--distill-alpha", type=float, default=0.7, help="draft loss = (1-a)*CE(data) + a*KL(target || draft)"
    )
    ap.add_argument("--target-layers", type=int, default=8)
    ap.add_argument("--target-hidden", type=int, default=256)
    ap.add_argument("--target-inter", type=int, default=688)
    ap.add_argument("--target-heads", type=int, default=4)
    ap.add_argument("--draft-layers", type=int, default=2)
    ap.add_argument("--draft-hidden", type=int, default=128)
    ap.add_argument("--draft-inter", type=int, default=384)
    ap.add_argument("--draft-heads", type=int, default=4)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--eval-every-logs", type=int, default=10, help="held-out eval every N log lines")
    ap.add_argument("--eval-chunks-during", type=int, default=16)
    ap.add_argument("--eval-chunks", type=int, default=128, help="held-out windows for the final loss")
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--tau-prompts", type=int, default=16)
    ap.add_argument(
        "--machine",
        default=None,
        help="free-text machine description for the model card (default: from platform)",
    )
    ap.add_argument(
        "--card-only",
        action="store_true",
        help="only rewrite README.md from an existing metrics.json in --out",
    )
    args = ap.parse_args(argv)
    if args.card_only:
        m = json.loads((args.out / "metrics.json").read_text())
        if args.machine:
            m["machine_desc"] = args.machine
        m.setdefault("machine_desc", m["machine"])
        write_card(args.out, m)
        print(f"wrote {args.out / 'README.md'}")
        return m

    from transformers import GenerationConfig, LlamaForCausalLM

    t_start = time.time()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    # corpus + split
    files = stdlib_files(args.max_chars)
    train_files = [f for i, f in enumerate(files) if i % args.holdout_every != args.holdout_every - 1]
    held_files = [f for i, f in enumerate(files) if i % args.holdout_every == args.holdout_every - 1]
    print(
        f"corpus: {len(files)} files, {sum(len(t) for _, t in files):,} chars "
        f"(train {len(train_files)}, held-out {len(held_files)})",
        flush=True,
    )

    # tokenizer
    t0 = time.time()
    tokenizer = train_tokenizer([t for _, t in train_files], args.vocab_size)
    tok_dir = out / "_tokenizer"
    tokenizer.save_pretrained(tok_dir)
    print(f"tokenizer: vocab {len(tokenizer)} trained in {time.time() - t0:.1f}s", flush=True)
    probe = "def f(x):\n\tif x:\n        return  {'a': [1, 2]}  # ünï\n\n\n"
    assert tokenizer.decode(tokenizer(probe)["input_ids"], skip_special_tokens=True) == probe

    def encode_docs(fs):
        enc = tokenizer.backend_tokenizer.encode_batch([t for _, t in fs])
        ids = []
        for e in enc:
            ids.extend(e.ids)  # starts with <s> (post-processor)
            ids.append(tokenizer.eos_token_id)
        return torch.tensor(ids, dtype=torch.long)

    train_ids = encode_docs(train_files)
    held_ids = encode_docs(held_files)
    L = args.seq_len + 1
    n_chunks = len(held_ids) // L
    eval_chunks = held_ids[: n_chunks * L].view(n_chunks, L)
    idx = torch.linspace(0, n_chunks - 1, min(args.eval_chunks, n_chunks)).long()
    eval_chunks = eval_chunks[idx]
    print(
        f"tokens: train {len(train_ids):,}, held-out {len(held_ids):,} "
        f"({sum(len(t) for _, t in files) / (len(train_ids) + len(held_ids)):.2f} chars/token); "
        f"eval windows {len(eval_chunks)} x {L}",
        flush=True,
    )

    prompts = make_prompts(held_files, args.n_prompts)
    (out / "prompts.json").write_text(json.dumps(prompts, indent=1) + "\n")

    # models
    torch.manual_seed(args.seed)
    target = LlamaForCausalLM(
        llama_config(tokenizer, args.target_layers, args.target_hidden, args.target_inter, args.target_heads)
    )
    torch.manual_seed(args.seed + 1)
    draft = LlamaForCausalLM(
        llama_config(tokenizer, args.draft_layers, args.draft_hidden, args.draft_inter, args.draft_heads)
    )
    tp, dp = n_params(target), n_params(draft)
    print(f"target params {tp:,}  draft params {dp:,}  ratio {tp / dp:.1f}x", flush=True)

    budget = args.minutes * 60
    steps = args.steps
    curve_t, info_t = train(
        "target",
        target,
        Batches(train_ids, args.seq_len, args.batch_size, args.seed),
        eval_chunks,
        device,
        args,
        budget * args.target_frac,
        steps,
    )
    target.eval()
    for p in target.parameters():
        p.requires_grad_(False)
    curve_d, info_d = train(
        "draft",
        draft,
        Batches(train_ids, args.seq_len, args.batch_size, args.seed + 1),
        eval_chunks,
        device,
        args,
        budget * (1 - args.target_frac),
        steps,
        teacher=target,
    )
    draft.eval()

    # save (fp16 weights) and reload through the Auto* classes for evaluation
    gen_cfg = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=64,
    )
    for nm, m in (("target", target), ("draft", draft)):
        d = out / nm
        if d.exists():
            shutil.rmtree(d)
        m16 = LlamaForCausalLM(m.config)
        m16.load_state_dict({k: v.detach().cpu() for k, v in m.state_dict().items()})
        m16.to(torch.float16)
        m16.config.dtype = torch.float16
        m16.generation_config = gen_cfg
        m16.save_pretrained(d, safe_serialization=True)
        tokenizer.save_pretrained(d)
    shutil.rmtree(tok_dir)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok2 = AutoTokenizer.from_pretrained(out / "target")
    t2 = AutoModelForCausalLM.from_pretrained(out / "target", dtype=torch.float32).to(device).eval()
    d2 = AutoModelForCausalLM.from_pretrained(out / "draft", dtype=torch.float32).to(device).eval()
    lt, ld = eval_loss(t2, eval_chunks, device), eval_loss(d2, eval_chunks, device)
    print(
        f"held-out loss (saved fp16 weights): target {lt:.4f} (ppl {math.exp(lt):.2f})  "
        f"draft {ld:.4f} (ppl {math.exp(ld):.2f})",
        flush=True,
    )
    t0 = time.time()
    tau = simulate_tau(t2, d2, tok2, prompts[: args.tau_prompts], device)
    print(
        f"greedy chain speculation on {min(len(prompts), args.tau_prompts)} held-out prompts, 64 tokens: "
        + "  ".join(f"K={k}: mean tau {v:.3f}" for k, v in tau.items())
        + f"  ({time.time() - t0:.1f}s)",
        flush=True,
    )
    sample = tok2.decode(greedy_generate(t2, tok2(prompts[0])["input_ids"], 64, device))

    # loss curve table
    print("\nloss curve (train loss EMA, held-out loss where measured):")
    for nm, curve in (("target", curve_t), ("draft", curve_d)):
        rows = [r for r in curve if "lr" in r]
        pick = rows[:: max(1, len(rows) // 12)] + ([rows[-1]] if rows else [])
        print(f"  {nm}: {'step':>6} {'tokens':>11} {'time_s':>8} {'loss_ema':>9} {'heldout':>8}")
        seen = set()
        for r in pick:
            if r["step"] in seen:
                continue
            seen.add(r["step"])
            print(
                f"  {'':{len(nm)}}  {r['step']:>6} {r['tokens']:>11,} {r['time_s']:>8.1f} "
                f"{r['train_loss_ema']:>9.4f} {r.get('heldout_loss', float('nan')):>8.4f}"
            )

    total_s = time.time() - t_start
    (out / "loss_curve.json").write_text(json.dumps({"target": curve_t, "draft": curve_d}, indent=1) + "\n")
    metrics = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])
        if argv is None
        else argv,
        "seed": args.seed,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''} cpu_count={os.cpu_count()} "
        f"threads={args.threads} device={args.device}",
        "corpus": {
            "root": sysconfig.get_paths()["stdlib"],
            "files": len(files),
            "train_files": len(train_files),
            "heldout_files": len(held_files),
            "chars": sum(len(t) for _, t in files),
            "train_chars": sum(len(t) for _, t in train_files),
            "heldout_chars": sum(len(t) for _, t in held_files),
            "train_tokens": len(train_ids),
            "heldout_tokens": len(held_ids),
        },
        "vocab_size": len(tokenizer),
        "target": {
            "params": tp,
            "layers": args.target_layers,
            "hidden": args.target_hidden,
            "intermediate": args.target_inter,
            "heads": args.target_heads,
            **info_t,
            "heldout_loss": round(lt, 4),
            "heldout_ppl": round(math.exp(lt), 3),
        },
        "draft": {
            "params": dp,
            "layers": args.draft_layers,
            "hidden": args.draft_hidden,
            "intermediate": args.draft_inter,
            "heads": args.draft_heads,
            **info_d,
            "heldout_loss": round(ld, 4),
            "heldout_ppl": round(math.exp(ld), 3),
        },
        "eval_windows": len(eval_chunks),
        "tau": {str(k): round(v, 3) for k, v in tau.items()},
        "tau_prompts": min(len(prompts), args.tau_prompts),
        "total_time_s": round(total_s, 1),
        "sample_prompt": prompts[0],
        "sample_target_greedy": sample,
    }
    import tokenizers
    import transformers

    metrics["transformers"] = transformers.__version__
    metrics["tokenizers"] = tokenizers.__version__
    metrics["machine_desc"] = args.machine or metrics["machine"]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    write_card(out, metrics)
    print(f"\ntotal time {total_s / 60:.1f} min; wrote {out}", flush=True)
    return metrics


if __name__ == "__main__":
    main()
