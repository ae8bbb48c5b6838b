"""Re-ID networks (the release's ``reid/models/``): ResNet backbones, the pair head and the Siamese wrapper.

``create(name, ...)`` builds a backbone by name; ``names()`` lists the names (for argparse
``choices``); ``build_siamese(arch, ...)`` builds the whole SiameseNet of E (and Di).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Union

from reid.errors import ConfigError
from reid.models.embedding import EltwiseSubEmbed
from reid.models.multi_branch import SiameseNet
from reid.models.resnet import ResNet, resnet18, resnet34, resnet50, resnet101, resnet152

__all__ = ["names", "create", "build_siamese", "ResNet", "EltwiseSubEmbed", "SiameseNet"]

_FACTORY: Dict[str, Callable[..., ResNet]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "resnet152": resnet152,
}


def names() -> List[str]:
    """Return the names accepted by :func:`create`, shallowest network first."""
    return list(_FACTORY)


def create(name: str, *args: Any, **kwargs: Any) -> ResNet:
    """Build the backbone called ``name``.

    Args:
        name: one of :func:`names` (``'resnet18'`` ... ``'resnet152'``).
        *args, **kwargs: passed to :class:`reid.models.resnet.ResNet` after the depth
            (``pretrained``, ``cut_at_pooling``, ``num_features``, ``norm``, ``dropout``,
            ``num_classes``).

    Raises:
        ConfigError: unknown ``name`` (the message lists the choices), or ImageNet weights
            requested but not available.
    """
    if name not in _FACTORY:
        raise ConfigError(f"unknown architecture {name!r} (choices: {', '.join(_FACTORY)})")
    return _FACTORY[name](*args, **kwargs)


def build_siamese(arch: str = "resnet50", pretrained: Union[bool, str] = True, num_classes: int = 2) -> SiameseNet:
    """SiameseNet(ResNet cut at pooling, EltwiseSubEmbed(square, BN, classifier)) as net_E / net_Di.

    Args:
        arch: the backbone (``reid.models.names()``).
        pretrained: start the backbone from ImageNet weights (True), from a local torchvision-format
            weights file (its path), or from random weights (False); see :class:`ResNet`.
        num_classes: outputs of the verification head (2 for E, 1 for Di).
    """
    base = create(arch, pretrained=pretrained, cut_at_pooling=True)
    embed = EltwiseSubEmbed(
        nonlinearity="square", use_batch_norm=True, use_classifier=True,
        num_features=base.num_features, num_classes=num_classes,
    )
    return SiameseNet(base, embed)
