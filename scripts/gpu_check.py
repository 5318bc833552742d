"""One command for a lent GPU: equality, block benchmarks and training speed (docs/benchmarks.md).

    scripts/gpu_check.sh                   # or: make gpu-check; about 8 minutes on one GPU
    python scripts/gpu_check.py --dry      # the same steps on the CPU at tiny sizes (a test)

Three steps, every result in one JSON (``benchmarks/results-gpu-<date>.json``, or ``--out``)
and a markdown summary beside it (same name, ``.md``):

1. **Equality on the device**: the fast kernels against the reference (DGMN block and the
   messages alone: outputs and the gradients of the input and of every parameter), in
   float32 and under bfloat16 autocast (the fast block under autocast against the float32
   reference, relative to the largest output; tolerances as in tests/test_fast.py).
2. **Block benchmarks** (:func:`dgmn_ref.tools.bench.run_case`, C = 512, batch 1) at
   97, 145 and 193: median [min-max] with CUDA synchronisation around every run and
   ``torch.cuda.max_memory_allocated`` for the peak. The reference only at 97.
3. **Training speed**: 100 iterations of the sec. 4.1 model (ResNet-101, the 512-channel
   head, a 769 x 769 crop, batch 1, SGD, AMP) for Dilated FCN, + Non-local and + DGMN
   (DA + DW + DS): seconds per iteration (median after 10 warm-up iterations) and peak
   memory.

``--dry`` runs the same code on the CPU with C = 16, maps of 8 and 12, a ResNet-18 of width 8
on 64 x 64 crops and 3 iterations, so the suite checks the script and its JSON without a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dgmn_ref import DGMN, fast  # noqa: E402
from dgmn_ref import functional as D  # noqa: E402
from dgmn_ref.tools import bench, bench_model, bench_report  # noqa: E402

FULL = dict(
    channels=512, sizes=(97, 145, 193), reference_max=97, repeats=5,
    setting=dict(depth=101, width=64, head_channels=512, crop=(769, 769), batch=1,
                 optimizer="sgd", rates=(1, 6, 12, 24, 36), repeats=0),
    iterations=100, warmup=10, amp="bf16",
)  # fmt: skip
DRY = dict(
    channels=16, sizes=(8, 12), reference_max=12, repeats=1,
    setting=dict(depth=18, width=8, head_channels=16, crop=(64, 64), batch=1,
                 optimizer="sgd", rates=(1, 2), repeats=0),
    iterations=3, warmup=1, amp="none",
)  # fmt: skip
TOLERANCE = {"float32": 1e-4, "bf16_autocast": 6e-2}  # tests/test_fast.py


def _outputs_and_grads(module: torch.nn.Module, x: torch.Tensor, probe: torch.Tensor) -> list:
    x = x.detach().clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    out = module(x)
    (out.float() * probe).sum().backward()
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return [out.float(), x.grad.float(), *[g.float() for g in grads]]


def equality(device: torch.device, channels: int, size: int) -> list[dict]:
    """Max |fast - reference| of the DGMN block (float32, bf16 autocast) and the messages."""
    torch.manual_seed(0)
    reference = DGMN(channels, rates=(1, 2, 3), impl="reference").to(device)
    with torch.no_grad():  # non-zero walks and filters, so every path is exercised
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    fast_block = DGMN(channels, rates=(1, 2, 3), impl="fast").to(device)
    fast_block.load_state_dict(reference.state_dict())
    x = torch.randn(2, channels, size, size + 1, device=device)
    probe = torch.randn(2, channels, size, size + 1, device=device)
    want = _outputs_and_grads(reference, x, probe)
    got = _outputs_and_grads(fast_block, x, probe)
    rows = [
        dict(
            check="DGMN block fast vs reference, float32 (output and every gradient)",
            error=max((a - b).abs().max().item() for a, b in zip(got, want, strict=True)),
            tolerance=TOLERANCE["float32"],
        )
    ]
    dtype = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else None
    if dtype is not None:
        with torch.autocast(device.type, dtype=dtype):
            out = fast_block(x)
        rows.append(
            dict(
                check="DGMN block fast under bf16 autocast vs float32 reference (relative)",
                error=((out.float() - want[0]).abs().max() / want[0].abs().max()).item(),
                tolerance=TOLERANCE["bf16_autocast"],
            )
        )
    g = torch.Generator(device="cpu").manual_seed(1)
    k = 9
    inputs = [
        torch.randn(2, channels, size, size, generator=g),
        torch.randn(2, k, 2, size, size, generator=g) * 3,
        torch.randn(2, k, size, size, generator=g).softmax(1),
        torch.randn(2, 4, k, size, size, generator=g),
    ]
    results = []
    for ops in (D, fast):
        leaves = [t.to(device).requires_grad_() for t in inputs]
        out = ops.dynamic_message(*leaves, 2)
        out.sum().backward()
        results.append([out, *[t.grad for t in leaves]])
    rows.append(
        dict(
            check="dynamic_message fast vs reference, float32 (output, dh, dwalks, dA, dw)",
            error=max(
                (a - b).abs().max().item() for a, b in zip(results[1], results[0], strict=True)
            ),
            tolerance=TOLERANCE["float32"],
        )
    )
    for row in rows:
        row["passed"] = row["error"] <= row["tolerance"]
    return rows


def block_benchmarks(device: torch.device, plan: dict) -> list[dict]:
    """bench.run_case for each case and size in this process (CUDA peaks reset per case)."""
    results = []
    for size in plan["sizes"]:
        for case in ("messages_fast", "floor", "dgmn_reference", "dgmn_fast", "nonlocal"):
            if case == "dgmn_reference" and size > plan["reference_max"]:
                continue
            try:
                result = bench.run_case(
                    case, size, plan["channels"], repeats=plan["repeats"], device=device.type
                )
            except torch.OutOfMemoryError as error:
                result = {"case": case, "size": size, "error": f"out of memory: {error}"[:300]}
            results.append(result)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            print(json.dumps({k: v for k, v in result.items() if not k.endswith("_runs")}))
    return results


def training_speed(device: torch.device, plan: dict) -> list[dict]:
    """Seconds per training iteration and peak memory for FCN, Non-local and DGMN."""
    bench_model.SETTINGS["gpu_check"] = plan["setting"]
    results = []
    for context in bench_model.CONTEXTS:
        base = bench._reset_peak(device)
        model, step = bench_model.build_step("gpu_check", context, str(device), plan["amp"])
        times = [bench._timed(step, device) for _ in range(plan["iterations"])]
        timed = times[plan["warmup"] :] or times
        results.append(
            {
                "context": context,
                "iterations": plan["iterations"],
                "s_per_iteration": statistics.median(timed),
                "s_min": min(timed),
                "s_max": max(timed),
                "peak_mb": bench._peak(device) - base,
                "params": sum(p.numel() for p in model.parameters()),
                "amp": plan["amp"],
            }
        )
        print(json.dumps(results[-1]))
        del model, step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def summary(report: dict) -> str:
    """A markdown summary of the report."""
    lines = [f"# GPU check {report['date']} on {report['device_name']}", ""]
    lines += ["| equality check | max error | tolerance | |", "|---|---:|---:|---|"]
    for row in report["equality"]:
        ok = "passed" if row["passed"] else "**FAILED**"
        lines.append(f"| {row['check']} | {row['error']:.3g} | {row['tolerance']} | {ok} |")
    lines += ["", "| case | H | fwd + bwd s [min-max] | peak MB |", "|---|---:|---:|---:|"]
    for r in report["blocks"]:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['size']} | {r['error'][:60]} | - |")
        else:
            spread = f"{r['fwd_bwd_s']:.4f} [{r['fwd_bwd_min']:.4f}-{r['fwd_bwd_max']:.4f}]"
            lines.append(f"| {r['case']} | {r['size']} | {spread} | {r['peak_mb']:.0f} |")
    lines += ["", "| goal | at | value | target | |", "|---|---|---:|---|---|"]
    for g in report["goals"]:
        met = {True: "met", False: "**not met**", None: "-"}[g["met"]]
        lines.append(
            f"| {g['goal']} | {g['size']} | {g['value']:.3g} | {g['op']} {g['target']} | {met} |"
        )
    iterations = report["plan"]["iterations"]
    lines += ["", f"| training ({iterations} it.) | s / iteration [min-max] | peak MB |"]
    lines += ["|---|---:|---:|"]
    for r in report["training"]:
        spread = f"{r['s_per_iteration']:.3f} [{r['s_min']:.3f}-{r['s_max']:.3f}]"
        lines.append(f"| {r['context']} | {spread} | {r['peak_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="tiny sizes on the CPU (a test)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/...)")
    args = parser.parse_args(argv)
    if not args.dry and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or --dry to test on the CPU")
    device = torch.device("cpu" if args.dry else "cuda")
    plan = DRY if args.dry else FULL
    if args.dry:
        torch.set_num_threads(1)
    date = time.strftime("%Y-%m-%d")
    out = Path(args.out or ROOT / "benchmarks" / f"results-gpu-{date}.json")
    start = time.perf_counter()
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "dry": args.dry,
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "plan": {k: v for k, v in plan.items()},
    }
    report["equality"] = equality(device, plan["channels"], plan["sizes"][0])
    report["blocks"] = block_benchmarks(device, plan)
    report["goals"] = bench_report.goals(
        report["blocks"], size=plan["sizes"][0], large=plan["sizes"][-1]
    )
    report["training"] = training_speed(device, plan)
    report["seconds"] = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    text = summary(report)
    out.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {out} and {out.with_suffix('.md')} in {report['seconds']:.0f} s")
    return 0 if all(row["passed"] for row in report["equality"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
