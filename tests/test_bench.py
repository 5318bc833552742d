"""dgmn_ref.tools.bench and bench_model: tiny configurations end to end (no timing asserts)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dgmn_ref.cli import bench_main
from dgmn_ref.tools import bench, bench_model, bench_report


@pytest.mark.parametrize("case", bench.DEFAULT_CASES)  # messages_compiled: test_compiled.py
def test_every_case_builds_and_runs_forward_backward(case):
    torch.manual_seed(0)
    model = bench.build_case(case, channels=8, size=6, width=7)
    x = torch.randn(1, 8, 6, 7, requires_grad=True)
    out = model(x)
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad is not None


def test_run_case_reports_median_min_max_load_and_peak():
    result = bench.run_case("messages_fast", size=6, channels=8, repeats=3, width=5)
    assert (result["size"], result["width"], result["nodes"]) == (6, 5, 30)
    for key in ("fwd", "fwd_bwd"):
        runs = result[f"{key}_runs"]
        assert len(runs) == 3
        assert result[f"{key}_min"] == min(runs) <= result[f"{key}_s"] <= max(runs)
        assert result[f"{key}_max"] == max(runs)
    assert len(result["load_start"]) == 3 and len(result["load_end"]) == 3
    assert result["loaded"] == bench.is_loaded(
        result["load_start"], result["load_end"], result["threads"]
    )
    assert not math.isnan(result["peak_mb"])  # Linux: /proc/self/clear_refs


def test_run_case_profile_lists_the_top_operators():
    result = bench.run_case("floor", size=6, channels=8, repeats=1, profile=True)
    ops = result["top_ops"]
    assert ops and any("conv" in op["op"] for op in ops)
    shares = [op["share"] for op in ops]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9


def test_a_load_above_the_thread_count_is_flagged():
    assert bench.is_loaded([2.5, 1, 1], [1.0, 1, 1], threads=2)
    assert bench.is_loaded([1.0, 1, 1], [2.1, 1, 1], threads=2)
    assert not bench.is_loaded([2.0, 9, 9], [1.5, 9, 9], threads=2)  # the 1-minute load
    assert not bench.is_loaded(None, None, threads=1)


@pytest.mark.parametrize(
    "token,point",
    [("97", (512, 97, 97)), ("12x24", (512, 12, 24)), ("16:12x24", (16, 12, 24))],
)
def test_parse_point(token, point):
    assert bench.parse_point(token, 512) == point


@pytest.mark.parametrize("token", ["0", "12x", "x24", "16:0x3", "a", "-4"])
def test_parse_point_rejects_bad_tokens(token):
    with pytest.raises(ValueError, match="point"):
        bench.parse_point(token, 512)


def test_fit_exponent_recovers_a_power_law():
    sizes = [16, 32, 64]
    times = [3e-3 * (s * s) ** 1.5 for s in sizes]
    assert bench_report.fit_exponent(list(zip(sizes, times, strict=True))) == pytest.approx(1.5)
    assert bench_report.fit_exponent([(16, 32, 1.0), (32, 32, 2.0)]) == pytest.approx(1.0)
    assert bench_report.fit_exponent([(16, 1.0)]) is None


def row(case, size, t, mb, channels=512, width=None, loaded=False):
    return dict(
        case=case,
        size=size,
        width=size if width is None else width,
        channels=channels,
        nodes=size * (size if width is None else width),
        fwd_s=t / 3,
        fwd_bwd_s=t,
        peak_mb=mb,
        loaded=loaded,
    )


def test_goals_are_ratios_from_the_same_run():
    results = [
        row("messages_reference", 97, 12.0, 2000),
        row("messages_fast", 97, 1.0, 700),
        row("floor", 97, 0.8, 100),
        row("dgmn_fast", 97, 1.5, 500, loaded=True),
        row("nonlocal", 97, 3.5, 1200),
        row("nonlocal", 48, 3.5 * (48 / 97) ** 4, 100),
    ]
    goals = {(g["goal"], g["size"]): g for g in bench_report.goals(results)}
    speed_up = goals["fast messages speed-up over reference (fwd+bwd)", "C=512 97x97"]
    assert speed_up["value"] == pytest.approx(12.0) and speed_up["met"]
    assert not speed_up["loaded"]
    memory = goals["fast messages peak memory / reference", "C=512 97x97"]
    assert memory["value"] == pytest.approx(0.35) and memory["met"]
    block = goals["DGMN block (fast) time / Non-local (fwd+bwd)", "C=512 97x97"]
    assert block["value"] == pytest.approx(1.5 / 3.5) and block["met"]  # <= 0.45
    assert block["loaded"]  # dgmn_fast was measured under load
    exponent = goals["time exponent in N, nonlocal", "C=512 48, 97"]
    assert exponent["value"] == pytest.approx(2.0) and exponent["met"] is None


def test_goal_lines_name_only_the_sizes_that_were_run():
    only_97 = [row("dgmn_fast", 97, 1.5, 500), row("nonlocal", 97, 3.5, 1200)]
    goals = bench_report.goals(only_97)
    assert {g["size"] for g in goals} == {"C=512 97x97"}  # no 193 row, no exponent
    text = bench_report.format_table(only_97, goals)
    assert "193" not in text and "exponent" not in text
    # 193 run, Non-local skipped there: extrapolated along its exponent, and labelled 193
    sweep = [*only_97, row("nonlocal", 48, 3.5 * (48 / 97) ** 4, 100)]
    sweep.append(row("dgmn_fast", 193, 6.0, 2000))
    large = [g for g in bench_report.goals(sweep) if g["size"] == "C=512 193x193"]
    assert len(large) == 1 and "extrapolated" in large[0]["goal"]
    assert large[0]["value"] == pytest.approx(6.0 / (3.5 * (193 / 97) ** 4))


def test_fast_against_reference_at_every_point_where_both_ran():
    results = [
        row("dgmn_reference", 12, 0.10, 10, channels=16, width=24),
        row("dgmn_fast", 12, 0.08, 9, channels=16, width=24),
        row("dgmn_reference", 97, 29.0, 9000),
        row("dgmn_fast", 97, 2.0, 700),
        row("dgmn_fast", 48, 0.5, 200),  # no reference at 48: no row
    ]
    rows = [g for g in bench_report.goals(results) if g["goal"].startswith("DGMN block fast")]
    assert [(g["size"], g["met"]) for g in rows] == [("C=16 12x24", True), ("C=512 97x97", True)]
    assert rows[0]["value"] == pytest.approx(0.8)
    # impl="auto" picks the reference below 2**15 elements (here 4608): 1.25 x the faster one
    auto = {g["size"]: g for g in bench_report.goals(results) if "impl='auto'" in g["goal"]}
    assert "(reference)" in auto["C=16 12x24"]["goal"]
    assert auto["C=16 12x24"]["value"] == pytest.approx(1.25) and not auto["C=16 12x24"]["met"]
    assert "(fast)" in auto["C=512 97x97"]["goal"] and auto["C=512 97x97"]["value"] == 1.0


def test_format_table_flags_loaded_cases():
    results = [row("floor", 8, 0.1, 1, loaded=True), row("nonlocal", 8, 0.2, 2)]
    for r in results:
        r.update(fwd_min=0.01, fwd_max=0.05, fwd_bwd_min=0.09, fwd_bwd_max=0.3)
        r.update(load_start=[3.0, 1, 1], load_end=[2.0, 1, 1])
    lines = bench_report.format_table(results, []).splitlines()
    assert lines[1].endswith("* loaded") and not lines[2].endswith("* loaded")
    assert "0.100 [0.090-0.300]" in lines[1]


@pytest.mark.slow
def test_cli_writes_a_table_and_json_with_machine_information(tmp_path, capsys):
    out = tmp_path / "results.json"
    argv = ["--cases", "floor", "--sizes", "8", "6x12", "--channels", "8"]
    argv += ["--repeats", "1", "--threads", "1", "--out", str(out)]
    assert bench_main(argv) == 0
    assert "floor" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["machine"]["torch"] == torch.__version__
    assert report["machine"]["threads"] == 1
    assert len(report["machine"]["load_avg_at_end"]) == 3
    assert [(r["size"], r["width"]) for r in report["results"]] == [(8, 8), (6, 12)]
    assert all("error" not in r for r in report["results"]), report["results"]
    assert all("load_start" in r and "fwd_bwd_min" in r for r in report["results"])
    assert report["goals"] == []  # one square size, no pair of cases: no ratio to state


@pytest.mark.parametrize(
    "argv",
    [
        ["--sizes", "0"],
        ["--sizes", "12y4"],
        ["--cases", "nope"],
        ["--repeats", "0"],
        ["--threads", "0"],
        ["--channels", "-1"],
        ["--batch", "0"],
        ["--timeout", "0"],
        ["--mode", "nope"],
        ["--mode", "model", "--settings", "huge"],
        ["--mode", "model", "--cases", "floor"],
    ],
)
def test_invalid_arguments_exit_with_status_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_main(argv)
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


# ------------------------------------------------------------------ whole training step
@pytest.mark.parametrize("context", bench_model.CONTEXTS)
def test_model_step_trains_every_context(context, monkeypatch):
    small = dict(bench_model.SETTINGS["embedded"], crop=(32, 48), batch=2)
    monkeypatch.setitem(bench_model.SETTINGS, "tiny", small)
    model, step = bench_model.build_step("tiny", context)
    before = [p.detach().clone() for p in model.parameters()]
    step()
    changed = sum(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert changed > 0.5 * len(before)  # the optimizer stepped
    assert (context == "dgmn") == any(
        type(m).__name__ == "DGMN" for m in model.modules()
    )  # the context module is really there


def test_model_goals_from_the_settings_that_were_run():
    def step(setting, context, t, loaded=False):
        return dict(setting=setting, context=context, step_s=t, loaded=loaded)

    results = [step("embedded", "fcn", 0.04), step("embedded", "nonlocal", 0.05)]
    results.append(step("embedded", "dgmn", 0.10, loaded=True))
    rows = bench_model.model_goals(results)
    assert len(rows) == 1  # the paper setting was not run
    assert rows[0]["value"] == pytest.approx(2.0) and not rows[0]["met"] and rows[0]["loaded"]


@pytest.mark.slow
def test_model_mode_cli_writes_json_with_a_profile(tmp_path, monkeypatch):
    out = tmp_path / "model.json"
    argv = ["--mode", "model", "--cases", "fcn", "--repeats", "1", "--threads", "1"]
    assert bench_main([*argv, "--profile", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    (result,) = report["results"]
    assert (result["setting"], result["context"]) == ("embedded", "fcn")
    assert result["step_s"] > 0 and len(result["step_runs"]) == 1
    assert result["top_ops"] and all(op["self_cpu_s"] >= 0 for op in result["top_ops"])
    assert report["goals"] == []  # one context: no ratio


# ------------------------------------------------------------------ generated tables
def fake_report(tmp_path):
    results = [
        row("dgmn_fast", 97, 1.5, 500, loaded=True),
        row("nonlocal", 97, 3.5, 1200),
        row("dgmn_fast", 12, 0.05, 9, channels=16, width=24),
    ]
    for r in results:
        r.update(fwd_min=r["fwd_s"], fwd_max=r["fwd_s"], fwd_bwd_min=r["fwd_bwd_s"] * 0.9)
        r.update(fwd_bwd_max=r["fwd_bwd_s"] * 1.2, load_start=[3.0, 1, 1], load_end=[1.0, 1, 1])
    machine = dict(date="2026-12-02 18:00:00", cpu="CPU", cpu_count=2, threads=2, torch="x")
    path = tmp_path / "benchmarks" / "r.json"
    path.parent.mkdir()
    path.write_text(json.dumps(dict(machine=machine, config={}, results=results, goals=[])))
    return path


def test_tables_render_cases_goals_and_the_loaded_flag(tmp_path):
    from dgmn_ref.tools import bench_tables

    fake_report(tmp_path)
    cases = bench_tables.render("benchmarks/r.json cases at=C=512_97x97", tmp_path)
    lines = cases.strip().splitlines()
    assert len(lines) == 4  # header, rule and the two 97 x 97 cases
    assert lines[2].startswith("| dgmn_fast | 512 | 97 x 97 | 0.5 [0.5-0.5] | 1.50 [1.35-1.80] |")
    assert lines[2].endswith("| 3.0-1.0 | * |") and lines[3].endswith("|  |")
    goals = bench_tables.render("benchmarks/r.json goals", tmp_path)
    assert "| DGMN block (fast) time / Non-local (fwd+bwd) | C=512 97x97 | 0.429 |" in goals
    assert "193" not in goals  # recomputed from the results: only the points that ran


def test_tables_are_rewritten_between_markers_and_checked(tmp_path):
    from dgmn_ref.tools import bench_tables

    fake_report(tmp_path)
    doc = tmp_path / "doc.md"
    doc.write_text(
        "a\n<!-- bench-table benchmarks/r.json goals -->\nold 0.99\n<!-- /bench-table -->\nb\n"
    )
    assert bench_tables.main([str(doc)], check=True, root=tmp_path) == 1  # stale
    assert bench_tables.main([str(doc)], root=tmp_path) == 0
    text = doc.read_text()
    assert "old 0.99" not in text and "| goal |" in text and text.endswith("-->\nb\n")
    assert bench_tables.main([str(doc)], check=True, root=tmp_path) == 0


@pytest.mark.parametrize(
    "spec,message",
    [
        ("benchmarks/none.json cases", "not found"),
        ("benchmarks/r.json histogram", "kind expected"),
        ("benchmarks/r.json cases colour=red", "option expected"),
    ],
)
def test_tables_reject_bad_markers(tmp_path, spec, message):
    from dgmn_ref.tools import bench_tables

    fake_report(tmp_path)
    with pytest.raises(ValueError, match=message):
        bench_tables.render(spec, tmp_path)


def test_committed_readme_and_docs_tables_match_their_json():
    from dgmn_ref.tools import bench_tables

    assert bench_tables.main(check=True) == 0, "run: dgmn-ref bench --tables"


def test_report_and_layer_share_the_auto_threshold():
    from dgmn_ref import layer

    assert bench_report.AUTO_FAST_MIN_ELEMENTS == layer.AUTO_FAST_MIN_ELEMENTS
