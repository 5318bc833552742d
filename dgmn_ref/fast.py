"""Fast equivalents of the two expensive DGMN equations (Zhang et al., CVPR 2020, sec. 3).

:func:`dgmn_ref.functional.neighbourhood_conv` (eq. 6) and
:func:`dgmn_ref.functional.dynamic_message` (eq. 5 with eq. 6-7) read the walked
neighbourhood by materialising every sampled neighbour, a ``b k c h w`` tensor that
autograd then keeps: K = 9 times the feature map per sampling rate. The functions here
have the same signatures and the same semantics (tested equal to float32 / float64
rounding, gradients included) but never build that tensor, in forward or in what
autograd saves.

The idea: bilinear sampling (eq. 5) is a weighted sum of four map pixels, so a message

.. math:: m_i = \\sum_{k} A_{i,k}\\, w_{g,k,i} \\sum_{f \\in \\text{corners}} \\beta_{k,f,i}\\,
          h_{\\mathrm{idx}(k, f, i)}

is, for every node i and channel group g, a weighted sum of ``4 K`` *rows* of the map
(``c / g`` channels each) with per-row scalars. That is exactly what
:func:`torch.nn.functional.embedding_bag` computes (``mode="sum"`` with
``per_sample_weights``) in one fused gather-multiply-accumulate, whose backward is a fused
scatter-add for the map and a row-dot-product for the scalars. Only ``b h w (g k f)``
indices and scalars (no channel axis) are kept for backward; the gradients of the walks,
affinities and filters flow through the scalars with ordinary autograd.

For eq. 6 the matrix transformation commutes with sampling, ``W_k (sum_f beta_f h_f) =
sum_f beta_f (W_k h)_f``: when the projected map ``W_k h`` for all k is no wider than h
(``K * o <= c``, the case of DGMN's filter/affinity predictor: o = G K + K = 45 < 512 / 9)
we project first with one matrix product and sample the ``o``-wide rows. Otherwise
(e.g. the deformable baseline, o = c) we sample first, one neighbour at a time under
:func:`torch.utils.checkpoint.checkpoint`, so only one ``b c h w`` sample is alive at once
and none is saved.

Axis letters as in :mod:`dgmn_ref.functional`, plus ``f``: the four bilinear corners
(top-left, top-right, bottom-left, bottom-right).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from dgmn_ref import functional

__all__ = ["neighbourhood_conv", "dynamic_message", "bilinear_taps"]

# The four corners of a bilinear sample, (row step, column step), in the reference order.
CORNERS = ((0, 0), (0, 1), (1, 0), (1, 1))


def bilinear_taps(walks: Tensor, rate: int, height: int, width: int) -> tuple[Tensor, Tensor]:
    r"""Where eq. (5)'s sampler reads and with which weights, without touching features.

    Neighbour k of node (y, x) sits at the uniform position of eq. (3) plus its walk
    (eq. 4); its bilinear sample is :math:`\sum_f \beta_f h[\mathrm{index}_f]` over the four
    surrounding pixels. A corner outside the map gets weight 0 (and a clamped, valid index).
    The arithmetic is that of :func:`dgmn_ref.functional.bilinear_sample`, so positions,
    floors and weights are bit-identical to the reference, and so are their gradients.

    Args:
        walks: ``b k p h w`` in pixels (p = 2: dy, dx).
        rate: the sampling rate rho.
        height, width: the size of the sampled map (the nodes are its pixels).

    Returns:
        ``(index, beta)``, both ``b k f h w``: ``index`` the flat pixel ``row * width + col``
        (int64) of each corner, ``beta`` its bilinear weight (differentiable in the walks),
        in ``float32`` or wider (positions above 256 pixels do not fit a bfloat16).
    """
    ks = functional.kernel_size_of(walks.shape[1])
    dtype = torch.promote_types(walks.dtype, torch.float32)
    uniform = functional.uniform_positions(
        height, width, rate, ks, device=walks.device, dtype=dtype
    )
    y, x = (uniform + walks.to(dtype)).unbind(dim=2)  # b k h w
    y0, x0 = torch.floor(y), torch.floor(x)
    fy, fx = y - y0, x - x0
    row_weights, col_weights = (1 - fy, fy), (1 - fx, fx)
    indices, betas = [], []
    for dy, dx in CORNERS:
        rows, cols = (y0 + dy).long(), (x0 + dx).long()
        inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
        indices.append(rows.clamp(0, height - 1) * width + cols.clamp(0, width - 1))
        betas.append(row_weights[dy] * col_weights[dx] * inside)
    return torch.stack(indices, dim=2), torch.stack(betas, dim=2)


def _index_dtype(rows: int) -> torch.dtype:
    """int32 indices when they fit: half the memory of what embedding_bag keeps."""
    return torch.int32 if rows < 2**31 else torch.int64


def dynamic_message(
    h: Tensor, walks: Tensor, affinity: Tensor, weights: Tensor, rate: int
) -> Tensor:
    r"""Eq. (5) with eq. (6-7)'s filters and affinities; same contract as the reference.

    .. math:: m_{b,c,i} = \sum_{k} \sum_{f} A'_{b,k,i}\, w_{b,g(c),k,i}\, \beta_{b,k,f,i}\,
              h_{b,c,\mathrm{idx}(b,k,f,i)}

    computed as one :func:`~torch.nn.functional.embedding_bag` over a table of
    ``c / g``-wide rows of h (one bag per node and group, ``4 K`` rows per bag). See
    :func:`dgmn_ref.functional.dynamic_message` for the arguments, their shapes and the
    errors raised; the result is equal to it up to float rounding, gradients included.

    Under autocast the features keep h's dtype and positions stay in float32 or wider.

    Example:
        >>> h = torch.randn(1, 8, 5, 5)
        >>> walks = torch.zeros(1, 9, 2, 5, 5)
        >>> affinity = torch.full((1, 9, 5, 5), 1 / 9)
        >>> weights = torch.ones(1, 4, 9, 5, 5)
        >>> dynamic_message(h, walks, affinity, weights, rate=2).shape
        torch.Size([1, 8, 5, 5])
    """
    _, groups = functional.check_message_args(h, walks, affinity, weights, rate)
    b, c, height, width = h.shape
    index, beta = bilinear_taps(walks, rate, height, width)

    # one scalar per (node, group, neighbour, corner): A'_k * w_{g,k} * beta_{k,f}
    scale = torch.promote_types(beta.dtype, torch.promote_types(affinity.dtype, weights.dtype))
    coefficient = einsum(
        affinity.to(scale),
        weights.to(scale),
        beta.to(scale),
        "b k h w, b g k h w, b k f h w -> b h w g k f",
    )
    # table row of (batch, pixel, group): ((b * h * w) + pixel) * g + group
    pixel = index + rearrange(torch.arange(b, device=h.device) * height * width, "b -> b 1 1 1 1")
    group = torch.arange(groups, device=h.device)
    rows = rearrange(pixel, "b k f h w -> b h w 1 k f") * groups + rearrange(
        group, "g -> 1 1 1 g 1 1"
    )
    table = rearrange(h, "b (g c) h w -> (b h w g) c", g=groups)
    messages = F.embedding_bag(
        rearrange(rows, "b h w g k f -> (b h w g) (k f)").to(_index_dtype(table.shape[0])),
        table,
        per_sample_weights=rearrange(coefficient, "b h w g k f -> (b h w g) (k f)").to(
            table.dtype
        ),
        mode="sum",
    )
    return rearrange(messages, "(b h w g) c -> b (g c) h w", b=b, h=height, w=width)


def _check_conv_args(h: Tensor, walks: Tensor, weight: Tensor, bias: Tensor | None) -> int:
    """Validate :func:`neighbourhood_conv`'s arguments; return K. ValueError naming them."""
    functional._check_float("h", h)
    functional._check_rank("h", h, 4, "b c h w")
    functional._check_float("walks", walks)
    functional._check_rank("walks", walks, 5, "b k p h w")
    functional._check_float("weight", weight)
    functional._check_rank("weight", weight, 4, "o c kh kw")
    b, c, height, width = h.shape
    k = walks.shape[1]
    functional.kernel_size_of(k)
    if tuple(walks.shape) != (b, k, 2, height, width):
        raise ValueError(
            f"walks: expected shape {(b, k, 2, height, width)} to match h {tuple(h.shape)}, "
            f"got {tuple(walks.shape)}"
        )
    if weight.shape[1] != c or weight.shape[2] * weight.shape[3] != k:
        raise ValueError(
            f"weight: expected shape (o, {c}, kh, kw) with kh * kw = K = {k}, "
            f"got {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias: expected shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    return k


def _sample_project(table: Tensor, index: Tensor, beta: Tensor, kernel: Tensor) -> Tensor:
    """One neighbour of eq. (6), sample first: ``(sum_f beta_f h_f) W_k^T``, ``(b h w) o``.

    ``table`` is h as ``(b h w) c`` rows, ``index`` / ``beta`` the ``(b h w) f`` corners of
    this neighbour (index already offset by batch), ``kernel`` its ``o c`` matrix.
    """
    sample = F.embedding_bag(index, table, per_sample_weights=beta.to(table.dtype), mode="sum")
    return sample @ kernel.t()


def neighbourhood_conv(
    h: Tensor, walks: Tensor, rate: int, weight: Tensor, bias: Tensor | None = None
) -> Tensor:
    r"""Eq. (6): a ``ks x ks`` convolution over the walked neighbourhood; same contract.

    .. math:: \mathrm{out}_{b,o,i} = \mathrm{bias}_o + \sum_k \sum_f \beta_{b,k,f,i}
              \,(W_k h)_{b,o,\mathrm{idx}(b,k,f,i)}

    Project first (one matrix product to the ``K * o`` projected rows, then one
    embedding_bag of ``4 K`` rows per node) when ``K * o <= c``; otherwise sample first,
    one neighbour at a time, recomputed in backward (:func:`torch.utils.checkpoint`).
    Either way nothing ``b k c h w`` is built or saved. See
    :func:`dgmn_ref.functional.neighbourhood_conv` for the arguments.

    Example:
        >>> h = torch.randn(1, 8, 5, 5)
        >>> neighbourhood_conv(h, torch.zeros(1, 9, 2, 5, 5), 2, torch.randn(6, 8, 3, 3)).shape
        torch.Size([1, 6, 5, 5])
    """
    k = _check_conv_args(h, walks, weight, bias)
    functional.check_rate(rate)
    b, c, height, width = h.shape
    o = weight.shape[0]
    index, beta = bilinear_taps(walks, rate, height, width)
    pixel = index + rearrange(torch.arange(b, device=h.device) * height * width, "b -> b 1 1 1 1")
    kernel = rearrange(weight, "o c kh kw -> (kh kw) o c")

    if k * o <= c:
        # project first: table row ((b h w) k) holds (W_k h) at one pixel, o wide
        projected = einsum(h, kernel, "b c h w, k o c -> b h w k o")
        table = rearrange(projected, "b h w k o -> (b h w k) o")
        rows = pixel * k + rearrange(torch.arange(k, device=h.device), "k -> 1 k 1 1 1")
        out = F.embedding_bag(
            rearrange(rows, "b k f h w -> (b h w) (k f)").to(_index_dtype(table.shape[0])),
            table,
            per_sample_weights=rearrange(beta, "b k f h w -> (b h w) (k f)").to(table.dtype),
            mode="sum",
        )
    else:
        table = rearrange(h, "b c h w -> (b h w) c")
        rows = rearrange(pixel, "b k f h w -> k (b h w) f").to(_index_dtype(table.shape[0]))
        taps = rearrange(beta, "b k f h w -> k (b h w) f")
        out = 0
        for j in range(k):
            term = _sample_project
            if torch.is_grad_enabled():
                term = _checkpointed
            out = out + term(table, rows[j], taps[j], kernel[j])
    if bias is not None:
        out = out + bias.to(out.dtype)
    return rearrange(out, "(b h w) o -> b o h w", b=b, h=height, w=width)


def _checkpointed(table: Tensor, index: Tensor, beta: Tensor, kernel: Tensor) -> Tensor:
    """:func:`_sample_project` recomputed in backward: autograd keeps no ``b c h w`` sample."""
    return checkpoint(_sample_project, table, index, beta, kernel, use_reentrant=False)
