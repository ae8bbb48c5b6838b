"""Deployment-side feature extraction: re-ID features of arbitrary images with a trained E.

:class:`FeatureExtractor` builds the backbone of E (the ResNet cut at pooling, whose pooled
features give the first-stage distances of the release's ``CascadeEvaluator``) and the test preprocessing once, then
maps paths, PIL images, uint8 arrays or normalised tensors to an N x D feature matrix.
:func:`reid.models.loading.load_backbone` reads every checkpoint form the project and the release
write.
:func:`extract_folder` and :func:`write_features_h5` are the library behind
``scripts/extract_features.py``.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from reid.errors import ConfigError, DatasetError, first_line
from reid.evaluators import check_finite_features
from reid.models.loading import backbone_state_dict, load_backbone
from reid.utils.data.images import ImageInput, list_images, to_pil
from reid.utils.data.transforms import build_test_transform
from reid.utils.osutils import PathLike, atomic_path, saving_to
from reid.utils.runtime import resolve_device
from reid.utils.serialization import copy_state_dict, load_checkpoint

logger = logging.getLogger(__name__)

__all__ = [
    "FeatureExtractor",
    "extract_folder",
    "write_features_h5",
    "read_features_h5",
]

class FeatureExtractor:
    """Extract re-ID features (E's pooled backbone output) from images.

    Build once, call many times::

        extractor = FeatureExtractor("logs/best_net_E.pth", height=256, width=128)
        features = extractor(["a.jpg", "b.jpg"])     # 2 x 2048 float32 tensor

    Args:
        checkpoint: weights of E in any form the project or the release writes (baseline
            ``model_best.pth.tar``, ``<epoch>_net_E.pth``, a plain backbone state dict), with or
            without ``module.``; None: random weights (or the weights of ``model``).
        arch: backbone to build when the checkpoint does not reveal it (``reid.models.names()``).
        height: image height the preprocessing resizes to (the training ``--height``).
        width: image width the preprocessing resizes to (the training ``--width``).
        device: ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or ``'auto'``.
        batch_size: images per forward pass.
        model: use this network instead of building one: a backbone, or a SiameseNet whose
            ``base_model`` is taken; ``checkpoint``, when also given, is loaded into it.
        normalize: L2-normalise each feature vector.

    Raises:
        CheckpointError: unreadable checkpoint, or one of another network.
        ConfigError: unknown ``arch`` or ``device``, or ``batch_size`` < 1.
    """

    def __init__(
        self,
        checkpoint: Optional[PathLike] = None,
        arch: str = "resnet50",
        height: int = 256,
        width: int = 128,
        device: Union[str, torch.device] = "cpu",
        batch_size: int = 64,
        model: Optional[nn.Module] = None,
        normalize: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1 (got {batch_size})")
        if height < 1 or width < 1:
            raise ConfigError(f"--height/--width must be positive (got {height} x {width})")
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        if model is None:
            model = load_backbone(checkpoint, arch)
        else:
            model = getattr(model, "module", model)
            model = getattr(model, "base_model", model)
            if checkpoint is not None:
                source = os.fspath(checkpoint)
                copy_state_dict(backbone_state_dict(load_checkpoint(source), source), model, source=source)
        self.model = model.to(self.device).eval()
        self.checkpoint = None if checkpoint is None else os.fspath(checkpoint)
        self.arch = f"resnet{model.depth}" if hasattr(model, "depth") else type(model).__name__
        self.height = height
        self.width = width
        self.batch_size = batch_size
        self.normalize = normalize
        self.transform = build_test_transform(height, width)

    @property
    def feature_dim(self) -> Optional[int]:
        """Length of one feature vector, when the model says (ResNet: ``out_features``)."""
        return getattr(self.model, "out_features", None)

    def __call__(self, images: Union[ImageInput, Sequence[ImageInput], torch.Tensor]) -> torch.Tensor:
        """Features of ``images`` as an N x D float32 CPU tensor (rows in input order).

        Args:
            images: a list of image paths, PIL images or H x W x 3 uint8 arrays (mixed freely);
                one such image; an N x H x W x 3 uint8 array; an N x 3 x H x W uint8 tensor of
                pixels (preprocessed as images are); or an N x 3 x H x W float tensor already
                preprocessed (resized and normalised), which is used as it is.

        Raises:
            DatasetError: an unreadable image file, an array or tensor of the wrong shape or type.
            NonFiniteError: the network gave NaN or infinite features.
        """
        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or images.shape[1] != 3:
                raise DatasetError(f"images: expected an N x 3 x H x W tensor, got shape {tuple(images.shape)}")
            if images.dtype == torch.uint8:  # pixels, not a normalised batch
                images = list(images.permute(0, 2, 3, 1).cpu().numpy())
                return self(images)
            if not images.is_floating_point():
                raise DatasetError(f"images: expected a uint8 tensor of pixels or a normalised float tensor, "
                                   f"got {images.dtype}")
            batches = (images[i:i + self.batch_size].float() for i in range(0, images.shape[0], self.batch_size))
            return self._run(batches)
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        elif isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
            images = [images]
        items = list(images)

        def batches():
            for start in range(0, len(items), self.batch_size):
                chunk = items[start:start + self.batch_size]
                yield torch.stack([
                    self.transform(to_pil(img, f"images[{start + i}]")) for i, img in enumerate(chunk)
                ])

        return self._run(batches())

    def _run(self, batches) -> torch.Tensor:
        self.model.eval()
        outputs: List[torch.Tensor] = []
        with torch.inference_mode():
            for batch in batches:
                out = self.model(batch.to(self.device)).float()
                if self.normalize:
                    out = F.normalize(out, dim=1)
                outputs.append(out.cpu())
        check_finite_features(outputs, self.checkpoint or "the model")
        if not outputs:
            return torch.zeros(0, self.feature_dim or 0)
        return torch.cat(outputs)


def extract_folder(extractor: FeatureExtractor, folder: PathLike) -> Tuple[List[str], torch.Tensor]:
    """Features of every image below ``folder``.

    Args:
        extractor: the feature extractor to run.
        folder: the image folder, searched recursively
            (:func:`reid.utils.data.images.list_images`).

    Returns:
        ``(names, features)``: the relative paths in sorted order and the N x D features.
    """
    names = list_images(folder, recursive=True)
    logger.info("%s: extracting features of %d images", os.fspath(folder), len(names))
    return names, extractor([os.path.join(os.fspath(folder), n) for n in names])


def write_features_h5(
    path: PathLike,
    names: Sequence[str],
    features: Union[torch.Tensor, np.ndarray],
    attrs: Optional[Mapping[str, Any]] = None,
) -> None:
    """Write features to an HDF5 file atomically (temporary file in the same folder, then rename).

    The file holds datasets ``features`` (N x D float32) and ``names`` (N UTF-8 strings) and the
    given attributes. No timestamps are stored, so the same input gives the same bytes.

    Args:
        path: the output file.
        names: one name per feature row (e.g. relative image paths).
        features: N x D features.
        attrs: attributes of the file's root group (strings, numbers, None is stored as '').
    """
    import h5py

    feats = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[0] != len(names):
        raise ValueError(f"features must be {len(names)} x D, got shape {feats.shape}")
    with atomic_path(path) as tmp, saving_to(path):
        with h5py.File(tmp, "w", track_order=False) as f:
            f.create_dataset("features", data=feats, track_times=False)
            f.create_dataset("names", data=list(names), dtype=h5py.string_dtype("utf-8"), track_times=False)
            for key, value in (attrs or {}).items():
                f.attrs[key] = "" if value is None else value


def read_features_h5(path: PathLike) -> Tuple[List[str], np.ndarray, Dict[str, Any]]:
    """Read a file written by :func:`write_features_h5` -> ``(names, features, attrs)``.

    Raises:
        DatasetError: the file is missing or not such a file.
    """
    import h5py

    path = os.fspath(path)
    try:
        with h5py.File(path, "r") as f:
            names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in f["names"][()]]
            feats = np.asarray(f["features"][()], dtype=np.float32)
            attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    except FileNotFoundError:
        raise DatasetError(f"{path}: features file not found") from None
    except (OSError, KeyError) as e:
        raise DatasetError(f"{path}: not a features file ({first_line(e)})") from None
    return names, feats, attrs
