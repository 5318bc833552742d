"""Table 1a reproduced: params and FLOPs (MACs) at C = 512 on the 97 x 97 map."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from dgmn_ref import DGMN
from dgmn_ref.complexity import PAPER_TABLE_1A, Row, count, format_table1a, table1a

ROWS = {row.name: row for row in table1a()}


@pytest.mark.parametrize("name", ["DGMN w/ DA", "DGMN w/ DA+DW", "DGMN w/ DA+DW+DS", "Non-local"])
def test_table_1a_within_two_percent(name):
    row = ROWS[name]
    assert abs(row.params_error) < 0.02, (name, row.params, row.paper_params)
    assert abs(row.macs_error) < 0.02, (name, row.macs, row.paper_macs)


def test_aspp_params_within_two_percent():
    assert abs(ROWS["ASPP"].params_error) < 0.02


@pytest.mark.xfail(
    strict=True,
    reason="DeepLab v3 ASPP (1x1 + 3 atrous 3x3 + image pooling, 256 per branch, projected "
    "to 512) matches +4.42M params within 1% but counts 40.70 GMACs, 5.8% above the "
    "paper's 38.45G; the paper's exact ASPP configuration is not stated",
)
def test_aspp_flops_within_two_percent():
    assert abs(ROWS["ASPP"].macs_error) < 0.02


def test_count_conv_and_matmul_exactly():
    conv = nn.Conv2d(3, 5, 3, padding=1)
    assert count(conv, (2, 3, 4, 4)) == {"params": 5 * 3 * 9 + 5, "macs": 2 * 16 * 5 * 3 * 9}


def test_count_leaves_module_untouched_and_is_fast_for_full_size():
    layer = DGMN(512)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    count(layer, (1, 512, 9, 9))  # warm-up (first dispatches on meta are slow)
    tic = time.perf_counter()
    count(layer, (1, 512, 9, 9))
    small = time.perf_counter() - tic
    tic = time.perf_counter()
    counted = count(layer, (1, 512, 97, 97))
    full = time.perf_counter() - tic
    # on meta tensors the cost does not grow with the map; a real forward would be ~100x
    # slower at 97 x 97 than at 9 x 9 (minutes on a CPU)
    assert full < 3 * small + 1.0, (small, full)
    assert counted["params"] == sum(p.numel() for p in layer.parameters())
    assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items())
    assert next(layer.parameters()).device.type == "cpu"


def test_every_paper_row_is_counted():
    assert list(ROWS) == list(PAPER_TABLE_1A)
    for name, (params, macs) in PAPER_TABLE_1A.items():
        assert (ROWS[name].paper_params, ROWS[name].paper_macs) == (params, macs), name


def test_format_puts_the_papers_numbers_beside_ours():
    row = Row("X", paper_params=1e6, paper_macs=2e9, params=1_010_000, macs=1_900_000_000)
    table = format_table1a([row]).splitlines()
    assert table[-1] == "| + X | +1.00M | +1.010M | +1.0% | +2.00G | +1.90G | -5.0% |"


@pytest.mark.slow
def test_cli_prints_the_table():
    out = subprocess.run(
        [sys.executable, "-m", "dgmn_ref.cli", "complexity"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "| + DGMN w/ DA+DW+DS | +3.02M | +3.026M" in out.stdout
