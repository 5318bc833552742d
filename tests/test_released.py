"""dgmn_ref's "released" configuration against a transcription of the authors' layer.

The authors' code is GitHub ``lzrobots/dgmn`` at commit
``515476b5c6a07dcc3b7a4d2243c541377624bb33`` (HEAD; ``dynamic_weight.py`` is unchanged
since the first commit 869ed84). Their configs (``configs/dw/*.yaml``, lines 8-16) build
``ReDynamicWeightsCat33(C, group=4, kernel=3, dilation=(1, 4, 8, 12), shuffle=False,
deform="deformatt")`` (``resnet.py`` lines 558-571). Its sampler ``DeformUnfold`` and its
predictor ``DeformConv`` are CUDA-only, so :class:`Transcription` re-implements the forward
pass in PyTorch from these files (no line of it is copied; each step cites its source):

* ``W``  = ``maskrcnn_benchmark/layers/dynamic_weight.py`` (the layer, lines 617-813)
* ``K``  = ``maskrcnn_benchmark/csrc/cuda/deform_conv_kernel_cuda.cu`` (im2col kernel)
* ``C``  = ``maskrcnn_benchmark/csrc/cuda/deform_conv_cuda.cu`` (the host code)
* ``UF`` = ``maskrcnn_benchmark/layers/dcn/deform_unfold_func.py``
* ``DC`` = ``maskrcnn_benchmark/layers/dcn/deform_conv_module.py``

Everything runs in float64 with small C and maps, seeded; the walks are scaled so that
many samples leave the map and most fall between pixels.
"""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmn_ref import DGMN, released, variant_kwargs
from dgmn_ref import functional as D

TOL = 1e-10
C, G, N, H, W = 8, 4, 2, 6, 7


# ----------------------------------------------------------------- the transcription
def im2col_bilinear(image: Tensor, h: Tensor, w: Tensor) -> Tensor:
    """K:91-122 ``deformable_im2col_bilinear``: image ``N C Hi Wi``, positions ``N H W``."""
    n, c, height, width = image.shape
    h_low, w_low = torch.floor(h), torch.floor(w)  # K:96-97
    h_high, w_high = h_low + 1, w_low + 1  # K:98-99
    lh, lw = h - h_low, w - w_low  # K:101-102
    hh, hw = 1 - lh, 1 - lw  # K:103

    def corner(rows: Tensor, cols: Tensor, guard: Tensor) -> Tensor:
        # K:105-116: a corner is read only where its guard holds, else it is 0
        index = rows.long().clamp(0, height - 1) * width + cols.long().clamp(0, width - 1)
        flat = image.reshape(n, c, height * width)
        value = flat.gather(2, index.reshape(n, 1, -1).expand(n, c, -1)).reshape(n, c, *h.shape[1:])
        return value * guard.unsqueeze(1)

    v1 = corner(h_low, w_low, (h_low >= 0) & (w_low >= 0))  # K:105-107
    v2 = corner(h_low, w_high, (h_low >= 0) & (w_high <= width - 1))  # K:108-110
    v3 = corner(h_high, w_low, (h_high <= height - 1) & (w_low >= 0))  # K:111-113
    v4 = corner(h_high, w_high, (h_high <= height - 1) & (w_high <= width - 1))  # K:114-116
    w1, w2, w3, w4 = hh * hw, hh * lw, lh * hw, lh * lw  # K:118
    return sum(wt.unsqueeze(1) * v for wt, v in ((w1, v1), (w2, v2), (w3, v3), (w4, v4)))  # K:120


def deform_unfold(x: Tensor, offset: Tensor, dilation: int) -> Tensor:
    """``DeformUnfold(kernel_size=(3, 3), padding=d, dilation=d)(x, offset)`` (W:636-639).

    K:197-250 ``deformable_im2col_gpu_kernel`` with stride 1 and pad = dilation, so the
    output map is the input's size; returns ``N, C*9, H*W`` with row ``c * 9 + (3 i + j)``
    (K:213, K:220 and K:246 lay the column out so; C:801-829 and UF:113 give the shape).
    """
    n, c, height, width = x.shape
    h_in = torch.arange(height, dtype=x.dtype).reshape(1, height, 1) - dilation  # K:218
    w_in = torch.arange(width, dtype=x.dtype).reshape(1, 1, width) - dilation  # K:219
    taps = []
    for i in range(3):  # K:225
        for j in range(3):  # K:227
            offset_h = offset[:, 2 * (3 * i + j)]  # K:229, K:231
            offset_w = offset[:, 2 * (3 * i + j) + 1]  # K:230, K:232
            h_im = h_in + i * dilation + offset_h  # K:234
            w_im = w_in + j * dilation + offset_w  # K:235
            inside = (h_im > -1) & (w_im > -1) & (h_im < height) & (w_im < width)  # K:236
            taps.append(im2col_bilinear(x, h_im, w_im) * inside.unsqueeze(1))  # K:233, 243
    return torch.stack(taps, dim=2).reshape(n, c * 9, height * width)


def deform_conv(x: Tensor, offset: Tensor, weight: Tensor, dilation: int) -> Tensor:
    """``DeformConv(..., kernel_size=3, padding=d, dilation=d, bias=False)(x, offset)``.

    C:228-241: the same im2col columns, then ``weight.flatten(1) @ columns`` (one group).
    """
    n, _, height, width = x.shape
    columns = deform_unfold(x, offset, dilation)  # N, C*9, HW
    out = torch.einsum("oq,nqp->nop", weight.flatten(1), columns)
    return out.reshape(n, weight.shape[0], height, width)


class DeformConvWeight(nn.Module):
    """DC:10-54: ``DeformConv`` holds one ``weight`` ``out, in, 3, 3``, no bias."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        bound = 1.0 / math.sqrt(in_channels * 9)  # DC:49-54
        nn.init.uniform_(self.weight, -bound, bound)


class Transcription(nn.Module):
    """``ReDynamicWeightsCat33(C, group, 3, dilation, deform="deformatt")``, W:617-813.

    Parameter names as in W:626-634 and W:674-677. ``fixed=True`` replaces line 721 by
    the line the other three rates have (W:706): ``att4 = dynamic_filter_att4[:, -9:]``.
    ``shuffle=False`` in every config, so W:763-778 never runs.
    """

    def __init__(self, channels: int, group: int, dilation: tuple, fixed: bool) -> None:
        super().__init__()
        self.group, self.dilation, self.fixed = group, tuple(dilation), fixed
        for s, d in zip("abcd", dilation, strict=True):
            setattr(
                self, f"off_conv{s}", nn.Conv2d(channels, 18, 3, padding=d, dilation=d, bias=False)
            )  # W:626-629
            setattr(self, f"kernel_conv{s}", DeformConvWeight(channels, group * 9 + 9))  # W:631-634
        for q in range(1, 5):
            setattr(self, f"gamma{q}", nn.Parameter(torch.ones(1)))  # W:674-677

    def forward(self, x: Tensor) -> tuple[Tensor, list[dict[str, Tensor]]]:
        n, c, height, width = x.shape  # W:686
        r = c // self.group  # W:687
        out, states = x, []
        for q, (s, d) in enumerate(zip("abcd", self.dilation, strict=True)):
            offset = getattr(self, f"off_conv{s}")(x)  # W:690-693
            xd_unfold = deform_unfold(x, offset, d)  # W:695-698
            weight = getattr(self, f"kernel_conv{s}").weight
            filter_att = deform_conv(x, offset, weight, d)  # W:700-703
            dynamic_filter = filter_att[:, : 9 * self.group]  # W:705, 710, 715, 720
            if q == 3 and not self.fixed:
                att = dynamic_filter[:, -9:]  # W:721, the bug: a slice of the filters
            else:
                att = filter_att[:, -9:]  # W:706, 711, 716
            # W:707-708: N, 9, H, W -> N, 1, HW, 9, softmax over the last axis (W:667)
            att = att.reshape(n, 1, 9, height * width).transpose(2, 3).softmax(dim=-1)
            # W:752-755: raw filters N, G, 9, HW -> N, G, HW, 9 (no softmax in deformatt)
            dynamic_filter = dynamic_filter.reshape(n, self.group, 9, height * width).transpose(
                2, 3
            )
            dynamic_filter = dynamic_filter * att  # W:781-784 (att broadcast over G)
            # W:791-799: columns N, C*9, HW -> N, G, R, 9, HW; W:801-808: the bmm sums
            # column[g, r, k, p] * filter[g, p, k] over k, giving channel g * R + r
            columns = xd_unfold.reshape(n, self.group, r, 9, height * width)
            message = torch.einsum("ngrkp,ngpk->ngrp", columns, dynamic_filter)
            message = message.reshape(n, c, height, width)
            out = out + getattr(self, f"gamma{q + 1}") * message  # W:811
            states.append(
                dict(
                    offset=offset, att=att, filter=filter_att[:, : 9 * self.group], message=message
                )
            )
        return out, states


def make_transcription(rates=(1, 4, 8, 12), fixed=True, seed=0, walk_scale=4.0) -> Transcription:
    """Default inits, then larger walks (many leave the map) and gammas away from 1."""
    torch.manual_seed(seed)
    module = Transcription(C, G, rates, fixed).double()
    with torch.no_grad():
        for s in "abcd":
            getattr(module, f"off_conv{s}").weight.mul_(walk_scale)
            getattr(module, f"kernel_conv{s}").weight.mul_(3.0)
        for q in range(1, 5):
            getattr(module, f"gamma{q}").copy_(torch.rand(1, dtype=torch.float64) + 0.5)
    return module


def features(seed: int = 1) -> Tensor:
    return torch.randn(
        N, C, H, W, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def dgmn_from(module: Transcription, impl: str, bug: bool) -> DGMN:
    name = "released_att4_bug" if bug else "released"
    kwargs = {**variant_kwargs(name), "rates": module.dilation, "impl": impl}
    layer = DGMN(C, **kwargs).double()
    return released.load_state_dict(layer, module.state_dict())


# ------------------------------------------------------- the transcription itself
def test_zero_offsets_unfold_is_nn_unfold():
    """Sanity of the im2col transcription: zero walks give W:662-665's ``nn.Unfold``."""
    x = features()
    for d in (1, 2, 5):
        zero = torch.zeros(N, 18, H, W, dtype=x.dtype)
        expected = F.unfold(x, 3, dilation=d, padding=d)
        torch.testing.assert_close(deform_unfold(x, zero, d), expected, rtol=0, atol=1e-14)


def test_integer_offsets_read_the_shifted_pixel_or_zero():
    """An integer walk reads exactly one pixel (K:118-120), or 0 off the map (K:236)."""
    x = features()
    offset = torch.zeros(N, 18, H, W, dtype=x.dtype)
    offset[:, 0::2] = 2.0  # every tap 2 rows down
    cols = deform_unfold(x, offset, 1).reshape(N, C, 9, H, W)
    centre = cols[:, :, 4]  # tap (1, 1): the node itself, moved 2 rows
    torch.testing.assert_close(centre[:, :, : H - 2], x[:, :, 2:], rtol=0, atol=0)
    assert (centre[:, :, H - 2 :] == 0).all()


# --------------------------------------------------- dgmn_ref equals the transcription
RELEASED_RATES, OTHER_RATES = (1, 4, 8, 12), [(1, 2, 3, 5), (3, 1, 2, 2)]
CASES = [  # both kernels x bug on/off at the released rates, then other rates
    *[(impl, RELEASED_RATES, bug) for impl in ("reference", "fast") for bug in (False, True)],
    ("reference", OTHER_RATES[0], True),
    ("fast", OTHER_RATES[1], False),
]


@pytest.mark.parametrize("impl,rates,bug", CASES)
def test_released_variant_equals_the_transcription(impl, rates, bug):
    module = make_transcription(rates, fixed=not bug)
    layer = dgmn_from(module, impl, bug)
    x = features()
    expected, theirs = module(x)
    out, ours = layer.forward_with_states(x)

    # the walks leave the map and fall between pixels: the border cases are exercised
    for q, d in enumerate(rates):
        y, x_ = (D.uniform_positions(H, W, d, 3, dtype=x.dtype) + ours[q].walks).unbind(2)
        outside = (y <= -1) | (y >= H) | (x_ <= -1) | (x_ >= W)
        assert 0.1 < outside.double().mean() < 0.9, (d, outside.double().mean())
        assert (y.frac().abs() > 0.01).double().mean() > 0.9

    for q in range(4):
        walks = theirs[q]["offset"].reshape(N, 9, 2, H, W)
        torch.testing.assert_close(ours[q].walks, walks, rtol=0, atol=TOL)
        filters = theirs[q]["filter"].reshape(N, G, 9, H, W)
        torch.testing.assert_close(ours[q].weights, filters, rtol=0, atol=TOL)
        affinity = theirs[q]["att"].reshape(N, H, W, 9).permute(0, 3, 1, 2)
        torch.testing.assert_close(ours[q].affinity, affinity, rtol=0, atol=TOL)
        torch.testing.assert_close(ours[q].message, theirs[q]["message"], rtol=0, atol=TOL)
    torch.testing.assert_close(out, expected, rtol=0, atol=TOL)
    assert expected.abs().max() > 1.0  # not trivially small

    # gradients: every parameter (by its released name) and the input
    x_theirs, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    probe = torch.randn(N, C, H, W, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    (module(x_theirs)[0] * probe).sum().backward()
    (layer(x_ours) * probe).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, rtol=0, atol=TOL)
    grads = {name: p.grad for name, p in layer.named_parameters()}
    for name, (target, index) in released.released_names().items():
        theirs_grad = dict(module.named_parameters())[name].grad
        ours_grad = grads[target] if index is None else grads[target][index : index + 1]
        torch.testing.assert_close(ours_grad, theirs_grad, rtol=0, atol=TOL, msg=name)

    # line 721: rate 4's 9 affinity rows get no gradient (only with the bug)
    dead = module.kernel_convd.weight.grad[G * 9 :]
    assert (dead == 0).all() if bug else dead.abs().max() > 1e-6
    assert module.kernel_convc.weight.grad[G * 9 :].abs().max() > 1e-6


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_the_bug_switch_changes_rate_4_only(impl):
    """Fixed dgmn_ref vs the original code: rates 1-3 agree, rate 4 does not."""
    module = make_transcription(fixed=False)
    layer = dgmn_from(module, impl, bug=False)
    x = features()
    _, theirs = module(x)
    _, ours = layer.forward_with_states(x)
    for q in range(3):
        torch.testing.assert_close(ours[q].message, theirs[q]["message"], rtol=0, atol=TOL)
    assert (ours[3].message - theirs[3]["message"]).abs().max() > 1e-3


def test_old_readme_switches_do_not_give_the_released_layer():
    """The previous README recipe (softmax filters, sigmoid affinity) is not the layer."""
    module = make_transcription()
    old = dict(variant_kwargs("released"), filter_norm="softmax", affinity_norm="sigmoid")
    layer = released.load_state_dict(DGMN(C, **old).double(), module.state_dict())
    x = features()
    assert (layer(x) - module(x)[0]).abs().max() > 1e-2


# ----------------------------------------------------------- configuration and switches
def test_released_variant_is_the_configured_layer():
    layer = DGMN(16, **variant_kwargs("released"))
    assert layer.rates == (1, 4, 8, 12) and layer.fusion.fusion == "residual"
    assert all(dmc.groups == 4 and dmc.filter_norm == "none" for dmc in layer.rate_messages)
    assert all(dmc.affinity_norm == "softmax" for dmc in layer.rate_messages)
    assert not [name for name, _ in layer.named_parameters() if name.endswith("bias")]
    assert not any(dmc.affinity_from_filters for dmc in layer.rate_messages)
    buggy = DGMN(16, **variant_kwargs("released_att4_bug"))
    assert [dmc.affinity_from_filters for dmc in buggy.rate_messages] == [False] * 3 + [True]
    # the released offset convs keep PyTorch's init: walks are non-zero from the start
    _, states = layer.forward_with_states(torch.randn(1, 16, 5, 5))
    assert all(state.walks.abs().max() > 0 for state in states)


def test_readme_gives_the_tested_recipe():
    """The README's recipe is exactly ``variant_kwargs("released")``."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    match = re.search(r'# variant_kwargs\("released"\) == (dict\(.*?\)) +#', readme, re.DOTALL)
    assert match, "README: the released recipe line is missing"
    call = ast.parse(re.sub(r"\n#", "\n", match[1]), mode="eval").body
    recipe = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    assert recipe == variant_kwargs("released")


def test_parameter_counts_at_c512():
    """Released 1,161,220 (4 x (18 + 45) x 512 x 9 + 4 gammas) = dgmn_ref's released."""
    with torch.device("meta"):
        theirs = sum(p.numel() for p in Transcription(512, 4, (1, 4, 8, 12), True).parameters())
        ours = sum(p.numel() for p in DGMN(512, **variant_kwargs("released")).parameters())
        with_bias = DGMN(512, **dict(variant_kwargs("released"), bias=True))
        biased = sum(p.numel() for p in with_bias.parameters())
    assert theirs == ours == 1_161_220
    assert biased - ours == 4 * (18 + 45)


def test_bias_switch_default_keeps_biases():
    layer = DGMN(8, rates=(1, 2), groups=2)
    assert layer.rate_messages[0].walk_conv.bias is not None
    assert layer.rate_messages[0].predictor.bias is not None
    plain = DGMN(8, rates=(1, 2), groups=2, bias=False)
    assert plain.rate_messages[0].walk_conv.bias is None
    assert plain.rate_messages[0].predictor.bias is None
    f = torch.randn(1, 8, 5, 5)
    assert plain(f).shape == f.shape


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(rates=(1, 4, 8), released_att4_bug=True), "released_att4_bug: .* at least 4 rates"),
        (
            dict(rates=(1, 2, 3, 4), released_att4_bug=True, dynamic_weights=False, groups=0),
            "affinity_from_filters: .*dynamic_weights=True",
        ),
    ],
)
def test_bug_switch_rejects_layers_without_the_4th_rate_filters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DGMN(8, **kwargs)


# ------------------------------------------------------------------- weight loading
def test_load_refuses_unknown_missing_and_misshapen_keys():
    module = make_transcription()
    layer = DGMN(C, **variant_kwargs("released")).double()
    state = module.state_dict()
    with pytest.raises(ValueError, match="unfold1.weight: not a parameter"):
        released.load_state_dict(layer, {**state, "unfold1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="gamma3: missing"):
        released.load_state_dict(layer, {k: v for k, v in state.items() if k != "gamma3"})
    bad = {**state, "kernel_convb.weight": torch.zeros(27, C, 3, 3)}
    with pytest.raises(ValueError, match=r"kernel_convb.weight: expected shape \(45, 8, 3, 3\)"):
        released.load_state_dict(layer, bad)
    with pytest.raises(ValueError, match="rate_messages.0.walk_conv.bias: this layer's"):
        released.load_state_dict(DGMN(C, **dict(variant_kwargs("released"), bias=True)), state)
    with pytest.raises(ValueError, match="gamma1: its dgmn_ref counterpart 'fusion.gamma'"):
        released.load_state_dict(DGMN(C, **dict(variant_kwargs("released"), fusion="sum")), state)
    with pytest.raises(ValueError, match="num_rates: the released layer has exactly 4"):
        released.load_state_dict(DGMN(C, rates=(1, 2), bias=False, fusion="residual"), state)


def test_released_state_dict_round_trips():
    module = make_transcription()
    layer = dgmn_from(module, "reference", bug=False)
    back = released.released_state_dict(layer)
    assert back.keys() == module.state_dict().keys()
    for key, value in module.state_dict().items():
        assert torch.equal(back[key], value), key


def test_load_stage_from_a_detector_checkpoint():
    """A maskrcnn_benchmark checkpoint: DDP prefix, res5 bottlenecks with a dw_block each."""
    blocks = [make_transcription(seed=s, fixed=False) for s in range(3)]
    model = {"module.backbone.body.layer4.0.conv1.weight": torch.zeros(4, 4, 1, 1)}
    model["module.backbone.body.layer3.5.conv2.weight"] = torch.zeros(4, 4, 3, 3)
    for i, block in enumerate(blocks):
        for key, value in block.state_dict().items():
            model[f"module.backbone.body.layer4.{i}.dw_block.{key}"] = value
    checkpoint = {"model": model, "iteration": 90000}

    assert sorted(released.dw_blocks(checkpoint)) == [
        f"backbone.body.layer4.{i}.dw_block" for i in range(3)
    ]
    layers = released.load_stage(checkpoint, "layer4", released_att4_bug=True)
    assert list(layers) == ["0", "1", "2"]
    x = features()
    for block, layer in zip(blocks, layers.values(), strict=True):
        assert layer.rates == (1, 4, 8, 12) and layer.rate_messages[3].affinity_from_filters
        torch.testing.assert_close(layer.double()(x), block(x)[0], rtol=0, atol=TOL)

    with pytest.raises(ValueError, match=r"no dw_block in 'layer3'.*\['layer4'\]"):
        released.load_stage(checkpoint, "layer3", released_att4_bug=True)
    model["module.backbone.body.layer4.1.dw_block.gamma2"] = torch.ones(2)
    with pytest.raises(ValueError, match=r"layer4.1.dw_block.gamma2: expected shape \(1,\)"):
        released.load_stage(checkpoint, "layer4", released_att4_bug=False)
