"""Where a node's messages come from: the paper's Figure 4, as data and as figures.

DGMN (Zhang et al., CVPR 2020), sec. 3.3-3.4 and Figure 4. For a receiving node i and a
sampling rate rho_q, the K uniform neighbours of eq. (3) are moved by the learned walks
Delta d (eq. 4), read with the bilinear sampler rho (eq. 5), and weighted by the affinity
A' (eq. 7) and the group filters w (eq. 6).

* :mod:`dgmn_ref.figures.walks` takes these intermediates from the layer's own forward into
  a :class:`~dgmn_ref.figures.walks.WalkData` (:func:`extract_walks`,
  :func:`extract_from_model`) and reduces them to maps (:func:`message_sources`,
  :func:`mean_walk_length`); the names are also this module's, for the notebooks.
* :func:`plot_neighbourhood`, :func:`plot_message_sources`, :func:`plot_walk_lengths` and
  :func:`plot_node_views` draw them (matplotlib); :func:`explorer` wraps them in
  ipywidgets and an ipympl canvas (click a pixel) for ``notebooks/08_explore_walks.ipynb``.

Positions are in feature-map pixels, ``p = 0`` the row (y) and ``p = 1`` the column (x), as
in :mod:`dgmn_ref.functional`. On an image of size ``H x W`` a feature pixel ``(y, x)`` of an
``h x w`` map is drawn at the centre of the image block it covers,
``((y + 0.5) H / h - 0.5, (x + 0.5) W / w - 0.5)``.
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from torch import Tensor

from dgmn_ref.figures.common import new_axes, to_numpy
from dgmn_ref.figures.walks import (
    WalkData,
    dgmn_layers,
    extract_from_model,
    extract_walks,
    mean_walk_length,
    message_sources,
)

__all__ = [
    "WalkData",
    "extract_walks",
    "extract_from_model",
    "dgmn_layers",
    "message_sources",
    "mean_walk_length",
    "rate_colours",
    "plot_neighbourhood",
    "plot_message_sources",
    "plot_walk_lengths",
    "plot_node_views",
    "render_png",
    "explorer",
]

# One colour family per sampling rate (Figure 4 uses yellow and blue families); red is
# kept for the receiving node, as in the figure.
RATE_FAMILIES: tuple[str, ...] = ("Blues", "YlOrBr", "Greens", "Purples", "Greys", "PuRd")
NODE_COLOUR = "red"


# -------------------------------------------------------------------------- drawing
def rate_colours(num_rates: int) -> list[dict[str, tuple[float, ...]]]:
    """For each rate index, its colour family: ``light`` (uniform), ``dark`` (walked), ``mid``."""
    colours = []
    for s in range(num_rates):
        cmap = plt.get_cmap(RATE_FAMILIES[s % len(RATE_FAMILIES)])
        colours.append({"light": cmap(0.45), "mid": cmap(0.65), "dark": cmap(0.85)})
    return colours


def _image_coords(data: WalkData, image: np.ndarray | None) -> tuple[float, float]:
    """Image pixels per feature pixel along y and x (1 without an image)."""
    if image is None:
        return 1.0, 1.0
    height, width = data.size
    return image.shape[0] / height, image.shape[1] / width


def _to_image(yx: Tensor, scale: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Feature-pixel positions ``... p`` to image ``(rows, cols)`` arrays (pixel centres)."""
    yx = to_numpy(yx)
    return (yx[..., 0] + 0.5) * scale[0] - 0.5, (yx[..., 1] + 0.5) * scale[1] - 0.5


def _background(ax: Axes, data: WalkData, image: np.ndarray | None, dim: bool = False) -> None:
    height, width = data.size
    scale = _image_coords(data, image)
    if image is not None:
        shown = np.asarray(image, dtype=float)
        if shown.max() > 1.0:
            shown = shown / 255.0
        if dim:  # a pale copy of the image under a heat map
            shown = 0.35 * shown.mean(axis=-1, keepdims=True).repeat(3, -1) + 0.65
        ax.imshow(shown, interpolation="nearest")
    else:
        ax.imshow(np.full((height, width, 3), 0.95), interpolation="nearest")
    ax.set_xlim(-0.5, width * scale[1] - 0.5)
    ax.set_ylim(height * scale[0] - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])


def _mark_node(ax: Axes, node: tuple[int, int], scale: tuple[float, float]) -> None:
    rows, cols = _to_image(torch.tensor(node, dtype=torch.float64), scale)
    ax.scatter(
        [cols],
        [rows],
        s=140,
        c=NODE_COLOUR,
        edgecolors="white",
        linewidths=1.5,
        zorder=5,
        label="receiving node i",
    )


def plot_neighbourhood(
    data: WalkData,
    node: tuple[int, int],
    image: np.ndarray | None = None,
    *,
    batch: int = 0,
    rates: Sequence[int] | None = None,
    show_uniform: bool = True,
    show_walked: bool = True,
    legend: bool = True,
    ax: Axes | None = None,
) -> Figure:
    """Figure 4 for one receiving node: its uniform and walked neighbours at every rate.

    One colour family per rate. Uniform neighbours (eq. 3) are hollow rings in the light
    shade; walked neighbours (eq. 4-5) are filled dots in the dark shade with an arrow from
    the uniform position they walked from; the dot's area is proportional to the affinity
    A' (eq. 7), so the K dots of a rate share a total area. The red dot is the node.
    Neighbours outside the map (the sampler reads zeros there) fall outside the axes.

    Args:
        data: from :func:`extract_walks`.
        node: the receiving node ``(y, x)`` in feature pixels.
        image: ``H W 3`` (uint8 or floats in [0, 1]) drawn underneath, or None.
        batch: which image of the batch.
        rates: the rates to draw (None: all).
        show_uniform, show_walked: draw the uniform / walked positions.

    Returns:
        the figure; its axes hold, per drawn rate, a ``PathCollection`` for the uniform
        rings, one for the walked dots and a ``Quiver`` for the walks.
    """
    y, x = data.check_node(node, batch)
    ax = new_axes(ax, (6, 3.6), layout="constrained")
    scale = _image_coords(data, image)
    _background(ax, data, image)
    colours = rate_colours(len(data.rates))
    k = data.uniform.shape[1]
    for s in data.rate_indices(rates):
        rate, colour = data.rates[s], colours[s]
        u_rows, u_cols = _to_image(data.uniform[s, :, :, y, x], scale)
        w_rows, w_cols = _to_image(data.walked[s, batch, :, :, y, x], scale)
        if show_uniform:
            ax.scatter(
                u_cols,
                u_rows,
                s=80,
                facecolors="none",
                edgecolors=[colour["light"]],
                linewidths=1.8,
                zorder=4.5,  # above the walked dots, which sit on them while walks are short
                label=f"rate {rate}: uniform",
            )
        if show_walked:
            affinity = data.affinity[s, batch, :, y, x].double().cpu().numpy()
            ax.quiver(
                u_cols,
                u_rows,
                w_cols - u_cols,
                w_rows - u_rows,
                color=[colour["mid"]],
                angles="xy",
                scale_units="xy",
                scale=1,
                width=0.004,
                minlength=0,
                zorder=3,
            )
            ax.scatter(
                w_cols,
                w_rows,
                s=25 + 60 * k * affinity,
                c=[colour["dark"]],
                alpha=0.9,
                edgecolors="white",
                linewidths=0.6,
                zorder=4,
                label=f"rate {rate}: walked",
            )
    _mark_node(ax, (y, x), scale)
    ax.set_title(f"neighbours of node (y={y}, x={x})", fontsize=10)
    if legend:
        shown = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        for handle in shown.legend_handles:  # one marker size in the legend, not an affinity
            if hasattr(handle, "set_sizes"):
                handle.set_sizes([50])
    return ax.figure


def plot_message_sources(
    data: WalkData,
    node: tuple[int, int],
    image: np.ndarray | None = None,
    *,
    batch: int = 0,
    rates: Sequence[int] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Heat map of :func:`message_sources`: where node i's message is read from.

    Diverging colours centred at zero (filters may be negative), over a pale copy of the
    image; the red dot is the node. The weights are those of eq. (5) *before* the fusion of
    the rates (see :func:`message_sources`).

    Returns:
        the figure; its axes hold the pale image and the heat map (two ``AxesImage``), the
        node marker, and a colour bar.
    """
    y, x = data.check_node(node, batch)
    ax = new_axes(ax, (6, 3.6), layout="constrained")
    scale = _image_coords(data, image)
    _background(ax, data, image, dim=True)
    heat = message_sources(data, (y, x), batch, rates).double().cpu().numpy()
    height, width = data.size
    bound = max(float(np.abs(heat).max()), 1e-12)
    shown = np.ma.masked_where(heat == 0, heat)
    mappable = ax.imshow(
        shown,
        cmap="PuOr_r",
        norm=TwoSlopeNorm(0.0, -bound, bound),
        alpha=0.9,
        extent=(-0.5, width * scale[1] - 0.5, height * scale[0] - 0.5, -0.5),
        interpolation="nearest",
    )
    _mark_node(ax, (y, x), scale)
    ax.figure.colorbar(mappable, ax=ax, shrink=0.8, label="A' x mean_g w (before fusion)")
    ax.set_title(f"where node (y={y}, x={x}) reads its message", fontsize=10)
    return ax.figure


def plot_walk_lengths(
    data: WalkData,
    image: np.ndarray | None = None,
    *,
    batch: int = 0,
    rates: Sequence[int] | None = None,
    node: tuple[int, int] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Summary over all nodes: :func:`mean_walk_length` per pixel, over a pale image.

    Returns:
        the figure; its axes hold the pale image, the map (two ``AxesImage``) and a colour
        bar (and the node marker when ``node`` is given).
    """
    ax = new_axes(ax, (6, 3.6), layout="constrained")
    scale = _image_coords(data, image)
    _background(ax, data, image, dim=True)
    lengths = mean_walk_length(data, batch, rates).double().cpu().numpy()
    height, width = data.size
    mappable = ax.imshow(
        lengths,
        cmap="magma",
        alpha=0.8,
        vmin=0.0,
        interpolation="nearest",
        extent=(-0.5, width * scale[1] - 0.5, height * scale[0] - 0.5, -0.5),
    )
    if node is not None:
        _mark_node(ax, data.check_node(node, batch), scale)
    ax.figure.colorbar(mappable, ax=ax, shrink=0.8, label="mean |walk| (feature px)")
    ax.set_title("mean walk length of every node", fontsize=10)
    return ax.figure


def plot_node_views(
    data: WalkData,
    node: tuple[int, int],
    image: np.ndarray | None = None,
    *,
    batch: int = 0,
    rates: Sequence[int] | None = None,
    show_uniform: bool = True,
    show_walked: bool = True,
    title: str | None = None,
    fig: Figure | None = None,
) -> Figure:
    """The three views side by side: neighbours, message sources, walk lengths.

    ``fig``: an empty figure to draw into (default: a new pyplot figure, 15 x 3.6 in).
    """
    if fig is None:
        fig = plt.figure(figsize=(15, 3.6), layout="constrained")
    axes = fig.subplots(1, 3, width_ratios=(1.35, 1, 1))
    plot_neighbourhood(
        data,
        node,
        image,
        batch=batch,
        rates=rates,
        show_uniform=show_uniform,
        show_walked=show_walked,
        ax=axes[0],
    )
    plot_message_sources(data, node, image, batch=batch, rates=rates, ax=axes[1])
    plot_walk_lengths(data, image, batch=batch, rates=rates, node=node, ax=axes[2])
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def render_png(fig: Figure, dpi: int = 72) -> bytes:
    """The figure as PNG bytes; the figure is closed (so no backend shows it again)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


# The kernel may run widget callbacks concurrently (ipykernel 7); one redraw at a time.
_REDRAW = threading.Lock()


def _image_box(ax: Axes) -> tuple[float, float, float, float]:
    """Where ``ax`` (drawn, so its aspect is applied) sits in its figure: ``(left, top,
    right, bottom)`` as fractions of the figure's width and height, from the top left."""
    fig = ax.figure
    box = ax.get_window_extent()
    width, height = fig.bbox.width, fig.bbox.height
    return (box.x0 / width, 1 - box.y1 / height, box.x1 / width, 1 - box.y0 / height)


def explorer(
    layers: Mapping[str, WalkData],
    images: np.ndarray | Sequence[np.ndarray],
    node: tuple[int, int] | None = None,
    click: bool | None = None,
):
    """An ipywidgets explorer over :func:`plot_node_views`: click a pixel to choose the node.

    With ipympl (``click``, the default when it is installed) the figure is a live matplotlib
    canvas: a click on any of the three pictures selects the feature-map node under the
    pointer. Sliders pick the image and the receiving node (row y, column x in feature
    pixels) and follow the click, so the keyboard works too; a multiple selection toggles the
    rates; two check boxes toggle the uniform and the walked positions; a drop-down switches
    between the model's DGMN layers. Without ipympl (``click=False``) every change replaces a
    PNG in an ``Output`` in one assignment.

    Args:
        layers: ``{name: WalkData}`` from :func:`extract_from_model` (same batch of images).
        images: ``b H W 3``, the images the data was extracted from.
        node: the initial receiving node (default: the centre).
        click: use an ipympl canvas (None: when ipympl can be imported).

    Returns:
        an ``ipywidgets.VBox`` with CSS class ``dgmn-explorer``: ``children[0]`` the
        controls (a VBox), ``children[1]`` the figure (an ipympl ``Canvas``, or an ``Output``
        holding one PNG), ``children[2]`` the status line (an ``HTML`` whose ``<span>`` has
        ``data-node="y,x"``, ``data-size="h,w"`` and ``data-image-box``, where the
        neighbours picture sits in the figure as ``left,top,right,bottom`` fractions).
    """
    import ipywidgets as widgets  # optional dependency (the "notebooks" extra)

    if not layers:
        raise ValueError("layers: expected at least one WalkData")
    if click is None:
        try:
            import ipympl  # noqa: F401
        except ImportError:
            click = False
        else:
            click = True
    names = list(layers)
    first = layers[names[0]]
    height, width = first.size
    y0, x0 = node if node is not None else (height // 2, width // 2)
    all_rates = sorted({rate for data in layers.values() for rate in data.rates})
    layout = widgets.Layout(width="420px")
    style = {"description_width": "110px"}

    def slider(value: int, top: int, description: str):
        # Redraw when the handle is released (or per arrow key), not for every pixel dragged.
        return widgets.IntSlider(
            value,
            0,
            top,
            description=description,
            continuous_update=False,
            layout=layout,
            style=style,
        )

    controls = {
        "layer": widgets.Dropdown(
            options=names,
            value=names[0],
            description="layer",
            disabled=len(names) == 1,
            layout=layout,
            style=style,
        ),
        "image": slider(0, first.batch - 1, "image"),
        "y": slider(y0, height - 1, "node row y"),
        "x": slider(x0, width - 1, "node column x"),
        "rates": widgets.SelectMultiple(
            options=all_rates,
            value=tuple(all_rates),
            description="rates",
            rows=len(all_rates),
            layout=layout,
            style=style,
        ),
        "uniform": widgets.Checkbox(True, description="uniform positions", style=style),
        "walked": widgets.Checkbox(True, description="learned (walked) positions", style=style),
    }
    status = widgets.HTML()
    # A Figure outside pyplot: no global state shared with other callbacks or cells.
    fig = Figure(figsize=(13, 3.8), dpi=100, layout="constrained")
    if click:
        from ipympl.backend_nbagg import Canvas, FigureManager

        picture = Canvas(fig)
        FigureManager(picture, 0)  # gives the canvas the manager that sends its images
        picture.header_visible = False
        picture.toolbar_visible = False  # no pan/zoom mode that would take the clicks
        picture.resizable = False
        picture.capture_scroll = False
    else:
        picture = widgets.Output()
    holding = [False]  # True while a click moves both sliders: redraw once, afterwards

    def redraw(change=None) -> None:
        if holding[0]:
            return
        with _REDRAW:
            draw()

    def current() -> tuple[WalkData, tuple[int, int]]:
        data = layers[controls["layer"].value]
        h, w = data.size
        return data, (min(controls["y"].value, h - 1), min(controls["x"].value, w - 1))

    def draw() -> None:
        value = {name: control.value for name, control in controls.items()}
        data, chosen_node = current()
        chosen = [rate for rate in value["rates"] if rate in data.rates] or None
        image = value["image"]
        title = f"layer {value['layer'] or '(model)'}, image {image}"
        fig.clear()
        plot_node_views(
            data,
            chosen_node,
            images[image],
            batch=image,
            rates=chosen,
            show_uniform=value["uniform"],
            show_walked=value["walked"],
            title=title,
            fig=fig,
        )
        if click:
            # Lay out (constrained layout, aspect) for the status line's image box, and ask
            # the front end to fetch a new image. No draw() here: before the canvas is shown,
            # ipympl would store that image in a form its front end cannot load.
            fig.draw_without_rendering()
            picture.draw_idle()
        else:
            png = base64.b64encode(render_png(fig)).decode("ascii")
            # One assignment replaces the shown figure: no clear_output / display pair that
            # two quick changes could interleave (stacking figures), no Image-widget swap.
            picture.outputs = (
                {
                    "output_type": "display_data",
                    "data": {"image/png": png, "text/plain": f"<Figure: {title}>"},
                    "metadata": {},
                },
            )
        box = ",".join(f"{v:.5f}" for v in _image_box(fig.axes[0]))
        y, x = chosen_node
        h, w = data.size
        hint = "click a picture to choose another node" if click else "use the sliders"
        status.value = (
            f'<span class="dgmn-node" data-node="{y},{x}" data-size="{h},{w}" '
            f'data-image-box="{box}">receiving node (y={y}, x={x}); {hint}</span>'
        )

    def on_click(event) -> None:
        """A click on a picture: the node under it, through the sliders (one redraw)."""
        if event.inaxes not in fig.axes[:3] or event.xdata is None:
            return
        data, _ = current()
        h, w = data.size
        image = np.asarray(images[controls["image"].value])
        y = int(np.clip((event.ydata + 0.5) * h / image.shape[0], 0, h - 1))
        x = int(np.clip((event.xdata + 0.5) * w / image.shape[1], 0, w - 1))
        holding[0] = True
        try:
            controls["y"].value, controls["x"].value = y, x
        finally:
            holding[0] = False
        redraw()

    for control in controls.values():
        control.observe(redraw, names="value")
    if click:
        picture.mpl_connect("button_press_event", on_click)
    redraw()
    box = widgets.VBox([widgets.VBox(list(controls.values())), picture, status])
    box.add_class("dgmn-explorer")
    return box
