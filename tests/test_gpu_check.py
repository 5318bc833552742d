"""scripts/gpu_check.py --dry: the GPU check's every step runs on the CPU and writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_mode_writes_json_and_summary(tmp_path):
    out = tmp_path / "results-gpu-dry.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--dry", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["dry"] and report["device_name"] == "cpu"
    # 1. equality: float32 and bf16 autocast for the block, float32 for the messages
    checks = {row["check"].split(",")[0]: row for row in report["equality"]}
    assert len(report["equality"]) == 3 and all(row["passed"] for row in report["equality"])
    assert any("bf16" in name for name in checks)
    for row in report["equality"]:
        assert 0 <= row["error"] <= row["tolerance"]
    # 2. block benchmarks at every size of the plan, the reference only up to its limit
    measured = {(r["case"], r["size"]) for r in report["blocks"] if "fwd_bwd_s" in r}
    for size in report["plan"]["sizes"]:
        assert {("dgmn_fast", size), ("nonlocal", size), ("floor", size)} <= measured
    assert ("dgmn_reference", report["plan"]["reference_max"]) in measured
    assert all(r["fwd_bwd_min"] <= r["fwd_bwd_s"] <= r["fwd_bwd_max"] for r in report["blocks"])
    assert any(g["goal"].startswith("DGMN block fast / reference") for g in report["goals"])
    # 3. training speed for the three models
    assert [r["context"] for r in report["training"]] == ["fcn", "nonlocal", "dgmn"]
    for r in report["training"]:
        assert r["s_per_iteration"] > 0 and r["iterations"] == report["plan"]["iterations"]
    summary = out.with_suffix(".md").read_text()
    assert "| dgmn |" in summary and "passed" in summary


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: no refusal to test")
def test_gpu_check_without_a_gpu_refuses_with_a_clear_error(tmp_path):
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "no CUDA device" in run.stderr
