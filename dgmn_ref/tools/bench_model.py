"""``dgmn-ref bench --mode model``: one whole training step of the segmentation model.

The paper compares context modules by the time of the whole network (sec. 4.1: DGMN at
0.92 x Non-local's time per image and 1.10 x the dilated FCN's). This measures a training
step, forward + backward + optimizer step, of :class:`dgmn_ref.models.SegmentationModel`
with each context module, in a fresh process per (setting, context):

=============  ==========================================================================
``embedded``   ResNet-18 of width 8, 64-channel head, 96 x 192 crops, batch 4, AdamW, DGMN
               rates (1, 3, 6, 12): the setting of ``scripts/compare_context.py``
``paper``      ResNet-50 at full width, the 512-channel head, a 769 x 769 crop, batch 1,
               SGD with momentum, DGMN rates (1, 6, 12, 24, 36) (sec. 4.1, A.2.2)
=============  ==========================================================================

Contexts: ``fcn`` (Dilated FCN, no context), ``nonlocal`` and ``dgmn`` (DA + DW + DS,
``impl`` the training default). Times are the median (min-max) of ``--repeats`` steps
after one warm-up step; the peak is that of the warm-up step; ``--profile`` adds the top
operators of one more step (:mod:`torch.profiler`, self time).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from dgmn_ref.tools import bench, bench_report
from dgmn_ref.training.distributed import autocast as autocast_context

__all__ = ["SETTINGS", "CONTEXTS", "run_step_case", "model_goals", "run_model_bench"]

SETTINGS: dict[str, dict] = {
    "embedded": dict(
        depth=18, width=8, head_channels=64, crop=(96, 192), batch=4, optimizer="adamw",
        rates=(1, 3, 6, 12), repeats=5,
    ),
    "paper": dict(
        depth=50, width=64, head_channels=512, crop=(769, 769), batch=1, optimizer="sgd",
        rates=(1, 6, 12, 24, 36), repeats=2,
    ),
}  # fmt: skip
CONTEXTS = {"fcn": "none", "nonlocal": "nonlocal", "dgmn": "dgmn"}
NUM_CLASSES = 19


def build_step(setting: str, context: str, device: str = "cpu", amp: str = "none"):
    """The model and a closure running one training step on a fixed random batch."""
    from dgmn_ref.models import SegmentationModel

    s = SETTINGS[setting]
    torch.manual_seed(0)
    kwargs = {"rates": s["rates"]} if context == "dgmn" else {}
    model = SegmentationModel(
        NUM_CLASSES,
        depth=s["depth"],
        width=s["width"],
        head_channels=s["head_channels"],
        context=CONTEXTS[context],
        variant="da_dw_ds",
        dropout=0.0,
        context_kwargs=kwargs,
    ).to(device)
    model.train()
    if s["optimizer"] == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    image = torch.randn(s["batch"], 3, *s["crop"], device=device)
    target = torch.randint(0, NUM_CLASSES, (s["batch"], *s["crop"]), device=device)
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=amp == "fp16")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(amp, torch.device(device)):
            loss = F.cross_entropy(model(image), target)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return model, step


def run_step_case(
    setting: str,
    context: str,
    repeats: int | None = None,
    device: str = "cpu",
    amp: str = "none",
    profile: bool = False,
) -> dict:
    """Time one training step of ``context`` in ``setting`` in this process."""
    load_start = bench.load_average()
    dev = torch.device(device)
    repeats = SETTINGS[setting]["repeats"] if repeats is None else repeats
    base = bench._reset_peak(dev)
    model, step = build_step(setting, context, device, amp)
    first = bench._timed(step, dev)  # the warm-up; its peak includes parameters and state
    peak = bench._peak(dev) - base
    runs = [bench._timed(step, dev) for _ in range(repeats)]
    result = {
        "setting": setting,
        "context": context,
        "params": sum(p.numel() for p in model.parameters()),
        **bench.summarise(runs, "step"),
        "first_step_s": first,
        "peak_mb": peak,
        "threads": torch.get_num_threads(),
        "device": device,
        "amp": amp,
    }
    if profile:
        result["top_ops"] = bench.top_ops(step)
    result["load_start"], result["load_end"] = load_start, bench.load_average()
    loaded = bench.is_loaded(load_start, result["load_end"], result["threads"])
    result["loaded"] = loaded and dev.type == "cpu"
    return result


GOALS = (  # (setting, numerator, denominator, target): docs/benchmarks.md, whole-model goals
    ("paper", "dgmn", "fcn", 1.15),
    ("paper", "dgmn", "nonlocal", 1.0),
    ("embedded", "dgmn", "nonlocal", 1.5),
)


def model_goals(results: list[dict]) -> list[dict]:
    """The step-time ratios of the goals, for the settings that were measured."""

    def find(setting: str, context: str) -> dict | None:
        for r in results:
            if r.get("setting") == setting and r.get("context") == context and "step_s" in r:
                return r
        return None

    rows = []
    for setting, a, b, target in GOALS:
        ra, rb = find(setting, a), find(setting, b)
        if ra and rb:
            value = ra["step_s"] / rb["step_s"]
            rows.append(
                dict(
                    goal=f"training step {a} / {b}",
                    size=setting,
                    value=value,
                    op="<=",
                    target=target,
                    met=value <= target,
                    loaded=bool(ra["loaded"] or rb["loaded"]),
                )
            )
    return rows


def format_table(results: list[dict], goal_rows: list[dict]) -> str:
    lines = [f"{'setting':<9} {'context':<9} {'step s [min-max]':>24} {'peak MB':>9} {'load':>10}"]
    for r in results:
        if "error" in r:
            lines.append(f"{r['setting']:<9} {r['context']:<9} failed: {str(r['error'])[-80:]!r}")
            continue
        load = f"{r['load_start'][0]:.1f}-{r['load_end'][0]:.1f}" if r.get("load_start") else "-"
        flag = " * loaded" if r["loaded"] else ""
        lines.append(
            f"{r['setting']:<9} {r['context']:<9} {bench_report._spread(r, 'step'):>24} "
            f"{r['peak_mb']:>9.1f} {load:>10}{flag}"
        )
    lines.append("")
    for g in goal_rows:
        met = "met" if g["met"] else "NOT met"
        flag = " (* loaded)" if g["loaded"] else ""
        lines.append(
            f"{g['goal']} ({g['size']}): {g['value']:.3g} (goal <= {g['target']}) {met}{flag}"
        )
    return "\n".join(lines)


def run_model_bench(args: argparse.Namespace) -> int:
    """Run every (setting, context) in a fresh process; print and write the results."""
    machine = bench.machine_info(args)
    results: list[dict] = []
    for setting in args.settings:
        for context in args.cases:
            spec = dict(
                mode="model",
                setting=setting,
                context=context,
                device=args.device,
                amp=args.autocast,
                profile=args.profile,
                threads=args.threads,
            )
            if args.repeats is not None:
                spec["repeats"] = args.repeats
            result = bench.run_isolated(spec, args.timeout)
            results.append(result)
            brief = {k: v for k, v in result.items() if k not in ("step_runs", "top_ops")}
            print(json.dumps(brief), file=sys.stderr, flush=True)
            if args.out:
                bench.write_report(args.out, machine, args, results, model_goals(results))
    goal_rows = model_goals(results)
    print(format_table(results, goal_rows))
    if args.out:
        bench.write_report(args.out, machine, args, results, goal_rows)
    return 1 if any("error" in r for r in results) else 0
