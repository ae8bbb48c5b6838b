"""FDGANModel: the networks, losses, optimisers and update step of Stages II and III (the paper's
Section 3; the release's ``fdgan/model.py``, ``FDGANModel``)."""
from __future__ import annotations

import contextlib
import logging
import os
import random
from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fdgan.losses import FLIP_PROBABILITY, GANLoss
from fdgan.networks import (
    CustomPoseGenerator, NLayerDiscriminator, get_norm_layer, get_scheduler, init_weights, set_bn_fix,
)
from fdgan.utils.util import posemap2im, tensor2im
from reid.errors import ConfigError
from reid.models import build_siamese
from reid.utils.optim import fused_kwargs, load_optimizer_state
from reid.utils.release_adam import ReleaseAdam
from reid.utils.amp import MixedPrecision, resolve_mixed_precision
from reid.utils.data.preprocessor import batch_pose_maps
from reid.utils.distributed import DistributedContext, convert_sync_batchnorm
from reid.utils.serialization import copy_state_dict, extract_state_dict, load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

NET_NAMES = ("E", "G", "Di", "Dp")
LOSS_NAMES = ("G_v", "G_r", "G_sp", "G_gan_Di", "G_gan_Dp", "D_i", "D_p")


@contextlib.contextmanager
def frozen_parameters(*nets: nn.Module) -> Iterator[None]:
    """Mark the trainable parameters of ``nets`` as not requiring gradients while the block runs."""
    params = [p for net in nets for p in net.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@dataclass(frozen=True)
class GANConfig:
    """The networks, losses and optimisers of Stages II and III, with the release's defaults.

    Attributes:
        stage: 1 = paper Stage II (E frozen, G/Dp initialised, Di from E); 2 = Stage III (all trained).
        arch: ResNet depth of E and Di.
        height, width: image size (divisible by 32).
        pose_feature_size, noise_feature_size: sizes of G's pose feature and noise vector.
        norm: normalisation of G and Dp (batch, instance, none).
        drop: dropout of G's decoder.
        connect_layers: skip connections of G (0..5).
        fuse_mode: 'cat' or 'add' fusion in G.
        lr: base learning rate (each optimiser's share as in the release's FDGANModel.__init__).
        lambda_recon, lambda_veri, lambda_sp: loss weights.
        smooth_label: smoothed discriminator targets (and rare target swaps).
        gan_loss: the GAN losses' form (:class:`fdgan.losses.GANLoss` ``mode``): ``'release'`` or ``'logits'``.
        niter, niter_decay: epochs at the full rate, then epochs of linear decay.
        netE_pretrain, netG_pretrain, netDi_pretrain, netDp_pretrain: checkpoint files to start from.
        pretrained: ImageNet weights for E/Di backbones when no E file is given (stage 1 only).
        apply_lr_mult: apply the per-group lr multipliers of stage 2 (the release ignores them).
    """

    stage: int = 1
    arch: str = "resnet50"
    height: int = 256
    width: int = 128
    pose_feature_size: int = 128
    noise_feature_size: int = 256
    norm: str = "batch"
    drop: float = 0.2
    connect_layers: int = 0
    fuse_mode: str = "cat"
    lr: float = 0.001
    lambda_recon: float = 1.0
    lambda_veri: float = 1.0
    lambda_sp: float = 1.0
    smooth_label: bool = False
    gan_loss: str = "release"
    niter: int = 50
    niter_decay: int = 50
    netE_pretrain: str = ""
    netG_pretrain: str = ""
    netDi_pretrain: str = ""
    netDp_pretrain: str = ""
    pretrained: bool = True
    apply_lr_mult: bool = False

    @classmethod
    def from_options(cls, opt: Any) -> "GANConfig":
        """The settings of this class that ``opt`` (any object with them as attributes, such as
        :class:`fdgan.pipeline.TrainConfig`) holds."""
        return cls(**{f.name: getattr(opt, f.name) for f in fields(cls)})

    @property
    def pretrain_files(self) -> dict[str, str]:
        """{network name: its checkpoint file, or ''} in :data:`NET_NAMES` order."""
        return dict(zip(NET_NAMES, (self.netE_pretrain, self.netG_pretrain, self.netDi_pretrain,
                                    self.netDp_pretrain)))


class FDGANModel:
    """Pose-guided feature distilling GAN: encoder E, generator G, identity and pose discriminators.

    One iteration updates Di, Dp and G in the release's order with the release's losses, and
    computes less than the release (the numbers are the same up to float rounding; see
    ``docs/differences.md``): Di's backbone runs once over the origin images per update (its
    BatchNorm is frozen), G's step computes no weight gradients that no optimiser uses (Di's and
    Dp's, and in Stage II the frozen E's), and the optimisers use PyTorch's fused SGD/Adam kernels
    on CPU and CUDA.

    Args:
        config: the networks, losses and optimisers.
        device: where the networks live.
        mixed_precision: autocast settings of the step (``--amp``); fp16 uses ``self.scaler``.
    """

    def __init__(self, config: GANConfig, device: torch.device | str = "cpu",
                 mixed_precision: Optional[MixedPrecision] = None) -> None:
        c = self.config = config
        if c.stage not in (1, 2):
            raise ConfigError(f"--stage {c.stage}: expected 1 (GAN pre-training) or 2 (global fine-tuning)")
        self.stage = c.stage
        self.device = torch.device(device)
        check_pretrain_files(c)

        use_imagenet = c.pretrained and c.stage == 1 and not c.netE_pretrain
        self.net_E = build_siamese(c.arch, pretrained=use_imagenet, num_classes=2)
        self.net_Di = build_siamese(c.arch, pretrained=False, num_classes=1)
        reid_size = self.net_E.embed_model.classifier.in_features
        norm_layer = get_norm_layer(c.norm)
        self.net_G = CustomPoseGenerator(
            pose_feature_nc=c.pose_feature_size, reid_feature_nc=reid_size, noise_nc=c.noise_feature_size,
            pose_nc=18, output_nc=3, dropout=c.drop, norm_layer=norm_layer, fuse_mode=c.fuse_mode,
            connect_layers=c.connect_layers, height=c.height, width=c.width,
        )
        self.net_Dp = NLayerDiscriminator(3 + 18, norm_layer=norm_layer)

        if c.stage == 1:
            init_weights(self.net_G)
            init_weights(self.net_Dp)
            if c.netE_pretrain:
                self.load_network("E", c.netE_pretrain)
            self.init_di_from_e()
            self.net_E.requires_grad_(False)
        else:
            for name, path in c.pretrain_files.items():
                self.load_network(name, path)
        for name in NET_NAMES:
            self.net(name).to(self.device)
        self.mixed_precision = mixed_precision if mixed_precision is not None else MixedPrecision()
        self.scaler = self.mixed_precision.grad_scaler()
        # Set by distribute(): averages the gradients of one optimiser over the processes.
        self._grad_sync: Optional[Callable[[Iterable[torch.Tensor]], None]] = None

        self.criterion_gan_d = GANLoss(smooth=c.smooth_label, mode=c.gan_loss).to(self.device)
        self.criterion_gan_g = GANLoss(smooth=False, mode=c.gan_loss).to(self.device)
        self._build_optimizers(c.lr, c.apply_lr_mult)
        self.schedulers = [get_scheduler(o, c.niter, c.niter_decay) for o in self.optimizers.values()]
        self.losses: "OrderedDict[str, float]" = OrderedDict((k, 0.0) for k in LOSS_NAMES)

    @classmethod
    def from_options(cls, opt: Any, device: torch.device | str = "cpu",
                     mixed_precision: Optional[MixedPrecision] = None) -> "FDGANModel":
        """Build from train.py's settings (a :class:`fdgan.pipeline.TrainConfig`, or any object with
        the :class:`GANConfig` settings as attributes); ``mixed_precision`` defaults to what its
        ``amp`` / ``amp_dtype`` give on ``device``."""
        device = torch.device(device)
        if mixed_precision is None:
            mixed_precision = resolve_mixed_precision(opt.amp, opt.amp_dtype, device)
        return cls(GANConfig.from_options(opt), device=device, mixed_precision=mixed_precision)

    # ------------------------------------------------------------------ set-up
    def net(self, name: str) -> nn.Module:
        """The network called ``name`` (E, G, Di or Dp)."""
        return getattr(self, f"net_{name}")

    def load_network(self, name: str, path: str) -> None:
        """Load checkpoint file ``path`` (any release form) into network ``name``."""
        copy_state_dict(load_checkpoint(path), self.net(name), source=path)
        logger.info("net_%s: loaded %s", name, path)

    def init_di_from_e(self) -> None:
        """Di = E's weights with the 1-way classifier taken from row 1 ('same identity') of E's."""
        state = extract_state_dict(self.net_E.state_dict())
        state["embed_model.classifier.weight"] = state["embed_model.classifier.weight"][1:2].clone()
        state["embed_model.classifier.bias"] = state["embed_model.classifier.bias"][1:2].clone()
        copy_state_dict(state, self.net_Di, source="net_E")

    def distribute(self, ctx: DistributedContext, sync_bn: bool = False) -> None:
        """Prepare for a torchrun run: same start on every process, gradients averaged per step.

        Rank 0's parameters and buffers are copied to every process, and each optimiser step is
        preceded by an all-reduce (mean) of that optimiser's gradients. This replaces
        DistributedDataParallel wrappers because the step calls sub-networks directly (Di's
        backbone and head) and back-propagates G's loss through Di, whose gradients must not be
        synchronised then (Di's optimiser discards them). ``sync_bn`` converts the BatchNorm layers
        of G and Dp, the only ones that run in training mode; E's and Di's are frozen in eval mode
        and stay as they are.

        Args:
            ctx: the torchrun context (a single-process context changes nothing).
            sync_bn: synchronise G's and Dp's BatchNorm statistics over the processes.
        """
        if not ctx.enabled:
            return
        if sync_bn:
            self.net_G = convert_sync_batchnorm(self.net_G, ctx.device)
            self.net_Dp = convert_sync_batchnorm(self.net_Dp, ctx.device)
        for name in NET_NAMES:
            ctx.broadcast_module(self.net(name))
        self._grad_sync = ctx.all_reduce_gradients

    def _build_optimizers(self, lr: float, apply_lr_mult: bool) -> None:
        betas = (0.5, 0.999)
        fused = fused_kwargs(self.device)
        if self.stage == 1:
            opt_g = ReleaseAdam(self.net_G.parameters(), lr=lr * 0.1, betas=betas, **fused)
            opt_di = torch.optim.SGD(self.net_Di.parameters(), lr=lr * 0.01, momentum=0.9, weight_decay=1e-4,
                                     **fused)
        else:
            groups = [
                {"params": list(self.net_E.base_model.parameters()), "lr_mult": 0.1},
                {"params": list(self.net_E.embed_model.parameters()), "lr_mult": 1.0},
                {"params": list(self.net_G.parameters()), "lr_mult": 0.1},
            ]
            if apply_lr_mult:
                for g in groups:
                    g["lr"] = lr * g["lr_mult"]
            opt_g = ReleaseAdam(groups, lr=lr * 0.1, betas=betas, **fused)
            opt_di = torch.optim.SGD(self.net_Di.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4, **fused)
        opt_dp = torch.optim.SGD(self.net_Dp.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4, **fused)
        self.optimizers = OrderedDict([("G", opt_g), ("Di", opt_di), ("Dp", opt_dp)])

    def train_mode(self) -> None:
        """Put each network in its stage's mode (called at the start of every epoch)."""
        self.net_G.train()
        self.net_Dp.train()
        self.net_Di.train()
        set_bn_fix(self.net_Di)
        if self.stage == 1:
            self.net_E.eval()
        else:
            self.net_E.train()
            set_bn_fix(self.net_E)

    # ------------------------------------------------------------------ one step
    def set_input(self, inputs) -> None:
        """Take a pose-pair batch ``[first members, second members]`` (dicts of the pose loader, with
        pose maps or with the keypoints to draw them from)."""
        first, second = inputs
        dev = self.device
        pid1, pid2 = torch.as_tensor(first["pid"]).view(-1), torch.as_tensor(second["pid"]).view(-1)
        self.label = (pid1 == pid2).long().to(dev)
        pos = self.label.bool().view(-1, 1, 1, 1)
        b = pid1.numel()
        noise = torch.randn(b, self.config.noise_feature_size)
        # Items with keypoints instead of maps get their maps drawn here, on the device.
        height, width = first["target"].shape[-2:]
        posemap1, posemap2 = (batch_pose_maps(half, height, width, dev) for half in (first, second))
        target2 = torch.where(pos.cpu(), first["target"], second["target"])
        self.origin = torch.cat([first["origin"], second["origin"]]).to(dev)
        self.target = torch.cat([first["target"], target2]).to(dev)
        self.posemap = torch.cat([posemap1, torch.where(pos, posemap1, posemap2)])
        self.noise = torch.cat([noise, noise]).view(2 * b, -1, 1, 1).to(dev)
        self.batch_pairs = b

    def forward(self) -> None:
        b = self.batch_pairs
        with self.mixed_precision.autocast():
            f1, f2, self.id_score = self.net_E(self.origin[:b], self.origin[b:])
            reid_feature = torch.cat([f1, f2]).view(2 * b, -1, 1, 1)
            self.fake = self.net_G(self.posemap, reid_feature, self.noise)

    def _di_logits(self, images: list[torch.Tensor], grad: bool) -> list[torch.Tensor]:
        """Di's logits for (origin, x) for each x in ``images``."""
        # Di's BN is frozen, so one backbone pass over the origin images serves every pair; in G's
        # step it needs no gradient (only Di's parameters, which G's step does not update).
        with torch.set_grad_enabled(grad):
            f_origin = self.net_Di.base_model(self.origin)
        f_others = self.net_Di.base_model(torch.cat(images)) if len(images) > 1 else self.net_Di.base_model(images[0])
        n = self.origin.shape[0]
        return [self.net_Di.embed_model(f_origin, f_others[i * n:(i + 1) * n]) for i in range(len(images))]

    def _d_targets(self) -> tuple[bool, bool]:
        if self.config.smooth_label and random.random() < FLIP_PROBABILITY:
            return False, True
        return True, False

    def backward_Di(self) -> None:
        real_t, fake_t = self._d_targets()
        with self.mixed_precision.autocast():
            pred_real, pred_fake = self._di_logits([self.target, self.fake.detach()], grad=True)
            loss = 0.5 * (self.criterion_gan_d(pred_real, real_t) + self.criterion_gan_d(pred_fake, fake_t))
        self.scaler.scale(loss).backward()
        self.losses["D_i"] = loss.item()

    def backward_Dp(self) -> None:
        real_t, fake_t = self._d_targets()
        with self.mixed_precision.autocast():
            pred_real = self.net_Dp(torch.cat([self.posemap, self.target], 1))
            pred_fake = self.net_Dp(torch.cat([self.posemap, self.fake.detach()], 1))
            loss = 0.5 * (self.criterion_gan_d(pred_real, real_t) + self.criterion_gan_d(pred_fake, fake_t))
        self.scaler.scale(loss).backward()
        self.losses["D_p"] = loss.item()

    def backward_G(self) -> None:
        b = self.batch_pairs
        # Only G (and E in Stage III) is updated here: no weight gradients for the discriminators.
        with frozen_parameters(self.net_Di, self.net_Dp), self.mixed_precision.autocast():
            (pred_di,) = self._di_logits([self.fake], grad=False)
            pred_dp = self.net_Dp(torch.cat([self.posemap, self.fake], 1))
            loss_gan_di = self.criterion_gan_g(pred_di, True)
            loss_gan_dp = self.criterion_gan_g(pred_dp, True)
            loss_r = F.l1_loss(self.fake, self.target)
            loss_v = F.cross_entropy(self.id_score, self.label)
            pos = self.label.bool()
            if bool(pos.any()):
                loss_sp = F.l1_loss(self.fake[:b][pos], self.fake[b:][pos])
            else:
                loss_sp = torch.zeros((), device=self.device)
            c = self.config
            loss = loss_gan_di + loss_gan_dp + c.lambda_recon * loss_r + c.lambda_veri * loss_v + c.lambda_sp * loss_sp
        self.scaler.scale(loss).backward()
        self.losses.update(G_v=loss_v.item(), G_r=loss_r.item(), G_sp=loss_sp.item(),
                           G_gan_Di=loss_gan_di.item(), G_gan_Dp=loss_gan_dp.item())

    def optimize_parameters(self) -> None:
        """One iteration: forward, then update Di, Dp and G in that order."""
        self.forward()
        for name, backward in (("Di", self.backward_Di), ("Dp", self.backward_Dp), ("G", self.backward_G)):
            opt = self.optimizers[name]
            opt.zero_grad(set_to_none=True)
            backward()
            if self._grad_sync is not None:
                self._grad_sync(p for group in opt.param_groups for p in group["params"])
            self.scaler.step(opt)
        self.scaler.update()

    # ------------------------------------------------------------------ reporting
    def get_current_errors(self) -> "OrderedDict[str, float]":
        """The losses of the last step in the release's order."""
        return OrderedDict((k, self.losses[k]) for k in LOSS_NAMES)

    def get_current_visuals(self) -> "OrderedDict[str, np.ndarray]":
        """First sample's input, pose map, generated and target images as uint8 HxWx3 arrays."""
        return OrderedDict([
            ("input", tensor2im(self.origin[0].detach())),
            ("posemap", posemap2im(self.posemap[0].detach())),
            ("fake", tensor2im(self.fake[0].detach())),
            ("target", tensor2im(self.target[0].detach())),
        ])

    def update_learning_rate(self) -> None:
        """Step every scheduler (once per epoch)."""
        for s in self.schedulers:
            s.step()

    # ------------------------------------------------------------------ files
    def save(self, save_dir: str, label: str | int) -> None:
        """Write ``<label>_net_{E,G,Di,Dp}.pth`` (release format: 'module.'-prefixed state dicts)."""
        for name in NET_NAMES:
            state = {f"module.{k}": v for k, v in self.net(name).state_dict().items()}
            save_checkpoint(state, os.path.join(save_dir, f"{label}_net_{name}.pth"))

    def state_dict(self) -> dict:
        """Everything needed to resume: networks, optimisers and schedulers."""
        return {
            "nets": {n: self.net(n).state_dict() for n in NET_NAMES},
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "schedulers": [s.state_dict() for s in self.schedulers],
            **({"scaler": self.scaler.state_dict()} if self.scaler.is_enabled() else {}),
        }

    def load_state_dict(self, state: dict, source: str = "resume file") -> None:
        """Restore what :meth:`state_dict` returned."""
        for n in NET_NAMES:
            copy_state_dict(state["nets"][n], self.net(n), source=f"{source} (net_{n})")
        for n, o in self.optimizers.items():
            load_optimizer_state(o, state["optimizers"][n])
        for s, sd in zip(self.schedulers, state["schedulers"]):
            s.load_state_dict(sd)
        if self.scaler.is_enabled() and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


def check_pretrain_files(config: GANConfig) -> None:
    """Fail early when a stage lacks the checkpoint files it starts from."""
    files = config.pretrain_files
    if config.stage == 1 and not config.netE_pretrain and config.pretrained:
        raise ConfigError("--stage 1 needs --netE-pretrain (the Stage I model_best.pth.tar from baseline.py); "
                          "--no-pretrained starts from a random encoder instead (tests only)")
    if config.stage == 2:
        missing = [f"--net{n}-pretrain" for n, p in files.items() if not p]
        if missing:
            raise ConfigError(f"--stage 2 needs {', '.join(missing)} (the <epoch>_net_*.pth files of a "
                              "--stage 1 run)")
    for flag, path in files.items():
        if path and not os.path.isfile(path):
            raise ConfigError(f"--net{flag}-pretrain {path}: file not found")
