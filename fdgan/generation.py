"""Pose transfer with trained networks: a person from a source image, in a chosen target pose.

The library behind ``scripts/generate_images.py``. Given E's weights (a baseline
``model_best.pth.tar`` or an ``<epoch>_net_E.pth``) and G's weights (an ``<epoch>_net_G.pth``),
:class:`PoseTransfer` rebuilds both networks with the configuration read from the weights
themselves (:func:`infer_generator_config`; E's architecture via
:func:`reid.feature_extraction.detect_arch`), so no training option has to be repeated.

One generated image is ``G(posemap(target pose), E(source), z)``:

- E's feature is the backbone's pooled feature of the source image resized to G's size
  (RectScale, ImageNet normalisation), as in training (spec section 5);
- the pose map is :func:`reid.utils.data.preprocessor.generate_pose_map` of the target keypoints
  scaled to G's size (truncated to int, as the training items are);
- ``z`` is row ``n`` of :func:`draw_noise` ``(num_noise, noise_nc, seed)``: the SAME noise
  vector ``n`` is used for every (source, pose), so the noise columns of the grid compare like
  with like, and a seed reproduces the output exactly.

Outputs (:meth:`PoseTransfer.write_outputs`), all under one folder: ``images/`` holds one PNG per
(source, pose, noise), the resized sources, the pose maps and ``grid.png``; ``index.html`` shows
them (:class:`fdgan.utils.html.HTML`, names escaped); ``manifest.json`` maps every file to its
source, pose and noise index.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from fdgan.networks import NGF, CustomPoseGenerator, get_norm_layer
from fdgan.utils.html import HTML
from fdgan.utils.util import posemap2im, save_image, tensor2im
from reid.errors import CheckpointError, ConfigError, DatasetError
from reid.feature_extraction import FeatureExtractor, load_backbone
from reid.utils.data.images import read_image
from reid.utils.data.pose import NUM_KEYPOINTS, read_pose_file
from reid.utils.data.preprocessor import generate_pose_map, pose_sigma
from reid.utils.data.transforms import RectScale
from reid.utils.osutils import PathLike, mkdir_if_missing, write_json
from reid.utils.runtime import resolve_device
from reid.utils.serialization import copy_state_dict, extract_state_dict, load_checkpoint

logger = logging.getLogger(__name__)

__all__ = [
    "GeneratorConfig",
    "TargetPose",
    "PoseTransfer",
    "infer_generator_config",
    "draw_noise",
    "scale_landmarks",
    "parse_size",
    "resolve_source",
    "load_target_pose",
    "make_grid",
    "run_generation",
]

SourceImage = Union[str, os.PathLike, Image.Image, np.ndarray]
Size = Tuple[int, int]

#: File name endings tried when looking for the image a pose file belongs to.
IMAGE_SUFFIXES: Tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Input channels of de_conv5 .. de_conv1 without skip connections, in units of ngf; a skip
# connection doubles a block's input (spec section 3's table).
_DECODER_WIDTHS = (8, 8, 4, 2, 1)
_DECODER_BLOCKS = ("de_conv5", "de_conv4", "de_conv3", "de_conv2", "de_conv1")
# Grey value of the empty top-left tile of the grid.
_CORNER_GREY = 255


# ------------------------------------------------------------------------------------------------
# Generator configuration read from its weights


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


# ------------------------------------------------------------------------------------------------
# Small helpers


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


def scale_landmarks(landmarks: np.ndarray, from_size: Size, to_size: Size) -> np.ndarray:
    """Scale (row, col) keypoints from one image size to another, as the training items do.

    Args:
        landmarks: ``(K, 2)`` (row, col) pixel coordinates; a negative value marks a missing
            keypoint.
        from_size: (height, width) of the image the coordinates refer to.
        to_size: (height, width) to scale them to.

    Returns:
        int64 ``(K, 2)``: each present keypoint's coordinates multiplied by the size ratio and
        truncated; missing keypoints ``(-1, -1)``.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    out = np.full(points.shape, -1, dtype=np.int64)
    present = (points[:, 0] >= 0) & (points[:, 1] >= 0)
    out[present, 0] = (points[present, 0] * (to_size[0] / from_size[0])).astype(np.int64)
    out[present, 1] = (points[present, 1] * (to_size[1] / from_size[1])).astype(np.int64)
    return out


def parse_size(text: str, flag: str = "--pose-size") -> Size:
    """Parse ``'HxW'`` (e.g. ``'256x128'``) into ``(height, width)``.

    Args:
        text: the value given on the command line.
        flag: the option name, for the error message.

    Raises:
        ConfigError: not two positive integers separated by 'x'.
    """
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not match or int(match.group(1)) <= 0 or int(match.group(2)) <= 0:
        raise ConfigError(f"{flag} {text}: expected HEIGHTxWIDTH in pixels, e.g. 256x128")
    return int(match.group(1)), int(match.group(2))


def _image_size(path: str) -> Size:
    """(height, width) of an image file without decoding its pixels."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (OSError, ValueError, SyntaxError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DatasetError(f"{path}: unreadable image ({detail})") from None


def _find_image(folder: str, stem: str) -> Optional[str]:
    for suffix in IMAGE_SUFFIXES:
        for candidate in (stem + suffix, stem + suffix.upper()):
            path = os.path.join(folder, candidate)
            if os.path.isfile(path):
                return path
    return None


def resolve_source(spec: str, dataset_dir: Optional[PathLike] = None) -> str:
    """The image file a ``--sources`` entry names.

    Args:
        spec: an image path, or the file name of a dataset image (looked up in
            ``<dataset_dir>/images``).
        dataset_dir: the prepared dataset folder, or None.

    Raises:
        DatasetError: neither an existing file nor an image of the dataset.
    """
    if os.path.isfile(spec):
        return os.fspath(spec)
    if dataset_dir is not None:
        path = os.path.join(os.fspath(dataset_dir), "images", spec)
        if os.path.isfile(path):
            return path
        raise DatasetError(f"--sources {spec}: neither an image file nor an image in {path}")
    raise DatasetError(f"--sources {spec}: image file not found (give --dataset-dir to use dataset file names)")


# ------------------------------------------------------------------------------------------------
# Target poses


@dataclass
class TargetPose:
    """A target pose before scaling to the generator's size.

    Attributes:
        name: the ``--poses`` entry it came from (shown in captions).
        landmarks: float ``(18, 2)`` (row, col) in the pixels of an image of ``size``; -1 = missing.
        size: (height, width) of the image the coordinates refer to.
        origin: where the keypoints came from: the pose file, or the image they were estimated on.
        estimated: True when they were estimated from an image.
    """

    name: str
    landmarks: np.ndarray
    size: Size
    origin: str
    estimated: bool = False

    def scaled(self, height: int, width: int) -> np.ndarray:
        """The keypoints scaled to ``height`` x ``width`` (see :func:`scale_landmarks`)."""
        return scale_landmarks(self.landmarks, self.size, (height, width))


PoseEstimator = Callable[[str], Optional[np.ndarray]]


def estimate_pose(image_path: str) -> Optional[np.ndarray]:
    """Estimate the keypoints of the person in an image with :mod:`reid.pose_estimation`.

    Args:
        image_path: the image file.

    Returns:
        float ``(18, 2)`` (row, col) in the image's pixels, or None when no person was found.

    Raises:
        ConfigError: the estimator (mediapipe) is not available in this environment.
    """
    # .venv-pose has mediapipe but no torch, so the way out is a pose file made there.
    hint = (f"estimating its pose needs mediapipe, which this Python lacks; pass a pose file (.txt) instead, "
            f"made with `.venv-pose/bin/python scripts/generate_poses.py --images {image_path} --output DIR`")
    try:
        from reid.pose_estimation import BlazePoseEstimator
    except ImportError:
        raise ConfigError(f"--poses {image_path} is an image: {hint}") from None
    try:
        estimator = BlazePoseEstimator()
    except ConfigError:
        raise ConfigError(f"--poses {image_path} is an image: {hint}") from None
    with estimator:
        return estimator.estimate(read_image(image_path))


def load_target_pose(
    spec: str,
    dataset_dir: Optional[PathLike] = None,
    pose_size: Optional[Size] = None,
    default_size: Size = (256, 128),
    estimator: Optional[PoseEstimator] = None,
) -> TargetPose:
    """Read or estimate the target pose a ``--poses`` entry names.

    Resolution order:

    1. a name ending in ``.txt``: a pose file (the path, else ``<dataset_dir>/poses/<name>``);
    2. an existing image file: its pose file when the image lies in a dataset's ``images/``
       folder and ``../poses/<stem>.txt`` exists, else the pose estimated from the image;
    3. a dataset file name: ``<dataset_dir>/poses/<stem>.txt``, else the pose estimated from
       ``<dataset_dir>/images/<name>``.

    Pose-file coordinates are in the pixels of the image they were made from: its size is read
    from that image when it is found (``<dataset_dir>/images/<stem>.*`` or, for
    ``<root>/poses/<stem>.txt``, ``<root>/images/<stem>.*``), else taken from ``pose_size``,
    else ``default_size``.

    Args:
        spec: the ``--poses`` entry.
        dataset_dir: the prepared dataset folder, or None.
        pose_size: (height, width) for pose files whose image is not found (``--pose-size``).
        default_size: the fallback size, normally the generator's.
        estimator: ``f(image_path) -> (18, 2) or None``; default :func:`estimate_pose`.

    Raises:
        DatasetError: nothing found under that name, an unreadable pose file, or no person
            detected in an image.
        ConfigError: pose estimation needed but unavailable.
    """
    dataset = os.fspath(dataset_dir) if dataset_dir is not None else None
    estimate = estimator or estimate_pose

    def from_file(pose_path: str, image_path: Optional[str]) -> TargetPose:
        landmarks = read_pose_file(pose_path)
        if image_path is None:
            stem = os.path.splitext(os.path.basename(pose_path))[0]
            folders = []
            if dataset is not None:
                folders.append(os.path.join(dataset, "images"))
            parent = os.path.dirname(os.path.abspath(pose_path))
            if os.path.basename(parent) == "poses":
                folders.append(os.path.join(os.path.dirname(parent), "images"))
            image_path = next((p for p in (_find_image(f, stem) for f in folders) if p), None)
        if image_path is not None:
            size = _image_size(image_path)
        else:
            size = pose_size or default_size
            logger.info("%s: no image found for the pose file; its coordinates are taken as %dx%d pixels "
                        "(--pose-size)", pose_path, *size)
        return TargetPose(spec, landmarks, size, pose_path)

    def from_image(image_path: str) -> TargetPose:
        landmarks = estimate(image_path)
        if landmarks is None:
            raise DatasetError(f"--poses {spec}: no person detected in {image_path}")
        landmarks = np.asarray(landmarks, dtype=np.float32)
        if landmarks.shape != (NUM_KEYPOINTS, 2):
            raise DatasetError(f"--poses {spec}: the estimator returned keypoints of shape {landmarks.shape}")
        return TargetPose(spec, landmarks, _image_size(image_path), image_path, estimated=True)

    if spec.lower().endswith(".txt"):
        if os.path.isfile(spec):
            return from_file(spec, None)
        if dataset is not None and os.path.isfile(os.path.join(dataset, "poses", spec)):
            return from_file(os.path.join(dataset, "poses", spec), None)
        raise DatasetError(f"--poses {spec}: pose file not found")

    if os.path.isfile(spec):
        parent = os.path.dirname(os.path.abspath(spec))
        stem = os.path.splitext(os.path.basename(spec))[0]
        sibling = os.path.join(os.path.dirname(parent), "poses", stem + ".txt")
        if os.path.basename(parent) == "images" and os.path.isfile(sibling):
            return from_file(sibling, spec)
        return from_image(spec)

    if dataset is not None:
        stem = os.path.splitext(spec)[0]
        pose_path = os.path.join(dataset, "poses", stem + ".txt")
        image_path = os.path.join(dataset, "images", spec)
        has_image = os.path.isfile(image_path)
        if os.path.isfile(pose_path):
            return from_file(pose_path, image_path if has_image else None)
        if has_image:
            return from_image(image_path)
        raise DatasetError(f"--poses {spec}: not a file, and neither {pose_path} nor {image_path} exists")
    raise DatasetError(f"--poses {spec}: file not found (give --dataset-dir to use dataset file names)")


# ------------------------------------------------------------------------------------------------
# Grid


def make_grid(generated: np.ndarray, source_tiles: Sequence[np.ndarray],
              pose_tiles: Sequence[np.ndarray]) -> np.ndarray:
    """Tile sources, pose maps and generated images into one image, without gaps.

    Layout: ``(S + 1)`` rows x ``(P * N + 1)`` columns of H x W tiles. Row 0 holds a white
    corner tile, then the map of pose ``p`` in columns ``1 + p * N .. (p + 1) * N`` (repeated
    for each noise); column 0 holds source ``s`` in row ``1 + s``; tile (1 + s, 1 + p * N + n)
    is ``generated[s, p, n]``.

    Args:
        generated: uint8 ``(S, P, N, H, W, 3)``.
        source_tiles: S uint8 H x W x 3 source images (already resized to H x W).
        pose_tiles: P uint8 H x W x 3 pose-map images.

    Returns:
        uint8 ``((S + 1) * H, (P * N + 1) * W, 3)``.
    """
    gen = np.asarray(generated)
    if gen.ndim != 6 or gen.shape[-1] != 3:
        raise ValueError(f"generated must have shape (S, P, N, H, W, 3), got {gen.shape}")
    s_count, p_count, n_count, h, w, _ = gen.shape
    if len(source_tiles) != s_count or len(pose_tiles) != p_count:
        raise ValueError(
            f"{len(source_tiles)} source and {len(pose_tiles)} pose tiles for {s_count} x {p_count} images")
    grid = np.empty(((s_count + 1) * h, (p_count * n_count + 1) * w, 3), dtype=np.uint8)
    grid[:h, :w] = _CORNER_GREY
    for p, tile in enumerate(pose_tiles):
        for n in range(n_count):
            col = 1 + p * n_count + n
            grid[:h, col * w:(col + 1) * w] = tile
    for s, tile in enumerate(source_tiles):
        grid[(s + 1) * h:(s + 2) * h, :w] = tile
        for p in range(p_count):
            for n in range(n_count):
                col = 1 + p * n_count + n
                grid[(s + 1) * h:(s + 2) * h, col * w:(col + 1) * w] = gen[s, p, n]
    return grid


# ------------------------------------------------------------------------------------------------
# The networks


class PoseTransfer:
    """E's backbone and G, rebuilt from their checkpoints, ready to generate.

    Args:
        netE_path: E's weights: a baseline ``model_best.pth.tar`` / ``checkpoint.pth.tar``, an
            ``<epoch>_net_E.pth`` (or a plain backbone state dict), with or without ``module.``.
            Its ResNet depth is read from the weights.
        netG_path: G's weights, ``<epoch>_net_G.pth`` (with or without ``module.``); the
            generator's configuration is read from them (:func:`infer_generator_config`).
        device: ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or ``'auto'``.
        batch_size: images per generator forward pass.
        sigma: standard deviation in pixels of the pose-map Gaussians; None: as in training
            (:func:`reid.utils.data.preprocessor.pose_sigma` of G's height, 5 at 256 rows).

    Attributes:
        config: the generator's :class:`GeneratorConfig`.
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
        g_source = os.fspath(netG_path)
        g_state = extract_state_dict(load_checkpoint(g_source), g_source)
        if "en_conv1.weight" not in g_state or "de_conv1.1.weight" not in g_state:
            raise CheckpointError(
                f"{g_source}: holds no pose generator (expected the keys en_conv1.*, de_conv1.* of "
                "an <epoch>_net_G.pth; is this an E, Di or Dp file?)"
            )
        self.config = infer_generator_config(g_state, reid_feature_nc=backbone.out_features, source=g_source)
        logger.info("%s: generator %s", g_source, ", ".join(f"{k}={v}" for k, v in asdict(self.config).items()))
        netG = self.config.build()
        copy_state_dict(g_state, netG, strict=True, source=g_source)
        self.netG = netG.to(self.device).eval()
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
        return [np.asarray(scale(_to_pil(img, f"source {i}"))) for i, img in enumerate(source_images)]

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

    # ---------------------------------------------------------------- generation
    def generate(self, source_images: Sequence[SourceImage], landmarks_list: Sequence[np.ndarray],
                 num_noise: int = 1, seed: int = 0) -> np.ndarray:
        """Generate every source in every target pose with every noise vector.

        Args:
            source_images: S images: paths, PIL images or H x W x 3 uint8 arrays (any size).
            landmarks_list: P ``(18, 2)`` (row, col) keypoint arrays in G's pixels (height x
                width); -1 marks a missing keypoint. :meth:`TargetPose.scaled` gives them.
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

    # ---------------------------------------------------------------- files
    def write_outputs(
        self,
        output_dir: PathLike,
        generated: np.ndarray,
        source_images: Sequence[SourceImage],
        landmarks_list: Sequence[np.ndarray],
        source_names: Optional[Sequence[str]] = None,
        pose_names: Optional[Sequence[str]] = None,
        title: str = "FD-GAN pose transfer",
        settings: Optional[Mapping[str, Any]] = None,
    ) -> Dict[str, Any]:
        """Write the generated images, the grid, an HTML page and a manifest.

        Files (every one written atomically): ``images/gen_sXX_pYY_zZZ.png`` per (source, pose,
        noise); ``images/source_XX.png`` (resized sources); ``images/pose_YY.png`` (pose maps,
        :func:`fdgan.utils.util.posemap2im`); ``images/grid.png`` (:func:`make_grid`);
        ``index.html``; ``manifest.json``.

        Args:
            output_dir: the folder to write into (created).
            generated: what :meth:`generate` returned for these sources and poses.
            source_images: the S sources given to :meth:`generate`.
            landmarks_list: the P keypoint arrays given to :meth:`generate`.
            source_names: captions of the sources (default ``source <s>``); escaped in the page.
            pose_names: captions of the poses (default ``pose <p>``); escaped in the page.
            title: the page title (escaped).
            settings: extra facts recorded in the manifest and shown on the page (e.g. file
                names, seed).

        Returns:
            ``{'page': index.html path, 'grid': grid path, 'manifest': manifest path,
            'images': [paths of the generated PNGs in (s, p, n) order]}``.
        """
        gen = np.asarray(generated)
        s_count, p_count, n_count = gen.shape[:3]
        if len(source_images) != s_count or len(landmarks_list) != p_count:
            raise ValueError(f"generated has shape {gen.shape} but {len(source_images)} sources and "
                             f"{len(landmarks_list)} poses were given")
        source_names = list(source_names) if source_names is not None else [f"source {s}" for s in range(s_count)]
        pose_names = list(pose_names) if pose_names is not None else [f"pose {p}" for p in range(p_count)]
        out_dir = os.fspath(output_dir)
        page = HTML(out_dir, title)
        img_dir = page.get_image_dir()
        mkdir_if_missing(img_dir)

        source_tiles = self.source_tiles(source_images)
        maps = self.pose_maps(landmarks_list)
        pose_tiles = [posemap2im(maps[p]) for p in range(p_count)]
        source_files = [f"images/source_{s:02d}.png" for s in range(s_count)]
        pose_files = [f"images/pose_{p:02d}.png" for p in range(p_count)]
        for rel, tile in zip(source_files + pose_files, source_tiles + pose_tiles):
            save_image(tile, os.path.join(out_dir, rel))

        entries = []
        generated_files = []
        for s in range(s_count):
            for p in range(p_count):
                for n in range(n_count):
                    rel = f"images/gen_s{s:02d}_p{p:02d}_z{n:02d}.png"
                    save_image(gen[s, p, n], os.path.join(out_dir, rel))
                    generated_files.append(os.path.join(out_dir, rel))
                    entries.append({"file": rel, "source": s, "pose": p, "noise": n})
        grid_rel = "images/grid.png"
        save_image(make_grid(gen, source_tiles, pose_tiles), os.path.join(out_dir, grid_rel))

        shown = 128  # display width of one tile in CSS pixels
        page.add_header(title)
        page.add_header(
            f"{s_count} source(s) x {p_count} pose(s) x {n_count} noise vector(s); generator "
            f"{self.height}x{self.width}, fusion {self.config.fuse_mode}, norm {self.config.norm}"
        )
        for key, value in (settings or {}).items():
            page.add_header(f"{key}: {value}")
        page.add_header("grid: sources down the first column, target pose maps along the first row")
        page.add_images([grid_rel], ["grid"], [grid_rel], width=min(1600, shown * (p_count * n_count + 1)))
        page.add_header("target poses")
        page.add_images(pose_files, pose_names, pose_files, width=shown)
        for s in range(s_count):
            page.add_header(f"source: {source_names[s]}")
            ims = [source_files[s]]
            txts = [f"source: {source_names[s]}"]
            for p in range(p_count):
                for n in range(n_count):
                    ims.append(f"images/gen_s{s:02d}_p{p:02d}_z{n:02d}.png")
                    txts.append(f"{pose_names[p]}, noise {n}")
            page.add_images(ims, txts, ims, width=shown)
        page_path = page.save()

        manifest_path = os.path.join(out_dir, "manifest.json")
        write_json({
            "generator": asdict(self.config),
            "settings": dict(settings or {}),
            "sources": [{"name": n, "file": f} for n, f in zip(source_names, source_files)],
            "poses": [{"name": n, "file": f} for n, f in zip(pose_names, pose_files)],
            "num_noise": n_count,
            "grid": grid_rel,
            "images": entries,
        }, manifest_path)
        return {"page": page_path, "grid": os.path.join(out_dir, grid_rel), "manifest": manifest_path,
                "images": generated_files}


def _to_pil(image: SourceImage, what: str) -> Image.Image:
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise DatasetError(f"{what}: expected an H x W x 3 uint8 array, got shape {array.shape} dtype {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array))


# ------------------------------------------------------------------------------------------------
# The whole run (scripts/generate_images.py)


def run_generation(
    netE: PathLike,
    netG: PathLike,
    sources: Sequence[str],
    poses: Sequence[str],
    output_dir: PathLike,
    dataset_dir: Optional[PathLike] = None,
    num_noise: int = 1,
    seed: int = 0,
    height: Optional[int] = None,
    width: Optional[int] = None,
    pose_size: Optional[Size] = None,
    device: str = "cpu",
    batch_size: int = 16,
    sigma: Optional[float] = None,
    estimator: Optional[PoseEstimator] = None,
) -> Dict[str, Any]:
    """Resolve sources and poses, generate every combination and write the outputs.

    Args:
        netE: E's checkpoint (``--netE``).
        netG: G's checkpoint (``--netG``).
        sources: ``--sources`` entries (see :func:`resolve_source`).
        poses: ``--poses`` entries (see :func:`load_target_pose`).
        output_dir: the output folder (``--output``).
        dataset_dir: the prepared dataset folder for file names (``--dataset-dir``).
        num_noise: noise vectors per (source, pose) (``--num-noise``).
        seed: noise seed (``--seed``).
        height, width: expected generator size (``--height``/``--width``); None: G's own. The
            size is fixed by G's weights, so a different value is an error.
        pose_size: (height, width) of pose files whose image is not found (``--pose-size``).
        device: ``--device``.
        batch_size: generator batch size (``--batch-size``).
        sigma: pose-map Gaussian standard deviation (``--sigma``); None: as in training.
        estimator: pose estimator for image targets (default :func:`estimate_pose`).

    Returns:
        What :meth:`PoseTransfer.write_outputs` returns, plus ``'generated'`` (the array).
    """
    if num_noise < 1:
        raise ConfigError(f"--num-noise must be >= 1 (got {num_noise})")
    if not sources:
        raise ConfigError("--sources: give at least one source image")
    if not poses:
        raise ConfigError("--poses: give at least one target pose")
    if dataset_dir is not None and not os.path.isdir(dataset_dir):
        raise DatasetError(f"--dataset-dir {os.fspath(dataset_dir)}: folder not found")
    source_paths = [resolve_source(s, dataset_dir) for s in sources]
    model = PoseTransfer(netE, netG, device=device, batch_size=batch_size, sigma=sigma)
    for flag, given, own in (("--height", height, model.height), ("--width", width, model.width)):
        if given is not None and given != own:
            raise ConfigError(
                f"{flag} {given}: the generator in {os.fspath(netG)} makes {model.height}x{model.width} "
                "images (read from its weights); omit the flag or pass that size"
            )
    targets = [load_target_pose(p, dataset_dir, pose_size, (model.height, model.width), estimator) for p in poses]
    landmarks = [t.scaled(model.height, model.width) for t in targets]
    generated = model.generate(source_paths, landmarks, num_noise=num_noise, seed=seed)
    settings = {
        "netE": os.fspath(netE), "netG": os.fspath(netG), "seed": seed,
        "pose_sources": "; ".join(f"{t.name} <- {t.origin} ({'estimated' if t.estimated else 'pose file'}, "
                                  f"{t.size[0]}x{t.size[1]})" for t in targets),
    }
    result = model.write_outputs(output_dir, generated, source_paths, landmarks, source_names=list(sources),
                                 pose_names=list(poses), settings=settings)
    result["generated"] = generated
    return result
