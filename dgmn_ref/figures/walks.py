"""Where a node's messages come from: the paper's Figure 4 as data (drawn by :mod:`.viz`).

DGMN (Zhang et al., CVPR 2020), sec. 3.3-3.4 and Figure 4. For a receiving node i and a
sampling rate rho_q, the K uniform neighbours of eq. (3) are moved by the learned walks
Delta d (eq. 4), read with the bilinear sampler rho (eq. 5), and weighted by the affinity
A' (eq. 7) and the group filters w (eq. 6).

* :func:`extract_walks` / :func:`extract_from_model` take these intermediates from the
  layer's own forward (:meth:`dgmn_ref.layer.DGMN.forward_with_states`, reached through a
  forward hook when the layer sits inside a model) into a :class:`WalkData`.
* :func:`message_sources` and :func:`mean_walk_length` reduce them to maps.

Positions are in feature-map pixels, ``p = 0`` the row (y) and ``p = 1`` the column (x), as
in :mod:`dgmn_ref.functional`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from einops import rearrange, reduce
from torch import Tensor, nn

from dgmn_ref import functional
from dgmn_ref.layer import DGMN

__all__ = [
    "WalkData",
    "dgmn_layers",
    "extract_from_model",
    "extract_walks",
    "mean_walk_length",
    "message_sources",
]


@dataclass(frozen=True)
class WalkData:
    """Everything Figure 4 shows, for every node, rate and image of one DGMN layer.

    Attributes:
        rates: the sampling rates rho_q, ``s`` of them.
        kernel_size: ks, so K = ks**2 neighbours per rate.
        uniform: eq. (3)'s uniform positions, ``s k p h w`` (the same for every image).
        walked: uniform + walks (eq. 4), the positions the sampler reads, ``s b k p h w``.
        affinity: A' (eq. 7), ``s b k h w``.
        weights: the group filters w (eq. 6), ``s b g k h w`` (static ones repeated; ones
            when the layer has G = 0).
        output: the layer's output H, ``b c h w``.
    """

    rates: tuple[int, ...]
    kernel_size: int
    uniform: Tensor
    walked: Tensor
    affinity: Tensor
    weights: Tensor
    output: Tensor

    @property
    def walks(self) -> Tensor:
        """Delta d of eq. (4), ``s b k p h w``."""
        return self.walked - rearrange(self.uniform, "s k p h w -> s 1 k p h w")

    @property
    def batch(self) -> int:
        return self.walked.shape[1]

    @property
    def size(self) -> tuple[int, int]:
        """``(h, w)`` of the feature map."""
        return tuple(self.walked.shape[-2:])

    def rate_indices(self, rates: Sequence[int] | None) -> list[int]:
        """Indices ``s`` of the chosen rates (all when None), in the layer's order."""
        if rates is None:
            return list(range(len(self.rates)))
        unknown = set(rates) - set(self.rates)
        if unknown:
            raise ValueError(f"rates: {sorted(unknown)} not among the layer's {self.rates}")
        return [s for s, rate in enumerate(self.rates) if rate in set(rates)]

    def check_node(self, node: tuple[int, int], batch: int = 0) -> tuple[int, int]:
        height, width = self.size
        y, x = node
        if not (0 <= y < height and 0 <= x < width):
            raise ValueError(f"node: expected (y, x) inside {height} x {width}, got {node}")
        if not 0 <= batch < self.batch:
            raise ValueError(f"batch: expected 0 <= batch < {self.batch}, got {batch}")
        return int(y), int(x)


@torch.no_grad()
def extract_walks(layer: DGMN, f: Tensor) -> WalkData:
    """Run ``layer`` on ``f`` and keep, per rate, what Figure 4 shows.

    Nothing is recomputed here: walks, affinities and filters are the ones the layer's
    :meth:`~dgmn_ref.layer.DGMN.forward_with_states` used to build its messages.

    Args:
        layer: a :class:`~dgmn_ref.layer.DGMN`.
        f: its input F, ``b c h w``.

    Example:
        >>> layer = DGMN(8, rates=(1, 2), groups=2)
        >>> data = extract_walks(layer, torch.randn(1, 8, 5, 6))
        >>> tuple(data.walked.shape), tuple(data.weights.shape)
        ((2, 1, 9, 2, 5, 6), (2, 1, 2, 9, 5, 6))
    """
    if not isinstance(layer, DGMN):
        raise ValueError(f"layer: expected a dgmn_ref.layer.DGMN, got {type(layer).__name__}")
    output, states = layer.forward_with_states(f)
    height, width = f.shape[-2:]
    kernel_size = layer.rate_messages[0].kernel_size
    uniform = torch.stack(
        [
            functional.uniform_positions(
                height, width, state.rate, kernel_size, device=f.device, dtype=state.walks.dtype
            )
            for state in states
        ]
    )
    walks = torch.stack([state.walks for state in states])
    return WalkData(
        rates=tuple(state.rate for state in states),
        kernel_size=kernel_size,
        uniform=uniform,
        walked=rearrange(uniform, "s k p h w -> s 1 k p h w") + walks,
        affinity=torch.stack([state.affinity for state in states]),
        weights=torch.stack([state.weights for state in states]),
        output=output,
    )


def dgmn_layers(model: nn.Module) -> dict[str, DGMN]:
    """The DGMN layers of ``model`` by their module names (``""`` if model is one)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, DGMN)}


@torch.no_grad()
def extract_from_model(model: nn.Module, images: Tensor) -> dict[str, WalkData]:
    """:func:`extract_walks` for every DGMN layer of ``model`` on the input ``images``.

    A forward hook records each layer's input F during one forward pass of the model (in
    eval mode, restored afterwards); each layer is then asked for its states on that F.

    Returns:
        ``{module name: WalkData}``, in the order of :func:`dgmn_layers`.
    """
    layers = dgmn_layers(model)
    if not layers:
        raise ValueError(f"model: expected at least one DGMN layer in {type(model).__name__}")
    inputs: dict[str, Tensor] = {}
    hooks = [
        layer.register_forward_hook(
            lambda module, args, output, name=name: inputs.__setitem__(name, args[0])
        )
        for name, layer in layers.items()
    ]
    training = model.training
    try:
        model.eval()
        model(images)
        for hook in hooks:
            hook.remove()
        return {name: extract_walks(layer, inputs[name]) for name, layer in layers.items()}
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()


# ------------------------------------------------------------------------ reductions
def message_sources(
    data: WalkData, node: tuple[int, int], batch: int = 0, rates: Sequence[int] | None = None
) -> Tensor:
    r"""How much each source pixel contributes to node i's messages, ``h w``.

    Eq. (5) is linear in the features: :math:`m_i = \sum_q \sum_j A'^q_{i,j}
    \varrho(h | j, \Delta d^q_j) w^q_j` and the sampler spreads each walked neighbour over
    its four corner pixels with the bilinear weights. So pixel u receives

    .. math:: \sum_q \sum_j A'^q_{i,j}\, \bar w^q_j\, \kappa(u, p^q_j)

    with :math:`\bar w` the filter averaged over the G groups and :math:`\kappa` the
    bilinear corner weight of the walked position p (zero outside the map). This is the
    sampling weight of every rate *before fusion*: the layer's default ``"concat"`` fusion
    mixes the S messages with a learned 1x1 conv, which this map does not include. Filters
    are not squashed (sec. 3.4), so values can be negative.
    """
    y, x = data.check_node(node, batch)
    height, width = data.size
    chosen = data.rate_indices(rates)
    positions = data.walked[chosen, batch, :, :, y, x]  # s k p
    weight = data.affinity[chosen, batch, :, y, x] * reduce(
        data.weights[chosen, batch, :, :, y, x], "s g k -> s k", "mean"
    )
    index, beta = functional.bilinear_corners(positions[..., 0], positions[..., 1], height, width)
    heat = positions.new_zeros(height * width)  # corners outside the map have beta = 0
    heat.index_add_(0, index.flatten(), (weight * beta).flatten())
    return rearrange(heat, "(h w) -> h w", h=height)


def mean_walk_length(data: WalkData, batch: int = 0, rates: Sequence[int] | None = None) -> Tensor:
    """Mean length of the walks ||Delta d|| (eq. 4) of every node, ``h w``, in feature pixels.

    Averaged over the K neighbours and the chosen rates: zero where the layer samples
    uniformly, large where it has learned to look elsewhere.
    """
    walks = data.walks[data.rate_indices(rates), batch]  # s k p h w
    return reduce(walks.norm(dim=2), "s k h w -> h w", "mean")
