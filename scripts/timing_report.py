"""What scripts/time_notebooks.py and scripts/time_tests.py share: the load columns of their
tables, printing a table from the committed JSON, and writing the JSON atomically.

Standard library only: time_tests.py runs before the virtual environment exists.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path


def load_cell(record: dict) -> str:
    """A table cell: the 1-minute load average before and after a timed ``record``."""
    return f"{record['load_start']:.1f}-{record['load_end']:.1f}"


def print_table(parser: argparse.ArgumentParser, out: Path, table: Callable[[dict], str]) -> int:
    """``--table``: print ``table`` of the JSON at ``out`` (a parser error if it is missing)."""
    if not out.is_file():
        parser.error(f"--table: {out} does not exist; run without --table first")
    print(table(json.loads(out.read_text())))
    return 0


def write_report(report: dict, out: Path) -> None:
    """Write ``report`` as JSON to ``out`` through a temporary file: never half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(out)
