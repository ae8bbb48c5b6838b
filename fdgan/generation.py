"""Pose transfer with trained networks: a person from a source image, in a chosen target pose.

Given E's weights (a baseline ``model_best.pth.tar`` or an ``<epoch>_net_E.pth``) and G's weights
(an ``<epoch>_net_G.pth``), :class:`PoseTransfer` rebuilds both networks with the configuration
read from the weights themselves (:func:`reid.models.loading.load_backbone`,
:func:`fdgan.loading.load_generator`), so no training option has to be repeated.

One generated image is ``G(posemap(target pose), E(source), z)``:

- E's feature is the backbone's pooled feature of the source image resized to G's size
  (RectScale, ImageNet normalisation), as in training (``FDGANModel.forward``);
- the pose map is :func:`reid.utils.data.preprocessor.generate_pose_map` of the target keypoints
  in G's pixels (:meth:`scripts.pose_targets.TargetPose.scaled` gives them);
- ``z`` is row ``n`` of :func:`draw_noise` ``(num_noise, noise_nc, seed)``: the SAME noise
  vector ``n`` is used for every (source, pose), so the noise columns of the grid compare like
  with like, and a seed reproduces the output exactly.

The files of a run are written by :func:`fdgan.generation_output.write_outputs`; the command
line (``scripts/generate_images.py``) resolves its arguments with :mod:`scripts.pose_targets`.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from fdgan.loading import load_generator
from fdgan.utils.util import posemap2im, tensor2im
from reid.errors import ConfigError, DatasetError
from reid.feature_extraction import FeatureExtractor
from reid.models.loading import load_backbone
from reid.utils.data.images import ImageInput, to_pil
from reid.utils.data.preprocessor import generate_pose_map, pose_sigma
from reid.utils.data.transforms import RectScale
from reid.utils.osutils import PathLike
from reid.utils.runtime import resolve_device

__all__ = ["PoseTransfer", "draw_noise"]

SourceImage = ImageInput


def draw_noise(num_noise: int, noise_nc: int, seed: int = 0) -> torch.Tensor:
    """The noise vectors of one run: ``num_noise`` x ``noise_nc`` draws of N(0, 1).

    Args:
        num_noise: how many noise vectors.
        noise_nc: size of each vector (G's ``noise_nc``).
        seed: seed of the CPU ``torch.Generator`` they are drawn from (same seed, same vectors;
            the global torch generator is not touched).
    """
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(seed))
    return torch.randn(num_noise, noise_nc, generator=generator)


class PoseTransfer:
    """E's backbone and G, rebuilt from their checkpoints, ready to generate.

    Args:
        netE_path: E's weights: a baseline ``model_best.pth.tar`` / ``checkpoint.pth.tar``, an
            ``<epoch>_net_E.pth`` (or a plain backbone state dict), with or without ``module.``.
            Its ResNet depth is read from the weights.
        netG_path: G's weights, ``<epoch>_net_G.pth`` (with or without ``module.``); the
            generator's configuration is read from them
            (:func:`fdgan.loading.infer_generator_config`).
        device: ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or ``'auto'``.
        batch_size: images per generator forward pass.
        sigma: standard deviation in pixels of the pose-map Gaussians; None: as in training
            (:func:`reid.utils.data.preprocessor.pose_sigma` of G's height, 5 at 256 rows).

    Attributes:
        config: the generator's :class:`fdgan.loading.GeneratorConfig`.
        height, width: G's image size; sources are resized to it and poses scaled to it.
        extractor: the :class:`reid.feature_extraction.FeatureExtractor` of E's backbone.
        netG: the generator, in eval mode.

    Raises:
        CheckpointError: a file is missing or unreadable, holds another network, or E and G do
            not fit together.
    """

    def __init__(self, netE_path: PathLike, netG_path: PathLike, device: Union[str, torch.device] = "cpu",
                 batch_size: int = 16, sigma: Optional[float] = None) -> None:
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1 (got {batch_size})")
        if sigma is not None and not sigma > 0:
            raise ConfigError(f"--sigma must be > 0 (got {sigma})")
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.batch_size = batch_size

        backbone = load_backbone(netE_path)
        netG, self.config = load_generator(netG_path, reid_feature_nc=backbone.out_features)
        self.netG = netG.to(self.device)
        self.height, self.width = self.config.height, self.config.width
        self.sigma = pose_sigma(self.height) if sigma is None else float(sigma)
        self.extractor = FeatureExtractor(model=backbone, height=self.height, width=self.width,
                                          device=self.device, batch_size=batch_size)

    # ---------------------------------------------------------------- inputs
    def source_features(self, source_images: Sequence[SourceImage]) -> torch.Tensor:
        """E's pooled features of the sources (resized to G's size, normalised): S x reid_feature_nc."""
        return self.extractor(list(source_images))

    def source_tiles(self, source_images: Sequence[SourceImage]) -> List[np.ndarray]:
        """The sources as G sees them before normalisation: uint8 H x W x 3, resized to G's size."""
        scale = RectScale(self.height, self.width)
        return [np.asarray(scale(to_pil(img, f"source {i}"))) for i, img in enumerate(source_images)]

    def pose_maps(self, landmarks_list: Sequence[np.ndarray]) -> torch.Tensor:
        """P x pose_nc x H x W maps of keypoints given in G's pixel coordinates."""
        maps = []
        for i, landmarks in enumerate(landmarks_list):
            landmarks = np.asarray(landmarks)
            if landmarks.ndim != 2 or landmarks.shape != (self.config.pose_nc, 2):
                raise DatasetError(
                    f"target pose {i}: {landmarks.shape} keypoints, the generator takes ({self.config.pose_nc}, 2)"
                )
            maps.append(torch.from_numpy(generate_pose_map(landmarks, self.height, self.width, self.sigma)))
        if not maps:
            return torch.zeros(0, self.config.pose_nc, self.height, self.width)
        return torch.stack(maps)

    def pose_tiles(self, landmarks_list: Sequence[np.ndarray]) -> List[np.ndarray]:
        """The pose maps of :meth:`pose_maps` as uint8 H x W x 3 images
        (:func:`fdgan.utils.util.posemap2im`)."""
        maps = self.pose_maps(landmarks_list)
        return [posemap2im(maps[p]) for p in range(maps.shape[0])]

    # ---------------------------------------------------------------- generation
    def generate(self, source_images: Sequence[SourceImage], landmarks_list: Sequence[np.ndarray],
                 num_noise: int = 1, seed: int = 0) -> np.ndarray:
        """Generate every source in every target pose with every noise vector.

        Args:
            source_images: S images: paths, PIL images or H x W x 3 uint8 arrays (any size).
            landmarks_list: P ``(18, 2)`` (row, col) keypoint arrays in G's pixels (height x
                width); -1 marks a missing keypoint. :meth:`scripts.pose_targets.TargetPose.scaled` gives them.
            num_noise: N, the noise vectors per (source, pose).
            seed: seed of the noise (:func:`draw_noise`).

        Returns:
            uint8 ``(S, P, N, H, W, 3)``: ``tensor2im`` of ``G(posemap[p], E(source[s]), z[n])``.
            The pairs are run in (s, p, n) order in batches of ``batch_size``.
        """
        if num_noise < 1:
            raise ConfigError(f"--num-noise must be >= 1 (got {num_noise})")
        if not source_images or not landmarks_list:
            raise ConfigError("need at least one source image (--sources) and one target pose (--poses)")
        features = self.source_features(source_images)
        posemaps = self.pose_maps(landmarks_list)
        noise = draw_noise(num_noise, self.config.noise_nc, seed)
        s_count, p_count = features.shape[0], posemaps.shape[0]
        index = [(s, p, n) for s in range(s_count) for p in range(p_count) for n in range(num_noise)]
        out = np.empty((s_count, p_count, num_noise, self.height, self.width, 3), dtype=np.uint8)
        with torch.inference_mode():
            for start in range(0, len(index), self.batch_size):
                chunk = index[start:start + self.batch_size]
                s_idx = torch.tensor([c[0] for c in chunk])
                p_idx = torch.tensor([c[1] for c in chunk])
                n_idx = torch.tensor([c[2] for c in chunk])
                fake = self.netG(
                    posemaps[p_idx].to(self.device),
                    features[s_idx].view(len(chunk), -1, 1, 1).to(self.device),
                    noise[n_idx].view(len(chunk), -1, 1, 1).to(self.device),
                ).float().cpu()
                for k, (s, p, n) in enumerate(chunk):
                    out[s, p, n] = tensor2im(fake[k])
        return out
