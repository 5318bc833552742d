"""The notebooks' drawing helpers: each draws, titles and labels its axes (Agg backend)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from dgmn_ref import DGMN, functional, variant_kwargs  # noqa: E402
from dgmn_ref.figures import plotting  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _labelled(ax) -> None:
    assert ax.get_title(), "missing title"
    assert ax.get_xlabel() and ax.get_ylabel(), "missing axis label"


def _texts(ax) -> str:
    return " ".join(t.get_text() for t in ax.texts)


@pytest.mark.parametrize("name", ["da_dw_ds", "da_dw_us", "da", "base"])
def test_draw_pipeline_follows_the_layer(name: str) -> None:
    layer = DGMN(8, **variant_kwargs(name))
    ax = plotting.draw_pipeline(layer)
    _labelled(ax)
    text = _texts(ax)
    assert f"S = {len(layer.rates)} rates" in ax.get_title()
    for rate in layer.rates:
        assert f"= {rate}, K = 9" in text
    assert ("no walks" in text) == (not layer.rate_messages[0].dynamic_sampling)
    assert ("G·K" in text) == layer.rate_messages[0].dynamic_weights


@pytest.mark.parametrize("fusion", ["concat", "sum", "residual"])
def test_draw_pipeline_fusions(fusion: str) -> None:
    ax = plotting.draw_pipeline(DGMN(8, rates=(1, 2), fusion=fusion))
    scale = {"concat": "W", "sum": "β", "residual": "γ"}[fusion]
    assert f"{scale}_1" in _texts(ax) and f"{scale}_2" in _texts(ax) and "H =" in _texts(ax)


def test_draw_adjacency_and_node_row() -> None:
    a = torch.zeros(12, 12)
    a[3, [2, 3, 4]] = 1 / 3
    ax = plotting.draw_adjacency(a, title="A")
    _labelled(ax)
    assert "3 of 144" in ax.get_title()
    ax = plotting.draw_node_row(a[3], 3, 4, (0, 3))
    _labelled(ax)
    assert ax.get_images()[0].get_array().shape == (3, 4)


def test_draw_neighbours_includes_outside_points() -> None:
    pos = {r: functional.uniform_positions(20, 20, r)[:, :, 2, 17] for r in (1, 4, 8)}
    ax = plotting.draw_neighbours(pos, 20, 20, (2, 17))
    _labelled(ax)
    x_lo, x_hi = sorted(ax.get_xlim())
    y_lo, y_hi = sorted(ax.get_ylim())
    assert x_hi >= 25 and y_lo <= -6, "neighbours outside the map must stay in view"
    assert ax.get_ylim()[0] > ax.get_ylim()[1], "rows grow downwards"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ρ = 1", "ρ = 4", "ρ = 8"]


def test_draw_bilinear_annotates_corner_weights() -> None:
    weights = {(1, 2): 0.28, (1, 3): 0.42, (2, 2): 0.12, (2, 3): 0.18}
    ax = plotting.draw_bilinear(torch.arange(20.0).reshape(4, 5), (1.3, 2.6), weights)
    _labelled(ax)
    for w in weights.values():
        assert f"w={w:.2f}" in _texts(ax)


@pytest.mark.parametrize("background", [None, torch.rand(10, 12)])
def test_draw_walks(background) -> None:
    u = {2: functional.uniform_positions(10, 12, 2)[:, :, 5, 6]}
    w = {2: u[2] + 0.5}
    ax = plotting.draw_walks(u, w, 10, 12, (5, 6), background=background)
    _labelled(ax)
    assert len(ax.patches) >= 9  # one arrow per neighbour


@pytest.mark.parametrize("groups", [1, 4])
def test_draw_kernels_one_panel_per_group(groups: int) -> None:
    a = torch.rand(9).softmax(0)
    axes = plotting.draw_kernels(a, torch.randn(groups, 9), node_label="n")
    assert len(axes) == 1 + groups
    for ax in axes:
        _labelled(ax)
    assert axes[0].get_title() == "n A'"
    assert len(axes[0].figure.axes) == 2 * (1 + groups)  # a colour bar beside every panel


def test_draw_map_scaling_bars_caption() -> None:
    ax = plotting.draw_map(torch.rand(6, 7), title="t", label="l", node=(2, 3))
    _labelled(ax)
    ax = plotting.draw_scaling(
        [8, 16, 32], {"a": [1, 4, 16], "b": [1, 2, 4]}, title="t", ylabel="y"
    )
    _labelled(ax)
    assert ax.get_yscale() == "log" and len(ax.get_lines()) == 2
    ax = plotting.draw_scaling([8, 16], {"a": [1, 4], "b": [1, 2]}, colours={"b": "#123456"})
    assert ax.get_lines()[1].get_color() == "#123456"  # named: its colour; unnamed: the cycle
    assert ax.get_lines()[0].get_color() == plotting.RATE_COLOURS[0]
    ax = plotting.draw_bars(
        ["x", "y"], {"paper": [1.0, 2.0], "ours": [1.1, 2.1]}, title="t", ylabel="y"
    )
    assert len(ax.patches) == 4 and ax.get_title() == "t"
    fig = plotting.add_caption(ax.figure, "look here")
    assert "look here" in [t.get_text() for t in fig.texts]
