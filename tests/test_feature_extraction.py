"""FeatureExtractor, checkpoint forms, and the HDF5 output of scripts/extract_features.py."""
from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from helpers import load_script, with_bn_statistics
from reid import models
from reid.errors import CheckpointError, DatasetError
from reid.feature_extraction import FeatureExtractor, read_features_h5
from reid.models import build_siamese
from reid.models.loading import backbone_state_dict, detect_arch
from reid.utils.data.images import list_images
from reid.utils.data.transforms import build_test_transform

H, W = 64, 32
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    torch.manual_seed(1)
    return with_bn_statistics(models.create("resnet18", pretrained=False, cut_at_pooling=True), seed=2, weights=True)


@pytest.fixture(scope="module")
def arrays() -> list:
    rng = np.random.default_rng(0)
    sizes = [(80, 40), (64, 32), (128, 48), (50, 30), (96, 64)]
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]


def _by_hand(model: torch.nn.Module, arrays: list) -> torch.Tensor:
    """Bilinear resize with PIL, scale to [0, 1], ImageNet normalisation in numpy, then the model."""
    batch = []
    for a in arrays:
        img = Image.fromarray(a).resize((W, H), Image.BILINEAR)
        x = (np.asarray(img, dtype=np.float64) / 255.0 - MEAN) / STD
        batch.append(torch.from_numpy(x.transpose(2, 0, 1)).float())
    with torch.no_grad():
        return model.eval()(torch.stack(batch))


def _save(obj, path) -> str:
    torch.save(obj, path)
    return str(path)


def test_features_equal_model_run_by_hand(tmp_path, backbone, arrays):
    ckpt = _save(backbone.state_dict(), tmp_path / "backbone.pth")
    # arch says resnet50, the weights say resnet18: the weights win.
    extractor = FeatureExtractor(ckpt, arch="resnet50", height=H, width=W, batch_size=2)
    assert extractor.arch == "resnet18"
    got = extractor(arrays)
    assert got.dtype == torch.float32 and got.shape == (5, 512)
    torch.testing.assert_close(got, _by_hand(backbone, arrays), rtol=1e-5, atol=1e-5)  # batches of 2 vs 5: other kernels
    # A freshly initialised network gives something else: the weights really were loaded.
    torch.manual_seed(5)
    other = FeatureExtractor(None, arch="resnet18", height=H, width=W)
    assert (other(arrays) - got).abs().max() > 1e-2


def test_normalize_gives_unit_rows(tmp_path, backbone, arrays):
    extractor = FeatureExtractor(model=backbone, height=H, width=W, normalize=True)
    got = extractor(arrays).numpy()
    raw = _by_hand(backbone, arrays).numpy()
    np.testing.assert_allclose(got, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_input_forms_give_identical_features(tmp_path, backbone, arrays):
    paths = []
    for i, a in enumerate(arrays):
        p = tmp_path / f"img{i}.png"  # lossless: the file decodes to the same array
        Image.fromarray(a).save(p)
        paths.append(str(p))
    extractor = FeatureExtractor(model=backbone, height=H, width=W, batch_size=3)
    from_arrays = extractor(arrays)
    assert torch.equal(extractor(paths), from_arrays)
    assert torch.equal(extractor([Image.fromarray(a) for a in arrays]), from_arrays)
    mixed = [paths[0], Image.fromarray(arrays[1]), arrays[2], paths[3], arrays[4]]
    assert torch.equal(extractor(mixed), from_arrays)
    # Tensors already preprocessed by the evaluation transform are used as they are.
    transform = build_test_transform(H, W)
    tensors = torch.stack([transform(Image.fromarray(a)) for a in arrays])
    assert torch.equal(extractor(tensors), from_arrays)
    # A single image and an N x H x W x 3 uint8 batch (other batch compositions may round
    # differently inside the convolutions).
    torch.testing.assert_close(extractor(paths[1]), from_arrays[1:2], rtol=0, atol=1e-5)
    same_size = np.stack([arrays[1], arrays[1]])
    torch.testing.assert_close(extractor(same_size), from_arrays[[1, 1]], rtol=0, atol=1e-5)
    # Greyscale and RGBA images are converted to RGB first.
    rgba = Image.fromarray(arrays[0]).convert("RGBA")
    torch.testing.assert_close(extractor([rgba]), from_arrays[:1], rtol=0, atol=1e-5)


def test_bad_inputs_raise_dataset_error(tmp_path, backbone):
    extractor = FeatureExtractor(model=backbone, height=H, width=W)
    with pytest.raises(DatasetError, match="missing.jpg"):
        extractor([str(tmp_path / "missing.jpg")])
    with pytest.raises(DatasetError, match=r"images\[1\]"):
        extractor([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)])
    with pytest.raises(DatasetError, match="N x 3 x H x W"):
        extractor(torch.zeros(2, 1, H, W))
    assert extractor([]).shape == (0, 512)


@pytest.mark.slow
def test_checkpoint_forms_load(tmp_path, arrays):
    torch.manual_seed(3)
    net = build_siamese("resnet18", pretrained=False)
    with_bn_statistics(net, seed=4, weights=True)
    want = _by_hand(net.base_model, arrays)
    prefixed = {f"module.{k}": v for k, v in net.state_dict().items()}
    forms = {
        "model_best.pth.tar": {"state_dict": prefixed},                       # baseline.py
        "3_net_E.pth": prefixed,                                              # train.py
        "siamese_plain.pth": net.state_dict(),                                # no prefix
        "backbone.pth": net.base_model.state_dict(),                          # backbone only
        "torchvision.pth": net.base_model.base.state_dict(),                  # torchvision ResNet
    }
    for name, obj in forms.items():
        extractor = FeatureExtractor(_save(obj, tmp_path / name), arch="resnet18", height=H, width=W)
        torch.testing.assert_close(extractor(arrays), want, rtol=0, atol=1e-5, msg=name)
    # Loading into a given SiameseNet takes its base_model.
    fresh = build_siamese("resnet18", pretrained=False)
    extractor = FeatureExtractor(str(tmp_path / "3_net_E.pth"), model=fresh, height=H, width=W)
    torch.testing.assert_close(extractor(arrays), want, rtol=0, atol=1e-5)


def test_wrong_network_raises_checkpoint_error(tmp_path):
    from fdgan.networks import NLayerDiscriminator, get_norm_layer

    dp = NLayerDiscriminator(3 + 18, norm_layer=get_norm_layer("batch"))
    path = _save({f"module.{k}": v for k, v in dp.state_dict().items()}, tmp_path / "3_net_Dp.pth")
    with pytest.raises(CheckpointError, match="3_net_Dp.pth"):
        FeatureExtractor(path, arch="resnet18", height=H, width=W)
    # A ResNet whose layout is none of the five, with a tensor of the wrong shape.
    state = models.create("resnet18", pretrained=False, cut_at_pooling=True).state_dict()
    state["base.layer4.1.conv2.weight"] = torch.zeros(3, 3, 3, 3)
    path = _save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="broken.pth.*shape mismatch"):
        FeatureExtractor(path, arch="resnet18", height=H, width=W)
    with pytest.raises(CheckpointError, match="absent.pth"):
        FeatureExtractor(str(tmp_path / "absent.pth"))


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_detect_arch(arch):
    with torch.device("meta"):  # shapes and names only, nothing allocated or initialised
        net = models.create(arch, pretrained=False, cut_at_pooling=True)
    assert detect_arch(net.state_dict()) == arch
    wrapped = {"state_dict": {f"module.base_model.{k}": v for k, v in net.state_dict().items()}}
    assert detect_arch(backbone_state_dict(wrapped)) == arch


def test_script_writes_hdf5_matching_extractor(tmp_path, backbone, arrays, capsys):
    images = tmp_path / "images"
    (images / "cam2" / "deeper").mkdir(parents=True)
    (images / ".hidden").mkdir()
    files = ["b.png", "a.JPG", "cam2/c.png", "cam2/deeper/d.jpeg", "cam2/e.bmp"]
    for rel, a in zip(files, arrays):
        Image.fromarray(a).save(images / rel, format={"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG",
                                                      "bmp": "BMP"}[rel.rsplit(".", 1)[1].lower()])
    (images / "notes.txt").write_text("not an image")
    Image.fromarray(arrays[0]).save(images / ".hidden" / "x.png")
    expected_names = ["a.JPG", "b.png", "cam2/c.png", "cam2/deeper/d.jpeg", "cam2/e.bmp"]
    assert list_images(images, recursive=True) == expected_names

    ckpt = _save({"state_dict": {f"module.base_model.{k}": v for k, v in backbone.state_dict().items()}},
                 tmp_path / "model_best.pth.tar")
    out = tmp_path / "out" / "feats.h5"
    script = load_script("extract_features")
    argv = ["--checkpoint", ckpt, "--images", str(images), "--output", str(out),
            "--arch", "resnet18", "--height", str(H), "--width", str(W), "--batch-size", "2", "--device", "cpu"]
    assert script.main(argv) == 0

    with h5py.File(out, "r") as f:
        names = [n.decode("utf-8") for n in f["names"][()]]
        feats = f["features"][()]
        assert f["features"].dtype == np.float32
        assert f.attrs["arch"] == "resnet18"
        assert f.attrs["checkpoint"] == os.path.abspath(ckpt)
        assert (int(f.attrs["height"]), int(f.attrs["width"])) == (H, W)
    assert names == expected_names
    extractor = FeatureExtractor(model=backbone, height=H, width=W, batch_size=2)
    want = extractor([str(images / n) for n in expected_names]).numpy()
    assert np.array_equal(feats, want)
    # The order is the sorted names, whatever order the files were written in: b.png is arrays[0].
    np.testing.assert_allclose(feats[1], _by_hand(backbone, arrays[:1]).numpy()[0], rtol=0, atol=1e-5)
    r_names, r_feats, r_attrs = read_features_h5(out)
    assert r_names == expected_names and np.array_equal(r_feats, feats) and r_attrs["arch"] == "resnet18"

    # Re-running gives the same bytes, whether to a new file or over the old one; no temp files left.
    first = out.read_bytes()
    assert script.main(argv) == 0
    assert out.read_bytes() == first
    again = tmp_path / "out" / "again.h5"
    assert script.main(argv[:5] + [str(again)] + argv[6:]) == 0
    assert again.read_bytes() == first
    assert sorted(os.listdir(tmp_path / "out")) == ["again.h5", "feats.h5"]
    capsys.readouterr()


def test_script_errors_exit_2(tmp_path, backbone, capsys):
    ckpt = _save(backbone.state_dict(), tmp_path / "backbone.pth")
    (tmp_path / "empty").mkdir()
    script = load_script("extract_features")
    rc = script.main(["--checkpoint", ckpt, "--images", str(tmp_path / "empty"), "--output", str(tmp_path / "f.h5"),
                      "--arch", "resnet18", "--height", str(H), "--width", str(W), "--device", "cpu"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "empty" in err and "no image files" in err
    assert not (tmp_path / "f.h5").exists()
    Image.new("RGB", (W, H)).save(tmp_path / "one.png")
    rc = script.main(["--checkpoint", str(tmp_path / "nope.pth"), "--images", str(tmp_path), "--output",
                      str(tmp_path / "f.h5"), "--device", "cpu"])
    assert rc == 2 and "nope.pth" in capsys.readouterr().err
