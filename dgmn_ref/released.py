"""Load the weights of the authors' released DGMN layer into :class:`dgmn_ref.DGMN`.

The authors' code (GitHub ``lzrobots/dgmn``, a fork of ``maskrcnn_benchmark``) builds
``ReDynamicWeightsCat33(channels, group=4, kernel=3, dilation=(1, 4, 8, 12),
deform="deformatt")`` after the 3x3 conv of every bottleneck of the stages its config
enables (``resnet.py`` lines 551-571 and 589-590; ``configs/dw/*.yaml``). Its parameters
(``dynamic_weight.py`` lines 626-634 and 674-677), for the rates a, b, c, d = 1, 2, 3, 4:

============================  ======================  ======================================
released name                 shape                   dgmn_ref name (rate index q = 0..3)
============================  ======================  ======================================
``off_conv{a..d}.weight``     ``18, C, 3, 3``         ``rate_messages.{q}.walk_conv.weight``
``kernel_conv{a..d}.weight``  ``9 G + 9, C, 3, 3``    ``rate_messages.{q}.predictor.weight``
``gamma{1..4}``               ``1``                   ``fusion.gamma[q]``
============================  ======================  ======================================

Both sides order their channels alike: the 18 offsets as (dy, dx) per neighbour, the
predictor's outputs as G*K filters (group-major) then K affinity logits, and the weights'
3x3 taps row-major, so the tensors are copied unchanged. The layer to load into is
``DGMN(C, **variant_kwargs("released"))`` (or ``"released_att4_bug"`` to run the weights
as they were trained, with the released code's rate-4 affinity bug,
``docs/paper-vs-code.md``). The dilations are not in the weights: they come from the
config (``DILATION``, (1, 4, 8, 12) in every released config).

Example:
    >>> from dgmn_ref import DGMN, variant_kwargs
    >>> layer = DGMN(8, **variant_kwargs("released"))
    >>> theirs = released_state_dict(layer)  # e.g. from the authors' checkpoint
    >>> sorted(theirs)[:3]
    ['gamma1', 'gamma2', 'gamma3']
    >>> load_state_dict(layer, theirs) is layer
    True
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from dgmn_ref.layer import DGMN
from dgmn_ref.variants import variant_kwargs

__all__ = [
    "RATE_SUFFIXES",
    "released_names",
    "convert_state_dict",
    "load_state_dict",
    "released_state_dict",
    "dw_blocks",
    "load_stage",
]

# dynamic_weight.py names its four rates' modules with these suffixes (lines 626-634).
RATE_SUFFIXES = ("a", "b", "c", "d")


def released_names(num_rates: int = 4) -> dict[str, tuple[str, int | None]]:
    """Released parameter name -> (dgmn_ref name, index into it or None).

    ``gamma{q+1}`` (shape ``1``) is element q of dgmn_ref's ``fusion.gamma`` (shape ``S``).
    """
    if num_rates != len(RATE_SUFFIXES):
        raise ValueError(
            f"num_rates: the released layer has exactly {len(RATE_SUFFIXES)} rates "
            f"(dynamic_weight.py:626-634), got {num_rates}"
        )
    names: dict[str, tuple[str, int | None]] = {}
    for q, suffix in enumerate(RATE_SUFFIXES):
        names[f"off_conv{suffix}.weight"] = (f"rate_messages.{q}.walk_conv.weight", None)
        names[f"kernel_conv{suffix}.weight"] = (f"rate_messages.{q}.predictor.weight", None)
        names[f"gamma{q + 1}"] = ("fusion.gamma", q)
    return names


def convert_state_dict(layer: DGMN, released: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The released layer's state dict renamed to ``layer``'s: ``{dgmn_ref name: tensor}``.

    Raises ValueError naming the key when a released key is unknown or missing, when a
    shape does not fit ``layer``'s, or when ``layer`` has a parameter the released layer
    lacks (e.g. a bias: build it with ``bias=False``, as ``variant_kwargs("released")``).
    """
    if not isinstance(layer, DGMN):
        raise ValueError(f"layer: expected a dgmn_ref.DGMN, got {type(layer).__name__}")
    names = released_names(len(layer.rates))
    ours = layer.state_dict()
    for key in released:
        if key not in names:
            raise ValueError(
                f"{key}: not a parameter of the released ReDynamicWeightsCat33 "
                f"(deform='deformatt'); expected one of {sorted(names)}"
            )
    converted: dict[str, Tensor] = {}
    for key, (target, index) in names.items():
        if key not in released:
            raise ValueError(f"{key}: missing from the released state dict")
        if target not in ours:
            raise ValueError(
                f"{key}: its dgmn_ref counterpart {target!r} is not in this layer; build it "
                "with DGMN(C, **variant_kwargs('released'))"
            )
        value = released[key]
        expected = (1,) if index is not None else tuple(ours[target].shape)
        if tuple(value.shape) != expected:
            raise ValueError(
                f"{key}: expected shape {expected} (for {target!r} of this layer), "
                f"got {tuple(value.shape)}"
            )
        if index is None:
            converted[target] = value
        else:  # the S one-element gammas become one S-vector
            gamma = converted.setdefault(target, ours[target].clone())
            gamma[index] = value[0]
    for target in ours:
        if target not in converted:
            raise ValueError(
                f"{target}: this layer's parameter has no counterpart in the released layer "
                "(it has no biases); build it with DGMN(C, **variant_kwargs('released'))"
            )
    return converted


def load_state_dict(layer: DGMN, released: Mapping[str, Tensor]) -> DGMN:
    """Load the released layer's weights (names as in ``dynamic_weight.py``) into ``layer``."""
    layer.load_state_dict(convert_state_dict(layer, released), strict=True)
    return layer


def released_state_dict(layer: DGMN) -> dict[str, Tensor]:
    """The inverse of :func:`convert_state_dict`: ``layer``'s weights under the released names."""
    ours = layer.state_dict()
    out: dict[str, Tensor] = {}
    for key, (target, index) in released_names(len(layer.rates)).items():
        if target not in ours:
            raise ValueError(f"{target}: expected in layer (for {key}), build it with bias=False")
        value = ours[target]
        out[key] = value.clone() if index is None else value[index : index + 1].clone()
    extra = set(ours) - {target for target, _ in released_names(len(layer.rates)).values()}
    if extra:
        raise ValueError(
            f"{sorted(extra)[0]}: this layer's parameter has no counterpart in the released "
            "layer; build it with DGMN(C, **variant_kwargs('released'))"
        )
    return out


_DW_KEY = re.compile(
    r"^(?P<prefix>(?:.*\.)?(?P<stage>layer\d+)\.(?P<block>\d+)\.dw_block)\.(?P<name>.+)$"
)


def _model_state(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """The model's state dict in a maskrcnn_benchmark checkpoint, without DDP's prefix.

    ``Checkpointer.save`` stores ``{"model": model.state_dict(), ...}``
    (``utils/checkpoint.py`` line 40) and ``load_state_dict`` strips a leading
    ``"module."`` (``utils/model_serialization.py`` line 76); both are accepted here.
    """
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, Mapping):
        raise ValueError(f"checkpoint['model']: expected a state dict, got {type(state).__name__}")
    return {key.removeprefix("module."): value for key, value in state.items()}


def dw_blocks(checkpoint: Mapping[str, Any]) -> dict[str, dict[str, Tensor]]:
    """Every released DGMN layer of a ResNet checkpoint, by its module prefix.

    ``resnet.py`` stores the layer of bottleneck ``i`` of stage ``layerN`` as its
    ``dw_block`` (line 566), so an R-50 detector checkpoint holds e.g.
    ``backbone.body.layer4.0.dw_block.off_conva.weight``. Returns
    ``{"backbone.body.layer4.0.dw_block": {"off_conva.weight": ..., ...}, ...}``.
    """
    blocks: dict[str, dict[str, Tensor]] = {}
    for key, value in _model_state(checkpoint).items():
        match = _DW_KEY.match(key)
        if match:
            blocks.setdefault(match["prefix"], {})[match["name"]] = value
    return blocks


def load_stage(
    checkpoint: Mapping[str, Any],
    stage: str = "layer4",
    *,
    released_att4_bug: bool,
    **overrides: Any,
) -> nn.ModuleDict:
    """One :class:`DGMN` per bottleneck of ``stage`` that holds a released layer, loaded.

    Args:
        checkpoint: a maskrcnn_benchmark checkpoint (``{"model": state_dict, ...}``) or a
            state dict, with or without the ``"module."`` prefix.
        stage: the ResNet stage, ``"layer4"`` = res5 (the released R-50 configs,
            ``STAGE_WITH_DW: (False, False, False, True)``).
        released_att4_bug: True runs the weights as trained (rate 4's affinity from its
            filter logits, ``dynamic_weight.py`` line 721); False fixes the bug.
        overrides: further :class:`DGMN` arguments (``impl``, ``rates`` if the config's
            ``DILATION`` for this stage is not (1, 4, 8, 12)).

    Returns:
        ``nn.ModuleDict`` keyed by block index (``"0"``, ``"1"``, ...): the layer that runs
        after ``conv2``/``bn2``/ReLU of that bottleneck (``resnet.py`` lines 589-590).
    """
    blocks = dw_blocks(checkpoint)
    stages = sorted({_DW_KEY.match(f"{prefix}.x")["stage"] for prefix in blocks})
    chosen = {
        _DW_KEY.match(f"{prefix}.x")["block"]: state
        for prefix, state in blocks.items()
        if _DW_KEY.match(f"{prefix}.x")["stage"] == stage
    }
    if not chosen:
        raise ValueError(
            f"stage: no dw_block in {stage!r}; the checkpoint has released DGMN layers in "
            f"{stages or 'no stage'}"
        )
    name = "released_att4_bug" if released_att4_bug else "released"
    layers = nn.ModuleDict()
    for block in sorted(chosen, key=int):
        state = chosen[block]
        key = "off_conva.weight"
        if key not in state or state[key].ndim != 4:
            raise ValueError(f"{stage}.{block}.dw_block.{key}: missing or not a conv weight")
        channels = state[key].shape[1]
        predictor = state.get("kernel_conva.weight")
        groups = (predictor.shape[0] - 9) // 9 if predictor is not None else 4
        kwargs = {**variant_kwargs(name), "groups": groups, **overrides}
        layer = DGMN(channels, **kwargs).to(state[key].dtype)
        try:
            load_state_dict(layer, state)
        except ValueError as err:
            raise ValueError(f"{stage}.{block}.dw_block.{err}") from None
        layers[block] = layer
    return layers
