"""What ``dgmn-ref bench`` makes of its measurements: fitted exponents, the goals, a table.

Pure Python on the result dicts of :func:`dgmn_ref.tools.bench.run_case` (no torch), so a
saved ``results.json`` can be re-analysed anywhere.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = ["fit_exponent", "format_table", "goals"]


def fit_exponent(sizes_times: Sequence[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(time) against log(N = H * W); None with < 2 sizes."""
    points = [(math.log(s * s), math.log(t)) for s, t in sizes_times if t and t > 0]
    if len({x for x, _ in points}) < 2:
        return None
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    num = sum((x - mx) * (y - my) for x, y in points)
    return num / sum((x - mx) ** 2 for x, _ in points)


def _get(results: list[dict], case: str, size: int, key: str) -> float | None:
    for r in results:
        if r["case"] == case and r["size"] == size and key in r:
            return r[key]
    return None


def goals(results: list[dict], size: int = 97, large: int = 193) -> list[dict]:
    """The speed and memory targets of the fast path (docs/benchmarks.md, "goals") as
    ratios from the same run: ``value``, ``target``, ``met``."""

    def ratio(a: str, b: str, key: str, at: int) -> float | None:
        x, y = _get(results, a, at, key), _get(results, b, at, key)
        return x / y if x is not None and y else None

    exponents = {
        case: fit_exponent(
            [(r["size"], r["fwd_bwd_s"]) for r in results if r["case"] == case and "fwd_bwd_s" in r]
        )
        for case in ("messages_fast", "dgmn_fast", "nonlocal")
    }
    rows = [
        (
            "fast messages speed-up over reference (fwd+bwd)",
            ratio("messages_reference", "messages_fast", "fwd_bwd_s", size),
            ">=",
            5.0,
            size,
        ),
        (
            "fast messages peak memory / reference",
            ratio("messages_fast", "messages_reference", "peak_mb", size),
            "<=",
            0.4,
            size,
        ),
        (
            "DGMN block (fast) time / Non-local (fwd+bwd)",
            ratio("dgmn_fast", "nonlocal", "fwd_bwd_s", size),
            "<=",
            0.5,
            size,
        ),
        (
            "DGMN block (fast) peak memory / Non-local",
            ratio("dgmn_fast", "nonlocal", "peak_mb", size),
            "<=",
            0.5,
            size,
        ),
        (
            "DGMN block (fast) time / Non-local (fwd+bwd; Non-local extrapolated if skipped)",
            _large_ratio(results, exponents["nonlocal"], large),
            "<=",
            0.2,
            large,
        ),
        (
            "fast messages time / static depthwise floor (fwd+bwd)",
            ratio("messages_fast", "floor", "fwd_bwd_s", size),
            "<=",
            2.0,
            size,
        ),
        ("time exponent in N, fast messages", exponents["messages_fast"], "<=", 1.1, None),
        ("time exponent in N, DGMN block (fast)", exponents["dgmn_fast"], "<=", 1.1, None),
        ("time exponent in N, Non-local (for comparison)", exponents["nonlocal"], "~", 2.0, None),
    ]
    out = []
    for name, value, op, target, at in rows:
        met = None
        if value is not None and op != "~":
            met = value >= target if op == ">=" else value <= target
        out.append(dict(goal=name, size=at, value=value, op=op, target=target, met=met))
    return out


def _large_ratio(results: list[dict], exponent: float | None, large: int) -> float | None:
    """dgmn_fast / nonlocal at ``large``; Non-local extrapolated along its fit if skipped."""
    fast = _get(results, "dgmn_fast", large, "fwd_bwd_s")
    nonlocal_time = _get(results, "nonlocal", large, "fwd_bwd_s")
    if nonlocal_time is None and exponent is not None:
        measured = [
            (r["size"], r["fwd_bwd_s"])
            for r in results
            if r["case"] == "nonlocal" and "fwd_bwd_s" in r
        ]
        if measured:
            s, t = max(measured)
            nonlocal_time = t * (large / s) ** (2 * exponent)
    return fast / nonlocal_time if fast is not None and nonlocal_time else None


def format_table(results: list[dict], goal_rows: list[dict]) -> str:
    """A plain-text table of the results and the goals."""
    lines = [f"{'case':<20} {'H':>4} {'fwd s':>9} {'fwd+bwd s':>10} {'peak MB':>9}"]
    for r in results:
        if "error" in r:
            lines.append(f"{r['case']:<20} {r['size']:>4}  failed: {str(r['error'])[-60:]!r}")
            continue
        lines.append(
            f"{r['case']:<20} {r['size']:>4} {r['fwd_s']:>9.3f} {r['fwd_bwd_s']:>10.3f} "
            f"{r['peak_mb']:>9.1f}"
        )
    lines.append("")
    for g in goal_rows:
        value = "n/a" if g["value"] is None else f"{g['value']:.3g}"
        met = {True: "met", False: "NOT met", None: ""}[g["met"]]
        at = f" at {g['size']}x{g['size']}" if g["size"] else ""
        lines.append(f"{g['goal']}{at}: {value} (goal {g['op']} {g['target']}) {met}")
    return "\n".join(lines)
