"""The ``prism-plugin`` command line: a thin dispatcher over sub-commands.

Each sub-command imports its (heavy) implementation lazily, so ``prism-plugin --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence


def _make_tiny(args: argparse.Namespace) -> int:
    import time

    from prism_plugin.tiny import make_tiny

    start = time.perf_counter()
    manifest = make_tiny(args.out_dir, seed=args.seed, num_examples=args.num_examples)
    seconds = round(time.perf_counter() - start, 2)
    print(json.dumps({"manifest": f"{manifest['root']}/manifest.json", "seconds": seconds}))
    return 0


def _add_make_tiny(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-tiny", help="build the tiny offline tokenizer, models and toy dataset")
    p.add_argument("out_dir", help="output directory (created; its known sub-directories are replaced)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and data (default 0)")
    p.add_argument("--num-examples", type=int, default=32, help="toy examples to generate (default 32)")
    p.set_defaults(func=_make_tiny)


# Sub-command registrars: each adds one parser and sets ``func``; add new ones here.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_make_tiny]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered sub-command."""
    parser = argparse.ArgumentParser(prog="prism-plugin", description="PRISM post-training tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in SUBCOMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``prism-plugin``; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
