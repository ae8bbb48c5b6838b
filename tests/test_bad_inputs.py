"""Bad inputs through the real command lines: each ends with exit status 2 and ONE line
``error: <message>`` naming the file or flag (never a traceback), or, for the inputs that are odd
but valid, with a normal run. docs/reliability.md lists every case with its message.

The CLIs run in-process (``baseline.main(argv)`` / ``train.main(argv)``), except the crafted
checkpoint, which also goes through a real ``python baseline.py`` subprocess.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple
from urllib.parse import unquote

import pytest
import torch
from PIL import Image

import baseline
import train
from conftest import REPO_ROOT
from fdgan.networks import NLayerDiscriminator
from helpers import one_error_line, timeout, tiny_train_argv
from helpers import tiny_baseline_argv as base_argv
from reid.models import build_siamese
from reid.utils.data.preprocessor import Preprocessor
from reid.utils.serialization import load_checkpoint
from reid.visualization import write_rank_page


# --------------------------------------------------------------------------- harness
def train_argv(data: Path, checkpoints: Path, *extra: str, stage1: bool = True) -> List[str]:
    """train.py --stage 1 with a random encoder: a tiny, quick run."""
    return tiny_train_argv(data, checkpoints, "--niter-decay", "0", "--save-step", "10", *extra, stage1=stage1)


def cli_error(main: Callable[[List[str]], int], argv: List[str], capsys: pytest.CaptureFixture) -> str:
    """Run a CLI that must fail: exit 2, exactly one ``error:`` line, no traceback; returns the message."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err[-2000:]
    return one_error_line(err)


def cli_ok(main: Callable[[List[str]], int], argv: List[str], capsys: pytest.CaptureFixture) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 0, err[-2000:]
    assert "Traceback" not in err and "error: " not in err
    return err


def argparse_error(main: Callable[[List[str]], int], argv: List[str], capsys: pytest.CaptureFixture) -> str:
    """argparse's own rejection: exit 2, a usage line and one ``<prog>: error: ...`` line."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("usage: ")
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(lines) == 1
    return lines[0].split(": error: ", 1)[1]


def hint(root: Path) -> str:
    return f"python scripts/make_synthetic_dataset.py --root {root}"


def edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    obj = json.loads(path.read_text())
    path.write_text(json.dumps(change(obj)))


def first_split_pids(data: Path, key: str) -> List[int]:
    return json.loads((data / "synthetic" / "splits.json").read_text())[0][key]


def files_of(data: Path, pids: List[int]) -> List[str]:
    ids = json.loads((data / "synthetic" / "meta.json").read_text())["identities"]
    return [f for pid in pids for cam in ids[pid] for f in cam]


# --------------------------------------------------------------------------- dataset folder and files
def test_missing_dataset_folder(tmp_path: Path, capsys) -> None:
    root = tmp_path / "synthetic"
    msg = cli_error(baseline.main, base_argv(tmp_path, tmp_path / "logs"), capsys)
    assert msg == f"{root}: dataset folder not found; prepare it with: {hint(root)}"


def test_wrongly_cased_dataset_folder(data: Path, capsys) -> None:
    os.rename(data / "synthetic", data / "Synthetic")
    root = data / "synthetic"
    msg = cli_error(baseline.main, base_argv(data, data / "logs"), capsys)
    assert msg == (f"{root}: dataset folder not found; prepare it with: {hint(root)} (found {data / 'Synthetic'}: "
                   "the folder name must be the lower-case dataset name, rename it to synthetic)")


def test_missing_images_folder(data: Path, capsys) -> None:
    root = data / "synthetic"
    shutil.rmtree(root / "images")
    msg = cli_error(baseline.main, base_argv(data, data / "logs"), capsys)
    assert msg == f"{root / 'images'}: missing; prepare the dataset with: {hint(root)}"


def test_missing_poses_folder_for_train(data: Path, capsys) -> None:
    root = data / "synthetic"
    shutil.rmtree(root / "poses")
    msg = cli_error(train.main, train_argv(data, data / "ck"), capsys)
    assert msg == (f"{root / 'poses'}: missing (FD-GAN training needs pose files); re-create the dataset with: "
                   f"{hint(root)}")


def test_meta_json_not_json(data: Path, capsys) -> None:
    meta = data / "synthetic" / "meta.json"
    meta.write_text('{"num_cameras": 3,')
    msg = cli_error(baseline.main, base_argv(data, data / "logs"), capsys)
    assert msg == (f"{meta}: not valid JSON (Expecting property name enclosed in double quotes: "
                   "line 1 column 19 (char 18))")


def test_meta_json_nested_too_deeply(data: Path, capsys) -> None:
    meta = data / "synthetic" / "meta.json"
    meta.write_text("[" * 100_000)
    assert cli_error(baseline.main, base_argv(data, data / "logs"), capsys) == \
        f"{meta}: not valid JSON (nested too deeply)"


def test_meta_json_wrong_structure(data: Path, capsys) -> None:
    meta = data / "synthetic" / "meta.json"
    edit_json(meta, lambda m: {**m, "identities": {"0": []}})
    msg = cli_error(baseline.main, base_argv(data, data / "logs"), capsys)
    assert msg == f"{meta}: 'identities' should be a list (one entry per pid), got an object"


def test_splits_json_wrong_structure(data: Path, capsys) -> None:
    splits = data / "synthetic" / "splits.json"
    splits.write_text('{"trainval": []}')
    msg = cli_error(baseline.main, base_argv(data, data / "logs"), capsys)
    assert msg == f"{splits}: expected a list of splits, got an object"


def test_split_naming_a_pid_that_does_not_exist(data: Path, capsys) -> None:
    root = data / "synthetic"
    edit_json(root / "splits.json", lambda s: [{**s[0], "query": s[0]["query"] + [999]}])
    n = len(json.loads((root / "meta.json").read_text())["identities"])
    msg = cli_error(baseline.main, base_argv(data, data / "logs"), capsys)
    assert msg == (f"{root / 'splits.json'}: split 0 'query' names pid 999, but {root / 'meta.json'} lists only "
                   f"{n} identities")


def test_empty_split(data: Path, capsys) -> None:
    splits = data / "synthetic" / "splits.json"
    edit_json(splits, lambda s: [{**s[0], "trainval": []}])
    assert cli_error(baseline.main, base_argv(data, data / "logs"), capsys) == f"{splits}: split 0 'trainval' is empty"


def test_split_index_out_of_range(data: Path, capsys) -> None:
    splits = data / "synthetic" / "splits.json"
    msg = cli_error(baseline.main, base_argv(data, data / "logs", "--split", "3"), capsys)
    assert msg == f"{splits}: split 3 does not exist (the file holds 1 split(s), numbered 0..0)"


def test_too_many_validation_identities(data: Path, capsys) -> None:
    splits = data / "synthetic" / "splits.json"
    n = len(first_split_pids(data, "trainval"))
    msg = cli_error(baseline.main, base_argv(data, data / "logs", "--num-val", "100"), capsys)
    assert msg == (f"{splits}: split 0 has {n} trainval identities, too few for 100 validation identities "
                   "(pass a smaller num_val)")


# --------------------------------------------------------------------------- images
def _train_files(data: Path) -> List[str]:
    return files_of(data, first_split_pids(data, "trainval"))


@pytest.mark.parametrize("workers", ["0", "1"])
def test_missing_image(data: Path, capsys, workers: str) -> None:
    """Also through a DataLoader worker process (-j 1), whose error torch re-raises with a traceback
    inside its message: the CLI still prints the one original line."""
    images = data / "synthetic" / "images"
    removed = _train_files(data)
    for f in removed:
        os.remove(images / f)
    msg = cli_error(baseline.main, base_argv(data, data / "logs", "-j", workers), capsys)
    m = re.fullmatch(re.escape(str(images)) + r"/([^/]+): image file not found", msg)
    assert m and m.group(1) in removed, msg


def test_truncated_image(data: Path, capsys) -> None:
    images = data / "synthetic" / "images"
    for f in _train_files(data):
        raw = (images / f).read_bytes()
        (images / f).write_bytes(raw[: len(raw) // 2])
    msg = cli_error(baseline.main, base_argv(data, data / "logs"), capsys)
    m = re.fullmatch(re.escape(str(images)) + r"/([^/]+): unreadable image \((.+)\)", msg)
    assert m and m.group(1) in _train_files(data), msg
    assert "truncated" in m.group(2)


@pytest.mark.slow
def test_odd_but_valid_inputs_train_and_evaluate(data: Path, capsys) -> None:
    """An identity with a single image, and grayscale, CMYK and PNG images, in a full run: one whole
    epoch (every training image is an anchor once), validation and the test of every query."""
    root = data / "synthetic"
    meta = json.loads((root / "meta.json").read_text())
    splits = json.loads((root / "splits.json").read_text())
    train_pid = sorted(splits[0]["trainval"])[0]
    single = [f for cam in meta["identities"][train_pid] for f in cam][0]
    meta["identities"][train_pid] = [[single]]
    odd = files_of(data, splits[0]["query"])[:3]
    with Image.open(root / "images" / odd[0]) as im:
        im.convert("L").save(root / "images" / odd[0], format="JPEG")
    with Image.open(root / "images" / odd[1]) as im:
        im.convert("CMYK").save(root / "images" / odd[1], format="JPEG")
    png = odd[2][:-4] + ".png"
    with Image.open(root / "images" / odd[2]) as im:
        im.save(root / "images" / png, format="PNG")
    os.remove(root / "images" / odd[2])

    def rename(x: Any) -> Any:
        if isinstance(x, list):
            return [rename(v) for v in x]
        if isinstance(x, dict):
            return {k: rename(v) for k, v in x.items()}
        return png if x == odd[2] else x

    (root / "meta.json").write_text(json.dumps(rename(meta)))
    (root / "splits.json").write_text(json.dumps(rename(splits)))
    for f, mode in ((odd[0], "L"), (odd[1], "CMYK"), (png, "RGB")):
        with Image.open(root / "images" / f) as im:
            assert im.mode == mode

    logs = data / "logs"
    argv = base_argv(data, logs, "--max-iters-per-epoch", "1000", "-b", "8", "--np-ratio", "1")
    cli_ok(baseline.main, argv, capsys)
    n_query = len(files_of(data, splits[0]["query"]))
    results = json.loads((logs / "results.json").read_text())["results"]["openreid"]
    assert results["first_stage"]["num_valid_queries"] == n_query
    assert 0.0 < results["second_stage"]["mAP"] <= 1.0


# --------------------------------------------------------------------------- pose files (train.py)
def _rewrite_poses(data: Path, text: str) -> Path:
    poses = data / "synthetic" / "poses"
    for p in poses.iterdir():
        p.write_text(text)
    return poses


GOOD_POSE = "".join(f"{10 + i} {5 + i % 10}\n" for i in range(18))


@pytest.mark.parametrize("text, message", [
    ("".join(f"{i} {i}\n" for i in range(17)), "expected 18 lines of 'row col', found 17"),
    (GOOD_POSE.replace("12 7\n", "twelve 7\n"), "line 3 is not two numbers: 'twelve 7'"),
    (GOOD_POSE.replace("12 7\n", "12 7 9\n"), "line 3 should hold two numbers 'row col', got '12 7 9'"),
    ("nan 5\n" + GOOD_POSE.split("\n", 1)[1], "line 1 holds a NaN or infinite coordinate"),
], ids=["line-count", "not-a-number", "three-numbers", "nan"])
@pytest.mark.slow
def test_bad_pose_file(data: Path, capsys, text: str, message: str) -> None:
    poses = _rewrite_poses(data, text)
    msg = cli_error(train.main, train_argv(data, data / "ck"), capsys)
    assert re.fullmatch(re.escape(str(poses)) + r"/[^/]+\.txt: " + re.escape(message), msg), msg
    assert not (data / "ck" / "run" / "latest.pth").exists()


@pytest.mark.slow
def test_out_of_image_keypoints_are_dropped_and_no_visdom_server_is_a_warning(
    data: Path, capsys, synthetic_root: str,
) -> None:
    """Keypoints outside the image (or far beyond) give empty pose maps, and a visdom display
    nobody serves is one warning: training runs to the end."""
    outside = "".join(f"{r} {c}\n" for r, c in [(500, 3), (3, 500), (1e30, 2), (2, 64)] + [(10, 5)] * 14)
    _rewrite_poses(data, outside)
    root = data / "synthetic"
    pre = Preprocessor([("00000000_00_0000.jpg", 0, 0)], root=str(root / "images"), with_pose=True,
                       pose_root=str(root / "poses"), pid_imgs={0: ["00000000_00_0000.jpg"]}, height=64, width=32)
    posemap = pre[0]["posemap"]
    assert posemap.shape == (18, 64, 32)
    assert [float(posemap[k].max()) for k in range(4)] == [0.0] * 4  # dropped
    assert all(float(posemap[k].max()) == pytest.approx(1.0) for k in range(4, 18))

    port = _free_port()
    err = cli_ok(train.main, train_argv(data, data / "ck", "--display-id", "1", "--display-port", str(port)), capsys)
    warnings = [ln for ln in err.splitlines() if ln.startswith("visdom display switched off, training goes on: ")]
    assert len(warnings) == 1 and f":{port}" in warnings[0]
    assert load_checkpoint(data / "ck" / "run" / "latest.pth")["epoch"] == 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- options
def test_image_size_not_divisible_by_32(data: Path, capsys) -> None:
    msg = cli_error(train.main, train_argv(data, data / "ck", "--height", "100"), capsys)
    assert msg == "image size 100x32 is not supported: height and width must be positive multiples of 32"


@pytest.mark.parametrize("extra, message", [
    (["--device", "tpu"], "--device tpu: expected auto, cpu, cuda or cuda:N"),
    (["--height", "0"], "--height 0 --width 32: the image size must be positive"),
    (["-b", "1"], "epoch 0: a training batch of 1 pair; -b/--batch-size must be at least 2 (and the training set "
                  "hold 2 or more pairs)"),
    (["--num-val", "-1"], "num_val -1.0: expected a non-negative count or fraction"),
    (["--evaluate"], "--evaluate needs --resume PATH of the checkpoint to evaluate"),
], ids=["device", "height", "batch-size", "num-val", "evaluate-without-resume"])
def test_bad_option_values_baseline(data: Path, capsys, extra: List[str], message: str) -> None:
    assert cli_error(baseline.main, base_argv(data, data / "logs", *extra), capsys) == message


@pytest.mark.parametrize("main, argv, message", [
    (baseline.main, ["-d", "nope"], "argument -d/--dataset: invalid choice: 'nope' (choose from 'cuhk03', "
                                    "'dukemtmc', 'market1501', 'synthetic')"),
    (baseline.main, ["-a", "vgg"], "argument -a/--arch: invalid choice: 'vgg' (choose from 'resnet18', 'resnet34', "
                                   "'resnet50', 'resnet101', 'resnet152')"),
    (baseline.main, ["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
    (train.main, ["--norm", "group"], "argument --norm: invalid choice: 'group' (choose from 'batch', 'instance', "
                                      "'none')"),
    (train.main, ["--stage", "3"], "argument --stage: invalid choice: 3 (choose from 1, 2)"),
], ids=["dataset", "arch", "epochs", "norm", "stage"])
def test_unknown_option_values_are_argparse_errors(capsys, main, argv: List[str], message: str) -> None:
    assert argparse_error(main, argv, capsys) == message


def test_stage1_without_encoder(data: Path, capsys) -> None:
    msg = cli_error(train.main, train_argv(data, data / "ck", stage1=False), capsys)
    assert msg == ("--stage 1 needs --netE-pretrain (the Stage I model_best.pth.tar from baseline.py); "
                   "--no-pretrained starts from a random encoder instead (tests only)")


def test_stage2_without_its_files(data: Path, capsys) -> None:
    msg = cli_error(train.main, train_argv(data, data / "ck", "--stage", "2", stage1=False), capsys)
    assert msg == ("--stage 2 needs --netE-pretrain, --netG-pretrain, --netDi-pretrain, --netDp-pretrain "
                   "(the <epoch>_net_*.pth files of a --stage 1 run)")


# --------------------------------------------------------------------------- checkpoints
def test_missing_checkpoint_files(data: Path, capsys) -> None:
    missing = data / "nope.pth.tar"
    assert cli_error(baseline.main, base_argv(data, data / "logs", "--evaluate", "--resume", str(missing)),
                     capsys) == f"{missing}: checkpoint file not found"
    assert cli_error(train.main, train_argv(data, data / "ck", "--netE-pretrain", str(missing)), capsys) == \
        f"--netE-pretrain {missing}: file not found"


def test_checkpoint_of_the_wrong_network(data: Path, capsys) -> None:
    """A Stage II pose discriminator file given where a Siamese E belongs, in both CLIs."""
    wrong = data / "3_net_Dp.pth"
    torch.save({f"module.{k}": v for k, v in NLayerDiscriminator(21).state_dict().items()}, wrong)
    prefix = (f"{wrong}: does not fit SiameseNet (wrong network or options?): missing keys "
              "[base_model.base.conv1.weight, ")
    msg = cli_error(baseline.main, base_argv(data, data / "logs", "--evaluate", "--resume", str(wrong)), capsys)
    assert msg.startswith(prefix) and "; unexpected keys [model.0.weight, " in msg
    msg = cli_error(train.main, train_argv(data, data / "ck", "--netE-pretrain", str(wrong)), capsys)
    assert msg.startswith(prefix)


def test_checkpoint_of_another_depth(data: Path, capsys) -> None:
    torch.manual_seed(0)
    other = data / "model_best.pth.tar"
    net = build_siamese("resnet18", pretrained=False)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, other)
    msg = cli_error(baseline.main, base_argv(data, data / "logs", "-a", "resnet34", "--evaluate", "--resume",
                                             str(other)), capsys)
    assert msg.startswith(f"{other}: does not fit SiameseNet (wrong network or options?): missing keys "
                          "[base_model.base.layer1.2.conv1.weight, ")


def test_truncated_checkpoint(data: Path, capsys) -> None:
    path = data / "model_best.pth.tar"
    net = build_siamese("resnet18", pretrained=False)
    torch.save({"state_dict": net.state_dict()}, path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    msg = cli_error(baseline.main, base_argv(data, data / "logs", "--evaluate", "--resume", str(path)), capsys)
    assert msg.startswith(f"{path}: not a readable checkpoint (truncated or corrupt?): ")


# --------------------------------------------------------------------------- crafted checkpoints (security)
class _RunsShell:
    """Unpickling calls os.system(command)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> Tuple[Any, Tuple[str]]:
        return os.system, (self.command,)


class _RunsPython:
    """Unpickling calls exec(code)."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> Tuple[Any, Tuple[str]]:
        return exec, (self.code,)


def _evil_files(folder: Path, marker: Path) -> Dict[str, Path]:
    shell = _RunsShell(f"touch {shlex.quote(str(marker))}")
    python = _RunsPython(f"open({str(marker)!r}, 'w').close()")
    out = {}
    net = build_siamese("resnet18", pretrained=False)
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    # torch's zip format, the payload hidden next to real weights.
    out["torch-zip"] = folder / "evil_zip.pth"
    torch.save({"state_dict": state, "extra": shell}, out["torch-zip"])
    out["torch-zip-exec"] = folder / "evil_zip_exec.pth"
    torch.save({"state_dict": {**state, "x": python}}, out["torch-zip-exec"])
    # Plain pickles (torch's legacy format is a pickle stream) of every protocol.
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        out[f"pickle-{proto}"] = folder / f"evil_p{proto}.pth"
        with open(out[f"pickle-{proto}"], "wb") as f:
            pickle.dump({"state_dict": shell}, f, protocol=proto)
    return out


def test_crafted_checkpoints_are_refused_without_running_code(tmp_path: Path) -> None:
    from reid.errors import CheckpointError

    marker = tmp_path / "MARKER"
    outcomes = {}
    for kind, path in _evil_files(tmp_path, marker).items():
        with pytest.raises(CheckpointError) as exc:
            load_checkpoint(path)
        msg = str(exc.value)
        assert msg.startswith(f"{path}: ") and "\n" not in msg, kind
        assert "weights_only" not in msg, kind  # no advice to switch the check off
        assert not marker.exists(), kind
        outcomes[kind] = msg[len(f"{path}: "):]
    code = ("refused to load: the file holds objects other than tensors and plain containers, which could run code "
            "on load")
    blocked = f"{code} (Trying to load unsupported GLOBAL posix.system whose module posix is blocked)"
    # torch's unpickler refuses the callable by name; for protocol 0's dict opcode and the framing
    # of protocols 4 and 5 it stops even earlier, at an opcode it does not know.
    early = "not a readable checkpoint (truncated, corrupt, or holding objects other than tensors and plain containers)"
    assert outcomes == {
        "torch-zip": blocked,
        "torch-zip-exec": f"{code} (Unsupported global: GLOBAL exec was not an allowed global by default)",
        "pickle-0": f"{early}: Unsupported operand 100",
        "pickle-1": blocked, "pickle-2": blocked, "pickle-3": blocked,
        "pickle-4": f"{early}: Unsupported operand 149",
        "pickle-5": f"{early}: Unsupported operand 149",
    }
    # The same payload does run when unpickled without the check: the files are real exploits.
    with open(tmp_path / "evil_p2.pth", "rb") as f:
        pickle.load(f)
    assert marker.exists()


@pytest.mark.slow
def test_crafted_checkpoint_through_both_clis(data: Path, capsys) -> None:
    marker = data / "MARKER"
    evil = _evil_files(data, marker)["torch-zip"]
    expected = (f"{evil}: refused to load: the file holds objects other than tensors and plain containers, which "
                "could run code on load (Trying to load unsupported GLOBAL posix.system whose module posix is "
                "blocked)")
    assert cli_error(baseline.main, base_argv(data, data / "logs", "--evaluate", "--resume", str(evil)),
                     capsys) == expected
    assert cli_error(train.main, train_argv(data, data / "ck", "--netE-pretrain", str(evil)), capsys) == expected
    assert not marker.exists()

    # The real command line in a fresh interpreter: exit 2, the same single line on stderr.
    proc = subprocess.run([sys.executable, "baseline.py", *base_argv(data, data / "logs", "--evaluate", "--resume",
                                                                      str(evil))],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout(300),
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()] == [f"error: {expected}"]
    assert not marker.exists()


# --------------------------------------------------------------------------- training that diverges
@pytest.mark.slow
def test_nan_loss_in_stage1_stops_and_keeps_the_last_good_checkpoint(data: Path, capsys) -> None:
    logs = data / "logs"
    cli_ok(baseline.main, base_argv(data, logs), capsys)
    ckpt = logs / "checkpoint.pth.tar"
    before = ckpt.read_bytes()
    msg = cli_error(baseline.main, base_argv(data, logs, "--epochs", "2", "--lr", "1e10", "--max-iters-per-epoch", "5",
                                             "--resume", str(ckpt)), capsys)
    m = re.fullmatch(r"epoch 1 iteration (\d): the training loss is (nan|inf)", msg)
    assert m and int(m.group(1)) >= 1, msg  # the first step is computed at the good weights
    assert ckpt.read_bytes() == before
    assert load_checkpoint(ckpt)["epoch"] == 0
    assert [p.name for p in logs.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.slow
def test_nan_loss_in_stage2_stops_and_keeps_the_last_good_checkpoint(
    data: Path, capsys, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loss of the second epoch's first step turns NaN (patched in): exit 2, latest.pth of
    epoch 1 kept as it was."""
    from fdgan.model import FDGANModel

    real = FDGANModel.optimize_parameters
    steps: List[int] = []

    def optimize(self: FDGANModel) -> None:
        real(self)
        steps.append(1)
        if len(steps) == 2:
            self.losses["G_r"] = float("nan")

    monkeypatch.setattr(FDGANModel, "optimize_parameters", optimize)
    save_dir = data / "ck" / "run"
    msg = cli_error(train.main, train_argv(data, data / "ck", "--niter", "2"), capsys)
    assert msg == (f"epoch 2 iteration 0: loss G_r is not finite; stopped, the last good checkpoint in {save_dir} "
                   "is kept (lower --lr?)")
    state = load_checkpoint(save_dir / "latest.pth")
    assert state["epoch"] == 1 and state["total_steps"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"]["nets"]["G"].values() if v.is_floating_point())


# --------------------------------------------------------------------------- file names with markup (HTML)
class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: List[str] = []
        self.text: List[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs += [v for k, v in attrs if k == "src"]

    def handle_data(self, data):
        self.text.append(data)


def test_ranked_list_page_escapes_image_names_and_captions(tmp_path: Path) -> None:
    """The ranked-list page (scripts/visualize_ranks.py): picture file names and captions that hold
    markup, quotes, '#', '?' and '%' are escaped in the text and quoted in the links."""
    name = 'query_000_<img src=x onerror="alert(1)">#1?%.png'
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / name)
    caption = "<script>alert('q')</script> & co"
    page = Path(write_rank_page(tmp_path, [(f"images/{name}", caption, 120)], title="ranks <b>x</b>",
                                notes=["note <i>y</i>"]))
    text = page.read_text(encoding="utf-8")
    for raw in ("<script>", "<img src=x", "<b>x", "<i>y"):
        assert raw not in text
    parser = _Page()
    parser.feed(text)
    assert [unquote(s) for s in parser.srcs] == [f"images/{name}"]
    assert (page.parent / unquote(parser.srcs[0])).is_file()
    shown = "".join(parser.text)
    assert caption in shown and "ranks <b>x</b>" in shown and "note <i>y</i>" in shown


def test_report_page_escapes_names_captions_and_cells(tmp_path: Path) -> None:
    """The demo's report page (reid/report.py): picture and link names with markup are quoted in
    the links and escaped in the text, table cells and notes are escaped."""
    from reid.report import write_report

    name = 'cmc <b>"x"<b> #1?%.png'  # no '/': it is one file name
    Image.new("RGB", (8, 8)).save(tmp_path / name)
    page = Path(write_report(str(tmp_path), "report <script>x</script>", rows=[["<i>E</i>", "openreid", "1", "2"]],
                             images=[("caption <u>c</u>", name)], links=[("log <em>l</em>", name)],
                             notes=["note <s>n</s>"]))
    text = page.read_text(encoding="utf-8")
    for raw in ("<script>", "<b>", "<i>E", "<u>", "<em>", "<s>"):
        assert raw not in text
    parser = _Page()
    parser.feed(text)
    assert [unquote(s) for s in parser.srcs] == [name]
    assert (tmp_path / unquote(parser.srcs[0])).is_file()
    shown = "".join(parser.text)
    for visible in ("report <script>x</script>", "<i>E</i>", "caption <u>c</u>", "log <em>l</em>", "note <s>n</s>"):
        assert visible in shown
    hrefs = re.findall(r'href="([^"]+)"', text)
    assert [unquote(h) for h in hrefs] == [name]


# --------------------------------------------------------------------------- lost work, wrong results (issue 23)
def _old_run_file(path: Path, text: str = "an older run's file") -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path.read_bytes()


@pytest.mark.parametrize("name", ["checkpoint.pth.tar", "model_best.pth.tar"])
def test_rerun_over_a_stage1_run_is_refused_and_keeps_its_files(data: Path, capsys, name: str) -> None:
    logs = data / "logs"
    before = _old_run_file(logs / name)
    msg = cli_error(baseline.main, base_argv(data, logs), capsys)
    assert msg == (f"{logs}: already holds a run ({name}); continue it with --resume "
                   f"{logs / name}, choose another folder, or pass --overwrite to replace it")
    assert (logs / name).read_bytes() == before
    # Weights from another folder do not continue this folder's run either.
    other = data / "elsewhere" / "model_best.pth.tar"
    _old_run_file(other)
    assert cli_error(baseline.main, base_argv(data, logs, "--resume", str(other)), capsys) == msg


def test_rerun_over_a_stage2_run_is_refused_and_keeps_its_files(data: Path, capsys) -> None:
    run = data / "ck" / "run"
    before = {n: _old_run_file(run / n) for n in ("1_net_G.pth", "opt.txt")}
    msg = cli_error(train.main, train_argv(data, data / "ck"), capsys)
    assert msg == (f"{run}: already holds a run (1_net_G.pth); continue it with the same command plus --resume, "
                   "choose another folder, or pass --overwrite to replace it")
    assert {n: (run / n).read_bytes() for n in before} == before
    (run / "1_net_G.pth").unlink()
    _old_run_file(run / "latest.pth")
    assert "already holds a run (latest.pth)" in cli_error(train.main, train_argv(data, data / "ck"), capsys)


def test_check_run_folder_patterns_resume_and_overwrite(tmp_path: Path) -> None:
    from reid.errors import ConfigError
    from reid.pipelines.run import check_run_folder

    patterns = ("latest.pth", "*_net_*.pth")
    for name in ("opt.txt", "train_log.txt", ".latest.pth.x1.tmp", "latest.pth.bak"):  # not a run's weights
        (tmp_path / name).write_text("x")
    check_run_folder(str(tmp_path), patterns, continuing=False, overwrite=False, resume_hint="--resume")
    check_run_folder(str(tmp_path / "missing"), patterns, continuing=False, overwrite=False, resume_hint="--resume")
    for name in ("best_net_E.pth", "10_net_Dp.pth", "2_net_G.pth", "latest.pth"):
        (tmp_path / name).write_text("x")
    with pytest.raises(ConfigError) as err:
        check_run_folder(str(tmp_path), patterns, continuing=False, overwrite=False, resume_hint="--resume")
    assert str(err.value).startswith(f"{tmp_path}: already holds a run (10_net_Dp.pth, 2_net_G.pth, best_net_E.pth, "
                                     "...); continue it with --resume,")
    check_run_folder(str(tmp_path), patterns, continuing=True, overwrite=False, resume_hint="--resume")
    check_run_folder(str(tmp_path), patterns, continuing=False, overwrite=True, resume_hint="--resume")


def test_a_second_run_in_a_folder_in_use_is_refused(data: Path, capsys) -> None:
    from reid.utils.osutils import folder_lock

    logs, run = data / "logs", data / "ck" / "run"
    with folder_lock(logs), folder_lock(run):
        assert cli_error(baseline.main, base_argv(data, logs, "--overwrite"), capsys) == (
            f"{logs}: another run is using this folder right now; wait for it to end or choose another folder")
        assert cli_error(train.main, train_argv(data, data / "ck", "--overwrite"), capsys) == (
            f"{run}: another run is using this folder right now; wait for it to end or choose another folder")
        assert not (run / "opt.txt").exists()  # refused before the options file was written
    with folder_lock(logs):  # released when the holder leaves the block (the OS releases it on kill -9 too)
        pass


def test_a_folder_lock_held_by_another_process_is_seen(tmp_path: Path) -> None:
    from reid.errors import ConfigError
    from reid.utils.osutils import folder_lock

    code = ("import sys, time; from reid.utils.osutils import folder_lock\n"
            f"with folder_lock({str(tmp_path)!r}):\n    print('held', flush=True); sys.stdin.readline()\n")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match="another run is using this folder"):
            with folder_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait(timeout=timeout(30))
    with folder_lock(tmp_path):  # the killed holder's lock is gone
        pass


@pytest.mark.slow
def test_overwrite_replaces_a_run_and_epochs_0_never_tests_an_old_model(data: Path, capsys) -> None:
    logs = data / "logs"
    cli_ok(baseline.main, base_argv(data, logs), capsys)
    old_best = (logs / "model_best.pth.tar").read_bytes()
    old_results = (logs / "results.json").read_bytes()
    msg = cli_error(baseline.main, base_argv(data, logs, "--epochs", "0", "--overwrite"), capsys)
    assert msg == (f"{logs / 'model_best.pth.tar'}: this run saved no best model (it trained no epoch: --epochs 0); "
                   "to test a saved model use --evaluate --resume FILE")
    assert (logs / "results.json").read_bytes() == old_results  # no results passed off as this run's
    cli_ok(baseline.main, base_argv(data, logs, "--overwrite", "--seed", "5"), capsys)
    assert (logs / "model_best.pth.tar").read_bytes() != old_best
    # Continuing the run (its epoch 0 done) to 2 epochs is not refused.
    cli_ok(baseline.main, base_argv(data, logs, "--epochs", "2", "--resume", str(logs / "checkpoint.pth.tar")), capsys)
    assert load_checkpoint(logs / "checkpoint.pth.tar")["epoch"] == 1


def test_train_with_no_epoch_is_refused(data: Path, capsys) -> None:
    msg = cli_error(train.main, train_argv(data, data / "ck", "--niter", "0", "--niter-decay", "0"), capsys)
    assert msg == "--niter 0 --niter-decay 0: no epoch to train (their sum must be at least 1)"


@pytest.mark.parametrize("main", [baseline.main, train.main], ids=["baseline", "train"])
@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_bad_learning_rate_is_one_line(capsys, main, value: str) -> None:
    assert argparse_error(main, ["--lr", value], capsys) == f"argument --lr: must be a finite number > 0, got {value}"


def test_library_refuses_a_bad_learning_rate(tmp_path: Path) -> None:
    from fdgan.pipeline import TrainConfig, run_training
    from reid.errors import ConfigError
    from reid.pipelines.baseline import BaselineConfig, run_baseline

    for lr in (-1.0, 0.0, float("nan")):
        with pytest.raises(ConfigError, match=r"^--lr .*: the learning rate must be a finite number > 0$"):
            run_baseline(BaselineConfig(lr=lr, logs_dir=str(tmp_path)))
        with pytest.raises(ConfigError, match=r"^--lr .*: the learning rate must be a finite number > 0$"):
            run_training(TrainConfig(lr=lr, checkpoints=str(tmp_path)))


def _siamese_file(path: Path, change: Callable[[Dict[str, Any]], None]) -> Path:
    torch.manual_seed(0)
    state = {f"module.{k}": v for k, v in build_siamese("resnet18", pretrained=False).state_dict().items()}
    change(state)
    torch.save({"state_dict": state}, path)
    return path


def test_non_finite_weights_are_refused_by_every_loader(data: Path, capsys, tmp_path: Path) -> None:
    from reid.errors import CheckpointError
    from reid.feature_extraction import FeatureExtractor
    from helpers import load_script

    key = "module.base_model.base.layer2.0.conv1.weight"

    def poison(state: Dict[str, Any]) -> None:
        state[key][0, 0, 0, 0] = float("nan")
        state[key][1, 0, 0, 0] = float("inf")

    path = _siamese_file(data / "model_best.pth.tar", poison)
    message = (f"{path}: tensor 'base_model.base.layer2.0.conv1.weight' holds 2 NaN or infinite value(s) "
               "(the run that wrote it diverged?)")
    assert cli_error(baseline.main, base_argv(data, data / "logs", "--evaluate", "--resume", str(path)),
                     capsys) == message
    assert cli_error(train.main, train_argv(data, data / "ck", "--netE-pretrain", str(path), stage1=False),
                     capsys) == message
    out = tmp_path / "feats.h5"
    extract = load_script("extract_features")
    rc = extract.main(["--checkpoint", str(path), "--images", str(data / "synthetic" / "images"), "--output",
                       str(out), "-a", "resnet18", "--height", "64", "--width", "32", "--device", "cpu"])
    assert rc == 2 and one_error_line(capsys.readouterr().err) == message.replace(
        "'base_model.base.layer2.0.conv1.weight'", "'base.layer2.0.conv1.weight'")
    assert not out.exists()
    with pytest.raises(CheckpointError, match="holds 2 NaN or infinite"):
        FeatureExtractor(path, arch="resnet18", height=64, width=32)


def test_non_tensor_state_dict_values_are_one_line(data: Path, capsys) -> None:
    def add_text(state: Dict[str, Any]) -> None:
        state["module.embed_model.bn.running_mean"] = "not a tensor"

    path = _siamese_file(data / "odd.pth.tar", add_text)
    msg = cli_error(baseline.main, base_argv(data, data / "logs", "--evaluate", "--resume", str(path)), capsys)
    assert msg == f"{path}: 'embed_model.bn.running_mean' holds a str, not a tensor (not a state dict of weights?)"


def test_missing_test_image_is_found_before_training(data: Path, capsys) -> None:
    images = data / "synthetic" / "images"
    query = files_of(data, first_split_pids(data, "query"))
    os.remove(images / query[3])
    logs = data / "logs"
    msg = cli_error(baseline.main, base_argv(data, logs), capsys)
    assert msg == f"{images / query[3]}: image file not found; it is in the openreid query/gallery of split 0"
    assert "Epoch 0: loss" not in (logs / "log.txt").read_text()
    assert not (logs / "checkpoint.pth.tar").exists()


@pytest.mark.slow
def test_evaluate_reads_the_checkpoint_folder_and_writes_only_to_logs_dir(data: Path, capsys) -> None:
    ro = data / "readonly"
    path = _siamese_file(ro.parent / "w.pth.tar", lambda s: None)
    ro.mkdir()
    os.replace(path, ro / "model_best.pth.tar")
    listing = {p.name: p.stat().st_mtime_ns for p in ro.iterdir()}
    ro.chmod(0o555)
    try:
        logs = data / "eval_logs"
        cli_ok(baseline.main, base_argv(data, logs, "--evaluate", "--resume", str(ro / "model_best.pth.tar")), capsys)
    finally:
        ro.chmod(0o755)
    assert {p.name: p.stat().st_mtime_ns for p in ro.iterdir()} == listing
    assert sorted(p.name for p in logs.iterdir()) == ["evaluate_results.json", "log_test.txt"]
    saved = json.loads((logs / "evaluate_results.json").read_text())
    assert saved["checkpoint"] == str(ro / "model_best.pth.tar")


def _tiny_extractor():
    from reid.feature_extraction import FeatureExtractor
    from reid.models import create

    torch.manual_seed(0)
    return FeatureExtractor(model=create("resnet18", pretrained=False, cut_at_pooling=True), height=64, width=32)


def test_uint8_tensors_are_preprocessed_as_images_and_other_integer_tensors_refused() -> None:
    import numpy as np
    from reid.errors import DatasetError

    extractor = _tiny_extractor()
    pixels = torch.randint(0, 256, (3, 3, 80, 40), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    arrays = [p.permute(1, 2, 0).numpy() for p in pixels]
    from_arrays = extractor(arrays)
    from PIL import Image
    from reid.utils.data.transforms import build_test_transform

    transform = build_test_transform(64, 32)  # resized to 64 x 32, ImageNet mean/std
    normalised = torch.stack([transform(Image.fromarray(a)) for a in arrays])
    assert torch.equal(extractor(pixels), from_arrays)
    assert torch.allclose(extractor(normalised), from_arrays, rtol=1e-5, atol=1e-5)
    assert float(normalised.abs().max()) < 3  # what the network sees: not 0..255
    with pytest.raises(DatasetError, match=r"^images: expected a uint8 tensor of pixels or a normalised float "
                                           r"tensor, got torch.int64$"):
        extractor(pixels.long())
    assert np.asarray(arrays[0]).dtype == np.uint8


def _png16(path: Path, values) -> None:
    """A 16-bit grayscale PNG (PIL mode I;16)."""
    import numpy as np

    Image.fromarray(np.asarray(values, dtype=np.uint16)).save(path, format="PNG")


def test_16_bit_pngs_are_read_as_their_picture(tmp_path: Path) -> None:
    import numpy as np
    from reid.utils.data.images import read_image

    ramp = (np.arange(64 * 32).reshape(64, 32) * 32).astype(np.uint16)  # 0 .. 65504
    _png16(tmp_path / "deep.png", ramp)
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode == "I;16"
    eight = np.rint(ramp / 257.0).astype(np.uint8)  # the same picture at 8 bits, by hand
    Image.fromarray(eight).save(tmp_path / "flat.png")
    got = np.asarray(read_image(tmp_path / "deep.png"))
    assert got.shape == (64, 32, 3) and got[0, 0, 0] == 0 and got[-1, -1, 0] == round(65504 / 257)
    assert np.array_equal(got, np.asarray(read_image(tmp_path / "flat.png")))
    # Training data (the Preprocessor) and extraction read the same pixels.
    from reid.utils.data.transforms import build_test_transform

    pre = Preprocessor([("deep.png", 0, 0), ("flat.png", 0, 0)], root=str(tmp_path),
                       transform=build_test_transform(64, 32), height=64, width=32)
    assert torch.equal(pre[0][0], pre[1][0])
    extractor = _tiny_extractor()
    feats = extractor([str(tmp_path / "deep.png"), str(tmp_path / "flat.png")])
    assert torch.equal(feats[0], feats[1])
