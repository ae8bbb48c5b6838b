"""Stages II and III end to end on the synthetic dataset through train.py: losses, files, visdom,
the HTML page, the final test, resume, and the release's README commands."""
import json
import re
import shlex
from pathlib import Path

import pytest
import torch

import train
from fdgan.model import FDGANModel, GANConfig
from helpers import render_synthetic
from options import Options
from reid.datasets.synthetic_render import SyntheticConfig, generate_synthetic_dataset
from reid.evaluation_metrics import format_results
from reid.models import build_siamese
from reid.pipelines.common import evaluate_on_test, load_dataset
from reid.utils.data.loaders import build_pose_pair_loader
from reid.utils.serialization import copy_state_dict, load_checkpoint
from tests.browser import img_srcs, is_blank, screenshot
from tests.test_visualizer import start_visdom, stop, visdom_reader

pytestmark = pytest.mark.slow

TINY = ["-d", "synthetic", "--arch", "resnet18", "--height", "64", "--width", "32", "-b", "8", "-j", "0",
        "--pose-feature-size", "16", "--noise-feature-size", "16", "--device", "cpu", "--no-progress",
        "--pose-aug", "gauss", "--smooth-label", "--lambda-recon", "100", "--lambda-sp", "10"]


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def root(module_tmp):
    return render_synthetic(module_tmp, num_ids=12, seed=4)


@pytest.fixture(scope="module")
def stage2(root):
    """A short --stage 1 run (paper Stage II) displaying to a real visdom server."""
    proc, port = start_visdom(root)
    try:
        rc = train.main(TINY + [
            "--stage", "1", "--no-pretrained", "--dataroot", str(root), "--checkpoints", str(root / "ck"),
            "--name", "stageII", "--niter", "3", "--niter-decay", "0", "--lr", "0.03", "--lambda-veri", "0",
            "--max-iters-per-epoch", "14", "--save-step", "3", "--print-freq", "8", "--display-freq", "8",
            "--update-html-freq", "40", "--display-id", "1", "--display-port", str(port),
        ])
        assert rc == 0
        reader = visdom_reader(port, "main")
        windows = {w: json.loads(reader.get_window_data(win=str(w), env="main")) for w in range(1, 6)}
    finally:
        stop(proc)
    return root / "ck" / "stageII", windows


def _losses(log: Path) -> list[dict]:
    rows = []
    for line in log.read_text().splitlines():
        if line.startswith("(epoch"):
            rows.append({k: float(v) for k, v in re.findall(r"(\w+): ([-\d.]+)", line.split(")", 1)[1])})
    return rows


def _heldout_l1(run, root, generator_file):
    """Reconstruction L1 of G on a fixed batch (eval mode), with the run's frozen encoder."""
    torch.manual_seed(123)
    ds = load_dataset("synthetic", str(root), require_poses=True)
    loader = build_pose_pair_loader(ds.trainval, ds.trainval_pid2files, ds.images_dir, ds.poses_dir, 64, 32, 32, 0)
    batch = next(iter(loader))
    model = FDGANModel(GANConfig(stage=1, arch="resnet18", height=64, width=32, pose_feature_size=16,
                                 noise_feature_size=16, pretrained=False))
    copy_state_dict(load_checkpoint(run / "3_net_E.pth"), model.net_E)
    if generator_file is not None:
        copy_state_dict(load_checkpoint(generator_file), model.net_G)
    for net in (model.net_E, model.net_G, model.net_Di, model.net_Dp):
        net.eval()
    # BatchNorm on the batch's own statistics, no dropout: a few dozen iterations leave G's
    # running statistics far from settled, which would hide what G has learnt.
    model.net_G.train()
    for module in model.net_G.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    with torch.no_grad():
        model.set_input(batch)
        model.forward()
        return torch.nn.functional.l1_loss(model.fake, model.target).item()


def test_stage2_reconstruction_falls_and_files_are_written(stage2, root):
    run, _ = stage2
    rows = _losses(run / "loss_log.txt")
    assert len(rows) == 42 and list(rows[0]) == ["G_v", "G_r", "G_sp", "G_gan_Di", "G_gan_Dp", "D_i", "D_p"]
    before = _heldout_l1(run, root, None)  # G as initialised
    after = _heldout_l1(run, root, run / "3_net_G.pth")
    # Measured: about 0.68 -> 0.63 after 42 iterations with a random frozen encoder.
    assert after < 0.95 * before, (before, after)
    for net in ("E", "G", "Di", "Dp"):
        state = load_checkpoint(run / f"3_net_{net}.pth")
        assert all(k.startswith("module.") for k in state)
    assert "niter: 3\t[default: 50]" in (run / "opt.txt").read_text()


def test_visdom_server_received_loss_plot_and_images(stage2):
    run, windows = stage2
    plot = windows[1]["content"]["data"]
    assert {t["name"] for t in plot} == {"G_v", "G_r", "G_sp", "G_gan_Di", "G_gan_Dp", "D_i", "D_p"}
    g_r = next(t for t in plot if t["name"] == "G_r")
    logged = [r["G_r"] for r in _losses(run / "loss_log.txt")]
    assert len(g_r["y"]) == len(logged)
    assert g_r["y"] == pytest.approx(logged, abs=5e-4)  # the log prints 3 decimals
    assert [windows[w]["title"] for w in (2, 3, 4, 5)] == ["input", "posemap", "fake", "target"]
    assert all(windows[w]["type"] == "image" for w in (2, 3, 4, 5))



def test_html_page_references_existing_images_and_renders(stage2, tmp_path):
    run, _ = stage2
    page = run / "web" / "index.html"
    srcs = img_srcs(page.read_text())
    assert len(srcs) >= 4
    for src in srcs:
        assert (page.parent / src).is_file(), src
    epochs = [int(m) for m in re.findall(r"epoch(\d{3})_input\.png", page.read_text())]
    assert epochs == sorted(epochs, reverse=True) and len(epochs) >= 2
    png = screenshot(page, tmp_path / "page.png")
    assert not is_blank(png)


def test_stage3_from_stage2_files_validates_saves_best_and_tests(stage2, root):
    run, _ = stage2
    files = [f"--net{n}-pretrain" for n in ("E", "G", "Di", "Dp")]
    args = [x for n, f in zip(("E", "G", "Di", "Dp"), files) for x in (f, str(run / f"3_net_{n}.pth"))]
    rc = train.main(TINY + args + [
        "--stage", "2", "--dataroot", str(root), "--checkpoints", str(root / "ck"), "--name", "stageIII",
        "--niter", "1", "--niter-decay", "1", "--lr", "0.0001", "--lambda-veri", "10", "--eval-step", "1",
        "--save-step", "2", "--max-iters-per-epoch", "3", "--display-id", "0", "--protocol", "both",
    ])
    assert rc == 0
    out = root / "ck" / "stageIII"
    for n in ("E", "G", "Di", "Dp"):
        assert (out / f"best_net_{n}.pth").is_file() and (out / f"2_net_{n}.pth").is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["rerank_topk"] == 100
    for protocol in ("openreid", "official"):
        for stage in ("first_stage", "second_stage"):
            assert 0.0 < results["results"][protocol][stage]["mAP"] <= 1.0
    log = (out / "reid_log.txt").read_text()
    assert "Loaded encoder before Stage III" in log and "Test of the best encoder (official protocol)" in log
    # As the release, the log opens with the loaded E's test numbers (second stage, top-k 100),
    # computed here again from the Stage II file.
    loaded = build_siamese("resnet18", pretrained=False, num_classes=2)
    copy_state_dict(load_checkpoint(run / "3_net_E.pth"), loaded)
    expected = evaluate_on_test(loaded, dataset_name="synthetic", data_dir=str(root), split_id=0,
                                protocols=["openreid", "official"], height=64, width=32, batch_size=8, workers=0,
                                rerank_topk=100, device=torch.device("cpu"), progress=False)
    for protocol, res in expected.items():
        block = (f"Test of the loaded encoder ({protocol} protocol, top-k 100):\n"
                 + format_results(res["first_stage"], "first stage") + "\n"
                 + format_results(res["second_stage"], "second stage"))
        assert block in log
        assert log.index(block) < log.index("Test of the best encoder")


def test_stage2_resume_equals_uninterrupted_run(root, monkeypatch):
    common = TINY + ["--stage", "1", "--no-pretrained", "--dataroot", str(root), "--checkpoints", str(root / "ck"),
                     "--niter", "2", "--niter-decay", "1", "--lr", "0.01", "--max-iters-per-epoch", "2",
                     "--save-step", "3", "--display-id", "0", "--no_html", "--deterministic"]
    assert train.main(common + ["--name", "full"]) == 0

    import reid.pipelines.run as pipeline  # the training-run skeleton writes the resume file
    real_save = pipeline.save_checkpoint

    def save_then_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # the run stops right after its first epoch's resume file

    monkeypatch.setattr(pipeline, "save_checkpoint", save_then_stop)
    assert train.main(common + ["--name", "part"]) == 130
    assert load_checkpoint(root / "ck" / "part" / "latest.pth")["epoch"] == 1
    monkeypatch.setattr(pipeline, "save_checkpoint", real_save)
    assert train.main(common + ["--name", "part", "--resume"]) == 0
    for n in ("E", "G", "Di", "Dp"):
        a = load_checkpoint(root / "ck" / "full" / f"3_net_{n}.pth")
        b = load_checkpoint(root / "ck" / "part" / f"3_net_{n}.pth")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (n, k)


README_STAGE1 = ("--display-port 6006 --display-id 1 --stage 1 -d market1501 --name NAME --pose-aug gauss -b 256 "
                 "-j 4 --niter 50 --niter-decay 50 --lr 0.001 --save-step 10 --lambda-recon 100.0 --lambda-veri 0.0 "
                 "--lambda-sp 10.0 --smooth-label --netE-pretrain DIR/model_best.pth.tar")
README_STAGE2 = ("--display-port 6006 --display-id 1 --stage 2 -d market1501 --name NAME --pose-aug gauss -b 256 "
                 "-j 4 --niter 25 --niter-decay 25 --lr 0.0001 --save-step 10 --eval-step 5 --lambda-recon 100.0 "
                 "--lambda-veri 10.0 --lambda-sp 10.0 --smooth-label --netE-pretrain S/100_net_E.pth "
                 "--netG-pretrain S/100_net_G.pth --netDi-pretrain S/100_net_Di.pth --netDp-pretrain S/100_net_Dp.pth")


def test_release_readme_commands_parse_and_dry_start(tmp_path):
    cfg1 = Options().parse(shlex.split(README_STAGE1))
    assert (cfg1.stage, cfg1.batch_size, cfg1.niter, cfg1.niter_decay, cfg1.lambda_recon, cfg1.lambda_veri,
            cfg1.lambda_sp, cfg1.smooth_label, cfg1.pose_aug) == (1, 256, 50, 50, 100.0, 0.0, 10.0, True, "gauss")
    cfg2 = Options().parse(shlex.split(README_STAGE2))
    assert (cfg2.stage, cfg2.eval_step, cfg2.lr, cfg2.netDp_pretrain) == (2, 5, 0.0001, "S/100_net_Dp.pth")
    # A market1501-shaped dataset (more than the 100 validation identities the class holds out).
    generate_synthetic_dataset(tmp_path / "market1501", SyntheticConfig(num_ids=210, num_cams=2, images_per_cam=1,
                                                                      height=64, width=32, seed=5))
    torch.manual_seed(0)
    model = FDGANModel(GANConfig(stage=1, arch="resnet50", pretrained=False, netE_pretrain=""))
    model.save(str(tmp_path / "S"), 100)
    (tmp_path / "DIR").mkdir()
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.net_E.state_dict().items()}},
               tmp_path / "DIR" / "model_best.pth.tar")
    extra = ["--dataroot", str(tmp_path), "--checkpoints", str(tmp_path / "ck"), "--dry-run", "--device", "cpu"]
    for cmd in (README_STAGE1, README_STAGE2):
        argv = shlex.split(cmd.replace("DIR/", f"{tmp_path}/DIR/").replace("S/", f"{tmp_path}/S/")) + extra
        assert train.main(argv) == 0
