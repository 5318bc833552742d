"""Every equation of dgmn_ref.functional against a slow per-node loop in float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dgmn_ref import functional as D

TOL = dict(atol=1e-10, rtol=1e-10)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


# ------------------------------------------------------------ slow loop references
def loop_bilinear(h: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """h (c, H, W) at the real position (y, x); corners outside the map are zero."""
    _, height, width = h.shape
    y0, x0 = math.floor(y), math.floor(x)
    value = torch.zeros(h.shape[0], dtype=h.dtype)
    for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
        if 0 <= yy < height and 0 <= xx < width:
            value = value + (1 - abs(y - yy)) * (1 - abs(x - xx)) * h[:, yy, xx]
    return value


def loop_dynamic_message(h, walks, affinity, weights, rate):
    b, c, height, width = h.shape
    k = walks.shape[1]
    ks = math.isqrt(k)
    groups = weights.shape[1]
    m = torch.zeros_like(h)
    for bi in range(b):
        for y in range(height):
            for x in range(width):
                for j in range(k):
                    py = y + rate * (j // ks - ks // 2) + walks[bi, j, 0, y, x].item()
                    px = x + rate * (j % ks - ks // 2) + walks[bi, j, 1, y, x].item()
                    sample = loop_bilinear(h[bi], py, px)
                    for ch in range(c):
                        g = ch // (c // groups)
                        m[bi, ch, y, x] += (
                            affinity[bi, j, y, x] * weights[bi, g, j, y, x] * sample[ch]
                        )
    return m


def random_message_args(b=2, c=4, height=5, width=6, groups=2, ks=3, seed=0, scale=3.0):
    k = ks * ks
    h = randn(b, c, height, width, seed=seed)
    walks = scale * randn(b, k, 2, height, width, seed=seed + 1)  # many leave the map
    affinity = D.normalise_affinity(randn(b, k, height, width, seed=seed + 2))
    weights = randn(b, groups, k, height, width, seed=seed + 3)
    return h, walks, affinity, weights


# ------------------------------------------------------------------------ eq. 5
@pytest.mark.parametrize("rate", [1, 2, 3])
@pytest.mark.parametrize("groups,ks", [(1, 3), (2, 3), (4, 3), (2, 5), (4, 1)])
def test_dynamic_message_matches_loop(rate, groups, ks):
    args = random_message_args(groups=groups, ks=ks, seed=rate * 10 + groups)
    expected = loop_dynamic_message(*args, rate)
    torch.testing.assert_close(D.dynamic_message(*args, rate), expected, **TOL)


def test_bilinear_sample_matches_loop_including_outside():
    h = randn(1, 3, 4, 5)
    positions = torch.tensor([[-1.5, 0.3], [-0.5, -0.5], [3.7, 4.2], [1.25, 2.75], [10, 1]])
    positions = positions.double().reshape(1, 5, 2, 1, 1)
    got = D.bilinear_sample(h, positions)[0, :, :, 0, 0]
    for j, (y, x) in enumerate(positions[0, :, :, 0, 0].tolist()):
        torch.testing.assert_close(got[j], loop_bilinear(h[0], y, x), **TOL)
    assert torch.equal(got[4], torch.zeros(3, dtype=torch.float64))  # far outside


def test_zero_walks_uniform_affinity_unit_weights_is_depthwise_average_conv():
    h = randn(2, 8, 7, 6)
    for rate in (1, 2, 5):
        walks = torch.zeros(2, 9, 2, 7, 6, dtype=torch.float64)
        affinity = torch.full((2, 9, 7, 6), 1 / 9, dtype=torch.float64)
        weights = torch.ones(2, 4, 9, 7, 6, dtype=torch.float64)
        kernel = torch.full((8, 1, 3, 3), 1 / 9, dtype=torch.float64)
        expected = F.conv2d(h, kernel, padding=rate, dilation=rate, groups=8)
        torch.testing.assert_close(
            D.dynamic_message(h, walks, affinity, weights, rate), expected, **TOL
        )


def test_integer_walks_are_exact_shifts():
    h = randn(1, 3, 6, 7)
    walks = torch.zeros(1, 1, 2, 6, 7, dtype=torch.float64)
    walks[:, 0, 0], walks[:, 0, 1] = 2.0, -1.0  # two rows down, one column left
    samples = D.sample_neighbours(h, walks, rate=1)[:, 0]
    expected = torch.zeros_like(h)
    expected[:, :, :-2, 1:] = h[:, :, 2:, :-1]
    assert torch.equal(samples, expected)


def test_sample_neighbours_zero_walks_match_uniform_positions():
    h = randn(1, 2, 5, 5)
    positions = D.uniform_positions(5, 5, rate=2, kernel_size=3, dtype=torch.float64)
    assert positions.shape == (9, 2, 5, 5)
    # neighbour 0 of node (2, 2) at rate 2 is (0, 0); neighbour 5 is (2, 4)
    assert positions[0, :, 2, 2].tolist() == [0.0, 0.0]
    assert positions[5, :, 2, 2].tolist() == [2.0, 4.0]
    samples = D.sample_neighbours(h, torch.zeros(1, 9, 2, 5, 5, dtype=torch.float64), 2)
    assert torch.equal(samples[0, 0, :, 2, 2], h[0, :, 0, 0])
    assert torch.equal(samples[0, 5, :, 2, 2], h[0, :, 2, 4])
    assert torch.equal(samples[0, 4], h[0])  # the centre neighbour is the node itself


def test_uniform_offsets_row_major():
    offsets = D.uniform_offsets(3, rate=6)
    assert offsets.tolist() == [
        [-6, -6], [-6, 0], [-6, 6], [0, -6], [0, 0], [0, 6], [6, -6], [6, 0], [6, 6]
    ]  # fmt: skip


# -------------------------------------------------------------------- eq. 1 and 2
def test_message_dense_matches_loop():
    h = randn(2, 3, 3, 4)
    n = 12
    adjacency = randn(2, n, n, seed=1).softmax(-1)
    weight = randn(5, 3, seed=2)
    got = D.message_dense(h, adjacency, weight)
    nodes = h.reshape(2, 3, n)
    for b in range(2):
        for i in range(n):
            expected = sum(adjacency[b, i, j] * (weight @ nodes[b, :, j]) for j in range(n))
            torch.testing.assert_close(got[b, :, i // 4, i % 4], expected, **TOL)


@pytest.mark.parametrize("rate", [1, 2])
def test_message_local_matches_loop_and_conv(rate):
    h = randn(1, 3, 5, 6)
    weight = randn(9, 4, 3, seed=1)  # k o c
    affinity = randn(1, 9, 5, 6, seed=2)
    got = D.message_local(h, affinity, weight, rate)
    for y in range(5):
        for x in range(6):
            expected = torch.zeros(4, dtype=torch.float64)
            for j in range(9):
                yy, xx = y + rate * (j // 3 - 1), x + rate * (j % 3 - 1)
                if 0 <= yy < 5 and 0 <= xx < 6:
                    expected += affinity[0, j, y, x] * (weight[j] @ h[0, :, yy, xx])
            torch.testing.assert_close(got[0, :, y, x], expected, **TOL)
    # with a constant affinity of one it is exactly a dilated convolution
    kernel = weight.permute(1, 2, 0).reshape(4, 3, 3, 3)
    ones = torch.ones(9, dtype=torch.float64)
    torch.testing.assert_close(
        D.message_local(h, ones, weight, rate),
        F.conv2d(h, kernel, padding=rate, dilation=rate),
        **TOL,
    )


def test_update_is_relu_of_f_plus_alpha_m():
    f, m = randn(2, 3, 4, 4), randn(2, 3, 4, 4, seed=1)
    torch.testing.assert_close(D.update(f, m, 0.5), torch.relu(f + 0.5 * m), **TOL)
    with pytest.raises(ValueError, match="m: expected the shape of f"):
        D.update(f, m[:, :2])


# ------------------------------------------------------------------ eq. 3, 4, 6, 7
def test_multi_rate_message_weights_each_rate():
    messages = [randn(1, 2, 3, 3, seed=s) for s in range(3)]
    beta = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    expected = 0.5 * messages[0] - messages[1] + 2 * messages[2]
    torch.testing.assert_close(D.multi_rate_message(messages, beta), expected, **TOL)
    with pytest.raises(ValueError, match="beta: expected shape \\(3,\\)"):
        D.multi_rate_message(messages, beta[:2])


def test_predict_walks_is_a_dilated_conv_per_node():
    h = randn(1, 4, 6, 6)
    weight, bias = randn(18, 4, 3, 3, seed=1), randn(18, seed=2)
    walks = D.predict_walks(h, weight, bias, rate=2)
    assert walks.shape == (1, 9, 2, 6, 6)
    y, x = 3, 2
    field = D.sample_neighbours(h, torch.zeros(1, 9, 2, 6, 6, dtype=torch.float64), 2)
    v = field[0, :, :, y, x]  # k c: the uniformly sampled field v_i of eq. 4
    w = weight.reshape(9, 2, 4, 9)  # (k p) c (kh kw) -> k p c j
    expected = torch.einsum("kpcj,jc->kp", w, v) + bias.reshape(9, 2)
    torch.testing.assert_close(walks[0, :, :, y, x], expected, **TOL)


def test_neighbourhood_conv_matches_loop_and_conv():
    h = randn(1, 3, 5, 5)
    weight, bias = randn(7, 3, 3, 3, seed=1), randn(7, seed=2)
    walks = 2 * randn(1, 9, 2, 5, 5, seed=3)
    got = D.neighbourhood_conv(h, walks, 1, weight, bias)
    for y, x in ((0, 0), (2, 3), (4, 4)):
        expected = bias.clone()
        for j in range(9):
            py = y + (j // 3 - 1) + walks[0, j, 0, y, x].item()
            px = x + (j % 3 - 1) + walks[0, j, 1, y, x].item()
            expected += weight[:, :, j // 3, j % 3] @ loop_bilinear(h[0], py, px)
        torch.testing.assert_close(got[0, :, y, x], expected, **TOL)
    zero = torch.zeros_like(walks)
    torch.testing.assert_close(
        D.neighbourhood_conv(h, zero, 2, weight, bias),
        F.conv2d(h, weight, bias, padding=2, dilation=2),
        **TOL,
    )


def test_affinities_sum_to_one_and_split_layout():
    prediction = randn(2, 4 * 9 + 9, 3, 5)
    filters, logits = D.split_filters_affinities(prediction, groups=4, num_neighbours=9)
    assert filters.shape == (2, 4, 9, 3, 5) and logits.shape == (2, 9, 3, 5)
    assert torch.equal(filters[:, 1, 2], prediction[:, 9 + 2])
    affinity = D.normalise_affinity(logits)
    torch.testing.assert_close(affinity.sum(1), torch.ones(2, 3, 5, dtype=torch.float64))
    assert (affinity > 0).all()
    only_filters, none = D.split_filters_affinities(prediction[:, :36], 4, 9)
    assert none is None and only_filters.shape == (2, 4, 9, 3, 5)


# ----------------------------------------------------------------------- gradients
def test_gradcheck_dynamic_message_all_inputs():
    h, walks, affinity, weights = random_message_args(b=1, c=4, height=4, width=5, scale=1.5)
    walks = walks + 0.37  # keep away from integer positions, where bilinear has kinks
    inputs = [t.clone().requires_grad_() for t in (h, walks, affinity, weights)]
    assert torch.autograd.gradcheck(lambda *a: D.dynamic_message(*a, 2), inputs)


def test_gradient_wrt_walk_is_nonzero_inside_the_map():
    h = randn(1, 2, 6, 6)
    walks = torch.full((1, 9, 2, 6, 6), 0.3, dtype=torch.float64, requires_grad=True)
    affinity = torch.full((1, 9, 6, 6), 1 / 9, dtype=torch.float64)
    m = D.dynamic_message(h, walks, affinity, torch.ones(1, 1, 9, 6, 6).double(), 1)
    m.sum().backward()
    assert walks.grad[0, :, :, 2:4, 2:4].abs().min() > 0


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: {**a, "h": a["h"][0]}, r"h: expected 4 dimensions"),
        (lambda a: {**a, "walks": a["walks"][:, :, :1]}, r"walks: expected shape \(b, k, 2"),
        (lambda a: {**a, "walks": a["walks"][:, :4]}, r"walks: expected K = kernel_size\*\*2"),
        (lambda a: {**a, "affinity": a["affinity"][:1]}, r"affinity: expected shape"),
        (lambda a: {**a, "weights": a["weights"][:, :, :, :2]}, r"weights: expected shape"),
        (
            lambda a: {**a, "weights": torch.ones(2, 3, 9, 5, 6).double()},
            r"dividing C = 4, got G = 3",
        ),
        (lambda a: {**a, "rate": 0}, r"rate: expected an int >= 1, got 0"),
        (lambda a: {**a, "rate": 1.5}, r"rate: expected an int >= 1, got 1.5"),
        (lambda a: {**a, "h": a["h"].long()}, r"h: expected a floating-point tensor"),
        (lambda a: {**a, "affinity": a["affinity"][:, :, :2]}, r"affinity: expected shape"),
    ],
)
def test_dynamic_message_rejects_bad_input(mutate, match):
    h, walks, affinity, weights = random_message_args(groups=2)
    args = dict(h=h, walks=walks, affinity=affinity, weights=weights, rate=1)
    with pytest.raises(ValueError, match=match):
        D.dynamic_message(**mutate(args))


def test_even_kernel_size_rejected():
    h = randn(1, 4, 5, 5)
    args = (torch.zeros(1, 4, 2, 5, 5).double(), torch.ones(1, 4, 5, 5).double())
    with pytest.raises(ValueError, match="odd kernel_size"):
        D.dynamic_message(h, args[0], args[1], torch.ones(1, 1, 4, 5, 5).double(), 1)
    with pytest.raises(ValueError, match="kernel_size: expected an odd int >= 1, got 4"):
        D.uniform_positions(5, 5, 1, kernel_size=4)


def test_float32_matches_float64():
    args64 = random_message_args()
    args32 = [t.float() for t in args64]
    torch.testing.assert_close(
        D.dynamic_message(*args32, 2).double(), D.dynamic_message(*args64, 2), atol=1e-5, rtol=1e-5
    )
