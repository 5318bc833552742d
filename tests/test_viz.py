"""Tests of dgmn_ref.figures.viz: the extraction is the layer's own forward, the maps match slow
references, and the plot functions draw the artists they promise."""

from __future__ import annotations

import base64
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from einops import rearrange, repeat  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402
from matplotlib.quiver import Quiver  # noqa: E402
from torch import nn  # noqa: E402

from dgmn_ref import functional  # noqa: E402
from dgmn_ref.figures import explore, viz  # noqa: E402
from dgmn_ref.layer import DGMN  # noqa: E402


def trained_like(layer: DGMN, seed: int = 0) -> DGMN:
    """Perturb the zero-initialised walk predictors so that walks are non-trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for dmc in layer.rate_messages:
            for conv in (dmc.walk_conv, dmc.predictor):
                if conv is not None:
                    conv.weight.copy_(0.2 * torch.randn(conv.weight.shape, generator=generator))
    return layer.eval()


def make_layer(rates=(1, 3), groups=2, channels=8, **kwargs) -> DGMN:
    torch.manual_seed(0)
    return trained_like(DGMN(channels, rates=rates, groups=groups, **kwargs).double())


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def grid_sample_message(f, walked, affinity, weights):
    """Independent eq. (5): torch's grid_sample at the walked positions (one rate)."""
    b, c, height, width = f.shape
    k, groups = walked.shape[1], weights.shape[1]
    y, x = walked.unbind(dim=2)  # b k h w
    grid = torch.stack([2 * x / (width - 1) - 1, 2 * y / (height - 1) - 1], dim=-1)
    grid = rearrange(grid, "b k h w t -> b (k h) w t")
    samples = F.grid_sample(f, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    samples = rearrange(samples, "b (g c) (k h) w -> b g c k h w", g=groups, k=k)
    return rearrange(
        torch.einsum("bkhw,bgkhw,bgckhw->bgchw", affinity, weights, samples),
        "b g c h w -> b (g c) h w",
    )


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize(
    "rates, groups, kwargs",
    [
        ((1,), 1, {}),
        ((1, 3), 2, {}),
        ((2, 1, 4), 4, {}),
        ((1, 2), 0, {"dynamic_weights": False}),
        ((1, 2), 2, {"dynamic_sampling": False}),
    ],
)
def test_extraction_is_the_layers_forward(batch, rates, groups, kwargs):
    layer = make_layer(rates, groups, **kwargs)
    f = torch.randn(batch, 8, 5, 7, dtype=torch.float64)
    data = viz.extract_walks(layer, f)
    output, states = layer.forward_with_states(f)
    s, k = len(rates), 9
    assert data.rates == rates and data.kernel_size == 3
    assert data.uniform.shape == (s, k, 2, 5, 7)
    assert data.walked.shape == (s, batch, k, 2, 5, 7)
    assert data.affinity.shape == (s, batch, k, 5, 7)
    assert data.weights.shape[:3] == (s, batch, max(groups, 1))
    torch.testing.assert_close(data.output, output, rtol=0, atol=0)
    torch.testing.assert_close(data.output, layer(f), rtol=0, atol=0)
    for q, state in enumerate(states):
        uniform = functional.uniform_positions(5, 7, state.rate, 3, dtype=torch.float64)
        torch.testing.assert_close(data.uniform[q], uniform, rtol=0, atol=0)
        torch.testing.assert_close(data.walked[q], uniform + state.walks, rtol=0, atol=0)
        torch.testing.assert_close(data.walks[q], state.walks, rtol=0, atol=1e-12)
        torch.testing.assert_close(data.affinity[q], state.affinity, rtol=0, atol=0)
        torch.testing.assert_close(data.weights[q], state.weights, rtol=0, atol=0)
        # The positions, affinities and filters are exactly what built the layer's message.
        message = grid_sample_message(f, data.walked[q], data.affinity[q], data.weights[q])
        torch.testing.assert_close(message, state.message, rtol=1e-9, atol=1e-9)
    if kwargs.get("dynamic_sampling", True):
        assert data.walks.abs().max() > 1e-3, "the perturbed layer should walk"
    else:
        assert data.walks.abs().max() == 0


def test_fresh_layer_samples_uniformly():
    data = viz.extract_walks(DGMN(4, rates=(1, 2), groups=2), torch.randn(1, 4, 6, 6))
    assert viz.mean_walk_length(data).abs().max() == 0
    torch.testing.assert_close(data.walked[:, 0], data.uniform)


@pytest.mark.parametrize("node", [(0, 0), (2, 3), (4, 6)])
@pytest.mark.parametrize("rates", [None, (3,)])
def test_message_sources_is_the_messages_gradient(node, rates):
    """Eq. (5) is linear in the features: the heat map is d mean_c(m_i) / d v for an input
    v repeated over channels, with the walks, affinities and filters held fixed."""
    layer = make_layer((1, 3), 2)
    f = torch.randn(2, 8, 5, 7, dtype=torch.float64)
    data = viz.extract_walks(layer, f)
    v = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    h = repeat(v, "h w -> b c h w", b=2, c=8)
    total = 0
    for q in data.rate_indices(rates):
        m = functional.dynamic_message(
            h, data.walks[q], data.affinity[q], data.weights[q], data.rates[q]
        )
        total = total + m[1, :, node[0], node[1]].mean()
    (expected,) = torch.autograd.grad(total, v)
    heat = viz.message_sources(data, node, batch=1, rates=rates)
    torch.testing.assert_close(heat, expected, rtol=1e-10, atol=1e-12)


def test_message_sources_loop_reference():
    data = viz.extract_walks(make_layer((1, 2), 2), torch.randn(1, 8, 6, 5, dtype=torch.float64))
    y, x = 3, 2
    expected = np.zeros((6, 5))
    for s in range(2):
        for k in range(9):
            py, px = data.walked[s, 0, k, :, y, x].tolist()
            weight = float(data.affinity[s, 0, k, y, x] * data.weights[s, 0, :, k, y, x].mean())
            y0, x0 = int(np.floor(py)), int(np.floor(px))
            for r, c in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                if 0 <= r < 6 and 0 <= c < 5:
                    expected[r, c] += weight * (1 - abs(py - r)) * (1 - abs(px - c))
    np.testing.assert_allclose(viz.message_sources(data, (y, x)).numpy(), expected, atol=1e-12)


def test_mean_walk_length_loop_reference():
    data = viz.extract_walks(make_layer((1, 2, 4), 2), torch.randn(2, 8, 4, 5, dtype=torch.float64))
    walks = data.walks.numpy()
    expected = np.zeros((4, 5))
    for yy in range(4):
        for xx in range(5):
            expected[yy, xx] = np.mean(
                [np.hypot(*walks[s, 1, k, :, yy, xx]) for s in (0, 2) for k in range(9)]
            )
    np.testing.assert_allclose(viz.mean_walk_length(data, 1, rates=(4, 1)), expected)


def test_errors_name_the_argument():
    data = viz.extract_walks(make_layer(), torch.randn(1, 8, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="node"):
        viz.message_sources(data, (4, 0))
    with pytest.raises(ValueError, match="rates"):
        viz.mean_walk_length(data, rates=(7,))
    with pytest.raises(ValueError, match="batch"):
        viz.plot_neighbourhood(data, (0, 0), batch=1)
    with pytest.raises(ValueError, match="layer"):
        viz.extract_walks(nn.Conv2d(8, 8, 1), torch.randn(1, 8, 4, 4))


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.context = nn.Sequential(DGMN(8, rates=(1, 2), groups=2), DGMN(8, rates=(1,)))
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.context(self.stem(x)))


def test_extract_from_model_hooks_every_layer():
    torch.manual_seed(0)
    model = TwoLayers()
    for layer in viz.dgmn_layers(model).values():
        trained_like(layer)
    model.train()
    images = torch.rand(2, 3, 12, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    found = viz.extract_from_model(model, images)
    assert list(found) == ["context.0", "context.1"]
    assert model.training, "the model's mode is restored"
    for key, value in model.state_dict().items():  # eval mode: BatchNorm statistics untouched
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)
    model.eval()
    f0 = model.stem(images)
    direct = viz.extract_walks(model.context[0], f0)
    torch.testing.assert_close(found["context.0"].walked, direct.walked, rtol=0, atol=0)
    direct = viz.extract_walks(model.context[1], direct.output)
    torch.testing.assert_close(found["context.1"].affinity, direct.affinity, rtol=0, atol=0)
    with pytest.raises(ValueError, match="DGMN"):
        viz.extract_from_model(nn.Conv2d(3, 3, 1), images)


def artists(ax, kind):
    return [a for a in ax.get_children() if isinstance(a, kind)]


@pytest.mark.parametrize("with_image", [False, True])
def test_plot_neighbourhood_artists(with_image):
    data = viz.extract_walks(make_layer((1, 3)), torch.randn(1, 8, 6, 9, dtype=torch.float64))
    image = np.random.default_rng(0).uniform(size=(48, 72, 3)) if with_image else None
    fig = viz.plot_neighbourhood(data, (3, 4), image)
    (ax,) = fig.axes
    # per rate: uniform rings + walked dots, one quiver; plus the node marker.
    assert len(artists(ax, PathCollection)) == 2 * 2 + 1
    assert len(artists(ax, Quiver)) == 2
    assert len(artists(ax, AxesImage)) == 1
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [
        "rate 1: uniform",
        "rate 1: walked",
        "rate 3: uniform",
        "rate 3: walked",
        "receiving node i",
    ]
    walked = artists(ax, PathCollection)[1]
    affinity = data.affinity[0, 0, :, 3, 4].numpy()
    assert np.argmax(walked.get_sizes()) == np.argmax(affinity), "size follows affinity"
    scale = 8 if with_image else 1
    node = artists(ax, PathCollection)[-1].get_offsets()[0]
    np.testing.assert_allclose(node, [(4 + 0.5) * scale - 0.5, (3 + 0.5) * scale - 0.5])

    fig = viz.plot_neighbourhood(data, (3, 4), image, rates=(3,), show_uniform=False)
    ax = fig.axes[0]
    assert len(artists(ax, PathCollection)) == 1 + 1
    assert len(artists(ax, Quiver)) == 1
    fig = viz.plot_neighbourhood(data, (3, 4), image, show_walked=False)
    assert len(artists(fig.axes[0], Quiver)) == 0


def test_plot_maps_and_views():
    data = viz.extract_walks(make_layer((1, 2)), torch.randn(2, 8, 6, 9, dtype=torch.float64))
    image = (np.random.default_rng(0).uniform(size=(24, 36, 3)) * 255).astype(np.uint8)
    fig = viz.plot_message_sources(data, (2, 2), image, batch=1)
    ax, colorbar = fig.axes
    heat = artists(ax, AxesImage)[1].get_array()
    expected = viz.message_sources(data, (2, 2), batch=1).numpy()
    np.testing.assert_allclose(heat.filled(0), expected)
    assert "before fusion" in colorbar.get_ylabel()

    fig = viz.plot_walk_lengths(data, image, node=(1, 1))
    ax = fig.axes[0]
    np.testing.assert_allclose(artists(ax, AxesImage)[1].get_array(), viz.mean_walk_length(data))
    assert len(artists(ax, PathCollection)) == 1

    fig = viz.plot_node_views(data, (2, 2), image, title="t")
    assert len(fig.axes) == 3 + 2  # three panels and two colour bars
    assert fig.get_suptitle() == "t"


def test_explorer_widget():
    widgets = pytest.importorskip("ipywidgets")
    data = viz.extract_walks(make_layer((1, 2)), torch.randn(2, 8, 6, 9, dtype=torch.float64))
    images = np.random.default_rng(0).uniform(size=(2, 24, 36, 3))
    ui = viz.explorer({"a": data, "b": data}, images, click=False)  # the PNG fallback
    assert isinstance(ui, widgets.VBox) and "dgmn-explorer" in ui._dom_classes
    panel, picture, status = ui.children
    controls = {child.description: child for child in panel.children}
    assert set(controls) >= {"layer", "image", "node row y", "node column x", "rates"}
    assert controls["node row y"].max == 5 and controls["node column x"].max == 8

    def shown():
        (output,) = picture.outputs
        return base64.b64decode(output["data"]["image/png"])

    assert shown()[:8] == b"\x89PNG\r\n\x1a\n"
    for description, value in [
        ("node row y", 1),
        ("rates", (2,)),
        ("layer", "b"),
        ("uniform positions", False),
        ("image", 1),
    ]:
        before = shown()
        controls[description].value = value
        assert shown() != before, f"changing {description!r} did not redraw"
    assert not plt.get_fignums(), "the explorer must close the figures it renders"


def rendered(fig) -> np.ndarray:
    """The figure as it would be drawn now, ``H W 4`` ints."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return np.asarray(Image.open(buffer)).astype(int)


def status_node(status) -> tuple[int, int]:
    y, x = re.search(r'data-node="(\d+),(\d+)"', status.value).groups()
    return int(y), int(x)


@pytest.mark.parametrize("view", [0, 1, 2])
def test_explorer_click_selects_the_node_under_the_pointer(view):
    """ipympl: a click on any of the three pictures picks the node under it; the sliders
    follow and the figure is redrawn."""
    pytest.importorskip("ipympl")
    from matplotlib.backend_bases import MouseEvent

    data = viz.extract_walks(make_layer((1, 2)), torch.randn(2, 8, 6, 9, dtype=torch.float64))
    images = np.random.default_rng(0).uniform(size=(2, 24, 36, 3))  # 4 image px per node
    ui = viz.explorer({"a": data}, images, node=(0, 0))
    panel, canvas, status = ui.children
    controls = {child.description: child for child in panel.children}
    assert status_node(status) == (0, 0)
    before = rendered(canvas.figure)
    for (row, col), node in [((13.0, 30.0), (3, 7)), ((2.0, 1.0), (0, 0)), ((23.4, 4.2), (5, 1))]:
        ax = canvas.figure.axes[view]  # each redraw makes new axes
        x, y = ax.transData.transform((col, row))
        canvas.callbacks.process(
            "button_press_event", MouseEvent("button_press_event", canvas, x, y, 1)
        )
        assert status_node(status) == node, f"click at image pixel {(row, col)} on view {view}"
        assert (controls["node row y"].value, controls["node column x"].value) == node
    after = rendered(canvas.figure)
    assert (np.abs(after.astype(int) - before).max(-1) > 16).mean() > 0.002
    # Outside the pictures (the colour bars, the margin) nothing changes.
    canvas.callbacks.process(
        "button_press_event", MouseEvent("button_press_event", canvas, 1, 1, 1)
    )
    assert status_node(status) == (5, 1)
    # The sliders stay a keyboard fallback: moving one moves the node.
    controls["node column x"].value = 2
    assert status_node(status) == (5, 2)
    box = [
        float(v) for v in re.search(r'data-image-box="([^"]+)"', status.value).group(1).split(",")
    ]
    assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1


def test_notebook_08_committed_with_its_static_views():
    """nbval only runs cells saved without outputs, so check the outputs were committed: the
    static views must read on GitHub without a kernel."""
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "notebooks" / "08_explore_walks.ipynb"
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    # The parameters cell (any run, any images) comes first, then the imports; both print nothing.
    assert "parameters" in cells[0]["metadata"].get("tags", [])
    assert {"CHECKPOINT =", "IMAGES =", "LAYER ="} <= set(
        line.split(" = ")[0] + " =" for line in cells[0]["source"] if " = " in line
    )
    assert "explore.GALLERY_DPI" in "".join(cells[1]["source"]) and explore.GALLERY_DPI >= 110
    assert all(c["outputs"] for c in cells[2:]), f"{path.name}: re-execute it (make notebooks)"
    images = sum("image/png" in o.get("data", {}) for c in cells for o in c["outputs"])
    assert images >= 4, f"{path.name}: expected the static figures, found {images} images"
    explorer = [c for c in cells if "viz.explorer(" in "".join(c["source"])]
    assert explorer and "".join(explorer[0]["source"]).startswith("# NBVAL_IGNORE_OUTPUT")
