"""dgmn_ref.tools.bench: a tiny configuration runs end to end (no timing assertions)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dgmn_ref.cli import bench_main
from dgmn_ref.tools import bench, bench_report


@pytest.mark.parametrize("case", bench.CASES)
def test_every_case_builds_and_runs_forward_backward(case):
    torch.manual_seed(0)
    model = bench.build_case(case, channels=8, size=6)
    x = torch.randn(1, 8, 6, 6, requires_grad=True)
    out = model(x)
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad is not None


def test_run_case_reports_times_and_peak():
    result = bench.run_case("messages_fast", size=6, channels=8, repeats=2)
    assert result["fwd_s"] > 0 and result["fwd_bwd_s"] > 0
    assert len(result["fwd_bwd_runs"]) == 2
    assert not math.isnan(result["peak_mb"])  # Linux: /proc/self/clear_refs


def test_fit_exponent_recovers_a_power_law():
    sizes = [16, 32, 64]
    times = [3e-3 * (s * s) ** 1.5 for s in sizes]
    assert bench_report.fit_exponent(list(zip(sizes, times, strict=True))) == pytest.approx(1.5)
    assert bench_report.fit_exponent([(16, 1.0)]) is None


def test_goals_are_ratios_from_the_same_run():
    def row(case, size, t, mb):
        return dict(case=case, size=size, fwd_s=t / 3, fwd_bwd_s=t, peak_mb=mb)

    results = [
        row("messages_reference", 97, 12.0, 2000),
        row("messages_fast", 97, 1.0, 700),
        row("floor", 97, 0.8, 100),
        row("dgmn_fast", 97, 1.5, 500),
        row("nonlocal", 97, 3.5, 1200),
        row("nonlocal", 48, 3.5 * (48 / 97) ** 4, 100),
    ]
    goals = {g["goal"]: g for g in bench_report.goals(results, size=97, large=193)}
    speed_up = goals["fast messages speed-up over reference (fwd+bwd)"]
    assert speed_up["value"] == pytest.approx(12.0) and speed_up["met"]
    memory = goals["fast messages peak memory / reference"]
    assert memory["value"] == pytest.approx(0.35) and memory["met"]
    assert goals["time exponent in N, Non-local (for comparison)"]["value"] == pytest.approx(2.0)


@pytest.mark.slow
def test_cli_writes_a_table_and_json_with_machine_information(tmp_path, capsys):
    out = tmp_path / "results.json"
    argv = ["--cases", "floor", "--sizes", "8", "12", "--channels", "8"]
    argv += ["--repeats", "1", "--threads", "1", "--out", str(out)]
    assert bench_main(argv) == 0
    assert "floor" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["machine"]["torch"] == torch.__version__
    assert report["machine"]["threads"] == 1
    assert [r["size"] for r in report["results"]] == [8, 12]
    assert all("error" not in r for r in report["results"]), report["results"]
    assert any(g["goal"].startswith("time exponent") for g in report["goals"])
