"""What a run is made of, Appendix A.2.2 and sec. 4.1: the model, the data, the optimizer
and the poly learning-rate schedule of a :class:`~dgmn_ref.training.config.TrainConfig`."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from dgmn_ref.models import SegmentationModel, load_imagenet_weights
from dgmn_ref.training.config import SYNTHETIC_ROOT, TrainConfig

__all__ = ["build_dataset", "build_model", "build_optimizer", "poly_lr"]


def poly_lr(base_lr: float, iteration: int, max_iterations: int, power: float = 0.9) -> float:
    r"""Poly decay (Zhao et al., 2017): :math:`lr = lr_0 (1 - i / i_{max})^{p}`.

    Example:
        >>> poly_lr(0.01, 0, 100), round(poly_lr(0.01, 50, 100), 6), poly_lr(0.01, 100, 100)
        (0.01, 0.005359, 0.0)
    """
    return base_lr * (1 - iteration / max_iterations) ** power


def build_model(cfg: TrainConfig) -> SegmentationModel:
    """The :class:`~dgmn_ref.models.SegmentationModel` of ``cfg`` (ImageNet weights if set)."""
    model = SegmentationModel(
        cfg.num_classes(),
        depth=cfg.depth,
        width=cfg.width,
        head_channels=cfg.head_channels,
        context=cfg.context,
        variant=cfg.variant,
        impl=cfg.impl,
        dropout=cfg.dropout,
        context_kwargs=({"rates": tuple(cfg.rates)} if cfg.rates else {})
        | (cfg.context_kwargs or {}),
    )
    if cfg.pretrained:
        load_imagenet_weights(model.backbone, cfg.pretrained)
    return model


def build_dataset(cfg: TrainConfig, split: str) -> Dataset:
    """Training split with the A.2.2 augmentations, or the evaluation split (untouched).

    ``synthetic`` is the embedded context task in the Cityscapes layout (generated on first
    use, default root ``data/synthetic_cityscapes``); its evaluation split also returns the
    context-dependent pixel mask.
    """
    from dgmn_ref.data import CityscapesDataset, CocoSemantic, TrainTransform, ensure_synthetic

    train = split == "train"
    transform = None
    if train:
        transform = TrainTransform(
            crop_size=tuple(cfg.crop_size),
            scale_range=tuple(cfg.scale_range) if cfg.scale_range else None,
            flip=cfg.flip,
        )
    subset = cfg.train_subset if train else cfg.val_subset
    if cfg.dataset == "coco":
        return CocoSemantic(
            cfg.root, f"{split}2017", transform=transform, subset=subset, seed=cfg.seed
        )
    root = cfg.root
    if cfg.dataset == "synthetic":
        root = ensure_synthetic(root or SYNTHETIC_ROOT)
    return CityscapesDataset(
        root,
        split,
        transform=transform,
        subset=subset,
        return_context=cfg.dataset == "synthetic" and not train,
        seed=cfg.seed,
    )


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum (A.2.2) or AdamW over the trainable parameters.

    With ``cfg.walk_lr_mult != 1`` the walk convolutions (eq. 4: ``walk_conv`` of DGMN,
    ``walk_convs`` of deformable message passing) form a second parameter group whose
    ``lr_mult`` scales the poly learning rate (:func:`dgmn_ref.training.loop.run_step`).
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    walks = [p for n, p in trainable if ".walk_conv" in n]
    if cfg.walk_lr_mult != 1 and walks:
        others = [p for n, p in trainable if ".walk_conv" not in n]
        params: list = [
            {"params": others, "lr_mult": 1.0},
            {"params": walks, "lr_mult": cfg.walk_lr_mult},
        ]
    else:
        params = [p for _, p in trainable]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
