"""Training augmentations of DGMN Appendix A.2.2 in plain torch (no torchvision).

"For data augmentation, random cropping with a crop size of 769 and random mirror flipping are
applied on the fly during training" (following PSPNet, which also uses random scaling 0.5-2.0).

A *sample* is a dict of tensors: ``"image"`` ``(c h w)`` float, already normalised, and dense
maps ``(h w)`` (``"label"`` int64 trainIds, optionally ``"context"`` bool). Every random draw
comes from an explicit ``torch.Generator`` so an augmentation is reproducible from a seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from dgmn_ref.data.labels import IGNORE_INDEX

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

Sample = dict[str, torch.Tensor]
Transform = Callable[[Sample, torch.Generator], Sample]

# Value used to pad each dense map when a crop is larger than the image.
PAD_VALUES: dict[str, float] = {"image": 0.0, "label": IGNORE_INDEX, "context": 0}


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 ``(h w c)`` array -> float ``(c h w)`` tensor in [0, 1]."""
    return (
        rearrange(torch.from_numpy(np.array(rgb, dtype=np.uint8)), "h w c -> c h w").float() / 255
    )


def _per_channel(image: torch.Tensor, values: Sequence[float]) -> torch.Tensor:
    """``values`` as a ``c 1 1`` tensor of ``image``'s dtype and device, to broadcast."""
    return rearrange(torch.tensor(values, dtype=image.dtype, device=image.device), "c -> c 1 1")


def normalize(
    image: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """``(x - mean) / std`` per channel; ``image`` is ``(c h w)`` or ``(b c h w)`` in [0, 1]."""
    mean_t, std_t = _per_channel(image, mean), _per_channel(image, std)
    return (image - mean_t) / std_t


def denormalize(
    image: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Inverse of :func:`normalize`, clamped to [0, 1] (for plotting)."""
    mean_t, std_t = _per_channel(image, mean), _per_channel(image, std)
    return (image * std_t + mean_t).clamp(0, 1)


def _resize_map(x: torch.Tensor, size: tuple[int, int], bilinear: bool) -> torch.Tensor:
    """Resize one ``(c h w)`` image (bilinear) or ``(h w)`` map (nearest, exact for ints)."""
    if bilinear:
        return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
    y = F.interpolate(x[None, None].float(), size=size, mode="nearest")[0, 0]
    return y.to(x.dtype)


def resize(sample: Sample, size: tuple[int, int]) -> Sample:
    """Resize every entry of a sample to ``size = (h, w)``."""
    return {k: _resize_map(v, size, bilinear=k == "image") for k, v in sample.items()}


def random_scale(
    sample: Sample, generator: torch.Generator, scale_range: tuple[float, float] = (0.5, 2.0)
) -> Sample:
    """Rescale by ``s ~ U(scale_range)``: image bilinear, label maps nearest."""
    lo, hi = scale_range
    s = lo + (hi - lo) * torch.rand((), generator=generator).item()
    h, w = sample["image"].shape[-2:]
    return resize(sample, (max(1, round(h * s)), max(1, round(w * s))))


def random_crop(
    sample: Sample, generator: torch.Generator, size: int | tuple[int, int] = 769
) -> Sample:
    """Pad (image with 0 = the mean after normalisation, labels with 255) then crop ``size``.

    Padding goes to the bottom and right, as in the PSPNet/DeepLab Caffe data layers.
    """
    ch, cw = (size, size) if isinstance(size, int) else size
    h, w = sample["image"].shape[-2:]
    ph, pw = max(ch - h, 0), max(cw - w, 0)
    if ph or pw:
        sample = {
            k: F.pad(v, (0, pw, 0, ph), value=PAD_VALUES.get(k, 0)) for k, v in sample.items()
        }
        h, w = h + ph, w + pw
    top = int(torch.randint(0, h - ch + 1, (), generator=generator))
    left = int(torch.randint(0, w - cw + 1, (), generator=generator))
    return {k: v[..., top : top + ch, left : left + cw] for k, v in sample.items()}


def random_hflip(sample: Sample, generator: torch.Generator, p: float = 0.5) -> Sample:
    """Mirror left-right with probability ``p``."""
    if torch.rand((), generator=generator).item() < p:
        return {k: v.flip(-1) for k, v in sample.items()}
    return sample


class TrainTransform:
    """Random scale, random crop (pad 0 / 255) and random mirror, in that order.

    Args:
        crop_size: ``769`` (paper) or ``(h, w)``; ``None`` keeps the scaled size.
        scale_range: ``(0.5, 2.0)`` as in PSPNet; ``None`` disables scaling.
        flip: random horizontal flip with probability 0.5.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> s = {"image": torch.zeros(3, 8, 8), "label": torch.zeros(8, 8, dtype=torch.long)}
        >>> out = TrainTransform(crop_size=6)(s, g)
        >>> tuple(out["image"].shape), tuple(out["label"].shape)
        ((3, 6, 6), (6, 6))
    """

    def __init__(
        self,
        crop_size: int | tuple[int, int] | None = 769,
        scale_range: tuple[float, float] | None = (0.5, 2.0),
        flip: bool = True,
    ) -> None:
        self.crop_size = crop_size
        self.scale_range = scale_range
        self.flip = flip

    def __call__(self, sample: Sample, generator: torch.Generator) -> Sample:
        if self.scale_range is not None:
            sample = random_scale(sample, generator, self.scale_range)
        if self.crop_size is not None:
            sample = random_crop(sample, generator, self.crop_size)
        if self.flip:
            sample = random_hflip(sample, generator)
        return sample

    def __repr__(self) -> str:
        return (
            f"TrainTransform(crop_size={self.crop_size}, scale_range={self.scale_range}, "
            f"flip={self.flip})"
        )


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator seeded from ``(seed, epoch, index)``: the same sample gets the same
    augmentation whatever the number of DataLoader workers or the order of the batches."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 10_000_019 + index) % 2**63)
