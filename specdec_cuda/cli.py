"""``python -m specdec_cuda``: the command line.

Commands:
  info      print one JSON object describing the build and every op's backends
  demo      the bundled tiny model pair: plain vs speculative decoding, a table and a plot
  generate  speculative decoding on local Hugging Face checkpoints, streamed
  analyze   the theory (TV distances -> acceptance, tau(K), speedup) against the loop
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch


def build_info() -> dict:
    """The build facts and, for every ``torch.ops.specdec`` op, its kernel backends."""
    from . import _C

    return {
        "package": "specdec_cuda",
        "version": _C.__version__,
        "torch_built_against": _C.torch_version,
        "torch_runtime": torch.__version__,
        "cuda_compiled": bool(_C.cuda_compiled),
        "cuda_version": _C.cuda_version or None,
        "cuda_archs": list(_C.cuda_archs),
        "cuda_device_available": torch.cuda.is_available(),
        "ops": {name: list(_C.op_backends(name)) for name in _C.op_names()},
    }


class _Parser(argparse.ArgumentParser):
    """argparse with every usage error as one ``error:`` line, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    """Run a command; every failure is one ``error:`` line on stderr and exit status 2
    (``SPECDEC_DEBUG=1`` re-raises unexpected errors with their traceback)."""
    parser = _Parser(
        prog="python -m specdec_cuda",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser(
        "info", help="print the build facts and op backends as JSON", description=build_info.__doc__
    )
    from . import demo

    demo.add_demo_args(sub.add_parser("demo", help="run the bundled tiny models: table + plot"))
    demo.add_generate_args(sub.add_parser("generate", help="speculative decoding on local checkpoints"))
    from . import theory

    theory.add_analyze_args(
        sub.add_parser("analyze", help="predicted (TV distances) against measured acceptance and tau")
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            json.dump(build_info(), sys.stdout, indent=2)
            sys.stdout.write("\n")
            return 0
        if args.command == "demo":
            return demo.run_demo(args)
        if args.command == "analyze":
            return theory.run_analyze(args)
        return demo.run_generate(args)
    except demo.CLIError as exc:
        message = str(exc)
    except KeyboardInterrupt:
        message = "interrupted"
    except Exception as exc:  # noqa: BLE001 - the command line reports, it does not crash
        if os.environ.get("SPECDEC_DEBUG"):
            raise
        message = f"{type(exc).__name__}: {exc} (set SPECDEC_DEBUG=1 for the traceback)"
    sys.stdout.flush()
    print("error: " + " ".join(message.split()), file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
