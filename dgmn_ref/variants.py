"""The paper's ablation rows, and the authors' released layer, as named keyword sets.

The names are used by the CLI (``--variant``), the complexity table and the notebooks;
the class docstring of :class:`dgmn_ref.DGMN` shows the same table. ``"released"`` is
the layer the authors' COCO configs build (``docs/paper-vs-code.md``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["PAPER_VARIANTS", "RELEASED_VARIANTS", "variant_kwargs"]

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


# The layer of the authors' released configs (lzrobots/dgmn, configs/dw/*.yaml lines 8-16:
# GROUP 4, DILATION (1, 4, 8, 12), DEFORM "deformatt", INSERT_POS "after3x3", which
# builds ReDynamicWeightsCat33, maskrcnn_benchmark/layers/dynamic_weight.py:617-813):
# raw filters (751-755), softmax affinity over K (706-708), x + sum_q gamma_q M_q with
# gamma_q = 1 at init (674-677, 811), no biases on the offset and DeformConv predictor
# convs (626-634), PyTorch's default init for the offset convs. tests/test_released.py
# checks it against a transcription of that forward pass.
_RELEASED = dict(
    rates=(1, 4, 8, 12),
    groups=4,
    kernel_size=3,
    filter_norm="none",
    affinity_norm="softmax",
    fusion="residual",
    bias=False,
    walk_init="default",
)

RELEASED_VARIANTS: dict[str, dict[str, Any]] = {
    # the released layer with line 721's bug fixed (rate 4 uses its own affinity)
    "released": dict(_RELEASED),
    # ... and as it ran: rate 4's affinity taken from its filter logits (line 721)
    "released_att4_bug": dict(_RELEASED, released_att4_bug=True),
}


def variant_kwargs(name: str) -> dict[str, Any]:
    """The :class:`dgmn_ref.DGMN` keyword arguments of the paper row or released layer ``name``."""
    for table in (PAPER_VARIANTS, RELEASED_VARIANTS):
        if name in table:
            return dict(table[name])
    names = sorted(PAPER_VARIANTS) + sorted(RELEASED_VARIANTS)
    raise ValueError(f"variant: expected one of {names}, got {name!r}")
