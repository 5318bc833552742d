"""The segmentation model of sec. 4.1: dilated ResNet (stride 8), heads, ImageNet loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dgmn_ref.models import (
    CONTEXTS,
    IMAGENET_WEIGHTS,
    ResNet,
    SegmentationModel,
    build_context,
    imagenet_weights_path,
    load_imagenet_weights,
)


def torchvision_resnet_shapes(depth: int, num_classes: int = 1000) -> dict[str, tuple]:
    """Names and shapes of ``torchvision.models.resnet<depth>().state_dict()``, written
    from torchvision's layout (not from our module) so that the test is independent."""
    bottleneck = depth >= 50
    blocks = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    shapes: dict[str, tuple] = {}

    def bn(name: str, c: int) -> None:
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{p}"] = (c,)
        shapes[f"{name}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    cin = 64
    for stage, n in enumerate(blocks, start=1):
        planes = 64 * 2 ** (stage - 1)
        out = planes * (4 if bottleneck else 1)
        for i in range(n):
            pre = f"layer{stage}.{i}"
            if bottleneck:
                convs = [(planes, cin, 1), (planes, planes, 3), (out, planes, 1)]
            else:
                convs = [(planes, cin, 3), (planes, planes, 3)]
            for j, (co, ci, k) in enumerate(convs, start=1):
                shapes[f"{pre}.conv{j}.weight"] = (co, ci, k, k)
                bn(f"{pre}.bn{j}", co)
            if i == 0 and (stage > 1 or cin != out):
                shapes[f"{pre}.downsample.0.weight"] = (out, cin, 1, 1)
                bn(f"{pre}.downsample.1", out)
            cin = out
    shapes["fc.weight"] = (num_classes, cin)
    shapes["fc.bias"] = (num_classes,)
    return shapes


@pytest.mark.parametrize("depth, n_keys", [(18, 122), (50, 320), (101, 626)])
def test_parameter_names_are_torchvisions(depth, n_keys):
    expected = torchvision_resnet_shapes(depth)
    assert len(expected) == n_keys  # torchvision's resnet state_dict sizes
    ours = {k: tuple(v.shape) for k, v in ResNet(depth).state_dict().items()}
    expected = {k: v for k, v in expected.items() if not k.startswith("fc.")}
    assert ours == expected


def test_load_torchvision_state_dict(tmp_path):
    torch.manual_seed(0)
    state = {
        k: torch.randint(0, 5, s) if k.endswith("num_batches_tracked") else torch.randn(s)
        for k, s in torchvision_resnet_shapes(18).items()
    }
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(state, path)
    net = ResNet(18)
    report = load_imagenet_weights(net, path)
    assert report["skipped"] == ["fc.bias", "fc.weight"]
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    # a model built with the file's weights through the segmentation model
    model = SegmentationModel(19, depth=18, head_channels=8, context="none")
    load_imagenet_weights(model.backbone, path)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_load_rejects_mismatched_file(tmp_path):
    state = {k: torch.zeros(s) for k, s in torchvision_resnet_shapes(18).items()}
    state.pop("layer2.0.conv1.weight")
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="missing \\['layer2.0.conv1.weight'\\]"):
        load_imagenet_weights(ResNet(18), tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_imagenet_weights(ResNet(18), tmp_path / "nowhere.pth")
    torch.save(state, tmp_path / "wide.pth")
    with pytest.raises(ValueError, match="width 8"):
        load_imagenet_weights(ResNet(18, width=8), tmp_path / "wide.pth")


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("size", [(64, 80), (65, 47)])
def test_backbone_output_stride_8(depth, size):
    net = ResNet(depth, width=4).eval()
    out = net(torch.randn(1, 3, *size))
    assert out.shape == (1, 32 * (4 if depth == 50 else 1), -(-size[0] // 8), -(-size[1] // 8))
    # layer3 / layer4 are dilated instead of strided (torchvision's replace_stride_with_dilation)
    for m in [*net.layer3.modules(), *net.layer4.modules()]:
        assert not isinstance(m, nn.Conv2d) or m.stride == (1, 1)
    assert net.layer3[1].conv2.dilation == (2, 2) and net.layer4[1].conv2.dilation == (4, 4)


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("batch", [1, 3])
def test_segmentation_model_shapes(context, batch):
    torch.manual_seed(0)
    model = SegmentationModel(
        5, depth=18, width=4, head_channels=8, context=context, variant="da_dw_ds",
        impl="reference", context_kwargs={"rates": (1, 2)} if context == "dgmn" else None,
    )  # fmt: skip
    model.train()  # batch statistics: batch 1 still works (no 1x1 BatchNorm)
    x = torch.randn(batch, 3, 48, 72)
    assert model.features(x).shape == (batch, 8, 6, 9)
    logits = model(x)
    assert logits.shape == (batch, 5, 48, 72)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_none_context_is_identity_and_variants_apply():
    assert isinstance(build_context("none", 8), nn.Identity)
    dgmn = build_context("dgmn", 8, variant="da_dw", impl="reference")
    assert dgmn.rates == (1,)
    dmc = dgmn.rate_messages[0]
    assert (dmc.dynamic_affinity, dmc.dynamic_weights, dmc.dynamic_sampling) == (True, True, False)
    assert dgmn.impl == "reference"


def test_bad_names_are_reported():
    with pytest.raises(ValueError, match="context: expected one of .* got 'transformer'"):
        SegmentationModel(3, depth=18, width=4, head_channels=8, context="transformer")
    with pytest.raises(ValueError, match="variant"):
        build_context("dgmn", 8, variant="nope")
    with pytest.raises(ValueError, match="depth: expected one of"):
        ResNet(19)


def test_imagenet_weights_path_is_taken_from_the_repository_root(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / IMAGENET_WEIGHTS[101]).write_bytes(b"")
    found = imagenet_weights_path(f"weights/{IMAGENET_WEIGHTS[101]}", 101, tmp_path)
    assert found == tmp_path / "weights" / "resnet101-63fe2227.pth"
    assert imagenet_weights_path(found, 101, tmp_path / "elsewhere") == found  # absolute: as given
    with pytest.raises(
        FileNotFoundError, match=r"weights: resnet50-0676ba61\.pth, from https://download\.pytorch"
    ):
        imagenet_weights_path("weights/missing.pth", 50, tmp_path)
    with pytest.raises(FileNotFoundError, match="no ImageNet weights for ResNet-7"):
        imagenet_weights_path("weights/missing.pth", 7, tmp_path)
