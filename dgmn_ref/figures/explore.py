"""Explore any run's learned walks: load a DGMN checkpoint and frames, and count where walks go.

DGMN (Zhang et al., CVPR 2020), sec. 3.3-3.4 and Figure 4. The explorer of
``notebooks/08_explore_walks.ipynb`` and the page of :mod:`dgmn_ref.figures.explorer_html`
both start here:

* :func:`load_model` rebuilds the model of a run folder (05, 06, ``dgmn-ref train`` or the
  committed ``notebooks/checkpoints/08_explore_walks``) and checks it holds a DGMN layer;
* :func:`load_frames` gives the frames to look at: validation frames of the run's dataset by
  index, or any PNG/JPEG files, resized to the run's training crop;
* :func:`walk_numbers` (``dgmn-ref explore-numbers``) answers "did the walks go where the
  information is?" in numbers: the mean walk length per rate, and the share of sampled
  positions (eq. 4, walked, against eq. 3, uniform) that land on the cue: the beacon, or
  the far district of the redundant task.
"""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from dgmn_ref.figures.walks import WalkData, dgmn_layers

__all__ = [
    "Frames",
    "load_model",
    "load_frames",
    "beacon_mask",
    "cue_mask",
    "walk_numbers",
    "gallery_nodes",
    "node_caption",
    "gallery_figure",
    "explore_numbers",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Frames:
    """Frames to explore, all of one size.

    Attributes:
        images: the model's input, normalised, ``b c H W``.
        pictures: the same frames for drawing, ``b H W 3`` uint8.
        names: where each frame came from (a file or ``"val frame N"``).
        labels: trainIds ``b H W`` (dataset frames only, else None).
        context: the synthetic data's context-dependent pixels ``b H W`` (else None).
    """

    images: Tensor
    pictures: np.ndarray
    names: tuple[str, ...]
    labels: Tensor | None = None
    context: Tensor | None = None


def load_model(checkpoint: str | Path) -> tuple[nn.Module, Any]:
    """The trained model of a run folder (or its ``checkpoint.pt``), in eval mode, and its config.

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: the file is not a ``dgmn-ref train`` checkpoint, or its model has no DGMN
            layer (e.g. a Non-local or FCN run); the message names the file.
    """
    from dgmn_ref.training import TrainConfig, build_model, load_run

    path = Path(checkpoint)
    try:
        run = load_run(path)
    except FileNotFoundError:
        raise
    except Exception as error:  # a foreign or damaged file: say which
        raise ValueError(f"{path}: cannot read it as a dgmn-ref checkpoint ({error})") from error
    if not isinstance(run, dict) or not {"config", "model"} <= set(run):
        raise ValueError(
            f"{path}: not a dgmn-ref train checkpoint (expected a dict with 'config' and 'model')"
        )
    cfg = TrainConfig.from_dict(run["config"])
    if cfg.context != "dgmn":
        raise ValueError(
            f"{path}: a {cfg.context!r} model has no DGMN layer to explore (expected context "
            "'dgmn'; train one with dgmn-ref train --context dgmn)"
        )
    model = build_model(cfg)
    model.load_state_dict(run["model"])
    if not dgmn_layers(model):
        raise ValueError(f"{path}: the model has no DGMN layer to explore")
    return model.eval(), cfg


def _check_indices(indices: Sequence[int], split: int, dataset: str) -> None:
    for index in indices:
        if not 0 <= index < split:
            raise ValueError(
                f"images: frame {index} is not in the {dataset} validation split "
                f"(0 <= frame < {split})"
            )


def _dataset_frames(cfg: Any, indices: Sequence[int]) -> Frames:
    from dgmn_ref.data import CityscapesDataset, denormalize, ensure_synthetic
    from dgmn_ref.data.synthetic import make_synthetic_cityscapes, task_of
    from dgmn_ref.training import build_dataset

    if cfg.dataset == "synthetic" and task_of(cfg.root or "") != "beacon":
        # another embedded task (e.g. redundant): the run's own folder says which frames
        dataset = build_dataset(cfg, "val")
        _check_indices(indices, len(dataset), cfg.dataset)
    elif cfg.dataset == "synthetic":
        # Validation frame n depends only on (seed, n): make just the ones needed, in a
        # temporary folder, within the split that ``dgmn-ref make-data`` writes.
        split = inspect.signature(make_synthetic_cityscapes).parameters["n_val"].default
        _check_indices(indices, split, cfg.dataset)
        root = Path(tempfile.mkdtemp(prefix="dgmn-explore-")) / "synthetic_cityscapes"
        ensure_synthetic(root, n_train=1, n_val=max(indices) + 1)
        dataset = CityscapesDataset(root, "val", return_context=True)
    else:
        dataset = build_dataset(cfg, "val")
        _check_indices(indices, len(dataset), cfg.dataset)
    samples = [dataset[i] for i in indices]
    sizes = {tuple(sample[0].shape[-2:]) for sample in samples}
    if len(sizes) > 1:
        raise ValueError(f"images: the chosen frames differ in size {sorted(sizes)}; pick one size")
    images = torch.stack([sample[0] for sample in samples])
    columns = list(zip(*samples, strict=True))
    return Frames(
        images=images,
        pictures=_to_uint8(denormalize(images)),
        names=tuple(f"{cfg.dataset} val frame {i}" for i in indices),
        labels=torch.stack(columns[1]),
        context=torch.stack(columns[2]) if len(columns) > 2 else None,
    )


def _to_uint8(images: Tensor) -> np.ndarray:
    return (rearrange(images, "b c h w -> b h w c") * 255).round().byte().numpy()


def _file_frames(paths: Sequence[str | Path], size: tuple[int, int]) -> Frames:
    from PIL import Image, UnidentifiedImageError

    from dgmn_ref.data import normalize
    from dgmn_ref.data.transforms import to_tensor

    pictures = []
    for path in map(Path, paths):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(
                f"images: {path} is not a PNG or JPEG file (expected {IMAGE_SUFFIXES})"
            )
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            raise ValueError(f"images: cannot read {path} as an image ({error})") from error
        # The run trained on crops of this size (cfg.crop_size): resize the whole frame to it.
        pictures.append(np.asarray(rgb.resize((size[1], size[0]), Image.BILINEAR)))
    stacked = np.stack(pictures)
    images = normalize(torch.stack([to_tensor(picture) for picture in stacked]))
    return Frames(images=images, pictures=stacked, names=tuple(str(p) for p in paths))


def load_frames(cfg: Any, images: Sequence[str | int | Path] | None = None) -> Frames:
    """Frames for ``cfg``'s model: validation frames by index, or PNG/JPEG files.

    Args:
        cfg: the run's ``TrainConfig`` (from :func:`load_model`).
        images: integers (or digit strings) pick frames of the run's validation split; other
            entries are image files, resized to the run's training crop ``cfg.crop_size``
            (bilinear). Mixing the two is an error. Default: validation frames 0-3.
    """
    images = [0, 1, 2, 3] if images is None else list(images)
    if not images:
        raise ValueError("images: expected at least one frame index or image file")
    indices = [int(i) for i in images if isinstance(i, int) or str(i).isdigit()]
    if indices and len(indices) != len(images):
        raise ValueError(f"images: mix of frame indices and files {images}; give one kind")
    if indices:
        return _dataset_frames(cfg, indices)
    return _file_frames(images, tuple(cfg.crop_size))


def beacon_mask(labels: Tensor) -> Tensor:
    """The synthetic data's cue: the beacon (the "traffic sign" pixels), ``b H W`` bool."""
    from dgmn_ref.data.labels import NAME_TO_LABEL

    return labels == NAME_TO_LABEL["traffic sign"].trainId


CUES = {
    "beacon": "beacon: the 'traffic sign' pixels",
    "redundant": "redundant: the far zone, the district whose kind decides the class",
}


def cue_mask(task: str, frames: Frames) -> Tensor:
    """The pixels that carry the information of an embedded task, ``b H W`` bool.

    ``"beacon"``: :func:`beacon_mask`. ``"redundant"``: the far zone of each frame
    (:func:`dgmn_ref.data.redundant.far_zone`), on the side away from the mystery vehicles.
    """
    if frames.labels is None:
        raise ValueError("frames: the cue is known only for dataset frames (they carry labels)")
    if task == "beacon":
        return beacon_mask(frames.labels)
    if task != "redundant":
        raise ValueError(f"task: expected one of {tuple(CUES)}, got {task!r}")
    if frames.context is None:
        raise ValueError("frames: the redundant cue needs the frames' context masks")
    from dgmn_ref.data.redundant import far_zone_of

    return torch.stack([torch.from_numpy(far_zone_of(c).copy()) for c in frames.context])


def _on_cells(positions: Tensor, cells: Tensor) -> Tensor:
    """Whether each position ``... p`` (feature pixels) falls in a marked cell of ``h w``.

    A position belongs to the cell whose centre is nearest (rounding); outside the map it
    belongs to none (the sampler reads zeros there).
    """
    height, width = cells.shape
    rows, cols = positions[..., 0].round().long(), positions[..., 1].round().long()
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    index = (rows.clamp(0, height - 1) * width + cols.clamp(0, width - 1)).flatten()
    return inside & cells.flatten()[index].reshape(rows.shape)


def walk_numbers(data: WalkData, cue: Tensor, receivers: Tensor | None = None) -> dict[str, Any]:
    """Where the walks of eq. (4) lead, per rate: length, and how often they land on the cue.

    Args:
        data: from :func:`dgmn_ref.figures.walks.extract_from_model`, ``b`` images.
        cue: the image pixels that carry the information (e.g. :func:`beacon_mask`), ``b H W``.
        receivers: the receiving nodes to count, as image pixels ``b H W`` (a feature cell is a
            receiver when at least half of its pixels are); None: every node.

    A feature cell is *on the cue* when any of its image pixels is. A sampled position lands
    on the cue when the cell nearest to it is (:func:`_on_cells`). Returns, per rate and over
    the receivers, the mean |walk| (feature pixels), the share of walked
    positions p + Delta d (eq. 4) and of uniform positions p (eq. 3) on the cue; ``cue_area``
    is the share of all cells on the cue (what a position drawn at random would score).
    """
    batch = data.batch
    if cue.shape[0] != batch:
        raise ValueError(f"cue: expected {batch} masks (one per image), got {cue.shape[0]}")
    size = data.size
    cue_cells = F.adaptive_max_pool2d(cue[:, None].float(), size)[:, 0] > 0  # b h w
    if receivers is None:
        chosen = torch.ones(batch, *size, dtype=torch.bool)
    else:
        chosen = F.adaptive_avg_pool2d(receivers[:, None].float(), size)[:, 0] >= 0.5
    lengths = data.walks.norm(dim=3)  # s b k h w
    walked_yx = rearrange(data.walked, "s b k p h w -> s b k h w p")
    uniform_yx = rearrange(data.uniform, "s k p h w -> s k h w p")
    rates = []
    for s, rate in enumerate(data.rates):
        walked = torch.stack([_on_cells(walked_yx[s, b], cue_cells[b]) for b in range(batch)])
        uniform = torch.stack([_on_cells(uniform_yx[s], cue_cells[b]) for b in range(batch)])
        # b k h w flags; count the chosen receivers only.
        pick = rearrange(chosen, "b h w -> b 1 h w").expand_as(walked)
        rates.append(
            {
                "rate": rate,
                "mean_walk_length": round(float(lengths[s][pick].mean()), 3),
                "walked_on_cue": round(float(walked[pick].float().mean()), 4),
                "uniform_on_cue": round(float(uniform[pick].float().mean()), 4),
            }
        )
    positions = int(chosen.sum()) * data.uniform.shape[1]
    return {
        "receivers": int(chosen.sum()),
        "positions_per_rate": positions,
        "cue_area": round(float(cue_cells.float().mean()), 4),
        "rates": rates,
    }


# ------------------------------------------------------------- numbers and a gallery
GALLERY_DPI = 120  # static views: >= 110 dpi so the text stays legible at GitHub's width
# Nodes of the gallery: a name and how to find its cells in an image (labels, context).
GALLERY_CLASSES: tuple[str, ...] = ("mystery vehicle", "road", "building", "sky")


def _class_cells(data: WalkData, labels: Tensor, context: Tensor, name: str, batch: int) -> Tensor:
    """Share of each feature cell's image pixels that belong to ``name``, ``h w``."""
    from dgmn_ref.data.labels import NAME_TO_LABEL

    if name == "mystery vehicle":
        mask = context[batch]
    else:
        mask = labels[batch] == NAME_TO_LABEL[name].trainId
    return F.adaptive_avg_pool2d(mask[None, None].float(), data.size)[0, 0]


def _central_cell(cells: Tensor) -> tuple[int, int]:
    """The most covered cell of ``h w`` (ties: the one nearest the map's centre)."""
    height, width = cells.shape
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    distance = (rows - (height - 1) / 2) ** 2 + (cols - (width - 1) / 2) ** 2
    best = cells >= cells.max() - 1e-6
    index = int(torch.where(best, distance, torch.inf).argmin())
    return divmod(index, width)


def gallery_nodes(data: WalkData, frames: Frames, batch: int = 0) -> dict[str, tuple[int, int]]:
    """One receiving node per :data:`GALLERY_CLASSES` class present in frame ``batch`` (its
    most covered cell, ties nearest the centre); without labels, the centre of the map."""
    if frames.labels is None or frames.context is None:
        height, width = data.size
        return {"centre": (height // 2, width // 2)}
    nodes = {}
    for where in GALLERY_CLASSES:
        cells = _class_cells(data, frames.labels, frames.context, where, batch)
        if cells.max() > 0:
            nodes[where] = _central_cell(cells)
    return nodes


def node_caption(
    data: WalkData,
    node: tuple[int, int],
    cue: Tensor | None,
    batch: int = 0,
    where: str = "",
    cue_name: str = "the beacon",
) -> str:
    """One line on what node i's walks did: length, reach, and how many land on the cue
    (``b H W``, called ``cue_name``; None: not counted)."""
    from dgmn_ref.figures.walks import message_sources

    y, x = data.check_node(node, batch)
    length = float(data.walks[:, batch, :, :, y, x].norm(dim=2).mean())
    source = message_sources(data, (y, x), batch).abs()
    rows, cols = torch.meshgrid(*(torch.arange(n) for n in data.size), indexing="ij")
    far = torch.maximum((rows - y).abs(), (cols - x).abs()) > 2
    caption = (
        f"{where + ', ' if where else ''}node ({y}, {x}): walks of {length:.1f} feature px on "
        f"average; {float(source[far].sum() / source.sum()):.0%} of its sampling weight is more "
        "than 2 px away"
    )
    if cue is None:
        return caption
    cue_cells = F.adaptive_max_pool2d(cue[batch][None, None].float(), data.size)[0, 0] > 0
    walked = rearrange(data.walked[:, batch, :, :, y, x], "s k p -> (s k) p")
    on_cue = int(_on_cells(walked, cue_cells).sum())
    return f"{caption}; {on_cue} of {len(walked)} walked positions on {cue_name}"


def gallery_figure(
    data: WalkData, node: tuple[int, int], picture: np.ndarray, batch: int, title: str
):
    """Neighbours and message sources of one node, sized to read at GitHub's page width."""
    from matplotlib.figure import Figure

    from dgmn_ref.figures.viz import plot_message_sources, plot_neighbourhood

    fig = Figure(figsize=(11, 3.2), layout="constrained")
    axes = fig.subplots(1, 2, width_ratios=(1.3, 1))
    plot_neighbourhood(data, node, picture, batch=batch, ax=axes[0])
    plot_message_sources(data, node, picture, batch=batch, ax=axes[1])
    axes[0].set_title("neighbours per rate", fontsize=13)
    axes[1].set_title("message sources (before fusion)", fontsize=13)
    legend = axes[0].get_legend()
    for text in legend.get_texts():
        text.set_fontsize(11)
    colourbar = axes[1].images[-1].colorbar
    colourbar.ax.tick_params(labelsize=10)
    colourbar.set_label("A' x mean_g w", fontsize=11)
    fig.suptitle(title, fontsize=13)
    return fig


def explore_numbers(
    checkpoint: str | Path, frames: int = 60, gallery: str | Path | None = None
) -> dict[str, Any]:
    """The explorer's walk numbers for a synthetic-data run: :func:`walk_numbers` over ``frames``
    validation frames, for all nodes and for the mystery-vehicle nodes (whose class only the
    far cue decides: the beacon, or the district of the redundant task, :func:`cue_mask`);
    with ``gallery``, also one PNG per :data:`GALLERY_CLASSES` node of frame 0
    (``<gallery>-<n>.png``, :data:`GALLERY_DPI`) and its caption.
    """
    from dgmn_ref.data.synthetic import task_of
    from dgmn_ref.figures.walks import extract_from_model

    model, cfg = load_model(checkpoint)
    if cfg.dataset != "synthetic":
        raise ValueError(
            f"{checkpoint}: the cue (the beacon or the district) is only known for the "
            f"synthetic dataset, not {cfg.dataset!r}"
        )
    task = task_of(cfg.root or "")
    chosen = load_frames(cfg, list(range(frames)))
    cue = cue_mask(task, chosen)
    cue_name = "the beacon" if task == "beacon" else "the far zone"
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "frames": f"synthetic validation frames 0-{frames - 1}"
        + ("" if task == "beacon" else f" of {cfg.root}"),
        "cue": CUES[task],
        "layers": {},
    }
    for name, data in extract_from_model(model, chosen.images).items():
        result["layers"][name] = {
            "all nodes": walk_numbers(data, cue),
            "mystery-vehicle nodes": walk_numbers(data, cue, chosen.context),
        }
    if gallery is not None:
        name, data = next(iter(extract_from_model(model, chosen.images[:1]).items()))
        result["gallery"] = []
        for n, (where, node) in enumerate(gallery_nodes(data, chosen).items(), 1):
            caption = node_caption(data, node, cue[:1], 0, f"frame 0, {where}", cue_name)
            path = Path(f"{gallery}-{n}.png")
            path.parent.mkdir(parents=True, exist_ok=True)
            title = f"frame 0, a node on the {where}: (y={node[0]}, x={node[1]})"
            fig = gallery_figure(data, node, chosen.pictures[0], 0, title)
            fig.savefig(path, dpi=GALLERY_DPI)
            result["gallery"].append(
                {"file": path.as_posix(), "node": list(node), "class": where, "caption": caption}
            )
    return result
