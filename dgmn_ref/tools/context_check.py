"""Measure how much the synthetic data needs context (``python -m dgmn_ref.tools.context_check``).

Two checks of the construction in :mod:`dgmn_ref.data.synthetic`, reported in
``data/README.md``:

1. **Oracles.** On context pixels (``*_gtFine_contextMask.png``) the best *local* rule can only
   use the class prior (the local view is independent of the beacon colour): its accuracy is
   the frequency of the most common of car / truck / bus, about 1/3. Reading the beacon colour
   (the far cue) gives 100%.
2. **Probes.** Two tiny CNNs trained the same way: a local one (receptive field about 32 px, smaller
   than the 48 px beacon distance at the default 96x192) and the same with a global max-pooled
   feature appended at every position (a crude stand-in for Non-local / DGMN's long-range
   sampling). Only the second can beat the prior on context pixels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import repeat
from PIL import Image
from torch import nn

from dgmn_ref.data.cityscapes import CityscapesDataset, load_label_ids
from dgmn_ref.data.labels import NAME_TO_LABEL, NUM_CITYSCAPES_CLASSES
from dgmn_ref.data.synthetic import BEACON_COLOURS, CONTEXT_CLASSES, task_of

_CONTEXT_TRAIN_IDS = [NAME_TO_LABEL[n].trainId for n in CONTEXT_CLASSES]


def cue_class(rgb: np.ndarray, label: np.ndarray, context: np.ndarray, task: str) -> int:
    """The class index the far cue encodes: the beacon's colour, or the far district's sky
    colour (the top row of the far zone, on the side away from the context pixels)."""
    if task == "beacon":
        sign = rgb[label == NAME_TO_LABEL["traffic sign"].id].mean(0)
        return int(np.argmin([np.abs(sign - c).sum() for c in BEACON_COLOURS]))
    from dgmn_ref.data.redundant import DISTRICT_COLOURS, far_zone_of

    far = far_zone_of(context)
    sky = rgb[0][far[0]].mean(0)
    return int(np.argmin([np.abs(sky - d["sky"]).sum() for d in DISTRICT_COLOURS]))


def oracle_accuracies(root: str | Path) -> dict[str, float]:
    """Accuracy on the val context pixels of the Bayes-optimal local rule (the most frequent
    context class of *train*) and of the far-cue rule (:func:`cue_class`; the key keeps its
    old name ``beacon_oracle`` for both tasks)."""
    counts = dict.fromkeys(CONTEXT_CLASSES, 0)
    for split in ("train", "val"):
        ds = CityscapesDataset(root, split)
        correct_local = correct_beacon = total = 0
        for f in ds.files:
            label = load_label_ids(f.label)
            context = np.asarray(Image.open(f.context)) != 0
            if not context.any():
                continue
            truth = label[context][0]
            name = next(n for n in CONTEXT_CLASSES if NAME_TO_LABEL[n].id == truth)
            if split == "train":
                counts[name] += int(context.sum())
                continue
            rgb = np.asarray(Image.open(f.image).convert("RGB")).astype(float)
            k = cue_class(rgb, label, context, task_of(root))
            prior_best = max(counts, key=counts.get)
            correct_local += int(context.sum()) * (name == prior_best)
            correct_beacon += int(context.sum()) * (name == CONTEXT_CLASSES[k])
            total += int(context.sum())
    return {"local_bayes": correct_local / total, "beacon_oracle": correct_beacon / total}


class Probe(nn.Module):
    """Stride-4 conv net; ``global_context`` appends a global max-pooled feature per pixel."""

    def __init__(self, global_context: bool, width: int = 32) -> None:
        super().__init__()
        self.global_context = global_context
        self.stem = nn.Sequential(nn.AvgPool2d(4), nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Conv2d(width * (2 if global_context else 1), NUM_CITYSCAPES_CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        f = self.body(self.stem(x))
        if self.global_context:
            g = f.amax(dim=(2, 3))
            f = torch.cat([f, repeat(g, "b c -> b c h w", h=f.shape[2], w=f.shape[3])], dim=1)
        return F.interpolate(self.head(f), size=(h, w), mode="bilinear", align_corners=False)


def probe_accuracies(
    root: str | Path, steps: int = 300, batch_size: int = 16, seed: int = 0
) -> dict[str, float]:
    """Train both probes for ``steps`` and return their val accuracy on context pixels."""
    train = CityscapesDataset(root, "train", return_context=True)
    val = CityscapesDataset(root, "val", return_context=True)
    xs, ys, _ = (torch.stack(t) for t in zip(*(train[i] for i in range(len(train))), strict=True))
    vx, vy, vc = (torch.stack(t) for t in zip(*(val[i] for i in range(len(val))), strict=True))
    out = {}
    for name, global_context in (("local_probe", False), ("context_probe", True)):
        torch.manual_seed(seed)
        model = Probe(global_context)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            idx = torch.randint(0, len(xs), (batch_size,), generator=g)
            loss = F.cross_entropy(model(xs[idx]), ys[idx], ignore_index=255)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            pred = model(vx).argmax(1)
        out[name] = float((pred[vc] == vy[vc]).double().mean())
    return out


def effective_receptive_field(
    model: nn.Module, dataset, gap: int | None = None, n_images: int = 8
) -> dict[str, float]:
    """Effective receptive field (Luo et al., 2016) of the centre output pixel.

    The gradient of the centre pixel's logits with respect to the input, ``|d y_c / d x|``
    summed over channels and ``n_images`` images of ``dataset`` (the model in eval mode),
    is a mass over input pixels. Returns the Chebyshev radii (px) holding 50 / 90 / 95 / 99%
    of it and, with ``gap``, the fraction of the mass at distance >= ``gap`` px.
    """
    was_training = model.training
    model.eval()
    image = torch.stack([dataset[i][0] for i in range(min(n_images, len(dataset)))])
    image.requires_grad_(True)
    h, w = image.shape[-2:]
    cy, cx = h // 2, w // 2
    model(image)[:, :, cy, cx].sum().backward()
    mass = image.grad.abs().sum((0, 1))
    model.train(was_training)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    dist = torch.maximum((rows - cy).abs(), (cols - cx).abs())
    total = float(mass.sum())
    radial = torch.zeros(int(dist.max()) + 1, dtype=torch.float64)
    radial.index_add_(0, dist.flatten(), mass.flatten().double())
    inside = radial.cumsum(0) / total
    out = {f"r{q}": int((inside < q / 100).sum()) for q in (50, 90, 95, 99)}
    if gap is not None:
        out |= {"gap_px": int(gap), "mass_beyond_gap": float(1 - inside[gap - 1])}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="data/synthetic_cityscapes")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    from dgmn_ref.data.synthetic import ensure_synthetic

    root = ensure_synthetic(args.root)
    result = {**oracle_accuracies(root), **probe_accuracies(root, args.steps)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
