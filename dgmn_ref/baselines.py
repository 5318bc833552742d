"""The context modules DGMN is compared with in Table 1a and Table 2.

* :class:`NonLocal2d`: Wang et al., CVPR 2018, embedded-Gaussian block (fully-connected
  graph, eq. 1 with a dense adjacency).
* :class:`NonLocalHead`: the Table 1a "+ Non-local" row: the block followed by a 3x3
  conv-BN-ReLU, as in the segmentation code bases the paper builds on (README, "Table 1a
  reproduced": +2.887M / +72.46G against the paper's +2.88M / +73.33G).
* :class:`DeformableMessagePassing`: sec. 4.1's "deformable message passing" baseline:
  learned walks (eq. 4-5) with a static C x C kernel per neighbour (a deformable
  convolution, eq. 1 with static w_j) and no dynamic filters or affinities.
* :class:`ASPP`: DeepLab v3's atrous spatial pyramid pooling (Chen et al., 2017).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor, nn

from dgmn_ref import functional
from dgmn_ref.layer import MessageFusion, check_impl, message_ops, resolve_impl

__all__ = ["NonLocal2d", "NonLocalHead", "DeformableMessagePassing", "ASPP", "conv_bn_relu"]


def conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1
) -> nn.Sequential:
    """``kernel_size`` conv (no bias, "same" padding) + BatchNorm + ReLU."""
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            padding=dilation * (kernel_size // 2),
            dilation=dilation,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class NonLocal2d(nn.Module):
    r"""Non-local block, embedded Gaussian (Wang et al., 2018, eq. 1-3 there).

    :math:`z_i = W_z \sum_j \mathrm{softmax}_j(\theta(x_i)^T \phi(x_j))\, g(x_j) + x_i`:
    eq. (1) of DGMN on the fully-connected graph, with the affinity computed from the
    features. Costs two N x N x C' matrix products. ``W_z`` ends with a BatchNorm whose
    scale starts at zero, so the block starts as the identity (as in Wang et al.).

    Args:
        channels: C.
        inter_channels: C' of theta, phi, g (default C // 2).
    """

    def __init__(self, channels: int, inter_channels: int | None = None) -> None:
        super().__init__()
        inter = inter_channels or max(channels // 2, 1)
        self.theta = nn.Conv2d(channels, inter, 1)
        self.phi = nn.Conv2d(channels, inter, 1)
        self.g = nn.Conv2d(channels, inter, 1)
        self.out = nn.Sequential(nn.Conv2d(inter, channels, 1), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.out[1].weight)

    def affinity(self, x: Tensor) -> Tensor:
        """The dense adjacency A of the fully-connected graph, ``b n m``, rows sum to 1."""
        theta = rearrange(self.theta(x), "b c h w -> b (h w) c")
        phi = rearrange(self.phi(x), "b c h w -> b c (h w)")
        return torch.bmm(theta, phi).softmax(dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        g = rearrange(self.g(x), "b c h w -> b c (h w)")
        y = einsum(self.affinity(x), g, "b n m, b c m -> b c n")
        y = rearrange(y, "b c (h w) -> b c h w", h=height, w=width)
        return x + self.out(y)


class NonLocalHead(nn.Module):
    """Table 1a's "+ Non-local": :class:`NonLocal2d` then a 3x3 conv-BN-ReLU (C -> C)."""

    def __init__(self, channels: int, inter_channels: int | None = None) -> None:
        super().__init__()
        self.block = NonLocal2d(channels, inter_channels)
        self.conv = conv_bn_relu(channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.block(x))


class DeformableMessagePassing(nn.Module):
    r"""Sec. 4.1's deformable message passing baseline (Tables 1a and 2).

    Per rate rho_q: walks from a ``ks x ks`` conv with dilation rho (eq. 4, zero-init),
    then :math:`M_q = \sum_j \varrho(h_j | V, j, \Delta d_j)\, w_j` with a *static*
    C x C kernel w_j per neighbour (a deformable convolution; eq. 1 with A = 1). No
    dynamic filters or affinities. The messages are fused with F as in :class:`DGMN`.
    """

    def __init__(
        self,
        channels: int,
        rates: Sequence[int] = (1,),
        kernel_size: int = 3,
        fusion: str = "concat",
        impl: str = "reference",
    ) -> None:
        super().__init__()
        self.rates = tuple(functional.check_rate(r) for r in rates)
        ks = functional.check_kernel_size(kernel_size)
        self.impl = check_impl(impl)
        self.walk_convs = nn.ModuleList(
            nn.Conv2d(channels, 2 * ks * ks, ks, padding=r * (ks // 2), dilation=r)
            for r in self.rates
        )
        for conv in self.walk_convs:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.kernels = nn.ParameterList(
            nn.Parameter(torch.empty(channels, channels, ks, ks)) for _ in self.rates
        )
        for kernel in self.kernels:
            nn.init.kaiming_uniform_(kernel, a=5**0.5)
        self.fusion = MessageFusion(channels, len(self.rates), fusion)

    def forward(self, f: Tensor) -> Tensor:
        ops = message_ops(resolve_impl(self.impl, f))
        messages = []
        for rate, walk_conv, kernel in zip(self.rates, self.walk_convs, self.kernels, strict=True):
            walks = functional.predict_walks(f, walk_conv.weight, walk_conv.bias, rate)
            messages.append(ops.neighbourhood_conv(f, walks, rate, kernel))
        return self.fusion(f, messages)


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling of DeepLab v3 (Chen et al., 2017).

    A 1x1 branch, one 3x3 branch per rate, and an image-pooling branch, each to
    ``branch_channels``; concatenated and projected by a 1x1 conv-BN-ReLU to ``channels``.
    At output stride 8 DeepLab v3 uses rates (12, 24, 36).
    """

    def __init__(
        self,
        channels: int,
        branch_channels: int = 256,
        rates: Sequence[int] = (12, 24, 36),
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.branches = nn.ModuleList(
            [conv_bn_relu(channels, branch_channels, 1)]
            + [conv_bn_relu(channels, branch_channels, 3, dilation=r) for r in rates]
        )
        # no BatchNorm on the 1x1 pooled map: it would fail for a batch of one
        self.image_pool = nn.Sequential(nn.Conv2d(channels, branch_channels, 1), nn.ReLU())
        self.project = conv_bn_relu((len(rates) + 2) * branch_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.image_pool(x.mean(dim=(2, 3), keepdim=True))
        pooled = F.interpolate(pooled, size=x.shape[-2:], mode="nearest")
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))
