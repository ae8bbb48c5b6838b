"""Backbone weights from a local file, the rendered-identity substitute and its cache, the
batch-hard triplet loss, and the chance levels of a random ranking (issue 21)."""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision

from helpers import REPO_ROOT, timeout
from reid import models
from reid.datasets.synthetic_render.appearance import random_appearance
from reid.datasets.synthetic_render.dataset import _rng as dataset_rng
from reid.datasets.synthetic_render.stream import IdentityBatchSampler, RenderedIdentities
from reid.errors import ConfigError
from reid.evaluation_metrics import mean_ap
from reid.evaluation_metrics.chance import chance_levels, expected_random_ap
from reid.loss import batch_hard_triplet_loss
from reid.models.pretrained import describe, recorded_origin, write_origin
from reid.pipelines import pretrain
from reid.pipelines.pretrain import PretrainConfig, pretrain_backbone, substitute_backbone


def _torchvision_file(path, depth=18, seed=0, **changes):
    torch.manual_seed(seed)
    state = getattr(torchvision.models, f"resnet{depth}")(weights=None).state_dict()
    state.update(changes)
    torch.save(state, path)
    return state


# --------------------------------------------------------------------------------------------
# A local weights file


def test_local_weights_file_round_trip(tmp_path):
    path = tmp_path / "imagenet-copy.pth"
    state = _torchvision_file(path, seed=3)
    backbone = models.create("resnet18", pretrained=str(path), cut_at_pooling=True)
    loaded = backbone.base.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    # The same features as torchvision's own network with that file, pooled by hand.
    reference = torchvision.models.resnet18(weights=None)
    reference.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(2, 3, 64, 32)
    backbone.eval(), reference.eval()
    with torch.no_grad():
        trunk = torch.nn.Sequential(*list(reference.children())[:-2])
        assert torch.allclose(backbone(x), trunk(x).mean(dim=(2, 3)), atol=1e-6)
    origin = backbone.backbone_origin
    assert origin["kind"] == "file"
    assert origin["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert origin["tensors_loaded"] == sum(1 for k in state if not k.startswith("fc.")
                                           and not k.endswith("num_batches_tracked"))


def test_local_weights_file_keeps_other_fc_out(tmp_path):
    """A re-ID file with its own classifier (751 classes) still fills the feature layers."""
    path = tmp_path / "reid.pth"
    state = _torchvision_file(path, **{"fc.weight": torch.zeros(751, 512), "fc.bias": torch.zeros(751)})
    backbone = models.create("resnet18", pretrained=str(path), cut_at_pooling=True)
    assert torch.equal(backbone.base.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert backbone.base.fc.weight.shape == (1000, 512)


def _bad_files(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], a_list)
    other_arch = tmp_path / "resnet34.pth"
    _torchvision_file(other_arch, depth=34)
    partial = tmp_path / "partial.pth"
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save({k: v for k, v in state.items() if not k.startswith("layer4.")}, partial)
    non_tensor = tmp_path / "non_tensor.pth"
    torch.save({**state, "conv1.weight": 3}, non_tensor)
    nan = tmp_path / "nan.pth"
    torch.save({**state, "layer2.0.bn1.weight": torch.full((128,), float("nan"))}, nan)
    return {
        tmp_path / "missing.pth": "no such file",
        garbage: "not a PyTorch weights file (unreadable, or it pickles objects other than tensors)",
        a_list: "not a state dict",
        other_arch: "holds resnet34 weights, not resnet18's (pass -a/--arch resnet34)",
        partial: "fills only 75 of resnet18's 100 feature tensors (first missing or misshapen: layer4.0.conv1.weight)",
        non_tensor: "value of conv1.weight is not a tensor",
        nan: "tensor layer2.0.bn1.weight holds NaN or infinite values",
    }


def test_each_bad_weights_file_gives_one_clear_line(tmp_path):
    for path, expected in _bad_files(tmp_path).items():
        with pytest.raises(ConfigError) as err:
            models.create("resnet18", pretrained=str(path), cut_at_pooling=True)
        message = str(err.value)
        assert "\n" not in message
        assert str(path) in message and expected in message, message


@pytest.mark.slow
def test_baseline_cli_refuses_a_bad_weights_file_in_one_line(tmp_path, data):
    path = tmp_path / "resnet34.pth"
    _torchvision_file(path, depth=34)
    proc = subprocess.run(
        [sys.executable, "baseline.py", "-d", "synthetic", "--data-dir", str(data), "-a", "resnet18", "--device", "cpu",
         "--pretrained-weights", str(path), "--logs-dir", str(tmp_path / "logs"), "--epochs", "1", "-j", "0"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout(120))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {path}: holds resnet34 weights, not resnet18's (pass -a/--arch resnet34)")


# --------------------------------------------------------------------------------------------
# The substitute and its cache

TINY = PretrainConfig(arch="resnet18", height=64, width=32, num_ids=6, num_cams=3, seed=7, iterations=2,
                      ids_per_batch=3, images_per_id=2, heldout_ids=3, heldout_images=1)


def test_tiny_pretraining_writes_a_file_the_backbone_loads(tmp_path):
    path = str(tmp_path / "sub.pth")
    info = pretrain_backbone(TINY, path, workers=0, progress=False)
    # torchvision's own network takes the file as it is (strict): it is torchvision's format.
    torchvision.models.resnet18(weights=None).load_state_dict(torch.load(path, weights_only=True))
    backbone = models.create("resnet18", pretrained=path, cut_at_pooling=True)
    origin = backbone.backbone_origin
    assert origin["kind"] == "substitute" and origin["settings"] == TINY.settings()
    assert 0.0 <= origin["heldout_id_accuracy"] <= 1.0
    assert info["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert "6 identities, 2 iterations, seed 7" in describe(origin)
    # Training moved the weights away from the random start of the same seed.
    torch.manual_seed(TINY.seed)
    start = pretrain._IdentityNet(TINY.arch, TINY.num_ids).backbone.base.state_dict()
    assert not torch.equal(start["conv1.weight"], backbone.base.conv1.weight)


def test_the_cache_is_reused_and_rebuilt_when_settings_change(tmp_path, monkeypatch):
    builds = []
    real = pretrain.pretrain_backbone

    def counting(cfg, out_path, **kw):
        builds.append(cfg)
        return real(cfg, out_path, **kw)

    monkeypatch.setattr(pretrain, "pretrain_backbone", counting)
    cache = str(tmp_path / "cache")
    first = substitute_backbone(TINY, cache, workers=0, progress=False)
    again = substitute_backbone(TINY, cache, workers=0, progress=False)
    assert first == again and len(builds) == 1
    assert "resnet18" in os.path.basename(first) and os.path.basename(first).startswith("substitute-")
    # The substitute never takes torchvision's ImageNet file name.
    assert os.path.basename(first) != os.path.basename(models.resnet.imagenet_weights_file(18))
    changed = PretrainConfig(**{**TINY.__dict__, "iterations": 3})
    other = substitute_backbone(changed, cache, workers=0, progress=False)
    assert other != first and len(builds) == 2
    # A file that no longer matches its recorded checksum is rebuilt.
    with open(first, "ab") as f:
        f.write(b"\0")
    substitute_backbone(TINY, cache, workers=0, progress=False)
    assert len(builds) == 3


def test_rendered_stream_is_reproducible_and_its_identities_are_not_the_datasets():
    data = RenderedIdentities(num_ids=5, num_cams=2, height=64, width=32, seed=0)
    assert np.array_equal(data.render((2, 4)), data.render((2, 4)))
    assert not np.array_equal(data.render((2, 4)), data.render((2, 5)))
    heldout = RenderedIdentities(num_ids=5, num_cams=2, height=64, width=32, seed=0, split=1)
    assert not np.array_equal(data.render((2, 4)), heldout.render((2, 4)))
    # Same seed and identity number as the dataset writer's, another person.
    assert data.appearance(2) != random_appearance(dataset_rng(0, 1, 2, 0))
    batches = list(IdentityBatchSampler(num_ids=5, ids_per_batch=2, images_per_id=3, iterations=4, seed=1))
    assert len(batches) == 4 and all(len(b) == 6 for b in batches)
    keys = [k for b in batches for k in b]
    assert len(set(keys)) == len(keys)  # every (identity, draw) once
    assert all(len({pid for pid, _ in b}) == 2 for b in batches)


def test_origin_is_recorded_beside_a_run_and_found_from_its_files(tmp_path):
    origin = {"kind": "substitute", "file": "x.pth", "settings": {"num_ids": 3}}
    write_origin(str(tmp_path), origin)
    assert recorded_origin(str(tmp_path / "model_best.pth.tar")) == origin
    assert recorded_origin(str(tmp_path / "elsewhere" / "3_net_E.pth"))["kind"] == "unknown"


# --------------------------------------------------------------------------------------------
# Losses and chance levels


def test_batch_hard_triplet_loss_by_hand():
    # 1-D features: identity 0 at 0 and 1, identity 1 at 3 and 7.
    f = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # hardest positive / nearest negative per anchor: (1, 3), (1, 2), (4, 2), (4, 6)
    expected = (max(0, 1 - 3 + 0.3) + max(0, 1 - 2 + 0.3) + max(0, 4 - 2 + 0.3) + max(0, 4 - 6 + 0.3)) / 4
    assert batch_hard_triplet_loss(f, labels, margin=0.3).item() == pytest.approx(expected)
    g = f.clone().requires_grad_(True)
    batch_hard_triplet_loss(torch.cat([g, g[:1]]), torch.tensor([0, 0, 1, 1, 0])).backward()
    assert torch.isfinite(g.grad).all()  # coinciding features (rows 0 and 4) give finite gradients


def test_expected_random_ap_by_hand_and_by_enumeration():
    # One match among 3 items: ranks 1, 2, 3 equally likely -> (1 + 1/2 + 1/3) / 3.
    assert expected_random_ap(np.array([1]), np.array([3]))[0] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert expected_random_ap(np.array([1]), np.array([1]))[0] == pytest.approx(1.0)
    for m, n in [(2, 4), (3, 5), (2, 2)]:
        aps = []
        for order in itertools.permutations(range(n)):
            is_match = np.array([i < m for i in order])
            ranks = np.flatnonzero(is_match) + 1
            aps.append(np.mean(np.arange(1, m + 1) / ranks))
        assert expected_random_ap(np.array([m]), np.array([n]))[0] == pytest.approx(np.mean(aps))


def test_chance_levels_equal_the_mean_over_every_ranking():
    """The protocol's chance mAP equals the metric's own mAP averaged over all gallery orders."""
    qids, qcams = np.array([0, 1]), np.array([0, 0])
    gids, gcams = np.array([0, 0, 1, 2, 0]), np.array([0, 1, 1, 1, 1])  # gallery item 0: same id and camera
    maps = [mean_ap(np.array([order, order], dtype=np.float64), qids, gids, qcams, gcams)
            for order in itertools.permutations(range(5))]
    chance = chance_levels(qids, gids, qcams, gcams)
    assert chance["mAP"] == pytest.approx(np.mean(maps))
    # Top-1: query 0 has 2 matches among 4 counted items, query 1 has 1 among 5.
    assert chance["top1"] == pytest.approx((2 / 4 + 1 / 5) / 2)


# --------------------------------------------------------------------------------------------
# The origin through Stage I and Stage II


@pytest.mark.slow
def test_origin_and_chance_travel_from_stage1_to_stage2(tmp_path, data):
    import baseline
    import train

    weights = tmp_path / "local.pth"
    _torchvision_file(weights, seed=5)
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    logs = tmp_path / "stage1"
    assert baseline.main(["-d", "synthetic", "--data-dir", str(data), "--logs-dir", str(logs), "--device", "cpu",
                          "-a", "resnet18", "--pretrained-weights", str(weights), "-b", "4", "-j", "0",
                          "--height", "64", "--width", "32", "--epochs", "1", "--max-iters-per-epoch", "1",
                          "--augment", "none", "--no-progress"]) == 0
    for name in ("checkpoint.pth.tar", "model_best.pth.tar"):
        assert torch.load(logs / name, weights_only=True)["backbone"]["sha256"] == sha
    results = json.loads((logs / "results.json").read_text())
    assert results["backbone"]["kind"] == "file" and results["backbone"]["sha256"] == sha
    assert json.loads((logs / "backbone.json").read_text())["backbone"] == results["backbone"]
    # The chance levels of the test gallery, recomputed from the dataset by hand.
    from reid.pipelines.common import load_dataset
    ds = load_dataset("synthetic", str(data))
    qids, qcams = [p for _, p, _ in ds.query], [c for _, _, c in ds.query]
    gids, gcams = [p for _, p, _ in ds.gallery], [c for _, _, c in ds.gallery]
    assert results["chance"]["openreid"] == pytest.approx(chance_levels(qids, gids, qcams, gcams))

    assert train.main(["--stage", "1", "-d", "synthetic", "--dataroot", str(data), "--checkpoints", str(tmp_path),
                       "--name", "stage2", "--arch", "resnet18", "--height", "64", "--width", "32", "-b", "4",
                       "-j", "0", "--niter", "1", "--niter-decay", "0", "--max-iters-per-epoch", "1",
                       "--pose-feature-size", "8", "--noise-feature-size", "8", "--display-id", "0",
                       "--no-progress", "--device", "cpu", "--netE-pretrain", str(logs / "model_best.pth.tar")]) == 0
    assert json.loads((tmp_path / "stage2" / "backbone.json").read_text())["backbone"] == results["backbone"]
    assert torch.load(tmp_path / "stage2" / "latest.pth", weights_only=True)["backbone"] == results["backbone"]
