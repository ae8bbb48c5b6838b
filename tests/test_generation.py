"""Tests of fdgan.generation, fdgan.loading, scripts.pose_targets, fdgan.generation_output and
scripts/generate_images.py: pose transfer with tiny networks.

E is a ResNet-18 SiameseNet and G a 64 x 32 generator with tiny pose/noise sizes, both saved in
the release's train.py format ('module.'-prefixed plain state dicts).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import types
from html.parser import HTMLParser
from pathlib import Path
from typing import Dict, List, Tuple
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

from fdgan.generation import PoseTransfer, draw_noise
from fdgan.generation_output import make_grid
from fdgan.loading import infer_generator_config
from fdgan.networks import CustomPoseGenerator, get_norm_layer
from reid.utils.data.pose import scale_landmarks
from scripts.pose_targets import load_target_pose
from fdgan.utils.util import tensor2im
from reid.errors import CheckpointError, ConfigError, DatasetError
from reid.models import build_siamese
from reid.utils.data.pose import read_pose_file
from reid.utils.data.preprocessor import generate_pose_map
from reid.utils.data.transforms import build_test_transform
from helpers import timeout
from tests.browser import is_blank, screenshot
from tests.conftest import REPO_ROOT

H, W = 64, 32
POSE_NC, NOISE_NC = 8, 4
REID_NC = 512  # ResNet-18
SCRIPT = os.path.join(REPO_ROOT, "scripts", "generate_images.py")


def load_script() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("generate_images_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The command line's own pieces: argument parsing and the whole run.
_script = load_script()
parse_size = _script.parse_size
run_generation = _script.run_generation


def make_generator(fuse_mode: str = "cat", connect_layers: int = 0, norm: str = "batch", seed: int = 0,
                   pose_nc: int = POSE_NC, noise_nc: int = NOISE_NC) -> CustomPoseGenerator:
    """A generator whose output depends visibly on pose, identity feature and noise.

    PyTorch's default initialisation shrinks the signal at every layer, so a fresh G's output
    barely depends on its input (changes of 1e-7): the kernels are drawn Kaiming-normal instead,
    and the BatchNorm running statistics are set by two training-mode passes over random poses
    (different from any test input, so a G left in training mode would give other images).
    """
    torch.manual_seed(seed)
    g = CustomPoseGenerator(pose_feature_nc=pose_nc, reid_feature_nc=REID_NC, noise_nc=noise_nc,
                            norm_layer=get_norm_layer(norm), fuse_mode=fuse_mode,
                            connect_layers=connect_layers, height=H, width=W)
    for m in g.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            torch.nn.init.kaiming_normal_(m.weight, a=0.2)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration passes
    rng = np.random.default_rng(seed)
    g.train()
    with torch.no_grad():
        for _ in range(2):
            maps = torch.stack([torch.from_numpy(generate_pose_map(rng.uniform(0, [H, W], (18, 2)), H, W, 5))
                                for _ in range(8)])
            g(maps, torch.rand(8, REID_NC, 1, 1), torch.randn(8, noise_nc, 1, 1))
    return g.eval()


def save_release(net: torch.nn.Module, path: Path) -> Path:
    """As fdgan/model.py's save: a plain state dict with 'module.' prefixes."""
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, object]:
    folder = tmp_path_factory.mktemp("gen_nets")
    torch.manual_seed(1)
    net_e = build_siamese("resnet18", pretrained=False).eval()
    net_g = make_generator()
    return {
        "E": net_e, "G": net_g,
        "E_path": save_release(net_e, folder / "10_net_E.pth"),
        "G_path": save_release(net_g, folder / "10_net_G.pth"),
    }


@pytest.fixture(scope="module")
def transfer(nets) -> PoseTransfer:
    return PoseTransfer(nets["E_path"], nets["G_path"], batch_size=16, sigma=5)


def dataset_files(root: str, count: int) -> List[str]:
    return sorted(os.listdir(os.path.join(root, "images")))[:count]


def landmarks_for(root: str, fname: str) -> np.ndarray:
    """The dataset pose of ``fname`` scaled to G's size (synthetic images are 64 x 32 already)."""
    stem = os.path.splitext(fname)[0]
    with Image.open(os.path.join(root, "images", fname)) as im:
        size = (im.height, im.width)
    return scale_landmarks(read_pose_file(os.path.join(root, "poses", stem + ".txt")), size, (H, W))


# --------------------------------------------------------------------------- config inference
@pytest.mark.parametrize("fuse_mode,connect_layers,norm", [
    ("cat", 0, "batch"), ("add", 2, "batch"), ("cat", 2, "instance"), ("add", 0, "instance"), ("cat", 5, "none"),
])
def test_infer_generator_config(fuse_mode: str, connect_layers: int, norm: str) -> None:
    g = CustomPoseGenerator(pose_feature_nc=POSE_NC, reid_feature_nc=REID_NC, noise_nc=NOISE_NC,
                            norm_layer=get_norm_layer(norm), fuse_mode=fuse_mode,
                            connect_layers=connect_layers, height=H, width=W)
    config = infer_generator_config(g.state_dict(), reid_feature_nc=REID_NC)
    assert (config.fuse_mode, config.connect_layers, config.norm) == (fuse_mode, connect_layers, norm)
    assert (config.pose_feature_nc, config.reid_feature_nc, config.noise_nc) == (POSE_NC, REID_NC, NOISE_NC)
    assert (config.pose_nc, config.output_nc, config.height, config.width) == (18, 3, H, W)
    rebuilt = config.build()
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in g.state_dict().items()}


def test_infer_generator_config_release_size_and_add_without_e() -> None:
    g = CustomPoseGenerator(pose_feature_nc=16, reid_feature_nc=64, noise_nc=32, fuse_mode="add",
                            norm_layer=get_norm_layer("batch"), height=256, width=128)
    config = infer_generator_config(g.state_dict())  # 'add' needs no E: W_reid holds the size
    assert (config.height, config.width, config.reid_feature_nc, config.noise_nc) == (256, 128, 64, 32)
    # release files from PyTorch 0.3 have no num_batches_tracked; still batch norm
    state = {k: v for k, v in g.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert infer_generator_config(state).norm == "batch"


def test_infer_generator_config_errors(nets) -> None:
    state = nets["G"].state_dict()
    with pytest.raises(ConfigError, match="reid_feature_nc"):
        infer_generator_config(state)  # 'cat' needs E's feature size
    with pytest.raises(CheckpointError, match="different runs"):
        infer_generator_config(state, reid_feature_nc=2048)  # 512 + 8 + 4 channels cannot hold 2048
    add = make_generator("add").state_dict()
    with pytest.raises(CheckpointError, match="2048-d"):
        infer_generator_config(add, reid_feature_nc=2048)
    with pytest.raises(CheckpointError, match="en_conv1.weight"):
        infer_generator_config(nets["E"].state_dict(), reid_feature_nc=REID_NC, source="E.pth")


# --------------------------------------------------------------------------- small helpers
def test_draw_noise_seeded() -> None:
    expected = torch.randn(3, 5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(draw_noise(3, 5, seed=7), expected)
    assert not torch.equal(draw_noise(3, 5, seed=8), expected)


def test_scale_landmarks_and_parse_size() -> None:
    lm = np.array([[10.9, 5.5], [-1, -1], [255.0, 127.9]])
    out = scale_landmarks(lm, (128, 64), (256, 128))
    assert out.tolist() == [[21, 11], [-1, -1], [510, 255]]
    assert parse_size("256x128") == (256, 128)
    assert parse_size(" 64 X 32 ") == (64, 32)
    for bad in ("256", "0x128", "axb", "256x-1"):
        with pytest.raises(ConfigError, match="--pose-size"):
            parse_size(bad)


def test_make_grid_layout() -> None:
    s, p, n = 2, 3, 2
    gen = np.zeros((s, p, n, 4, 2, 3), dtype=np.uint8)
    for i in range(s):
        for j in range(p):
            for k in range(n):
                gen[i, j, k] = 100 + 20 * i + 5 * j + k
    sources = [np.full((4, 2, 3), 10 + i, np.uint8) for i in range(s)]
    poses = [np.full((4, 2, 3), 50 + j, np.uint8) for j in range(p)]
    grid = make_grid(gen, sources, poses)
    assert grid.shape == ((s + 1) * 4, (p * n + 1) * 2, 3)
    tile = lambda r, c: grid[r * 4:(r + 1) * 4, c * 2:(c + 1) * 2]  # noqa: E731
    assert (tile(0, 0) == 255).all()
    for j in range(p):
        for k in range(n):
            assert (tile(0, 1 + j * n + k) == 50 + j).all()
    for i in range(s):
        assert (tile(1 + i, 0) == 10 + i).all()
        for j in range(p):
            for k in range(n):
                assert (tile(1 + i, 1 + j * n + k) == 100 + 20 * i + 5 * j + k).all()


# --------------------------------------------------------------------------- target poses
def test_load_target_pose_forms(synthetic_root: str, tmp_path: Path) -> None:
    fname = dataset_files(synthetic_root, 1)[0]
    stem = os.path.splitext(fname)[0]
    truth = read_pose_file(os.path.join(synthetic_root, "poses", stem + ".txt"))

    by_name = load_target_pose(fname, synthetic_root)
    assert by_name.size == (64, 32) and not by_name.estimated
    np.testing.assert_array_equal(by_name.landmarks, truth)
    by_file = load_target_pose(os.path.join(synthetic_root, "poses", stem + ".txt"))  # finds ../images/<stem>.jpg
    assert by_file.size == (64, 32)
    by_image = load_target_pose(os.path.join(synthetic_root, "images", fname))  # the sibling pose file
    assert not by_image.estimated and by_image.origin.endswith(stem + ".txt")

    # A lone pose file: --pose-size, else the generator size.
    lone = tmp_path / "lone.txt"
    shutil.copy(os.path.join(synthetic_root, "poses", stem + ".txt"), lone)
    assert load_target_pose(str(lone), pose_size=(128, 64)).size == (128, 64)
    lone_default = load_target_pose(str(lone), default_size=(256, 128))
    assert lone_default.size == (256, 128)
    np.testing.assert_array_equal(lone_default.scaled(64, 32), scale_landmarks(truth, (256, 128), (64, 32)))

    with pytest.raises(DatasetError, match="--poses nothing.jpg"):
        load_target_pose("nothing.jpg", synthetic_root)
    with pytest.raises(DatasetError, match="--poses missing.txt"):
        load_target_pose("missing.txt")


def test_image_target_without_estimator_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "person.png"
    Image.new("RGB", (32, 64), (90, 90, 90)).save(image)
    monkeypatch.setitem(sys.modules, "reid.pose_estimation", None)  # makes the import fail
    with pytest.raises(ConfigError) as info:
        load_target_pose(str(image))
    message = str(info.value)
    assert message.startswith(f"--poses {image} is an image")
    assert "mediapipe" in message and "pose file (.txt)" in message and ".venv-pose/bin/python" in message


def test_image_target_with_estimator_scales_from_image_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "person.png"
    Image.new("RGB", (64, 128), (90, 90, 90)).save(image)  # 128 high, 64 wide
    points = np.full((18, 2), -1, np.float32)
    points[0] = (100.0, 50.0)

    class FakeEstimator:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def estimate(self, img):
            assert img.size == (64, 128)
            return points

    monkeypatch.setitem(sys.modules, "reid.pose_estimation",
                        types.SimpleNamespace(BlazePoseEstimator=FakeEstimator))
    target = load_target_pose(str(image))
    assert target.estimated and target.size == (128, 64)
    assert target.scaled(64, 32)[0].tolist() == [50, 25]
    assert (target.scaled(64, 32)[1:] == -1).all()
    with pytest.raises(DatasetError, match="no person"):
        load_target_pose(str(image), estimator=lambda path: None)


# --------------------------------------------------------------------------- generation
def test_generate_equals_manual_forward(nets, transfer: PoseTransfer, synthetic_root: str) -> None:
    assert (transfer.height, transfer.width) == (H, W)
    assert transfer.config.fuse_mode == "cat" and transfer.config.noise_nc == NOISE_NC
    files = dataset_files(synthetic_root, 4)
    sources = [os.path.join(synthetic_root, "images", f) for f in files[:2]]
    landmarks = [landmarks_for(synthetic_root, f) for f in files[2:4]]
    out = transfer.generate(sources, landmarks, num_noise=2, seed=3)
    assert out.shape == (2, 2, 2, H, W, 3) and out.dtype == np.uint8

    # The same computation by hand, batched as the library batches it: (s, p, n) order.
    transform = build_test_transform(H, W)
    imgs = torch.stack([transform(Image.open(p).convert("RGB")) for p in sources])
    net_e, net_g = nets["E"], nets["G"]
    with torch.no_grad():
        feats = net_e.base_model.eval()(imgs)
        maps = torch.stack([torch.from_numpy(generate_pose_map(lm, H, W, 5)) for lm in landmarks])
        z = torch.randn(2, NOISE_NC, generator=torch.Generator().manual_seed(3))
        order = [(s, p, n) for s in range(2) for p in range(2) for n in range(2)]
        fake = net_g.eval()(
            maps[[p for _, p, _ in order]],
            feats[[s for s, _, _ in order]].view(len(order), -1, 1, 1),
            z[[n for _, _, n in order]].view(len(order), -1, 1, 1),
        )
    for k, (s, p, n) in enumerate(order):
        np.testing.assert_array_equal(out[s, p, n], tensor2im(fake[k]))
        # one pair alone through G gives the same image (up to float rounding)
        with torch.no_grad():
            single = net_g(maps[p:p + 1], feats[s].view(1, -1, 1, 1), z[n].view(1, -1, 1, 1))
        assert np.abs(out[s, p, n].astype(int) - tensor2im(single).astype(int)).max() <= 1

    # The images vary with every factor.
    assert not np.array_equal(out[0, 0, 0], out[1, 0, 0])
    assert not np.array_equal(out[0, 0, 0], out[0, 1, 0])
    assert not np.array_equal(out[0, 0, 0], out[0, 0, 1])


def test_generate_is_deterministic_per_seed(transfer: PoseTransfer, synthetic_root: str) -> None:
    files = dataset_files(synthetic_root, 3)
    sources = [os.path.join(synthetic_root, "images", files[0])]
    landmarks = [landmarks_for(synthetic_root, f) for f in files[1:3]]
    a = transfer.generate(sources, landmarks, num_noise=2, seed=11)
    b = transfer.generate(sources, landmarks, num_noise=2, seed=11)
    c = transfer.generate(sources, landmarks, num_noise=2, seed=12)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()
    # Noise vector n is row n of draw_noise(N, ...): asking for one noise vector gives the first
    # column again (up to float rounding: the batch holds other pairs), not the second.
    one = transfer.generate(sources, landmarks[:1], num_noise=1, seed=11)
    assert np.abs(one[0, 0, 0].astype(int) - a[0, 0, 0].astype(int)).max() <= 1
    assert np.abs(one[0, 0, 0].astype(int) - a[0, 0, 1].astype(int)).max() > 10


@pytest.mark.slow
def test_generate_add_fusion_skips_instance_norm(tmp_path: Path, nets, synthetic_root: str) -> None:
    fuse_mode, connect_layers, norm = "add", 2, "instance"
    g = make_generator(fuse_mode, connect_layers, norm, seed=5)
    model = PoseTransfer(nets["E_path"], save_release(g, tmp_path / "G.pth"), sigma=5)
    assert (model.config.fuse_mode, model.config.connect_layers, model.config.norm) == (fuse_mode, connect_layers, norm)
    files = dataset_files(synthetic_root, 2)
    src = os.path.join(synthetic_root, "images", files[0])
    lm = landmarks_for(synthetic_root, files[1])
    out = model.generate([src], [lm], num_noise=1, seed=0)
    with torch.no_grad():
        feat = nets["E"].base_model.eval()(build_test_transform(H, W)(Image.open(src).convert("RGB"))[None])
        fake = g(torch.from_numpy(generate_pose_map(lm, H, W, 5))[None], feat.view(1, -1, 1, 1),
                 draw_noise(1, NOISE_NC, 0).view(1, -1, 1, 1))
    np.testing.assert_array_equal(out[0, 0, 0], tensor2im(fake))


def test_mismatched_checkpoints_are_rejected(tmp_path: Path, nets) -> None:
    with pytest.raises(CheckpointError, match="no pose generator"):
        PoseTransfer(nets["E_path"], nets["E_path"])
    with pytest.raises(CheckpointError, match="no re-ID backbone"):
        PoseTransfer(nets["G_path"], nets["G_path"])
    with pytest.raises(CheckpointError, match="not found"):
        PoseTransfer(tmp_path / "none.pth", nets["G_path"])


# --------------------------------------------------------------------------- outputs and the CLI
class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: List[Tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if (tag, name) in (("img", "src"), ("a", "href")):
                self.refs.append((name, value))


def page_refs(page: Path) -> List[str]:
    parser = _Refs()
    parser.feed(page.read_text(encoding="utf-8"))
    return [unquote(v) for _, v in parser.refs]


@pytest.mark.slow
def test_run_generation_outputs(tmp_path: Path, nets, synthetic_root: str) -> None:
    files = dataset_files(synthetic_root, 4)
    # A source whose name holds markup: it must appear escaped in the page.
    odd = tmp_path / 'src <b>"x"&y.jpg'
    shutil.copy(os.path.join(synthetic_root, "images", files[0]), odd)
    out_dir = tmp_path / "out"
    result = run_generation(nets["E_path"], nets["G_path"], [str(odd), files[1]], files[2:4], out_dir,
                            dataset_dir=synthetic_root, num_noise=2, seed=4)
    s, p, n = 2, 2, 2
    assert len(result["images"]) == s * p * n and all(os.path.isfile(f) for f in result["images"])
    for path in result["images"]:
        with Image.open(path) as im:
            assert im.size == (W, H)
    with Image.open(result["grid"]) as grid:
        assert grid.size == ((p * n + 1) * W, (s + 1) * H)
        grid_arr = np.asarray(grid.convert("RGB"))
    # the grid tile (1 + s, 1 + p * n + k) is the generated image
    np.testing.assert_array_equal(grid_arr[2 * H:3 * H, 4 * W:5 * W], result["generated"][1, 1, 1])
    with Image.open(result["images"][0]) as first:
        np.testing.assert_array_equal(np.asarray(first), result["generated"][0, 0, 0])

    page = Path(result["page"])
    refs = page_refs(page)
    assert refs and all((page.parent / r).is_file() for r in refs)
    assert {str(Path(f).relative_to(out_dir)) for f in result["images"]} <= set(refs)
    text = page.read_text(encoding="utf-8")
    assert '<b>"x"' not in text and "&lt;b&gt;" in text
    shot = screenshot(page, tmp_path / "shot.png", width=800, height=600)
    assert not is_blank(shot)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["generator"]["fuse_mode"] == "cat" and len(manifest["images"]) == s * p * n
    assert [e["file"] for e in manifest["images"]][:2] == ["images/gen_s00_p00_z00.png", "images/gen_s00_p00_z01.png"]

    # same seed -> byte-identical files (other seeds: test_generate_is_deterministic_per_seed)
    again = run_generation(nets["E_path"], nets["G_path"], [str(odd), files[1]], files[2:4], tmp_path / "again",
                           dataset_dir=synthetic_root, num_noise=2, seed=4)
    for a, b in zip(result["images"] + [result["grid"]], again["images"] + [again["grid"]]):
        assert Path(a).read_bytes() == Path(b).read_bytes()


def test_run_generation_bad_input(tmp_path: Path, nets, synthetic_root: str) -> None:
    fname = dataset_files(synthetic_root, 1)[0]
    with pytest.raises(ConfigError, match="--height 128"):
        run_generation(nets["E_path"], nets["G_path"], [fname], [fname], tmp_path, dataset_dir=synthetic_root,
                       height=128)
    with pytest.raises(DatasetError, match="--sources nope.jpg"):
        run_generation(nets["E_path"], nets["G_path"], ["nope.jpg"], [fname], tmp_path, dataset_dir=synthetic_root)
    with pytest.raises(ConfigError, match="--num-noise"):
        run_generation(nets["E_path"], nets["G_path"], [fname], [fname], tmp_path, dataset_dir=synthetic_root,
                       num_noise=0)


@pytest.mark.slow
def test_cli(tmp_path: Path, nets, synthetic_root: str, capsys: pytest.CaptureFixture) -> None:
    files = dataset_files(synthetic_root, 3)
    out_dir = tmp_path / "cli"
    cmd = [sys.executable, SCRIPT, "--netE", str(nets["E_path"]), "--netG", str(nets["G_path"]),
           "--sources", files[0], "--poses", files[1], files[2], "--dataset-dir", synthetic_root,
           "--num-noise", "3", "--seed", "2", "--output", str(out_dir), "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout(300))
    assert done.returncode == 0, done.stderr
    pngs = sorted(p.name for p in (out_dir / "images").glob("gen_*.png"))
    assert len(pngs) == 1 * 2 * 3
    with Image.open(out_dir / "images" / "grid.png") as grid:
        assert grid.size == ((2 * 3 + 1) * W, 2 * H)
    assert "index.html" in done.stdout

    # Error paths in-process (a second interpreter start would only cost time).
    main = load_script_main()
    assert main(cmd[2:-4] + ["--pose-size", "64by32", "--output", str(out_dir)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --pose-size 64by32")
    assert main(["--netE", str(tmp_path / "none.pth")] + cmd[4:]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "none.pth" in err and "not found" in err


def load_script_main():
    return load_script().main
