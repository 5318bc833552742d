"""dgmn_ref: a readable reference of Dynamic Graph Message Passing Networks (CVPR 2020).

The layer and its baselines are imported on first use (PEP 562), so that the command line
(``dgmn-ref --help``) starts without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module defining it
_EXPORTS: dict[str, str] = {
    "DGMN": "dgmn_ref.layer",
    "DynamicMessageCalculation": "dgmn_ref.layer",
    "MessageFusion": "dgmn_ref.layer",
    "NonLocal2d": "dgmn_ref.baselines",
    "NonLocalHead": "dgmn_ref.baselines",
    "DeformableMessagePassing": "dgmn_ref.baselines",
    "ASPP": "dgmn_ref.baselines",
    "PAPER_VARIANTS": "dgmn_ref.variants",
    "RELEASED_VARIANTS": "dgmn_ref.variants",
    "variant_kwargs": "dgmn_ref.variants",
}
__all__ = [
    "DGMN",
    "DynamicMessageCalculation",
    "MessageFusion",
    "NonLocal2d",
    "NonLocalHead",
    "DeformableMessagePassing",
    "ASPP",
    "PAPER_VARIANTS",
    "RELEASED_VARIANTS",
    "variant_kwargs",
]

if TYPE_CHECKING:
    from dgmn_ref.baselines import ASPP, DeformableMessagePassing, NonLocal2d, NonLocalHead
    from dgmn_ref.layer import DGMN, DynamicMessageCalculation, MessageFusion
    from dgmn_ref.variants import PAPER_VARIANTS, RELEASED_VARIANTS, variant_kwargs


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dgmn_ref' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
