"""The segmentation model of DGMN (Zhang et al., CVPR 2020), sec. 4.1 and Appendix A.2.2.

"our baseline architecture is Dilated-FCN (Yu & Koltun, 2016) with a ResNet-101 backbone
pretrained on ImageNet. A 3x3 convolution layer, together with batch normalisation and ReLU
is used after the backbone to produce a dimension-reduced feature map of 512 channels which
is then fed into the proposed DGMN module as input." (sec. 4.1)

* :class:`ResNet`: ResNet-18/50/101 (He et al., 2016) with the strides of ``layer3`` and
  ``layer4`` replaced by dilations 2 and 4, so the output stride is 8 (Yu & Koltun, 2016).
  Written here because torchvision is not a dependency; its parameter names are
  torchvision's, so a torchvision ImageNet state dict loads with
  :func:`load_imagenet_weights`.
* :func:`build_context`: the context module by name (``none``, ``dgmn``, ``nonlocal``,
  ``aspp``, ``deformable``), the rows of Table 1a.
* :class:`SegmentationModel`: backbone -> 3x3 conv-BN-ReLU to 512 -> context -> 1x1
  classifier -> bilinear upsampling to the input size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmn_ref.baselines import ASPP, DeformableMessagePassing, NonLocalHead, conv_bn_relu
from dgmn_ref.layer import DGMN
from dgmn_ref.variants import variant_kwargs

__all__ = [
    "CONTEXTS",
    "DEPTHS",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "SegmentationModel",
    "IMAGENET_WEIGHTS",
    "TORCHVISION_URL",
    "build_context",
    "imagenet_weights_path",
    "load_imagenet_weights",
]

CONTEXTS: tuple[str, ...] = ("none", "dgmn", "nonlocal", "aspp", "deformable")

# depth -> (block, blocks per stage), He et al. (2016) Table 1
DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual (ResNet-18/34). torchvision refuses dilation > 1 here;
    dilated ResNet-18 segmentation models (e.g. PSPNet-18) dilate both convs."""

    expansion = 1

    def __init__(
        self,
        cin: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride, first_dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided / dilated) -> 1x1 with a residual (ResNet-50/101, "v1.5":
    the stride sits on the 3x3 conv as in torchvision)."""

    expansion = 4

    def __init__(
        self,
        cin: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, first_dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Dilated ResNet backbone, ``b 3 H W -> b C H/8 W/8`` (output stride 8).

    Parameter names follow ``torchvision.models.resnet`` (``conv1``, ``bn1``,
    ``layer1..4.<i>.conv1/bn1/...``, ``downsample.0/1``), without the ``fc`` classifier.
    ``layer3`` / ``layer4`` keep stride 1 and use dilation 2 / 4 instead (torchvision's
    ``replace_stride_with_dilation=[False, True, True]``), so ImageNet weights still apply.

    Args:
        depth: 18, 34, 50, 101 or 152.
        width: channels of the stem and of ``layer1`` (64 in the paper); smaller widths
            (e.g. 16) give a model that trains on a CPU in seconds (no ImageNet weights then).
        output_stride: 8 (dilated, the paper), 16 or 32.

    Example:
        >>> net = ResNet(18, width=8)
        >>> net(torch.randn(1, 3, 64, 48)).shape, net.out_channels
        (torch.Size([1, 64, 8, 6]), 64)
    """

    def __init__(self, depth: int = 101, width: int = 64, output_stride: int = 8) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"depth: expected one of {sorted(DEPTHS)}, got {depth!r}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride: expected 8, 16 or 32, got {output_stride!r}")
        kind, layers = DEPTHS[depth]
        self.block = BasicBlock if kind == "basic" else Bottleneck
        self.depth, self.width, self.output_stride = depth, width, output_stride
        self.inplanes, self.dilation = width, 1
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        # stride 4 after the stem; layer2 halves it; layer3 / layer4 halve it or dilate
        dilate = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}
        dilate = dilate[output_stride]
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(2 * width, layers[1], 2, dilate[0])
        self.layer3 = self._make_layer(4 * width, layers[2], 2, dilate[1])
        self.layer4 = self._make_layer(8 * width, layers[3], 2, dilate[2])
        self.out_channels = 8 * width * self.block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False):
        """One stage, as torchvision's ``_make_layer``: the first block of a dilated stage
        keeps the previous dilation, the others use the new one."""
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        out = planes * self.block.expansion
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )
        layers = [
            self.block(self.inplanes, planes, stride, self.dilation, previous_dilation, downsample)
        ]
        self.inplanes = out
        layers += [
            self.block(out, planes, 1, self.dilation, self.dilation) for _ in range(1, blocks)
        ]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


# torchvision's ImageNet-1k weights (IMAGENET1K_V1) of each depth: the file names the configs use
# (weights/<name> under the repository root), downloaded from TORCHVISION_URL + name.
IMAGENET_WEIGHTS: dict[int, str] = {
    18: "resnet18-f37072fd.pth",
    34: "resnet34-b627a593.pth",
    50: "resnet50-0676ba61.pth",
    101: "resnet101-63fe2227.pth",
    152: "resnet152-394f9c45.pth",
}
TORCHVISION_URL = "https://download.pytorch.org/models/"


def imagenet_weights_path(path: str | Path, depth: int, repo_root: str | Path) -> Path:
    """The ImageNet weights file ``path``, which must exist (relative: taken from ``repo_root``).

    The configs name ``weights/resnet101-63fe2227.pth`` relative to the repository root (see
    docs/training.md); a notebook runs in ``notebooks/``, so it passes the root explicitly.

    Raises:
        FileNotFoundError: no file there; the message names the resolved path, the torchvision
            file for ``depth`` and the URL it comes from.
    """
    resolved = Path(path) if Path(path).is_absolute() else Path(repo_root) / path
    if not resolved.is_file():
        name = IMAGENET_WEIGHTS.get(depth)
        source = (
            f"ResNet-{depth}'s torchvision ImageNet weights: {name}, from {TORCHVISION_URL}{name}"
            if name
            else f"torchvision has no ImageNet weights for ResNet-{depth}"
        )
        raise FileNotFoundError(f"ImageNet weights {resolved} not found (from {path!r}); {source}")
    return resolved


def load_imagenet_weights(backbone: ResNet, path: str | Path) -> dict[str, list[str]]:
    """Load a torchvision-format ImageNet state dict (e.g. ``resnet101-63fe2227.pth``).

    Read with ``torch.load(weights_only=True)`` (no pickled code runs). The ``fc.*``
    classifier keys are skipped; every other key must match by name and shape.

    Returns:
        ``{"skipped": [...]}``, the keys that were not loaded (the classifier).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: missing / unexpected keys or a shape mismatch (all named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet weights {path} not found (a torchvision state dict)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    skipped = sorted(k for k in state if k.startswith("fc."))
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{path} does not match ResNet-{backbone.depth} (width {backbone.width}): "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
            f"shape mismatches {shapes[:5]}"
        )
    backbone.load_state_dict(state)
    return {"skipped": skipped}


def build_context(
    name: str,
    channels: int,
    variant: str = "da_dw_ds",
    impl: str = "auto",
    **overrides: Any,
) -> nn.Module:
    """The context module of a Table 1a row, ``b C h w -> b C h w``.

    Args:
        name: ``none`` (Dilated FCN), ``dgmn`` (with ``variant``), ``nonlocal``
            (:class:`~dgmn_ref.baselines.NonLocalHead`), ``aspp``, ``deformable``
            (deformable message passing, sec. 4.1).
        channels: C (512 in the paper).
        variant: a :data:`~dgmn_ref.variants.PAPER_VARIANTS` or
            :data:`~dgmn_ref.variants.RELEASED_VARIANTS` name (``dgmn`` only).
        impl: ``"auto"`` (the faster kernels for the map's size), ``"fast"`` or
            ``"reference"`` message kernels (``dgmn`` / ``deformable``).
        overrides: keyword arguments of the module, e.g. ``rates=(1, 2)`` or ``groups=2``.
    """
    if name == "none":
        if overrides:
            raise ValueError(f"context 'none' takes no options, got {sorted(overrides)}")
        return nn.Identity()
    if name == "dgmn":
        kwargs = {**variant_kwargs(variant), **overrides}
        return DGMN(channels, impl=impl, **kwargs)
    if name == "nonlocal":
        return NonLocalHead(channels, **overrides)
    if name == "aspp":
        overrides.setdefault("branch_channels", max(channels // 2, 1))
        return ASPP(channels, **overrides)
    if name == "deformable":
        return DeformableMessagePassing(channels, impl=impl, **overrides)
    raise ValueError(f"context: expected one of {CONTEXTS}, got {name!r}")


class SegmentationModel(nn.Module):
    """Dilated FCN + context module (sec. 4.1), ``b 3 H W -> b n H W`` logits.

    Args:
        num_classes: n (19 for Cityscapes, 81 for COCO things + background).
        depth, width, output_stride: of the :class:`ResNet` backbone.
        head_channels: channels of the 3x3 conv-BN-ReLU after the backbone (512).
        context: one of :data:`CONTEXTS`.
        variant: DGMN variant name (``context="dgmn"``).
        impl: message-kernel implementation (``"auto"``, ``"fast"`` or ``"reference"``).
        dropout: dropout before the classifier (0.1, as in PSPNet / CCNet heads).
        context_kwargs: extra keyword arguments of the context module.

    Example:
        >>> model = SegmentationModel(19, depth=18, width=8, head_channels=16,
        ...                           context="dgmn", variant="da", impl="reference")
        >>> model(torch.randn(2, 3, 64, 80)).shape
        torch.Size([2, 19, 64, 80])
    """

    def __init__(
        self,
        num_classes: int,
        depth: int = 101,
        width: int = 64,
        head_channels: int = 512,
        context: str = "dgmn",
        variant: str = "da_dw_ds",
        impl: str = "auto",
        dropout: float = 0.1,
        output_stride: int = 8,
        context_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if context not in CONTEXTS:
            raise ValueError(f"context: expected one of {CONTEXTS}, got {context!r}")
        self.num_classes, self.context_name = num_classes, context
        self.backbone = ResNet(depth, width, output_stride)
        self.reduce = conv_bn_relu(self.backbone.out_channels, head_channels, 3)
        self.context = build_context(
            context, head_channels, variant, impl, **dict(context_kwargs or {})
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)

    def features(self, x: Tensor) -> Tensor:
        """The context module's output, ``b C H/8 W/8``."""
        return self.context(self.reduce(self.backbone(x)))

    def forward(self, x: Tensor) -> Tensor:
        logits = self.classifier(self.dropout(self.features(x)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
