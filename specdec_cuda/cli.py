"""``python -m specdec_cuda``: the command line.

Commands:
  info      print one JSON object describing the build and every op's backends
  demo      the bundled tiny model pair: plain vs speculative decoding, a table and a plot
  generate  speculative decoding on local Hugging Face checkpoints, streamed
"""

from __future__ import annotations

import argparse
import json
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m specdec_cuda",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print the build facts and op backends as JSON")
    from . import demo

    demo.add_demo_args(sub.add_parser("demo", help="run the bundled tiny models: table + plot"))
    demo.add_generate_args(sub.add_parser("generate", help="speculative decoding on local checkpoints"))
    args = parser.parse_args(argv)
    if args.command == "info":
        json.dump(build_info(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    try:
        if args.command == "demo":
            return demo.run_demo(args)
        if args.command == "generate":
            return demo.run_generate(args)
    except demo.CLIError as exc:
        sys.stdout.flush()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")  # pragma: no cover
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
