"""DataLoader builders shared by baseline.py and train.py."""
from __future__ import annotations

from typing import Optional, Sequence

from torch.utils.data import DataLoader, Sampler

from reid.utils.data.preprocessor import Preprocessor
from reid.utils.data.sampler import RandomPairSampler
from reid.utils.data.transforms import build_test_transform, build_train_transform
from reid.utils.runtime import worker_init_fn

Item = tuple  # (fname, pid, cam)


def unique_items(*lists: Sequence[Item]) -> list[Item]:
    """The union of item lists without duplicates, sorted by file name (stable feature order)."""
    seen: dict[str, Item] = {}
    for items in lists:
        for item in items:
            seen.setdefault(item[0], item)
    return [seen[k] for k in sorted(seen)]


def build_pair_loader(
    items: Sequence[Item],
    images_dir: str,
    height: int,
    width: int,
    batch_size: int,
    workers: int,
    np_ratio: int = 3,
    sampler: Optional[Sampler] = None,
    pin_memory: bool = False,
    augment: str = "release",
    drop_last: Optional[bool] = None,
) -> DataLoader:
    """Training pairs for Stage I: batches of ``batch_size`` (anchor, partner) pairs.

    ``drop_last`` None drops an incomplete last batch unless it is the only one; pass False with a
    sampler that yields whole batches itself (:class:`DistributedRandomPairSampler`).
    """
    dataset = Preprocessor(items, root=images_dir, transform=build_train_transform(height, width, augment))
    return _pair_loader(dataset, items, batch_size, workers, np_ratio, sampler, pin_memory, drop_last)


def _pair_loader(dataset: Preprocessor, items: Sequence[Item], batch_size: int, workers: int, np_ratio: int,
                 sampler: Optional[Sampler], pin_memory: bool, drop_last: Optional[bool]) -> DataLoader:
    """Batches of ``(first members, second members)`` from the pair sampler (or ``sampler``)."""
    if drop_last is None:
        drop_last = len(items) * (1 + np_ratio) > batch_size  # a 1-pair last batch breaks BatchNorm1d
    return DataLoader(
        dataset,
        sampler=sampler if sampler is not None else RandomPairSampler(items, neg_pos_ratio=np_ratio),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        worker_init_fn=worker_init_fn,
    )


def build_eval_loader(
    items: Sequence[Item], images_dir: str, height: int, width: int, batch_size: int, workers: int,
    pin_memory: bool = False,
) -> DataLoader:
    """Test-time images in a fixed order: ``(img, fname, pid, cam)`` batches."""
    return DataLoader(
        Preprocessor(list(items), root=images_dir, transform=build_test_transform(height, width)),
        batch_size=batch_size,
        num_workers=workers,
        shuffle=False,
        pin_memory=pin_memory,
        worker_init_fn=worker_init_fn,
    )


def build_pose_pair_loader(
    items: Sequence[Item],
    pid_imgs: dict,
    images_dir: str,
    poses_dir: str,
    height: int,
    width: int,
    batch_size: int,
    workers: int,
    pose_aug: str = "no",
    np_ratio: int = 3,
    sampler: Optional[Sampler] = None,
    pin_memory: bool = False,
    drop_last: Optional[bool] = None,
    draw_maps: bool = True,
) -> DataLoader:
    """Pose-guided training pairs for Stages II and III (the release's ``train.py`` loader); ``drop_last`` as in
    :func:`build_pair_loader`; ``draw_maps`` False: items carry keypoints, not maps
    (:func:`reid.utils.data.preprocessor.batch_pose_maps` draws them)."""
    dataset = Preprocessor(
        list(items), root=images_dir, with_pose=True, pose_root=poses_dir, pid_imgs=pid_imgs,
        height=height, width=width, pose_aug=pose_aug, draw_maps=draw_maps,
    )
    return _pair_loader(dataset, items, batch_size, workers, np_ratio, sampler, pin_memory, drop_last)

