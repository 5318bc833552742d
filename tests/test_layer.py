"""The DGMN layer: shapes, devices, dtypes, ablation switches, gradients, baselines."""

from __future__ import annotations

import pytest
import torch

from dgmn_ref import (
    ASPP,
    DGMN,
    PAPER_VARIANTS,
    DeformableMessagePassing,
    NonLocal2d,
    NonLocalHead,
    variant_kwargs,
)
from dgmn_ref import functional as D

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("height,width", [(7, 9), (8, 6), (1, 5), (13, 13)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layer_keeps_shape_odd_and_even(height, width, dtype):
    torch.manual_seed(0)
    layer = DGMN(8, rates=(1, 2, 4), groups=2).to(dtype)
    out = layer(randn(2, 8, height, width, dtype=dtype))
    assert out.shape == (2, 8, height, width) and out.dtype == dtype
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("device", DEVICES + ["meta"])
def test_layer_runs_on_the_inputs_device(device):
    layer = DGMN(8, rates=(1, 3), groups=4).to(device)
    out = layer(torch.randn(1, 8, 5, 6, device=device))
    assert out.device.type == device and out.shape == (1, 8, 5, 6)


def test_batch_of_zero():
    layer = DGMN(4, rates=(1,), groups=2).eval()
    assert layer(torch.randn(0, 4, 5, 5)).shape == (0, 4, 5, 5)


@pytest.mark.parametrize("name", sorted(PAPER_VARIANTS))
def test_every_paper_row_is_constructible_and_runs(name):
    torch.manual_seed(0)
    layer = DGMN(8, **variant_kwargs(name))
    out, states = layer.forward_with_states(torch.randn(1, 8, 6, 7))
    assert out.shape == (1, 8, 6, 7)
    kwargs = PAPER_VARIANTS[name]
    assert [s.rate for s in states] == list(kwargs["rates"])
    for s in states:
        torch.testing.assert_close(s.affinity.sum(1), torch.ones(1, 6, 7))
        if not kwargs.get("dynamic_sampling", True):
            assert not s.walks.any()


def test_switches_decide_the_parameters():
    full = DGMN(16, rates=(1, 2))
    assert all(m.walk_conv is not None and m.predictor.out_channels == 4 * 9 + 9 for m in
               full.rate_messages)  # fmt: skip
    da = DGMN(16, **variant_kwargs("da"))
    (dmc,) = da.rate_messages
    assert dmc.walk_conv is None and dmc.predictor.out_channels == 9
    assert dmc.static_weights.shape == (4, 9) and dmc.static_affinity is None
    base = DGMN(16, **variant_kwargs("base"))
    assert base.rate_messages[0].predictor is None
    g0 = DGMN(16, **variant_kwargs("coco_da_g0"))
    assert all(m.static_weights is None for m in g0.rate_messages)


def test_zero_walk_init_starts_at_uniform_sampling():
    layer = DGMN(8, rates=(1, 2))
    _, states = layer.forward_with_states(torch.randn(1, 8, 5, 5))
    assert all(not s.walks.any() for s in states)


def test_layer_equals_its_parts():
    """H = relu(BN(W [F, M_1..M_S])) with M_q = dynamic_message of eq. 4-7."""
    torch.manual_seed(0)
    layer = DGMN(8, rates=(1, 3), groups=2).eval()
    for dmc in layer.rate_messages:  # non-trivial walks and predictions
        torch.nn.init.normal_(dmc.walk_conv.weight, std=0.3)
        torch.nn.init.normal_(dmc.predictor.weight, std=0.3)
    f = randn(2, 8, 6, 5)
    messages = []
    for dmc in layer.rate_messages:
        walks = D.predict_walks(f, dmc.walk_conv.weight, dmc.walk_conv.bias, dmc.rate)
        prediction = D.neighbourhood_conv(
            f, walks, dmc.rate, dmc.predictor.weight, dmc.predictor.bias
        )
        filters, logits = D.split_filters_affinities(prediction, 2, 9)
        affinity = D.normalise_affinity(logits)
        messages.append(D.dynamic_message(f, walks, affinity, filters, dmc.rate))
    fused = layer.fusion.project(torch.cat([f, *messages], 1))
    torch.testing.assert_close(layer(f), torch.relu(layer.fusion.norm(fused)))


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_steps_repeat_message_passing_from_f(impl):
    """T = 2: H^(1) = fusion(F, M(F)), H^(2) = fusion(F, M(H^(1))), the same weights."""
    torch.manual_seed(0)
    layer = DGMN(8, rates=(1, 2), groups=2, fusion="sum", steps=2, impl=impl).eval()
    for dmc in layer.rate_messages:
        torch.nn.init.normal_(dmc.walk_conv.weight, std=0.3)
    with torch.no_grad():
        layer.fusion.alpha.fill_(0.5)
    f = randn(2, 8, 6, 5)
    one = DGMN(8, rates=(1, 2), groups=2, fusion="sum", impl=impl).eval()
    one.load_state_dict(layer.state_dict())

    def step(h):
        messages = [dmc(h).message for dmc in one.rate_messages]
        return one.fusion(f, messages)

    torch.testing.assert_close(layer(f), step(step(f)))
    assert not torch.allclose(layer(f), one(f))  # the second step changes the output


def test_sum_fusion_is_eq_2_and_3():
    torch.manual_seed(0)
    layer = DGMN(4, rates=(1, 2), groups=1, fusion="sum")
    f = randn(1, 4, 5, 5)
    out, states = layer.forward_with_states(f)
    beta, alpha = layer.fusion.beta, layer.fusion.alpha
    expected = torch.relu(f + alpha * (beta[0] * states[0].message + beta[1] * states[1].message))
    torch.testing.assert_close(out, expected)


def test_released_code_switches():
    torch.manual_seed(0)
    layer = DGMN(8, rates=(1,), groups=2, filter_norm="softmax", affinity_norm="sigmoid")
    torch.nn.init.normal_(layer.rate_messages[0].predictor.weight, std=0.5)
    _, (state,) = layer.forward_with_states(randn(1, 8, 5, 5))
    torch.testing.assert_close(state.weights.sum(2), torch.ones(1, 2, 5, 5))
    assert (state.affinity > 0).all() and (state.affinity < 1).all()
    assert not torch.allclose(state.affinity.sum(1), torch.ones(1, 5, 5))


def test_gradcheck_tiny_layer_float64():
    torch.manual_seed(0)
    layer = DGMN(4, rates=(1, 2), groups=2, fusion="sum").double()
    for dmc in layer.rate_messages:
        torch.nn.init.normal_(dmc.walk_conv.weight, std=0.2)
        torch.nn.init.constant_(dmc.walk_conv.bias, 0.31)  # off the integer grid
        torch.nn.init.normal_(dmc.predictor.weight, std=0.2)
    params = dict(layer.named_parameters())
    f = randn(1, 4, 4, 4, dtype=torch.float64).requires_grad_()

    def run(f, *values):
        return torch.func.functional_call(layer, dict(zip(params, values, strict=True)), (f,))

    # fast_mode checks a random projection of the full Jacobian (Chen et al.'s trick as
    # implemented by torch): every input and parameter, at a fraction of the cost.
    assert torch.autograd.gradcheck(run, (f, *params.values()), atol=1e-6, fast_mode=True)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(channels=8, rates=(0,)), "rate: expected an int >= 1, got 0"),
        (dict(channels=8, kernel_size=4), "kernel_size: expected an odd int"),
        (dict(channels=6, groups=4), "groups: expected a divisor of channels=6, got 4"),
        (dict(channels=8, groups=0), "G = 0 means no filters"),
        (dict(channels=8, rates=()), "rates: expected at least one"),
        (dict(channels=8, fusion="mean"), "fusion: expected one of"),
        (dict(channels=8, walk_init="random"), "walk_init: expected 'zero' or 'default'"),
        (dict(channels=8, impl="cuda"), "impl: expected one of"),
        (dict(channels=8, affinity_norm="tanh"), "affinity_norm: expected"),
        (dict(channels=0), "channels: expected an int >= 1, got 0"),
        (dict(channels=8, steps=0), "steps: expected an int >= 1"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DGMN(**kwargs)


def test_wrong_input_channels_named():
    with pytest.raises(ValueError, match=r"input: expected shape \(b, 8, h, w\)"):
        DGMN(8, rates=(1,))(torch.randn(1, 4, 5, 5))


def test_unknown_variant_named():
    with pytest.raises(ValueError, match="variant: expected one of"):
        variant_kwargs("da+dw")


# ---------------------------------------------------------------------- baselines
@pytest.mark.parametrize(
    "module",
    [
        lambda: NonLocal2d(8),
        lambda: NonLocalHead(8),
        lambda: ASPP(8, branch_channels=4, rates=(1, 2, 3)),
        lambda: DeformableMessagePassing(8, rates=(1, 2)),
    ],
    ids=["nonlocal", "nonlocal-head", "aspp", "deformable-mp"],
)
@pytest.mark.parametrize("height,width", [(5, 7), (6, 6)])
def test_baselines_keep_shape(module, height, width):
    torch.manual_seed(0)
    out = module()(torch.randn(2, 8, height, width))
    assert out.shape == (2, 8, height, width)


def test_nonlocal_is_eq1_on_the_full_graph():
    torch.manual_seed(0)
    block = NonLocal2d(6).eval()
    torch.nn.init.ones_(block.out[1].weight)
    x = torch.randn(2, 6, 4, 5)
    adjacency = block.affinity(x)
    torch.testing.assert_close(adjacency.sum(-1), torch.ones(2, 20))
    g = block.g.weight[:, :, 0, 0]
    messages = D.message_dense(x, adjacency, g) + block.g.bias[:, None, None]
    torch.testing.assert_close(block(x), x + block.out(messages))


def test_nonlocal_starts_as_identity():
    x = torch.randn(1, 4, 3, 3)
    torch.testing.assert_close(NonLocal2d(4).eval()(x), x)


def test_deformable_mp_zero_walks_is_a_dilated_conv():
    torch.manual_seed(0)
    layer = DeformableMessagePassing(4, rates=(2,), fusion="sum").eval()
    x = torch.randn(1, 4, 6, 6)
    conv = torch.nn.functional.conv2d(x, layer.kernels[0], padding=2, dilation=2)
    torch.testing.assert_close(layer(x), torch.relu(x + layer.fusion.alpha * conv))


def test_residual_fusion_and_default_walk_init_follow_the_released_code():
    torch.manual_seed(0)
    layer = DGMN(4, rates=(1, 2), groups=1, fusion="residual", walk_init="default")
    f = randn(1, 4, 5, 5)
    out, states = layer.forward_with_states(f)
    assert all(s.walks.any() for s in states)  # random walks from the start
    torch.testing.assert_close(out, f + states[0].message + states[1].message)
