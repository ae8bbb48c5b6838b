"""Training loop of the Stage I Siamese baseline (the release's ``reid/trainers.py``, ``SiameseTrainer``)."""
from __future__ import annotations

import logging
import math
from typing import Optional

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from reid.errors import ConfigError, NonFiniteLossError
from reid.evaluation_metrics import accuracy
from reid.utils.meters import AverageMeter
from reid.utils.amp import MixedPrecision
from reid.utils.distributed import DistributedContext

logger = logging.getLogger(__name__)


class BaseTrainer:
    """One epoch over a pair loader; subclasses say how a batch becomes inputs and a loss.

    Args:
        model: the network (DistributedDataParallel-wrapped in a torchrun run).
        criterion: the loss.
        device: where inputs go.
        mixed_precision: autocast settings (``--amp``); fp16 steps use a GradScaler (``self.scaler``).
        dist: the torchrun context; with several processes the logged loss and accuracy are the
            means over all processes (which also stop together on a non-finite loss).
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: nn.Module,
        device: torch.device | str = "cpu",
        mixed_precision: Optional[MixedPrecision] = None,
        dist: Optional[DistributedContext] = None,
    ) -> None:
        self.model = model
        self.criterion = criterion
        self.device = device
        self.mixed_precision = mixed_precision if mixed_precision is not None else MixedPrecision()
        self.scaler = self.mixed_precision.grad_scaler()
        self.dist = dist if dist is not None else DistributedContext()

    def train(
        self,
        epoch: int,
        data_loader: DataLoader,
        optimizer: torch.optim.Optimizer,
        max_iters: Optional[int] = None,
        progress: bool = True,
    ) -> dict:
        """Train for one epoch; returns ``{'loss': mean loss, 'prec': mean pair accuracy}``.

        Raises:
            NonFiniteLossError: the loss became NaN/inf, or under bf16 mixed precision a gradient did
                (nothing of this step is applied).
        """
        self.model.train()
        losses, precisions = AverageMeter(), AverageMeter()
        total = len(data_loader) if max_iters is None else min(len(data_loader), max_iters)
        bar = tqdm(data_loader, total=total, desc=f"Epoch {epoch}", leave=False, dynamic_ncols=True,
                   disable=not progress)
        for i, inputs in enumerate(bar):
            if max_iters is not None and i >= max_iters:
                break
            model_inputs, targets = self._parse_data(inputs)
            if targets.size(0) < 2:  # the verification head's BatchNorm1d cannot train on one pair
                raise ConfigError(f"epoch {epoch}: a training batch of {targets.size(0)} pair; -b/--batch-size "
                                  "must be at least 2 (and the training set hold 2 or more pairs)")
            with self.mixed_precision.autocast():
                loss, prec = self._forward(model_inputs, targets)
            loss_value, prec = self._reduce(loss, prec)
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(f"epoch {epoch} iteration {i}: the training loss is {loss_value}")
            optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.mixed_precision.enabled and not self.scaler.is_enabled():
                # bf16 has no GradScaler to skip a step whose gradients overflowed: stop instead of
                # writing NaN into the weights (and the checkpoint) while the loss still looks fine.
                self._check_gradients(optimizer, epoch, i)
            self.scaler.step(optimizer)
            self.scaler.update()
            n = targets.size(0) * self.dist.world_size
            losses.update(loss_value, n)
            precisions.update(prec, n)
            bar.set_postfix(loss=f"{losses.avg:.3f}", prec=f"{precisions.avg:.2%}")
        bar.close()
        logger.info("Epoch %d: loss %.4f, pair accuracy %.2f%%", epoch, losses.avg, 100 * precisions.avg)
        return {"loss": losses.avg, "prec": precisions.avg}

    def _check_gradients(self, optimizer: torch.optim.Optimizer, epoch: int, i: int) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads and not bool(torch.isfinite(torch.nn.utils.get_total_norm(grads))):
            raise NonFiniteLossError(
                f"epoch {epoch} iteration {i}: the gradients are NaN or infinite under --amp "
                f"({self.mixed_precision.dtype}) although the loss is finite; stopped before the step, the "
                "last good checkpoint is kept (train without --amp?)")

    def _reduce(self, loss: torch.Tensor, prec: float) -> tuple[float, float]:
        """Loss and accuracy of this step, averaged over the processes of a torchrun run."""
        if not self.dist.enabled:
            return loss.item(), prec
        values = self.dist.mean_values({"loss": loss.item(), "prec": prec})
        return values["loss"], values["prec"]

    def _parse_data(self, inputs):  # pragma: no cover - interface
        raise NotImplementedError

    def _forward(self, inputs, targets):  # pragma: no cover - interface
        raise NotImplementedError


class SiameseTrainer(BaseTrainer):
    """Verification training: cross-entropy of the 2-way head on label = (pid1 == pid2)."""

    def _parse_data(self, inputs):
        (imgs1, _, pids1, _), (imgs2, _, pids2, _) = inputs
        targets = (pids1 == pids2).long().to(self.device)
        return (imgs1.to(self.device, non_blocking=True), imgs2.to(self.device, non_blocking=True)), targets

    def _forward(self, inputs, targets):
        _, _, logits = self.model(*inputs)
        loss = self.criterion(logits, targets)
        (prec,) = accuracy(logits.detach(), targets.detach())
        return loss, float(prec)
