"""Drawing helpers for the teaching notebooks (``notebooks/0*.ipynb``).

The notebooks compute everything with :mod:`dgmn_ref.functional` and :class:`dgmn_ref.DGMN`
and hand the resulting tensors to these functions, which only draw: no equation of the
paper is evaluated here. Every helper takes an optional ``ax`` (a new figure is made when
it is None), sets a title and axis labels, and returns the axes it drew on.

Grid conventions follow :mod:`dgmn_ref.functional`: positions are ``(y, x)`` in
feature-map pixels, ``y`` grows downwards (image convention), neighbour ``k`` is
row-major in its ``ks x ks`` kernel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle
from torch import Tensor

from dgmn_ref.figures.common import new_axes, to_numpy

__all__ = [
    "RATE_COLOURS",
    "add_caption",
    "draw_pipeline",
    "draw_adjacency",
    "draw_node_row",
    "draw_neighbours",
    "draw_bilinear",
    "draw_walks",
    "draw_kernels",
    "draw_map",
    "draw_scaling",
    "draw_bars",
]

#: One colour per sampling rate, in the order of the rates (Figure 2 uses blue / green).
RATE_COLOURS = ("#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#d62728", "#8c564b", "#e377c2")


def add_caption(fig: Figure, text: str, fontsize: float = 9.5) -> Figure:
    """Write a one-line caption ("what to look at") under the figure."""
    fig.text(0.5, -0.02, text, ha="center", va="top", fontsize=fontsize, style="italic", wrap=True)
    return fig


# --------------------------------------------------------------------------- Figure 2
def _box(ax: Axes, x: float, y: float, text: str, colour: str, width: float = 1.5) -> None:
    ax.add_patch(
        FancyBboxPatch(
            (x - width / 2, y - 0.3),
            width,
            0.6,
            boxstyle="round,pad=0.04",
            facecolor=colour,
            edgecolor="0.25",
            alpha=0.9,
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=8)


def _arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float]) -> None:
    ax.add_patch(
        FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, color="0.3", lw=1)
    )


def draw_pipeline(layer: torch.nn.Module, ax: Axes | None = None) -> Axes:
    """Figure 2 of the paper drawn from a :class:`dgmn_ref.DGMN` instance's own parts.

    One row per :class:`dgmn_ref.DynamicMessageCalculation` in ``layer.rate_messages``:
    uniform sampling at its rate (eq. 3), the walk predictor if it has one (eq. 4-5), the
    joint filter/affinity predictor (eq. 6-7) and the message; then the fusion module
    (eq. 2-3). Box texts come from the modules' attributes, so the drawing changes when
    the layer does (try ``dynamic_sampling=False``).

    Args:
        layer: a ``DGMN`` (anything with ``rate_messages`` and ``fusion``).
        ax: where to draw; a new wide figure if None.
    """
    dmcs = list(layer.rate_messages)
    s = len(dmcs)
    ax = new_axes(ax, figsize=(13.0, 1.1 * s + 1.6))
    xs = {"f": 0.0, "us": 2.0, "walk": 4.0, "conv": 6.4, "msg": 8.8, "beta": 10.4, "h": 12.4}
    ys = [(s - 1) / 2 - q for q in range(s)]
    _box(ax, xs["f"], 0.0, "F\n(b, C, H, W)", "#dddddd", width=1.3)
    fusion = layer.fusion
    kind = getattr(fusion, "fusion", "concat")
    if kind == "residual":
        fusion_text = "update (released code)\nH = F + Σ γ_q M_q"
    elif kind == "sum":
        fusion_text = "update, eq. 2-3 (sum)\nH = ReLU(F + α Σ β_q M_q)"
    else:
        fusion_text = "fusion (concat), not eq. 2\nH = ReLU(BN(W[F, M_1..S]))"
    _box(ax, xs["h"], 0.0, fusion_text, "#f4cccc", width=2.6)
    for q, (dmc, y) in enumerate(zip(dmcs, ys, strict=True)):
        colour = RATE_COLOURS[q % len(RATE_COLOURS)]
        k = dmc.num_neighbours
        _arrow(ax, (xs["f"] + 0.65, 0.0), (xs["us"] - 0.75, y))
        _box(ax, xs["us"], y, f"US (eq. 3)\nρ_{q + 1} = {dmc.rate}, K = {k}", colour + "55")
        if dmc.walk_conv is not None:
            ks = dmc.walk_conv.kernel_size[0]
            walk_text = f"walks Δd (eq. 4)\n{ks}x{ks} conv → {dmc.walk_conv.out_channels} ch"
        else:
            walk_text = "no walks\n(uniform, Δd = 0)"
        _box(ax, xs["walk"], y, walk_text, "#fff2cc" if dmc.walk_conv is not None else "#eeeeee")
        parts = []
        if dmc.dynamic_weights:
            parts.append(f"w: G·K = {dmc.groups}·{k}")
        if dmc.dynamic_affinity:
            parts.append(f"A': K = {k}")
        head = r"$\varrho$ + $W^{k,A}$ (eq. 5-7)"
        conv_text = head + "\n" + (", ".join(parts) if parts else "static w, A")
        _box(ax, xs["conv"], y, conv_text, "#d9ead3", width=2.4)
        _box(ax, xs["msg"], y, f"DMC_{q + 1}\nM_{q + 1} (b, C, H, W)", colour + "99")
        # the weight of message q in the update: beta_q (eq. 3), a C x C block W_q of the
        # concat projection, or the released code's gamma_q
        scale = {"sum": "β", "residual": "γ"}.get(kind, "W")
        ax.text(xs["beta"], y, f"{scale}_{q + 1}", ha="center", va="center", fontsize=10)
        for a, b in (("us", "walk"), ("walk", "conv"), ("conv", "msg")):
            left = 1.2 if a == "conv" else 0.75
            right = 1.2 if b == "conv" else 0.75
            _arrow(ax, (xs[a] + left, y), (xs[b] - right, y))
        _arrow(ax, (xs["msg"] + 0.75, y), (xs["beta"] - 0.25, y))
        _arrow(ax, (xs["beta"] + 0.25, y), (xs["h"] - 1.3, 0.0))
    _arrow(ax, (xs["f"], -0.3), (xs["f"], ys[-1] - 0.7))
    ax.plot([xs["f"], xs["h"]], [ys[-1] - 0.7, ys[-1] - 0.7], color="0.3", lw=1)
    _arrow(ax, (xs["h"], ys[-1] - 0.7), (xs["h"], -0.3))
    ax.text(
        (xs["f"] + xs["h"]) / 2,
        ys[-1] - 0.85,
        "observation F (identity skip)"
        if kind != "concat"
        else "observation F (its own block of W)",
        ha="center",
        va="top",
        fontsize=8,
    )
    ax.set_xlim(-0.9, 13.8)
    ax.set_ylim(ys[-1] - 1.2, ys[0] + 0.6)
    ax.set_xticks([xs[n] for n in ("f", "us", "walk", "conv", "msg", "h")])
    ax.set_xticklabels(
        ["input", "sample", "walk", "filters + affinities", "message", "update"], fontsize=8
    )
    ax.set_yticks(ys)
    ax.set_yticklabels([f"rate {d.rate}" for d in dmcs], fontsize=8)
    ax.set_xlabel("data flow (left to right)")
    ax.set_ylabel("sampling rate q")
    ax.set_title(f"Figure 2 from the code: {type(layer).__name__} with S = {s} rates")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return ax


# ------------------------------------------------------------------------ eq. 1 graphs
def draw_adjacency(adjacency: Tensor, ax: Axes | None = None, title: str = "A") -> Axes:
    """An ``n m`` adjacency matrix as an image; zeros are white."""
    ax = new_axes(ax)
    a = to_numpy(adjacency)
    masked = np.ma.masked_where(a == 0, a)
    im = ax.imshow(masked, cmap="viridis", interpolation="nearest")
    plt.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="A[i, j]")
    ax.set_xlabel("sending node j")
    ax.set_ylabel("receiving node i")
    nonzero = int((a != 0).sum())
    ax.set_title(f"{title}\n{nonzero} of {a.size} entries non-zero")
    return ax


def draw_node_row(
    row: Tensor,
    height: int,
    width: int,
    node: tuple[int, int],
    ax: Axes | None = None,
    title: str = "",
) -> Axes:
    """Row ``i`` of an adjacency (``n`` values) drawn on the ``height x width`` grid.

    The receiving node ``node = (y, x)`` is marked with a red square (as in Figure 2).
    """
    ax = new_axes(ax)
    grid = to_numpy(row).reshape(height, width)
    im = ax.imshow(np.ma.masked_where(grid == 0, grid), cmap="viridis", interpolation="nearest")
    plt.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="A[i, j]")
    y, x = node
    ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
    ax.set_xlabel("x (column)")
    ax.set_ylabel("y (row)")
    ax.set_title(title or f"who sends to node {node}")
    return ax


# ---------------------------------------------------------------------------- eq. 3
def draw_neighbours(
    positions: Mapping[int, Tensor],
    height: int,
    width: int,
    node: tuple[int, int],
    ax: Axes | None = None,
    title: str = "",
    fields: bool = True,
) -> Axes:
    """The K sampled neighbours of one node for several rates on the feature-map grid.

    Args:
        positions: ``{rate: positions}`` with positions ``k p`` (absolute ``(y, x)``, e.g.
            ``uniform_positions(...)[:, :, y, x]``).
        height, width: the feature-map size (the grid drawn).
        node: the receiving node ``(y, x)``, drawn as a red square.
        fields: also draw each rate's receptive field (the box its neighbours span).
    """
    ax = new_axes(ax, figsize=(6.5, 6.5))
    ax.add_patch(Rectangle((-0.5, -0.5), width, height, facecolor="#f4f4f4", edgecolor="0.4"))
    for q, (rate, pos) in enumerate(positions.items()):
        colour = RATE_COLOURS[q % len(RATE_COLOURS)]
        p = to_numpy(pos)
        inside = (p[:, 0] >= 0) & (p[:, 0] <= height - 1) & (p[:, 1] >= 0) & (p[:, 1] <= width - 1)
        ax.scatter(p[inside, 1], p[inside, 0], s=22, color=colour, label=f"ρ = {rate}", zorder=3)
        if (~inside).any():
            ax.scatter(
                p[~inside, 1], p[~inside, 0], s=22, facecolor="none", edgecolor=colour, zorder=3
            )
        if fields:
            y0, x0 = p[:, 0].min(), p[:, 1].min()
            ax.add_patch(
                Rectangle(
                    (x0 - 0.5, y0 - 0.5),
                    p[:, 1].max() - x0 + 1,
                    p[:, 0].max() - y0 + 1,
                    fill=False,
                    edgecolor=colour,
                    lw=1,
                    ls="--",
                )
            )
    y, x = node
    ax.add_patch(Rectangle((x - 1, y - 1), 2, 2, facecolor="red", edgecolor="red", zorder=4))
    ax.autoscale_view()
    x_lo, x_hi = sorted(ax.get_xlim())
    y_lo, y_hi = sorted(ax.get_ylim())
    ax.set_xlim(min(-1.5, x_lo), max(width + 0.5, x_hi))
    ax.set_ylim(max(height + 0.5, y_hi), min(-1.5, y_lo))  # y grows downwards
    ax.set_aspect("equal")
    ax.set_xlabel("x (column of the feature map)")
    ax.set_ylabel("y (row of the feature map)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="rate")
    ax.set_title(title or f"K neighbours of node {node} on a {height}x{width} grid")
    return ax


def draw_map(
    values: Tensor,
    ax: Axes | None = None,
    title: str = "",
    label: str = "",
    node: tuple[int, int] | None = None,
    cmap: str = "magma",
) -> Axes:
    """A ``h w`` map (e.g. a gradient magnitude or a feature channel) with a colour bar."""
    ax = new_axes(ax)
    im = ax.imshow(to_numpy(values), cmap=cmap, interpolation="nearest")
    plt.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=label)
    if node is not None:
        y, x = node
        ax.add_patch(Rectangle((x - 1, y - 1), 2, 2, fill=False, edgecolor="cyan", lw=1.5))
    ax.set_xlabel("x (column)")
    ax.set_ylabel("y (row)")
    ax.set_title(title)
    return ax


# ------------------------------------------------------------------------- eq. 4 - 5
def draw_bilinear(
    image: Tensor,
    position: tuple[float, float],
    corner_weights: Mapping[tuple[int, int], float],
    ax: Axes | None = None,
    title: str = "",
) -> Axes:
    """A small ``h w`` image with its pixel values, a real-valued position and the weight
    the bilinear sampler gives each of the four pixels around it.

    Args:
        image: ``h w`` values (printed in every pixel).
        position: ``(y, x)`` in pixels.
        corner_weights: ``{(row, col): weight}`` for the (up to four) corners.
    """
    ax = new_axes(ax)
    img = to_numpy(image)
    ax.imshow(img, cmap="Greys", alpha=0.35, interpolation="nearest")
    for (r, c), v in np.ndenumerate(img):
        ax.text(c, r + 0.3, f"{v:g}", ha="center", va="center", fontsize=8, color="0.35")
    y, x = position
    for (r, c), w in corner_weights.items():
        ax.plot([x, c], [y, r], color="tab:blue", lw=0.8 + 4 * w, alpha=0.7)
        ax.scatter([c], [r], s=40, color="tab:blue", zorder=3)
        ax.text(
            c,
            r - 0.22,
            f"w={w:.2f}",
            ha="center",
            va="center",
            fontsize=9,
            color="tab:blue",
            fontweight="bold",
        )
    ax.scatter([x], [y], s=80, marker="*", color="red", zorder=4, label=f"(y, x) = {position}")
    ax.set_xticks(range(img.shape[1]))
    ax.set_yticks(range(img.shape[0]))
    ax.set_xlabel("x (column)")
    ax.set_ylabel("y (row)")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title or "bilinear sampler ϱ: four corner weights")
    return ax


def draw_walks(
    uniform: Mapping[int, Tensor],
    walked: Mapping[int, Tensor],
    height: int,
    width: int,
    node: tuple[int, int],
    ax: Axes | None = None,
    title: str = "",
    background: Tensor | None = None,
) -> Axes:
    """Walks drawn as arrows from the uniform positions to the walked ones, per rate.

    Args:
        uniform: ``{rate: k p}`` uniform positions of the node's K neighbours (eq. 3).
        walked: ``{rate: k p}`` the same plus the predicted walks (eq. 4).
        node: the receiving node ``(y, x)``.
        background: an optional ``h w`` map drawn under the arrows (e.g. the input feature).
    """
    ax = new_axes(ax, figsize=(6.5, 6.5))
    if background is None:
        ax.add_patch(Rectangle((-0.5, -0.5), width, height, facecolor="#f4f4f4", edgecolor="0.4"))
    else:
        ax.imshow(to_numpy(background), cmap="Greys", alpha=0.45, interpolation="nearest")
    for q, rate in enumerate(uniform):
        colour = RATE_COLOURS[q % len(RATE_COLOURS)]
        u, w = to_numpy(uniform[rate]), to_numpy(walked[rate])
        ax.scatter(u[:, 1], u[:, 0], s=18, facecolor="none", edgecolor=colour, zorder=3)
        ax.scatter(w[:, 1], w[:, 0], s=22, color=colour, zorder=3, label=f"ρ = {rate}")
        for (uy, ux), (wy, wx) in zip(u, w, strict=True):
            ax.add_patch(
                FancyArrowPatch(
                    (ux, uy), (wx, wy), arrowstyle="-|>", mutation_scale=8, color=colour, lw=1
                )
            )
    y, x = node
    ax.add_patch(Rectangle((x - 0.7, y - 0.7), 1.4, 1.4, facecolor="red", zorder=4))
    ax.set_xlim(-1.5, width + 0.5)
    ax.set_ylim(height + 0.5, -1.5)
    ax.set_aspect("equal")
    ax.set_xlabel("x (column)")
    ax.set_ylabel("y (row)")
    ax.legend(loc="upper right", fontsize=8, title="○ uniform → ● walked", title_fontsize=8)
    ax.set_title(title or f"walks Δd of node {node}")
    return ax


# ------------------------------------------------------------------------- eq. 6 - 7
def draw_kernels(
    affinity: Tensor,
    weights: Tensor,
    axes: Sequence[Axes] | None = None,
    node_label: str = "",
) -> Sequence[Axes]:
    """One node's affinities ``k`` and group filters ``g k`` as ``ks x ks`` heat maps.

    Draws ``1 + G`` panels: the normalised affinity A' (eq. 7) then each group's filter
    w_g (eq. 6), laid out as the neighbours sit around the node.
    """
    a = to_numpy(affinity)
    w = to_numpy(weights)
    ks = math.isqrt(a.size)
    groups = w.shape[0]
    if axes is None:
        _, axes = plt.subplots(1, groups + 1, figsize=(2.2 * (groups + 1), 2.4))
    axes = list(np.atleast_1d(axes))
    panels = [("A'", a, "Blues")] + [(f"w, group {g}", w[g], "RdBu_r") for g in range(groups)]
    lim = max(abs(w).max(), 1e-12)
    for ax, (name, values, cmap) in zip(axes, panels, strict=False):
        grid = values.reshape(ks, ks)
        # filters: one symmetric scale shared by the groups (0 = white); A': from 0 to its largest
        vmin, vmax = (-lim, lim) if cmap == "RdBu_r" else (0.0, max(grid.max(), 1e-12))
        im = ax.imshow(grid, cmap=cmap, interpolation="nearest", vmin=vmin, vmax=vmax)
        plt.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        for (r, c), v in np.ndenumerate(grid):
            strong = abs(v) > 0.6 * max(abs(vmin), abs(vmax))  # white text on dark cells
            ax.text(
                c,
                r,
                f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if strong else "black",
            )
        ax.set_xticks(range(ks))
        ax.set_yticks(range(ks))
        ax.set_xlabel("neighbour column")
        ax.set_ylabel("neighbour row")
        ax.set_title(f"{node_label} {name}".strip(), fontsize=9)
    return axes


# ------------------------------------------------------------------------- complexity
def draw_scaling(
    sizes: Sequence[int],
    series: Mapping[str, Sequence[float]],
    ax: Axes | None = None,
    title: str = "",
    ylabel: str = "",
    xlabel: str = "feature-map side H = W",
    logy: bool = True,
    logx: bool = False,
    colours: Mapping[str, str] | None = None,
) -> Axes:
    """One line per series of a quantity (MACs, seconds, bytes) against the map size.

    With ``logx=logy=True`` a cost proportional to N**a is a straight line of slope a.
    ``colours`` maps a series name to its colour (one colour per method across figures);
    series it does not name take the default cycle.
    """
    ax = new_axes(ax, figsize=(6.0, 4.0))
    for q, (name, values) in enumerate(series.items()):
        n = min(len(sizes), len(values))
        ax.plot(
            list(sizes)[:n],
            list(values)[:n],
            marker="o",
            ms=4,
            label=name,
            color=(colours or {}).get(name, RATE_COLOURS[q % len(RATE_COLOURS)]),
        )
    if logy:
        ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def draw_bars(
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    ax: Axes | None = None,
    title: str = "",
    ylabel: str = "",
    fmt: str = "{:.2f}",
) -> Axes:
    """Grouped bars: one group per label, one bar per series (e.g. "paper" vs "ours"),
    each bar annotated with its value formatted by ``fmt``."""
    ax = new_axes(ax, figsize=(7.0, 4.0))
    x = np.arange(len(labels))
    width = 0.8 / max(len(series), 1)
    for q, (name, values) in enumerate(series.items()):
        offset = (q - (len(series) - 1) / 2) * width
        bars = ax.bar(x + offset, list(values), width, label=name, color=RATE_COLOURS[q])
        ax.bar_label(bars, labels=[fmt.format(v) for v in values], fontsize=7, padding=1)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8, rotation=15, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return ax
