"""Export E's backbone for deployment: TorchScript, ONNX, and torch.export's ExportedProgram.

TorchScript (``torch.jit``, deprecated upstream but supported by the pinned PyTorch) and the
ExportedProgram (``torch.export``, its successor) need nothing beyond PyTorch; ONNX needs the
``onnx`` and ``onnxruntime`` packages. Every exported model takes a preprocessed N x 3 x H x W
float batch (resized and ImageNet-normalised, as
:func:`reid.utils.data.transforms.build_test_transform` makes it) and returns the N x D pooled
features; the batch size is free. Each exported file is checked before it replaces the target:
it is loaded back (TorchScript with ``torch.jit.load``, ONNX with onnxruntime) and run on random
inputs of a batch size other than the one used for export; when its output differs from the
eager model by more than ``atol * max(1, max |eager output|)`` an :class:`ExportError` is raised
and the target is left untouched.
"""
from __future__ import annotations

import logging
import os
import warnings
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from reid.errors import ConfigError, FDGANError
from reid.models.loading import load_backbone
from reid.utils.osutils import PathLike, atomic_path, saving_to

logger = logging.getLogger(__name__)

__all__ = [
    "ExportError",
    "FORMATS",
    "export_torchscript",
    "export_onnx",
    "export_program",
    "export_model",
    "verify_outputs",
]

#: Export formats :func:`export_model` knows.
FORMATS: Tuple[str, ...] = ("torchscript", "onnx", "exported-program")

# Largest batch the ExportedProgram's symbolic batch dimension admits.
_MAX_BATCH = 65536


class ExportError(FDGANError):
    """An exported model does not reproduce the eager model, or the exporter is unavailable."""


def verify_outputs(reference: torch.Tensor, exported: torch.Tensor, atol: float, what: str) -> float:
    """Compare an exported model's output with the eager one.

    Args:
        reference: the eager model's output.
        exported: the exported model's output on the same input.
        atol: allowed absolute difference for outputs of magnitude up to 1; larger outputs
            scale it by their largest magnitude.
        what: the exported file, for the error message.

    Returns:
        The largest absolute difference.

    Raises:
        ExportError: shapes differ, or the difference exceeds the tolerance.
    """
    if tuple(reference.shape) != tuple(exported.shape):
        raise ExportError(f"{what}: exported model returns shape {tuple(exported.shape)}, "
                          f"eager model {tuple(reference.shape)}")
    ref = reference.detach().double()
    diff = float((ref - exported.detach().double()).abs().max()) if ref.numel() else 0.0
    tol = atol * max(1.0, float(ref.abs().max()) if ref.numel() else 0.0)
    if not diff <= tol:
        raise ExportError(f"{what}: exported model differs from the eager model by {diff:.3g} (> {tol:.3g})")
    return diff


def _inputs(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, height, width, generator=gen)


def _check_sizes(height: int, width: int, batch_size: int) -> None:
    if height < 32 or width < 32:
        raise ConfigError(f"--height/--width must be at least 32 (got {height} x {width})")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1 (got {batch_size})")


def _prepare(model: nn.Module, height: int, width: int, trace_batch_size: int,
             check_batch_size: int) -> Tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The model on the CPU in eval mode, the example input to export with and the check input."""
    return (model.cpu().eval(), _inputs(trace_batch_size, height, width, seed=0),
            _inputs(check_batch_size, height, width, seed=1))


def export_torchscript(
    model: nn.Module,
    path: PathLike,
    height: int = 256,
    width: int = 128,
    trace_batch_size: int = 2,
    check_batch_size: int = 3,
    atol: float = 1e-4,
) -> float:
    """Trace ``model`` with TorchScript, save it atomically to ``path`` and check it.

    Args:
        model: the backbone (moved to the CPU and put in eval mode).
        path: the ``.pt`` file to write; load it with ``torch.jit.load``.
        height: input height used for tracing and the check.
        width: input width used for tracing and the check.
        trace_batch_size: batch size of the example input the trace is recorded with.
        check_batch_size: batch size of the check input (should differ from the trace's).
        atol: tolerance of the check (see :func:`verify_outputs`).

    Returns:
        The largest absolute difference between the reloaded file and the eager model.

    Raises:
        ExportError: the reloaded model does not reproduce the eager one.
    """
    _check_sizes(height, width, min(trace_batch_size, check_batch_size))
    model, example, check = _prepare(model, height, width, trace_batch_size, check_batch_size)
    with torch.inference_mode(False), torch.no_grad():
        with warnings.catch_warnings():
            # torch.jit is deprecated in favour of torch.export but still fully supported here.
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(model, example, check_trace=False)
        expected = model(check)
        with atomic_path(path) as tmp:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                with saving_to(path):
                    torch.jit.save(traced, tmp)
                reloaded = torch.jit.load(tmp, map_location="cpu")
            diff = verify_outputs(expected, reloaded(check), atol, os.fspath(path))
    logger.info("%s: TorchScript export, max abs difference to eager %.3g", os.fspath(path), diff)
    return diff


def export_onnx(
    model: nn.Module,
    path: PathLike,
    height: int = 256,
    width: int = 128,
    trace_batch_size: int = 2,
    check_batch_size: int = 3,
    atol: float = 1e-4,
    opset_version: int = 17,
) -> float:
    """Export ``model`` to ONNX with a dynamic batch dimension, save atomically and check it.

    The graph has one input ``images`` (batch x 3 x height x width, float32) and one output
    ``features`` (batch x D); the batch dimension is named ``batch`` and free. The check runs
    the file with onnxruntime on the CPU.

    Args:
        model: the backbone (moved to the CPU and put in eval mode).
        path: the ``.onnx`` file to write.
        height: input height of the graph (fixed).
        width: input width of the graph (fixed).
        trace_batch_size: batch size of the example input used for export.
        check_batch_size: batch size of the check input (should differ from the export's).
        atol: tolerance of the check (see :func:`verify_outputs`).
        opset_version: ONNX opset to target.

    Returns:
        The largest absolute difference between onnxruntime's output and the eager model's.

    Raises:
        ExportError: onnx / onnxruntime are not installed, or the output does not match.
    """
    _check_sizes(height, width, min(trace_batch_size, check_batch_size))
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ExportError(f"ONNX export needs the onnx and onnxruntime packages ({e}); "
                          f"pip install onnx onnxruntime, or use --format torchscript") from None
    model, example, check = _prepare(model, height, width, trace_batch_size, check_batch_size)
    with torch.inference_mode(False), torch.no_grad():
        expected = model(check)
        with atomic_path(path) as tmp:
            with warnings.catch_warnings():
                # The TorchScript-based exporter (dynamo=False) needs no onnxscript; it warns
                # that the torch.export-based one is now the default.
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", FutureWarning)
                torch.onnx.export(
                    model, (example,), tmp, dynamo=False, opset_version=opset_version,
                    input_names=["images"], output_names=["features"],
                    dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
                )
            onnx.checker.check_model(tmp)
            session = onnxruntime.InferenceSession(tmp, providers=["CPUExecutionProvider"])
            got = session.run(["features"], {"images": check.numpy()})[0]
            diff = verify_outputs(expected, torch.from_numpy(np.asarray(got)), atol, os.fspath(path))
    logger.info("%s: ONNX export (opset %d), max abs difference to eager %.3g", os.fspath(path), opset_version, diff)
    return diff


def export_program(
    model: nn.Module,
    path: PathLike,
    height: int = 256,
    width: int = 128,
    trace_batch_size: int = 2,
    check_batch_size: int = 3,
    atol: float = 1e-4,
) -> float:
    """Export ``model`` with ``torch.export`` (dynamic batch), save atomically and check it.

    Load the file with ``torch.export.load(path).module()``.

    Args:
        model: the backbone (moved to the CPU and put in eval mode).
        path: the ``.pt2`` file to write.
        height: input height used for export and the check.
        width: input width used for export and the check.
        trace_batch_size: batch size of the example input used for export.
        check_batch_size: batch size of the check input (should differ from the export's).
        atol: tolerance of the check (see :func:`verify_outputs`).

    Returns:
        The largest absolute difference between the reloaded program and the eager model.

    Raises:
        ExportError: the reloaded program does not reproduce the eager model.
    """
    _check_sizes(height, width, min(trace_batch_size, check_batch_size))
    model, example, check = _prepare(model, height, width, trace_batch_size, check_batch_size)
    batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
    with torch.inference_mode(False), torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        expected = model(check)
        with atomic_path(path) as tmp:
            with saving_to(path):
                torch.export.save(program, tmp)
            reloaded = torch.export.load(tmp).module()
            diff = verify_outputs(expected, reloaded(check), atol, os.fspath(path))
    logger.info("%s: ExportedProgram export, max abs difference to eager %.3g", os.fspath(path), diff)
    return diff


_EXPORTERS: Dict[str, Callable[..., float]] = {
    "torchscript": export_torchscript,
    "onnx": export_onnx,
    "exported-program": export_program,
}


def export_model(
    checkpoint: Optional[PathLike],
    path: PathLike,
    fmt: str = "torchscript",
    arch: str = "resnet50",
    height: int = 256,
    width: int = 128,
    atol: float = 1e-4,
) -> float:
    """Load E's backbone from ``checkpoint`` and export it (the library behind scripts/export_model.py).

    Args:
        checkpoint: E's weights in any form :func:`reid.models.loading.load_backbone` reads;
            None exports random weights (tests only).
        path: the file to write.
        fmt: ``'torchscript'``, ``'onnx'`` or ``'exported-program'``.
        arch: backbone to build when the checkpoint does not reveal it.
        height: input image height.
        width: input image width.
        atol: tolerance of the check (see :func:`verify_outputs`).

    Returns:
        The largest absolute difference between the exported and the eager model.
    """
    if fmt not in _EXPORTERS:
        raise ConfigError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    model = load_backbone(checkpoint, arch)
    return _EXPORTERS[fmt](model, path, height=height, width=width, atol=atol)
