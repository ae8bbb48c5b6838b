"""Where E's backbone starts: ImageNet, a local weights file, the rendered-identity substitute, or
random weights; loading a local file and recording that origin.

The origin is a small JSON-ready dict (``kind``: ``imagenet``, ``file``, ``substitute`` or
``random``) that every checkpoint and results file carries as ``backbone``.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torchvision

from reid.errors import ConfigError, first_line
from reid.utils.osutils import write_json

SIDECAR_SUFFIX = ".json"
# Tensors a backbone cut at pooling uses; the classifier fc is never used and may differ.
_FEATURE_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
_DEPTHS = (18, 34, 50, 101, 152)

RANDOM: Dict[str, Any] = {"kind": "random"}


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _shapes(depth: int) -> Dict[str, Tuple[int, ...]]:
    with torch.device("meta"):
        model = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _is_feature_key(key: str) -> bool:
    return key.startswith(_FEATURE_PREFIXES) and not key.endswith("num_batches_tracked")


def _architecture_of(state: Mapping[str, Any]) -> Optional[str]:
    """The ResNet whose feature layers a torchvision-format state dict fills exactly, if any."""
    for depth in _DEPTHS:
        want = {k: s for k, s in _shapes(depth).items() if _is_feature_key(k)}
        have = {k: tuple(v.shape) for k, v in state.items() if isinstance(k, str) and _is_feature_key(k)}
        if have == want:
            return f"resnet{depth}"
    return None


def read_weights_file(path: str, depth: int) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read a torchvision-format ResNet-``depth`` weights file for a backbone.

    Every tensor of the feature layers (conv1, bn1, layer1-4) must be in the file with its shape;
    ``fc.*`` is taken only when its shape fits. A ``module.`` prefix (DataParallel) is stripped.

    Returns:
        The state dict to load into ``torchvision.models.resnet<depth>()`` (strict=False), and the
        backbone's origin: ``kind`` ``substitute`` when a sidecar ``path + '.json'`` written by
        :func:`reid.pipelines.pretrain.pretrain_backbone` matches the file's checksum, else ``file``.

    Raises:
        ConfigError: one line naming the file and what is wrong with it.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"--pretrained-weights {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        reason = first_line(e)
        if "Weights only load failed" in reason:
            reason = "unreadable, or it pickles objects other than tensors"
        raise ConfigError(f"{path}: not a PyTorch weights file ({reason})") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not state:
        raise ConfigError(f"{path}: not a state dict (holds {type(state).__name__}); expected "
                          "torchvision's resnet state dict (keys conv1.weight ... fc.bias)")
    state = {(k[len("module."):] if isinstance(k, str) and k.startswith("module.") else k): v for k, v in state.items()}
    bad = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConfigError(f"{path}: value of {bad[0]} is not a tensor; expected a state dict of tensors")
    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        raise ConfigError(f"{path}: tensor {nonfinite[0]} holds NaN or infinite values")
    expected = _shapes(depth)
    feature_keys = [k for k in expected if _is_feature_key(k)]
    loaded = [k for k in feature_keys if k in state and tuple(state[k].shape) == expected[k]]
    extra = [k for k in state if isinstance(k, str) and _is_feature_key(k) and k not in expected]
    if len(loaded) < len(feature_keys) or extra:
        found = _architecture_of(state)
        if found is not None:
            raise ConfigError(f"{path}: holds {found} weights, not resnet{depth}'s (pass -a/--arch {found})")
        missing = [k for k in feature_keys if k not in loaded]
        raise ConfigError(
            f"{path}: fills only {len(loaded)} of resnet{depth}'s {len(feature_keys)} feature tensors (first missing "
            f"or misshapen: {missing[0]}); every one is needed, expected torchvision's resnet{depth} keys")
    out = {k: state[k] for k in loaded}
    out.update({k: state[k] for k, s in expected.items()
                if k not in out and k in state and tuple(state[k].shape) == s})
    return out, weights_origin(path, loaded=len(loaded))


def substitute_sidecar(path: str, sha256: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """The sidecar ``path + '.json'`` that :func:`reid.pipelines.pretrain.pretrain_backbone` wrote
    for the weights file ``path``, or None when there is none, it is unreadable, or its checksum is
    not the file's (``sha256``: the file's, if already computed)."""
    if not (os.path.isfile(path) and os.path.isfile(path + SIDECAR_SUFFIX)):
        return None
    try:
        with open(path + SIDECAR_SUFFIX, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    if not (isinstance(info, dict) and info.get("kind") == "substitute"):
        return None
    return info if info.get("sha256") == (sha256 or file_sha256(path)) else None


def weights_origin(path: str, loaded: Optional[int] = None) -> Dict[str, Any]:
    """The origin record of a local weights file (``substitute`` with its settings, or ``file``)."""
    sha = file_sha256(path)
    origin: Dict[str, Any] = {"kind": "file", "file": os.path.abspath(path), "sha256": sha}
    info = substitute_sidecar(path, sha)
    if info is not None:
        origin.update(kind="substitute", settings=info.get("settings"),
                      heldout_id_accuracy=info.get("heldout_id_accuracy"))
    if loaded is not None:
        origin["tensors_loaded"] = loaded
    return origin


def describe(origin: Optional[Mapping[str, Any]]) -> str:
    """One phrase for reports: where the backbone started."""
    if not origin:
        return "unknown"
    kind = origin.get("kind")
    if kind == "imagenet":
        return f"ImageNet ({origin.get('weights', '')})".replace(" ()", "")
    if kind == "substitute":
        s = origin.get("settings") or {}
        return (f"rendered-identity substitute ({s.get('num_ids')} identities, {s.get('iterations')} iterations, "
                f"seed {s.get('seed')}; {os.path.basename(str(origin.get('file')))})")
    if kind == "file":
        return f"local file {os.path.basename(str(origin.get('file')))}"
    if kind == "random":
        return "random weights"
    return str(kind)


ORIGIN_FILE = "backbone.json"


def write_origin(folder: str, origin: Mapping[str, Any]) -> None:
    """Record a run's backbone origin as ``<folder>/backbone.json``."""
    write_json({"backbone": dict(origin)}, os.path.join(folder, ORIGIN_FILE))


def recorded_origin(checkpoint: str) -> Dict[str, Any]:
    """The backbone origin recorded beside a checkpoint file (the ``backbone.json`` of its run
    folder), or ``{'kind': 'unknown', 'loaded_from': path}`` when none was recorded."""
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), ORIGIN_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            origin = json.load(f).get("backbone")
    except (OSError, ValueError, AttributeError):
        origin = None
    if isinstance(origin, dict) and origin.get("kind"):
        return origin
    return {"kind": "unknown", "loaded_from": os.path.abspath(checkpoint)}
