"""ResNet backbones (the release's ``reid/models/resnet.py``).

:class:`ResNet` wraps a torchvision ResNet as attribute ``base`` so that state-dict keys read
``base.conv1.weight`` ... ``base.fc.bias`` exactly as in the release's checkpoints (``base.fc`` is
kept although the forward pass never uses it). The forward pass runs ``base``'s children up to
``avgpool``, averages over the whole feature map (so any input size works) and flattens.
"""
from __future__ import annotations

import logging
import os
import pickle
import urllib.parse
import zipfile
from typing import Any, Callable, Dict, Union

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import (
    ResNet18_Weights,
    ResNet34_Weights,
    ResNet50_Weights,
    ResNet101_Weights,
    ResNet152_Weights,
)

from reid.errors import ConfigError, first_line
from reid.models.pretrained import RANDOM, read_weights_file

log = logging.getLogger(__name__)

_BUILDERS: Dict[int, Callable[..., torchvision.models.ResNet]] = {
    18: torchvision.models.resnet18,
    34: torchvision.models.resnet34,
    50: torchvision.models.resnet50,
    101: torchvision.models.resnet101,
    152: torchvision.models.resnet152,
}

# IMAGENET1K_V1 are the original torchvision ImageNet weights, the ones the release was trained
# from (`pretrained=True` of the torchvision of its time); V2 (the newer default for 50/101/152)
# was trained with a different recipe.
_WEIGHTS: Dict[int, Any] = {
    18: ResNet18_Weights.IMAGENET1K_V1,
    34: ResNet34_Weights.IMAGENET1K_V1,
    50: ResNet50_Weights.IMAGENET1K_V1,
    101: ResNet101_Weights.IMAGENET1K_V1,
    152: ResNet152_Weights.IMAGENET1K_V1,
}


def imagenet_weights_file(depth: int) -> str:
    """Return the path where torchvision looks for the ImageNet weights of ResNet-``depth``.

    Args:
        depth: 18, 34, 50, 101 or 152.

    The folder is torch hub's cache (``$TORCH_HOME/hub/checkpoints``, by default
    ``~/.cache/torch/hub/checkpoints``); the file name is the last part of torchvision's URL.
    """
    _check_depth(depth)
    file_name = os.path.basename(urllib.parse.urlparse(_WEIGHTS[depth].url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", file_name)


def _check_depth(depth: int) -> None:
    if depth not in _BUILDERS:
        choices = ", ".join(f"resnet{d}" for d in _BUILDERS)
        raise ConfigError(f"unsupported ResNet depth {depth!r} (choices: {choices})")


def _imagenet_state_dict(depth: int) -> Dict[str, torch.Tensor]:
    """Fetch torchvision's ImageNet weights (from the hub cache, downloading when online)."""
    weights = _WEIGHTS[depth]
    cached = imagenet_weights_file(depth)
    try:
        return weights.get_state_dict(progress=False, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        if os.path.isfile(cached):
            raise ConfigError(
                f"ImageNet weights file {cached} cannot be read ({first_line(e)}); replace it with "
                f"a fresh copy of {weights.url} or pass --no-pretrained"
            ) from None
        raise ConfigError(
            f"ImageNet weights for resnet{depth} are not available ({first_line(e)}): put "
            f"{os.path.basename(cached)} (from {weights.url}) into {os.path.dirname(cached)}, "
            f"or pass --no-pretrained"
        ) from None


class ResNet(nn.Module):
    """A torchvision ResNet backbone with optional open-reid heads.

    Args:
        depth: 18, 34, 50, 101 or 152.
        pretrained: True: load torchvision's ImageNet (IMAGENET1K_V1) weights into ``base``; when
            they are neither cached nor downloadable a :class:`ConfigError` says which file to put
            where. A path: load that torchvision-format weights file instead (a local ImageNet
            copy, or the rendered-identity substitute of :mod:`reid.pipelines.pretrain`; see
            :func:`reid.models.pretrained.read_weights_file`). False: random initialisation (conv
            Kaiming-normal fan_out, BN 1/0, Linear N(0, 0.001)).
        cut_at_pooling: return the pooled feature vector (what FD-GAN uses); the heads below are
            then not built.
        num_features: size of an optional Linear + BatchNorm1d embedding after pooling (0: none).
        norm: L2-normalise the embedding (otherwise it goes through ReLU).
        dropout: dropout probability applied before the classifier (0: none).
        num_classes: size of an optional Linear classifier (0: none).

    Attributes:
        backbone_origin: where ``base``'s weights came from (:mod:`reid.models.pretrained`).
        pooled_features: size of the pooled vector (2048 for ResNet-50/101/152, 512 for 18/34).
        num_features: size of the feature fed to the classifier: the pooled size unless an
            embedding was built. Equals ``pooled_features`` when ``cut_at_pooling``.
        out_features: size of the forward output.
    """

    def __init__(
        self,
        depth: int,
        pretrained: Union[bool, str] = True,
        cut_at_pooling: bool = False,
        num_features: int = 0,
        norm: bool = False,
        dropout: float = 0,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        _check_depth(depth)
        if num_features < 0 or num_classes < 0:
            raise ConfigError(f"num_features and num_classes must be >= 0 (got {num_features}, {num_classes})")
        if not 0 <= dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1) (got {dropout})")
        self.depth = depth
        self.pretrained = pretrained
        self.cut_at_pooling = cut_at_pooling
        self.base = _BUILDERS[depth](weights=None)
        self.pooled_features = self.base.fc.in_features

        self.has_embedding = not cut_at_pooling and num_features > 0
        self.norm = norm
        self.dropout = dropout
        self.num_classes = 0 if cut_at_pooling else num_classes
        self.num_features = num_features if self.has_embedding else self.pooled_features
        if self.has_embedding:
            self.feat = nn.Linear(self.pooled_features, self.num_features)
            self.feat_bn = nn.BatchNorm1d(self.num_features)
        if not cut_at_pooling and dropout > 0:
            self.drop = nn.Dropout(dropout)
        if self.num_classes > 0:
            self.classifier = nn.Linear(self.num_features, self.num_classes)
        self.out_features = self.num_classes if self.num_classes > 0 else self.num_features

        self.reset_params()
        self.backbone_origin: Dict[str, Any] = dict(RANDOM)
        if isinstance(pretrained, (str, os.PathLike)):
            state, self.backbone_origin = read_weights_file(os.fspath(pretrained), depth)
            self.base.load_state_dict(state, strict=False)
            log.info("resnet%d: loaded %d feature tensors from %s", depth, self.backbone_origin["tensors_loaded"],
                     pretrained)
        elif pretrained:
            state = _imagenet_state_dict(depth)
            try:
                self.base.load_state_dict(state)
            except RuntimeError as e:
                raise ConfigError(
                    f"{imagenet_weights_file(depth)} does not hold resnet{depth} weights "
                    f"({first_line(e)}); replace it or pass --no-pretrained"
                ) from None
            log.info("resnet%d: loaded ImageNet weights from %s", depth, imagenet_weights_file(depth))
            self.backbone_origin = {"kind": "imagenet", "weights": _WEIGHTS[depth].name,
                                    "file": os.path.basename(imagenet_weights_file(depth))}

    def reset_params(self) -> None:
        """Randomly initialise every layer (the ``pretrained=False`` state)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.001)
                nn.init.zeros_(m.bias)
        if self.has_embedding:
            # The embedding is a feature layer followed by BN, not a classifier: Kaiming, as conv.
            nn.init.kaiming_normal_(self.feat.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``x`` (N x 3 x H x W, any H, W >= 32) to N x ``out_features``."""
        for name, module in self.base.named_children():
            if name == "avgpool":
                break
            x = module(x)
        x = x.mean(dim=(2, 3))
        if self.cut_at_pooling:
            return x
        if self.has_embedding:
            x = self.feat_bn(self.feat(x))
        if self.norm:
            x = F.normalize(x, dim=1)
        elif self.has_embedding:
            x = F.relu(x)
        if self.dropout > 0:
            x = self.drop(x)
        if self.num_classes > 0:
            x = self.classifier(x)
        return x


def resnet18(*args: Any, **kwargs: Any) -> ResNet:
    """ResNet-18 backbone; arguments after ``depth`` as :class:`ResNet`."""
    return ResNet(18, *args, **kwargs)


def resnet34(*args: Any, **kwargs: Any) -> ResNet:
    """ResNet-34 backbone; arguments after ``depth`` as :class:`ResNet`."""
    return ResNet(34, *args, **kwargs)


def resnet50(*args: Any, **kwargs: Any) -> ResNet:
    """ResNet-50 backbone; arguments after ``depth`` as :class:`ResNet`."""
    return ResNet(50, *args, **kwargs)


def resnet101(*args: Any, **kwargs: Any) -> ResNet:
    """ResNet-101 backbone; arguments after ``depth`` as :class:`ResNet`."""
    return ResNet(101, *args, **kwargs)


def resnet152(*args: Any, **kwargs: Any) -> ResNet:
    """ResNet-152 backbone; arguments after ``depth`` as :class:`ResNet`."""
    return ResNet(152, *args, **kwargs)
