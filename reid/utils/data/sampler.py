"""Pair sampling for the Siamese re-ID baseline and FD-GAN (the release's ``reid/utils/data/sampler.py``,
``RandomPairSampler``)."""
from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Sampler

from reid.errors import ConfigError


class RandomPairSampler(Sampler[Tuple[int, int]]):
    """Yield ``(anchor, other)`` index pairs: one positive, then ``neg_pos_ratio`` negatives.

    Each epoch visits every sample once as the anchor, in random order. For each anchor it yields
    ``(anchor, j)`` with ``j`` drawn uniformly among the OTHER samples of the anchor's label (the
    anchor itself when its label has a single sample), then ``neg_pos_ratio`` pairs
    ``(anchor, k)`` with the ``k`` drawn uniformly without replacement among all samples of other
    labels, as the release does (with replacement only for an anchor with fewer than
    ``neg_pos_ratio`` samples outside its label). The length is ``N * (1 + neg_pos_ratio)``.

    All draws of an epoch are made at once, from ``generator`` or, when it is None, from torch's
    default generator (so ``torch.manual_seed`` reproduces the epoch sequence).

    Args:
        data_source: the samples, each ``(fname, label, cam)``; only the label is used.
        neg_pos_ratio: negatives per positive (``--np-ratio``), a non-negative integer.
        generator: an optional ``torch.Generator`` for the draws.

    Raises:
        ConfigError: a negative or non-integer ratio, or negatives asked of a one-label dataset.
    """

    def __init__(self, data_source: Sequence[Tuple[Any, Any, Any]], neg_pos_ratio: int = 1,
                 generator: Optional[torch.Generator] = None) -> None:
        if isinstance(neg_pos_ratio, bool) or not isinstance(neg_pos_ratio, (int, np.integer)) \
                or neg_pos_ratio < 0:
            raise ConfigError(f"--np-ratio must be a non-negative integer, got {neg_pos_ratio!r}")
        self.neg_pos_ratio = int(neg_pos_ratio)
        self.generator = generator
        self.num_samples = len(data_source)
        if self.num_samples == 0:
            self._order = torch.zeros(0, dtype=torch.long)
            self._start = self._size = self._rank = self._order
            return
        labels = [item[1] for item in data_source]
        _, group = np.unique(np.asarray(labels), return_inverse=True)
        group = group.reshape(-1)
        counts = np.bincount(group)
        if self.neg_pos_ratio > 0 and len(counts) < 2:
            raise ConfigError("--np-ratio > 0 needs at least two identities in the training set, found one")
        # Samples sorted by label: the members of label g occupy order[start_g : start_g + count_g].
        order = np.argsort(group, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.empty(self.num_samples, dtype=np.int64)
        rank[order] = np.arange(self.num_samples) - starts[group[order]]
        self._order = torch.from_numpy(order.astype(np.int64))
        self._start = torch.from_numpy(starts[group].astype(np.int64))
        self._size = torch.from_numpy(counts[group].astype(np.int64))
        self._rank = torch.from_numpy(rank)

    def __len__(self) -> int:
        return self.num_samples * (1 + self.neg_pos_ratio)

    def _uniform_below(self, high: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
        """Integers uniform in ``[0, high)`` (elementwise, ``high`` broadcast to ``shape``)."""
        u = torch.rand(shape, dtype=torch.float64, generator=self.generator)
        k = torch.floor(u * high).long()
        return torch.minimum(k, (high - 1).clamp_min(0))

    def _epoch_pairs(self) -> torch.Tensor:
        """All ``(anchor, other)`` pairs of one epoch as an ``(N * (1 + ratio), 2)`` tensor."""
        n, r = self.num_samples, self.neg_pos_ratio
        anchors = torch.randperm(n, generator=self.generator)
        start, size, rank = self._start[anchors], self._size[anchors], self._rank[anchors]

        # Positive: uniform among the size - 1 other members; skipping over the anchor's own slot.
        k = self._uniform_below(size - 1, (n,))
        k = k + (k >= rank).long()
        k = torch.where(size == 1, rank, k)
        positives = self._order[start + k]

        # Negatives: r distinct positions among the m = n - size samples outside the anchor's label
        # block. The j-th draw is uniform over the m - j positions not drawn yet: a number below
        # m - j, stepped past each earlier draw in increasing order.
        m = n - size
        picks = torch.empty((n, r), dtype=torch.long)
        for j in range(r):
            left = m - j
            k = self._uniform_below(left.clamp_min(1), (n,))
            taken, _ = picks[:, :j].sort(dim=1)
            for i in range(j):
                k = k + (k >= taken[:, i]).long()
            # Fewer than r samples outside the label: those anchors draw with replacement.
            if bool((left <= 0).any()):
                k = torch.where(left > 0, k, self._uniform_below(m, (n,)))
            picks[:, j] = k
        k = picks + size.unsqueeze(1) * (picks >= start.unsqueeze(1)).long()
        negatives = self._order[k]

        pairs = torch.empty((n, 1 + r, 2), dtype=torch.long)
        pairs[:, :, 0] = anchors.unsqueeze(1)
        pairs[:, 0, 1] = positives
        pairs[:, 1:, 1] = negatives
        return pairs.reshape(-1, 2)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        if self.num_samples == 0:
            return iter(())
        return (tuple(pair) for pair in self._epoch_pairs().tolist())


class DistributedRandomPairSampler(Sampler[Tuple[int, int]]):
    """One process's share of a :class:`RandomPairSampler` epoch, for torchrun runs.

    Every process draws the same epoch of pairs from a generator seeded with ``seed + epoch``
    (call :meth:`set_epoch` before each epoch) and takes whole blocks of it: in step ``k``,
    process ``r`` of ``W`` gets pairs ``[(k*W + r)*B, (k*W + r + 1)*B)`` of the epoch, with
    ``B = batch_size``. The ``W`` per-process batches of a step, concatenated in rank order, are
    therefore exactly that step's batch of a single process drawing batches of ``W*B`` from
    ``RandomPairSampler(data_source, neg_pos_ratio, generator=torch.Generator().manual_seed(seed +
    epoch))``, and each per-process batch keeps the release's mix (one positive then
    ``neg_pos_ratio`` negatives per anchor) rather than one process getting all positives.

    Only whole global batches are used; the incomplete last one is dropped, as the single-process
    loader drops its last batch. An epoch with fewer than ``W*B`` pairs gives each process one
    batch of ``L // W`` pairs (``L`` pairs in the epoch). Use it with ``drop_last=False``.

    Args:
        data_source: the samples, each ``(fname, label, cam)``.
        neg_pos_ratio: negatives per positive.
        num_replicas: number of processes ``W``.
        rank: this process's rank ``r``.
        batch_size: pairs per process and step ``B``.
        seed: the seed shared by all processes.

    Raises:
        ConfigError: invalid sizes, or fewer pairs in an epoch than processes.
    """

    def __init__(self, data_source: Sequence[Tuple[Any, Any, Any]], neg_pos_ratio: int = 1, num_replicas: int = 1,
                 rank: int = 0, batch_size: int = 1, seed: int = 0) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ConfigError(f"rank {rank} of {num_replicas} processes is not a valid process")
        if batch_size < 1:
            raise ConfigError(f"-b must be at least 1, got {batch_size}")
        self._generator = torch.Generator()
        self._pairs = RandomPairSampler(data_source, neg_pos_ratio, generator=self._generator)
        self.num_replicas, self.rank, self.batch_size, self.seed = num_replicas, rank, batch_size, int(seed)
        self.epoch = 0
        total = len(self._pairs)
        if total >= num_replicas * batch_size:
            self._chunk, self._steps = batch_size, total // (num_replicas * batch_size)
        else:
            self._chunk = total // num_replicas
            self._steps = 1 if self._chunk > 0 else 0
            if total > 0 and self._chunk == 0:
                raise ConfigError(f"{total} training pairs cannot be shared among {num_replicas} processes")

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose pairs :meth:`__iter__` yields (the same on every process)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._steps * self._chunk

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        if len(self) == 0:
            return iter(())
        self._generator.manual_seed(self.seed + self.epoch)
        pairs = self._pairs._epoch_pairs()
        starts = (torch.arange(self._steps) * self.num_replicas + self.rank) * self._chunk
        index = (starts.unsqueeze(1) + torch.arange(self._chunk).unsqueeze(0)).reshape(-1)
        return (tuple(pair) for pair in pairs[index].tolist())
