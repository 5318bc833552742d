"""What ``dgmn-ref bench`` makes of its measurements: fitted exponents, the goals, a table.

Pure Python on the result dicts of :func:`dgmn_ref.tools.bench.run_case` (no torch), so a
saved ``results.json`` can be re-analysed anywhere. A result is at a point ``(C, H, W)``;
results of older runs (square maps, no ``width``, C = 512) read as such. Goals are stated
only at the points that were measured, and carry ``loaded`` when a case behind them ran
with a load above its thread count.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = ["fit_exponent", "format_table", "goals", "label"]

# impl="auto" runs the fast kernels from this many elements of b c h w on; the same number
# as dgmn_ref.layer.AUTO_FAST_MIN_ELEMENTS (a test keeps them equal; this module has no torch)
AUTO_FAST_MIN_ELEMENTS = 2**15


def fit_exponent(sizes_times: Sequence[tuple]) -> float | None:
    """Least-squares slope of log(time) against log(N); None with < 2 distinct N.

    Points are ``(H, time)`` (a square map, N = H * H) or ``(H, W, time)``.
    """
    points = []
    for point in sizes_times:
        *sides, t = point
        nodes = sides[0] * (sides[1] if len(sides) > 1 else sides[0])
        if t and t > 0:
            points.append((math.log(nodes), math.log(t)))
    if len({x for x, _ in points}) < 2:
        return None
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    num = sum((x - mx) * (y - my) for x, y in points)
    return num / sum((x - mx) ** 2 for x, _ in points)


def _point(r: dict) -> tuple[int, int, int]:
    """(channels, H, W) of a result (results of older runs have square maps only)."""
    return r.get("channels", 512), r["size"], r.get("width", r["size"])


def label(point: tuple[int, int, int]) -> str:
    """``C = 16, 12 x 24``-style label of a (channels, H, W) point."""
    c, h, w = point
    return f"C={c} {h}x{w}"


def _find(results: list[dict], case: str, point: tuple[int, int, int]) -> dict | None:
    for r in results:
        if r["case"] == case and _point(r) == point and "fwd_bwd_s" in r:
            return r
    return None


def _square_point(results: list[dict], size: int) -> tuple[int, int, int] | None:
    """The measured point with an H = W = size map and the most channels."""
    points = [_point(r) for r in results if _point(r)[1:] == (size, size)]
    return max(points) if points else None


def goals(results: list[dict], size: int = 97, large: int = 193) -> list[dict]:
    """The issues' goals as ratios from the same run, only at points that were measured.

    Each row: ``goal``, ``size`` (the point's label, None for exponents), ``value``,
    ``op``, ``target``, ``met``, ``loaded`` (a case behind the ratio was loaded).
    """
    rows: list[tuple] = []

    def ratio(name: str, a: str, b: str, key: str, point, op: str, target: float) -> None:
        ra, rb = _find(results, a, point), _find(results, b, point)
        if ra and rb and rb[key]:
            loaded = bool(ra.get("loaded") or rb.get("loaded"))
            rows.append((name, label(point), ra[key] / rb[key], op, target, loaded))

    # fast against the reference wherever both ran (docs/benchmarks.md, goal 1)
    points = sorted({_point(r) for r in results})
    for point in points:
        ratio(
            "DGMN block fast / reference time (fwd+bwd)",
            "dgmn_fast", "dgmn_reference", "fwd_bwd_s", point, "<=", 1.0,
        )  # fmt: skip
        ratio(
            "fast messages / reference time (fwd+bwd)",
            "messages_fast", "messages_reference", "fwd_bwd_s", point, "<=", 1.0,
        )  # fmt: skip
        _auto_row(results, point, rows)
        ratio(
            "compiled reference messages / fast (fwd+bwd)",
            "messages_compiled", "messages_fast", "fwd_bwd_s", point, "<=", 1.0,
        )  # fmt: skip
        ratio(
            "compiled reference messages / fast (peak memory)",
            "messages_compiled", "messages_fast", "peak_mb", point, "<=", 1.0,
        )  # fmt: skip
    paper = _square_point(results, size)
    if paper:
        ratio(
            "fast messages speed-up over reference (fwd+bwd)",
            "messages_reference", "messages_fast", "fwd_bwd_s", paper, ">=", 5.0,
        )  # fmt: skip
        ratio(
            "fast messages peak memory / reference",
            "messages_fast", "messages_reference", "peak_mb", paper, "<=", 0.4,
        )  # fmt: skip
        ratio(
            "DGMN block (fast) time / Non-local (fwd+bwd)",
            "dgmn_fast", "nonlocal", "fwd_bwd_s", paper, "<=", 0.45,
        )  # fmt: skip
        ratio(
            "DGMN block (fast) peak memory / Non-local",
            "dgmn_fast", "nonlocal", "peak_mb", paper, "<=", 0.5,
        )  # fmt: skip
        ratio(
            "fast messages time / static depthwise floor (fwd+bwd)",
            "messages_fast", "floor", "fwd_bwd_s", paper, "<=", 2.0,
        )  # fmt: skip
    big = _square_point(results, large)
    if big and _find(results, "dgmn_fast", big):
        value, loaded = _large_ratio(results, big)
        if value is not None:
            name = "DGMN block (fast) time / Non-local (fwd+bwd"
            name += "; Non-local extrapolated)" if not _find(results, "nonlocal", big) else ")"
            rows.append((name, label(big), value, "<=", 0.2, loaded))
    for case, target, op in (
        ("messages_fast", 1.1, "<="),
        ("dgmn_fast", 1.1, "<="),
        ("nonlocal", 2.0, "~"),
        ("floor", 1.0, "~"),
    ):
        value, loaded, span = _exponent(results, case)
        if value is not None:
            rows.append((f"time exponent in N, {case}", span, value, op, target, loaded))
    out = []
    for name, at, value, op, target, loaded in rows:
        met = None if op == "~" else (value >= target if op == ">=" else value <= target)
        out.append(
            dict(goal=name, size=at, value=value, op=op, target=target, met=met, loaded=loaded)
        )
    return out


def _auto_row(results: list[dict], point: tuple[int, int, int], rows: list[tuple]) -> None:
    """impl="auto"'s pick (:func:`dgmn_ref.layer.resolve_impl`) against the faster block."""
    ref, fast = _find(results, "dgmn_reference", point), _find(results, "dgmn_fast", point)
    if not (ref and fast):
        return
    elements = ref.get("batch", 1) * point[0] * point[1] * point[2]
    picked = fast if elements >= AUTO_FAST_MIN_ELEMENTS else ref
    best = min(ref["fwd_bwd_s"], fast["fwd_bwd_s"])
    loaded = bool(ref.get("loaded") or fast.get("loaded"))
    name = f"DGMN block impl='auto' ({picked['case'][5:]}) / the faster one (fwd+bwd)"
    rows.append((name, label(point), picked["fwd_bwd_s"] / best, "<=", 1.0, loaded))


def _exponent(results: list[dict], case: str) -> tuple[float | None, bool, str]:
    """Fit over the square maps of the most common channel count measured for ``case``."""
    rows = [r for r in results if r["case"] == case and "fwd_bwd_s" in r]
    rows = [r for r in rows if _point(r)[1] == _point(r)[2]]
    if not rows:
        return None, False, ""
    channels = statistics.mode(_point(r)[0] for r in rows)
    rows = sorted((r for r in rows if _point(r)[0] == channels), key=lambda r: r["size"])
    value = fit_exponent([(r["size"], r["fwd_bwd_s"]) for r in rows])
    span = f"C={channels} " + ", ".join(str(r["size"]) for r in rows)
    return value, any(r.get("loaded") for r in rows), span


def _large_ratio(results: list[dict], point) -> tuple[float | None, bool]:
    """dgmn_fast / nonlocal at ``point``; Non-local extrapolated along its fit if skipped."""
    fast = _find(results, "dgmn_fast", point)
    nonlocal_run = _find(results, "nonlocal", point)
    if nonlocal_run:
        loaded = bool(fast.get("loaded") or nonlocal_run.get("loaded"))
        return fast["fwd_bwd_s"] / nonlocal_run["fwd_bwd_s"], loaded
    exponent, loaded, _ = _exponent(results, "nonlocal")
    measured = [
        r
        for r in results
        if r["case"] == "nonlocal" and "fwd_bwd_s" in r and _point(r)[0] == point[0]
    ]
    if exponent is None or not measured:
        return None, False
    last = max(measured, key=lambda r: r["nodes"])
    nonlocal_time = last["fwd_bwd_s"] * (point[1] * point[2] / last["nodes"]) ** exponent
    return fast["fwd_bwd_s"] / nonlocal_time, loaded or bool(fast.get("loaded"))


def _spread(r: dict, key: str, digits: int = 3) -> str:
    """``median [min-max]`` (older results without min and max: the median alone)."""
    text = f"{r[key + '_s']:.{digits}f}"
    if key + "_min" in r:
        text += f" [{r[key + '_min']:.{digits}f}-{r[key + '_max']:.{digits}f}]"
    return text


def format_table(results: list[dict], goal_rows: list[dict]) -> str:
    """A plain-text table of the results (median [min-max]) and the goals; * = loaded."""
    lines = [
        f"{'case':<20} {'point':>13} {'fwd s [min-max]':>23} {'fwd+bwd s [min-max]':>23} "
        f"{'peak MB':>8} {'load start-end':>15}"
    ]
    for r in results:
        where = label(_point(r))
        if "error" in r:
            lines.append(f"{r['case']:<20} {where:>13}  failed: {str(r['error'])[-60:]!r}")
            continue
        load = f"{r['load_start'][0]:.1f}-{r['load_end'][0]:.1f}" if r.get("load_start") else "-"
        flag = " * loaded" if r.get("loaded") else ""
        lines.append(
            f"{r['case']:<20} {where:>13} {_spread(r, 'fwd'):>23} {_spread(r, 'fwd_bwd'):>23} "
            f"{r['peak_mb']:>8.1f} {load:>15}{flag}"
        )
    lines.append("")
    for g in goal_rows:
        met = {True: "met", False: "NOT met", None: ""}[g["met"]]
        at = f" at {g['size']}" if g["size"] else ""
        flag = " (* loaded)" if g.get("loaded") else ""
        lines.append(
            f"{g['goal']}{at}: {g['value']:.3g} (goal {g['op']} {g['target']}) {met}{flag}"
        )
    return "\n".join(lines)
