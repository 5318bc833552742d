"""The walk explorer as one self-contained HTML page: Figure 4 for every node, no Python needed.

DGMN (Zhang et al., CVPR 2020), sec. 3.3-3.4 and Figure 4. ``dgmn-ref explore-export RUN``
takes what :func:`dgmn_ref.figures.walks.extract_from_model` extracts from the layer's own forward,
for every node of every frame, and writes it into one HTML file together with a small
plain-JavaScript viewer (canvas, no CDN, no network):

* per rate and neighbour j of node i: the uniform position (eq. 3), the walked position
  p + Delta d (eq. 4), the affinity A' (eq. 7) and the norm of the filter w over the G
  groups (eq. 6);
* per rate and node: the message-source map of :func:`dgmn_ref.figures.walks.message_sources` (eq. 5
  before fusion), stored sparse (at most 4K bilinear corners are non-zero), and the mean
  walk length of :func:`dgmn_ref.figures.walks.mean_walk_length`.

Arrays are quantised (positions int16, affinities/filter norms/lengths uint8, source weights
int8 with one scale per node) and base64-encoded inside one JSON block; the viewer sums the
chosen rates' maps, which is exact because eq. (5) sums over the rates. The colours are the
notebook's (:func:`dgmn_ref.figures.viz.rate_colours`, ``PuOr_r`` and ``magma``).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange

from dgmn_ref.figures import viz, walks
from dgmn_ref.figures.walks import WalkData

__all__ = ["explorer_payload", "explorer_html", "export_explorer"]

TEMPLATE = "explorer_template.html"  # the viewer: HTML, CSS and plain JavaScript
_LIMITS = {"int8": 127, "int16": 32767, "uint8": 255}  # largest |q| of each quantised type


def _pack(values: np.ndarray, dtype: str) -> dict[str, Any]:
    """Quantise ``values`` to ``dtype`` with one scale (``x ~ q * scale``), base64 inside."""
    values = np.asarray(values, dtype=np.float64)
    bound = float(np.abs(values).max()) if values.size else 0.0
    scale = bound / _LIMITS[dtype] if bound > 0 else 1.0
    quantised = np.rint(values / scale).astype(np.dtype(dtype).newbyteorder("<"))
    return {
        "dtype": dtype,
        "shape": list(values.shape),
        "scale": scale,
        "data": base64.b64encode(quantised.tobytes()).decode("ascii"),
    }


def _pack_raw(values: np.ndarray, dtype: str) -> dict[str, Any]:
    """Integers stored as they are (indices)."""
    stored = np.asarray(values).astype(np.dtype(dtype).newbyteorder("<"))
    return {
        "dtype": dtype,
        "shape": list(stored.shape),
        "scale": 1.0,
        "data": base64.b64encode(stored.tobytes()).decode("ascii"),
    }


def _png(picture: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _pale(picture: np.ndarray) -> np.ndarray:
    """The pale grey copy drawn under heat maps (as :func:`dgmn_ref.figures.viz._background`)."""
    grey = 0.35 * picture.astype(np.float64).mean(axis=-1, keepdims=True) / 255 + 0.65
    return (grey.repeat(3, -1) * 255).round().astype(np.uint8)


def _hex(rgba: Sequence[float]) -> str:
    from matplotlib.colors import to_hex

    return to_hex(rgba)


def _lut(name: str, low: float = 0.0, high: float = 1.0, n: int = 256) -> list[str]:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap(name)
    return [_hex(cmap(v)) for v in np.linspace(low, high, n)]


def _sources(data: WalkData) -> tuple[np.ndarray, np.ndarray]:
    """Sparse :func:`~dgmn_ref.figures.walks.message_sources` per rate: indices, weights.

    Both ``s b h w m``, ``m = 4 K`` slots (a walked neighbour spreads over at most 4 bilinear
    corners); unused slots hold weight 0.
    """
    height, width = data.size
    slots = 4 * data.uniform.shape[1]
    index = np.zeros((len(data.rates), data.batch, height, width, slots), dtype=np.int64)
    weight = np.zeros(index.shape, dtype=np.float64)
    for s, rate in enumerate(data.rates):
        for b in range(data.batch):
            for y in range(height):
                for x in range(width):
                    heat = walks.message_sources(data, (y, x), b, [rate]).flatten()
                    (nonzero,) = torch.nonzero(heat, as_tuple=True)
                    index[s, b, y, x, : len(nonzero)] = nonzero.numpy()
                    weight[s, b, y, x, : len(nonzero)] = heat[nonzero].double().numpy()
    return index, weight


def _layer_payload(name: str, data: WalkData) -> dict[str, Any]:
    height, width = data.size
    index, weight = _sources(data)
    # One int8 scale per (image, node): the viewer adds the chosen rates' maps of a node.
    bound = rearrange(np.abs(weight).max(axis=(0, 4)), "b h w -> 1 b h w 1")
    node_scale = np.where(bound > 0, bound / 127, 1.0)
    lengths = torch.stack(
        [
            torch.stack([walks.mean_walk_length(data, b, [rate]) for b in range(data.batch)])
            for rate in data.rates
        ]
    )  # s b h w
    filter_norm = data.weights.double().norm(dim=2)  # s b k h w, over the G groups
    return {
        "name": name or "(model)",
        "size": [height, width],
        "rates": list(data.rates),
        "kernel_size": data.kernel_size,
        "colours": [
            {**{shade: _hex(c) for shade, c in family.items()}, "lut": _lut(cmap, 0.3, 1.0, 64)}
            for family, cmap in zip(
                viz.rate_colours(len(data.rates)),
                [viz.RATE_FAMILIES[s % len(viz.RATE_FAMILIES)] for s in range(len(data.rates))],
                strict=True,
            )
        ],
        "arrays": {
            "uniform": _pack(data.uniform.double().numpy(), "int16"),  # s k p h w
            "walked": _pack(data.walked.double().numpy(), "int16"),  # s b k p h w
            "affinity": _pack(data.affinity.double().numpy(), "uint8"),  # s b k h w
            "filter_norm": _pack(filter_norm.numpy(), "uint8"),  # s b k h w
            "walk_length": _pack(lengths.double().numpy(), "uint8"),  # s b h w
            "source_index": _pack_raw(index, "uint16" if height * width < 65536 else "uint32"),
            "source_weight": {
                **_pack_raw(np.rint(weight / node_scale), "int8"),
                "node_scale": _pack_raw(node_scale[0, :, :, :, 0], "float32"),  # b h w
            },
        },
    }


def explorer_payload(
    layers: Mapping[str, WalkData],
    pictures: np.ndarray,
    names: Sequence[str] | None = None,
    title: str = "DGMN walk explorer",
) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data.

    Args:
        layers: ``{name: WalkData}`` from :func:`dgmn_ref.figures.walks.extract_from_model`.
        pictures: the frames the data came from, ``b H W 3`` uint8.
        names: one caption per frame.
    """
    if not layers:
        raise ValueError("layers: expected at least one WalkData")
    pictures = np.asarray(pictures)
    if pictures.dtype != np.uint8 or pictures.ndim != 4 or pictures.shape[-1] != 3:
        raise ValueError(f"pictures: expected b H W 3 uint8, got {pictures.dtype} {pictures.shape}")
    for name, data in layers.items():
        if data.batch != len(pictures):
            raise ValueError(
                f"layers[{name!r}]: {data.batch} images but {len(pictures)} pictures were given"
            )
    names = list(names) if names is not None else [f"image {i}" for i in range(len(pictures))]
    return {
        "title": title,
        "image_size": list(pictures.shape[1:3]),
        "frames": [
            {"name": name, "png": _png(picture), "pale": _png(_pale(picture))}
            for name, picture in zip(names, pictures, strict=True)
        ],
        "layers": [_layer_payload(name, data) for name, data in layers.items()],
        "node_colour": viz.NODE_COLOUR,
        "source_lut": _lut("PuOr_r"),
        "length_lut": _lut("magma"),
    }


def explorer_html(payload: Mapping[str, Any]) -> str:
    """The page: ``explorer_template.html`` (beside this module), the payload inlined as JSON."""
    # "</" would end the <script> element early; "<\/" is the same JSON string.
    blob = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")
    template = resources.files("dgmn_ref.figures").joinpath(TEMPLATE).read_text(encoding="utf-8")
    return template.replace("__TITLE__", str(payload["title"])).replace("__DATA__", blob)


def export_explorer(
    checkpoint: str | Path,
    images: Sequence[str | int] | None = None,
    out: str | Path = "explorer.html",
    layer: str | None = None,
) -> Path:
    """Load a run, extract its walks on ``images`` and write the page to ``out``.

    Args:
        checkpoint: a run folder or its ``checkpoint.pt`` (must hold a DGMN layer).
        images: validation frame indices or PNG/JPEG files (see
            :func:`dgmn_ref.figures.explore.load_frames`); default frames 0-3.
        layer: the DGMN layer to export (default: all of them).
    """
    from dgmn_ref.figures.explore import load_frames, load_model

    model, cfg = load_model(checkpoint)
    frames = load_frames(cfg, images)
    layers = walks.extract_from_model(model, frames.images)
    if layer is not None:
        if layer not in layers:
            raise ValueError(f"layer: {layer!r} is not a DGMN layer of {checkpoint} {list(layers)}")
        layers = {layer: layers[layer]}
    title = f"DGMN walk explorer: {Path(checkpoint).name}"
    page = explorer_html(explorer_payload(layers, frames.pictures, frames.names, title))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
