"""Loading E's networks from checkpoints, in every form the project and the release write.

- :func:`backbone_state_dict` / :func:`detect_arch`: the backbone's weights inside a checkpoint
  and the ResNet depth their layout has;
- :func:`load_backbone`: E's backbone (images -> pooled features) from a checkpoint;
- :func:`load_siamese`: the whole SiameseNet (backbone + verification head) from a checkpoint.
"""
from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from reid.errors import CheckpointError
from reid import models
from reid.models import build_siamese
from reid.models.multi_branch import SiameseNet
from reid.utils.osutils import PathLike
from reid.utils.serialization import copy_state_dict, extract_state_dict, load_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["backbone_state_dict", "detect_arch", "load_backbone", "load_siamese"]

# (bottleneck blocks?, blocks in layer1..layer4) -> architecture name.
_RESNET_LAYOUTS: Dict[Tuple[bool, Tuple[int, ...]], str] = {
    (False, (2, 2, 2, 2)): "resnet18",
    (False, (3, 4, 6, 3)): "resnet34",
    (True, (3, 4, 6, 3)): "resnet50",
    (True, (3, 4, 23, 3)): "resnet101",
    (True, (3, 8, 36, 3)): "resnet152",
}
_TORCHVISION_TOP = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.", "fc.")


def backbone_state_dict(obj: Any, source: str = "checkpoint") -> "OrderedDict[str, torch.Tensor]":
    """The backbone's state dict (keys ``base.*``) inside any loaded checkpoint.

    Accepts a baseline ``{'state_dict': ...}`` or a ``<epoch>_net_E.pth`` state dict (keys of a
    whole SiameseNet, ``base_model.*`` is taken), a plain backbone state dict (``base.*``) or a
    torchvision ResNet state dict (``conv1.*``, ``layer1.*``, ...), with or without ``module.``.

    Args:
        obj: what :func:`reid.utils.serialization.load_checkpoint` returned.
        source: the file name, for error messages.

    Raises:
        CheckpointError: no ResNet backbone in ``obj`` (e.g. a generator or discriminator file).
    """
    state = extract_state_dict(obj, source)
    if any(k.startswith("base_model.") for k in state):
        state = OrderedDict((k[len("base_model."):], v) for k, v in state.items() if k.startswith("base_model."))
    elif not any(k.startswith("base.") for k in state) and any(k.startswith("layer1.") for k in state):
        state = OrderedDict(
            (f"base.{k}", v) for k, v in state.items() if k.startswith(_TORCHVISION_TOP)
        )
    if "base.conv1.weight" not in state or "base.layer1.0.conv1.weight" not in state:
        raise CheckpointError(
            f"{source}: holds no re-ID backbone (expected the keys of a SiameseNet 'base_model.base.*' "
            f"or a ResNet 'base.*'; is this a generator or discriminator file?)"
        )
    return OrderedDict((k, v) for k, v in state.items() if k.startswith("base."))


def detect_arch(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The ResNet name (``'resnet18'`` ... ``'resnet152'``) whose layout a ``base.*`` state dict
    has, or None when it matches none of them."""
    bottleneck = "base.layer1.0.conv3.weight" in state
    blocks = []
    for layer in range(1, 5):
        pattern = re.compile(rf"^base\.layer{layer}\.(\d+)\.")
        blocks.append(len({m.group(1) for k in state for m in [pattern.match(k)] if m}))
    return _RESNET_LAYOUTS.get((bottleneck, tuple(blocks)))


def load_backbone(checkpoint: Optional[PathLike], arch: str = "resnet50") -> nn.Module:
    """Build E's backbone (a ResNet cut at pooling) and load ``checkpoint`` into it.

    Args:
        checkpoint: a checkpoint file in any form :func:`backbone_state_dict` accepts; None gives
            randomly initialised weights (for tests and timing only).
        arch: the architecture to build when it cannot be read from the weights' shapes (or when
            ``checkpoint`` is None).

    Returns:
        The backbone in eval mode, on the CPU.

    Raises:
        CheckpointError: the file is missing or unreadable, or holds another network.
        ConfigError: unknown ``arch``.
    """
    if checkpoint is None:
        logger.warning("no checkpoint given: %s with random weights", arch)
        return models.create(arch, pretrained=False, cut_at_pooling=True).eval()
    source = os.fspath(checkpoint)
    state = backbone_state_dict(load_checkpoint(source), source)
    detected = detect_arch(state)
    if detected is not None and detected != arch:
        logger.info("%s: weights are %s (not %s); building %s", source, detected, arch, detected)
    model = models.create(detected or arch, pretrained=False, cut_at_pooling=True)
    copy_state_dict(state, model, strict=True, source=source)
    logger.info("loaded %s backbone from %s", detected or arch, source)
    return model.eval()


def load_siamese(checkpoint: PathLike) -> SiameseNet:
    """Build the SiameseNet (backbone + verification head) a checkpoint holds and load it.

    Args:
        checkpoint: a baseline ``model_best.pth.tar`` / ``checkpoint.pth.tar`` or an
            ``<epoch>_net_E.pth`` (with or without ``module.``); the ResNet depth is read from
            the weights.

    Returns:
        The network in eval mode, on the CPU.

    Raises:
        CheckpointError: missing/unreadable file, no backbone, no verification head, or weights
            of another shape.
    """
    source = os.fspath(checkpoint)
    state = extract_state_dict(load_checkpoint(source), source)
    arch = detect_arch(backbone_state_dict(state, source))
    if arch is None:
        raise CheckpointError(f"{source}: the backbone's layer layout matches no ResNet of reid.models")
    if not any(k.startswith("embed_model.") for k in state):
        raise CheckpointError(
            f"{source}: holds no verification head (embed_model.*); ranked lists need a whole E: a "
            "baseline model_best.pth.tar or an <epoch>_net_E.pth"
        )
    model = build_siamese(arch, pretrained=False, num_classes=2)
    copy_state_dict(state, model, strict=True, source=source)
    logger.info("%s: %s SiameseNet loaded", source, arch)
    return model.eval()
