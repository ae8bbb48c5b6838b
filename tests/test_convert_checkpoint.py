"""scripts/convert_checkpoint.py --to-release: files PyTorch 0.3 reads, with the release's keys."""
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch

from fdgan.networks import CustomPoseGenerator, NLayerDiscriminator, get_norm_layer
from helpers import STATE_DICT_KEYS, load_json, load_script, one_error_line
from reid.models import build_siamese
from reid.utils.serialization import load_checkpoint, save_checkpoint

convert = load_script("convert_checkpoint")

# The globals a PyTorch 0.3 unpickler could resolve for a state dict, and each storage's element type.
_STORAGES_03 = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
                "CharStorage": np.int8, "ByteStorage": np.uint8}


class _Storage03:
    def __init__(self, name, key, size):
        self.name, self.key, self.size = name, key, size


def _rebuild_tensor_03(storage, offset, size, stride):
    return ("tensor", storage, offset, tuple(size), tuple(stride))


class _Unpickler03(pickle.Unpickler):
    storages: dict

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor"):
            return _rebuild_tensor_03
        if module == "torch" and name in _STORAGES_03:
            return name
        raise AssertionError(f"PyTorch 0.3 has no {module}.{name}")

    def persistent_load(self, pid):
        kind, storage_type, key, location, size, view = pid
        assert kind == "storage" and location == "cpu" and view is None
        self.storages[key] = _Storage03(storage_type, key, size)
        return self.storages[key]


def read_like_pytorch_03(path):
    """The legacy format as PyTorch 0.3's torch.load read it, decoded by hand into numpy arrays."""
    with open(path, "rb") as f:
        assert pickle.load(f) == 0x1950a86a20f9469cfc6c  # magic number
        assert pickle.load(f) == 1001  # protocol version
        assert pickle.load(f)["little_endian"]
        unpickler = _Unpickler03(f)
        unpickler.storages = {}
        obj = unpickler.load()
        keys = pickle.load(f)
        assert sorted(keys) == sorted(unpickler.storages)
        data = {}
        for key in keys:  # each storage: its element count, then its raw little-endian elements
            storage = unpickler.storages[key]
            (numel,) = struct.unpack("<q", f.read(8))
            assert numel == storage.size
            dtype = np.dtype(_STORAGES_03[storage.name])
            data[key] = np.frombuffer(f.read(numel * dtype.itemsize), dtype=dtype)
        assert f.read() == b""

    def tensor(entry):
        kind, storage, offset, size, stride = entry
        assert kind == "tensor"
        flat = data[storage.key]
        return np.lib.stride_tricks.as_strided(flat[offset:], size, [s * flat.itemsize for s in stride]).copy()

    def walk(o):
        if isinstance(o, tuple) and o and o[0] == "tensor":
            return tensor(o)
        if isinstance(o, dict):
            return OrderedDict((k, walk(v)) for k, v in o.items())
        return o
    return walk(obj)


def _check_release_file(path, source_state, contract):
    """``path`` reads like PyTorch 0.3 reads it; its keys are ``contract`` (with 'module.') and its
    tensors ``source_state``'s; modern torch.load reads the same back."""
    assert not zipfile.is_zipfile(path)
    read = read_like_pytorch_03(path)
    state = read["state_dict"] if "state_dict" in read else read
    assert list(state) == [f"module.{k}" for k in contract]
    for k, shape in contract.items():
        assert list(state[f"module.{k}"].shape) == shape, k
        if k in source_state:
            np.testing.assert_array_equal(state[f"module.{k}"], source_state[k].numpy())
    loaded = load_checkpoint(path)
    loaded = loaded["state_dict"] if "state_dict" in loaded else loaded
    for k, v in state.items():
        np.testing.assert_array_equal(loaded[k].numpy(), v)
    return state


@pytest.mark.slow
def test_baseline_and_gan_files_convert_to_the_release_keys(tmp_path):
    keys = load_json(STATE_DICT_KEYS)
    torch.manual_seed(0)
    e = build_siamese("resnet50", pretrained=False, num_classes=2)
    for m in e.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_()
    src = tmp_path / "model_best.pth.tar"
    save_checkpoint({"state_dict": {f"module.{k}": v for k, v in e.state_dict().items()}, "epoch": 3,
                     "best_top1": 0.5}, src)
    assert any(k.endswith("num_batches_tracked") for k in e.state_dict())
    assert convert.main(["--to-release", str(src), str(tmp_path / "release.pth.tar")]) == 0
    read = read_like_pytorch_03(tmp_path / "release.pth.tar")
    assert list(read) == ["state_dict"]  # the baseline's wrapper, without the training state
    _check_release_file(tmp_path / "release.pth.tar", e.state_dict(), keys["net_E"])

    g = CustomPoseGenerator(norm_layer=get_norm_layer("batch"), connect_layers=2)
    save_checkpoint({f"module.{k}": v for k, v in g.state_dict().items()}, tmp_path / "1_net_G.pth")
    assert convert.main(["--to-release", str(tmp_path / "1_net_G.pth"), str(tmp_path / "G.pth")]) == 0
    _check_release_file(tmp_path / "G.pth", g.state_dict(), keys["net_G_cat_c2"])


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_pose_discriminator_converts_with_pytorch_03_instance_norm_buffers(tmp_path, norm):
    keys = load_json(STATE_DICT_KEYS)
    torch.manual_seed(1)
    dp = NLayerDiscriminator(21, norm_layer=get_norm_layer(norm))
    torch.save(dp.state_dict(), tmp_path / "Dp.pth")  # no prefix, zip format
    assert convert.main(["--to-release", str(tmp_path / "Dp.pth"), str(tmp_path / "out.pth")]) == 0
    contract = OrderedDict(keys[f"net_Dp_{norm}"])
    if norm == "instance":  # PyTorch 0.3's InstanceNorm2d kept (unused) running statistics
        for pos, c in (("model.3", 128), ("model.6", 256), ("model.9", 512)):
            contract[f"{pos}.running_mean"] = [c]
            contract[f"{pos}.running_var"] = [c]
    state = _check_release_file(tmp_path / "out.pth", dp.state_dict(), contract)
    if norm == "instance":
        np.testing.assert_array_equal(state["module.model.6.running_mean"], np.zeros(256, np.float32))
        np.testing.assert_array_equal(state["module.model.6.running_var"], np.ones(256, np.float32))


def test_instance_norm_generator_gets_a_buffer_at_every_norm_position(tmp_path):
    g = CustomPoseGenerator(pose_feature_nc=8, reid_feature_nc=16, noise_nc=4, norm_layer=get_norm_layer("instance"))
    torch.save(g.state_dict(), tmp_path / "G.pth")
    assert convert.main(["--to-release", str(tmp_path / "G.pth"), str(tmp_path / "out.pth")]) == 0
    state = read_like_pytorch_03(tmp_path / "out.pth")
    added = {k[len("module."):].rsplit(".", 1)[0]: v.shape[0] for k, v in state.items() if k.endswith("running_var")}
    assert added == {"en_conv2.2": 128, "en_conv3.2": 256, "en_conv4.2": 512, "en_conv5.2": 512, "en_avg.2": 8,
                     "de_avg.2": 512, "de_conv5.2": 512, "de_conv4.2": 256, "de_conv3.2": 128, "de_conv2.2": 64}


def test_a_file_that_is_no_checkpoint_is_one_error_line(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    assert convert.main(["--to-release", str(bad), str(tmp_path / "out.pth")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(bad) in line and "checkpoint" in line
    assert not (tmp_path / "out.pth").exists()
