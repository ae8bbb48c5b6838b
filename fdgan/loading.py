"""G's configuration read from its weights, and G rebuilt from a checkpoint.

A generator checkpoint (``<epoch>_net_G.pth``) holds only weights; the sizes, fusion mode, skip
connections and normalisation they were trained with follow from the names and shapes of those
weights (:func:`infer_generator_config`), so :func:`load_generator` needs no training option.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Mapping, Optional, Tuple

import torch

from fdgan.networks import NGF, CustomPoseGenerator, get_norm_layer
from reid.errors import CheckpointError, ConfigError
from reid.utils.osutils import PathLike
from reid.utils.serialization import copy_state_dict, extract_state_dict, load_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["GeneratorConfig", "infer_generator_config", "load_generator"]

# Input channels of de_conv5 .. de_conv1 without skip connections, in units of ngf; a skip
# connection doubles a block's input (the release's ``CustomPoseGenerator``).
_DECODER_WIDTHS = (8, 8, 4, 2, 1)
_DECODER_BLOCKS = ("de_conv5", "de_conv4", "de_conv3", "de_conv2", "de_conv1")


@dataclass(frozen=True)
class GeneratorConfig:
    """The constructor arguments of a :class:`CustomPoseGenerator`, as read from its weights.

    Attributes:
        pose_feature_nc: size of the pose feature (``--pose-feature-size``).
        reid_feature_nc: size of E's feature (2048 for ResNet-50, 512 for ResNet-18/34).
        noise_nc: size of the noise vector (``--noise-feature-size``).
        pose_nc: pose-map channels (18).
        output_nc: image channels (3).
        fuse_mode: ``'cat'`` or ``'add'`` (``--fuse-mode``).
        connect_layers: skip connections, 0..5 (``--connect-layers``).
        norm: ``'batch'``, ``'instance'`` or ``'none'`` (``--norm``).
        height: output image height (a multiple of 32).
        width: output image width (a multiple of 32).
    """

    pose_feature_nc: int
    reid_feature_nc: int
    noise_nc: int
    pose_nc: int
    output_nc: int
    fuse_mode: str
    connect_layers: int
    norm: str
    height: int
    width: int

    def build(self) -> CustomPoseGenerator:
        """A freshly initialised generator with this configuration (dropout 0: inference only)."""
        return CustomPoseGenerator(
            pose_feature_nc=self.pose_feature_nc, reid_feature_nc=self.reid_feature_nc,
            noise_nc=self.noise_nc, pose_nc=self.pose_nc, output_nc=self.output_nc, dropout=0.0,
            norm_layer=get_norm_layer(self.norm), fuse_mode=self.fuse_mode,
            connect_layers=self.connect_layers, height=self.height, width=self.width,
        )


def _shape(state: Mapping[str, torch.Tensor], key: str, source: str) -> Tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"{source}: no '{key}' in the weights (not a CustomPoseGenerator of FD-GAN?)")
    return tuple(state[key].shape)


def infer_generator_config(
    state: Mapping[str, torch.Tensor], reid_feature_nc: Optional[int] = None, source: str = "netG",
) -> GeneratorConfig:
    """Read a generator's configuration from the names and shapes of its weights.

    - sizes: ``pose_nc`` from ``en_conv1``'s input channels, ``output_nc`` from ``de_conv1``'s
      output channels, ``pose_feature_nc`` from ``en_avg``'s output channels, height and width
      from ``en_avg``'s kernel (H / 32, W / 32);
    - fusion: ``W_pose.weight`` present means ``'add'`` (then the reid and noise sizes are the
      inputs of ``W_reid`` and ``W_noise``); otherwise ``'cat'``, whose fused width
      (``de_avg``'s input channels) is reid + pose + noise, so the noise size is what remains
      after ``reid_feature_nc`` (E's feature size, which must then be given);
    - skips: ``connect_layers`` from the input channels of ``de_conv5`` .. ``de_conv1`` (the
      spec's table: a connected block has twice the plain width);
    - norm: BatchNorm running statistics present means ``'batch'``; otherwise convolution biases
      (used only with instance norm) mean ``'instance'``; neither means ``'none'``.

    Args:
        state: G's state dict without wrapper prefixes (see
            :func:`reid.utils.serialization.extract_state_dict`).
        reid_feature_nc: E's feature size; required for ``'cat'`` fusion, checked against
            ``W_reid`` for ``'add'``. None: unknown.
        source: the file name, for error messages.

    Raises:
        CheckpointError: the weights are not a generator's, or their shapes fit no configuration
            (or do not fit ``reid_feature_nc``).
        ConfigError: ``'cat'`` fusion and ``reid_feature_nc`` is None.
    """
    pose_nc = _shape(state, "en_conv1.weight", source)[1]
    output_nc = _shape(state, "de_conv1.1.weight", source)[1]
    en_avg = _shape(state, "en_avg.1.weight", source)
    if len(en_avg) != 4:
        raise CheckpointError(f"{source}: 'en_avg.1.weight' has shape {en_avg}, not a convolution kernel")
    pose_feature_nc, kernel_h, kernel_w = en_avg[0], en_avg[2], en_avg[3]
    fused_nc = _shape(state, "de_avg.1.weight", source)[0]

    if "W_pose.weight" in state:
        fuse_mode = "add"
        own_reid = _shape(state, "W_reid.weight", source)[1]
        noise_nc = _shape(state, "W_noise.weight", source)[1]
        if reid_feature_nc is not None and reid_feature_nc != own_reid:
            raise CheckpointError(
                f"{source}: the generator takes {own_reid}-d identity features but E gives "
                f"{reid_feature_nc}-d ones: E and G come from different runs"
            )
        reid_feature_nc = own_reid
        if fused_nc != max(reid_feature_nc, pose_feature_nc, noise_nc):
            raise CheckpointError(
                f"{source}: de_avg takes {fused_nc} channels, expected max({reid_feature_nc}, "
                f"{pose_feature_nc}, {noise_nc}) for 'add' fusion"
            )
    else:
        fuse_mode = "cat"
        if reid_feature_nc is None:
            raise ConfigError(
                f"{source}: 'cat' fusion: the identity feature size cannot be read from G alone; "
                "pass reid_feature_nc (E's feature size)"
            )
        noise_nc = fused_nc - reid_feature_nc - pose_feature_nc
        if noise_nc <= 0:
            raise CheckpointError(
                f"{source}: de_avg takes {fused_nc} channels, too few for E's {reid_feature_nc}-d "
                f"feature plus the {pose_feature_nc}-d pose feature: E and G come from different runs"
            )

    ratios = []
    for block, width in zip(_DECODER_BLOCKS, _DECODER_WIDTHS):
        in_nc = _shape(state, f"{block}.1.weight", source)[0]
        ratio, rem = divmod(in_nc, NGF * width)
        if rem or ratio not in (1, 2):
            raise CheckpointError(f"{source}: {block} takes {in_nc} input channels, which fits no skip layout")
        ratios.append(ratio)
    connect_layers = ratios.count(2)
    if ratios != [2] * connect_layers + [1] * (5 - connect_layers):
        raise CheckpointError(f"{source}: decoder input widths {ratios} fit no connect_layers value")

    if any(k.endswith(".running_mean") for k in state):
        norm = "batch"
    elif "en_conv1.bias" in state:
        norm = "instance"
    else:
        norm = "none"

    return GeneratorConfig(
        pose_feature_nc=pose_feature_nc, reid_feature_nc=int(reid_feature_nc), noise_nc=noise_nc,
        pose_nc=pose_nc, output_nc=output_nc, fuse_mode=fuse_mode, connect_layers=connect_layers,
        norm=norm, height=kernel_h * 32, width=kernel_w * 32,
    )


def load_generator(checkpoint: PathLike, reid_feature_nc: Optional[int] = None
                   ) -> Tuple[CustomPoseGenerator, GeneratorConfig]:
    """Rebuild the generator a checkpoint holds, with the configuration read from its weights.

    Args:
        checkpoint: G's weights, ``<epoch>_net_G.pth`` (with or without ``module.``).
        reid_feature_nc: E's feature size (see :func:`infer_generator_config`).

    Returns:
        ``(netG, config)``: the generator in eval mode on the CPU (dropout 0), and its
        :class:`GeneratorConfig`.

    Raises:
        CheckpointError: the file is missing or unreadable, holds another network, or does not
            fit ``reid_feature_nc``.
    """
    source = os.fspath(checkpoint)
    state = extract_state_dict(load_checkpoint(source), source)
    if "en_conv1.weight" not in state or "de_conv1.1.weight" not in state:
        raise CheckpointError(
            f"{source}: holds no pose generator (expected the keys en_conv1.*, de_conv1.* of "
            "an <epoch>_net_G.pth; is this an E, Di or Dp file?)"
        )
    config = infer_generator_config(state, reid_feature_nc=reid_feature_nc, source=source)
    logger.info("%s: generator %s", source, ", ".join(f"{k}={v}" for k, v in asdict(config).items()))
    net = config.build()
    copy_state_dict(state, net, strict=True, source=source)
    return net.eval(), config
