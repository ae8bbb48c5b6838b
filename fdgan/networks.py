"""Generator, pose discriminator and training helpers of FD-GAN (the release's ``fdgan/networks.py``).

Attribute names and ``nn.Sequential`` positions give the state-dict keys of the release's
checkpoints (the release's key names, ``tests/data/state_dict_keys.json``), so they must not change.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable, List, Optional

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from reid.errors import ConfigError

log = logging.getLogger(__name__)

NormFactory = Callable[[int], nn.Module]

_NORM_TYPES = ("batch", "instance", "none")
_FUSE_MODES = ("cat", "add")
NGF = 64


def get_norm_layer(norm_type: str = "batch") -> NormFactory:
    """Return a factory ``f(num_channels) -> nn.Module`` for the named normalisation.

    Args:
        norm_type: ``'batch'`` (BatchNorm2d, affine), ``'instance'`` (InstanceNorm2d, not
            affine, no running statistics) or ``'none'`` (``nn.Identity``, which keeps the
            positions of the other layers, hence the state-dict keys, unchanged).

    Raises:
        ConfigError: any other value.
    """
    if norm_type == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True)
    if norm_type == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    if norm_type == "none":
        return nn.Identity
    raise ConfigError(f"unknown norm {norm_type!r} (choices: {', '.join(_NORM_TYPES)})")


def _norm_class(norm_layer: Optional[NormFactory]) -> Optional[type]:
    f = norm_layer
    while isinstance(f, functools.partial):
        f = f.func
    return f if isinstance(f, type) else None


def _is_instance_norm(norm_layer: Optional[NormFactory]) -> bool:
    cls = _norm_class(norm_layer)
    return cls is not None and issubclass(cls, nn.InstanceNorm2d)


class SingleValueInstanceNorm(nn.Identity):
    """Stands in for ``InstanceNorm2d`` on a map of one value per channel (G's 1 x 1 pose feature).

    Current PyTorch refuses to normalise one value; PyTorch 0.3 returned 0, so a release
    instance-norm G's pose feature was always 0. This module passes its input through (the
    behaviour for new training, which lets the pose feature reach the decoder) unless
    :meth:`follow_release` was called, after which it returns zeros, as the release did. Loading a
    file with PyTorch 0.3's ``running_mean`` / ``running_var`` at this position (every release
    instance-norm G has them) calls it (:func:`reid.utils.serialization.copy_state_dict`), and
    from then on the module keeps those buffers, so files written later load the same way.

    Args:
        num_features: channels of the map.
    """

    stands_in_for_instance_norm = True

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.release_zeros = False

    def follow_release(self) -> None:
        """Output zeros from now on, as PyTorch 0.3's instance norm of one value, and keep its buffers."""
        self.release_zeros = True
        if "running_mean" not in self._buffers:
            self.register_buffer("running_mean", torch.zeros(self.num_features))
            self.register_buffer("running_var", torch.ones(self.num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x) if self.release_zeros else x

    def extra_repr(self) -> str:
        return f"{self.num_features}, release_zeros={self.release_zeros}"


def _release_conv_transpose_bias(net: nn.Module) -> None:
    """Redraw ConvTranspose2d biases from PyTorch 0.3's U(-b, b), b = 1 / sqrt(in_channels * kh * kw)
    (current PyTorch computes b from the output channels)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.ConvTranspose2d) and m.bias is not None:
                fan = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                m.bias.uniform_(-fan ** -0.5, fan ** -0.5)


def _resolve_norm(norm_layer: Optional[NormFactory]) -> NormFactory:
    return nn.Identity if norm_layer is None else norm_layer


class CustomPoseGenerator(nn.Module):
    """Pose-guided generator G: pose encoder, feature fusion, decoder with optional skips.

    Args:
        pose_feature_nc: size of the pose feature produced by the encoder (128).
        reid_feature_nc: size of the identity feature from E (2048 for ResNet-50, 512 for 18/34).
        noise_nc: size of the noise vector (256).
        pose_nc: number of pose-map channels (18 keypoints).
        output_nc: number of image channels produced (3).
        dropout: dropout probability in the decoder blocks.
        norm_layer: normalisation factory, as returned by :func:`get_norm_layer` (a class such
            as ``nn.BatchNorm2d`` also works; None means no normalisation). Conv biases are
            used only with instance norm, as in the release.
        fuse_mode: ``'cat'`` (concatenate reid, pose, noise features) or ``'add'`` (sum of
            bias-free linear projections ``W_reid``, ``W_pose``, ``W_noise`` to the largest of
            the three sizes).
        connect_layers: 0..5, how many decoder blocks (from ``de_conv5`` on) also receive the
            encoder output of the same resolution.
        height, width: pose-map / output image size; both must be multiples of 32. The
            bottleneck kernels are (height / 32, width / 32), (8, 4) for 256 x 128 as in the
            release.

    With instance norm, a norm whose output map holds one value per channel would make it
    zero (old PyTorch) or raise (current PyTorch): ``en_avg``'s norm (1 x 1 output) is
    therefore a :class:`SingleValueInstanceNorm` (the identity, or zeros for a loaded release
    file), and so is any other such norm at small sizes (``en_conv5`` / ``de_avg`` when
    height / 32 * width / 32 == 1). InstanceNorm2d(affine=False) has no parameters, so the
    state-dict keys do not change. The ConvTranspose2d biases (instance norm only) are drawn
    with PyTorch 0.3's bound ``1 / sqrt(in_channels * kh * kw)``, as the release's were.

    Raises:
        ConfigError: unknown fuse mode, connect_layers outside 0..5, sizes not divisible by 32,
            non-positive channel counts or dropout outside [0, 1).
    """

    def __init__(
        self,
        pose_feature_nc: int = 128,
        reid_feature_nc: int = 2048,
        noise_nc: int = 256,
        pose_nc: int = 18,
        output_nc: int = 3,
        dropout: float = 0.0,
        norm_layer: Optional[NormFactory] = nn.BatchNorm2d,
        fuse_mode: str = "cat",
        connect_layers: int = 0,
        height: int = 256,
        width: int = 128,
    ) -> None:
        super().__init__()
        if fuse_mode not in _FUSE_MODES:
            raise ConfigError(f"unknown fuse_mode {fuse_mode!r} (choices: {', '.join(_FUSE_MODES)})")
        if isinstance(connect_layers, bool) or not isinstance(connect_layers, int) or not 0 <= connect_layers <= 5:
            raise ConfigError(f"connect_layers must be an integer in 0..5 (got {connect_layers!r})")
        if height <= 0 or width <= 0 or height % 32 or width % 32:
            raise ConfigError(
                f"image size {height}x{width} is not supported: height and width must be positive multiples of 32"
            )
        for name, value in (("pose_feature_nc", pose_feature_nc), ("reid_feature_nc", reid_feature_nc),
                            ("noise_nc", noise_nc), ("pose_nc", pose_nc), ("output_nc", output_nc)):
            if value <= 0:
                raise ConfigError(f"{name} must be > 0 (got {value})")
        if not 0 <= dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1) (got {dropout})")

        self.pose_feature_nc = pose_feature_nc
        self.reid_feature_nc = reid_feature_nc
        self.noise_nc = noise_nc
        self.pose_nc = pose_nc
        self.output_nc = output_nc
        self.fuse_mode = fuse_mode
        self.connect_layers = connect_layers
        self.height = height
        self.width = width

        instance = _is_instance_norm(norm_layer)
        use_bias = instance
        norm = _resolve_norm(norm_layer)
        bottleneck = (height // 32, width // 32)
        bottleneck_is_single = bottleneck[0] * bottleneck[1] == 1

        def norm_for(nc: int, single_value: bool) -> nn.Module:
            return SingleValueInstanceNorm(nc) if instance and single_value else norm(nc)

        def down(in_nc: int, out_nc: int, single_value: bool = False) -> nn.Sequential:
            return nn.Sequential(
                nn.LeakyReLU(0.2),
                nn.Conv2d(in_nc, out_nc, kernel_size=4, stride=2, padding=1, bias=use_bias),
                norm_for(out_nc, single_value),
            )

        def up(in_nc: int, out_nc: int, single_value: bool = False) -> nn.Sequential:
            return nn.Sequential(
                nn.ReLU(),
                nn.ConvTranspose2d(in_nc, out_nc, kernel_size=4, stride=2, padding=1, bias=use_bias),
                norm_for(out_nc, single_value),
                nn.Dropout(dropout),
            )

        ngf = NGF
        self.en_conv1 = nn.Conv2d(pose_nc, ngf, kernel_size=4, stride=2, padding=1, bias=use_bias)
        self.en_conv2 = down(ngf, ngf * 2)
        self.en_conv3 = down(ngf * 2, ngf * 4)
        self.en_conv4 = down(ngf * 4, ngf * 8)
        self.en_conv5 = down(ngf * 8, ngf * 8, single_value=bottleneck_is_single)
        self.en_avg = nn.Sequential(
            nn.LeakyReLU(0.2),
            nn.Conv2d(ngf * 8, pose_feature_nc, kernel_size=bottleneck, bias=use_bias),
            norm_for(pose_feature_nc, single_value=True),
        )

        if fuse_mode == "cat":
            fused_nc = reid_feature_nc + pose_feature_nc + noise_nc
        else:
            fused_nc = max(reid_feature_nc, pose_feature_nc, noise_nc)
            self.W_pose = nn.Linear(pose_feature_nc, fused_nc, bias=False)
            self.W_reid = nn.Linear(reid_feature_nc, fused_nc, bias=False)
            self.W_noise = nn.Linear(noise_nc, fused_nc, bias=False)
        self.fused_nc = fused_nc

        self.de_avg = nn.Sequential(
            nn.ReLU(),
            nn.ConvTranspose2d(fused_nc, ngf * 8, kernel_size=bottleneck, bias=use_bias),
            norm_for(ngf * 8, bottleneck_is_single),
            nn.Dropout(dropout),
        )
        # At each decoder input the previous decoder output and the encoder output of the same
        # resolution have the same width (in units of ngf); a skip doubles it.
        widths = [8, 8, 4, 2, 1]
        in_nc = [ngf * w * (2 if i < connect_layers else 1) for i, w in enumerate(widths)]
        self.de_conv5 = up(in_nc[0], ngf * 8)
        self.de_conv4 = up(in_nc[1], ngf * 4)
        self.de_conv3 = up(in_nc[2], ngf * 2)
        self.de_conv2 = up(in_nc[3], ngf)
        self.de_conv1 = nn.Sequential(
            nn.ReLU(),
            nn.ConvTranspose2d(in_nc[4], output_nc, kernel_size=4, stride=2, padding=1, bias=use_bias),
            nn.Tanh(),
        )
        if use_bias:
            _release_conv_transpose_bias(self)

    def forward(self, posemap: torch.Tensor, reid_feature: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Generate images.

        Args:
            posemap: N x pose_nc x height x width target pose maps.
            reid_feature: N x reid_feature_nc x 1 x 1 (or N x reid_feature_nc) identity features.
            noise: N x noise_nc x 1 x 1 (or N x noise_nc) noise.

        Returns:
            N x output_nc x height x width images in [-1, 1].
        """
        if posemap.dim() != 4 or posemap.shape[1:] != (self.pose_nc, self.height, self.width):
            raise ConfigError(
                f"posemap of shape {tuple(posemap.shape)} does not fit the generator "
                f"(N x {self.pose_nc} x {self.height} x {self.width}); check --height/--width"
            )
        n = posemap.shape[0]
        e1 = self.en_conv1(posemap)
        e2 = self.en_conv2(e1)
        e3 = self.en_conv3(e2)
        e4 = self.en_conv4(e3)
        e5 = self.en_conv5(e4)
        pose_feature = self.en_avg(e5)

        reid_feature = reid_feature.reshape(n, self.reid_feature_nc, 1, 1)
        noise = noise.reshape(n, self.noise_nc, 1, 1)
        if self.fuse_mode == "cat":
            fused = torch.cat([reid_feature, pose_feature, noise], dim=1)
        else:
            fused = (
                self.W_reid(reid_feature.flatten(1))
                + self.W_pose(pose_feature.flatten(1))
                + self.W_noise(noise.flatten(1))
            ).view(n, self.fused_nc, 1, 1)

        x = self.de_avg(fused)
        skips: List[torch.Tensor] = [e5, e4, e3, e2, e1]
        blocks = [self.de_conv5, self.de_conv4, self.de_conv3, self.de_conv2, self.de_conv1]
        for i, block in enumerate(blocks):
            if i < self.connect_layers:
                x = torch.cat([x, skips[i]], dim=1)
            x = block(x)
        return x


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator, used as the pose discriminator Dp (input: image + pose maps).

    Args:
        input_nc: input channels (3 + 18 = 21 for Dp).
        ndf: channels of the first convolution (64).
        n_layers: number of strided blocks; with the default 3 a 256 x 128 input gives
            1 x 30 x 14 logits (no sigmoid).
        norm_layer: normalisation factory as in :func:`get_norm_layer`; None or
            ``get_norm_layer('none')`` gives ``nn.Identity`` placeholders so the ``model.<i>``
            keys stay put. Convolution biases (except the first and last, which always have
            one) only with instance norm.
    """

    def __init__(
        self,
        input_nc: int,
        ndf: int = 64,
        n_layers: int = 3,
        norm_layer: Optional[NormFactory] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if input_nc <= 0 or ndf <= 0:
            raise ConfigError(f"input_nc and ndf must be > 0 (got {input_nc}, {ndf})")
        if n_layers < 1:
            raise ConfigError(f"n_layers must be >= 1 (got {n_layers})")
        use_bias = _is_instance_norm(norm_layer)
        norm = _resolve_norm(norm_layer)
        layers: List[nn.Module] = [
            nn.Conv2d(input_nc, ndf, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, kernel_size=4, stride=stride, padding=1, bias=use_bias),
                norm(ndf * mult),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, kernel_size=4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return N x 1 x h x w real/fake logits for N x input_nc x H x W input."""
        return self.model(x)


def init_weights(net: nn.Module) -> nn.Module:
    """Initialise ``net`` as the release does for G and Dp at the start of Stage II.

    Every module whose class name contains ``'Conv'`` (ConvTranspose2d included) or
    ``'Linear'`` gets weights N(0, 0.02); every BatchNorm2d gets weight N(1, 0.02), bias 0.
    Convolution and Linear biases keep their constructed values. Uses torch's RNG.

    Args:
        net: the network, changed in place.

    Returns:
        ``net``.
    """
    with torch.no_grad():
        for m in net.modules():
            name = type(m).__name__
            weight = getattr(m, "weight", None)
            if ("Conv" in name or "Linear" in name) and isinstance(weight, torch.Tensor):
                nn.init.normal_(weight, 0.0, 0.02)
            elif "BatchNorm2d" in name and isinstance(weight, torch.Tensor):
                nn.init.normal_(weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)
    return net


def get_scheduler(optimizer: Optimizer, niter: int, niter_decay: int) -> LambdaLR:
    """Linear-decay schedule of the release (``fdgan/networks.py``, ``get_scheduler``).

    The factor after ``e`` scheduler steps (one step at the end of each epoch, epochs
    1 .. niter + niter_decay) is ``1 - max(0, e + 2 - niter) / (niter_decay + 1)``; it is clamped
    at 0 should training continue past niter + niter_decay epochs (the release would then turn
    the learning rate negative).

    Args:
        optimizer: the optimiser whose learning rates are scaled.
        niter: epochs at the initial learning rate (``--niter``).
        niter_decay: epochs of linear decay (``--niter-decay``).
    """
    if niter < 0 or niter_decay < 0:
        raise ConfigError(f"niter and niter_decay must be >= 0 (got {niter}, {niter_decay})")

    def factor(e: int) -> float:
        return max(0.0, 1.0 - max(0, e + 2 - niter) / float(niter_decay + 1))

    return LambdaLR(optimizer, lr_lambda=factor)


def set_bn_fix(module: nn.Module) -> nn.Module:
    """Put every BatchNorm layer inside ``module`` in eval mode (running statistics frozen).

    Call it after ``module.train()``, which would switch them back. Only the mode changes:
    the BN affine parameters keep their ``requires_grad`` and are still optimised unless the
    caller freezes them (e.g. ``p.requires_grad_(False)``).

    Args:
        module: the network, changed in place.

    Returns:
        ``module``.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return module
