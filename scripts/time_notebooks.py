"""Execution time of every notebook, as a user meets it: one command, one JSON.

    python scripts/time_notebooks.py                       # -> results/notebook_times.json
    python scripts/time_notebooks.py --table               # the Markdown table from the JSON

Each notebook runs once, top to bottom, in a fresh kernel of this environment (nbclient, the
executor behind ``jupyter nbconvert --execute`` and nbval), on a copy: the committed file is
never touched. The wall time includes the kernel's start. The machine, the CPU capability and
the 1-minute load average before and after each notebook are stored beside the times, so a
reader can tell an idle measurement from a loaded one.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from timing_report import load_cell, print_table, write_report

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
OUT = REPO / "results" / "notebook_times.json"


def time_notebook(path: Path, timeout: int) -> dict:
    """Execute ``path`` in a fresh kernel (cwd: its folder) and return its record."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    load_start = os.getloadavg()[0]
    tic = time.perf_counter()
    NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    return {
        "notebook": path.name,
        "seconds": round(time.perf_counter() - tic, 1),
        "cells": sum(c.cell_type == "code" for c in nb.cells),
        "load_start": round(load_start, 2),
        "load_end": round(os.getloadavg()[0], 2),
    }


def machine() -> dict:
    import torch

    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def table(report: dict) -> str:
    m = report["machine"]
    lines = [
        "| notebook | code cells | seconds | load at start-end |",
        "|---|---:|---:|---|",
    ]
    for r in report["notebooks"]:
        lines.append(f"| {r['notebook']} | {r['cells']} | {r['seconds']:.0f} | {load_cell(r)} |")
    total = sum(r["seconds"] for r in report["notebooks"])
    lines.append(
        f"\n({m['date_utc']} UTC, {m['cores']} cores, {m['cpu_capability']}, torch {m['torch']}; "
        f"{total:.0f} s in all; `python scripts/time_notebooks.py`, "
        "results/notebook_times.json.)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("notebooks", nargs="*", help="default: every notebooks/*.ipynb")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    p.add_argument("--table", action="store_true", help="print the table of --out and exit")
    args = p.parse_args(argv)
    if args.table:
        return print_table(p, args.out, table)
    paths = [Path(n) for n in args.notebooks] or sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    missing = [str(n) for n in paths if not n.is_file()]
    if missing:
        p.error(f"no such notebook: {', '.join(missing)}")
    report = {"machine": machine(), "notebooks": []}
    for path in paths:
        report["notebooks"].append(time_notebook(path.resolve(), args.timeout))
        print(f"{path.name}: {report['notebooks'][-1]['seconds']:.1f} s", flush=True)
    write_report(report, args.out)
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
