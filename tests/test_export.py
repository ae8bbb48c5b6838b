"""TorchScript and ONNX export of E's backbone, checked against the eager model."""
from __future__ import annotations

import os
import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from helpers import load_script, with_bn_statistics
from reid import models
from reid.errors import CheckpointError, ConfigError
from reid.export import ExportError, export_model, export_onnx, export_program, export_torchscript, verify_outputs
from reid.feature_extraction import FeatureExtractor
from reid.models import build_siamese

H, W = 64, 32


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    return with_bn_statistics(models.create("resnet18", pretrained=False, cut_at_pooling=True), seed=1)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    # Batch size 5: neither the export's example (2) nor the built-in check (3).
    return torch.randn(5, 3, H, W, generator=torch.Generator().manual_seed(7))


def _eager(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def _tolerance(reference: torch.Tensor) -> float:
    return 1e-4 * max(1.0, float(reference.abs().max()))


def _jit_load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        return torch.jit.load(str(path))


def test_torchscript_matches_eager_on_another_batch_size(tmp_path, backbone, batch):
    path = tmp_path / "models" / "reid.pt"
    diff = export_torchscript(backbone, path, height=H, width=W, trace_batch_size=2)
    assert 0.0 <= diff <= 1e-4
    loaded = _jit_load(path)
    want = _eager(backbone, batch)
    with torch.no_grad():
        got = loaded(batch)
    assert got.shape == (5, 512)
    assert float((got - want).abs().max()) <= _tolerance(want)
    assert os.listdir(path.parent) == ["reid.pt"]  # the temporary file is gone


def test_onnx_matches_eager_with_dynamic_batch(tmp_path, backbone, batch):
    path = tmp_path / "reid.onnx"
    diff = export_onnx(backbone, path, height=H, width=W, trace_batch_size=2)
    want = _eager(backbone, batch)
    assert 0.0 <= diff <= _tolerance(want)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["features"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, H, W]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for x in (batch, batch[:1]):
        got = session.run(None, {"images": x.numpy()})[0]
        assert got.shape == (x.shape[0], 512)
        assert np.abs(got - _eager(backbone, x).numpy()).max() <= _tolerance(want)
    assert os.listdir(tmp_path) == ["reid.onnx"]


@pytest.mark.slow
def test_exported_program_matches_eager_with_dynamic_batch(tmp_path, backbone, batch):
    path = tmp_path / "reid.pt2"
    assert export_program(backbone, path, height=H, width=W, trace_batch_size=2) <= 1e-4
    loaded = torch.export.load(str(path)).module()
    for x in (batch, batch[:1]):
        want = _eager(backbone, x)
        with torch.no_grad():
            got = loaded(x)
        assert got.shape == (x.shape[0], 512)
        assert float((got - want).abs().max()) <= _tolerance(want)
    assert os.listdir(tmp_path) == ["reid.pt2"]


def test_mismatch_raises_and_leaves_target_untouched(tmp_path, backbone, monkeypatch):
    path = tmp_path / "reid.pt"
    path.write_bytes(b"previous export")
    real_load = torch.jit.load

    def broken_load(*args, **kwargs):
        module = real_load(*args, **kwargs)
        return lambda x: module(x) + 1e-2  # what a faulty exporter would give

    monkeypatch.setattr(torch.jit, "load", broken_load)
    with pytest.raises(ExportError, match="reid.pt: exported model differs"):
        export_torchscript(backbone, path, height=H, width=W)
    assert path.read_bytes() == b"previous export"
    assert os.listdir(tmp_path) == ["reid.pt"]


def test_verify_outputs_tolerance():
    ref = torch.tensor([[0.5, -0.25]])
    assert verify_outputs(ref, ref + torch.tensor([[5e-5, 0.0]]), 1e-4, "f") == pytest.approx(5e-5, rel=1e-3)
    with pytest.raises(ExportError, match="differs"):
        verify_outputs(ref, ref + 2e-4, 1e-4, "f")
    # Outputs of magnitude 100 allow 100 x atol.
    big = torch.tensor([[100.0, 1.0]])
    assert verify_outputs(big, big + torch.tensor([[5e-3, 0.0]]), 1e-4, "f") == pytest.approx(5e-3, rel=1e-3)
    with pytest.raises(ExportError, match="shape"):
        verify_outputs(ref, ref.t(), 1e-4, "f")


@pytest.mark.slow
def test_script_exports_a_net_e_checkpoint(tmp_path, batch, capsys):
    torch.manual_seed(2)
    net = with_bn_statistics(build_siamese("resnet18", pretrained=False), seed=3)
    ckpt = tmp_path / "5_net_E.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, ckpt)
    out = tmp_path / "e.pt"
    script = load_script("export_model")
    rc = script.main(["--checkpoint", str(ckpt), "--output", str(out), "--height", str(H), "--width", str(W)])
    assert rc == 0
    assert "torchscript export verified" in capsys.readouterr().out
    # The exported file computes what the feature extractor computes on preprocessed tensors.
    want = FeatureExtractor(str(ckpt), height=H, width=W)(batch)
    with torch.no_grad():
        got = _jit_load(out)(batch)
    assert float((got - want).abs().max()) <= _tolerance(want)

    assert export_model(str(ckpt), tmp_path / "e.onnx", fmt="onnx", height=H, width=W) <= _tolerance(want)

    rc = script.main(["--checkpoint", str(tmp_path / "absent.pth"), "--output", str(out)])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith("error: ") and "absent.pth" in last
    with pytest.raises(CheckpointError):
        export_model(str(tmp_path / "absent.pth"), out)
    with pytest.raises(ConfigError, match="--format"):
        export_model(str(ckpt), out, fmt="tflite")
