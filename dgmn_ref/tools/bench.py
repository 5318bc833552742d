"""``dgmn-ref bench``: wall time and peak memory of DGMN against its baselines.

The analysis of the results (exponents, goals, the text table) is
:mod:`dgmn_ref.tools.bench_report`.

Block cases (C channels, batch b, an H x W map; S = 5 rates (1, 6, 12, 24, 36), K = 9):

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
``messages_compiled``     the messages with :mod:`dgmn_ref.compiled` (``torch.compile`` of the
                          reference; only when named in ``--cases``: compiling takes minutes)
========================  ===================================================================

``--mode model`` times whole training steps instead (:mod:`dgmn_ref.tools.bench_model`),
and ``--tables`` regenerates the README's and docs/benchmarks.md's tables from the
committed JSON (:mod:`dgmn_ref.tools.bench_tables`).

Every (case, point) runs in a fresh Python process: its peak memory is that of the first
forward + backward above what the inputs and parameters hold (``VmHWM`` reset through
``/proc/self/clear_refs`` on Linux; ``torch.cuda.max_memory_allocated`` on CUDA), then the
times are the median (with min and max) of ``--repeats`` runs after one warm-up: forward
under ``torch.no_grad()``, and forward + backward. The 1-minute load average is recorded
at the start and the end of every case; a case whose load exceeds its thread count shared
the CPU with something else and is flagged ``loaded``. The fitted exponent is the
least-squares slope of log(forward + backward time) against log(N), N = H * W.

A point is ``H``, ``HxW`` or ``C:HxW`` (channels for this point only), e.g.
``--sizes 16:12x24 64:24x48 97``.

Example::

    dgmn-ref bench --quick --out results.json
    dgmn-ref bench --sizes 16:12x24 97 145 193 --repeats 5 --out results.json
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
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from dgmn_ref.tools.bench_report import format_table, goals
from dgmn_ref.training.distributed import autocast as autocast_context

__all__ = [
    "CASES",
    "run_bench",
    "run_case",
    "machine_info",
    "parse_point",
]

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
    "messages_compiled",
)
# what runs without --cases: all but the compiled messages (torch.compile takes minutes)
DEFAULT_CASES = CASES[:-1]
REFERENCE_CASES = ("messages_reference", "dgmn_reference")


class Messages(nn.Module):
    """The S dynamic messages of one DGMN layer with fixed random walks/affinities/filters.

    Walks, affinities and filters are leaf inputs (they require grad), so forward +
    backward measures eqs. 5-7 and their gradients alone, without the predictors.
    """

    def __init__(
        self, channels: int, size: int, impl: str, groups: int = 4, width: int | None = None
    ) -> None:
        super().__init__()
        width = size if width is None else width
        from dgmn_ref.layer import message_ops

        self.ops = message_ops(impl)
        k = KERNEL * KERNEL
        g = torch.Generator().manual_seed(0)
        self.walks = nn.ParameterList(
            nn.Parameter(torch.randn(1, k, 2, size, width, generator=g) * 2) for _ in RATES
        )
        self.affinity = nn.ParameterList(
            nn.Parameter(torch.randn(1, k, size, width, generator=g).softmax(1)) for _ in RATES
        )
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(1, groups, k, size, width, generator=g)) for _ in RATES
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


def build_case(case: str, channels: int, size: int, width: int | None = None) -> nn.Module:
    """The module measured by ``case`` (see the module docstring) on a size x width map."""
    from dgmn_ref.baselines import ASPP, NonLocal2d
    from dgmn_ref.layer import DGMN

    torch.manual_seed(0)
    if case == "messages_reference":
        return Messages(channels, size, "reference", width=width)
    if case == "messages_fast":
        return Messages(channels, size, "fast", width=width)
    if case == "messages_compiled":
        return Messages(channels, size, "compiled", width=width)
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
def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (None where the OS has none)."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def is_loaded(load_start: list[float] | None, load_end: list[float] | None, threads: int) -> bool:
    """True when the 1-minute load at the start or end of a case exceeds its thread count.

    The case itself accounts for up to ``threads`` of the load; more means another process
    competed for the cores while it ran.
    """
    loads = [x[0] for x in (load_start, load_end) if x]
    return bool(loads) and max(loads) > threads


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


def summarise(runs: Sequence[float], prefix: str) -> dict:
    """``{prefix}_s`` (median), ``{prefix}_min``, ``{prefix}_max`` and the raw ``_runs``."""
    return {
        f"{prefix}_s": statistics.median(runs),
        f"{prefix}_min": min(runs),
        f"{prefix}_max": max(runs),
        f"{prefix}_runs": list(runs),
    }


def top_ops(step, rows: int = 12) -> list[dict]:
    """The operators of one call of ``step`` with the most self time (CPU, plus CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    return [
        {
            "op": e.key,
            "self_cpu_s": e.self_cpu_time_total / 1e6,
            "share": e.self_cpu_time_total / total,
            "calls": e.count,
        }
        for e in ranked
    ]


def run_case(
    case: str,
    size: int,
    channels: int = 512,
    batch: int = 1,
    repeats: int = 5,
    device: str = "cpu",
    autocast: str = "none",
    width: int | None = None,
    profile: bool = False,
) -> dict:
    """Measure one case on a ``size x width`` map in this process (fresh ones: clean peaks).

    Returns a dict with ``fwd_s`` and ``fwd_bwd_s`` (medians) with their ``_min``, ``_max``
    and raw ``_runs``, ``peak_mb`` (peak of the first forward + backward above the inputs
    and parameters), the load average at the start and end (``load_start``, ``load_end``)
    and ``loaded`` (:func:`is_loaded`).
    """
    width = size if width is None else width
    load_start = load_average()
    dev = torch.device(device)
    model = build_case(case, channels, size, width).to(dev)
    model.train()
    x = torch.randn(batch, channels, size, width, device=dev, requires_grad=True)

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
    top = top_ops(fwd_bwd) if profile else None
    load_end = load_average()
    threads = torch.get_num_threads()
    return {
        **({"top_ops": top} if top else {}),
        "case": case,
        "size": size,
        "width": width,
        "channels": channels,
        "batch": batch,
        "nodes": size * width,
        **summarise(fwd_runs, "fwd"),
        **summarise(fwd_bwd_runs, "fwd_bwd"),
        "first_fwd_bwd_s": first,
        "peak_mb": peak,
        "threads": threads,
        "load_start": load_start,
        "load_end": load_end,
        "loaded": is_loaded(load_start, load_end, threads) if dev.type == "cpu" else False,
    }


def run_isolated(spec: dict, timeout: float) -> dict:
    """``dgmn-ref bench --worker spec`` in a fresh interpreter; failures are recorded."""
    command = [sys.executable, "-m", "dgmn_ref.cli", "bench", "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        return {**spec, "error": done.stderr[-2000:] or f"exit status {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _worker(spec: str) -> int:
    """Run one case (``mode`` "block": :func:`run_case`; "model": a training step)."""
    kwargs = json.loads(spec)
    torch.set_num_threads(kwargs.pop("threads"))
    if kwargs.pop("mode", "block") == "model":
        from dgmn_ref.tools.bench_model import run_step_case

        print(json.dumps(run_step_case(**kwargs)))
    else:
        print(json.dumps(run_case(**kwargs)))
    return 0


# ----------------------------------------------------------------------- analysis
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
        "load_avg_at_start": load_average(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    if args.device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


# ----------------------------------------------------------------------------- run
POINT = re.compile(r"(?:(\d+):)?(\d+)(?:x(\d+))?")


def parse_point(token: str, channels: int) -> tuple[int, int, int]:
    """``"97"`` -> (channels, 97, 97); ``"12x24"`` -> (channels, 12, 24); ``"16:12x24"``.

    Raises:
        ValueError: not of that form, or a zero channel count or side.
    """
    match = POINT.fullmatch(token.strip())
    if not match:
        raise ValueError(
            f"expected a point H, HxW or C:HxW (e.g. 97, 12x24, 16:12x24), got {token!r}"
        )
    c, h, w = match.groups()
    point = (int(c) if c else channels, int(h), int(w) if w else int(h))
    if min(point) < 1:
        raise ValueError(f"expected ints >= 1 in the point {token!r}")
    return point


def run_bench(args: argparse.Namespace) -> int:
    """Every (case, point) of ``args`` (``dgmn-ref bench``'s options, see
    :func:`dgmn_ref.cli.bench_parser`) in fresh processes: table on stdout, JSON in
    ``args.out``. Returns the exit status (1 if a case failed; a skipped one is no failure)."""
    if args.worker is not None:
        return _worker(args.worker)
    if args.tables is not None:
        from dgmn_ref.tools import bench_tables

        return bench_tables.main(args.tables or None, check=args.check_tables)
    if args.mode == "model":
        from dgmn_ref.tools import bench_model

        return bench_model.run_model_bench(args)
    machine = machine_info(args)
    results: list[dict] = []
    for channels, height, width in args.points:
        for case in args.cases:
            if case in REFERENCE_CASES and max(height, width) > args.reference_max_size:
                continue
            spec = dict(
                case=case,
                size=height,
                width=width,
                channels=channels,
                batch=args.batch,
                repeats=args.repeats,
                device=args.device,
                autocast=args.autocast,
                threads=args.threads,
                profile=args.profile,
            )
            result = _too_big(spec) or run_isolated(spec, args.timeout)
            results.append(result)
            brief = {k: v for k, v in result.items() if not k.endswith("_runs")}
            print(json.dumps(brief), file=sys.stderr, flush=True)
            if args.out:  # after every case: a long run leaves usable partial results
                write_report(args.out, machine, args, results, goals(results))
    goal_rows = goals(results)
    print(format_table(results, goal_rows))
    if args.out:
        write_report(args.out, machine, args, results, goal_rows)
    failed = [r for r in results if "error" in r and not r.get("skipped")]
    return 1 if failed else 0


def write_report(path: str, machine: dict, args: argparse.Namespace, results, goal_rows) -> None:
    """The JSON every published number comes from: machine, config, results, goals."""
    config = {k: v for k, v in vars(args).items() if k not in ("worker", "tables", "check_tables")}
    machine = {**machine, "load_avg_at_end": load_average()}
    report = {"machine": machine, "config": config, "results": results, "goals": goal_rows}
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")


# Peak bytes of one forward + backward per (batch x node x channel), measured at C = 512,
# 97 x 97 (docs/benchmarks.md): a case is skipped where it cannot fit in memory.
REFERENCE_BYTES_PER_ELEMENT = {"messages_reference": 1030, "dgmn_reference": 1990}


def _too_big(spec: dict) -> dict | None:
    """Skip a case whose estimated peak exceeds 70 % of the available memory (CPU only).

    Non-local holds about 4 N x N float32 affinities in forward + backward; the reference
    cases about :data:`REFERENCE_BYTES_PER_ELEMENT` bytes per element of the map.
    """
    if spec["device"] != "cpu":
        return None
    b, n, c = spec["batch"], spec["size"] * spec["width"], spec["channels"]
    if spec["case"] == "nonlocal":
        need = 4 * b * n * n * 4
    elif spec["case"] in REFERENCE_BYTES_PER_ELEMENT:
        need = REFERENCE_BYTES_PER_ELEMENT[spec["case"]] * b * n * c
    else:
        return None
    try:
        with open("/proc/meminfo") as f:
            avail = int(re.search(r"MemAvailable:\s+(\d+)", f.read()).group(1)) * 1024
    except (OSError, AttributeError):
        return None
    if need < 0.7 * avail:
        return None
    reason = f"skipped: needs about {need / 2**30:.0f} GB, {avail / 2**30:.0f} GB available"
    return {**spec, "error": reason, "skipped": True}
