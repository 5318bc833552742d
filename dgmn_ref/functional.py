"""The equations of DGMN (Zhang et al., CVPR 2020, section 3) as plain functions.

One function per equation, written for reading: every reshape is an einops pattern
and every tensor is named after the paper's symbol. Axis letters are fixed across the
package:

    b batch    c channels    h w rows / columns of the feature map
    n m nodes (n = h*w)      k neighbours (K = kernel_size**2)    g filter groups
    s sampling rates         p the two coordinates of a position (y, x)

Positions and walks are in feature-map pixels, ``[..., 0, ...]`` is the row (y) and
``[..., 1, ...]`` the column (x). Neighbour ``k`` of a ``ks x ks`` kernel sits at row
offset ``k // ks - ks // 2`` and column offset ``k % ks - ks // 2`` (row-major, as in a
convolution kernel), multiplied by the sampling rate.

The faster equivalents of the two expensive functions (:func:`neighbourhood_conv` and
:func:`dynamic_message`) live in :mod:`dgmn_ref.fast` and are tested equal to these.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import einsum, rearrange, repeat
from torch import Tensor

__all__ = [
    "bilinear_corners",
    "message_dense",
    "message_local",
    "update",
    "uniform_offsets",
    "uniform_positions",
    "multi_rate_message",
    "predict_walks",
    "bilinear_sample",
    "sample_neighbours",
    "neighbourhood_conv",
    "split_filters_affinities",
    "normalise_affinity",
    "dynamic_message",
    "check_message_args",
    "check_switch",
]


# --------------------------------------------------------------------------- checks
def _check_float(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")


def _check_rank(name: str, t: Tensor, rank: int, pattern: str) -> None:
    if t.ndim != rank:
        raise ValueError(
            f"{name}: expected {rank} dimensions ({pattern}), got shape {tuple(t.shape)}"
        )


def check_rate(rate: int) -> int:
    """Validate a sampling rate (dilation) rho: an int >= 1."""
    if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
        raise ValueError(f"rate: expected an int >= 1, got {rate!r}")
    return rate


def check_switch(name: str, value: bool) -> bool:
    """Validate an on/off switch (DA, DW, DS of Table 1b): exactly ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected True or False, got {value!r}")
    return value


def check_kernel_size(kernel_size: int) -> int:
    """Validate a kernel size: an odd int >= 1, so that the node itself is a neighbour."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
        raise ValueError(f"kernel_size: expected an odd int >= 1, got {kernel_size!r}")
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size: expected an odd int >= 1, got {kernel_size}")
    return kernel_size


def kernel_size_of(num_neighbours: int, name: str = "walks") -> int:
    """The odd ``ks`` with ``ks * ks == K``; ValueError naming ``name`` otherwise."""
    ks = math.isqrt(num_neighbours)
    if ks * ks != num_neighbours or ks % 2 == 0:
        raise ValueError(
            f"{name}: expected K = kernel_size**2 neighbours with an odd kernel_size "
            f"(1, 9, 25, ...), got K = {num_neighbours}"
        )
    return ks


def check_message_args(
    h: Tensor, walks: Tensor, affinity: Tensor, weights: Tensor, rate: int
) -> tuple[int, int]:
    """Validate the arguments of :func:`dynamic_message`; return ``(kernel_size, groups)``.

    Raises ValueError naming the argument, the value and what was expected.
    """
    for name, t in (("h", h), ("walks", walks), ("affinity", affinity), ("weights", weights)):
        _check_float(name, t)
    _check_rank("h", h, 4, "b c h w")
    _check_rank("walks", walks, 5, "b k p h w")
    _check_rank("affinity", affinity, 4, "b k h w")
    _check_rank("weights", weights, 5, "b g k h w")
    check_rate(rate)
    b, c, height, width = h.shape
    if walks.shape[2] != 2:
        raise ValueError(
            f"walks: expected shape (b, k, 2, h, w) with (dy, dx) on dim 2, "
            f"got shape {tuple(walks.shape)}"
        )
    k = walks.shape[1]
    ks = kernel_size_of(k)
    expected = {
        "walks": (b, k, 2, height, width),
        "affinity": (b, k, height, width),
    }
    for name, t in (("walks", walks), ("affinity", affinity)):
        if tuple(t.shape) != expected[name]:
            raise ValueError(
                f"{name}: expected shape {expected[name]} to match h {tuple(h.shape)} "
                f"and K = {k}, got {tuple(t.shape)}"
            )
    groups = weights.shape[1]
    if groups < 1 or c % groups != 0:
        raise ValueError(
            f"weights: expected a group count G >= 1 dividing C = {c}, got G = {groups}"
        )
    if tuple(weights.shape) != (b, groups, k, height, width):
        raise ValueError(
            f"weights: expected shape {(b, groups, k, height, width)} to match h "
            f"{tuple(h.shape)} and K = {k}, got {tuple(weights.shape)}"
        )
    return ks, groups


# ------------------------------------------------------------------ eq. 1 and eq. 2
def message_dense(h: Tensor, adjacency: Tensor, weight: Tensor | None = None) -> Tensor:
    r"""Eq. (1) on a fully-connected graph: :math:`m_i = \sum_j A_{i,j} h_j w`.

    Every node receives from all N = H*W nodes (the Non-local view), so this costs N^2 C.

    Args:
        h: node features, ``b c h w``.
        adjacency: ``b n m`` with n = m = h*w; row i holds the affinities A[i, :].
        weight: the transformation ``w`` shared by all j, ``c_out c`` (None: identity).

    Returns:
        messages ``b c_out h w``.
    """
    _check_float("h", h)
    _check_rank("h", h, 4, "b c h w")
    _check_float("adjacency", adjacency)
    _check_rank("adjacency", adjacency, 3, "b n m")
    b, _, height, width = h.shape
    n = height * width
    if tuple(adjacency.shape) != (b, n, n):
        raise ValueError(
            f"adjacency: expected shape {(b, n, n)} for h {tuple(h.shape)}, "
            f"got {tuple(adjacency.shape)}"
        )
    nodes = rearrange(h, "b c h w -> b c (h w)")
    if weight is not None:
        nodes = einsum(weight, nodes, "o c, b c m -> b o m")
    messages = einsum(adjacency, nodes, "b n m, b c m -> b c n")
    return rearrange(messages, "b c (h w) -> b c h w", h=height, w=width)


def message_local(h: Tensor, affinity: Tensor, weight: Tensor, rate: int = 1) -> Tensor:
    r"""Eq. (1) on a locally-connected graph: :math:`m_i = \sum_{j \in N(i)} A_{i,j} h_j w_j`.

    The neighbourhood N(i) is the ``ks x ks`` grid around i with spacing ``rate``; each
    neighbour position j has its own C x C transformation ``w_j`` (a convolution kernel).
    With ``affinity`` all ones this is exactly a dilated convolution.

    Args:
        h: ``b c h w``.
        affinity: ``b k h w`` (per node) or ``k`` (shared by all nodes).
        weight: ``k o c``, the transformation w_j of every neighbour position.
        rate: the sampling rate rho (dilation), int >= 1.

    Returns:
        messages ``b o h w``.
    """
    _check_float("weight", weight)
    _check_rank("weight", weight, 3, "k o c")
    k = weight.shape[0]
    b, _, height, width = h.shape
    if affinity.ndim == 1:
        affinity = repeat(affinity, "k -> b k h w", b=b, h=height, w=width)
    walks = h.new_zeros(b, k, 2, height, width)
    neighbours = sample_neighbours(h, walks, rate)
    if tuple(affinity.shape) != (b, k, height, width):
        raise ValueError(
            f"affinity: expected shape {(b, k, height, width)} or ({k},), "
            f"got {tuple(affinity.shape)}"
        )
    return einsum(affinity, weight, neighbours, "b k h w, k o c, b k c h w -> b o h w")


def update(
    f: Tensor,
    m: Tensor,
    alpha: Tensor | float = 1.0,
    activation: Callable[[Tensor], Tensor] = F.relu,
) -> Tensor:
    r"""Eq. (2): :math:`h_i = \sigma(f_i + \alpha^m_i m_i)`.

    Args:
        f: the observation F, ``b c h w``.
        m: the messages, ``b c h w``.
        alpha: the message scale, a scalar or anything broadcastable to ``b c h w``.
        activation: the non-linearity sigma (ReLU in the paper).
    """
    if f.shape != m.shape:
        raise ValueError(f"m: expected the shape of f {tuple(f.shape)}, got {tuple(m.shape)}")
    return activation(f + alpha * m)


# ---------------------------------------------------------------------------- eq. 3
def uniform_offsets(
    kernel_size: int = 3, rate: int = 1, device=None, dtype=torch.float32
) -> Tensor:
    """Offsets of the K = kernel_size**2 uniformly sampled neighbours, ``k p``.

    Row k is ``(rate * (k // ks - ks // 2), rate * (k % ks - ks // 2))``.
    """
    ks = check_kernel_size(kernel_size)
    check_rate(rate)
    steps = torch.arange(ks, device=device, dtype=dtype) - ks // 2
    dy = repeat(steps, "i -> (i j)", j=ks)
    dx = repeat(steps, "j -> (i j)", i=ks)
    return rate * torch.stack([dy, dx], dim=-1)


def uniform_positions(
    height: int,
    width: int,
    rate: int = 1,
    kernel_size: int = 3,
    device=None,
    dtype=torch.float32,
) -> Tensor:
    """Eq. (3)'s uniform sampling: where the K neighbours of every node sit, ``k p h w``.

    ``positions[k, :, y, x]`` is node (y, x) plus the k-th uniform offset at rate rho.
    Some of them fall outside the map; the sampler reads zeros there.
    """
    offsets = uniform_offsets(kernel_size, rate, device=device, dtype=dtype)
    rows = torch.arange(height, device=device, dtype=dtype)
    cols = torch.arange(width, device=device, dtype=dtype)
    grid = torch.stack(
        [repeat(rows, "h -> h w", w=width), repeat(cols, "w -> h w", h=height)], dim=0
    )
    return rearrange(offsets, "k p -> k p 1 1") + rearrange(grid, "p h w -> 1 p h w")


def multi_rate_message(messages: Sequence[Tensor] | Tensor, beta: Tensor) -> Tensor:
    r"""Eq. (3): :math:`m_i = \sum_q \beta_q m^q_i`, the S messages weighted by beta.

    Args:
        messages: S tensors ``b c h w`` (or one tensor ``s b c h w``).
        beta: ``s``, one weight per sampling rate.
    """
    stacked = torch.stack(list(messages)) if not isinstance(messages, Tensor) else messages
    if beta.shape != (stacked.shape[0],):
        raise ValueError(
            f"beta: expected shape ({stacked.shape[0]},), one weight per rate, "
            f"got {tuple(beta.shape)}"
        )
    return einsum(beta, stacked, "s, s b c h w -> b c h w")


# ---------------------------------------------------------------------------- eq. 4
def predict_walks(h: Tensor, weight: Tensor, bias: Tensor | None, rate: int) -> Tensor:
    r"""Eq. (4): :math:`\Delta d^q_j = W^q_{i,j} v^q_i + b^q_{i,j}`, the walks of every node.

    ``v_i^q`` is the uniformly sampled ``ks x ks`` field at rate rho, so the matrix
    transformation is a ``ks x ks`` convolution with dilation rho (sec. 3.5) producing
    2K numbers per node: a (dy, dx) walk for each of the K neighbours.

    Args:
        h: ``b c h w``.
        weight: ``(k p) c kh kw`` with p = 2 (dy, dx interleaved per neighbour).
        bias: ``(k p)`` or None.
        rate: the sampling rate rho.

    Returns:
        walks ``b k p h w`` in feature-map pixels.
    """
    check_rate(rate)
    ks = check_kernel_size(weight.shape[-1])
    walks = F.conv2d(h, weight, bias, padding=rate * (ks // 2), dilation=rate)
    return rearrange(walks, "b (k p) h w -> b k p h w", p=2)


# ---------------------------------------------------------------------------- eq. 5
def bilinear_corners(y: Tensor, x: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    r"""The four pixels around real positions (y, x) and their bilinear weights.

    :math:`\varrho(h | p) = \sum_f \beta_f h[\mathrm{index}_f]` over the corners f =
    top-left, top-right, bottom-left, bottom-right; :math:`\beta` is the product of the
    row and column weights ``1 - frac`` / ``frac``. A corner outside the map gets weight 0
    and a clamped (valid) index. The one copy of this arithmetic: the reference sampler,
    the fast kernels and the figures all call it.

    Args:
        y, x: positions in pixels, any shape ``*``, the same for both.
        height, width: the map's size.

    Returns:
        ``(index, beta)``, both ``f *`` with f = 4: the flat pixel ``row * width + col``
        (int64) and the weight (differentiable in y and x).

    Example:
        >>> index, beta = bilinear_corners(torch.tensor([0.25]), torch.tensor([1.5]), 2, 3)
        >>> index.flatten().tolist(), beta.flatten().tolist()
        ([1, 2, 4, 5], [0.375, 0.375, 0.125, 0.125])
    """
    y0, x0 = torch.floor(y), torch.floor(x)
    fy, fx = y - y0, x - x0
    row_weights, col_weights = (1 - fy, fy), (1 - fx, fx)
    indices, betas = [], []
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        rows, cols = (y0 + dy).long(), (x0 + dx).long()
        inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
        indices.append(rows.clamp(0, height - 1) * width + cols.clamp(0, width - 1))
        betas.append(row_weights[dy] * col_weights[dx] * inside)
    return torch.stack(indices), torch.stack(betas)


def bilinear_sample(h: Tensor, positions: Tensor) -> Tensor:
    r"""Eq. (5)'s sampler :math:`\varrho`: features of h at real-valued positions.

    Bilinear interpolation between the four pixels around each position (Jaderberg et
    al., 2015); a corner outside the map contributes zero. The weights are linear in
    the position, so gradients flow to the positions (and so to the walks).

    Args:
        h: ``b c h w``.
        positions: ``b k p h w``, absolute (y, x) in pixels of h.

    Returns:
        samples ``b k c h w``: ``samples[b, k, :, y, x] = h[b, :, positions[b, k, :, y, x]]``,
        in the wider of the dtypes of h and positions.
    """
    b, c, height, width = h.shape
    y, x = positions.unbind(dim=2)  # b k h w
    dtype = torch.promote_types(h.dtype, positions.dtype)
    nodes = rearrange(h.to(dtype), "b c h w -> b c (h w)")
    samples = nodes.new_zeros(b, c, math.prod(y.shape[1:]))
    indices, betas = bilinear_corners(y, x, height, width)
    for index, beta in zip(indices, betas, strict=True):
        index = repeat(index, "b k h w -> b c (k h w)", c=c)
        weight = rearrange(beta, "b k h w -> b 1 (k h w)")
        samples = samples + weight * nodes.gather(2, index)
    k, out_height, out_width = y.shape[1:]  # named: einops cannot infer k of a 0-size map
    return rearrange(samples, "b c (k h w) -> b k c h w", k=k, h=out_height, w=out_width)


def sample_neighbours(h: Tensor, walks: Tensor, rate: int) -> Tensor:
    r"""Eq. (5): :math:`\varrho(h_j | V, j, \Delta d^q_j)` for all K neighbours of every node.

    The uniform neighbours at rate rho (eq. 3) moved by their walks (eq. 4), then read
    with the bilinear sampler. Zero walks give the uniform (dilated) neighbourhood.

    Args:
        h: ``b c h w``.
        walks: ``b k p h w`` in pixels.
        rate: the sampling rate rho.

    Returns:
        the walked neighbourhood v'_i, ``b k c h w``.
    """
    ks = kernel_size_of(walks.shape[1])
    height, width = h.shape[-2:]
    uniform = uniform_positions(height, width, rate, ks, device=h.device, dtype=walks.dtype)
    return bilinear_sample(h, uniform + walks)


# ------------------------------------------------------------------------ eq. 6 - 7
def neighbourhood_conv(
    h: Tensor, walks: Tensor, rate: int, weight: Tensor, bias: Tensor | None = None
) -> Tensor:
    r"""Eq. (6): :math:`\{w^q_j, A^q_{i,j}\} = W^{k,A}_{i,j} v'^q_i + b^{k,A}_{i,j}`.

    A ``ks x ks`` convolution over the walked neighbourhood v'_i (a deformable
    convolution): one matrix transformation of the K sampled features per node. With
    zero walks it is a dilated ``F.conv2d``.

    Args:
        h: ``b c h w``.
        walks: ``b k p h w``.
        rate: the sampling rate rho.
        weight: ``o c kh kw`` (a conv2d weight, kh * kw = K).
        bias: ``o`` or None.

    Returns:
        ``b o h w``, in h's dtype (computed in the wider of h's and the walks').
    """
    neighbours = sample_neighbours(h, walks, rate)
    kernel = rearrange(weight, "o c kh kw -> o (kh kw) c").to(neighbours.dtype)
    out = einsum(kernel, neighbours, "o k c, b k c h w -> b o h w")
    if bias is not None:
        out = out + rearrange(bias, "o -> 1 o 1 1")
    return out.to(h.dtype)


def split_filters_affinities(
    prediction: Tensor, groups: int, num_neighbours: int
) -> tuple[Tensor | None, Tensor | None]:
    """Split the joint prediction of eq. (6) into filters and affinity logits.

    Channel layout of ``prediction`` (``b o h w``): the first ``G*K`` channels are the
    dynamic filters ``(g k)``, the last K (if present) the affinity logits. No
    non-linearity is applied to the filters (sec. 3.4, "we relax them").

    Returns:
        ``(weights b g k h w or None, affinity_logits b k h w or None)``.
    """
    k = num_neighbours
    filters = prediction[:, : groups * k] if groups else None
    logits = prediction[:, groups * k :]
    if filters is not None:
        filters = rearrange(filters, "b (g k) h w -> b g k h w", g=groups)
    if logits.shape[1] not in (0, k):
        raise ValueError(
            f"prediction: expected G*K or G*K + K channels (G={groups}, K={k}), "
            f"got {prediction.shape[1]}"
        )
    return filters, (logits if logits.shape[1] else None)


def normalise_affinity(logits: Tensor) -> Tensor:
    r"""Eq. (7): :math:`A'^q_{i,j} = \exp(A^q_{i,j}) / \sum_{l \in N_q(i)} \exp(A^q_{i,l})`.

    Softmax over the K neighbours of each node, ``b k h w -> b k h w``.
    """
    return logits.softmax(dim=1)


def dynamic_message(
    h: Tensor, walks: Tensor, affinity: Tensor, weights: Tensor, rate: int
) -> Tensor:
    r"""Eq. (5) with eq. (6-7)'s filters and affinities, for one sampling rate q.

    .. math:: m_i = \sum_{j \in N_q(i)} A'^q_{i,j}\, \varrho(h_j | V, j, \Delta d^q_j)\, w^q_j

    where ``w^q_j`` is a per-node group filter: the C channels form G groups of C/G
    channels sharing one scalar per neighbour (channel c is in group c // (C // G)).

    Args:
        h: ``b c h w``.
        walks: ``b k p h w`` in pixels, ``[:, k, 0]`` = dy (rows), ``[:, k, 1]`` = dx.
        affinity: ``b k h w`` (normally softmax-normalised over k).
        weights: ``b g k h w``, G dividing C.
        rate: the sampling rate rho, int >= 1.

    Returns:
        the message ``b c h w`` in h's dtype (computed in the widest of the inputs' dtypes):
        ``m[b, c, y, x] = sum_k affinity[b, k, y, x] * weights[b, c // (C//G), k, y, x]
        * sample_k[b, c, y, x]``.

    Raises:
        ValueError: wrong ranks, mismatched b/h/w/k, C not divisible by G, even kernel
            size, rate < 1 or non-floating dtypes, naming the argument and value.

    Example:
        >>> h = torch.randn(1, 8, 5, 5)
        >>> walks = torch.zeros(1, 9, 2, 5, 5)
        >>> affinity = torch.full((1, 9, 5, 5), 1 / 9)
        >>> weights = torch.ones(1, 4, 9, 5, 5)
        >>> dynamic_message(h, walks, affinity, weights, rate=2).shape
        torch.Size([1, 8, 5, 5])
    """
    _, groups = check_message_args(h, walks, affinity, weights, rate)
    neighbours = sample_neighbours(h, walks, rate)
    neighbours = rearrange(neighbours, "b k (g c) h w -> b k g c h w", g=groups)
    # computed in the widest dtype of the inputs; the message has h's dtype (as fast.py's)
    dtype = torch.promote_types(
        neighbours.dtype, torch.promote_types(affinity.dtype, weights.dtype)
    )
    messages = einsum(
        affinity.to(dtype),
        weights.to(dtype),
        neighbours.to(dtype),
        "b k h w, b g k h w, b k g c h w -> b g c h w",
    )
    return rearrange(messages, "b g c h w -> b (g c) h w").to(h.dtype)
