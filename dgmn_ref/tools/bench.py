"""``dgmn-ref bench``: wall time and peak memory of DGMN against its baselines.

Cases (all at C channels, batch b, an H x H map; S = 5 rates (1, 6, 12, 24, 36), K = 9):

========================  ===================================================================
``messages_reference``    the S dynamic messages alone (eq. 5-7), :mod:`dgmn_ref.functional`
``messages_fast``         the same with :mod:`dgmn_ref.fast`
``floor``                 a static depthwise dilated convolution with the same S x K taps
                          (the same memory traffic, nothing dynamic)
``dgmn_reference``        the whole DGMN block (walk, filter and affinity convolutions,
                          messages, fusion), ``impl="reference"``
``dgmn_fast``             the same, ``impl="fast"``
``dgmn_da_dw``            DGMN with dynamic affinities and filters, phi = {1} (Table 1a), fast
``nonlocal``              :class:`dgmn_ref.baselines.NonLocal2d`
``aspp``                  :class:`dgmn_ref.baselines.ASPP`
========================  ===================================================================

Every (case, size) runs in a fresh Python process: its peak memory is that of the first
forward + backward above what the inputs and parameters hold (``VmHWM`` reset through
``/proc/self/clear_refs`` on Linux; ``torch.cuda.max_memory_allocated`` on CUDA), then the
times are the median of ``--repeats`` runs after one warm-up: forward under
``torch.no_grad()``, and forward + backward. The fitted exponent is the least-squares slope
of log(forward + backward time) against log(N), N = H * W.

Example::

    dgmn-ref bench --quick --out results.json
    dgmn-ref bench --sizes 48 97 145 193 --repeats 5 --out results.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from dgmn_ref.tools.bench_report import format_table, goals
from dgmn_ref.training.distributed import autocast as autocast_context

__all__ = ["CASES", "run_bench", "run_case", "machine_info"]

RATES = (1, 6, 12, 24, 36)
KERNEL = 3
CASES = (
    "messages_reference",
    "messages_fast",
    "floor",
    "dgmn_reference",
    "dgmn_fast",
    "dgmn_da_dw",
    "nonlocal",
    "aspp",
)
REFERENCE_CASES = ("messages_reference", "dgmn_reference")


class Messages(nn.Module):
    """The S dynamic messages of one DGMN layer with fixed random walks/affinities/filters.

    Walks, affinities and filters are leaf inputs (they require grad), so forward +
    backward measures eqs. 5-7 and their gradients alone, without the predictors.
    """

    def __init__(self, channels: int, size: int, impl: str, groups: int = 4) -> None:
        super().__init__()
        from dgmn_ref.layer import message_ops

        self.ops = message_ops(impl)
        k = KERNEL * KERNEL
        g = torch.Generator().manual_seed(0)
        self.walks = nn.ParameterList(
            nn.Parameter(torch.randn(1, k, 2, size, size, generator=g) * 2) for _ in RATES
        )
        self.affinity = nn.ParameterList(
            nn.Parameter(torch.randn(1, k, size, size, generator=g).softmax(1)) for _ in RATES
        )
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(1, groups, k, size, size, generator=g)) for _ in RATES
        )

    def forward(self, h: Tensor) -> Tensor:
        b = h.shape[0]
        out = 0
        for rate, walks, affinity, weights in zip(
            RATES, self.walks, self.affinity, self.weights, strict=True
        ):
            out = out + self.ops.dynamic_message(
                h,
                walks.expand(b, *walks.shape[1:]),
                affinity.expand(b, *affinity.shape[1:]),
                weights.expand(b, *weights.shape[1:]),
                rate,
            )
        return out


class DepthwiseFloor(nn.Module):
    """S depthwise ``3 x 3`` convolutions with dilations ``RATES``, summed: S x K static taps."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, channels, KERNEL, padding=r, dilation=r, groups=channels)
            for r in RATES
        )

    def forward(self, h: Tensor) -> Tensor:
        return sum(conv(h) for conv in self.convs)


def build_case(case: str, channels: int, size: int) -> nn.Module:
    """The module measured by ``case`` (see the module docstring)."""
    from dgmn_ref.baselines import ASPP, NonLocal2d
    from dgmn_ref.layer import DGMN

    torch.manual_seed(0)
    if case == "messages_reference":
        return Messages(channels, size, "reference")
    if case == "messages_fast":
        return Messages(channels, size, "fast")
    if case == "floor":
        return DepthwiseFloor(channels)
    if case == "dgmn_reference":
        return DGMN(channels, rates=RATES, impl="reference")
    if case == "dgmn_fast":
        return DGMN(channels, rates=RATES, impl="fast")
    if case == "dgmn_da_dw":
        return DGMN(channels, rates=(1,), dynamic_sampling=False, impl="fast")
    if case == "nonlocal":
        return NonLocal2d(channels)
    if case == "aspp":
        return ASPP(channels)
    raise ValueError(f"case: expected one of {CASES}, got {case!r}")


# ----------------------------------------------------------------------- measuring
def _proc_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(field + r":\s+(\d+)", f.read()).group(1))


def _reset_peak(device: torch.device) -> float:
    """Start a peak-memory window; return the current level in MB."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _proc_kib("VmRSS") / 1024
    except OSError:
        return math.nan


def _peak(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        return _proc_kib("VmHWM") / 1024
    except OSError:
        return math.nan


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def run_case(
    case: str,
    size: int,
    channels: int = 512,
    batch: int = 1,
    repeats: int = 5,
    device: str = "cpu",
    autocast: str = "none",
) -> dict:
    """Measure one case at one size in this process (fresh processes give clean peaks).

    Returns a dict with ``fwd_s`` and ``fwd_bwd_s`` (medians), their raw ``*_runs``, and
    ``peak_mb`` (peak of the first forward + backward above the inputs and parameters).
    """
    dev = torch.device(device)
    model = build_case(case, channels, size).to(dev)
    model.train()
    x = torch.randn(batch, channels, size, size, device=dev, requires_grad=True)

    def forward() -> Tensor:
        with autocast_context(autocast, dev):
            return model(x)

    def fwd_bwd() -> None:
        model.zero_grad(set_to_none=True)
        x.grad = None
        forward().float().sum().backward()

    def fwd() -> None:
        with torch.no_grad():
            forward()

    base = _reset_peak(dev)
    first = _timed(fwd_bwd, dev)  # also the warm-up
    peak = _peak(dev) - base
    fwd()
    fwd_runs = [_timed(fwd, dev) for _ in range(repeats)]
    fwd_bwd_runs = [_timed(fwd_bwd, dev) for _ in range(repeats)]
    return {
        "case": case,
        "size": size,
        "channels": channels,
        "batch": batch,
        "nodes": size * size,
        "fwd_s": statistics.median(fwd_runs),
        "fwd_bwd_s": statistics.median(fwd_bwd_runs),
        "fwd_runs": fwd_runs,
        "fwd_bwd_runs": fwd_bwd_runs,
        "first_fwd_bwd_s": first,
        "peak_mb": peak,
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def _run_isolated(args: argparse.Namespace, case: str, size: int) -> dict:
    """:func:`run_case` in a fresh interpreter; failures (e.g. out of memory) are recorded."""
    spec = dict(
        case=case,
        size=size,
        channels=args.channels,
        batch=args.batch,
        repeats=args.repeats,
        device=args.device,
        autocast=args.autocast,
        threads=args.threads,
    )
    command = [sys.executable, "-m", "dgmn_ref.cli", "bench", "--worker", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        return {"case": case, "size": size, "error": done.stderr[-2000:] or done.returncode}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _worker(spec: str) -> int:
    kwargs = json.loads(spec)
    torch.set_num_threads(kwargs.pop("threads"))
    print(json.dumps(run_case(**kwargs)))
    return 0


def machine_info(args: argparse.Namespace) -> dict:
    """What the numbers depend on: CPU, threads, torch build, device, load."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = re.search(r"model name\s*:\s*(.*)", f.read()).group(1)
    except (OSError, AttributeError):
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": args.device,
        "autocast": args.autocast,
        "load_avg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    if args.device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


# ----------------------------------------------------------------------------- run
def run_bench(args: argparse.Namespace) -> int:
    """Every (case, size) of ``args`` (``dgmn-ref bench``'s options, see
    :func:`dgmn_ref.cli.bench_parser`) in fresh processes: table on stdout, JSON in
    ``args.out``. Returns the exit status."""
    if args.worker is not None:
        return _worker(args.worker)
    machine = machine_info(args)
    size = 97 if 97 in args.sizes else args.sizes[0]
    large = max(args.sizes)
    results: list[dict] = []
    for h in args.sizes:
        for case in args.cases:
            if case in REFERENCE_CASES and h > args.reference_max_size:
                continue
            result = _nonlocal_too_big(case, h, args) or _run_isolated(args, case, h)
            results.append(result)
            brief = {k: v for k, v in result.items() if not k.endswith("_runs")}
            print(json.dumps(brief), file=sys.stderr, flush=True)
            if args.out:  # after every case: a long run leaves usable partial results
                _write(args.out, machine, args, results, goals(results, size, large))
    goal_rows = goals(results, size, large)
    print(format_table(results, goal_rows))
    if args.out:
        _write(args.out, machine, args, results, goal_rows)
    return 0


def _write(path: str, machine: dict, args: argparse.Namespace, results, goal_rows) -> None:
    report = {"machine": machine, "config": vars(args), "results": results, "goals": goal_rows}
    with open(path, "w") as f:
        json.dump(report, f, indent=2)


def _nonlocal_too_big(case: str, size: int, args: argparse.Namespace) -> dict | None:
    """Skip Non-local where its N x N affinities (about 4 copies in fwd+bwd) cannot fit."""
    if case != "nonlocal" or args.device != "cpu":
        return None
    need_gb = 4 * args.batch * (size * size) ** 2 * 4 / 2**30
    try:
        with open("/proc/meminfo") as f:
            avail_gb = int(re.search(r"MemAvailable:\s+(\d+)", f.read()).group(1)) / 2**20
    except (OSError, AttributeError):
        return None
    if need_gb < 0.7 * avail_gb:
        return None
    reason = f"skipped: needs about {need_gb:.0f} GB, {avail_gb:.0f} GB available"
    return {"case": case, "size": size, "error": reason}
