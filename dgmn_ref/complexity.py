"""Parameters and multiply-accumulates, counted the way Table 1a of the paper does.

The paper's "+Params" and "+FLOPs" columns are what a context module adds on top of the
Dilated FCN, at C = 512 on the 97 x 97 feature map of a 769 x 769 crop (output stride 8).
Its FLOPs are multiply-accumulates (MACs): e.g. DGMN w/ DA adds 0.57M parameters that
are all convolution weights applied at each of the 97 * 97 = 9409 nodes, and
0.57M * 9409 = 5.3G, the table's number.

:func:`count` uses :class:`torch.utils.flop_counter.FlopCounterMode`, which counts the
matrix products of convolutions, linear layers and ``bmm``/``einsum`` (so the N x N
products of Non-local), and runs the module on the ``meta`` device: shapes only, no
arithmetic, so counting the full-size layer takes a fraction of a second.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count", "PAPER_TABLE_1A", "Row", "table1a", "format_table1a"]


def count(module: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Parameters and MACs of one forward pass of ``module`` on an input of ``input_shape``.

    Args:
        module: any module taking one tensor (left untouched: a copy runs on ``meta``).
        input_shape: e.g. ``(1, 512, 97, 97)``.

    Returns:
        ``{"params": int, "macs": int}``; MACs = FLOPs / 2 as counted by FlopCounterMode.

    Example:
        >>> count(nn.Conv2d(4, 8, 3, padding=1, bias=False), (1, 4, 5, 5))
        {'params': 288, 'macs': 7200}
    """
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 0 for s in shape):
        raise ValueError(f"input_shape: expected non-negative sizes, got {tuple(input_shape)}")
    params = sum(p.numel() for p in module.parameters())
    probe = copy.deepcopy(module).to("meta").eval()
    dtype = next((p.dtype for p in module.parameters()), torch.float32)
    with FlopCounterMode(display=False) as counter:
        probe(torch.empty(shape, device="meta", dtype=dtype))
    return {"params": params, "macs": counter.get_total_flops() // 2}


# Table 1a of the paper: (added params, added FLOPs) over the Dilated FCN.
PAPER_TABLE_1A: dict[str, tuple[float, float]] = {
    "DGMN w/ DA": (0.57e6, 5.32e9),
    "DGMN w/ DA+DW": (0.73e6, 6.88e9),
    "DGMN w/ DA+DW+DS": (3.02e6, 28.45e9),
    "Non-local": (2.88e6, 73.33e9),
    "ASPP": (4.42e6, 38.45e9),
}


@dataclass(frozen=True)
class Row:
    """One row of Table 1a: the paper's numbers and ours."""

    name: str
    paper_params: float
    paper_macs: float
    params: int
    macs: int

    @property
    def params_error(self) -> float:
        return self.params / self.paper_params - 1

    @property
    def macs_error(self) -> float:
        return self.macs / self.paper_macs - 1


def _table1a_modules(channels: int) -> dict[str, nn.Module]:
    from dgmn_ref.baselines import ASPP, NonLocalHead
    from dgmn_ref.layer import DGMN
    from dgmn_ref.variants import variant_kwargs

    return {
        "DGMN w/ DA": DGMN(channels, **variant_kwargs("da")),
        "DGMN w/ DA+DW": DGMN(channels, **variant_kwargs("da_dw")),
        "DGMN w/ DA+DW+DS": DGMN(channels, **variant_kwargs("da_dw_ds")),
        "Non-local": NonLocalHead(channels),
        "ASPP": ASPP(channels),
    }


def table1a(channels: int = 512, size: int = 97) -> list[Row]:
    """Our counts for Table 1a's rows at the paper's configuration (C = 512, 97 x 97)."""
    rows = []
    for name, module in _table1a_modules(channels).items():
        counted = count(module, (1, channels, size, size))
        paper_params, paper_macs = PAPER_TABLE_1A[name]
        rows.append(Row(name, paper_params, paper_macs, counted["params"], counted["macs"]))
    return rows


def format_table1a(rows: Sequence[Row]) -> str:
    """A Markdown table: the paper's Params/FLOPs beside ours and the relative difference."""
    lines = [
        "| Table 1a row | paper Params | ours | diff | paper FLOPs (MACs) | ours | diff |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| + {r.name} | +{r.paper_params / 1e6:.2f}M | +{r.params / 1e6:.3f}M "
            f"| {r.params_error:+.1%} | +{r.paper_macs / 1e9:.2f}G | +{r.macs / 1e9:.2f}G "
            f"| {r.macs_error:+.1%} |"
        )
    return "\n".join(lines)
