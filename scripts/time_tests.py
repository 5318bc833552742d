"""How long `make test` takes, part by part, as a new user meets it: one command, one JSON.

    git clone <repo> /tmp/fresh && cd /tmp/fresh && python3 scripts/time_tests.py
    python scripts/time_tests.py --table          # the Markdown table from the JSON

Runs the parts of `make test` in order (`make venv`, which installs everything in a fresh
clone, then `lint`, `unit`, `notebooks-test`, `browser-test`), each timed on its own, and
writes ``results/test_times.json``: the wall time and exit status of each part, the machine,
its CPU capability and the 1-minute load average before and after each part. It stops at the
first part that fails (and says so in the JSON), as `make test` does. The README's "Tests"
section quotes this file.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from timing_report import load_cell, print_table, write_report

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "test_times.json"
PARTS = ("venv", "lint", "unit", "notebooks-test", "browser-test")


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip()


def run_part(target: str) -> dict:
    """``make <target>`` in the repository; its wall time, exit status and load."""
    load_start = os.getloadavg()[0]
    tic = time.perf_counter()
    status = subprocess.run(["make", target], cwd=REPO).returncode
    return {
        "part": target,
        "seconds": round(time.perf_counter() - tic, 1),
        "status": status,
        "load_start": round(load_start, 2),
        "load_end": round(os.getloadavg()[0], 2),
    }


def cpu_capability() -> str:
    python = REPO / ".venv" / "bin" / "python"
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def table(report: dict) -> str:
    lines = ["| part | seconds | exit status | load at start-end |", "|---|---:|---:|---|"]
    for r in report["parts"]:
        lines.append(f"| make {r['part']} | {r['seconds']:.0f} | {r['status']} | {load_cell(r)} |")
    m = report["machine"]
    total = sum(r["seconds"] for r in report["parts"])
    lines.append(
        f"\n({m['date_utc']} UTC, {m['cores']} cores, {m['cpu_capability']}, commit "
        f"{report['git_commit'][:7]}, fresh clone: {report['fresh_venv']}; {total:.0f} s in all; "
        "`python3 scripts/time_tests.py`, results/test_times.json.)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--table", action="store_true", help="print the table of --out and exit")
    args = p.parse_args(argv)
    if args.table:
        return print_table(p, args.out, table)
    fresh = not (REPO / ".venv").exists()
    report = {
        "git_commit": git_commit(),
        "fresh_venv": fresh,
        "machine": {
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "parts": [],
    }
    for target in PARTS:
        report["parts"].append(run_part(target))
        if report["parts"][-1]["status"]:
            break
    report["machine"]["cpu_capability"] = cpu_capability()
    report["passed"] = len(report["parts"]) == len(PARTS) and not report["parts"][-1]["status"]
    write_report(report, args.out)
    print(table(report))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
