"""The reference equations compiled by :func:`torch.compile`: a third implementation.

``impl="compiled"`` reads the same einops code as ``impl="reference"``
(:mod:`dgmn_ref.functional`) but runs :func:`dgmn_ref.functional.neighbourhood_conv` (eq. 6)
and :func:`dgmn_ref.functional.dynamic_message` (eq. 5-7) through ``torch.compile``
(TorchInductor: fused C++/OpenMP loops on a CPU, which needs a C++ compiler; Triton kernels
on a GPU). A readable function compiled into fused kernels is the best outcome a reference
project can hope for: it would make :mod:`dgmn_ref.fast`'s hand-written kernels unnecessary.

Every (shape, rate) compiles once, which takes minutes on a CPU; the first call of each
pays that. ``tests/test_compiled.py`` checks equality with the reference (outputs and
gradients) when ``DGMN_TEST_COMPILE=1``; docs/benchmarks.md reports speed and memory.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from dgmn_ref import functional
from dgmn_ref.functional import normalise_affinity, predict_walks, split_filters_affinities

__all__ = [
    "dynamic_message",
    "neighbourhood_conv",
    "normalise_affinity",
    "predict_walks",
    "split_filters_affinities",
]


@functools.cache
def _compiled(name: str) -> Callable:
    return torch.compile(getattr(functional, name), dynamic=False)


def neighbourhood_conv(
    h: Tensor, walks: Tensor, rate: int, weight: Tensor, bias: Tensor | None = None
) -> Tensor:
    """Eq. (6), :func:`dgmn_ref.functional.neighbourhood_conv` compiled; same contract."""
    functional.check_rate(rate)
    return _compiled("neighbourhood_conv")(h, walks, rate, weight, bias)


def dynamic_message(
    h: Tensor, walks: Tensor, affinity: Tensor, weights: Tensor, rate: int
) -> Tensor:
    """Eq. (5-7), :func:`dgmn_ref.functional.dynamic_message` compiled; same contract."""
    functional.check_message_args(h, walks, affinity, weights, rate)
    return _compiled("dynamic_message")(h, walks, affinity, weights, rate)
