"""Compare context modules on the embedded context task (the synthetic data's Table 1a).

Dilated FCN alone, + Non-local, + DGMN (DA, DA+DW, DA+DW+DS), each trained from scratch
with the same tiny ResNet-18 and schedule over several seeds. Reports mIoU on the
context-dependent pixels and overall, context-pixel accuracy, parameters and MACs of the
whole model (``dgmn_ref.complexity.count``) and seconds per training iteration, as
mean +- std; writes ``docs/comparison.md`` (table) and a JSON of every run.

    python scripts/compare_context.py --iterations 150 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dgmn_ref.complexity import count
from dgmn_ref.train import TrainConfig, build_dataset, build_model, evaluate, train

METHODS: dict[str, dict] = {
    "Dilated FCN": {"context": "none"},
    "+ Non-local": {"context": "nonlocal"},
    "+ DGMN w/ DA": {"context": "dgmn", "variant": "da"},
    "+ DGMN w/ DA+DW": {"context": "dgmn", "variant": "da_dw"},
    "+ DGMN w/ DA+DW+DS": {"context": "dgmn", "variant": "da_dw_ds"},
}


def smoke_config(**overrides) -> TrainConfig:
    """The CPU setting of the comparison (also ``configs/smoke_synthetic.json``)."""
    base = TrainConfig.from_file(Path(__file__).parents[1] / "configs" / "smoke_synthetic.json")
    return TrainConfig.from_dict(base.to_dict() | overrides)


def run_one(method: str, seed: int, args: argparse.Namespace, work: Path) -> dict:
    cfg = smoke_config(
        **METHODS[method],
        seed=seed,
        iterations=args.iterations,
        impl=args.impl,
        root=args.root,
        out=str(work / f"{method}-{seed}"),
        progress=False,
        log_every=args.iterations,
        checkpoint_every=args.iterations,
    )
    tic = time.perf_counter()
    result = train(cfg, overwrite=True)
    seconds = (time.perf_counter() - tic) / cfg.iterations
    metrics = evaluate(result["model"], build_dataset(cfg, "val"), cfg.num_classes(), batch_size=4)
    model = build_model(cfg)
    cost = count(model, (1, 3, *args.size))
    return {
        "method": method,
        "seed": seed,
        "miou": metrics["miou"],
        "context_miou": metrics["context_miou"],
        "context_accuracy": metrics["context_accuracy"],
        "final_loss": result["history"][-1]["loss"],
        "params": cost["params"],
        "macs": cost["macs"],
        "s_per_it": seconds,
    }


def _ms(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    mean = statistics.mean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table(runs: list[dict]) -> str:
    lines = [
        "| method | context mIoU (%) | context acc. (%) | overall mIoU (%) | params | MACs "
        "(96x192) | s / iteration |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        rs = [r for r in runs if r["method"] == method]
        if not rs:
            continue
        lines.append(
            f"| {method} | {_ms([r['context_miou'] for r in rs])} "
            f"| {_ms([r['context_accuracy'] for r in rs])} | {_ms([r['miou'] for r in rs])} "
            f"| {rs[0]['params'] / 1e6:.3f}M | {rs[0]['macs'] / 1e9:.3f}G "
            f"| {_ms([r['s_per_it'] for r in rs], 1.0, 2)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=150)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--impl", default="fast", choices=("fast", "reference"))
    p.add_argument("--root", default="data/synthetic_cityscapes")
    p.add_argument("--size", type=int, nargs=2, default=[96, 192])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="artifacts/comparison.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = []
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        for seed in args.seeds:
            for method in args.methods:
                runs.append(run_one(method, seed, args, Path(work)))
                print(json.dumps(runs[-1]), flush=True)
                out.write_text(json.dumps(runs, indent=1))
    print(table(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
