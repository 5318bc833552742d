"""The comparison's protocol helpers: lr selection on val, tables, Pareto front, diagnostics."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from dgmn_ref.data.redundant import far_zone
from dgmn_ref.models import SegmentationModel
from dgmn_ref.tools import comparison as cmp


def _record(method, lr, val, test, seed=0, scale="96x192", phase="sweep", iterations=200):
    metrics = {"context_accuracy": val, "miou": 0.5, "vehicle_class_accuracy": None}
    return {
        "task": "redundant", "scale": scale, "method": method, "phase": phase, "seed": seed,
        "lr": lr, "iterations": iterations, "layer_kwargs": {"context": "none"},
        "val": metrics, "test": metrics | {"context_accuracy": test}, "curve": [[200, val, 0.5]],
        "macs": 1e9, "params": 1e5, "s_per_it": 0.1, "peak_mb": 400.0, "load_avg": 1.0,
    }  # fmt: skip


def test_lr_is_selected_on_val_not_test():
    records = [
        _record("Dilated FCN", 1e-3, val=0.30, test=0.90),
        _record("Dilated FCN", 3e-3, val=0.50, test=0.10),
        _record("Dilated FCN", 1e-2, val=0.40, test=0.20),
    ]
    assert cmp.selected_lr(records, "redundant", "Dilated FCN", 200) == 3e-3
    assert cmp.selected_lr(records[:2], "redundant", "Dilated FCN", 200) is None  # incomplete
    records += [_record("Dilated FCN", 3e-3, 0.6, 0.7, seed=s, phase="final") for s in (1, 2)]
    runs = cmp.final_runs(records, "redundant", "96x192", "Dilated FCN")
    assert [r["seed"] for r in runs] == [0, 1, 2] and {r["lr"] for r in runs} == {3e-3}
    table = cmp.result_table(records, "redundant", "96x192")
    assert "| Dilated FCN |  | 0.003 | 0,1,2 | 50.0 ± 34.6 | n/a |" in table
    assert "| + Non-local | | | not run |" in table
    assert "| Dilated FCN |  | 0.003 | 0 | 10.0 | n/a |" in cmp.result_table(
        records[:3], "redundant", "96x192"
    )


def test_ablation_table_sits_beside_the_protocols_run():
    """Item 4: each change over its seeds, after the protocol's own DA+DW+DS row."""
    method = "+ DGMN DA+DW+DS"
    records = [
        _record(method, lr, val=v, test=v) for lr, v in zip(cmp.LRS, (0.3, 0.6, 0.4), strict=True)
    ]
    records += [_record(method, 3e-3, 0.5, 0.5, seed=s, phase="final") for s in (1, 2)]
    for seed, acc in enumerate((0.9, 0.7, 0.8)):
        r = _record(method, 3e-3, acc, acc, seed=seed, phase="ablation")
        records.append(r | {"change": {"walk_lr_mult": 10.0}})
    lines = cmp.ablation_table(records).splitlines()
    assert lines[2].startswith("| redundant | none (the protocol's DA+DW+DS) | 0.003 | 0,1,2 ")
    assert "| 53.3 ± 5.8 |" in lines[2]
    assert lines[3].startswith("| redundant | walk_lr_mult=10.0 | 0.003 | 0,1,2 | 80.0 ± 10.0 |")
    assert cmp.ablation_table(records[:5]) == "(no ablation runs in results/comparison.json)"
    assert cmp.change_name({"rates": [1, 3]}) == "rates={1, 3}"


def test_pareto_front():
    points = [(1.0, 0.3), (2.0, 0.9), (3.0, 0.8), (0.5, 0.3), (4.0, 0.95)]
    assert cmp.pareto(points) == [3, 1, 4]


def test_vehicle_class_accuracy():
    matrix = torch.zeros(19, 19, dtype=torch.int64)
    matrix[13, 13], matrix[14, 13], matrix[14, 0] = 6, 2, 100  # car right, truck as car, road
    assert cmp.vehicle_class_accuracy(matrix) == pytest.approx(6 / 8)
    assert cmp.vehicle_class_accuracy(torch.zeros(19, 19)) is None


@pytest.mark.parametrize("context", ["dgmn", "nonlocal"])
def test_far_sampling_share_untrained(context):
    torch.manual_seed(0)
    kwargs = {"rates": (1, 4)} if context == "dgmn" else {}
    model = SegmentationModel(19, depth=18, width=8, head_channels=16, context=context,
                              dropout=0.0, context_kwargs=kwargs)  # fmt: skip
    image = torch.randn(2, 3, 48, 96)
    ctx = torch.zeros(2, 48, 96, dtype=torch.bool)
    ctx[:, 30:40, 2:15] = True
    far = torch.from_numpy(np.ascontiguousarray(far_zone((48, 96), True))).expand(2, -1, -1)
    out = cmp.far_sampling_share(model, image, ctx, far)
    assert 0.3 < out["far_nodes"] < 0.4
    if context == "nonlocal":  # theta, phi random: attention close to uniform
        assert abs(out["far_share"] - out["far_nodes"]) < 0.1
    else:  # zero walks: rates 1 and 4 from x < 2 nodes never reach x >= 8
        assert out["far_share"] == 0.0 and out["walk_length"] == 0.0


def _grid_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "compare_context.py"
    spec = importlib.util.spec_from_file_location("compare_context", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grid_plan_and_scheduling_wait_for_the_sweep():
    """The plan: sweep first, ablations last; a final run starts only once its sweep is done."""
    grid = _grid_script()
    args = argparse.Namespace(
        tasks=["redundant"], scales=list(cmp.SCALES), methods=["Dilated FCN", "+ DGMN DA+DW+DS"],
        seeds=[0, 1, 2], ablations=True,
    )  # fmt: skip
    plan = grid.plan(args)
    phases = [phase for phase, _ in plan]
    assert phases[: 2 * len(cmp.LRS)] == ["sweep"] * (2 * len(cmp.LRS))
    assert phases[-len(cmp.ABLATIONS) * 3 :] == ["ablation"] * (len(cmp.ABLATIONS) * 3)
    finals = [s for p, s in plan if p == "final"]
    assert len(finals) == 2 * (1 + 2 + 2)  # seed 0 large; seeds 1, 2 at both scales
    pending = [{"iterations": 200, "extra": {}} | s for _, s in plan if "lr" not in s]
    assert grid._next_ready(pending, [], set(), {}) is None  # no sweep yet: nothing can start
    sweep = [
        _record("Dilated FCN", lr, val=v, test=v)
        for lr, v in zip(cmp.LRS, (0.3, 0.6, 0.4), strict=True)
    ]
    ready = grid._next_ready(pending, sweep, set(), {})
    assert ready["method"] == "Dilated FCN" and ready["lr"] == cmp.LRS[1]
    assert ready not in pending and len(pending) == len(finals) - 1 + len(cmp.ABLATIONS) * 3
