"""The command line: ``generate`` on local checkpoints and ``demo``, with their errors.

Checkpoints are built here: a tiny BPE tokenizer (``tokenizers``) and random
Llama models saved in the Hugging Face format.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from specdec_cuda import cli  # noqa: E402

from conftest import run_cli, shows_default  # noqa: E402

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "def sub(a, b):\n    return a - b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "import os\nimport sys\n\nprint(os.path.join('a', 'b'))\n",
] * 8


def make_tokenizer(vocab: int, extra: str = ""):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS + ([extra] if extra else []), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def save_pair(root: Path, tok, *, draft_tok=None, seed: int = 0) -> tuple[Path, Path]:
    from transformers import LlamaConfig, LlamaForCausalLM

    paths = []
    for name, layers in (("target", 2), ("draft", 1)):
        torch.manual_seed(seed)
        t = tok if name == "target" or draft_tok is None else draft_tok
        cfg = LlamaConfig(
            vocab_size=len(t),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            eos_token_id=t.eos_token_id,
            max_position_embeddings=256,
        )
        model = LlamaForCausalLM(cfg)
        path = root / name
        model.save_pretrained(path)
        t.save_pretrained(path)
        paths.append(path)
    return paths[0], paths[1]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    tok = make_tokenizer(300)
    target, draft = save_pair(root, tok)
    (root / "prompts.json").write_text(json.dumps(["def add(a, b):\n", "class Point:\n", "import os\n"]))
    return root, target, draft, tok


@pytest.mark.parametrize("drafter", ["chain", "tree", "dynamic", "lookup", "none"])
def test_generate_streams_the_greedy_text(pair, drafter, capsys):
    _, target, draft, tok = pair
    prompt = "def add(a, b):\n"
    rc = cli.main(
        [
            "generate",
            "--target",
            str(target),
            "--draft",
            str(draft),
            "--prompt",
            prompt,
            "--drafter",
            drafter,
            "--max-new-tokens",
            "20",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    ids = tok(prompt, return_tensors="pt").input_ids
    ref = model.generate(
        ids, max_new_tokens=20, do_sample=False, pad_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id
    )
    text = tok.decode(ref[0, ids.shape[1] :], skip_special_tokens=True)
    assert out.startswith(prompt + text), (out, text)
    assert f"[{drafter}]" in out and "tau" in out and "time by phase" in out


def test_generate_sampling_with_a_tree(pair, capsys):
    _, target, draft, _ = pair
    rc = cli.main(
        [
            "generate",
            "--target",
            str(target),
            "--draft",
            str(draft),
            "--prompt",
            "import",
            "--tree",
            "[[0], [1], [0, 0]]",
            "--temperature",
            "0.8",
            "--top-p",
            "0.9",
            "--seed",
            "3",
            "--max-new-tokens",
            "12",
            "--paged",
        ]
    )
    assert rc == 0
    assert "[tree]" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--target", "{missing}", "--prompt", "x"], "no such directory"),
        (["--target", "{root}", "--prompt", "x"], "not a Hugging Face checkpoint"),
        (["--target", "{target}", "--draft", "{other}", "--prompt", "x"], "tokenizers differ"),
        (["--target", "{target}", "--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
        (["--target", "{target}", "--prompt", "x", "--temperature", "-1"], "--temperature must be >= 0"),
        (["--target", "{target}", "--prompt", "x", "--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--target", "{target}", "--prompt", "x", "--k", "0"], "--k must be >= 1"),
        (["--target", "{target}", "--prompt", "x", "--drafter", "chain"], "--drafter chain needs --draft"),
        (
            ["--target", "{target}", "--draft", "{draft}", "--prompt", "x", "--tree", "[[1, 0]]"],
            "needs its parent",
        ),
        (
            ["--target", "{target}", "--draft", "{draft}", "--prompt", "x", "--tree", "[[0]"],
            "not a JSON choice list",
        ),
        (["--target", "{target}", "--prompt", ""], "--prompt is empty"),
    ],
)
def test_generate_errors_are_one_line(pair, other_pair, tmp_path, args, message, capsys):
    root, target, draft, _ = pair
    fill = dict(
        missing=str(tmp_path / "nope"),
        root=str(tmp_path),
        target=str(target),
        draft=str(draft),
        other=str(other_pair),
    )
    rc = cli.main(["generate", *[a.format(**fill) for a in args]])
    assert rc == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0]


@pytest.fixture(scope="module")
def other_pair(tmp_path_factory):
    """A draft checkpoint whose tokenizer differs from ``pair``'s."""
    root = tmp_path_factory.mktemp("other")
    _, draft = save_pair(root, make_tokenizer(280, extra="zzzz qqqq wwww"))
    return draft


def test_errors_exit_2_without_traceback(tmp_path):
    proc = run_cli("generate", "--target", str(tmp_path / "nope"), "--prompt", "x")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: --target {tmp_path / 'nope'}: no such directory"


def test_bad_flag_is_argparse_usage_error():
    proc = run_cli("generate", "--prompt", "x")
    assert proc.returncode == 2
    assert "--target" in proc.stderr and "Traceback" not in proc.stderr


def test_demo_writes_table_and_plot(pair, tmp_path, capsys):
    root, _, _, _ = pair
    rc = cli.main(
        [
            "demo",
            "--assets",
            str(root),
            "--prompts",
            "2",
            "--max-new-tokens",
            "12",
            "--max-k",
            "2",
            "--out",
            str(tmp_path / "res"),
            "--device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    for mode in (
        "plain decoding (transformers generate)",
        "chain K=4",
        "static tree",
        "dynamic tree",
        "prompt lookup",
    ):
        assert mode in out
    assert " NO" not in out  # every mode's greedy output equals plain decoding
    assert (tmp_path / "res" / "demo.png").stat().st_size > 1000
    data = json.loads((tmp_path / "res" / "demo.json").read_text())
    assert all(r["identical"] for r in data["rows"]) and data["sweep"]["k"] == [1, 2]


def test_demo_without_models_is_one_line(tmp_path):
    proc = run_cli("demo", "--assets", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: the bundled models are missing")


@pytest.mark.parametrize("command", ["generate", "demo"])
def test_help_describes_every_flag_with_its_default(command):
    proc = run_cli(command, "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    parser_flags = [w for w in text.split() if w.startswith("--") and w != "--help"]
    assert parser_flags, text
    assert "speculative" in text.lower()  # a description, not just usage
    sub = cli._Parser(prog="x").add_subparsers()
    from specdec_cuda import demo

    p = sub.add_parser(command)
    (demo.add_generate_args if command == "generate" else demo.add_demo_args)(p)
    for action in p._actions:
        if action.option_strings and action.dest != "help" and action.help != "==SUPPRESS==":
            assert action.help, f"--{action.dest} has no help"
            if action.default not in (None, False) and action.required is False:
                assert shows_default(text, action.default), (action.dest, action.default)


def test_usage_errors_are_one_line_exit_2():
    for args in (
        ["generate", "--prompt", "x"],
        ["generate", "--target", "t", "--prompt", "x", "--k", "two"],
        ["nonsense"],
        [],
    ):
        proc = run_cli(*args)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (
            args,
            proc.stderr,
        )


def test_dtype_flag(pair, capsys):
    _, target, draft, _ = pair
    common = [
        "generate",
        "--target",
        str(target),
        "--draft",
        str(draft),
        "--prompt",
        "def add(",
        "--max-new-tokens",
        "6",
        "--device",
        "cpu",
    ]
    assert cli.main([*common, "--dtype", "bfloat16"]) == 0
    assert "[chain]" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:  # argparse: one error line, exit status 2
        cli.main([*common, "--dtype", "float64"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "invalid choice" in err and len(err.strip().splitlines()) == 1


def test_same_seed_same_text_with_the_default_adaptive_chain(pair, capsys):
    """Regression: the default adaptive K followed wall-clock timing, so a seed did not
    reproduce its sample."""
    _, target, draft, _ = pair
    args = [
        "generate",
        "--target",
        str(target),
        "--draft",
        str(draft),
        "--prompt",
        "class Point:\n",
        "--temperature",
        "1.0",
        "--seed",
        "5",
        "--max-new-tokens",
        "40",
        "--device",
        "cpu",
    ]
    texts = []
    for _ in range(3):
        assert cli.main(args) == 0
        texts.append(capsys.readouterr().out.split("\n\n[chain]")[0])
    assert texts[0] == texts[1] == texts[2]


def test_unsupported_architecture_is_one_line(tmp_path, pair):
    """A model whose attention bypasses the interface (GPT-J) is refused before decoding,
    in one line, exit 2 (it used to print wrong text with exit status 0)."""
    from transformers import GPTJConfig, GPTJForCausalLM

    _, _, _, tok = pair
    cfg = GPTJConfig(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=128)
    path = tmp_path / "gptj"
    GPTJForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    proc = run_cli("generate", "--target", str(path), "--prompt", "def add(", "--device", "cpu")
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: HFModel: gptj (GPTJForCausalLM)") and "not supported" in lines[0], (
        lines
    )
    assert proc.stdout == ""
