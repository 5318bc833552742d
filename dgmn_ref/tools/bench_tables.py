"""``dgmn-ref bench --tables``: the published benchmark tables, generated from committed JSON.

Every number of the README's and docs/benchmarks.md's benchmark tables comes from one
``dgmn-ref bench --out`` JSON in ``benchmarks/``. A table sits between two markers::

    <!-- bench-table benchmarks/results-cpu.json cases cases=dgmn_fast,nonlocal -->
    ...generated, do not edit...
    <!-- /bench-table -->

naming the JSON (relative to the repository root), the kind of table and optional filters.
``--tables`` rewrites what lies between the markers; ``--check-tables`` only reports
(exit 1) a table that differs from what its JSON gives, which ``tests/test_bench.py``
runs on the committed files.

Kinds: ``machine`` (one line: CPU, threads, torch, date, load), ``cases`` (block cases:
median [min-max] of forward and forward + backward, peak, load), ``goals`` (the goal
ratios), ``model`` (training steps), ``profile`` (the top operators of each profiled case).
Filters: ``cases=a,b`` (case or context names), ``at=C=512_97x97`` (cases or goals at one
point, ``_`` for the space), ``top=N`` (profile rows per case).
A case or goal measured under load above its thread count is marked with a *.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

__all__ = ["render", "update_text", "main", "DEFAULT_FILES"]

DEFAULT_FILES = ("README.md", "docs/benchmarks.md")
MARKER = re.compile(
    r"(<!-- bench-table (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /bench-table -->)", re.S
)
ROOT = Path(__file__).resolve().parents[2]
LOADED = "*"


def _normalise(report: dict) -> dict:
    """Results of older runs (one load reading at the end, raw runs only) in today's form,
    and the goals recomputed from the results with today's goal definitions."""
    from dgmn_ref.tools import bench, bench_model, bench_report

    threads = report["machine"].get("threads") or 1
    for r in report["results"]:
        for key in ("fwd", "fwd_bwd", "step"):
            runs = r.get(f"{key}_runs")
            if runs and f"{key}_min" not in r:
                r[f"{key}_min"], r[f"{key}_max"] = min(runs), max(runs)
        if "load_end" not in r and r.get("load_avg"):
            r["load_start"], r["load_end"] = None, r["load_avg"]
        if "loaded" not in r and "error" not in r:
            r["loaded"] = bench.is_loaded(r.get("load_start"), r.get("load_end"), threads)
    model = report["config"].get("mode") == "model"
    report["goals"] = (bench_model.model_goals if model else bench_report.goals)(report["results"])
    return report


def _load(r: dict) -> str:
    """``start-end`` of the 1-minute load average (older runs: ``end x``)."""
    if r.get("load_start"):
        return f"{r['load_start'][0]:.1f}-{r['load_end'][0]:.1f}"
    return f"end {r['load_end'][0]:.1f}" if r.get("load_end") else "-"


def _spread(r: dict, key: str) -> str:
    def num(x: float) -> str:
        return f"{x:.3g}" if x < 1 else f"{x:.2f}"

    text = num(r[f"{key}_s"])
    if f"{key}_min" in r:
        text += f" [{num(r[f'{key}_min'])}-{num(r[f'{key}_max'])}]"
    return text


def _where(r: dict) -> tuple[str, str]:
    return str(r.get("channels", 512)), f"{r['size']} x {r.get('width', r['size'])}"


def _label(r: dict) -> str:
    """The point label of a result, as in the goals: ``C=512 97x97``."""
    return f"C={r.get('channels', 512)} {r['size']}x{r.get('width', r['size'])}"


def _machine(report: dict, options: dict) -> str:
    m = report["machine"]
    results = [r for r in report["results"] if "error" not in r]
    loads = [x for r in results for x in (r.get("load_start"), r.get("load_end")) if x]
    load = f"{min(x[0] for x in loads):.1f}-{max(x[0] for x in loads):.1f}" if loads else "n/a"
    flagged = sum(bool(r.get("loaded")) for r in results)
    device = m.get("gpu") or m["cpu"]
    return (
        f"Measured {m['date'][:16]} on {device} ({m['cpu_count']} cores), "
        f"{m['threads']} thread(s), torch {m['torch']}; 1-minute load average {load} "
        f"over the cases; {flagged} of {len(results)} cases ran with load above "
        f"their thread count ({LOADED})."
    )


def _cases(report: dict, options: dict) -> str:
    wanted = options.get("cases")
    rows = [
        "| case | C | H x W | forward s | forward + backward s | peak MB | load | |",
        "|---|---:|---|---:|---:|---:|---|---|",
    ]
    at = options.get("at")
    for r in report["results"]:
        if (wanted and r["case"] not in wanted) or (at and _label(r) != at):
            continue
        c, hw = _where(r)
        if "error" in r:
            reason = str(r["error"]).strip().splitlines()[-1][:80]
            rows.append(f"| {r['case']} | {c} | {hw} | - | - | - | - | {reason} |")
            continue
        flag = LOADED if r.get("loaded") else ""
        rows.append(
            f"| {r['case']} | {c} | {hw} | {_spread(r, 'fwd')} | {_spread(r, 'fwd_bwd')} "
            f"| {r['peak_mb']:.0f} | {_load(r)} | {flag} |"
        )
    return "\n".join(rows)


def _goals(report: dict, options: dict) -> str:
    at = options.get("at")
    rows = ["| goal | at | value | target | | |", "|---|---|---:|---|---|---|"]
    for g in report["goals"]:
        if at and g["size"] != at:
            continue
        met = {True: "met", False: "**not met**", None: "-"}[g["met"]]
        flag = LOADED if g.get("loaded") else ""
        size = g["size"] or "-"
        rows.append(
            f"| {g['goal']} | {size} | {g['value']:.3g} | {g['op']} {g['target']} | {met} "
            f"| {flag} |"
        )
    return "\n".join(rows)


def _model(report: dict, options: dict) -> str:
    wanted = options.get("cases")
    rows = [
        "| setting | context | step s | peak MB | parameters | load | |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in report["results"]:
        if wanted and r["context"] not in wanted:
            continue
        if "error" in r:
            reason = str(r["error"]).strip().splitlines()[-1][:80]
            rows.append(f"| {r['setting']} | {r['context']} | - | - | - | - | {reason} |")
            continue
        flag = LOADED if r.get("loaded") else ""
        rows.append(
            f"| {r['setting']} | {r['context']} | {_spread(r, 'step')} | {r['peak_mb']:.0f} "
            f"| {r['params'] / 1e6:.2f}M | {_load(r)} | {flag} |"
        )
    return "\n".join(rows)


def _profile(report: dict, options: dict) -> str:
    top = int(options.get("top", 6))
    wanted = options.get("cases")
    rows = ["| case | at | operator | self s | share |", "|---|---|---|---:|---:|"]
    for r in report["results"]:
        name = r.get("context") or r.get("case")
        if "top_ops" not in r or (wanted and name not in wanted):
            continue
        at = r.get("setting") or _label(r)
        for op in r["top_ops"][:top]:
            rows.append(
                f"| {name} | {at} | `{op['op']}` | {op['self_cpu_s']:.3f} | {op['share']:.0%} |"
            )
    return "\n".join(rows)


KINDS = {
    "machine": _machine,
    "cases": _cases,
    "goals": _goals,
    "model": _model,
    "profile": _profile,
}


def render(spec: str, root: Path = ROOT) -> str:
    """The table of a marker's ``spec``: ``PATH KIND [key=value ...]``.

    Raises:
        ValueError: an unknown kind or option, or a missing JSON (named).
    """
    path, kind, *pairs = spec.split()
    if kind not in KINDS:
        raise ValueError(f"bench-table {spec!r}: kind expected one of {sorted(KINDS)}")
    options: dict = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in ("cases", "at", "top") or not value:
            raise ValueError(f"bench-table {spec!r}: option expected cases=, at= or top=")
        options[key] = value.split(",") if key == "cases" else value.replace("_", " ")
    file = root / path
    if not file.is_file():
        raise ValueError(f"bench-table {spec!r}: {file} not found")
    report = _normalise(json.loads(file.read_text()))
    return KINDS[kind](report, options) + "\n"


def update_text(text: str, root: Path = ROOT) -> str:
    """``text`` with every bench table regenerated from its JSON."""

    def replace(match: re.Match) -> str:
        return match.group(1) + render(match.group("spec"), root) + match.group(4)

    return MARKER.sub(replace, text)


def main(files: Sequence[str] | None = None, check: bool = False, root: Path = ROOT) -> int:
    """Regenerate (or with ``check`` compare) the tables of ``files``; the exit status."""
    stale = []
    for name in files or DEFAULT_FILES:
        path = root / name if not Path(name).is_absolute() else Path(name)
        text = path.read_text()
        if not MARKER.search(text):
            print(f"{name}: no bench-table markers")
            continue
        new = update_text(text, root)
        if new != text:
            stale.append(name)
            if not check:
                path.write_text(new)
        state = "up to date" if new == text else ("stale" if check else "rewritten")
        print(f"{name}: {state}")
    return 1 if check and stale else 0
