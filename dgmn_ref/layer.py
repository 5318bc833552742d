"""The DGMN layer (Zhang et al., CVPR 2020, sec. 3.5, Figures 2 and 3).

:class:`DynamicMessageCalculation` is one "DMC" box of Figure 3 (one sampling rate);
:class:`MessageFusion` combines the S messages with the observation F (eq. 2-3);
:class:`DGMN` assembles them with T = 1 message-passing iteration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from types import ModuleType
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from einops import repeat
from torch import Tensor, nn

from dgmn_ref import functional

__all__ = [
    "DGMN",
    "DynamicMessageCalculation",
    "MessageFusion",
    "RateOptions",
    "RateState",
    "AUTO_FAST_MIN_ELEMENTS",
    "check_impl",
    "resolve_impl",
    "IMPLS",
    "EXPERIMENTAL_IMPLS",
    "FUSIONS",
]

IMPLS = ("reference", "fast", "auto")
# accepted by every impl argument but not offered by training or iterated by the scripts:
# torch.compile of the reference takes minutes per new shape on a CPU (dgmn_ref.compiled)
EXPERIMENTAL_IMPLS = ("compiled",)
FUSIONS = ("concat", "sum", "residual")

# impl="auto" runs the fast kernels from this many elements of the input map b c h w on, the
# reference below: on small maps a few large einsum kernels beat the fast path's many small
# ones. In benchmarks/results-cpu-blocks.json (docs/benchmarks.md) the fast block was slower
# at C = 16 on 12 x 24 and 24 x 48 (4608 and 18432 elements) and faster from C = 32 on
# 24 x 48 (36864) on.
AUTO_FAST_MIN_ELEMENTS = 2**15


def resolve_impl(impl: str, h: Tensor) -> str:
    """``"reference"`` or ``"fast"``: ``impl`` itself, or for ``"auto"`` the faster one for h.

    The rule of ``"auto"``: fast when ``h.numel() >= AUTO_FAST_MIN_ELEMENTS`` (b c h w),
    the reference otherwise. Both compute the same numbers (tests/test_fast.py).
    """
    if impl == "auto":
        return "fast" if h.numel() >= AUTO_FAST_MIN_ELEMENTS else "reference"
    return check_impl(impl)


def check_impl(impl: str) -> str:
    """``impl`` if it is one of :data:`IMPLS`; ValueError naming it otherwise."""
    if impl not in IMPLS + EXPERIMENTAL_IMPLS:
        raise ValueError(f"impl: expected one of {IMPLS + EXPERIMENTAL_IMPLS}, got {impl!r}")
    return impl


def message_ops(impl: str) -> ModuleType:
    """The kernel namespace of ``impl``, where a DMC reads every equation it computes
    (``predict_walks``, ``neighbourhood_conv``, ``split_filters_affinities``,
    ``normalise_affinity``, ``dynamic_message``), chosen once per forward.

    ``"reference"`` is :mod:`dgmn_ref.functional` (einops, materialises the K sampled
    neighbours: easy to read); ``"fast"`` is :mod:`dgmn_ref.fast` (same signatures,
    tested equal, never materialises the K-expanded tensor); ``"compiled"`` is
    :mod:`dgmn_ref.compiled` (the reference through ``torch.compile``). ``"auto"`` is
    resolved per input by :func:`resolve_impl` first.
    """
    if impl == "reference":
        return functional
    if impl == "fast":
        from dgmn_ref import fast

        return fast
    if impl == "compiled":  # the reference through torch.compile (minutes per new shape)
        from dgmn_ref import compiled

        return compiled
    if impl == "auto":
        raise ValueError("impl: 'auto' depends on the input; call resolve_impl(impl, h) first")
    raise ValueError(f"impl: expected one of {IMPLS + EXPERIMENTAL_IMPLS}, got {impl!r}")


class RateState(NamedTuple):
    """What one DMC computed for one sampling rate (used by :mod:`dgmn_ref.figures.viz`)."""

    rate: int
    walks: Tensor  # b k p h w, zeros under uniform sampling
    affinity: Tensor  # b k h w, normalised (eq. 7)
    weights: Tensor  # b g k h w, the (dynamic or static) group filters
    message: Tensor  # b c h w


@dataclasses.dataclass(frozen=True)
class RateOptions:
    """The switches of one DMC (Figure 3); a :class:`DGMN` gives every rate the same ones.

    * ``groups``: G, channel groups sharing one dynamic filter scalar per neighbour;
      ``groups = 0``: no filter at all (weights = 1), Table 6's "G = 0".
    * ``kernel_size``: ks, K = ks**2 neighbours per rate.
    * ``dynamic_sampling``: walks predicted by a ``ks x ks`` conv with dilation rho (eq. 4)
      and read with the bilinear sampler (eq. 5); off: uniform sampling (eq. 3).
    * ``dynamic_weights`` / ``dynamic_affinity``: filters and affinities predicted jointly
      by one ``ks x ks`` conv over the walked neighbourhood (eq. 6-7); off: static learned
      parameters (DGMN Base of sec. 3.2): affinity logits ``k`` and filters ``g k``.
    * ``filter_norm``: ``"none"`` (paper, and the released configured layer) or
      ``"softmax"`` over K (the released code's unconfigured ``Cat*`` classes and modes).
    * ``affinity_norm``: ``"softmax"`` over K (paper eq. 7, and the released configured
      layer) or ``"sigmoid"`` (the released code's unconfigured ``Cat*`` classes).
    * ``walk_init``: ``"zero"`` (start from uniform sampling) or ``"default"`` (PyTorch's
      init, as the released code).
    * ``impl``: ``"reference"`` (einops, readable), ``"fast"`` (:mod:`dgmn_ref.fast`) or
      ``"auto"`` (the faster of the two for the input's size, :func:`resolve_impl`).
    * ``bias``: biases on the walk conv and the predictor (eq. 4 and 6 have them); the
      released code has none (``bias=False``).
    * ``affinity_from_filters``: a bug of the released code, reproduced for fidelity and
      off by default. ``ReDynamicWeightsCat33`` takes its 4th rate's affinity logits from
      the *filter* logits (``att4 = dynamic_filter4[:, -9:, :, :]``, ``dynamic_weight.py``
      line 721; also line 527 of ``ReDynamicWeightsCat11``): the last K of the G*K filter
      channels (group G's filter logits) are normalised as the affinity, and the predictor's
      K affinity outputs are computed but unused, so they get no gradient.
    """

    groups: int = 4
    kernel_size: int = 3
    dynamic_affinity: bool = True
    dynamic_weights: bool = True
    dynamic_sampling: bool = True
    filter_norm: str = "none"
    affinity_norm: str = "softmax"
    walk_init: str = "zero"
    impl: str = "reference"
    bias: bool = True
    affinity_from_filters: bool = False

    def check(self, channels: int) -> RateOptions:
        """Raise ``ValueError`` naming the bad value and what was expected."""
        for name in ("dynamic_affinity", "dynamic_weights", "dynamic_sampling"):
            functional.check_switch(name, getattr(self, name))
        if self.walk_init not in ("zero", "default"):
            raise ValueError(f"walk_init: expected 'zero' or 'default', got {self.walk_init!r}")
        functional.check_kernel_size(self.kernel_size)
        groups = self.groups
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 0:
            raise ValueError(f"groups: expected an int >= 0, got {groups!r}")
        if groups and channels % groups:
            raise ValueError(f"groups: expected a divisor of channels={channels}, got {groups}")
        if groups == 0 and self.dynamic_weights:
            raise ValueError(
                "groups: G = 0 means no filters, which needs dynamic_weights=False "
                "(Table 6, rows with G = 0)"
            )
        if self.filter_norm not in ("none", "softmax"):
            raise ValueError(f"filter_norm: expected 'none' or 'softmax', got {self.filter_norm!r}")
        if self.affinity_norm not in ("softmax", "sigmoid"):
            raise ValueError(
                f"affinity_norm: expected 'softmax' or 'sigmoid', got {self.affinity_norm!r}"
            )
        if self.affinity_from_filters and not (self.dynamic_weights and self.dynamic_affinity):
            raise ValueError(
                "affinity_from_filters: the released code's rate-4 affinity is read from the "
                "dynamic filter logits, which needs dynamic_weights=True and "
                f"dynamic_affinity=True, got dynamic_weights={self.dynamic_weights}, "
                f"dynamic_affinity={self.dynamic_affinity}"
            )
        check_impl(self.impl)
        return self


class DynamicMessageCalculation(nn.Module):
    """Figure 3: the message of one sampling rate rho_q, with the switches of
    :class:`RateOptions`, given as keywords (``groups=4, dynamic_sampling=False, ...``).
    """

    def __init__(self, channels: int, rate: int, **options: Any) -> None:
        super().__init__()
        self.rate = functional.check_rate(rate)
        self.options = o = RateOptions(**options).check(channels)
        self.channels, self.groups, self.kernel_size = channels, o.groups, o.kernel_size
        self.filter_norm, self.affinity_norm = o.filter_norm, o.affinity_norm
        self.dynamic_affinity = dynamic_affinity = o.dynamic_affinity
        self.dynamic_weights = dynamic_weights = o.dynamic_weights
        self.dynamic_sampling = o.dynamic_sampling
        self.affinity_from_filters = o.affinity_from_filters
        groups, kernel_size, bias = o.groups, o.kernel_size, o.bias
        k = self.num_neighbours = kernel_size**2
        padding = rate * (kernel_size // 2)

        # eq. 4: walks start at zero, so training starts from uniform sampling (as DCN);
        # walk_init="default" keeps PyTorch's random init, as the released code does.
        self.walk_conv = None
        if o.dynamic_sampling:
            self.walk_conv = nn.Conv2d(
                channels, 2 * k, kernel_size, padding=padding, dilation=rate, bias=bias
            )
            if o.walk_init == "zero":
                nn.init.zeros_(self.walk_conv.weight)
                if bias:
                    nn.init.zeros_(self.walk_conv.bias)

        # eq. 6: one conv predicts G*K filters then K affinity logits. Initialised so that
        # the layer starts as the uniform average (filters 1, affinities 1/K); without
        # biases the filters start near 0, so the message starts near 0.
        outputs = groups * k * dynamic_weights + k * dynamic_affinity
        self.predictor = None
        if outputs:
            self.predictor = nn.Conv2d(
                channels, outputs, kernel_size, padding=padding, dilation=rate, bias=bias
            )
            nn.init.normal_(self.predictor.weight, std=1e-3)
            if bias:
                nn.init.zeros_(self.predictor.bias)
                if dynamic_weights:
                    nn.init.ones_(self.predictor.bias[: groups * k])
        self.static_affinity = None if dynamic_affinity else nn.Parameter(torch.zeros(k))
        self.static_weights = None
        if groups and not dynamic_weights:
            self.static_weights = nn.Parameter(torch.ones(groups, k))

    @property
    def impl(self) -> str:
        return self.options.impl

    @impl.setter
    def impl(self, impl: str) -> None:
        check_impl(impl)
        self.options = dataclasses.replace(self.options, impl=impl)

    def extra_repr(self) -> str:
        return (
            f"rate={self.rate}, groups={self.groups}, kernel_size={self.kernel_size}, "
            f"DA={self.dynamic_affinity}, DW={self.dynamic_weights}, "
            f"DS={self.dynamic_sampling}, impl={self.impl!r}"
            + (", affinity_from_filters=True" if self.affinity_from_filters else "")
        )

    def forward(self, h: Tensor) -> RateState:
        ops = message_ops(resolve_impl(self.impl, h))
        b, _, height, width = h.shape
        k = self.num_neighbours
        if self.walk_conv is not None:
            walks = ops.predict_walks(h, self.walk_conv.weight, self.walk_conv.bias, self.rate)
        else:
            walks = h.new_zeros(b, k, 2, height, width)

        filters = logits = None
        if self.predictor is not None:
            prediction = ops.neighbourhood_conv(
                h, walks, self.rate, self.predictor.weight, self.predictor.bias
            )
            filters, logits = ops.split_filters_affinities(
                prediction, self.groups if self.dynamic_weights else 0, k
            )
            if self.affinity_from_filters:  # dynamic_weight.py:721, the released bug
                logits = filters[:, -1]  # group G's filter logits, "b k h w"
        if logits is None:
            logits = repeat(self.static_affinity, "k -> b k h w", b=b, h=height, w=width)
        if filters is None:
            static = self.static_weights if self.groups else h.new_ones(1, k)
            filters = repeat(static, "g k -> b g k h w", b=b, h=height, w=width)

        if self.affinity_norm == "softmax":
            affinity = ops.normalise_affinity(logits)
        else:  # per-neighbour sigmoid: the released Cat* classes (not the configured one)
            affinity = logits.sigmoid()
        if self.filter_norm == "softmax":  # the released Cat* classes and modes, over k
            filters = filters.softmax(dim=2)

        message = ops.dynamic_message(h, walks, affinity, filters, self.rate)
        return RateState(self.rate, walks, affinity, filters, message)


class MessageFusion(nn.Module):
    r"""Combine the observation F with the S messages: eq. (2) with eq. (3).

    * ``"sum"``: :math:`H = \sigma(F + \alpha \sum_q \beta_q M_q)`, literally eq. 2-3
      (alpha and beta are learnable; only their product matters).
    * ``"residual"``: :math:`H = F + \sum_q \gamma_q M_q` with gamma_q starting at 1 and no
      non-linearity: the released code's fusion (``dynamic_weight.py``, see
      ``docs/paper-vs-code.md``).
    * ``"concat"``: :math:`H = \sigma(\mathrm{BN}(W [F, M_1, \dots, M_S]))` with a 1x1 conv
      W: (S+1)C -> C. Writing W = [W_0, W_1, ..., W_S] this is
      :math:`\sigma(W_0 F + \sum_q W_q M_q)`: eq. 2-3 with beta_q generalised to a C x C
      matrix. Its parameters, (S+1) C^2, are what Table 1a's counts fit, so it is the
      default.
    """

    def __init__(self, channels: int, num_messages: int, fusion: str = "concat") -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion: expected one of {FUSIONS}, got {fusion!r}")
        self.fusion = fusion
        if fusion == "concat":
            self.project = nn.Conv2d((num_messages + 1) * channels, channels, 1, bias=False)
            self.norm = nn.BatchNorm2d(channels)
        elif fusion == "sum":
            self.alpha = nn.Parameter(torch.ones(()))
            self.beta = nn.Parameter(torch.full((num_messages,), 1.0 / num_messages))
        else:
            self.gamma = nn.Parameter(torch.ones(num_messages))

    def forward(self, f: Tensor, messages: Sequence[Tensor]) -> Tensor:
        if self.fusion == "sum":
            m = functional.multi_rate_message(messages, self.beta)
            return functional.update(f, m, self.alpha)
        if self.fusion == "residual":
            return f + functional.multi_rate_message(messages, self.gamma)
        # W [F, M_1..M_S] computed as W_0 F + sum_q W_q M_q: the same numbers without
        # holding the (S+1)C-channel concatenation for backward.
        blocks = self.project.weight.split(f.shape[1], dim=1)
        if messages[0].is_contiguous(memory_format=torch.channels_last):
            # the fast kernels' messages are channels-last: weights in the same layout keep
            # the convolutions' backward channels-last too, with no transposing copies
            # (docs/benchmarks.md, "what was tried")
            blocks = [w.contiguous(memory_format=torch.channels_last) for w in blocks]
        fused = sum(F.conv2d(x, w) for x, w in zip([f, *messages], blocks, strict=True))
        return torch.relu(self.norm(fused))


class DGMN(nn.Module):
    """Dynamic Graph Message Passing Network layer (sec. 3.5), T = 1 iteration by default.

    ``H = fusion(F, M_1, ..., M_S)``, with ``M_q`` the dynamic message at sampling rate
    ``rates[q]`` (:class:`DynamicMessageCalculation`). Input and output are ``b c h w``.
    With ``steps=T > 1`` the message passing of sec. 3.1 repeats: ``H^(t+1) = fusion(F,
    M_1(H^(t)), ..., M_S(H^(t)))`` from ``H^(0) = F``, the same weights at every t (the
    paper's experiments, like its released code, use T = 1).

    Every row of the paper's ablation tables (``DA`` dynamic affinity, ``DW`` dynamic
    weights, ``US`` several uniform sampling rates, ``RWS`` random-walk sampling = DS):

    =========================================  ==============================================
    paper row                                  arguments
    =========================================  ==============================================
    DGMN Base (sec. 3.2, static A and w)       ``rates=(1,), dynamic_affinity=False,
                                               dynamic_weights=False, dynamic_sampling=False``
    Table 1a / 5: w/ DA, phi = {1}             ``rates=(1,), dynamic_weights=False,
                                               dynamic_sampling=False``
    Table 1a / 5: w/ DA+DW, phi = {1}          ``rates=(1,), dynamic_sampling=False``
    Table 5: DA+DW+US, phi = {1,1,1,1,1}       ``rates=(1, 1, 1, 1, 1), dynamic_sampling=False``
    Table 5: DA+DW+US, phi = {1,6,12}          ``rates=(1, 6, 12), dynamic_sampling=False``
    Table 5: DA+DW+US, phi = {1,6,12,24,36}    ``dynamic_sampling=False``
    Table 1a / 5: DA+DW+DS (RWS), full model   ``DGMN(channels)`` (all defaults)
    Table 6: DA, phi = {1,4,8,12}, G = 0       ``rates=(1, 4, 8, 12), groups=0,
                                               dynamic_weights=False, dynamic_sampling=False``
    Table 6: DA+RWS, phi = {1,4,8,12}, G = 0   ``rates=(1, 4, 8, 12), groups=0,
                                               dynamic_weights=False``
    Table 6: DA+DW+RWS, phi = {1,4,8}, G = 2   ``rates=(1, 4, 8), groups=2``
    Table 6: DA+DW+RWS, phi = {1,4,8}, G = 4   ``rates=(1, 4, 8)``
    Table 6: DA+DW+RWS, phi = {1,4,8,12}, G=4  ``rates=(1, 4, 8, 12)``
    =========================================  ==============================================

    The same rows are in :data:`dgmn_ref.variants.PAPER_VARIANTS` by name.

    Args:
        channels: C, the feature channels (512 in the paper).
        rates: the sampling rates phi = {rho_q} (S = len(rates)).
        fusion: ``"concat"`` (default, reproduces Table 1a), ``"sum"`` (eq. 2-3 literally)
            or ``"residual"`` (the released code), see :class:`MessageFusion`.
        **options: the switches of every rate, :class:`RateOptions`: ``groups`` (G),
            ``kernel_size`` (ks), ``dynamic_affinity`` / ``dynamic_weights`` /
            ``dynamic_sampling`` (DA / DW / DS), ``filter_norm``, ``affinity_norm``,
            ``walk_init``, ``impl`` (``"reference"``, ``"fast"`` or ``"auto"``: the
            faster of the two for the input's size, :func:`resolve_impl`), ``bias``.
        released_att4_bug: reproduce a bug of the released code (off by default): the 4th
            rate takes its affinity from its filter logits (``dynamic_weight.py`` line 721),
            see :class:`DynamicMessageCalculation`. Needs at least 4 rates.
        steps: T, the iterations of message passing (sec. 3.1), sharing the weights; the
            states that :meth:`forward_with_states` returns are those of the last one.

    The authors' released layer (``ReDynamicWeightsCat33``, ``deform="deformatt"``, as
    their COCO configs build it) is ``DGMN(C, **variant_kwargs("released"))``: rates
    (1, 4, 8, 12), G = 4, ``filter_norm="none"``, ``affinity_norm="softmax"``,
    ``fusion="residual"``, ``bias=False``, ``walk_init="default"``; add
    ``released_att4_bug=True`` to run a model trained with the released code as it ran
    there (``tests/test_released.py`` checks both against a transcription of its forward;
    :mod:`dgmn_ref.released` loads its weights).

    Example:
        >>> layer = DGMN(16, rates=(1, 2), groups=4)
        >>> layer(torch.randn(2, 16, 9, 10)).shape
        torch.Size([2, 16, 9, 10])
    """

    def __init__(
        self,
        channels: int,
        rates: Sequence[int] = (1, 6, 12, 24, 36),
        fusion: str = "concat",
        released_att4_bug: bool = False,
        steps: int = 1,
        **options: Any,
    ) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels: expected an int >= 1, got {channels!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps: expected an int >= 1 (T, sec. 3.1), got {steps!r}")
        self.steps = steps
        rates = tuple(rates)
        if not rates:
            raise ValueError("rates: expected at least one sampling rate, got ()")
        if released_att4_bug and len(rates) < 4:
            raise ValueError(
                "released_att4_bug: the released code's bug is in its 4th rate, expected at "
                f"least 4 rates, got rates={rates}"
            )
        if "affinity_from_filters" in options:
            raise ValueError("affinity_from_filters: a per-rate switch; use released_att4_bug")
        self.channels, self.rates = channels, rates
        self.options = RateOptions(**options).check(channels)
        shared = dataclasses.asdict(self.options)
        self.rate_messages = nn.ModuleList(
            DynamicMessageCalculation(
                channels, rate, **shared | {"affinity_from_filters": released_att4_bug and q == 3}
            )
            for q, rate in enumerate(rates)
        )
        self.fusion = MessageFusion(channels, len(rates), fusion)

    @property
    def impl(self) -> str:
        return self.options.impl

    def set_impl(self, impl: str) -> DGMN:
        """Switch every rate between the reference and the fast path (same parameters)."""
        check_impl(impl)
        self.options = dataclasses.replace(self.options, impl=impl)
        for dmc in self.rate_messages:
            dmc.impl = impl
        return self

    def forward_with_states(self, f: Tensor) -> tuple[Tensor, list[RateState]]:
        """The output H and, per rate, the walks, affinities, filters and message (of the
        last of the ``steps`` iterations)."""
        if f.ndim != 4 or f.shape[1] != self.channels:
            raise ValueError(
                f"input: expected shape (b, {self.channels}, h, w), got {tuple(f.shape)}"
            )
        h = f  # H^(0) = F
        for _ in range(self.steps):  # T iterations, one by default
            if resolve_impl(self.impl, h) == "fast":  # the gathers read channels-last in place
                h = h.contiguous(memory_format=torch.channels_last)
            states = [dmc(h) for dmc in self.rate_messages]
            h = self.fusion(f, [state.message for state in states])
        return h, states

    def forward(self, f: Tensor) -> Tensor:
        return self.forward_with_states(f)[0]
