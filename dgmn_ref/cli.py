"""The ``dgmn-ref`` command line: ``complexity``, ``make-data``, ``train``, ``evaluate``, ``bench``.

Each sub-command lives in its own module; this file only dispatches, importing the
module of the chosen command (so ``dgmn-ref complexity`` does not import the data code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# sub-command -> (module, function taking argv, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "complexity": ("dgmn_ref.cli", "complexity_main", "print Table 1a: params/FLOPs vs paper"),
    "make-data": ("dgmn_ref.cli", "make_data_main", "write the embedded synthetic datasets"),
    "train": ("dgmn_ref.train", "main", "train a segmentation model"),
    "evaluate": ("dgmn_ref.train", "evaluate_main", "evaluate a checkpoint (mIoU)"),
    "bench": ("dgmn_ref.bench", "main", "time and memory of DGMN vs Non-local and a floor"),
}


def complexity_main(argv: Sequence[str] | None = None) -> int:
    """``dgmn-ref complexity``: Table 1a's Params and FLOPs columns beside ours."""
    from dgmn_ref.complexity import format_table1a, table1a

    parser = argparse.ArgumentParser(
        prog="dgmn-ref complexity",
        description="Table 1a (Cityscapes, C=512, 769x769 crop at stride 8 = 97x97): "
        "parameters and MACs each context module adds, the paper's and ours.",
    )
    parser.add_argument("--channels", type=int, default=512, help="C (default 512)")
    parser.add_argument("--size", type=int, default=97, help="feature map side (default 97)")
    args = parser.parse_args(argv)
    if args.channels < 1 or args.size < 1:
        parser.error(f"--channels and --size must be >= 1, got {args.channels}, {args.size}")
    print(f"C = {args.channels}, feature map {args.size}x{args.size}, batch 1; FLOPs are MACs")
    print(format_table1a(table1a(args.channels, args.size)))
    return 0


def make_data_main(argv: Sequence[str] | None = None) -> int:
    """``dgmn-ref make-data``: the embedded synthetic datasets, in the real formats."""
    from dgmn_ref.data import make_data

    parser = argparse.ArgumentParser(
        prog="dgmn-ref make-data",
        description="Write the deterministic synthetic Cityscapes-layout and COCO-format "
        "datasets (see data/README.md). Existing complete datasets are kept.",
    )
    parser.add_argument("--root", default="data", help="output folder (default: data)")
    args = parser.parse_args(argv)
    for path in make_data(args.root):
        print(f"ready: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="dgmn-ref",
        description="Dynamic Graph Message Passing Networks: the reference implementation.",
        epilog="Run 'dgmn-ref COMMAND --help' for the options of a command.",
    )
    parser.add_argument("command", choices=sorted(COMMANDS), help="what to do")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    for name, (_, _, text) in COMMANDS.items():
        parser.epilog += f"\n  {name}: {text}"
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    args = parser.parse_args(argv[:1])
    module_name, function_name, _ = COMMANDS[args.command]
    command = getattr(importlib.import_module(module_name), function_name)
    return int(command(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
