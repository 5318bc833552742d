"""The paper's ablation rows as named keyword sets for :class:`dgmn_ref.DGMN`.

The names are used by the CLI (``--variant``), the complexity table and the notebooks;
the class docstring of :class:`dgmn_ref.DGMN` shows the same table.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PAPER_VARIANTS", "variant_kwargs"]

_US = {"dynamic_sampling": False}

PAPER_VARIANTS: dict[str, dict[str, Any]] = {
    # sec. 3.2 DGMN Base: static learned affinities and filters, one uniform rate
    "base": dict(rates=(1,), dynamic_affinity=False, dynamic_weights=False, **_US),
    # Table 1a and Table 5 (Cityscapes)
    "da": dict(rates=(1,), dynamic_weights=False, **_US),
    "da_dw": dict(rates=(1,), **_US),
    "da_dw_us_11111": dict(rates=(1, 1, 1, 1, 1), **_US),
    "da_dw_us_1_6_12": dict(rates=(1, 6, 12), **_US),
    "da_dw_us": dict(rates=(1, 6, 12, 24, 36), **_US),
    "da_dw_ds": dict(rates=(1, 6, 12, 24, 36)),
    # Table 6 (COCO, C5)
    "coco_da_g0": dict(rates=(1, 4, 8, 12), groups=0, dynamic_weights=False, **_US),
    "coco_da_rws_g0": dict(rates=(1, 4, 8, 12), groups=0, dynamic_weights=False),
    "coco_148_g2": dict(rates=(1, 4, 8), groups=2),
    "coco_148_g4": dict(rates=(1, 4, 8), groups=4),
    "coco_full": dict(rates=(1, 4, 8, 12), groups=4),
}


def variant_kwargs(name: str) -> dict[str, Any]:
    """The :class:`dgmn_ref.DGMN` keyword arguments of the paper row ``name``."""
    if name not in PAPER_VARIANTS:
        raise ValueError(f"variant: expected one of {sorted(PAPER_VARIANTS)}, got {name!r}")
    return dict(PAPER_VARIANTS[name])
