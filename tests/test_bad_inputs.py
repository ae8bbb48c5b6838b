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
