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
(``K * o <= 4 c``, the case of DGMN's filter/affinity predictor: K o = 9 * 45 = 405 for
c = 512 at G = 4)
we project first with one matrix product and sample the ``o``-wide rows. Otherwise
(e.g. the deformable baseline, o = c) we sample first, as many neighbours at once as fit
in :data:`SAMPLE_BYTES`: on a large map one at a time under
:func:`torch.utils.checkpoint.checkpoint`, so only one ``b c h w`` sample is alive at once
and none is saved; on a small map all K in one kernel (fewer, larger kernels win there).

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

# The layer reads all its equations from one namespace, this module or functional; these
# three have no faster form and are the reference's own.
from dgmn_ref.functional import normalise_affinity, predict_walks, split_filters_affinities

__all__ = [
    "neighbourhood_conv",
    "dynamic_message",
    "bilinear_taps",
    "normalise_affinity",
    "predict_walks",
    "split_filters_affinities",
]


def bilinear_taps(walks: Tensor, rate: int, height: int, width: int) -> tuple[Tensor, Tensor]:
    r"""Where eq. (5)'s sampler reads and with which weights, without touching features.

    Neighbour k of node (y, x) sits at the uniform position of eq. (3) plus its walk
    (eq. 4); its bilinear sample is :math:`\sum_f \beta_f h[\mathrm{index}_f]` over the four
    surrounding pixels. A corner outside the map gets weight 0 (and a clamped, valid index).
    The arithmetic is :func:`dgmn_ref.functional.bilinear_corners`, the reference's own, so
    positions, floors and weights are bit-identical to it, and so are their gradients.

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
    index, beta = functional.bilinear_corners(y, x, height, width)
    return rearrange(index, "f b k h w -> b k f h w"), rearrange(beta, "f b k h w -> b k f h w")


class GatherSum(torch.autograd.Function):
    r"""``out[n, g] = sum_e coefficient[n, g, e] * table[index[n, e], g]``: the fused kernel.

    Every output row is a weighted sum of E table rows; the G channel groups of a row
    share the row index but have their own weights (eq. 5's group filters). Forward is
    one :func:`~torch.nn.functional.embedding_bag` (``mode="sum"``, one bag per
    ``(n, g)``). Backward walks the E columns one at a time, so no ``n e g c`` tensor
    exists, and touches whole ``g c`` rows:

    * ``grad_table[index[n, e]] += coefficient[n, :, e] * grad_out[n]`` (``index_add_``);
    * ``grad_coefficient[n, g, e] = <grad_out[n, g], table[index[n, e], g]>``.

    (PyTorch's own embedding_bag backward sorts the indices and computes the second line
    with a scalar loop: several times slower on CPU.)

    Args:
        table: ``t g c``.
        index: ``n e``, int32 or int64 rows of the table.
        coefficient: ``n g e``, the table's dtype.

    Returns:
        ``n g c``.
    """

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor, coefficient: Tensor) -> Tensor:
        ctx.save_for_backward(table, index, coefficient)
        n, groups, _ = coefficient.shape
        group = torch.arange(groups, device=index.device, dtype=index.dtype)
        rows = rearrange(index, "n e -> n 1 e") * groups + rearrange(group, "g -> 1 g 1")
        out = F.embedding_bag(
            rearrange(rows, "n g e -> (n g) e"),
            rearrange(table, "t g c -> (t g) c"),
            per_sample_weights=rearrange(coefficient, "n g e -> (n g) e"),
            mode="sum",
        )
        return rearrange(out, "(n g) c -> n g c", g=groups)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, None, Tensor | None]:
        table, index, coefficient = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_table = grad_coefficient = None
        if ctx.needs_input_grad[0]:
            grad_table = _scatter_rows(grad_out, index, coefficient, table.shape[0])
        if ctx.needs_input_grad[2]:
            grad_coefficient = _row_dots(grad_out, index, table)
        return grad_table, None, grad_coefficient


# neighbourhood_conv projects first while the K projected maps are at most this many
# times as wide as h (the projection is what autograd keeps; K = 9 would be the reference)
PROJECT_FIRST_WIDTH = 4

# neighbourhood_conv's sample-first branch samples as many neighbours at once as fit here
SAMPLE_BYTES = 2**22

# Work on blocks of nodes whose gathered rows take about this many bytes (cache-sized).
BLOCK_BYTES = 2**21


def _row_dots(grad_out: Tensor, index: Tensor, table: Tensor) -> Tensor:
    """``dots[n, g, e] = <grad_out[n, g], table[index[n, e], g]>``, ``n g e``.

    Node block by node block, so the gathered ``block e g c`` rows stay in cache and
    nothing ``n e g c`` exists.
    """
    n, e = index.shape
    groups, width = table.shape[1:]
    dots = grad_out.new_empty(n, groups, e)
    block = max(1, BLOCK_BYTES // (e * groups * width * table.element_size()))
    picked = table.new_empty(min(block, n) * e, groups, width)
    for start in range(0, n, block):
        stop = min(start + block, n)
        rows = picked[: (stop - start) * e]
        torch.index_select(table, 0, index[start:stop].reshape(-1), out=rows)
        rows = rearrange(rows, "(n e) g c -> n e g c", e=e)
        rows.mul_(rearrange(grad_out[start:stop], "n g c -> n 1 g c"))
        dots[start:stop] = rearrange(rows.sum(dim=-1), "n e g -> n g e")
    return dots


def _scatter_rows(grad_out: Tensor, index: Tensor, coefficient: Tensor, rows: int) -> Tensor:
    """``grad_table[j, g] = sum_{(n, e): index[n, e] = j} coefficient[n, g, e] grad_out[n, g]``.

    The transpose of the forward gather, computed as a gather too: sort the ``(n, e)``
    entries by their table row, then one embedding_bag per group with one bag per row.
    """
    n, e = index.shape
    groups = grad_out.shape[1]
    flat = index.reshape(-1)
    order = torch.sort(flat, stable=True).indices
    counts = torch.bincount(flat, minlength=rows)
    offsets = torch.cumsum(counts, 0) - counts
    source = torch.div(order, e, rounding_mode="floor")  # the node n of each sorted entry
    grad_table = grad_out.new_empty(rows, groups, grad_out.shape[2])
    weights = rearrange(coefficient, "n g e -> g (n e)")
    for g in range(groups):
        grad_table[:, g] = F.embedding_bag(
            source,
            grad_out[:, g].contiguous(),
            offsets,
            per_sample_weights=weights[g][order],
            mode="sum",
        )
    return grad_table


def gather_sum(table: Tensor, index: Tensor, coefficient: Tensor) -> Tensor:
    """:class:`GatherSum`, index as int32 when it fits, the coefficient in the table's dtype."""
    if table.shape[-1] == 0:
        # zero channels (embedding_bag refuses them): an empty result, still in the graph
        return rearrange(coefficient.sum(-1).to(table.dtype), "n g -> n g 1")[..., :0]
    index = index.to(_index_dtype(table.shape[0] * table.shape[1])).contiguous()
    return GatherSum.apply(table.contiguous(), index, coefficient.to(table.dtype).contiguous())


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
    messages = gather_sum(
        rearrange(h, "b (g c) h w -> (b h w) g c", g=groups),
        rearrange(_batch_rows(index), "b k f h w -> (b h w) (k f)"),
        rearrange(coefficient, "b h w g k f -> (b h w) g (k f)"),
    )
    return rearrange(messages, "(b h w) g c -> b (g c) h w", b=b, h=height, w=width)


def _batch_rows(index: Tensor) -> Tensor:
    """Pixel indices ``b k f h w`` into one image -> rows of the ``(b h w)`` table."""
    b, height, width = index.shape[0], index.shape[-2], index.shape[-1]
    first = torch.arange(b, device=index.device) * (height * width)
    return index + rearrange(first, "b -> b 1 1 1 1")


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
    """A chunk of j neighbours of eq. (6), sample first: ``sum_k (sum_f beta_f h_f) W_k^T``.

    ``table`` is h as ``(b h w) 1 c`` rows, ``index`` / ``beta`` the ``(b h w) j f`` /
    ``(b h w) j f`` corners of these neighbours, ``kernel`` their ``j o c`` matrices.
    Returns ``(b h w) o``; the ``(b h w) j c`` samples exist only inside this call.
    """
    j = index.shape[1]
    samples = gather_sum(
        table,
        rearrange(index, "n j f -> (n j) f"),
        rearrange(beta, "n j f -> (n j) 1 f"),
    )
    samples = rearrange(samples, "(n j) 1 c -> n j c", j=j)
    return einsum(samples, kernel, "n j c, j o c -> n o")


def neighbourhood_conv(
    h: Tensor, walks: Tensor, rate: int, weight: Tensor, bias: Tensor | None = None
) -> Tensor:
    r"""Eq. (6): a ``ks x ks`` convolution over the walked neighbourhood; same contract.

    .. math:: \mathrm{out}_{b,o,i} = \mathrm{bias}_o + \sum_k \sum_f \beta_{b,k,f,i}
              \,(W_k h)_{b,o,\mathrm{idx}(b,k,f,i)}

    Project first (one matrix product to the ``K * o`` projected rows, then one
    embedding_bag of ``4 K`` rows per node) when ``K * o <= 4 c``; otherwise sample first,
    as many neighbours at a time as fit in :data:`SAMPLE_BYTES` (one on a large map),
    recomputed in backward (:func:`torch.utils.checkpoint`).
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
    rows = _batch_rows(index)
    kernel = rearrange(weight, "o c kh kw -> (kh kw) o c")

    if k * o <= PROJECT_FIRST_WIDTH * c:
        # project first: table row ((b h w) k) holds (W_k h) at that pixel, o wide
        projected = einsum(h, kernel, "b c h w, k o c -> b h w k o")
        k_rows = rows * k + rearrange(torch.arange(k, device=h.device), "k -> 1 k 1 1 1")
        out = gather_sum(
            rearrange(projected, "b h w k o -> (b h w k) 1 o"),
            rearrange(k_rows, "b k f h w -> (b h w) (k f)"),
            rearrange(beta, "b k f h w -> (b h w) 1 (k f)"),
        )
        out = rearrange(out, "n 1 o -> n o")
    else:
        # sample first, as many neighbours at once as fit in SAMPLE_BYTES (all K on a small
        # map: few large kernels; one at a time on a large one: one b c h w sample alive)
        table = rearrange(h, "b c h w -> (b h w) 1 c")
        rows = rearrange(rows, "b k f h w -> (b h w) k f")
        taps = rearrange(beta, "b k f h w -> (b h w) k f")
        chunk = max(1, min(k, SAMPLE_BYTES // max(1, table.numel() * h.element_size())))
        # recomputed in backward unless all K samples fit in SAMPLE_BYTES (then kept)
        recompute = torch.is_grad_enabled() and chunk < k
        term = _checkpointed if recompute else _sample_project
        out = 0
        for j in range(0, k, chunk):
            part = slice(j, j + chunk)
            out = out + term(table, rows[:, part], taps[:, part], kernel[part])
    if bias is not None:
        out = out + bias.to(out.dtype)
    return rearrange(out, "(b h w) o -> b o h w", b=b, h=height, w=width)


def _checkpointed(table: Tensor, index: Tensor, beta: Tensor, kernel: Tensor) -> Tensor:
    """:func:`_sample_project` recomputed in backward: autograd keeps no ``b c h w`` sample."""
    return checkpoint(_sample_project, table, index, beta, kernel, use_reentrant=False)
