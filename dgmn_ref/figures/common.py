"""The small helpers both figure modules use (one copy each)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from torch import Tensor

__all__ = ["new_axes", "to_numpy"]


def new_axes(
    ax: Axes | None, figsize: tuple[float, float] = (5.0, 5.0), layout: str | None = None
) -> Axes:
    """``ax``, or the axes of a new figure of ``figsize`` (matplotlib ``layout``)."""
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout=layout)
    return ax


def to_numpy(t: Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    """A float64 numpy copy of a tensor (detached, on the CPU) or of array-like values."""
    if isinstance(t, Tensor):
        return t.detach().cpu().double().numpy()
    return np.asarray(t, dtype=float)
