"""The ``dgmn-ref`` command line, every entry point of the package in one file.

``complexity``, ``make-data``, ``check-data``, ``train``, ``evaluate``, ``bench``,
``explore-export``, ``explore-numbers``. :func:`main` only
dispatches: each command imports what it needs when it runs, so ``dgmn-ref --help`` (and
``dgmn-ref complexity``) never import torch's training stack or the data code.
``python -m dgmn_ref.train`` (for ``torchrun``) runs :func:`train_main`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

# sub-command -> (name of the function in this module taking argv, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "complexity": ("complexity_main", "print Table 1a: params/FLOPs vs paper"),
    "make-data": ("make_data_main", "write the embedded synthetic datasets"),
    "check-data": ("check_data_main", "list every problem of a dataset, with its path"),
    "train": ("train_main", "train a segmentation model"),
    "evaluate": ("evaluate_main", "evaluate a checkpoint (mIoU)"),
    "bench": ("bench_main", "time and memory of DGMN vs Non-local and a floor"),
    "explore-export": ("explore_export_main", "the walk explorer as one HTML page (no Python)"),
    "explore-numbers": ("explore_numbers_main", "where the learned walks go, in numbers (JSON)"),
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
    from dgmn_ref.data import make_data, make_synthetic_cityscapes
    from dgmn_ref.data.synthetic import TASKS

    parser = argparse.ArgumentParser(
        prog="dgmn-ref make-data",
        description="Write the deterministic synthetic Cityscapes-layout and COCO-format "
        "datasets (see data/README.md). Existing complete datasets are kept.",
    )
    parser.add_argument("--root", default="data", help="output folder (default: data)")
    parser.add_argument(
        "--task",
        choices=TASKS,
        default="beacon",
        help="the context task of the Cityscapes-layout set: beacon (one small far cue, the "
        "default) or redundant (a district a third of the frame wide; written to "
        "ROOT/redundant_cityscapes with a test split)",
    )
    args = parser.parse_args(argv)
    if args.task == "redundant":
        root = Path(args.root) / "redundant_cityscapes"
        if not root.exists():
            make_synthetic_cityscapes(root, n_test=60, task="redundant")
        print(f"ready: {root}")
        return 0
    for path in make_data(args.root):
        print(f"ready: {path}")
    return 0


def check_data_main(argv: Sequence[str] | None = None) -> int:
    """``dgmn-ref check-data``: see :mod:`dgmn_ref.data.check` (exit 1 if any error)."""
    from dgmn_ref.data.check import main

    return main(argv)


# ------------------------------------------------------------------- train, evaluate


def _flag_type(field: dataclasses.Field) -> Callable[[str], Any] | None:
    """argparse type of a config field, from its annotation (``None``: a boolean switch)."""
    annotation = str(field.type)
    if annotation == "bool":
        return None
    if annotation.startswith("dict"):
        return json.loads
    for name, kind in (("float", float), ("int", int)):
        if name in annotation:
            return kind
    return str


def train_parser() -> argparse.ArgumentParser:
    """``dgmn-ref train``'s options: one flag per :class:`~dgmn_ref.training.TrainConfig`
    field, with its help text and default."""
    from dgmn_ref.training.config import CHOICES, TrainConfig

    p = argparse.ArgumentParser(
        prog="dgmn-ref train",
        description="Train the DGMN segmentation model (paper Appendix A.2.2 schedule). "
        "Settings: defaults < --config FILE < flags; printed at start and saved as "
        "OUT/config.json. Under torchrun: torchrun --nproc_per_node=N -m dgmn_ref.train ...",
    )
    p.add_argument("--config", help="a JSON file of settings (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--evaluate", action="store_true", help="evaluate on val at the end")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = _flag_type(f)
        default = getattr(defaults, f.name)
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        text = f"{f.metadata['help']} (default: {shown})"
        # choices are checked by TrainConfig.check, whose message names value and choices
        if f.name in CHOICES:
            text += f"; one of {', '.join(map(str, CHOICES[f.name]))}"
        text = text.replace("%", "%%")
        if kind is None:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif "list" in str(f.type):
            p.add_argument(flag, type=kind, nargs="+", default=None, metavar="N", help=text)
        else:
            p.add_argument(flag, type=kind, default=None, metavar=f.name.upper(), help=text)
    return p


def config_from_args(args: argparse.Namespace):
    """The :class:`~dgmn_ref.training.TrainConfig` of parsed ``train`` flags:
    defaults < ``--config`` < flags (< the saved run's config for ``--resume``)."""
    from dgmn_ref.training.checkpoint import CONFIG
    from dgmn_ref.training.config import TrainConfig

    values: dict[str, Any] = {}
    if args.config:
        values = TrainConfig.from_file(args.config).to_dict()
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name)
        if v is not None:
            values[f.name] = v
    if values.get("crop_size") and len(values["crop_size"]) == 1:
        values["crop_size"] = values["crop_size"] * 2
    if args.resume and not args.config:
        saved = Path(values.get("out", TrainConfig.out)) / CONFIG
        if not saved.is_file():
            raise FileNotFoundError(f"--resume: no {CONFIG} in {saved.parent} to resume from")
        # flags not given on the command line come from the run
        values = {**json.loads(saved.read_text()), **values}
    return TrainConfig.from_dict(values)


def train_main(argv: Sequence[str] | None = None) -> int:
    """``dgmn-ref train``: returns 0 on success, 2 on a bad setting, data, checkpoint or a
    run folder in use (nothing written), 1 if the run stopped (non-finite, disk full)."""
    from dgmn_ref.runlock import RunLockedError
    from dgmn_ref.training import train
    from dgmn_ref.training.evaluate import report_evaluation

    args = train_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        result = train(cfg, resume=args.resume, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError, RunLockedError) as err:
        print(f"dgmn-ref train: error: {err}", file=sys.stderr)
        return 2
    except (FloatingPointError, OSError) as err:
        print(f"dgmn-ref train: stopped: {err}", file=sys.stderr)
        return 1
    if args.evaluate and int(os.environ.get("RANK", "0")) == 0:
        report_evaluation(cfg, result["model"], "val", Path(cfg.out))
    return 0


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """``dgmn-ref evaluate RUN``: mIoU of a trained run on a split (table on stdout,
    ``RUN/eval_<split>.json``, or ``RUN/eval_<split>_subset<N>.json`` with ``--subset N``)."""
    from dgmn_ref.layer import IMPLS
    from dgmn_ref.training import TrainConfig, build_model, load_run
    from dgmn_ref.training.config import AMP_MODES, SYNTHETIC_ROOT
    from dgmn_ref.training.distributed import resolve_device
    from dgmn_ref.training.evaluate import report_evaluation
    from dgmn_ref.training.integrity import nonfinite_tensors

    p = argparse.ArgumentParser(prog="dgmn-ref evaluate", description=evaluate_main.__doc__)
    p.add_argument("run", help="a run folder (with checkpoint.pt and config.json) or a .pt")
    p.add_argument("--root", help="dataset root (default: the one the run was trained on)")
    p.add_argument("--split", default="val", help="the split to evaluate (default: val)")
    p.add_argument("--subset", type=int, help="evaluate the first N images (N >= 1)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--amp", choices=AMP_MODES, default="off", help="mixed precision")
    p.add_argument("--impl", choices=IMPLS, help="DGMN kernels (default: the run's)")
    p.add_argument(
        "--make-data", action="store_true", help="generate the synthetic data if root is missing"
    )
    args = p.parse_args(argv)
    if args.subset is not None and args.subset < 1:
        p.error(f"--subset: expected an int >= 1 (images to evaluate), got {args.subset}")
    try:
        state = load_run(args.run)
        bad = nonfinite_tensors(state["model"])
        if bad:
            raise ValueError(
                f"{args.run}: the model holds NaN or infinity in {len(bad)} tensors ({bad[0]}, "
                "...); it cannot be evaluated"
            )
        values = state["config"] | {"device": args.device, "amp": args.amp, "pretrained": None}
        if args.root:
            values["root"] = args.root
        if args.impl:
            values["impl"] = args.impl
        if args.subset is not None:
            values["val_subset"] = args.subset
        cfg = TrainConfig.from_dict(values).check()
        root = Path(cfg.root or SYNTHETIC_ROOT)
        if cfg.dataset == "synthetic" and not root.is_dir() and not args.make_data:
            raise FileNotFoundError(
                f"root: {str(root)!r} is not a directory; pass --make-data to generate the "
                "synthetic data there"
            )
        model = build_model(cfg)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as err:  # e.g. a COCO root with other categories
            raise ValueError(
                f"{args.run}: its weights do not fit the model of its config with the data "
                f"at {cfg.root} ({cfg.num_classes()} classes): {str(err).splitlines()[-1].strip()}"
            ) from err
        model.to(resolve_device(cfg.device))
        run = Path(args.run)
        report_evaluation(cfg, model, args.split, run if run.is_dir() else run.parent)
    except (ValueError, FileNotFoundError) as err:
        print(f"dgmn-ref evaluate: error: {err}", file=sys.stderr)
        return 2
    return 0


# ------------------------------------------------------------------------------ bench


def bench_parser() -> argparse.ArgumentParser:
    """``dgmn-ref bench``'s options (see :mod:`dgmn_ref.tools.bench`)."""
    from dgmn_ref.tools.bench import CASES

    parser = argparse.ArgumentParser(
        prog="dgmn-ref bench",
        description="Time and peak memory of DGMN (reference and fast) against Non-local, "
        "ASPP and a static depthwise floor, or of whole training steps (--mode model); "
        "--tables regenerates the published tables. See docs/benchmarks.md.",
    )
    parser.add_argument("--mode", choices=("block", "model"), default="block")
    parser.add_argument(
        "--cases",
        nargs="+",
        default=None,
        help=f"block: some of {', '.join(CASES)}; model: some of fcn, nonlocal, dgmn",
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["48", "97", "145", "193"],
        help="block: points H, HxW or C:HxW, e.g. 97 12x24 16:12x24 (default 48 97 145 193)",
    )
    parser.add_argument("--channels", type=int, default=512, help="C where a point has none")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed runs after a warm-up (block: 5; model: 5 embedded, 2 paper)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--autocast", choices=("none", "bf16", "fp16"), default="none")
    parser.add_argument(
        "--reference-max-size",
        type=int,
        default=97,
        help="skip the reference cases where a side exceeds this (they take minutes)",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per case")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="C = 64, sizes 24 and 32, 2 repeats: a smoke test in seconds",
    )
    parser.add_argument(
        "--settings", nargs="+", default=None, help="model: embedded, paper (default embedded)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="top operators of one more step per case"
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument(
        "--tables",
        nargs="*",
        default=None,
        metavar="FILE",
        help="measure nothing: regenerate the bench tables in FILE (default README.md "
        "docs/benchmarks.md) from the committed JSON their markers name",
    )
    parser.add_argument(
        "--check-tables", action="store_true", help="with --tables: exit 1 if one is stale"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser


def _check_bench_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject bad values with a message naming them (exit status 2); fill the defaults."""
    import torch

    from dgmn_ref.tools.bench import CASES, DEFAULT_CASES, parse_point
    from dgmn_ref.tools.bench_model import CONTEXTS, SETTINGS

    for name in ("channels", "batch", "repeats", "threads", "reference_max_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')}: expected ints >= 1, got {value}")
    if args.channels % 4:
        parser.error(f"--channels: expected a multiple of 4 (DGMN's groups), got {args.channels}")
    if not args.timeout > 0:
        parser.error(f"--timeout: expected seconds > 0, got {args.timeout}")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        parser.error(f"--device: {err}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    choices = CASES if args.mode == "block" else tuple(CONTEXTS)
    args.cases = args.cases or list(DEFAULT_CASES if args.mode == "block" else choices)
    unknown = [c for c in args.cases if c not in choices]
    if unknown:
        parser.error(f"--cases ({args.mode}): expected some of {', '.join(choices)}, got {unknown}")
    if args.mode == "model":
        args.settings = args.settings or ["embedded"]
        unknown = [s for s in args.settings if s not in SETTINGS]
        if unknown:
            parser.error(f"--settings: expected some of {', '.join(SETTINGS)}, got {unknown}")
        return
    args.repeats = 5 if args.repeats is None else args.repeats
    if args.quick:
        args.channels, args.sizes, args.repeats = 64, ["24", "32"], 2
        args.reference_max_size = 32
    try:
        args.points = [parse_point(token, args.channels) for token in args.sizes]
    except ValueError as error:
        parser.error(f"--sizes: {error}")
    odd = [c for c, _, _ in args.points if c % 4]
    if odd:
        parser.error(f"--sizes: expected channels that are a multiple of 4 (groups), got {odd}")


def bench_main(argv: Sequence[str] | None = None) -> int:
    """``dgmn-ref bench``: returns the exit status (2 for invalid arguments)."""
    from dgmn_ref.tools.bench import run_bench

    parser = bench_parser()
    args = parser.parse_args(argv)
    if args.worker is None and args.tables is None:
        _check_bench_args(parser, args)
    return run_bench(args)


# --------------------------------------------------------------------------- explore


def explore_export_main(argv: Sequence[str] | None = None) -> int:
    """``dgmn-ref explore-export RUN [--images ...] [--out explorer.html]``: the page of
    :mod:`dgmn_ref.figures.explorer_html`; 2 with the message on a bad run or image."""
    parser = argparse.ArgumentParser(
        prog="dgmn-ref explore-export",
        description="Write one self-contained HTML page (no server, no network) to explore "
        "the learned walks of a DGMN run: click a pixel to see its neighbours per rate.",
    )
    parser.add_argument("run", help="run folder (or checkpoint.pt) of a DGMN model")
    parser.add_argument(
        "--images",
        nargs="+",
        default=None,
        help="validation frame indices of the run's dataset, or PNG/JPEG files resized to the "
        "run's crop size (default: frames 0 1 2 3)",
    )
    parser.add_argument("--layer", default=None, help="DGMN layer name (default: all)")
    parser.add_argument("--out", default="explorer.html", help="output file")
    args = parser.parse_args(argv)

    from dgmn_ref.figures.explorer_html import export_explorer

    try:
        with _one_thread():  # small tensors; many small message-source maps
            out = export_explorer(args.run, args.images, args.out, args.layer)
    except (ValueError, FileNotFoundError) as err:
        print(f"dgmn-ref explore-export: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """One torch thread inside, the caller's count again after (``main`` runs in-process)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def explore_numbers_main(argv: Sequence[str] | None = None) -> int:
    """``dgmn-ref explore-numbers RUN --out FILE.json [--gallery PREFIX]``: see
    :func:`dgmn_ref.figures.explore.explore_numbers`."""
    parser = argparse.ArgumentParser(
        prog="dgmn-ref explore-numbers",
        description="Where the learned walks go: walk length per rate and the share of walked "
        "vs uniform positions on the cue (synthetic-data runs: the beacon, or the far district "
        "of the redundant task, read from the run's data folder), as JSON; optionally a "
        "gallery of four nodes as PNG.",
    )
    parser.add_argument("run", help="run folder of a DGMN model trained on --dataset synthetic")
    parser.add_argument("--frames", type=int, default=60, help="validation frames (default 60)")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--gallery", default=None, help="PNG prefix, e.g. docs/explorer-gallery")
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error(f"--frames must be >= 1, got {args.frames}")

    from dgmn_ref.figures.explore import explore_numbers

    try:
        with _one_thread():
            result = explore_numbers(args.run, args.frames, args.gallery)
    except (ValueError, FileNotFoundError) as err:
        print(f"dgmn-ref explore-numbers: error: {err}", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


# ------------------------------------------------------------------------- dispatch


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="dgmn-ref",
        description="Dynamic Graph Message Passing Networks: the reference implementation.",
        epilog="Run 'dgmn-ref COMMAND --help' for the options of a command.",
    )
    parser.add_argument("command", choices=sorted(COMMANDS), help="what to do")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    for name, (_, text) in COMMANDS.items():
        parser.epilog += f"\n  {name}: {text}"
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    args = parser.parse_args(argv[:1])
    command = globals()[COMMANDS[args.command][0]]
    return int(command(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
