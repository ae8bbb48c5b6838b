"""An ImageNet substitute: pre-train E's backbone by identity on freshly rendered persons.

The paper starts E (and Di, a copy of E) from an ImageNet ResNet; where no ImageNet file can be had,
this trains the same architecture with a classification loss on a separate, larger set of rendered
identities (:mod:`reid.datasets.synthetic_render.stream`), the way ImageNet pre-training is a
classification loss. The recipe follows "Bag of Tricks" (Luo et al. 2019): an identity loss with
label smoothing on a BN-neck feature plus a batch-hard triplet loss on the pooled feature, over
P identities x K images per batch. The result is written in torchvision's format (the keys of
``torchvision.models.resnetN().state_dict()``), which ``--pretrained-weights`` loads.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from reid import models
from reid.datasets.synthetic_render.appearance import GENERATOR_VERSION
from reid.datasets.synthetic_render.stream import IdentityBatchSampler, RenderedIdentities
from reid.errors import ConfigError
from reid.evaluation_metrics.chance import chance_levels
from reid.evaluators import CascadeEvaluator, ids_and_cams
from reid.loss import batch_hard_triplet_loss
from reid.models.pretrained import SIDECAR_SUFFIX, file_sha256, substitute_sidecar
from reid.pipelines.common import load_dataset
from reid.utils.data.loaders import build_eval_loader, unique_items
from reid.utils.osutils import atomic_write, write_json

logger = logging.getLogger(__name__)

RECIPE_VERSION = 1


@dataclass(frozen=True)
class PretrainConfig:
    """The settings of a substitute backbone; a cached file is reused only for equal settings."""

    arch: str = "resnet18"
    height: int = 64
    width: int = 32
    num_ids: int = 2000  # rendered identities to classify
    num_cams: int = 32  # camera pool the samples draw from
    seed: int = 1000
    iterations: int = 400
    ids_per_batch: int = 16  # P
    images_per_id: int = 4  # K
    lr: float = 1e-3  # Adam, linear warm-up over the first 10 % then cosine decay
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    margin: float = 0.3
    # Identities whose held-out renderings measure the ID accuracy (None: 200, or all if fewer).
    heldout_ids: Optional[int] = None
    heldout_images: int = 4

    def __post_init__(self) -> None:
        if self.heldout_ids is None:
            object.__setattr__(self, "heldout_ids", min(200, self.num_ids))

    def validate(self) -> None:
        """Raise ConfigError for settings that cannot be trained."""
        if self.arch not in models.names():
            raise ConfigError(f"--arch {self.arch}: expected one of {', '.join(models.names())}")
        if self.ids_per_batch < 2 or self.images_per_id < 2:
            raise ConfigError("--ids-per-batch and --images-per-id must be at least 2 (the triplet loss needs both)")
        if self.num_ids < self.ids_per_batch:
            raise ConfigError(f"--num-ids {self.num_ids} is smaller than --ids-per-batch {self.ids_per_batch}")
        if self.iterations < 1 or self.lr <= 0 or not math.isfinite(self.lr):
            raise ConfigError("--iterations must be >= 1 and --lr a positive number")
        if not 0 <= self.heldout_ids <= self.num_ids:
            raise ConfigError(f"--heldout-ids {self.heldout_ids}: must be between 0 and --num-ids {self.num_ids}")

    def settings(self) -> Dict[str, Any]:
        """Everything the weights depend on, including the renderer's and the recipe's versions."""
        return {**dataclasses.asdict(self), "renderer": GENERATOR_VERSION, "recipe": RECIPE_VERSION}

    def file_name(self) -> str:
        """``substitute-<arch>-<hash of the settings>.pth``: never torchvision's ImageNet file name."""
        digest = hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:12]
        return f"substitute-{self.arch}-{digest}.pth"


class _IdentityNet(nn.Module):
    """Backbone cut at pooling, BN neck and a bias-free identity classifier."""

    def __init__(self, arch: str, num_ids: int) -> None:
        super().__init__()
        self.backbone = models.create(arch, pretrained=False, cut_at_pooling=True)
        self.neck = nn.BatchNorm1d(self.backbone.pooled_features)
        self.neck.bias.requires_grad_(False)
        self.classifier = nn.Linear(self.backbone.pooled_features, num_ids, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.backbone(x)
        return pooled, self.classifier(self.neck(pooled))


def _lr_factor(step: int, total: int) -> float:
    warmup = max(1, total // 10)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _loader(dataset: RenderedIdentities, batches: Any, workers: int) -> DataLoader:
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, persistent_workers=False)


@torch.inference_mode()
def heldout_accuracy(net: _IdentityNet, cfg: PretrainConfig, workers: int, device: torch.device) -> float:
    """Top-1 identity accuracy on renderings of ``cfg.heldout_ids`` identities that training never drew."""
    if cfg.heldout_ids == 0:
        return float("nan")
    data = RenderedIdentities(cfg.num_ids, cfg.num_cams, cfg.height, cfg.width, cfg.seed, split=1)
    step = cfg.num_ids // cfg.heldout_ids
    keys = [(pid * step, d) for pid in range(cfg.heldout_ids) for d in range(cfg.heldout_images)]
    batches = [keys[i:i + 128] for i in range(0, len(keys), 128)]
    net.eval()
    correct = 0
    for images, pids in _loader(data, batches, workers):
        correct += int((net(images.to(device))[1].argmax(1).cpu() == pids).sum())
    return correct / len(keys)


def pretrain_backbone(cfg: PretrainConfig, out_path: str, device: torch.device | str = "cpu", workers: int = 2,
                      progress: bool = True) -> Dict[str, Any]:
    """Train a substitute backbone with ``cfg`` and write it to ``out_path`` (torchvision format).

    A sidecar ``out_path + '.json'`` records the settings, the held-out ID accuracy, the time and
    the file's SHA-256, so that a run that loads the file can say what it is.

    Returns the sidecar's content.
    """
    cfg.validate()
    device = torch.device(device)
    start = time.time()
    torch.manual_seed(cfg.seed)
    net = _IdentityNet(cfg.arch, cfg.num_ids).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, cfg.iterations))
    data = RenderedIdentities(cfg.num_ids, cfg.num_cams, cfg.height, cfg.width, cfg.seed)
    batches = IdentityBatchSampler(cfg.num_ids, cfg.ids_per_batch, cfg.images_per_id, cfg.iterations, cfg.seed)
    net.train()
    bar = tqdm(total=cfg.iterations, desc="Pre-train backbone", leave=False, dynamic_ncols=True, disable=not progress)
    for step, (images, pids) in enumerate(_loader(data, batches, workers)):
        images, pids = images.to(device), pids.to(device)
        pooled, logits = net(images)
        id_loss = F.cross_entropy(logits, pids, label_smoothing=cfg.label_smoothing)
        tri_loss = batch_hard_triplet_loss(pooled, pids, cfg.margin)
        loss = id_loss + tri_loss
        if not torch.isfinite(loss):
            raise ConfigError(f"pre-training step {step}: the loss is not finite (lower --lr?)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        bar.update(1)
        if step % 100 == 0 or step == cfg.iterations - 1:
            accuracy = float((logits.argmax(1) == pids).float().mean())
            bar.set_postfix(id=f"{id_loss.item():.3f}", tri=f"{tri_loss.item():.3f}", acc=f"{accuracy:.2f}")
            logger.info("step %d: id loss %.4f, triplet loss %.4f, batch accuracy %.2f",
                         step, id_loss.item(), tri_loss.item(), accuracy)
    bar.close()
    train_seconds = time.time() - start
    accuracy = heldout_accuracy(net, cfg, workers, device)
    state = {k: v.detach().cpu() for k, v in net.backbone.base.state_dict().items()}
    with atomic_write(out_path, "wb") as f:
        torch.save(state, f)
    info = {"kind": "substitute", "settings": cfg.settings(), "heldout_id_accuracy": accuracy,
            "seconds": round(time.time() - start, 1), "train_seconds": round(train_seconds, 1),
            "sha256": file_sha256(out_path)}
    write_json(info, out_path + SIDECAR_SUFFIX)
    logger.info("Substitute backbone %s: held-out ID accuracy %.1f%% over %d identities, %.0f s",
                out_path, 100 * accuracy, cfg.heldout_ids, info["seconds"])
    return info


def substitute_backbone(cfg: PretrainConfig, cache_dir: str, device: torch.device | str = "cpu", workers: int = 2,
                        progress: bool = True) -> str:
    """Path of the substitute backbone for ``cfg`` in ``cache_dir``: reused when a file with these
    settings is there (and its sidecar's checksum matches), trained and written otherwise."""
    path = os.path.join(cache_dir, cfg.file_name())
    info = substitute_sidecar(path)
    if info is not None and info.get("settings") == cfg.settings():
        logger.info("Reusing the substitute backbone %s (same settings; built in %.0f s, held-out ID accuracy %.1f%%)",
                    path, info.get("seconds", float("nan")), 100 * info.get("heldout_id_accuracy", float("nan")))
        return path
    logger.info("Building the substitute backbone %s (%d identities, %d iterations)", path, cfg.num_ids,
                cfg.iterations)
    pretrain_backbone(cfg, path, device=device, workers=workers, progress=progress)
    return path


def evaluate_backbone(weights: str, arch: str, dataset_dir: str, height: int, width: int,
                      device: torch.device | str = "cpu", workers: int = 2, batch_size: int = 64) -> Dict[str, Any]:
    """First-stage test scores (Euclidean distance of pooled features, open-reid protocol) of a
    backbone weights file on a dataset folder, with no re-ID training: ``{'mAP', 'top1', 'chance'}``."""
    name = os.path.basename(os.path.normpath(dataset_dir))
    dataset = load_dataset(name, os.path.dirname(os.path.normpath(dataset_dir)) or ".")
    backbone = models.create(arch, pretrained=weights, cut_at_pooling=True).to(device)
    loader = build_eval_loader(unique_items(dataset.query, dataset.gallery), dataset.images_dir, height, width,
                               batch_size, workers)
    # No verification head exists yet: the first cascade stage alone.
    evaluator = CascadeEvaluator(backbone, embed_model=None, device=device, progress=False)
    res = evaluator.evaluate(loader, dataset.query, dataset.gallery, second_stage=False,
                             title="[pre-trained backbone] ")["first_stage"]
    return {"mAP": res["mAP"], "top1": res["top1"],
            "chance": chance_levels(*ids_and_cams(dataset.query, dataset.gallery))}
