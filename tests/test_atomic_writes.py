"""Every file the project writes is written atomically (temporary file, fsync, rename).

- ``atomic_write`` itself: an exception or an interrupt in the middle of a write leaves the old
  content and no temporary file; a full disk (simulated: ``os.fsync`` or the file's ``write``
  raising ``OSError(ENOSPC)``) gives one clear :class:`reid.errors.WriteError` line.
- A full disk during real runs of both CLIs: exit 2, ``error: <file>: could not write (No space
  left on device) ...``, the previous checkpoint intact.
- Whole operations (a Stage I run and its --evaluate, a Stage II run with its HTML gallery, the
  synthetic renderer, the Market-1501 converter, pose files and their preview page, ranked-list
  pages, feature files): every file they leave was put in place by ``os.replace`` from a hidden
  temporary file in the same folder; only the log files grow by appending.
- A scan of the sources of ``reid/`` and ``fdgan/``: no module opens a file for writing, or hands
  ``torch.save`` / PIL ``save`` / h5py / exporters a path, except into a file object of
  ``atomic_write`` / a temporary name of ``atomic_path`` / a BytesIO / a ``mkstemp`` temporary
  that the same function renames into place.
"""
from __future__ import annotations

import ast
import errno
import io
import json
import os
import re
import stat
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set, Tuple

import numpy as np
import pytest
import torch
from PIL import Image

import baseline
import train
from conftest import REPO_ROOT
from helpers import one_error_line, tiny_baseline_argv, tiny_train_argv
from reid.errors import WriteError
from reid.utils.osutils import atomic_path, atomic_write, atomic_write_text, write_json
from reid.utils.serialization import load_checkpoint, save_checkpoint

LOG_FILES = {"log.txt", "log_test.txt", "train_log.txt", "loss_log.txt", "reid_log.txt"}
TMP_RE = re.compile(r"^\.(?P<name>.+)\.[^.]+\.tmp$")


def leftovers(folder: Path) -> List[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".tmp"))


def fd_name(fd: int) -> str:
    return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))


def fail_fsync_of(monkeypatch: pytest.MonkeyPatch, wanted: Callable[[str], bool]) -> List[str]:
    """Make ``os.fsync`` raise ENOSPC for files whose (temporary) name satisfies ``wanted``."""
    real = os.fsync
    failed: List[str] = []

    def fsync(fd: int) -> None:
        name = fd_name(fd)
        if wanted(name):
            failed.append(name)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return failed


# --------------------------------------------------------------------------- atomic_write itself
def test_exception_mid_write_keeps_the_old_content_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_json({"v": 1}, path)
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with atomic_write(path, "w") as f:
                f.write('{"v": 2, "half')
                f.flush()
                assert leftovers(tmp_path) and json.loads(path.read_text()) == {"v": 1}
                raise exc
        assert json.loads(path.read_text()) == {"v": 1}
        assert leftovers(tmp_path) == []


def test_successful_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and leftovers(path.parent) == []


def test_disk_full_at_fsync_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "results.json"
    write_json({"v": 1}, path)
    failed = fail_fsync_of(monkeypatch, lambda name: name.startswith(".results.json."))
    with pytest.raises(WriteError) as exc:
        write_json({"v": 2}, path)
    assert str(exc.value) == (f"{path}: could not write (No space left on device); the previous file, if any, "
                              "is unchanged")
    assert len(failed) == 1
    assert json.loads(path.read_text()) == {"v": 1} and leftovers(tmp_path) == []


class _FullDisk(io.RawIOBase):
    """A file whose writes fail with ENOSPC after ``room`` bytes."""

    def __init__(self, inner, room: int) -> None:
        self.inner, self.room = inner, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.inner.write(data)

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.inner.fileno()

    def flush(self) -> None:
        if not self.inner.closed:
            self.inner.flush()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.inner.close()


def test_disk_full_at_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pth.tar"
    save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 0}, path)
    before = path.read_bytes()
    import reid.utils.osutils as osutils

    def full_disk_open(name, mode="r", **kw):
        f = open(name, mode, **kw)
        return _FullDisk(f, 100) if "w" in mode else f

    # atomic_write's own open() (module globals come before builtins).
    monkeypatch.setattr(osutils, "open", full_disk_open, raising=False)
    with pytest.raises(WriteError) as exc:
        save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "epoch": 1}, path, is_best=True)
    # The best copy is written first, so it is the one that fails; nothing else is touched.
    assert str(exc.value) == (f"{tmp_path / 'model_best.pth.tar'}: could not write (No space left on device); "
                              "the previous file, if any, is unchanged")
    monkeypatch.undo()
    assert path.read_bytes() == before and load_checkpoint(path)["epoch"] == 0
    assert not (tmp_path / "model_best.pth.tar").exists() and leftovers(tmp_path) == []


def test_other_errors_of_the_callers_block_are_not_relabelled(tmp_path: Path) -> None:
    """A read error of the data being copied is the caller's, not a write failure."""
    path = tmp_path / "copy.jpg"
    with pytest.raises(FileNotFoundError):
        with atomic_write(path) as f, open(tmp_path / "missing.jpg", "rb") as src:
            f.write(src.read())
    assert not path.exists() and leftovers(tmp_path) == []


def test_folder_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "logs").write_text("a file where a folder should be")
    path = tmp_path / "logs" / "results.json"
    with pytest.raises(WriteError) as exc:
        write_json({}, path)
    assert str(exc.value).startswith(f"{path}: cannot create the file (")


def test_new_files_get_the_umask_mode_and_replaced_files_keep_theirs(tmp_path: Path) -> None:
    """mkstemp's temporaries are 0600; the files put in place must not be (others read results)."""
    old = os.umask(0o027)
    try:
        write_json({}, tmp_path / "a.json")
        with atomic_path(tmp_path / "b.h5") as tmp:
            Path(tmp).write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "b.h5").st_mode) == 0o640
    os.chmod(tmp_path / "a.json", 0o604)
    write_json({"x": 1}, tmp_path / "a.json")
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o604


class _FailingH5File:
    """h5py.File stand-in whose dataset writes fail as HDF5 reports a full disk (no errno)."""

    def __init__(self, name: str, mode: str, **kwargs) -> None:
        Path(name).write_bytes(b"partial")

    def __enter__(self) -> "_FailingH5File":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def create_dataset(self, *args, **kwargs) -> None:
        raise OSError("Can't write data (file write failed: errno = 28, error message = 'No space left on device')")


def test_disk_full_in_a_feature_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import h5py

    from reid.feature_extraction import write_features_h5

    path = tmp_path / "features.h5"
    write_features_h5(path, ["a.jpg"], np.ones((1, 4), dtype=np.float32))
    before = path.read_bytes()
    monkeypatch.setattr(h5py, "File", _FailingH5File)
    with pytest.raises(WriteError) as exc:
        write_features_h5(path, ["a.jpg", "b.jpg"], np.zeros((2, 4), dtype=np.float32))
    monkeypatch.undo()
    assert str(exc.value) == (f"{path}: could not write (Can't write data (file write failed: errno = 28, "
                              "error message = 'No space left on device')); the previous file, if any, is unchanged")
    assert path.read_bytes() == before and leftovers(tmp_path) == []


def test_disk_full_in_an_export_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from reid.export import export_torchscript

    def full_disk(obj, name, *args, **kwargs):
        Path(name).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch.jit, "save", full_disk)
    path = tmp_path / "model.pt"
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    with pytest.raises(WriteError) as exc:
        export_torchscript(model, path, height=32, width=32)
    assert str(exc.value).startswith(f"{path}: could not write ([enforce fail at inline_container.cc:672]")
    assert not path.exists() and leftovers(tmp_path) == []


# --------------------------------------------------------------------------- disk full in real runs
def baseline_argv(data: Path, logs: Path, *extra: str) -> List[str]:
    return tiny_baseline_argv(data, logs, "--epochs", "2", "--eval-step", "1", *extra)


def train_argv(data: Path, checkpoints: Path, *extra: str) -> List[str]:
    return tiny_train_argv(data, checkpoints, "--niter-decay", "1", *extra)


@pytest.mark.slow
def test_disk_full_while_saving_in_stage1(data: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    logs = data / "logs"
    ckpt = logs / "checkpoint.pth.tar"
    kept: Dict[str, bytes] = {}

    def full_once_epoch0_is_saved(name: str) -> bool:
        if name.startswith(".checkpoint.pth.tar.") and ckpt.exists():
            kept.setdefault("before", ckpt.read_bytes())
            return True
        return False

    failed = fail_fsync_of(monkeypatch, full_once_epoch0_is_saved)
    assert baseline.main(baseline_argv(data, logs)) == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"{ckpt}: could not write (No space left on device); the previous file, if any, is unchanged")
    assert len(failed) == 1
    monkeypatch.undo()
    assert ckpt.read_bytes() == kept["before"] and load_checkpoint(ckpt)["epoch"] == 0
    assert leftovers(logs) == []


@pytest.mark.slow
def test_disk_full_while_saving_in_stage2(data: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = data / "ck" / "run"
    latest = folder / "latest.pth"
    failed = fail_fsync_of(monkeypatch, lambda name: name.startswith(".latest.pth.") and latest.exists())
    assert train.main(train_argv(data, data / "ck", "--save-step", "10")) == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"{latest}: could not write (No space left on device); the previous file, if any, is unchanged")
    assert len(failed) == 1
    monkeypatch.undo()
    assert load_checkpoint(latest)["epoch"] == 1 and leftovers(folder) == []


# --------------------------------------------------------------------------- every file of whole operations
class ReplaceLog:
    """Records every ``os.replace`` (source, destination), and follows folder renames."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.moves: List[Tuple[str, str, bool]] = []
        real = os.replace

        def replace(src, dst, *args, **kwargs):
            is_dir = os.path.isdir(src)
            real(src, dst, *args, **kwargs)
            self.moves.append((os.path.abspath(src), os.path.abspath(dst), is_dir))

        monkeypatch.setattr(os, "replace", replace)

    def atomic_files(self) -> Set[str]:
        """Final paths of files renamed into place from a hidden temporary beside them."""
        out: Set[str] = set()
        for src, dst, is_dir in self.moves:
            if is_dir:  # a folder renamed into place moves the files written in it
                out = {dst + p[len(src):] if p.startswith(src + os.sep) else p for p in out}
                continue
            m = TMP_RE.match(os.path.basename(src))
            assert m and m.group("name") == os.path.basename(dst), (src, dst)
            assert os.path.dirname(src) == os.path.dirname(dst), (src, dst)
            out.add(dst)
        return out


def assert_all_atomic(root: Path, log: ReplaceLog, expect: List[str]) -> None:
    files = {str(p) for p in root.rglob("*") if p.is_file()}
    atomic = log.atomic_files()
    others = sorted(os.path.relpath(p, root) for p in files - atomic if os.path.basename(p) not in LOG_FILES)
    assert others == [], f"written without atomic_write: {others}"
    assert not [p for p in files if p.endswith(".tmp")]
    rel = {os.path.relpath(p, root) for p in files}
    for pattern in expect:  # the operation wrote what it should (the check is not vacuous)
        assert any(re.fullmatch(pattern, r) for r in rel), (pattern, sorted(rel))


@pytest.mark.slow
def test_stage1_run_and_evaluation_write_atomically(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = ReplaceLog(monkeypatch)
    logs = data / "logs"
    assert baseline.main(baseline_argv(data, logs, "--epochs", "1")) == 0
    assert baseline.main(baseline_argv(data, logs, "--evaluate", "--resume",
                                       str(logs / "model_best.pth.tar"))) == 0
    assert_all_atomic(logs, log, [r"checkpoint\.pth\.tar", r"model_best\.pth\.tar", r"results\.json",
                                  r"evaluate_results\.json", r"log\.txt", r"log_test\.txt"])


@pytest.mark.slow
def test_stage2_run_with_html_gallery_writes_atomically(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = ReplaceLog(monkeypatch)
    assert train.main(train_argv(data, data / "ck", "--niter-decay", "0", "--save-step", "1", "--display-freq", "4",
                                 "--update-html-freq", "4", "--print-freq", "4")) == 0
    assert_all_atomic(data / "ck", log, [r"run/opt\.txt", r"run/latest\.pth", r"run/1_net_(E|G|Di|Dp)\.pth",
                                         r"run/web/index\.html", r"run/web/images/.+\.png", r"run/loss_log\.txt"])


def test_dataset_makers_write_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from reid.datasets.converters import convert_market1501
    from reid.datasets.synthetic_render import SyntheticConfig, generate_synthetic_dataset

    log = ReplaceLog(monkeypatch)
    generate_synthetic_dataset(tmp_path / "out" / "synthetic", SyntheticConfig(num_ids=4, num_cams=2, images_per_cam=1,
                                                                                height=64, width=32, seed=1))
    src = tmp_path / "Market-1501-v15.09.15"
    rng = np.random.default_rng(0)
    for folder, names in (("bounding_box_train", ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg",
                                                  "0007_c1s1_000001_01.jpg", "0007_c3s1_000010_02.jpg"]),
                          ("bounding_box_test", ["0003_c4s1_000011_01.jpg", "0003_c6s1_000002_01.jpg",
                                                 "0005_c2s1_000100_01.jpg", "0005_c1s1_000100_01.jpg"]),
                          ("query", ["0003_c1s1_000005_00.jpg", "0005_c5s1_000300_00.jpg"])):
        (src / folder).mkdir(parents=True)
        for name in names:
            Image.fromarray(rng.integers(0, 255, (16, 8, 3), dtype=np.uint8)).save(src / folder / name, "JPEG")
    convert_market1501(src, tmp_path / "out" / "market1501")
    assert_all_atomic(tmp_path / "out", log, [r"synthetic/images/.+\.jpg", r"synthetic/poses/.+\.txt",
                                              r"synthetic/(meta|splits)\.json", r"market1501/images/.+\.jpg",
                                              r"market1501/(meta|splits)\.json"])


def test_poses_pages_and_feature_files_write_atomically(tmp_path: Path, synthetic_root: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from fdgan.utils.util import save_image
    from reid.feature_extraction import write_features_h5
    from reid.pose_estimation import write_pose_preview
    from reid.utils.data.pose import read_pose_file, write_pose_file
    from reid.visualization import write_rank_page

    log = ReplaceLog(monkeypatch)
    out = tmp_path / "out"
    images = sorted((Path(synthetic_root) / "images").iterdir())[:3]
    for img in images:
        write_pose_file(out / "poses" / (img.stem + ".txt"), read_pose_file(Path(synthetic_root) / "poses" /
                                                                            (img.stem + ".txt")))
    write_pose_preview([str(p) for p in images], out / "poses", out / "preview", num_images=3, thumb_height=64)
    save_image(np.zeros((8, 4, 3), dtype=np.uint8), out / "ranks" / "images" / "query_000.png")
    write_rank_page(out / "ranks", [("images/query_000.png", "query 0", 40)], title="ranks")
    write_features_h5(out / "features.h5", ["a.jpg", "b.jpg"], np.ones((2, 4), dtype=np.float32))
    assert_all_atomic(out, log, [r"poses/.+\.txt", r"preview/index\.html", r"preview/.+\.png",
                                 r"ranks/index\.html", r"ranks/images/query_000\.png", r"features\.h5"])


# --------------------------------------------------------------------------- source scan
# Files allowed to write without atomic_write, each with the reason.
ALLOWED = {
    ("reid/utils/logging.py", "FileHandler"): "log.txt / train_log.txt grow by appending",
    ("fdgan/utils/visualizer.py", "open"): "loss_log.txt / reid_log.txt grow by appending",
    ("reid/pose_estimation.py", "os.fdopen"): "re-opens the process's stderr descriptor (no file)",
}
WRITE_MODES = set("wax+")
PATH_SAVERS = {"torch.save": 1, "torch.jit.save": 1, "torch.export.save": 1, "torch.onnx.export": 2,
               "np.save": 0, "np.savez": 0, "np.savez_compressed": 0, "np.savetxt": 0, "numpy.save": 0}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return _dotted(node.func) + "()"
    return "?"


MODE_RE = re.compile(r"[rwaxbt+]{1,4}(:[a-z0-9*]*)?")


def _writes(call: ast.Call) -> bool:
    """Whether an open-like call opens for writing: a mode (the ``mode=`` keyword, or a string
    literal that looks like a mode among the arguments after the first; for ``path.open(mode)``
    the first) holds w, a, x or +. A ``mode=`` or ``os.fdopen`` mode that is not a literal counts
    as writing."""
    kw = next((k.value for k in call.keywords if k.arg == "mode"), None)
    if kw is not None:
        candidates = [kw]
    elif _dotted(call.func).endswith("fdopen"):
        candidates = call.args[1:2] or [ast.Constant("r")]
    else:
        candidates = call.args[1:] if len(call.args) > 1 else call.args[:1]
    for node in candidates:
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            if node is kw or _dotted(call.func).endswith("fdopen"):
                return True
            continue
        if MODE_RE.fullmatch(node.value) and WRITE_MODES & set(node.value.split(":")[0]):
            return True
    return False


def _pil_style(call: ast.Call) -> bool:
    if not call.args:
        return False
    if len(call.args) == 1 or any(k.arg == "format" for k in call.keywords):
        return True
    second = call.args[1]
    return isinstance(second, ast.Constant) and isinstance(second.value, str) and \
        re.fullmatch(r"[A-Z0-9]+", second.value) is not None


class _Scanner(ast.NodeVisitor):
    """Finds writes whose target is not a safe file object or temporary, per function."""

    def __init__(self, rel: str) -> None:
        self.rel = rel
        self.offenders: List[str] = []
        self.allowed: Set[Tuple[str, str]] = set()
        self.scopes: List[Dict[str, Set[str]]] = [{"safe": set(), "temps": set()}]

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        safe, temps = set(), set()
        renames = False
        for sub in ast.walk(node):
            if isinstance(sub, ast.withitem) and isinstance(sub.context_expr, ast.Call) and sub.optional_vars:
                name = _dotted(sub.context_expr.func).split(".")[-1]
                if name in ("atomic_write", "atomic_path") and isinstance(sub.optional_vars, ast.Name):
                    safe.add(sub.optional_vars.id)
            if isinstance(sub, ast.Assign) and isinstance(sub.value, ast.Call):
                func = _dotted(sub.value.func)
                targets = [t for tgt in sub.targets for t in (tgt.elts if isinstance(tgt, ast.Tuple) else [tgt])]
                names = {t.id for t in targets if isinstance(t, ast.Name)}
                if func.endswith("BytesIO"):
                    safe |= names
                if func == "tempfile.mkstemp":
                    temps |= names
            if isinstance(sub, ast.Call) and _dotted(sub.func) == "os.replace":
                renames = True
        self.scopes.append({"safe": safe, "temps": temps if renames else set()})
        self.generic_visit(node)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def _ok_target(self, node: Optional[ast.AST]) -> bool:
        scope = self.scopes[-1]
        return isinstance(node, ast.Name) and (node.id in scope["safe"] or node.id in scope["temps"])

    def _flag(self, call: ast.Call, what: str) -> None:
        key = (self.rel, what)
        if key in ALLOWED:
            self.allowed.add(key)
        else:
            self.offenders.append(f"{self.rel}:{call.lineno}: {what}")

    def visit_Call(self, node: ast.Call) -> None:
        func = _dotted(node.func)
        last = func.split(".")[-1]
        first_arg = node.args[0] if node.args else None
        if last in ("open", "fdopen", "File", "ZipFile", "TarFile"):
            if _writes(node) and not self._ok_target(first_arg):
                self._flag(node, func)
        elif last in ("write_text", "write_bytes"):
            self._flag(node, func)
        elif func in PATH_SAVERS:
            pos = PATH_SAVERS[func]
            target = node.args[pos] if len(node.args) > pos else None
            if not self._ok_target(target):
                self._flag(node, func)
        elif last == "FileHandler":
            self._flag(node, "FileHandler")
        elif last in ("save", "savefig") and isinstance(node.func, ast.Attribute) and _pil_style(node):
            # PIL's Image.save(fp[, "PNG"], format=...); the project's own save methods take no
            # argument (HTML.save) or a folder and a label (FDGANModel.save) and write atomically.
            if not self._ok_target(first_arg):
                self._flag(node, func)
        self.generic_visit(node)


def scan_sources() -> Tuple[List[str], Set[Tuple[str, str]], int]:
    offenders: List[str] = []
    allowed: Set[Tuple[str, str]] = set()
    count = 0
    for package in ("reid", "fdgan"):
        for path in sorted(Path(REPO_ROOT, package).rglob("*.py")):
            rel = path.relative_to(REPO_ROOT).as_posix()
            scanner = _Scanner(rel)
            scanner.visit(ast.parse(path.read_text(encoding="utf-8"), filename=rel))
            offenders += scanner.offenders
            allowed |= scanner.allowed
            count += 1
    return offenders, allowed, count


def test_no_library_module_writes_a_file_without_atomic_write() -> None:
    offenders, allowed, scanned = scan_sources()
    assert scanned > 40
    assert offenders == []
    assert allowed == set(ALLOWED)  # the scan does see the log appenders and atomic_write's own file


def test_the_source_scan_catches_plain_writes() -> None:
    """The scanner flags each way of writing a file directly, and accepts the atomic patterns."""
    bad = '''
import torch, h5py, numpy as np
def f(path, img, state, fig):
    with open(path, "w") as fh:
        fh.write("x")
    open(path, mode="ab").close()
    torch.save(state, path)
    img.save(path, "PNG")
    h5py.File(path, "w")
    np.save(path, state)
    path.write_text("x")
    fig.savefig(path)
'''
    good = '''
import io, os, tempfile, torch
from reid.utils.osutils import atomic_write
def g(path, img, state, model, page):
    with atomic_write(path) as f:
        torch.save(state, f)
        img.save(f, format="PNG")
    buf = io.BytesIO()
    torch.save(state, buf)
    with open(path, "rb") as fh:
        fh.read()
    model.save(path, "best")  # the project's own writers
    page.save()
def h(path, state):
    fd, tmp = tempfile.mkstemp(dir=".")
    torch.save(state, tmp)
    os.replace(tmp, path)
def k(path, traced):
    with atomic_path(path) as tmp:
        torch.jit.save(traced, tmp)
'''
    s = _Scanner("x.py")
    s.visit(ast.parse(bad))
    assert [o.split(": ", 1)[1] for o in s.offenders] == [
        "open", "open", "torch.save", "img.save", "h5py.File", "np.save", "path.write_text", "fig.savefig"]
    s = _Scanner("x.py")
    s.visit(ast.parse(good))
    assert s.offenders == []
