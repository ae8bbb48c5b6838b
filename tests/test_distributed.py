"""torchrun support on CPU (gloo, loopback): the distributed pair sampler; 2 processes with B pairs
each equal 1 process with the 2B pairs for two Stage I steps (SiameseNet + SGD through DDP) and a
Stage II FDGANModel step (train.py --stage 1); both CLIs under ``torchrun --nproc_per_node 2``;
``--sync-bn`` (PyTorch's SyncBatchNorm, CUDA only) refused on CPU with a one-line error.

For the equality no layer may mix the samples of a batch while it trains: each process's BatchNorm
statistics would be those of its half. So the Stage I network has no BatchNorm (an identity in its
place) and G and Dp use instance normalisation; E's and Di's BatchNorm layers are frozen in
Stage II. One check shows the test would notice BatchNorm statistics of half batches.

The equality runs in float64: in float32 the rounding of a different summation order alone moves
the weights by up to ~2e-4 after two steps of these tiny random networks (measured by permuting the
pairs of a batch in one process), which would hide a real error.
"""
import hashlib
import json
import math
import os
import re
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader

from fdgan.model import NET_NAMES, FDGANModel, GANConfig
from helpers import timeout as scaled_timeout
from reid.errors import ConfigError
from reid.feature_extraction import FeatureExtractor
from reid.pipelines.baseline import freeze_unused_fc
from reid.models import build_siamese
from reid.trainers import SiameseTrainer
from reid.utils import distributed
from reid.utils.data.sampler import DistributedRandomPairSampler, RandomPairSampler
from reid.utils.distributed import DistributedContext, convert_sync_batchnorm, init_distributed
from reid.utils.serialization import copy_state_dict, load_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 32, 32  # the smallest size G accepts: the float64 steps stay fast
PAIRS = 4  # pairs per process; the single process takes 2 * PAIRS
FDGAN = dict(arch="resnet18", height=H, width=W, pose_feature_size=8, noise_feature_size=8, lr=0.01, drop=0.0,
             pretrained=False)
# G and Dp normalise each sample on its own, so the 2-process step is the 1-process one.
FDGAN_STEP = dict(FDGAN, norm="instance")
# float64 in a different summation order (2 partial batches, then an all-reduce).
RTOL, ATOL = 1e-9, 1e-11


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------- sampler
def _items(num_ids=10, per_id=4):
    return [(f"{i:03d}.jpg", i // per_id, i % 2) for i in range(num_ids * per_id)]


@pytest.mark.parametrize("batch", [8, 6])
def test_distributed_sampler_blocks_equal_the_single_sampler_batches(batch):
    items, world, seed = _items(), 2, 5
    for epoch in (0, 3):
        single = list(RandomPairSampler(items, 3, generator=torch.Generator().manual_seed(seed + epoch)))
        shares = []
        for rank in range(world):
            s = DistributedRandomPairSampler(items, 3, num_replicas=world, rank=rank, batch_size=batch, seed=seed)
            s.set_epoch(epoch)
            shares.append(list(s))
            assert len(s) == len(shares[-1])
        steps = len(single) // (world * batch)  # 160 pairs: 10 steps of 16, or 13 of 12 (4 pairs dropped)
        assert len(shares[0]) == len(shares[1]) == steps * batch
        for k in range(steps):
            step = shares[0][k * batch:(k + 1) * batch] + shares[1][k * batch:(k + 1) * batch]
            assert step == single[k * world * batch:(k + 1) * world * batch]
        assert sorted(shares[0] + shares[1]) == sorted(single[:steps * world * batch])
    # The same epoch on every call; another epoch draws other pairs.
    s = DistributedRandomPairSampler(items, 3, num_replicas=2, rank=1, batch_size=batch, seed=seed)
    s.set_epoch(1)
    first = list(s)
    assert list(s) == first
    s.set_epoch(2)
    assert list(s) != first


class _Echo(torch.utils.data.Dataset):
    """A dataset whose item ``key`` is ``key`` (shows which pairs a loader asked for)."""

    def __getitem__(self, key):
        return key


def test_distributed_sampler_keeps_positives_on_every_process_and_feeds_a_loader():
    items = _items()
    labels = [pid for _, pid, _ in items]
    for rank in range(2):
        s = DistributedRandomPairSampler(items, 3, num_replicas=2, rank=rank, batch_size=8, seed=0)
        batches = list(DataLoader(_Echo(), sampler=s, batch_size=8, drop_last=False, collate_fn=list))
        assert len(batches) == 10 and all(len(b) == 8 for b in batches)
        for b in batches:  # one positive per anchor block of 4, as in a single process
            assert sum(labels[i] == labels[j] for i, j in b) == 2
    # An epoch smaller than one global batch: each process gets half of it.
    small = _items(num_ids=2, per_id=2)  # 4 samples -> 16 pairs
    shares = [list(DistributedRandomPairSampler(small, 3, num_replicas=2, rank=r, batch_size=32, seed=0))
              for r in range(2)]
    single = list(RandomPairSampler(small, 3, generator=torch.Generator().manual_seed(0)))
    assert shares[0] + shares[1] == single and len(shares[0]) == 8


def test_init_distributed_outside_and_inside_torchrun(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.enabled, ctx.is_main, ctx.device) == (0, 1, False, True, torch.device("cpu"))
    assert ctx.mean_values({"a": 2.0}) == {"a": 2.0} and ctx.all_gather_object(3) == [3]
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="RANK"):
        init_distributed("cpu")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ConfigError, match="--device cuda:0 under torchrun"):
        init_distributed("cuda:0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        init_distributed("cpu")


# ------------------------------------------------------------------------------- steps
def _inputs(seed=0):
    """Two Stage I batches and one Stage II batch of 2 * PAIRS pairs; each half has 1 positive."""
    g = torch.Generator().manual_seed(seed)
    n = 2 * PAIRS
    f64 = dict(generator=g, dtype=torch.float64)
    pids1 = torch.arange(n)
    pids2 = torch.where(torch.arange(n) % PAIRS == 0, pids1, pids1 + 100)
    stage1 = [(torch.randn(n, 3, H, W, **f64), pids1, torch.randn(n, 3, H, W, **f64), pids2) for _ in range(2)]

    def half(pids):
        return {"origin": torch.randn(n, 3, H, W, **f64), "target": torch.randn(n, 3, H, W, **f64),
                "posemap": torch.rand(n, 18, H, W, **f64), "pid": pids}
    return {"stage1": stage1, "fdgan": [half(pids1), half(pids2)], "noise": torch.randn(n, 8, **f64)}


def _share(t, ctx):
    lo = ctx.rank * PAIRS if ctx.enabled else 0
    hi = lo + PAIRS if ctx.enabled else None
    return t[lo:hi]


def _without_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm layer replaced by an identity."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.Identity())
        else:
            _without_batchnorm(child)
    return module


def _stage1_steps(ctx: DistributedContext, inputs: dict, batchnorm: bool = False) -> dict:
    """Two SGD steps of the Stage I trainer; returns the weights and buffers."""
    torch.manual_seed(0)
    net = build_siamese("resnet18", pretrained=False, num_classes=2)
    if not batchnorm:
        _without_batchnorm(net)
    with torch.no_grad():  # a larger head than the release's N(0, 0.001) so the loss depends on the features
        net.embed_model.classifier.weight.normal_(0, 0.1)
    if ctx.enabled:
        freeze_unused_fc(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    trainer = SiameseTrainer(ctx.wrap(net), nn.CrossEntropyLoss(), dist=ctx)
    loader = [[(_share(x1, ctx), None, _share(p1, ctx), None), (_share(x2, ctx), None, _share(p2, ctx), None)]
              for x1, p1, x2, p2 in inputs["stage1"]]
    metrics = trainer.train(0, loader, optimizer, progress=False)
    return {"metrics": metrics, "state": {k: v.clone() for k, v in net.state_dict().items()}}


def _fdgan_step(ctx: DistributedContext, inputs: dict) -> dict:
    """One Stage II FDGANModel iteration (Di, Dp, G updates); returns the losses and weights.

    Stage III runs the same synchronisation (one all-reduce per optimiser, over all its groups,
    E's included); it is left out to keep the test fast.
    """
    torch.manual_seed(1)
    model = FDGANModel(GANConfig(stage=1, **FDGAN_STEP))
    model.distribute(ctx)
    model.train_mode()
    first, second = inputs["fdgan"]
    model.set_input([{k: _share(v, ctx) for k, v in first.items()}, {k: _share(v, ctx) for k, v in second.items()}])
    z = _share(inputs["noise"], ctx)
    model.noise = torch.cat([z, z]).view(2 * z.shape[0], -1, 1, 1)
    model.optimize_parameters()
    return {"errors": dict(ctx.mean_values(model.get_current_errors())),
            "state": {n: {k: v.clone() for k, v in model.net(n).state_dict().items()} for n in NET_NAMES}}


def _digest(state: dict) -> str:
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _flat(run: dict) -> dict:
    """One state dict of a step's result (FDGAN's four networks prefixed with their names)."""
    state = run["state"]
    if all(isinstance(v, dict) for v in state.values()):
        return {f"{n}.{k}": t for n, sd in state.items() for k, t in sd.items()}
    return state


def _deviation(dist_state: dict, single_state: dict) -> tuple[float, float]:
    """(largest |a - b| / (ATOL + RTOL |b|), largest |a - b|) over all floating tensors; integer
    tensors (BatchNorm step counters) must be equal (else inf)."""
    assert list(dist_state) == list(single_state)
    ratio, worst = 0.0, 0.0
    for k, b in single_state.items():
        a = dist_state[k]
        if not b.is_floating_point():
            if not torch.equal(a, b):
                return float("inf"), float("inf")
            continue
        diff = (a - b).abs()
        ratio = max(ratio, (diff / (ATOL + RTOL * b.abs())).max().item())
        worst = max(worst, diff.max().item())
    return ratio, worst


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Run the steps on 2 processes, then alone on the combined batches, and write how far apart the
    results are (the float64 weights are too large to pass around quickly)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    distributed._BUCKET_ELEMENTS = 1 << 20  # several all-reduce buckets per optimiser (G: 14M parameters)
    ctx = init_distributed("cpu")
    try:
        assert ctx.enabled and ctx.world_size == world and ctx.device.type == "cpu"
        inputs = _inputs()
        runs = {
            "stage1": _stage1_steps(ctx, inputs),
            "stage1_batchnorm": _stage1_steps(ctx, inputs, batchnorm=True),
            "fdgan1": _fdgan_step(ctx, inputs),
        }
        digests = ctx.all_gather_object({k: _digest(_flat(v)) for k, v in runs.items()})
        # The same steps in one process on the combined batches: rank 0 runs Stage I, rank 1 the
        # FDGAN step (the digests show both ranks hold the same weights, so either can compare).
        one = DistributedContext()
        if ctx.is_main:
            singles = {"stage1": _stage1_steps(one, inputs), "stage1_batchnorm": _stage1_steps(one, inputs, True)}
        else:
            singles = {"fdgan1": _fdgan_step(one, inputs)}
        summary = {}
        for key, single in singles.items():
            ratio, worst = _deviation(_flat(runs[key]), _flat(single))
            values = "metrics" if key.startswith("stage1") else "errors"
            summary[key] = {"ranks_identical": digests[0][key] == digests[1][key], "ratio": ratio,
                            "max_abs": worst, "dist": runs[key][values], "single": single[values]}
        if ctx.is_main:
            torch.manual_seed(0)
            start = _without_batchnorm(build_siamese("resnet18", pretrained=False, num_classes=2)).state_dict()
            summary["moved"] = max((singles["stage1"]["state"][k] - v).abs().max().item()
                                   for k, v in start.items() if v.is_floating_point() and "classifier" not in k)
        parts = ctx.all_gather_object(summary)
        if ctx.is_main:
            with open(os.path.join(out_dir, "summary.json"), "w") as f:
                json.dump({**parts[0], **parts[1]}, f, indent=1)
        ctx.barrier()
    finally:
        ctx.close()


@pytest.fixture(scope="module")
def summary(module_tmp) -> dict:
    out = module_tmp
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_stage1_ddp_steps_equal_one_process_with_the_combined_batch(summary):
    run = summary["stage1"]
    assert run["ranks_identical"]
    assert run["ratio"] <= 1.0, run  # allclose(rtol=RTOL, atol=ATOL) on every weight and buffer
    assert summary["moved"] > 1e-3  # the steps changed the weights far beyond the tolerance
    for key in ("loss", "prec"):
        assert run["dist"][key] == pytest.approx(run["single"][key], rel=1e-9)
    # With BatchNorm each process normalises its own half: the comparison would notice.
    assert summary["stage1_batchnorm"]["max_abs"] > 1e-4


@pytest.mark.slow
def test_stage2_fdgan_step_equals_one_process_with_the_combined_batch(summary):
    run = summary["fdgan1"]
    assert run["ranks_identical"]
    assert run["ratio"] <= 1.0, run  # E, G, Di and Dp: every weight and buffer
    for loss, value in run["single"].items():
        assert run["dist"][loss] == pytest.approx(value, rel=1e-9, abs=1e-12), loss
    assert run["single"]["G_sp"] > 0  # each process had one positive pair


# ------------------------------------------------------------------------------- CLIs
def _torchrun(args: list[str], timeout: float = scaled_timeout(300)) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port())] + args
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.mark.slow
@pytest.mark.parametrize("precision", [["-b", "4"], ["-b", "8", "--amp"]], ids=["fp32", "amp"])
def test_torchrun_baseline_cli_writes_release_files_once(synthetic_root, tmp_path, precision):
    """Also with --amp (bf16) and no --sync-bn, which gave NaN features when each process's batch
    held one anchor image (-b 4 is refused with --amp: tests/test_amp.py)."""
    logs = tmp_path / "logs"
    _torchrun(["baseline.py", "-d", "synthetic", "--data-dir", os.path.dirname(synthetic_root),
               "--logs-dir", str(logs), "-a", "resnet18", "--no-pretrained", "--height", str(H), "--width", str(W),
               "-j", "0", "--epochs", "1", "--max-iters-per-epoch", "2", "--eval-step", "1",
               "--rerank-topk", "5", "--augment", "none", "--no-progress", "--device", "cpu", *precision])
    ckpt = load_checkpoint(logs / "checkpoint.pth.tar")
    # Finite weights, features and metrics (a NaN would be refused by the loader and the
    # evaluation; here it must simply not happen).
    features = FeatureExtractor(logs / "model_best.pth.tar", arch="resnet18", height=H, width=W)(
        torch.rand(4, 3, H, W, generator=torch.Generator().manual_seed(0)))
    assert torch.isfinite(features).all() and float(features.abs().max()) > 0
    keys = list(ckpt["state_dict"])
    assert all(k.startswith("module.") and not k.startswith("module.module.") for k in keys)
    assert keys == ["module." + k for k in build_siamese("resnet18", pretrained=False).state_dict()]
    copy_state_dict(ckpt, build_siamese("resnet18", pretrained=False))
    assert ckpt["epoch"] == 0 and len(ckpt["rng_per_rank"]) == 2
    log = (logs / "log.txt").read_text()
    assert log.count("Command:") == 1 and log.count("Epoch 0: loss") == 1  # rank 0 only
    results = json.loads((logs / "results.json").read_text())["results"]
    assert all(math.isfinite(v) for stage in results["openreid"].values() for v in stage.values()
               if isinstance(v, (int, float)))


@pytest.mark.slow
def test_torchrun_train_cli_saves_release_files_once(synthetic_root, tmp_path):
    _torchrun(["train.py", "--stage", "1", "--no-pretrained", "-d", "synthetic",
               "--dataroot", os.path.dirname(synthetic_root), "--checkpoints", str(tmp_path), "--name", "ddp",
               "--arch", "resnet18", "--height", str(H), "--width", str(W), "--pose-feature-size", "8",
               "--noise-feature-size", "8", "-b", "2", "-j", "0", "--niter", "1", "--niter-decay", "0",
               "--max-iters-per-epoch", "2", "--save-step", "1", "--display-id", "0", "--print-freq", "4",
               "--display-freq", "4", "--update-html-freq", "4", "--no-progress", "--device", "cpu",
               "--amp", "--amp-dtype", "bf16"])
    run = tmp_path / "ddp"
    plain = FDGANModel(GANConfig(stage=1, **FDGAN))
    for name in NET_NAMES:
        saved = torch.load(run / f"1_net_{name}.pth", weights_only=True)
        assert list(saved) == ["module." + k for k in plain.net(name).state_dict()], name
    # One line per step, from rank 0 only; iterations count the samples of both processes.
    iters = re.findall(r"^\(epoch: 1, iters: (\d+),", (run / "loss_log.txt").read_text(), flags=re.M)
    assert iters == ["4", "8"]
    latest = load_checkpoint(run / "latest.pth")
    assert latest["total_steps"] == 8 and len(latest["rng_per_rank"]) == 2
    opt = (run / "opt.txt").read_text()
    assert "amp: True" in opt and "amp_dtype: bf16" in opt
    assert len(list((run / "web" / "images").glob("epoch001_*.png"))) == 4


def test_sync_bn_on_cpu_is_refused_with_one_line(synthetic_root, tmp_path):
    import baseline
    import train
    message = "--sync-bn: PyTorch's SyncBatchNorm needs CUDA processes; this run uses cpu (drop --sync-bn)"
    with pytest.raises(ConfigError) as err:
        convert_sync_batchnorm(nn.BatchNorm2d(3), torch.device("cpu"))
    assert str(err.value) == message
    data = os.path.dirname(synthetic_root)
    assert baseline.main(["-d", "synthetic", "--data-dir", data, "--logs-dir", str(tmp_path / "b"), "--device", "cpu",
                          "--sync-bn"]) == 2
    assert train.main(["--stage", "1", "--no-pretrained", "-d", "synthetic", "--dataroot", data, "--checkpoints",
                       str(tmp_path), "--name", "t", "--device", "cpu", "--sync-bn"]) == 2
    for log in (tmp_path / "b" / "log.txt", tmp_path / "t" / "train_log.txt"):
        said = [line for line in log.read_text().splitlines() if "--sync-bn" in line and "Command" not in line]
        assert len(said) == 1 and said[0].endswith(f"error: {message}"), (log, said)
